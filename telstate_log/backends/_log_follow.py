"""Following a log another process writes: read what is new, apply, notify.

Theory of operation
-------------------
A read-only :class:`~telstate_log.backends.LogBackend` keeps a *tail* (segment,
byte offset, running CRC).  Each step (run by the follower thread whenever
the directory may have changed) reads the bytes after the tail, keeps the
complete, checksummed frames, applies them to the state under the
backend's lock and publishes the updates monitors wait for.  An incomplete
frame at the end is the writer mid-write: the step waits for the rest.
Damage followed by intact frames is corruption (:exc:`LogCorruptError`, which
stops the follower).  When the segment is finished and the next one (named
by the next position) exists, the tail moves to it.
"""

from __future__ import annotations

import os
import zlib
from typing import TYPE_CHECKING

from .. import _format as fmt
from .._errors import LogCorruptError
from .._recovery import (
    Tail,
    checked_header,
    classify_tail,
    creation_cut_short,
    list_segments,
    replay_segments,
)
from .._replayer import Replayer, ReplayError
from .._retention import read_pruned
from .._types import ImmutableKeyUpdate, IndexedKeyUpdate, KeyUpdateBase, MutableKeyUpdate
from ._log_open import recover

if TYPE_CHECKING:
    from ._log import LogBackend

__all__ = ["follow_step"]


def follow_step(b: LogBackend) -> bool:
    """Apply whatever the writer appended since the last step; whether anything was."""
    fs = b._fs
    tail = b._tail
    if tail.segment_first is None:
        if not fs.exists(os.path.join(b.path, fmt.segment_name(1))):
            return False
        with b._lock:
            b._tail = replay_segments(fs, b.path, Replayer(b._state, b._tables), mode="read")
            b.log_id = b._tail.log_id
        return b._tail.segment_first is not None
    seg_path = os.path.join(b.path, fmt.segment_name(tail.segment_first))
    try:
        return _step(b, seg_path)
    except FileNotFoundError:
        if fs.exists(seg_path):
            raise
        return _catch_up_after_prune(b, seg_path)


def _step(b: LogBackend, seg_path: str) -> bool:
    """follow_step within the segment at `seg_path` (FileNotFoundError if it vanishes)."""
    fs = b._fs
    tail = b._tail
    size = fs.size(seg_path)
    data = fs.read(seg_path, tail.offset - 4) if size > tail.offset else b""
    size = tail.offset - 4 + len(data) if data else size
    base = tail.offset - 4
    problem: tuple[str, int] | None = None
    if size > tail.offset:
        mv = memoryview(data)
        scan = fmt.scan_frames(mv, 4, len(data), tail.crc)
        if scan.problem is not None and scan.end == 4 and not classify_tail(data, scan, base):
            raise LogCorruptError(scan.problem, seg_path, base + scan.problem_offset)
        if len(scan.offsets):
            _apply(b, mv, scan, seg_path, base)
            b._tail = Tail(tail.segment_first, base + scan.end, scan.crc,
                           tail.log_id, tail.segments)
            return True
        # The writer is mid-write (or crashed mid-write): wait for the rest.
        problem = (scan.problem or "no frames", base + scan.problem_offset)
    # Finished this segment?  Move on when the next one exists.
    position = b._state.position
    next_path = os.path.join(b.path, fmt.segment_name(position + 1))
    if position + 1 != tail.segment_first and fs.exists(next_path):
        data = fs.read(next_path, 0, fmt.HEADER_SIZE)
        if (isinstance(fmt.parse_header(data), str) and not data.strip(b"\0")
                and _holds_nothing(b, position + 1) and not _written_after(b, position + 1)):
            # named but never written (a creation cut short by a crash without
            # syncs; LogCorruptError if it was created with syncs): the next
            # writer removes it; wait for that
            return False
        header = checked_header(data, next_path, position + 1, b.log_id)
        if problem is not None:
            if fs.size(seg_path) != size:
                return True  # the write in progress finished meanwhile: read it
            # the writer moved on without finishing it: that was no write in progress
            raise LogCorruptError(problem[0], seg_path, problem[1])
        b._tail = Tail(header.first_position, fmt.HEADER_SIZE, zlib.crc32(data),
                       tail.log_id, tail.segments + 1)
        return True
    return _check_no_gap(b, seg_path, size, problem)


