"""The reads both async Redis backends make the same way: one exchange each.

The plain backend (:mod:`._redis`) and the shared-log backend
(:mod:`._redis_log`) read the telescope state from Redis in katsdptelstate's
layout with the exchanges of :mod:`telstate_log.backends._redis_common`;
they differ only in how an exchange is run (``_run``), which each provides.
"""

from __future__ import annotations

from typing import Any

from ...core._types import KeyType
from .. import _redis_common as common
from .._base import GetResult

__all__ = ["RedisReads"]


class RedisReads:
    """Read methods over ``self._run(exchange)`` (supplied by the backend)."""

    async def _run(self, exchange: common.Exchange[Any]) -> Any:
        raise NotImplementedError

    async def exists(self, key: bytes) -> bool:
        return bool(await self._run(common.exchange_contains(key)))

    async def keys(self, filter: bytes) -> list[bytes]:
        return list(await self._run(common.exchange_keys(filter)))

    async def key_type(self, key: bytes) -> KeyType | None:
        return await self._run(common.exchange_key_type(key))  # type: ignore[no-any-return]

    async def get(self, key: bytes) -> GetResult:
        return await self._run(common.exchange_get(key))  # type: ignore[no-any-return]

    async def get_indexed(self, key: bytes, sub_key: bytes) -> bytes | None:
        return await self._run(common.exchange_get_indexed(key, sub_key))  # type: ignore[no-any-return]

    async def get_range(self, key: bytes, start_time: float, end_time: float,
                        include_previous: bool,
                        include_end: bool) -> list[tuple[bytes, float]] | None:
        return await self._run(common.exchange_get_range(  # type: ignore[no-any-return]
            key, start_time, end_time, include_previous, include_end))

    async def dump(self, key: bytes) -> bytes | None:
        """The key in Redis's own DUMP format."""
        return await self._run(common.exchange_dump(key))  # type: ignore[no-any-return]
