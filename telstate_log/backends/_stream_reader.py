"""The thread that feeds a materialised replica from a shared log's stream.

Theory of operation
-------------------
A :class:`StreamReader` owns one connection to the log db and one daemon
thread.  The thread reads with blocking ``XREAD`` from the replica's last
entry ID, :data:`READ_COUNT` entries at a time, and hands them to
:meth:`~._stream_replica.StreamReplica.apply_entries`.  One read is always
in flight: the next ``XREAD`` is sent before the entries just received are
applied, so the server gathers the next chunk while Python applies this
one.  Replies are read raw off the connection (no redis-py reply
callbacks, which would build a dict per entry), and while catching up (a
full reply) the cyclic collector is paused: a reply is tens of thousands of
objects at once, which it would traverse over and over (see
:mod:`~telstate_log.core._gcpause`).

Never skipping: the connection does not retry by itself.  When it is lost
(or the server answers that it is loading, read-only, or unblocked the read
on a role change) the thread reconnects with backoff and, before reading
on, checks that the server still holds what the replica applied: a position
counter not behind the replica's, and the entry at the replica's last ID,
byte for byte.  It checks the same whenever a read found nothing for a
whole block, so a server restarted between two reads is noticed too.
Otherwise -- a restart without persistence, a failover that lost writes and
reused their positions -- it stops with
:exc:`~telstate_log.StreamDivergedError` naming the position; a gap (entries
trimmed past the replica) stops it the same way, from
:func:`~telstate_log.core._stream_apply.apply_record`.  The error that stops
the thread is handed to :meth:`~._stream_replica.StreamReplica.fail`, so
every later read and wait raises it.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import redis
import redis.connection
import redis.sentinel

from ..core._errors import StreamCorruptError, StreamDivergedError
from ..core._gcpause import collector_paused
from ..core._stream_format import parse_entry_id
from ._redis import REDIS_DOWN
from ._stream_replica import StreamReplica

__all__ = ["CLIENT_NAME", "READ_COUNT", "StreamReader", "pool_like"]

#: entries asked for per XREAD
READ_COUNT = 10_000
#: the name (CLIENT SETNAME) of a reader's connection
CLIENT_NAME = "telstate-log-follower"
_BLOCK_MS = 1000
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0
_TRANSIENT = (redis.exceptions.ReadOnlyError, redis.exceptions.TryAgainError,
              redis.exceptions.MasterDownError)


def pool_like(pool: redis.ConnectionPool, **overrides: Any) -> redis.ConnectionPool:
    """A new pool for the server (or Sentinel service) of `pool`, with its connection
    settings but `overrides` (``db=...``, ``retry=...``)."""
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k != "connection_pool"}
    kwargs.update(overrides)
    if isinstance(pool, redis.sentinel.SentinelConnectionPool):
        kwargs.pop("connection_class", None)
        return redis.sentinel.SentinelConnectionPool(  # type: ignore[no-untyped-call]
            pool.service_name, pool.sentinel_manager, **kwargs)
    return redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)


def _transient(exc: redis.ResponseError) -> bool:
    """Whether to resume on a new connection after error reply `exc` (LOADING is a
    ConnectionError already; UNBLOCKED ends a blocked read on a role change)."""
    return isinstance(exc, _TRANSIENT) or str(exc).startswith("UNBLOCKED")


class StreamReader:
    """Feeds `replica` from `stream` over connections of `pool` (see module docstring).

    `pool` is a connection pool of the log db whose connections do not retry
    (the reader reconnects by itself); the reader disconnects it on close.
    """

    def __init__(self, pool: redis.ConnectionPool, stream: bytes,
                 replica: StreamReplica) -> None:
        self.stream = stream
        self.replica = replica
        self._pool = pool
        self._conn: redis.connection.AbstractConnection | None = None
        self._last_body = b""  # of the entry at replica.last_id (for the continuity check)
        self._healthy = True  # the last connection delivered (backoff starts afresh)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True,
                                        name=f"StreamReader {stream!r}")

    def start(self) -> None:
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (waking it out of a blocking read) and disconnect."""
        self._closed.set()
        self._drop()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._pool.disconnect()

    def _follow(self) -> None:
        delay = 0.0
        resumed = False
        try:
            while not self._closed.is_set():
                try:
                    conn = self._conn = self._pool.get_connection()
                    if resumed:
                        self._check_continuity(conn)
                    self._read(conn)
                except (*REDIS_DOWN, redis.ResponseError) as exc:
                    if isinstance(exc, redis.ResponseError) and not _transient(exc):
                        raise
                    self._drop()
                    resumed = True
                    delay = _BACKOFF_FIRST if self._healthy else min(delay * 2, _BACKOFF_MAX)
                    self._healthy = False
                    self._closed.wait(delay)
        except BaseException as exc:  # divergence, corruption, refusal: reads raise it
            if not self._closed.is_set():
                self.replica.fail(exc)
        finally:
            self._drop()

    def _read(self, conn: redis.connection.AbstractConnection) -> None:
        """Read and apply entries until closed (one XREAD always in flight)."""
        stream = self.stream
        last = self.replica.last_id
        _send(conn, "XREAD", "COUNT", READ_COUNT, "BLOCK", _BLOCK_MS, "STREAMS", stream, last)
        catching_up = True
        while not self._closed.is_set():
            with collector_paused() if catching_up else contextlib.nullcontext():
                entries = _entries(conn.read_response())
                self._healthy = True
                if entries:
                    last = entries[-1][0]
                else:  # idle for a whole block: is the stream still the one applied?
                    self._check_continuity(conn)
                _send(conn, "XREAD", "COUNT", READ_COUNT, "BLOCK", _BLOCK_MS,
                      "STREAMS", stream, last)
                if entries:
                    ids = [e[0] for e in entries]
                    bodies = [e[1][1] for e in entries]
                    if {e[1][0] for e in entries} != {b"e"}:
                        raise StreamCorruptError(f"stream {stream!r} has entries without "
                                                 "exactly one field 'e' (not a shared log)")
                    self.replica.apply_entries(ids, bodies)
                    self._last_body = bodies[-1]
            catching_up = len(entries) >= READ_COUNT

    def _check_continuity(self, conn: redis.connection.AbstractConnection) -> None:
        """Does the server still hold what the replica applied? (Raises if not.)"""
        last = self.replica.last_id
        if last == b"0-0":
            return
        _send(conn, "HGET", self.stream + b":meta", "pos")
        counter = int(conn.read_response() or 0)
        _send(conn, "XREVRANGE", self.stream, last, "-", "COUNT", 1)
        found = conn.read_response()
        applied = self.replica.applied
        name = self.stream.decode(errors="replace")
        if counter < applied:
            raise StreamDivergedError(
                f"the shared log {name} now ends at position {counter}, before position "
                f"{applied} this follower applied: events were lost (a restart without "
                "persistence, or a failover)", counter + 1)
        if found and (found[0][0] != last or found[0][1][1] != self._last_body):
            raise StreamDivergedError(
                f"the shared log {name} holds a different event at {last.decode()} than "
                "this follower applied (writes lost in a failover, their positions reused)",
                parse_entry_id(last)[0])

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection is thrown away
                conn.disconnect()  # type: ignore[no-untyped-call]


def _send(conn: redis.connection.AbstractConnection, *args: Any) -> None:
    conn.send_command(*args)  # type: ignore[no-untyped-call]


def _entries(reply: Any) -> list[Any]:
    """The entries of a raw XREAD reply: a RESP2 list or RESP3 map (None: none)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values())))
    return reply[0][1]  # type: ignore[no-any-return]
