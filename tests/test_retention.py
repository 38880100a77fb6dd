"""Retention: pruning old segments, compaction, 'history pruned' errors, crash safety."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest

from telstate_log import HistoryUnavailableError, LogCorruptError, LogError
from telstate_log.backends import LogBackend
from telstate_log.core._encoding import encode_value
from telstate_log.storage._checkpoint import list_checkpoints
from telstate_log.storage._fileio import OsFileSystem
from telstate_log.storage._recovery import list_segments
from telstate_log.storage._repair import verify_log


def build(path: Path) -> LogBackend:
    b = LogBackend(path, segment_bytes=4096, checkpoint_bytes=None)
    b.set_immutable(b"old", encode_value("deleted early"))
    b.delete(b"old")
    for i in range(400):
        b.add_mutable(b"sensor", encode_value(float(i)), 1e9 + i)
    b.set_immutable(b"late", encode_value(1))
    return b


def state(b: LogBackend) -> Any:
    return (b.position, b.keys(b"*"), b.get_range(b"sensor", 0.0, math.inf, False, False),
            b.get(b"late"))


def test_prune_before_position(tmp_path: Path) -> None:
    path = tmp_path / "log"
    b = build(path)
    before = state(b)
    head = b.seal()
    segs_before = list_segments(OsFileSystem(), str(path))
    report = b.prune(before=200)
    cut = report.history_from
    assert 1 < cut <= 201 and report.removed and report.bytes_freed > 0
    assert all(not (path / name).exists() for name in report.removed)
    assert len(list_segments(OsFileSystem(), str(path))) == len(segs_before) - len(report.removed)
    assert state(b) == before
    assert b"old" not in b._state.graveyard  # compacted away
    with pytest.raises(HistoryUnavailableError, match="pruned"):
        b.as_of(position=cut - 1)
    assert b.as_of(position=cut).position == cut
    with pytest.raises(HistoryUnavailableError):
        b.history(b"sensor")  # its history starts before the cut
    assert [e.position for e in b.history(b"late")] == [b.position]
    assert b.events(cut, cut + 2)[0].position == cut
    b.close()
    with LogBackend(path) as b2:  # reopens from the pruning checkpoint
        assert state(b2) == before
        with pytest.raises(HistoryUnavailableError):
            b2.as_of(position=1)
    report2 = verify_log(path)
    assert report2.ok, report2.problems
    assert report2.pruned_before == cut and report2.pruned_seals == len(report.removed)
    assert head in report2.seal_chain


def test_prune_older_than(tmp_path: Path) -> None:
    b = build(tmp_path / "log")
    assert b.prune(older_than=3600).removed == []  # nothing is an hour old
    report = b.prune(older_than=0)
    assert len(report.removed) == len(list_segments(OsFileSystem(), str(tmp_path / "log"))) \
        + len(report.removed) - 1  # everything but the newest segment
    b.close()


class FailingRemoveFS(OsFileSystem):
    """Raises on the n-th remove of a segment: a crash part-way through pruning."""

    def __init__(self, fail_at: int) -> None:
        self.removes = 0
        self.fail_at = fail_at

    def remove(self, path: str) -> None:
        if path.endswith(".seg"):
            self.removes += 1
            if self.removes == self.fail_at:
                raise OSError("simulated crash")
        super().remove(path)


@pytest.mark.parametrize("fail_at", [1, 2])
def test_crash_part_way_through_pruning(tmp_path: Path, fail_at: int) -> None:
    path = tmp_path / "log"
    b = build(path)
    before = state(b)
    b.close()
    b = LogBackend(path, segment_bytes=4096, checkpoint_bytes=None, fs=FailingRemoveFS(fail_at))
    with pytest.raises(LogError, match="simulated crash"):
        b.prune(before=300)
    b.close()
    with LogBackend(path) as b2:
        assert state(b2) == before
    assert verify_log(path).ok


def test_pruned_log_without_checkpoint_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "log"
    b = build(path)
    b.prune(before=200)
    b.close()
    for cp in list_checkpoints(str(path)):
        os.remove(cp.path)
    with pytest.raises(LogCorruptError, match="pruned"):
        LogBackend(path)
    assert not verify_log(path).ok