def _catch_up_after_prune(b: LogBackend, seg_path: str) -> bool:
    """The segment being followed is gone: catch up from the prune's checkpoint.

    A writer prunes only after writing a checkpoint at or after the cut, so
    a follower that fell behind the cut reloads the state from the newest
    checkpoint and goes on from there; monitors are told to re-check.  A
    segment that vanished without a prune past it is damage.
    """
    position = b._state.position
    if read_pruned(b._fs, b.path) <= position + 1:
        raise LogCorruptError(f"the segment holding position {position + 1} vanished",
                              seg_path, 0)
    state, tables, tail = recover(b._fs, b.path, readonly=True, use_checkpoints=True)
    if state.position < position:
        raise LogCorruptError(f"after a prune the log ends at {state.position}, before "
                              f"the {position} events already read", seg_path, 0)
    with b._lock:
        b._state, b._tables, b._tail = state, tables, tail
        b.log_id = tail.log_id
    b._hub.publish_all(KeyUpdateBase())
    return True


def _check_no_gap(b: LogBackend, seg_path: str, size: int,
                  problem: tuple[str, int] | None) -> bool:
    """Raise if a later segment exists although the next position is not there;
    else whether the follower can read on now (the next segment appeared).

    The writer creates a segment only after writing everything before it,
    so a later segment means the rest of this one will never come: the
    events in between are lost (or the bytes after the tail are damage).
    """
    tail = b._tail
    later = _written_segments(b, tail.segment_first or 0)
    nxt = b._state.position + 1
    if not later:
        return False
    if later[0] == nxt or b._fs.size(seg_path) != size or (
            nxt != tail.segment_first
            and b._fs.exists(os.path.join(b.path, fmt.segment_name(nxt)))):
        # the next segment (just created: a listing taken while the writer renames
        # segments into place can miss it and show a later one), or this one grew
        # meanwhile: read on
        return True
    if problem is not None:
        raise LogCorruptError(problem[0], seg_path, problem[1])
    raise LogCorruptError(f"positions {b._state.position + 1} to {later[0] - 1} are missing "
                          f"(the next segment starts at {later[0]})",
                          os.path.join(b.path, fmt.segment_name(later[0])), 16)


def _written_segments(b: LogBackend, after: int) -> list[int]:
    """The segments after `after`, without a trailing run of segments that hold
    nothing (named but never written: a crash without syncs; the next writer
    removes them and goes on from the torn tail before them)."""
    later = [f for f, _ in list_segments(b._fs, b.path) if f > after]
    while later and _holds_nothing(b, later[-1]):
        later.pop()
    return later


def _written_after(b: LogBackend, first: int) -> bool:
    """Whether a segment after `first` holds something (so `first` is no
    creation cut short but damage)."""
    return bool(_written_segments(b, first))


def _holds_nothing(b: LogBackend, first: int) -> bool:
    """Whether segment `first` is a creation cut short (or was removed meanwhile)."""
    try:
        return creation_cut_short(b._fs, os.path.join(b.path, fmt.segment_name(first)),
                                  b.log_id)
    except FileNotFoundError:
        return True


def _apply(b: LogBackend, mv: memoryview, scan: fmt.Scan, seg_path: str, base: int) -> None:
    with b._lock:
        try:
            dec = Replayer(b._state, b._tables).apply(mv, scan,
                                                      segment=b._tail.segment_first or 0,
                                                      base=base)
        except ReplayError as exc:
            raise LogCorruptError(exc.reason, seg_path, base + exc.offset) from None
        if b._hub.active:
            _publish(b, mv, dec)


def _publish(b: LogBackend, mv: memoryview, dec: fmt.Decoded) -> None:
    hub = b._hub
    keys = b._tables.keys
    for i in range(len(dec.kinds)):
        kind = int(dec.kinds[i])
        if kind == fmt.CLEAR:
            hub.publish_all(KeyUpdateBase())
        elif kind in fmt.EVENT_KINDS:
            key = keys[int(dec.event["key"][i])]
            if hub.watched(key):
                update = _update(mv, dec, i, kind, key)
                hub.publish(key, lambda u=update: u)  # type: ignore[misc]


def _update(mv: memoryview, dec: fmt.Decoded, i: int, kind: int, key: bytes) -> KeyUpdateBase:
    """The notification for frame `i` of a followed segment."""
    off, length = int(dec.offsets[i]), int(dec.lengths[i])
    if kind == fmt.ADD:
        s, e = fmt.value_span(kind, off, length)
        return MutableKeyUpdate(key, bytes(mv[s:e]), float(dec.ts[i]))
    if kind == fmt.IMMUTABLE:
        s, e = fmt.value_span(kind, off, length)
        return ImmutableKeyUpdate(key, bytes(mv[s:e]))
    if kind == fmt.INDEXED:
        fields = fmt.indexed_fields(mv, off, length)
        assert fields is not None
        return IndexedKeyUpdate(key, fields[0], fields[1])
    return KeyUpdateBase()
