"""Materialised followers of a shared log (StreamFollower, materialize=True).

* Applying raw entries in bulk (StreamReplica.apply_entries) gives what
  applying the decoded records one by one gives -- state, positions,
  recorded times, errors and where they stop -- on random streams with
  runs of samples, duplicates, samples out of order, type conflicts,
  gaps, deletes, clears, bad timestamps and empty values.
* A follower on a real redis-server holds the state Redis holds, feeds
  monitors and ``wait_key``, rides out killed connections, and stops with
  StreamDivergedError (raised by every read after) on a gap or a restart
  that lost events.
* ``RedisLogBackend(materialize=True)`` reads its own writes, and someone
  else's value that one of its writes found.
* A redis-server restarted (AOF, appendfsync always) in the middle of a run:
  monitors, ``wait_key`` and a follower miss no event.
"""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgpack
import pytest
import redis
from _redis import RedisServer, require_redis
from _shared_writer_proc import redis_state, state_of
from _waiting import DEADLINE, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telstate_log import StreamDivergedError, TelescopeState, encode_value
from telstate_log.backends import RedisLogBackend, StreamFollower, StreamReplica
from telstate_log.backends._log_functions import log_db_for
from telstate_log.backends._stream_reader import CLIENT_NAME
from telstate_log.core._errors import ConnectionError, ReadOnlyError
from telstate_log.core._events import ADD, CLEAR, DELETE, IMMUTABLE, INDEXED, SESSION
from telstate_log.core._stream_format import add_tail, decode_record, indexed_tail
from telstate_log.core._types import MutableKeyUpdate

_HEAD = struct.Struct("<BdII")  # kind, recorded, session, key length (_stream_format)


# ------------------------------------------------------------- pure: bulk apply
def _body(kind: int, recorded: float, key: bytes, tail: bytes, session: int = 1) -> bytes:
    return _HEAD.pack(kind, recorded, session, len(key)) + key + tail


_KEYS = [b"a", b"b", b"cc", b"sensor.long.name", *(b"k%02d" % i for i in range(40))]
Op = tuple[str, int, int, int]  # kind, key index, timestamp (or sub-key), value length


def _run(keys: int) -> st.SearchStrategy[list[Op]]:
    """A run of samples (of the first `keys` keys) with increasing timestamps from a
    random start: runs of one key, or of many with a few samples each."""
    samples = st.lists(st.tuples(st.integers(0, keys - 1), st.integers(1, 3)),
                       min_size=25, max_size=90)
    return st.tuples(st.integers(0, 40), samples).map(
        lambda s: [("add", k, s[0] + i, size) for i, (k, size) in enumerate(s[1])])


_single = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 3), st.integers(0, 60), st.integers(0, 2)),
    st.tuples(st.just("set"), st.integers(0, 5), st.just(0), st.just(1)),
    st.tuples(st.just("indexed"), st.integers(0, 5), st.integers(0, 3), st.just(1)),
    st.tuples(st.just("session"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("gap"), st.just(0), st.just(0), st.just(1)),
    st.tuples(st.just("bad"), st.integers(0, 3), st.just(0), st.just(1)),
    st.tuples(st.sampled_from(["delete", "clear"]), st.integers(0, 5), st.just(0), st.just(0)),
)
_gap_in_run = st.tuples(_run(4), _run(4)).map(  # a position skipped inside a run
    lambda r: [*r[0], ("gap", 0, r[0][-1][2] + 1, 1), *r[1]])
_ops = st.lists(st.one_of(_run(1), _run(4), _run(44), _gap_in_run,
                          st.lists(_single, min_size=1, max_size=3)),
                max_size=6).map(lambda parts: [op for part in parts for op in part])


