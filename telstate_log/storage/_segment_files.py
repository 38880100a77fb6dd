"""The newest segment's bytes: buffering, flushing, rollback, rotation, sync.

Theory of operation
-------------------
:class:`SegmentAppender` owns the file descriptor of the segment being
written and everything about getting bytes into it; what the bytes *are*
(frames, key and session definitions) is :class:`~._event_writer.LogWriter`'s
business, which extends it.

* With ``flush_interval > 0`` appended bytes collect in a buffer that a
  flusher thread hands to the OS ``flush_interval`` seconds after the first
  unflushed append (and whenever it exceeds :attr:`FLUSH_BYTES`, on
  :meth:`sync`, rotation and close).  A busy writer holds the lock the
  flusher needs nearly all the time, and CPython does not hand a released
  lock to a waiting thread, so the flusher can be late by several GIL
  switch intervals; an append that finds the buffer older than
  ``flush_interval`` therefore flushes it itself.  With ``flush_interval == 0`` every
  append writes through.  All writes to the descriptor happen under the
  owner's lock, which appends already hold, so buffer and file stay in order
  without a second lock on the hot path.
* A write-through append that fails (disk full, I/O error) is truncated back
  to the last frame boundary and raises :exc:`LogWriteError`: nothing was
  recorded and the log stays usable.  If even that fails, or a buffered
  flush fails (those events were already acknowledged), the appender is
  *failed* and refuses further writes (:exc:`LogFailedError`).
* :meth:`_rotate` finishes the segment -- fsyncs it unless ``fsync="never"``
  -- and creates the next one with :func:`create_segment`: records the
  synced creation in ``synced-segment``, then writes ``<name>.tmp`` with
  its header, synced, renamed into place, directory synced.  A crash at any
  point leaves either no new segment or a complete empty one (without
  syncs: possibly one whose content never reached the disk, which recovery
  recognises and removes -- the record is how it knows that a segment
  created with syncs and found empty is damage instead).
* :meth:`sync` fsyncs the segments finished without a sync, the directory if
  segments were created, then the current segment.
* An event loop must never wait for the disk.  While :attr:`nonblocking` is
  set (by an async caller holding the owner's lock) an append that needs a
  rotation raises :exc:`WouldBlock` before changing anything, and the caller
  runs the write again in a worker thread.  Appends themselves only hand
  bytes to the OS; fsyncs run in the durability and checkpoint threads.
"""

from __future__ import annotations

import errno
import os
import threading
import time
import zlib
from typing import Any

from ..core import _log_format as fmt
from ..core._errors import LogFailedError, LogWriteError
from ._fileio import FileSystem, replace_file, write_all

__all__ = ["SegmentAppender", "WouldBlock", "create_segment"]


def create_segment(fs: FileSystem, path: str, first: int, log_id: bytes, *,
                   sync: bool = True) -> tuple[int, int, int]:
    """Create segment `first` crash-safely; returns (fd, size, running CRC).

    With `sync`, ``synced-segment`` first records that this creation is
    synced, so recovery can tell the segment emptied by damage from a
    creation cut short by a crash (see :mod:`telstate_log.core._log_format`); the segment's
    directory sync makes both renames durable before anything is written to
    the segment.  If the record is written and the segment is not, the
    record is merely ahead of the log: recovery handles that and the caller
    keeps its current segment.
    """
    name = fmt.segment_name(first)
    header = fmt.encode_header(first, time.time(), log_id)
    if sync:
        replace_file(fs, path, fmt.SYNCED_FILE, fmt.encode_synced(first, log_id),
                     sync_dir=False)
    replace_file(fs, path, name, header, sync=sync)
    return fs.open_append(os.path.join(path, name)), len(header), zlib.crc32(header)


class WouldBlock(Exception):
    """The append needs blocking I/O (a rotation: fsync, create a segment) while
    :attr:`SegmentAppender.nonblocking` is set; nothing was written or changed."""


class SegmentAppender:
    """Appends bytes to the newest segment (see module docstring)."""

    FLUSH_BYTES = 256 << 10

    def __init__(self, fs: FileSystem, path: str, log_id: bytes, *, segment_first: int,
                 fd: int, offset: int, crc: int, segment_bytes: int, sync_on_rotate: bool,
                 lock: threading.RLock, flush_interval: float = 0.0) -> None:
        self._fs = fs
        self._path = path
        self._log_id = log_id
        self.segment_first = segment_first
        self._fd = fd
        self.offset = offset  # logical end of the segment (including the buffer)
        self._flushed = offset  # bytes handed to the OS
        self._crc = crc
        self._segment_bytes = segment_bytes
        self._sync_on_rotate = sync_on_rotate
        self.failed: BaseException | None = None
        # bytes_appended - offset: the appends need not count (see bytes_appended)
        self._appended_before = -offset
        self._lock = lock
        #: appended bytes not yet handed to the OS, as the pieces appended (joined
        #: when flushed: appending to a list costs less than growing a bytearray)
        self._buf: list[bytes] = []
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
        #: time.time() by which the buffer must be flushed; 0.0 while it is clean, so
        #: one comparison tells an append that a flush cycle starts or is late
        self._flush_due = 0.0
        self._flush_interval = flush_interval
        self._closing = False
        #: set (under the owner's lock) by an event loop: raise WouldBlock instead of
        #: rotating (see the module docstring)
        self.nonblocking = False
        if self._buffered:
            self._flusher = threading.Thread(target=self._run_flusher, args=(flush_interval,),
                                             name="telstate-log-flush", daemon=True)
            self._flusher.start()

    def _segment_started(self) -> None:
        """Called after a rotation switched to a new, empty segment."""

    def _append(self, data: bytes) -> None:
        """Buffer or write `data` (the caller holds the lock)."""
        n = len(data)
        if self._buffered:
            self._buf.append(data)
            self.offset += n
            now = time.time()
            if now >= self._flush_due or self.offset - self._flushed >= self.FLUSH_BYTES:
                self._flush_cycle(now)
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

    # -------------------------------------------------------------- flushing
    def _flush_cycle(self, now: float) -> None:
        """After a buffered append found the buffer clean (`_flush_due` is 0.0), full
        or older than ``flush_interval`` (the caller holds the lock): start a flush
        cycle (the flusher hands the buffer over in ``flush_interval``), or flush now."""
        if not self._dirty:
            self._dirty = True
            self._flush_due = now + self._flush_interval
            with self._kick:
                self._kick.notify()
        else:
            self._flush_locked()  # the flusher is late (see the module docstring)

    def _flush_locked(self) -> None:
        """Hand the buffer to the OS (the caller holds the lock)."""
        self._dirty = False
        self._flush_due = 0.0
        if not self._buf:
            return
        data = b"".join(self._buf)
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
        if self.nonblocking:
            raise WouldBlock("starting a new segment waits for the disk")
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
        self._appended_before += self.offset - size
        self.offset = self._flushed = size
        self._crc = crc
        self._segment_started()
        if self.rotated is not None:
            self.rotated(old_first, next_first)

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
    def bytes_appended(self) -> int:
        """Bytes appended since the writer was opened (for checkpoint scheduling)."""
        return self._appended_before + self.offset

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
