"""What the sync and async shared-log backends share: their exchanges.

Theory of operation
-------------------
A :class:`~telstate_log.backends.RedisLogBackend` writes through the
function library (:mod:`._log_functions`) and reads the stream of its shared
log.  Every operation is an *exchange*, as in :mod:`._redis_common`: a
generator yielding Redis calls, run by the sync or async driver.  Calls on
the telstate db are ``("command", ...)`` and ``("pipeline", ...)``; calls on
the log db, where the stream lives, are ``("log", *args)`` and
``("log_pipeline", [args, ...])``; ``("session",)`` asks the driver to
register the writer's session unless it has (once, under its own lock: the
write exchanges yield it before their first write).  The drivers do only
I/O; what a write returns, where a scan starts, the trim check, the filters
of ``events`` / ``history`` and a monitor's cursor are written here once.

A write is ``FCALL`` of one function with the common arguments (log db,
stream, telstate db, session id) and, with ``replicas=N``, ``WAIT N
timeout`` in the same round trip (a pipeline on one connection, so WAIT
covers that write): fewer acknowledgements raise
:exc:`~telstate_log.ReplicationError`.  A server that lost the library (a
restart without persistence) gets it loaded again and the write is retried
once; every function is idempotent in effect (first-writer-wins, ZADD of a
member), so a retry never records twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from ..core._errors import HistoryUnavailableError, ReplicationError, SharedLogError
from ..core._events import ADD, ADD_BATCH, CLEAR, DELETE, IMMUTABLE, INDEXED, SESSION, Event
from ..core._state import check_timestamp
from ..core._stream_apply import session_of
from ..core._stream_format import StreamRecord, decode_record, entry_id, parse_entry_id
from ..core._types import ImmutableKeyUpdate, IndexedKeyUpdate, KeyUpdateBase, MutableKeyUpdate
from ..rdb import _format as fmt
from ._log_functions import LIBRARY, VERSION
from ._redis_common import Exchange, wrongtype_as_immutable

__all__ = [
    "READ_CHUNK", "LogTarget", "MonitorCursor", "add_args", "add_many_args",
    "exchange_add_mutable", "exchange_add_mutable_many", "exchange_append", "exchange_catch_up",
    "exchange_clear", "exchange_delete", "exchange_ensure_library", "exchange_events",
    "exchange_history", "exchange_last_position", "exchange_read", "exchange_record_at",
    "exchange_scan", "exchange_session", "exchange_session_info", "exchange_set_immutable",
    "exchange_set_indexed", "fcall_command", "record_updates", "reply_position",
]

#: Stream entries fetched per XRANGE / XREAD call.
READ_CHUNK = 2000


@dataclass
class LogTarget:
    """Where a writer's shared log is and how its writes are acknowledged."""

    stream: bytes
    data_db: int
    log_db: int
    replicas: int = 0
    replica_timeout: float = 1.0
    session: int = 0  # 0 until the writer registered its session
    meta: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.meta = self.stream + b":meta"

    def args(self) -> list[Any]:
        return [self.log_db, self.stream, self.data_db, self.session]


def _missing_library(exc: BaseException) -> bool:
    text = str(exc)
    return "Function not found" in text or "function not found" in text.lower()


def exchange_ensure_library() -> Exchange[None]:
    """Load the function library unless the server has this version of it."""
    try:
        version = yield ("command", "FCALL_RO", "tslog_version", 0)
    except Exception as exc:
        if not _missing_library(exc):
            raise
        version = None
    if version is None or (version.decode() if isinstance(version, bytes) else version) != VERSION:
        yield ("command", "FUNCTION", "LOAD", "REPLACE", LIBRARY)


def exchange_session(target: LogTarget, info: dict[str, Any]) -> Exchange[int]:
    """Register a writer session (once, in the stream); returns its id."""
    payload = msgpack.packb(info, use_bin_type=True)
    args = [target.log_db, target.stream, target.data_db, 0, payload]
    reply = yield from _fcall("tslog_session", (), args)
    target.session = int(reply)
    return target.session


def _fcall(name: str, keys: Sequence[bytes], args: Sequence[Any]) -> Exchange[Any]:
    command = ("FCALL", name, len(keys), *keys, *args)
    try:
        return (yield ("command", *command))
    except Exception as exc:
        if not _missing_library(exc):
            raise _translate(exc) from None
    yield from exchange_ensure_library()
    try:
        return (yield ("command", *command))
    except Exception as exc:
        raise _translate(exc) from None


def _translate(exc: Exception) -> Exception:
    text = str(exc)
    if "TSLOG " in text:
        return SharedLogError(text[text.index("TSLOG ") + 6:].split(" script:")[0])
    return exc


def fcall_command(target: LogTarget, name: str, key: bytes, *args: Any) -> tuple[Any, ...]:
    """The ``FCALL`` of write function `name` on `key` (the command a write sends)."""
    return ("FCALL", name, 1, key, target.log_db, target.stream, target.data_db,
            target.session, *args)


