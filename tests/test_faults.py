"""Fault injection: disk full, I/O errors, failed fsyncs and short writes.

:class:`FaultyFileSystem` wraps the real file system and makes chosen calls
fail (ENOSPC, EIO, ...) or write only part of what they were given.  For
every fault the caller must get a typed error -- :exc:`LogWriteError` for a
write-through write that was rolled back (the log stays usable),
:exc:`LogFailedError` once the writer cannot go on (every later write fails
too, and a failed fsync is never retried) -- nothing acknowledged may be
lost, and the log must reopen to exactly the state after a prefix of the
writes (checked against the reference model of ``tests/_crashfs.py``) and
pass ``verify_log``.  Checkpoint, seal and prune failures must leave the log
writable.  Short writes must be completed transparently.

The last test runs a short kill -9 loop (``tools/killloop.py``) under the
policies ``tests/test_crash.py`` does not cover.
"""

from __future__ import annotations

import collections
import errno
import importlib.util
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from _crashfs import Reference, add_event, backend_signature
from _waiting import wait_for

from telstate_log import LogError
from telstate_log.backends import LogBackend
from telstate_log.core._encoding import encode_value
from telstate_log.core._errors import LogFailedError, LogWriteError
from telstate_log.storage._event_writer import LogWriter
from telstate_log.storage._fileio import OsFileSystem
from telstate_log.storage._repair import verify_log

#: faults injected by this module, by kind (printed after it ran)
INJECTED: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if INJECTED:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(INJECTED.items()))
        _print_summary(request, f"faults injected: {sum(INJECTED.values())} ({kinds})")


def _print_summary(request: pytest.FixtureRequest, line: str) -> None:
    """Write a line to the terminal, past output capturing."""
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("\n" + line)


# ------------------------------------------------------------ the file system
Match = Callable[[str], bool]


@dataclass
class Rule:
    """Fail the matching calls of one operation.

    `match` is a substring of the path (or a predicate); for ``write``,
    ``sync`` and ``truncate`` the path the descriptor was opened with.  The
    first `after` matching calls succeed, then `times` fail (None: all).  For
    ``write``, `short` makes the call write only that many bytes instead of
    failing (0: no progress at all).
    """

    op: str
    match: str | Match = ""
    err: int = errno.EIO
    after: int = 0
    times: int | None = 1
    short: int | None = None
    seen: int = 0
    fired: int = 0

    def applies(self, op: str, path: str) -> bool:
        if op != self.op:
            return False
        if callable(self.match):
            return self.match(path)
        return self.match in path


