"""Asynchronous backends (anyio: asyncio and trio); the public names are in
:mod:`telstate_log.aio`.

:class:`RedisLogBackend` is imported on first use (it loads redis-py).
"""

from typing import TYPE_CHECKING

from ...core._lazy import lazy_names

if TYPE_CHECKING:
    from ._redis_log import RedisLogBackend

__all__ = ["RedisLogBackend"]

_LAZY = {"RedisLogBackend": "._redis_log"}

__getattr__ = lazy_names(__name__, _LAZY)
