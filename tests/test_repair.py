"""verify_log and repair_log: find damage exactly, salvage the good prefix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from telstate_log import LogCorruptError, LogLockedError
from telstate_log.backends import LogBackend
from telstate_log.core._encoding import encode_value
from telstate_log.core._log_format import HEADER_SIZE, parse_header
from telstate_log.storage._checkpoint import (
    list_checkpoints,
    snapshot_state,
    write_checkpoint,
)
from telstate_log.storage._checkpoint_load import load_checkpoint
from telstate_log.storage._fileio import OsFileSystem
from telstate_log.storage._recovery import list_segments
from telstate_log.storage._repair import repair_log, verify_log


def make_log(path: Path, n: int = 400, checkpoint_at: int | None = 150) -> None:
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None) as b:
        for i in range(n):
            b.add_mutable(b"s%d" % (i % 3), encode_value(float(i)), 1e9 + i)
            if i + 1 == checkpoint_at:
                b.checkpoint()


def segments(path: Path) -> list[Path]:
    return [path / name for _, name in list_segments(OsFileSystem(), str(path))]


def test_verify_good_log(tmp_path: Path) -> None:
    make_log(tmp_path / "log")
    report = verify_log(tmp_path / "log")
    assert report.ok and not report.problems
    assert report.events == 400
    assert report.segments == len(segments(tmp_path / "log")) > 3
    assert report.checkpoints_ok == 1


def test_verify_reports_file_and_offset(tmp_path: Path) -> None:
    make_log(tmp_path / "log")
    seg = segments(tmp_path / "log")[2]
    data = bytearray(seg.read_bytes())
    data[300] ^= 0x04
    seg.write_bytes(bytes(data))
    report = verify_log(tmp_path / "log")
    assert not report.ok
    problem = report.problems[0]
    assert problem["file"] == str(seg)
    assert problem["offset"] <= 300
    assert seg.read_bytes() == bytes(data)  # read-only


def test_verify_detects_checkpoint_mismatch(tmp_path: Path) -> None:
    make_log(tmp_path / "log")
    # A checkpoint copied from another log at the same position must not verify.
    other = tmp_path / "other"
    with LogBackend(other, checkpoint_bytes=None) as b:
        for i in range(150):
            b.add_mutable(b"x", encode_value(i), float(i))
        cp = b.checkpoint()
    assert cp is not None
    target = tmp_path / "log" / "checkpoints" / os.path.basename(cp)
    target.write_bytes(Path(cp).read_bytes())
    report = verify_log(tmp_path / "log")
    assert not report.ok
    assert any("another log" in p["problem"] for p in report.problems)


def test_verify_detects_a_forged_checkpoint_of_this_log(tmp_path: Path) -> None:
    """A well-formed checkpoint of this log whose state is not the log's."""
    make_log(tmp_path / "log")
    (cp,) = list_checkpoints(str(tmp_path / "log"))
    state, tables, resume = load_checkpoint(cp.path, None)
    keys = state._keys
    keys[b"s0"], keys[b"s1"] = keys[b"s1"], keys[b"s0"]  # two sensors' samples swapped
    log_id = _log_id(tmp_path / "log")
    write_checkpoint(str(tmp_path / "log"), snapshot_state(state, tables), resume, log_id)
    report = verify_log(tmp_path / "log")
    assert not report.ok
    assert any("differs from the replayed log" in p["problem"] for p in report.problems)


def _log_id(path: Path) -> bytes:
    header = parse_header((segments(path)[0]).read_bytes()[:HEADER_SIZE])
    assert not isinstance(header, str)
    return header.log_id


def test_repair_keeps_prefix_and_moves_damage(tmp_path: Path) -> None:
    path = tmp_path / "log"
    make_log(path)
    segs = segments(path)
    damaged = segs[3]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(LogCorruptError):
        LogBackend(path, use_checkpoints=False)
    report = repair_log(path, dry_run=True)
    assert report.damaged and os.path.exists(damaged)
    report = repair_log(path)
    assert report.damaged
    assert report.problem is not None and report.problem["file"] == str(damaged)
    assert report.lost_positions is not None
    lo, hi = report.lost_positions
    assert lo == report.kept_position + 1 and hi == 400
    assert report.moved_to is not None and os.path.isdir(report.moved_to)
    moved = os.listdir(report.moved_to)
    assert any(name.startswith(damaged.name + ".from-") for name in moved)
    assert "seals" in moved  # the old seals, for forensics
    assert len([m for m in moved if m != "seals"]) == 1 + len(segs) - 4
    assert verify_log(path).ok
    with LogBackend(path) as b:
        assert b.position == report.kept_position
        b.add_mutable(b"s0", encode_value(-1.0), 5e9)
        assert b.position == report.kept_position + 1


def test_repair_refuses_while_a_writer_is_active(tmp_path: Path) -> None:
    make_log(tmp_path / "log", n=10, checkpoint_at=None)
    with LogBackend(tmp_path / "log"), pytest.raises(LogLockedError):
        repair_log(tmp_path / "log")


