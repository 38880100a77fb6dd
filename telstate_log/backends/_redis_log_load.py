"""Loading an RDB file into a shared log, and waiting for replicas: two exchanges.

Theory of operation
-------------------
``load_from_file`` on a :class:`~telstate_log.backends.RedisLogBackend`
must not bypass the log (``RESTORE``, as the plain Redis backend loads,
would change the telescope state without a single event).  So each key of
the file is written through the function library like any other write: an
immutable with ``tslog_set``, a sensor's samples with ``tslog_add_many`` in
chunks of :data:`LOAD_CHUNK` members, each sub-key of an indexed key with
``tslog_set_indexed``.  What the database already holds appends nothing, so
loading a file twice is harmless.  An immutable or sub-key that holds
another value is reported after the rest of the file was loaded, as
:exc:`~telstate_log.ImmutableKeyError` naming the keys.  Keys whose expiry
had passed are skipped, as redis-server skips them when it loads.

:func:`exchange_replicated` is how ``sync()`` waits for replicas: ``WAIT``
covers only the writes of the connection it is sent on, so instead it reads
the primary's replication offset and polls (``("sleep", seconds)`` asks the
driver to wait) until enough replicas report holding it.
"""

from __future__ import annotations

import os
import time
from typing import Any, BinaryIO

from ..core._errors import DecodeError, ImmutableKeyError, ReplicationError
from ..core._types import KeyType, display_str
from ..rdb import _format as fmt
from ..rdb._reader import iter_rdb
from ._base import PathType
from ._redis_common import Exchange
from ._redis_log_common import (
    LogTarget,
    exchange_append,
    exchange_last_position,
    exchange_set_immutable,
    exchange_set_indexed,
)

__all__ = ["LOAD_CHUNK", "exchange_log_load", "exchange_replicated"]

#: Sensor members per ``tslog_add_many`` call while loading.
LOAD_CHUNK = 4096


def _check_members(key: bytes, members: list[bytes]) -> None:
    for member in members:
        if len(member) <= 8 or member[:8] >= fmt.TS_LIMIT:
            raise DecodeError(f"sensor {display_str(key)} in the file has a member that is "
                              "not a timestamp and a value")


def exchange_log_load(target: LogTarget, source: PathType | BinaryIO) -> Exchange[int]:
    """Write every live key of an RDB file as events; returns the number of keys."""
    if isinstance(source, bytes):
        source = os.fsdecode(source)   # a bytes path, as katsdptelstate takes it
    now_ms = time.time() * 1000.0
    loaded = 0
    clashes: list[bytes] = []
    for entry in iter_rdb(source):
        if entry.expires is not None and entry.expires < now_ms:
            continue
        loaded += 1
        key, value = entry.key, entry.value
        if entry.kind == KeyType.IMMUTABLE:
            assert isinstance(value, bytes)
            old, _ = yield from exchange_set_immutable(target, key, value)
            if old is not None and old != value:
                clashes.append(key)
        elif entry.kind == KeyType.MUTABLE:
            assert isinstance(value, list)
            _check_members(key, value)
            for first in range(0, len(value), LOAD_CHUNK):
                yield from exchange_append(target, "tslog_add_many", key,
                                           *value[first:first + LOAD_CHUNK])
        else:
            assert isinstance(value, dict)
            for sub_key, sub_value in value.items():
                old, _ = yield from exchange_set_indexed(target, key, sub_key, sub_value)
                if old is not None and old != sub_value:
                    clashes.append(key)
    if clashes:
        names = ", ".join(display_str(key) for key in list(dict.fromkeys(clashes))[:5])
        more = ", ..." if len(set(clashes)) > 5 else ""
        raise ImmutableKeyError(
            f"load_from_file kept the existing, different values of {len(set(clashes))} "
            f"key(s): {names}{more}; the file's other keys were loaded")
    return loaded


def _offsets(info: Any) -> tuple[int, list[int]]:
    """The primary's replication offset and each online replica's, from INFO.

    `info` is redis-py's parsed dict (``slave0`` -> ``{"offset": ...}``) or the raw text.
    """
    if not isinstance(info, dict):
        text = info.decode() if isinstance(info, bytes) else str(info)
        info = {}
        for line in text.splitlines():
            name, _, rest = line.partition(":")
            if name.startswith("slave") and name[5:].isdigit():
                info[name] = dict(p.split("=", 1) for p in rest.split(",") if "=" in p)
            elif name == "master_repl_offset":
                info[name] = rest.strip()
    replicas = [int(v.get("offset", 0)) for name, v in info.items()
                if name.startswith("slave") and name[5:].isdigit() and isinstance(v, dict)
                and v.get("state") == "online"]
    return int(info.get("master_repl_offset", 0)), replicas


def exchange_replicated(target: LogTarget) -> Exchange[int]:
    """The last position, once `target.replicas` replicas hold every write made so far.

    Raises :exc:`~telstate_log.ReplicationError` if they do not within
    ``replica_timeout`` seconds.
    """
    position, _ = yield from exchange_last_position(target)
    if not target.replicas:
        return position
    wanted, _ = _offsets((yield ("command", "INFO", "replication")))
    deadline = time.monotonic() + target.replica_timeout
    delay = 0.001
    while True:
        _, replicas = _offsets((yield ("command", "INFO", "replication")))
        holding = sum(offset >= wanted for offset in replicas)
        if holding >= target.replicas:
            return position
        if time.monotonic() >= deadline:
            raise ReplicationError(
                f"{holding} of {target.replicas} replica(s) hold the writes up to position "
                f"{position} after {target.replica_timeout} s: they may not survive a "
                "failover", position, holding)
        yield ("sleep", delay)
        delay = min(delay * 2, 0.05)
