"""Re-enact a past observation's events with their original spacing.

Theory of operation
-------------------
Every event in a log carries the wall-clock time it was recorded.
:func:`paced_events` reads the events between two positions (or two
recorded times) and yields each one at ``t0 + (recorded_i - recorded_0) /
speed``, where ``t0`` is the moment the first event is yielded.  Every
event is scheduled against that fixed origin with ``anyio.sleep_until`` --
never by sleeping the gap since the previous event -- so the time taken
to process one event, a slow consumer or a timer that fires late delays
only the events due meanwhile, and the error does not accumulate over a
long replay.  Events due at the same moment (the samples of one bulk write
share a recorded time) are released together; recorded times that go
backwards (a clock step) are released at once.  ``speed=math.inf`` replays
as fast as possible.  The iterators run under asyncio and trio (anyio);
events are read from the log in chunks in a worker thread.

:func:`replay_into` applies the paced events to a target:

* a Redis database (a :class:`redis.Redis` or a ``redis://`` URL): the
  commands and ``update/<key>`` messages a katsdptelstate client would have
  sent (:mod:`._translate`), one transaction per group of due events, so
  katsdptelstate ``wait_key`` users see the observation unfold.  No
  projector marker is written unless ``marker=True``; then the database
  must be empty or projected from this log up to just before the first
  replayed event, and the marker advances with each transaction (exactly
  once, as with the projector).  Without a marker, a transaction that
  redis-py retries after a lost connection may be applied twice: harmless
  for the data (every command is idempotent), but its ``update/`` messages
  are then published twice;
* a backend -- sync (a fresh log, the memory backend) or async
  (:mod:`telstate_log.aio`) -- or a ``TelescopeState`` over one: through
  its ``set_immutable``, ``add_mutable``, ``set_indexed``, ``delete`` and
  ``clear``.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import anyio
import anyio.to_thread
import redis

from ..core._events import Event
from ._marker import ForeignDatabaseError, MarkerStore, client_for_url
from ._translate import event_commands

__all__ = ["ReplayStats", "paced_batches", "paced_events", "replay_into"]

#: Events read from the log at a time.
CHUNK = 4096


@dataclass
class ReplayStats:
    """What a replay did."""

    events: int = 0                 #: events applied
    first: int | None = None        #: position of the first event replayed
    last: int | None = None         #: position of the last event replayed
    keys: int = 0                   #: distinct keys the events touched
    seconds: float = 0.0            #: wall-clock duration
    max_late: float = 0.0           #: worst lateness of an event behind its schedule (s)
    _keys: set[bytes] = field(default_factory=set, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["_keys"]
        return out


async def _call(backend: Any, name: str, *args: Any) -> Any:
    """Call a sync method in a worker thread, or await an async one."""
    method = getattr(backend, name)
    if inspect.iscoroutinefunction(method):
        return await method(*args)
    return await anyio.to_thread.run_sync(method, *args)


async def _bounds(backend: Any, since: int | None, until: int | None,
                  since_time: float | None, until_time: float | None) -> tuple[int, int]:
    """First and last position to replay (inclusive)."""
    if since is not None and since_time is not None:
        raise ValueError("give at most one of since and since_time")
    if until is not None and until_time is not None:
        raise ValueError("give at most one of until and until_time")
    end = int(backend.position)
    first = 1 if since is None else max(1, since)
    if since_time is not None:   # the first event recorded at or after since_time
        first = int(await _call(backend, "resolve_time",
                                math.nextafter(since_time, -math.inf))) + 1
    last = end if until is None else min(until, end)
    if until_time is not None:
        last = min(int(await _call(backend, "resolve_time", until_time)), end)
    return first, last


async def paced_batches(backend: Any, *, since: int | None = None, until: int | None = None,
                        since_time: float | None = None, until_time: float | None = None,
                        speed: float = 1.0) -> AsyncIterator[list[Event]]:
    """Yield lists of events, each list when its events fall due (see module docstring)."""
    if not speed > 0:
        raise ValueError(f"speed must be positive, not {speed}")
    first, last = await _bounds(backend, since, until, since_time, until_time)
    t0 = rec0 = 0.0
    started = False
    position = first
    while position <= last:
        chunk: list[Event] = await _call(backend, "events", position,
                                         min(last, position + CHUNK - 1))
        if not chunk:
            return
        position = chunk[-1].position + 1
        i = 0
        while i < len(chunk):
            if not started:
                t0, rec0, started = anyio.current_time(), chunk[i].recorded, True
            due = t0 + (chunk[i].recorded - rec0) / speed
            await anyio.sleep_until(due)
            now = anyio.current_time()
            j = i + 1
            while j < len(chunk) and t0 + (chunk[j].recorded - rec0) / speed <= now:
                j += 1
            yield chunk[i:j]
            i = j


async def paced_events(backend: Any, *, since: int | None = None, until: int | None = None,
                       since_time: float | None = None, until_time: float | None = None,
                       speed: float = 1.0) -> AsyncIterator[Event]:
    """Yield the events of `backend` (a sync or async log backend) at their paced times.

    `since`/`until` are positions, `since_time`/`until_time` recorded
    wall-clock times (all inclusive; give at most one of each pair).
    """
    async for batch in paced_batches(backend, since=since, until=until, since_time=since_time,
                                     until_time=until_time, speed=speed):
        for event in batch:
            yield event


# ------------------------------------------------------------------- targets
class _BackendSink:
    """Applies events through a backend's write methods (sync or async)."""

    def __init__(self, target: Any) -> None:
        self.target = getattr(target, "backend", target)
        self._async = inspect.iscoroutinefunction(getattr(self.target, "set_immutable", None))

    async def _do(self, name: str, *args: Any) -> None:
        method = getattr(self.target, name)
        if self._async:
            await method(*args)
        else:
            method(*args)

    async def apply(self, events: Sequence[Event]) -> None:
        for ev in events:
            if ev.kind == "set":
                await self._do("set_immutable", ev.key, ev.value)
            elif ev.kind == "add":
                await self._do("add_mutable", ev.key, ev.value, ev.timestamp)
            elif ev.kind == "set_indexed":
                await self._do("set_indexed", ev.key, ev.sub_key, ev.value)
            elif ev.kind == "delete":
                await self._do("delete", ev.key)
            elif ev.kind == "clear":
                await self._do("clear")