class FaultyFileSystem(OsFileSystem):
    """The real file system with injected failures (see :class:`Rule`).

    `chop` makes every write hand only a random 1..chop bytes to the OS (a
    short write).  It counts calls per operation, and bytes written and
    fsyncs issued after the first injected failure.
    """

    def __init__(self, chop: int = 0, seed: int = 0) -> None:
        self.rules: list[Rule] = []
        self.fd_path: dict[int, str] = {}
        self.calls: collections.Counter[str] = collections.Counter()
        self.chop = chop
        self.rng = random.Random(seed)
        self.failed_at: float | None = None
        self.bytes_after_failure = 0
        self.syncs_after_failure = 0

    def arm(self, op: str, match: str | Match = "", **kw: Any) -> Rule:
        rule = Rule(op, match, **kw)
        self.rules.append(rule)
        return rule

    def disarm(self) -> None:
        self.rules.clear()

    def _fire(self, op: str, path: str) -> Rule | None:
        self.calls[op] += 1
        for rule in self.rules:
            if not rule.applies(op, path):
                continue
            if rule.seen < rule.after:
                rule.seen += 1
                continue
            if rule.times is None or rule.fired < rule.times:
                rule.fired += 1
                kind = f"short {op}" if rule.short is not None else \
                    f"{errno.errorcode.get(rule.err, rule.err)} on {op}"
                INJECTED[kind] += 1
                if rule.short is None and self.failed_at is None:
                    self.failed_at = time.monotonic()
                return rule
        return None

    def _raise(self, rule: Rule, what: str) -> None:
        raise OSError(rule.err, f"injected: {os.strerror(rule.err)} ({what})")

    def create(self, path: str) -> int:
        rule = self._fire("create", path)
        if rule is not None:
            self._raise(rule, path)
        fd = super().create(path)
        self.fd_path[fd] = path
        return fd

    def open_append(self, path: str) -> int:
        rule = self._fire("open_append", path)
        if rule is not None:
            self._raise(rule, path)
        fd = super().open_append(path)
        self.fd_path[fd] = path
        return fd

    def write(self, fd: int, data: bytes | memoryview) -> int:
        path = self.fd_path.get(fd, "")
        rule = self._fire("write", path)
        view = memoryview(data)
        if rule is not None:
            if rule.short is None:
                self._raise(rule, path)
            if rule.short == 0:
                return 0
            view = view[:rule.short]
        elif self.chop and len(view) > 1:
            INJECTED["short write (random)"] += 1
            view = view[:self.rng.randint(1, min(len(view), self.chop))]
        n = super().write(fd, view)
        if self.failed_at is not None:
            self.bytes_after_failure += n
        return n

    def sync(self, fd: int) -> None:
        path = self.fd_path.get(fd, "")
        if self.failed_at is not None:
            self.syncs_after_failure += 1
        rule = self._fire("sync", path)
        if rule is not None:
            self._raise(rule, path)
        super().sync(fd)

    def truncate(self, fd: int, size: int) -> None:
        rule = self._fire("truncate", self.fd_path.get(fd, ""))
        if rule is not None:
            self._raise(rule, self.fd_path.get(fd, ""))
        super().truncate(fd, size)

    def close(self, fd: int) -> None:
        self.fd_path.pop(fd, None)
        super().close(fd)

    def sync_dir(self, path: str) -> None:
        rule = self._fire("sync_dir", path)
        if rule is not None:
            self._raise(rule, path)
        super().sync_dir(path)

    def rename(self, src: str, dst: str) -> None:
        rule = self._fire("rename", src)
        if rule is not None:
            self._raise(rule, src)
        super().rename(src, dst)

    def remove(self, path: str) -> None:
        rule = self._fire("remove", path)
        if rule is not None:
            self._raise(rule, path)
        super().remove(path)


