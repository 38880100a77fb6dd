"""Verifying a log, and salvaging a damaged one.

Theory of operation
-------------------
:func:`verify_log` reads every segment strictly -- headers, chained CRCs,
frame structure, consecutive positions, and a full replay so that every event
is also valid where it stands -- and checks every checkpoint against the
replayed state at its position (streamed: a window of one segment at a
time, each checkpoint loaded and compared when the replay reaches it, see
:mod:`telstate_log.storage._verify_replay`).  It changes nothing and reports the first
damage with its file and byte offset.  Each problem has a ``kind``
(``segment``, ``checkpoint``, ``seal`` or ``log``) and says whether
``repair_log`` fixes it (``repairable``): one definition of damage serves
both, so ``repair`` never declares a log good that ``verify`` rejects.

:func:`repair_log` is the explicit salvage path for what opening refuses.
It takes the writer lock, finds the first damage the same way, keeps
everything before it (truncating that segment at the last good frame) and
moves the rest -- the damaged remainder of that segment, every later segment
and every checkpoint beyond the good prefix -- into ``damaged-<time>/``
inside the log directory, where it can be examined.  Every checkpoint verify
found a problem with (unreadable, of another log, ahead of the log, or
differing from the replay) is set aside there too.  The report says exactly
which positions were lost (the highest position still readable in the moved
data is found by scanning it for intact frames).  What repair does not touch
-- a seal chain that no longer matches intact segments (evidence of
tampering), missing segments, a pruned log without a checkpoint -- it reports
as unrepairable, and ``verify`` does not suggest repair for it.
"""

from __future__ import annotations

import datetime
import os
import shutil
import zlib
from dataclasses import dataclass, field
from typing import Any

from numpy import isin as np_isin

from ..core import _log_format as fmt
from ..core._apply import Applier, Tables
from ..core._errors import LogCorruptError, LogError
from ..core._state import State
from ._checkpoint import CHECKPOINT_DIR, CheckpointError, list_checkpoints
from ._checkpoint_load import load_checkpoint
from ._fileio import OsFileSystem
from ._lockfile import acquire_lock, release_lock
from ._recovery import list_segments
from ._retention import read_pruned
from ._seal import (
    HeadCheck,
    Seal,
    SealFileError,
    check_head,
    pruned_prefix,
    read_seals,
    verify_seals,
    write_seals,
)
from ._verify_replay import Compared, SegmentRun, replay_segment, scan_segment

__all__ = ["RepairReport", "VerifyReport", "repair_log", "verify_log"]


@dataclass
class VerifyReport:
    """What :func:`verify_log` found."""

    path: str
    ok: bool = True
    segments: int = 0
    bytes: int = 0
    events: int = 0
    checkpoints_ok: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)
    torn_tail: dict[str, Any] | None = None
    #: the head hash: the latest seal (hex) of the chain; None if nothing is sealed.
    #: Compare a kept hash with :meth:`check_head`, not with this: when
    #: `head_pruned` its segment is gone and the value is taken as given.
    head: str | None = None
    #: the head is the seal of a pruned segment: it cannot be verified from this log
    head_pruned: bool = False
    #: segments whose seal was recomputed from their bytes and matched
    sealed_segments: int = 0
    unsealed_segments: list[str] = field(default_factory=list)
    #: every seal recomputed from the segment files, in order: the only
    #: values a kept head can be verified against
    seal_chain: list[str] = field(default_factory=list)
    #: the seals of pruned segments before them, taken as given (never verified)
    pruned_chain: list[str] = field(default_factory=list)
    #: the log was pruned before this position (0: never)
    pruned_before: int = 0
    #: sealed segments that were pruned (len(pruned_chain))
    pruned_seals: int = 0
    #: the accepted seal lines (pruned, then recomputed)
    _seals: list[Seal] = field(default_factory=list, repr=False)
    #: what repair_log would do about the problems
    _remedy: _Remedy | None = field(default=None, repr=False)

    @property
    def damaged(self) -> bool:
        """Any problem at all: what ``verify`` fails on.  ``repair`` fixes the
        problems marked ``repairable`` and reports the others as unrepairable."""
        return not self.ok or bool(self.problems)

    def check_head(self, wanted: str) -> HeadCheck:
        """Whether a kept head hash is reproduced from the bytes in the log
        (see :func:`telstate_log.storage._seal.check_head`): only ``.ok`` proves anything."""
        return check_head(wanted, self.pruned_chain, self.seal_chain, self._seals)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


