"""Reading events back from the segments: history, audit trails, time lookups.

Theory of operation
-------------------
The materialised state answers "what is the value"; the segments answer
"what happened, when, and who did it".  :class:`EventReader` walks the
frames of the log from any position: the sparse index kept in the log's
tables maps every 1024th position (and every batch frame) to its segment and
byte offset, so a walk starts at most 1023 events before the position asked
for.  Frames are read in growing windows, verified with their chained CRCs
as they are read, and decoded in bulk; ADD_BATCH frames are expanded into
their individual events.

The I/O happens here, at the edge; what the events mean (which ones changed
a key) is decided by the caller from the state.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import _log_format as fmt
from ..core._apply import Tables
from ..core._errors import HistoryUnavailableError, LogCorruptError
from ..core._events import KIND_NAMES, Event
from ._fileio import FileSystem
from ._recovery import checked_header

__all__ = ["EventReader", "HistorySpan", "key_history_span"]

_U32 = struct.Struct("<I")


class EventReader:
    """Walks the frames of a log directory from a position (see module docstring)."""

    WINDOW = 256 << 10

    def __init__(self, fs: FileSystem, path: str, tables: Tables,
                 lock: Any = None, flush: Callable[[], None] | None = None,
                 log_id: bytes | None = None) -> None:
        self._fs = fs
        self._path = path
        self._tables = tables
        self._lock = lock
        self._flush = flush
        self._log_id = log_id

    def _start(self, position: int) -> tuple[int, int, int]:
        """(segment, offset, position of the event there) to start a walk for `position`."""
        if self._flush is not None:
            self._flush()  # buffered events must be in the files before we read them
        if self._lock is not None:
            with self._lock:
                where = self._tables.locate(position)
        else:
            where = self._tables.locate(position)
        if where is None:  # before every indexed event: start at the oldest segment
            from ._recovery import list_segments

            segments = list_segments(self._fs, self._path)
            first = segments[0][0] if segments else 1
            return first, fmt.HEADER_SIZE, first
        return where

    def _segment_path(self, first: int) -> str:
        return os.path.join(self._path, fmt.segment_name(first))

    def _check_header(self, path: str, first: int) -> None:
        """The segment file named for `first` must be that segment of this log."""
        checked_header(self._fs.read(path, 0, fmt.HEADER_SIZE), path, first, self._log_id)

    def frames(self, start: int, stop: int | None = None
               ) -> Iterator[tuple[memoryview, fmt.Decoded, int]]:
        """Yield (buffer, decoded frames, index) for every frame from event `start` on.

        With `stop` (a position the log is known to hold), every event up to
        it must be found, in sequence, in the segments named for them: a
        segment that is missing, cut short, misnamed or of another log raises
        :exc:`LogCorruptError`, and nothing after `stop` is read (so a torn
        tail beyond it is never met).  Without `stop` the walk ends at the end
        of the log or before a frame the writer has not finished.
        """
        seg, off, expect = self._start(start)
        while True:
            path = self._segment_path(seg)
            if not self._fs.exists(path):
                if stop is not None and expect <= stop:
                    raise LogCorruptError(f"the segment holding position {expect} is missing",
                                          path, 0)
                return
            self._check_header(path, seg)
            size = self._fs.size(path)
            while off < size:
                if stop is not None and expect > stop:
                    return
                window = self.WINDOW
                while True:  # grow the window until it holds a whole frame
                    data = self._fs.read(path, off - 4, window + 4)
                    mv = memoryview(data)
                    running = _crc_after(data[:4], _U32.unpack_from(data, 0)[0])
                    scan = fmt.scan_frames(mv, 4, len(data), running)
                    at_end = off - 4 + len(data) >= size
                    if len(scan.offsets) or at_end:
                        break
                    window *= 4
                if not len(scan.offsets):
                    if scan.problem == "incomplete frame" and stop is None:
                        return  # the writer has not finished this frame yet
                    raise LogCorruptError(scan.problem or "no frames", path,
                                          off - 4 + scan.problem_offset)
                dec = fmt.decode_frames(mv, scan)
                kinds = dec.kinds.tolist()
                for i, kind in enumerate(kinds):
                    if kind in fmt.EVENT_KINDS:
                        pos = int(dec.event["pos"][i])
                        if pos != expect:
                            raise LogCorruptError(f"event position {pos} where {expect} was "
                                                  "expected", path,
                                                  off - 4 + int(dec.offsets[i]))
                        if stop is not None and pos > stop:
                            return
                        expect = pos + int(dec.counts[i])
                    yield mv, dec, i
                off += scan.end - 4
            if stop is not None and expect > stop:
                return
            if expect == seg:  # a segment without events is the newest: the end
                if stop is not None:
                    raise LogCorruptError(f"segment ends before position {expect}", path, size)
                return
            seg, off = expect, fmt.HEADER_SIZE

    def events(self, start: int = 1, stop: int | None = None,
               want: Callable[[int, int, int], bool] | None = None) -> Iterator[Event]:
        """Events with positions in ``[start, stop]`` (all after `start` if stop is None).

        `want(kind, key_id, position)` filters cheaply before anything is
        decoded.  Raises :exc:`HistoryUnavailableError` if the segment holding
        `start` was pruned.
        """
        keys = self._tables.keys
        first_seen = False
        for mv, dec, i in self.frames(start, stop):
            kind = int(dec.kinds[i])
            if kind not in fmt.EVENT_KINDS:
                continue
            ev = dec.event[i]
            pos = int(ev["pos"])
            count = int(dec.counts[i])
            if not first_seen:
                first_seen = True
                if pos > start and pos + count - 1 > start and start > 1:
                    raise HistoryUnavailableError(f"events before position {pos} are not in "
                                                  "the log (pruned)")
            if pos + count - 1 < start:
                continue
            if stop is not None and pos > stop:
                return
            kid = int(ev["key"])
            if want is not None and not want(kind, kid, pos):
                continue
            key = None if kind == fmt.CLEAR else keys.get(kid)
            rec, sess = float(ev["rec"]), int(ev["sess"])
            off, length = int(dec.offsets[i]), int(dec.lengths[i])
            name = KIND_NAMES[kind]
            if kind == fmt.ADD_BATCH:
                fields = fmt.batch_fields(mv, off, length)
                if fields is None:
                    raise LogCorruptError("malformed ADD_BATCH body", self._path, off)
                ts, values, width = fields
                if width:
                    raw = np.asarray(values).tobytes()
                    vals = [raw[j:j + width] for j in range(0, len(raw), width)]
                else:
                    vals = list(values)
                for j, (t, v) in enumerate(zip(ts.tolist(), vals)):
                    p = pos + j
                    if p < start:
                        continue
                    if stop is not None and p > stop:
                        return
                    yield Event(p, rec, sess, name, key, None, v, t)
                continue
            sub = value = None
            stamp: float | None = None
            if kind in (fmt.IMMUTABLE, fmt.ADD):
                s, e = fmt.value_span(kind, off, length)
                value = bytes(mv[s:e])
                if kind == fmt.ADD:
                    stamp = float(dec.ts[i])
            elif kind == fmt.INDEXED:
                fields2 = fmt.indexed_fields(mv, off, length)
                if fields2 is None:
                    raise LogCorruptError("malformed SET_INDEXED body", self._path, off)
                sub, value = fields2
            yield Event(pos, rec, sess, name, key, sub, value, stamp)

    def position_at_time(self, when: float, end: int) -> int:
        """Position of the last event recorded at or before wall-clock `when`."""
        import bisect

        t = self._tables
        if self._lock is not None:
            with self._lock:
                i = bisect.bisect_right(t.time_rec, when) - 1
                start = t.time_pos[i] if i >= 0 else 0
        else:
            i = bisect.bisect_right(t.time_rec, when) - 1
            start = t.time_pos[i] if i >= 0 else 0
        if start == 0:
            return 0
        best = start - 1
        for ev in self.events(start, end):
            if ev.recorded > when:
                break
            best = ev.position
        return best


def _crc_after(crc_bytes: bytes, crc: int) -> int:
    """Running CRC after a frame whose stored CRC is `crc` (see the format)."""
    import zlib

    return zlib.crc32(crc_bytes, crc)


@dataclass(frozen=True)
class HistorySpan:
    """Which events changed a key: a position range and a cheap frame filter."""

    start: int
    end: int
    key_id: int
    removals: frozenset[int]  # positions of the deletes and clears that removed it
    indexed_only: bool  # a sub-key's history: only SET_INDEXED frames of the key

    def wants(self, kind: int, key_id: int, position: int) -> bool:
        if kind == fmt.CLEAR or kind == fmt.DELETE:
            return position in self.removals
        if key_id != self.key_id:
            return False
        return not self.indexed_only or kind == fmt.INDEXED


def key_history_span(state: Any, tables: Tables, key: bytes,
                     sub_key: bytes | None) -> HistorySpan | None:
    """The positions to scan for the history of `key` (or its `sub_key`), from the state.

    The key's entries, live and buried, bound the positions to read; the
    graveyard tells which deletes and clears removed it (for a sub-key: only
    those that removed it while it held that sub-key).  None if the key never
    existed.  Call with the owner's lock held.
    """
    from ..core._state import Indexed

    kid = tables.key_ids.get(key)
    live = state.entry(key)
    buried = state.graveyard.get(key, [])
    if kid is None or (live is None and not buried):
        return None
    start = min([e.created for e, _ in buried] + ([live.created] if live else []))
    removals = frozenset(d for e, d in buried
                         if sub_key is None or (type(e) is Indexed and sub_key in e.values))
    return HistorySpan(start, state.position, kid, removals, sub_key is not None)
