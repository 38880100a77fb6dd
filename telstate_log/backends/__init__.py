"""Synchronous backends: the byte-level storage under a TelescopeState."""

from .._types import (
    ImmutableKeyUpdate,
    IndexedKeyUpdate,
    KeyUpdate,
    KeyUpdateBase,
    MutableKeyUpdate,
)
from ._base import Backend
from ._log import LogBackend
from ._memory import MemoryBackend
from ._redis import RedisBackend

__all__ = [
    "Backend",
    "ImmutableKeyUpdate",
    "IndexedKeyUpdate",
    "KeyUpdate",
    "KeyUpdateBase",
    "LogBackend",
    "MemoryBackend",
    "MutableKeyUpdate",
    "RedisBackend",
]