@dataclass
class _Remedy:
    """What :func:`repair_log` does about a :class:`VerifyReport`'s problems."""

    #: the first damage in a segment (the good prefix ends there), if any
    damage: dict[str, Any] | None = None
    #: index of its segment among the segments
    index: int = 0
    #: how many leading lines of ``seals`` survive (when damage is not None)
    keep_seals: int = 0
    #: checkpoint problems: those checkpoints are set aside
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    #: problems repair does not fix
    unrepairable: list[dict[str, Any]] = field(default_factory=list)
    #: the segments (first position, name) the remedy was made for
    segments: list[tuple[int, str]] = field(default_factory=list)


def _keeps_pruned_state(path: str, fs: OsFileSystem, report: VerifyReport,
                        segments: list[tuple[int, str]], damage: dict[str, Any],
                        index: int) -> bool:
    """Whether a pruned log still opens after repair cuts it at `damage` (in
    segment `index`): a sound checkpoint must cover the pruned part at or
    before the cut."""
    if segments[0][0] <= 1:
        return True  # not pruned: the log replays from its start
    first = segments[index][0]
    offset = int(damage["offset"])
    kept = first - 1 if offset <= fmt.HEADER_SIZE else \
        _last_position_before(fs.read(damage["file"]), offset, first)
    bad = {p["file"] for p in report.problems if p["kind"] == "checkpoint"}
    return any(segments[0][0] - 1 <= cp.position <= kept and cp.path not in bad
               for cp in list_checkpoints(path))


def _plan_repair(path: str, fs: OsFileSystem, report: VerifyReport,
                 segments: list[tuple[int, str]], pruned: int) -> _Remedy:
    """Decide, for every problem, whether repair fixes it (and how); marks
    each problem's ``repairable``."""
    remedy = _Remedy(segments=segments)
    names = [os.path.join(path, n) for _, n in segments]
    remedy.damage = next((p for p in report.problems if p["kind"] == "segment"), None)
    keep: set[str] | None = None  # segments whose seals survive the repair
    if remedy.damage is not None:
        remedy.index = names.index(remedy.damage["file"])
        if not _keeps_pruned_state(path, fs, report, segments, remedy.damage, remedy.index):
            remedy.damage["repair_note"] = "no sound checkpoint before the damage holds the " \
                                         "state of the pruned positions; cutting here " \
                                         "would lose it"
            remedy.damage = None
    if remedy.damage is not None:
        whole = names[:remedy.index]
        keep = set(whole if remedy.damage["offset"] > fmt.HEADER_SIZE else whole[:-1])
    try:
        seals: list[Seal] | None = read_seals(path, fs)
    except SealFileError:
        seals = None  # repair moves a malformed seals file aside with the damage
    if seals is not None and keep is not None:
        n = pruned_prefix(seals, {n for _, n in segments}, pruned)
        while n < len(seals) and os.path.join(path, seals[n].segment) in keep:
            n += 1
        remedy.keep_seals = n
    for p in report.problems:
        kind = p["kind"]
        if kind == "checkpoint":
            fixed = True
            remedy.checkpoints.append(p)
        elif kind == "seal":
            # fixed only if repair drops that seal (its segment is cut or moved)
            fixed = keep is not None and (seals is None
                                          or remedy.keep_seals <= len(report._seals))
        else:
            fixed = p is remedy.damage  # the segment damage, unless repair refused it
        p["repairable"] = fixed
        if not fixed:
            remedy.unrepairable.append(p)
    return remedy


