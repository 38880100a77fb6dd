"""Appending events to the newest segment: framing, rotation, rollback.

Theory of operation
-------------------
:class:`LogWriter` owns the newest segment's file descriptor.  Its
:meth:`~LogWriter.commit` is the State's commit hook: it frames the event
(with the KEY and SESSION definitions the segment still lacks), computes the
chained CRCs, and hands everything to the OS in one ``write``.  Only when
that succeeds does the State apply the event, so memory never runs ahead of
the file.

* If the frame would take the segment past ``segment_bytes``, the writer
  first *rotates*: it syncs the full segment (unless ``fsync="never"``),
  creates the next one as ``<name>.tmp`` with its header, syncs it, renames
  it into place and syncs the directory.  A crash at any point leaves either
  no new segment or a complete empty one.
* If ``write`` fails (disk full, I/O error) the file is truncated back to
  the last frame boundary and :exc:`LogWriteError` is raised: nothing was
  recorded and the log stays usable.  If even that fails the writer is
  *failed* and refuses further writes (:exc:`LogFailedError`).
"""

from __future__ import annotations

import errno
import getpass
import os
import socket
import struct
import threading
import time
import zlib
from typing import Any

import msgpack
import numpy as np

from . import _format as fmt
from ._errors import LogFailedError, LogWriteError
from ._fileio import FileSystem, write_all
from ._replayer import Tables
from ._values import chunks
from ._version import __version__

__all__ = ["LogWriter", "create_segment", "session_info"]

_U32 = struct.Struct("<I")
_U32_PACK = _U32.pack
_ADD_PACK = struct.Struct("<HBBIQdIId").pack
_crc32 = zlib.crc32
_time = time.time