def _stream(ops: list[Op], monotonic: bool) -> tuple[list[bytes], list[bytes]]:
    """Entry IDs and bodies for `ops` (timestamps: their own, or increasing throughout)."""
    ids, bodies = [], []
    position, seq, recorded = 0, 0, 1000.0
    for n, (kind, k, t, size) in enumerate(ops):
        recorded += 0.25
        key = _KEYS[k]
        if kind == "session":
            seq += 1
            ids.append(b"%d-%d" % (position, seq))
            bodies.append(_body(SESSION, recorded, b"", msgpack.packb({"source": f"s{n}"}),
                                session=seq))
            continue
        position += 2 if kind == "gap" else 1
        seq = 0
        ids.append(b"%d-0" % position)
        if kind in ("add", "gap"):
            stamp = float(n) if monotonic else float(t)
            bodies.append(_body(ADD, recorded, key, add_tail(b"v" * size, stamp)))
        elif kind == "bad":
            bodies.append(_body(ADD, recorded, key, add_tail(b"v", -1.0 if k else math.nan)))
        elif kind == "set":
            bodies.append(_body(IMMUTABLE, recorded, key, b"x"))
        elif kind in ("delete", "clear"):
            bodies.append(_body(DELETE, recorded, key, b"") if kind == "delete"
                          else _body(CLEAR, recorded, b"", b""))
        else:
            bodies.append(_body(INDEXED, recorded, key, indexed_tail(b"s%d" % t, b"y")))
    return ids, bodies


def _outcome(replica: StreamReplica, error: BaseException | None) -> Any:
    positions = range(replica.position + 1)
    times = [1000.0 + q / 4 for q in range(0, 4 * len(positions), 3)] if replica.position \
        else []
    return (type(error), getattr(error, "position", None), replica.position, replica.last_id,
            state_of(replica), [state_of(replica.as_of(position=p)) for p in positions[::7]],
            [replica.resolve_time(when) for when in times], replica.session_ids())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ops, st.booleans(), st.integers(1, 120))
def test_apply_entries_as_one_by_one(ops: list[Op], monotonic: bool, chunk: int) -> None:
    ids, bodies = _stream(ops, monotonic)
    one, bulk = StreamReplica(), StreamReplica()
    errors: list[BaseException | None] = [None, None]
    try:
        for start in range(0, len(ids), chunk):
            one.apply(decode_record(i, body) for i, body in
                      zip(ids[start:start + chunk], bodies[start:start + chunk]))
    except Exception as exc:
        errors[0] = exc
    try:
        for start in range(0, len(ids), chunk):
            bulk.apply_entries(ids[start:start + chunk], bodies[start:start + chunk])
    except Exception as exc:
        errors[1] = exc
    assert _outcome(bulk, errors[1]) == _outcome(one, errors[0])


def test_bulk_runs_notify_monitors_in_order() -> None:
    ids, bodies = _stream([("add", k % 3, 0, 1) for k in range(200)], monotonic=True)
    replica = StreamReplica()
    one = replica.monitor_keys([b"a"])
    every = replica.watch_all()
    assert next(one) is not None and next(every) is not None
    replica.apply_entries(ids, bodies)
    seen = [one.send(0.0) for _ in range(67)]
    assert [(u.key, u.timestamp) for u in seen if isinstance(u, MutableKeyUpdate)] == \
        [(b"a", float(n)) for n in range(0, 200, 3)]
    assert one.send(0.0) is None
    everything = [every.send(0.0) for _ in range(200)]
    assert [u.timestamp for u in everything if isinstance(u, MutableKeyUpdate)] == \
        [float(n) for n in range(200)]


# --------------------------------------------------------------- real Redis
def _log_client(url: str) -> redis.Redis:
    """A client of the log db of the telstate db 0 at `url`."""
    return redis.Redis(host="127.0.0.1", port=urlsplit(url).port or 6379, db=log_db_for(0))


@pytest.fixture
def log_url(redis_url: str) -> str:
    """`redis_url`'s telstate db and its shared log's db, both empty."""
    assert urlsplit(redis_url).path == "/0"
    client = _log_client(redis_url)
    client.flushdb()
    client.close()
    return redis_url


@pytest.fixture
def writer(log_url: str) -> Iterator[RedisLogBackend]:
    backend = RedisLogBackend.from_url(log_url, source="test-writer")
    yield backend
    backend.close()


