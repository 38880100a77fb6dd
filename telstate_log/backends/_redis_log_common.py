"""What the sync and async shared-log backends share: their exchanges.

Theory of operation
-------------------
A :class:`~telstate_log.backends.RedisLogBackend` writes through the
function library (:mod:`._log_functions`) and reads the stream of its shared
log.  Every operation is an *exchange*, as in :mod:`._redis_common`: a
generator yielding Redis calls, run by the sync or async driver.  Calls on
the telstate db are ``("command", ...)`` and ``("pipeline", ...)``; calls on
the log db, where the stream lives, are ``("log", *args)``.

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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from ..core._errors import ReplicationError, SharedLogError
from ..core._events import ADD, ADD_BATCH, CLEAR, DELETE, IMMUTABLE, INDEXED, SESSION
from ..core._state import check_timestamp
from ..core._stream_format import StreamRecord, decode_record, entry_id
from ..core._types import (
    ImmutableKeyUpdate,
    IndexedKeyUpdate,
    KeyUpdateBase,
    MutableKeyUpdate,
)
from ..rdb import _format as fmt
from ._log_functions import LIBRARY, VERSION
from ._redis_common import Exchange, wrongtype_as_immutable

__all__ = [
    "READ_CHUNK",
    "LogTarget",
    "add_args",
    "add_many_args",
    "exchange_append",
    "exchange_ensure_library",
    "exchange_last_position",
    "exchange_read",
    "exchange_record_at",
    "exchange_session",
    "record_updates",
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


def exchange_append(target: LogTarget, name: str, key: bytes, *args: Any) -> Exchange[Any]:
    """One write: FCALL `name` (and WAIT); returns the function's reply."""
    command = ("FCALL", name, 1, key, *target.args(), *args)
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


# ------------------------------------------------------------------ reading
def exchange_read(target: LogTarget, after: bytes, count: int = READ_CHUNK,
                  block: int | None = None) -> Exchange[list[StreamRecord]]:
    """Records after entry ID `after` (XRANGE, or XREAD blocking `block` ms)."""
    if block is None:
        reply = yield ("log", "XRANGE", target.stream, b"(" + after, b"+", "COUNT", count)
        entries = reply
    else:
        reply = yield ("log", "XREAD", "COUNT", count, "BLOCK", block, "STREAMS",
                       target.stream, after)
        entries = reply[0][1] if reply else []
    return [decode_record(ident, fields[b"e"] if isinstance(fields, dict)
                          else dict(zip(fields[0::2], fields[1::2]))[b"e"])
            for ident, fields in entries]


def exchange_record_at(target: LogTarget, position: int) -> Exchange[StreamRecord | None]:
    """The last record with an entry ID at or before ``<position>-0`` (None if none)."""
    reply = yield ("log", "XREVRANGE", target.stream, entry_id(position), "-", "COUNT", 1)
    if not reply:
        return None
    ident, fields = reply[0]
    return decode_record(ident, fields[b"e"])


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

