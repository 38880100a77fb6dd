"""The async shared-log backend (telstate_log.aio.RedisLogBackend) on a real redis-server.

Every test runs under asyncio (the redis.asyncio link) and under trio (the
worker-thread link over a sync backend), through ``from_url`` as users call
it.  The exchanges are the sync backend's, so these tests exercise the
driver: writes recorded as events (and not recorded when they change
nothing), the position it knows, history and time travel (a large catch-up
applied off the event loop), monitors fed by XREAD -- including across a
killed connection and a server restart with AOF, where no event may be
missed -- replication errors, closing, and the choice of link per loop.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
import redis
import redis.asyncio
from _aio_redis_cases import check_first_contact_failure, check_operations, next_update
from _redis import RedisServer, require_redis
from _redis_cluster import RedisCluster, require_sentinel
from _waiting import DEADLINE, wait_until

import telstate_log
import telstate_log.aio
from telstate_log import ReplicationError
from telstate_log.aio import RedisLogBackend
from telstate_log.backends import (
    ImmutableKeyUpdate,
    IndexedKeyUpdate,
    KeyUpdateBase,
    MutableKeyUpdate,
)
from telstate_log.backends import RedisLogBackend as SyncRedisLogBackend
from telstate_log.backends._log_functions import log_db_for
from telstate_log.backends.aio._redis_log import APPLY_INLINE

pytestmark = [pytest.mark.redis, pytest.mark.anyio]


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisLogBackend]:
    backend = await RedisLogBackend.from_url(redis_url, source="aio-test")
    yield backend
    backend.close()
    await backend.wait_closed()


@pytest.fixture
def aof_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server whose every write is in its append-only file."""
    require_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis-aof"),
                         extra_args=("--appendonly", "yes", "--appendfsync", "always"))
    yield server.start()
    server.cleanup()


async def _sync_writer(url: str, source: str) -> SyncRedisLogBackend:
    return await anyio.to_thread.run_sync(
        lambda: SyncRedisLogBackend.from_url(url, source=source))


# ----------------------------------------------------------------- the links
async def test_link_follows_the_event_loop(anyio_backend: str, backend: RedisLogBackend,
                                           redis_url: str) -> None:
    if anyio_backend == "trio":
        assert isinstance(backend.to_sync(), SyncRedisLogBackend)  # worker threads
        with pytest.raises(RuntimeError, match=r"asyncio.*trio.*from_url"):
            RedisLogBackend(redis.asyncio.Redis.from_url(redis_url))
    else:
        with pytest.raises(TypeError, match=r"redis\.asyncio"):
            backend.to_sync()
    assert repr(backend).endswith("stream='telstate-log'>")


def test_refused_outside_an_event_loop(redis_url: str) -> None:
    with pytest.raises(RuntimeError, match="running asyncio event loop"):
        RedisLogBackend(redis.asyncio.Redis.from_url(redis_url))


async def test_first_contact_failure() -> None:
    await check_first_contact_failure(RedisLogBackend.from_url)


# ------------------------------------------------------------------- writes
async def test_operations(backend: RedisLogBackend, client: redis.Redis) -> None:
    """The byte-level contract (the shared check of the async Redis backends)."""
    await check_operations(backend, client)
    kinds = [e.kind for e in await backend.events()]
    assert kinds == ["set", "add", "add", "set_indexed", "delete", "clear"]


async def test_writes_are_events(backend: RedisLogBackend) -> None:
    assert backend.position == 0
    assert await backend.set_immutable(b"imm", b"\xff\x01") is None
    assert await backend.set_immutable(b"imm", b"\xff\x01") == b"\xff\x01"  # no event
    assert backend.position == 1
    await backend.add_mutable(b"s", b"\xff\x01", 1.0)
    await backend.add_mutable(b"s", b"\xff\x01", 1.0)                    # duplicate
    assert await backend.add_mutable_many(b"s", [b"\xff\x01", b"\xff\x02", b"\xff\x03"],
                                          [1.0, 2.0, 3.0]) == 2
    assert await backend.add_mutable_many(b"s", [], []) == 0
    assert backend.position == 4                                          # (a batch: 3, 4)
    with pytest.raises(telstate_log.ImmutableKeyError):
        await backend.add_mutable(b"imm", b"\xff\x02", 1.0)               # refused
    await backend.delete(b"nothing")                                      # changed nothing
    assert await backend.last_position() == await backend.sync() == backend.position == 4
    events = await backend.events()
    assert [(e.position, e.kind, e.key, e.timestamp) for e in events] == [
        (1, "set", b"imm", None), (2, "add", b"s", 1.0), (3, "add", b"s", 2.0),
        (4, "add", b"s", 3.0)]
    assert len({e.session for e in events}) == 1


