"""The threaded async RedisBackend (any anyio loop) against a real redis-server.

ThreadedRedisBackend drives the sync backend (its plans are tested in
test_redis_backend.py) from worker threads, so these tests exercise the
threading: every byte-level method and its errors through the threads,
concurrent first writers, waits of the aio TelescopeState woken by writes
from other threads, prompt cancellation leaving no thread behind, the bound
on monitor threads, closing, and recovery from a server restart.  Every
test runs under asyncio and under trio (conftest's `anyio_backend`).
"""

from __future__ import annotations

import asyncio
import collections
import sys
import threading
from collections.abc import AsyncIterator, Iterator
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
    check_wrong_password,
)
from _aio_redis_cases import next_update as _next
from _redis import RedisServer, subscribers
from _waiting import DEADLINE, wait_until

import telstate_log
import telstate_log.aio
from telstate_log.aio import ThreadedRedisBackend
from telstate_log.backends import (
    ImmutableKeyUpdate,
    KeyUpdateBase,
    MutableKeyUpdate,
)
from telstate_log.backends import RedisBackend as SyncRedisBackend
from telstate_log.backends import _redis as sync_redis_module
from telstate_log.backends.aio import _redis_threads

pytestmark = [pytest.mark.redis, pytest.mark.anyio]


@pytest.fixture
async def backend(redis_url: str) -> AsyncIterator[ThreadedRedisBackend]:
    backend = await ThreadedRedisBackend.from_url(redis_url)
    yield backend
    backend.close()
    await backend.wait_closed()


@pytest.fixture
def writer(redis_url: str) -> Iterator[telstate_log.TelescopeState]:
    """A sync TelescopeState on its own connection, to write from worker threads."""
    sync = SyncRedisBackend.from_url(redis_url)
    yield telstate_log.TelescopeState(sync)
    sync.close()


class _Steps:
    """Counts the monitor steps finished (in worker threads), in all and per monitor
    after :meth:`cut`: a cancelled or closed wait may finish the step it has in
    flight (at most STEP_SECONDS long), and must start no other."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.total = 0
        self.after_cut: collections.Counter[int] = collections.Counter()
        self._cut = False
        self._lock = threading.Lock()
        step = _redis_threads._Stepper.step

        def counted(stepper: Any) -> Any:
            try:
                return step(stepper)
            finally:
                with self._lock:
                    self.total += 1
                    if self._cut:
                        self.after_cut[id(stepper)] += 1

        monkeypatch.setattr(_redis_threads._Stepper, "step", counted)

    def cut(self) -> None:
        self._cut = True

    def prompt(self) -> bool:
        """No monitor finished more than its one step in flight after the cut."""
        return max(self.after_cut.values(), default=0) <= 1


def _threads_in_sync_backend(function: str | None = None) -> int:
    """How many threads are executing the sync Redis backend's code (or `function` of it)."""
    count = 0
    for frame in sys._current_frames().values():
        f: Any = frame
        while f is not None and not (f.f_code.co_filename == sync_redis_module.__file__ and
                                     function in (None, f.f_code.co_name)):
            f = f.f_back
        count += f is not None
    return count


# ------------------------------------------------------------ construction
async def test_from_url_picks_the_driver(anyio_backend: str, redis_url: str) -> None:
    backend = await telstate_log.aio.RedisBackend.from_url(redis_url)
    try:
        threaded = isinstance(backend, ThreadedRedisBackend)
        assert threaded == (anyio_backend == "trio")
        assert isinstance(backend, telstate_log.aio.RedisBackend) != threaded
        ts = telstate_log.aio.TelescopeState(backend)
        await ts.set("k", [1, 2])
        assert await ts.get("k") == [1, 2]
    finally:
        backend.close()
        await backend.wait_closed()


