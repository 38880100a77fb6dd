#!/usr/bin/env python3
"""kill -9 loop: writers killed at random moments, per fsync policy.

    python tools/killloop.py                     # quick: 5 cycles per policy
    python tools/killloop.py --cycles 300        # soak by cycles
    python tools/killloop.py --seconds 900       # soak by time (per policy)
    python tools/killloop.py --policies never,interval --max-delay 1.0

Theory of operation
-------------------
For each policy (``always``; ``interval`` and ``never`` with the default
5 ms ``flush_interval``; ``interval-flush0``, write-through) a child process
(this script with ``--child``) opens the log and writes as fast as it can:
event i is a sample of sensor ``k`` (value derived from i, timestamp i)
except every 50th, which sets sub-key i of the indexed key ``idx``, so
event i is at position i + 1.  After each write call returns it prints
``i <monotonic ns>`` (the acknowledgement).  The parent kills it with
SIGKILL after a random delay, collects every acknowledgement, reopens the
log (recovery) and checks that it holds exactly events 0..P-1 for some P:
the timestamps of all samples, the values of the samples written since the
previous cycle and every sub-key are compared with what event i must be,
and P may not exceed the acknowledged count by more than the one write in
flight.  The next cycle's child continues from P.

A killed process loses nothing the OS already has, so write-through
(``always``, ``interval-flush0``) must lose no acknowledged write, and the
buffered policies at most what sat in the writer's buffer: the writes of
the last ``flush_interval`` (plus scheduling delay).  The table reports,
per policy, the acknowledged writes lost per cycle (max, distribution) and
the span of acknowledgement times they cover (the *loss window*) next to
the README's promise.  The exit status is 1 if any check failed.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np

#: policy name -> (fsync, flush_interval)
POLICIES: dict[str, tuple[str, float]] = {
    "always": ("always", 0.005),
    "interval": ("interval", 0.005),
    "interval-flush0": ("interval", 0.0),
    "never": ("never", 0.005),
}
#: what the README promises a kill -9 loses (ms of acknowledged writes)
PROMISE_MS: dict[str, float] = {"always": 0.0, "interval": 5.0, "interval-flush0": 0.0,
                                "never": 5.0}
INDEX_EVERY = 50


# ------------------------------------------------------------------ the events
def value_of(i: int) -> bytes:
    """The encoded value of event i (mostly floats, some strings up to 200 bytes)."""
    from telstate_log import encode_value

    return encode_value(i * 0.25 if i % 7 else "s" * (i % 200))


def is_indexed(i: int) -> bool:
    return i % INDEX_EVERY == INDEX_EVERY - 1


def write_event(backend: object, i: int) -> None:
    if is_indexed(i):
        backend.set_indexed(b"idx", str(i).encode(), value_of(i))  # type: ignore[attr-defined]
    else:
        backend.add_mutable(b"k", value_of(i), float(i))  # type: ignore[attr-defined]


def child(path: str, policy: str, segment_bytes: int, checkpoint_bytes: int) -> None:
    """Write events from the log's position on, acknowledging each on stdout."""
    from telstate_log.backends import LogBackend

    fsync, flush = POLICIES[policy]
    backend = LogBackend(path, fsync=fsync, flush_interval=flush, segment_bytes=segment_bytes,
                         checkpoint_bytes=checkpoint_bytes, source="killloop")
    i = backend.position
    out = sys.stdout
    out.write(f"ready {i}\n")
    out.flush()
    clock = time.monotonic_ns
    while True:
        write_event(backend, i)
        out.write(f"{i} {clock()}\n")
        out.flush()
        i += 1


# ---------------------------------------------------------------- the parent
@dataclass
class PolicyStats:
    policy: str
    cycles: int = 0
    acked: int = 0  #: acknowledged writes, all cycles
    lost: list[int] = field(default_factory=list)  #: acknowledged writes lost, per cycle
    window_ms: list[float] = field(default_factory=list)  #: loss window, cycles that lost some
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def lost_max(self) -> int:
        return max(self.lost, default=0)


