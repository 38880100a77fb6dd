"""Walking a log's segments in bounded windows of whole frames, and counting events per session.

Theory of operation
-------------------
:func:`segment_windows` reads one segment a window at a time (a few MB of
whole frames, grown only for a frame larger than the window), checks the
chained CRC of every frame (the running CRC is carried from window to
window) and yields each window's decoded frame arrays
(:func:`~telstate_log.core._log_format.decode_frames`).  Memory is bounded
by the window, never by the segment or the log.

:func:`count_sessions` answers ``info --count-events`` from those arrays
alone: no event is materialised.  Per window it checks that the event
positions follow one another (as reading the events would), clips the
frames to the wanted range of positions (an ``ADD_BATCH`` frame counts as
its number of samples) and adds them up per session with ``numpy.bincount``.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np

from ..core import _log_format as fmt
from ..core._errors import LogCorruptError
from ._fileio import FileSystem
from ._recovery import checked_header, list_segments

__all__ = ["count_sessions", "segment_windows"]

_U32 = struct.Struct("<I")
#: bytes read at a time (whole frames; a larger frame grows the window)
WINDOW = 8 << 20


def segment_windows(fs: FileSystem, seg: str, *, window: int | None = None
                    ) -> Iterator[tuple[memoryview, fmt.Scan, fmt.Decoded, int]]:
    """Yield (buffer, scan, decoded frames, file offset of buffer[0]) for each
    window of whole, checksummed frames of segment file `seg` (its header is
    not checked here).  A scan's ``problem`` is set only where the good frames
    of the file end before its end (a window cut inside a frame is none)."""
    size = fs.size(seg)
    crc = zlib.crc32(fs.read(seg, 0, fmt.HEADER_SIZE))
    off = fmt.HEADER_SIZE
    while off < size:
        want = WINDOW if window is None else window
        while True:  # grow the window until it holds a whole frame
            data = fs.read(seg, off, want)
            mv = memoryview(data)
            scan = fmt.scan_frames(mv, 0, len(data), crc)
            if len(scan.offsets) or off + len(data) >= size or scan.problem != "incomplete frame":
                break
            want *= 4
        cut = (len(scan.offsets) > 0 and scan.problem == "incomplete frame"
               and off + len(data) < size)
        if cut:  # the window ends inside a frame: not a problem, the next one starts there
            scan = dataclasses.replace(scan, problem=None, problem_offset=len(data))
        yield mv, scan, fmt.decode_frames(mv, scan), off
        if not cut and (scan.problem is not None or not len(scan.offsets)):
            return
        crc = scan.crc
        off += scan.end


def count_sessions(fs: FileSystem, path: str, first: int, last: int,
                   progress: Callable[[int], None] | None = None) -> Counter[int]:
    """Events per session among positions `first`..`last` of the log at `path`.

    Raises :exc:`LogCorruptError` if an event in that range cannot be read
    in sequence (a missing or damaged segment, a gap in the positions).
    Nothing after `last` is checked (a writer may be appending there)."""
    counts: Counter[int] = Counter()
    segments = list_segments(fs, path)
    # start at the segment holding `first` (or the oldest one)
    start = max([i for i, (f, _) in enumerate(segments) if f <= first] or [0])
    expect = segments[start][0] if segments else first
    done = 0
    event_kinds = list(fmt.EVENT_KINDS)
    for seg_first, name in segments[start:]:
        if expect > last:
            break
        seg = os.path.join(path, name)
        if seg_first != expect:
            raise LogCorruptError(f"the segment holding position {expect} is missing", seg, 0)
        checked_header(fs.read(seg, 0, fmt.HEADER_SIZE), seg, seg_first, None)
        for _, scan, dec, base in segment_windows(fs, seg):
            is_event = np.isin(dec.kinds, event_kinds)
            pos = dec.event["pos"][is_event].astype(np.int64)
            n = dec.counts[is_event]
            if len(pos):
                follows = np.empty(len(pos), np.int64)
                follows[0] = expect
                follows[1:] = pos[:-1] + n[:-1]
                gap = np.nonzero((pos != follows) & (follows <= last))[0]
                if len(gap):
                    i = int(gap[0])
                    raise LogCorruptError(f"event position {int(pos[i])} where "
                                          f"{int(follows[i])} was expected", seg,
                                          base + int(dec.offsets[is_event][i]))
                taken = np.clip(np.minimum(pos + n - 1, last) - np.maximum(pos, first) + 1,
                                0, None)
                totals = np.bincount(dec.event["sess"][is_event].astype(np.int64),
                                     weights=taken)
                for sid in np.nonzero(totals)[0].tolist():
                    counts[sid] += int(totals[sid])
                done += int(taken.sum())
                expect = int(pos[-1] + n[-1])
                if progress is not None:
                    progress(done)
            if expect > last:
                break
            if scan.problem is not None:
                raise LogCorruptError(scan.problem, seg, base + scan.problem_offset)
    if expect <= last:
        raise LogCorruptError(f"the log ends before position {expect}", path, None)
    return counts
