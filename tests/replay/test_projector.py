"""Projecting a log into a real redis-server, checked through katsdptelstate 1.0.0.

* backfill: every key shape reads back identically through katsdptelstate's
  RedisBackend; RESTORE payloads are byte-identical to the reference DUMP
  encoder; a backfill killed (SIGKILL) mid-way and restarted ends with the
  same DUMP of every key as an uninterrupted one;
* follow: new events (in-process, or from a writer process through a
  read-only follower) reach Redis and wake katsdptelstate's ``wait_key``;
  deletes and clears; exactly-once with two racing projectors;
* claiming: foreign databases are refused unless overwrite, failures inside
  a transaction are recorded in the marker;
* the marker: kept in another database, so katsdptelstate clients listing
  the projected database meet only telescope state; a marker left in the
  projected database by an earlier version is adopted exactly once; a
  server without the marker database is refused clearly.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

pytest.importorskip("katsdptelstate")

from _import_export_helpers import fill, marker_view, redis_view, theirs, view
from _redis import RedisServer, require_redis, subscribers
from _waiting import DEADLINE, wait_for

from telstate_log import KeyType, TelescopeState
from telstate_log.backends import LogBackend
from telstate_log.core._encoding import encode_value
from telstate_log.rdb._dump import parse_dump
from telstate_log.rdb._format import pack_member
from telstate_log.replay import (
    DEFAULT_MARKER_KEY,
    ForeignDatabaseError,
    ProjectionError,
    Projector,
)
from telstate_log.replay._marker import DEFAULT_MARKER_DB, MarkerStore
from telstate_log.replay._translate import zset_payload

pytestmark = [pytest.mark.redis, pytest.mark.interop]

HERE = Path(__file__).resolve().parent
WRITER = str(HERE.parent / "_writer_proc.py")
PROJECTOR = str(HERE / "_projector_proc.py")
V = encode_value


@pytest.fixture
def log(tmp_path: Path) -> Iterator[LogBackend]:
    backend = LogBackend(tmp_path / "log", fsync="never", checkpoint_bytes=None)
    yield backend
    backend.close()



def dumps(client: redis.Redis) -> dict[bytes, bytes]:
    """Redis's own DUMP of every key."""
    return {key: client.dump(key) for key in sorted(client.keys())}


@pytest.fixture
def store(client: redis.Redis) -> Iterator[MarkerStore]:
    """The marker store of the test database (its `meta` client reaches the marker)."""
    store = MarkerStore(client)
    yield store
    store.close()


def test_backfill_reads_back_identically_through_katsdptelstate(
        log: LogBackend, client: redis.Redis) -> None:
    ts = TelescopeState(log)
    fill(ts)
    projector = Projector(log, client)
    assert projector.backfill() == log.position
    assert redis_view(client) == view(ts)
    k = theirs(client)
    assert k.get_range("big_sensor", st=0) == ts.get_range("big_sensor", st=0)
    assert k.get("small_table") == ts.get("small_table") == {"a": 1, "b": "two"}
    # The marker is kept apart, in the marker database, and katsdptelstate decodes it.
    marker = marker_view(client)
    assert marker["log_id"] == log.log_id.hex() and marker["position"] == log.position
    status = projector.status()
    assert (status.position, status.lag, status.backfill_target) == (log.position, 0, None)
    assert status.keys_restored == len(ts.keys())


