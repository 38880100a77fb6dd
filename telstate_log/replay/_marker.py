"""The projector's marker in Redis, and transactions guarded by it.

Theory of operation
-------------------
A projection keeps one small Redis hash, the *marker*, saying which log the
data came from (``log_id``, hex), how far it got (``position``: every event
up to it is applied, none after it), and, while a backfill runs, its target
(``backfill_target``) and the last key restored so far (``backfill_after``).
Field names and values are encoded as telescope-state values.

*Where it lives.*  Not among the projected keys: katsdptelstate clients and
katdal list every key of the database they are given, so the marker lives in
another database of the same server, the *marker database*
(:data:`DEFAULT_MARKER_DB`, 15: the last of the 16 that Redis has by default;
any other can be chosen, never the projected one), under the key
``telstate-log:projector:<projected database number>``, so that projections
into several databases of one server keep one marker each.  A server without
that database (``databases`` set lower) is refused with a
:exc:`ProjectionError` naming the setting.  Earlier versions kept the marker
in the projected database itself, as the key ``telstate-log:projector``;
:meth:`MarkerStore.read` *adopts* such a marker when the marker database has
none: one ``MULTI``/``EXEC``, guarded by ``WATCH`` on both keys, deletes it
from the projected database and writes the same fields to the marker
database, so the position moves without a gap or a repeat (a projector of an
earlier version still running on that database then finds its marker gone
and stops).  A key of that name is otherwise ordinary data.

Every change to the projected data goes through :meth:`MarkerStore.commit`,
one ``MULTI``/``EXEC`` transaction on a connection to the marker database
holding the data commands *and* the new marker, guarded by ``WATCH`` on the
marker:

1. ``WATCH marker``, then ``HGETALL marker``: the marker must still say what
   this process last saw (same log, position and backfill progress);
   otherwise :exc:`MarkerMoved` is raised and nothing is sent.
2. ``MULTI``, ``SELECT <projected db>``, the data commands, ``SELECT <marker
   db>``, ``DEL`` and ``HSET`` of the marker, ``EXEC``.

Redis applies the whole transaction, in both databases, or, if the marker
changed after the ``WATCH``, none of it (and a snapshot or AOF of the server
holds all of it or none).  The connection is left on the marker database
whatever the outcome.  The transaction is sent on a connection of its own,
never through redis-py's retrying paths: if the connection fails before the
outcome is read, :exc:`MarkerMoved` is raised and the caller re-reads the
marker to learn whether it committed, so no transaction is ever re-sent
blindly.  Every event is therefore applied exactly once, even when two
projectors race on one database (one of them gets :exc:`MarkerMoved` and
re-reads), and even if a reply arrives too late (the retry's ``HGETALL``
runs after the late ``EXEC`` and sees its marker).  :meth:`MarkerStore.begin`
sends a transaction and returns at once; :meth:`PendingCommit.finish` reads
its outcome, so a caller can prepare the next batch while Redis executes
this one.

A command that fails *inside* an ``EXEC`` (``WRONGTYPE`` because some other
client wrote to the projected database) cannot be rolled back: Redis has
applied the rest.  The store then records an ``error`` field in the marker
and raises :exc:`ProjectionError`; a projector refuses such a database until
it is re-projected with ``overwrite=True``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import redis
from redis.exceptions import ExecAbortError
from redis.retry import Retry

from ..backends._redis import REDIS_DOWN
from ..backends._redis_common import is_wrongtype
from ..backends._redis_endpoint import client_options, parse_endpoint
from ..core._encoding import decode_value, encode_value
from ..core._errors import DecodeError, TelstateError
from ..core._types import KeyType

__all__ = ["DEFAULT_MARKER_DB", "DEFAULT_MARKER_KEY", "ForeignDatabaseError", "Marker",
           "MarkerMoved", "MarkerStore", "PendingCommit", "ProjectionError", "client_for_url",
           "is_marker"]

#: Name of the marker key: in the marker database it is followed by
#: ``:<projected database number>``; earlier versions kept it under this very
#: name in the projected database.
DEFAULT_MARKER_KEY = b"telstate-log:projector"
#: Database holding the markers of the projections into a server (the last of
#: Redis's default 16).
DEFAULT_MARKER_DB = 15
_FORMAT = 1
#: Tries at moving an earlier version's marker before giving up (each one fails
#: only if that marker changed meanwhile).
_ADOPT_ATTEMPTS = 50


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


def _parse_marker(raw: Mapping[Any, Any]) -> Marker | None:
    """The marker an ``HGETALL`` reply holds; None if it is not a (format 1) marker."""
    fields: dict[str, Any] = {}
    try:
        for name, value in raw.items():
            decoded = decode_value(bytes(name))
            if isinstance(decoded, str):
                fields[decoded] = decode_value(bytes(value))
    except DecodeError:
        return None
    position, log_id = fields.get("position"), fields.get("log_id")
    if fields.get("format") != _FORMAT or not isinstance(log_id, str) \
            or not isinstance(position, int) or position < 0:
        return None
    target = fields.get("backfill_target")
    after = fields.get("backfill_after")
    error = fields.get("error")
    return Marker(log_id, position, target if isinstance(target, int) else None,
                  after if isinstance(after, bytes) else None,
                  error if isinstance(error, str) else None)


def _decode_marker(raw: Mapping[Any, Any], key: bytes) -> Marker | None:
    """Parse an ``HGETALL`` reply of the marker key; None if the key does not exist."""
    if not raw:
        return None
    marker = _parse_marker(raw)
    if marker is None:
        raise ForeignDatabaseError(f"key {key!r} exists but is not a telstate-log projector "
                                   "marker (format 1); refusing to touch this database")
    return marker


def is_marker(kind: KeyType, value: Any) -> bool:
    """Whether a key's value is a projector marker (as earlier versions left one in the
    projected database): an indexed key whose fields make a format 1 marker."""
    return kind == KeyType.INDEXED and isinstance(value, Mapping) and \
        _parse_marker(value) is not None


def _as_mapping(reply: Any) -> Mapping[Any, Any]:
    """An HGETALL reply as a mapping (RESP3 gives a dict, RESP2 a flat list)."""
    if isinstance(reply, Mapping):
        return reply
    return dict(zip(reply[0::2], reply[1::2]))


def _call(conn: Any, *args: Any) -> Any:
    conn.send_command(*args)
    return conn.read_response()


class MarkerStore:
    """Reads the marker and commits transactions guarded by it (see module docstring).

    Parameters
    ----------
    client
        A :class:`redis.Redis` (``decode_responses=False``) on the projected database.
    key
        Name of the marker key (followed by ``:<projected database>`` in the
        marker database).
    marker_db
        The database of the same server that holds the marker.

    Raises
    ------
    ValueError
        If `marker_db` is negative or is the projected database.
    """

    def __init__(self, client: redis.Redis, key: bytes = DEFAULT_MARKER_KEY, *,
                 marker_db: int = DEFAULT_MARKER_DB) -> None:
        pool = client.connection_pool
        self.client = client
        #: the projected database's number
        self.db = int(pool.connection_kwargs.get("db") or 0)
        if marker_db < 0 or marker_db == self.db:
            raise ValueError(f"the projector's marker database ({marker_db}) must be another "
                             f"database of the server than the projected one ({self.db})")
        self.marker_db = marker_db
        #: the marker's key in the marker database
        self.key = key + b":%d" % self.db
        #: where earlier versions kept the marker: this key of the projected database
        self.legacy_key = key
        self.meta = redis.Redis(connection_pool=redis.ConnectionPool(
            connection_class=pool.connection_class,
            **{**pool.connection_kwargs, "db": marker_db}))
        #: the marker as this process last read or wrote it (None: no marker)
        self.current: Marker | None = None
        self.transactions = 0

    @contextmanager
    def _marker_db(self) -> Iterator[None]:
        """Report a server without the marker database clearly."""
        try:
            yield
        except redis.ResponseError as exc:
            if "DB index is out of range" not in str(exc):
                raise
            raise ProjectionError(
                f"the Redis server has no database {self.marker_db} to keep the projector's "
                "marker in (its 'databases' setting is lower): pass marker_db (--marker-db) "
                "naming another database that it has than the projected one, or raise "
                "'databases' (a server with a single database cannot keep the marker apart "
                "from the data)") from None

    def _connection(self) -> Any:
        """A connection to the marker database, all our own until released."""
        with self._marker_db():
            return self.meta.connection_pool.get_connection()

    def read(self, *, remember: bool = True) -> Marker | None:
        """Re-read the marker from Redis, adopting one that an earlier version left in
        the projected database (and remember it as the expected state, unless
        `remember` is false: a status query from another thread must not do that)."""
        for _ in range(_ADOPT_ATTEMPTS):
            with self._marker_db():
                marker = _decode_marker(self.meta.hgetall(self.key), self.key)
            if marker is None:
                legacy = self._legacy()
                if legacy is not None:
                    raw, marker = legacy
                    if not self._adopt(raw):
                        continue
            if remember:
                self.current = marker
            return marker
        raise ProjectionError(f"the projector marker {self.legacy_key!r} in database "
                              f"{self.db} keeps changing while it is moved to database "
                              f"{self.marker_db}: is a projector of an earlier version still "
                              "running on this database?")

    def _legacy(self) -> tuple[Mapping[Any, Any], Marker] | None:
        """The marker an earlier version left in the projected database (its fields and
        what they say), if the key there is one; otherwise the key is data."""
        try:
            raw = _as_mapping(self.client.hgetall(self.legacy_key))
        except redis.ResponseError as exc:
            if not is_wrongtype(exc):
                raise
            return None
        marker = _parse_marker(raw) if raw else None
        return None if marker is None else (raw, marker)

    def _adopt(self, raw: Mapping[Any, Any]) -> bool:
        """Move the legacy marker `raw` to the marker database in one transaction;
        False if either key changed meanwhile (the caller re-reads)."""
        fields = [item for pair in raw.items() for item in pair]
        pool = self.meta.connection_pool
        conn = self._connection()
        try:
            _call(conn, "SELECT", self.db)
            _call(conn, "WATCH", self.legacy_key)
            same = _as_mapping(_call(conn, "HGETALL", self.legacy_key)) == raw
            _call(conn, "SELECT", self.marker_db)
            _call(conn, "WATCH", self.key)
            if not same or _call(conn, "EXISTS", self.key):
                _call(conn, "UNWATCH")
                return False
            conn.send_packed_command(conn.pack_commands([
                ("MULTI",), ("SELECT", self.db), ("UNLINK", self.legacy_key),
                ("SELECT", self.marker_db), ("HSET", self.key, *fields), ("EXEC",)]))
            for _ in range(5):
                conn.read_response()
            return conn.read_response() is not None
        except REDIS_DOWN:
            conn.disconnect()
            return False             # committed or not: the caller re-reads
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def dbsize(self) -> int:
        """Number of keys in the projected database."""
        return int(self.client.dbsize())

    def initialise(self, log_id: str, *, flush: bool) -> Marker:
        """Start a fresh projection: marker at position 0.  With `flush`, the projected
        database is emptied (``FLUSHDB``) and any marker replaced in the same
        transaction; otherwise there must be no marker yet."""
        self.current = None
        marker = Marker(log_id)
        self.commit([], marker, expect_absent=not flush, flush=flush)
        return marker

    def commit(self, commands: Iterable[tuple[Any, ...]], new: Marker, *,
               expect_absent: bool = False, flush: bool = False) -> list[Any]:
        """Apply `commands` and set the marker to `new` in one guarded transaction.

        Raises :exc:`MarkerMoved` (nothing applied, or a lost reply: re-read
        to know which) and :exc:`ProjectionError` if a command failed inside
        the transaction (recorded in the marker).
        """
        return self.begin(commands, new, expect_absent=expect_absent, flush=flush).finish()

    def begin(self, commands: Iterable[tuple[Any, ...]], new: Marker, *,
              expect_absent: bool = False, flush: bool = False) -> PendingCommit:
        """Check the marker and send the transaction; :meth:`PendingCommit.finish` reads
        its outcome.  In between, the caller can prepare the next batch while Redis
        executes this one.  Raises :exc:`MarkerMoved` if the marker is not as expected
        (`expect_absent`: there is none; `flush`: anything, as the transaction first
        empties the projected database and replaces the marker)."""
        if not (expect_absent or flush) and self.current is None:
            raise MarkerMoved("the marker state is unknown: re-read it before committing")
        expected = None if expect_absent else self.current
        fields: list[Any] = []
        for name, value in {**new.fields(), "updated": time.time()}.items():
            fields += (encode_value(name), encode_value(value))
        commands = list(commands)
        head: list[tuple[Any, ...]] = [("MULTI",), ("SELECT", self.db)]
        if flush:
            head.append(("FLUSHDB",))
        tail: list[tuple[Any, ...]] = [("SELECT", self.marker_db), ("DEL", self.key),
                                       ("HSET", self.key, *fields), ("EXEC",)]
        pool = self.meta.connection_pool
        conn = self._connection()
        try:
            _call(conn, "WATCH", self.key)
            raw = _as_mapping(_call(conn, "HGETALL", self.key))
            if not flush:
                seen = _decode_marker(raw, self.key)
                if seen != expected:
                    _call(conn, "UNWATCH")
                    pool.release(conn)
                    self.current = seen
                    raise MarkerMoved(f"the marker changed to {seen} (expected {expected})")
            conn.send_packed_command(conn.pack_commands([*head, *commands, *tail]))
        except MarkerMoved:
            raise
        except REDIS_DOWN as exc:
            conn.disconnect()
            pool.release(conn)
            self.current = None
            raise MarkerMoved(f"transaction not confirmed ({exc}); re-read the marker") from None
        except BaseException:
            conn.disconnect()
            pool.release(conn)
            raise
        return PendingCommit(self, conn, commands, len(head) - 1, len(head) + len(tail) - 1,
                             new)

    def mark_failed(self, message: str) -> None:
        """Record `message` in the marker so no projector trusts this database again."""
        if self.current is None:
            return
        failed = replace(self.current, error=message[:500])
        self.meta.hset(self.key, encode_value("error"), encode_value(failed.error))
        self.current = failed

    def close(self) -> None:
        """Close the connections to the marker database (the client is the caller's)."""
        self.meta.close()
        self.meta.connection_pool.disconnect()


def client_for_url(url: str) -> redis.Redis:
    """A client for the database at a ``redis://``, ``rediss://`` or ``unix://`` URL,
    with katsdptelstate's timeouts and our retry policy (ValueError for anything else)."""
    endpoint = parse_endpoint(url)
    if endpoint.url is None:
        raise ValueError(f"not a Redis URL: {endpoint} (e.g. redis://host:6379/0)")
    return redis.Redis.from_url(endpoint.url, **client_options(Retry))


class PendingCommit:
    """A transaction sent by :meth:`MarkerStore.begin` whose replies are not read yet.

    `first` is the index of the first data command's reply in the ``EXEC``
    reply; `framing` the number of commands around the data commands,
    ``EXEC`` excluded (each gets a reply before ``EXEC``'s).
    """

    def __init__(self, store: MarkerStore, conn: Any, commands: list[tuple[Any, ...]],
                 first: int, framing: int, new: Marker) -> None:
        self._store = store
        self._conn = conn
        self._commands = commands
        self._first = first
        self._framing = framing
        self._new = new

    def finish(self) -> list[Any]:
        """Read the outcome: the replies of the commands (see :meth:`MarkerStore.commit`)."""
        store, conn = self._store, self._conn
        pool = store.meta.connection_pool
        try:
            queued: list[Any] = []
            for _ in range(self._framing + len(self._commands)):   # MULTI, QUEUED...
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
        replies = list(replies)[self._first:self._first + len(self._commands)]
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
