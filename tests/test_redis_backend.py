"""The sync RedisBackend against a real redis-server, with katsdptelstate as the oracle.

* the byte-level Backend contract, every method, including wrong types and
  every get_range bound form (compared with katsdptelstate's RedisBackend on
  the same keys of the same server);
* interoperability both ways on one Redis: values, the bytes published on
  ``update/<key>``, and waits of one library woken by writes of the other;
* monitor_keys: protocol, foreign publishers, a killed pub/sub connection,
  a restarted or absent server;
* endpoints and constructors, password redaction, first-contact failure;
* load_from_file of RDB files from our writer, katsdptelstate's and Redis's.
"""

from __future__ import annotations

import io
import math
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

pytest.importorskip("katsdptelstate")

import katsdptelstate
import katsdptelstate.endpoint
import katsdptelstate.redis
from katsdptelstate.rdb_writer import RDBWriter

sys.path.insert(0, str(Path(__file__).resolve().parent / "replay"))

import _redis_range_cases as range_cases
from _rdb_helpers import (
    GOLDEN_KATSDPTELSTATE,
    GOLDEN_REDIS7,
    read_state,
    redis_state,
    sample_state,
    write_state,
)
from _redis import RedisServer, subscribers
from _waiting import DEADLINE, wait_for

import telstate_log
from telstate_log import ImmutableKeyError, InvalidTimestampError, KeyType
from telstate_log.backends import (
    ImmutableKeyUpdate,
    IndexedKeyUpdate,
    KeyUpdateBase,
    MutableKeyUpdate,
    RedisBackend,
)
from telstate_log.backends._redis_common import LOAD_BATCH_KEYS
from telstate_log.backends._redis_messages import indexed_message, mutable_message
from telstate_log.rdb._dump import parse_dump
from telstate_log.rdb._format import pack_member

pytestmark = [pytest.mark.redis, pytest.mark.interop]


@pytest.fixture
def backend(redis_url: str) -> Iterator[RedisBackend]:
    backend = RedisBackend.from_url(redis_url)
    yield backend
    backend.close()


