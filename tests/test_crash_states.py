"""Power-loss crash states of the log (ALICE/CrashMonkey-style enumeration).

Workloads run through ``LogBackend(fs=RecordingFileSystem)``; every state a
power loss could leave (``tests/_crashfs.py`` explains the model) must reopen
with a plain LogBackend to exactly the state after some prefix of the
writes, holding everything the caller was told was durable.  The CI-sized
sample here takes a few seconds; ``tools/crash_states.py`` checks every
state of larger workloads and prints the figures.

The first group checks the crash model itself, the second the log under it,
and the last pins down specific failures found by the enumeration.
"""

from __future__ import annotations

import collections
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _crashfs import (
    POLICIES,
    WORKLOADS,
    CrashState,
    Driver,
    RecordingFileSystem,
    Reference,
    add_event,
    check_state,
    crash_states,
    durable_image,
    materialise,
    record_workload,
    run_states,
    scratch_root,
)
from _waiting import wait_for

from telstate_log import LogCorruptError
from telstate_log.backends import LogBackend
from telstate_log.core import _log_format as fmt
from telstate_log.core._encoding import encode_value
from telstate_log.storage._checkpoint import CheckpointError, list_checkpoints
from telstate_log.storage._checkpoint_load import load_checkpoint
from telstate_log.storage._fileio import OsFileSystem
from telstate_log.storage._recovery import list_segments, read_synced
from telstate_log.storage._repair import repair_log, verify_log
from telstate_log.storage._retention import read_pruned
from telstate_log.storage._seal import file_digest, read_seals

CI_BUDGET = 40  # states per (workload, policy): a few seconds in all


@pytest.fixture
def scratch() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="crash-", dir=scratch_root())
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest) -> Iterator[collections.Counter[str]]:
    """Counts states checked by this module and prints them after it ran."""
    counts: collections.Counter[str] = collections.Counter()
    yield counts
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None or capture is None or not counts["checked"]:
        return
    with capture.global_and_fixture_disabled():  # past output capturing
        reporter.write_line(
            f"\ncrash states: {counts['checked']} checked ({counts['ordered']} of the "
            f"ordered model, {counts['relaxed']} relaxed), {counts['violation']} violations; "
            f"{counts['fail-closed']} relaxed states refused with LogCorruptError")


# ------------------------------------------------------------ the model
def _files(states: list[CrashState]) -> list[dict[str, bytes]]:
    return [s.files for s in states]


def test_recorder_records_in_order_and_matches_disk(tmp_path: Path) -> None:
    fs = RecordingFileSystem(tmp_path)
    fs.makedirs(str(tmp_path / "a" / "b"))
    fd = fs.create(str(tmp_path / "a" / "b" / "f.tmp"))
    assert fs.write(fd, b"hello") == 5
    fs.sync(fd)
    fs.close(fd)
    fs.rename(str(tmp_path / "a" / "b" / "f.tmp"), str(tmp_path / "a" / "b" / "f"))
    fs.sync_dir(str(tmp_path / "a" / "b"))
    fd = fs.open_append(str(tmp_path / "a" / "b" / "f"))
    fs.write(fd, b" world")
    fs.truncate(fd, 7)
    fs.close(fd)
    fs.mark("ack", 1)
    assert [op.kind for op in fs.trace] == [
        "mkdir", "mkdir", "create", "write", "sync", "close", "rename", "sync_dir", "open",
        "write", "truncate", "close", "mark"]
    assert fs.trace[9].offset == 5  # appends land at the end of the file
    fs.check_against_disk()
    assert (tmp_path / "a" / "b" / "f").read_bytes() == b"hello w"
    (tmp_path / "a" / "sneaky").write_bytes(b"x")  # a write behind the recorder's back
    with pytest.raises(AssertionError, match="files differ"):
        fs.check_against_disk()
    with pytest.raises(RuntimeError, match="not created through"):
        fs.open_append(str(tmp_path / "a" / "sneaky"))