@pytest.mark.parametrize("shape", ["float", "bool", "ragged", "long", "few"])
def test_sensor_payloads_restore_exactly(log: LogBackend, client: redis.Redis,
                                         shape: str) -> None:
    n = {"few": 3}.get(shape, 300)
    stamps = np.concatenate([[-0.0], 1.7e9 + np.arange(n - 1.0)])
    values = {"float": [V(float(i) / 7) for i in range(n)],
              "bool": [V(i % 3 == 0) for i in range(n)],
              "ragged": [V("x" * (i % 5)) for i in range(n)],
              "long": [V(f"{i:05d}" * 20) for i in range(n)],     # 2-byte length prefixes
              "few": [V(1.0), V(2.0), V(3.0)]}[shape]
    log.add_mutable_many(b"s", values, stamps)
    columns = log.snapshot_items(b"s")[0][2]
    members = [pack_member(t, v) for t, v in zip(columns.timestamps.tolist(), columns.encoded())]
    payload = zset_payload(columns)
    assert parse_dump(payload) == (KeyType.MUTABLE, members)
    assert zset_payload(members) == payload            # the list path agrees byte for byte
    client.restore(b"s", 0, payload)
    assert client.zrange(b"s", 0, -1) == members
    assert set(client.zrange(b"s", 0, -1, withscores=True)) == {(m, 0.0) for m in members}
    assert parse_dump(client.dump(b"s")) == (KeyType.MUTABLE, members)
    with pytest.raises(ValueError, match="empty"):
        zset_payload([])


def test_backfill_upto_then_catch_up_through_events(log: LogBackend,
                                                    client: redis.Redis) -> None:
    ts = TelescopeState(log)
    for i in range(20):
        ts.add("s", float(i), ts=100.0 + i)
    ts["attr"] = "x"
    projector = Projector(log, client)
    assert projector.backfill(upto=10) == 10
    assert theirs(client).get_range("s", st=0) == [(float(i), 100.0 + i) for i in range(10)]
    assert "attr" not in theirs(client)
    assert projector.backfill() == log.position      # catches up through events
    assert redis_view(client) == view(ts)
    with pytest.raises(ValueError, match=r"beyond|ends"):
        projector.backfill(upto=log.position + 1)


def test_follow_wakes_katsdptelstate_wait_key(log: LogBackend, client: redis.Redis) -> None:
    ts = TelescopeState(log)
    ts["ready"] = True
    projector = Projector(log, client)
    stop = threading.Event()
    follower = threading.Thread(target=projector.follow, args=(stop,), kwargs={"poll_interval": 1})
    follower.start()
    latencies = []
    k = theirs(client)
    try:
        k.wait_key("ready", timeout=DEADLINE)
        for i in range(15):
            woke = threading.Event()

            def wait(i: int = i, woke: threading.Event = woke) -> None:
                k.wait_key("counter", lambda value, t, i=i: value == i, timeout=DEADLINE)
                woke.set()

            waiter = threading.Thread(target=wait)
            waiter.start()
            wait_for(lambda: subscribers(client, b"update/counter") == 1,
                     what="the waiter's subscription")
            started = time.perf_counter()
            ts.add("counter", i, ts=1000.0 + i)
            assert woke.wait(DEADLINE)
            latencies.append(time.perf_counter() - started)
            waiter.join()
            wait_for(lambda: subscribers(client, b"update/counter") == 0,
                     what="the waiter to unsubscribe")
    finally:
        stop.set()
        follower.join(DEADLINE)
    assert not follower.is_alive()
    median, worst = statistics.median(latencies), max(latencies)
    print(f"\nlog write -> katsdptelstate wait_key wake-up: median {median * 1e3:.1f} ms, "
          f"max {worst * 1e3:.1f} ms")
    assert projector.status().position == log.position
    assert redis_view(client) == view(ts)


