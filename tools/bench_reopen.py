#!/usr/bin/env python3
"""Reopen time against the number of distinct keys (one sample each).

    python tools/bench_reopen.py                  # 10k, 100k and 400k keys
    python tools/bench_reopen.py --keys 20000 80000

For each size a log is written with one ``add_mutable`` per key, then
reopened read-only, in a new process each time as a reopen is: replaying
every segment (``use_checkpoints=False``, the cost after a crash or without
a checkpoint) and as a clean ``close()`` left it (which writes a checkpoint
when the tail is costly to replay).  The best of ``--repeat`` opens is
printed (wall clock, and CPU time: the machine may be shared), with the
targets: a full replay of 100k keys under 1 s, and 400k keys under four
times the 100k figure (linear).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import telstate_log
from telstate_log.backends import LogBackend
from telstate_log.storage._checkpoint import list_checkpoints


def write_log(path: str, keys: int) -> float:
    """One float sample for each of `keys` new keys; returns the seconds taken."""
    enc = telstate_log.encode_value
    t0 = time.perf_counter()
    with LogBackend(path, fsync="never") as b:
        add = b.add_mutable
        for i in range(keys):
            add(b"sensor_%07d" % i, enc(i * 0.5), 1e9 + i)
    return time.perf_counter() - t0


OPEN = textwrap.dedent("""
    import sys, time
    from telstate_log.backends import LogBackend
    path, keys, use = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    t0, c0 = time.perf_counter(), time.process_time()
    b = LogBackend(path, readonly=True, follow=False, use_checkpoints=use)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert b.position == keys and len(b.keys(b"*")) == keys
    print(wall, cpu)
""")


def best_open(path: str, keys: int, repeat: int, use_checkpoints: bool) -> tuple[float, float]:
    """Best (wall-clock, CPU) seconds of `repeat` read-only opens, each in a new
    process as a reopen is (the allocator starts afresh, not warmed by an
    earlier, larger state)."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", OPEN, path, str(keys),
                              "1" if use_checkpoints else "0"],
                             check=True, capture_output=True, text=True).stdout.split()
        wall, cpu = min(wall, float(out[0])), min(cpu, float(out[1]))
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, nargs="+", default=[10_000, 100_000, 400_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="telstate-bench-reopen-")
    replay: dict[int, tuple[float, float]] = {}
    try:
        print(f"{'keys':>8} {'log MB':>7} {'write s':>8} {'replay s':>9} {'(cpu s)':>8} "
              f"{'us/key':>7} {'after close s':>14} {'checkpoint':>10}")
        for keys in args.keys:
            path = os.path.join(tmp, f"k{keys}")
            write_s = write_log(path, keys)
            size = sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path)
                       if n.endswith(".seg"))
            replay[keys] = best_open(path, keys, args.repeat, use_checkpoints=False)
            closed, _ = best_open(path, keys, args.repeat, use_checkpoints=True)
            ckpt = "yes" if list_checkpoints(path) else "no"
            wall, cpu = replay[keys]
            print(f"{keys:>8} {size / 1e6:>7.1f} {write_s:>8.2f} {wall:>9.3f} {cpu:>8.3f} "
                  f"{wall / keys * 1e6:>7.2f} {closed:>14.3f} {ckpt:>10}")
            shutil.rmtree(path)
        if 100_000 in replay:
            print(f"\nfull replay of 100k keys: {replay[100_000][0]:.3f} s   (target: < 1 s)")
        if 100_000 in replay and 400_000 in replay:
            wall = replay[400_000][0] / replay[100_000][0]
            cpu = replay[400_000][1] / replay[100_000][1]
            print(f"400k / 100k keys: {wall:.2f} (cpu {cpu:.2f})   (target: < 4, linear); "
                  f"400k keys: {replay[400_000][0]:.3f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