def test_repair_of_a_healthy_log_changes_nothing(tmp_path: Path) -> None:
    make_log(tmp_path / "log", n=50, checkpoint_at=None)
    before = {p.name: p.read_bytes() for p in segments(tmp_path / "log")}
    report = repair_log(tmp_path / "log")
    assert not report.damaged and report.kept_position == 50
    assert {p.name: p.read_bytes() for p in segments(tmp_path / "log")} == before


# ------------------------------- one definition of damage for verify and repair (item 8)
def _garbage_checkpoint(path: Path) -> Path:
    junk = path / "checkpoints" / "00000000000000000010.ckpt"
    junk.write_bytes(b"garbage")
    return junk


def _foreign_checkpoint(path: Path) -> Path:
    other = path.parent / "other"
    with LogBackend(other, checkpoint_bytes=None) as b:
        for i in range(150):
            b.add_mutable(b"x", encode_value(i), float(i))
        cp = b.checkpoint()
    assert cp is not None
    target = path / "checkpoints" / os.path.basename(cp)
    target.write_bytes(Path(cp).read_bytes())
    return target


@pytest.mark.parametrize("make_bad", [_garbage_checkpoint, _foreign_checkpoint])
def test_repair_sets_aside_every_checkpoint_verify_reports(tmp_path: Path, make_bad: Any) -> None:
    path = tmp_path / "log"
    make_log(path)
    bad = make_bad(path)
    report = verify_log(path)
    assert report.damaged
    [problem] = report.problems
    assert problem["file"] == str(bad) and problem["kind"] == "checkpoint"
    assert problem["repairable"]
    segs = {p.name: p.read_bytes() for p in segments(path)}
    dry = repair_log(path, dry_run=True)
    assert dry.damaged and dry.moved == [str(bad)] and bad.exists()
    repaired = repair_log(path)
    assert repaired.damaged and repaired.problem == problem and not repaired.unrepairable
    assert repaired.lost_positions is None and repaired.kept_position == 400
    assert repaired.moved_to is not None
    assert (Path(repaired.moved_to) / ("checkpoint-" + bad.name)).read_bytes() != b""
    assert not bad.exists()
    assert {p.name: p.read_bytes() for p in segments(path)} == segs  # no event lost
    after = verify_log(path)
    assert not after.damaged, after.problems
    assert not repair_log(path).damaged


def _doctor_sealed_segment(path: Path) -> Path:
    """Change a value in a sealed segment, keeping every CRC valid (tampering)."""
    from test_seal import _doctor

    return _doctor(path, 1, "value")


def test_repair_leaves_tampering_alone_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None) as b:
        for i in range(300):
            b.add_mutable(b"sensor", encode_value(float(i)), 1e9 + i)
        b.seal()
    seg = _doctor_sealed_segment(path)
    report = verify_log(path)
    [problem] = report.problems
    assert problem["file"] == str(seg) and problem["kind"] == "seal"
    assert problem["repairable"] is False
    before = {p.name: p.read_bytes() for p in segments(path)}
    repaired = repair_log(path)
    assert not repaired.damaged and repaired.unrepairable == [problem]
    assert {p.name: p.read_bytes() for p in segments(path)} == before  # evidence kept
    assert not any(name.startswith("damaged-") for name in os.listdir(path))


def _pruned_log(path: Path, more: int) -> None:
    """400 events, pruned before 200 (its checkpoint is at 400), then `more` events."""
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None) as b:
        for i in range(400):
            b.add_mutable(b"s", encode_value(float(i)), 1e9 + i)
        b.seal()
        b.prune(before=200)
        for i in range(more):
            b.add_mutable(b"s", encode_value(-float(i)), 2e9 + i)
        b.seal()


def _damage_tail(seg: Path) -> None:
    data = bytearray(seg.read_bytes())
    data[-3] ^= 0xFF
    seg.write_bytes(bytes(data))


def test_repair_of_a_pruned_log_keeps_the_pruned_seals(tmp_path: Path) -> None:
    path = tmp_path / "log"
    _pruned_log(path, more=200)
    before = verify_log(path)
    assert not before.damaged and before.pruned_chain
    _damage_tail(segments(path)[-2])  # the last sealed segment, after the checkpoint
    report = repair_log(path)
    assert report.damaged and report.kept_position > 400
    after = verify_log(path)
    assert not after.damaged, after.problems
    assert after.pruned_chain == before.pruned_chain  # the chain still runs from genesis
    assert after.seal_chain == before.seal_chain[:-1]


def test_repair_refuses_to_cut_a_pruned_log_before_its_checkpoint(tmp_path: Path) -> None:
    """Cutting before the only checkpoint covering the pruned part would leave
    a log that cannot open: repair says so and changes nothing."""
    path = tmp_path / "log"
    _pruned_log(path, more=0)
    seg = segments(path)[-2]  # ends at 400, where the checkpoint is
    _damage_tail(seg)
    report = verify_log(path)
    problem = next(p for p in report.problems if p["kind"] == "segment")
    assert problem["file"] == str(seg) and problem["repairable"] is False
    assert "pruned" in problem["repair_note"]
    files = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    repaired = repair_log(path)
    assert not repaired.damaged and problem["problem"] in [
        p["problem"] for p in repaired.unrepairable]
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == files
    with LogBackend(path, readonly=True, follow=False) as b:  # still opens
        assert b.position == 400