@pytest.fixture
def oracle(client: redis.Redis) -> Any:
    """katsdptelstate's own RedisBackend on the same database."""
    return katsdptelstate.redis.RedisBackend(client)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _next(monitor: Any, timeout: float = DEADLINE, want: type = KeyUpdateBase) -> Any:
    """Send timeouts to a sync monitor until it yields an instance of `want`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        update = monitor.send(0.2)
        if isinstance(update, want):
            return update
    raise AssertionError(f"no {want.__name__} within {timeout}s")


def _channels(client: redis.Redis) -> set[bytes]:
    return set(client.pubsub_channels())


# ------------------------------------------------------------------ contract
def test_immutable(backend: RedisBackend, oracle: Any, client: redis.Redis) -> None:
    assert backend.set_immutable(b"a", b"\xffv") is None
    assert backend.set_immutable(b"a", b"\xffw") == b"\xffv"
    assert client.get(b"a") == b"\xffv"
    assert backend.get(b"a") == oracle.get(b"a") == (b"\xffv", None)
    assert backend.key_type(b"a") == KeyType.IMMUTABLE == oracle.key_type(b"a")
    assert b"a" in backend and b"missing" not in backend
    assert backend.get(b"missing") == (None, None) and backend.key_type(b"missing") is None
    assert backend.set_immutable(b"e", b"") is None and backend.get(b"e") == (b"", None)
    oracle.set_immutable(b"b", b"\x80theirs")
    assert backend.set_immutable(b"b", b"\xffmine") == b"\x80theirs"


def test_mutable(backend: RedisBackend, oracle: Any, client: redis.Redis) -> None:
    samples = [(b"\xff%d" % i, float(t)) for i, t in enumerate([5, 1, 9, 5, 0, 3e9])]
    for value, ts in samples + samples[:2]:                 # duplicates are stored once
        backend.add_mutable(b"s", value, ts)
    backend.add_mutable(b"s", b"\xffneg0", -0.0)            # stored as +0.0
    members = client.zrange(b"s", 0, -1, withscores=True)
    assert all(score == 0 for _, score in members)
    expected = sorted([pack_member(ts, v) for v, ts in samples] + [pack_member(0.0, b"\xffneg0")])
    assert [m for m, _ in members] == expected
    assert backend.get(b"s") == oracle.get(b"s") == (b"\xff5", 3e9)
    assert backend.key_type(b"s") == KeyType.MUTABLE
    oracle.add_mutable(b"s", b"\xfflate", 4e9)
    assert backend.get(b"s") == (b"\xfflate", 4e9)
    for bad in (-1.0, math.nan, math.inf, -math.inf):
        with pytest.raises(InvalidTimestampError):
            backend.add_mutable(b"s", b"\xffx", bad)


def test_indexed(backend: RedisBackend, oracle: Any, client: redis.Redis) -> None:
    with pytest.raises(KeyError):
        backend.get_indexed(b"t", b"x")
    assert backend.set_indexed(b"t", b"\xffx", b"\xff1") is None
    assert backend.set_indexed(b"t", b"\xffx", b"\xff2") == b"\xff1"
    assert backend.set_indexed(b"t", b"", b"") is None
    assert client.hgetall(b"t") == {b"\xffx": b"\xff1", b"": b""}
    assert backend.get_indexed(b"t", b"\xffx") == oracle.get_indexed(b"t", b"\xffx") == b"\xff1"
    assert backend.get_indexed(b"t", b"") == b""
    assert backend.get_indexed(b"t", b"\xffy") is None
    assert backend.get(b"t") == oracle.get(b"t") == ({b"\xffx": b"\xff1", b"": b""}, None)
    assert backend.key_type(b"t") == KeyType.INDEXED
    oracle.set_indexed(b"t", b"\xffz", b"\xff3")
    assert backend.get_indexed(b"t", b"\xffz") == b"\xff3"


def test_wrong_types(backend: RedisBackend, client: redis.Redis) -> None:
    backend.set_immutable(b"i", b"\xffv")
    backend.add_mutable(b"m", b"\xffv", 1.0)
    backend.set_indexed(b"x", b"\xffs", b"\xffv")
    client.rpush(b"list", b"v")
    writes: list[Callable[[bytes], Any]] = [
        lambda key: backend.set_immutable(key, b"\xffv"),
        lambda key: backend.add_mutable(key, b"\xffv", 2.0),
        lambda key: backend.set_indexed(key, b"\xffs", b"\xffv"),
    ]
    for own, key in enumerate([b"i", b"m", b"x"]):
        for kind, write in enumerate(writes):
            if kind != own:
                with pytest.raises(ImmutableKeyError):
                    write(key)
        if key != b"m":
            with pytest.raises(ImmutableKeyError):
                backend.get_range(key, 0.0, math.inf, False, False)
            # No range query is needed: katsdptelstate answers [] for any existing key.
            assert backend.get_range(key, math.inf, math.inf, False, False) == []
    for key in (b"i", b"m"):
        with pytest.raises(ImmutableKeyError):
            backend.get_indexed(key, b"\xffs")
    for call in (backend.key_type, backend.get, *writes,
                 lambda key: backend.get_range(key, 0.0, math.inf, True, False),
                 lambda key: backend.get_indexed(key, b"\xffs")):
        with pytest.raises(ImmutableKeyError):
            call(b"list")
    assert client.lrange(b"list", 0, -1) == [b"v"]


def test_keys_delete_clear_dump(backend: RedisBackend, client: redis.Redis) -> None:
    for key in (b"a", b"ab", b"b", b"a*", b"x\xff"):
        backend.set_immutable(key, b"\xffv")
    backend.add_mutable(b"s", b"\xffv", 1.0)
    backend.set_indexed(b"t", b"\xffs", b"\xffv")
    assert sorted(backend.keys(b"*")) == [b"a", b"a*", b"ab", b"b", b"s", b"t", b"x\xff"]
    assert sorted(backend.keys(b"a?")) == [b"a*", b"ab"]
    assert backend.keys(b"a\\*") == [b"a*"]
    assert sorted(backend.keys(b"[ab]")) == [b"a", b"b"]
    for key, kind in [(b"a", KeyType.IMMUTABLE), (b"s", KeyType.MUTABLE), (b"t", KeyType.INDEXED)]:
        payload = backend.dump(key)
        assert payload == client.dump(key)
        assert parse_dump(payload)[0] == kind
    assert backend.dump(b"missing") is None
    backend.delete(b"a")
    backend.delete(b"missing")
    assert b"a" not in backend and b"ab" in backend
    backend.clear()
    assert backend.keys(b"*") == [] and client.dbsize() == 0


_GRID = [0.0, -0.0, -1.0, -math.inf, 5e-324, 3.0, 5.0, 7.5, 10.0, 1e300, math.inf]


def test_get_range_matches_katsdptelstate(backend: RedisBackend, oracle: Any) -> None:
    for ts in [0.0, 5e-324, 5.0, 5.0, 7.5, 10.0, 12.0, 1e300]:
        for value in (b"\xffa", b"\xffb"):
            backend.add_mutable(b"s", value, ts)
    checked = 0
    for st in _GRID:
        for et in _GRID:
            for include_previous in (False, True):
                for include_end in (False, True):
                    args = (b"s", st, et, include_previous, include_end)
                    assert backend.get_range(*args) == oracle.get_range(*args), args
                    checked += 1
    assert checked == len(_GRID) ** 2 * 4
    assert backend.get_range(b"missing", 0.0, math.inf, True, True) is None
    with pytest.raises(InvalidTimestampError):
        backend.get_range(b"s", math.nan, 1.0, False, False)


def test_get_range_on_every_kind_of_key_matches_katsdptelstate(backend: RedisBackend,
                                                                client: redis.Redis) -> None:
    cases = range_cases.fill(client)
    theirs = range_cases.expected(client, cases)
    ours = [range_cases.outcome(lambda case=case: backend.get_range(*case)) for case in cases]
    assert range_cases.mismatches(cases, ours, theirs) == []


# --------------------------------------------------------------- interop
def _values() -> dict[str, Any]:
    np = pytest.importorskip("numpy")
    return {"int": 3, "float": 2.5, "str": "text", "bytes": b"\x00\xff", "tuple": (1, "a"),
            "list": [1, 2.0], "dict": {"k": [1]}, "complex": 1 + 2j, "none": None,
            "array": np.arange(6, dtype=np.int16).reshape(2, 3), "scalar": np.float32(1.5)}


def _assert_same(a: Any, b: Any) -> None:
    np = pytest.importorskip("numpy")
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b and type(a) is type(b)


@pytest.mark.parametrize("writer_is_ours", [True, False], ids=["ours-to-theirs", "theirs-to-ours"])
def test_values_interoperate(writer_is_ours: bool, backend: RedisBackend, oracle: Any) -> None:
    ours, theirs = telstate_log.TelescopeState(backend), katsdptelstate.TelescopeState(oracle)
    writer, reader = (ours, theirs) if writer_is_ours else (theirs, ours)
    for name, value in _values().items():
        writer[f"attr_{name}"] = value
        writer.add(f"sensor_{name}", value, ts=100.0)
        writer.add(f"sensor_{name}", "later", ts=200.0)
        writer.set_indexed("table", name, value)
    for name, value in _values().items():
        _assert_same(reader[f"attr_{name}"], value)
        assert reader.key_type(f"sensor_{name}") == KeyType.MUTABLE
        got = reader.get_range(f"sensor_{name}", st=0)
        _assert_same(got[0][0], value)
        assert [t for _, t in got] == [100.0, 200.0] and got[1][0] == "later"
        _assert_same(reader.get_indexed("table", name), value)
    writer.add("attr_int", 3, immutable=True)                 # same value: no-op both ways
    with pytest.raises(katsdptelstate.ImmutableKeyError):     # ours are theirs too
        reader.add("attr_int", 4, immutable=True)
    assert sorted(reader.keys("attr_*")) == sorted(f"attr_{n}" for n in _values())


def test_published_bytes_match_katsdptelstate(backend: RedisBackend, oracle: Any,
                                              client: redis.Redis) -> None:
    pubsub = client.pubsub()
    pubsub.psubscribe(b"update/*")
    _wait_message(pubsub, "psubscribe")
    for prefix, target in ((b"ours_", backend), (b"theirs_", oracle)):
        target.set_immutable(prefix + b"i", b"\xffvalue")
        target.add_mutable(prefix + b"m", b"\xffsample", 1234.5)
        target.add_mutable(prefix + b"m", b"\xffsample", 1234.5)   # no change: no message
        target.set_indexed(prefix + b"x", b"\xffsub\n", b"\xffval")
        target.set_indexed(prefix + b"x", b"\xffsub\n", b"\xffother")  # exists: no message
    got = [_wait_message(pubsub, "pmessage") for _ in range(6)]
    assert _wait_message(pubsub, "pmessage", timeout=0.2) is None
    expected = [b"\xffvalue", mutable_message(b"\xffsample", 1234.5),
                indexed_message(b"\xffsub\n", b"\xffval")]
    assert [(m["channel"], m["data"]) for m in got] == [
        (b"update/" + prefix + key, data) for prefix in (b"ours_", b"theirs_")
        for key, data in zip((b"i", b"m", b"x"), expected, strict=True)]
    pubsub.close()


def _wait_message(pubsub: Any, kind: str, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == kind:
            return message
    return None


def _in_thread(func: Callable[[], Any]) -> Callable[[], Any]:
    """Start `func` in a thread; return a function that joins it and returns its result."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(_capture(func)))
    thread.start()

    def join() -> Any:
        thread.join(2 * DEADLINE)   # beyond the waits' own timeouts
        outcome, value = result[0]
        if outcome == "error":
            raise value
        return value

    return join


