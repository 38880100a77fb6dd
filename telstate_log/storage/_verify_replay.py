"""The replay half of ``verify``: one segment at a time, in bounded windows.

Theory of operation
-------------------
:func:`replay_segment` checks one segment strictly and applies its events
to the verifier's state, holding only a window of the segment's bytes at a
time (:func:`~telstate_log.storage._frame_walk.segment_windows`), never the
segment, let alone the log.  It makes two passes.  The first scans every
frame (structure and chained CRC) and keeps only the frame arrays of each
window, so that damage anywhere in the segment is found before any of its
events is applied -- as when the segment was read whole, the replay stops
at the end of the previous segment.  The second re-reads each window,
checks that its bytes still have the CRC the first pass verified (so no
byte is applied that was not checked) and applies it.

A checkpoint is compared with the replay when the replay reaches its
position (:func:`compare_checkpoint`): it is loaded then, compared key by
key and dropped, so no copy of a whole state is ever kept; the heap the
replay freed is given back to the system first, and the file's
pages are dropped from the process as the comparison goes (they are read
again from the page cache when used), so verify holds the replayed state
plus the checkpoint's Python objects, not the whole file as well.  Its
summary (what ``info`` reads instead of the state:
:mod:`~telstate_log.storage._checkpoint_summary`) must be the summary of the
replayed state, or the checkpoint differs.

Before a pruned log's starting checkpoint, frames are only decoded on a
scratch state (one per segment) for structural problems, as before.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from numpy import isin as np_isin
from numpy import searchsorted as np_searchsorted

from ..core import _log_format as fmt
from ..core._apply import Applier, ReplayError, Tables
from ..core._errors import LogCorruptError
from ..core._state import State
from ._checkpoint import CheckpointError, snapshot_state
from ._checkpoint_load import load_checkpoint_paged, read_summary
from ._checkpoint_summary import encode_summary, parse_summary, summarise
from ._fileio import FileSystem
from ._frame_walk import segment_windows
from ._recovery import Resume, classify_tail

__all__ = ["Compared", "compare_checkpoint", "replay_segment"]

_EVENT_KINDS = list(fmt.EVENT_KINDS)


def _key_fingerprint(state: State, key: bytes) -> Any:
    """What a checkpoint must agree with the replay on, for one key."""
    entry = state.entry(key)
    if entry is None:
        return None
    kind = state.key_type(key)
    if kind is not None and kind.name == "MUTABLE":
        col = state.sensor(key)
        assert col is not None
        return (kind.name, col.values(0, len(col)), col.timestamps().tolist(),
                col.positions().tolist())
    return (kind.name if kind else None, state.get(key)[0], entry.created)


#: keys compared between two drops of the checkpoint's pages (see compare_checkpoint)
_KEYS_PER_DROP = 64


def same_state(a: State, b: State, every: Callable[[], None] | None = None) -> bool:
    """Whether two states hold the same keys with the same fingerprints, compared
    one key at a time (never a copy of a whole state); `every` is called after
    each :data:`_KEYS_PER_DROP` keys."""
    keys = {key for key, _ in a.items()}
    if keys != {key for key, _ in b.items()}:
        return False
    for i, key in enumerate(keys, 1):
        if _key_fingerprint(a, key) != _key_fingerprint(b, key):
            return False
        if every is not None and i % _KEYS_PER_DROP == 0:
            every()
    return True


def same_summary(cp_path: str, log_id: bytes | None, state: State, tables: Tables,
                 cp_tables: Tables, resume: Resume) -> bool:
    """Whether the summary of the checkpoint at `cp_path` (if it has one) is that of
    `state` and `tables` (the replay at its position), of the checkpoint's
    session table `cp_tables.sessions` and of its `resume` point.  (The
    replay's session table may already hold sessions recorded after the
    position: their records come before the next event.)"""
    found = read_summary(cp_path, log_id)
    if found is None:
        return True  # written before summaries (a damaged one fails the body CRC)
    expected = summarise(state.position, snapshot_state(state, tables)["entries"],
                         sorted(cp_tables.sessions.items()), tables.last_recorded,
                         (resume.segment_first, resume.offset), found.log_id)
    # through the encoding, as `found` went (msgpack turns tuples into lists)
    return parse_summary(encode_summary(expected), found.position, found.log_id) == found


@dataclass
class Compared:
    """A checkpoint loaded and compared with the replay when it reached its position."""

    error: Exception | None = None
    differs: bool = False


def compare_checkpoint(cp_path: str, log_id: bytes | None, state: State,
                       tables: Tables) -> Compared:
    """Load the checkpoint at `cp_path` and compare it (state and summary) with
    the replay at its position, `state` and `tables`.  The checkpoint's
    pages are dropped from the process after loading and every few keys
    compared, so the comparison adds about the checkpoint's Python objects
    to the replay's state, not the whole file as well."""
    _trim_heap()
    try:
        cp_state, cp_tables, resume, drop_pages = load_checkpoint_paged(cp_path, log_id)
        drop_pages()
        if not same_summary(cp_path, log_id, state, tables, cp_tables, resume):
            return Compared(differs=True)
    except (FileNotFoundError, CheckpointError) as exc:
        return Compared(error=exc)
    return Compared(differs=not same_state(cp_state, state, drop_pages))


def _trim_heap() -> None:
    """Give the memory the replay freed back to the system before a checkpoint is
    loaded beside its state (glibc keeps freed heap otherwise: about a third
    of a large replay's); nothing where the C library has no malloc_trim."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


@dataclass
class Window:
    """The first pass's record of one window: where, its frames, the CRC before it."""

    base: int
    scan: fmt.Scan
    crc: int


