"""Concurrency: threads, async tasks and processes sharing one log.

Theory of operation
-------------------
Every check here rests on values that describe themselves: a sample's value is the
encoding of its own timestamp (:func:`value_for`), so any reader, in any thread or
process, can tell an intact sample from a torn or mixed one without knowing what the
writers did.  Atomicity is checked with *pairs*: writers add two samples to the key
``pairs`` in one ``add_mutable_many`` call, so a reader that ever counts an odd
number of samples there (in the live state, an as-of view, or a follower in another
process) has seen half an event.

* **Threads** (:func:`test_threads_write_and_read_consistently`): several writer
  threads on one sync LogBackend (own keys and shared keys; ``add_mutable``,
  ``add_mutable_many``, ``set_indexed``, ``set_immutable``; checkpoints and seals
  while writing) against reader threads that check, continuously: even pair counts,
  intact values, counts that never go backwards, as-of views (by position and by
  time) that are snapshots, and audit trails whose positions are consecutive.
* **Async tasks** (:func:`test_async_writers_share_fsyncs`, asyncio and trio through
  the ``anyio_backend`` fixture): many tasks writing with ``fsync="always"``; each
  write must be durable when its await returns, and concurrent writers must share
  fsyncs (far fewer fsyncs than writes).
* **Processes** (:func:`test_followers_in_other_processes`): this module run as a
  script (``python test_concurrency.py follow LOG``) is a follower process: a
  read-only LogBackend that validates every monitor update and its own state while
  the writer here rotates small segments, checkpoints and seals.  Followers started
  early and late (the late one opens from a checkpoint) must converge to the
  writer's exact final state with ``follow_error`` None.
* **Locking**: a second writer, in this process or another, gets LogLockedError
  while the first is open, and succeeds after it closes.
* **Soak** (:func:`test_soak_quick`): ``tools/soak.py`` in its CI mode for a few
  seconds (see that tool for the long settings).
* **Regression tests** for the concurrency bugs found by ``tools/soak.py`` and its
  probes (fixed in cc92e56): a follower died when the writer pruned the segment it
  was reading, ``verify_log`` tripped over a checkpoint a live writer removed,
  ``seal()`` and ``prune()`` waited for segments finished after they were called,
  ``close()`` abandoned the sealer, and a follower reported a false gap when a
  directory listing missed a segment the writer created meanwhile.  Each
  reproduces its interleaving deterministically (a held-back sealer, a checkpoint
  removed right after the listing, a replayed listing), not by racing.

Timing is never asserted beyond generous bounds (waiting for followers, or for a
seal() that should return at once); the sizes are modest so the module runs in
about 20 s on two cores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import anyio
import pytest
from _waiting import DEADLINE

import telstate_log.aio
from telstate_log import KeyType, LogLockedError
from telstate_log.backends import LogBackend, MutableKeyUpdate
from telstate_log.core import _log_format as fmt
from telstate_log.core._encoding import decode_value, encode_value
from telstate_log.storage import _repair as repair_module
from telstate_log.storage._checkpoint import list_checkpoints
from telstate_log.storage._fileio import OsFileSystem
from telstate_log.storage._recovery import list_segments
from telstate_log.storage._repair import verify_log
from telstate_log.storage._seal import read_seals

HERE = Path(__file__).resolve()
SOAK = HERE.parent.parent / "tools" / "soak.py"
INF = math.inf


def value_for(ts: float) -> bytes:
    """The value written for a sample at `ts`: the encoded timestamp itself."""
    return b"\xff\xcb" + struct.pack(">d", ts)


assert value_for(1.5) == encode_value(1.5)  # a msgpack float64: a real encoded value


def fingerprint(b: Any) -> tuple[int, list[Any]]:
    """Position and every key's type and value."""
    items = []
    for key in sorted(b.keys(b"*")):
        kind = b.key_type(key)
        if kind == KeyType.MUTABLE:
            value: Any = b.get_range(key, 0.0, INF, False, False)
        else:
            value = b.get(key)[0]
            if isinstance(value, dict):
                value = sorted(value.items())
        items.append((key, kind.name, value))
    return b.position, items