def _fill(b: RedisLogBackend, start: int, n: int) -> None:
    for i in range(start, start + n):
        b.add_mutable(b"sensor", encode_value(i), float(i))


@pytest.mark.redis
def test_follower_holds_redis_state(log_url: str, writer: RedisLogBackend) -> None:
    early = StreamFollower.from_url(log_url)
    other = RedisLogBackend.from_url(log_url, source="other")
    try:
        writer.set_immutable(b"imm", encode_value({"a": 1}))
        _fill(writer, 0, 300)
        writer.add_mutable_many(b"batch", [encode_value(i) for i in range(50)],
                                [float(i) for i in range(50)])
        other.set_indexed(b"idx", encode_value("x"), encode_value(1))
        middle, middle_state = writer.position, redis_state(log_url)
        other.add_mutable(b"sensor", encode_value(-1), 0.5)  # out of order
        writer.delete(b"imm")
        other.set_immutable(b"imm", encode_value("again"))
        late = StreamFollower.from_url(log_url)
        expected = redis_state(log_url)
        assert early.sync() == late.position == writer.position
        assert state_of(early) == state_of(late) == expected
        assert state_of(early.as_of(position=middle)) == middle_state
        assert TelescopeState(late)["imm"] == "again"
        writer.clear()
        early.sync()
        assert early.keys(b"*") == []
        sources = {late.session_info(s)["source"] for s in late.replica.session_ids()}
        assert sources == {"test-writer", "other"}
        with pytest.raises(ReadOnlyError):
            late.set_immutable(b"x", b"y")
        late.close()
        with pytest.raises(ConnectionError):
            late.get(b"sensor")
    finally:
        early.close()
        other.close()


@pytest.mark.redis
def test_follower_wait_key_and_monitor(log_url: str, writer: RedisLogBackend) -> None:
    follower = StreamFollower.from_url(log_url)
    try:
        ts = TelescopeState(follower)
        monitor = follower.monitor_keys([b"sensor"])
        assert next(monitor) is not None
        found: list[bool] = []

        def wait() -> None:
            ts.wait_key("sensor", lambda v, t: v == 99, timeout=DEADLINE)
            found.append(True)
        waiter = threading.Thread(target=wait)
        waiter.start()
        _fill(writer, 0, 100)
        waiter.join(DEADLINE)
        assert found == [True] and ts["sensor"] == 99
        updates = [monitor.send(DEADLINE) for _ in range(100)]
        assert [u.timestamp for u in updates if isinstance(u, MutableKeyUpdate)] == \
            [float(i) for i in range(100)]
    finally:
        follower.close()


def _kill_follower_connections(client: redis.Redis) -> int:
    ids = [c["id"] for c in client.client_list() if c.get("name") == CLIENT_NAME]
    for ident in ids:
        client.client_kill_filter(_id=ident)
    return len(ids)


@pytest.mark.redis
def test_follower_rides_out_killed_connections(log_url: str, writer: RedisLogBackend) -> None:
    follower = StreamFollower.from_url(log_url)
    admin = redis.Redis.from_url(log_url)
    try:
        for round_ in range(5):
            _fill(writer, round_ * 200, 100)
            assert _kill_follower_connections(admin) == 1
            _fill(writer, round_ * 200 + 100, 100)
            wait_for(lambda: follower.position == writer.position, what="the follower")
        assert state_of(follower) == redis_state(log_url)
        assert len(follower.get_range(b"sensor", 0.0, math.inf, False, True) or ()) == 1000
    finally:
        admin.close()
        follower.close()


@pytest.mark.redis
def test_follower_stops_at_a_gap(log_url: str, writer: RedisLogBackend) -> None:
    _fill(writer, 0, 10)
    admin = _log_client(log_url)
    assert admin.xtrim(b"telstate-log", minid=b"5-0", approximate=False) == 5
    admin.close()
    with pytest.raises(StreamDivergedError) as info:
        StreamFollower.from_url(log_url)
    assert info.value.position == 5


