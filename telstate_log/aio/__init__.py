"""Asynchronous API (anyio: runs under asyncio and trio).

The same semantics as the synchronous :mod:`telstate_log` API; the front end
and the backends share their logic with the sync versions.  The log and
Redis backends are imported on first use (so that the storage engine and
redis-py load only for them).
"""

from typing import TYPE_CHECKING

from ..backends.aio._backend import Backend
from ..backends.aio._memory import MemoryBackend
from ..core._lazy import lazy_names
from ..frontend._aio_telescope_state import TelescopeState

if TYPE_CHECKING:
    from ..backends.aio._log import LogBackend
    from ..backends.aio._redis import RedisBackend
    from ..backends.aio._redis_log import RedisLogBackend
    from ..backends.aio._redis_threads import ThreadedRedisBackend

__all__ = [
    "Backend", "LogBackend", "MemoryBackend", "RedisBackend", "RedisLogBackend",
    "TelescopeState", "ThreadedRedisBackend",
]

_LAZY = {"LogBackend": "..backends.aio._log", "RedisBackend": "..backends.aio._redis",
         "RedisLogBackend": "..backends.aio._redis_log",
         "ThreadedRedisBackend": "..backends.aio._redis_threads"}

__getattr__ = lazy_names(__name__, _LAZY)
