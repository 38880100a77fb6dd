"""Paced replay under asyncio and trio: spacing, drift, bounds and targets."""

from __future__ import annotations

import itertools
import math
import statistics
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import redis
from _import_export_helpers import marker_view
from _waiting import DEADLINE, wait_until

import telstate_log.aio
from telstate_log import TelescopeState
from telstate_log.backends import LogBackend, MemoryBackend
from telstate_log.replay import (
    DEFAULT_MARKER_KEY,
    ForeignDatabaseError,
    Projector,
    paced_events,
    replay_into,
)
from telstate_log.replay._paced import paced_batches
from telstate_log.storage import _event_writer as _writer

pytestmark = pytest.mark.anyio

T0 = 1.7e9


def fake_clock(monkeypatch: pytest.MonkeyPatch, step: float) -> None:
    """Each event is recorded `step` seconds after the previous one."""
    ticks = itertools.count()
    monkeypatch.setattr(_writer, "_time", lambda: T0 + step * next(ticks))


class VirtualTime:
    """anyio's clock and sleeps, virtual: the schedule is checked exactly, on any machine.

    Time moves only when a task sleeps.  A sleep that has to wait ends `late`
    seconds after its deadline, as a real sleep wakes a little late: a
    schedule that slept from one event to the next would drift by that much
    per event, one that sleeps until each event's due time does not.
    """

    def __init__(self, late: float) -> None:
        self.now = 1000.0
        self.late = late

    def current_time(self) -> float:
        return self.now

    async def sleep_until(self, deadline: float) -> None:
        await anyio.lowlevel.checkpoint()
        if deadline > self.now:
            self.now = deadline + self.late

    async def sleep(self, delay: float) -> None:
        await self.sleep_until(self.now + delay)


LATE = 0.001  # seconds each virtual sleep wakes after its deadline


@pytest.fixture
def virtual_time(monkeypatch: pytest.MonkeyPatch) -> VirtualTime:
    clock = VirtualTime(LATE)
    monkeypatch.setattr(anyio, "current_time", clock.current_time)
    monkeypatch.setattr(anyio, "sleep_until", clock.sleep_until)
    monkeypatch.setattr(anyio, "sleep", clock.sleep)
    return clock


@pytest.fixture
def log(tmp_path: Path) -> Iterator[LogBackend]:
    backend = LogBackend(tmp_path / "log", fsync="never", checkpoint_bytes=None)
    yield backend
    backend.close()


def write_observation(ts: TelescopeState, n: int = 12) -> None:
    ts["obs"] = "scan"
    for i in range(n):
        ts.add("azim", float(i), ts=100.0 + i)
    ts.set_indexed("gains", "m000", 1.5)
    ts["temp"] = 1
    ts.delete("temp")
    ts["temp"] = 2


def snapshot(backend: Any) -> dict[bytes, Any]:
    out = {}
    for key in backend.keys(b"*"):
        kind = backend.key_type(key)
        out[key] = backend.get_range(key, 0.0, math.inf, False, True) \
            if kind.name == "MUTABLE" else backend.get(key)[0]
    return out


async def test_spacing_is_scaled_and_does_not_drift(log: LogBackend,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    virtual_time: VirtualTime) -> None:
    fake_clock(monkeypatch, 0.03)
    ts = TelescopeState(log)
    for i in range(60):
        ts.add("s", float(i), ts=float(i))
    arrivals: list[tuple[float, int, float]] = []
    async for event in paced_events(log, speed=2.0):
        arrivals.append((anyio.current_time(), event.position, event.recorded))
    assert [p for _, p, _ in arrivals] == list(range(1, 61))
    a0, _, r0 = arrivals[0]
    deviation = [a - (a0 + (r - r0) / 2.0) for a, _, r in arrivals]
    spacing = statistics.median(b[0] - a[0] for a, b in itertools.pairwise(arrivals))
    assert spacing == pytest.approx(0.015)
    # Each event as late as one sleep wakes late, never more: no drift over 60 events.
    assert deviation == pytest.approx([0.0] + [LATE] * 59, abs=1e-9)


async def test_a_slow_consumer_delays_only_the_events_due_meanwhile(
        log: LogBackend, monkeypatch: pytest.MonkeyPatch, virtual_time: VirtualTime) -> None:
    fake_clock(monkeypatch, 0.02)
    for i in range(30):
        log.add_mutable(b"s", b"\xff\x00", float(i))
    arrivals = []
    async for event in paced_events(log, speed=1.0):
        arrivals.append((anyio.current_time(), event.recorded))
        if event.position == 5:
            await anyio.sleep(0.1)           # five events' worth of stall
    a0, r0 = arrivals[0]
    deviation = [a - (a0 + (r - r0)) for a, r in arrivals]
    assert deviation[5] > 0.07               # the stalled ones were late ...
    assert max(deviation[10:]) == pytest.approx(LATE)   # ... and the schedule did not move


