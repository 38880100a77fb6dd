"""Asynchronous driver around a synchronous state backend.

Theory of operation
-------------------
Reads and writes of an in-process state take microseconds, so the async
methods call the shared sync backend on the event loop; the data is the
same object, which is what ``to_sync()`` / ``from_sync()`` expose.  The loop
must never wait for the disk or for another thread, so each call goes
through :meth:`AsyncStateBackend._try`:

* it takes the backend's lock only if it is free at once.  Most holders let
  go at once (the flusher, a durability thread), so the task yields and
  retries for up to :attr:`~AsyncStateBackend.LOCKED_RETRY`; a thread may
  hold it for long, though (a write rotating a segment, a checkpoint's
  snapshot), so after that the call runs in a worker thread (one per
  backend: every such call needs the lock anyway);
* for a log backend it marks the event writer ``nonblocking`` while the
  call runs, so a write that would start a segment (fsync, file creation:
  :class:`~telstate_log.storage._segment_files.WouldBlock`) is abandoned
  before changing anything and run again in a worker thread.

Waiting for durability (``fsync="always"``: the fsync runs in a worker
thread and concurrent tasks share it), background checkpoints (their own
thread) and anything slow (opening a log, loading an RDB file, history
reads, closing) never run on the loop either.  ``monitor_keys`` subscribes
a :class:`~telstate_log.backends._notify.TaskSubscription` to the sync
backend's hub, so writes from any thread (a sync writer, the log follower)
wake the task through its own event loop.  The sync backend's parts the
driver uses (its locked write steps, lock and hub) come from its
:meth:`~telstate_log.backends._state_backend.StateBackend.writer`.
"""

from __future__ import annotations

import enum
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from typing import Any, BinaryIO, Generic, Protocol, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread
import sniffio

from ...core._asof import Changes
from ...core._events import Event
from ...core._sensor_range import SensorRange
from ...core._types import KeyType, KeyUpdateBase
from ...core._values import chunks
from .._base import GetResult, PathType
from .._notify import TaskSubscription
from .._state_backend import StateBackend
from ._backend import Backend

__all__ = ["AsyncStateBackend"]

_S = TypeVar("_S", bound=StateBackend)
_T = TypeVar("_T")


class _Appender(Protocol):
    """What the driver needs of a log's event writer (storage._segment_files)."""

    nonblocking: bool


class _NeverRaised(Exception):
    pass


class _Busy(enum.Enum):
    """Why AsyncStateBackend._try did nothing."""

    LOCKED = 0  # a thread holds the lock (maybe only for a moment)
    DISK = 1  # the write would wait for the disk