def digest(b: Any) -> str:
    return hashlib.sha256(repr(fingerprint(b)).encode()).hexdigest()


def check_samples(samples: list[tuple[bytes, float]] | None, what: str) -> int:
    """Every sample intact; returns how many there are."""
    for value, ts in samples or ():
        assert value == value_for(ts), f"{what}: torn sample {value!r} at {ts}"
    return len(samples or ())


class Failures:
    """Collects exceptions from worker threads (a thread's assert would be lost)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def run(self, func: Callable[..., Any], *args: Any) -> threading.Thread:
        def target() -> None:
            try:
                func(*args)
            except BaseException as exc:
                with self._lock:
                    self.errors.append(f"{threading.current_thread().name}: {exc!r}")

        thread = threading.Thread(target=target, name=f"{func.__name__}{args}", daemon=True)
        thread.start()
        return thread


# --------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------
WRITERS = 4
OPS = 250


def _writer(b: LogBackend, w: int) -> None:
    for i in range(OPS):
        t0 = w * 1e6 + 2 * i
        b.add_mutable_many(b"pairs", [value_for(t0), value_for(t0 + 1)], [t0, t0 + 1])
        b.add_mutable(b"own%d" % w, value_for(float(i)), float(i))
        b.set_indexed(b"table", encode_value((w, i)), value_for(float(i)))
        if i % 50 == 0:
            b.set_immutable(b"imm%d_%d" % (w, i), value_for(float(i)))
        if w == 0 and i % 80 == 40:
            b.checkpoint()
        if w == 1 and i % 120 == 60:
            b.seal()


def _reader(b: LogBackend, stop: threading.Event, checks: list[int],
            seen: list[int]) -> None:
    own_counts = [0] * WRITERS
    last_position = 0
    n = 0
    while not stop.is_set() or n == 0:
        position = b.position
        seen.append(position)
        assert position >= last_position, "the position went backwards"
        last_position = position
        pairs = check_samples(b.get_range(b"pairs", 0.0, INF, False, False), "pairs")
        assert pairs % 2 == 0, f"half of a pair visible ({pairs} samples)"
        arrays = b.get_range_arrays(b"pairs", 0.0, INF, False, False)
        assert arrays is None or len(arrays) % 2 == 0
        for w in range(WRITERS):
            count = check_samples(b.get_range(b"own%d" % w, 0.0, INF, False, False), "own")
            assert count >= own_counts[w], "a sensor lost samples"
            own_counts[w] = count
        # An as-of view is a snapshot: what it shows never changes.
        view = b.as_of(position=position)
        assert view.position == position
        shown = check_samples(view.get_range(b"pairs", 0.0, INF, False, False), "as-of")
        assert shown % 2 == 0 and shown <= pairs
        # The audit trail: consecutive positions, up to the position asked for.
        since = max(1, position - 150)
        events = b.events(since, position)
        assert [e.position for e in events] == list(range(since, position + 1)), \
            "audit trail not consecutive"
        history = b.history(b"own%d" % (n % WRITERS))
        positions = [e.position for e in history]
        assert positions == sorted(set(positions)), "history positions not increasing"
        if events:  # time travel by wall-clock time resolves to a whole batch
            then = b.as_of(time=events[len(events) // 2].recorded)
            at_time = check_samples(then.get_range(b"pairs", 0.0, INF, False, False), "time")
            assert at_time % 2 == 0, f"as-of time shows half a pair ({at_time})"
        n += 1
    checks.append(n)


def test_threads_write_and_read_consistently(tmp_path: Path) -> None:
    path = tmp_path / "log"
    b = LogBackend(path, fsync="interval", segment_bytes=64 << 10, checkpoint_bytes=128 << 10)
    failures = Failures()
    stop = threading.Event()
    checks: list[int] = []
    seen: list[int] = []
    readers = [failures.run(_reader, b, stop, checks, seen) for _ in range(3)]
    writers = [failures.run(_writer, b, w) for w in range(WRITERS)]
    for t in writers:
        t.join(120)
    stop.set()
    for t in readers:
        t.join(120)
    assert not failures.errors, failures.errors
    assert len(checks) == 3 and min(checks) >= 1
    assert len(b.get_range(b"pairs", 0.0, INF, False, False) or ()) == 2 * WRITERS * OPS
    for w in range(WRITERS):
        assert len(b.get_range(b"own%d" % w, 0.0, INF, False, False) or ()) == OPS
    assert len(b.get(b"table")[0]) == WRITERS * OPS
    final = b.position
    assert any(0 < p < final for p in seen), "the readers never ran alongside the writers"
    assert [e.position for e in b.events()] == list(range(1, final + 1))
    before = fingerprint(b)
    b.close()
    with LogBackend(path, readonly=True, follow=False) as again:
        assert fingerprint(again) == before
    with LogBackend(path, readonly=True, follow=False, use_checkpoints=False) as again:
        assert fingerprint(again) == before
    report = verify_log(path)
    assert report.ok, report.problems


# --------------------------------------------------------------------------
# Async tasks
# --------------------------------------------------------------------------
TASKS = 16
TASK_WRITES = 12


@pytest.mark.anyio
async def test_async_writers_share_fsyncs(tmp_path: Path, anyio_backend: str) -> None:
    backend = await telstate_log.aio.LogBackend.open(tmp_path / "log", fsync="always",
                                                     segment_bytes=16 << 10)
    sync = backend.to_sync()
    durable_on_return: dict[tuple[bytes, Any], int] = {}

    async def task(n: int) -> None:
        for i in range(TASK_WRITES):
            ts = n * 1000.0 + i
            if i % 3 == 0:
                await backend.add_mutable_many(b"pairs", [value_for(ts), value_for(ts + 0.5)],
                                               [ts, ts + 0.5])
                key: tuple[bytes, Any] = (b"pairs", ts + 0.5)
            elif i % 3 == 1:
                await backend.add_mutable(b"task%d" % n, value_for(ts), ts)
                key = (b"task%d" % n, ts)
            else:
                sub = encode_value((n, i))
                await backend.set_indexed(b"table", sub, value_for(ts))
                key = (b"table", sub)
            durable_on_return[key] = sync.durable_position

    async with anyio.create_task_group() as tg:
        for n in range(TASKS):
            tg.start_soon(task, n)
    writes = TASKS * TASK_WRITES
    assert len(durable_on_return) == writes
    position_of: dict[tuple[bytes, Any], int] = {}
    for e in await backend.events():
        assert e.key is not None
        position_of[(e.key, e.sub_key if e.kind == "set_indexed" else e.timestamp)] = e.position
    late = {k: (d, position_of[k]) for k, d in durable_on_return.items() if d < position_of[k]}
    assert not late, f"writes returned before they were durable: {late}"
    fsyncs = sync.log.durability.fsyncs  # type: ignore[union-attr]
    assert fsyncs <= writes // 2, f"{fsyncs} fsyncs for {writes} concurrent writes"
    before = fingerprint(sync)
    await backend.aclose()
    again = await telstate_log.aio.LogBackend.open(tmp_path / "log", readonly=True,
                                                   follow=False)
    assert fingerprint(again.to_sync()) == before
    await again.aclose()


# --------------------------------------------------------------------------
# Followers in other processes
# --------------------------------------------------------------------------
def start_follower(path: Path, timeout: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, str(HERE), "follow", str(path), str(timeout)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ready"), line
    return proc


def follower_summary(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return dict(json.loads(out.strip().splitlines()[-1]))


def test_followers_in_other_processes(tmp_path: Path) -> None:
    path = tmp_path / "log"
    writer = LogBackend(path, segment_bytes=4096, checkpoint_bytes=16 << 10, source="writer")
    early = [start_follower(path, 90) for _ in range(2)]
    late: list[subprocess.Popen[str]] = []
    try:
        for i in range(1500):
            ts = float(i)
            writer.add_mutable(b"k", value_for(ts), ts)
            if i % 5 == 0:
                writer.add_mutable_many(b"pairs", [value_for(ts), value_for(ts + 0.5)],
                                        [ts, ts + 0.5])
            if i % 40 == 0:
                writer.set_indexed(b"table", encode_value(i), value_for(ts))
            if i % 300 == 150:
                writer.checkpoint()
            if i % 500 == 250:
                writer.seal()
            if i == 750:
                late.append(start_follower(path, 90))  # opens from a checkpoint
        writer.set_immutable(b"done", encode_value(writer.position + 1))
        final_position = writer.position
        final_digest = digest(writer)
    finally:
        writer.close()
    for proc in early + late:
        summary = follower_summary(proc, 90)
        assert summary["violations"] == [], summary
        assert summary["follow_error"] is None, summary
        assert summary["position"] == final_position, summary
        assert summary["digest"] == final_digest, summary
        assert summary["updates"] > 0, summary
    assert verify_log(path).ok


def follow_main(path: str, timeout: float) -> None:
    """Follower process: validate every update and the state until ``done``."""
    b = LogBackend(path, readonly=True)
    monitor = b.monitor_keys([b"k", b"pairs", b"done"])
    monitor.send(None)
    violations: list[str] = []
    updates = 0
    last_position = 0
    print("ready", flush=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        update = monitor.send(0.2)
        if isinstance(update, MutableKeyUpdate):
            updates += 1
            if update.value != value_for(update.timestamp):
                violations.append(f"torn update {update.value!r} at {update.timestamp}")
        elif update is not None:
            updates += 1
        position = b.position
        if position < last_position:
            violations.append(f"position went back from {last_position} to {position}")
        last_position = position
        try:
            pairs = check_samples(b.get_range(b"pairs", 0.0, INF, False, False), "pairs")
            check_samples(b.get_range(b"k", 0.0, INF, False, False), "k")
            if pairs % 2:
                violations.append(f"half a pair visible ({pairs} samples)")
        except AssertionError as exc:
            violations.append(str(exc))
        if b.follow_error is not None or len(violations) > 20:
            break
        done = b.get(b"done")[0]
        if done is not None and position >= decode_value(done):
            break
    error = b.follow_error
    summary = {"position": b.position, "digest": digest(b), "updates": updates,
               "violations": violations, "follow_error": None if error is None else repr(error)}
    monitor.close()
    b.close()
    print(json.dumps(summary), flush=True)


def test_follower_survives_its_segment_being_pruned(tmp_path: Path) -> None:
    """follower-missing-segment (found by tools/soak.py): a follower that lags behind
    while the writer prunes the segment it is reading must catch up (from the
    prune's checkpoint), not die with FileNotFoundError."""
    path = tmp_path / "log"
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None) as writer:
        for i in range(50):
            writer.add_mutable(b"k", value_for(float(i)), float(i))
        follower = LogBackend(path, readonly=True, follow=False)
        for i in range(50, 600):
            writer.add_mutable(b"k", value_for(float(i)), float(i))
        writer.sync()
        assert writer.prune(before=400).removed
        try:
            while follower.log.follow_step():
                pass
            assert fingerprint(follower) == fingerprint(writer)
        finally:
            follower.close()