async def test_async_library(anyio_backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _redis_threads.async_library() == anyio_backend
    monkeypatch.setitem(sys.modules, "sniffio", None)    # not installed (trio requires it)
    assert _redis_threads.async_library() == ("asyncio" if anyio_backend == "asyncio" else None)


def test_async_library_outside_an_event_loop() -> None:
    assert _redis_threads.async_library() is None


async def test_from_sync_shares_and_owns(redis_url: str) -> None:
    sync = SyncRedisBackend.from_url(redis_url)
    backend = ThreadedRedisBackend.from_sync(sync)
    assert backend.to_sync() is sync
    sync.set_immutable(b"k", b"\xffv")
    assert await backend.get(b"k") == (b"\xffv", None)
    backend.close()
    await backend.wait_closed()
    assert sync.closed


async def test_first_contact_failure() -> None:
    await check_first_contact_failure(ThreadedRedisBackend.from_url)


async def test_wrong_password_is_not_retried(fresh_redis: RedisServer) -> None:
    await check_wrong_password(ThreadedRedisBackend.from_url, fresh_redis)


# ------------------------------------------------------------------- contract
async def test_operations(backend: ThreadedRedisBackend, client: redis.Redis) -> None:
    await check_operations(backend, client)


async def test_get_range_matches_katsdptelstate(backend: ThreadedRedisBackend,
                                                client: redis.Redis) -> None:
    await check_get_range_matches_katsdptelstate(backend, client)


async def test_concurrent_first_writers(backend: ThreadedRedisBackend) -> None:
    results: dict[int, bytes | None] = {}

    async def write(i: int) -> None:
        results[i] = await backend.set_immutable(b"obs", bytes([0xFF, i]))

    async with anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(write, i)
    winners = [i for i, old in results.items() if old is None]
    assert len(winners) == 1
    stored = bytes([0xFF, winners[0]])
    assert all(old == stored for i, old in results.items() if i != winners[0])
    assert await backend.get(b"obs") == (stored, None)


async def test_load_from_file(tmp_path: Path, backend: ThreadedRedisBackend,
                              client: redis.Redis) -> None:
    await check_load_from_file(tmp_path, backend, client)


# ------------------------------------------------------------------- waiting
async def test_wait_key_woken_by_other_threads(backend: ThreadedRedisBackend,
                                               writer: telstate_log.TelescopeState,
                                               client: redis.Redis) -> None:
    # A monitor step that times out re-reads nothing: once subscribed, a wait ends only
    # when the writes' update messages wake it.
    ts = telstate_log.aio.TelescopeState(backend)
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:             # barrier: the key appears
            tg.start_soon(ts.wait_key, "ready")
            await wait_until(lambda: subscribers(client, b"update/ready") == 1)
            await anyio.to_thread.run_sync(writer.set, "ready", True)
        async with anyio.create_task_group() as tg:             # subscription: a condition
            tg.start_soon(ts.wait_key, "sensor", lambda value, t: value == 3)
            tg.start_soon(ts.wait_indexed, "table", "m001", lambda value: value == "on")
            await wait_until(lambda: subscribers(client, b"update/sensor") == 1
                             and subscribers(client, b"update/table") == 1)
            for value in (1, 2, 3):
                await anyio.to_thread.run_sync(writer.add, "sensor", value, float(value))
            await anyio.to_thread.run_sync(writer.set_indexed, "table", "m001", "on")


async def test_monitor_protocol(backend: ThreadedRedisBackend, client: redis.Redis) -> None:
    monitor = backend.monitor_keys(iter([b"k", b"k2", b"k"]))
    assert type(await monitor.__anext__()) is KeyUpdateBase      # at once
    assert type(await _next(monitor)) is KeyUpdateBase           # subscription confirmed
    assert set(client.pubsub_channels()) == {b"update/k", b"update/k2"}
    await backend.set_immutable(b"k", b"\xffv")
    update = await _next(monitor, ImmutableKeyUpdate)
    assert (update.key, update.value) == (b"k", b"\xffv")
    client.publish(b"update/k2", b"\x02short")                   # malformed: check again
    assert type(await _next(monitor)) is KeyUpdateBase
    await backend.add_mutable(b"k2", b"\xffw", 3.0)
    assert (await _next(monitor, MutableKeyUpdate)).timestamp == 3.0
    await monitor.aclose()
    assert client.pubsub_channels() == []                        # closed before aclose returned


async def test_cancellation_is_prompt_and_leaves_no_thread(
        backend: ThreadedRedisBackend, client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ts = telstate_log.aio.TelescopeState(backend)
    steps = _Steps(monkeypatch)
    async with anyio.create_task_group() as tg:

        async def wait_long() -> None:
            with anyio.fail_after(2 * DEADLINE):
                await ts.wait_key("never")

        tg.start_soon(wait_long)
        tg.start_soon(ts.wait_indexed, "never", "s")
        await wait_until(lambda: subscribers(client, b"update/never") == 2)
        steps.cut()
        tg.cancel_scope.cancel()
    assert steps.total >= 2 and steps.prompt()   # only the steps in flight were waited for
    # Nothing left behind, checked without waiting: no step still running, no subscription.
    assert _threads_in_sync_backend() == 0
    assert client.pubsub_channels() == []
    assert client.pubsub_numsub(b"update/never") == [(b"update/never", 0)]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_native_asyncio_cancellation(anyio_backend: str, backend: ThreadedRedisBackend,
                                           client: redis.Redis) -> None:
    ts = telstate_log.aio.TelescopeState(backend)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(ts.wait_key("never"), 0.3)
    assert _threads_in_sync_backend() == 0
    assert client.pubsub_channels() == []


async def test_monitors_share_a_bounded_pool(monkeypatch: pytest.MonkeyPatch,
                                             backend: ThreadedRedisBackend,
                                             writer: telstate_log.TelescopeState,
                                             client: redis.Redis) -> None:
    monkeypatch.setattr(_redis_threads, "MONITOR_THREADS", 2)
    limiter = _redis_threads.monitor_threads()       # this event loop's (made now: 2 tokens)
    assert limiter.total_tokens == 2
    ts = telstate_log.aio.TelescopeState(backend)
    busiest = waiting = 0

    def sample() -> bool:
        """Note the busiest moment so far; true once all six are subscribed."""
        nonlocal busiest, waiting
        busiest = max(busiest, _threads_in_sync_backend("monitor_keys"))
        waiting = max(waiting, limiter.statistics().tasks_waiting)
        return all(subscribers(client, b"update/key%d" % i) == 1 for i in range(6))

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(ts.wait_key, f"key{i}")
        with anyio.fail_after(DEADLINE):
            await wait_until(sample)                # sampled all the while they subscribe
            for i in range(6):
                await anyio.to_thread.run_sync(writer.set, f"key{i}", i)
    assert busiest <= 2 and waiting >= 1            # they took turns, and all were woken


# ------------------------------------------------------------- closing, faults
async def test_close_ends_waits(backend: ThreadedRedisBackend, client: redis.Redis,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    ts = telstate_log.aio.TelescopeState(backend)
    steps = _Steps(monkeypatch)
    errors: list[BaseException] = []

    async def wait(key: str) -> None:
        try:
            await ts.wait_key(key)
        except telstate_log.ConnectionError as exc:
            errors.append(exc)

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait, "never")
            tg.start_soon(wait, "never2")
            await wait_until(lambda: subscribers(client, b"update/never") == 1
                             and subscribers(client, b"update/never2") == 1)
            steps.cut()
            backend.close()
            await backend.wait_closed()
    assert steps.prompt()                           # each ended after its step in flight
    assert len(errors) == 2 and all("closed" in str(exc) for exc in errors)
    assert backend.to_sync().closed
    with pytest.raises(telstate_log.ConnectionError, match="closed"):
        await ts.wait_key("never")


async def test_wait_survives_server_restart(fresh_redis: RedisServer) -> None:
    backend = await ThreadedRedisBackend.from_url(fresh_redis.url)
    ts = telstate_log.aio.TelescopeState(backend)
    await ts.set("before", 1)
    monitor = backend.monitor_keys([b"k"])
    await _next(monitor)
    await _next(monitor)                                         # subscribed
    client = fresh_redis.client()
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ts.wait_key, "k2", lambda value, t: value == 2)
            await wait_until(lambda: subscribers(client, b"update/k2") == 1)
            client.close()
            await anyio.to_thread.run_sync(fresh_redis.restart)  # no persistence: data gone
            assert type(await _next(monitor)) is KeyUpdateBase   # resubscribed: re-read
            assert not await ts.exists("before")
            await ts.add("k", 3.0, ts=1.0)                       # scripts reloaded
            assert (await _next(monitor, MutableKeyUpdate)).timestamp == 1.0
            other = SyncRedisBackend.from_url(fresh_redis.url)   # a write from another thread
            await anyio.to_thread.run_sync(telstate_log.TelescopeState(other).add, "k2", 2)
    other.close()
    await monitor.aclose()
    backend.close()
    await backend.wait_closed()