# ------------------------------------------------------- workload and oracle
class Mirror:
    """A LogBackend on a FaultyFileSystem and the reference of what it acknowledged.

    A write that raised :exc:`LogWriteError` is not in the reference (it was
    rolled back); the first that raised :exc:`LogFailedError` is *in doubt*
    (it may or may not be in the log); later writes must all fail and must
    not reach the log.  `floor` is the position known durable.
    """

    def __init__(self, path: Path, fs: FaultyFileSystem | None = None, *, fsync: str = "always",
                 flush_interval: float = 0.0, **opts: Any) -> None:
        self.path = path
        self.fs = fs if fs is not None else FaultyFileSystem()
        self.opts: dict[str, Any] = {"fsync": fsync, "flush_interval": flush_interval,
                                     "segment_bytes": 4096, "checkpoint_bytes": None, **opts}
        self.b = LogBackend(path, fs=self.fs, **self.opts)
        self.ref = Reference()
        self.doubt: Callable[[Any], object] | None = None
        self.floor = 0
        self.t = 1e9

    def _write(self, call: Callable[[], object], *events: Callable[[Any], object]) -> None:
        """Make a write call that records `events` (functions of the model)."""
        try:
            call()
        except LogFailedError:
            if self.doubt is None and len(events) == 1:
                self.doubt = events[0]
            raise
        for event in events:
            self.ref.apply(event)
        if self.opts["fsync"] == "always":
            self.floor = self.ref.events

    def add(self, key: bytes = b"s", size: int = 0) -> None:
        self.t += 1.0
        t = self.t
        value = encode_value("v" * size if size else t)
        self._write(lambda: self.b.add_mutable(key, value, t),
                    lambda m: m.add_mutable(key, value, t))

    def add_many(self, key: bytes, n: int) -> None:
        """One call, n events (a batch may be written as several frames)."""
        ts = [self.t + 1 + i for i in range(n)]
        self.t += n
        values = [encode_value(t) for t in ts]
        self._write(lambda: self.b.add_mutable_many(key, values, ts),
                    *(add_event(key, v, t) for v, t in zip(values, ts)))

    def set_indexed(self, key: bytes, sub: bytes, value: bytes) -> None:
        self._write(lambda: self.b.set_indexed(key, sub, value),
                    lambda m: m.set_indexed(key, sub, value))

    def fill(self, n: int, key: bytes = b"s") -> None:
        for _ in range(n):
            self.add(key)

    def sync(self) -> None:
        self.floor = max(self.floor, self.b.sync())

    def attempt(self, n: int, key: bytes = b"s") -> list[str]:
        """Try `n` writes; the name of each outcome ("ok" or the error class)."""
        out = []
        for _ in range(n):
            try:
                self.add(key)
                out.append("ok")
            except LogError as exc:
                out.append(type(exc).__name__)
        return out

    def reopened(self, *, exact: bool = True) -> int:
        """Close, reopen with a plain LogBackend and check against the reference.

        `exact`: everything acknowledged must be there (no crash happened and
        no buffered write was lost); otherwise at least `floor`.
        """
        self.b.close()
        sigs = list(self.ref.sigs)
        if self.doubt is not None:
            with_doubt = self.ref.prefix(self.ref.events)
            with_doubt.apply(self.doubt)
            sigs.append(with_doubt.sigs[-1])
        with LogBackend(self.path, checkpoint_bytes=None) as b:
            pos = b.position
            assert pos < len(sigs), f"position {pos}: writes that failed are in the log"
            assert pos >= (self.ref.events if exact else self.floor), \
                f"position {pos}: acknowledged writes lost ({self.ref.events} acknowledged, " \
                f"{self.floor} durable)"
            assert backend_signature(b) == sigs[pos], "not the state after a prefix of writes"
            assert not [n for n in os.listdir(self.path) if n.endswith(".seg.tmp")]
        report = verify_log(self.path)
        assert report.ok, report.problems
        return pos


def _is_segment(path: str) -> bool:
    return path.endswith(".seg")


WRITE_THROUGH = [("always", 0.0), ("interval", 0.0), ("never", 0.0)]


# -------------------------------------------------------------- write errors
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("partial", [False, True], ids=["nothing-written", "partly-written"])
@pytest.mark.parametrize(("fsync", "flush"), WRITE_THROUGH,
                         ids=["always", "interval-flush0", "never-flush0"])
def test_write_error_in_write_through_is_rolled_back(tmp_path: Path, fsync: str, flush: float,
                                                     partial: bool, err: int) -> None:
    m = Mirror(tmp_path / "log", fsync=fsync, flush_interval=flush)
    m.fill(10)
    m.set_indexed(b"idx", b"\xa1a", encode_value(1))
    before = (m.b.position, backend_signature(m.b))
    if partial:  # some bytes reach the file, then the disk fills up
        m.fs.arm("write", _is_segment, short=7)
    m.fs.arm("write", _is_segment, err=err)
    with pytest.raises(LogWriteError) as info:
        m.add(b"new_key", size=300)  # KEY and SESSION frames too: a multi-frame write
    assert info.value.errno == err
    assert (m.b.position, backend_signature(m.b)) == before
    m.fs.disarm()
    m.fill(10)
    m.add(b"new_key", size=300)
    assert m.reopened() == m.ref.events


def test_rollback_failure_fails_the_writer(tmp_path: Path) -> None:
    m = Mirror(tmp_path / "log", fsync="interval")
    m.fill(20)
    m.fs.arm("write", _is_segment, short=5)
    m.fs.arm("write", _is_segment, err=errno.ENOSPC)
    m.fs.arm("truncate", _is_segment, err=errno.EIO)
    with pytest.raises(LogFailedError):
        m.add()
    m.fs.disarm()
    assert set(m.attempt(5)) == {"LogFailedError"}
    m.doubt = None  # the torn frame is dropped on reopen
    assert m.reopened() == 20


