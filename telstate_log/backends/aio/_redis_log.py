"""Asynchronous shared-log backend (anyio: asyncio and trio).

Theory of operation
-------------------
The async twin of :class:`telstate_log.backends.RedisLogBackend`: every
operation runs an exchange of :mod:`telstate_log.backends._redis_log_common`
or :mod:`telstate_log.backends._redis_common` -- the very exchanges the sync
backend runs -- so the writes (one ``FCALL`` each, with ``WAIT`` when
replicas are asked for), what they return, the stream reads, the trim check
and the filters of ``events`` / ``history`` exist once.  This module is a
driver: it says which exchange to run and where CPU work may happen.  A
*link* (:mod:`._redis_log_links`) executes the calls: under asyncio on the
event loop (``redis.asyncio``), under trio (or anything but asyncio) in
worker threads on a sync backend, as :meth:`RedisLogBackend.from_url`
chooses -- as :meth:`telstate_log.aio.RedisBackend.from_url` does.

Position.  ``position`` is a property (the front ends read it without
awaiting), so it cannot ask the server: it is the last position this
backend has seen -- its own writes, :meth:`sync`, :meth:`last_position`,
time-travel queries -- never more than the stream's.  ``await
backend.last_position()`` asks the server.

Monitors (``monitor_keys``, hence ``wait_key``) read the stream with
blocking ``XREAD`` from the last entry they saw, with the sync backend's
cursor (:class:`~telstate_log.backends._redis_log_common.MonitorCursor`):
a dropped connection or a restarted server loses no event, since the next
read resumes after the last entry seen (after a backoff while the server is
unreachable).  A monitor yields a plain :class:`KeyUpdateBase` first (check
now), then the updates of the keys it watches.

History and time travel.  ``events``, ``history`` and ``session_info`` run
their scans with the CPU steps (decoding, filtering) in worker threads.
``as_of``, ``resolve_time`` and ``changes`` bring the backend's
:class:`~telstate_log.backends._stream_replica.StreamReplica` up to the
stream's end chunk by chunk (a chunk of more than :data:`APPLY_INLINE`
entries is applied in a worker thread) and query it through an
:class:`~._state_backend.AsyncStateBackend`, which never blocks the loop.

Not here (yet): the sync backend's ``archive=`` (history from before the
stream's trim point, read from a local archive: here such queries raise
:exc:`~telstate_log.HistoryUnavailableError`) and ``materialize=``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Iterable, Sequence
from typing import Any, BinaryIO

import anyio
import anyio.to_thread
import numpy as np
import redis.asyncio
from redis.asyncio.retry import Retry

from ...core._asof import Changes
from ...core._errors import ConnectionError
from ...core._events import Event
from ...core._types import KeyUpdateBase
from .. import _redis_common as common
from .. import _redis_log_common as lc
from .._base import PathType
from .._log_functions import log_db_for
from .._redis import REDIS_DOWN
from .._redis_connect import connect_async
from .._redis_endpoint import (
    SENTINEL_SCHEME,
    check_client,
    connection_error,
    describe_pool,
    failover_options,
    parse_endpoint,
)
from .._redis_log import RedisLogBackend as SyncRedisLogBackend
from .._redis_log_load import exchange_log_load, exchange_replicated
from .._stream_replica import StreamReplica
from ._backend import Backend
from ._redis_log_links import AsyncioLink, ThreadLink
from ._redis_reads import RedisReads
from ._redis_threads import async_library
from ._state_backend import AsyncStateBackend

__all__ = ["APPLY_INLINE", "RedisLogBackend"]

#: Chunks of at most this many stream entries are applied to the replica on the loop.
APPLY_INLINE = 64
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0


class RedisLogBackend(RedisReads, Backend):
    """Telescope state in Redis whose every write is an event of one shared log (async).

    Parameters
    ----------
    client
        A :class:`redis.asyncio.Redis` of the telstate database
        (``decode_responses=False``), which the backend owns; needs a running
        asyncio event loop.  Prefer ``await RedisLogBackend.from_url(url)``,
        which works under trio too, or :meth:`from_sync`.
    stream, source, replicas, replica_timeout
        As for the sync :class:`telstate_log.backends.RedisLogBackend`.

    Raises
    ------
    RuntimeError
        If not called with a running asyncio event loop.
    """

    def __init__(self, client: redis.asyncio.Redis, *, stream: str | bytes = "telstate-log",
                 source: str | None = None, replicas: int = 0,
                 replica_timeout: float = 1.0) -> None:
        if async_library() != "asyncio":
            raise RuntimeError(
                "telstate_log.aio.RedisLogBackend(client) needs a running asyncio event loop "
                "(redis.asyncio does not support trio); under trio, await "
                "telstate_log.aio.RedisLogBackend.from_url(url), or wrap a sync backend: "
                "RedisLogBackend.from_sync(sync_backend)")
        check_client(client)
        if replicas < 0 or replica_timeout <= 0:
            raise ValueError("replicas must be >= 0 and replica_timeout positive")
        db = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
        name = stream.encode() if isinstance(stream, str) else bytes(stream)
        target = lc.LogTarget(name, db, log_db_for(db), replicas, replica_timeout)
        self._setup(AsyncioLink(client, target, source), target, source)

    def _setup(self, link: AsyncioLink | ThreadLink, target: lc.LogTarget,
               source: str | None) -> None:
        self._link = link
        self.target = target
        self.source = source
        self._position = 0
        self._replica = StreamReplica()
        self._replica_face = AsyncStateBackend(self._replica)
        self._replica_lock = anyio.Lock()
        self._sessions: dict[int, dict[str, Any]] = {}   # found by session_info

    @classmethod
    def from_sync(cls, sync: SyncRedisLogBackend) -> RedisLogBackend:
        """An async backend driving (and owning) the sync backend `sync` from worker
        threads (any event loop); it shares `sync`'s writer session."""
        self = cls.__new__(cls)
        self._setup(ThreadLink(sync), sync.target, sync.source)
        return self

    def to_sync(self) -> SyncRedisLogBackend:
        """The sync backend this one drives (only one made by :meth:`from_sync`, or by
        :meth:`from_url` outside asyncio)."""
        if not isinstance(self._link, ThreadLink):
            raise TypeError("this backend drives redis.asyncio clients, not a sync backend")
        return self._link.sync

    @classmethod
    async def from_url(cls, url: str, *, db: int | None = None,
                       stream: str = "telstate-log", source: str | None = None,
                       replicas: int = 0, replica_timeout: float = 1.0) -> RedisLogBackend:
        """Connect to the shared log `stream` of the telstate database at `url`.

        The URL forms and options are those of the sync
        :meth:`telstate_log.backends.RedisLogBackend.from_url`.  Under asyncio
        the backend uses ``redis.asyncio``; under any other event loop (trio)
        it drives a sync backend from worker threads, with the same semantics.
        Raises :exc:`~telstate_log.ConnectionError` if the server does not answer.
        """
        if async_library() != "asyncio":
            connect = functools.partial(SyncRedisLogBackend.from_url, url, db=db, stream=stream,
                                        source=source, replicas=replicas,
                                        replica_timeout=replica_timeout)
            backend = cls.from_sync(await anyio.to_thread.run_sync(connect))
        else:
            endpoint = parse_endpoint(url)
            if endpoint.url is None:
                raise ValueError(f"not a Redis URL: {endpoint}")
            # Behind Sentinel, writes outlast a failover (as the sync backend's do).
            options = failover_options(Retry) if endpoint.url.startswith(SENTINEL_SCHEME) \
                else {}
            client = connect_async(endpoint.url, db=db, **options)
            try:
                await client.ping()
            except REDIS_DOWN as exc:
                await client.connection_pool.disconnect()
                raise connection_error(client.connection_pool, exc) from None
            backend = cls(client, stream=stream, source=source, replicas=replicas,
                          replica_timeout=replica_timeout)
        try:
            await backend.check_library()
            await backend.last_position()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await backend.wait_closed()
            raise
        return backend

    async def check_library(self) -> None:
        """Load the function library unless the server has this version of it
        (:meth:`from_url` does; a backend made from a client does before its first write)."""
        await self._link.check_library()

    # ----------------------------------------------------------------- driver
    async def _run(self, exchange: common.Exchange[Any], *,
                   steps_in_thread: bool = False) -> Any:
        return await self._link.run(exchange, steps_in_thread=steps_in_thread)

    async def _write(self, exchange: common.Exchange[tuple[Any, int]]) -> Any:
        result, position = await self._link.run(exchange)
        self._seen(position)
        return result

    def _seen(self, position: int) -> None:
        if position > self._position:
            self._position = position

    # --------------------------------------- loading (reads: RedisReads)
    async def load_from_file(self, file: PathType | BinaryIO) -> int:
        """Load an RDB file as the sync backend does (parsing in worker threads)."""
        return int(await self._run(exchange_log_load(self.target, file), steps_in_thread=True))

    # ------------------------------------------------------------------ writes
    async def set_immutable(self, key: bytes, value: bytes) -> bytes | None:
        return await self._write(lc.exchange_set_immutable(self.target, key, value))  # type: ignore[no-any-return]

    async def add_mutable(self, key: bytes, value: bytes, timestamp: float) -> None:
        await self._write(lc.exchange_add_mutable(self.target, key, value, timestamp))

    async def add_mutable_many(self, key: bytes, values: Sequence[bytes] | np.ndarray,
                               timestamps: Any) -> int:
        """Add many samples of one sensor in one round trip; returns how many were new."""
        return int(await self._write(lc.exchange_add_mutable_many(self.target, key, values,
                                                                  timestamps)))

    async def set_indexed(self, key: bytes, sub_key: bytes, value: bytes) -> bytes | None:
        return await self._write(  # type: ignore[no-any-return]
            lc.exchange_set_indexed(self.target, key, sub_key, value))

    async def delete(self, key: bytes) -> None:
        await self._write(lc.exchange_delete(self.target, key))

    async def clear(self) -> None:
        await self._write(lc.exchange_clear(self.target))

    async def sync(self) -> int:
        """The last position, once `replicas` replicas hold every write so far."""
        position = int(await self._run(exchange_replicated(self.target)))
        self._seen(position)
        return position

    # ----------------------------------------------------------------- the log
    @property
    def position(self) -> int:
        """The last position this backend has seen (see the module docstring)."""
        return self._position

    async def last_position(self) -> int:
        """The last position of the shared log, asked of the server."""
        position, _ = await self._run(lc.exchange_last_position(self.target))
        self._seen(int(position))
        return int(position)

    async def events(self, since: int = 1, until: int | None = None) -> list[Event]:
        """Every event with a position in ``[since, until]`` (the audit trail)."""
        return await self._run(  # type: ignore[no-any-return]
            lc.exchange_events(self.target, since, until), steps_in_thread=True)

    async def history(self, key: bytes, sub_key: bytes | None = None) -> list[Event]:
        """The events that changed `key` (or its sub-key `sub_key`), in order."""
        return await self._run(  # type: ignore[no-any-return]
            lc.exchange_history(self.target, key, sub_key), steps_in_thread=True)

    async def session_info(self, session: int) -> dict[str, Any]:
        """Who wrote events of `session` (source label, host, pid, user, start);
        each session found is kept (its record never changes)."""
        known = self._sessions.get(session)
        if known is not None:
            return dict(known)
        info: dict[str, Any] = await self._run(
            lc.exchange_session_info(self.target, session), steps_in_thread=True)
        if info:
            self._sessions[session] = dict(info)
        return info

    # ------------------------------------------------------------- time travel
    async def replica(self) -> StreamReplica:
        """The backend's materialised replica (a sync backend), brought up to the
        stream's end."""
        async with self._replica_lock:
            await self._catch_up()
        return self._replica

    async def _catch_up(self) -> None:
        """Apply the stream's new entries to the replica (with the replica lock held)."""
        replica = self._replica
        while True:
            ids, bodies = await self._run(lc.exchange_catch_up(self.target, replica.last_id,
                                                                replica.position))
            if not ids:
                break
            if len(ids) > APPLY_INLINE:
                await anyio.to_thread.run_sync(replica.apply_entries, ids, bodies)
            else:
                replica.apply_entries(ids, bodies)
        self._seen(replica.position)

    async def as_of(self, position: int | None = None,
                    time: float | None = None) -> AsyncStateBackend[Any]:
        """A read-only view of the state after event `position` (or at wall-clock `time`)."""
        async with self._replica_lock:
            await self._catch_up()
            return await self._replica_face.as_of(position, time)

    async def resolve_time(self, when: float) -> int:
        async with self._replica_lock:
            await self._catch_up()
            return await self._replica_face.resolve_time(when)

    async def changes(self, since: int, until: int) -> Changes:
        async with self._replica_lock:
            await self._catch_up()
            return await self._replica_face.changes(since, until)

    # ----------------------------------------------------------------- monitor
    def monitor_keys(self, keys: Iterable[bytes]) -> AsyncGenerator[KeyUpdateBase, None]:
        return self._monitor(set(keys))

    def watch_all(self) -> AsyncGenerator[KeyUpdateBase, None]:
        """Like :meth:`monitor_keys` for every key."""
        return self._monitor(None)

    async def _monitor(self, wanted: set[bytes] | None) -> AsyncGenerator[KeyUpdateBase, None]:
        _, last = await self._run(lc.exchange_last_position(self.target))
        cursor = lc.MonitorCursor(last)
        # Everything after `last` will be seen: the caller checks its condition now.
        yield KeyUpdateBase()
        link = self._link
        while True:
            while cursor.pending:
                yield cursor.pending.popleft()
            if link.closing:
                raise ConnectionError("the Redis backend was closed while waiting")
            try:
                records = await link.run(
                    lc.exchange_read(self.target, cursor.last, block=link.block_ms),
                    monitor=True)
            except REDIS_DOWN:
                if link.closing:
                    raise ConnectionError("the Redis backend was closed while waiting") \
                        from None
                cursor.delay = min(cursor.delay * 2 or _BACKOFF_FIRST, _BACKOFF_MAX)
                await anyio.sleep(cursor.delay)
                continue
            cursor.delay = 0.0
            cursor.take(records, wanted)

    # ---------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Start closing: waiting monitors raise ConnectionError; see :meth:`wait_closed`."""
        self._link.close()

    async def wait_closed(self) -> None:
        await self._link.wait_closed()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {describe_pool(self._link.client.connection_pool)} "
                f"stream={self.target.stream.decode(errors='replace')!r}>")