def test_synced_data_survives_and_unsynced_renames_may_not(tmp_path: Path) -> None:
    fs = RecordingFileSystem(tmp_path)
    fd = fs.create(str(tmp_path / "f.tmp"))
    fs.write(fd, b"x" * 1000)
    fs.sync(fd)
    fs.close(fd)
    fs.rename(str(tmp_path / "f.tmp"), str(tmp_path / "f"))
    space = crash_states(fs.trace, fs.initial)
    seen = _files(space.states)
    # The name may be lost (create or rename not durable), never the synced data.
    assert {} in seen and {"f.tmp": b"x" * 1000} in seen and {"f": b"x" * 1000} in seen
    # Before the sync the write may be torn; once renamed (after it) it is whole.
    assert any(0 < len(files.get("f.tmp", b"")) < 1000 for files in seen)
    assert all(files["f"] == b"x" * 1000 for files in seen if "f" in files)
    fs.sync_dir(str(tmp_path))
    after = durable_image(fs.trace, fs.initial)
    assert after.files == {"f": b"x" * 1000}


def test_unsynced_write_is_torn_at_sector_boundaries(tmp_path: Path) -> None:
    fs = RecordingFileSystem(tmp_path)
    fd = fs.create(str(tmp_path / "f"))
    fs.sync_dir(str(tmp_path))
    data = bytes(range(1, 256)) * 20  # 5100 bytes, no zeros
    fs.write(fd, data)
    space = crash_states(fs.trace, fs.initial, max_cuts=100)
    sizes = set()
    zero_from = set()
    for files in _files(space.states):
        got = files.get("f")
        if got is None:
            continue
        if len(got) < len(data):
            assert got == data[:len(got)]
            sizes.add(len(got))
        else:
            kept = len(got.rstrip(b"\0"))
            assert got[:kept] == data[:kept] and not any(got[kept:])
            zero_from.add(kept)
    assert sizes == {0, *range(512, 5100, 512)}
    assert zero_from == {0, *range(512, 5100, 512), 5100}


