"""Asynchronous API (anyio: runs under asyncio and trio).

The same semantics as the synchronous :mod:`telstate_log` API; the front end
and the backends share their logic with the sync versions.
"""

from ._backend import Backend
from ._log import LogBackend
from ._memory import MemoryBackend
from ._redis import RedisBackend
from ._redis_threads import ThreadedRedisBackend
from ._telescope_state import TelescopeState

__all__ = [
    "Backend", "LogBackend", "MemoryBackend", "RedisBackend", "TelescopeState",
    "ThreadedRedisBackend",
]
