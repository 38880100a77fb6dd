"""Recording a live Redis written by katsdptelstate 1.0.0 clients into a log.

The log's state is compared with Redis's through two front ends:
katsdptelstate reading Redis, and our TelescopeState reading the log.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

pytest.importorskip("katsdptelstate")

import katsdptelstate
from _import_export_helpers import fill, view
from _waiting import wait_for

from telstate_log import TelescopeState
from telstate_log.backends import LogBackend
from telstate_log.core._encoding import encode_value
from telstate_log.replay import DEFAULT_MARKER_KEY, Recorder
from telstate_log.replay._marker import Marker

pytestmark = [pytest.mark.redis, pytest.mark.interop]


@pytest.fixture
def client(client: redis.Redis) -> redis.Redis:
    client.config_set("notify-keyspace-events", "")
    return client


@pytest.fixture
def log(tmp_path: Path) -> Iterator[LogBackend]:
    backend = LogBackend(tmp_path / "log", fsync="never", checkpoint_bytes=None)
    yield backend
    backend.close()


def katsdp(client: redis.Redis, db: int = 0) -> Any:
    kwargs = client.connection_pool.connection_kwargs
    return katsdptelstate.TelescopeState(f"{kwargs['host']}:{kwargs['port']}", db=db)


def drain(recorder: Recorder, quiet: int = 3) -> None:
    """Step until `quiet` consecutive steps of 50 ms bring nothing."""
    idle = 0
    while idle < quiet:
        idle = 0 if recorder.step(0.05) else idle + 1


def sources(log: LogBackend) -> set[str]:
    return {log.session_info(event.session).get("source") for event in log.events()}


def kinds(log: LogBackend, key: bytes) -> list[str]:
    return [event.kind for event in log.history(key)]


def test_records_katsdptelstate_writes_before_and_after_start(
        log: LogBackend, client: redis.Redis) -> None:
    k = katsdp(client)
    k["before"] = {"a": 1}
    for i in range(5):
        k.add("early_sensor", float(i), ts=1.7e9 + i)
    k.set_indexed("early_table", "x", 1)
    with Recorder(redis.Redis(connection_pool=client.connection_pool), log) as recorder:
        assert recorder.stats.resyncs == 1 and log.position == 7
        fill(k)
        k.add("early_sensor", 99.0, ts=1.8e9)
        k.set_indexed("early_table", "y", 2)
        drain(recorder)
        assert view(TelescopeState(log)) == view(k)
        assert recorder.stats.unconfirmed == 0 and recorder.stats.repairs == 0
    port = client.connection_pool.connection_kwargs["port"]
    assert sources(log) == {f"record:redis://127.0.0.1:{port}/0"}
    assert recorder.stats.recorded == log.position


def test_a_gap_after_a_killed_subscription_is_repaired(log: LogBackend,
                                                       client: redis.Redis) -> None:
    k = katsdp(client)
    k["stays"] = 1
    k["goes"] = 2
    for i in range(10):
        k.add("s", float(i), ts=float(i))
    recorder = Recorder(client, log)
    recorder.start()
    try:
        assert client.client_kill_filter(_type="pubsub") == 1
        # Written while nobody listens: lost messages.
        for i in range(10, 20):
            k.add("s", float(i), ts=float(i))
        k.set_indexed("t", "new", [1, 2])
        k.delete("goes")
        k["gap"] = "filled"
        drain(recorder)
        assert recorder.stats.gaps == 1 and recorder.stats.resyncs == 2
        assert view(TelescopeState(log)) == view(k)
        k.add("s", 20.0, ts=20.0)            # and it listens again
        drain(recorder)
        assert TelescopeState(log).get_range("s", st=0)[-1] == (20.0, 20.0)
    finally:
        recorder.close()
    assert kinds(log, b"goes") == ["set", "delete"]


def test_deletes_seen_through_keyspace_events(fresh_redis: Any, log: LogBackend) -> None:
    client = fresh_redis.client()
    k = katsdp(client)
    recorder = Recorder(client, log, keyspace_events=True)
    assert recorder.deletes_visible and "E" in (recorder.flags or "")
    recorder.start()
    try:
        k["x"] = 1
        k.add("s", 1.0, ts=1.0)
        k.set_indexed("t", "a", 1)
        drain(recorder)
        k.delete("x")
        k.delete("s")
        k.add("s", 2.0, ts=2.0)              # re-created: only the new sample
        client.restore(b"copied", 0, client.dump(b"t"))   # no update/ message for this
        client.rename(b"t", b"renamed")
        drain(recorder)
        ours = TelescopeState(log)
        assert view(ours) == view(k)
        assert ours.get_range("s", st=0) == [(2.0, 2.0)]
        assert kinds(log, b"x") == ["set", "delete"]
        assert recorder.stats.deletes == 3 and recorder.stats.repairs == 2
        k.clear()                            # FLUSHDB: Redis sends no notification
        drain(recorder)
        assert len(ours.keys()) == 3
        recorder.resync()
        assert ours.keys() == []
    finally:
        recorder.close()
        client.close()


def test_without_keyspace_events_deletes_wait_for_a_reconcile(log: LogBackend,
                                                               client: redis.Redis) -> None:
    k = katsdp(client)
    recorder = Recorder(client, log)
    assert not recorder.deletes_visible
    recorder.start()
    try:
        k["attr"] = "first"
        k["gone"] = 1
        drain(recorder)
        k.delete("gone")
        client.delete(b"attr")
        k["attr"] = "second"                 # the log still says "first": repaired from DUMP
        drain(recorder)
        ours = TelescopeState(log)
        assert ours["attr"] == "second" and "gone" in ours
        assert kinds(log, b"attr") == ["set", "delete", "set"]
        assert recorder.stats.repairs == 1
        report = recorder.resync()
        assert report.deleted == 1 and "gone" not in ours
        assert view(ours) == view(k)
    finally:
        recorder.close()


def test_periodic_resync_sees_a_flushdb(log: LogBackend, client: redis.Redis) -> None:
    k = katsdp(client)
    k["a"] = 1
    recorder = Recorder(client, log, resync_interval=0.1)
    stop = threading.Event()
    thread = threading.Thread(target=recorder.run, args=(stop,), kwargs={"poll": 0.05})
    thread.start()
    try:
        wait_for(lambda: "a" in TelescopeState(log), what="the recording of a")
        k.clear()
        k["b"] = 2
        wait_for(lambda: "a" not in TelescopeState(log) and "b" in TelescopeState(log),
                 what="a resync to see the FLUSHDB")
    finally:
        stop.set()
        thread.join(5)
        recorder.close()
    assert TelescopeState(log).keys() == ["b"] and recorder.stats.resyncs >= 2


def test_other_databases_and_foreign_keys_are_not_recorded(log: LogBackend,
                                                           client: redis.Redis) -> None:
    client.rpush(b"a list", b"x")
    # A projector marker as earlier versions left it in the projected database.
    client.hset(DEFAULT_MARKER_KEY, mapping={
        encode_value(name): encode_value(value)
        for name, value in Marker(log.log_id.hex(), 1).fields().items()})
    elsewhere = katsdp(client, db=1)
    recorder = Recorder(client, log)
    report = recorder.start()
    try:
        assert report.skipped == 1 and log.position == 0
        elsewhere["k"] = 1
        elsewhere.add("s", 1.0, ts=1.0)
        elsewhere.set_indexed("t", "a", 1)
        drain(recorder)
        assert log.position == 0 and recorder.stats.unconfirmed == 3
    finally:
        recorder.close()
        elsewhere.clear()


def test_a_key_named_like_the_old_marker_is_recorded_unless_it_is_one(
        log: LogBackend, client: redis.Redis) -> None:
    theirs = katsdp(client)
    theirs.set_indexed(DEFAULT_MARKER_KEY.decode(), "position", 1)
    recorder = Recorder(client, log)
    try:
        recorder.start()
    finally:
        recorder.close()
    assert TelescopeState(log).get(DEFAULT_MARKER_KEY.decode()) == {"position": 1}


def test_baseline_reconciles_a_stale_log(log: LogBackend, client: redis.Redis) -> None:
    ours = TelescopeState(log)
    ours["only_in_log"] = 1
    ours["changed"] = "old"
    ours.add("sensor", 1.0, ts=1.0)
    ours.add("sensor", 5.0, ts=5.0)          # Redis lost this one
    ours.add("grows", 1.0, ts=1.0)
    ours.set_indexed("table", "a", 1)
    k = katsdp(client)
    k["changed"] = "new"
    k.add("sensor", 1.0, ts=1.0)
    k.add("grows", 1.0, ts=1.0)
    k.add("grows", 2.0, ts=2.0)
    k.set_indexed("table", "a", 1)
    k.set_indexed("table", "b", 2)
    for t in 1.7e9 + np.arange(200.0):
        k.add("big", float(t), ts=float(t))     # a skiplist zset in Redis 7
    with Recorder(client, log) as recorder:
        report = recorder.resync()
        assert report.changed == 0                   # the baseline did it all
    first = recorder.stats
    assert first.resyncs == 2
    assert view(ours) == view(k)
    assert kinds(log, b"changed") == ["set", "delete", "set"]
    assert kinds(log, b"sensor") == ["add", "add", "delete", "add"]
    assert kinds(log, b"grows") == ["add", "add"]
    assert kinds(log, b"only_in_log") == ["set", "delete"]


def test_only_values_still_in_redis_are_recorded(log: LogBackend, client: redis.Redis) -> None:
    k = katsdp(client)
    with Recorder(client, log) as recorder:
        k["x"] = "transient"                 # both messages wait in the buffer ...
        client.delete(b"x")
        k["x"] = "kept"                      # ... while Redis moves on
        k.add("s", 1.0, ts=1.0)
        client.zrem(b"s", client.zrange(b"s", 0, 0)[0])
        k.add("s", 2.0, ts=2.0)
        k.set_indexed("t", "a", "old")
        client.delete(b"t")
        k.set_indexed("t", "a", "new")
        drain(recorder)
        assert recorder.stats.unconfirmed == 3 and recorder.stats.repairs == 0
    ours = TelescopeState(log)
    assert kinds(log, b"x") == ["set"] and ours["x"] == "kept"
    assert ours.get_range("s", st=0) == [(2.0, 2.0)]
    assert ours.get("t") == {"a": "new"}
