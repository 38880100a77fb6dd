"""Following a log another process writes: read what is new, apply, notify.

Theory of operation
-------------------
A read-only :class:`~telstate_log.storage._log.Log` keeps a *tail* (segment,
byte offset, running CRC) in a :class:`FollowCursor`.  Each step (run by the
follower thread whenever the directory may have changed) reads the bytes
after the tail, keeps the complete, checksummed frames, applies them to the
state under the shared lock and hands an :class:`Applied` batch to the
listener (the backend, which notifies its monitors).  An incomplete frame at
the end is the writer mid-write: the step waits for the rest.  Damage
followed by intact frames is corruption (:exc:`LogCorruptError`, which stops
the follower).  When the segment is finished and the next one (named by the
next position) exists, the tail moves to it.  A follower that fell behind a
prune reloads from the prune's checkpoint and hands the new state to its
``on_reset`` callback.

The cursor gets explicit parts (file system, path, lock, state, tables, tail,
callbacks); it knows nothing of backends.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping

from ..core import _log_format as fmt
from ..core._apply import Applier, ReplayError, Tables
from ..core._errors import LogCorruptError
from ..core._state import State
from ..core._types import ImmutableKeyUpdate, IndexedKeyUpdate, KeyUpdateBase, MutableKeyUpdate
from ._fileio import FileSystem
from ._open import recover
from ._recovery import (
    Tail,
    checked_header,
    classify_tail,
    creation_cut_short,
    list_segments,
    replay_segments,
)
from ._retention import read_pruned

__all__ = ["Applied", "FollowCursor", "OnApplied", "OnReplaced", "OnReset"]


class Applied:
    """Events one follow step applied: positions `first` to `last`.

    :meth:`updates` decodes the key updates monitors are told about, only for
    the keys the caller watches (a batch nobody watches costs nothing).
    """

    __slots__ = ("_dec", "_keys", "_mv", "first", "last")

    def __init__(self, first: int, last: int, mv: memoryview, dec: fmt.Decoded,
                 keys: Mapping[int, bytes]) -> None:
        self.first = first
        self.last = last
        self._mv = mv
        self._dec = dec
        self._keys = keys

    def updates(self, watched: Callable[[bytes], bool]) \
            -> Iterator[tuple[bytes | None, KeyUpdateBase]]:
        """``(key, update)`` per applied event whose key is `watched`, in order;
        ``(None, update)`` for a clear (every key)."""
        mv, dec, keys = self._mv, self._dec, self._keys
        for i in range(len(dec.kinds)):
            kind = int(dec.kinds[i])
            if kind == fmt.CLEAR:
                yield None, KeyUpdateBase()
            elif kind in fmt.EVENT_KINDS:
                key = keys[int(dec.event["key"][i])]
                if watched(key):
                    yield key, _update(mv, dec, i, kind, key)


#: called under the lock after a step applied events
OnApplied = Callable[[Applied], None]
#: called under the lock when a follower that fell behind a prune reloaded the
#: state from a checkpoint: the new state and tables replace the old
OnReset = Callable[[State, Tables], None]
#: a backend's callback when a reader's state was replaced (see OnReset)
OnReplaced = Callable[[State], None]


def _ignore(*args: object) -> None:
    pass


class FollowCursor:
    """Where a reader is in a log another process writes, and how to read on.

    `state` and `tables` are the reader's (applied to under `lock`); `tail`
    is the recovered tail to continue from.
    """

    def __init__(self, fs: FileSystem, path: str, lock: threading.RLock, state: State,
                 tables: Tables, tail: Tail) -> None:
        self._fs = fs
        self.path = path
        self._lock = lock
        self.state = state
        self.tables = tables
        self.tail = tail
        self.on_applied: OnApplied = _ignore
        self.on_reset: OnReset = _ignore

    def step(self) -> bool:
        """Apply whatever the writer appended since the last step; whether anything was."""
        fs = self._fs
        tail = self.tail
        if tail.segment_first is None:
            if not fs.exists(os.path.join(self.path, fmt.segment_name(1))):
                return False
            with self._lock:
                self.tail = replay_segments(fs, self.path, Applier(self.state, self.tables),
                                            mode="read")
            return self.tail.segment_first is not None
        seg_path = os.path.join(self.path, fmt.segment_name(tail.segment_first))
        try:
            return self._step(seg_path)
        except FileNotFoundError:
            if fs.exists(seg_path):
                raise
            return self._catch_up_after_prune(seg_path)

    def _step(self, seg_path: str) -> bool:
        """step within the segment at `seg_path` (FileNotFoundError if it vanishes)."""
        fs = self._fs
        tail = self.tail
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
                self._apply(mv, scan, seg_path, base)
                self.tail = Tail(tail.segment_first, base + scan.end, scan.crc,
                                 tail.log_id, tail.segments)
                return True
            # The writer is mid-write (or crashed mid-write): wait for the rest.
            problem = (scan.problem or "no frames", base + scan.problem_offset)
        # Finished this segment?  Move on when the next one exists.
        position = self.state.position
        next_path = os.path.join(self.path, fmt.segment_name(position + 1))
        if position + 1 != tail.segment_first and fs.exists(next_path):
            data = fs.read(next_path, 0, fmt.HEADER_SIZE)
            if (isinstance(fmt.parse_header(data), str) and not data.strip(b"\0")
                    and self._holds_nothing(position + 1)
                    and not self._written_after(position + 1)):
                # named but never written (a creation cut short by a crash without
                # syncs; LogCorruptError if it was created with syncs): the next
                # writer removes it; wait for that
                return False
            header = checked_header(data, next_path, position + 1, self.tail.log_id)
            if problem is not None:
                if fs.size(seg_path) != size:
                    return True  # the write in progress finished meanwhile: read it
                # the writer moved on without finishing it: that was no write in progress
                raise LogCorruptError(problem[0], seg_path, problem[1])
            self.tail = Tail(header.first_position, fmt.HEADER_SIZE, zlib.crc32(data),
                             tail.log_id, tail.segments + 1)
            return True
        return self._check_no_gap(seg_path, size, problem)

    def _catch_up_after_prune(self, seg_path: str) -> bool:
        """The segment being followed is gone: catch up from the prune's checkpoint.

        A writer prunes only after writing a checkpoint at or after the cut, so
        a follower that fell behind the cut reloads the state from the newest
        checkpoint and goes on from there; monitors are told to re-check.  A
        segment that vanished without a prune past it is damage.
        """
        position = self.state.position
        if read_pruned(self._fs, self.path) <= position + 1:
            raise LogCorruptError(f"the segment holding position {position + 1} vanished",
                                  seg_path, 0)
        state, tables, tail = recover(self._fs, self.path, readonly=True, use_checkpoints=True)
        if state.position < position:
            raise LogCorruptError(f"after a prune the log ends at {state.position}, before "
                                  f"the {position} events already read", seg_path, 0)
        with self._lock:
            self.state, self.tables, self.tail = state, tables, tail
            self.on_reset(state, tables)
        return True

    def _check_no_gap(self, seg_path: str, size: int,
                      problem: tuple[str, int] | None) -> bool:
        """Raise if a later segment exists although the next position is not there;
        else whether the follower can read on now (the next segment appeared).

        The writer creates a segment only after writing everything before it,
        so a later segment means the rest of this one will never come: the
        events in between are lost (or the bytes after the tail are damage).
        """
        tail = self.tail
        later = self._written_segments(tail.segment_first or 0)
        nxt = self.state.position + 1
        if not later:
            return False
        if later[0] == nxt or self._fs.size(seg_path) != size or (
                nxt != tail.segment_first
                and self._fs.exists(os.path.join(self.path, fmt.segment_name(nxt)))):
            # the next segment (just created: a listing taken while the writer renames
            # segments into place can miss it and show a later one), or this one grew
            # meanwhile: read on
            return True
        if problem is not None:
            raise LogCorruptError(problem[0], seg_path, problem[1])
        raise LogCorruptError(f"positions {nxt} to {later[0] - 1} are missing "
                              f"(the next segment starts at {later[0]})",
                              os.path.join(self.path, fmt.segment_name(later[0])), 16)

    def _written_segments(self, after: int) -> list[int]:
        """The segments after `after`, without a trailing run of segments that hold
        nothing (named but never written: a crash without syncs; the next writer
        removes them and goes on from the torn tail before them)."""
        later = [f for f, _ in list_segments(self._fs, self.path) if f > after]
        while later and self._holds_nothing(later[-1]):
            later.pop()
        return later

    def _written_after(self, first: int) -> bool:
        """Whether a segment after `first` holds something (so `first` is no
        creation cut short but damage)."""
        return bool(self._written_segments(first))

    def _holds_nothing(self, first: int) -> bool:
        """Whether segment `first` is a creation cut short (or was removed meanwhile)."""
        try:
            return creation_cut_short(self._fs,
                                      os.path.join(self.path, fmt.segment_name(first)),
                                      self.tail.log_id)
        except FileNotFoundError:
            return True

    def _apply(self, mv: memoryview, scan: fmt.Scan, seg_path: str, base: int) -> None:
        with self._lock:
            state = self.state
            first = state.position + 1
            try:
                dec = Applier(state, self.tables).apply(mv, scan,
                                                         segment=self.tail.segment_first or 0,
                                                         base=base)
            except ReplayError as exc:
                raise LogCorruptError(exc.reason, seg_path, base + exc.offset) from None
            self.on_applied(Applied(first, state.position, mv, dec, self.tables.keys))


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
