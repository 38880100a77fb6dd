"""RedisLogBackend on a real redis-server: the function library's contract.

Each write is one atomic step that changes katsdptelstate's layout and
appends one stream record; a write that changes nothing appends nothing; a
refused write changes nothing; the stream stays out of the telstate db.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import redis
from _waiting import DEADLINE

import telstate_log
from telstate_log import (
    ImmutableKeyError,
    ReplicationError,
    SharedLogError,
    StreamDivergedError,
    TelescopeState,
)
from telstate_log.backends import RedisLogBackend, StreamReplica
from telstate_log.backends._log_functions import LIBRARY_NAME, VERSION, log_db_for
from telstate_log.core._encoding import encode_value
from telstate_log.core._stream_format import add_tail, decode_record

pytestmark = pytest.mark.redis


@pytest.fixture
def backend(redis_url: str) -> Iterator[RedisLogBackend]:
    b = RedisLogBackend.from_url(redis_url, source="test-writer")
    yield b
    b.close()


def stream_entries(client: redis.Redis, stream: bytes = b"telstate-log", db: int = 0) -> list:
    log = redis.Redis(connection_pool=redis.ConnectionPool(
        **{**client.connection_pool.connection_kwargs, "db": log_db_for(db)}))
    try:
        return [decode_record(ident, fields[b"e"]) for ident, fields in log.xrange(stream)]
    finally:
        log.close()


def layout(client: redis.Redis) -> dict[bytes, object]:
    out: dict[bytes, object] = {}
    for key in client.scan_iter():
        kind = client.type(key)
        out[key] = (client.get(key) if kind == b"string" else
                    client.zrange(key, 0, -1) if kind == b"zset" else client.hgetall(key))
    return out


def test_writes_append_one_record_each_and_no_ops_append_nothing(
        backend: RedisLogBackend, client: redis.Redis) -> None:
    ts = TelescopeState(backend)
    ts["config"] = {"a": 1}
    ts["config"] = {"a": 1}                       # equal immutable: nothing
    ts.add("sensor", 1.0, ts=10.0)
    ts.add("sensor", 1.0, ts=10.0)                # duplicate sample: nothing
    ts.add("sensor", 2.0, ts=5.0)                 # a past timestamp is fine
    ts.set_indexed("table", "x", 1)
    ts.set_indexed("table", "x", 1)               # equal sub-key: nothing
    ts.delete("nothing-here")                     # no key: nothing
    records = stream_entries(client)
    events = [r for r in records if r.seq == 0]
    assert [r.position for r in events] == [1, 2, 3, 4]
    assert [(r.kind, r.key) for r in events] == [(1, b"config"), (2, b"sensor"), (2, b"sensor"),
                                                 (3, b"table")]
    assert backend.position == 4
    # one session record, registered before the first event
    sessions = [r for r in records if r.seq != 0]
    assert len(sessions) == 1 and sessions[0].position == 0
    assert backend.session_info(sessions[0].session)["source"] == "test-writer"
    assert {e.session for e in backend.events()} == {sessions[0].session}


def test_refused_writes_change_nothing(backend: RedisLogBackend, client: redis.Redis) -> None:
    ts = TelescopeState(backend)
    ts["config"] = 1
    ts.add("sensor", 1.0, ts=1.0)
    before = layout(client), stream_entries(client)
    with pytest.raises(ImmutableKeyError):
        ts["config"] = 2
    with pytest.raises(ImmutableKeyError):
        ts.add("config", 3.0)
    with pytest.raises(ImmutableKeyError):
        ts.set_indexed("sensor", "x", 1)
    with pytest.raises(ImmutableKeyError):
        backend.add_mutable_many(b"config", [encode_value(1.0)], [1.0])
    with pytest.raises(telstate_log.InvalidTimestampError):
        ts.add("sensor", 1.0, ts=float("nan"))
    assert (layout(client), stream_entries(client)) == before


def test_the_log_stays_out_of_the_telstate_database(
        backend: RedisLogBackend, redis_url: str) -> None:
    import katsdptelstate

    ts = TelescopeState(backend)
    ts["a"] = 1
    ts.add("b", 2.0)
    ts.set_indexed("c", "x", 3)
    theirs = katsdptelstate.TelescopeState(redis_url)
    assert sorted(theirs.keys()) == ["a", "b", "c"]
    assert [theirs.key_type(k) for k in sorted(theirs.keys())] == [
        katsdptelstate.KeyType.IMMUTABLE, katsdptelstate.KeyType.MUTABLE,
        katsdptelstate.KeyType.INDEXED]
    assert theirs.get_range("b", st=0) == ts.get_range("b", st=0)


def test_add_mutable_many_is_one_batch_record(backend: RedisLogBackend,
                                              client: redis.Redis) -> None:
    values = [encode_value(float(i)) for i in range(100)]
    assert backend.add_mutable_many(b"s", values, np.arange(100.0)) == 100
    assert backend.add_mutable_many(b"s", [*values[:10], encode_value(-1.0)],
                                    [*range(10), 500.0]) == 1
    [batch, single] = [r for r in stream_entries(client) if r.seq == 0]
    assert (batch.position, batch.last, single.position, single.last) == (1, 100, 101, 101)
    assert backend.position == 101
    assert [(e.position, e.timestamp) for e in backend.events(99, 101)] == \
        [(99, 98.0), (100, 99.0), (101, 500.0)]
    assert client.zcard(b"s") == 101


def test_a_stream_belongs_to_one_database(redis_url: str) -> None:
    db1 = redis_url.rsplit("/", 1)[0] + "/1"
    first = RedisLogBackend.from_url(redis_url)
    second = RedisLogBackend.from_url(db1)
    try:
        first.set_immutable(b"a", encode_value(1))
        with pytest.raises(SharedLogError, match="belongs to database 0"):
            second.set_immutable(b"a", encode_value(1))
        assert second.client.exists(b"a") == 0
        other = RedisLogBackend.from_url(db1, stream="db1-log")
        other.set_immutable(b"a", encode_value(2))
        assert other.position == 1 and first.position == 1
        other.close()
    finally:
        first.close()
        second.close()


def test_the_library_is_reloaded_when_missing_or_another_version(
        backend: RedisLogBackend, client: redis.Redis) -> None:
    client.function_flush()
    backend.set_immutable(b"a", encode_value(1))           # reloads and retries
    assert client.fcall_ro("tslog_version", 0) == VERSION.encode()
    client.function_load(f"#!lua name={LIBRARY_NAME}\nredis.register_function{{function_name="
                         "'tslog_version', flags={'no-writes'}, callback=function() "
                         "return 'old' end}", replace=True)
    fresh = RedisLogBackend(redis.Redis(connection_pool=client.connection_pool))
    assert client.fcall_ro("tslog_version", 0) == VERSION.encode()
    fresh.set_immutable(b"b", encode_value(2))
    assert backend.position == 2


def test_replicas_unconfirmed_raise_but_the_write_is_recorded(redis_url: str,
                                                              client: redis.Redis) -> None:
    b = RedisLogBackend.from_url(redis_url, replicas=1, replica_timeout=0.05)
    try:
        with pytest.raises(ReplicationError) as info:
            b.set_immutable(b"a", encode_value(1))
        assert info.value.position == 1 and info.value.acknowledged == 0
        assert "may not survive a failover" in str(info.value)
        assert client.get(b"a") == encode_value(1) and b.position == 1
        with pytest.raises(ReplicationError):
            b.sync()
    finally:
        b.close()


def test_monitors_read_the_stream(backend: RedisLogBackend) -> None:
    ts = TelescopeState(backend)
    other = TelescopeState(RedisLogBackend(redis.Redis(
        connection_pool=backend.client.connection_pool)))
    got: list[object] = []

    def wait() -> None:
        ts.wait_key("k", lambda v, t: v == 3, timeout=DEADLINE)
        got.append(ts.get_range("k", st=0))

    waiter = threading.Thread(target=wait)
    waiter.start()
    for i in range(1, 4):
        other.add("k", i, ts=float(i))
    waiter.join(DEADLINE)
    assert got == [[(1, 1.0), (2, 2.0), (3, 3.0)]]
    ts.wait_key("k", timeout=0)                        # already there: no wait


def test_time_travel_history_and_changes(backend: RedisLogBackend) -> None:
    ts = TelescopeState(backend)
    ts["a"] = 1
    ts.add("s", 1.0, ts=1.0)
    ts.delete("a")
    ts["a"] = 2
    view = backend.as_of(position=2)
    assert view.position == 2 and sorted(view.keys(b"*")) == [b"a", b"s"]
    assert view.get(b"a")[0] == encode_value(1)
    assert [e.kind for e in backend.history(b"a")] == ["set", "delete", "set"]
    changes = backend.changes(1, 4)
    assert changes.events == 3
    when = backend.events(2, 2)[0].recorded
    assert backend.resolve_time(when) >= 2


def test_a_replica_stops_on_a_diverged_stream(backend: RedisLogBackend,
                                              client: redis.Redis) -> None:
    ts = TelescopeState(backend)
    ts["a"] = 1
    ts.add("s", 1.0, ts=1.0)
    replica = StreamReplica()
    replica.apply(backend.read_stream())
    assert replica.position == 2
    # rewrite history: the stream's position 2 now holds another event
    log = redis.Redis(connection_pool=redis.ConnectionPool(
        **{**client.connection_pool.connection_kwargs, "db": log_db_for(0)}))
    entries = log.xrange(b"telstate-log")
    log.delete(b"telstate-log")
    for ident, fields in entries:
        log.xadd(b"telstate-log", fields, id=ident)
    # position 3: a sample for "a", which the replica holds as an immutable
    sample = struct.pack("<BdII", 2, 1.0, 1, 1) + b"a" + add_tail(encode_value(2.0), 5.0)
    log.xadd(b"telstate-log", {b"e": sample}, id=b"3-0")
    log.close()
    with pytest.raises(StreamDivergedError) as info:
        replica.apply(backend.read_stream_from_id(replica.last_id))
    assert info.value.position == 3 and replica.position == 2


def test_load_from_file_writes_events_not_restores(backend: RedisLogBackend, client: redis.Redis,
                                                   tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An RDB file loaded into a shared log becomes events, never a bypass of the log."""
    source = TelescopeState()
    source["config"] = {"a": 1}
    for i in range(5000):
        source.add("sensor", float(i), ts=float(i))
    source.set_indexed("table", "x", 1)
    source.set_indexed("table", "y", 2)
    path = tmp_path / "dump.rdb"
    from telstate_log.replay import export_backend

    export_backend(source.backend, path)
    assert backend.load_from_file(str(path)) == 3
    replica = StreamReplica()
    replica.apply(backend.read_stream())
    assert replica.position == backend.position == 1 + 5000 + 2
    assert sorted(replica.keys(b"*")) == [b"config", b"sensor", b"table"]
    assert replica.get_range(b"sensor", 0.0, np.inf, False, False) == \
        backend.get_range(b"sensor", 0.0, np.inf, False, False)
    assert backend.load_from_file(str(path)) == 3            # again: nothing new
    assert backend.position == 5003
    ts = TelescopeState(backend)
    ts.delete("config")
    ts["config"] = {"a": 2}
    with pytest.raises(ImmutableKeyError, match="config"):
        backend.load_from_file(str(path))