def exchange_append(target: LogTarget, name: str, key: bytes, *args: Any) -> Exchange[Any]:
    """One write: FCALL `name` (and WAIT); returns the function's reply.

    A writer that has not registered its session yet asks its driver to first.
    """
    if not target.session:
        yield ("session",)
    command = fcall_command(target, name, key, *args)
    with wrongtype_as_immutable(key):
        if not target.replicas:
            return (yield from _fcall(name, (key,), [*target.args(), *args]))
        replies = yield ("pipeline", False,
                         [command, ("WAIT", target.replicas,
                                    max(int(target.replica_timeout * 1000), 1))])
        reply, acked = replies
        if isinstance(reply, Exception):
            if _missing_library(reply):
                yield from exchange_ensure_library()
                return (yield from exchange_append(target, name, key, *args))
            raise _translate(reply)
    position = int(reply[1] or 0)
    if position and not isinstance(acked, Exception) and int(acked) < target.replicas:
        raise ReplicationError(
            f"write at position {position} reached {int(acked)} of {target.replicas} "
            f"replica(s) within {target.replica_timeout} s: it may not survive a failover",
            position, int(acked))
    if isinstance(acked, Exception):
        raise acked
    return reply


def add_args(value: bytes, timestamp: float) -> tuple[Any, ...]:
    timestamp = check_timestamp(float(timestamp)) + 0.0
    if not value:
        raise ValueError("a sample value cannot be empty (a sensor member needs at least one "
                         "byte after its timestamp)")
    return (fmt.pack_member(timestamp, value),)


def add_many_args(values: Sequence[bytes] | np.ndarray, timestamps: Any) -> list[bytes]:
    ts = np.asarray(timestamps, np.float64)
    if len(ts) != len(values):
        raise ValueError("values and timestamps differ in length")
    vals = values.tolist() if isinstance(values, np.ndarray) else list(values)
    return [add_args(v, t)[0] for v, t in zip(vals, ts.tolist())]


# -------- writes: each returns (what the backend method returns, last position or 0)
def reply_position(reply: Any) -> int:
    """The last position a write function's reply took (0: it changed nothing)."""
    first = int(reply[1] or 0)
    if first and len(reply) > 2:    # add_many: {false, first position, count}
        return first + int(reply[2]) - 1
    return first


def exchange_set_immutable(target: LogTarget, key: bytes,
                           value: bytes) -> Exchange[tuple[bytes | None, int]]:
    reply = yield from exchange_append(target, "tslog_set", key, value)
    return reply[0], reply_position(reply)


def exchange_add_mutable(target: LogTarget, key: bytes, value: bytes,
                         timestamp: float) -> Exchange[tuple[None, int]]:
    reply = yield from exchange_append(target, "tslog_add", key, *add_args(value, timestamp))
    return None, reply_position(reply)


def exchange_add_mutable_many(target: LogTarget, key: bytes, values: Sequence[bytes] | np.ndarray,
                              timestamps: Any) -> Exchange[tuple[int, int]]:
    """Many samples of one sensor in one FCALL; the first result is how many were new."""
    members = add_many_args(values, timestamps)
    if not members:
        return 0, 0
    reply = yield from exchange_append(target, "tslog_add_many", key, *members)
    return int(reply[2]), reply_position(reply)


def exchange_set_indexed(target: LogTarget, key: bytes, sub_key: bytes,
                         value: bytes) -> Exchange[tuple[bytes | None, int]]:
    reply = yield from exchange_append(target, "tslog_set_indexed", key, sub_key, value)
    return reply[0], reply_position(reply)


def exchange_delete(target: LogTarget, key: bytes) -> Exchange[tuple[None, int]]:
    reply = yield from exchange_append(target, "tslog_delete", key)
    return None, reply_position(reply)


def exchange_clear(target: LogTarget) -> Exchange[tuple[None, int]]:
    reply = yield from exchange_append(target, "tslog_clear", b"")
    return None, reply_position(reply)


# ------------------------------------------------------------------ reading
def exchange_read(target: LogTarget, after: bytes, count: int = READ_CHUNK,
                  block: int | None = None) -> Exchange[list[StreamRecord]]:
    """Records after entry ID `after` (XRANGE, or XREAD blocking `block` ms)."""
    if block is None:
        entries = yield ("log", "XRANGE", target.stream, b"(" + after, b"+", "COUNT", count)
    else:
        reply = yield ("log", "XREAD", "COUNT", count, "BLOCK", block, "STREAMS",
                       target.stream, after)
        entries = reply[0][1] if reply else []
    return [decode_record(ident, _body(fields)) for ident, fields in entries]


def exchange_record_at(target: LogTarget, position: int) -> Exchange[StreamRecord | None]:
    """The last record with an entry ID at or before ``<position>-0`` (None if none)."""
    reply = yield ("log", "XREVRANGE", target.stream, entry_id(position), "-", "COUNT", 1)
    if not reply:
        return None
    return decode_record(reply[0][0], _body(reply[0][1]))