class AsyncStateBackend(Backend, Generic[_S]):
    """Async view of a sync :class:`~telstate_log.backends._state_backend.StateBackend`."""

    #: what the appender raises instead of blocking (the log backend's WouldBlock)
    _would_block: type[Exception] = _NeverRaised

    def __init__(self, sync: _S) -> None:
        self._sync = sync
        #: the sync backend's locked write steps, lock and hub
        self._writer = writer = sync.writer()
        self._lock = writer.lock
        #: the log's event writer, told not to block while the loop writes (None: no log)
        self._appender: _Appender | None = None
        #: one worker thread per event-loop library for calls that need the lock
        self._limiters: dict[str, anyio.CapacityLimiter] = {}

    def to_sync(self) -> _S:
        """The synchronous backend sharing this one's data."""
        return self._sync

    def _try(self, fn: Callable[..., _T], *args: Any) -> _T | _Busy:
        """``fn(*args)`` here, on the loop, if that cannot block; else why not (nothing
        was done: finish with :meth:`_later`).  See the module docstring."""
        lock = self._lock
        if not lock.acquire(False):  # never wait on the loop
            return _Busy.LOCKED
        try:
            appender = self._appender
            if appender is None:
                return fn(*args)
            appender.nonblocking = True
            try:
                return fn(*args)
            finally:
                appender.nonblocking = False
        except self._would_block:
            return _Busy.DISK
        finally:
            lock.release()

    #: seconds to keep retrying on the loop while a thread holds the lock
    LOCKED_RETRY = 0.0005

    async def _later(self, why: _Busy, fn: Callable[..., _T], *args: Any) -> _T:
        """Finish ``fn(*args)`` that :meth:`_try` could not run."""
        if why is _Busy.LOCKED:
            # Most holders (the flusher, a durability thread) let go at once:
            # let them run, then retry, before paying for a worker thread.
            deadline = time.monotonic() + self.LOCKED_RETRY
            while True:
                await anyio.lowlevel.checkpoint()
                r = self._try(fn, *args)
                if not isinstance(r, _Busy):
                    return r
                if r is _Busy.DISK or time.monotonic() > deadline:
                    break
        # Every such call needs the lock, so one thread loses nothing; queueing
        # the rest on the loop spares starting (and switching to) a thread each.
        library = sniffio.current_async_library()
        limiter = self._limiters.get(library)
        if limiter is None:
            limiter = self._limiters[library] = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)

    # Each call is spelled out (no shared coroutine): a coroutine level costs
    # as much as the lock, the flag and the write's framing together.
    async def exists(self, key: bytes) -> bool:
        r = self._try(self._sync.__contains__, key)
        if isinstance(r, _Busy):
            r = await self._later(r, self._sync.__contains__, key)
        return r

    async def keys(self, filter: bytes) -> list[bytes]:
        r = self._try(self._sync.keys, filter)
        if isinstance(r, _Busy):
            r = await self._later(r, self._sync.keys, filter)
        return r

    async def key_type(self, key: bytes) -> KeyType | None:
        r = self._try(self._sync.key_type, key)
        if isinstance(r, _Busy):
            r = await self._later(r, self._sync.key_type, key)
        return r

    async def get(self, key: bytes) -> GetResult:
        r = self._try(self._sync.get, key)
        if isinstance(r, _Busy):
            r = await self._later(r, self._sync.get, key)
        return r

    async def get_indexed(self, key: bytes, sub_key: bytes) -> bytes | None:
        r = self._try(self._sync.get_indexed, key, sub_key)
        if isinstance(r, _Busy):
            r = await self._later(r, self._sync.get_indexed, key, sub_key)
        return r

    async def get_range(self, key: bytes, start_time: float, end_time: float,
                        include_previous: bool,
                        include_end: bool) -> list[tuple[bytes, float]] | None:
        args = (key, start_time, end_time, include_previous, include_end)
        r = self._try(self._sync.get_range, *args)
        if isinstance(r, _Busy):
            r = await self._later(r, self._sync.get_range, *args)
        return r

    async def get_range_arrays(self, key: bytes, start_time: float, end_time: float,
                               include_previous: bool, include_end: bool) -> SensorRange | None:
        args = (key, start_time, end_time, include_previous, include_end)
        r = self._try(self._sync.get_range_arrays, *args)
        if isinstance(r, _Busy):
            r = await self._later(r, self._sync.get_range_arrays, *args)
        return r

    async def dump(self, key: bytes) -> bytes | None:
        r = self._try(self._sync.dump, key)
        if isinstance(r, _Busy):
            r = await self._later(r, self._sync.dump, key)
        return r

    async def set_immutable(self, key: bytes, value: bytes) -> bytes | None:
        r = self._try(self._writer.set_immutable, key, value)
        if isinstance(r, _Busy):
            r = await self._later(r, self._writer.set_immutable, key, value)
        old, pos = r
        if pos:
            await self._writer.after_write_async(pos)
        return old

    async def add_mutable(self, key: bytes, value: bytes, timestamp: float) -> None:
        pos = self._try(self._writer.add_mutable, key, value, timestamp)
        if isinstance(pos, _Busy):
            pos = await self._later(pos, self._writer.add_mutable, key, value, timestamp)
        if pos:
            await self._writer.after_write_async(pos)

    async def add_mutable_many(self, key: bytes, values: Sequence[bytes],
                               timestamps: Any) -> int:
        """Add many samples to one key (see the sync method); returns how many were new."""
        writer = self._writer
        # One atomic chunk may be tried here (WouldBlock comes before anything
        # is recorded); several chunks are megabytes to frame: a thread's work.
        r = self._try(writer.add_mutable_many, key, values, timestamps) \
            if len(chunks(values, 44, self._sync.BULK_CHUNK_BYTES)) <= 1 else _Busy.DISK
        if isinstance(r, _Busy):
            r = await self._later(r, writer.add_mutable_many, key, values, timestamps)
        added, pos = r
        if pos:
            await writer.after_write_async(pos)
        return added

    async def set_indexed(self, key: bytes, sub_key: bytes, value: bytes) -> bytes | None:
        r = self._try(self._writer.set_indexed, key, sub_key, value)
        if isinstance(r, _Busy):
            r = await self._later(r, self._writer.set_indexed, key, sub_key, value)
        old, pos = r
        if pos:
            await self._writer.after_write_async(pos)
        return old

    async def delete(self, key: bytes) -> None:
        pos = self._try(self._writer.delete, key)
        if isinstance(pos, _Busy):
            pos = await self._later(pos, self._writer.delete, key)
        if pos:
            await self._writer.after_write_async(pos)

    async def clear(self) -> None:
        pos = self._try(self._writer.clear)
        if isinstance(pos, _Busy):
            pos = await self._later(pos, self._writer.clear)
        if pos:
            await self._writer.after_write_async(pos)

    async def load_from_file(self, file: PathType | BinaryIO) -> int:
        return await anyio.to_thread.run_sync(self._sync.load_from_file, file)

    # ------------------------------------------------------ time travel, audit
    async def as_of(self, position: int | None = None,
                    time: float | None = None) -> AsyncStateBackend[Any]:
        """Read-only view of the state after event `position` (or wall-clock `time`)."""
        view = await anyio.to_thread.run_sync(self._sync.as_of, position, time)
        return AsyncStateBackend(view)

    async def resolve_time(self, when: float) -> int:
        return await anyio.to_thread.run_sync(self._sync.resolve_time, when)

    async def history(self, key: bytes, sub_key: bytes | None = None) -> list[Event]:
        return await anyio.to_thread.run_sync(self._sync.history, key, sub_key)

    async def events(self, since: int = 1, until: int | None = None) -> list[Event]:
        return await anyio.to_thread.run_sync(self._sync.events, since, until)

    async def changes(self, since: int, until: int) -> Changes:
        r = self._try(self._sync.changes, since, until)
        if isinstance(r, _Busy):
            r = await self._later(r, self._sync.changes, since, until)
        return r

    async def session_info(self, session: int) -> dict[str, Any]:
        r = self._try(self._sync.session_info, session)
        if isinstance(r, _Busy):
            r = await self._later(r, self._sync.session_info, session)
        return r

    async def snapshot_items(self, pattern: bytes = b"*") -> list[tuple[bytes, KeyType, Any]]:
        r = self._try(self._sync.snapshot_items, pattern)
        if isinstance(r, _Busy):
            r = await self._later(r, self._sync.snapshot_items, pattern)
        return r

    @property
    def position(self) -> int:
        """Position of the last event applied."""
        return self._sync.position

    async def monitor_keys(self, keys: Iterable[bytes]) -> AsyncGenerator[KeyUpdateBase, None]:
        sub = TaskSubscription(keys)
        hub = self._writer.hub
        hub.subscribe(sub)
        try:
            # The condition may already hold: tell the caller to check now.
            yield KeyUpdateBase()
            while True:
                yield await sub.get()
        finally:
            hub.unsubscribe(sub)

    def close(self) -> None:
        """Nothing to shut down for an in-process state."""

    async def wait_closed(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._sync!r}>"
