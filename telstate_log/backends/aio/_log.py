"""Asynchronous LogBackend (a view of the sync LogBackend, sharing its data)."""

from __future__ import annotations

import functools
import os
from typing import Any

import anyio.to_thread

from ...storage._segment_files import WouldBlock
from .._log import LogBackend as SyncLogBackend
from ._state_backend import AsyncStateBackend

__all__ = ["LogBackend"]


class LogBackend(AsyncStateBackend[SyncLogBackend]):
    """Telescope state stored as an append-only log (async).

    Create with ``await LogBackend.open(path, **options)`` (the options of
    :class:`telstate_log.backends.LogBackend`): recovery and replay run in a
    worker thread, off the event loop.  With ``fsync="always"`` a write
    awaits durability without blocking the loop, and concurrent tasks share
    fsyncs; a write that starts a new segment (or finds the lock held by a
    thread) runs in a worker thread, so no disk sync ever runs on the loop.
    ``to_sync()`` / ``from_sync()`` share the data with the sync API.
    """

    _would_block = WouldBlock

    def __init__(self, sync: SyncLogBackend) -> None:
        super().__init__(sync)
        self._closing = False
        self._appender = sync.log.appender  # None if read-only

    @classmethod
    async def open(cls, path: str | os.PathLike[str], **options: Any) -> LogBackend:
        """Open (creating or recovering) the log at `path`."""
        sync = await anyio.to_thread.run_sync(functools.partial(SyncLogBackend, path,
                                                                **options))
        return cls(sync)

    @staticmethod
    def from_sync(sync: SyncLogBackend) -> LogBackend:
        """An async backend sharing data with the sync backend `sync`."""
        return LogBackend(sync)

    @property
    def path(self) -> str:
        return self._sync.path

    async def sync(self) -> int:
        """Make every write so far durable; returns the durable position."""
        return await anyio.to_thread.run_sync(self._sync.sync)

    async def checkpoint(self) -> str | None:
        """Write a checkpoint (in a worker thread); returns its path."""
        return await anyio.to_thread.run_sync(self._sync.checkpoint)

    def close(self) -> None:
        """Start closing; :meth:`wait_closed` finishes it (sync, checkpoint, unlock)."""
        self._closing = True

    async def wait_closed(self) -> None:
        await anyio.to_thread.run_sync(self._sync.close)

    async def aclose(self) -> None:
        """Close the log (``close()`` then ``wait_closed()``)."""
        self.close()
        await self.wait_closed()

    async def __aenter__(self) -> LogBackend:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