def test_verify_while_the_writer_replaces_checkpoints(tmp_path: Path) -> None:
    """verify-races-writer (found by tools/soak.py): a live writer keeps two checkpoints
    and removes older ones; verify_log lists the checkpoints and then loads them, so
    a checkpoint removed in between raised FileNotFoundError (the soak met it with
    background checkpoints).  Reproduced by removing the oldest listed checkpoint
    right after the listing."""
    path = tmp_path / "log"
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None) as writer:
        for i in range(300):
            writer.add_mutable(b"k", value_for(float(i)), float(i))
            if i % 100 == 99:
                writer.checkpoint()
        real = list_checkpoints

        def listed_then_removed(log: str) -> Any:
            checkpoints = real(log)
            os.remove(checkpoints[-1].path)  # as the writer's next checkpoint would
            return checkpoints

        with mock.patch.object(repair_module, "list_checkpoints", listed_then_removed):
            report = verify_log(path)
        assert report.ok, report.problems


class HeldSealerFS(OsFileSystem):
    """Holds the sealer thread back while it reads chosen segments."""

    def __init__(self) -> None:
        self.own: str | None = None  # the segment seal() finishes
        self.sealing_own = threading.Event()
        self.later_queued = threading.Event()
        self.release = threading.Event()

    def read(self, path: str, offset: int = 0, size: int = -1) -> bytes:
        if threading.current_thread().name == "telstate-log-seal" and self.own is not None:
            name = os.path.basename(path)
            if name == self.own:
                self.sealing_own.set()
                self.later_queued.wait(30)
            elif name.endswith(".seg") and name > self.own:
                self.release.wait(3 * DEADLINE)  # held past the test's wait for seal()
        return super().read(path, offset, size)


