"""A mixed fleet: katsdptelstate 1.0.0 clients and shared-log writers on one database,
the recorder appending the katsdptelstate writes to the shared log's stream.

The stream's materialised state is compared with Redis's byte for byte; every
write must appear in the stream exactly once, the katsdptelstate writes in
their write order and under the recorder's session, the shared-log writers'
under their own.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

pytest.importorskip("katsdptelstate")

import katsdptelstate
from _cli_proc import cli_command, killed_on_error, terminate
from _import_export_helpers import backend_state
from _waiting import DEADLINE, wait_for
from katsdptelstate.encoding import encode_value

from telstate_log import SharedLogError, TelescopeState
from telstate_log.backends import RedisLogBackend, StreamReplica
from telstate_log.core._events import IMMUTABLE
from telstate_log.core._types import KeyType
from telstate_log.replay import Recorder, SharedLogSink

pytestmark = [pytest.mark.redis, pytest.mark.interop]

T0 = 1.7e9
WRITES = 600            # per writer; 5 kinds of write, interleaved
State = dict[bytes, tuple[str, Any]]


def redis_state(client: redis.Redis) -> State:
    """Every telescope-state key of the database, as Redis holds it."""
    out: State = {}
    for key in client.scan_iter():
        kind = client.type(key)
        if kind == b"string":
            out[key] = ("IMMUTABLE", client.get(key))
        elif kind == b"zset":
            out[key] = ("MUTABLE", sorted(client.zrange(key, 0, -1)))
        else:
            out[key] = ("INDEXED", client.hgetall(key))
    return out


def stream_state(replica: StreamReplica) -> State:
    """The state materialised from the stream, in :func:`redis_state`'s form."""
    return {key: (kind.name, sorted(value) if kind == KeyType.MUTABLE else value)
            for key, (kind, value) in backend_state(replica).items()}


def katsdp(url: str) -> Any:
    return katsdptelstate.TelescopeState(url)


def sources(log: RedisLogBackend) -> dict[int, str]:
    """Session id -> source label, for every session of the stream."""
    return {session: log.session_info(session).get("source", "")
            for session in {e.session for e in log.events()}}


def label(event: Any) -> tuple[Any, ...]:
    """What identifies a write: its kind, key and sub-key or sample timestamp."""
    detail = event.timestamp if event.kind == "add" else event.sub_key
    return (event.kind, event.key, detail)


def drain(recorder: Recorder, quiet: int = 3) -> None:
    """Step until `quiet` consecutive steps of 50 ms bring nothing."""
    idle = 0
    while idle < quiet:
        idle = 0 if recorder.step(0.05) else idle + 1


@pytest.fixture
def client(client: redis.Redis) -> Iterator[redis.Redis]:
    client.config_set("notify-keyspace-events", "")
    yield client
    client.config_set("notify-keyspace-events", "")


@pytest.fixture
def log(redis_url: str) -> Iterator[RedisLogBackend]:
    """A reader of the shared log (writes nothing)."""
    backend = RedisLogBackend.from_url(redis_url)
    yield backend
    backend.close()


# --------------------------------------------------------------- the fleet
def katsdp_writer(url: str, done: list[tuple[Any, ...]]) -> None:
    """katsdptelstate's writes, noting each that took effect, in order."""
    k = katsdp(url)
    for i in range(WRITES):
        kind = i % 5
        if kind == 0:
            k.add("shared_sensor", f"k{i}", ts=T0 + i)
            done.append(("add", b"shared_sensor", T0 + i))
        elif kind == 1:
            k.add("k_sensor", float(i), ts=T0 + i)
            done.append(("add", b"k_sensor", T0 + i))
        elif kind == 2:
            k.set_indexed("k_table", f"s{i}", i)
            done.append(("set_indexed", b"k_table", encode_value(f"s{i}")))
        elif kind == 3:
            k[f"k_imm_{i}"] = [i, "value"]
            done.append(("set", f"k_imm_{i}".encode(), None))
        else:
            try:
                k[f"race_{i // 5}"] = "katsdptelstate"
            except katsdptelstate.ImmutableKeyError:
                continue
            done.append(("set", f"race_{i // 5}".encode(), None))
    k.backend.client.close()


def log_writer(url: str, j: int, done: list[tuple[Any, ...]]) -> None:
    """A shared-log writer's writes (racing katsdptelstate for the race_* keys)."""
    backend = RedisLogBackend.from_url(url, source=f"writer-{j}")
    ts = TelescopeState(backend)
    for i in range(WRITES):
        kind = i % 5
        if kind == 0:
            ts.add("shared_sensor", f"w{j}-{i}", ts=T0 + 0.5 + i)
            done.append(("add", b"shared_sensor", T0 + 0.5 + i))
        elif kind == 1:
            ts.add(f"w{j}_sensor", float(i), ts=T0 + i)
            done.append(("add", f"w{j}_sensor".encode(), T0 + i))
        elif kind == 2:
            ts.set_indexed(f"w{j}_table", f"s{i}", i)
            done.append(("set_indexed", f"w{j}_table".encode(), encode_value(f"s{i}")))
        elif kind == 3:
            key = f"w{j}_tmp_{i}"
            ts[key] = i
            ts.delete(key)
            done += [("set", key.encode(), None), ("delete", key.encode(), None)]
        else:       # writer 0 aims ahead of katsdptelstate: the races go either way
            key = f"race_{min(i // 5 + 2 * (1 - j), WRITES // 5 - 1)}".encode()
            if backend.set_immutable(key, encode_value(f"writer-{j}")) is None:
                done.append(("set", key, None))
    backend.close()


