"""Reading a log directory back into a State: replay, torn tails, corruption.

Theory of operation
-------------------
:func:`replay_segments` reads the segments in position order (from a
checkpoint's resume point if there is one), verifies each with its chained
CRC, and hands the frames to the :class:`~telstate_log.core._apply.Applier`.
Recovery fails closed:

* In the newest segment, bytes after the last good frame that look like a
  crash's leftovers -- a frame cut short, or a zero-filled remainder (pages
  the file system allocated but never wrote) -- are a *torn tail*.  A writer
  truncates it (logging how many bytes it dropped); a reader stops before it.
  Newer segment files that are empty or all zeros (created, but their
  content never reached the disk: possible only without syncs) hold no
  event; a writer removes them and a reader ignores them -- unless
  ``synced-segment`` records that their creation was synced (see
  :mod:`._format`): then they lost acknowledged events, which is damage.
  A writer also lowers a record that is ahead of the newest segment, and
  sets a damaged one aside (:func:`finish_recovery`).
* Anything else -- a bad checksum or a malformed frame followed by intact
  data, damage in an older segment, a gap between segments, a frame that is
  not a valid event here -- raises :exc:`LogCorruptError` with the file and
  byte offset.  Nothing is modified; :func:`telstate_log.repair_log` is the
  explicit salvage path.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core import _log_format as fmt
from ..core._apply import Applier, ReplayError
from ..core._errors import LogCorruptError
from ._fileio import FileSystem, replace_file

__all__ = ["Resume", "Tail", "checked_header", "classify_tail", "creation_cut_short",
           "finish_recovery", "list_segments", "read_synced", "replay_segments"]

logger = logging.getLogger("telstate_log")
_SEGMENT_RE = re.compile(r"^(\d{20})\.seg$")


@dataclass
class Resume:
    """Where replay continues after a checkpoint."""

    segment_first: int  # first position of the segment holding the next event
    offset: int  # byte offset of the next frame in that segment
    crc: int  # running CRC of the segment's bytes before `offset`


@dataclass
class Tail:
    """Where the log ends (for a writer to append or a follower to poll)."""

    segment_first: int | None  # None: the log has no segments
    offset: int
    crc: int
    log_id: bytes | None
    segments: int
    created: float = 0.0
    #: what a writer must do before appending, once the whole replay succeeded:
    #: ("remove", segment path) a creation cut short, ("truncate", path, size, ...) a
    #: torn tail, ("synced", record path, position, log id) lower the synced-segment
    #: record (position 0: remove it), ("synced-bad", record path, problem) set it aside
    repairs: tuple[tuple[Any, ...], ...] = ()


def list_segments(fs: FileSystem, path: str) -> list[tuple[int, str]]:
    """``(first position, file name)`` of every segment, in order."""
    out = []
    for name in fs.listdir(path):
        m = _SEGMENT_RE.match(name)
        if m:
            out.append((int(m.group(1)), name))
    out.sort()
    return out


def classify_tail(data: bytes, scan: fmt.Scan, base: int = 0) -> bool:
    """Whether the damage `scan` stopped at is a torn tail (else corruption).

    A crash leaves, after the last complete frame, a prefix of the frame being
    written -- cut short at the end of the file, or followed by zeros where
    the file system extended the file but the sectors never reached the disk.
    So the tail is torn if no intact frame follows and either the frame runs
    past the end of the file, or everything from some 512-byte boundary after
    its start to the end of the file is zero.  `base` is the file offset of
    ``data[0]`` (sector boundaries are file offsets).
    """
    x = scan.problem_offset
    end = len(data)
    mv = memoryview(data)
    if fmt.find_valid_frame(mv, x + 1, end) is not None:
        return False  # intact frames follow: this is damage, not a crash's tail
    if scan.problem == "incomplete frame":
        return True
    rest = data[x:]
    zero_from = x + len(rest.rstrip(b"\0"))
    if zero_from == x:
        return True  # zero-filled: allocated but never written
    boundary = -(-(base + zero_from) // 512) * 512
    return base + x < boundary < base + end


def _torn_creation(data: bytes) -> bool:
    """A segment file whose content never reached the disk (empty or all zeros).

    Its name was made durable (a directory sync) before its data, which only
    happens when segments are created without syncs (``fsync="never"``).
    """
    return not data.strip(b"\0")


def read_synced(fs: FileSystem, path: str, log_id: bytes | None = None) -> int:
    """First position of the newest segment of the log at `path` whose creation
    was synced, from ``synced-segment`` (0: nothing recorded).

    LogCorruptError naming the file if it is damaged or, when `log_id` is
    given, recorded by another log.
    """
    record_path = os.path.join(path, fmt.SYNCED_FILE)
    try:
        data = fs.read(record_path)
    except FileNotFoundError:
        return 0
    record = fmt.parse_synced(data)
    if isinstance(record, str):
        raise LogCorruptError(record, record_path, 0)
    first, record_log = record
    if log_id is not None and record_log != log_id:
        raise LogCorruptError("synced-segment belongs to another log (log id differs)",
                              record_path, 20)
    return first


def checked_header(data: bytes | memoryview, path: str, first: int,
                   log_id: bytes | None) -> fmt.SegmentHeader:
    """The header of the segment file `path` (named for position `first`), which
    must be valid, start at `first` and belong to the log `log_id` (None: any);
    LogCorruptError with the offset of the offending field otherwise."""
    header = fmt.parse_header(data)
    if isinstance(header, str):
        raise LogCorruptError(header, path, 0)
    if header.first_position != first:
        raise LogCorruptError(f"segment header says it starts at position "
                              f"{header.first_position}", path, 16)
    if log_id is not None and header.log_id != log_id:
        raise LogCorruptError("segment belongs to another log (log id differs)", path, 32)
    return header


def creation_cut_short(fs: FileSystem, seg_path: str, log_id: bytes | None = None) -> bool:
    """Whether the segment at `seg_path` is a creation cut short (holds no event).

    A segment that holds nothing although ``synced-segment`` says its creation
    was synced is no crash's leftover but damage: LogCorruptError naming it.
    `log_id` (if known) is the log's, which the record must match.
    """
    if not isinstance(fmt.parse_header(fs.read(seg_path, 0, fmt.HEADER_SIZE)), str):
        return False  # a valid header: a real segment
    data = fs.read(seg_path)
    if not _torn_creation(data):
        return False
    directory, name = os.path.split(seg_path)
    m = _SEGMENT_RE.match(name)
    synced = read_synced(fs, directory, log_id)
    if m is not None and int(m.group(1)) <= synced:
        state = f"all {len(data)} bytes are zero" if data else "the file is empty"
        raise LogCorruptError(f"segment holds nothing ({state}) although it was created with "
                              f"syncs ({fmt.SYNCED_FILE} records position {synced}): damage, "
                              "not a creation cut short by a crash", seg_path, 0)
    return True


def replay_segments(fs: FileSystem, path: str, replayer: Applier, *,
                    resume: Resume | None = None, mode: str = "write",
                    on_segment: Callable[[int, str, fmt.SegmentHeader], None] | None = None
                    ) -> Tail:
    """Replay the log at `path` into `replayer`.

    `mode` is ``"write"`` (a torn tail is to be cut: :func:`finish_recovery`
    does it once the caller accepts the result), ``"read"`` (stop before it)
    or ``"strict"`` (a torn tail is an error too).  No mode changes any file.
    """
    segments = list_segments(fs, path)
    if resume is not None:
        segments = [s for s in segments if s[0] >= resume.segment_first]
        if not segments or segments[0][0] != resume.segment_first:
            raise LogCorruptError(f"segment {fmt.segment_name(resume.segment_first)} named by "
                                  "the checkpoint is missing", path)
    removals: tuple[tuple[Any, ...], ...] = ()
    if mode != "strict":
        # Segments created (renamed into place) whose content never reached the
        # disk hold no event: without syncs (fsync="never") a crash can leave
        # several, after a last segment with a torn tail.  A writer removes
        # them, newest first, so the log stays valid if that is interrupted.
        keep = 1 if resume is not None else 0
        log_id = _any_log_id(fs, path, segments)
        while len(segments) > keep and creation_cut_short(
                fs, seg_path := os.path.join(path, segments[-1][1]), log_id):
            segments.pop()
            removals += (("remove", seg_path),)
        if mode != "write":
            removals = ()
    tail = Tail(None, 0, 0, None, len(segments), repairs=removals)
    state = replayer.state
    for idx, (first, name) in enumerate(segments):
        seg_path = os.path.join(path, name)
        newest = idx == len(segments) - 1
        data = fs.read(seg_path)
        header = checked_header(data, seg_path, first, tail.log_id)
        tail.log_id = header.log_id
        if on_segment is not None:
            on_segment(first, seg_path, header)
        if resume is not None and idx == 0:
            offset, crc = resume.offset, resume.crc
            if offset > len(data):
                raise LogCorruptError("segment is shorter than the checkpoint says", seg_path,
                                      len(data))
        else:
            if first != state.position + 1:
                raise LogCorruptError(f"segment starts at position {first} but the log so far "
                                      f"ends at {state.position}", seg_path, 16)
            offset, crc = fmt.HEADER_SIZE, zlib.crc32(memoryview(data)[:fmt.HEADER_SIZE])
        mv = memoryview(data)
        scan = fmt.scan_frames(mv, offset, len(data), crc)
        end = len(data)
        if scan.problem is not None:
            if not newest or mode == "strict" or not classify_tail(data, scan):
                raise LogCorruptError(scan.problem, seg_path, scan.problem_offset)
            end = scan.end
        try:
            replayer.apply(mv, scan, segment=first)
        except ReplayError as exc:
            raise LogCorruptError(exc.reason, seg_path, exc.offset) from None
        tail = Tail(first, end, scan.crc, tail.log_id, len(segments), header.created,
                    removals + ((("truncate", seg_path, end, len(data) - end, scan.problem),)
                                if end < len(data) and mode == "write" else ()))
    if mode == "write":
        tail.repairs += _synced_repairs(fs, path, tail.log_id,
                                        segments[-1][0] if segments else 0)
    return tail


def _any_log_id(fs: FileSystem, path: str, segments: list[tuple[int, str]]) -> bytes | None:
    """The log id in the header of the first of `segments` (None if unreadable)."""
    if not segments:
        return None
    header = fmt.parse_header(fs.read(os.path.join(path, segments[0][1]), 0, fmt.HEADER_SIZE))
    return None if isinstance(header, str) else header.log_id


def _synced_repairs(fs: FileSystem, path: str, log_id: bytes | None,
                    newest: int) -> tuple[tuple[Any, ...], ...]:
    """What a writer must do to ``synced-segment`` before creating any segment:
    lower a record ahead of the `newest` segment (a creation it announced did
    not happen, or was moved aside), so that a later creation of that position
    without syncs is not taken for a synced one; set a damaged record aside."""
    record_path = os.path.join(path, fmt.SYNCED_FILE)
    try:
        synced = read_synced(fs, path, log_id)
    except LogCorruptError as exc:
        return (("synced-bad", record_path, exc.message),)
    if synced > newest:
        return (("synced", record_path, newest, log_id),)
    return ()


def finish_recovery(fs: FileSystem, path: str, tail: Tail) -> None:
    """Carry out `tail.repairs` (a writer, once the replay it came from is accepted).

    Deferred so that an open refused for damage anywhere in the log changes
    nothing: the torn tail or the cut-short segment creation is still there.
    """
    for repair in tail.repairs:
        if repair[0] == "remove":
            logger.warning("%s: removing a segment whose creation was cut short", repair[1])
            fs.remove(repair[1])
            fs.sync_dir(path)
        elif repair[0] == "synced":
            _, record_path, newest, log_id = repair
            logger.warning("%s: the segment creation it records is not in the log; "
                           "lowering it to position %d", record_path, newest)
            if newest and log_id is not None:
                replace_file(fs, path, fmt.SYNCED_FILE, fmt.encode_synced(newest, log_id))
            else:
                fs.remove(record_path)
                fs.sync_dir(path)
        elif repair[0] == "synced-bad":
            _, record_path, problem = repair
            logger.warning("%s: setting aside a damaged record of synced segment creations "
                           "(%s)", record_path, problem)
            fs.rename(record_path, record_path + ".bad")
            fs.sync_dir(path)
        else:
            _, seg_path, size, dropped, problem = repair
            logger.warning("%s: dropped a torn tail of %d bytes at offset %d (%s)",
                           seg_path, dropped, size, problem)
            fd = fs.open_append(seg_path)
            try:
                fs.truncate(fd, size)
                fs.sync(fd)
            finally:
                fs.close(fd)