class _RedisSink:
    """Applies events to a Redis database as katsdptelstate clients would write them."""

    def __init__(self, client: redis.Redis, source: Any, marker: bool) -> None:
        self.client = client
        to_sync = getattr(source, "to_sync", None)     # an async log: use its sync side
        self.source = to_sync() if to_sync is not None else source
        self.store: MarkerStore | None = MarkerStore(client) if marker else None

    def _keys_before(self, position: int) -> list[bytes]:
        return list(self.source.as_of(position=position - 1).keys(b"*"))

    def check_marker(self, first: int) -> None:
        """With a marker: the database must hold this log's state up to `first` - 1."""
        assert self.store is not None
        log_id = self.source.log_id.hex()
        found = self.store.read()
        if found is None and self.store.dbsize() == 0 and first == 1:
            self.store.initialise(log_id, flush=False)
        elif found is None or found.log_id != log_id or found.position != first - 1 \
                or found.backfill_target is not None or found.error is not None:
            raise ForeignDatabaseError(
                f"replaying from position {first} with a marker needs a database projected "
                f"from this log up to position {first - 1}, or an empty one to start at 1; "
                f"found {found}")

    def _apply(self, events: Sequence[Event]) -> None:
        commands = event_commands(events, self._keys_before)
        if self.store is None:
            with self.client.pipeline(transaction=True) as pipe:
                for args in commands:
                    pipe.execute_command(*args)  # type: ignore[no-untyped-call]
                pipe.execute()
            return
        current = self.store.current
        assert current is not None
        self.store.commit(commands, replace(current, position=events[-1].position))

    async def apply(self, events: Sequence[Event]) -> None:
        await anyio.to_thread.run_sync(self._apply, events)


def _sink(target: Any, source: Any, marker: bool) -> _BackendSink | _RedisSink:
    if isinstance(target, str):
        target = client_for_url(target)
    if isinstance(target, redis.Redis):
        return _RedisSink(target, source, marker)
    if marker:
        raise ValueError("marker=True needs a Redis target")
    return _BackendSink(target)


async def replay_into(backend: Any, target: Any, *, since: int | None = None,
                      until: int | None = None, since_time: float | None = None,
                      until_time: float | None = None, speed: float = 1.0,
                      marker: bool = False, progress: Any = None,
                      stats: ReplayStats | None = None) -> ReplayStats:
    """Apply the paced events of `backend` to `target` (see the module docstring).

    `progress(stage, done, total)` is called after each group of events.
    Returns what was replayed (`stats`, if given, is filled in as it goes,
    so it is still there when the caller cancels the replay).
    """
    sink = _sink(target, backend, marker)
    stats = stats if stats is not None else ReplayStats()
    started = time.perf_counter()
    first, last = await _bounds(backend, since, until, since_time, until_time)
    if isinstance(sink, _RedisSink) and sink.store is not None and first <= last:
        await anyio.to_thread.run_sync(sink.check_marker, first)
    total = max(last - first + 1, 0)
    origin: tuple[float, float] | None = None
    try:
        async for batch in paced_batches(backend, since=first, until=last, speed=speed):
            if origin is None:
                origin = (anyio.current_time(), batch[0].recorded)
            due = origin[0] + (batch[0].recorded - origin[1]) / speed
            stats.max_late = max(stats.max_late, anyio.current_time() - due)
            await sink.apply(batch)
            stats.events += len(batch)
            stats.first = batch[0].position if stats.first is None else stats.first
            stats.last = batch[-1].position
            stats._keys.update(ev.key for ev in batch if ev.key is not None)
            if progress is not None:
                progress("replay", stats.events, total)
    finally:
        stats.keys = len(stats._keys)
        stats.seconds = time.perf_counter() - started
    return stats
