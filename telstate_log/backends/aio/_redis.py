"""Asynchronous Redis backend, interoperable with katsdptelstate.aio's.

Theory of operation
-------------------
A thin driver: every method awaits a exchange from
:mod:`telstate_log.backends._redis_common` with ``redis.asyncio``, so the
layout, scripts, messages, error translation and retry rules are those of
the sync :mod:`telstate_log.backends._redis` (which explains why retrying
every command is safe).

Event loops: ``redis.asyncio`` is built on asyncio streams, so an instance of
this class needs a running asyncio event loop (plain asyncio, or anyio on its
asyncio backend).  :meth:`RedisBackend.from_url` therefore looks at the
running library (sniffio, which comes with trio; without it only asyncio can
be running): under asyncio it returns this class, under trio a
:class:`~telstate_log.aio.ThreadedRedisBackend`, which drives the sync backend
from worker threads with the same semantics (:mod:`._redis_threads`).
Constructing this class from a client anywhere but in asyncio -- under trio,
or outside any event loop -- raises RuntimeError naming that alternative.

Pub/sub: one connection per backend, shared by all monitors and owned by a
single background task, the *pump*, so no two tasks ever use it at once.
Monitors register their channels and an inbox with the :class:`_PubSubHub`
(synchronously, no I/O) and set an event; the pump cancels its pending read
(a read is safe to interrupt: it is how redis-py implements read timeouts),
sends the SUBSCRIBE/UNSUBSCRIBE the difference calls for, and goes back to
reading.  It fans each message out to the inboxes of that channel; the
server's confirmation of a subscription becomes a "check again" for the
channel's monitors.  The connection also stays subscribed to an idle
channel, so it is kept (and health-checked) between monitors.

The pub/sub connection comes from a pool whose connections never retry:
if it fails, the pump discards it, waits with backoff and subscribes afresh
to every wanted channel; the confirmations then make every monitor re-read,
so a condition that became true meanwhile is not missed.  A monitor yields
a plain :class:`KeyUpdateBase` first; consecutive rechecks collapse into
one.  When the backend is closed (or the pump fails unexpectedly), waiting
monitors raise :exc:`~telstate_log.ConnectionError`.  The pump stops on
its own once closing starts, not only when cancelled: before Python 3.12,
``asyncio.wait_for`` (used inside redis-py) can swallow a cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, Iterable
from typing import Any, BinaryIO

import anyio.to_thread
import redis.asyncio
from redis.asyncio.retry import Retry

from ...core._errors import ConnectionError
from ...core._types import KeyUpdateBase
from .. import _redis_common as common
from .._base import PathType
from .._redis import REDIS_DOWN
from .._redis_connect import connect_async
from .._redis_endpoint import (
    check_client,
    connection_error,
    describe_pool,
    pubsub_pool_options,
)
from .._redis_messages import channel_key, update_channel
from ._backend import Backend
from ._redis_reads import RedisReads
from ._redis_threads import ThreadedRedisBackend, async_library

__all__ = ["RedisBackend"]

logger = logging.getLogger(__name__)

_IDLE_CHANNEL = b"telstate_log/idle"
_READ_TIMEOUT = 1.0          # bounded reads let redis-py run its health checks
_RESUBSCRIBE_FIRST = 0.05
_RESUBSCRIBE_MAX = 2.0
_Item = tuple[bytes, Any] | None    # (key, message data), or None: "check again"


def _running_asyncio_loop() -> asyncio.AbstractEventLoop:
    if async_library() != "asyncio":
        raise RuntimeError(
            "telstate_log.aio.RedisBackend(client) needs a running asyncio event loop "
            "(redis.asyncio does not support trio); under trio, "
            "await telstate_log.aio.RedisBackend.from_url(url) returns a "
            "telstate_log.aio.ThreadedRedisBackend, which drives the sync backend from "
            "worker threads (or wrap one: ThreadedRedisBackend.from_sync(sync_backend))")
    return asyncio.get_running_loop()


async def _aclose(resource: Any) -> None:
    """Close a redis.asyncio client or PubSub (``aclose`` since redis-py 5.0.1)."""
    closer = getattr(resource, "aclose", None) or resource.close
    with contextlib.suppress(*REDIS_DOWN):
        await closer()


class _Inbox:
    """Items for one monitor, in order; consecutive "check again" items collapse."""

    __slots__ = ("_items", "_ready", "closed_reason")

    def __init__(self) -> None:
        self._items: deque[_Item] = deque()
        self._ready = asyncio.Event()
        self.closed_reason: str | None = None

    def put(self, item: _Item) -> None:
        if item is None and self._items and self._items[-1] is None:
            return
        self._items.append(item)
        self._ready.set()

    def close(self, reason: str) -> None:
        self.closed_reason = reason
        self._ready.set()

    async def get(self) -> _Item:
        while not self._items:
            if self.closed_reason is not None:
                raise ConnectionError(self.closed_reason)
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


class _PubSubHub:
    """The shared pub/sub connection and its pump task (see the module docstring)."""

    def __init__(self, client: redis.asyncio.Redis, loop: asyncio.AbstractEventLoop) -> None:
        # Connections that never retry: the pump reconnects by itself, with backoff.
        pool = redis.asyncio.ConnectionPool(**pubsub_pool_options(client.connection_pool, Retry))
        self._client = redis.asyncio.Redis(connection_pool=pool)
        self._loop = loop
        self._inboxes: dict[bytes, set[_Inbox]] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed_reason: str | None = None
        self._delay = 0.0

    def attach(self, channels: list[bytes], inbox: _Inbox) -> None:
        if self._closed_reason is not None:
            inbox.close(self._closed_reason)
            return
        for channel in channels:
            self._inboxes.setdefault(channel, set()).add(inbox)
        self._changed.set()
        if self._task is None:
            self._task = self._loop.create_task(self._pump(), name="telstate_log Redis pub/sub")

    def detach(self, channels: list[bytes], inbox: _Inbox) -> None:
        for channel in channels:
            inboxes = self._inboxes.get(channel)
            if inboxes is not None:
                inboxes.discard(inbox)
                if not inboxes:
                    del self._inboxes[channel]
        self._changed.set()

    def _close_inboxes(self, reason: str) -> None:
        self._closed_reason = reason
        for inboxes in self._inboxes.values():
            for inbox in inboxes:
                inbox.close(reason)

    async def aclose(self) -> None:
        self._close_inboxes("the Redis backend was closed")
        self._changed.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()       # (and it stops by itself: see the module docstring)
            await asyncio.wait((task,))
        await self._client.connection_pool.disconnect()

    async def _pump(self) -> None:
        try:
            while self._closed_reason is None:
                pubsub = self._client.pubsub()
                try:
                    await self._serve(pubsub)
                except REDIS_DOWN as exc:
                    level = logging.DEBUG if self._delay else logging.WARNING  # once per outage
                    self._delay = min(self._delay * 2 or _RESUBSCRIBE_FIRST, _RESUBSCRIBE_MAX)
                    logger.log(level, "Redis pub/sub connection failed (%s); resubscribing in "
                               "%.2fs", exc, self._delay)
                finally:
                    await _aclose(pubsub)
                await asyncio.sleep(self._delay)
        except Exception:
            logger.exception("Redis pub/sub task failed")
            self._close_inboxes("the Redis pub/sub task failed (see the log)")
            raise

    async def _serve(self, pubsub: redis.asyncio.client.PubSub) -> None:
        """Keep `pubsub` subscribed to the wanted channels and fan out its messages."""
        await pubsub.subscribe(_IDLE_CHANNEL)
        subscribed: set[bytes] = set()
        while self._closed_reason is None:
            self._changed.clear()
            new = [channel for channel in self._inboxes if channel not in subscribed]
            old = [channel for channel in subscribed if channel not in self._inboxes]
            if new:
                await pubsub.subscribe(*new)
                subscribed.update(new)
            if old:
                await pubsub.unsubscribe(*old)
                subscribed.difference_update(old)
            message = await self._next_message(pubsub)
            if message is not None:
                self._delay = 0.0
                self._dispatch(message)

    async def _next_message(self, pubsub: redis.asyncio.client.PubSub) -> dict[str, Any] | None:
        """The next message, or None on timeout or when subscriptions must change."""
        if self._changed.is_set():
            return None
        read = asyncio.ensure_future(pubsub.get_message(timeout=_READ_TIMEOUT))
        wake = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait((read, wake), return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
            if not read.done():
                read.cancel()
                await asyncio.wait((read,))
        return None if read.cancelled() else read.result()

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        key = channel_key(message.get("channel"))
        if key is None or kind not in ("subscribe", "message"):
            return
        inboxes = self._inboxes.get(update_channel(key), ())
        item: _Item = None if kind == "subscribe" else (key, message.get("data"))
        for inbox in inboxes:
            inbox.put(item)


class RedisBackend(RedisReads, Backend):
    """Telescope state in Redis, in katsdptelstate's layout (asyncio).

    Parameters
    ----------
    client
        A :class:`redis.asyncio.Redis` with ``decode_responses=False``.  The
        backend owns it (:meth:`close` closes it).  Prefer :meth:`from_url`,
        which checks the server answers and sets our retry policy.

    Raises
    ------
    RuntimeError
        If not called with a running asyncio event loop (e.g. under trio:
        use :meth:`from_url` or :class:`~telstate_log.aio.ThreadedRedisBackend`).
    ValueError
        If the client decodes responses.
    """

    def __init__(self, client: redis.asyncio.Redis) -> None:
        loop = _running_asyncio_loop()
        check_client(client)
        self.client = client
        self._scripts = {name: client.register_script(text)
                         for name, text in common.SCRIPTS.items()}
        self._hub = _PubSubHub(client, loop)
        self._loop = loop
        self._closing: asyncio.Task[None] | None = None

    @classmethod
    async def from_url(cls, url: str, *,
                       db: int | None = None) -> RedisBackend | ThreadedRedisBackend:
        """Connect to the server at a URL (see the sync ``RedisBackend.from_url``).

        Under asyncio, returns an instance of this class; under any other
        event loop (trio), a :class:`~telstate_log.aio.ThreadedRedisBackend`
        with the same semantics.  Raises :exc:`~telstate_log.ConnectionError`
        if the server does not answer a PING.
        """
        if async_library() != "asyncio":
            return await ThreadedRedisBackend.from_url(url, db=db)
        client = connect_async(url, db=db)
        try:
            await client.ping()
        except REDIS_DOWN as exc:
            await _aclose(client)
            raise connection_error(client.connection_pool, exc) from None
        return cls(client)

    # ----------------------------------------------------------------- driver
    async def _execute(self, op: common.RedisCall) -> Any:
        if op[0] == "command":
            return await self.client.execute_command(*op[1:])  # type: ignore[no-untyped-call]
        if op[0] == "script":
            return await self._scripts[op[1]](keys=op[2], args=op[3])
        async with self.client.pipeline(transaction=op[1]) as pipe:
            for args in op[2]:
                pipe.execute_command(*args)
            return await pipe.execute(raise_on_error=False)

    async def _run(self, exchange: common.Exchange[Any]) -> Any:
        return await common.run_exchange_async(exchange, self._execute)

    # ------------------------------------------------------------ operations
    async def load_from_file(self, file: PathType | BinaryIO) -> int:
        """Load an RDB file (see the sync backend); parsing runs in a worker thread."""
        return int(await common.run_exchange_async(common.exchange_load(file), self._execute,
                                               anyio.to_thread.run_sync))

    async def delete(self, key: bytes) -> None:
        await self._run(common.exchange_delete(key))

    async def clear(self) -> None:
        await self._run(common.exchange_clear())

    async def set_immutable(self, key: bytes, value: bytes) -> bytes | None:
        return await self._run(common.exchange_set_immutable(key, value))  # type: ignore[no-any-return]

    async def add_mutable(self, key: bytes, value: bytes, timestamp: float) -> None:
        await self._run(common.exchange_add_mutable(key, value, timestamp))

    async def set_indexed(self, key: bytes, sub_key: bytes, value: bytes) -> bytes | None:
        return await self._run(  # type: ignore[no-any-return]
            common.exchange_set_indexed(key, sub_key, value))

    async def monitor_keys(self, keys: Iterable[bytes]) -> AsyncGenerator[KeyUpdateBase, None]:
        channels = list(dict.fromkeys(update_channel(key) for key in keys))
        inbox = _Inbox()
        self._hub.attach(channels, inbox)
        try:
            # The condition may hold already; the subscription's confirmation
            # brings another recheck, covering writes made before it was active.
            yield KeyUpdateBase()
            while True:
                item = await inbox.get()
                if item is None:
                    yield KeyUpdateBase()
                else:
                    yield await self._run(common.exchange_update(*item))
        finally:
            self._hub.detach(channels, inbox)

    # ------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Start closing: stop the pub/sub task, then close the client."""
        if self._closing is None:
            self._closing = self._loop.create_task(self._shutdown())

    async def _shutdown(self) -> None:
        await self._hub.aclose()
        await _aclose(self.client)
        await self.client.connection_pool.disconnect()

    async def wait_closed(self) -> None:
        self.close()
        assert self._closing is not None
        await asyncio.shield(self._closing)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {describe_pool(self.client.connection_pool)}>"
