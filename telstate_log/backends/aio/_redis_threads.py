"""Asynchronous Redis backend for any anyio event loop (trio too), on worker threads.

Theory of operation
-------------------
``redis.asyncio`` runs only on asyncio, so under trio (and whenever a sync
backend is to be shared) :class:`ThreadedRedisBackend` drives a sync
:class:`telstate_log.backends.RedisBackend` from anyio worker threads.  Each
method is one call of the sync method in a worker thread
(:func:`anyio.to_thread.run_sync`, default limiter): the exchanges, scripts,
error translation, retries and reconnection are the sync backend's, so
semantics cannot drift.  redis-py's sync client is thread-safe (a connection
pool), so calls from concurrent tasks run concurrently.  :func:`async_library`
tells :meth:`telstate_log.aio.RedisBackend.from_url` which class to return.

Monitors.  The sync ``monitor_keys`` generator (prime it, then
``send(timeout)`` for the next update or None) is stepped in a worker
thread with a short timeout (:data:`STEP_SECONDS`) per step, so a cancelled
wait returns within about one step (or the socket timeout, if a connection
attempt to an unreachable host is under way).  The in-flight step is never
abandoned (``run_sync`` waits for it); then the generator is closed in a
worker thread inside a shielded scope, which unsubscribes its pub/sub
connection before the wait returns.  A per-monitor lock makes every step and the close exclusive
even if a native asyncio cancellation (``asyncio.wait_for``) abandons a
step: the close then waits for it.  Like the asyncio backend's, a monitor
yields a plain :class:`KeyUpdateBase` at once, then another when its
subscription is confirmed (and after every reconnect), then updates.

Threads.  A waiting monitor occupies a worker thread almost all the time,
so monitor steps take tokens from their own :class:`anyio.CapacityLimiter`,
one per event loop (:data:`MONITOR_THREADS` tokens), never from anyio's
default limiter, which they could otherwise starve.  More monitors than
tokens take turns a step at a time: their pub/sub connections buffer the
messages, so nothing is lost, but wake-ups may lag by a few steps.

Closing.  ``close()`` marks the backend closing: monitors raise
:exc:`~telstate_log.ConnectionError` before their next step, as with the
asyncio backend.  The sync backend is closed (its connections disconnected)
only when no worker thread is using it -- at once if none is, otherwise by
the last one to finish -- so no connection is torn down under a thread;
``wait_closed()`` waits for that.  As with the other Redis backends, a
command issued after closing reconnects.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from typing import Any, BinaryIO, TypeVar

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

from ...core._errors import ConnectionError
from ...core._types import KeyType, KeyUpdateBase
from .._base import GetResult, PathType
from .._redis import RedisBackend as SyncRedisBackend
from .._redis_endpoint import describe_pool
from ._backend import Backend

__all__ = ["MONITOR_THREADS", "STEP_SECONDS", "SyncUsers", "ThreadedRedisBackend",
           "async_library", "monitor_threads"]

_T = TypeVar("_T")
_SyncMonitor = Generator[KeyUpdateBase | None, float | None, None]

#: Longest a monitor holds a worker thread per step (and so the delay of a cancellation).
STEP_SECONDS = 0.2
#: Worker threads that monitors may use at once, per event loop.
MONITOR_THREADS = 32
_monitor_limiter: RunVar[anyio.CapacityLimiter] = RunVar("telstate_log Redis monitor threads")


def async_library() -> str | None:
    """The async library running this task ("asyncio", "trio", ...), or None."""
    try:
        import sniffio
    except ImportError:      # trio needs sniffio: without it, only asyncio can be running
        pass
    else:
        try:
            return sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            pass
    try:
        asyncio.get_running_loop()      # (asyncio code outside a task: a loop callback)
    except RuntimeError:
        return None
    return "asyncio"


def monitor_threads() -> anyio.CapacityLimiter:
    """The current event loop's limiter of monitor threads."""
    try:
        return _monitor_limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(MONITOR_THREADS)
        _monitor_limiter.set(limiter)
        return limiter


class SyncUsers:
    """Worker threads using a sync backend, which is closed once the last is done.

    :meth:`call` runs a function in a worker thread, counted as a user;
    :meth:`close` closes the backend (with `close`, given at construction) at
    once if no thread uses it, else when the last one finishes;
    :meth:`wait_closed` waits for that.
    """

    def __init__(self, close: Callable[[], None]) -> None:
        self._close = close
        self._lock = threading.Lock()
        self._busy = 0                      # worker threads using the sync backend
        self.closing = False
        self._closed = threading.Event()    # the sync backend has been closed

    def _tracked(self, fn: Callable[..., _T], *args: Any) -> _T:
        with self._lock:
            self._busy += 1
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._busy -= 1
                if self.closing and not self._busy:
                    self._shutdown()

    async def call(self, fn: Callable[..., _T], *args: Any,
                   limiter: anyio.CapacityLimiter | None = None) -> _T:
        """``fn(*args)`` in a worker thread (from `limiter`'s tokens, if given)."""
        return await anyio.to_thread.run_sync(self._tracked, fn, *args, limiter=limiter)

    def _shutdown(self) -> None:
        """Close the backend (once; with the lock held, no thread using it)."""
        if not self._closed.is_set():
            try:
                self._close()
            finally:
                self._closed.set()

    def close(self) -> None:
        with self._lock:
            self.closing = True
            if not self._busy:
                self._shutdown()

    async def wait_closed(self) -> None:
        self.close()
        if not self._closed.is_set():
            await anyio.to_thread.run_sync(self._closed.wait, abandon_on_cancel=True)


