"""Turning events into log records: framing, key and session definitions.

Theory of operation
-------------------
:class:`LogWriter` is the State's commit hook.  Its :meth:`~LogWriter.commit`
(:meth:`~LogWriter.commit_sample` for a sample, the commonest event, with no
kind to dispatch on) frames an event (with the KEY and SESSION definitions
the current segment still lacks, so every segment can be read on its own),
computes the chained CRCs and appends the bytes through
:class:`~._segment_files.SegmentAppender`, which it extends (buffering,
rotation, rollback, sync).  Only when the
append succeeds does the State apply the event, so memory never runs ahead
of the file; if it fails, the key and session tables and the running CRC
are left as they were.

If the records would take the segment past ``segment_bytes``, the writer
first rotates (the new segment starts with the event's position).  A hot
path frames a buffered sample of a key the segment already defines without
any intermediate objects: per key it keeps the frame's constant session and
key id as one integer (dropped on rotation and new sessions), so only the
header (by body length), position, recorded time and timestamp are packed
per sample; :meth:`~LogWriter.commit_batch` writes a whole
``add_mutable_many`` batch as ADD_BATCH frames in one append (all or none).

:attr:`LogWriter.after_due` tells the backend whether the step after a
write (``Log.after_append``) has work: always under ``fsync="always"``,
otherwise once the log reaches the byte count at which a checkpoint is due
(:meth:`~LogWriter.expect_after`; a stale, earlier count only costs one
needless after-step, which re-arms it).  Most writes skip the after-step.
The write that reaches that count, or the end of the segment, takes the
general path, so the fast path compares its frame's end with one offset.
"""

from __future__ import annotations

import struct
import threading
import time
import zlib
from typing import Any

import msgpack
import numpy as np

from ..core import _log_format as fmt
from ..core._apply import Tables
from ..core._errors import LogFailedError
from ..core._values import chunks
from ._batch_frames import fitting, frame_batches, key_ids_for
from ._fileio import FileSystem
from ._segment_files import SegmentAppender, create_segment

__all__ = ["LogWriter", "create_segment"]

# The fast path in LogWriter.commit, built from the format's definitions:
# fmt.ADD_FRAME (magic u16, kind u8, check u8, body length u32 | position u64,
# recorded f64, session u32, key id u32, timestamp f64) packed as five 64-bit
# fields, the first and fourth precomputed (header by body length, and
# session | key id << 32 per key).
_U32 = fmt.FRAME_CRC
_U32_PACK = _U32.pack
_ADD = fmt.ADD
_ADD_FAST = struct.Struct("<QQdQd").pack
assert struct.calcsize("<QQdQd") == fmt.ADD_FRAME.size
#: body bytes of an ADD frame before its value, and bytes of a frame outside its body
_ADD_HEAD = fmt.ADD_FRAME.size - (fmt.FRAME_OVERHEAD - _U32.size)
_OVERHEAD = fmt.FRAME_OVERHEAD
#: frame headers of ADD frames by body length (longer bodies take the general path)
_ADD_HEADER = [fmt.FRAME_MAGIC | _ADD << 16 | fmt.check_byte(_ADD, n) << 24 | n << 32
               for n in range(4096)]
_FAST_LENGTH = len(_ADD_HEADER)
assert _ADD_FAST(_ADD_HEADER[_ADD_HEAD + 1], 2, 3.0, 4 | 5 << 32, 6.0) + b"v" == \
    fmt.encode_event(_ADD, 2, 3.0, 4, 5, b"", b"v", 6.0)
_FLUSH_BYTES = SegmentAppender.FLUSH_BYTES
_crc32 = zlib.crc32
#: The running CRC after any frame: CRC-32 run on over bytes followed by their own
#: CRC (little-endian) always ends at this constant, CRC-32's residue, so the fast
#: path sets it instead of running zlib.crc32 over the 4 CRC bytes (same value).
_RESIDUE = 0x2144DF1C
assert all(_crc32(_U32_PACK(_crc32(b, s)), _crc32(b, s)) == _RESIDUE
           for b in (b"", b"x", bytes(range(256))) for s in (0, 1, 0xFFFFFFFF, _RESIDUE))
_TIME_MASK = Tables.TIME_STRIDE - 1
assert Tables.TIME_STRIDE & _TIME_MASK == 0, "the fast path needs a power-of-two stride"
_time = time.time


