"""RecordCopier: a shared log's stream records appended to an archive log, exactly once.

Theory of operation
-------------------
An archive is a segment log opened with ``Log.open(path, copy=True)``: its
writer is a :class:`~._copy_writer.CopyWriter`, which frames each copied
event as the record says (position, recorded time, session, tail).  The
copier takes the records of the stream in order and, for each one:

1. checks it may follow what the archive holds: its position is the next
   one (``StreamDivergedError`` otherwise: a gap, or a position already
   held), its session was defined, its recorded time does not go back, and
   it does not contradict the state (a sample for an immutable key...), so
   nothing is written that a replay of the archive would refuse;
2. appends its frame (with the key and session definitions the segment
   lacks) in one write -- an ADD_BATCH record covering positions
   p .. p+count-1 is one frame, so a crash leaves all of it or none;
3. applies it to the archive's :class:`~telstate_log.core._state.State` with
   the State's *replay* methods (:meth:`State.apply`, and
   :meth:`State.apply_sensor_batch` for a batch) -- what recovery does with
   the same frames -- so the state in memory is always the state reopening
   the archive yields, and checkpoints (taken from it) and history stay
   consistent.  Replay keeps an event that changes nothing (a sample the
   state holds because a katsdptelstate client deleted the key behind the
   shared log's back) and only moves the position on: the archive is a
   faithful copy of the stream, the stream is the truth.

Step 1 makes step 3 unable to fail; if it ever did, the writer is marked
failed (nothing more is appended and no checkpoint is taken of a state that
ran ahead of the file) and reopening the archive recovers what was written.

Speed.  A stream written by many ``add`` calls is mostly ADD records of
keys already defined in the current segment; :meth:`RecordCopier._adds`
takes such a run straight from the raw entries -- no record objects -- into
one append of frames, and applies its samples per key with the State's
replay methods (:meth:`State.apply_sensor_samples` / ``apply_sensor_batch``),
as recovery would.  Every other record takes the path above.

SESSION records are defined in the archive as they come (under the
stream's id, with the stream's map); one already held must be the same, or
the stream has diverged.  :meth:`holds` answers whether the archive holds a
record exactly (the check of the archiver's resume point).  The copier runs
under the log's lock and calls ``after_append`` (durability, due
checkpoints) once per call.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

from ..core._errors import LogError, StreamCorruptError, StreamDivergedError
from ..core._events import (
    ADD,
    ADD_BATCH,
    CLEAR,
    IMMUTABLE,
    INDEXED,
    KIND_KEY_TYPES,
    SESSION,
)
from ..core._gcpause import collector_paused
from ..core._log_format import FRAME_MAGIC
from ..core._state import State
from ..core._stream_format import HEAD_FORMAT, StreamRecord, batch_samples, decode_record
from ..core._types import KeyType
from ._copy_writer import ADD_CHECK, EVENT_HEAD, CopyWriter
from ._log import Log

__all__ = ["RecordCopier"]

_F64 = struct.Struct("<d")
_U32 = struct.Struct("<I")
_INF = math.inf
_HEAD = struct.Struct(HEAD_FORMAT.replace("I4", "I"))
_ADD_BYTE = bytes([ADD])
_PREFIX = EVENT_HEAD.size - 8  # the 24-byte event prefix
_SENSOR_OR_NONE = (KeyType.MUTABLE, None)
#: a key with at most this many samples in a run is applied in plain Python
_FEW = 16


class RecordCopier:
    """Appends stream records to an archive log and applies them to its state."""

    def __init__(self, log: Log, state: State) -> None:
        writer = log.writer
        if not isinstance(writer, CopyWriter):
            raise LogError("records are copied only into a log opened with copy=True")
        self._log = log
        self._state = state
        self._writer = writer
        self._tables = log.tables
        self._lock = log.lock

    @property
    def position(self) -> int:
        """The last position the archive holds."""
        with self._lock:
            return self._state.position

    def copy_entries(self, ids: Sequence[bytes], bodies: Sequence[bytes]) -> int:
        """Copy raw stream entries (IDs and ``e`` fields) in stream order; returns
        how many events were copied.

        Runs of ADD records of keys the segment defines are taken in one go
        (:meth:`_adds`), every other record one by one.  Raises
        :exc:`StreamDivergedError` (naming the position) or
        :exc:`StreamCorruptError` at the first record that may not follow;
        the records before it are copied.
        """
        before = self._state.position
        with self._lock, collector_paused():
            n = len(bodies)
            i = 0
            while i < n:
                if bodies[i][:1] == _ADD_BYTE:
                    j = self._adds(ids, bodies, i)
                    if j > i:
                        i = j
                        continue
                self._copy_one(decode_record(ids[i], bodies[i]))
                i += 1
            position = self._state.position
        if position != before:  # (after an error, closing the log syncs what was copied)
            self._log.after_append(position)
        return position - before

    def _adds(self, ids: Sequence[bytes], bodies: Sequence[bytes], i: int) -> int:
        """Copy the ADD records from entry `i` on that need nothing but their frames --
        the next positions, keys and sessions the segment defines, the rules of
        :meth:`_copy_one` kept -- in one append; returns the entry after them.

        Nothing changes until every frame of the run is built: then the frames
        are appended in one write, and the samples applied per key (as replay does).
        """
        state, writer = self._state, self._writer
        seg_keys, seg_sessions = writer.segment_definitions()
        key_ids = self._tables.key_ids
        last_rec = self._tables.last_recorded
        room = writer.room()
        first = pos = state.position + 1
        frames: list[bytes] = []
        recs: list[float] = []
        groups: dict[bytes, tuple[list[float], list[bytes], list[int]]] = {}
        pack, unpack, f64, check = EVENT_HEAD.pack, _HEAD.unpack_from, _F64.unpack_from, \
            ADD_CHECK
        hs = _HEAD.size
        for k in range(i, len(bodies)):
            body = bodies[k]
            if body[:1] != _ADD_BYTE or ids[k] != b"%d-0" % pos or len(body) < hs:
                break
            _, rec, session, n = unpack(body)
            start = hs + n
            if session not in seg_sessions or not last_rec <= rec < _INF \
                    or len(body) <= start + 8:
                break
            key = body[hs:start]
            kid = key_ids.get(key)
            if kid is None or kid not in seg_keys:
                break
            ts = f64(body, start)[0]
            length = len(body) - start + _PREFIX
            if not 0.0 <= ts < _INF or length >= len(check):
                break
            room -= length + 12
            if room < 0:
                break
            group = groups.get(key)
            if group is None:
                if state.key_type(key) not in _SENSOR_OR_NONE:
                    break
                group = groups[key] = ([], [], [])
            group[0].append(ts)
            group[1].append(body[start + 8:])
            group[2].append(pos)
            frames.append(pack(FRAME_MAGIC, ADD, check[length], length, pos, rec, session, kid)
                          + body[start:])
            recs.append(rec)
            last_rec = rec
            pos += 1
        if not frames:
            return i
        writer.copy_frames(frames, first, recs)
        try:
            for key, (stamps, values, positions) in groups.items():
                if len(stamps) <= _FEW:
                    state.apply_sensor_samples(key, stamps, values, positions)
                else:
                    state.apply_sensor_batch(key, np.array(stamps), values,
                                             np.array(positions, np.int64))
            state.position = pos - 1
        except Exception as exc:  # checked above: never; if so, stop appending
            writer.fail(exc)
            raise
        return i + len(frames)

    # ------------------------------------------------------------------ one
    def _copy_one(self, record: StreamRecord) -> None:
        kind = record.kind
        if kind == SESSION:
            self._session(record)
            return
        state = self._state
        pos = record.position
        if pos != state.position + 1:
            raise StreamDivergedError(
                f"the stream has position {pos} after position {state.position}: "
                + ("entries are missing (trimmed, or lost in a failover)"
                   if pos > state.position else "it reuses positions the archive holds"),
                pos)
        rec, session, key, tail = record.recorded, record.session, record.key, record.tail
        tables = self._tables
        if session not in tables.sessions:
            raise StreamCorruptError(f"the event at position {pos} names session {session}, "
                                     "which the stream never registered")
        if not rec >= tables.last_recorded or rec == _INF:
            raise StreamCorruptError(f"the event at position {pos} was recorded at {rec}, "
                                     f"before the event preceding it ({tables.last_recorded})")
        wanted = KIND_KEY_TYPES.get(kind)
        if wanted is not None:
            have = state.key_type(key)
            if have is not None and have != wanted:
                raise StreamDivergedError(
                    f"the event at position {pos} contradicts the archive's state (key "
                    f"{key!r} is {have.name.lower()}): the stream and the archive hold "
                    "different histories", pos)
        writer = self._writer
        if kind == ADD:
            ts = _F64.unpack_from(tail)[0]
            value = tail[8:]
            if not (0.0 <= ts < _INF and value):
                raise StreamCorruptError(f"the sample at position {pos} has a bad timestamp "
                                         "or an empty value")
            writer.copy_event(ADD, pos, 1, rec, session, key, tail)
            self._apply(ADD, pos, key, b"", value, ts)
        elif kind == ADD_BATCH:
            self._batch(pos, rec, session, key, tail)
        else:
            sub = value = b""
            if kind == IMMUTABLE:
                value = tail
            elif kind == INDEXED:
                (n,) = _U32.unpack_from(tail)
                sub, value = tail[4:4 + n], tail[4 + n:]
            writer.copy_event(kind, pos, 1, rec, session, b"" if kind == CLEAR else key, tail)
            self._apply(kind, pos, key, sub, value, 0.0)

    def _apply(self, kind: int, pos: int, key: bytes, sub: bytes, value: bytes,
               ts: float) -> None:
        try:
            self._state.apply(kind, pos, key, sub, value, ts)
        except Exception as exc:  # checked above: never; if so, stop appending
            self._writer.fail(exc)
            raise

    def _batch(self, pos: int, rec: float, session: int, key: bytes, tail: bytes) -> None:
        ts, values = batch_samples(tail)
        count = len(values)
        if not count or not bool(np.all((ts >= 0.0) & (ts < _INF))) or not all(values):
            raise StreamCorruptError(f"the batch at position {pos} is empty, or has a bad "
                                     "timestamp or an empty value")
        self._writer.copy_event(ADD_BATCH, pos, count, rec, session, key, tail)
        state = self._state
        try:
            state.apply_sensor_batch(key, ts, values, np.arange(pos, pos + count, dtype=np.int64))
            state.position = pos + count - 1
        except Exception as exc:
            self._writer.fail(exc)
            raise

    def _session(self, record: StreamRecord) -> None:
        try:
            info = msgpack.unpackb(record.tail, raw=False)
        except Exception as exc:
            raise StreamCorruptError(f"session record {record.entry_id.decode()}: {exc}") \
                from None
        if not isinstance(info, dict):
            raise StreamCorruptError(f"session record {record.entry_id.decode()} is not a map")
        known = self._tables.sessions.get(record.session)
        if known is None:
            self._writer.copy_session(record.session, record.tail, info)
        elif known != info:
            raise StreamDivergedError(
                f"the stream registers session {record.session} after position "
                f"{record.position} differently from the archive: the stream and the archive "
                "hold different histories", record.position)

    # ---------------------------------------------------------------- checks
    def holds(self, record: StreamRecord) -> bool:
        """Whether the archive holds exactly `record` (its events, times and session)."""
        if record.kind == SESSION:
            with self._lock:
                known: dict[str, Any] | None = self._tables.sessions.get(record.session)
            try:
                info: Any = msgpack.unpackb(record.tail, raw=False)
            except Exception:
                return False
            return bool(known == info)
        if record.last > self.position:
            return False
        return self._log.events(record.position, record.last) == record.events()
