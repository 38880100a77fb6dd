"""Asynchronous backends (anyio: asyncio and trio); the public names are in
:mod:`telstate_log.aio`.

:class:`RedisLogBackend` is imported on first use (it loads redis-py).
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._redis_log import RedisLogBackend

__all__ = ["RedisLogBackend"]

_LAZY = {"RedisLogBackend": "._redis_log"}


def __getattr__(name: str) -> Any:
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value
