"""The async front end under asyncio and trio (every test runs on both)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from _waiting import DEADLINE, wait_until

import telstate_log
from telstate_log import ImmutableKeyError, InvalidTimestampError, KeyType
from telstate_log.aio import LogBackend, MemoryBackend, TelescopeState

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "log"])
async def ts(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TelescopeState]:
    if request.param == "memory":
        backend: Any = MemoryBackend()
    else:
        backend = await LogBackend.open(tmp_path / "log", fsync="always")
    yield TelescopeState(backend)
    backend.close()
    await backend.wait_closed()


async def test_basic_and_namespaces(ts: TelescopeState) -> None:
    ns = ts.view("ns")
    assert ns.prefixes == ("ns_", "")
    await ts.add("k", 1.5)
    await ns.add("k", 2.5)
    assert await ts["k"] == 1.5
    assert await ns.get("k") == 2.5
    assert await ts.get("ns_k") == 2.5
    assert await ts.keys() == ["k", "ns_k"]
    assert await ts.keys("ns_*") == ["ns_k"]
    await ns.delete("k")  # deletes under every prefix of the view
    assert await ts.keys() == []
    assert await ts.get("k", "default") == "default"
    with pytest.raises(KeyError):
        await ts["k"]


async def test_types_and_immutables(ts: TelescopeState) -> None:
    await ts.set("imm", {"a": (1, 2)})
    await ts.add("imm", {"a": (1, 2)}, immutable=True)  # equal value: no-op
    with pytest.raises(ImmutableKeyError):
        await ts.add("imm", {"a": (1, 3)}, immutable=True)
    with pytest.raises(ImmutableKeyError):
        await ts.add("imm", 5.0)
    await ts.set_indexed("idx", ("x", 1), np.arange(3))
    with pytest.raises(ImmutableKeyError):
        await ts.set_indexed("idx", ("x", 1), np.arange(4))
    assert (await ts.get_indexed("idx", ("x", 1)) == np.arange(3)).all()
    assert await ts.get_indexed("idx", "missing", "d") == "d"
    assert await ts.key_type("imm") == KeyType.IMMUTABLE
    assert await ts.key_type("idx") == KeyType.INDEXED
    assert await ts.key_type("nope") is None
    with pytest.raises(InvalidTimestampError):
        await ts.add("s", 1, ts=float("nan"))
    with pytest.raises(InvalidTimestampError):
        await ts.add("s", 1, ts=-1)


async def test_get_range_forms(ts: TelescopeState) -> None:
    for value, t in [(8192, 1), (16384, 2), (4096, 3), (2048, 4)]:
        await ts.add("s", value, t)
    await ts.add("s", 1, 0.5)  # back-dated
    assert await ts.get_range("s") == [(2048, 4)]
    assert await ts.get_range("s", et=3) == [(16384, 2)]
    assert await ts.get_range("s", st=2, et=4, include_previous=True) == \
        [(8192, 1), (16384, 2), (4096, 3)]
    assert await ts.get_range("s", st=0) == [(1, 0.5), (8192, 1), (16384, 2), (4096, 3),
                                            (2048, 4)]
    assert await ts.get_range("s", st=3, et=4, include_end=True) == [(4096, 3), (2048, 4)]
    assert await ts.get_range("s", 3.5, 1.5) == []
    enc = await ts.get_range("s", st=4, return_encoded=True)
    assert enc == [(telstate_log.encode_value(2048), 4.0)]
    times, values = await ts.get_range_arrays("s", st=0)
    assert times.tolist() == [0.5, 1, 2, 3, 4]
    assert values.tolist() == [1, 8192, 16384, 4096, 2048]


async def test_wait_key_and_cancellation(ts: TelescopeState) -> None:
    async def later(coro: Any) -> None:
        await anyio.sleep(0.05)
        await coro

    async with anyio.create_task_group() as tg:
        tg.start_soon(later, ts.add("k", 5, 1234.0))
        await ts.wait_key("k", lambda v, t: v == 5 and t == 1234.0)
    with anyio.move_on_after(0.1) as scope:
        await ts.wait_key("never")
    assert scope.cancelled_caught
    with pytest.raises(TimeoutError):
        with anyio.fail_after(0.1):
            await ts.wait_key("k", lambda v, t: v == 6)


async def test_wait_key_shadowed_and_concurrent(ts: TelescopeState) -> None:
    ns = ts.view("ns")
    await ns.add("k", False)  # shadows the root key for ns's view
    done: list[str] = []

    async def waiter(name: str, view: TelescopeState) -> None:
        await view.wait_key("k", lambda v, t: v is True)
        done.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, "root", ts)
        tg.start_soon(waiter, "ns", ns)
        hub = ts.backend.to_sync()._hub  # type: ignore[attr-defined]
        await wait_until(lambda: len(hub._all) == 2, what="both waiters to subscribe")
        await ts.add("k", True)  # satisfies the root waiter only
        await wait_until(lambda: done, what="the root waiter")
        assert done == ["root"]
        await ns.add("k", True)
    assert sorted(done) == ["ns", "root"]


async def test_wait_indexed(ts: TelescopeState) -> None:
    async with anyio.create_task_group() as tg:
        async def writer() -> None:
            await anyio.sleep(0.03)
            await ts.set_indexed("idx", "a", 1)
            await anyio.sleep(0.03)
            await ts.set_indexed("idx", "b", 2)

        tg.start_soon(writer)
        await ts.wait_indexed("idx", "b", lambda v: v == 2)
    await ts.add("sensor", 1)
    with pytest.raises(ImmutableKeyError):
        await ts.wait_indexed("sensor", "x")

    async def wrong_type_later() -> None:
        await anyio.sleep(0.05)
        await ts.add("late", 1)

    caught: list[BaseException] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(wrong_type_later)
        try:
            await ts.wait_indexed("late", "x")
        except ImmutableKeyError as exc:
            caught.append(exc)
    assert len(caught) == 1


async def test_wake_from_sync_thread(ts: TelescopeState) -> None:
    sync_ts = telstate_log.TelescopeState(ts.backend.to_sync())  # type: ignore[attr-defined]
    async with anyio.create_task_group() as tg:
        async def write_from_thread() -> None:
            await anyio.sleep(0.05)
            await anyio.to_thread.run_sync(sync_ts.add, "k", 42)

        tg.start_soon(write_from_thread)
        with anyio.fail_after(DEADLINE):
            await ts.wait_key("k", lambda v, t: v == 42)


async def test_concurrent_writers_share_fsyncs(tmp_path: Path) -> None:
    backend = await LogBackend.open(tmp_path / "log", fsync="always")
    ts = TelescopeState(backend)
    durability = backend.to_sync().log.durability
    assert durability is not None
    start = durability.fsyncs

    async def writer(i: int) -> None:
        for j in range(20):
            await ts.add(f"s{i}", j, float(j))

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(writer, i)
    assert backend.position == 200
    assert backend.to_sync().durable_position == 200
    assert durability.fsyncs - start < 150
    await backend.aclose()