def run_threads(*targets: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert not errors, errors


def test_mixed_fleet_enters_one_total_order(redis_url: str, client: redis.Redis,
                                            log: RedisLogBackend) -> None:
    k = katsdp(redis_url)
    k["before"] = "recorder started"            # recorded by the baseline
    recorder = Recorder.into_stream(redis.Redis.from_url(redis_url), keyspace_events=True)
    recorder.start()
    stop = threading.Event()
    failures: list[BaseException] = []

    def record() -> None:
        try:
            recorder.run(stop, poll=0.05)
        except BaseException as exc:
            failures.append(exc)
            raise

    thread = threading.Thread(target=record)
    thread.start()
    ours: list[tuple[Any, ...]] = []
    theirs: dict[int, list[tuple[Any, ...]]] = {0: [], 1: []}
    try:
        run_threads(lambda: katsdp_writer(redis_url, ours),
                    *(lambda j=j: log_writer(redis_url, j, theirs[j]) for j in theirs))
        final = redis_state(client)

        def caught_up() -> bool:
            assert not failures, failures
            return stream_state(log.replica()) == final

        wait_for(caught_up, what="the stream to hold Redis's state")
    finally:
        stop.set()
        thread.join(DEADLINE)
        recorder.close()
    assert not failures and redis_state(client) == final
    assert stream_state(log.replica()) == final

    # every write exactly once, each in its writer's session and order
    events = log.events()
    names = sources(log)
    by_source: dict[str, list[tuple[Any, ...]]] = {}
    for event in events:
        by_source.setdefault(names[event.session], []).append(label(event))
    recorded = by_source.pop(recorder.source)
    assert recorded == [("set", b"before", None), *ours]
    assert by_source == {f"writer-{j}": theirs[j] for j in theirs}
    writes = Counter((e.kind, e.key, e.sub_key, e.timestamp, e.value) for e in events)
    assert max(writes.values()) == 1
    # each message was observed, already in the stream, or of a key deleted meanwhile
    stats = recorder.stats
    assert stats.recorded == len(recorded) and stats.repairs == stats.deletes == 0
    assert stats.messages == len(ours) + stats.known + stats.unconfirmed
    assert stats.known >= 2 * 3 * WRITES // 5 and stats.unconfirmed <= 2 * WRITES // 5
    assert len([e for e in events if e.kind == "set" and e.key.startswith(b"race_")]) == \
        WRITES // 5

    # history names the writer of each event (the race winner's value is in Redis)
    for event in log.history(b"shared_sensor"):
        value = katsdptelstate.encoding.decode_value(event.value)
        assert names[event.session] == (recorder.source if value.startswith("k")
                                        else f"writer-{value[1]}")
    for i in range(WRITES // 5):
        (event,) = log.history(f"race_{i}".encode())
        winner = katsdptelstate.encoding.decode_value(client.get(f"race_{i}"))
        assert names[event.session] == (recorder.source if winner == "katsdptelstate"
                                        else winner)


# ------------------------------------------------------------ step by step
def test_baseline_deletes_and_known_writes(redis_url: str, client: redis.Redis,
                                           log: RedisLogBackend) -> None:
    k = katsdp(redis_url)
    w = RedisLogBackend.from_url(redis_url, source="writer")
    ts = TelescopeState(w)
    k["k_imm"] = 1
    for i in range(3):
        k.add("k_sensor", i, ts=T0 + i)
    ts["w_imm"] = 2
    ts.add("w_sensor", 1.0, ts=T0)
    ts.add("k_sensor", 9.0, ts=T0 + 9)          # a writer's sample on katsdptelstate's key
    with Recorder.into_stream(redis.Redis.from_url(redis_url), keyspace_events=True) as rec:
        # the baseline observed katsdptelstate's 4 writes, not the writer's 3
        assert rec.stats.recorded == 4 and log.position == 7
        assert stream_state(log.replica()) == redis_state(client)
        k.delete("k_imm")                       # seen by keyspace notification
        ts.delete("w_imm")                      # in the stream already
        k.add("k_sensor", 3.0, ts=T0 + 3)
        ts.add("w_sensor", 2.0, ts=T0 + 1)
        drain(rec)
        assert rec.stats.recorded == 6 and rec.stats.deletes == 1
        assert rec.stats.known == 2 and rec.stats.unconfirmed == 0   # the writer's two
        assert stream_state(log.replica()) == redis_state(client)
        names = sources(log)
        assert [(e.kind, names[e.session]) for e in log.history(b"k_imm")] == \
            [("set", rec.source), ("delete", rec.source)]
        assert [(e.kind, names[e.session]) for e in log.history(b"w_imm")] == \
            [("set", "writer"), ("delete", "writer")]
        assert [names[e.session] for e in log.history(b"k_sensor")] == \
            ["writer", rec.source, rec.source, rec.source, rec.source]
    assert log.position == 11
    w.close()


def test_recording_through_a_writers_backend(redis_url: str, log: RedisLogBackend) -> None:
    w = RedisLogBackend.from_url(redis_url, source="writer")
    w.set_immutable(b"a", encode_value(1))
    katsdp(redis_url)["b"] = 2
    with Recorder(redis.Redis.from_url(redis_url), w) as rec:
        assert rec.stats.recorded == 1
    w.set_immutable(b"c", encode_value(3))
    assert not w.closed and w.source == "writer"
    names = sources(log)
    assert [(e.key, names[e.session]) for e in log.events()] == \
        [(b"a", "writer"), (b"b", rec.source), (b"c", "writer")]
    w.close()


class Interfering(RedisLogBackend):
    """A backend whose next replica() first runs `meanwhile` (a write by another writer
    after the sink watched the keys and read Redis, before it decided)."""

    meanwhile: Callable[[], None] | None = None

    def replica(self) -> StreamReplica:
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()
        return super().replica()


def test_a_write_between_watch_and_exec_makes_the_batch_decide_again(
        redis_url: str, client: redis.Redis, log: RedisLogBackend) -> None:
    k = katsdp(redis_url)
    w = RedisLogBackend.from_url(redis_url, source="writer")
    sink = SharedLogSink(Interfering(redis.Redis.from_url(redis_url)), own=True)
    with Recorder(redis.Redis.from_url(redis_url), sink) as rec:
        k.add("sensor", 1.0, ts=T0)
        k["kept"] = "value"
        sink.backend.meanwhile = lambda: w.delete(b"sensor")
        drain(rec)
        # the first decision (observe the sample) was aborted by the delete; the
        # second found the sample gone: recording it after the delete would have
        # left the stream with a key Redis does not have
        assert rec.stats.unconfirmed == 1 and rec.stats.recorded == 1
    assert [e.kind for e in log.events()] == ["delete", "set"]
    assert stream_state(log.replica()) == redis_state(client) == {
        b"kept": ("IMMUTABLE", encode_value("value"))}
    w.close()


def test_one_recorder_per_stream(redis_url: str, client: redis.Redis) -> None:
    first = Recorder.into_stream(redis.Redis.from_url(redis_url))
    second = Recorder.into_stream(redis.Redis.from_url(redis_url))
    other = Recorder.into_stream(redis.Redis.from_url(redis_url), "another-stream")
    try:
        first.start()
        with pytest.raises(SharedLogError, match="already recorded by"):
            second.start()
        other.start()                       # another stream of the same database
    finally:
        for recorder in (first, second, other):
            recorder.close()
    with Recorder.into_stream(redis.Redis.from_url(redis_url)):
        pass                                # closing gave the stream up


def test_refuses_the_shared_log_of_another_database(redis_url: str) -> None:
    backend = RedisLogBackend.from_url(redis_url.rsplit("/", 1)[0] + "/1")
    assert backend.target.data_db == 1
    try:
        with pytest.raises(ValueError, match="same server, same db"):
            Recorder(redis.Redis.from_url(redis_url), backend)
    finally:
        backend.close()


def test_observe_records_an_event_without_a_change(redis_url: str, client: redis.Redis,
                                                   log: RedisLogBackend) -> None:
    katsdp(redis_url)["k"] = "v"
    assert log.position == 0
    assert log.observe(IMMUTABLE, b"k", encode_value("v")) == 1
    assert stream_state(log.replica()) == redis_state(client)
    assert log.session_info(log.events()[0].session)["source"] == ""


def test_record_command_into_a_stream(redis_url: str, client: redis.Redis,
                                      log: RedisLogBackend) -> None:
    k = katsdp(redis_url)
    k["before"] = 1
    proc = subprocess.Popen(cli_command("record", redis_url, "--stream", "telstate-log",
                                        "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with killed_on_error(proc):
        wait_for(lambda: log.position == 1, what="the baseline")
        for i in range(50):
            k.add("sensor", i, ts=T0 + i)
        wait_for(lambda: log.position == 51, what="the samples")
        out, _ = terminate(proc, DEADLINE)
    summary = json.loads(out)
    assert summary["stream"] == "telstate-log" and summary["log"] is None
    assert summary["recorded"] == summary["position"] == 51
    assert stream_state(log.replica()) == redis_state(client)
    both = subprocess.run(cli_command("record", redis_url, "log", "--stream", "s"),
                          capture_output=True, text=True, timeout=DEADLINE)
    assert both.returncode == 2 and "either LOG or --stream" in both.stderr