@dataclass
class SegmentRun:
    """What one segment's replay needs besides the segment."""

    replayer: Applier
    checkpoints: dict[int, Any]
    compared: dict[int, Compared]
    apply_from: tuple[int, int] | None
    log_id: bytes | None


def scan_segment(fs: FileSystem, seg: str, newest: bool
                 ) -> tuple[list[Window], dict[str, Any] | None]:
    """First pass: every window's frames, and the torn tail if the newest
    segment has one; LogCorruptError for any other damage."""
    windows: list[Window] = []
    crc = zlib.crc32(fs.read(seg, 0, fmt.HEADER_SIZE))
    for _, scan, _, base in segment_windows(fs, seg):
        if len(scan.offsets):
            windows.append(Window(base, dataclasses.replace(scan, problem=None), crc))
        crc = scan.crc
        if scan.problem is None:
            continue
        at = base + scan.problem_offset
        rest = fs.read(seg, at - 4)  # from the CRC before the damage to the end
        if not (newest and classify_tail(rest, dataclasses.replace(scan, problem_offset=4),
                                         at - 4)):
            raise LogCorruptError(scan.problem, seg, at)
        # A torn tail (a crash's leftovers, or a frame the writer is writing
        # now): the next writer truncates it.  Report it; it is not damage.
        return windows, {"file": seg, "offset": at, "problem": scan.problem,
                         "bytes": len(rest) - 4}
    return windows, None


def replay_segment(fs: FileSystem, seg: str, first: int, run: SegmentRun,
                   windows: list[Window]) -> int | None:
    """Second pass: apply the frames of `windows` (from `run.apply_from` on),
    comparing each checkpoint as the replay reaches it.  Returns the position
    after the segment's last event (None: it has none)."""
    replayer, state = run.replayer, run.replayer.state
    scratch = _Scratch(replayer)
    following: int | None = None
    for w in windows:
        data = fs.read(seg, w.base, w.scan.end)
        if len(data) != w.scan.end or zlib.crc32(data, w.crc) != w.scan.crc:
            raise LogCorruptError("segment changed while it was being verified", seg, w.base)
        mv = memoryview(data)
        scan = w.scan
        dec = fmt.decode_frames(mv, scan)
        is_event = np_isin(dec.kinds, _EVENT_KINDS)
        positions = dec.event["pos"]
        if is_event.any():
            following = int(positions[is_event][-1]) + int(dec.counts[is_event][-1])
        start = 0
        if run.apply_from is not None:
            seg_first, offset = run.apply_from
            if first < seg_first:
                scratch.check(mv, scan, dec, is_event, seg, w.base)
                continue
            if first == seg_first:
                start = int(np_searchsorted(scan.offsets + w.base, offset))
                scratch.check(mv, _sub_scan(scan, 0, start), None, None, seg, w.base)
        # Apply in runs that end exactly at each checkpoint position, to compare states.
        for target in sorted(p for p in run.checkpoints if state.position <= p):
            after = (is_event & (positions > target)).nonzero()[0]
            cut = int(after[0]) if len(after) else len(scan.offsets)
            if cut < start:
                continue
            _apply(replayer, mv, _sub_scan(scan, start, cut), seg, w.base)
            start = cut
            if state.position == target and target not in run.compared:
                run.compared[target] = compare_checkpoint(run.checkpoints[target].path,
                                                          run.log_id, state, replayer.tables)
        _apply(replayer, mv, _sub_scan(scan, start, len(scan.offsets)), seg, w.base)
    return following


class _Scratch:
    """Frames before the replay's starting checkpoint: decoded on a scratch
    state (one per segment) for structural problems only."""

    def __init__(self, replayer: Applier) -> None:
        self.replayer = replayer
        self.scratch: Applier | None = None
        self.placed = False  # its position set from the segment's first event
        self.stopped = False  # a semantic problem ended the check (it needs the prefix)

    def check(self, mv: memoryview, scan: fmt.Scan, dec: fmt.Decoded | None,
              is_event: Any, seg: str, base: int) -> None:
        if self.stopped or not len(scan.offsets):
            return
        if self.scratch is None:
            tables = self.replayer.tables
            self.scratch = Applier(State(keep_history=False), tables)
            self.scratch.tables = Tables(keys=dict(tables.keys), key_ids=dict(tables.key_ids),
                                         sessions=dict(tables.sessions))
        if not self.placed:
            if dec is None:
                dec = fmt.decode_frames(mv, scan)
                is_event = np_isin(dec.kinds, _EVENT_KINDS)
            if is_event.any():
                self.scratch.state.position = int(dec.event["pos"][is_event][0]) - 1
                self.placed = True
        try:
            self.scratch.apply(mv, scan)
        except Exception as exc:  # structural problems only: semantic ones need the prefix
            self.stopped = True
            if isinstance(exc, ReplayError) and ("position" in exc.reason
                                                 or "kind" in exc.reason
                                                 or "short" in exc.reason):
                raise LogCorruptError(exc.reason, seg, _at(base, exc.offset)) from None


def _sub_scan(scan: fmt.Scan, a: int, b: int) -> fmt.Scan:
    return fmt.Scan(scan.offsets[a:b], scan.lengths[a:b], scan.kinds[a:b], scan.end, 0, None,
                    scan.end)


def _apply(replayer: Applier, mv: memoryview, scan: fmt.Scan, seg: str, base: int) -> None:
    try:
        replayer.apply(mv, scan)
    except ReplayError as exc:
        raise LogCorruptError(exc.reason, seg, _at(base, exc.offset)) from None


def _at(base: int, offset: int | None) -> int | None:
    return None if offset is None else base + offset