def test_removed_file_reappears_until_directory_sync(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(b"old")
    fs = RecordingFileSystem(tmp_path)
    fs.remove(str(tmp_path / "old"))
    assert {"old": b"old"} in _files(crash_states(fs.trace, fs.initial).states)
    fs.sync_dir(str(tmp_path))
    fs.mark("durable", 7)
    final = crash_states(fs.trace, fs.initial)
    assert [s.files for s in final.states if s.floor == 7] == [{}]


def test_floor_is_the_strictest_crash_point(tmp_path: Path) -> None:
    """A state producible at several crash points must satisfy the latest one."""
    fs = RecordingFileSystem(tmp_path)
    fd = fs.create(str(tmp_path / "f"))
    fs.sync_dir(str(tmp_path))
    fs.mark("durable", 3)
    fs.write(fd, b"a")
    fs.sync(fd)
    fs.mark("durable", 4)
    fs.close(fd)
    states = {s.files.get("f"): s for s in crash_states(fs.trace, fs.initial).states}
    assert states[b""].floor == 3  # only before the write was synced
    assert states[b"a"].floor == 4


def test_identical_states_are_merged_and_budget_samples(tmp_path: Path) -> None:
    fs = RecordingFileSystem(tmp_path)
    fd = fs.create(str(tmp_path / "f"))
    for _ in range(50):
        fs.write(fd, b"y" * 100)
        fs.close(fd)
        fd = fs.open_append(str(tmp_path / "f"))
    full = crash_states(fs.trace, fs.initial, relaxed=True)
    keys = {(tuple(sorted(s.files.items())), tuple(s.dirs)) for s in full.states}
    assert len(keys) == len(full.states) < full.candidates
    sample = crash_states(fs.trace, fs.initial, budget=10, seed=3, relaxed=True)
    assert len(sample.states) == 10


# ------------------------------------------------------------- the log
@pytest.mark.parametrize("policy", [p[0] for p in POLICIES])
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_crash_states(workload: str, policy: str, scratch: str,
                      tally: collections.Counter[str]) -> None:
    """Every sampled crash state reopens to a prefix holding all durable writes."""
    rec = record_workload(scratch, workload, policy, seed=1)
    space = crash_states(rec.trace, rec.initial, budget=CI_BUDGET, seed=1, relaxed=True,
                         max_cuts=4, relaxed_fraction=0.2)
    assert space.unique_ordered >= 32, "the workload produced too few states"
    problems: collections.Counter[str] = collections.Counter()
    example: dict[str, str] = {}
    for state, out in run_states(rec, space.states, scratch):
        tally["checked"] += 1
        tally["ordered" if state.ordered else "relaxed"] += 1
        tally[out.status] += 1
        if out.status == "violation":
            kind = out.detail.split(" in ")[0][:90]
            problems[kind] += 1
            example.setdefault(kind, f"{state.variant}: {state.where}")
    assert not problems, "\n".join(f"{n} x {k}\n    e.g. {example[k]}"
                                   for k, n in problems.most_common())


# --------------------------------------------- failures found by the enumeration
def _frame_at(b: LogBackend, target: int) -> None:
    """Append a sample of key "s" whose frame ends exactly at `target`."""
    writer = b.log.writer
    assert writer is not None
    length = target - writer.offset - 44  # 8 header + 32 body prefix + 4 CRC
    assert length > 0
    b.add_mutable(b"s", b"\xa5" * length, 2.0 + b.position)
    assert writer.offset == target


@pytest.mark.parametrize("persisted", [1, 2, 5, 7])
def test_frame_header_torn_at_sector_boundary_is_a_torn_tail(tmp_path: Path,
                                                             persisted: int) -> None:
    """A power loss during an append can persist the sector holding a frame's
    first bytes and the file's new size but not the next sector, which then
    reads as zeros: that is a torn tail to truncate, not corruption.

    Recovery (``classify_tail``) only accepts a zero-filled remainder that
    starts at least 8 bytes into the frame, so a sector boundary inside a
    frame header makes the log refuse to open after an ordinary crash.
    """
    path = tmp_path / "log"
    with LogBackend(path, fsync="never", flush_interval=0, checkpoint_bytes=None) as b:
        b.add_mutable(b"s", encode_value(0.0), 1.0)
        writer = b.log.writer
        assert writer is not None
        boundary = (writer.offset // 512 + 2) * 512
        _frame_at(b, boundary - persisted)  # the next frame starts `persisted` bytes before it
        kept = b.position
        b.add_mutable(b"s", b"\xa5" * 200, 1e6)  # the frame the crash tears
    seg = path / list_segments(OsFileSystem(), str(path))[-1][1]
    data = seg.read_bytes()
    seg.write_bytes(data[:boundary] + bytes(len(data) - boundary))
    with LogBackend(path) as b2:
        assert b2.position == kept


def _never_workload(path: str, *, seal: bool = False, prune: bool = False,
                    sync: bool = False) -> tuple[RecordingFileSystem, int]:
    """About three segments of samples under ``fsync="never"``, then the
    optional seal, prune or sync; returns the recorder and the position."""
    fs = RecordingFileSystem(path)
    d = Driver(fs, path, fsync="never", flush_interval=0.0)
    for i in range(200):
        d.add(b"m001_pos_azim", encode_value(float(i) * 1.5), 1e9 + i)
    if seal:
        d.seal()
    if prune:
        assert d.backend.prune(before=160).removed
    if sync:
        d.sync()
    pos = d.backend.position
    d.close()  # waits for the background sealer: a deterministic trace
    return fs, pos


def test_never_policy_sync_makes_every_write_durable(scratch: str) -> None:
    """``sync()`` returns a position as durable, whatever the policy.

    With ``fsync="never"`` a rotation neither syncs the finished segment nor
    the new segment's directory entry, and ``sync()`` then fdatasyncs only the
    current segment: after a power loss the earlier segments can be empty,
    torn or missing although ``sync()`` said their events were durable.
    """
    path = os.path.join(scratch, "log")
    fs, pos = _never_workload(path, sync=True)
    state = durable_image(fs.trace, fs.initial)
    assert state.floor == pos
    out = check_state(state, os.path.join(scratch, "crashed"), _reference(pos))
    assert out.status == "ok", out.detail


def test_never_policy_seal_leaves_an_openable_log(scratch: str) -> None:
    """Sealing syncs the seals file and the log directory, which makes the
    names of segments created without sync (``fsync="never"``) durable
    before their contents: after a power loss a sealed segment reads as
    empty, the log refuses to open and its seal refers to lost bytes."""
    path = os.path.join(scratch, "log")
    fs, pos = _never_workload(path, seal=True)
    state = durable_image(fs.trace, fs.initial)
    dest = os.path.join(scratch, "crashed")
    materialise(state, dest)
    seals = read_seals(dest)
    assert seals, "nothing was sealed"
    for s in seals:  # every durable seal must describe durable bytes
        seg = os.path.join(dest, s.segment)
        assert os.path.exists(seg), f"{s.segment} is sealed but missing"
        digest, size = file_digest(OsFileSystem(), seg)
        assert (digest.hex(), size) == (s.digest, s.size), \
            f"{s.segment} is sealed but only {size} of its {s.size} bytes are durable"
    shutil.rmtree(dest)
    out = check_state(state, dest, _reference(pos))
    assert out.status == "ok", out.detail


def test_never_policy_prune_keeps_a_durable_checkpoint(scratch: str) -> None:
    """Pruning durably removes segments (and records ``pruned``) but, with
    ``fsync="never"``, writes the checkpoint that replaces them without
    syncing it: after a power loss no checkpoint covers the pruned part and
    the log cannot be opened at all."""
    path = os.path.join(scratch, "log")
    fs, _ = _never_workload(path, prune=True)
    state = durable_image(fs.trace, fs.initial)
    dest = os.path.join(scratch, "crashed")
    materialise(state, dest)
    pruned = read_pruned(OsFileSystem(), dest)
    assert pruned > 1, "the prune did not happen"
    usable = []
    for cp in list_checkpoints(dest):
        try:
            load_checkpoint(cp.path, None)
            usable.append(cp.position)
        except CheckpointError:
            pass
    assert any(p >= pruned - 1 for p in usable), \
        f"segments before {pruned} are durably gone but no durable checkpoint covers them"


def _reference(events: int) -> Reference:
    """The reference of `_never_workload` (one sample per event)."""
    ref = Reference()
    for i in range(events):
        ref.apply(add_event(b"m001_pos_azim", encode_value(float(i) * 1.5), 1e9 + i))
    return ref


def _pruned_log(path: Path) -> int:
    """A pruned log whose newest segment has a damaged frame followed by intact
    ones; returns the offset of the damage."""
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None) as b:
        for i in range(300):
            b.add_mutable(b"s", encode_value(float(i)), 1e9 + i)
        assert b.prune(before=150).removed
        writer = b.log.writer
        assert writer is not None
        b.sync()
        offset = writer.offset
        for i in range(5):
            b.add_mutable(b"t", encode_value(i), 2e9 + i)
    return offset


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != "LOCK"}


