"""The asynchronous front end: :class:`TelescopeState` (anyio: asyncio or trio).

A thin driver: every operation awaits a plan from :mod:`telstate_log.frontend._frontend`
with :func:`run_async`, except the writes, which await the backend once between the
shared steps of :mod:`telstate_log.frontend._writes`.  Only waiting is specific:
``wait_key`` and ``wait_indexed`` iterate the backend's async monitor and are
cancelled the anyio way (cancel scopes, ``anyio.fail_after``), not with a timeout
argument.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import aclosing
from typing import Any, BinaryIO, TypeVar

import numpy as np

from ..backends._base import PathType
from ..backends.aio._backend import Backend
from ..core._asof import Changes
from ..core._encoding import ENCODING_DEFAULT, ENCODING_MSGPACK, encode_value
from ..core._errors import ImmutableKeyError
from ..core._types import KeyType
from ._frontend import (
    NO_SUB_KEY,
    HistoryEvent,
    Key,
    Plan,
    TelescopeStateBase,
    as_key_update,
    display_str,
    ensure_binary,
)
from ._writes import check_unchanged, type_clash

__all__ = ["TelescopeState", "run_async"]

_R = TypeVar("_R")


async def run_async(plan: Plan[_R], backend: Any) -> _R:
    """Run a plan against an async backend."""
    try:
        op, args = plan.send(None)
        while True:
            try:
                result = await op.aio(backend, *args)
            except Exception as exc:
                op, args = plan.throw(exc)
            else:
                op, args = plan.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


class TelescopeState(TelescopeStateBase[Backend]):
    """Interface to attributes and sensors stored in a database (async).

    Parameters
    ----------
    backend
        Async backend; a new :class:`telstate_log.aio.MemoryBackend` if
        neither it nor `base` is given.  katsdptelstate.aio backends work too.
        Connecting is awaited, so Redis backends are made first: the sync
        ``TelescopeState("redis://host:6379", log=True)`` (writes through the
        shared log in Redis, ``log="name"`` for another stream) is
        ``TelescopeState(await telstate_log.aio.RedisLogBackend.from_url(
        "redis://host:6379"))`` here (``stream="name"``), under asyncio or trio.
    prefixes
        Key prefixes, normally built with :meth:`view`.
    base
        Existing instance to share the backend with (for views).

    Raises
    ------
    ValueError
        If both `base` and `backend` are given.
    """

    def __init__(self, backend: Backend | None = None, prefixes: tuple[Key, ...] = (b"",),
                 base: TelescopeState | None = None) -> None:
        if base is None and backend is None:
            from ..backends.aio._memory import MemoryBackend

            backend = MemoryBackend()
        self._init_base(backend, prefixes, base)

    async def _run(self, plan: Plan[_R]) -> _R:
        return await run_async(plan, self._backend)

    async def __getitem__(self, key: Key) -> Any:
        return await self._run(self._plan_get(key, False))

    # ------------------------------------------------------------------- reads
    async def exists(self, key: Key) -> bool:
        """Whether `key` exists under any prefix."""
        return await self._run(self._plan_exists(key))

    async def key_type(self, key: Key) -> KeyType | None:
        """Type of `key`, or None if it does not exist."""
        return await self._run(self._plan_key_type(key))

    async def keys(self, filter: Key = "*") -> list[str]:
        """Sorted fully-qualified keys matching the Redis glob `filter` (ignores the view)."""
        return await self._run(self._plan_keys(filter))

    async def get(self, key: Key, default: Any = None, return_encoded: bool = False) -> Any:
        """The value of `key` (latest sample for a sensor), or `default` if absent."""
        return await self._run(self._plan_get_default(key, default, return_encoded))

    async def get_indexed(self, key: Key, sub_key: Any, default: Any = None,
                          return_encoded: bool = False) -> Any:
        """The value of sub-key `sub_key` of indexed key `key`, or `default`."""
        return await self._run(self._plan_get_indexed(key, sub_key, default, return_encoded))

    async def get_range(self, key: Key, st: float | None = None, et: float | None = None,
                        include_previous: bool | None = None, include_end: bool = False,
                        return_encoded: bool = False) -> list[tuple[Any, float]]:
        """Samples of sensor `key` (same semantics as the sync get_range)."""
        return await self._run(self._plan_get_range(key, st, et, include_previous,
                                                    include_end, return_encoded))

    async def get_range_arrays(self, key: Key, st: float | None = None,
                               et: float | None = None, include_previous: bool | None = None,
                               include_end: bool = False) -> tuple[np.ndarray, Any]:
        """Samples as columns ``(timestamps, values)`` (see the sync method)."""
        return await self._run(self._plan_get_range_arrays(key, st, et, include_previous,
                                                           include_end))

    # ------------------------------------------------------------------ writes
    async def add(self, key: Key, value: Any, ts: float | None = None, immutable: bool = False,
                  encoding: bytes = ENCODING_DEFAULT) -> None:
        """Add a sample to a sensor (or set an immutable; see the sync add)."""
        if immutable:
            await self._set_immutable(key, value, encoding)
            return
        writes = self._writes
        try:
            await writes.add(key, value, ts, encoding)
        except ImmutableKeyError:
            raise type_clash(writes.full_key(key), "mutable") from None

    async def set(self, key: Key, value: Any) -> None:
        """Set an immutable key."""
        await self._set_immutable(key, value, ENCODING_DEFAULT)

    async def _set_immutable(self, key: Key, value: Any, encoding: bytes) -> None:
        full_key, str_val = self._writes.immutable_args(key, value, encoding)
        try:
            old = await self._backend.set_immutable(full_key, str_val)
        except ImmutableKeyError:
            raise type_clash(full_key, "immutable") from None
        if old is not None:
            check_unchanged(full_key, old, str_val, value)

    async def set_indexed(self, key: Key, sub_key: Any, value: Any,
                          encoding: bytes = ENCODING_DEFAULT) -> None:
        """Set sub-key `sub_key` of indexed key `key`."""
        full_key, sub_key_enc, str_val = self._writes.indexed_args(key, sub_key, value, encoding)
        try:
            old = await self._backend.set_indexed(full_key, sub_key_enc, str_val)
        except ImmutableKeyError:
            raise type_clash(full_key, "indexed immutable") from None
        if old is not None:
            check_unchanged(full_key, old, str_val, value, sub_key)

    async def delete(self, key: Key) -> None:
        """Remove `key` under every prefix of the view (rarely appropriate)."""
        await self._run(self._plan_delete(key))

    async def clear(self) -> None:
        """Remove all keys in all namespaces (rarely appropriate)."""
        await self._run(self._plan_clear())

    async def load_from_file(self, file: PathType | BinaryIO) -> int:
        """Load keys from a Redis RDB file into the backend; returns the key count."""
        return int(await self._backend.load_from_file(file))

    # ----------------------------------------------------- time travel, audit
    async def as_of(self, position: int | None = None,
                    time: float | None = None) -> TelescopeState:
        """A read-only view of the state after event `position` or at wall-clock `time`."""
        return await self._run(self._plan_as_of(position, time))

    async def history(self, key: Key, sub_key: Any = NO_SUB_KEY) -> list[HistoryEvent]:
        """Every event that changed `key` (or its sub-key `sub_key`), oldest first."""
        return await self._run(self._plan_history(key, sub_key))

    async def audit(self, since: int | None = None, until: int | None = None, *,
                    since_time: float | None = None,
                    until_time: float | None = None) -> list[HistoryEvent]:
        """Every event (all keys) between two positions or wall-clock times, inclusive."""
        return await self._run(self._plan_audit(since, until, since_time, until_time))

    async def changes(self, since: int, until: int | None = None) -> Changes:
        """What changed between positions `since` and `until` (default: now)."""
        return await self._run(self._plan_changes(since, until))

    # ----------------------------------------------------------------- waiting
    async def wait_key(self, key: Key,
                       condition: Callable[[Any, float | None], bool] | None = None) -> None:
        """Wait for `key` to exist, or for ``condition(value, ts)`` to hold.

        Cancellable; wrap in ``anyio.fail_after`` for a timeout.
        """
        key_b = ensure_binary(key)
        if await self._run(self._plan_check_condition(key_b, condition)):
            return
        monitor = self._backend.monitor_keys(self._monitor_keys(key_b))
        async with aclosing(monitor):
            async for message in monitor:
                update = as_key_update(message)
                if await self._run(self._plan_check_condition(key_b, condition, update)):
                    return

    async def wait_indexed(self, key: Key, sub_key: Any,
                           condition: Callable[[Any], bool] | None = None) -> None:
        """Wait for sub-key `sub_key` of `key` to exist, or ``condition(value)`` to hold.

        Raises ImmutableKeyError if the key exists (or appears) but is not
        indexed.  Cancellable.
        """
        key_b = ensure_binary(key)
        sub_key_enc = encode_value(sub_key, ENCODING_MSGPACK)
        if await self._run(self._plan_check_indexed_condition(key_b, sub_key_enc, condition)):
            return
        key_str = f"{display_str(key_b)}[{sub_key!r}]"
        monitor = self._backend.monitor_keys(self._monitor_keys(key_b))
        async with aclosing(monitor):
            async for message in monitor:
                update = self._check_indexed_message(message, key_str)
                if await self._run(self._plan_check_indexed_condition(
                        key_b, sub_key_enc, condition, update)):
                    return