def test_seal_returns_while_writes_go_on(tmp_path: Path) -> None:
    """sealer-queue-join (found by tools/soak.py): seal() (and prune()) waited for the
    sealer's whole queue (Queue.join), including segments finished after the call, so
    under sustained writes with frequent rotations they need never return (the soak
    hung in both).  Here the sealer reaches seal()'s own segment only
    once a later segment is queued, and that later one is held back."""
    fs = HeldSealerFS()
    with LogBackend(tmp_path / "log", segment_bytes=4096, checkpoint_bytes=None,
                    fs=fs) as b:
        for i in range(100):
            b.add_mutable(b"k", value_for(float(i)), float(i))
        b.seal()  # everything so far is sealed: only the jobs below are queued
        for i in range(100, 130):
            b.add_mutable(b"k", value_for(float(i)), float(i))
        fs.own = os.path.basename(b.log.writer.segment_path)  # type: ignore[union-attr]
        failures = Failures()
        sealer_call = failures.run(b.seal)
        assert fs.sealing_own.wait(30)
        first = b.log.writer.segment_first  # type: ignore[union-attr]
        i = 130
        while b.log.writer.segment_first == first:  # type: ignore[union-attr]
            b.add_mutable(b"k", value_for(float(i)), float(i))  # finish a later segment
            i += 1
        fs.later_queued.set()
        sealer_call.join(DEADLINE)
        returned = not sealer_call.is_alive()
        fs.release.set()
        sealer_call.join(30)
    assert not failures.errors, failures.errors
    assert returned, "seal() waited for a segment finished after it was called"


