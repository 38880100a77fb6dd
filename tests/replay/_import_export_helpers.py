"""Shared data and helpers for the RDB import/export tests.

The data set is written through a katsdptelstate-style front end (ours or
katsdptelstate's: the API is the same), so the same function fills a
katsdptelstate TelescopeState on Redis, its MemoryBackend, or our backends.
States are compared through a front end as well (:func:`view`), so the
comparison holds whatever the storage.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from telstate_log.backends import LogBackend
from telstate_log.core import _log_format as fmt
from telstate_log.core._types import KeyType
from telstate_log.rdb._format import pack_member
from telstate_log.storage._fileio import OsFileSystem
from telstate_log.storage._recovery import list_segments

View = dict[str, tuple[str, Any]]


def fill(ts: Any, *, big: int = 2000) -> None:
    """Every key shape the RDB path must carry, written through front end `ts`."""
    ts["obs_name"] = "scan 001"
    ts["gains"] = [1.5, 2.5]
    ts["int_value"] = 12345
    ts["raw_bytes"] = b"\x00\xff\x10"
    ts["long_text"] = "telescope " * 2000                      # LZF-compressed in Redis
    ts["array"] = np.arange(100.0)
    ts["weird key \n\xe9"] = {"nested": (1, 2.5, "x")}
    ts.set_indexed("cal_table", "x", 1)
    ts.set_indexed("cal_table", ("y", 2), "two")
    ts.set_indexed("cal_table", "z", np.arange(3))
    ts.set_indexed("big_table", "k", "v" * 5000)
    ts.set_indexed("small_table", "a", 1)                       # listpack in Redis 7
    ts.set_indexed("small_table", "b", "two")
    for i in range(5):                                          # listpack in Redis 7
        ts.add("small_sensor", 10.0 + i, ts=1.7e9 + i)
    for i in range(big):                                        # skiplist in Redis 7
        ts.add("big_sensor", i * 0.25, ts=1.7e9 + 0.1 * i)
    for i in range(120):                                        # ragged string values
        ts.add("status", ["ok", "warning", "error!"][i % 3], ts=1.7e9 + i // 2)
    for i in range(200):                                        # fixed, non-float values
        ts.add("flag", i % 3 == 0, ts=1.7e9 + i)
    for i in range(70):                                         # values over 64 bytes
        ts.add("long_values", f"v{i:03d}" * 30, ts=1.7e9 + i)
    ts.add("edge_times", "zero", ts=0.0)
    ts.add("edge_times", "tiny", ts=5e-324)
    ts.add("edge_times", "huge", ts=1.7976931348623157e308)


def view(ts: Any) -> View:
    """The whole state as seen through a front end: key -> (type name, encoded data)."""
    out: View = {}
    for key in ts.keys():  # noqa: SIM118 - a TelescopeState, not a dict
        kind = ts.key_type(key).name
        if kind == "MUTABLE":
            out[key] = (kind, ts.get_range(key, st=0, return_encoded=True))
        else:
            out[key] = (kind, ts.get(key, return_encoded=True))
    return out


def backend_state(backend: Any) -> dict[bytes, tuple[KeyType, Any]]:
    """A backend's snapshot in the codec tests' State form (sensors as packed members)."""
    state: dict[bytes, tuple[KeyType, Any]] = {}
    for key, kind, value in backend.snapshot_items(b"*"):
        if kind == KeyType.MUTABLE:
            value = [pack_member(t, v) for t, v in zip(value.timestamps.tolist(),
                                                       value.encoded())]
        state[key] = (kind, value)
    return state


def full_range(backend: Any, key: bytes) -> list[tuple[bytes, float]]:
    return list(backend.get_range(key, 0.0, math.inf, False, True))


def log_events(path: Path) -> list[dict[str, Any]]:
    """Every event frame of a log: kind, position, session id, key and sample count."""
    events = []
    for _, name in list_segments(OsFileSystem(), str(path)):
        data = (path / name).read_bytes()
        mv = memoryview(data)
        scan = fmt.scan_frames(mv, fmt.HEADER_SIZE, len(data),
                               zlib.crc32(data[:fmt.HEADER_SIZE]))
        assert scan.problem is None
        dec = fmt.decode_frames(mv, scan)
        keys: dict[int, bytes] = {}
        for i in range(len(scan.offsets)):
            kind, off, length = int(dec.kinds[i]), int(dec.offsets[i]), int(dec.lengths[i])
            if kind == fmt.KEY:
                ident, payload = fmt.meta_fields(mv, off, length)
                keys[ident] = payload
            elif kind in fmt.EVENT_KINDS:
                ev = dec.event[i]
                count = 1
                if kind == fmt.ADD_BATCH:
                    fields = fmt.batch_fields(mv, off, length)
                    assert fields is not None
                    count = len(fields[0])
                events.append({"kind": kind, "pos": int(ev["pos"]), "session": int(ev["sess"]),
                               "key": keys.get(int(ev["key"])), "count": count})
    return events


def segment_sizes(path: Path) -> dict[str, int]:
    return {name: (path / name).stat().st_size
            for _, name in list_segments(OsFileSystem(), str(path))}


def open_log(path: Path, **kwargs: Any) -> LogBackend:
    kwargs.setdefault("fsync", "never")
    kwargs.setdefault("checkpoint_bytes", None)
    return LogBackend(path, **kwargs)


def theirs(client: Any) -> Any:
    """katsdptelstate's TelescopeState on the Redis of `client` (katsdptelstate needed)."""
    import katsdptelstate
    import katsdptelstate.redis

    return katsdptelstate.TelescopeState(katsdptelstate.redis.RedisBackend(client))


def redis_view(client: Any) -> View:
    """:func:`view` of a Redis database as katsdptelstate reads it (every key, so a
    projector's marker there would show)."""
    return view(theirs(client))


def marker_view(client: Any) -> dict[str, Any]:
    """The projector's marker of the database of `client`, read by katsdptelstate from
    the marker database (its fields are telescope-state values); {} if there is none."""
    from telstate_log.replay._marker import MarkerStore

    store = MarkerStore(client)
    try:
        return dict(theirs(store.meta).get(store.key.decode(), {}))
    finally:
        store.close()
