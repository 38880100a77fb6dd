"""Make a backend's state equal to a Redis database's, with the fewest events.

Theory of operation
-------------------
The recorder (:mod:`._recorder`) takes a baseline when it starts and repairs
gaps after a lost pub/sub connection the same way: it reads every key of
the Redis database (``SCAN``, then ``DUMP`` pipelined in batches, decoded
by our own :func:`~._dump.parse_dump`) and *reconciles* the backend with
it key by key, writing only the events that make a difference:

* a key in Redis that the backend lacks: recorded as an import would (an
  immutable ``set``, one ``set_indexed`` per sub-key, the samples of a
  sensor in one bulk ``add_mutable_many``);
* a key both have: new sub-keys and new samples are added; an equal
  immutable (bytes, or equal as katsdptelstate compares them) is left
  alone;
* what the log's semantics cannot express as an addition -- an immutable
  whose value changed, a key of another type, a sensor that lost samples,
  an indexed key that lost or changed a sub-key -- means Redis deleted and
  re-created the key while nobody was watching: the key is *deleted and
  written afresh* (a ``delete`` event, then the new content);
* a key the backend has but Redis does not: a ``delete`` event.

Keys that are not telescope state (other Redis types, or values our DUMP
decoder refuses) are skipped with a warning; a projector marker that an
earlier version left in a projected database (an indexed key whose fields
make a marker, see :func:`~._marker.is_marker`) is skipped silently.
Reconciling a single key (:func:`reconcile_key`) serves the recorder when
one key's history is in doubt (an immutable that would have to change, a
``RESTORE`` or ``RENAME`` seen through keyspace notifications).

A reconcile is as consistent as ``SCAN``: every key present for the whole
scan is seen; changes made during the scan reach the recorder as pub/sub
messages too (it subscribes first), and replaying those is harmless because
the log ignores writes that change nothing.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import redis

from ..core._encoding import same_immutable_value
from ..core._errors import RdbParseError
from ..core._types import KeyType
from ..rdb._dump import parse_dump
from ._marker import is_marker

__all__ = ["ReconcileReport", "dump_keys", "reconcile", "reconcile_key"]

logger = logging.getLogger(__name__)

#: Keys per SCAN call and per DUMP pipeline.
SCAN_BATCH = 500
RedisValue = tuple[KeyType, Any]


@dataclass
class ReconcileReport:
    """What a reconcile found and wrote."""

    keys: int = 0          #: telescope-state keys read from Redis
    added: int = 0         #: keys the backend did not have
    updated: int = 0       #: keys that gained sub-keys or samples
    replaced: int = 0      #: keys deleted and written afresh
    deleted: int = 0       #: keys deleted because Redis no longer has them
    skipped: int = 0       #: Redis keys that are not telescope state

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def changed(self) -> int:
        return self.added + self.updated + self.replaced + self.deleted


def decode_dump(key: bytes, payload: Any) -> RedisValue | None:
    """``(kind, value)`` of a DUMP reply, or None if it is not telescope state."""
    if not isinstance(payload, bytes):
        return None
    try:
        return parse_dump(payload)
    except RdbParseError as exc:
        logger.warning("skipping Redis key %r, which is not telescope state: %s", key, exc)
        return None


def dump_keys(client: redis.Redis, keys: Iterable[bytes]) -> Iterator[tuple[bytes, Any]]:
    """``(key, DUMP reply)`` of `keys`, pipelined in batches (None for a missing key)."""
    keys = list(keys)
    for first in range(0, len(keys), SCAN_BATCH):
        chunk = keys[first:first + SCAN_BATCH]
        with client.pipeline(transaction=False) as pipe:
            for key in chunk:
                pipe.execute_command("DUMP", key)  # type: ignore[no-untyped-call]
            replies = pipe.execute(raise_on_error=False)
        yield from zip(chunk, replies)


@functools.lru_cache(maxsize=64)
def _layout(width: int) -> np.dtype[np.void]:
    return np.dtype([("ts", ">f8"), ("value", f"V{width - 8}")])


def member_columns(members: list[bytes]) -> tuple[np.ndarray, list[bytes]]:
    """``(float64 timestamps, encoded values)`` of packed zset members."""
    width = len(members[0])
    blob = b"".join(members)
    if len(blob) == width * len(members) and max(map(len, members)) == width and width > 8:
        records = np.frombuffer(blob, _layout(width))
        return records["ts"].astype(np.float64), records["value"].tolist()
    stamps = np.frombuffer(b"".join([m[:8] for m in members]), ">f8").astype(np.float64)
    return stamps, [m[8:] for m in members]


def _write_fresh(backend: Any, key: bytes, kind: KeyType, value: Any) -> None:
    if kind == KeyType.IMMUTABLE:
        backend.set_immutable(key, value)
    elif kind == KeyType.INDEXED:
        for sub_key, sub_value in value.items():
            backend.set_indexed(key, sub_key, sub_value)
    else:
        stamps, values = member_columns(value)
        backend.add_mutable_many(key, values, stamps)


def _indexed_additions(current: dict[bytes, bytes], wanted: dict[bytes, bytes]
                       ) -> dict[bytes, bytes] | None:
    """Sub-keys to add, or None if `current` is not contained in `wanted`."""
    for sub_key, old in current.items():
        new = wanted.get(sub_key)
        if new is None or not same_immutable_value(old, new):
            return None
    return {sub: v for sub, v in wanted.items() if sub not in current}


def _sample_additions(backend: Any, key: bytes, members: list[bytes]
                      ) -> tuple[np.ndarray, list[bytes]] | None:
    """Samples to add, or None if the backend has samples Redis lacks."""
    stamps, values = member_columns(members)
    stored = backend.get_range_arrays(key, 0.0, math.inf, False, True)
    have_values = stored.encoded()
    if len(have_values) == len(values) and np.array_equal(stored.timestamps, stamps) \
            and have_values == values:
        return stamps[:0], []
    wanted = set(zip(values, stamps.tolist()))
    have = set(zip(have_values, stored.timestamps.tolist()))
    if not have <= wanted:
        return None
    keep = [i for i, pair in enumerate(zip(values, stamps.tolist())) if pair not in have]
    return stamps[keep], [values[i] for i in keep]


def reconcile_key(backend: Any, key: bytes, found: RedisValue | None,
                  report: ReconcileReport | None = None) -> ReconcileReport:
    """Make `key` in `backend` hold `found` (Redis's ``(kind, value)``, None: absent)."""
    report = report if report is not None else ReconcileReport()
    have = backend.key_type(key)
    if found is None:
        if have is not None:
            backend.delete(key)
            report.deleted += 1
        return report
    kind, value = found
    report.keys += 1
    if have is None:
        _write_fresh(backend, key, kind, value)
        report.added += 1
        return report
    if have == kind:
        if kind == KeyType.IMMUTABLE:
            if same_immutable_value(cast(bytes, backend.get(key)[0]), value):
                return report
        elif kind == KeyType.INDEXED:
            subs = _indexed_additions(backend.get(key)[0], value)
            if subs is not None:
                for sub_key, sub_value in subs.items():
                    backend.set_indexed(key, sub_key, sub_value)
                report.updated += bool(subs)
                return report
        else:
            samples = _sample_additions(backend, key, value)
            if samples is not None:
                if samples[1]:
                    backend.add_mutable_many(key, samples[1], samples[0])
                    report.updated += 1
                return report
    logger.warning("Redis key %r was replaced while unobserved: recording a delete and its "
                   "new content", key)
    backend.delete(key)
    _write_fresh(backend, key, kind, value)
    report.replaced += 1
    return report


def reconcile(backend: Any, client: redis.Redis) -> ReconcileReport:
    """Make `backend` equal to the Redis database of `client` (see module docstring)."""
    report = ReconcileReport()
    seen: set[bytes] = set()
    cursor = 0
    while True:
        cursor, keys = client.scan(cursor, count=SCAN_BATCH)
        fresh = [k for k in dict.fromkeys(keys)
                 if isinstance(k, bytes) and k not in seen]
        seen.update(fresh)
        for key, payload in dump_keys(client, fresh):
            if payload is None:              # deleted since the SCAN returned it
                seen.discard(key)
                continue
            found = decode_dump(key, payload)
            if found is None:
                report.skipped += 1
                continue
            if is_marker(*found):
                seen.discard(key)            # not telescope state: nor in the log
                continue
            reconcile_key(backend, key, found, report)
        if not cursor:
            break
    for key in backend.keys(b"*"):
        if key not in seen:
            backend.delete(key)
            report.deleted += 1
    return report
