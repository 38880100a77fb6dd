#!/usr/bin/env python3
"""The shared log (issue 13) against katsdptelstate's RedisBackend, in one run.

Starts its own redis-server on loopback (persistence off) and measures, on
that one server:

* single-writer ``add``: ``TelescopeState(RedisLogBackend).add`` against
  katsdptelstate's ``TelescopeState(RedisBackend).add`` (target: at least
  0.9x its rate);
* ``add_mutable_many`` of a whole sensor in one call against katsdptelstate's
  ``add`` loop (target: at least 10x);
* follower latency: a StreamFollower in another process sees each write
  (its monitor reports it) -- p50 and p99 from the write call to then
  (target: p99 at most 5 ms);
* materialising: a StreamFollower catching up with ``--events`` events, one
  ADD record each, as ``add`` writes them (the library's ``tslog_add``,
  pipelined to fill the stream quickly) over ``--keys`` sensors (target: at
  least 300k events/s);
* archiving the same stream with ``telstate_log.replay.Archiver`` into a
  segment log (target: at least 200k events/s), if the archiver exists.

Rates are best of ``--repeat``; ratios are ours / katsdptelstate's.  The
exit status is 1 if a figure misses its target (unless ``--quick``) or if a
consistency check fails: every run must leave the samples it wrote (in
Redis, for both libraries, and in the stream), the follower must see every
latency write exactly once and in order, the materialised follower and the
archive must reach the stream's position holding what Redis holds.
``--quick`` runs small sizes and checks those, not the speed (for CI).

    python tools/bench_shared.py              # 1M events materialised and archived
    python tools/bench_shared.py --quick      # CI: the figures are consistent
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import redis

import telstate_log
from telstate_log import encode_value
from telstate_log.backends import RedisLogBackend, StreamFollower
from telstate_log.backends import _redis_log_common as lc
from telstate_log.core._types import MutableKeyUpdate

try:
    from katsdptelstate.redis import RedisBackend as KtRedisBackend
    from katsdptelstate.telescope_state import TelescopeState as KtTelescopeState
except ImportError:  # pragma: no cover - the interop extra
    sys.exit("bench_shared.py needs katsdptelstate (pip install -e .[interop])")


class Server:
    """A private redis-server on a free loopback port, persistence off."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-shared-")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.dir,
             "--save", "", "--appendonly", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        client.close()

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, bool | None]] = []
        self.failed_checks: list[str] = []

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.failed_checks.append(what)
            print(f"CHECK FAILED: {what}", flush=True)

    def row(self, name: str, figure: str, target: str = "", ok: bool | None = None) -> None:
        self.rows.append((name, figure, target, ok))
        print(f"  {name}: {figure}" + (f"  (target {target}: {'ok' if ok else 'MISSED'})"
                                       if target else ""), flush=True)


def best_rate(fn: Callable[[int], int], repeats: int) -> float:
    """Best of `repeats` runs of fn(run number) (which returns an operation count), in ops/s."""
    rates = []
    for run in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        n = fn(run)
        rates.append(n / (time.perf_counter() - t0))
    return max(rates)


def bench_add(server: Server, n: int, repeats: int, report: Report) -> None:
    kt = KtTelescopeState(KtRedisBackend(redis.Redis(port=server.port, db=1)))
    backend = RedisLogBackend.from_url(server.url(0), source="bench add")
    ours = telstate_log.TelescopeState(backend)
    start = backend.position
    rates = {"katsdptelstate": 0.0, "ours": 0.0}
    for r in range(repeats):  # taking turns, so that both meet the same load
        for name, ts in (("katsdptelstate", kt), ("ours", ours)):
            def run(_: int, add: Any = ts.add, r: int = r) -> int:
                for i in range(n):
                    add("sensor", i * 0.5, ts=1e9 + r * n + i)
                return n
            rates[name] = max(rates[name], best_rate(run, 1))
    ratio = rates["ours"] / rates["katsdptelstate"]
    report.row("add, katsdptelstate", f"{rates['katsdptelstate']:,.0f}/s")
    report.row("add, ours", f"{rates['ours']:,.0f}/s")
    report.row("add ratio", f"{ratio:.2f}x", ">= 0.9x", ratio >= 0.9)
    report.check(len(ours.get_range("sensor", st=0)) == n * repeats
                 and len(kt.get_range("sensor", st=0)) == n * repeats,
                 "add: both libraries hold every sample")
    report.check(backend.position - start == n * repeats, "add: one event per sample")
    backend.close()


