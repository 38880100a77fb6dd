"""What the sync and async Redis backends share: layout, scripts, exchanges, messages.

Theory of operation
-------------------
The Redis layout is katsdptelstate's, so both libraries can share one
database: an immutable key is a Redis string, an indexed key a hash (field =
encoded sub-key) and a mutable key a zset whose scores are all 0 and whose
members are an 8-byte big-endian timestamp followed by the encoded value, so
that ``ZRANGEBYLEX`` walks samples in time order.  Writes go through five
small Lua scripts (our own text, katsdptelstate's semantics and reply
conventions) that check and set atomically on the server and publish on
``update/<key>`` exactly the bytes katsdptelstate publishes, so waiters of
either library wake on writes of the other.

Every backend operation is written once here as an *exchange*: a generator
that yields Redis calls and receives their replies (the pattern of the front
end's exchanges, :mod:`telstate_log.frontend._plan`).  A call is one of

* ``("command", *args)`` -- one command (``execute_command``);
* ``("script", name, keys, args)`` -- one of :data:`SCRIPTS`;
* ``("pipeline", transaction, [args, ...])`` -- commands in one round trip,
  replying with a list in which failed commands appear as exception objects.

A driver (:func:`run_exchange` for redis-py's sync client, :func:`run_exchange_async`
for ``redis.asyncio``) executes each call and sends the reply back, or
throws the exception into the exchange, so error translation (``WRONGTYPE`` ->
:exc:`ImmutableKeyError`) and reply parsing exist once.

The pub/sub message format is in :mod:`._redis_messages`; connection setup
(endpoints, password redaction, retry policy) in :mod:`._redis_endpoint`.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Awaitable, Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, TypeVar

from ..core._errors import DecodeError, ImmutableKeyError, InvalidTimestampError, RdbParseError
from ..core._state import check_timestamp
from ..core._types import KeyType, KeyUpdateBase, display_str
from ..rdb import _format as fmt
from ..rdb._dump import dump_value, parse_dump
from ..rdb._reader import RdbEntry, iter_rdb
from ._base import GetResult, PathType
from ._redis_messages import decode_update, split_type

__all__ = [
    "REDIS_TYPES",
    "SCRIPTS",
    "Exchange",
    "RedisCall",
    "exchange_add_mutable",
    "exchange_clear",
    "exchange_contains",
    "exchange_delete",
    "exchange_dump",
    "exchange_get",
    "exchange_get_indexed",
    "exchange_get_range",
    "exchange_key_type",
    "exchange_keys",
    "exchange_load",
    "exchange_set_immutable",
    "exchange_set_indexed",
    "exchange_update",
    "is_wrongtype",
    "key_type_from_redis",
    "range_bounds",
    "run_exchange",
    "run_exchange_async",
    "wrongtype_as_immutable",
]

_R = TypeVar("_R")
RedisCall = tuple[Any, ...]
Exchange = Generator[RedisCall, Any, _R]

# --------------------------------------------------------------------- scripts
# Replies: nil is "nothing to report"; set_* return the existing value when
# the key (or sub-key) was already set and change nothing; get_indexed
# replies 1 when the key does not exist.  A key of the wrong Redis type makes
# the data command inside the script fail with WRONGTYPE.
SCRIPTS: dict[str, bytes] = {
    "get": b"""
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'string' then
    return {redis.call('GET', KEYS[1]), kind}
elseif kind == 'zset' then
    return {redis.call('ZREVRANGEBYLEX', KEYS[1], '+', '-', 'LIMIT', 0, 1)[1], kind}
elseif kind == 'hash' then
    return {redis.call('HGETALL', KEYS[1]), kind}
end
return {false, kind}
""",
    "set_immutable": b"""
if redis.call('SETNX', KEYS[1], ARGV[1]) == 0 then
    return redis.call('GET', KEYS[1])
end
redis.call('PUBLISH', 'update/' .. KEYS[1], ARGV[1])
return false
""",
    "add_mutable": b"""
if redis.call('ZADD', KEYS[1], 0, ARGV[1]) == 1 then
    redis.call('PUBLISH', 'update/' .. KEYS[1], ARGV[1])
end
return false
""",
    "set_indexed": b"""
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
    return redis.call('HGET', KEYS[1], ARGV[1])