def test_backfill_wakes_katsdptelstate_waiters_that_started_first(
        log: LogBackend, client: redis.Redis) -> None:
    """A katsdptelstate client may wait for keys before the projector starts:
    the backfill announces each key it restores, so the waiter wakes."""
    ts = TelescopeState(log)
    ts["ready"] = True
    ts.add("sensor", 1.0, ts=100.0)
    ts.add("sensor", 2.0, ts=101.0)
    ts.set_indexed("table", "a", 1)
    ts.set_indexed("table", "b", 2)
    k = theirs(client)
    woke: dict[str, Any] = {}

    def wait(name: str, condition: Any = None) -> None:
        k.wait_key(name, condition, timeout=DEADLINE)
        woke[name] = k[name]

    def wait_sub_key() -> None:
        k.wait_indexed("table", "b", timeout=DEADLINE)
        woke["table/b"] = k.get_indexed("table", "b")

    waiters = [threading.Thread(target=wait, args=("ready",)),
               threading.Thread(target=wait, args=("sensor", lambda v, t: v == 2.0)),
               threading.Thread(target=wait_sub_key)]
    for waiter in waiters:
        waiter.start()
    for channel, count in ((b"update/ready", 1), (b"update/sensor", 1), (b"update/table", 1)):
        wait_for(lambda c=channel, n=count: subscribers(client, c) == n,
                 what=f"a waiter subscribed to {channel!r}")
    projector = Projector(log, client)
    assert projector.backfill() == log.position
    for waiter in waiters:
        waiter.join(DEADLINE)
    assert not any(waiter.is_alive() for waiter in waiters)
    assert woke == {"ready": True, "sensor": 2.0, "table/b": 2}
    assert projector.status().keys_restored == 3