def bench_many(server: Server, n: int, loop: int, repeats: int, report: Report) -> None:
    kt = KtTelescopeState(KtRedisBackend(redis.Redis(port=server.port, db=1)))
    backend = RedisLogBackend.from_url(server.url(0), source="bench many")

    def theirs(r: int) -> int:
        for i in range(loop):
            kt.add("loop", i * 0.5, ts=2e9 + r * loop + i)
        return loop

    def ours(r: int) -> int:
        values = [encode_value(i * 0.5) for i in range(n)]
        added = backend.add_mutable_many(b"many", values, 2e9 + r * n + np.arange(n, dtype=float))
        report.check(added == n, "add_mutable_many: every sample new")
        return n

    their_rate = best_rate(theirs, repeats)
    start = backend.position
    our_rate = best_rate(ours, repeats)
    ratio = our_rate / their_rate
    report.row("katsdptelstate add loop", f"{their_rate:,.0f} samples/s")
    report.row("add_mutable_many", f"{our_rate:,.0f} samples/s ({n:,} per call)")
    report.row("add_mutable_many ratio", f"{ratio:.1f}x", ">= 10x", ratio >= 10)
    report.check(backend.position - start == n * repeats, "add_mutable_many: one event each")
    report.check(len(backend.get_range(b"many", 0.0, math.inf, False, True) or ()) == n * repeats,
                 "add_mutable_many: Redis holds every sample")
    backend.close()


def follower_child(url: str, count: int) -> None:
    """In another process: report how long after each write the follower saw it."""
    follower = StreamFollower.from_url(url)
    monitor = follower.monitor_keys([b"latency"])
    next(monitor)
    print("ready", flush=True)
    delays: list[float] = []
    order: list[float] = []
    while len(order) < count:
        update = monitor.send(30.0)
        if update is None:
            break
        if isinstance(update, MutableKeyUpdate):
            seen = time.monotonic()
            sent = telstate_log.decode_value(update.value)
            delays.append(seen - sent)
            order.append(update.timestamp)
    print(json.dumps({"delays": delays, "order": order}), flush=True)
    follower.close()


