"""A read-only LogBackend following a log that another process writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from _waiting import DEADLINE, wait_for

import telstate_log
import telstate_log.aio
from telstate_log.backends import LogBackend
from telstate_log.storage._dir_watch import DirectoryWatcher

WRITER = str(Path(__file__).with_name("_writer_proc.py"))


def start_writer(path: Path, count: int, delay: float = 0.001, fsync: str = "interval",
                 segment_bytes: int = 4096) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, WRITER, str(path), fsync, str(count), str(delay),
                             str(segment_bytes)], stdout=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("ready")
    return proc


def samples(b: Any) -> list[float]:
    rng = b.get_range(b"k", 0.0, float("inf"), False, False) or []
    return [t for _, t in rng]


@pytest.mark.parametrize("inotify", [True, False])
def test_follow_across_rotations(tmp_path: Path, inotify: bool, monkeypatch: Any) -> None:
    path = tmp_path / "log"
    path.mkdir()
    if not inotify:
        monkeypatch.setattr("telstate_log.storage._dir_watch._INOTIFY", None)
    reader = LogBackend(path, readonly=True)
    assert reader.log.follower is not None and reader.log.follower.uses_inotify == inotify
    ts = telstate_log.TelescopeState(reader)
    proc = start_writer(path, 300)
    try:
        ts.wait_key("done", timeout=30)
        assert samples(reader) == [float(i) for i in range(300)]
        assert reader.position == 301
        assert reader.follow_error is None
    finally:
        proc.wait(30)
        reader.close()
    with LogBackend(path) as writer_view:  # the follower saw exactly what is on disk
        assert writer_view.position == 301


def test_monitor_updates_carry_the_writers_values(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.mkdir()
    reader = LogBackend(path, readonly=True)
    monitor = reader.monitor_keys([b"k"])
    monitor.send(None)
    proc = start_writer(path, 50, delay=0.002)
    seen: list[float] = []
    deadline = time.monotonic() + 30
    try:
        while len(seen) < 50 and time.monotonic() < deadline:
            update = monitor.send(1.0)
            if update is not None and hasattr(update, "timestamp"):
                seen.append(update.timestamp)
                assert telstate_log.decode_value(update.value) == update.timestamp
        assert seen == [float(i) for i in range(50)]
    finally:
        monitor.close()
        proc.wait(30)
        reader.close()


def test_follower_survives_writer_crash_and_restart(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.mkdir()
    reader = LogBackend(path, readonly=True)
    proc = start_writer(path, 100000, delay=0.0005)
    wait_for(lambda: reader.position >= 200, what="the writer to be well under way")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc2 = start_writer(path, 200, delay=0.0)  # recovers (truncating a torn tail) and goes on
    try:
        ts = telstate_log.TelescopeState(reader)
        ts.wait_key("done", timeout=30)
        with LogBackend(path, readonly=True, follow=False) as fresh:
            assert samples(reader) == samples(fresh)
            assert reader.position == fresh.position
        assert reader.follow_error is None
    finally:
        proc2.wait(30)
        reader.close()


@pytest.mark.anyio
async def test_async_follower_wait_key(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.mkdir()
    backend = await telstate_log.aio.LogBackend.open(path, readonly=True)
    ts = telstate_log.aio.TelescopeState(backend)
    proc = start_writer(path, 100, delay=0.001)
    try:
        with anyio.fail_after(30):
            await ts.wait_key("k", lambda v, t: v >= 99)
            await ts.wait_key("done")
        assert (await ts.get_range("k", st=0))[-1] == (99.0, 99.0)
    finally:
        proc.wait(30)
        await backend.aclose()


def test_watcher_wakes_on_write(tmp_path: Path) -> None:
    # The backstop is an hour: returning at all means the write woke the watcher.
    watcher = DirectoryWatcher(str(tmp_path), max_wait=3600.0)
    woke = threading.Event()
    waiter = threading.Thread(target=lambda: (watcher.wait(0), woke.set()))
    try:
        (tmp_path / "x").write_bytes(b"1")
        waiter.start()
        assert woke.wait(DEADLINE)
    finally:
        watcher.wake()
        waiter.join(DEADLINE)
        watcher.close()
