"""Importing RDB files into memory and log backends: semantics, atomicity, damage, sessions."""

from __future__ import annotations

import io
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from _import_export_helpers import full_range, log_events, open_log, segment_sizes
from _rdb_helpers import (
    expiring,
    hash4,
    packed_record,
    rdb_file,
    rstr,
    sensor,
    string_record,
    write_state,
    zipmap,
    zset3,
)
from _redis import RedisServer, require_redis

from telstate_log import ImmutableKeyError, RdbParseError, ReadOnlyError
from telstate_log.backends import LogBackend, MemoryBackend
from telstate_log.backends._state_backend import StateBackend
from telstate_log.core import _log_format as fmt
from telstate_log.core._encoding import encode_value
from telstate_log.core._types import KeyType
from telstate_log.rdb._format import pack_member, split_member
from telstate_log.replay._rdb_load import import_rdb, load_rdb_into

V = encode_value


@pytest.fixture(params=["memory", "log"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateBackend]:
    if request.param == "memory":
        yield MemoryBackend()
    else:
        with open_log(tmp_path / "log") as log:
            yield log


def _prefill(b: StateBackend) -> None:
    b.set_immutable(b"same", V("v1"))
    b.set_immutable(b"text", V("abc"))
    b.set_indexed(b"table", V("a"), V(1))
    b.add_mutable(b"s", V("x"), 1.0)
    b.add_mutable(b"s", V("y"), 2.0)


def _snapshot(b: StateBackend) -> tuple[int, dict[bytes, Any]]:
    out: dict[bytes, Any] = {}
    for key in sorted(b.keys(b"*")):
        kind = b.key_type(key)
        out[key] = full_range(b, key) if kind == KeyType.MUTABLE else b.get(key)
    return b.position, out


def _write(path: Path, state: dict[bytes, tuple[KeyType, Any]]) -> Path:
    path.write_bytes(write_state(state))
    return path


def test_merge_semantics(backend: StateBackend, tmp_path: Path) -> None:
    _prefill(backend)
    before = backend.position
    rdb = _write(tmp_path / "in.rdb", {
        b"same": (KeyType.IMMUTABLE, V("v1")),                     # equal: no-op
        b"text": (KeyType.IMMUTABLE, V(b"abc")),                   # equal as UTF-8: no-op
        b"new": (KeyType.IMMUTABLE, V("fresh")),
        b"table": (KeyType.INDEXED, {V("a"): V(1), V("b"): V(2)}),
        b"s": (KeyType.MUTABLE, [pack_member(0.5, V("w")), pack_member(2.0, V("y")),
                                 pack_member(3.0, V("z"))]),
    })
    stats = import_rdb(backend, rdb)
    assert (stats.keys, stats.samples, stats.events) == (5, 3, 4)
    assert stats.position == backend.position == before + 4
    assert stats.bytes == rdb.stat().st_size and stats.seconds > 0
    assert backend.get(b"new") == (V("fresh"), None)
    assert backend.get(b"text") == (V("abc"), None)
    assert backend.get(b"table")[0] == {V("a"): V(1), V("b"): V(2)}
    assert full_range(backend, b"s") == [(V("w"), 0.5), (V("x"), 1.0), (V("y"), 2.0),
                                         (V("z"), 3.0)]
    assert load_rdb_into(backend, rdb) == 5               # again: nothing new
    assert backend.position == before + 4


def test_equal_timestamps_and_var_values(backend: StateBackend, tmp_path: Path) -> None:
    members = sorted([pack_member(5.0, V("b")), pack_member(5.0, V("a")),
                      pack_member(5.0, V("long" * 20)), pack_member(1.0, V(7))])
    rdb = _write(tmp_path / "in.rdb", {b"s": (KeyType.MUTABLE, members)})
    assert backend.load_from_file(str(rdb)) == 1
    assert full_range(backend, b"s") == [(V(7), 1.0), (V("a"), 5.0), (V("b"), 5.0),
                                         (V("long" * 20), 5.0)]
    assert backend.position == 4


@pytest.mark.parametrize(("key", "kind", "value", "match"), [
    (b"same", KeyType.IMMUTABLE, V("v2"), "immutable value differs"),
    (b"same", KeyType.MUTABLE, [pack_member(1.0, V(1))], "is immutable here but mutable"),
    (b"s", KeyType.INDEXED, {V("a"): V(1)}, "is mutable here but indexed"),
    (b"table", KeyType.INDEXED, {V("b"): V(2), V("a"): V(9)}, "sub-key .* differs"),
    (b"text", KeyType.IMMUTABLE, V(b"abd"), "immutable value differs"),
])
def test_conflict_changes_nothing(backend: StateBackend, tmp_path: Path, key: bytes,
                                  kind: KeyType, value: Any, match: str) -> None:
    _prefill(backend)
    before = _snapshot(backend)
    # Good keys first, the conflict last: a streaming import would have applied them.
    state = {b"good_%d" % i: (KeyType.IMMUTABLE, V(i)) for i in range(5)}
    state[b"good_sensor"] = (KeyType.MUTABLE, sensor(100))
    state[key] = (kind, value)
    with pytest.raises(ImmutableKeyError, match=f"key {key.decode()!r}.*{match}"):
        backend.load_from_file(str(_write(tmp_path / "in.rdb", state)))
    assert _snapshot(backend) == before


def _valid_body(n: int = 20) -> bytes:
    return b"".join(zset3(b"sensor_%02d" % i, sensor(30)) + b"\x00" + rstr(b"attr_%02d" % i)
                    + rstr(V(i)) for i in range(n)) + hash4(b"table", {V("a"): V(1)})


def _damaged() -> Iterator[tuple[str, bytes]]:
    good_zero_crc = rdb_file(_valid_body(), version=6, crc=False)
    good_crc = rdb_file(_valid_body())
    size = len(good_crc)
    for cut in (size - 1, size - 9, size - 20, size // 2, 12):
        yield f"truncated_at_{cut}", good_crc[:cut]
        yield f"zero_crc_truncated_at_{cut}", good_zero_crc[:cut]
    for at in (size // 3, size - 30, size - 9):
        flipped = bytearray(good_crc)
        flipped[at] ^= 0x20
        yield f"flipped_{at}", bytes(flipped)
    bad_ts = [pack_member(1.0, V(1)), b"\xbf\xf0" + b"\x00" * 6 + V(2)]    # -1.0
    yield "negative_timestamp", rdb_file(_valid_body() + zset3(b"bad", bad_ts), crc=False)
    yield "nan_timestamp", rdb_file(_valid_body() + zset3(b"bad", [b"\x7f\xf8" + b"\x00" * 6
                                                                  + V(1)]), crc=False)
    yield "short_member", rdb_file(_valid_body() + zset3(b"bad", [b"\x00" * 8]), crc=False)
    yield "nonzero_score", rdb_file(_valid_body() + zset3(b"bad", sensor(3), b"1"),
                                          crc=False)
    yield "list_type", rdb_file(_valid_body() + b"\x01" + rstr(b"l") + b"\x01" + rstr(b"x"),
                                crc=False)
    yield "duplicate_key", rdb_file(_valid_body() + b"\x00" + rstr(b"attr_03") + rstr(b"x"),
                                    crc=False)
    yield "garbage_after_eof", good_zero_crc + b"\x00"


@pytest.mark.parametrize(("name", "data"), list(_damaged()), ids=[n for n, _ in _damaged()])
def test_damaged_file_changes_nothing(backend: StateBackend, tmp_path: Path, name: str,
                                      data: bytes) -> None:
    _prefill(backend)
    before = _snapshot(backend)
    if isinstance(backend, LogBackend):
        backend.sync()                  # the prefill is on disk: sizes cannot change later
    sizes = segment_sizes(Path(backend.path)) if isinstance(backend, LogBackend) else None
    path = tmp_path / f"{name}.rdb"
    path.write_bytes(data)
    with pytest.raises(RdbParseError) as info:
        backend.load_from_file(str(path))
    assert info.value.offset is not None and 0 <= info.value.offset <= len(data)
    assert info.value.filename == str(path)
    assert _snapshot(backend) == before
    if isinstance(backend, LogBackend):
        assert segment_sizes(Path(backend.path)) == sizes


def test_log_import_is_recorded_under_the_file_session(tmp_path: Path) -> None:
    rdb = _write(tmp_path / "obs 42.rdb", {
        b"attr": (KeyType.IMMUTABLE, V("x")),
        b"table": (KeyType.INDEXED, {V("a"): V(1), V("b"): V(2)}),
        b"sensor": (KeyType.MUTABLE, sensor(500)),
    })
    with open_log(tmp_path / "log", source="writer") as log:
        log.set_immutable(b"before", V(1))
        stats = import_rdb(log, rdb)
        assert stats.events == 1 + 2 + 500 and log.position == 1 + stats.events
        assert log.source == "writer"
        log.set_immutable(b"after", V(2))
        sessions = dict(log.log.tables.sessions)
        expected = _snapshot(log)
        sizes = segment_sizes(tmp_path / "log")
        assert import_rdb(log, rdb).events == 0                  # already loaded: no-op
        assert log.load_from_file(str(rdb)) == 3
        assert segment_sizes(tmp_path / "log") == sizes and _snapshot(log) == expected
    events = log_events(tmp_path / "log")
    by_key = {e["key"]: e for e in events}
    labels = {sid: meta["source"] for sid, meta in sessions.items()}
    assert labels[by_key[b"before"]["session"]] == "writer"
    assert labels[by_key[b"after"]["session"]] == "writer"
    imported = {e["session"] for e in events if e["key"] in (b"attr", b"table", b"sensor")}
    assert [labels[s] for s in imported] == ["import:obs 42.rdb"]
    assert by_key[b"sensor"]["kind"] == fmt.ADD_BATCH
    assert sum(e["count"] for e in events if e["key"] == b"sensor") == 500
    assert [e["pos"] for e in events] == sorted(e["pos"] for e in events)
    with open_log(tmp_path / "log") as reopened:
        assert _snapshot(reopened) == expected


def test_custom_source_label_and_file_object(tmp_path: Path) -> None:
    data = write_state({b"k": (KeyType.IMMUTABLE, V(1))})
    with open_log(tmp_path / "log") as log:
        stats = import_rdb(log, io.BytesIO(data), source="survey-2024")
        assert stats.bytes == len(data) and stats.events == 1
        assert log.source is None
        assert [m["source"] for m in log.log.tables.sessions.values()] == ["survey-2024"]
        assert import_rdb(log, io.BytesIO(data)).events == 0
    with open_log(tmp_path / "log2") as log:
        log.load_from_file(io.BytesIO(data))
        assert [m["source"] for m in log.log.tables.sessions.values()] == ["import:<stream>"]


def test_bytes_path_and_pathlike(tmp_path: Path) -> None:
    rdb = _write(tmp_path / "in.rdb", {b"k": (KeyType.IMMUTABLE, V(1))})
    assert MemoryBackend().load_from_file(os.fsencode(rdb)) == 1
    assert MemoryBackend().load_from_file(rdb) == 1


def test_other_databases(backend: StateBackend, tmp_path: Path) -> None:
    body = b"\x00" + rstr(b"zero") + rstr(V(0)) + b"\xfe\x02\x00" + rstr(b"two") + rstr(V(2))
    path = tmp_path / "dbs.rdb"
    path.write_bytes(rdb_file(body))
    with pytest.raises(RdbParseError, match=r"database\(s\) 2 as well as 0"):
        backend.load_from_file(str(path))
    assert backend.position == 0 and backend.keys(b"*") == []
    with pytest.raises(RdbParseError, match=r"no keys in database 5; the file has keys in "
                                            r"database\(s\) 0, 2"):
        import_rdb(backend, path, db=5)
    assert backend.position == 0
    assert import_rdb(backend, path, db=2).keys == 1
    assert backend.keys(b"*") == [b"two"]
    assert import_rdb(backend, path, db=0).keys == 1
    assert sorted(backend.keys(b"*")) == [b"two", b"zero"]


def test_readonly_log_refuses(tmp_path: Path) -> None:
    rdb = _write(tmp_path / "in.rdb", {b"k": (KeyType.IMMUTABLE, V(1))})
    with open_log(tmp_path / "log") as log:
        log.set_immutable(b"k", V(1))
    with LogBackend(tmp_path / "log", readonly=True, follow=False) as reader:
        with pytest.raises(ReadOnlyError):
            reader.load_from_file(str(rdb))


def test_progress_reports(tmp_path: Path) -> None:
    state = {b"s%04d" % i: (KeyType.MUTABLE, sensor(10)) for i in range(600)}
    state[b"table"] = (KeyType.INDEXED, {V("a"): V(1), V("b"): V(2)})
    rdb = _write(tmp_path / "in.rdb", state)
    calls: list[tuple[str, int, int | None]] = []
    import_rdb(MemoryBackend(), rdb, progress=lambda *args: calls.append(args))
    assert [c for c in calls if c[0] == "read"] == [("read", 256, None), ("read", 512, None)]
    imports = [c for c in calls if c[0] == "import"]
    # one report per key written alone (the table), one per part of new sensors created
    # together (here one part)
    assert imports == [("import", 2, 6002), ("import", 6002, 6002)]


def test_async_wrapper_loads_in_a_thread(tmp_path: Path) -> None:
    from telstate_log.aio import MemoryBackend as AsyncMemoryBackend

    rdb = _write(tmp_path / "in.rdb", {b"s": (KeyType.MUTABLE, sensor(10))})

    async def main() -> tuple[int, Any]:
        backend = AsyncMemoryBackend()
        count = await backend.load_from_file(str(rdb))
        return count, await backend.get(b"s")

    count, latest = anyio.run(main)
    assert count == 1 and latest == (sensor(10)[-1][8:], 1.7e9 + 9 * 0.5)


def test_sensor_starting_with_one_byte_value(tmp_path: Path) -> None:
    rdb = _write(tmp_path / "in.rdb", {b"s": (KeyType.MUTABLE, [pack_member(0.0, b"\x00")])})
    backend = MemoryBackend()
    backend.load_from_file(str(rdb))
    assert full_range(backend, b"s") == [(b"\x00", 0.0)]



@pytest.mark.parametrize("options", [{"fsync": "always"}, {"checkpoint_bytes": 4096}])
def test_log_durability_and_checkpoints_after_import(tmp_path: Path,
                                                     options: dict[str, Any]) -> None:
    rdb = _write(tmp_path / "in.rdb", {b"s%02d" % i: (KeyType.MUTABLE, sensor(300))
                                       for i in range(20)})
    with open_log(tmp_path / "log", **options) as log:
        assert import_rdb(log, rdb).events == 6000
        assert log.durable_position == 6000 or options.get("fsync") != "always"
        expected = _snapshot(log)
    if "checkpoint_bytes" in options:
        assert list((tmp_path / "log" / "checkpoints").iterdir())
    with open_log(tmp_path / "log") as reopened:
        assert _snapshot(reopened) == expected


# --- expiry: telescope state keeps no expiry times ------------------------------------------

NOW = 1_800_000_000.0          # the injected clock, in Unix seconds
NOW_MS = int(NOW * 1000)


def _expiry_file(path: Path) -> Path:
    body = (expiring(string_record(b"past", V(1)), NOW_MS - 1)
            + expiring(string_record(b"negative", V(2)), -5)
            + b"\xfd" + struct.pack("<i", int(NOW) - 1) + string_record(b"past_s", V(3))
            + expiring(string_record(b"at_now", V(4)), NOW_MS)        # not yet: redis keeps it
            + expiring(zset3(b"future", sensor(3)), NOW_MS + 10**9)
            + string_record(b"plain", V(5))
            + b"\xfe\x02" + expiring(string_record(b"other_db", V(6)), NOW_MS - 1))
    path.write_bytes(rdb_file(body))
    return path


def test_expired_keys_skipped_future_expiry_dropped(backend: StateBackend, tmp_path: Path) -> None:
    rdb = _expiry_file(tmp_path / "expiry.rdb")
    stats = import_rdb(backend, rdb, clock=lambda: NOW)
    assert sorted(backend.keys(b"*")) == [b"at_now", b"future", b"plain"]
    assert (stats.keys, stats.expired, stats.expiry_dropped) == (3, 3, 2)
    assert stats.events == backend.position == 1 + 3 + 1
    assert backend.get(b"at_now") == (V(4), None)
    assert full_range(backend, b"future") == [(m[8:], split_member(m)[1]) for m in sensor(3)]
    # later, past both expiry times: only "plain" is live
    later = import_rdb(MemoryBackend(), rdb, clock=lambda: NOW + 2e6)
    assert (later.keys, later.expired, later.expiry_dropped) == (1, 5, 0)


def test_a_database_of_expired_keys_only(tmp_path: Path) -> None:
    """Expired keys are as good as absent: they neither count as another database
    nor make a chosen database an error."""
    rdb = _expiry_file(tmp_path / "expiry.rdb")
    stats = import_rdb(MemoryBackend(), rdb, db=2, clock=lambda: NOW)
    assert (stats.keys, stats.expired, stats.events) == (0, 1, 0)


@pytest.mark.redis
def test_expiry_judged_like_redis_server(tmp_path: Path) -> None:
    """redis-server 7, loading the same file at about the same time, keeps the same keys."""
    require_redis()
    now_ms = int(time.time() * 1000)
    body = (expiring(string_record(b"expired", b"1"), now_ms - 60_000)
            + expiring(string_record(b"long_ago", b"2"), 1000)
            + expiring(string_record(b"later", b"3"), now_ms + 3_600_000)
            + string_record(b"forever", b"4"))
    (tmp_path / "dump.rdb").write_bytes(rdb_file(body))
    server = RedisServer(tmp_path).start()
    try:
        theirs = sorted(server.client().keys(b"*"))
    finally:
        server.cleanup()
    ours = MemoryBackend()
    stats = import_rdb(ours, tmp_path / "dump.rdb")
    assert sorted(ours.keys(b"*")) == theirs == [b"forever", b"later"]
    assert (stats.expired, stats.expiry_dropped) == (2, 1)


def test_zipmap_hash_imported_as_indexed(backend: StateBackend, tmp_path: Path) -> None:
    table = {V("a"): V(1), V("b"): V("two" * 100)}
    rdb = tmp_path / "v3.rdb"
    rdb.write_bytes(rdb_file(packed_record(9, b"table", zipmap(list(table.items()))),
                             version=3))
    assert import_rdb(backend, rdb).keys == 1
    assert backend.get(b"table")[0] == table
