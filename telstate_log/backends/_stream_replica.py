"""A materialised, read-only replica of a shared log's state.

Theory of operation
-------------------
:class:`StreamReplica` is a :class:`~._state_backend.StateBackend` (reads at
in-memory speed, history kept for time travel) fed from the stream of a
shared log.  It does no I/O itself: whoever owns the connection -- the
sync or async shared-log backend, or a follower thread -- reads records and
hands them to :meth:`StreamReplica.apply` (decoded records) or
:meth:`StreamReplica.apply_entries` (raw entries, the fast path) in stream
order.  Records are applied under the backend's lock with
:func:`~telstate_log.core._stream_apply.apply_record`, so a replica is
always the state at some position of the stream, and a gap or a different
event at a known position raises :exc:`~telstate_log.StreamDivergedError`
(and the replica keeps the state it had: it never merges two histories).
Monitors of the replica are notified from the hub like a log backend's.

Bulk application: a stream written by many ``add`` calls is mostly runs of
ADD records.  :meth:`apply_entries` decodes such a run (at least
:data:`BULK_MIN` records) with numpy -- positions, keys, timestamps and
values gathered from the joined record bodies, no object per record -- and
applies it per key with the state's replay methods, but only after checking
that applying the records one by one would do exactly that: consecutive
positions, every key absent or a sensor, each key's timestamps valid,
strictly increasing and after its last sample, no empty value (so every
record adds a new sample: the stream's ADDs of different keys commute).  A
run that fails any check is applied record by record instead, which
raises the same error at the same position as ever.

Recorded times of records are kept in two lists (last position, recorded
time) so :meth:`resolve_time` is a binary search; session records are kept
for :meth:`session_info`.  :meth:`wait_for` blocks until the replica has
applied a position (read-your-writes for a writer that reads through it);
:meth:`fail` stops it with an error that waiters then raise.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..core._errors import HistoryUnavailableError, StreamDivergedError
from ..core._events import ADD, SESSION
from ..core._gcpause import collector_paused
from ..core._sensor import SensorColumn
from ..core._state import State
from ..core._stream_apply import apply_record, session_of
from ..core._stream_format import HEAD_SIZE, StreamRecord, decode_record
from ..core._types import KeyUpdateBase, MutableKeyUpdate
from ..core._values import as_list, gather, gather_numbers
from ._redis_log_common import record_updates
from ._state_backend import StateBackend

__all__ = ["BULK_MIN", "StreamReplica"]

#: runs of at least this many ADD records are applied in bulk
BULK_MIN = 32
#: a key with at most this many samples in a bulk run is stored in plain Python
_FEW = 16
_ADD_MIN = HEAD_SIZE + 8 + 1  # an ADD record with a one-byte value
#: the records of one key in a bulk run (see _group_keys)
Group = np.ndarray | list[int] | None


class StreamReplica(StateBackend):
    """Read-only state of a shared log, applied from its stream records."""

    _readonly = True
    _writable = False

    def __init__(self) -> None:
        super().__init__(State(keep_history=True))
        self._changed = threading.Condition(self._lock)
        self._rec_pos: list[int] = []
        self._rec_time: list[float] = []
        self._sessions: dict[int, dict[str, Any]] = {}
        #: entry ID of the last record applied (where reading resumes)
        self.last_id = b"0-0"
        #: the error that stopped the replica, if one did
        self.error: BaseException | None = None

    def apply(self, records: Iterable[StreamRecord]) -> int:
        """Apply records in stream order; returns the position reached."""
        with self._lock:
            try:
                for record in records:
                    self._apply_one(record)
            except StreamDivergedError as exc:
                self._stop(exc)
                raise
            self._changed.notify_all()
            return self._state.position

    def apply_entries(self, ids: Sequence[bytes], bodies: Sequence[bytes]) -> int:
        """Apply raw stream entries (IDs and ``e`` fields) in stream order.

        The same as :meth:`apply` of the decoded records, with runs of ADD
        records applied in bulk (see the module docstring).
        """
        with self._lock, collector_paused():
            try:
                for a, b, bulk in _runs(bodies):
                    if not (bulk and self._apply_adds(ids[a:b], bodies[a:b])):
                        for i in range(a, b):
                            self._apply_one(decode_record(ids[i], bodies[i]))
            except StreamDivergedError as exc:
                self._stop(exc)
                raise
            self._changed.notify_all()
            return self._state.position

    def fail(self, exc: BaseException) -> None:
        """Stop the replica with `exc` (a follower lost its stream): waiters raise it."""
        with self._lock:
            if self.error is None:
                self._stop(exc)

    def _stop(self, exc: BaseException) -> None:
        self.error = exc
        self._changed.notify_all()
        self._hub.publish_all(KeyUpdateBase())  # monitors re-read, and meet the error

    @property
    def applied(self) -> int:
        """The last position applied (read without the lock: it only grows)."""
        return self._state.position

    def _apply_one(self, record: StreamRecord) -> None:
        if record.kind == SESSION:
            self._sessions[record.session] = session_of(record)
        else:
            apply_record(self._state, record)
            self._rec_pos.append(record.last)
            self._rec_time.append(record.recorded)
            self._notify(record)
        self.last_id = record.entry_id

    def _apply_adds(self, ids: Sequence[bytes], bodies: Sequence[bytes]) -> bool:
        """Apply a run of ADD records in bulk; False (nothing changed) if it may not be."""
        state = self._state
        k = len(ids)
        first = state.position + 1
        # IDs strictly increase along a stream; k of them all "<p>-0" from first to
        # first + k - 1 are exactly the consecutive positions.
        if (b"".join(ids).count(b"-0") != k or ids[0] != b"%d-0" % first
                or ids[-1] != b"%d-0" % (first + k - 1)):
            return False
        joined = b"".join(bodies)
        buf = np.frombuffer(joined, np.uint8)
        lengths = np.fromiter(map(len, bodies), np.int64, k)
        if int(lengths.min()) < _ADD_MIN:
            return False  # a cut record (or an empty value, which the state refuses)
        ends = np.cumsum(lengths)
        offsets = ends - lengths
        klen = gather_numbers(buf, offsets + 13, "<u4").astype(np.int64)
        ts_at = offsets + (HEAD_SIZE + klen)
        starts = ts_at + 8
        if int((ends - starts).min()) < 1:
            return False  # as above, or a key running past its record
        ts = gather_numbers(buf, ts_at, "<f8")
        if not bool(np.all((ts >= 0.0) & (ts < np.inf))):
            return False
        keys, groups = _group_keys(joined, buf, offsets + HEAD_SIZE, klen)
        stamps = ts.tolist() if isinstance(groups[0], list) else []
        plan: list[tuple[bytes, Group, Any]] = []  # key, its records, their timestamps
        for key, idx in zip(keys, groups):
            t = ts if idx is None else [stamps[i] for i in idx] if isinstance(idx, list) \
                else ts[idx]
            entry = state.entry(key)
            if (entry is not None and (type(entry) is not SensorColumn
                                       or not t[0] > entry.last_ts)) or not _increasing(t):
                return False
            plan.append((key, idx, t))
        values = _values(joined, buf, starts, ends, few=bool(stamps))
        positions = np.arange(first, first + k, dtype=np.int64)
        for key, idx, t in plan:
            if isinstance(idx, list):  # a few samples of each of many keys: plain Python
                state.apply_sensor_samples(key, t, [values[i] for i in idx],
                                           [first + i for i in idx])
                continue
            p = positions if idx is None else positions[idx]
            v = values if idx is None else values[idx] if isinstance(values, np.ndarray) \
                else [values[i] for i in idx.tolist()]
            if len(t) <= _FEW:
                state.apply_sensor_samples(key, t.tolist(), as_list(v, b""), p.tolist())
            else:
                state.apply_sensor_batch(key, t, v, p)
        state.position = first + k - 1
        self._rec_pos.extend(range(first, first + k))
        self._rec_time.extend(gather_numbers(buf, offsets + 1, "<f8").tolist())
        self.last_id = ids[-1]
        if self._hub.active:
            self._notify_adds(keys, groups, ts, values)
        return True

    def _notify_adds(self, keys: list[bytes], groups: list[Group],
                     ts: np.ndarray, values: np.ndarray | list[bytes]) -> None:
        """Key updates for a bulk run: per key in order (every record in stream
        order when a subscription watches every key)."""
        hub = self._hub
        k = len(ts)
        if hub.wildcard:
            of = np.zeros(k, np.int64)
            for g, idx in enumerate(groups):
                of[slice(None) if idx is None else idx] = g
            order: Iterable[tuple[bytes, Iterable[int]]] = (
                (keys[g], (i,)) for i, g in enumerate(of.tolist()))
        else:
            order = ((key, range(k) if idx is None else idx if isinstance(idx, list)
                      else idx.tolist()) for key, idx in zip(keys, groups) if key in hub.by_key)
        stamps = ts.tolist()
        for key, indices in order:
            for i in indices:
                value = values[i]
                update = MutableKeyUpdate(key, value if isinstance(value, bytes)
                                          else value.tobytes(), stamps[i])
                hub.publish(key, lambda u=update: u)  # type: ignore[misc]

    def _notify(self, record: StreamRecord) -> None:
        hub = self._hub
        for key, update in record_updates(record):
            if key is None:
                hub.publish_all(update)
            elif key in hub.by_key or hub.wildcard:
                hub.publish(key, lambda u=update: u)  # type: ignore[misc]

    def wait_for(self, position: int, timeout: float | None = None) -> bool:
        """Wait until `position` is applied; False on timeout. Raises the stop error."""
        with self._lock:
            ok = self._changed.wait_for(
                lambda: self._state.position >= position or self.error is not None, timeout)
            if self.error is not None:
                raise self.error.with_traceback(None)
            return ok

    def resolve_time(self, when: float) -> int:
        with self._lock:
            i = bisect.bisect_right(self._rec_time, when)
            if i == 0:
                if self._rec_time:
                    return 0
                raise HistoryUnavailableError("the shared log has no events yet")
            return self._rec_pos[i - 1]

    def session_info(self, session: int) -> dict[str, Any]:
        with self._lock:
            return dict(self._sessions.get(session, {}))

    def session_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._sessions)


def _runs(bodies: Sequence[bytes]) -> list[tuple[int, int, bool]]:
    """Split entries into runs ``(start, end, bulk)``: bulk runs are of ADD records."""
    n = len(bodies)
    if n < BULK_MIN:
        return [(0, n, False)]
    if min(map(len, bodies)) == 0:
        return [(0, n, False)]  # (decode_record reports the empty record)
    kinds = np.fromiter(map(operator.itemgetter(0), bodies), np.uint8, n)
    is_add = kinds == ADD
    edges = [0, *(np.flatnonzero(is_add[1:] != is_add[:-1]) + 1).tolist(), n]
    return [(a, b, bool(is_add[a]) and b - a >= BULK_MIN) for a, b in itertools.pairwise(edges)]


def _group_keys(joined: bytes, buf: np.ndarray, at: np.ndarray, klen: np.ndarray
                ) -> tuple[list[bytes], list[Group]]:
    """The distinct keys of a run and the indices of each one's records: None (all of
    them: one key), index arrays, or lists when there are few per key (plain Python)."""
    width = int(klen[0])
    if bool(np.all(klen == width)):
        if width == 0:
            return [b""], [None]
        mat = gather(buf, at, width)
        if bool((mat == mat[0]).all()):
            return [mat[0].tobytes()], [None]
        uniq, inverse = np.unique(np.ascontiguousarray(mat).view(f"V{width}").ravel(),
                                  return_inverse=True)
        keys = [u.tobytes() for u in uniq]
    else:
        index: dict[bytes, int] = {}
        inverse = np.fromiter(
            (index.setdefault(joined[a:a + n], len(index))
             for a, n in zip(at.tolist(), klen.tolist())), np.int64, len(at))
        keys = list(index)
    if len(keys) * _FEW >= len(at):
        lists: list[list[int]] = [[] for _ in keys]
        for i, g in enumerate(inverse.tolist()):
            lists[g].append(i)
        return keys, list(lists)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return keys, list(np.split(order, bounds))  # group g is keys[g]'s


def _increasing(t: np.ndarray | list[float]) -> bool:
    """Whether timestamps strictly increase."""
    if isinstance(t, list):
        return all(a < b for a, b in itertools.pairwise(t))
    return len(t) < 2 or bool(np.all(t[1:] > t[:-1]))


def _values(joined: bytes, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray,
            few: bool) -> np.ndarray | list[bytes]:
    """The values of a run: a ``V<width>`` array if they are all as wide (and not
    `few` per key), else a list."""
    lengths = ends - starts
    width = int(lengths[0])
    if not few and bool(np.all(lengths == width)):
        return np.ascontiguousarray(gather(buf, starts, width)).view(f"V{width}").ravel()
    return [joined[a:b] for a, b in zip(starts.tolist(), ends.tolist())]
