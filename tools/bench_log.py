#!/usr/bin/env python3
"""Log benchmarks: replay rate, reopen with a checkpoint, follower latency, as-of queries.

    python tools/bench_log.py            # the issue's sizes (1e6 replay, 1e7 reopen)
    python tools/bench_log.py --quick    # small sizes (seconds)

Each figure is printed with the target it is checked against.  katsdptelstate
has no log, so where a baseline exists in the same run it is printed too
(replaying a log vs katsdptelstate's load_from_file of the same data as an
RDB file, which needs the interop extra).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

import numpy as np

import telstate_log
from telstate_log.backends import LogBackend


def write_single_events(path: str, n: int, keys: int) -> None:
    enc = telstate_log.encode_value
    with LogBackend(path, fsync="never", checkpoint_bytes=None) as b:
        names = [f"m{i:03d}_sensor".encode() for i in range(keys)]
        add = b.add_mutable
        for i in range(n):
            add(names[i % keys], enc(i * 0.5), 1e9 + i)


def bench_replay(tmp: str, n: int, keys: int) -> dict[str, float]:
    path = os.path.join(tmp, "replay")
    t0 = time.perf_counter()
    write_single_events(path, n, keys)
    write_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(3):
        gc.collect()
        t0 = time.perf_counter()
        b = LogBackend(path, readonly=True, follow=False, use_checkpoints=False)
        best = min(best, time.perf_counter() - t0)
        assert b.position == n
        b.close()
    return {"events": n, "write s": write_s, "replay s": best, "replay events/s": n / best}


def bench_reopen(tmp: str, n: int, keys: int) -> dict[str, float]:
    path = os.path.join(tmp, "reopen")
    enc = telstate_log.encode_value
    per = n // keys
    values = [enc(float(i)) for i in range(per)]
    t0 = time.perf_counter()
    with LogBackend(path, fsync="never", segment_bytes=256 << 20) as b:
        for k in range(keys):
            b.add_mutable_many(f"m{k:04d}_sensor".encode(), values,
                               1e9 + np.arange(per, dtype=np.float64))
        # close() writes a checkpoint because the tail is large
    write_s = time.perf_counter() - t0
    best = float("inf")
    for _ in range(3):
        gc.collect()
        t0 = time.perf_counter()
        b = LogBackend(path, readonly=True, follow=False)
        best = min(best, time.perf_counter() - t0)
        assert b.position == per * keys
        b.close()
    t0 = time.perf_counter()
    b = LogBackend(path, readonly=True, follow=False, use_checkpoints=False)
    full = time.perf_counter() - t0
    b.close()
    return {"events": per * keys, "write s": write_s, "reopen s (checkpoint)": best,
            "reopen s (full replay)": full}


def bench_as_of(tmp: str) -> dict[str, float]:
    path = os.path.join(tmp, "replay")  # the 1e6-event log from bench_replay
    b = LogBackend(path, readonly=True, follow=False)
    n = b.position
    ts = telstate_log.TelescopeState(b)
    firsts, repeats = [], []
    rng = np.random.default_rng(1)
    for target in rng.integers(1, n, 20).tolist():
        t0 = time.perf_counter()
        view = ts.as_of(position=target)
        view.get_range("m000_sensor", st=0)
        firsts.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(100):
            view.get("m001_sensor")
        repeats.append((time.perf_counter() - t0) / 100)
    live_t0 = time.perf_counter()
    for _ in range(100):
        ts.get("m001_sensor")
    live = (time.perf_counter() - live_t0) / 100
    b.close()
    return {"first query ms (median)": statistics.median(firsts) * 1e3,
            "first query ms (max)": max(firsts) * 1e3,
            "repeat get us (median)": statistics.median(repeats) * 1e6,
            "live get us": live * 1e6}


FOLLOW_WRITER = textwrap.dedent("""
    import sys, time
    from telstate_log.backends import LogBackend
    import telstate_log
    b = LogBackend(sys.argv[1], fsync="interval")
    ts = telstate_log.TelescopeState(b)
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(int(sys.argv[2])):
        ts.add("probe", time.time(), ts=float(i))
        time.sleep(float(sys.argv[3]))
    b.close()
""")


def bench_follow(tmp: str, n: int) -> dict[str, float]:
    path = os.path.join(tmp, "follow")
    os.makedirs(path)
    proc = subprocess.Popen([sys.executable, "-c", FOLLOW_WRITER, path, str(n), "0.005"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().startswith("ready")
    reader = LogBackend(path, readonly=True)
    monitor = reader.monitor_keys([b"probe"])
    monitor.send(None)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    latencies: list[float] = []
    deadline = time.monotonic() + 60
    while len(latencies) < n and time.monotonic() < deadline:
        update = monitor.send(1.0)
        if update is not None and hasattr(update, "value"):
            latencies.append(time.time() - telstate_log.decode_value(update.value))
    monitor.close()
    proc.wait()
    inotify = bool(reader.log.follower and reader.log.follower.uses_inotify)
    reader.close()
    lat = np.array(latencies) * 1e3
    return {"notifications": len(lat), "inotify": float(inotify),
            "p50 ms": float(np.percentile(lat, 50)), "p99 ms": float(np.percentile(lat, 99)),
            "max ms": float(lat.max())}


def show(title: str, results: dict[str, Any], targets: dict[str, str]) -> None:
    print(f"\n{title}")
    for k, v in results.items():
        note = f"   (target: {targets[k]})" if k in targets else ""
        print(f"  {k:<26}{v:>14.4g}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n_replay = 100_000 if args.quick else 1_000_000
    n_reopen = 1_000_000 if args.quick else 10_000_000
    tmp = tempfile.mkdtemp(prefix="telstate-bench-log-")
    try:
        show("replay (single-event frames, 1000 keys)", bench_replay(tmp, n_replay, 1000),
             {"replay events/s": ">= 500000"})
        show("reopen with checkpoint (ADD_BATCH-written, 1000 keys)",
             bench_reopen(tmp, n_reopen, 1000), {"reopen s (checkpoint)": "< 2 (1e7 events)"})
        show("as-of views on the replay log", bench_as_of(tmp),
             {"first query ms (median)": "well under 1000"})
        show("cross-process follower (writer every 5 ms)",
             bench_follow(tmp, 100 if args.quick else 400), {"p99 ms": "< 20"})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
