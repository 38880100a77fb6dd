"""In-memory backend: the materialised state with nothing underneath.

It keeps log positions (every change is numbered like a log event) but not
the events themselves, so it cannot answer history queries; use
:class:`~telstate_log.backends.LogBackend` for that.
"""

from __future__ import annotations

from ..core._state import State
from ._state_backend import StateBackend

__all__ = ["MemoryBackend"]


class MemoryBackend(StateBackend):
    """Telescope state backend that keeps data in memory (sync).

    Sensors are stored as numpy columns (about 20 bytes per float sample);
    see :mod:`telstate_log.core._sensor`.  Thread-safe.  Share the data with an
    async front end through :meth:`telstate_log.aio.MemoryBackend.from_sync`.
    """

    def __init__(self) -> None:
        super().__init__(State(keep_history=False))
