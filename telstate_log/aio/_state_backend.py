"""Asynchronous driver around a synchronous state backend.

Theory of operation
-------------------
Reads and writes of an in-process state take microseconds and never block on
I/O (the log's fsyncs happen in its sync thread), so the async methods call
the shared sync backend directly; the data is the same object, which is what
``to_sync()`` / ``from_sync()`` expose.  Two things differ:

* ``monitor_keys`` subscribes a :class:`~telstate_log._notify.TaskSubscription`
  to the sync backend's hub, so writes from any thread (a sync writer, the
  log follower) wake the task through its own event loop;
* waiting for durability (``fsync="always"``) and anything slow (opening a
  log, loading an RDB file) runs in a worker thread, never on the loop.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Sequence
from typing import Any, BinaryIO, Generic, TypeVar

import anyio.to_thread

from .._asof import Changes
from .._history import Event
from .._notify import TaskSubscription
from .._sensor_range import SensorRange
from .._types import KeyType, KeyUpdateBase
from ..backends._base import GetResult, PathType
from ..backends._state_backend import StateBackend
from ._backend import Backend

__all__ = ["AsyncStateBackend"]

_S = TypeVar("_S", bound=StateBackend)


class AsyncStateBackend(Backend, Generic[_S]):
    """Async view of a sync :class:`~telstate_log.backends._state_backend.StateBackend`."""

    def __init__(self, sync: _S) -> None:
        self._sync = sync

    def to_sync(self) -> _S:
        """The synchronous backend sharing this one's data."""
        return self._sync

    async def exists(self, key: bytes) -> bool:
        return key in self._sync

    async def keys(self, filter: bytes) -> list[bytes]:
        return self._sync.keys(filter)

    async def key_type(self, key: bytes) -> KeyType | None:
        return self._sync.key_type(key)

    async def get(self, key: bytes) -> GetResult:
        return self._sync.get(key)

    async def get_indexed(self, key: bytes, sub_key: bytes) -> bytes | None:
        return self._sync.get_indexed(key, sub_key)

    async def get_range(self, key: bytes, start_time: float, end_time: float,
                        include_previous: bool,
                        include_end: bool) -> list[tuple[bytes, float]] | None:
        return self._sync.get_range(key, start_time, end_time, include_previous, include_end)

    async def get_range_arrays(self, key: bytes, start_time: float, end_time: float,
                               include_previous: bool, include_end: bool) -> SensorRange | None:
        return self._sync.get_range_arrays(key, start_time, end_time, include_previous,
                                           include_end)

    async def dump(self, key: bytes) -> bytes | None:
        return self._sync.dump(key)

    async def set_immutable(self, key: bytes, value: bytes) -> bytes | None:
        old, pos = self._sync._w_set_immutable(key, value)
        if pos:
            await self._sync._after_write_async(pos)
        return old

    async def add_mutable(self, key: bytes, value: bytes, timestamp: float) -> None:
        pos = self._sync._w_add_mutable(key, value, timestamp)
        if pos:
            await self._sync._after_write_async(pos)

    async def add_mutable_many(self, key: bytes, values: Sequence[bytes],
                               timestamps: Any) -> int:
        """Add many samples to one key (see the sync method); returns how many were new."""
        added, pos = self._sync._w_add_mutable_many(key, values, timestamps)
        if pos:
            await self._sync._after_write_async(pos)
        return added

    async def set_indexed(self, key: bytes, sub_key: bytes, value: bytes) -> bytes | None:
        old, pos = self._sync._w_set_indexed(key, sub_key, value)
        if pos:
            await self._sync._after_write_async(pos)
        return old

    async def delete(self, key: bytes) -> None:
        pos = self._sync._w_delete(key)
        if pos:
            await self._sync._after_write_async(pos)

    async def clear(self) -> None:
        pos = self._sync._w_clear()
        if pos:
            await self._sync._after_write_async(pos)

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
        return self._sync.changes(since, until)

    async def session_info(self, session: int) -> dict[str, Any]:
        return self._sync.session_info(session)

    async def snapshot_items(self, pattern: bytes = b"*") -> list[tuple[bytes, KeyType, Any]]:
        return self._sync.snapshot_items(pattern)

    @property
    def position(self) -> int:
        """Position of the last event applied."""
        return self._sync.position

    async def monitor_keys(self, keys: Iterable[bytes]) -> AsyncGenerator[KeyUpdateBase, None]:
        sub = TaskSubscription(keys)
        hub = self._sync._hub
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

    def _stats(self) -> dict[str, Any]:
        return self._sync._stats()