async def test_concurrent_first_writes_register_one_session(backend: RedisLogBackend,
                                                            client: redis.Redis) -> None:
    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(backend.set_immutable, b"k%d" % i, b"\xff\x01")
    assert {e.session for e in await backend.events()} == {1}
    log = redis.Redis(connection_pool=redis.ConnectionPool(
        **{**client.connection_pool.connection_kwargs, "db": log_db_for(0)}))
    assert len(log.xrange(b"telstate-log")) == 11                  # 1 session + 10 events
    log.close()


async def test_position_knows_other_writers_only_when_asked(backend: RedisLogBackend,
                                                            redis_url: str) -> None:
    other = await _sync_writer(redis_url, "other")
    await anyio.to_thread.run_sync(other.set_immutable, b"theirs", b"\xff\x01")
    assert backend.position == 0                 # a property cannot ask the server...
    assert await backend.last_position() == 1    # ...this can
    assert backend.position == 1
    other.close()


async def test_replication_error(redis_url: str) -> None:
    """No replica acknowledges: the write is applied and recorded, and says so."""
    backend = await RedisLogBackend.from_url(redis_url, replicas=1, replica_timeout=0.05)
    with pytest.raises(ReplicationError) as info:
        await backend.set_immutable(b"k", b"\xff\x01")
    assert (info.value.position, info.value.acknowledged) == (1, 0)
    assert await backend.get(b"k") == (b"\xff\x01", None)
    with pytest.raises(ReplicationError):
        await backend.sync()
    backend.close()
    await backend.wait_closed()


# ----------------------------------------------------------- history, travel
async def test_history_names_each_writer(backend: RedisLogBackend, redis_url: str) -> None:
    other = await _sync_writer(redis_url, "sync-writer")
    ts = telstate_log.aio.TelescopeState(backend)
    await ts.add("sensor", 1.0, ts=10.0)
    await anyio.to_thread.run_sync(lambda: telstate_log.TelescopeState(other).add(
        "sensor", 2.0, ts=11.0))
    await ts.set_indexed("idx", "a", 1)
    await ts.set_indexed("idx", "b", 2)
    history = await ts.history("sensor")
    assert [(h.value, h.source) for h in history] == [(1.0, "aio-test"), (2.0, "sync-writer")]
    assert [h.value for h in await ts.history("idx", "b")] == [2]
    audit = await ts.audit(since=2, until=3)
    assert [h.position for h in audit] == [2, 3]
    session = await backend.session_info((await backend.events(2, 2))[0].session)
    assert session["source"] == "sync-writer"
    assert await backend.session_info(999) == {}
    other.close()


async def test_time_travel(backend: RedisLogBackend) -> None:
    ts = telstate_log.aio.TelescopeState(backend)
    await ts.set("a", 1)
    await ts.add("s", 1.0, ts=1.0)
    before = time.time()
    await ts.add("s", 2.0, ts=2.0)
    await ts.delete("a")
    then = await ts.as_of(2)
    assert then.position == 2
    assert await then.get("a") == 1
    assert await then.get_range("s", st=0) == [(1.0, 1.0)]
    now = await ts.as_of(4)
    assert not await now.exists("a")
    assert await backend.resolve_time(before) == 2      # server clock: may lag ours a bit
    changes = await ts.changes(2, 4)
    assert changes.keys_deleted == ["a"] and changes.samples_added == {"s": 1}
    assert backend.position == 4


