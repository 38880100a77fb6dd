"""kill -9 of a writer at random moments (short version; tools/killloop.py is the long one).

With ``fsync="always"`` no acknowledged write may be lost, and the reopened
state must be exactly the state after some prefix of the writes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from telstate_log.backends import LogBackend

WRITER = str(Path(__file__).with_name("_writer_proc.py"))


def run_and_kill(path: Path, fsync: str, rng: random.Random) -> int:
    """Start a writer, kill -9 it after a random delay; returns the last acked sample."""
    proc = subprocess.Popen([sys.executable, WRITER, str(path), fsync, "100000", "0", "8192"],
                            stdout=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdout is not None
    ready = proc.stdout.readline()
    assert ready.startswith("ready"), ready
    time.sleep(rng.uniform(0.0, 0.3))
    os.kill(proc.pid, signal.SIGKILL)
    last = -1
    for line in proc.stdout:  # everything it acknowledged before dying
        if line.strip().isdigit():
            last = int(line)
    proc.wait()
    return last


def check_prefix(path: Path, acked: int | None) -> int:
    with LogBackend(path) as b:
        rng = b.get_range(b"k", 0.0, float("inf"), False, False) or []
        n = len(rng)
        # Samples are exactly 0..n-1: a prefix of the writes, nothing invented.
        assert [t for _, t in rng] == [float(i) for i in range(n)]
        assert b.position == n
        if acked is not None:
            assert n - 1 >= acked, f"acknowledged sample {acked} lost (log has {n})"
        return n


@pytest.mark.slow
@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_kill9_loop(tmp_path: Path, fsync: str) -> None:
    rng = random.Random(hash(fsync) & 0xFFFF)
    path = tmp_path / "log"
    total = 0
    for _cycle in range(6):
        acked = run_and_kill(path, fsync, rng)
        # With "interval" a process kill may lose up to flush_interval (5 ms) of
        # buffered writes; "always" loses nothing acknowledged.
        total = check_prefix(path, acked if fsync == "always" else None)
        assert total >= acked - 2000  # even buffered, a kill loses at most ~5 ms of writes
    assert total > 0