def verify_log(path: str | os.PathLike[str]) -> VerifyReport:
    """Check every checksum and invariant of the log at `path` (read-only)."""
    path = os.fspath(path)
    fs = OsFileSystem()
    report = VerifyReport(path)
    if not os.path.isdir(path):
        raise LogError(f"{path!r} is not a log directory")
    segments = listed = list_segments(fs, path)
    report.segments = len(segments)
    report.bytes = sum(os.path.getsize(os.path.join(path, name)) for _, name in segments)
    checkpoints = {cp.position: cp for cp in list_checkpoints(path)}
    compared: dict[int, Compared] = {}  # checkpoints compared when the replay reached them
    state = State(keep_history=True)
    replayer = Applier(state, Tables())
    pruned = read_pruned(fs, path)
    apply_from: tuple[int, int] | None = None  # (segment, offset) where replay starts
    if segments and segments[0][0] > 1:
        if pruned < segments[0][0]:
            report.ok = False
            report.problems.append({"file": os.path.join(path, segments[0][1]), "offset": None,
                                    "kind": "log",
                                    "problem": f"segments before position {segments[0][0]} are "
                                               "missing and the log was not pruned"})
        base = _oldest_checkpoint(checkpoints, segments[0][0])
        if base is None:
            report.ok = False
            report.problems.append({"file": path, "offset": None, "kind": "log",
                                    "problem": "the log was pruned and no valid checkpoint "
                                               "covers the pruned part"})
            segments = []
        else:
            state, tables, resume = base
            replayer = Applier(state, tables)
            apply_from = (resume.segment_first, resume.offset)
            checkpoints = {p: c for p, c in checkpoints.items() if p >= state.position}
    report.pruned_before = pruned
    expected = [segments[0][0] if segments else 1]
    log_id: list[bytes | None] = [None]
    run = SegmentRun(replayer, checkpoints, compared, apply_from, None)
    try:
        for i, (first, name) in enumerate(segments):
            seg = os.path.join(path, name)
            _replay_one(fs, seg, first, run, report, expected, log_id,
                        newest=i == len(segments) - 1)
    except LogCorruptError as exc:
        report.ok = False
        in_segment = exc.offset is not None and exc.path in {
            os.path.join(path, name) for _, name in segments}
        report.problems.append({"file": exc.path, "offset": exc.offset,
                                "kind": "segment" if in_segment else "log",
                                "problem": exc.message})
    report.events = state.position
    if segments:
        header = fmt.parse_header(fs.read(os.path.join(path, segments[0][1]), 0,
                                          fmt.HEADER_SIZE))
        if not isinstance(header, str):
            seals = verify_seals(path, header.log_id, segments, fs, pruned_before=pruned)
            report.pruned_chain = seals["pruned_chain"]
            report.pruned_seals = len(seals["pruned_chain"])
            report._seals = seals["seals"]
            report.head = seals["head"]
            report.head_pruned = seals["head_pruned"]
            report.sealed_segments = seals["sealed"]
            report.unsealed_segments = seals["unsealed"]
            report.seal_chain = seals["chain"]
            if not seals["ok"]:
                report.ok = False
                for p in seals["problems"]:
                    report.problems.append({"file": p["file"], "offset": None, "kind": "seal",
                                            "problem": p["problem"]})
    for pos, cp in sorted(checkpoints.items()):
        outcome = compared.get(pos)
        try:
            if outcome is None:
                load_checkpoint(cp.path, log_id[0])  # only whether it loads
            elif outcome.error is not None:
                raise outcome.error
        except FileNotFoundError:
            continue  # replaced by a live writer's newer checkpoint since it was listed
        except CheckpointError as exc:
            if "another log" in str(exc):  # not damage: a file that does not belong here
                report.ok = False
            report.problems.append({"file": cp.path, "offset": None, "kind": "checkpoint",
                                    "problem": f"damaged checkpoint (ignored on open): {exc}"})
            continue
        if pos > state.position:
            report.problems.append({"file": cp.path, "offset": None, "kind": "checkpoint",
                                    "problem": "checkpoint is ahead of the log (ignored on open)"})
        elif outcome is not None and outcome.differs:
            report.ok = False
            report.problems.append({"file": cp.path, "offset": None, "kind": "checkpoint",
                                    "problem": "checkpoint differs from the replayed log"})
        else:
            report.checkpoints_ok += 1
    report._remedy = _plan_repair(path, fs, report, listed, pruned)
    return report