async def test_bounds_by_position_and_by_time(log: LogBackend,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    fake_clock(monkeypatch, 1.0)
    for i in range(10):
        log.add_mutable(b"s", b"\xff\x00", float(i))       # recorded at T0 + i
    async def positions(**kwargs: Any) -> list[int]:
        return [e.position async for e in paced_events(log, speed=math.inf, **kwargs)]
    assert await positions() == list(range(1, 11))
    assert await positions(since=3, until=5) == [3, 4, 5]
    assert await positions(since_time=T0 + 2, until_time=T0 + 4.5) == [3, 4, 5]
    assert await positions(since_time=T0 + 1.5) == list(range(3, 11))
    assert await positions(since=11) == []
    with pytest.raises(ValueError, match="since"):
        await positions(since=1, since_time=T0)
    with pytest.raises(ValueError, match="speed"):
        async for _ in paced_events(log, speed=0):
            pass
    groups = [len(b) async for b in paced_batches(log, speed=math.inf)]
    assert sum(groups) == 10 and len(groups) < 10          # due events come together


async def test_replay_into_backends_sync_and_async(tmp_path: Path, log: LogBackend) -> None:
    source = TelescopeState(log)
    write_observation(source)
    source.clear()
    write_observation(source, n=3)
    memory = MemoryBackend()
    stats = await replay_into(log, memory, speed=math.inf)
    assert (stats.events, stats.first, stats.last) == (log.position, 1, log.position)
    assert stats.keys == 4 and snapshot(memory) == snapshot(log)
    async_memory = telstate_log.aio.MemoryBackend()
    async_log = telstate_log.aio.LogBackend.from_sync(log)
    await replay_into(async_log, async_memory, speed=math.inf)
    assert snapshot(async_memory.to_sync()) == snapshot(log)
    with LogBackend(tmp_path / "copy", fsync="never") as copy:
        await replay_into(log, TelescopeState(copy), since=1, until=8, speed=math.inf)
        assert snapshot(copy) == snapshot(log.as_of(position=8))


@pytest.mark.redis
async def test_replay_into_redis_wakes_katsdptelstate(
        log: LogBackend, client: redis.Redis, redis_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("katsdptelstate")
    import katsdptelstate
    import katsdptelstate.redis

    fake_clock(monkeypatch, 0.01)
    write_observation(TelescopeState(log), n=20)
    theirs = katsdptelstate.TelescopeState(katsdptelstate.redis.RedisBackend(client))
    seen: list[float] = []

    def watch() -> None:
        theirs.wait_key("azim", lambda value, t: seen.append(value) or value == 19.0,
                        timeout=DEADLINE)

    waiter = threading.Thread(target=watch)
    waiter.start()
    await wait_until(lambda: client.pubsub_numsub(b"update/azim")[0][1] >= 1,
                     what="katsdptelstate's subscription")
    stats = await replay_into(log, redis_url, speed=2.0)
    await anyio.to_thread.run_sync(waiter.join, DEADLINE)
    assert not waiter.is_alive() and seen[-1] == 19.0
    assert seen == sorted(seen) and len(seen) > 1
    assert stats.events == log.position and not client.exists(DEFAULT_MARKER_KEY)
    assert marker_view(client) == {}                     # nor in the marker database
    assert theirs.get_range("azim", st=0) == [(float(i), 100.0 + i) for i in range(20)]
    assert theirs["temp"] == 2 and theirs.get("gains") == {"m000": 1.5}


@pytest.mark.redis
async def test_replay_with_a_marker_hands_over_to_the_projector(
        log: LogBackend, client: redis.Redis) -> None:
    write_observation(TelescopeState(log))
    with pytest.raises(ForeignDatabaseError, match="position 4"):
        await replay_into(log, client, since=5, marker=True, speed=math.inf)
    await replay_into(log, client, until=10, marker=True, speed=math.inf)
    projector = Projector(log, client)
    assert projector.position == 10
    assert projector.step() == log.position - 10
    await replay_into(log, client, since=log.position + 1, marker=True, speed=math.inf)
    assert projector.status().position == log.position
