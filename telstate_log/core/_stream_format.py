"""The stream record: one event of a shared log, as a Redis stream entry holds it.

Theory of operation
-------------------
A shared log keeps its events in a Redis stream (see
:mod:`telstate_log.backends._redis_log`).  Each entry has one field, ``e``,
whose value is a *stream record* (all integers little-endian)::

    kind u8 | recorded f64 | session u32 | key length u32 | key | tail

and whose entry ID is ``<position>-0`` (an event) or ``<position>-<n>``,
n >= 1 (a session record registered after event <position>).  ``tail`` is
exactly what a segment frame body holds after its 24-byte prefix (the
layouts are in :mod:`telstate_log.core._log_format`), so archiving a record
into a segment is a copy: the archiver writes the prefix (position,
recorded, session, its own key id) and the tail as it is.

* SET: value; ADD: timestamp f64 + value; SET_INDEXED: sub-key length u32 +
  sub-key + value; DELETE and CLEAR: nothing (CLEAR has an empty key);
* ADD_BATCH: count u32 + width u32 + timestamps f64[count] + values (width 0:
  lengths u32[count] then the values), covering positions p .. p+count-1;
* SESSION (a meta record): empty key, tail = the msgpack session map
  (source, host, pid, user, started, version); ``session`` is the new id.

The records are built by the Redis function library
(:mod:`telstate_log.backends._log_functions`), which packs the head with
:data:`HEAD_FORMAT` -- the same format string this module unpacks -- and
takes the tails the client built here (:func:`add_tail`, ...).  Pure: no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from ._errors import StreamCorruptError
from ._events import ADD, ADD_BATCH, CLEAR, DELETE, IMMUTABLE, INDEXED, KIND_NAMES, SESSION, Event

__all__ = [
    "HEAD_FORMAT",
    "StreamRecord",
    "add_tail",
    "batch_tail",
    "decode_record",
    "entry_id",
    "indexed_tail",
    "parse_entry_id",
]

#: struct format of a record's head (kind, recorded, session, key length); the
#: Lua library packs heads with this very string (Redis's struct library
#: reads "I4" as a 4-byte unsigned integer, as Python's "I" is here)
HEAD_FORMAT = "<BdI4I4"
_HEAD = struct.Struct(HEAD_FORMAT.replace("I4", "I"))
HEAD_SIZE = _HEAD.size
_F64 = struct.Struct("<d")
_U32 = struct.Struct("<I")
_BATCH = struct.Struct("<II")
_MINIMUM_TAIL: dict[int, int] = {ADD: 8, INDEXED: 4, ADD_BATCH: 8}
_KINDS = frozenset((IMMUTABLE, ADD, INDEXED, DELETE, CLEAR, ADD_BATCH, SESSION))


@dataclass(frozen=True)
class StreamRecord:
    """One decoded stream entry: an event (or batch of events) or a session record."""

    position: int  # the entry's position (first position of a batch)
    seq: int  # the entry ID's second part: 0 for events, n >= 1 for session records
    kind: int
    recorded: float
    session: int
    key: bytes
    tail: bytes

    @property
    def last(self) -> int:
        """The last position this record covers (its own, or a batch's last)."""
        if self.kind == ADD_BATCH:
            count: int = _BATCH.unpack_from(self.tail)[0]
            return self.position + count - 1
        return self.position

    @property
    def entry_id(self) -> bytes:
        return entry_id(self.position, self.seq)

    def events(self) -> list[Event]:
        """The events of this record, as history shows them (none for a session)."""
        kind, key, tail = self.kind, self.key, self.tail
        if kind == SESSION:
            return []
        name = KIND_NAMES[kind]
        rec, sess, pos = self.recorded, self.session, self.position
        if kind == IMMUTABLE:
            return [Event(pos, rec, sess, name, key, None, tail, None)]
        if kind == ADD:
            return [Event(pos, rec, sess, name, key, None, tail[8:], _F64.unpack_from(tail)[0])]
        if kind == INDEXED:
            (n,) = _U32.unpack_from(tail)
            return [Event(pos, rec, sess, name, key, tail[4:4 + n], tail[4 + n:], None)]
        if kind == ADD_BATCH:
            ts, values = batch_samples(tail)
            return [Event(pos + i, rec, sess, name, key, None, v, t)
                    for i, (t, v) in enumerate(zip(ts.tolist(), values))]
        return [Event(pos, rec, sess, name, None if kind == CLEAR else key, None, None, None)]


def entry_id(position: int, seq: int = 0) -> bytes:
    """The stream entry ID of a record at `position` (``b"<position>-<seq>"``)."""
    return b"%d-%d" % (position, seq)


def parse_entry_id(ident: bytes | str) -> tuple[int, int]:
    """``(position, seq)`` of a stream entry ID."""
    text = ident.decode("ascii") if isinstance(ident, bytes) else ident
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def add_tail(value: bytes, timestamp: float) -> bytes:
    """The tail of an ADD record."""
    return _F64.pack(timestamp) + value


def indexed_tail(sub_key: bytes, value: bytes) -> bytes:
    """The tail of a SET_INDEXED record."""
    return _U32.pack(len(sub_key)) + sub_key + value


def batch_tail(timestamps: np.ndarray, values: list[bytes]) -> bytes:
    """The tail of an ADD_BATCH record (variable-width layout)."""
    count = len(values)
    return (_BATCH.pack(count, 0) + np.ascontiguousarray(timestamps, "<f8").tobytes()
            + np.fromiter(map(len, values), np.int64, count).astype("<u4").tobytes()
            + b"".join(values))


def batch_samples(tail: bytes) -> tuple[np.ndarray, list[bytes]]:
    """(timestamps, values) of an ADD_BATCH tail; StreamCorruptError if malformed."""
    view = memoryview(tail)
    count, width = _BATCH.unpack_from(view)
    ts_end = 8 + 8 * count
    if ts_end > len(view):
        raise StreamCorruptError("stream record: batch timestamps cut short")
    ts = np.frombuffer(view, "<f8", count, 8)
    if width:
        if ts_end + width * count != len(view):
            raise StreamCorruptError("stream record: batch values do not fill the record")
        return ts, [bytes(view[i:i + width]) for i in range(ts_end, len(view), width)]
    start = ts_end + 4 * count
    if start > len(view):
        raise StreamCorruptError("stream record: batch lengths cut short")
    lengths = np.frombuffer(view, "<u4", count, ts_end).tolist()
    if start + sum(lengths) != len(view):
        raise StreamCorruptError("stream record: batch values do not fill the record")
    values = []
    for n in lengths:
        values.append(bytes(view[start:start + n]))
        start += n
    return ts, values


def decode_record(ident: bytes | str, body: bytes) -> StreamRecord:
    """Decode one stream entry (its ID and its ``e`` field); StreamCorruptError if malformed."""
    position, seq = parse_entry_id(ident)
    if len(body) < HEAD_SIZE:
        raise StreamCorruptError(f"stream record {position}-{seq} is too short")
    kind, rec, sess, n = _HEAD.unpack_from(body)
    if kind not in _KINDS or HEAD_SIZE + n > len(body):
        raise StreamCorruptError(f"stream record {position}-{seq} is malformed (kind {kind})")
    if (seq == 0) == (kind == SESSION):
        raise StreamCorruptError(f"stream record {position}-{seq}: kind {kind} cannot have this ID")
    key = body[HEAD_SIZE:HEAD_SIZE + n]
    tail = body[HEAD_SIZE + n:]
    minimum = _MINIMUM_TAIL.get(kind, 0)
    if len(tail) < minimum:
        raise StreamCorruptError(f"stream record {position}-{seq} is cut short")
    return StreamRecord(position, seq, kind, rec, sess, key, tail)

