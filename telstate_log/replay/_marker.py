"""The projector's marker in Redis, and transactions guarded by it.

Theory of operation
-------------------
A database that a log is projected into holds one extra key, the *marker*
(``telstate-log:projector`` by default): a Redis hash saying which log the
data came from (``log_id``, hex), how far it got (``position``: every event
up to it is applied, none after it), and, while a backfill runs, its target
(``backfill_target``) and the last key restored so far (``backfill_after``).
Field names and values are encoded as telescope-state values, so the marker
is a well-formed indexed key: a katsdptelstate client that lists and reads
every key sees a small dict instead of failing to decode.

Every change to the projected data goes through :meth:`MarkerStore.commit`,
one ``MULTI``/``EXEC`` transaction holding the data commands *and* the new
marker fields, guarded by ``WATCH`` on the marker:

1. ``WATCH marker``, then ``HGETALL marker``: the marker must still say what
   this process last saw (same log, position and backfill progress);
   otherwise :exc:`MarkerMoved` is raised and nothing is sent.
2. ``MULTI``, the data commands, ``HSET`` of the marker fields, ``EXEC``.

Redis applies the whole transaction or, if the marker changed after the
``WATCH``, none of it.  The transaction is sent on a connection of its own
from the client's pool, never through redis-py's retrying paths: if the
connection fails before the outcome is read, :exc:`MarkerMoved` is raised
and the caller re-reads the marker to learn whether it committed, so no
transaction is ever re-sent blindly.  Every event is therefore applied
exactly once, even when two projectors race on one database (one of them
gets :exc:`MarkerMoved` and re-reads), and even if a reply arrives too late
(the retry's ``HGETALL`` runs after the late ``EXEC`` and sees its marker).
:meth:`MarkerStore.begin` sends a transaction and returns at once;
:meth:`PendingCommit.finish` reads its outcome, so a caller can prepare the
next batch while Redis executes this one.

A command that fails *inside* an ``EXEC`` (``WRONGTYPE`` because some other
client wrote to the projected database) cannot be rolled back: Redis has
applied the rest.  The store then records an ``error`` field in the marker
and raises :exc:`ProjectionError`; a projector refuses such a database until
it is re-projected with ``overwrite=True``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import redis
from redis.exceptions import ExecAbortError
from redis.retry import Retry

from .._encoding import decode_value, encode_value
from .._errors import DecodeError, TelstateError
from ..backends._redis import REDIS_DOWN
from ..backends._redis_endpoint import client_options, parse_endpoint

__all__ = ["DEFAULT_MARKER_KEY", "ForeignDatabaseError", "Marker", "MarkerMoved",
           "MarkerStore", "PendingCommit", "ProjectionError", "client_for_url"]

#: Name of the marker key in projected databases.
DEFAULT_MARKER_KEY = b"telstate-log:projector"
_FORMAT = 1
_FIELDS = ("format", "log_id", "position", "backfill_target", "backfill_after", "error",
           "updated")


class ProjectionError(TelstateError):
    """Projecting a log into Redis cannot continue (see the message for why)."""


class ForeignDatabaseError(ProjectionError):
    """The target database holds data that was not projected from this log."""


class MarkerMoved(ProjectionError):
    """The marker changed under a transaction (lost reply, or another projector)."""


@dataclass(frozen=True)
class Marker:
    """What a marker says (``log_id`` is the log's id in hex)."""

    log_id: str
    position: int = 0
    backfill_target: int | None = None
    backfill_after: bytes | None = None
    error: str | None = None

    def fields(self) -> dict[str, Any]:
        """The marker as hash fields (None fields are left out)."""
        out: dict[str, Any] = {"format": _FORMAT, "log_id": self.log_id,
                               "position": self.position}
        for name in ("backfill_target", "backfill_after", "error"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


def _decode_marker(raw: Mapping[Any, Any], key: bytes) -> Marker | None:
    """Parse an ``HGETALL`` reply; None if the key does not exist."""
    if not raw:
        return None
    fields: dict[str, Any] = {}
    try:
        for name, value in raw.items():
            decoded = decode_value(bytes(name))
            if isinstance(decoded, str):
                fields[decoded] = decode_value(bytes(value))
    except DecodeError:
        fields = {}
    position, log_id = fields.get("position"), fields.get("log_id")
    if fields.get("format") != _FORMAT or not isinstance(log_id, str) \
            or not isinstance(position, int) or position < 0:
        raise ForeignDatabaseError(f"key {key!r} exists but is not a telstate-log projector "
                                   "marker (format 1); refusing to touch this database")
    target = fields.get("backfill_target")
    after = fields.get("backfill_after")
    error = fields.get("error")
    return Marker(log_id, position, target if isinstance(target, int) else None,
                  after if isinstance(after, bytes) else None,
                  error if isinstance(error, str) else None)


class MarkerStore:
    """Reads the marker and commits transactions guarded by it (see module docstring).

    Parameters
    ----------
    client
        A :class:`redis.Redis` (``decode_responses=False``) on the target database.
    key
        Name of the marker key.
    """

    def __init__(self, client: redis.Redis, key: bytes = DEFAULT_MARKER_KEY) -> None:
        self.client = client
        self.key = key
        #: the marker as this process last read or wrote it (None: no marker)
        self.current: Marker | None = None
        self.transactions = 0

    def read(self, *, remember: bool = True) -> Marker | None:
        """Re-read the marker from Redis (and remember it as the expected state, unless
        `remember` is false: a status query from another thread must not do that)."""
        marker = _decode_marker(self.client.hgetall(self.key), self.key)
        if remember:
            self.current = marker
        return marker

    def dbsize(self) -> int:
        return int(self.client.dbsize())

    def initialise(self, log_id: str, *, flush: bool) -> Marker:
        """Start a fresh projection (optionally FLUSHDB first): marker at position 0."""
        if flush:
            self.client.flushdb()
        self.current = None
        marker = Marker(log_id)
        self.commit([], marker, expect_absent=True)
        return marker

    def commit(self, commands: Iterable[tuple[Any, ...]], new: Marker, *,
               expect_absent: bool = False) -> list[Any]:
        """Apply `commands` and set the marker to `new` in one guarded transaction.

        Raises :exc:`MarkerMoved` (nothing applied, or a lost reply: re-read
        to know which) and :exc:`ProjectionError` if a command failed inside
        the transaction (recorded in the marker).
        """
        return self.begin(commands, new, expect_absent=expect_absent).finish()

    def begin(self, commands: Iterable[tuple[Any, ...]], new: Marker, *,
              expect_absent: bool = False) -> PendingCommit:
        """Check the marker and send the transaction; :meth:`PendingCommit.finish` reads
        its outcome.  In between, the caller can prepare the next batch while Redis
        executes this one.  Raises :exc:`MarkerMoved` if the marker is not as expected."""
        if not expect_absent and self.current is None:
            raise MarkerMoved("the marker state is unknown: re-read it before committing")
        expected = None if expect_absent else self.current
        fields: list[Any] = []
        for name, value in {**new.fields(), "updated": time.time()}.items():
            fields += (encode_value(name), encode_value(value))
        stale = [encode_value(name) for name in _FIELDS
                 if name not in new.fields() and name != "updated"]
        commands = list(commands)
        tail: list[tuple[Any, ...]] = [("HDEL", self.key, *stale)] if stale else []
        tail += [("HSET", self.key, *fields), ("EXEC",)]
        pool = self.client.connection_pool
        conn: Any = pool.get_connection()
        try:
            conn.send_command("WATCH", self.key)
            conn.read_response()
            conn.send_command("HGETALL", self.key)
            seen = _decode_marker(_as_mapping(conn.read_response()), self.key)
            if seen != expected:
                conn.send_command("UNWATCH")
                conn.read_response()
                self.current = seen
                raise MarkerMoved(f"the marker changed to {seen} (expected {expected})")
            conn.send_packed_command(conn.pack_commands([("MULTI",), *commands, *tail]))
        except REDIS_DOWN as exc:
            conn.disconnect()
            pool.release(conn)
            self.current = None
            raise MarkerMoved(f"transaction not confirmed ({exc}); re-read the marker") from None
        except BaseException:
            pool.release(conn)
            raise
        return PendingCommit(self, conn, commands, len(tail), new)

    def mark_failed(self, message: str) -> None:
        """Record `message` in the marker so no projector trusts this database again."""
        if self.current is None:
            return
        failed = replace(self.current, error=message[:500])
        self.client.hset(self.key, encode_value("error"), encode_value(failed.error))
        self.current = failed


def client_for_url(url: str) -> redis.Redis:
    """A client for the database at a ``redis://``, ``rediss://`` or ``unix://`` URL,
    with katsdptelstate's timeouts and our retry policy (ValueError for anything else)."""
    endpoint = parse_endpoint(url)
    if endpoint.url is None:
        raise ValueError(f"not a Redis URL: {endpoint} (e.g. redis://host:6379/0)")
    return redis.Redis.from_url(endpoint.url, **client_options(Retry))


def _as_mapping(reply: Any) -> Mapping[Any, Any]:
    """An HGETALL reply as a mapping (RESP3 gives a dict, RESP2 a flat list)."""
    if isinstance(reply, Mapping):
        return reply
    return dict(zip(reply[0::2], reply[1::2]))


class PendingCommit:
    """A transaction sent by :meth:`MarkerStore.begin` whose replies are not read yet."""

    def __init__(self, store: MarkerStore, conn: Any, commands: list[tuple[Any, ...]],
                 tail: int, new: Marker) -> None:
        self._store = store
        self._conn = conn
        self._commands = commands
        self._tail = tail
        self._new = new

    def finish(self) -> list[Any]:
        """Read the outcome: the replies of the commands (see :meth:`MarkerStore.commit`)."""
        store, conn = self._store, self._conn
        pool = store.client.connection_pool
        try:
            queued: list[Any] = []
            for _ in range(1 + len(self._commands) + self._tail - 1):   # MULTI, QUEUED...
                try:
                    conn.read_response()
                except redis.ResponseError as exc:        # refused while queueing
                    queued.append(exc)
            try:
                replies = conn.read_response()               # EXEC
            except ExecAbortError:
                raise ProjectionError(f"Redis refused a projection transaction: "
                                      f"{queued[0] if queued else 'EXECABORT'}") from None
        except REDIS_DOWN as exc:
            conn.disconnect()
            store.current = None
            raise MarkerMoved(f"transaction not confirmed ({exc}); re-read the marker") from None
        finally:
            pool.release(conn)
        if replies is None:                                  # the WATCH fired
            store.current = None
            raise MarkerMoved("the marker changed during the transaction; re-read it")
        store.current = self._new
        store.transactions += 1
        replies = list(replies)[:len(self._commands)]
        failures = [(args, reply) for args, reply in zip(self._commands, replies)
                    if isinstance(reply, Exception)]
        if failures:
            args, reply = failures[0]
            message = (f"{len(failures)} command(s) failed inside a projection transaction, "
                       f"first {args[0]!r} on {args[1]!r}: {reply}; the database no longer "
                       "matches the log (was it written by another client?): re-project it "
                       "with overwrite")
            store.mark_failed(message)
            raise ProjectionError(message)
        return replies