end
local message = '\\3' .. tostring(#ARGV[1]) .. '\\n' .. ARGV[1] .. ARGV[2]
redis.call('PUBLISH', 'update/' .. KEYS[1], message)
return false
""",
    "get_indexed": b"""
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value then
    return value
end
if redis.call('EXISTS', KEYS[1]) == 0 then
    return 1
end
return false
""",
}

# ------------------------------------------------------------------ drivers


def run_exchange(exchange: Exchange[_R], execute: Callable[[RedisCall], Any]) -> _R:
    """Run `exchange`, executing each operation with the blocking `execute`."""
    try:
        op = exchange.send(None)
        while True:
            try:
                reply = execute(op)
            except Exception as exc:
                op = exchange.throw(exc)
            else:
                op = exchange.send(reply)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def _advance(method: Callable[[Any], RedisCall], arg: Any) -> tuple[bool, Any]:
    """``(False, next op)`` or ``(True, result)``: StopIteration cannot cross an await."""
    try:
        return False, method(arg)
    except StopIteration as stop:
        return True, stop.value


async def run_exchange_async(exchange: Exchange[_R], execute: Callable[[RedisCall], Awaitable[Any]],
                         in_thread: Callable[..., Awaitable[Any]] | None = None) -> _R:
    """Run `exchange`, awaiting `execute` for each operation.

    `in_thread`, if given (e.g. ``anyio.to_thread.run_sync``), runs the
    exchange's own steps, for exchanges that do slow work between operations (the
    RDB loader parses the file).
    """
    async def advance(method: Callable[[Any], RedisCall], arg: Any) -> tuple[bool, Any]:
        return _advance(method, arg) if in_thread is None else \
            await in_thread(_advance, method, arg)

    done, value = await advance(exchange.send, None)
    while not done:
        try:
            reply = await execute(value)
        except Exception as exc:
            done, value = await advance(exchange.throw, exc)
        else:
            done, value = await advance(exchange.send, reply)
    return value  # type: ignore[no-any-return]


# ------------------------------------------------------------ types, errors
_KEY_TYPES: dict[str, KeyType | None] = {
    "none": None, "string": KeyType.IMMUTABLE, "zset": KeyType.MUTABLE, "hash": KeyType.INDEXED,
}
#: Redis type holding each kind of key.
REDIS_TYPES = {kind: name for name, kind in _KEY_TYPES.items() if kind is not None}


def _type_name(type_name: Any) -> str:
    """A ``TYPE`` reply as text (``"none"`` for a missing key)."""
    return type_name.decode("ascii", "replace") if isinstance(type_name, bytes) \
        else str(type_name)


def key_type_from_redis(key: bytes, type_name: Any) -> KeyType | None:
    """Map a ``TYPE`` reply to a KeyType; other Redis types raise ImmutableKeyError."""
    name = _type_name(type_name)
    try:
        return _KEY_TYPES[name]
    except KeyError:
        raise ImmutableKeyError(f"Key {display_str(key)} holds a Redis {name}, "
                                "which is not telescope state") from None


def is_wrongtype(error: BaseException) -> bool:
    """Whether a Redis error reply is WRONGTYPE (directly or from inside a script)."""
    message = str(error.args[0]) if error.args else ""
    return message.startswith("WRONGTYPE") or (
        message.startswith("Error running script") and "WRONGTYPE" in message)


@contextmanager
def wrongtype_as_immutable(key: bytes) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        if not is_wrongtype(exc):
            raise
        raise ImmutableKeyError(f"Key {display_str(key)} has a different type") from None


def _split(member: bytes) -> tuple[bytes, float]:
    try:
        return fmt.split_member(member)
    except ValueError as exc:
        raise DecodeError(str(exc)) from None


# -------------------------------------------------------------------- exchanges
def exchange_contains(key: bytes) -> Exchange[bool]:
    return bool((yield ("command", "EXISTS", key)))


def exchange_keys(pattern: bytes) -> Exchange[list[bytes]]:
    return list((yield ("command", "KEYS", pattern)))


def exchange_delete(key: bytes) -> Exchange[None]:
    yield ("command", "UNLINK", key)


def exchange_clear() -> Exchange[None]:
    yield ("command", "FLUSHDB", "ASYNC")


def exchange_dump(key: bytes) -> Exchange[bytes | None]:
    return (yield ("command", "DUMP", key))  # type: ignore[no-any-return]


def exchange_key_type(key: bytes) -> Exchange[KeyType | None]:
    return key_type_from_redis(key, (yield ("command", "TYPE", key)))


def exchange_set_immutable(key: bytes, value: bytes) -> Exchange[bytes | None]:
    with wrongtype_as_immutable(key):
        return (yield ("script", "set_immutable", (key,), (value,)))  # type: ignore[no-any-return]


def exchange_add_mutable(key: bytes, value: bytes, timestamp: float) -> Exchange[None]:
    timestamp = check_timestamp(float(timestamp))
    if not value:
        raise ValueError("a sample value cannot be empty (a sensor member needs at least one "
                         "byte after its timestamp)")
    with wrongtype_as_immutable(key):
        yield ("script", "add_mutable", (key,), (fmt.pack_member(timestamp, value),))


def exchange_set_indexed(key: bytes, sub_key: bytes, value: bytes) -> Exchange[bytes | None]:
    with wrongtype_as_immutable(key):
        return (yield ("script", "set_indexed", (key,), (sub_key, value)))  # type: ignore[no-any-return]


def exchange_get_indexed(key: bytes, sub_key: bytes) -> Exchange[bytes | None]:
    with wrongtype_as_immutable(key):
        reply = yield ("script", "get_indexed", (key,), (sub_key,))
    if isinstance(reply, int):   # the script's "no such key"
        raise KeyError(key)
    return reply  # type: ignore[no-any-return]


def exchange_get(key: bytes) -> Exchange[GetResult]:
    value, type_name = yield ("script", "get", (key,), ())
    kind = key_type_from_redis(key, type_name)
    if kind is None:
        return None, None
    if kind == KeyType.IMMUTABLE:
        return value, None
    if kind == KeyType.MUTABLE:
        return _split(value)
    return dict(zip(value[0::2], value[1::2], strict=True)), None


def _bound(time: float, is_end: bool, include_end: bool = False) -> bytes:
    """One ZRANGEBYLEX bound: ``-``/``+`` or ``[``/``(`` plus a packed time."""
    if math.isnan(time):
        raise InvalidTimestampError("cannot use a NaN start or end time")
    if time == math.inf:
        return b"+"
    if time < 0.0 or (time == 0.0 and not include_end):
        return b"-"
    packed = struct.pack(">d", abs(time))
    if include_end:
        # The next representable packed time, so that "<" means "<=" here.
        packed = (int.from_bytes(packed, "big") + 1).to_bytes(8, "big")
    return (b"(" if is_end else b"[") + packed


def range_bounds(start_time: float, end_time: float, include_end: bool) -> tuple[bytes, bytes]:
    """The ZRANGEBYLEX ``(min, max)`` selecting ``start <= t < end`` (``<=`` with include_end).

    Also ``ZREVRANGEBYLEX key min - LIMIT 0 1`` finds the sample before
    `start_time`: a bare packed time sorts before every member that starts
    with it.
    """
    return _bound(start_time, False), _bound(end_time, True, include_end)


def exchange_get_range(key: bytes, start_time: float, end_time: float, include_previous: bool,
                   include_end: bool) -> Exchange[list[tuple[bytes, float]] | None]:
    """katsdptelstate's ``get_range``: the key's TYPE and the range queries in one
    transaction.  A key that is not a sensor raises :exc:`ImmutableKeyError` where
    katsdptelstate's queries fail with WRONGTYPE; where no query is needed (the
    window is empty -- ``st=inf``, ``et<0``, ``et=0`` without `include_end` -- and
    `include_previous` is off or ``st <= 0``) any existing key gives ``[]``, as there."""
    low, high = range_bounds(start_time, end_time, include_end)
    commands: list[RedisCall] = [("TYPE", key)]
    if include_previous and low != b"-":
        commands.append(("ZREVRANGEBYLEX", key, low, b"-", "LIMIT", 0, 1))
    if low != b"+" and high != b"-":
        commands.append(("ZRANGEBYLEX", key, low, high))
    replies = yield ("pipeline", True, commands)
    if len(commands) == 1:
        # An empty window and no sample before it asked for: like katsdptelstate's
        # RedisBackend, which then sends no query that could fail with WRONGTYPE,
        # any existing key (whatever its type) answers [].
        return None if _type_name(replies[0]) == "none" else []
    kind = key_type_from_redis(key, replies[0])
    if kind is None:
        return None
    if kind != KeyType.MUTABLE:
        raise ImmutableKeyError(f"Key {display_str(key)} is not mutable")
    result: list[tuple[bytes, float]] = []
    for reply in replies[1:]:
        if isinstance(reply, Exception):
            raise reply
        result.extend(map(_split, reply))
    return result


# ---------------------------------------------------------- pub/sub messages
def exchange_update(key: bytes, data: Any) -> Exchange[KeyUpdateBase]:
    """Decode a message published on ``update/<key>`` (see :mod:`._redis_messages`).

    Without a type byte (katsdptelstate's immutable and mutable messages)
    the key's type is looked up, as katsdptelstate does; a key that vanished
    meanwhile, or has a foreign type, gives a plain recheck.
    """
    if not isinstance(data, bytes):
        return KeyUpdateBase()
    kind, body = split_type(data)
    if kind is None:
        try:
            kind = yield from exchange_key_type(key)
        except ImmutableKeyError:
            kind = None
        if kind is None or kind == KeyType.INDEXED:   # indexed messages are always typed
            return KeyUpdateBase()
    return decode_update(key, kind, body)


# --------------------------------------------------------------- RDB loading
#: A RESTORE pipeline is sent after this many keys or payload bytes.
LOAD_BATCH_KEYS = 256
LOAD_BATCH_BYTES = 8 << 20


def exchange_load(source: PathType | BinaryIO) -> Exchange[int]:
    """Load every key of an RDB file into Redis; return the number of keys in the file.

    Keys are streamed from the file and sent as pipelined ``RESTORE`` of our
    own DUMP payloads, which Redis applies atomically per key and only if
    the key does not exist.  A key that already exists is accepted if it
    holds exactly the value in the file (so a retried pipeline, or loading
    the same file twice, is harmless); otherwise :exc:`ImmutableKeyError`
    names the clashing keys.  Keys of earlier batches stay loaded then.
    Like katsdptelstate, keys of every database in the file go to the
    client's database.
    """
    if isinstance(source, bytes):
        source = os.fsdecode(source)   # a bytes path, as katsdptelstate takes it
    loaded = 0
    batch: list[tuple[RdbEntry, bytes]] = []
    size = 0
    for entry in iter_rdb(source):
        payload = dump_value(entry.kind, entry.value)
        batch.append((entry, payload))
        size += len(payload)
        if len(batch) >= LOAD_BATCH_KEYS or size >= LOAD_BATCH_BYTES:
            yield from _plan_restore(batch, loaded)
            loaded += len(batch)
            batch, size = [], 0
    if batch:
        yield from _plan_restore(batch, loaded)
        loaded += len(batch)
    return loaded


def _plan_restore(batch: list[tuple[RdbEntry, bytes]], loaded: int) -> Exchange[None]:
    replies = yield ("pipeline", False, [("RESTORE", entry.key, 0, payload)
                                         for entry, payload in batch])
    busy: list[RdbEntry] = []
    for (entry, _), reply in zip(batch, replies, strict=True):
        if isinstance(reply, Exception):
            if not str(reply).startswith("BUSYKEY"):
                raise reply
            busy.append(entry)
    if not busy:
        return
    dumps = yield ("pipeline", False, [("DUMP", entry.key) for entry in busy])
    clashes = [entry.key for entry, dump in zip(busy, dumps, strict=True)
               if not _holds(entry, dump)]
    if clashes:
        names = ", ".join(display_str(key) for key in clashes[:5])
        more = ", ..." if len(clashes) > 5 else ""
        raise ImmutableKeyError(
            f"load_from_file refuses to overwrite {len(clashes)} existing key(s) holding "
            f"other values: {names}{more}; the other {loaded + len(batch) - len(clashes)} "
            "keys read so far were loaded")


def _holds(entry: RdbEntry, dump: Any) -> bool:
    """Whether a Redis DUMP payload holds exactly `entry`'s value."""
    if not isinstance(dump, bytes):
        return False
    try:
        kind, value = parse_dump(dump)
    except RdbParseError:
        return False
    return kind == entry.kind and value == entry.value