def test_damaged_segment_after_a_checkpoint_changes_nothing(tmp_path: Path) -> None:
    """Opening refuses damage "and changes nothing" (README).  But a damaged
    frame in a segment replayed after a (valid) checkpoint makes recovery
    blame the checkpoint and rename it to ``.bad``; in a pruned log that
    checkpoint is the only copy of the pruned state, so the log can then no
    longer be opened even after ``repair``."""
    path = tmp_path / "log"
    offset = _pruned_log(path)
    seg = path / list_segments(OsFileSystem(), str(path))[-1][1]
    data = bytearray(seg.read_bytes())
    data[offset + 20] ^= 0xFF
    seg.write_bytes(bytes(data))
    before = _tree(path)
    with pytest.raises(LogCorruptError):
        LogBackend(path)
    assert _tree(path) == before


def test_repair_keeps_a_healthy_pruned_log(tmp_path: Path) -> None:
    """``repair_log`` replays from position 1 and ignores ``pruned`` and the
    checkpoints, so it calls a healthy pruned log damaged ("segment starts at
    position N but the log so far ends at 0") and would move every segment
    aside."""
    path = tmp_path / "log"
    _pruned_log(path)
    assert verify_log(path).ok
    report = repair_log(path, dry_run=True)
    assert not report.damaged, report.problem


