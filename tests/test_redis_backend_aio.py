"""The asyncio RedisBackend against a real redis-server.

The plans are shared with the sync backend (tested in test_redis_backend.py),
so these tests exercise the async driver -- every operation kind, errors
thrown back into plans, the RDB loader's worker-thread steps -- and what is
async-only: the shared pub/sub connection and its pump, cleanup of
subscriptions, reconnection, closing, and the dispatch under trio (from_url
returns the threaded backend of test_redis_backend_threads.py; a
redis.asyncio client is refused).  Tests run under anyio's asyncio backend
(trio only for the dispatch).
"""

from __future__ import annotations

import math
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent / "replay"))

from _rdb_helpers import redis_state, sample_state, write_state
from _redis import RedisServer

import telstate_log
import telstate_log.aio
from telstate_log import ImmutableKeyError, KeyType
from telstate_log.aio import RedisBackend
from telstate_log.backends import ImmutableKeyUpdate, KeyUpdateBase, MutableKeyUpdate

pytestmark = [pytest.mark.redis, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    """redis.asyncio needs asyncio (see test_trio_gets_the_threaded_backend)."""
    return "asyncio"


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[RedisBackend]:
    backend = await RedisBackend.from_url(redis_url)
    yield backend
    backend.close()
    await backend.wait_closed()


@pytest.fixture
def client(redis_url: str) -> Any:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


async def _next(monitor: Any, want: type = KeyUpdateBase, timeout: float = 5.0) -> Any:
    with anyio.fail_after(timeout):
        async for update in monitor:
            if isinstance(update, want):
                return update
    raise AssertionError("monitor ended")


async def _channels_become(client: Any, expected: set[bytes], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while set(client.pubsub_channels()) != expected:
            await anyio.sleep(0.01)


# ------------------------------------------------------------------ trio, loops
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_trio_gets_the_threaded_backend(anyio_backend: str, redis_url: str) -> None:
    backend = await RedisBackend.from_url(redis_url)
    assert type(backend) is telstate_log.aio.ThreadedRedisBackend
    ts = telstate_log.aio.TelescopeState(backend)
    await ts.add("sensor", 1.5, ts=2.0)
    assert await ts.get_range("sensor", st=0) == [(1.5, 2.0)]
    backend.close()
    await backend.wait_closed()
    # A redis.asyncio client cannot work under trio: refused, naming the alternative.
    with pytest.raises(RuntimeError, match=r"asyncio.*trio.*ThreadedRedisBackend"):
        RedisBackend(redis.asyncio.Redis.from_url(redis_url))


def test_refused_outside_an_event_loop(redis_url: str) -> None:
    with pytest.raises(RuntimeError, match="running asyncio event loop"):
        RedisBackend(redis.asyncio.Redis.from_url(redis_url))


# ------------------------------------------------------------------- contract
async def test_operations(backend: RedisBackend, client: Any) -> None:
    assert await backend.set_immutable(b"i", b"\xffv") is None
    assert await backend.set_immutable(b"i", b"\xffw") == b"\xffv"
    await backend.add_mutable(b"m", b"\xff1", 2.0)
    await backend.add_mutable(b"m", b"\xff0", 1.0)
    assert await backend.set_indexed(b"x", b"\xffs", b"\xffv") is None
    assert await backend.get(b"i") == (b"\xffv", None)
    assert await backend.get(b"m") == (b"\xff1", 2.0)
    assert await backend.get(b"x") == ({b"\xffs": b"\xffv"}, None)
    assert await backend.get_indexed(b"x", b"\xffs") == b"\xffv"
    assert await backend.get_indexed(b"x", b"\xffnone") is None
    with pytest.raises(KeyError):
        await backend.get_indexed(b"missing", b"\xffs")
    assert await backend.get_range(b"m", 0.0, math.inf, False, False) == [(b"\xff0", 1.0),
                                                                          (b"\xff1", 2.0)]
    assert await backend.get_range(b"m", 2.0, 2.0, True, True) == [(b"\xff0", 1.0),
                                                                   (b"\xff1", 2.0)]
    assert await backend.get_range(b"missing", 0.0, 1.0, True, False) is None
    assert [await backend.key_type(k) for k in (b"i", b"m", b"x", b"no")] == [
        KeyType.IMMUTABLE, KeyType.MUTABLE, KeyType.INDEXED, None]
    assert await backend.exists(b"i") and not await backend.exists(b"no")
    assert sorted(await backend.keys(b"*")) == [b"i", b"m", b"x"]
    assert await backend.dump(b"i") == client.dump(b"i")
    for call in (backend.set_indexed(b"i", b"\xffs", b"\xffv"),          # script WRONGTYPE
                 backend.get_range(b"x", 0.0, math.inf, True, False),     # pipeline
                 backend.add_mutable(b"x", b"\xffv", 1.0)):
        with pytest.raises(ImmutableKeyError):
            await call
    await backend.delete(b"i")
    assert not await backend.exists(b"i")
    await backend.clear()
    assert await backend.keys(b"*") == []
    assert repr(backend).startswith("<RedisBackend redis://127.0.0.1:")


async def test_load_from_file(tmp_path: Path, backend: RedisBackend, client: Any) -> None:
    state = sample_state()
    path = tmp_path / "state.rdb"
    write_state(state, path)
    assert await backend.load_from_file(path) == len(state)
    assert redis_state(client) == state
    client.set(b"obs_name", b"\xffother")
    with pytest.raises(ImmutableKeyError, match="obs_name"):
        await telstate_log.aio.TelescopeState(backend).load_from_file(str(path))


async def test_first_contact_failure() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(telstate_log.ConnectionError, match=f"127.0.0.1:{port}"):
        await RedisBackend.from_url(f"redis://:hunter2@127.0.0.1:{port}/0")


# ------------------------------------------------------------------- pub/sub
async def test_one_shared_pubsub_connection(backend: RedisBackend, client: Any) -> None:
    ts = telstate_log.aio.TelescopeState(backend)
    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(ts.wait_key, f"key{i % 2}", lambda v, t: v == 2)
        await _channels_become(client, {b"telstate_log/idle", b"update/key0", b"update/key1"})
        assert client.pubsub_numsub(b"update/key0", b"update/key1") == [
            (b"update/key0", 1), (b"update/key1", 1)]
        assert client.pubsub_numsub(b"telstate_log/idle")[0][1] == 1
        await ts.add("key0", 1)
        await ts.add("key0", 2)
        await ts.set("key1", 2)
    await _channels_become(client, {b"telstate_log/idle"})    # unsubscribed when done


async def test_monitor_cleanup_after_cancel_and_close(backend: RedisBackend, client: Any) -> None:
    ts = telstate_log.aio.TelescopeState(backend)
    with anyio.move_on_after(0.3) as scope:
        await ts.wait_key("never")
    assert scope.cancelled_caught
    await _channels_become(client, {b"telstate_log/idle"})
    monitor = backend.monitor_keys([b"a"])
    assert type(await monitor.__anext__()) is KeyUpdateBase
    assert type(await _next(monitor)) is KeyUpdateBase       # the subscription's confirmation
    await monitor.aclose()
    await _channels_become(client, {b"telstate_log/idle"})


async def test_updates_and_foreign_messages(backend: RedisBackend, client: Any) -> None:
    monitor = backend.monitor_keys([b"k", b"k2"])
    await _next(monitor)                  # at once; writes before the subscription is active
    await _channels_become(client, {b"telstate_log/idle", b"update/k", b"update/k2"})
    await backend.set_immutable(b"k", b"\xffv")
    update = await _next(monitor, ImmutableKeyUpdate)
    assert (update.key, update.value) == (b"k", b"\xffv")
    client.publish(b"update/k2", b"\x02short")                  # malformed: check again
    assert type(await _next(monitor)) is KeyUpdateBase
    await backend.add_mutable(b"k2", b"\xffw", 3.0)
    assert (await _next(monitor, MutableKeyUpdate)).timestamp == 3.0
    await monitor.aclose()


async def test_waits_woken_across_libraries(backend: RedisBackend, redis_url: str) -> None:
    kt_redis = pytest.importorskip("katsdptelstate.redis")
    katsdptelstate = pytest.importorskip("katsdptelstate")

    ours = telstate_log.aio.TelescopeState(backend)
    # katsdptelstate's sync front end, in worker threads: its aio backend's
    # wait_closed() can hang with redis-py 8 (a StreamWriter.wait_closed race).
    theirs = katsdptelstate.TelescopeState(
        kt_redis.RedisBackend(redis.Redis.from_url(redis_url)))
    async with anyio.create_task_group() as tg:
        tg.start_soon(ours.wait_indexed, "table", "s", lambda v: v == 2)
        await anyio.sleep(0.2)
        start = time.monotonic()
        await anyio.to_thread.run_sync(theirs.set_indexed, "table", "s", 2)
    assert time.monotonic() - start < 1.0
    async with anyio.create_task_group() as tg:
        tg.start_soon(anyio.to_thread.run_sync, lambda: theirs.wait_key(
            "sensor", lambda v, t: v == 2, timeout=5))
        await anyio.sleep(0.2)
        start = time.monotonic()
        await ours.add("sensor", 1, ts=4.0)
        await ours.add("sensor", 2, ts=5.0)
    assert time.monotonic() - start < 1.0


async def test_pump_survives_killed_connection(fresh_redis: RedisServer) -> None:
    backend = await RedisBackend.from_url(fresh_redis.url)
    client = fresh_redis.client()
    monitor = backend.monitor_keys([b"k"])
    await _next(monitor)
    await _next(monitor)                                        # confirmed
    assert client.client_kill_filter(_type="pubsub") == 1
    assert type(await _next(monitor)) is KeyUpdateBase          # resubscribed: re-read
    await backend.add_mutable(b"k", b"\xffv", 1.0)
    assert (await _next(monitor, MutableKeyUpdate)).value == b"\xffv"
    await monitor.aclose()
    backend.close()
    await backend.wait_closed()


async def test_reconnect_after_restart(fresh_redis: RedisServer) -> None:
    backend = await RedisBackend.from_url(fresh_redis.url)
    ts = telstate_log.aio.TelescopeState(backend)
    await ts.set("before", 1)
    monitor = backend.monitor_keys([b"k"])
    await _next(monitor)
    await _next(monitor)
    await anyio.to_thread.run_sync(fresh_redis.restart)
    assert type(await _next(monitor)) is KeyUpdateBase
    assert not await ts.exists("before")
    await ts.add("k", 3.0, ts=1.0)                              # scripts reloaded
    assert (await _next(monitor, MutableKeyUpdate)).timestamp == 1.0
    await monitor.aclose()
    backend.close()
    await backend.wait_closed()


async def test_close_ends_waits(backend: RedisBackend) -> None:
    ts = telstate_log.aio.TelescopeState(backend)
    errors: list[BaseException] = []

    async def wait() -> None:
        try:
            await ts.wait_key("never")
        except telstate_log.ConnectionError as exc:
            errors.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.sleep(0.2)
            backend.close()
            await backend.wait_closed()
    assert len(errors) == 1 and "closed" in str(errors[0])
    with pytest.raises(telstate_log.ConnectionError):
        await ts.wait_key("never")
