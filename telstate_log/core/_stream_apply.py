"""Apply stream records of a shared log to a materialised State.

Theory of operation
-------------------
A follower of a shared log (a materialised replica, a time travel query)
applies the stream's records to a :class:`State` in order.  The stream is
the truth: each record must start right after the state's position -- a
record after a gap (the stream was trimmed past the follower, or lost
entries) or at a position already applied raises
:exc:`~telstate_log.StreamDivergedError` naming the position: a follower
never skips and never applies twice.  A record that contradicts the state
(a sample for a key the state holds as an immutable, say) raises the same
error.

A record whose write the state already reflects (a value or sample it
holds; a DELETE or CLEAR of keys it does not hold) moves the position on
and changes nothing, as replaying it into a segment log does (the archive's
copier keeps such events the same way).  Writes that bypassed the shared
log cause them: a katsdptelstate client deleted a key and a shared-log
writer wrote the same value again before a recorder recorded the delete.
Divergence after a failover is caught where it can be seen for certain:
followers and archivers compare the stream's entry at their last position
with what they applied, byte for byte, whenever they reconnect.

Session records define who wrote later events; :func:`apply_record` returns
them for the caller to keep.  Pure: no I/O.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from ._errors import ImmutableKeyError, StreamDivergedError
from ._events import ADD, ADD_BATCH, CLEAR, DELETE, IMMUTABLE, INDEXED, SESSION
from ._state import State
from ._stream_format import StreamRecord, batch_samples

__all__ = ["apply_record", "session_of"]

_U32 = 4
_F64 = struct.Struct("<d")


def session_of(record: StreamRecord) -> dict[str, Any]:
    """The session map a SESSION record holds."""
    info = msgpack.unpackb(record.tail, raw=False)
    return info if isinstance(info, dict) else {"info": info}


def apply_record(state: State, record: StreamRecord) -> None:
    """Apply one event record to `state` (see module docstring); sessions are ignored."""
    kind = record.kind
    if kind == SESSION:
        return
    pos = record.position
    if pos != state.position + 1:
        raise StreamDivergedError(
            f"the stream has position {pos} after position {state.position}: "
            + ("entries are missing (trimmed, or lost in a failover)" if pos > state.position
               else "the stream reuses positions already applied"), pos)
    key, tail = record.key, record.tail
    try:
        if kind == IMMUTABLE:
            changed = state.set_immutable(key, tail) is None
        elif kind == ADD:
            changed = state.add_mutable(key, tail[8:], _F64.unpack_from(tail)[0]) != 0
        elif kind == INDEXED:
            n = int.from_bytes(tail[:_U32], "little")
            changed = state.set_indexed(key, tail[_U32:_U32 + n], tail[_U32 + n:]) is None
        elif kind == ADD_BATCH:
            ts, values = batch_samples(tail)
            changed = state.add_mutable_batch(key, values, ts) == len(values)
        elif kind == DELETE:
            if not state.delete(key):
                state.position = pos
            changed = True
        else:
            assert kind == CLEAR
            if not state.clear():
                state.position = pos
            changed = True
    except ImmutableKeyError as exc:
        raise StreamDivergedError(
            f"the event at position {pos} contradicts the state before it ({exc})", pos) from None
    if not changed or state.position != record.last:
        state.position = record.last   # (part of) the write was already reflected