@pytest.mark.parametrize("empties", [[b""], [b"", b""], [b"", bytes(52), bytes(700)]])
def test_torn_tail_followed_by_segments_never_written(tmp_path: Path,
                                                      empties: list[bytes]) -> None:
    """Found by ``tools/crash_states.py``: without syncs a crash can persist the
    names of new segments (a later directory sync made them durable) but not
    their content, nor the end of the segment before them.  Those files hold
    no event, so the log ends at the torn tail: a writer truncates it and
    removes them (recovery used to refuse: "header is 0 bytes")."""
    path = tmp_path / "log"
    with LogBackend(path, fsync="never", flush_interval=0, segment_bytes=4096,
                    checkpoint_bytes=None) as b:
        for i in range(600):
            b.add_mutable(b"s", encode_value(float(i)), 1e9 + i)
    segs = list_segments(OsFileSystem(), str(path))
    assert len(segs) > len(empties) + 1
    torn_first, torn_name = segs[-1 - len(empties)]
    later = [path / name for _, name in segs[len(segs) - len(empties):]]
    for p, content in zip(later, empties):
        p.write_bytes(content)
    torn = path / torn_name
    torn.write_bytes(torn.read_bytes()[:-30])  # its last frame cut short
    # The clean close above sealed every finished segment; a crash leaves none
    # of these sealed (the sealer syncs a segment before sealing it).
    (path / "seals").unlink()
    before = _tree(path)
    reader = LogBackend(path, readonly=True)  # a reader changes nothing ...
    kept_pos = reader.position
    assert _tree(path) == before
    assert kept_pos == int(later[0].name[:20]) - 2  # the last event was torn off
    assert not verify_log(path).ok  # strict: the torn tail is reported
    try:
        with LogBackend(path) as w:
            assert w.position == kept_pos
            samples = w.get_range(b"s", 0.0, float("inf"), False, False)
            assert [ts for _, ts in samples] == [1e9 + i for i in range(kept_pos)]
            w.add_mutable(b"s", encode_value(-1.0), 2e9)
        # ... and follows the writer that repaired the log (no false gap)
        wait_for(lambda: reader.position >= kept_pos + 1, what="the follower")
        assert reader.position == kept_pos + 1
        assert reader.get_range(b"s", 1.5e9, float("inf"), False, False) == [
            (encode_value(-1.0), 2e9)]
    finally:
        reader.close()
    assert not any(p.exists() for p in later)
    report = verify_log(path)
    assert report.ok, report.problems
    with LogBackend(path) as w:
        assert w.position == kept_pos + 1
    assert torn_first <= kept_pos


def test_empty_segment_before_a_written_one_is_corruption(tmp_path: Path) -> None:
    """Only *trailing* unwritten segments are a crash's leftovers: an empty
    segment followed by a written one is damage, refused without changes."""
    path = tmp_path / "log"
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None) as b:
        for i in range(200):
            b.add_mutable(b"s", encode_value(float(i)), 1e9 + i)
    segs = list_segments(OsFileSystem(), str(path))
    assert len(segs) >= 3
    (path / segs[-2][1]).write_bytes(b"")
    before = _tree(path)
    with pytest.raises(LogCorruptError, match="header is 0 bytes"):
        LogBackend(path)
    assert _tree(path) == before


# ------------------------------------- segments emptied after a synced creation
def _newest_segment(path: Path) -> Path:
    return path / list_segments(OsFileSystem(), str(path))[-1][1]


def _blank(seg: Path, damage: str) -> None:
    """Zero-fill (same size) or truncate to 0 bytes the segment file `seg`."""
    seg.write_bytes(bytes(seg.stat().st_size) if damage == "zero-fill" else b"")


@pytest.mark.parametrize("damage", ["zero-fill", "truncate"])
@pytest.mark.parametrize("policy", ["always", "interval"])
def test_emptied_newest_segment_after_synced_creation_is_corruption(
        tmp_path: Path, policy: str, damage: str) -> None:
    """Issue 14, defect 2: under ``fsync="always"`` a segment's header and
    directory entry are synced before any event in it is acknowledged (and
    "interval" syncs creations too), so a newest segment found empty or
    zero-filled is damage.  Recovery used to remove it as "a segment whose
    creation was cut short", opened at position 146 of 200 and reused the
    lost positions."""
    path = tmp_path / "log"
    with LogBackend(path, fsync=policy, segment_bytes=4096, checkpoint_bytes=None) as b:
        for i in range(200):
            b.add_mutable(b"s", encode_value(float(i)), 1e9 + i)
    seg = _newest_segment(path)
    assert seg.name != "00000000000000000001.seg"  # rotated: events in an older segment too
    _blank(seg, damage)
    before = _tree(path)
    for readonly in (False, True):
        with pytest.raises(LogCorruptError, match="created with syncs") as info:
            LogBackend(path, readonly=readonly)
        assert info.value.path == str(seg)
    assert _tree(path) == before  # nothing removed, nothing truncated