class LogWriter(SegmentAppender):
    """Frames events and appends them to the newest segment (see module docstring)."""

    def __init__(self, fs: FileSystem, path: str, log_id: bytes, tables: Tables, *,
                 segment_first: int, fd: int, offset: int, crc: int, segment_bytes: int,
                 sync_on_rotate: bool, session: dict[str, object],
                 lock: threading.RLock, flush_interval: float = 0.0,
                 position: int = 0) -> None:
        self._tables = tables
        self._key_ids = tables.key_ids
        self._seg_keys: set[int] = set()
        #: the fast path's keys (those the segment defines, if buffered): key ->
        #: session | key id << 32, as its frames carry them
        self._fast: dict[bytes, int] = {}
        self._seg_session = False
        # Non-zero once the segment holds an event (a reopened log: those already
        # there).  Only the general path counts: the fast path runs after it.
        self._seg_events = max(0, position - segment_first + 1)
        #: whether the step after a write has work (see the module docstring);
        #: True until the log first calls expect_after
        self.after_due = True
        self._after_bytes = 0  # bytes_appended from which after_due is set
        self._after_at = 0  # the same as an offset in the current segment
        #: the fast path takes a frame only if it ends by this offset: before the
        #: segment is full and before the offset at which after_due is set (the
        #: general path sets it), so the fast path checks neither on its own
        self._fast_end = -1
        self.session_id = tables.next_session_id()
        self._session_payload = msgpack.packb(session, use_bin_type=True)
        #: last position committed (buffered or written)
        self.position = position
        super().__init__(fs, path, log_id, segment_first=segment_first, fd=fd, offset=offset,
                         crc=crc, segment_bytes=segment_bytes, sync_on_rotate=sync_on_rotate,
                         lock=lock, flush_interval=flush_interval)

    @property
    def failed(self) -> BaseException | None:
        """Why the writer refuses writes (None while it accepts them)."""
        return self._failed

    @failed.setter
    def failed(self, exc: BaseException | None) -> None:
        # Setting it (anywhere in the appender) also empties the fast path's
        # table, so commit's fast path needs no check of its own.
        self._failed = exc
        if exc is not None:
            self._fast = {}

    def _segment_started(self) -> None:
        # a new segment defines its keys and session afresh
        self._seg_keys = set()
        self._fast = {}
        self._seg_session = False
        self._seg_events = 0
        self._after_at = self._after_bytes - (self.bytes_appended - self.offset)
        self._fast_end = min(self._segment_bytes, self._after_at - 1)

    def expect_after(self, due_bytes: int, *, always: bool = False) -> None:
        """Under the lock: the step after a write next has work once
        :attr:`bytes_appended` reaches `due_bytes` (after every write if `always`)."""
        self._after_bytes = due_bytes
        self._after_at = due_bytes - (self.bytes_appended - self.offset)
        self._fast_end = min(self._segment_bytes, self._after_at - 1)
        self.after_due = always or self.offset >= self._after_at

    # ------------------------------------------------------------------ hook
    def commit(self, kind: int, pos: int, key: bytes, sub_key: bytes, value: bytes,
               ts: float) -> None:
        """State commit hook: make event `pos` part of the log."""
        if kind == _ADD:
            self.commit_sample(pos, key, value, ts)
            return
        self._commit_general(kind, pos, key, sub_key, value, ts, self._recorded_now(),
                             self._key_ids.get(key))

    def _recorded_now(self) -> float:
        """The recorded time of an event committed now: the clock, but never before
        an earlier event's (commit_sample has its own copy of these lines: the
        hot path of every sample makes no extra call)."""
        rec = _time()
        last = self._tables.last_recorded
        return rec if rec >= last else last

    def commit_sample(self, pos: int, key: bytes, value: bytes, ts: float) -> None:
        """State commit hook for a sample (an ADD event): make event `pos` part of
        the log."""
        tables = self._tables
        rec = _time()
        if rec < tables.last_recorded:  # never before an earlier event's (_recorded_now)
            rec = tables.last_recorded
        # The fast path: a buffered sample of a key this segment already defines
        # (fmt.encode_event without the dispatch and the check_byte call).  Its
        # table is empty once the writer has failed (see `failed`), and the
        # running CRC at a frame boundary is always CRC-32's residue (see
        # _RESIDUE), so neither is looked at here.
        ids = self._fast.get(key)
        if ids is not None:
            length = _ADD_HEAD + len(value)
            offset = self.offset
            end = offset + length + _OVERHEAD
            if end <= self._fast_end and length < _FAST_LENGTH:
                frame = _ADD_FAST(_ADD_HEADER[length], pos, rec, ids, ts) + value
                buf = self._buf
                buf.append(frame)
                buf.append(_U32_PACK(_crc32(frame, _RESIDUE)))
                self.offset = end
                tables.last_recorded = rec
                self.position = pos
                if (pos - 1) & _TIME_MASK == 0:
                    self._note_time(pos, rec, offset)
                if rec >= self._flush_due or end - self._flushed >= _FLUSH_BYTES:
                    self._flush_cycle(rec)
                return
        self._commit_general(_ADD, pos, key, b"", value, ts, rec, self._key_ids.get(key))

    def _commit_general(self, kind: int, pos: int, key: bytes, sub_key: bytes, value: bytes,
                        ts: float, rec: float, kid: int | None) -> None:
        if self.failed is not None:
            raise LogFailedError(f"the log writer has failed: {self.failed}")
        tables = self._tables
        if kind == fmt.CLEAR:
            kid = fmt.NO_KEY
        new_key = kid is None
        if kid is None:
            kid = tables.next_key_id()
        frame = fmt.encode_event(kind, pos, rec, self.session_id, kid, sub_key, value, ts)
        size = len(frame) + 4
        if kind != fmt.CLEAR and kid not in self._seg_keys:
            size += 16 + len(key)
        if not self._seg_session:
            size += 16 + len(self._session_payload)
        if self.offset + size > self._segment_bytes and self._seg_events:
            self._rotate(pos)
        pieces = []
        if not self._seg_session:
            pieces.append(fmt.encode_meta(fmt.SESSION, self.session_id, self._session_payload))
        if kind != fmt.CLEAR and kid not in self._seg_keys:
            pieces.append(fmt.encode_meta(fmt.KEY, kid, key))
        pieces.append(frame)
        frame_offset = self.offset + sum(len(p) + 4 for p in pieces[:-1])
        self._append_pieces(pieces)
        self._committed(pos, 1, rec, None if kind == fmt.CLEAR else kid, key, new_key)
        if (pos - 1) % tables.TIME_STRIDE == 0 or not tables.time_pos or self._seg_events == 1:
            self._note_time(pos, rec, frame_offset)  # also the first event of each segment
        tables.last_recorded = rec

    MAX_BATCH_BODY = 4 << 20

    def new_session(self, session: dict[str, object]) -> int:
        """Record later events under a new session (e.g. another source label)."""
        self.session_id = self._tables.next_session_id()
        self._session_payload = msgpack.packb(session, use_bin_type=True)
        self._seg_session = False
        # Forget the segment's key definitions so the next commit takes the
        # general path, which writes the SESSION record before the event.
        self._seg_keys = set()
        self._fast = {}
        return self.session_id

    def commit_batch(self, first: int, key: bytes, ts: Any,
                     values: list[bytes] | np.ndarray) -> None:
        """State batch hook: samples of `key` at positions first, first + 1, ...

        Written as ADD_BATCH frames of at most MAX_BATCH_BODY bytes each, all
        appended in one go: either every frame of the batch is recorded or,
        if the write fails, none is (the file is rolled back).  The caller
        keeps batches to a few MiB (see ``StateBackend.add_mutable_many``).
        """
        if self.failed is not None:
            raise LogFailedError(f"the log writer has failed: {self.failed}")
        tables = self._tables
        rec = self._recorded_now()
        kid = tables.key_ids.get(key)
        new_key = kid is None
        if kid is None:
            kid = tables.next_key_id()
        n = len(values)
        frames = [fmt.encode_batch(first + i, rec, self.session_id, kid, ts[i:j], values[i:j])
                  for i, j in chunks(values, 12, self.MAX_BATCH_BODY)]
        total = sum(len(f) + 4 for f in frames) + 16 + len(key) + 16 + \
            len(self._session_payload)
        if self.offset + total > self._segment_bytes and self._seg_events:
            self._rotate(first)
        pieces = []
        if not self._seg_session:
            pieces.append(fmt.encode_meta(fmt.SESSION, self.session_id, self._session_payload))
        if kid not in self._seg_keys:
            pieces.append(fmt.encode_meta(fmt.KEY, kid, key))
        offsets = []
        offset = self.offset + sum(len(p) + 4 for p in pieces)
        for f in frames:
            offsets.append(offset)
            offset += len(f) + 4
        pieces.extend(frames)
        self._append_pieces(pieces)
        self._committed(first + n - 1, n, rec, kid, key, new_key)
        for f, off in zip(frames, offsets):
            self._note_time(int.from_bytes(f[8:16], "little"), rec, off)

    def _append_pieces(self, pieces: list[bytes]) -> None:
        """Chain-checksum and append frames (restoring the CRC state on failure)."""
        crc = self._crc
        out = []
        for piece in pieces:
            c = zlib.crc32(piece, crc)
            cb = _U32.pack(c)
            crc = zlib.crc32(cb, c)
            out.append(piece)
            out.append(cb)
        self._append_chained(b"".join(out), crc)

    def _append_chained(self, data: bytes, crc: int) -> None:
        """Append checksummed records `data`, after which the running CRC is `crc`
        (left as it was if the append fails: nothing was recorded)."""
        saved = self._crc
        self._crc = crc
        try:
            self._append(data)
        except BaseException:
            self._crc = saved
            raise

    def _committed(self, last: int, events: int, rec: float, kid: int | None, key: bytes,
                   new_key: bool) -> None:
        """Book-keeping after frames were appended: positions, segment contents,
        and the key and session tables (updated only now that the records exist)."""
        self._seg_events += events
        self._seg_session = True
        tables = self._tables
        tables.last_recorded = rec
        self.position = last
        if kid is not None:
            self._seg_keys.add(kid)
            if self._buffered and self._failed is None:
                self._fast[key] = self.session_id | kid << 32
            if new_key:
                tables.add_keys([(kid, key)])
        if self.session_id not in tables.sessions:
            tables.sessions[self.session_id] = msgpack.unpackb(self._session_payload, raw=False)
        if self.offset >= self._after_at:
            self.after_due = True

    def _note_time(self, pos: int, rec: float, offset: int) -> None:
        """Add an entry to the sparse position/time/offset index."""
        self._tables.index_frames([pos], rec, self.segment_first, [offset])

    def rotate_now(self) -> bool:
        """Finish the current segment now (if it holds any event); returns whether it did."""
        if self.failed is not None:
            raise LogFailedError(f"the log writer has failed: {self.failed}")
        if not self._seg_events:
            return False
        self._rotate(self.position + 1)
        return True

    # ------------------------------------------------ many keys' batches at once
    def commit_many_batches(self, first: int, keys: list[bytes], ts: np.ndarray,
                            values: np.ndarray, sizes: list[int]) -> int:
        """Batch hook for many keys at once: key ``i`` takes the next ``sizes[i]`` (at
        least 1) samples of `ts` and `values` (a ``V<width>`` array), at positions
        first, first + 1, ... across the keys in order.

        Records what :meth:`commit_batch` of each key in turn would (its KEY
        definition if the segment lacks it, then its ADD_BATCH frame, all with
        one recorded time), but framed in one pass and written as one append:
        the keys ``[0, r)`` are recorded all or none, and ``r`` (at least 1) is
        returned.  ``r`` is short of ``len(keys)`` only where the segment fills
        up (the keys that fit go into the current segment or, if not even one
        does and the segment holds events, into a new one; the caller commits
        the rest by calling again), or where a key's batch takes more than one
        frame (it is then committed alone, by :meth:`commit_batch`).  The RDB
        import creates many small sensors through it.
        """
        if self.failed is not None:
            raise LogFailedError(f"the log writer has failed: {self.failed}")
        n = len(keys)
        width = values.dtype.itemsize
        if n != len(sizes) or not n or len(ts) != len(values) or sum(sizes) > len(values) \
                or min(sizes) < 1 or width < 1:
            raise ValueError("commit_many_batches: keys, sizes and samples disagree")
        tables = self._tables
        if sizes[0] * (12 + width) > self.MAX_BATCH_BODY:   # more than one frame
            self.commit_batch(first, keys[0], ts[:sizes[0]], values[:sizes[0]])
            return 1
        room = self._segment_bytes - self.offset - 16 - len(self._session_payload)
        count = fitting(keys, sizes, width, room, self.MAX_BATCH_BODY)
        if count == 0:                           # not even the first key fits
            if self._seg_events:
                self._rotate(first)              # (commit_batch would too)
                room = self._segment_bytes - self.offset - 16 - len(self._session_payload)
            count = max(1, fitting(keys, sizes, width, room, self.MAX_BATCH_BODY))
        rec = self._recorded_now()
        known = tables.keys
        kids = key_ids_for(keys[:count], tables.key_ids, known, tables.next_key_id())
        count = len(kids)
        if count == 0:
            self.commit_batch(first, keys[0], ts[:sizes[0]], values[:sizes[0]])
            return 1
        total = sum(sizes[:count])
        session, seg_keys = self.session_id, self._seg_keys
        head = b"" if self._seg_session else \
            fmt.encode_meta(fmt.SESSION, session, self._session_payload)
        out, crc, at, firsts = frame_batches(
            keys, kids, sizes, width, np.ascontiguousarray(ts[:total], "<f8").tobytes(),
            values[:total].tobytes(), first, rec, session, seg_keys, head, self._crc,
            self.offset)
        self._append_chained(b"".join(out), crc)
        # Book-keeping as _committed and _note_time do per key, for all at once.
        last = first + total - 1
        self._seg_events += total
        self._seg_session = True
        self.position = last
        seg_keys.update(kids)
        if self._buffered and self._failed is None:
            self._fast.update(zip(keys, [session | kid << 32 for kid in kids]))
        tables.add_keys([(kid, key) for kid, key in zip(kids, keys) if kid not in known])
        if session not in tables.sessions:
            tables.sessions[session] = msgpack.unpackb(self._session_payload, raw=False)
        tables.index_frames(firsts, rec, self.segment_first, at)
        if self.offset >= self._after_at:
            self.after_due = True
        return count