def exchange_last_position(target: LogTarget) -> Exchange[tuple[int, bytes]]:
    """The last position recorded and the ID of the stream's last entry."""
    replies = yield ("log_pipeline", [("HGET", target.meta, "pos"),
                                      ("XREVRANGE", target.stream, "+", "-", "COUNT", 1)])
    position = int(replies[0] or 0)
    last = replies[1][0][0] if replies[1] else entry_id(0)
    return position, last


def record_updates(record: StreamRecord) -> Iterator[tuple[bytes | None, KeyUpdateBase]]:
    """The key updates a monitor reports for `record`: ``(key or None, update)``."""
    kind, key = record.kind, record.key
    if kind == SESSION:
        return
    if kind == CLEAR:
        yield None, KeyUpdateBase()
        return
    if kind == DELETE:
        yield key, KeyUpdateBase()
        return
    for event in record.events():
        value = event.value or b""
        if kind == IMMUTABLE:
            yield key, ImmutableKeyUpdate(key, value)
        elif kind in (ADD, ADD_BATCH):
            yield key, MutableKeyUpdate(key, value, event.timestamp or 0.0)
        elif kind == INDEXED:
            yield key, IndexedKeyUpdate(key, event.sub_key or b"", value)



# --------------------------------------------------------- scans, followers
def _trimmed(position: int) -> HistoryUnavailableError:
    return HistoryUnavailableError(
        f"the shared log's history before position {position} was trimmed from the "
        "stream (archive it with `telstate-log archive`)")


def exchange_scan(target: LogTarget, since: int,
                  take: Callable[[StreamRecord], bool]) -> Exchange[None]:
    """Hand `take` every record from the one holding position `since` on, in
    stream order, until it returns False; raises HistoryUnavailableError if
    the stream was trimmed past `since`."""
    before = yield from exchange_record_at(target, since)
    first = True
    last = before.entry_id if before is not None else b"0-0"
    if before is not None and before.kind != SESSION and before.last >= since:
        first = False
        if not take(before):
            return
    while records := (yield from exchange_read(target, last)):
        for record in records:
            if first and record.kind != SESSION:
                first = False
                if record.position > max(since, 1):
                    raise _trimmed(record.position)
            if not take(record):
                return
        last = records[-1].entry_id


def exchange_events(target: LogTarget, since: int = 1,
                    until: int | None = None) -> Exchange[list[Event]]:
    """Every event with a position in ``[since, until]`` (the audit trail)."""
    out: list[Event] = []

    def take(record: StreamRecord) -> bool:
        if until is not None and record.position > until:
            return False
        out.extend(e for e in record.events()
                   if e.position >= since and (until is None or e.position <= until))
        return True

    yield from exchange_scan(target, since, take)
    return out


def exchange_history(target: LogTarget, key: bytes,
                     sub_key: bytes | None = None) -> Exchange[list[Event]]:
    """The events that changed `key` (or its sub-key `sub_key`), in order."""
    out: list[Event] = []

    def take(record: StreamRecord) -> bool:
        if record.kind == SESSION or (record.key != key and record.kind != CLEAR):
            return True
        out.extend(event for event in record.events()
                   if sub_key is None or event.sub_key == sub_key
                   or event.kind in ("delete", "clear"))
        return True

    yield from exchange_scan(target, 1, take)
    return out


def exchange_session_info(target: LogTarget, session: int) -> Exchange[dict[str, Any]]:
    """Who wrote events of `session` (its session record), or {}."""
    last = b"0-0"
    while records := (yield from exchange_read(target, last)):
        for record in records:
            if record.kind == SESSION and record.session == session:
                return session_of(record)
        last = records[-1].entry_id
    return {}


def exchange_catch_up(target: LogTarget, last_id: bytes,
                      position: int) -> Exchange[tuple[list[bytes], list[bytes]]]:
    """The next raw entries (IDs, records) for a replica that applied the stream
    up to entry `last_id` (position `position`); raises HistoryUnavailableError
    if a replica at position 0 would start after a trimmed beginning."""
    reply = yield ("log", "XRANGE", target.stream, b"(" + last_id, b"+", "COUNT", READ_CHUNK)
    ids = [bytes(ident) for ident, _ in reply]
    bodies = [_body(fields) for _, fields in reply]
    if position == 0:
        for ident in ids:
            first, seq = parse_entry_id(ident)
            if seq == 0:
                if first > 1:
                    raise _trimmed(first)
                break
    return ids, bodies


def _body(fields: Any) -> bytes:
    return bytes(fields[b"e"] if isinstance(fields, dict) else fields[fields.index(b"e") + 1])


class MonitorCursor:
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
            for key, update in record_updates(record):
                if wanted is None or key is None or key in wanted:
                    self.pending.append(update)
