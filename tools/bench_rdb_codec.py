#!/usr/bin/env python3
"""Benchmark telstate_log's RDB/DUMP codec against katsdptelstate 1.0.0's, in one run.

The workload is the one katsdptelstate users meet when saving an observation:
`--keys` sensors (zsets) of `--members` float samples each (1000 x 1000 by
default), stored as katsdptelstate stores them (8-byte timestamp + 0xFF +
msgpack double), plus a few immutable and indexed keys.  Each step is timed
`--repeat` times and the best time is reported:

* write: our ``RdbWriter`` vs katsdptelstate's ``RDBWriter.save`` of the same
  data held in its ``MemoryBackend``;
* read: our ``iter_rdb`` vs katsdptelstate's ``MemoryBackend.load_from_file``
  (rdbtools), both reading the file we wrote;
* dump: our ``dump_zset`` vs katsdptelstate's ``rdb_utility.dump_zset`` per key.

Ratios above 1 mean we are faster.  katsdptelstate is optional: without it
only our numbers are printed.

Usage: ``python tools/bench_rdb_codec.py [--keys N] [--members M] [--repeat R]``
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from telstate_log.rdb._dump import dump_zset
from telstate_log.rdb._format import pack_member
from telstate_log.rdb._reader import iter_rdb
from telstate_log.rdb._writer import RdbWriter

try:
    from katsdptelstate import rdb_utility
    from katsdptelstate.memory import MemoryBackend
    from katsdptelstate.rdb_writer import RDBWriter

    HAVE_KATSDPTELSTATE = True
except ImportError:  # pragma: no cover - optional oracle
    HAVE_KATSDPTELSTATE = False


def make_data(keys: int, members: int) -> dict[bytes, Any]:
    """Sensors of float samples plus a few immutable and indexed keys."""
    data: dict[bytes, Any] = {}
    for k in range(keys):
        base = 1.7e9 + k
        data[b"sensor_%05d" % k] = [
            pack_member(base + 0.5 * i, b"\xff\xcb" + struct.pack(">d", i * 0.25 + k))
            for i in range(members)]
    for k in range(10):
        data[b"attr_%d" % k] = b"\xff\xa5value" + bytes([k])
        data[b"table_%d" % k] = {b"\xff\xa3k%02d" % i: b"\xff\xcd\x01\x00" for i in range(20)}
    return data


def best(func: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def write_ours(path: str, data: dict[bytes, Any]) -> None:
    with RdbWriter(path) as writer:
        for key, value in data.items():
            if isinstance(value, bytes):
                writer.write_string(key, value)
            elif isinstance(value, list):
                writer.write_zset(key, value)
            else:
                writer.write_hash(key, value)


def read_ours(path: str) -> int:
    return sum(1 for _ in iter_rdb(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = make_data(args.keys, args.members)
    samples = args.keys * args.members
    print(f"workload: {args.keys} sensors x {args.members} samples = {samples:,} samples "
          f"(+20 small keys), best of {args.repeat}")
    rows: list[tuple[str, float, float | None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        ours_path = os.path.join(tmp, "ours.rdb")
        theirs_path = os.path.join(tmp, "theirs.rdb")
        t_write = best(lambda: write_ours(ours_path, data), args.repeat)
        t_read = best(lambda: read_ours(ours_path), args.repeat)
        zsets = [v for v in data.values() if isinstance(v, list)]
        t_dump = best(lambda: [dump_zset(v) for v in zsets], args.repeat)
        sizes = {"ours": os.path.getsize(ours_path)}
        if HAVE_KATSDPTELSTATE:
            backend = MemoryBackend()

            def load_theirs() -> None:
                backend.clear()
                backend.load_from_file(ours_path)

            def save_theirs() -> None:
                with RDBWriter(theirs_path) as writer:
                    writer.save(backend)

            k_read = best(load_theirs, args.repeat)
            k_write = best(save_theirs, args.repeat)
            k_dump = best(lambda: [rdb_utility.dump_zset(v) for v in zsets], args.repeat)
            sizes["katsdptelstate"] = os.path.getsize(theirs_path)
            rows += [("write RDB", t_write, k_write), ("read RDB", t_read, k_read),
                     ("DUMP zsets", t_dump, k_dump)]
        else:
            rows += [("write RDB", t_write, None), ("read RDB", t_read, None),
                     ("DUMP zsets", t_dump, None)]
    print(f"{'step':<12} {'ours (s)':>10} {'katsdptelstate (s)':>19} {'ratio':>7} "
          f"{'ours samples/s':>15}")
    for name, ours, theirs in rows:
        ratio = f"{theirs / ours:6.1f}x" if theirs else "     -"
        theirs_text = f"{theirs:19.3f}" if theirs else f"{'-':>19}"
        print(f"{name:<12} {ours:10.3f} {theirs_text} {ratio:>7} {samples / ours:15,.0f}")
    print("file sizes: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
