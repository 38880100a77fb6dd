"""Zsets of fixed-width members given as numpy columns, validated and encoded in bulk.

Theory of operation
-------------------
Most sensors hold values of one width sharing their first bytes (a float is
``ff cb`` + 8 bytes), which the column store keeps as a shared prefix and a
``(count, width)`` byte matrix.  Their zset members -- 8-byte big-endian
timestamp, prefix, value bytes -- then all have the same length ``L``, and
so does each member's type-3 record (see :mod:`._writer`): the length prefix
of ``L``, the member, and the text score ``"0"`` (``01 30``).  A block of
records is therefore a ``(rows, record width)`` byte matrix filled column
by column and turned into one ``bytes`` by ``tobytes()``: no Python object
per sample.

The checks :func:`~._format.member_problem` makes on a list of members are
made here on the columns, with the same meaning: at least one sample, every
member longer than its timestamp, timestamps finite and not negative
(``-0.0`` is written as ``+0.0``, as :func:`~._format.pack_member` does),
members strictly increasing.  For non-negative timestamps the byte order of
members is the order of ``(timestamp, value bytes)``, so only samples that
share a timestamp need their value bytes compared.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from . import _format as fmt

__all__ = ["ColumnMembers", "column_members_problem", "column_zset_body"]

#: Records encoded per block (one ``bytes`` each).
BLOCK_ROWS = 1 << 14
_SCORE = np.frombuffer(b"\x01" + b"0", np.uint8)   # text score "0", as in zset_body


@dataclass(frozen=True)
class ColumnMembers:
    """The members of a zset as columns: member ``i`` is the big-endian float64
    ``timestamps[i]``, then `prefix`, then row ``i`` of the uint8 matrix `body`."""

    timestamps: np.ndarray     #: float64, one per member
    prefix: bytes              #: shared first bytes of every value
    body: np.ndarray           #: (count, width) uint8: the rest of each value

    @classmethod
    def of(cls, timestamps: np.ndarray, prefix: bytes, body: np.ndarray) -> ColumnMembers:
        """Columns from any float timestamps and a ``(count, width)`` array of bytes (or
        a ``V<width>`` array of count values)."""
        stamps = np.asarray(timestamps, np.float64)
        raw = np.ascontiguousarray(body)
        if raw.ndim == 1:
            raw = raw.view(np.uint8).reshape(len(raw), raw.dtype.itemsize)
        elif raw.dtype != np.uint8:
            raise TypeError(f"member bodies must be uint8, not {raw.dtype}")
        if raw.shape[0] != len(stamps):
            raise ValueError(f"{len(stamps)} timestamps for {raw.shape[0]} values")
        return cls(stamps, bytes(prefix), raw)

    def __len__(self) -> int:
        return len(self.timestamps)

    @property
    def member_size(self) -> int:
        """Bytes in each member."""
        return 8 + len(self.prefix) + int(self.body.shape[1])


def column_members_problem(members: ColumnMembers) -> str | None:
    """Say why `members` is not a telescope-state zset, or return None if it is
    (the checks of :func:`~._format.member_problem`, vectorised)."""
    ts, body = members.timestamps, members.body
    if len(ts) == 0:
        return "empty zset"
    if members.member_size < 9:
        return "zset members are shorter than a timestamp plus a value"
    bad = ~(ts >= 0.0) | (ts == np.inf)       # negative, NaN or infinite
    if bad.any():
        return f"zset member {int(np.argmax(bad))} has a negative or non-finite timestamp"
    step = np.diff(ts)
    if (step < 0.0).any():
        return f"zset members out of order at member {int(np.argmax(step < 0.0)) + 1}"
    same = np.flatnonzero(step == 0.0)
    if len(same):                              # compare the value bytes of equal timestamps
        a, b = body[same], body[same + 1]
        differ = a != b
        if not differ.any(axis=1).all():
            i = int(same[np.argmin(differ.any(axis=1))]) + 1
            return f"duplicate zset member at member {i}"
        first = differ.argmax(axis=1)
        rows = np.arange(len(same))
        wrong = a[rows, first] > b[rows, first]
        if wrong.any():
            return f"zset members out of order at member {int(same[np.argmax(wrong)]) + 1}"
    return None


def column_zset_body(members: ColumnMembers, block_rows: int = BLOCK_ROWS) -> Iterator[bytes]:
    """Yield the type-3 encoding of a zset of column members (count, then records),
    the same bytes as :func:`~._writer.zset_body` of the packed members."""
    count = len(members)
    yield fmt.encode_length(count)
    size = members.member_size
    head = np.frombuffer(fmt.length_prefix(size), np.uint8)
    prefix = np.frombuffer(members.prefix, np.uint8)
    at_ts = len(head)
    at_prefix = at_ts + 8
    at_body = at_prefix + len(prefix)
    at_score = at_ts + size
    width = at_score + len(_SCORE)
    for first in range(0, count, block_rows):
        stop = min(first + block_rows, count)
        block = np.empty((stop - first, width), np.uint8)
        block[:, :at_ts] = head
        # + 0.0 turns -0.0 into 0.0; written straight into the block as big-endian
        np.add(members.timestamps[first:stop], 0.0,
               out=block[:, at_ts:at_prefix].view(">f8")[:, 0])
        block[:, at_prefix:at_body] = prefix
        block[:, at_body:at_score] = members.body[first:stop]
        block[:, at_score:] = _SCORE
        yield block.tobytes()