async def test_large_catch_up_is_applied_off_the_loop(backend: RedisLogBackend,
                                                      redis_url: str) -> None:
    """Chunks of more than APPLY_INLINE entries go to a worker thread; small ones not."""
    loop_thread = threading.get_ident()
    replica = await backend.replica()
    applied: list[tuple[int, bool]] = []
    real = replica.apply_entries

    def recording(ids: list[bytes], bodies: list[bytes]) -> int:
        applied.append((len(ids), threading.get_ident() == loop_thread))
        return real(ids, bodies)

    replica.apply_entries = recording  # type: ignore[method-assign]
    other = await _sync_writer(redis_url, "bulk")
    count = 3 * APPLY_INLINE

    def write_many() -> None:
        for i in range(count):
            other.add_mutable(b"bulk", b"\xff%d" % i, float(i))

    await anyio.to_thread.run_sync(write_many)
    view = await backend.as_of(count)
    assert len(await view.get_range(b"bulk", 0.0, math.inf, False, False)) == count
    await backend.set_immutable(b"one", b"\xff\x01")
    assert (await backend.as_of(count + 1)).position == count + 1
    # (each writer's session record is an entry too, before its first event)
    assert applied == [(count + 1, False), (2, True)]
    other.close()


# ----------------------------------------------------------------- monitors
async def test_monitor_protocol(backend: RedisLogBackend) -> None:
    monitor = backend.monitor_keys([b"s", b"i", b"x"])
    assert type(await next_update(monitor)) is KeyUpdateBase          # check now
    await backend.add_mutable(b"other", b"\xff\x01", 1.0)             # not watched
    await backend.add_mutable(b"s", b"\xff\x02", 2.0)
    update = await next_update(monitor)
    assert isinstance(update, MutableKeyUpdate)
    assert (update.key, update.value, update.timestamp) == (b"s", b"\xff\x02", 2.0)
    await backend.add_mutable(b"s", b"\xff\x02", 2.0)                 # duplicate: nothing
    await backend.set_immutable(b"i", b"\xff\x03")
    update = await next_update(monitor)
    assert isinstance(update, ImmutableKeyUpdate) and update.value == b"\xff\x03"
    await backend.set_indexed(b"x", b"\xa1k", b"\xff\x04")
    update = await next_update(monitor)
    assert isinstance(update, IndexedKeyUpdate) and update.sub_key == b"\xa1k"
    await backend.add_mutable_many(b"s", [b"\xff\x05", b"\xff\x06"], [5.0, 6.0])
    assert [(await next_update(monitor)).timestamp for _ in range(2)] == [5.0, 6.0]
    await backend.delete(b"i")
    assert type(await next_update(monitor)) is KeyUpdateBase          # re-read: deleted
    await monitor.aclose()


async def test_wait_key_wakes_on_another_writer(backend: RedisLogBackend,
                                                redis_url: str) -> None:
    other = await _sync_writer(redis_url, "late")
    ts = telstate_log.aio.TelescopeState(backend)
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ts.wait_key, "late_key", lambda value, ts: value == 42)
            await anyio.to_thread.run_sync(
                lambda: telstate_log.TelescopeState(other).set("late_key", 42))
    other.close()


def _blocked_clients(client: redis.Redis) -> int:
    """Connections the server holds blocked (a monitor waiting in XREAD)."""
    return sum("b" in entry["flags"] for entry in client.client_list())


async def test_monitor_survives_a_killed_connection(backend: RedisLogBackend,
                                                    client: redis.Redis) -> None:
    """The monitor's connection dies while it waits in XREAD: it reconnects and
    resumes after the last entry it saw."""
    monitor = backend.monitor_keys([b"k"])
    await next_update(monitor)
    await backend.add_mutable(b"k", b"\xff\x01", 1.0)
    assert (await next_update(monitor, MutableKeyUpdate)).value == b"\xff\x01"
    got: list[bytes] = []

    async def consume() -> None:
        async for update in monitor:
            if isinstance(update, MutableKeyUpdate):
                got.append(update.value)
                if len(got) == 2:
                    return

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await wait_until(lambda: _blocked_clients(client) == 1,
                             what="the monitor to wait in XREAD")
            assert client.client_kill_filter(_type="normal", skipme=True) >= 1
            await backend.add_mutable(b"k", b"\xff\x02", 2.0)
            await backend.add_mutable(b"k", b"\xff\x03", 3.0)
    assert got == [b"\xff\x02", b"\xff\x03"]
    await monitor.aclose()


