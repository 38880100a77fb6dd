"""Synchronous driver around the materialised :class:`~telstate_log.core._state.State`.

Theory of operation
-------------------
:class:`StateBackend` adds what the pure state leaves out: a lock (backends
are shared by threads), key-update notifications, and two hooks for
subclasses:

* ``_commit`` (and ``_commit_sample`` for samples) -- passed to the state's
  write methods; called with each new event before the state changes (the
  log backend writes the record here; the memory backend has none).
* ``_after_write(position)`` -- called after the lock is released for a write
  that produced an event, while ``_after.after_due`` is set (the log backend
  waits for durability here, so that concurrent writers share fsyncs, and
  starts due checkpoints; its writer keeps the flag, so most writes under
  ``fsync="interval"`` skip the call; the memory backend never makes it).

Each write is split into a locked step (``_w_*``: returns the result and the
new event's position, or 0 if nothing changed or nothing is due after it)
and ``_after_write``; drivers that need the two apart (the async backend,
RDB import) get them from :meth:`StateBackend.writer` (:mod:`._state_writer`).

Reads return copies or views of immutable column prefixes, never live
mutable structures, so they stay valid after the lock is released.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, cast

import numpy as np

from ..core._asof import AsOfState, Changes, changes_between
from ..core._errors import HistoryUnavailableError, ReadOnlyError
from ..core._events import Event
from ..core._sensor_range import SensorRange
from ..core._state import Commit, CommitBatch, CommitSample, State
from ..core._types import (
    ImmutableKeyUpdate,
    IndexedKeyUpdate,
    KeyType,
    KeyUpdateBase,
    MutableKeyUpdate,
)
from ..core._values import chunks
from ._base import Backend, GetResult, PathType
from ._notify import Hub, ThreadSubscription
from ._state_writer import StateWriter

if TYPE_CHECKING:
    from ..storage._event_log import CommitBatches

__all__ = ["ALWAYS_AFTER", "NEVER_AFTER", "AfterFlag", "AsOfBackend", "StateBackend"]


class AfterFlag(Protocol):
    """Whether the step after a write has work (read under the backend's lock)."""

    after_due: bool


class _Flag:
    __slots__ = ("after_due",)

    def __init__(self, after_due: bool) -> None:
        self.after_due = after_due


#: the after-step always / never has work
ALWAYS_AFTER: AfterFlag = _Flag(True)
NEVER_AFTER: AfterFlag = _Flag(False)


def _publish_sample(hub: Hub, key: bytes, value: bytes, timestamp: float) -> None:
    """Tell `key`'s monitors about a new sample."""
    update = MutableKeyUpdate(key, value, float(timestamp) + 0.0)
    hub.publish(key, lambda: update)


class StateBackend(Backend):
    """A :class:`Backend` serving reads and writes from an in-memory State."""

    _commit: Commit | None = None
    _commit_sample: CommitSample | None = None
    _commit_batch: CommitBatch | None = None
    _commit_batches: CommitBatches | None = None
    _readonly = False
    #: False once writes must be refused (read-only, closed); checked first
    _writable = True
    #: whether _after_write has work (a subclass with an after-step sets its flag)
    _after: AfterFlag = NEVER_AFTER

    def __init__(self, state: State | None = None,
                 lock: threading.RLock | None = None) -> None:
        self._state = state if state is not None else State()
        self._lock = lock if lock is not None else threading.RLock()
        self._hub = Hub()

    # ----------------------------------------------------------- subclass hooks
    def _after_write(self, position: int) -> None:
        """Called (without the lock) after a write produced event `position`."""

    def _check_writable(self) -> None:
        """Raise the reason writes are refused (called when _writable is False)."""
        if self._readonly:
            raise ReadOnlyError(f"{type(self).__name__} is read-only")

    def _ensure_writable(self) -> None:
        """Raise the reason writes are refused, if they are."""
        if not self._writable:
            self._check_writable()

    def _current_state(self) -> State:
        return self._state

    # ------------------------------------------------------------------ reads
    def __contains__(self, key: bytes) -> bool:
        with self._lock:
            return key in self._state

    def keys(self, filter: bytes) -> list[bytes]:
        with self._lock:
            return self._state.keys(filter)

    def key_type(self, key: bytes) -> KeyType | None:
        with self._lock:
            return self._state.key_type(key)

    def get(self, key: bytes) -> GetResult:
        with self._lock:
            return self._state.get(key)

    def get_indexed(self, key: bytes, sub_key: bytes) -> bytes | None:
        with self._lock:
            return self._state.get_indexed(key, sub_key)

    def get_range(self, key: bytes, start_time: float, end_time: float,
                  include_previous: bool,
                  include_end: bool) -> list[tuple[bytes, float]] | None:
        with self._lock:
            return self._state.get_range(key, start_time, end_time, include_previous,
                                         include_end)

    def get_range_arrays(self, key: bytes, start_time: float, end_time: float,
                         include_previous: bool, include_end: bool) -> SensorRange | None:
        """Like :meth:`get_range` but returns the samples as columns."""
        with self._lock:
            col = self._state.sensor(key)
            if col is None:
                return None
            i0, i1 = col.index_range(start_time, end_time, include_previous, include_end)
            return SensorRange(col, i0, i1)

    def dump(self, key: bytes) -> bytes | None:
        from ..rdb._dump_state import dump_entry

        with self._lock:
            entry = self._state.entry(key)
            if entry is None:
                return None
            return dump_entry(entry)

    def snapshot_items(self, pattern: bytes = b"*") -> list[tuple[bytes, KeyType, Any]]:
        """A consistent snapshot of the keys matching `pattern`, for export.

        Each item is ``(key, type, value)``: an encoded value (immutable), a
        dict of encoded sub-key -> value (indexed) or a
        :class:`~telstate_log.core._sensor.SensorRange` of every sample (mutable).
        Taken under the lock in O(number of keys); the sample columns are
        views that later writes do not disturb, so the caller can stream
        them out without holding the lock.
        """
        out: list[tuple[bytes, KeyType, Any]] = []
        with self._lock:
            state = self._state
            for key in sorted(state.keys(pattern)):
                kind = state.key_type(key)
                assert kind is not None
                if kind == KeyType.MUTABLE:
                    col = state.sensor(key)
                    assert col is not None
                    out.append((key, kind, SensorRange(col, 0, len(col))))
                else:
                    out.append((key, kind, state.get(key)[0]))
        return out

    # ---------------------------------------------------------- time travel
    def as_of(self, position: int | None = None, time: float | None = None) -> StateBackend:
        """A read-only backend showing the state after event `position`.

        Or after the last event recorded at or before wall-clock `time`.  The
        view reports the position it resolved to (``.position``), so a query
        can be repeated exactly.  Raises HistoryUnavailableError where no
        history is kept (the memory backend) or it was pruned.
        """
        if (position is None) == (time is None):
            raise ValueError("give exactly one of position and time")
        if time is not None:
            position = self.resolve_time(time)
        assert position is not None
        with self._lock:
            view = AsOfState(self._state, int(position))
        return AsOfBackend(view, self._lock, self)

    def resolve_time(self, when: float) -> int:
        """Position of the last event recorded at or before wall-clock `when`."""
        raise HistoryUnavailableError(f"{type(self).__name__} records no event times: "
                                      "use a LogBackend for time travel")

    def history(self, key: bytes, sub_key: bytes | None = None) -> list[Event]:
        """The events that changed `key` (or its sub-key `sub_key`), in order."""
        raise HistoryUnavailableError(f"{type(self).__name__} keeps no history: "
                                      "use a LogBackend for audit queries")

    def events(self, since: int = 1, until: int | None = None) -> list[Event]:
        """Every event with a position in ``[since, until]`` (the audit trail)."""
        raise HistoryUnavailableError(f"{type(self).__name__} keeps no history: "
                                      "use a LogBackend for audit queries")

    def changes(self, since: int, until: int) -> Changes:
        """Summary of what changed between positions `since` and `until`."""
        with self._lock:
            return changes_between(self._state, since, until)

    def session_info(self, session: int) -> dict[str, Any]:
        """Who wrote events of `session` (source label, host, pid, user, start)."""
        return {}

    @property
    def position(self) -> int:
        """Position of the last event applied."""
        with self._lock:
            return self._state.position

    # ----------------------------------------------------------------- writes
    def writer(self) -> StateWriter:
        """The locked write steps, lock and hub, for a driver that runs a write's
        two steps apart (see :mod:`telstate_log.backends._state_writer`)."""
        return StateWriter(
            lock=self._lock, hub=self._hub, state=self._current_state,
            check_writable=self._ensure_writable, set_immutable=self._w_set_immutable,
            add_mutable=self._w_add_mutable, set_indexed=self._w_set_indexed,
            delete=self._w_delete, clear=self._w_clear,
            add_mutable_many=self._w_add_mutable_many, after_write=self._after_write,
            after_write_async=self._after_write_async, commit_batch=lambda: self._commit_batch,
            commit_batches=lambda: self._commit_batches)

    def _w_set_immutable(self, key: bytes, value: bytes) -> tuple[bytes | None, int]:
        with self._lock:
            if not self._writable:
                self._check_writable()
            state = self._state
            old = state.set_immutable(key, value, self._commit)
            if old is not None:
                return old, 0
            self._hub.publish(key, lambda: ImmutableKeyUpdate(key, value))
            return None, state.position if self._after.after_due else 0

    def _w_add_mutable(self, key: bytes, value: bytes, timestamp: float) -> int:
        # acquire/release instead of `with`: the hot path of every sample, and a
        # `with` costs twice as much (it looks up and calls __enter__ and
        # __exit__, which the lock types take through their slow calling path).
        # No closure either (a lambda here would make cells of the arguments
        # at every call): the update is made by _publish_sample.
        lock = self._lock
        lock.acquire()
        try:
            if not self._writable:
                self._check_writable()
            pos = self._state.add_mutable(key, value, timestamp, self._commit_sample)
            if not pos:
                return 0
            hub = self._hub
            if key in hub.by_key or hub.wildcard:
                _publish_sample(hub, key, value, timestamp)
            return pos if self._after.after_due else 0
        finally:
            lock.release()

    def _w_set_indexed(self, key: bytes, sub_key: bytes, value: bytes) -> tuple[bytes | None, int]:
        with self._lock:
            if not self._writable:
                self._check_writable()
            state = self._state
            old = state.set_indexed(key, sub_key, value, self._commit)
            if old is not None:
                return old, 0
            self._hub.publish(key, lambda: IndexedKeyUpdate(key, sub_key, value))
            return None, state.position if self._after.after_due else 0

    def _w_delete(self, key: bytes) -> int:
        with self._lock:
            if not self._writable:
                self._check_writable()
            if not self._state.delete(key, self._commit):
                return 0
            self._hub.publish(key, KeyUpdateBase)
            return self._state.position if self._after.after_due else 0

    def _w_clear(self) -> int:
        with self._lock:
            if not self._writable:
                self._check_writable()
            if not self._state.clear(self._commit):
                return 0
            self._hub.publish_all(KeyUpdateBase())
            return self._state.position if self._after.after_due else 0

    #: a bulk write is recorded and applied in atomic chunks of about this many bytes
    BULK_CHUNK_BYTES = 4 << 20

    def _w_add_mutable_many(self, key: bytes, values: Sequence[bytes] | np.ndarray,
                            timestamps: Any) -> tuple[int, int]:
        ts = np.asarray(timestamps, np.float64)
        if len(ts) != len(values):
            raise ValueError("values and timestamps differ in length")
        added = pos = 0
        runs = chunks(values, 44, self.BULK_CHUNK_BYTES)
        whole = len(runs) == 1
        for i, j in runs:
            try:
                with self._lock:
                    if not self._writable:
                        self._check_writable()
                    state = self._state
                    k = state.add_mutable_batch(key, values if whole else values[i:j],
                                                ts if whole else ts[i:j], self._commit_batch)
                    if k:
                        added += k
                        if self._after.after_due:
                            pos = state.position
                        self._hub.publish(key, KeyUpdateBase)
            except Exception as exc:
                # Earlier chunks stay recorded and applied: say how many.
                exc.recorded = added  # type: ignore[attr-defined]
                raise
        return added, pos

    def add_mutable_many(self, key: bytes, values: Sequence[bytes] | np.ndarray,
                         timestamps: Any) -> int:
        """Add many samples to one mutable key at once; returns how many were new.

        The same as calling :meth:`add_mutable` for each pair (duplicates are
        dropped), but recorded and applied in bulk: the log writes one
        ADD_BATCH frame per few MiB instead of a frame per sample.  `values`
        may be a ``V<width>`` numpy array of fixed-width encoded values, which
        stays an array end to end (the fastest way to load a big sensor).  Each chunk
        of about :attr:`BULK_CHUNK_BYTES` is atomic; if a chunk fails (e.g.
        :exc:`LogWriteError` on a full disk) the exception's ``recorded``
        attribute says how many samples earlier chunks recorded.
        """
        added, pos = self._w_add_mutable_many(key, values, timestamps)
        if pos:
            self._after_write(pos)
        return added

    async def _after_write_async(self, position: int) -> None:
        """Async counterpart of :meth:`_after_write` (must not block the loop)."""

    def set_immutable(self, key: bytes, value: bytes) -> bytes | None:
        old, pos = self._w_set_immutable(key, value)
        if pos:
            self._after_write(pos)
        return old

    def add_mutable(self, key: bytes, value: bytes, timestamp: float) -> None:
        pos = self._w_add_mutable(key, value, timestamp)
        if pos:
            self._after_write(pos)

    def set_indexed(self, key: bytes, sub_key: bytes, value: bytes) -> bytes | None:
        old, pos = self._w_set_indexed(key, sub_key, value)
        if pos:
            self._after_write(pos)
        return old

    def delete(self, key: bytes) -> None:
        pos = self._w_delete(key)
        if pos:
            self._after_write(pos)

    def clear(self) -> None:
        pos = self._w_clear()
        if pos:
            self._after_write(pos)

    def load_from_file(self, file: PathType | BinaryIO) -> int:
        """Load an RDB file's keys as events (see :mod:`telstate_log.replay`)."""
        from ._rdb_import import load_rdb_into

        return load_rdb_into(self, file)

    # --------------------------------------------------------------- monitor
    def monitor_keys(self, keys: Iterable[bytes]) \
            -> Generator[KeyUpdateBase | None, float | None, None]:
        return self._monitor(keys)

    def watch_all(self) -> Generator[KeyUpdateBase | None, float | None, None]:
        """Like :meth:`monitor_keys` for every key (e.g. a projector tailing the state)."""
        return self._monitor(None)

    def _monitor(self, keys: Iterable[bytes] | None) \
            -> Generator[KeyUpdateBase | None, float | None, None]:
        sub = ThreadSubscription(keys)
        self._hub.subscribe(sub)
        try:
            # The condition may already hold: tell the caller to check now.
            timeout = yield KeyUpdateBase()
            while True:
                timeout = yield sub.get(timeout)
        finally:
            self._hub.unsubscribe(sub)

    # ------------------------------------------------------------ internals
    def __repr__(self) -> str:
        return f"<{type(self).__name__} position={self._state.position} keys={len(self._state)}>"

    def _stats(self) -> dict[str, Any]:
        with self._lock:
            return {"position": self._state.position, "keys": len(self._state),
                    "sensor_bytes": self._state.nbytes()}


class AsOfBackend(StateBackend):
    """The state of `base` after event `view.position`; every write raises ReadOnlyError.

    Reads share the base backend's lock (the live columns they filter can be
    re-laid out by writers) but return snapshots.  History queries are those
    of the base, cut at this view's position.
    """

    _readonly = True
    _writable = False

    def __init__(self, view: AsOfState, lock: threading.RLock, base: StateBackend) -> None:
        super().__init__(cast(State, view), lock=lock)
        self._view = view
        self._base = base

    def _check_writable(self) -> None:
        raise ReadOnlyError(f"an as-of view (position {self._view.position}) is read-only")

    @property
    def position(self) -> int:
        """The position this view shows the state after."""
        return self._view.position

    def load_from_file(self, file: PathType | BinaryIO) -> int:
        self._check_writable()
        raise AssertionError("unreachable")

    def as_of(self, position: int | None = None, time: float | None = None) -> StateBackend:
        if time is not None:
            position = min(self._base.resolve_time(time), self._view.position)
        if position is None or position > self._view.position:
            raise ValueError(f"an as-of view at position {self._view.position} cannot show "
                             f"position {position}")
        return self._base.as_of(position)

    def resolve_time(self, when: float) -> int:
        return min(self._base.resolve_time(when), self._view.position)

    def history(self, key: bytes, sub_key: bytes | None = None) -> list[Event]:
        return [e for e in self._base.history(key, sub_key) if e.position <= self.position]

    def events(self, since: int = 1, until: int | None = None) -> list[Event]:
        stop = self.position if until is None else min(until, self.position)
        return self._base.events(since, stop)

    def changes(self, since: int, until: int) -> Changes:
        return self._base.changes(since, min(until, self.position))

    def session_info(self, session: int) -> dict[str, Any]:
        return self._base.session_info(session)
