"""Streaming writer of RDB files that both redis-server and katsdptelstate load.

Theory of operation
-------------------
The output must load in redis-server (7.0 accepts RDB versions up to 10) and
in katsdptelstate 1.0.0's ``load_from_file``, whose parser (rdbtools) accepts
versions 1-9 and no listpack types.  So the file is:

* header ``REDIS0009`` -- the newest version both accept (Redis >= 5.0);
* AUX fields (``telstate-log-ver`` by default; Redis and rdbtools skip
  unknown AUX names), ``SELECTDB``, and ``RESIZEDB`` when the key count is
  given up front;
* one record per key using only the plain, element-by-element types:
  type 0 (string) for immutable keys, type 4 (hash: count, then field/value
  strings) for indexed keys and type 3 (zset: count, then member strings
  each followed by the score as text, always ``"0"``) for mutable keys;
* ``0xFF`` and the CRC-64 of everything before it, little-endian.

Why these types: redis-server rebuilds plain types element by element on
load, rejecting duplicates and converting small ones to its compact
encodings itself, so a mistake here cannot leave a corrupt listpack inside
Redis (it does not deep-check listpacks).  Type 3 with the 2-byte text score
is also the smallest encoding for telstate members (3 bytes of overhead per
member, against 4 for a ziplist and 9 for binary scores), needs no per-entry
back-links, and suits bulk ``bytes.join`` encoding: when all members of a
zset have the same length (typical for a sensor), a whole chunk of members is
encoded by a single join, and members given as fixed-width numpy columns
(:meth:`RdbWriter.write_zset_columns`, :mod:`._zset_columns`) are encoded as
a byte matrix with no Python object per member.  Strings are never
LZF-compressed or integer-encoded, which keeps the output byte-for-byte
predictable.

Memory stays flat: records are appended to a buffer that is joined,
checksummed (the CRC is carried from chunk to chunk) and written whenever it
exceeds `buffer_size`; a piece of 64 KiB or more (an encoded chunk of a large
zset, a big value) is checksummed and written as it is, after the buffer,
without the copy of a join; large zsets and hashes are encoded in chunks.  Inputs
are validated before anything reaches the file: keys must be unique per
database, zset members strictly increasing with valid timestamps, hashes and
zsets non-empty (Redis drops empty keys on load).  If a write fails part-way,
the partial record is rolled back, or the writer refuses further use if some
of it was already written.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import chain, islice
from typing import IO, cast

from .._version import __version__
from ..core._types import KeyType
from . import _format as fmt
from ._crc64 import Crc64
from ._format import Value
from ._zset_columns import ColumnMembers, column_members_problem, column_zset_body

__all__ = ["RdbWriter", "hash_body", "zset_body"]

_ZERO_SCORE = b"\x01" + b"0"          # text score: 1-byte length, then "0"
_CHUNK = 1 << 14                      # members (or fields) encoded per bulk join
_DIRECT = 1 << 16                     # pieces this big are written without buffering
_prefix = fmt.length_prefix


def _as_bytes(text: bytes | str) -> bytes:
    return text.encode() if isinstance(text, str) else bytes(text)


def zset_body(members: Sequence[bytes]) -> Iterator[bytes]:
    """Yield the type-3 encoding of a zset (count, then member + text score "0")."""
    yield fmt.encode_length(len(members))
    for first in range(0, len(members), _CHUNK):
        chunk = members[first:first + _CHUNK]
        lengths = list(map(len, chunk))
        if min(lengths) == max(lengths):
            prefix = _prefix(lengths[0])
            yield prefix
            yield (_ZERO_SCORE + prefix).join(chunk)
            yield _ZERO_SCORE
        else:
            parts = [_ZERO_SCORE] * (3 * len(chunk))
            parts[0::3] = map(_prefix, lengths)
            parts[1::3] = chunk
            yield b"".join(parts)


def hash_body(mapping: Mapping[bytes, bytes]) -> Iterator[bytes]:
    """Yield the type-4 encoding of a hash (count, then field and value strings)."""
    yield fmt.encode_length(len(mapping))
    items = iter(mapping.items())
    while chunk := list(chain.from_iterable(islice(items, _CHUNK))):
        parts = chunk * 2
        parts[0::2] = map(_prefix, map(len, chunk))
        parts[1::2] = chunk
        yield b"".join(parts)


class RdbWriter:
    """Write telescope state to an RDB file, one key at a time.

    Parameters
    ----------
    target
        Path (opened with ``"wb"`` and closed by :meth:`close`) or a binary
        file object (left open).
    aux
        AUX fields for the header; default ``{"telstate-log-ver": version}``.
    db
        Number of the first database.
    key_count
        If given, a RESIZEDB hint for the first database.
    buffer_size
        Bytes buffered before a write to the file.
    """

    def __init__(self, target: str | os.PathLike[str] | IO[bytes], *,
                 aux: Mapping[bytes | str, bytes | str] | None = None, db: int = 0,
                 key_count: int | None = None, buffer_size: int = 1 << 20) -> None:
        self._path: str | None = None
        if isinstance(target, (str, os.PathLike)):
            self._path = os.fspath(target)
            self._file: IO[bytes] = open(self._path, "wb")  # noqa: SIM115 - closed in close()
        else:
            self._file = target
        self._buffer_size = buffer_size
        self._parts: list[bytes] = []
        self._pending = 0
        self._flushes = 0
        self._crc = Crc64()
        self._keys: set[bytes] = set()
        self._state = "open"
        self.keys_written = 0
        self.bytes_written = 0
        if aux is None:
            aux = {"telstate-log-ver": __version__}
        try:
            self._emit(fmt.MAGIC + b"%04d" % fmt.WRITE_VERSION)
            for name, value in aux.items():
                self._emit(bytes((fmt.OP_AUX,)) + fmt.encode_string(_as_bytes(name))
                           + fmt.encode_string(_as_bytes(value)))
            self.select_db(db, key_count)
        except BaseException:
            self.abort()
            raise

    # -- buffering -------------------------------------------------------------

    def _emit(self, data: bytes) -> None:
        if len(data) >= _DIRECT:             # a big piece skips the buffer (and its copy)
            self._flush()
            self._write(data)
            return
        self._parts.append(data)
        self._pending += len(data)
        if self._pending >= self._buffer_size:
            self._flush()

    def _flush(self) -> None:
        if not self._parts:
            return
        data = b"".join(self._parts)
        self._parts.clear()
        self._pending = 0
        self._write(data)

    def _write(self, data: bytes) -> None:
        self._flushes += 1
        self._crc.update(data)
        self._file.write(data)
        self.bytes_written += len(data)

    # -- records ---------------------------------------------------------------

    def select_db(self, db: int, key_count: int | None = None) -> None:
        """Start database `db` (with an optional RESIZEDB hint of `key_count` keys)."""
        self._check_open()
        self._emit(bytes((fmt.OP_SELECTDB,)) + fmt.encode_length(db))
        if key_count is not None:
            self._emit(bytes((fmt.OP_RESIZEDB,)) + fmt.encode_length(key_count) + b"\x00")
        self._keys = set()

    def write_string(self, key: bytes, value: bytes) -> None:
        """Write an immutable key (Redis string)."""
        self._record(key, fmt.TYPE_STRING, (_prefix(len(value)), value))

    def write_zset(self, key: bytes, members: Sequence[bytes]) -> None:
        """Write a mutable key: `members` are packed samples in strictly increasing order."""
        problem = fmt.member_problem(members)
        if problem is not None:
            raise ValueError(f"cannot write key {key!r}: {problem}")
        self._record(key, fmt.TYPE_ZSET, zset_body(members))

    def write_zset_columns(self, key: bytes, members: ColumnMembers) -> None:
        """Write a mutable key whose members are fixed-width columns (the same bytes as
        :meth:`write_zset` of the packed members; see :mod:`._zset_columns`)."""
        problem = column_members_problem(members)
        if problem is not None:
            raise ValueError(f"cannot write key {key!r}: {problem}")
        self._record(key, fmt.TYPE_ZSET, column_zset_body(members))

    def write_hash(self, key: bytes, mapping: Mapping[bytes, bytes]) -> None:
        """Write an indexed key: a non-empty mapping of encoded sub-key to value."""
        if not mapping:
            raise ValueError(f"cannot write key {key!r}: empty hash")
        self._record(key, fmt.TYPE_HASH, hash_body(mapping))

    def write(self, key: bytes, kind: KeyType, value: Value) -> None:
        """Write a key of any kind (value as :class:`~._rdb_reader.RdbEntry` holds it)."""
        kind = KeyType.coerce(kind)
        if kind == KeyType.IMMUTABLE:
            self.write_string(key, cast(bytes, value))
        elif kind == KeyType.MUTABLE:
            self.write_zset(key, cast("list[bytes]", value))
        else:
            self.write_hash(key, cast("dict[bytes, bytes]", value))

    def _record(self, key: bytes, rdb_type: int, body: Iterable[bytes]) -> None:
        self._check_open()
        if not isinstance(key, bytes):
            raise TypeError(f"keys must be bytes, not {type(key).__name__}")
        if key in self._keys:
            raise ValueError(f"key {key!r} written twice to the same database")
        mark, pending, flushes = len(self._parts), self._pending, self._flushes
        try:
            self._emit(bytes((rdb_type,)) + _prefix(len(key)) + key)
            for piece in body:
                self._emit(piece)
        except BaseException:
            if self._flushes == flushes:
                del self._parts[mark:]
                self._pending = pending
            else:
                self._state = "failed"
            raise
        self._keys.add(key)
        self.keys_written += 1

    # -- ending ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"RDB writer is {self._state}")

    def close(self) -> None:
        """Write EOF and the checksum, flush, and close the file if we opened it."""
        if self._state in ("closed", "aborted"):
            return
        if self._state == "failed":
            self.abort()
            raise ValueError("RDB writer failed part-way through a key; output discarded")
        try:
            self._emit(bytes((fmt.OP_EOF,)))
            self._flush()
            self._file.write(self._crc.digest())
            self.bytes_written += 8
            self._file.flush()
        finally:
            self._state = "closed"
            if self._path is not None:
                self._file.close()

    def abort(self) -> None:
        """Stop without writing EOF (a reader will refuse the file); delete it if ours."""
        if self._state in ("closed", "aborted"):
            return
        self._state = "aborted"
        self._parts.clear()
        if self._path is not None:
            self._file.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)

    def __enter__(self) -> RdbWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