def test_follow_a_writer_process(tmp_path: Path, client: redis.Redis) -> None:
    path = tmp_path / "log"
    count = 300
    writer = subprocess.Popen([sys.executable, WRITER, str(path), "interval", str(count),
                               "0.002", "4096"], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None and writer.stdout.readline().startswith("ready")
    follower = LogBackend(path, readonly=True)
    stop = threading.Event()
    projector = Projector(follower, client)
    thread = threading.Thread(target=projector.follow, args=(stop,))
    thread.start()
    try:
        theirs(client).wait_key("done", timeout=20)
        assert writer.wait(20) == 0
    finally:
        stop.set()
        thread.join(5)
        if writer.poll() is None:
            writer.kill()
        follower.close()
    samples = theirs(client).get_range("k", st=0)
    assert samples == [(float(i), float(i)) for i in range(count)]


def test_sigkill_mid_backfill_then_restart_gives_identical_redis(
        tmp_path: Path, redis_server: Any, client: redis.Redis) -> None:
    path = tmp_path / "log"
    with LogBackend(path, fsync="never", checkpoint_bytes=None) as backend:
        ts = TelescopeState(backend)
        for k in range(60):
            backend.add_mutable_many(b"sensor_%02d" % k, [V(float(i * k)) for i in range(200)],
                                     1.7e9 + np.arange(200.0))
            ts.set_indexed("table", f"row{k}", k)
            ts[f"attr_{k:02d}"] = {"k": k}
    url = redis_server.url
    proc = subprocess.Popen([sys.executable, PROJECTOR, str(path), url, "8", "0.05"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(4)]
    proc.kill()
    proc.wait()
    assert all(line.startswith("batch") for line in lines), lines
    marker = marker_view(client)
    assert marker["position"] == 0 and "backfill_target" in marker, marker
    assert 32 <= len(client.keys()) < 121               # killed mid-way
    with LogBackend(path, readonly=True, follow=False) as backend:
        assert Projector(backend, client, batch_events=8).backfill() == backend.position
        other = redis.Redis(host="127.0.0.1", port=redis_server.port, db=1)
        try:
            assert Projector(backend, other).backfill() == backend.position
            assert dumps(client) == dumps(other)
            assert marker_view(client)["position"] == marker_view(other)["position"]
            assert redis_view(client) == view(TelescopeState(backend))
        finally:
            other.flushdb()
            other.close()


def test_deletes_and_clears_are_projected(log: LogBackend, client: redis.Redis) -> None:
    ts = TelescopeState(log)
    projector = Projector(log, client)
    ts["a"] = 1
    ts.add("s", 1.0, ts=1.0)
    ts.set_indexed("t", "x", 1)
    ts.delete("a")
    assert projector.step() == 4
    assert sorted(client.keys()) == [b"s", b"t"]
    ts["a"] = 2                      # re-created with another value after the delete
    ts.clear()
    ts["after"] = "clear"
    ts.add("s", 2.0, ts=2.0)
    assert projector.step() == 4
    assert sorted(client.keys()) == [b"after", b"s"]
    assert redis_view(client) == view(ts)
    assert theirs(client).get_range("s", st=0) == [(2.0, 2.0)]


def test_two_racing_projectors_apply_each_event_once(log: LogBackend,
                                                     client: redis.Redis) -> None:
    ts = TelescopeState(log)
    ts["start"] = 1
    Projector(log, client).backfill()
    for i in range(400):
        ts.add("s", float(i), ts=float(i))
    channel = client.pubsub()
    channel.subscribe(b"update/s")
    first, second = Projector(log, client, batch_events=30), Projector(log, client, batch_events=20)
    # Alternate: each commit moves the marker under the other projector, whose next
    # transaction is then refused (nothing applied), so it re-reads and carries on.
    refused = 0
    while first.position < log.position or second.position < log.position:
        for projector in (first, second):
            if projector.position < log.position and not projector.step():
                refused += 1
                projector.step()               # the marker it re-read is current now
    print(f"\nalternating projectors applied {first.events_applied} + "
          f"{second.events_applied} events, {refused} transactions refused")
    assert first.events_applied + second.events_applied == 400
    assert first.events_applied and second.events_applied and refused
    # Racing in threads: still every event exactly once.
    for i in range(400, 800):
        ts.add("s", float(i), ts=float(i))
    stop = threading.Event()
    threads = [threading.Thread(target=p.follow, args=(stop,), kwargs={"poll_interval": 0.05})
               for p in (first, second)]
    for thread in threads:
        thread.start()
    wait_for(lambda: first.status().position == log.position, what="the projectors")
    stop.set()
    for thread in threads:
        thread.join(DEADLINE)
    assert first.events_applied + second.events_applied == 800
    assert redis_view(client) == view(ts)
    published = []

    def receive(timeout: float = 0.0) -> int:
        while (message := channel.get_message(timeout=timeout)) is not None:
            if message["type"] == "message":
                published.append(message["data"])
        return len(published)

    wait_for(lambda: receive() >= 800, what="800 update messages")
    receive(timeout=0.2)                                # and any extra one
    channel.close()
    assert published == [pack_member(float(i), V(float(i))) for i in range(800)]


def test_refuses_foreign_databases_unless_overwrite(tmp_path: Path, log: LogBackend,
                                                    client: redis.Redis,
                                                    store: MarkerStore) -> None:
    TelescopeState(log)["x"] = 1
    client.set(b"someone", b"else")
    with pytest.raises(ForeignDatabaseError, match="1 key"):
        Projector(log, client)
    assert client.get(b"someone") == b"else"
    Projector(log, client, overwrite=True).backfill()
    assert sorted(client.keys()) == [b"x"]
    with LogBackend(tmp_path / "other", fsync="never") as other:
        TelescopeState(other)["y"] = 2
        with pytest.raises(ForeignDatabaseError, match="another log"):
            Projector(other, client)
        Projector(other, client, overwrite=True).backfill()
        assert sorted(client.keys()) == [b"y"]
    client.flushall()
    client.hset(DEFAULT_MARKER_KEY, b"not", b"ours")     # not a marker: data of that name
    with pytest.raises(ForeignDatabaseError, match="1 key"):
        Projector(log, client)
    client.flushall()
    store.meta.hset(store.key, b"not", b"ours")
    with pytest.raises(ForeignDatabaseError, match="not a telstate-log projector marker"):
        Projector(log, client)
    assert Projector(log, client, overwrite=True).backfill() == log.position
    assert marker_view(client)["position"] == log.position


def test_database_ahead_of_the_log_is_refused(tmp_path: Path, client: redis.Redis,
                                              store: MarkerStore) -> None:
    with LogBackend(tmp_path / "log", fsync="never") as log:
        ts = TelescopeState(log)
        ts["a"] = 1
        ts["b"] = 2
        Projector(log, client).backfill()
    with LogBackend(tmp_path / "log", readonly=True, follow=False) as view_:
        projector = Projector(view_, client)
        assert projector.position == 2
    store.meta.hset(store.key, V("position"), V(5))
    with LogBackend(tmp_path / "log", readonly=True, follow=False) as view_:
        with pytest.raises(ForeignDatabaseError, match="ahead of the log"):
            Projector(view_, client)


def test_stop_mid_backfill_leaves_the_target_pending(log: LogBackend,
                                                     client: redis.Redis) -> None:
    for k in range(10):
        log.set_immutable(b"k%d" % k, V(k))
    stop = threading.Event()
    projector = Projector(log, client, batch_events=3,
                          progress=lambda stage, done, total: stop.set())
    assert projector.backfill(stop=stop) == 0
    status = projector.status()
    assert (status.position, status.backfill_target, status.keys_restored) == (0, 10, 3)
    log.set_immutable(b"late", V(1))       # after the target: not part of this backfill
    assert projector.step() == 10          # step finishes the pending backfill first
    assert len(client.keys()) == 10
    assert projector.step() == 1
    assert client.get(b"late") == V(1)


def test_failure_inside_a_transaction_poisons_the_marker(log: LogBackend,
                                                         client: redis.Redis) -> None:
    ts = TelescopeState(log)
    ts.add("s", 1.0, ts=1.0)
    projector = Projector(log, client)
    projector.backfill()
    client.delete(b"s")
    client.set(b"s", b"a string now")          # another client writes the projected db
    ts.add("s", 2.0, ts=2.0)
    ts["other"] = 5
    with pytest.raises(ProjectionError, match=r"WRONGTYPE|wrong kind"):
        projector.step()
    assert "error" in marker_view(client)
    with pytest.raises(ForeignDatabaseError, match="failed"):
        Projector(log, client)
    Projector(log, client, overwrite=True).backfill()
    assert redis_view(client) == view(ts)


def test_follow_restarts_when_redis_loses_everything(log: LogBackend,
                                                     client: redis.Redis) -> None:
    ts = TelescopeState(log)
    ts["a"] = 1
    projector = Projector(log, client)
    projector.backfill()
    client.flushall()                          # e.g. a restart without persistence
    ts["b"] = 2
    assert projector.step() == 0               # the marker vanished: starts afresh
    assert projector.backfill() == log.position
    assert redis_view(client) == view(ts)


def test_projector_needs_a_log(client: redis.Redis) -> None:
    from telstate_log.backends import MemoryBackend

    with pytest.raises(TypeError, match="LogBackend"):
        Projector(MemoryBackend(), client)
    with pytest.raises(ValueError, match="decode_responses"):
        Projector(_FakeLog(), redis.Redis(decode_responses=True))


class _FakeLog:
    log_id = b"\x00" * 16
    position = 0

    def events(self, since: int, until: int) -> list[Any]:
        return []


def test_empty_log_and_infinite_values(log: LogBackend, client: redis.Redis) -> None:
    projector = Projector(log, client)
    assert projector.backfill() == 0 and projector.step() == 0
    TelescopeState(log).add("inf", math.inf, ts=1.0)
    assert projector.step() == 1
    assert theirs(client).get("inf") == math.inf


# ------------------------------------------------------------------ the marker
def test_clients_listing_the_projected_database_meet_only_telescope_state(
        log: LogBackend, client: redis.Redis, redis_server: RedisServer) -> None:
    ts = TelescopeState(log)
    fill(ts, big=50)
    ts[DEFAULT_MARKER_KEY.decode()] = "a key like any other"   # earlier versions' marker name
    projector = Projector(log, client)
    projector.backfill()
    k = theirs(client)
    assert sorted(k.keys()) == sorted(ts.keys())
    ts.add("late", 1.0, ts=1.0)
    ts.delete("obs_name")
    assert projector.step() == 2
    assert sorted(k.keys()) == sorted(ts.keys())
    assert k[DEFAULT_MARKER_KEY.decode()] == "a key like any other"
    ts.clear()
    ts["after"] = 1
    assert projector.step() == 2
    assert k.keys() == ["after"] and client.keys() == [b"after"]
    other = redis_server.client(db=1)
    try:
        Projector(log, other).backfill()
        assert theirs(other).keys() == ["after"]
    finally:
        other.close()
    meta = redis_server.client(db=DEFAULT_MARKER_DB)
    assert sorted(meta.keys()) == [DEFAULT_MARKER_KEY + b":0", DEFAULT_MARKER_KEY + b":1"]
    meta.close()


def _published(channel: Any, count: int) -> list[bytes]:
    """The next `count` messages of `channel`, then checks that no other follows."""
    published: list[bytes] = []
    while len(published) < count:
        message = channel.get_message(timeout=5)
        assert message is not None, published
        if message["type"] == "message":
            published.append(message["data"])
    assert channel.get_message(timeout=0.2) is None
    return published


def test_a_marker_left_by_an_earlier_version_is_adopted_exactly_once(
        log: LogBackend, client: redis.Redis, store: MarkerStore) -> None:
    ts = TelescopeState(log)
    for i in range(10):
        ts.add("s", float(i), ts=float(i))
    Projector(log, client).backfill(upto=4)
    # What an earlier version left: the same fields, in the projected database.
    fields = store.meta.hgetall(store.key)
    client.hset(DEFAULT_MARKER_KEY, mapping=fields)
    store.meta.delete(store.key)
    channel = client.pubsub()
    channel.subscribe(b"update/s")
    assert channel.get_message(timeout=5)["type"] == "subscribe"
    resumed = Projector(log, client)
    assert resumed.position == 4
    assert not client.exists(DEFAULT_MARKER_KEY)               # moved, in one transaction
    assert store.meta.hgetall(store.key) == fields
    assert resumed.step() == 6
    assert _published(channel, 6) == [pack_member(float(i), V(float(i))) for i in range(4, 10)]
    channel.close()
    assert redis_view(client) == view(ts)


def test_adopting_an_earlier_marker_that_changed_meanwhile_moves_nothing(
        log: LogBackend, client: redis.Redis, store: MarkerStore) -> None:
    TelescopeState(log)["a"] = 1
    Projector(log, client).backfill()
    fields = store.meta.hgetall(store.key)
    store.meta.delete(store.key)
    client.hset(DEFAULT_MARKER_KEY, mapping=fields)
    client.hset(DEFAULT_MARKER_KEY, V("position"), V(0))       # an old projector moved it
    assert not store._adopt(fields)
    assert client.exists(DEFAULT_MARKER_KEY) and not store.meta.exists(store.key)
    client.hset(DEFAULT_MARKER_KEY, mapping=fields)
    store.meta.hset(store.key, mapping=fields)                 # already adopted elsewhere
    assert not store._adopt(fields)
    assert client.exists(DEFAULT_MARKER_KEY)
    store.meta.delete(store.key)
    assert store.read() == Projector(log, client).marker       # adopted on reading
    assert not client.exists(DEFAULT_MARKER_KEY)


def test_the_marker_database_must_exist_and_differ(tmp_path: Path, log: LogBackend,
                                                   client: redis.Redis,
                                                   redis_server: RedisServer) -> None:
    TelescopeState(log)["x"] = 1
    with pytest.raises(ValueError, match="marker database"):
        Projector(log, client, marker_db=0)
    Projector(log, client, marker_db=3).backfill()
    three = redis_server.client(db=3)
    assert three.keys() == [DEFAULT_MARKER_KEY + b":0"] and client.keys() == [b"x"]
    three.close()
    require_redis()
    server = RedisServer(tmp_path, extra_args=("--databases", "1")).start()
    try:
        single = server.client()
        with pytest.raises(ProjectionError, match=r"no database 15.*'databases'"):
            Projector(log, single)
        assert single.dbsize() == 0
        single.close()
    finally:
        server.cleanup()