def session_info(source: str | None) -> dict[str, object]:
    """Who is writing: recorded once per session and segment."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name available (containers)
        user = ""
    return {"source": source or "", "host": socket.gethostname(), "pid": os.getpid(),
            "user": user, "started": time.time(), "version": __version__}


def create_segment(fs: FileSystem, path: str, first: int, log_id: bytes, *,
                   sync: bool = True) -> tuple[int, int, int]:
    """Create segment `first` crash-safely; returns (fd, size, running CRC)."""
    name = os.path.join(path, fmt.segment_name(first))
    tmp = name + ".tmp"
    if fs.exists(tmp):
        fs.remove(tmp)
    header = fmt.encode_header(first, time.time(), log_id)
    fd = fs.create(tmp)
    try:
        write_all(fs, fd, header)
        if sync:
            fs.sync(fd)
    finally:
        fs.close(fd)
    fs.rename(tmp, name)
    if sync:
        fs.sync_dir(path)
    return fs.open_append(name), len(header), zlib.crc32(header)


class LogWriter:
    """Appends framed events to the newest segment (see module docstring).

    With ``flush_interval > 0`` frames are collected in a buffer that a
    flusher thread hands to the OS at most ``flush_interval`` seconds after
    the first unflushed write (and whenever it exceeds ``FLUSH_BYTES``, on
    :meth:`sync`, rotation and close).  With ``flush_interval == 0`` every
    commit writes through.  All writes to the descriptor happen under the
    owner's `lock`, which commits already hold, so buffer and file stay in
    order without a second lock on the hot path.
    """

    FLUSH_BYTES = 256 << 10

    def __init__(self, fs: FileSystem, path: str, log_id: bytes, tables: Tables, *,
                 segment_first: int, fd: int, offset: int, crc: int, segment_bytes: int,
                 sync_on_rotate: bool, session: dict[str, object],
                 lock: threading.RLock, flush_interval: float = 0.0,
                 position: int = 0) -> None:
        self._fs = fs
        self._path = path
        self._log_id = log_id
        self._tables = tables
        self._key_ids = tables.key_ids
        self.segment_first = segment_first
        self._fd = fd
        self.offset = offset  # logical end of the segment (including the buffer)
        self._flushed = offset  # bytes handed to the OS
        self._crc = crc
        self._segment_bytes = segment_bytes
        self._sync_on_rotate = sync_on_rotate
        self._seg_keys: set[int] = set()
        self._seg_session = False
        # events already in the segment we continue (a reopened log)
        self._seg_events = max(0, position - segment_first + 1)
        self.session_id = tables.next_session_id()
        self._session_payload = msgpack.packb(session, use_bin_type=True)
        self._last_rec = tables.last_recorded
        self.failed: BaseException | None = None
        #: last position committed (buffered or written)
        self.position = position
        #: bytes appended since the writer was opened (for checkpoint scheduling)
        self.bytes_appended = 0
        self._lock = lock
        self._buf = bytearray()
        self._buffered = flush_interval > 0
        #: guards the descriptor against a concurrent fsync while rotating
        self.fd_lock = threading.Lock()
        #: called (under the owner's lock) as rotated(old first position, new first position)
        self.rotated: Any = None
        #: finished segments not yet fsynced, and whether the directory needs a sync
        self._unsynced: list[str] = []
        self._dir_dirty = False
        self._flusher: threading.Thread | None = None
        self._kick = threading.Condition(threading.Lock())
        self._dirty = False
        self._closing = False
        if self._buffered:
            self._flusher = threading.Thread(target=self._run_flusher, args=(flush_interval,),
                                             name="telstate-log-flush", daemon=True)
            self._flusher.start()

    # ------------------------------------------------------------------ hook
    def commit(self, kind: int, pos: int, key: bytes, sub_key: bytes, value: bytes,
               ts: float) -> None:
        """State commit hook: make event `pos` part of the log."""
        if self.failed is not None:
            raise LogFailedError(f"the log writer has failed: {self.failed}")
        rec = _time()
        if rec < self._last_rec:
            rec = self._last_rec
        kid = self._key_ids.get(key)
        if kind == 2 and kid is not None and self._buffered and kid in self._seg_keys:
            # Fast path: a buffered sample of a key this segment already defines.
            length = 32 + len(value)
            end = self.offset + length + 12
            if end <= self._segment_bytes:
                frame = _ADD_PACK(0x1EA7, 2, (length ^ (length >> 8) ^ (length >> 16)
                                              ^ (length >> 24) ^ 0x58) & 0xFF,
                                  length, pos, rec, self.session_id, kid, ts) + value
                c = _crc32(frame, self._crc)
                cb = _U32_PACK(c)
                self._crc = _crc32(cb, c)
                buf = self._buf
                buf += frame
                buf += cb
                if (pos - 1) & 1023 == 0:
                    self._note_time(pos, rec, self.offset)
                self.bytes_appended += end - self.offset
                self.offset = end
                self._last_rec = self._tables.last_recorded = rec
                self.position = pos
                self._seg_events += 1
                if not self._dirty:
                    self._dirty = True
                    with self._kick:
                        self._kick.notify()
                elif len(buf) >= self.FLUSH_BYTES:
                    self._flush_locked()
                return
        self._commit_general(kind, pos, key, sub_key, value, ts, rec, kid)

    def _commit_general(self, kind: int, pos: int, key: bytes, sub_key: bytes, value: bytes,
                        ts: float, rec: float, kid: int | None) -> None:
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
        rec = _time()
        if rec < self._last_rec:
            rec = self._last_rec
        tables = self._tables
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
        saved = self._crc
        self._crc = crc
        try:
            self._append(b"".join(out))
        except BaseException:
            self._crc = saved
            raise

    def _committed(self, last: int, events: int, rec: float, kid: int | None, key: bytes,
                   new_key: bool) -> None:
        """Book-keeping after frames were appended: positions, segment contents,
        and the key and session tables (updated only now that the records exist)."""
        self._seg_events += events
        self._seg_session = True
        self._last_rec = self._tables.last_recorded = rec
        self.position = last
        tables = self._tables
        if kid is not None:
            self._seg_keys.add(kid)
            if new_key:
                tables.keys[kid] = key
                tables.key_ids[key] = kid
        if self.session_id not in tables.sessions:
            tables.sessions[self.session_id] = msgpack.unpackb(self._session_payload, raw=False)

    def _note_time(self, pos: int, rec: float, offset: int) -> None:
        """Add an entry to the sparse position/time/offset index."""
        t = self._tables
        t.time_pos.append(pos)
        t.time_rec.append(rec)
        t.time_seg.append(self.segment_first)
        t.time_off.append(offset)
        t.last_recorded = rec

    def _append(self, data: bytes) -> None:
        """Buffer or write `data` (the caller holds the lock)."""
        n = len(data)
        if self._buffered:
            self._buf += data
            self.offset += n
            self.bytes_appended += n
            if not self._dirty:
                self._dirty = True
                with self._kick:
                    self._kick.notify()
            elif len(self._buf) >= self.FLUSH_BYTES:
                self._flush_locked()
            return
        try:
            write_all(self._fs, self._fd, data)
        except OSError as exc:
            try:
                self._fs.truncate(self._fd, self.offset)
            except OSError as exc2:
                self.failed = exc2
                raise LogFailedError(f"write failed ({exc}) and could not be rolled back "
                                     f"({exc2}); reopen the log to recover") from exc
            what = "disk full" if exc.errno == errno.ENOSPC else os.strerror(exc.errno or 0)
            raise LogWriteError(f"could not write to the log ({what}); nothing was recorded",
                                exc.errno) from exc
        self.offset += n
        self._flushed = self.offset
        self.bytes_appended += n

    # -------------------------------------------------------------- flushing
    def _flush_locked(self) -> None:
        """Hand the buffer to the OS (the caller holds the lock)."""
        self._dirty = False
        if not self._buf:
            return
        data = bytes(self._buf)
        self._buf.clear()
        try:
            write_all(self._fs, self._fd, data)
        except OSError as exc:
            # Buffered events were already acknowledged and applied: memory
            # and disk now differ, so the writer cannot go on.
            self.failed = exc
            try:
                self._fs.truncate(self._fd, self._flushed)
            except OSError:
                pass
            raise LogFailedError(f"could not write buffered events to the log ({exc}); "
                                 "reopen it to recover the written prefix") from exc
        self._flushed += len(data)

    def flush(self) -> None:
        """Hand buffered events to the OS."""
        with self._lock:
            if self.failed is None:
                self._flush_locked()
            elif self._buf:
                raise LogFailedError(f"the log writer has failed: {self.failed}")

    def _run_flusher(self, interval: float) -> None:
        while True:
            with self._kick:
                while not self._dirty and not self._closing:
                    self._kick.wait()
                if self._closing:
                    return
            time.sleep(interval)
            try:
                self.flush()
            except LogFailedError:
                return

    # -------------------------------------------------------------- segments
    def _rotate(self, next_first: int) -> None:
        fs = self._fs
        self._flush_locked()
        with self.fd_lock:
            if self._sync_on_rotate:
                try:
                    fs.sync(self._fd)
                except OSError as exc:  # a failed fsync is final
                    self.failed = exc
                    raise LogFailedError(f"fsync failed while finishing a segment: {exc}") \
                        from exc
            try:
                fd, size, crc = create_segment(fs, self._path, next_first, self._log_id,
                                               sync=self._sync_on_rotate)
            except OSError as exc:
                # Nothing changed: keep appending to the current segment for now.
                what = "disk full" if exc.errno == errno.ENOSPC else str(exc)
                raise LogWriteError(f"could not start a new segment ({what}); nothing was "
                                    "recorded", exc.errno) from exc
            if not self._sync_on_rotate:
                self._unsynced.append(self.segment_path)
                self._dir_dirty = True
            fs.close(self._fd)
            self._fd = fd
        old_first = self.segment_first
        self.segment_first = next_first
        self.offset = self._flushed = size
        self._crc = crc
        self._seg_keys = set()
        self._seg_session = False
        self._seg_events = 0
        if self.rotated is not None:
            self.rotated(old_first, next_first)

    def rotate_now(self) -> bool:
        """Finish the current segment now (if it holds any event); returns whether it did."""
        if self.failed is not None:
            raise LogFailedError(f"the log writer has failed: {self.failed}")
        if not self._seg_events:
            return False
        self._rotate(self.position + 1)
        return True

    def sync(self) -> None:
        """Make everything committed durable: flush, then fdatasync every segment
        written since the last sync (rotations without fsync leave some) and
        the directory if segments were created, then the current segment.

        Raises LogFailedError if the writer has failed (buffered events may be
        lost): it never reports lost data as durable.
        """
        self.flush()
        if self.failed is not None:
            raise LogFailedError(f"the log writer has failed: {self.failed}")
        fs = self._fs
        with self.fd_lock:
            for path in self._unsynced:
                fd = fs.open_append(path)
                try:
                    fs.sync(fd)
                finally:
                    fs.close(fd)
            self._unsynced = []
            if self._dir_dirty:
                fs.sync_dir(self._path)
                self._dir_dirty = False
            fs.sync(self._fd)

    def fail(self, exc: BaseException) -> None:
        """Mark the writer failed (e.g. an fsync failed elsewhere): it refuses writes."""
        if self.failed is None:
            self.failed = exc

    @property
    def segment_path(self) -> str:
        return os.path.join(self._path, fmt.segment_name(self.segment_first))

    @property
    def running_crc(self) -> int:
        return self._crc

    def close(self) -> None:
        """Flush and close (the caller syncs first if it wants durability)."""
        with self._kick:
            self._closing = True
            self._kick.notify()
        if self._flusher is not None and self._flusher is not threading.current_thread():
            self._flusher.join()
        try:
            if self.failed is None:
                self.flush()
        finally:
            with self.fd_lock:
                if self._fd >= 0:
                    self._fs.close(self._fd)
                    self._fd = -1