@pytest.mark.parametrize("damage", ["zero-fill", "truncate"])
def test_emptied_only_segment_after_synced_creation_is_corruption(tmp_path: Path,
                                                                  damage: str) -> None:
    """The same damage to the only segment: no older segment can tell, the
    record in ``synced-segment`` does (the log used to reopen empty)."""
    path = tmp_path / "log"
    with LogBackend(path, fsync="always", checkpoint_bytes=None) as b:
        for i in range(10):
            b.add_mutable(b"s", encode_value(float(i)), 1e9 + i)
    seg = _newest_segment(path)
    assert seg.name == "00000000000000000001.seg"
    _blank(seg, damage)
    with pytest.raises(LogCorruptError, match="created with syncs") as info:
        LogBackend(path)
    assert info.value.path == str(seg)
    assert seg.exists()


def _blank_newest_states(trace: list[Any], initial: Any, first_after: int) -> list[CrashState]:
    """Crash states of the ordered model whose newest segment, created after
    position `first_after`, holds nothing."""
    out = []
    for state in crash_states(trace, initial, relaxed=False, max_cuts=4).states:
        segs = sorted(n for n in state.files if n.endswith(".seg"))
        if (segs and int(segs[-1][:20]) > first_after
                and not state.files[segs[-1]].strip(b"\0")):
            out.append(state)
    return out


@pytest.mark.parametrize("earlier", [None, "always"])
def test_emptied_newest_segment_after_a_crash_without_syncs_recovers(
        scratch: str, earlier: str | None) -> None:
    """The same damage is a legitimate crash state where the segment was
    created without syncs: it is removed and the log opens at the torn tail
    before it -- also when an earlier session wrote the log with
    ``fsync="always"`` (what decides is what is on disk, not the policy of
    a session)."""
    path = os.path.join(scratch, "log")
    ref = Reference()
    if earlier is not None:
        with LogBackend(path, fsync=earlier, segment_bytes=4096, checkpoint_bytes=None) as b:
            for i in range(100):
                b.add_mutable(b"s", encode_value(float(i)), 1e9 + i)
                ref.apply(add_event(b"s", encode_value(float(i)), 1e9 + i))
    synced = read_synced(OsFileSystem(), path)
    assert (synced > 1) == (earlier is not None)
    fs = RecordingFileSystem(path)
    d = Driver(fs, path, fsync="never", flush_interval=0.0, ref=ref)
    for i in range(200):
        d.add(b"s", encode_value(float(i)), 2e9 + i)
    d.close()
    states = _blank_newest_states(fs.trace, fs.initial, synced)
    assert len(states) >= 2, "the crash model produced no emptied newest segment"
    for n, state in enumerate(states):
        out = check_state(state, os.path.join(scratch, f"state-{n}"), d.ref)
        assert out.status == "ok", f"{state.variant} {state.where}: {out.detail}"
        assert out.position is not None and out.position >= synced


def test_synced_creation_is_recorded_before_its_events_are_durable(scratch: str) -> None:
    """In every crash state of an ``fsync="always"`` workload, a segment that
    holds an event acknowledged as durable is covered by the durable record
    of synced creations (so emptying it later cannot pass for a crash)."""
    path = os.path.join(scratch, "log")
    fs = RecordingFileSystem(path)
    d = Driver(fs, path, fsync="always", flush_interval=0.0)
    for i in range(250):
        d.add(b"s", encode_value(float(i)), 1e9 + i)
    d.close()
    firsts = sorted({int(op.dst[:20]) for op in fs.trace
                     if op.kind == "rename" and op.dst.endswith(".seg")})
    assert len(firsts) >= 3
    space = crash_states(fs.trace, fs.initial, relaxed=True, max_cuts=4)
    checked = 0
    for state in space.states:
        if state.floor < 1:
            continue
        holding = max(f for f in firsts if f <= state.floor)
        record = fmt.parse_synced(state.files.get(fmt.SYNCED_FILE, b""))
        assert not isinstance(record, str), f"{state.variant} {state.where}: {record}"
        assert record[0] >= holding, (state.variant, state.where)
        checked += 1
    assert checked > 50


