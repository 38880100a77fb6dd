"""Log events and snapshot items as Redis commands, in katsdptelstate's layout.

Theory of operation
-------------------
Two translations, both pure (they build command tuples; sending them is the
caller's job):

*Snapshot items -> RESTORE.*  A backfill loads the state at a position one
command per key: ``RESTORE key 0 <payload> REPLACE`` with a DUMP payload we
build ourselves (strings and hashes through :mod:`._dump`).  Sensors are the
bulk of any telescope state, so their payload is built without Python work
per sample: for fixed-width values (float sensors through ``floats()``,
other fixed-width columns through ``fixed()``) one ``uint8`` matrix holds,
per row, the member's RDB length prefix, its 8-byte big-endian timestamp,
the value bytes and the score, and ``tobytes`` turns it into the body of
the record in one copy.  Variable-width values are joined from a list.  The
CRC-64 is carried over the parts, so the payload is joined once.

Sensor payloads use RDB type 5 (zset with binary scores: the 8-byte
little-endian double 0.0 after each member) rather than the type 3 (text
score ``"0"``) of our RDB files: Redis parses a text score with ``sscanf``
per member, which makes RESTORE of type 3 about a quarter slower.  Both are
plain types that Redis rebuilds element by element (as its own RDB load
does), rejecting duplicates, so a bad payload is refused, never stored;
every Redis since 5.0 (RDB version 8) reads type 5.

*Events -> data commands + PUBLISH.*  Each event becomes what a
katsdptelstate client would have sent for it, with the same ``update/<key>``
message (:mod:`telstate_log.backends._redis_messages`): ``set`` -> ``SET``;
``add`` -> ``ZADD key 0 member`` (consecutive samples of one key share a
``ZADD``; each still gets its own message, as katsdptelstate sends one per
sample); ``set_indexed`` -> ``HSET``; ``delete`` -> ``UNLINK``; ``clear`` ->
``UNLINK`` of every key that existed just before it (asked of the caller,
who has the log's as-of views).
katsdptelstate publishes nothing for deletes and clears, and neither do we.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends._redis_messages import (
    immutable_message,
    indexed_message,
    mutable_message,
    update_channel,
)
from ..core._events import Event
from ..core._types import KeyType
from ..rdb import _format as fmt
from ..rdb._crc64 import crc64
from ..rdb._dump import dump_hash, dump_string

__all__ = ["MAX_ARGS", "Batch", "Command", "announce_commands", "event_commands", "event_size",
           "restore_batches", "restore_command", "restore_payload", "split_events",
           "zset_payload"]

Command = tuple[Any, ...]
#: Most members per ZADD and keys per UNLINK.
MAX_ARGS = 1024
_FLOAT_PREFIX = b"\xff\xcb"              # encoded float: 0xFF + msgpack float 64
_ZERO_SCORE = bytes(8)                   # binary score 0.0 (little-endian double)
_FOOTER = struct.pack("<H", fmt.WRITE_VERSION)
_LE64 = struct.Struct("<Q")
_BE_DOUBLE = struct.Struct(">d")
_CHUNK = 1 << 14                         # members per join on the variable-width path


def _fixed_matrix(columns: Any, count: int) -> tuple[bytes, np.ndarray] | None:
    """``(shared value prefix, (count, width) uint8 matrix)`` for fixed-width values."""
    floats = columns.floats() if hasattr(columns, "floats") else None
    if floats is not None:
        body = np.ascontiguousarray(floats, ">f8")
        return _FLOAT_PREFIX, body.view(np.uint8).reshape(count, 8)
    fixed = columns.fixed() if hasattr(columns, "fixed") else None
    if fixed is not None and fixed[1].dtype.itemsize > 0:
        prefix, values = fixed
        body = np.ascontiguousarray(values)
        return bytes(prefix), body.view(np.uint8).reshape(count, values.dtype.itemsize)
    return None


def _fixed_records(stamps: np.ndarray, prefix: bytes, body: np.ndarray) -> bytes:
    """Type-5 zset records (length, member, binary score) of fixed-width members."""
    count = len(stamps)
    width = 8 + len(prefix) + body.shape[1]
    head = fmt.length_prefix(width)
    rec = np.zeros((count, len(head) + width + 8), np.uint8)   # the score stays 0.0
    o = len(head)
    rec[:, :o] = np.frombuffer(head, np.uint8)
    rec[:, o:o + 8] = stamps.astype(">f8").view(np.uint8).reshape(count, 8)
    o += 8
    rec[:, o:o + len(prefix)] = np.frombuffer(prefix, np.uint8)
    o += len(prefix)
    rec[:, o:o + body.shape[1]] = body
    return rec.tobytes()


def _records(members: Sequence[bytes]) -> Iterator[bytes]:
    """Type-5 zset records of members of any lengths, joined in chunks."""
    prefix = fmt.length_prefix
    for first in range(0, len(members), _CHUNK):
        chunk = members[first:first + _CHUNK]
        parts = [_ZERO_SCORE] * (3 * len(chunk))
        parts[0::3] = map(prefix, map(len, chunk))
        parts[1::3] = chunk
        yield b"".join(parts)


def _seal(parts: list[bytes]) -> bytes:
    """Join type byte, body and footer, and append the CRC-64 of it all."""
    parts.append(_FOOTER)
    crc = 0
    for part in parts:
        crc = crc64(part, crc)
    parts.append(_LE64.pack(crc))
    return b"".join(parts)


def zset_payload(columns: Any) -> bytes:
    """DUMP payload (type 5) of a sensor: sample columns or packed members, non-empty.

    `columns` is a :class:`~telstate_log.core._sensor.SensorRange` (or anything
    with ``timestamps`` and ``encoded()``, optionally ``floats()`` and
    ``fixed()``) or a sequence of packed members.  Samples must be distinct.
    """
    if hasattr(columns, "timestamps"):
        stamps = np.asarray(columns.timestamps, np.float64) + 0.0   # -0.0 becomes 0.0
        count = len(stamps)
    else:
        count = len(columns)
    if not count:
        raise ValueError("cannot dump an empty zset")
    parts = [bytes((fmt.TYPE_ZSET_2,)), fmt.encode_length(count)]
    fixed = _fixed_matrix(columns, count) if hasattr(columns, "timestamps") else None
    if fixed is not None:
        parts.append(_fixed_records(stamps, *fixed))
    elif hasattr(columns, "timestamps"):
        packed = stamps.astype(">f8").view("V8").tolist()
        parts.extend(_records(list(map(bytes.__add__, packed, columns.encoded()))))
    else:
        parts.extend(_records(columns))
    return _seal(parts)


def restore_payload(kind: Any, value: Any) -> bytes:
    """DUMP payload of a snapshot item's value (see :meth:`snapshot_items`)."""
    kind = KeyType.coerce(kind)
    if kind == KeyType.IMMUTABLE:
        return dump_string(bytes(value))
    if kind == KeyType.INDEXED:
        if not isinstance(value, Mapping):
            raise TypeError(f"indexed values must be dicts, not {type(value).__name__}")
        return dump_hash(value)
    return zset_payload(value)