@pytest.mark.redis
def test_follower_notices_a_stream_that_lost_events(log_url: str,
                                                    writer: RedisLogBackend) -> None:
    follower = StreamFollower.from_url(log_url)
    try:
        _fill(writer, 0, 20)
        follower.sync()
        admin = _log_client(log_url)
        # the log's history is gone (as after a restart without persistence)
        assert admin.delete(b"telstate-log", b"telstate-log:meta") == 2
        admin.close()
        fresh = RedisLogBackend.from_url(log_url, source="new history")
        _fill(fresh, 100, 5)
        fresh.close()
        wait_for(lambda: follower.error is not None, what="the follower to stop")
        for _ in range(2):  # every read after raises it
            with pytest.raises(StreamDivergedError) as info:
                follower.get(b"sensor")
        assert info.value.position == 6
    finally:
        follower.close()


@pytest.mark.redis
def test_materialize_reads_own_writes(log_url: str, writer: RedisLogBackend) -> None:
    backend = RedisLogBackend.from_url(log_url, source="rw", materialize=True)
    try:
        ts = TelescopeState(backend)
        for i in range(200):
            ts.add("mine", i, ts=float(i))
            assert ts["mine"] == i
            ts.set_indexed("table", i, i)
            assert ts.get_indexed("table", i) == i
        for i in range(50):
            # Someone else's value, found by a write that then changed nothing.
            writer.set_immutable(b"theirs%d" % i, encode_value(i))
            assert backend.set_immutable(b"theirs%d" % i, encode_value(-1)) == encode_value(i)
            assert ts[f"theirs{i}"] == i
        ts.delete("mine")
        assert "mine" not in ts
        assert state_of(backend) == redis_state(log_url)
        assert isinstance(backend.follower, StreamFollower)
    finally:
        backend.close()


# --------------------------------------------------------------- restart
@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with every write fsynced to its AOF before the reply."""
    require_redis()
    server = RedisServer(tmp_path, extra_args=("--appendonly", "yes",
                                               "--appendfsync", "always")).start()
    yield server
    server.cleanup()


@pytest.mark.redis
@pytest.mark.slow
def test_restart_misses_no_event(aof_redis: RedisServer) -> None:
    url = aof_redis.url
    count = 3000
    writer = RedisLogBackend.from_url(url, source="writer")
    watcher = RedisLogBackend.from_url(url)
    follower = StreamFollower.from_url(url)
    written = [0]
    seen: dict[str, list[float]] = {"monitor": [], "follower": []}
    waited: list[bool] = []
    try:
        def wait_after() -> None:
            TelescopeState(watcher).wait_key("after", timeout=DEADLINE)
            waited.append(True)

        def collect(name: str, monitor: Any) -> None:
            while len(seen[name]) < count:
                update = monitor.send(DEADLINE)
                if isinstance(update, MutableKeyUpdate):
                    seen[name].append(update.timestamp)

        monitors = {"monitor": watcher.monitor_keys([b"k"]),
                    "follower": follower.monitor_keys([b"k"])}
        for monitor in monitors.values():
            assert next(monitor) is not None  # from here on, every update is reported
        threads = [
            *(threading.Thread(target=collect, args=item) for item in monitors.items()),
            threading.Thread(target=wait_after)]
        for thread in threads:
            thread.start()

        def write() -> None:
            for i in range(count):
                while True:
                    try:
                        writer.add_mutable(b"k", encode_value(i), float(i))
                        break
                    except (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError):
                        continue  # the server is restarting: the same write again
                written[0] = i + 1
            writer.set_immutable(b"after", encode_value(True))

        writing = threading.Thread(target=write)
        writing.start()
        wait_for(lambda: written[0] >= 200, what="a first part of the writes")
        aof_redis.restart()
        assert written[0] < count  # (so events were written before and after it)
        writing.join(DEADLINE)
        for thread in threads:
            thread.join(DEADLINE)
        assert written[0] == count and waited == [True]
        assert seen["monitor"] == seen["follower"] == [float(i) for i in range(count)]
        follower.sync()
        assert state_of(follower) == redis_state(url)
        assert follower.error is None
    finally:
        follower.close()
        watcher.close()
        writer.close()

