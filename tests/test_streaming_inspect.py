"""``info --count-events`` and ``verify`` stream the segments (issue 15 item 4).

Neither depends on speed: counting reads no event objects and agrees with
reading the events; verify's report does not depend on how much of a
segment it holds at once, and it never reads a whole segment at once.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from telstate_log.backends import LogBackend
from telstate_log.cli._inspect import gather_info
from telstate_log.core._encoding import encode_value
from telstate_log.storage import _frame_walk, _seal
from telstate_log.storage._fileio import OsFileSystem
from telstate_log.storage._frame_walk import count_sessions
from telstate_log.storage._recovery import list_segments
from telstate_log.storage._repair import verify_log

SEGMENT = 8192


def make_log(path: Path, rounds: int = 3, checkpoints: bool = True) -> int:
    """A log of several sessions, segments, ADD_BATCH frames and checkpoints."""
    rng = random.Random(7)
    t = 1e9
    for r in range(rounds):
        with LogBackend(path, segment_bytes=SEGMENT, checkpoint_bytes=None,
                        source=f"writer {r}") as b:
            for i in range(300):
                t += 1
                b.add_mutable(b"s%d" % (i % 4), encode_value(rng.random()), t)
                if i % 97 == 0:
                    b.set_immutable(b"imm%d_%d" % (r, i), encode_value({"r": r, "i": i}))
                if i == 150 and checkpoints:
                    b.checkpoint()
            n = 40 + 30 * r
            b.add_mutable_many(b"batch", [encode_value(float(j)) for j in range(n)],
                               [t + 0.5 + j * 1e-3 for j in range(n)])
            t += 1
            if checkpoints:
                b.checkpoint()
            last = b.position
    return last


def _by_events(path: Path, first: int, last: int) -> Counter[int]:
    with LogBackend(path, readonly=True) as b:
        return Counter(e.session for e in b.events(first, last))


@pytest.mark.parametrize("window", [None, 64, 700])
def test_count_sessions_agrees_with_the_events(tmp_path: Path, window: int | None,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if window is not None:
        monkeypatch.setattr(_frame_walk, "WINDOW", window)
    last = make_log(tmp_path / "log")
    fs, path = OsFileSystem(), str(tmp_path / "log")
    assert len(list_segments(fs, path)) > 3
    whole = count_sessions(fs, path, 1, last)
    assert whole == _by_events(tmp_path / "log", 1, last)
    assert len(whole) == 3 and sum(whole.values()) == last
    rng = random.Random(1)
    for _ in range(20):  # ranges starting or ending inside a batch or a segment
        a = rng.randint(1, last)
        b = rng.randint(a, last)
        assert count_sessions(fs, path, a, b) == _by_events(tmp_path / "log", a, b), (a, b)


def test_count_events_reads_no_event_objects(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    last = make_log(tmp_path / "log")
    want = [c for _, c in sorted(_by_events(tmp_path / "log", 1, last).items())]
    calls: list[tuple[int, int]] = []
    real = LogBackend.events

    def events(self: LogBackend, since: int = 1, until: int | None = None) -> Any:
        calls.append((since, until or 0))
        return real(self, since, until)

    monkeypatch.setattr(LogBackend, "events", events)
    with LogBackend(tmp_path / "log", readonly=True) as b:
        info = gather_info(b, count_events=True)
    assert [s["events"] for s in info["sources"]] == want
    # only the first and the last event, for the span of recording times
    assert all(since == until for since, until in calls) and len(calls) == 2


def _reports(path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    out = []
    for window in (None, 64, 1000):
        monkeypatch.setattr(_frame_walk, "WINDOW", window or 8 << 20)
        report = verify_log(path)
        out.append(repr(report.as_dict()) + repr([p.get("repairable")
                                                  for p in report.problems]))
    return out


@pytest.mark.parametrize("damage", ["none", "flip", "cut", "torn", "zeros", "checkpoint",
                                    "missing", "pruned"])
def test_verify_report_does_not_depend_on_the_window(tmp_path: Path, damage: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log"
    make_log(path)
    segs = [path / name for _, name in list_segments(OsFileSystem(), str(path))]
    rng = random.Random(damage)
    if damage in ("flip", "cut"):
        for _ in range(6):
            seg = rng.choice(segs)
            data = bytearray(seg.read_bytes())
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            if damage == "cut":
                data = data[:rng.randrange(len(data))]
            seg.write_bytes(bytes(data))
            first = _reports(path, monkeypatch)
            assert len(set(first)) == 1, first
        return
    if damage in ("torn", "zeros"):
        data = segs[-1].read_bytes()
        cut = len(data) - rng.randrange(1, 40)
        segs[-1].write_bytes(data[:cut] + (b"\0" * 700 if damage == "zeros" else b""))
    elif damage == "checkpoint":
        cp = sorted((path / "checkpoints").iterdir())[0]
        data = bytearray(cp.read_bytes())
        data[len(data) // 2] ^= 2
        cp.write_bytes(bytes(data))
    elif damage == "missing":
        segs[1].unlink()
    elif damage == "pruned":
        with LogBackend(path, checkpoint_bytes=None) as b:
            b.prune(before=b.position // 2)
    reports = _reports(path, monkeypatch)
    assert len(set(reports)) == 1, reports
    report = verify_log(path)
    if damage in ("none", "pruned"):
        assert not report.damaged and report.checkpoints_ok >= 1
    if damage in ("torn", "zeros"):
        assert report.torn_tail is not None  # not damage (the newest checkpoint may be ahead)
        assert all(p["kind"] == "checkpoint" for p in report.problems)


def test_verify_never_reads_a_whole_segment(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded memory: the largest read is a window, not a segment, whatever
    the log's size (the state replayed is what grows, as it must)."""
    path = tmp_path / "log"
    with LogBackend(path, segment_bytes=256 << 10, checkpoint_bytes=None) as b:
        for i in range(12000):
            b.add_mutable(b"s%d" % (i % 5), encode_value(float(i)), 1e9 + i)
            if i == 6000:
                b.checkpoint()
        b.checkpoint()
    sizes = [os.path.getsize(path / name)
             for _, name in list_segments(OsFileSystem(), str(path))]
    assert max(sizes) > 100_000
    reads: list[int] = []
    real = OsFileSystem.read

    def read(self: OsFileSystem, p: str, offset: int = 0, size: int = -1) -> bytes:
        data = real(self, p, offset, size)
        reads.append(len(data))
        return data

    monkeypatch.setattr(OsFileSystem, "read", read)
    monkeypatch.setattr(_frame_walk, "WINDOW", 16 << 10)
    monkeypatch.setattr(_seal, "_READ_CHUNK", 16 << 10)  # the seal check's own chunks
    report = verify_log(path)
    assert not report.damaged and report.checkpoints_ok == 2 and report.events == 12000
    assert max(reads) <= 64 << 10, max(reads)