def _capture(func: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", func()
    except BaseException as exc:
        return "error", exc


@pytest.mark.parametrize("waiter_is_ours", [True, False], ids=["ours-wait", "theirs-wait"])
def test_waits_woken_across_libraries(waiter_is_ours: bool, backend: RedisBackend,
                                      oracle: Any, client: redis.Redis) -> None:
    ours, theirs = telstate_log.TelescopeState(backend), katsdptelstate.TelescopeState(oracle)
    waiter, writer = (ours, theirs) if waiter_is_ours else (theirs, ours)
    # Neither library re-reads a key on a timer: once the waiter is subscribed, only
    # the writer's update message can end its wait (else it times out).
    for kind in ("immutable", "mutable", "indexed"):
        key = f"key_{kind}"
        if kind == "indexed":
            join = _in_thread(lambda key=key: waiter.wait_indexed(key, "s", lambda v: v == 2,
                                                                  timeout=DEADLINE))
        else:
            join = _in_thread(lambda key=key: waiter.wait_key(key, lambda v, t: v == 2,
                                                              timeout=DEADLINE))
        wait_for(lambda key=key: subscribers(client, f"update/{key}".encode()) == 1,
                 what="the waiter's subscription")
        if kind == "immutable":
            writer[key] = 2
        elif kind == "mutable":
            writer.add(key, 1, ts=1.0)
            writer.add(key, 2, ts=2.0)
        else:
            writer.set_indexed(key, "other", 1)
            writer.set_indexed(key, "s", 2)
        join()


# --------------------------------------------------------------- monitor_keys
def test_monitor_keys_protocol(backend: RedisBackend, client: redis.Redis) -> None:
    monitor = backend.monitor_keys([b"a", b"b", b"a"])
    assert monitor.send(None) is None
    assert type(_next(monitor)) is KeyUpdateBase          # both channels confirmed: one recheck
    assert monitor.send(0.1) is None
    assert _channels(client) == {b"update/a", b"update/b"}
    backend.set_immutable(b"a", b"\xffv")
    update = _next(monitor, want=ImmutableKeyUpdate)
    assert (update.key, update.value) == (b"a", b"\xffv")
    backend.set_indexed(b"other", b"\xffs", b"\xffv")
    backend.add_mutable(b"b", b"\xffw", 5.0)
    update = _next(monitor, want=MutableKeyUpdate)
    assert (update.key, update.value, update.timestamp) == (b"b", b"\xffw", 5.0)
    client.publish(b"update/b", b"\x03garbage")           # malformed: check again
    assert type(_next(monitor)) is KeyUpdateBase
    client.publish(b"update/b", b"\x03" + b"1\nsv")
    update = _next(monitor, want=IndexedKeyUpdate)
    assert (update.sub_key, update.value) == (b"s", b"v")
    monitor.close()
    assert _channels(client) == set()


def test_monitor_survives_killed_pubsub_connection(fresh_redis: RedisServer) -> None:
    backend = RedisBackend.from_url(fresh_redis.url)
    client = fresh_redis.client()
    monitor = backend.monitor_keys([b"k"])
    monitor.send(None)
    assert type(_next(monitor)) is KeyUpdateBase
    assert client.client_kill_filter(_type="pubsub") == 1
    assert type(_next(monitor)) is KeyUpdateBase          # resubscribed: the caller re-reads
    backend.add_mutable(b"k", b"\xffv", 1.0)
    assert _next(monitor, want=MutableKeyUpdate).value == b"\xffv"
    monitor.close()
    backend.close()


def test_reconnect_after_server_restart(fresh_redis: RedisServer) -> None:
    backend = RedisBackend.from_url(fresh_redis.url)
    ts = telstate_log.TelescopeState(backend)
    ts["before"] = 1
    monitor = backend.monitor_keys([b"k"])
    monitor.send(None)
    assert type(_next(monitor)) is KeyUpdateBase
    fresh_redis.restart()                                # no persistence: data is gone
    assert type(_next(monitor)) is KeyUpdateBase          # resubscribed: the caller re-reads
    assert "before" not in ts
    ts["after"] = 2                                       # scripts reloaded (NOSCRIPT)
    ts.add("k", 3.0, ts=1.0)
    assert _next(monitor, want=MutableKeyUpdate).timestamp == 1.0
    assert ts["after"] == 2 and ts.get_range("k", st=0) == [(3.0, 1.0)]
    monitor.close()
    backend.close()


def test_monitor_waits_out_a_dead_server(fresh_redis: RedisServer) -> None:
    backend = RedisBackend.from_url(fresh_redis.url)
    monitor = backend.monitor_keys([b"k"])
    monitor.send(None)
    assert type(_next(monitor)) is KeyUpdateBase
    port = fresh_redis.port
    fresh_redis.kill()
    for _ in range(3):                                    # timeouts honoured, no exception
        start = time.monotonic()
        assert monitor.send(0.3) is None
        assert time.monotonic() - start < 1.0
    fresh_redis.start(port=port)
    assert type(_next(monitor)) is KeyUpdateBase
    backend.close()
    with pytest.raises(telstate_log.ConnectionError, match="closed"):
        _next(monitor, timeout=3)


def test_first_contact_failure_raises_connection_error() -> None:
    port = _free_port()
    with pytest.raises(telstate_log.ConnectionError, match=f"127.0.0.1:{port}"):
        telstate_log.TelescopeState(f"127.0.0.1:{port}")
    with pytest.raises(katsdptelstate.ConnectionError):   # also katsdptelstate's class
        RedisBackend.from_url(f"redis://:hunter2@127.0.0.1:{port}/0")


# -------------------------------------------------- endpoints and secrets
def test_endpoint_constructors(redis_server: RedisServer, redis_url: str) -> None:
    port = redis_server.port
    endpoint = katsdptelstate.endpoint.Endpoint("127.0.0.1", port)
    for args, db in [((f"127.0.0.1:{port}",), 0), ((f"127.0.0.1:{port}", 2), 2),
                     ((f"redis://127.0.0.1:{port}", 1), 1), ((f"redis://127.0.0.1:{port}/3",), 3),
                     ((endpoint, 4), 4)]:
        ts = telstate_log.TelescopeState(*args)
        assert isinstance(ts.backend, RedisBackend)
        ts[f"in_db_{db}"] = db
        assert redis_server.client(db).exists(f"in_db_{db}")
        assert repr(ts.backend) == f"<RedisBackend redis://127.0.0.1:{port}/{db}>"
        ts.backend.close()
    with pytest.raises(ValueError, match="not a Redis URL"):
        RedisBackend.from_url(f"127.0.0.1:{port}")
    with pytest.raises(ValueError, match="decode_responses"):
        RedisBackend(redis.Redis(port=port, decode_responses=True))


def test_unix_socket_url(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(tmp_path, extra_args=("--unixsocket", str(socket_path),
                                               "--unixsocketperm", "700")).start()
    try:
        ts = telstate_log.TelescopeState(f"unix://{socket_path}?db=5")
        ts["x"] = 1
        assert server.client(5).exists("x")
        assert repr(ts.backend) == f"<RedisBackend unix://{socket_path}?db=5>"
        ts.backend.close()
    finally:
        server.cleanup()


def test_passwords_are_redacted(fresh_redis: RedisServer) -> None:
    fresh_redis.client().config_set("requirepass", "hunter2")
    url = f"redis://:hunter2@127.0.0.1:{fresh_redis.port}/0"
    ts = telstate_log.TelescopeState(url)
    ts["x"] = 1
    assert ts["x"] == 1
    shown = repr(ts.backend)
    assert "hunter2" not in shown and ":***@" in shown
    ts.backend.close()
    with pytest.raises(telstate_log.ConnectionError) as info:
        telstate_log.TelescopeState(url.replace("hunter2", "wrong-secret"))
    assert "wrong-secret" not in str(info.value) and "***" in str(info.value)
    # A wrong password is reported at once, not retried like a lost connection.
    log = fresh_redis.client(password="hunter2").acl_log()
    assert sum(e["count"] for e in log if e["reason"] == "auth") == 1, log


# ------------------------------------------------------------ load_from_file
def test_load_our_rdb(tmp_path: Path, backend: RedisBackend, client: redis.Redis) -> None:
    state = sample_state()
    path = tmp_path / "ours.rdb"
    write_state(state, path)
    assert backend.load_from_file(path) == len(state)
    assert redis_state(client) == state
    # Identical contents again (a file object, then a bytes path): harmless.
    with open(path, "rb") as file:
        assert backend.load_from_file(file) == len(state)
    assert backend.load_from_file(bytes(path)) == len(state)
    client.set(b"obs_name", b"\xffchanged")
    with pytest.raises(ImmutableKeyError, match="obs_name"):
        backend.load_from_file(str(path))
    assert client.get(b"obs_name") == b"\xffchanged"


def test_load_in_batches_stops_at_a_clash(tmp_path: Path, backend: RedisBackend,
                                          client: redis.Redis) -> None:
    n = 2 * LOAD_BATCH_KEYS + 10
    state = {b"k%05d" % i: (KeyType.IMMUTABLE, b"\xff%d" % i) for i in range(n)}
    path = tmp_path / "many.rdb"
    write_state(state, path)
    late = b"k%05d" % (LOAD_BATCH_KEYS + 3)
    client.set(late, b"other")
    with pytest.raises(ImmutableKeyError, match=f"{late.decode()}.*{LOAD_BATCH_KEYS * 2 - 1} "):
        backend.load_from_file(path)
    assert client.dbsize() == 2 * LOAD_BATCH_KEYS       # the two batches read so far
    client.delete(late)
    assert backend.load_from_file(path) == n and client.dbsize() == n


def test_load_katsdptelstate_rdb(tmp_path: Path, backend: RedisBackend, oracle: Any) -> None:
    source = katsdptelstate.TelescopeState()
    values = _values()
    rng = random.Random(3)
    for name, value in values.items():
        source[f"attr_{name}"] = value
        source.set_indexed("table", name, value)
    for i in range(100):                                  # > 63 samples: a plain zset
        source.add("sensor", rng.random(), ts=1e9 + i)
    path = tmp_path / "theirs.rdb"
    with RDBWriter(path) as writer:
        writer.save(source)
    assert backend.load_from_file(path) == len(source.keys())
    loaded = katsdptelstate.TelescopeState(oracle)
    assert sorted(loaded.keys()) == sorted(source.keys())
    for name, value in values.items():
        _assert_same(loaded[f"attr_{name}"], value)
        _assert_same(telstate_log.TelescopeState(backend).get_indexed("table", name), value)
    assert loaded.get_range("sensor", st=0) == source.get_range("sensor", st=0)


@pytest.mark.parametrize("golden", [GOLDEN_KATSDPTELSTATE, GOLDEN_REDIS7], ids=lambda p: p.name)
def test_load_golden_files(golden: Path, backend: RedisBackend, client: redis.Redis) -> None:
    state = read_state(golden)
    assert backend.load_from_file(io.BytesIO(golden.read_bytes())) == len(state)
    assert redis_state(client) == state