def _run_child(path: str, policy: str, delay: float, segment_bytes: int,
               checkpoint_bytes: int) -> tuple[int, dict[int, int]]:
    """Start a writer, SIGKILL it after `delay` s; (start position, acks i -> ns)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", path, policy,
           str(segment_bytes), str(checkpoint_bytes)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdout is not None
    acks: dict[int, int] = {}
    first = proc.stdout.readline()
    if not first.startswith("ready "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"writer did not start: {first!r}")
    start = int(first.split()[1])

    def drain() -> None:  # read concurrently: a full pipe would stall the writer
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if len(parts) == 2:
                acks[int(parts[0])] = int(parts[1])

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    reader.join()
    return start, acks


def _check(path: str, start: int, acked: int) -> tuple[int, list[str]]:
    """Reopen; (position, problems) -- the log must hold exactly events 0..P-1."""
    from telstate_log.backends import LogBackend

    problems: list[str] = []
    with LogBackend(path, checkpoint_bytes=None) as b:
        pos = b.position
        if pos < start:
            problems.append(f"position {pos} below {start}, checked in an earlier cycle")
        if pos > acked + 1:
            problems.append(f"position {pos} beyond the {acked} acknowledged writes + 1")
        events = np.arange(pos)
        samples = events[events % INDEX_EVERY != INDEX_EVERY - 1]
        arrays = b.get_range_arrays(b"k", 0.0, math.inf, False, False)
        ts = arrays.timestamps if arrays is not None else np.zeros(0)
        if len(ts) != len(samples) or not np.array_equal(ts, samples.astype(np.float64)):
            problems.append(f"sensor timestamps are not exactly the first {pos} events")
        else:
            lo = float(max(0, min(start, pos) - 2 * INDEX_EVERY))
            got = b.get_range(b"k", lo, math.inf, False, False) or []
            want = [(value_of(int(t)), t) for t in samples.astype(np.float64) if t >= lo]
            if got != want:
                problems.append(f"sensor values differ from the events after {lo:.0f}")
        idx = b.get(b"idx")[0] or {}
        want_idx = {str(i).encode(): value_of(i) for i in range(INDEX_EVERY - 1, pos,
                                                                INDEX_EVERY)}
        if idx != want_idx:
            problems.append("indexed sub-keys differ from the events")
    return pos, problems


def run_policy(policy: str, path: str, *, cycles: int | None = None,
               seconds: float | None = None, max_delay: float = 0.3,
               rng: random.Random | None = None, segment_bytes: int = 256 << 10,
               checkpoint_bytes: int = 1 << 20, verbose: bool = False) -> PolicyStats:
    """Run kill cycles on the log at `path` until `cycles` or `seconds` is reached."""
    rng = rng or random.Random()
    stats = PolicyStats(policy)
    t0 = time.monotonic()
    while (cycles is None or stats.cycles < cycles) and \
            (seconds is None or time.monotonic() - t0 < seconds):
        start, acks = _run_child(path, policy, rng.uniform(0.0, max_delay), segment_bytes,
                                 checkpoint_bytes)
        acked = max(acks, default=start - 1) + 1  # events acknowledged (positions)
        pos, problems = _check(path, start, acked)
        stats.cycles += 1
        stats.acked += max(0, acked - start)
        lost = max(0, acked - pos)
        stats.lost.append(lost)
        if lost and pos in acks:
            stats.window_ms.append((acks[acked - 1] - acks[pos]) / 1e6)
        for p in problems:
            stats.violations.append(f"cycle {stats.cycles}: {p}")
        if verbose:
            print(f"  {policy} cycle {stats.cycles}: {acked - start} acked, position {pos}, "
                  f"lost {lost}" + (f" PROBLEMS: {problems}" if problems else ""), flush=True)
    stats.seconds = time.monotonic() - t0
    return stats


def _distribution(lost: list[int]) -> str:
    bins = [("0", 0, 0), ("1-10", 1, 10), ("11-100", 11, 100), (">100", 101, 1 << 62)]
    return " ".join(f"{name}:{sum(lo <= x <= hi for x in lost)}" for name, lo, hi in bins)


def print_table(all_stats: list[PolicyStats]) -> None:
    head = (f"{'policy':<16}{'cycles':>7}{'acked':>10}{'lost max':>9}{'lost med':>9}"
            f"{'window ms med/max':>18}  {'promise':<10}{'verdict':<9}lost per cycle")
    print(head)
    print("-" * len(head))
    for s in all_stats:
        promise = PROMISE_MS[s.policy]
        window = max(s.window_ms, default=0.0)
        if s.violations:
            verdict = "VIOLATION"
        elif promise == 0:
            verdict = "ok" if s.lost_max == 0 else "LOSS"
        else:
            verdict = "ok" if window <= promise else "over"
        med = statistics.median(s.lost) if s.lost else 0
        wmed = statistics.median(s.window_ms) if s.window_ms else 0.0
        windows = f"{wmed:.2f}/{window:.2f}"
        print(f"{s.policy:<16}{s.cycles:>7}{s.acked:>10}{s.lost_max:>9}{med:>9.0f}"
              f"{windows:>18}  {f'<= {promise:g} ms':<10}{verdict:<9}{_distribution(s.lost)}")
    print("\nlost: acknowledged writes missing after the restart; window: time between "
          "the first and the last of them being acknowledged (how long the buffer went "
          "unflushed).\npromise (README, process killed): always and flush_interval=0 lose "
          "nothing; interval and never at most the last flush_interval (5 ms) of writes.\n"
          "verdict 'over': a window exceeded the promise (the flusher thread was late); "
          "'LOSS': a write-through policy lost a write; 'VIOLATION': not a prefix.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs=4, metavar=("LOG", "POLICY", "SEG", "CKPT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--cycles", type=int, help="kill cycles per policy (default 5)")
    parser.add_argument("--seconds", type=float, help="run each policy this long")
    parser.add_argument("--max-delay", type=float, default=0.3,
                        help="kill after a uniform random delay up to this (s)")
    parser.add_argument("--segment-bytes", type=int, default=256 << 10)
    parser.add_argument("--checkpoint-bytes", type=int, default=1 << 20)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dir", help="where to put the logs (default: a temporary directory)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        path, policy, seg, ckpt = args.child
        child(path, policy, int(seg), int(ckpt))
        return 0
    cycles = args.cycles if args.cycles is not None or args.seconds else 5
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    for p in policies:
        if p not in POLICIES:
            parser.error(f"unknown policy {p!r} (choose from {', '.join(POLICIES)})")
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    base = tempfile.mkdtemp(prefix="killloop-", dir=args.dir)
    print(f"kill -9 loop: {', '.join(policies)}; "
          f"{f'{cycles} cycles' if cycles else ''}{' / ' if cycles and args.seconds else ''}"
          f"{f'{args.seconds:g} s' if args.seconds else ''} per policy, kill after "
          f"0..{args.max_delay:g} s, seed {seed}, logs in {base}", flush=True)
    all_stats = []
    try:
        for p in policies:
            st = run_policy(p, os.path.join(base, p), cycles=cycles, seconds=args.seconds,
                            max_delay=args.max_delay, rng=random.Random(f"{seed}-{p}"),
                            segment_bytes=args.segment_bytes,
                            checkpoint_bytes=args.checkpoint_bytes, verbose=args.verbose)
            all_stats.append(st)
            print(f"  {p}: {st.cycles} cycles in {st.seconds:.1f} s", flush=True)
        print()
        print_table(all_stats)
        bad = [v for s in all_stats for v in s.violations]
        for v in bad[:20]:
            print("VIOLATION", v)
        return 1 if bad else 0
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
