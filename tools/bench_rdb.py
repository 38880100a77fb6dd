#!/usr/bin/env python3
"""Benchmark RDB export and import of telstate_log backends against katsdptelstate 1.0.0.

Everything is measured in the same run on the same data: `--keys` float
sensors of `--samples` samples each (1000 x 1000 = 1e6 samples by default).

* export: ``export_backend`` from our MemoryBackend and from a LogBackend
  holding the data, vs katsdptelstate's ``RDBWriter.save`` of its
  MemoryBackend holding the same data;
* import: ``load_from_file`` into our MemoryBackend and into a fresh
  LogBackend (``fsync="never"``: the time to record the events, not the
  disk's), vs katsdptelstate's ``MemoryBackend.load_from_file``, all of the
  file katsdptelstate's RDBWriter wrote; plus re-importing the same file
  into the log (a no-op).

A second workload of many small sensors (`--small-keys` x 10 samples) shows
the per-key costs.  Each step runs `--repeat` times and the best time is kept.  Ratios are
katsdptelstate's time divided by ours (above 1: we are faster).  The targets
are export >= 1x and import into memory >= 3x.

Usage: ``python tools/bench_rdb.py [--quick] [--keys N] [--samples M] [--repeat R]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from telstate_log.backends import LogBackend, MemoryBackend
from telstate_log.replay._export import export_backend

try:
    import katsdptelstate
    from katsdptelstate.memory import MemoryBackend as TheirMemoryBackend
    from katsdptelstate.rdb_writer import RDBWriter
except ImportError:  # pragma: no cover - the oracle is required for ratios
    sys.exit("bench_rdb.py needs katsdptelstate (pip install katsdptelstate==1.0.0) "
             "to measure ratios")


def float_values(n: int, offset: float) -> list[bytes]:
    """katsdptelstate's encodings of n floats (0xFF + msgpack float 64)."""
    raw = (np.arange(n) * 0.25 + offset).astype(">f8").tobytes()
    return [b"\xff\xcb" + raw[i:i + 8] for i in range(0, len(raw), 8)]


def fill(backend: MemoryBackend | LogBackend, keys: int, samples: int) -> None:
    for k in range(keys):
        ts = 1.7e9 + k + 0.5 * np.arange(samples)
        backend.add_mutable_many(b"sensor_%05d" % k, float_values(samples, k), ts)
    backend.set_immutable(b"obs_name", b"\xff\xa8scan 001")
    backend.set_indexed(b"table", b"\xff\xa1x", b"\xff\x01")


def best(func: Callable[[], object], repeat: int,
         setup: Callable[[], object] | None = None) -> float:
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=1000, help="samples per key")
    parser.add_argument("--small-keys", type=int, default=10_000, metavar="N",
                        help="second workload: N sensors of 10 samples (0: skip)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="100 keys x 100 samples and 1000 x 10, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.keys, args.samples, args.small_keys, args.repeat = 100, 100, 1000, 1
    workloads = [(args.keys, args.samples)]
    if args.small_keys:
        workloads.append((args.small_keys, 10))
    for keys, samples in workloads:
        print(f"workload: {keys:,} float sensors x {samples:,} samples = {keys * samples:,} "
              f"samples (+2 small keys), best of {args.repeat}; "
              f"katsdptelstate {katsdptelstate.__version__}")
        tmp = tempfile.mkdtemp(prefix="bench-rdb-")
        try:
            run(keys, samples, args.repeat, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print()
    print("ratio = katsdptelstate's time / ours (above 1: we are faster); katsdptelstate "
          "column: RDBWriter.save for export, MemoryBackend.load_from_file for import")


def run(keys: int, samples: int, repeat: int, tmp: str) -> None:
    total = keys * samples
    ours_rdb, theirs_rdb = os.path.join(tmp, "ours.rdb"), os.path.join(tmp, "theirs.rdb")
    memory = MemoryBackend()
    fill(memory, keys, samples)
    log = LogBackend(os.path.join(tmp, "log"), fsync="never", checkpoint_bytes=None)
    fill(log, keys, samples)
    theirs = TheirMemoryBackend()
    export_backend(memory, ours_rdb)
    theirs.load_from_file(ours_rdb)          # katsdptelstate now holds the same data

    def save_theirs() -> None:
        with RDBWriter(theirs_rdb) as writer:
            writer.save(theirs)

    rows: list[tuple[str, float, float]] = []
    k_export = best(save_theirs, repeat)
    rows.append(("export MemoryBackend", best(lambda: export_backend(memory, ours_rdb),
                                              repeat), k_export))
    rows.append(("export LogBackend", best(lambda: export_backend(log, ours_rdb), repeat),
                 k_export))
    log.close()

    def load_theirs() -> None:
        TheirMemoryBackend().load_from_file(theirs_rdb)

    k_import = best(load_theirs, repeat)
    rows.append(("import MemoryBackend", best(lambda: MemoryBackend().load_from_file(theirs_rdb),
                                              repeat), k_import))
    counter = iter(range(1 << 30))
    targets: list[LogBackend] = []

    def new_log() -> None:
        for old in targets:
            old.close()
        targets[:] = [LogBackend(os.path.join(tmp, f"import{next(counter)}"), fsync="never",
                                 checkpoint_bytes=None)]

    rows.append(("import LogBackend", best(lambda: targets[0].load_from_file(theirs_rdb),
                                           repeat, new_log), k_import))
    position = targets[0].position
    rows.append(("re-import LogBackend", best(lambda: targets[0].load_from_file(theirs_rdb),
                                              repeat), k_import))
    assert targets[0].position == position, "re-import wrote events"
    for old in targets:
        old.close()

    print(f"{'step':<22} {'ours (s)':>9} {'katsdptelstate (s)':>19} {'ratio':>7} "
          f"{'ours samples/s':>15}")
    for name, ours, theirs_time in rows:
        print(f"{name:<22} {ours:9.3f} {theirs_time:19.3f} {theirs_time / ours:6.2f}x "
              f"{total / ours:15,.0f}")
    sizes = {"ours": os.path.getsize(ours_rdb), "katsdptelstate": os.path.getsize(theirs_rdb)}
    print("RDB sizes: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
