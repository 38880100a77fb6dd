"""Synchronous backends: the byte-level storage under a TelescopeState.

:class:`LogBackend` and :class:`RedisBackend` are imported on first use, so
that a program pays for loading the storage engine or redis-py only when it
uses them (``import telstate_log`` stays fast for every command-line run).
"""

from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    if name == "LogBackend":
        from ._log import LogBackend

        globals()[name] = LogBackend
        return LogBackend
    if name == "RedisBackend":
        from ._redis import RedisBackend

        globals()[name] = RedisBackend
        return RedisBackend
    if name == "RedisLogBackend":
        from ._redis_log import RedisLogBackend

        globals()[name] = RedisLogBackend
        return RedisLogBackend
    if name == "StreamFollower":
        from ._stream_follower import StreamFollower

        globals()[name] = StreamFollower
        return StreamFollower
    if name == "StreamReplica":
        from ._stream_replica import StreamReplica

        globals()[name] = StreamReplica
        return StreamReplica
    if name in ("connection_error", "redact_url"):  # for the command line's messages
        from . import _redis_endpoint

        value = getattr(_redis_endpoint, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
