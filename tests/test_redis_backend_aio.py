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

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent / "replay"))

from _aio_redis_cases import (
    check_first_contact_failure,
    check_get_range_matches_katsdptelstate,
    check_load_from_file,
    check_operations,
    check_restart,
    check_wrong_password,
)
from _aio_redis_cases import next_update as _next
from _redis import RedisServer, subscribers
from _waiting import DEADLINE, wait_until

import telstate_log
import telstate_log.aio
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


async def _channels_become(client: Any, expected: set[bytes]) -> None:
    await wait_until(lambda: set(client.pubsub_channels()) == expected,
                     what=f"the subscribed channels to become {sorted(expected)}")


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
    await check_operations(backend, client)


async def test_get_range_matches_katsdptelstate(backend: RedisBackend, client: Any) -> None:
    await check_get_range_matches_katsdptelstate(backend, client)


async def test_load_from_file(tmp_path: Path, backend: RedisBackend, client: Any) -> None:
    await check_load_from_file(tmp_path, backend, client)


async def test_first_contact_failure() -> None:
    await check_first_contact_failure(RedisBackend.from_url)


async def test_wrong_password_is_not_retried(fresh_redis: RedisServer) -> None:
    await check_wrong_password(RedisBackend.from_url, fresh_redis)


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
    client = redis.Redis.from_url(redis_url)
    theirs = katsdptelstate.TelescopeState(kt_redis.RedisBackend(client))
    # Neither library re-reads a key on a timer: once the waiter is subscribed, only
    # the writer's update message can end its wait.
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ours.wait_indexed, "table", "s", lambda v: v == 2)
            await wait_until(lambda: subscribers(client, b"update/table") == 1)
            await anyio.to_thread.run_sync(theirs.set_indexed, "table", "s", 2)
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, lambda: theirs.wait_key(
                "sensor", lambda v, t: v == 2, timeout=DEADLINE))
            await wait_until(lambda: subscribers(client, b"update/sensor") == 1)
            await ours.add("sensor", 1, ts=4.0)
            await ours.add("sensor", 2, ts=5.0)
    client.close()


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
    monitor = await check_restart(backend, fresh_redis)
    await monitor.aclose()
    backend.close()
    await backend.wait_closed()


async def test_close_ends_waits(backend: RedisBackend, client: Any) -> None:
    ts = telstate_log.aio.TelescopeState(backend)
    errors: list[BaseException] = []

    async def wait() -> None:
        try:
            await ts.wait_key("never")
        except telstate_log.ConnectionError as exc:
            errors.append(exc)

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await _channels_become(client, {b"telstate_log/idle", b"update/never"})
            backend.close()
            await backend.wait_closed()
    assert len(errors) == 1 and "closed" in str(errors[0])
    with pytest.raises(telstate_log.ConnectionError):
        await ts.wait_key("never")
