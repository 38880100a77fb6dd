#!/usr/bin/env python3
"""Projector backfill speed against katsdptelstate and redis-server, measured in one run.

Loads the same data -- by default 1000 float sensors of 1000 samples each
(1e6 samples) -- into an empty Redis database three ways and prints the
times and ratios:

* ``Projector.backfill()`` from a log (RESTORE of our DUMP payloads in
  pipelined MULTI/EXEC transactions);
* katsdptelstate 1.0.0's ``load_from_file`` into its RedisBackend, from an
  RDB file of the same data written by our exporter;
* redis-server loading that RDB file itself at startup: from starting the
  process to ``INFO persistence`` reporting ``loading:0`` (process start-up
  included), and the load time redis-server logs.

A private redis-server is started on loopback (``redis-server`` on PATH or
``--redis-server``).  Targets: at least 5x faster than katsdptelstate's
load, within 3x of redis-server's own load.

    python tools/bench_projector.py            # 1000 keys x 1000 samples
    python tools/bench_projector.py --quick    # 100 keys x 1000 samples
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import katsdptelstate
import katsdptelstate.redis
import numpy as np
import redis

from telstate_log.backends import LogBackend
from telstate_log.core._encoding import encode_value
from telstate_log.replay import Projector
from telstate_log.replay._export import export_rdb


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(binary: str, directory: Path, dbfilename: str = "none.rdb"
                 ) -> tuple[subprocess.Popen[bytes], redis.Redis, float]:
    """Start redis-server; returns (process, client, seconds until loading:0)."""
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--dir",
                             str(directory), "--dbfilename", dbfilename, "--save", "",
                             "--appendonly", "no", "--logfile", str(directory / "redis.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=port)
    while True:
        try:
            if client.info("persistence").get("loading") == 0:
                return proc, client, time.perf_counter() - started
        except (redis.ConnectionError, redis.BusyLoadingError):
            pass
        if proc.poll() is not None:
            raise RuntimeError((directory / "redis.log").read_text())
        time.sleep(0.001)


def stop_server(proc: subprocess.Popen[bytes], client: redis.Redis) -> None:
    client.close()
    proc.terminate()
    proc.wait(10)


def make_log(path: Path, keys: int, samples: int) -> LogBackend:
    log = LogBackend(path, fsync="never", checkpoint_bytes=None)
    rng = np.random.default_rng(1)
    stamps = 1.7e9 + np.arange(samples, dtype=float) * 0.1
    for k in range(keys):
        values = [encode_value(float(v)) for v in rng.normal(size=samples)]
        log.add_mutable_many(b"m%03d_sensor_%04d" % (k % 64, k), values, stamps)
    return log


def timed(fn: Callable[[], object], repeats: int, before: Callable[[], object]) -> float:
    """Median time of `fn` over `repeats` runs, each after an untimed `before`."""
    times = []
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="100 keys, 1 repeat")
    parser.add_argument("--redis-server", default=shutil.which("redis-server")
                        or "/usr/bin/redis-server")
    args = parser.parse_args()
    if args.quick:
        args.keys, args.repeats = 100, 1
    total = args.keys * args.samples
    with tempfile.TemporaryDirectory(prefix="bench-projector-") as tmp:
        root = Path(tmp)
        log = make_log(root / "log", args.keys, args.samples)
        rdb = root / "dump.rdb"
        rdb_mb = export_rdb(log.snapshot_items(b"*"), rdb).bytes / 1e6
        (root / "server").mkdir()
        proc, client, _ = start_server(args.redis_server, root / "server")
        try:
            def empty() -> None:
                client.flushall()
                while client.info("memory").get("lazyfree_pending_objects"):
                    time.sleep(0.01)

            def ours() -> None:
                Projector(log, client).backfill()
                assert client.dbsize() == args.keys          # the marker is kept apart

            def theirs() -> None:
                ts = katsdptelstate.TelescopeState(katsdptelstate.redis.RedisBackend(client))
                ts.load_from_file(str(rdb))
                assert client.dbsize() == args.keys

            t_ours = timed(ours, args.repeats, empty)
            t_theirs = timed(theirs, args.repeats, empty)
        finally:
            stop_server(proc, client)
        loads, logged = [], []
        for i in range(args.repeats):
            directory = root / f"load{i}"
            directory.mkdir()
            shutil.copy(rdb, directory / "dump.rdb")
            proc, client, seconds = start_server(args.redis_server, directory, "dump.rdb")
            assert client.dbsize() == args.keys
            stop_server(proc, client)
            loads.append(seconds)
            found = re.search(r"DB loaded from disk: ([0-9.]+) seconds",
                              (directory / "redis.log").read_text())
            if found:
                logged.append(float(found.group(1)))
        t_server = statistics.median(loads)
        log.close()
    print(f"backfill of {args.keys} keys x {args.samples} samples ({total:,} samples, "
          f"RDB {rdb_mb:.1f} MB), "
          f"median of {args.repeats}")
    print(f"  telstate-log Projector.backfill        {t_ours:7.3f} s   "
          f"{total / t_ours / 1e6:5.2f} M samples/s")
    print(f"  katsdptelstate load_from_file (Redis)  {t_theirs:7.3f} s   "
          f"ours is {t_theirs / t_ours:5.1f}x faster (target >= 5x)")
    print(f"  redis-server RDB load at startup       {t_server:7.3f} s   "
          f"ours takes {t_ours / t_server:5.2f}x as long (target <= 3x)")
    if logged:
        print(f"    (redis-server logged {statistics.median(logged):.3f} s for the load itself: "
              f"{t_ours / statistics.median(logged):.2f}x)")


if __name__ == "__main__":
    main()