def test_sync_waits_for_every_connection_s_writes(redis_url: str) -> None:
    b = RedisLogBackend.from_url(redis_url, replicas=1, replica_timeout=0.05)
    try:
        with pytest.raises(ReplicationError, match="0 of 1 replica"):
            b.sync()
    finally:
        b.close()
    plain = RedisLogBackend.from_url(redis_url)
    plain.set_immutable(b"a", encode_value(1))
    assert plain.sync() == 1
    plain.close()


def test_a_session_registered_after_a_batch_gets_a_session_id(
        backend: RedisLogBackend, client: redis.Redis) -> None:
    """The stream's last entry may be a batch that began before the last position:
    a new writer's session record still gets an ID <position>-<n>, n >= 1."""
    values = [encode_value(float(i)) for i in range(5)]
    backend.add_mutable_many(b"s", values, np.arange(5.0))
    second = RedisLogBackend(redis.Redis(connection_pool=backend.client.connection_pool),
                             source="second")
    third = RedisLogBackend(redis.Redis(connection_pool=backend.client.connection_pool),
                            source="third")
    second.set_immutable(b"a", encode_value(1))
    records = stream_entries(client)
    assert [(r.position, r.seq) for r in records] == [(0, 1), (1, 0), (5, 1), (6, 0)]
    third.set_immutable(b"b", encode_value(2))
    assert [(r.position, r.seq) for r in stream_entries(client)][-2:] == [(6, 1), (7, 0)]
    sources = {backend.session_info(e.session)["source"] for e in backend.events()}
    assert sources == {"test-writer", "second", "third"}


def test_a_sample_write_reloads_a_lost_library(backend: RedisLogBackend,
                                               client: redis.Redis) -> None:
    """The one-call path of add_mutable leaves every error reply to the exchange."""
    backend.add_mutable(b"s", encode_value(1.0), 1.0)
    client.function_flush()
    backend.add_mutable(b"s", encode_value(2.0), 2.0)      # reloads and retries
    assert backend.position == 2
    backend.set_immutable(b"i", encode_value(1))
    with pytest.raises(ImmutableKeyError):
        backend.add_mutable(b"i", encode_value(2.0), 3.0)
    assert [r.position for r in stream_entries(client) if r.seq == 0] == [1, 2, 3]


def test_session_info_reads_the_stream_once_per_session(backend: RedisLogBackend,
                                                        client: redis.Redis) -> None:
    backend.set_immutable(b"a", encode_value(1))
    [event] = backend.events()
    assert backend.session_info(event.session)["source"] == "test-writer"
    client.config_resetstat()
    for _ in range(50):
        assert backend.session_info(event.session)["source"] == "test-writer"
    assert "cmdstat_xrange" not in client.info("commandstats")
    assert backend.session_info(event.session + 1) == {}      # unknown: not cached