def _oldest_checkpoint(checkpoints: dict[int, Any], first: int) -> Any:
    """(state, tables, resume) of the oldest loadable checkpoint at or after `first` - 1."""
    for pos in sorted(checkpoints):
        if pos < first - 1:
            continue
        try:
            return load_checkpoint(checkpoints[pos].path, None)
        except (CheckpointError, FileNotFoundError):
            continue
    return None


def _replay_one(fs: OsFileSystem, seg: str, first: int, run: SegmentRun,
                report: VerifyReport, expected: list[int], log_id: list[bytes | None],
                newest: bool = False) -> None:
    """Check one segment strictly; apply its events from `run.apply_from` on
    (a window at a time: see :mod:`telstate_log.storage._verify_replay`)."""
    header = fmt.parse_header(fs.read(seg, 0, fmt.HEADER_SIZE))
    if isinstance(header, str):
        raise LogCorruptError(header, seg, 0)
    if header.first_position != first or first != expected[0]:
        raise LogCorruptError(f"segment should start at position {expected[0]}", seg, 16)
    if log_id[0] is None:
        log_id[0] = run.log_id = header.log_id
    elif header.log_id != log_id[0]:
        raise LogCorruptError("segment belongs to another log (log id differs)", seg, 32)
    windows, torn = scan_segment(fs, seg, newest)
    if torn is not None:
        report.torn_tail = torn
    following = replay_segment(fs, seg, first, run, windows)
    if following is not None:
        expected[0] = following


@dataclass
class RepairReport:
    """What :func:`repair_log` kept and moved aside."""

    path: str
    #: verify found problems that repair fixes (and it fixed them unless a dry run)
    damaged: bool = False
    #: the first of them (the damage in a segment, if any)
    problem: dict[str, Any] | None = None
    kept_position: int = 0
    #: positions lost with the damaged part of the segments (None: none)
    lost_positions: tuple[int, int] | None = None
    moved: list[str] = field(default_factory=list)
    moved_to: str | None = None
    truncated: dict[str, Any] | None = None
    #: problems verify found that repair does not fix (the log still fails verify)
    unrepairable: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _highest_position(data: bytes) -> int:
    """Highest event position in the intact frames of (damaged) bytes."""
    mv = memoryview(data)
    best = 0
    pos = fmt.find_valid_frame(mv, 4, len(data))
    while pos is not None:
        kind = data[pos + 2]
        length = int.from_bytes(data[pos + 4:pos + 8], "little")
        if kind in fmt.EVENT_KINDS and length >= fmt.EVENT_PREFIX:
            best = max(best, int.from_bytes(data[pos + 8:pos + 16], "little"))
        pos = fmt.find_valid_frame(mv, pos + 12 + length, len(data))
    return best


def _last_position_before(data: bytes, offset: int, first: int) -> int:
    """Position of the last event wholly before byte `offset` of a segment."""
    mv = memoryview(data)[:offset]
    scan = fmt.scan_frames(mv, fmt.HEADER_SIZE, offset, zlib.crc32(mv[:fmt.HEADER_SIZE]))
    dec = fmt.decode_frames(mv, scan)
    events = np_isin(dec.kinds, list(fmt.EVENT_KINDS))
    if not events.any():
        return first - 1
    return int(dec.event["pos"][events][-1]) + int(dec.counts[events][-1]) - 1