def test_close_seals_every_finished_segment(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """close-abandons-sealer: close() closed the writer before the sealer thread had
    drained its queue; with fsync="never" the sealer's pre-seal sync then failed on
    the closed descriptor ("file descriptor cannot be a negative integer"), and the
    sealer exited leaving the last finished segments unsealed (a later writer seals
    them; a log archived after the run never gets them sealed)."""
    path = tmp_path / "log"
    with caplog.at_level(logging.ERROR, logger="telstate_log"):
        with LogBackend(path, fsync="never", flush_interval=0, segment_bytes=4096,
                        checkpoint_bytes=None) as b:
            for i in range(400):
                b.add_mutable(b"k", value_for(float(i)), float(i))
    finished = [name for _, name in list_segments(OsFileSystem(), str(path))][:-1]
    sealed = [s.segment for s in read_seals(str(path))]
    assert "sealing segment failed" not in caplog.text
    assert sealed == finished


class RacingListingFS(OsFileSystem):
    """Replays one interleaving of a follower with a writer creating segments: the
    segment `hidden` does not exist yet when the follower looks for it, and is
    created, filled and followed by another while the follower lists the directory
    -- which may then miss it (entries created during a readdir may or may not be
    returned, independently of their order) while returning the later one."""

    def __init__(self) -> None:
        self.hidden: str | None = None

    def exists(self, path: str) -> bool:
        if self.hidden is not None and os.path.basename(path) == self.hidden:
            return False
        return super().exists(path)

    def listdir(self, path: str) -> list[str]:
        names = super().listdir(path)
        hidden, self.hidden = self.hidden, None  # from now on the segment exists
        return [n for n in names if n != hidden]


def test_follower_does_not_report_a_false_gap(tmp_path: Path) -> None:
    """follower-false-gap (found by tools/soak.py in the follower's gap check): a
    follower at the end of a segment that does not see the next one yet lists the
    directory to see whether a later segment exists; a listing taken while the writer
    creates segments can miss the next segment and show the one after it, and the
    follower then dies with "positions N to M are missing" on a healthy log.  (A
    writer with 4 KiB segments and three followers hits it within a minute.)"""
    path = tmp_path / "log"
    fs = RacingListingFS()
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None) as writer:
        writer.add_mutable(b"k", value_for(0.0), 0.0)
        writer.sync()
        follower = LogBackend(path, readonly=True, follow=False, fs=fs)
        i = 1
        while len(list_segments(OsFileSystem(), str(path))) < 3:
            writer.add_mutable(b"k", value_for(float(i)), float(i))
            i += 1
        writer.sync()
        try:
            assert follower.log.follow_step()  # the rest of the first segment
            fs.hidden = fmt.segment_name(follower.position + 1)
            while follower.log.follow_step():
                pass
            assert fingerprint(follower) == fingerprint(writer)
        finally:
            follower.close()


