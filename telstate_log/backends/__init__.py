"""Synchronous backends: the byte-level storage under a TelescopeState.

:class:`LogBackend` and :class:`RedisBackend` are imported on first use, so
that a program pays for loading the storage engine or redis-py only when it
uses them (``import telstate_log`` stays fast for every command-line run).
"""

from typing import TYPE_CHECKING

from ..core._lazy import lazy_names
from ..core._types import (
    ImmutableKeyUpdate,
    IndexedKeyUpdate,
    KeyUpdate,
    KeyUpdateBase,
    MutableKeyUpdate,
)
from ._base import Backend
from ._memory import MemoryBackend
from ._state_backend import AsOfBackend

if TYPE_CHECKING:
    from ._log import LogBackend
    from ._redis import RedisBackend
    from ._redis_endpoint import connection_error, redact_url
    from ._redis_log import RedisLogBackend
    from ._stream_follower import StreamFollower
    from ._stream_replica import StreamReplica

__all__ = [
    "AsOfBackend",
    "Backend",
    "ImmutableKeyUpdate",
    "IndexedKeyUpdate",
    "KeyUpdate",
    "KeyUpdateBase",
    "LogBackend",
    "MemoryBackend",
    "MutableKeyUpdate",
    "RedisBackend",
    "RedisLogBackend",
    "StreamFollower",
    "StreamReplica",
    "connection_error",
    "redact_url",
]


__getattr__ = lazy_names(__name__, {
    "LogBackend": "._log", "RedisBackend": "._redis", "RedisLogBackend": "._redis_log",
    "StreamFollower": "._stream_follower", "StreamReplica": "._stream_replica",
    # for the command line's messages
    "connection_error": "._redis_endpoint", "redact_url": "._redis_endpoint"})
