"""How the async shared-log backend reaches Redis: on asyncio, or from worker threads.

Theory of operation
-------------------
:class:`telstate_log.aio.RedisLogBackend` runs the exchanges the sync
backend runs (:mod:`telstate_log.backends._redis_log_common`,
:mod:`telstate_log.backends._redis_common`); a *link* executes their calls.
Both links offer the same things: ``run(exchange)``, ``check_library()``,
``client`` (the telstate db's), ``block_ms`` (how long a monitor's ``XREAD``
blocks), ``closing``, ``close()`` and ``wait_closed()``.

* :class:`AsyncioLink` (asyncio only: ``redis.asyncio`` is built on asyncio
  streams) awaits every call on the event loop, with ``redis.asyncio``
  clients of the telstate db and of the log db.  Exchanges that do CPU work
  between calls (history scans decode every record, the RDB loader parses
  a file) run their steps in worker threads (``steps_in_thread``), the
  calls still on the loop.  A writer's session is registered at most once
  (an :class:`asyncio.Lock`), after the function library's version was
  checked.  Monitors block in ``XREAD`` on connections that never retry
  (their own pool): a lost connection is the monitor's to retry, with
  backoff, and after closing nothing reconnects behind a monitor's back.
* :class:`ThreadLink` (any event loop: trio, or asyncio) runs each exchange
  whole in one worker thread on a sync
  :class:`~telstate_log.backends.RedisLogBackend` (``sync.run``), so the
  calls, sessions and retries are the sync backend's own.  Monitor reads
  block at most :data:`~._redis_threads.STEP_SECONDS` and take tokens from
  a limiter of their own, one per event loop, never from anyio's default
  limiter (as :mod:`._redis_threads` does).  Closing waits until no worker
  thread uses the sync backend, then closes it.

``closing`` turns true at :meth:`close`; waiting monitors then raise
:exc:`~telstate_log.ConnectionError` rather than read again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import redis.asyncio
from redis.asyncio.retry import Retry

from ...storage._identity import writer_identity
from .. import _redis_common as common
from .. import _redis_log_common as lc
from .._redis import REDIS_DOWN
from .._redis_endpoint import pubsub_pool_options
from .._redis_log import RedisLogBackend as SyncRedisLogBackend
from .._redis_log import client_for_db
from ._redis_threads import STEP_SECONDS, SyncUsers, monitor_threads

__all__ = ["AsyncioLink", "ThreadLink"]

_T = TypeVar("_T")
#: Longest a monitor's XREAD blocks on the loop (below the 5 s socket timeout).
ASYNCIO_BLOCK_MS = 1000


async def _aclose(client: Any) -> None:
    """Close a redis.asyncio client (``aclose`` since redis-py 5.0.1) and its pool."""
    with contextlib.suppress(*REDIS_DOWN):
        await (getattr(client, "aclose", None) or client.close)()
        await client.connection_pool.disconnect()


class AsyncioLink:
    """Calls awaited on the asyncio event loop (see the module docstring)."""

    block_ms = ASYNCIO_BLOCK_MS

    def __init__(self, client: redis.asyncio.Redis, target: lc.LogTarget,
                 source: str | None) -> None:
        self.client = client
        self.log_client = client_for_db(client, target.log_db)
        # Monitor reads: connections that never retry (the monitor does).
        pool = redis.asyncio.ConnectionPool(
            **pubsub_pool_options(self.log_client.connection_pool, Retry))
        self._monitor_client = redis.asyncio.Redis(connection_pool=pool)
        self._scripts = {name: client.register_script(text)
                         for name, text in common.SCRIPTS.items()}
        self._target = target
        self._source = source
        self._session_lock = asyncio.Lock()
        self._library_checked = False
        self._loop = asyncio.get_running_loop()
        self._closing: asyncio.Task[None] | None = None

    async def check_library(self) -> None:
        """Load the function library unless the server has this version of it."""
        await self.run(lc.exchange_ensure_library())
        self._library_checked = True

    async def _execute(self, op: common.RedisCall, monitor: bool = False) -> Any:
        kind = op[0]
        if kind == "command":
            return await self.client.execute_command(*op[1:])  # type: ignore[no-untyped-call]
        if kind == "log":
            client = self._monitor_client if monitor else self.log_client
            return await client.execute_command(*op[1:])  # type: ignore[no-untyped-call]
        if kind == "script":
            return await self._scripts[op[1]](keys=op[2], args=op[3])
        if kind == "sleep":
            await anyio.sleep(op[1])
            return None
        if kind == "session":
            async with self._session_lock:
                if not self._target.session:
                    if not self._library_checked:
                        await self.check_library()
                    await self.run(lc.exchange_session(self._target, writer_identity(self._source)))
            return None
        if kind == "log_pipeline":
            async with self.log_client.pipeline(transaction=True) as pipe:
                for args in op[1]:
                    pipe.execute_command(*args)
                return await pipe.execute()
        async with self.client.pipeline(transaction=op[1]) as pipe:
            for args in op[2]:
                pipe.execute_command(*args)
            return await pipe.execute(raise_on_error=False)

    async def run(self, exchange: common.Exchange[_T], *, steps_in_thread: bool = False,
                  monitor: bool = False) -> _T:
        """Run `exchange` (a monitor's read with `monitor`: no retries)."""
        execute: Callable[[common.RedisCall], Any] = self._execute
        if monitor:
            def execute(op: common.RedisCall) -> Any:
                return self._execute(op, monitor=True)
        return await common.run_exchange_async(
            exchange, execute, anyio.to_thread.run_sync if steps_in_thread else None)

    @property
    def closing(self) -> bool:
        return self._closing is not None

    def close(self) -> None:
        """Start closing the clients (in a task of the link's event loop)."""
        if self._closing is None:
            self._closing = self._loop.create_task(self._shutdown())

    async def _shutdown(self) -> None:
        for client in (self._monitor_client, self.log_client, self.client):
            await _aclose(client)

    async def wait_closed(self) -> None:
        self.close()
        assert self._closing is not None
        await asyncio.shield(self._closing)


class ThreadLink:
    """Exchanges run in worker threads on a sync backend (see the module docstring)."""

    block_ms = int(STEP_SECONDS * 1000)

    def __init__(self, sync: SyncRedisLogBackend) -> None:
        self.sync = sync
        self.client = sync.client
        self._users = SyncUsers(sync.close)

    async def run(self, exchange: common.Exchange[_T], *, steps_in_thread: bool = False,
                  monitor: bool = False) -> _T:
        """Run `exchange` whole in a worker thread (a monitor's: on the monitor limiter)."""
        return await self._users.call(self.sync.run, exchange,
                                      limiter=monitor_threads() if monitor else None)

    async def check_library(self) -> None:
        """Load the function library unless the server has this version of it."""
        await self.run(lc.exchange_ensure_library())

    @property
    def closing(self) -> bool:
        return self._users.closing

    def close(self) -> None:
        self._users.close()

    async def wait_closed(self) -> None:
        await self._users.wait_closed()