async def test_monitor_misses_nothing_across_a_restart(aof_redis: RedisServer) -> None:
    """Events written before and after a restart (AOF on), while the monitor was
    not reading, are all reported, in order, once."""
    backend = await RedisLogBackend.from_url(aof_redis.url)
    monitor = backend.monitor_keys([b"k"])
    await next_update(monitor)
    await backend.add_mutable(b"k", b"\xff\x01", 1.0)
    assert (await next_update(monitor, MutableKeyUpdate)).timestamp == 1.0
    await backend.add_mutable(b"k", b"\xff\x02", 2.0)                 # not read yet
    await anyio.to_thread.run_sync(aof_redis.restart)
    await backend.add_mutable(b"k", b"\xff\x03", 3.0)                 # after the restart
    got = [(await next_update(monitor, MutableKeyUpdate)).timestamp for _ in range(2)]
    assert got == [2.0, 3.0]
    await backend.add_mutable(b"k", b"\xff\x04", 4.0)
    assert (await next_update(monitor, MutableKeyUpdate)).timestamp == 4.0
    assert [e.position for e in await backend.events()] == [1, 2, 3, 4]
    await monitor.aclose()
    backend.close()
    await backend.wait_closed()


async def test_close_ends_waits(backend: RedisLogBackend) -> None:
    ts = telstate_log.aio.TelescopeState(backend)
    errors: list[BaseException] = []
    started = anyio.Event()

    async def wait() -> None:
        try:
            monitor = backend.monitor_keys([b"never"])
            await next_update(monitor)                                # reading from here on
            started.set()
            await next_update(monitor, MutableKeyUpdate)
        except telstate_log.ConnectionError as exc:
            errors.append(exc)

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await started.wait()
            backend.close()
            await backend.wait_closed()
    assert len(errors) == 1 and "closed" in str(errors[0])
    with pytest.raises(telstate_log.ConnectionError):
        await ts.wait_key("never")


async def test_streams_are_separate(redis_url: str) -> None:
    one = await RedisLogBackend.from_url(redis_url, stream="one")
    two = await RedisLogBackend.from_url(redis_url, stream="two")
    await one.set_immutable(b"a", b"\xff\x01")
    await two.set_immutable(b"b", b"\xff\x02")
    assert [e.key for e in await one.events()] == [b"a"]
    assert [e.key for e in await two.events()] == [b"b"]
    assert sorted(await one.keys(b"*")) == [b"a", b"b"]       # one telstate database
    for b in (one, two):
        b.close()
        await b.wait_closed()


# ----------------------------------------------------------------- Sentinel
@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    require_sentinel()
    with RedisCluster(tmp_path / "cluster", replicas=1) as started:
        yield started


async def test_sentinel_failover(cluster: RedisCluster) -> None:
    """Through ``redis+sentinel://``: a write and a waiting monitor both follow the
    primary to the promoted replica, and the history stays one."""
    backend = await RedisLogBackend.from_url(cluster.sentinel_url(), source="sentinel")
    monitor = backend.monitor_keys([b"k"])
    await next_update(monitor)
    await backend.add_mutable(b"k", b"\xff\x01", 1.0)
    assert (await next_update(monitor, MutableKeyUpdate)).timestamp == 1.0
    await anyio.to_thread.run_sync(cluster.wait_replicated)
    got: list[float] = []

    async def consume() -> None:
        got.append((await next_update(monitor, MutableKeyUpdate)).timestamp)

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)                      # waiting while the primary dies
            await anyio.to_thread.run_sync(cluster.kill_primary)
            await anyio.to_thread.run_sync(cluster.wait_failover)
            await backend.add_mutable(b"k", b"\xff\x02", 2.0)
    assert got == [2.0]
    assert [(e.position, e.timestamp) for e in await backend.events()] == [(1, 1.0), (2, 2.0)]
    await monitor.aclose()
    backend.close()
    await backend.wait_closed()
