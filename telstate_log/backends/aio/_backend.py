"""The asynchronous backend contract (katsdptelstate.aio's Backend).

Same byte-level semantics as :class:`telstate_log.backends.Backend`, with
coroutines; ``monitor_keys`` is an async generator that yields an infinite
stream of updates (the first one tells the caller to check its condition).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Iterable
from typing import BinaryIO

from ...core._types import KeyType, KeyUpdateBase
from .._base import GetResult, PathType

__all__ = ["Backend"]


class Backend(ABC):
    """Low-level interface for telescope state backends (async)."""

    @abstractmethod
    async def exists(self, key: bytes) -> bool:
        """Return if `key` is in the backend."""

    @abstractmethod
    async def keys(self, filter: bytes) -> list[bytes]:
        """Return all keys matching `filter` (a Redis glob pattern)."""

    @abstractmethod
    async def delete(self, key: bytes) -> None:
        """Delete a key (no-op if it does not exist)."""

    @abstractmethod
    async def clear(self) -> None:
        """Remove all keys."""

    @abstractmethod
    async def key_type(self, key: bytes) -> KeyType | None:
        """Type of `key`, or None if it does not exist."""

    @abstractmethod
    async def set_immutable(self, key: bytes, value: bytes) -> bytes | None:
        """Set an immutable key; returns the existing value (unchanged) if already set."""

    @abstractmethod
    async def get(self, key: bytes) -> GetResult:
        """Value and timestamp of a key (see the sync Backend.get)."""

    @abstractmethod
    async def add_mutable(self, key: bytes, value: bytes, timestamp: float) -> None:
        """Add a ``(value, timestamp)`` sample to a mutable key."""

    @abstractmethod
    async def set_indexed(self, key: bytes, sub_key: bytes, value: bytes) -> bytes | None:
        """Set a sub-key; returns the existing value (unchanged) if already set."""

    @abstractmethod
    async def get_indexed(self, key: bytes, sub_key: bytes) -> bytes | None:
        """Value of a sub-key (KeyError if the key is absent)."""

    @abstractmethod
    async def get_range(self, key: bytes, start_time: float, end_time: float,
                        include_previous: bool,
                        include_end: bool) -> list[tuple[bytes, float]] | None:
        """Samples of a mutable key in a time range (see the sync Backend)."""

    @abstractmethod
    async def dump(self, key: bytes) -> bytes | None:
        """The key in Redis DUMP format, or None if absent."""

    @abstractmethod
    def monitor_keys(self, keys: Iterable[bytes]) -> AsyncGenerator[KeyUpdateBase, None]:
        """Async generator of update notifications for `keys`; close it when done."""

    @abstractmethod
    def close(self) -> None:
        """Start shutting down the connection to the backing storage."""

    @abstractmethod
    async def wait_closed(self) -> None:
        """Wait until the shutdown started by :meth:`close` has completed."""

    async def load_from_file(self, file: PathType | BinaryIO) -> int:
        """Load keys from a Redis RDB file (katsdptelstate's aio API has none)."""
        raise NotImplementedError(f"{type(self).__name__} cannot load RDB files")
