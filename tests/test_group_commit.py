"""Group commit's bounded gather under fsync="always" (issue 15).

The leader of an fsync first waits, briefly, for the writers the previous
fsync released to commit again, so about N writes share each fsync instead
of N/2; a lone writer never gathers; a write still returns only after an
fsync that began after its commit (telstate_log.storage._durability).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from _waiting import wait_for

from telstate_log.backends import LogBackend
from telstate_log.storage import _durability
from telstate_log.storage._durability import Durability


class FakeDisk:
    """A writer's position and an fsync that records what was written when it
    began, and can be held shut."""

    def __init__(self) -> None:
        self.position = 0
        self.lock = threading.Lock()
        self.starts: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def commit(self) -> int:
        with self.lock:
            self.position += 1
            return self.position

    def fsync(self) -> None:
        self.starts.append(self.position)
        assert self.gate.wait(60)


def test_leader_gathers_the_writers_the_last_fsync_released(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_durability, "GATHER_FRACTION", 1e9)
    monkeypatch.setattr(_durability, "GATHER_MAX", 60.0)  # ends only when all are back
    disk = FakeDisk()
    d = Durability(disk.fsync, lambda: disk.position)
    # Three writers wait together: one fsync (held shut) covers them all.
    disk.gate.clear()
    positions = [disk.commit() for _ in range(3)]
    threads = [threading.Thread(target=d.wait, args=(p,)) for p in positions]
    for t in threads:
        t.start()
    wait_for(lambda: d.waiters == 3 and d.syncing, what="three waiting writers")
    disk.gate.set()
    for t in threads:
        t.join()
    assert d.fsyncs == 1 and d.durable == 3 and d.gathers == 0

    # They write again.  The first back leads, and gathers instead of taking
    # its own write alone as the next fsync's target.
    disk.gate.clear()
    first = threading.Thread(target=d.wait, args=(disk.commit(),))
    first.start()
    wait_for(lambda: d.gathering or len(disk.starts) == 2, what="the next leader")
    assert d.gathering and len(disk.starts) == 1
    others = [threading.Thread(target=d.wait, args=(disk.commit(),)) for _ in range(2)]
    for t in others:
        t.start()
    wait_for(lambda: len(disk.starts) == 2, what="the gathered fsync")
    disk.gate.set()
    for t in [first, *others]:
        t.join()
    assert disk.starts == [3, 6]  # one fsync for the three writes
    assert d.fsyncs == 2 and d.durable == 6 and d.gathers == 1


def test_lone_writer_never_gathers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_durability, "GATHER_FRACTION", 1e9)
    monkeypatch.setattr(_durability, "GATHER_MAX", 60.0)
    disk = FakeDisk()
    d = Durability(disk.fsync, lambda: disk.position)
    for _ in range(50):
        d.wait(disk.commit())
    assert d.fsyncs == 50 and d.gathers == 0 and d.waiters == 0


def test_every_write_returns_after_an_fsync_that_began_after_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The durability contract with gathering, 8 writers: when wait(p) returns,
    an fsync that began with p already written has ended."""
    monkeypatch.setattr(_durability, "GATHER_MAX", 0.01)
    disk = FakeDisk()
    ended: list[int] = []

    def fsync() -> None:
        start = disk.position
        disk.fsync()
        ended.append(start)

    d = Durability(fsync, lambda: disk.position)
    bad: list[tuple[int, int]] = []

    def writer() -> None:
        for _ in range(200):
            p = disk.commit()
            d.wait(p)
            covered = max(ended)
            if covered < p:
                bad.append((p, covered))

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad
    assert d.durable == disk.position == 1600 and d.waiters == 0


def test_log_backend_threads_under_always_lose_nothing(tmp_path: Path) -> None:
    """8 threads writing a LogBackend with fsync="always": every write is durable
    when it returns, and the reopened log holds them all."""
    path = tmp_path / "log"
    with LogBackend(path, fsync="always") as b:
        durability = b.log.durability
        assert durability is not None

        def writer(n: int) -> None:
            for i in range(50):
                b.add_mutable(b"k%d" % n, b"v%d" % i, float(i))

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert durability.durable == b.position == 400
    with LogBackend(path, readonly=True, follow=False) as b2:
        assert b2.position == 400