def test_write_making_no_progress_is_an_error(tmp_path: Path) -> None:
    m = Mirror(tmp_path / "log", fsync="never")
    m.fill(5)
    m.fs.arm("write", _is_segment, short=0)
    with pytest.raises(LogWriteError) as info:
        m.add()
    assert info.value.errno == errno.EIO
    m.fs.disarm()
    m.fill(5)
    assert m.reopened() == 10


@pytest.mark.parametrize("policy", ["always", "interval", "interval-flush0", "never"])
def test_short_writes_are_completed(tmp_path: Path, policy: str) -> None:
    """Every write of segments, checkpoints, seals and ``pruned`` hands only
    1..37 bytes to the OS at a time: the result must be the same log."""
    fsync = policy.split("-")[0]
    flush = 0.0 if policy.endswith("flush0") or fsync == "always" else 0.005
    fs = FaultyFileSystem(chop=37, seed=len(policy))
    m = Mirror(tmp_path / "log", fs, fsync=fsync, flush_interval=flush)
    m.fill(150)
    m.add_many(b"batch", 300)
    for i in range(20):
        m.set_indexed(b"idx", encode_value(i), encode_value("x" * 10 * i))
    m.b.checkpoint()
    head = m.b.seal()
    assert head is not None
    assert m.b.prune(before=100).removed
    m.fill(30, key=b"after")
    assert fs.calls["write"] > 500
    assert m.reopened() == m.ref.events
    assert head in verify_log(m.path).seal_chain