def restore_command(key: bytes, payload: bytes) -> Command:
    """``RESTORE key 0 payload REPLACE``: create or replace `key` atomically."""
    return ("RESTORE", key, 0, payload, "REPLACE")


@dataclass(frozen=True)
class Batch:
    """``RESTORE`` commands for consecutive snapshot items."""

    commands: list[Command]
    last_key: bytes     #: key of the last item in the batch
    final: bool         #: whether no items follow
    keys: int           #: how many keys the batch restores


def restore_batches(items: Sequence[tuple[bytes, Any, Any]], *, batch_bytes: int,
                    batch_keys: int) -> Iterator[Batch]:
    """Batches of ``RESTORE`` commands for `items`, built as they are asked for.

    A batch holds about `batch_bytes` of payload or `batch_keys` keys; the
    first ones are smaller (an eighth, doubling), so that Redis has work
    early while the next batches are built.
    """
    commands: list[Command] = []
    size = keys = 0
    limit = max(batch_bytes // 8, 1)
    last = len(items) - 1
    for index, (key, kind, value) in enumerate(items):
        payload = restore_payload(kind, value)
        commands.append(restore_command(key, payload))
        commands.extend(announce_commands(key, kind, value))
        keys += 1
        size += len(payload) + len(key)
        if index == last or size >= limit or keys >= batch_keys:
            yield Batch(commands, key, index == last, keys)
            commands, size, keys = [], 0, 0
            limit = min(limit * 2, batch_bytes)


def announce_commands(key: bytes, kind: KeyType, value: Any) -> list[Command]:
    """The ``update/<key>`` messages announcing a restored key's current value.

    What katsdptelstate publishes for the write that set it: the value of an
    immutable, the last sample of a sensor, every sub-key of an indexed key.
    A waiter that began before the backfill reached its key wakes and
    re-reads (katsdptelstate's ``load_from_file`` announces nothing, so its
    waiters would sleep on through a restore).
    """
    channel = update_channel(key)
    if kind == KeyType.IMMUTABLE:
        return [("PUBLISH", channel, immutable_message(value))]
    if kind == KeyType.MUTABLE:
        return [("PUBLISH", channel, mutable_message(*value.last()))] if len(value) else []
    return [("PUBLISH", channel, indexed_message(sub_key, sub_value))
            for sub_key, sub_value in value.items()]


# ------------------------------------------------------------------- events
def event_size(event: Event) -> int:
    """Rough bytes an event adds to a transaction (for batching)."""
    return 64 + len(event.key or b"") + len(event.value or b"") + len(event.sub_key or b"")


def split_events(events: Sequence[Event], max_bytes: int) -> Iterator[Sequence[Event]]:
    """Consecutive runs of `events` of about `max_bytes` each (at least one event)."""
    start = size = 0
    for i, event in enumerate(events):
        size += event_size(event)
        if size >= max_bytes:
            yield events[start:i + 1]
            start, size = i + 1, 0
    if start < len(events):
        yield events[start:]


def event_commands(events: Sequence[Event], keys_before: Callable[[int], Sequence[bytes]],
                   *, publish: bool = True) -> list[Command]:
    """The Redis commands that apply `events` (see the module docstring).

    `keys_before(position)` lists the keys that existed just before the
    clear at `position`.
    """
    out: list[Command] = []
    run_key: bytes | None = None
    run: list[bytes] = []

    def end_run() -> None:
        if run_key is None:
            return
        for first in range(0, len(run), MAX_ARGS):
            chunk = run[first:first + MAX_ARGS]
            args: list[Any] = ["ZADD", run_key]
            for member in chunk:
                args += (0, member)
            out.append(tuple(args))
        if publish:
            channel = update_channel(run_key)
            out.extend(("PUBLISH", channel, member) for member in run)
        run.clear()

    for event in events:
        key = event.key
        if event.kind == "add":
            if key != run_key:
                end_run()
                run_key = key
            assert event.value is not None and event.timestamp is not None
            run.append(_BE_DOUBLE.pack(abs(event.timestamp)) + event.value)
            continue
        end_run()
        run_key = None
        if event.kind == "set":
            assert key is not None and event.value is not None
            out.append(("SET", key, event.value))
            if publish:
                out.append(("PUBLISH", update_channel(key), immutable_message(event.value)))
        elif event.kind == "set_indexed":
            assert key is not None and event.sub_key is not None and event.value is not None
            out.append(("HSET", key, event.sub_key, event.value))
            if publish:
                out.append(("PUBLISH", update_channel(key),
                            indexed_message(event.sub_key, event.value)))
        elif event.kind == "delete":
            out.append(("UNLINK", key))
        elif event.kind == "clear":
            doomed = list(keys_before(event.position))
            for first in range(0, len(doomed), MAX_ARGS):
                out.append(("UNLINK", *doomed[first:first + MAX_ARGS]))
        else:
            raise ValueError(f"unknown event kind {event.kind!r} at position {event.position}")
    end_run()
    return out
