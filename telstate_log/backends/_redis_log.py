"""Synchronous shared-log backend: many writers, one ordered event log in Redis.

Theory of operation
-------------------
:class:`RedisLogBackend` is a :class:`~._redis.RedisBackend` (same layout,
same reads, katsdptelstate clients share the database) whose writes go
through the function library (:mod:`._log_functions`): each write changes
the telescope state and appends its event to the shared log's stream in one
atomic step, so every writer on every host writes into one total order.
The stream lives in another database of the same server (the *log db*,
:func:`~._log_functions.log_db_for`), where clients listing the telstate
database never meet it.

Waiting (``monitor_keys``, hence ``wait_key``) reads the stream with
blocking ``XREAD`` from the last entry seen, not pub/sub: a dropped
connection or a restarted server (with persistence) loses no event, as the
next read resumes after the last entry the monitor saw.

History (``history``, ``events``, ``session_info``) reads the stream;
time travel (``as_of``, ``changes``, ``resolve_time``) materialises it into
a :class:`~._stream_replica.StreamReplica` kept by the backend and brought
up to date on each query.

Durability when a write returns: the server has applied it and appended its
event (what survives a crash of the server is what its ``appendonly`` /
``appendfsync`` settings keep); with ``replicas=N`` also that N replicas
acknowledged it (``WAIT``), else :exc:`~telstate_log.ReplicationError`.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from typing import Any, BinaryIO, TypeVar, overload

import numpy as np
import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.retry import Retry

from ..core._asof import Changes
from ..core._errors import ConnectionError, HistoryUnavailableError
from ..core._events import SESSION, Event
from ..core._stream_format import StreamRecord, entry_id
from ..core._types import KeyUpdateBase
from ..storage._identity import writer_identity
from . import _redis_log_common as lc
from ._base import PathType
from ._log_archive import ArchiveReader, exchange_trimmed, touches, trimmed_error
from ._log_functions import log_db_for
from ._redis import REDIS_DOWN
from ._redis_common import Exchange
from ._redis_connect import connect
from ._redis_endpoint import SENTINEL_SCHEME, failover_options, parse_endpoint
from ._redis_log_load import exchange_log_load, exchange_replicated
from ._state_backend import StateBackend
from ._stream_follower import MaterializedReads, StreamFollower
from ._stream_replica import StreamReplica

__all__ = ["RedisLogBackend", "client_for_db"]

_R = TypeVar("_R")
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0


@overload
def client_for_db(client: redis.asyncio.Redis, db: int) -> redis.asyncio.Redis: ...
@overload
def client_for_db(client: redis.Redis, db: int) -> redis.Redis: ...
def client_for_db(client: Any, db: int) -> Any:
    """A client of database `db` on the server (or Sentinel service) of `client`
    (a ``redis.asyncio`` client for a ``redis.asyncio`` one)."""
    aio = isinstance(client, redis.asyncio.Redis)
    lib: Any = redis.asyncio if aio else redis
    sentinel_pool: Any = (redis.asyncio.sentinel if aio else redis.sentinel).SentinelConnectionPool
    pool = client.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "connection_pool"}
    kwargs["db"] = db
    if isinstance(pool, sentinel_pool):
        kwargs.pop("connection_class", None)
        new = sentinel_pool(pool.service_name, pool.sentinel_manager, **kwargs)
    else:
        new = lib.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    return lib.Redis(connection_pool=new)


class RedisLogBackend(MaterializedReads):
    """Telescope state in Redis whose every write is an event of one shared log.

    Parameters
    ----------
    client
        A :class:`redis.Redis` of the telstate database (``decode_responses=False``);
        the backend owns it.  Prefer :meth:`from_url`.
    stream
        Name of the shared log (its stream key in the log db).
    source
        A label for this writer, recorded with its session.
    replicas
        Acknowledgements from replicas each write waits for (``WAIT``).
    replica_timeout
        How long a write waits for them, in seconds.
    materialize
        Serve reads and monitors from a :class:`~._stream_follower.StreamFollower`
        (in-memory, fed from the stream) instead of Redis; a read after a write
        waits until the follower has applied that write (read-your-writes).
    archive
        Directory of the shared log's archive (``telstate-log archive``): history
        and time travel before the stream's trim point are read from it
        (:mod:`._log_archive`); without it they raise HistoryUnavailableError.
    """

    def __init__(self, client: redis.Redis, *, stream: str | bytes = "telstate-log",
                 source: str | None = None, replicas: int = 0,
                 replica_timeout: float = 1.0, materialize: bool = False,
                 archive: str | os.PathLike[str] | None = None) -> None:
        super().__init__(client)
        if replicas < 0 or replica_timeout <= 0:
            raise ValueError("replicas must be >= 0 and replica_timeout positive")
        db = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
        name = stream.encode() if isinstance(stream, str) else bytes(stream)
        self.target = lc.LogTarget(name, db, log_db_for(db), replicas, replica_timeout)
        self.log_client = client_for_db(client, self.target.log_db)
        self.source = source
        self._session_lock = threading.Lock()
        self._replica: StreamReplica | None = None
        self._replica_lock = threading.Lock()
        self._sessions: dict[int, dict[str, Any]] = {}   # found by session_info
        self.archive = None if archive is None else ArchiveReader(archive)
        self._run(lc.exchange_ensure_library())
        if materialize:  # reads from a materialised follower (MaterializedReads)
            self.follower = StreamFollower(client, stream=name)

    @classmethod
    def from_url(cls, url: str, *, db: int | None = None,
                 stream: str = "telstate-log", source: str | None = None, replicas: int = 0,
                 replica_timeout: float = 1.0, materialize: bool = False,
                 archive: str | os.PathLike[str] | None = None) -> RedisLogBackend:
        """Connect to the shared log `stream` of the telstate database at `url`.

        `url` is ``redis://``, ``rediss://``, ``unix://`` or
        ``redis+sentinel://host:port[,host:port...]/service[/db]``; behind
        Sentinel, a command is retried for up to
        :data:`~._redis_endpoint.FAILOVER_SECONDS` so a write in flight during a
        failover completes on the new primary (every write is idempotent in
        effect, so a retry never records twice).
        """
        endpoint = parse_endpoint(url)
        if endpoint.url is None:
            raise ValueError(f"not a Redis URL: {endpoint}")
        options = failover_options(Retry) if endpoint.url.startswith(SENTINEL_SCHEME) else {}
        client = connect(endpoint.url, db=db, **options)
        return cls(client, stream=stream, source=source, replicas=replicas,
                   replica_timeout=replica_timeout, materialize=materialize, archive=archive)

    # ----------------------------------------------------------------- driver
    def run(self, exchange: Exchange[_R]) -> _R:
        """Run an exchange (:mod:`._redis_log_common`, :mod:`._redis_common`) on this
        backend's connections: how the async backend drives it from worker threads."""
        return self._run(exchange)  # type: ignore[no-any-return]

    def _execute(self, op: Any) -> Any:
        if op[0] == "session":
            with self._session_lock:
                if not self.target.session:
                    self._run(lc.exchange_session(self.target, writer_identity(self.source)))
            return None
        if op[0] == "log":
            return self.log_client.execute_command(*op[1:])  # type: ignore[no-untyped-call]
        if op[0] == "sleep":
            time.sleep(op[1])
            return None
        if op[0] == "log_pipeline":
            with self.log_client.pipeline(transaction=True) as pipe:
                for args in op[1]:
                    pipe.execute_command(*args)  # type: ignore[no-untyped-call]
                return pipe.execute()
        return super()._execute(op)

    # ----------------------------------------------------------------- writes
    # (each exchange returns (result, position); the session is registered on demand)
    def set_immutable(self, key: bytes, value: bytes) -> bytes | None:
        return self._wrote(self._run(lc.exchange_set_immutable(  # type: ignore[no-any-return]
            self.target, key, value)))[0]

    def add_mutable(self, key: bytes, value: bytes, timestamp: float) -> None:
        target = self.target
        if target.session and not target.replicas:
            # The common case in one call (a sensor sample, no replicas to wait
            # for); anything else the server says is left to the exchange,
            # which sends the write again (it is idempotent) and interprets it.
            try:
                reply = self.client.execute_command(  # type: ignore[no-untyped-call]
                    *lc.fcall_command(target, "tslog_add", key, *lc.add_args(value, timestamp)))
            except redis.ResponseError:
                pass
            else:
                self._wrote((None, lc.reply_position(reply)))
                return
        self._wrote(self._run(lc.exchange_add_mutable(self.target, key, value, timestamp)))

    def add_mutable_many(self, key: bytes, values: Sequence[bytes] | np.ndarray,
                         timestamps: Any) -> int:
        """Add many samples of one sensor in one round trip; returns how many were new."""
        return int(self._wrote(self._run(lc.exchange_add_mutable_many(
            self.target, key, values, timestamps)))[0])

    def set_indexed(self, key: bytes, sub_key: bytes, value: bytes) -> bytes | None:
        return self._wrote(self._run(lc.exchange_set_indexed(  # type: ignore[no-any-return]
            self.target, key, sub_key, value)))[0]

    def delete(self, key: bytes) -> None:
        self._wrote(self._run(lc.exchange_delete(self.target, key)))

    def clear(self) -> None:
        self._wrote(self._run(lc.exchange_clear(self.target)))

    def observe(self, kind: int, key: bytes, tail: bytes = b"", *,
                pipe: redis.client.Pipeline | None = None) -> int:
        """Record the event of a write that already happened in the telstate db.

        For a recorder (:class:`~telstate_log.replay.SharedLogSink`): a write by
        a client that bypassed the library (``kind`` IMMUTABLE, ADD, INDEXED,
        DELETE or CLEAR, ``tail`` as in a stream record) gets its event under
        this backend's session, with no layout change and no message
        (``tslog_observe``).  Returns its position; with `pipe` (a transaction
        pipeline after ``MULTI``) the call is queued there and 0 is returned.
        """
        if pipe is None:
            reply = self._run(lc.exchange_append(self.target, "tslog_observe", key, kind, tail))
            return self._wrote((None, lc.reply_position(reply)))[1]
        if not self.target.session:
            self._execute(("session",))
        pipe.execute_command(  # type: ignore[no-untyped-call]
            "FCALL", "tslog_observe", 1, key, *self.target.args(), kind, tail)
        return 0

    def sync(self) -> int:
        """The last position, once `replicas` replicas hold every write so far."""
        return int(self._run(exchange_replicated(self.target)))

    # ---------------------------------------------------------------- the log
    @property
    def position(self) -> int:
        """The last position of the shared log."""
        return int(self._run(lc.exchange_last_position(self.target))[0])

    def read_stream(self, after: int = 0, *, include_sessions: bool = True
                    ) -> Iterator[StreamRecord]:
        """Every record after event `after`, in stream order (read in chunks)."""
        for record in self.read_stream_from_id(entry_id(after, 0) if after else b"0-0"):
            if include_sessions or record.kind != SESSION:
                yield record

    def read_stream_from_id(self, last: bytes) -> Iterator[StreamRecord]:
        """Every record after stream entry ID `last`, in stream order."""
        while True:
            records = self._run(lc.exchange_read(self.target, last))
            if not records:
                return
            yield from records
            last = records[-1].entry_id

    def _trimmed_since(self, since: int) -> int:
        """The stream's trim point if `since` is at or before it (else 0); raises
        HistoryUnavailableError if so and there is no archive."""
        trimmed: int = self._run(exchange_trimmed(self.target.meta))
        if since > trimmed:
            return 0
        if self.archive is None:
            raise trimmed_error(trimmed)
        return trimmed

    def events(self, since: int = 1, until: int | None = None) -> list[Event]:
        """Every event with a position in ``[since, until]`` (the audit trail);
        those up to the stream's trim point from the archive."""
        since = max(since, 1)
        for _ in range(3):  # an archiver trimming meanwhile: look again
            trimmed = self._trimmed_since(since)
            if not trimmed:
                return self._run(lc.exchange_events(  # type: ignore[no-any-return]
                    self.target, since, until))
            assert self.archive is not None
            out = self.archive.events(since, trimmed if until is None else min(until, trimmed),
                                      trimmed)
            if until is not None and until <= trimmed:
                return out
            try:
                rest: list[Event] = self._run(lc.exchange_events(self.target, trimmed + 1,
                                                                 until))
                return out + rest
            except HistoryUnavailableError:
                continue
        raise HistoryUnavailableError("the shared log is being trimmed faster than it is read")

    def history(self, key: bytes, sub_key: bytes | None = None) -> list[Event]:
        """The events that changed `key` (or its sub-key `sub_key`), in order."""
        if self._run(exchange_trimmed(self.target.meta)) == 0:
            return self._run(lc.exchange_history(  # type: ignore[no-any-return]
                self.target, key, sub_key))
        return [e for e in self.events(1) if touches(e, key, sub_key)]

    def session_info(self, session: int) -> dict[str, Any]:
        """Who wrote events of `session` (source label, host, pid, user, start).

        A session's record never changes, so each one found is kept: asking
        per event (a history printer) reads the stream once per session.
        """
        known = self._sessions.get(session)
        if known is not None:
            return dict(known)
        info: dict[str, Any] = self._run(lc.exchange_session_info(self.target, session))
        if not info and self.archive is not None:  # its record may have been trimmed
            info = self.archive.session_info(session)
        if info:
            self._sessions[session] = dict(info)
        return info

    # ------------------------------------------------------------ time travel
    def replica(self) -> StreamReplica:
        """The backend's materialised replica, brought up to the stream's end."""
        with self._replica_lock:
            if self._replica is None:
                self._replica = StreamReplica()
            replica = self._replica
            if replica.last_id == b"0-0" and self.archive is not None:
                trimmed = self._trimmed_since(1)
                if trimmed:  # the trimmed beginning, from the archive
                    replica.apply(self.archive.records(trimmed))
            while True:
                ids, bodies = self._run(lc.exchange_catch_up(self.target, replica.last_id,
                                                             replica.position))
                if not ids:
                    return replica
                replica.apply_entries(ids, bodies)

    def as_of(self, position: int | None = None, time: float | None = None) -> StateBackend:
        """A read-only view of the state after event `position` (or at wall-clock `time`)."""
        return self.replica().as_of(position, time)

    def resolve_time(self, when: float) -> int:
        return self.replica().resolve_time(when)

    def changes(self, since: int, until: int) -> Changes:
        return self.replica().changes(since, until)

    def load_from_file(self, file: PathType | BinaryIO) -> int:
        """Load an RDB file's keys as writes of the shared log (events, not RESTORE)."""
        return int(self._run(exchange_log_load(self.target, file)))

    def close(self) -> None:
        super().close()
        self.log_client.close()
        self.log_client.connection_pool.disconnect()
        if self.archive is not None:
            self.archive.close()

    # ---------------------------------------------------------------- monitor
    def monitor_keys(self, keys: Iterable[bytes]) \
            -> Generator[KeyUpdateBase | None, float | None, None]:
        if self.follower is not None:
            return self.follower.monitor_keys(keys)
        return self._monitor(set(keys))

    def watch_all(self) -> Generator[KeyUpdateBase | None, float | None, None]:
        """Like :meth:`monitor_keys` for every key."""
        if self.follower is not None:
            return self.follower.watch_all()
        return self._monitor(None)

    def _monitor(self, wanted: set[bytes] | None) \
            -> Generator[KeyUpdateBase | None, float | None, None]:
        _, last = self._run(lc.exchange_last_position(self.target))
        cursor = lc.MonitorCursor(last)
        # Everything after `last` will be seen: the caller checks its condition now.
        timeout = yield KeyUpdateBase()
        while True:
            if cursor.pending:
                timeout = yield cursor.pending.popleft()
                continue
            timeout = yield self._next_record_update(cursor, wanted, timeout)

    def _next_record_update(self, cursor: lc.MonitorCursor, wanted: set[bytes] | None,
                     timeout: float | None) -> KeyUpdateBase | None:
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        while not cursor.pending:
            if self.closed:
                raise ConnectionError("the Redis backend was closed while waiting")
            now = time.monotonic()
            if now >= deadline and timeout is not None and cursor.tried:
                return None
            block = max(1, int(min(deadline - now, 1.0) * 1000))
            cursor.tried = True
            try:
                records = self._run(lc.exchange_read(self.target, cursor.last, block=block))
            except REDIS_DOWN:
                cursor.delay = min(cursor.delay * 2 or _BACKOFF_FIRST, _BACKOFF_MAX)
                time.sleep(max(0.0, min(cursor.delay, deadline - time.monotonic())))
                continue
            cursor.delay = 0.0
            cursor.take(records, wanted)
        cursor.tried = False
        return cursor.pending.popleft()