# ------------------------------------------------------------- batch writes
def test_failed_batch_frame_rolls_back_the_whole_batch(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``add_mutable_many`` writes a large batch as several frames, appended
    in one go: if that fails (disk full) the call raises LogWriteError and
    none of the frames is recorded, so the next write's positions follow on
    and the log reopens (regression: frames used to be written one by one,
    leaving earlier frames behind with positions the state never applied)."""
    monkeypatch.setattr(LogWriter, "MAX_BATCH_BODY", 1024)
    m = Mirror(tmp_path / "log", fsync="always", segment_bytes=1 << 20)
    m.fill(3)
    m.fs.arm("write", _is_segment, after=0, err=errno.ENOSPC)  # the batch's append
    with pytest.raises(LogWriteError):
        m.add_many(b"batch", 200)
    m.fs.disarm()
    m.fill(3)
    assert m.reopened() == m.ref.events


# ------------------------------------------------------------ buffered mode
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_failed_flush_of_buffered_writes_fails_the_writer(tmp_path: Path, err: int) -> None:
    """Buffered writes were acknowledged; if handing them to the OS fails the
    writer fails (LogFailedError from then on) and reopening keeps at least
    what was synced."""
    m = Mirror(tmp_path / "log", fsync="interval", flush_interval=0.005, fsync_interval=60.0)
    m.fill(20)
    m.sync()
    rule = m.fs.arm("write", _is_segment, err=err, times=None)
    m.fill(5)  # accepted into the buffer; the flusher thread hits the error
    wait_for(lambda: m.b.log.writer.failed is not None, what="the flusher to fail the writer")
    assert rule.fired
    m.fs.disarm()
    assert set(m.attempt(3)) == {"LogFailedError"}
    with pytest.raises(LogFailedError):
        m.b.sync()
    assert m.reopened(exact=False) >= 20


# --------------------------------------------------------------- fsync errors
@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_failed_fsync_is_final(tmp_path: Path, fsync: str) -> None:
    """A failed fsync may have dropped dirty pages, so the writer must stop:
    every later write raises LogFailedError, reaches neither the file nor the
    in-memory state, and no fsync is attempted again (a retry can report
    success for data that is gone).  ``always``: the failing write's own
    fsync; ``interval``: the background timer's; ``never``: ``sync()``'s.

    Today a later write is still written and applied (under ``always`` it
    raises only after that, and rotation fsyncs the old segment again), and
    under ``interval``/``never`` later writes are simply accepted.
    """
    interval = 0.02 if fsync == "interval" else 60.0
    m = Mirror(tmp_path / "log", fsync=fsync, flush_interval=0.0, fsync_interval=interval)
    m.fill(30)
    m.sync()
    rule = m.fs.arm("sync", _is_segment, err=errno.EIO)
    if fsync == "always":
        with pytest.raises(LogFailedError):
            m.add()
    elif fsync == "interval":
        m.add()  # the timer's fsync of this write fails
        wait_for(lambda: m.b.log.writer.failed is not None, what="the timer to fail the writer")
        assert rule.fired and m.b.log.durability.failed is not None
    else:
        m.add()
        with pytest.raises(LogFailedError):
            m.sync()
    m.fs.disarm()
    position = m.b.position
    outcomes = m.attempt(120)  # enough to need a new segment
    assert set(outcomes) == {"LogFailedError"}, collections.Counter(outcomes)
    assert m.b.position == position, "failed writes were applied"
    assert m.fs.bytes_after_failure == 0, "failed writes reached the file"
    assert m.fs.syncs_after_failure == 0, "fsync was retried after it failed"
    with pytest.raises(LogFailedError):
        m.b.sync()
    m.reopened(exact=False)


# ------------------------------------------------------------ rotation errors
ROTATION_STEPS: dict[str, tuple[str, str | Match]] = {
    "create-tmp": ("create", ".seg.tmp"),
    "write-header": ("write", ".seg.tmp"),
    "sync-tmp": ("sync", ".seg.tmp"),
    "rename": ("rename", ".seg.tmp"),
    "sync-dir": ("sync_dir", ""),
    "sync-old-segment": ("sync", _is_segment),
}


@pytest.mark.parametrize("step", sorted(ROTATION_STEPS))
@pytest.mark.parametrize("policy", ["always", "interval", "interval-flush0", "never"])
def test_rotation_failure(tmp_path: Path, policy: str, step: str) -> None:
    fsync = policy.split("-")[0]
    flush = 0.0 if policy.endswith("flush0") or fsync == "always" else 0.005
    if fsync == "never" and "sync" in step:
        pytest.skip("fsync='never' does not sync when rotating")
    if fsync == "always" and step == "sync-old-segment":
        pytest.skip("the per-write fsync: test_failed_fsync_is_final")
    m = Mirror(tmp_path / "log", fsync=fsync, flush_interval=flush, fsync_interval=60.0)
    op, match = ROTATION_STEPS[step]
    rule = m.fs.arm(op, match, err=errno.ENOSPC if op in ("create", "write") else errno.EIO)
    outcomes = m.attempt(200)  # about three segments' worth
    assert rule.fired == 1
    first_error = next(o for o in outcomes if o != "ok")
    later = outcomes[outcomes.index(first_error) + 1:]
    if first_error == "LogWriteError":
        assert set(later) == {"ok"}, "a rolled-back write must leave the log usable"
    else:
        assert first_error == "LogFailedError"
        assert set(later) == {"LogFailedError"}
    m.fs.disarm()
    m.reopened()


# --------------------------------------------- checkpoint, seal and prune errors
CHECKPOINT_STEPS: dict[str, tuple[str, str]] = {
    "create": ("create", ".ckpt.tmp"),
    "write": ("write", ".ckpt"),
    "sync": ("sync", ".ckpt"),
    "rename": ("rename", ".ckpt"),
    "sync-dir": ("sync_dir", "checkpoints"),
}


@pytest.mark.parametrize("step", sorted(CHECKPOINT_STEPS))
def test_checkpoint_failure_keeps_the_log(tmp_path: Path, step: str) -> None:
    m = Mirror(tmp_path / "log", fsync="interval")
    m.fill(100)
    m.fs.arm(*CHECKPOINT_STEPS[step], err=errno.ENOSPC)
    with pytest.raises((OSError, LogError)):
        m.b.checkpoint()
    m.fs.disarm()
    m.fill(50)
    m.b.checkpoint()
    m.fill(10)
    assert m.reopened() == m.ref.events


def test_checkpoint_failure_raises_a_log_error(tmp_path: Path) -> None:
    """The backend's errors are typed (LogError and its subclasses), but a
    failing ``checkpoint()`` (and so ``prune()``) lets the bare OSError out."""
    m = Mirror(tmp_path / "log", fsync="interval")
    m.fill(10)
    m.fs.arm("create", ".ckpt.tmp", err=errno.ENOSPC)
    with pytest.raises(LogError):
        m.b.checkpoint()


SEAL_STEPS: dict[str, tuple[str, str, int]] = {  # (op, match, after)
    "create": ("create", "seals.tmp", 0),
    "write": ("write", "seals.tmp", 0),
    "sync": ("sync", "seals.tmp", 0),
    "rename": ("rename", "seals.tmp", 0),
    "sync-dir": ("sync_dir", "", 1),  # the rotation's comes first
}


@pytest.mark.parametrize("step", sorted(SEAL_STEPS))
def test_seal_failure_keeps_the_log(tmp_path: Path, step: str) -> None:
    m = Mirror(tmp_path / "log", fsync="interval", segment_bytes=1 << 20)
    m.fill(40)
    op, match, after = SEAL_STEPS[step]
    rule = m.fs.arm(op, match, err=errno.EIO, after=after)
    try:  # seal() retries a failed seal once, so a one-off fault may not show
        m.b.seal()
    except LogError as exc:
        assert "sealing failed" in str(exc)
    assert rule.fired == 1
    m.fs.disarm()
    m.fill(40)
    assert m.reopened() == m.ref.events
    with LogBackend(m.path) as b:  # a fresh writer seals again
        head = b.seal()
    report = verify_log(m.path)
    assert report.ok and report.head == head


def test_seal_works_again_after_a_transient_failure(tmp_path: Path) -> None:
    """A seal that keeps failing raises; once the fault is gone the next
    ``seal()`` seals the backlog in order (regression: the old error stuck)."""
    m = Mirror(tmp_path / "log", fsync="interval", segment_bytes=1 << 20)
    m.fill(10)
    m.fs.arm("write", "seals.tmp", err=errno.EIO, times=None)
    with pytest.raises(LogError, match="sealing failed"):
        m.b.seal()
    m.fs.disarm()
    m.fill(10)
    head = m.b.seal()
    m.b.close()
    assert verify_log(m.path).head == head


PRUNE_STEPS: dict[str, tuple[str, str]] = {
    "checkpoint": ("create", ".ckpt.tmp"),
    "pruned-file": ("write", "pruned.tmp"),
    "remove-segment": ("remove", ".seg"),
    "sync-dir": ("sync_dir", "log"),
}


@pytest.mark.parametrize("step", sorted(PRUNE_STEPS))
def test_prune_failure_keeps_the_log(tmp_path: Path, step: str) -> None:
    m = Mirror(tmp_path / "log", fsync="interval")
    m.fill(300)
    m.b.seal()
    op, match = PRUNE_STEPS[step]
    after = 0
    if step == "sync-dir":
        # checkpoint (checkpoints/), pruned file (log/), then the removals (log/)
        match, after = str(m.path), 1
    m.fs.arm(op, match, err=errno.EIO, after=after)
    with pytest.raises((OSError, LogError)):
        m.b.prune(before=200)
    m.fs.disarm()
    m.fill(20)
    assert m.reopened() == m.ref.events


# ----------------------------------------------------------------- kill -9
def _killloop() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "tools" / "killloop.py"
    name = "_tools_killloop"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["never", "interval-flush0"])
def test_kill9_short_loop(tmp_path: Path, policy: str) -> None:
    """kill -9 at random moments: each restart finds a prefix of the writes,
    and write-through (flush_interval=0) loses nothing acknowledged."""
    killloop = _killloop()
    stats = killloop.run_policy(policy, str(tmp_path / "log"), cycles=2, max_delay=0.25,
                                rng=random.Random(policy))
    assert not stats.violations, stats.violations
    assert stats.acked > 0
    if policy.endswith("flush0"):
        assert stats.lost_max == 0
