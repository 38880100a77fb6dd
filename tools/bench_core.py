#!/usr/bin/env python3
"""Core speed and memory against katsdptelstate's MemoryBackend, measured in one run.

Prints absolute figures and ratios (ours / katsdptelstate; higher is better
for rates, lower for memory and times).  katsdptelstate must be installed
(``pip install -e .[interop]``).  Sizes are arguments so a quick run fits CI:

    python tools/bench_core.py              # the issue's sizes (1e6 samples)
    python tools/bench_core.py --quick      # a smaller smoke run
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import katsdptelstate
from katsdptelstate.memory import MemoryBackend as KtMemoryBackend

import telstate_log
from telstate_log.backends import LogBackend, MemoryBackend


def best_rate(fn: Callable[[], int], repeats: int) -> float:
    """Best of `repeats` runs of fn() (which returns the operation count), in ops/s."""
    rates = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return max(rates)


def bench_add(make: Callable[[], Any], n: int, repeats: int) -> float:
    def run() -> int:
        ts = make()
        add = ts.add
        for i in range(n):
            add("sensor", i * 0.5, ts=1e9 + i)
        close(ts)
        return n
    return best_rate(run, repeats)


def close(ts: Any) -> None:
    backend = ts.backend
    if isinstance(backend, LogBackend):
        backend.close()


def filled(make: Callable[[], Any], n: int) -> Any:
    ts = make()
    backend = ts.backend
    enc = telstate_log.encode_value
    add = backend.add_mutable
    for i in range(n):
        add(b"sensor", enc(i * 0.5), 1e9 + i * 0.1)
    return ts


def memory_per_sample(make: Callable[[], Any], n: int) -> float:
    gc.collect()
    ts = make()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    backend = ts.backend
    enc = telstate_log.encode_value
    add = backend.add_mutable
    for i in range(n):
        add(b"sensor", enc(i * 0.5), 1e9 + i * 0.1)
    if hasattr(backend, "_state"):
        backend._state.sensor(b"sensor")  # settle, as a read would
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    close(ts)
    return (after - before) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--samples", type=int, default=None, help="samples in the big key")
    args = parser.parse_args()
    big = args.samples or (100_000 if args.quick else 1_000_000)
    n_add = 50_000 if args.quick else 200_000
    repeats = 2 if args.quick else 3
    tmp = tempfile.mkdtemp(prefix="telstate-bench-")
    counter = iter(range(10**9))

    def kt() -> Any:
        return katsdptelstate.TelescopeState(KtMemoryBackend())

    def mem() -> Any:
        return telstate_log.TelescopeState(MemoryBackend())

    def log() -> Any:
        return telstate_log.TelescopeState(
            LogBackend(f"{tmp}/log{next(counter)}", fsync="interval", checkpoint_bytes=None))

    makers = {"katsdptelstate": kt, "memory": mem, "log": log}
    results: dict[str, dict[str, float]] = {name: {} for name in makers}
    try:
        for name, make in makers.items():
            results[name]["add/s"] = bench_add(make, n_add, repeats)
        for name, make in makers.items():
            ts = filled(make, big)
            def gets(get: Any = ts.get) -> int:
                for _ in range(n_add):
                    get("sensor")
                return n_add
            results[name]["get/s"] = best_rate(gets, repeats)
            rng = random.Random(1)
            span = big * 0.1
            starts = [1e9 + rng.random() * (span - 10.0) for _ in range(2000)]
            get_range = ts.get_range

            def ranges(get_range: Any = get_range, starts: list[float] = starts) -> int:
                for st in starts:
                    get_range("sensor", st=st, et=st + 10.0)  # 100 samples
                return len(starts)
            results[name]["range100/s"] = best_rate(ranges, repeats)
            times = []
            for _ in range(repeats):
                gc.collect()
                t0 = time.perf_counter()
                out = get_range("sensor", st=0)
                times.append(time.perf_counter() - t0)
                assert len(out) == big
                del out
            results[name]["full range s"] = min(times)
            close(ts)
            del ts
        for name, make in makers.items():
            results[name]["bytes/sample"] = memory_per_sample(make, big)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = results["katsdptelstate"]
    print(f"sizes: add {n_add} samples, big key {big} samples, best of {repeats}")
    header = f"{'metric':<16}{'katsdptelstate':>16}{'memory':>14}{'ratio':>8}" \
             f"{'log':>14}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for metric in base:
        row = f"{metric:<16}{base[metric]:>16.4g}"
        for name in ("memory", "log"):
            value = results[name][metric]
            ratio = value / base[metric]
            if metric in ("full range s", "bytes/sample"):
                ratio = base[metric] / value if value else math.inf
            row += f"{value:>14.4g}{ratio:>7.2f}x"
        print(row)
    print("ratios are 'times better than katsdptelstate' (>1 is better; for time and memory"
          " the inverse is shown)")


if __name__ == "__main__":
    main()