def bench_latency(server: Server, count: int, report: Report) -> None:
    url = server.url(0)
    child = subprocess.Popen([sys.executable, __file__, "--follower-child", url, str(count)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        report.check(False, "latency: the follower process started")
        child.kill()
        return
    ts = telstate_log.TelescopeState(RedisLogBackend.from_url(url, source="bench latency"))
    for i in range(count):
        ts.add("latency", time.monotonic(), ts=float(i))  # CLOCK_MONOTONIC: one per host
        time.sleep(0.001)  # writes apart: each one's own latency, not a batch's
    result = json.loads(child.stdout.readline() or "{}")
    child.wait(60)
    delays = sorted(result.get("delays", []))
    report.check(result.get("order") == [float(i) for i in range(count)],
                 "latency: the follower saw every write once, in order")
    if not delays:
        return
    p50 = statistics.median(delays) * 1e3
    p99 = delays[min(len(delays) - 1, math.ceil(0.99 * len(delays)) - 1)] * 1e3
    report.check(0 < p50 <= p99 <= delays[-1] * 1e3, "latency: 0 < p50 <= p99 <= max")
    report.row("follower latency p50", f"{p50:.2f} ms ({count} writes, another process)")
    report.row("follower latency p99", f"{p99:.2f} ms", "<= 5 ms", p99 <= 5.0)


def fill_stream(url: str, stream: str, events: int, keys: int) -> RedisLogBackend:
    """`events` ADD records over `keys` sensors, written by the library's add function
    (pipelined: one FCALL per event, as ``add`` sends it, many per round trip)."""
    backend = RedisLogBackend.from_url(url, stream=stream, source="bench fill")
    backend.add_mutable(b"sensor-0", encode_value(0.0), 1.0)  # registers the session
    target = backend.target
    names = [b"sensor-%d" % k for k in range(keys)]
    pipe = backend.client.pipeline(transaction=False)
    for i in range(1, events):
        member = lc.add_args(encode_value(i * 0.25), 1.0 + i)[0]
        pipe.execute_command(  # type: ignore[no-untyped-call]
            "FCALL", "tslog_add", 1, names[i % keys], *target.args(), member)
        if i % 5000 == 0:
            pipe.execute()
    pipe.execute()
    return backend


def bench_materialise(server: Server, events: int, keys: int, repeats: int,
                      report: Report, tmp: Path) -> None:
    url = server.url(3)
    t0 = time.perf_counter()
    backend = fill_stream(url, "materialise", events, keys)
    position = backend.position
    report.row("stream filled", f"{events:,} events over {keys} sensors in "
               f"{time.perf_counter() - t0:.1f} s")
    report.check(position == events, "materialise: one event per add")
    followers: list[StreamFollower] = []

    def run(_: int) -> int:
        followers.append(StreamFollower.from_url(url, stream="materialise"))
        return position
    rate = best_rate(run, repeats)
    report.row("materialise", f"{rate:,.0f} events/s", ">= 300k/s", rate >= 300_000)
    for follower in followers:
        report.check(follower.position == position, "materialise: the follower reached the end")
    for follower in followers[:-1]:
        follower.close()
    follower = followers[-1]
    counts = {name: len(backend.get_range(name, 0.0, math.inf, False, True) or ())
              for name in (b"sensor-%d" % k for k in range(keys))}
    report.check(sum(counts.values()) == events, "materialise: Redis holds every sample")
    for name, n in counts.items():
        got = follower.get_range(name, 0.0, math.inf, False, True) or []
        same = got == backend.get_range(name, 0.0, math.inf, False, True) if events <= 100_000 \
            else follower.get(name) == backend.get(name)  # (a big run: the last sample)
        report.check(len(got) == n and same,
                     f"materialise: the follower holds {name.decode()} as Redis does")
    follower.close()
    bench_archive(backend, position, report, tmp)
    backend.close()


def bench_archive(backend: RedisLogBackend, position: int, report: Report, tmp: Path) -> None:
    import telstate_log.replay

    Archiver = getattr(telstate_log.replay, "Archiver", None)  # (another part of issue 13)
    if Archiver is None:
        report.row("archive", "skipped: telstate_log.replay.Archiver does not exist")
        return
    archiver = Archiver(backend, tmp / "archive")
    try:
        t0 = time.perf_counter()
        copied = archiver.run_once()
        rate = copied / (time.perf_counter() - t0)
        report.row("archive", f"{rate:,.0f} events/s", ">= 200k/s", rate >= 200_000)
        report.check(copied >= position and archiver.position == position,
                     "archive: every event copied, up to the stream's position")
    finally:
        archiver.close()


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--follower-child":
        follower_child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes; check, don't time")
    parser.add_argument("--events", type=int, help="events to materialise (default 1M)")
    parser.add_argument("--keys", type=int, default=10, help="sensors they are spread over")
    parser.add_argument("--repeat", type=int, help="best of this many runs")
    args = parser.parse_args()
    quick = args.quick
    repeats = args.repeat or (1 if quick else 3)
    events = args.events or (20_000 if quick else 1_000_000)
    report = Report()
    server = Server()
    tmp = Path(tempfile.mkdtemp(prefix="bench-shared-archive-"))
    try:
        print(f"redis-server on port {server.port}; best of {repeats}", flush=True)
        bench_add(server, 300 if quick else 10_000, repeats, report)
        bench_many(server, 2_000 if quick else 100_000, 300 if quick else 10_000, repeats,
                   report)
        bench_latency(server, 100 if quick else 2_000, report)
        bench_materialise(server, events, args.keys, repeats, report, tmp)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    missed = [name for name, _, _, ok in report.rows if ok is False]
    if report.failed_checks:
        sys.exit(f"{len(report.failed_checks)} consistency check(s) failed: "
                 + "; ".join(report.failed_checks))
    if missed and not quick:
        sys.exit("missed target(s): " + ", ".join(missed))
    print("all checks passed" + ("" if quick else "; all targets met"))


if __name__ == "__main__":
    main()
