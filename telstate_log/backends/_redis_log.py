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

import getpass
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import redis
import redis.sentinel
from redis.retry import Retry

from .._version import __version__
from ..core._asof import Changes
from ..core._errors import ConnectionError, HistoryUnavailableError, ReplicationError
from ..core._events import CLEAR, SESSION, Event
from ..core._stream_apply import session_of
from ..core._stream_format import StreamRecord, entry_id
from ..core._types import KeyUpdateBase
from . import _redis_log_common as lc
from ._log_functions import log_db_for
from ._redis import REDIS_DOWN, RedisBackend
from ._redis_endpoint import client_options, parse_endpoint
from ._state_backend import StateBackend
from ._stream_replica import StreamReplica

__all__ = ["RedisLogBackend", "client_for_db", "session_info"]

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0


def session_info(source: str | None) -> dict[str, Any]:
    """Who is writing: recorded once per writer session, in the stream."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name available (containers)
        user = ""
    return {"source": source or "", "host": socket.gethostname(), "pid": os.getpid(),
            "user": user, "started": time.time(), "version": __version__}


def client_for_db(client: redis.Redis, db: int) -> redis.Redis:
    """A client of database `db` on the server (or Sentinel service) of `client`."""
    pool = client.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "connection_pool"}
    kwargs["db"] = db
    new: redis.ConnectionPool
    if isinstance(pool, redis.sentinel.SentinelConnectionPool):
        kwargs.pop("connection_class", None)
        new = redis.sentinel.SentinelConnectionPool(  # type: ignore[no-untyped-call]
            pool.service_name, pool.sentinel_manager, **kwargs)
    else:
        new = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    return redis.Redis(connection_pool=new)


class RedisLogBackend(RedisBackend):
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
    """

    def __init__(self, client: redis.Redis, *, stream: str | bytes = "telstate-log",
                 source: str | None = None, replicas: int = 0,
                 replica_timeout: float = 1.0) -> None:
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
        self._run(lc.exchange_ensure_library())

    @classmethod
    def from_url(cls, url: str, *, db: int | None = None,
                 stream: str = "telstate-log", source: str | None = None, replicas: int = 0,
                 replica_timeout: float = 1.0) -> RedisLogBackend:
        """Connect to the shared log `stream` of the telstate database at `url`."""
        endpoint = parse_endpoint(url)
        if endpoint.url is None:
            raise ValueError(f"not a Redis URL: {endpoint}")
        client = redis.Redis.from_url(endpoint.url, db=db, **client_options(Retry))
        return cls(client, stream=stream, source=source, replicas=replicas,
                   replica_timeout=replica_timeout)

    # ----------------------------------------------------------------- driver
    def _execute(self, op: Any) -> Any:
        if op[0] == "log":
            return self.log_client.execute_command(*op[1:])  # type: ignore[no-untyped-call]
        if op[0] == "log_pipeline":
            with self.log_client.pipeline(transaction=True) as pipe:
                for args in op[1]:
                    pipe.execute_command(*args)  # type: ignore[no-untyped-call]
                return pipe.execute()
        return super()._execute(op)

    def _write(self, name: str, key: bytes, *args: Any) -> Any:
        if not self.target.session:
            with self._session_lock:
                if not self.target.session:
                    self._run(lc.exchange_session(self.target, session_info(self.source)))
        return self._run(lc.exchange_append(self.target, name, key, *args))

    # ----------------------------------------------------------------- writes
    def set_immutable(self, key: bytes, value: bytes) -> bytes | None:
        return self._write("tslog_set", key, value)[0]  # type: ignore[no-any-return]

    def add_mutable(self, key: bytes, value: bytes, timestamp: float) -> None:
        self._write("tslog_add", key, *lc.add_args(value, timestamp))

    def add_mutable_many(self, key: bytes, values: Sequence[bytes] | np.ndarray,
                         timestamps: Any) -> int:
        """Add many samples of one sensor in one round trip; returns how many were new."""
        members = lc.add_many_args(values, timestamps)
        if not members:
            return 0
        reply = self._write("tslog_add_many", key, *members)
        return int(reply[2])

    def set_indexed(self, key: bytes, sub_key: bytes, value: bytes) -> bytes | None:
        return self._write("tslog_set_indexed", key, sub_key, value)[0]  # type: ignore[no-any-return]

    def delete(self, key: bytes) -> None:
        self._write("tslog_delete", key)

    def clear(self) -> None:
        self._write("tslog_clear", b"")

    def sync(self) -> int:
        """The last position; with `replicas`, after WAIT confirmed they hold it."""
        position = self.position
        if self.target.replicas:
            acked = int(self.client.execute_command(  # type: ignore[no-untyped-call]
                "WAIT", self.target.replicas, max(int(self.target.replica_timeout * 1000), 1)))
            if acked < self.target.replicas:
                raise ReplicationError(f"{acked} of {self.target.replicas} replica(s) "
                                       "acknowledged", position, acked)
        return position

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

    def _records_from(self, since: int) -> Iterator[StreamRecord]:
        """Records from the one holding position `since` on; raises if trimmed away."""
        before = self._run(lc.exchange_record_at(self.target, since))
        first = True
        start = before.entry_id if before is not None else b"0-0"
        if before is not None and before.kind != SESSION and before.last >= since:
            first = False
            yield before
        for record in self.read_stream_from_id(start):
            if first and record.kind != SESSION:
                first = False
                if record.position > max(since, 1):
                    raise HistoryUnavailableError(
                        f"the shared log's history before position {record.position} was "
                        "trimmed from the stream (archive it with `telstate-log archive`)")
            yield record

    def read_stream_from_id(self, last: bytes) -> Iterator[StreamRecord]:
        """Every record after stream entry ID `last`, in stream order."""
        while True:
            records = self._run(lc.exchange_read(self.target, last))
            if not records:
                return
            yield from records
            last = records[-1].entry_id

    def events(self, since: int = 1, until: int | None = None) -> list[Event]:
        """Every event with a position in ``[since, until]`` (the audit trail)."""
        out: list[Event] = []
        for record in self._records_from(since):
            if until is not None and record.position > until:
                break
            out.extend(e for e in record.events()
                       if e.position >= since and (until is None or e.position <= until))
        return out

    def history(self, key: bytes, sub_key: bytes | None = None) -> list[Event]:
        """The events that changed `key` (or its sub-key `sub_key`), in order."""
        out: list[Event] = []
        for record in self._records_from(1):
            if record.kind == SESSION or (record.key != key and record.kind != CLEAR):
                continue
            for event in record.events():
                if sub_key is None or event.sub_key == sub_key or event.kind in (
                        "delete", "clear"):
                    out.append(event)
        return out

    def session_info(self, session: int) -> dict[str, Any]:
        """Who wrote events of `session` (source label, host, pid, user, start)."""
        for record in self.read_stream_from_id(b"0-0"):
            if record.kind == SESSION and record.session == session:
                return session_of(record)
        return {}

    # ------------------------------------------------------------ time travel
    def replica(self) -> StreamReplica:
        """The backend's materialised replica, brought up to the stream's end."""
        with self._replica_lock:
            if self._replica is None:
                self._replica = StreamReplica()
            replica = self._replica
            replica.apply(self._records_from(1) if replica.last_id == b"0-0"
                          else self.read_stream_from_id(replica.last_id))
            return replica

    def as_of(self, position: int | None = None, time: float | None = None) -> StateBackend:
        """A read-only view of the state after event `position` (or at wall-clock `time`)."""
        return self.replica().as_of(position, time)

    def resolve_time(self, when: float) -> int:
        return self.replica().resolve_time(when)

    def changes(self, since: int, until: int) -> Changes:
        return self.replica().changes(since, until)

    # ---------------------------------------------------------------- monitor
    def monitor_keys(self, keys: Iterable[bytes]) \
            -> Generator[KeyUpdateBase | None, float | None, None]:
        return self._monitor(set(keys))

    def watch_all(self) -> Generator[KeyUpdateBase | None, float | None, None]:
        """Like :meth:`monitor_keys` for every key."""
        return self._monitor(None)

    def _monitor(self, wanted: set[bytes] | None) \
            -> Generator[KeyUpdateBase | None, float | None, None]:
        _, last = self._run(lc.exchange_last_position(self.target))
        cursor = _Cursor(last)
        # Everything after `last` will be seen: the caller checks its condition now.
        timeout = yield KeyUpdateBase()
        while True:
            if cursor.pending:
                timeout = yield cursor.pending.popleft()
                continue
            timeout = yield self._next_record_update(cursor, wanted, timeout)

    def _next_record_update(self, cursor: _Cursor, wanted: set[bytes] | None,
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


class _Cursor:
    """A monitor's place in the stream and the updates it has yet to report."""

    def __init__(self, last: bytes) -> None:
        self.last = last
        self.position: int | None = None
        self.pending: deque[KeyUpdateBase] = deque()
        self.delay = 0.0
        self.tried = False

    def take(self, records: list[StreamRecord], wanted: set[bytes] | None) -> None:
        for record in records:
            self.last = record.entry_id
            if record.kind == SESSION:
                continue
            if self.position is not None and record.position != self.position + 1:
                self.pending.append(KeyUpdateBase())   # a gap: the caller re-reads
            self.position = record.last
            for key, update in lc.record_updates(record):
                if wanted is None or key is None or key in wanted:
                    self.pending.append(update)