def test_synced_record_ahead_of_the_log_is_lowered(tmp_path: Path) -> None:
    """A crash between recording a synced creation and the segment's rename
    leaves the record ahead of the log.  A writer without syncs that then
    creates a segment at that very position must not have it taken for a
    synced one after its own crash: the writer lowers the record first."""
    path = tmp_path / "log"
    with LogBackend(path, fsync="always", segment_bytes=4096, checkpoint_bytes=None) as b:
        for i in range(30):
            b.add_mutable(b"s", encode_value(float(i)), 1e9 + i)
        log_id = b.log_id
    assert log_id is not None
    newest = list_segments(OsFileSystem(), str(path))[-1][0]
    (path / fmt.SYNCED_FILE).write_bytes(fmt.encode_synced(31, log_id))  # the crash's leftover
    with LogBackend(path, fsync="never", checkpoint_bytes=None) as w:
        assert read_synced(OsFileSystem(), str(path)) == newest
        w.seal()  # creates segment 31 without syncs
        assert _newest_segment(path).name == "00000000000000000031.seg"
    _blank(_newest_segment(path), "truncate")  # a crash lost its content
    with LogBackend(path) as b2:
        assert b2.position == 30
    # segment 1 is sealed: the last writer started segment 31 again, with syncs
    assert read_synced(OsFileSystem(), str(path)) == 31
    assert (path / fmt.segment_name(31)).stat().st_size == fmt.HEADER_SIZE


def test_synced_record_with_no_segment_is_removed(tmp_path: Path) -> None:
    """A crash while creating a log with syncs can leave the record but no
    segment; a writer without syncs then removes it before creating one."""
    path = tmp_path / "log"
    path.mkdir()
    (path / fmt.SYNCED_FILE).write_bytes(fmt.encode_synced(1, bytes(16)))
    with LogBackend(path, fsync="never", checkpoint_bytes=None) as w:
        assert not (path / fmt.SYNCED_FILE).exists()
        w.add_mutable(b"s", encode_value(1.0), 1e9)
    _blank(_newest_segment(path), "zero-fill")
    with LogBackend(path) as b:
        assert b.position == 0


@pytest.mark.parametrize("damage", ["bit-flip", "other-log"])
def test_damaged_synced_record(tmp_path: Path, damage: str,
                               caplog: pytest.LogCaptureFixture) -> None:
    """A damaged record cannot vouch for anything: where it must judge a
    segment that holds nothing, opening fails naming it; otherwise a writer
    sets it aside (``.bad``) and records afresh at the next synced creation."""
    path = tmp_path / "log"
    with LogBackend(path, fsync="always", segment_bytes=4096, checkpoint_bytes=None) as b:
        for i in range(100):
            b.add_mutable(b"s", encode_value(float(i)), 1e9 + i)
    record = path / fmt.SYNCED_FILE
    good = record.read_bytes()
    if damage == "bit-flip":
        record.write_bytes(good[:14] + bytes([good[14] ^ 1]) + good[15:])
    else:
        first = fmt.parse_synced(good)
        assert not isinstance(first, str)
        record.write_bytes(fmt.encode_synced(first[0], b"\xee" * 16))
    seg = _newest_segment(path)
    content = seg.read_bytes()
    _blank(seg, "zero-fill")
    with pytest.raises(LogCorruptError) as info:
        LogBackend(path)
    assert info.value.path == str(record)
    seg.write_bytes(content)
    with LogBackend(path, readonly=True, follow=False) as r:  # a reader needs no record
        assert r.position == 100
    assert record.exists()
    with LogBackend(path, fsync="always", segment_bytes=4096, checkpoint_bytes=None) as w:
        assert not record.exists() and (path / (fmt.SYNCED_FILE + ".bad")).exists()
        assert "setting aside a damaged record" in caplog.text
        while _newest_segment(path) == seg:
            w.add_mutable(b"s", encode_value(0.0), 2e9 + w.position)
    assert read_synced(OsFileSystem(), str(path)) == int(_newest_segment(path).name[:20])


def test_log_without_synced_record_still_recovers_an_emptied_segment(tmp_path: Path) -> None:
    """Logs written before the record existed (the golden log) have none: an
    empty newest segment is still taken for a creation cut short."""
    path = tmp_path / "log"
    shutil.copytree(Path(__file__).parent / "data" / "log" / "golden-v1", path)
    assert not (path / fmt.SYNCED_FILE).exists()
    (path / fmt.segment_name(99)).write_bytes(b"")
    with LogBackend(path, use_checkpoints=False) as b:
        assert b.position == 98
    assert not (path / fmt.segment_name(99)).exists()
