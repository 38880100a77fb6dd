"""Asynchronous in-memory backend (a view of a sync MemoryBackend)."""

from __future__ import annotations

from .._memory import MemoryBackend as SyncMemoryBackend
from ._state_backend import AsyncStateBackend

__all__ = ["MemoryBackend"]


class MemoryBackend(AsyncStateBackend[SyncMemoryBackend]):
    """Telescope state backend that keeps data in memory (async).

    It shares its data with a sync :class:`telstate_log.backends.MemoryBackend`:
    ``to_sync()`` returns it, ``from_sync(sync)`` wraps an existing one.
    """

    def __init__(self) -> None:
        super().__init__(SyncMemoryBackend())

    @staticmethod
    def from_sync(sync: SyncMemoryBackend) -> MemoryBackend:
        """An async backend sharing data with the sync backend `sync`."""
        me = MemoryBackend.__new__(MemoryBackend)
        AsyncStateBackend.__init__(me, sync)
        return me