class _Stepper:
    """A sync monitor generator, used by one worker thread at a time."""

    def __init__(self, monitor: _SyncMonitor) -> None:
        self._monitor = monitor
        self._lock = threading.Lock()
        self._primed = False

    def step(self) -> KeyUpdateBase | None:
        """The next update within :data:`STEP_SECONDS`, or None (in a worker thread)."""
        with self._lock:
            if not self._primed:
                next(self._monitor)          # subscribes; the sync protocol yields None once
                self._primed = True
            return self._monitor.send(STEP_SECONDS)

    def close(self) -> None:
        """Close the generator (and its connection) once any step has finished."""
        with self._lock:
            self._monitor.close()


class ThreadedRedisBackend(Backend):
    """Telescope state in Redis (async, any anyio event loop: asyncio or trio).

    Parameters
    ----------
    sync
        The sync backend to drive from worker threads.  This backend owns it:
        closing this one closes it.  ``to_sync()`` returns it.

    ``await telstate_log.aio.RedisBackend.from_url(url)`` returns one of these
    under trio; :meth:`from_url` makes one under any event loop.
    """

    def __init__(self, sync: SyncRedisBackend) -> None:
        self._sync = sync
        self._users = SyncUsers(sync.close)

    @classmethod
    async def from_url(cls, url: str, *, db: int | None = None) -> ThreadedRedisBackend:
        """Connect to the server at a URL (see the sync ``RedisBackend.from_url``).

        Raises :exc:`~telstate_log.ConnectionError` if the server does not
        answer a PING.
        """
        connect = functools.partial(SyncRedisBackend.from_url, url, db=db)
        return cls(await anyio.to_thread.run_sync(connect))

    @staticmethod
    def from_sync(sync: SyncRedisBackend) -> ThreadedRedisBackend:
        """An async backend driving (and owning) the sync backend `sync`."""
        return ThreadedRedisBackend(sync)

    def to_sync(self) -> SyncRedisBackend:
        """The sync backend this one drives."""
        return self._sync

    # ----------------------------------------------------------------- driver
    async def _call(self, fn: Callable[..., _T], *args: Any,
                    limiter: anyio.CapacityLimiter | None = None) -> _T:
        return await self._users.call(fn, *args, limiter=limiter)

    # ------------------------------------------------------------ operations
    async def load_from_file(self, file: PathType | BinaryIO) -> int:
        """Load an RDB file (see the sync backend), in a worker thread."""
        return await self._call(self._sync.load_from_file, file)

    async def exists(self, key: bytes) -> bool:
        return await self._call(self._sync.__contains__, key)

    async def keys(self, filter: bytes) -> list[bytes]:
        return await self._call(self._sync.keys, filter)

    async def delete(self, key: bytes) -> None:
        await self._call(self._sync.delete, key)

    async def clear(self) -> None:
        await self._call(self._sync.clear)

    async def key_type(self, key: bytes) -> KeyType | None:
        return await self._call(self._sync.key_type, key)

    async def set_immutable(self, key: bytes, value: bytes) -> bytes | None:
        return await self._call(self._sync.set_immutable, key, value)

    async def get(self, key: bytes) -> GetResult:
        return await self._call(self._sync.get, key)

    async def add_mutable(self, key: bytes, value: bytes, timestamp: float) -> None:
        await self._call(self._sync.add_mutable, key, value, timestamp)

    async def set_indexed(self, key: bytes, sub_key: bytes, value: bytes) -> bytes | None:
        return await self._call(self._sync.set_indexed, key, sub_key, value)

    async def get_indexed(self, key: bytes, sub_key: bytes) -> bytes | None:
        return await self._call(self._sync.get_indexed, key, sub_key)

    async def get_range(self, key: bytes, start_time: float, end_time: float,
                        include_previous: bool,
                        include_end: bool) -> list[tuple[bytes, float]] | None:
        return await self._call(self._sync.get_range, key, start_time, end_time,
                                include_previous, include_end)

    async def dump(self, key: bytes) -> bytes | None:
        """The key in Redis's own DUMP format."""
        return await self._call(self._sync.dump, key)

    async def monitor_keys(self, keys: Iterable[bytes]) -> AsyncGenerator[KeyUpdateBase, None]:
        stepper = _Stepper(self._sync.monitor_keys(list(keys)))   # no I/O until stepped
        limiter = monitor_threads()
        try:
            # The condition may hold already; the subscription's confirmation
            # brings another recheck, covering writes made before it was active.
            yield KeyUpdateBase()
            while True:
                if self._users.closing:
                    raise ConnectionError("the Redis backend was closed")
                update = await self._call(stepper.step, limiter=limiter)
                if update is not None:
                    yield update
        finally:
            with anyio.CancelScope(shield=True):
                await self._call(stepper.close, limiter=limiter)

    # ------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Start closing: waiting monitors raise ConnectionError (see the module docstring)."""
        self._users.close()

    async def wait_closed(self) -> None:
        await self._users.wait_closed()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {describe_pool(self._sync.client.connection_pool)}>"