def repair_log(path: str | os.PathLike[str], *, dry_run: bool = False) -> RepairReport:
    """Keep the good prefix of a damaged log; set the damage aside (see module doc).

    Acts on exactly the problems :func:`verify_log` reports as ``repairable``
    (so pruned logs are judged from their checkpoint): damage in a segment
    and every problem checkpoint.  A segment that differs from its seal
    (tampering) is evidence, not damage to salvage: it is left alone and
    listed in ``unrepairable``, as are missing segments.
    """
    path = os.fspath(path)
    report = RepairReport(path)
    fs = OsFileSystem()
    lock_fd = acquire_lock(path)  # refuse while a writer is active
    try:
        verified = verify_log(path)
        remedy = verified._remedy
        assert remedy is not None
        report.kept_position = verified.events
        report.unrepairable = remedy.unrepairable
        fixable = [p for p in verified.problems if p["repairable"]]
        if not fixable:
            return report
        report.damaged = True
        report.problem = remedy.damage or fixable[0]
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
        aside = os.path.join(path, f"damaged-{stamp}")
        report.moved_to = aside
        moves: list[tuple[str, str]] = []
        truncate_at: int | None = None
        data = b""
        names = [os.path.join(path, n) for _, n in remedy.segments]
        idx = remedy.index
        if remedy.damage is not None:
            offset = int(remedy.damage["offset"])
            first = remedy.segments[idx][0]
            data = fs.read(names[idx])
            if offset <= fmt.HEADER_SIZE:
                moves.append((names[idx], os.path.basename(names[idx])))
                kept = first - 1
                lost_hi = _highest_position(data)
            else:
                truncate_at = offset
                kept = _last_position_before(data, offset, first)
                lost_hi = _highest_position(data[offset - 4:])
                report.truncated = {"file": names[idx], "at": truncate_at}
            for later in names[idx + 1:]:
                moves.append((later, os.path.basename(later)))
                lost_hi = max(lost_hi, _highest_position(fs.read(later)))
            report.kept_position = kept
            report.lost_positions = (kept + 1, max(lost_hi, kept + 1))
            moves += [(cp.path, _aside_name(cp.path)) for cp in list_checkpoints(path)
                      if cp.position > kept]
        moving = {src for src, _ in moves}
        moves += [(p["file"], _aside_name(p["file"])) for p in remedy.checkpoints
                  if p["file"] not in moving]
        report.moved = [src for src, _ in moves]
        if dry_run:
            return report
        os.makedirs(aside, exist_ok=True)
        if truncate_at is not None:
            with open(os.path.join(aside, os.path.basename(names[idx]) + f".from-{truncate_at}"),
                      "wb") as out:
                out.write(data[truncate_at:])
                out.flush()
                os.fsync(out.fileno())
            fd = fs.open_append(names[idx])
            try:
                fs.truncate(fd, truncate_at)
                fs.sync(fd)
            finally:
                fs.close(fd)
        for src, dst in moves:
            shutil.move(src, os.path.join(aside, dst))
        if remedy.damage is not None:
            _drop_seals(path, fs, remedy.keep_seals, aside)
        fs.sync_dir(aside)
        if any(src.startswith(os.path.join(path, CHECKPOINT_DIR, "")) for src in report.moved):
            fs.sync_dir(os.path.join(path, CHECKPOINT_DIR))
        fs.sync_dir(path)
        return report
    finally:
        release_lock(lock_fd)


def _aside_name(checkpoint: str) -> str:
    return "checkpoint-" + os.path.basename(checkpoint)


def _drop_seals(path: str, fs: OsFileSystem, keep: int, aside: str) -> None:
    """Keep only the first `keep` seals (the pruned ones and those of segments
    that survived a repair untouched); the old file goes aside for forensics."""
    try:
        seals = read_seals(path, fs)
    except SealFileError:
        shutil.move(os.path.join(path, "seals"), os.path.join(aside, "seals"))
        return
    if keep < len(seals):
        shutil.copy(os.path.join(path, "seals"), os.path.join(aside, "seals"))
        write_seals(path, seals[:keep], fs)