# --------------------------------------------------------------------------
# One writer at a time
# --------------------------------------------------------------------------
def lock_main(path: str) -> None:
    """Lock-check process: try to open the log as a writer; report the outcome."""
    try:
        with LogBackend(path) as b:
            print(f"opened {b.position}", flush=True)
    except LogLockedError as exc:
        print(f"locked {exc}", flush=True)


def _other_process_writer(path: Path) -> str:
    out = subprocess.run([sys.executable, str(HERE), "lock", str(path)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return out.strip()


def test_second_writer_refused_in_process_and_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "log"
    first = LogBackend(path)
    first.add_mutable(b"k", value_for(1.0), 1.0)
    try:
        with pytest.raises(LogLockedError, match=f"pid {os.getpid()}"):
            LogBackend(path)  # another LogBackend in this process
        assert _other_process_writer(path).startswith("locked")
        with LogBackend(path, readonly=True, follow=False) as reader:  # readers may open
            assert reader.position == 1
    finally:
        first.close()
    assert _other_process_writer(path) == "opened 1"
    with LogBackend(path) as second:  # and this process again
        second.add_mutable(b"k", value_for(2.0), 2.0)
        assert second.position == 2


# --------------------------------------------------------------------------
# Soak (CI mode)
# --------------------------------------------------------------------------
def test_soak_quick(tmp_path: Path) -> None:
    """tools/soak.py for a few seconds: no violation, and it really did work."""
    proc = subprocess.run([sys.executable, str(SOAK), "--seconds", "5", "--writers", "2",
                           "--followers", "2", "--dir", str(tmp_path / "soak"), "--json"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["violations"] == [], summary
    counts = summary["counts"]
    for what in ("writes", "acknowledged", "quiescent_checks", "reopens", "checkpoints",
                 "seals", "follower_checks"):
        assert counts[what] > 0, (what, summary)


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "follow":
        follow_main(rest[0], float(rest[1]))
    elif command == "lock":
        lock_main(rest[0])
    else:
        raise SystemExit(f"unknown command {command!r}")
