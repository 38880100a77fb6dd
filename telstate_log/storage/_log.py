"""Log: the segment files of one log directory and everything about them.

Theory of operation
-------------------
A :class:`Log` is the storage half of a log backend; the backend keeps the
materialised :class:`~telstate_log.core._state.State` (reads) and the
monitors.  :meth:`Log.open` recovers the directory (the newest valid
checkpoint plus the segments after it: :mod:`telstate_log.storage._open`)
and returns the Log with the recovered State; both share one lock, which
the backend holds around every change of the state.

A writer (``readonly=False``) holds ``LOCK`` and appends: the State's write
methods call :attr:`Log.append` / :attr:`Log.append_batch` (the event
writer's own methods, :mod:`telstate_log.storage._event_writer`, so a write
costs no extra call) with each new event before applying it, and the
backend calls :meth:`Log.after_append` once the lock is released: it waits
for durability under ``fsync="always"`` (group commit:
:mod:`telstate_log.storage._durability`) and starts a background checkpoint
when one is due (:mod:`telstate_log.storage._checkpointer`).  Finished
segments are sealed in a thread (:mod:`telstate_log.storage._seal_thread`);
:meth:`Log.prune` drops old ones (:mod:`telstate_log.storage._retention`).

A reader (``readonly=True``) *follows* the directory as another process
writes it (:meth:`Log.follow`: a directory watch, :mod:`._dir_watch`, runs
:meth:`Log.follow_step`, :mod:`._follow`); it applies new frames to the State
under the lock and calls the backend's ``on_applied`` so monitors fire.

History (:meth:`Log.events`, :meth:`Log.key_history`, :meth:`Log.resolve_time`)
is read back from the segment files (:mod:`telstate_log.storage._history`).

Durability contract (``fsync``), when a write returns: ``"always"`` -- on
stable storage (fdatasync'ed, new segments and their directory entries
too; concurrent writers share fsyncs); ``"interval"`` (default) -- in the
writer's buffer, handed to the OS within ``flush_interval`` (5 ms) of the
first buffered write (a killed process loses only the writes still in the
buffer; none with ``flush_interval=0``), fsynced by a timer within
``fsync_interval`` seconds and on rotation and close (power loss: at most
that much more); ``"never"`` -- as ``"interval"`` for a killed process, and
the OS decides when it reaches the disk (:meth:`Log.sync` still forces it).
Whatever the policy, recovery yields exactly the state after some prefix of
the writes.

Most writes need no :meth:`Log.after_append`: the writer's ``after_due``
flag says when one has work (every write under ``"always"``; otherwise once
a checkpoint is due), and the backend checks it instead of calling.
"""

from __future__ import annotations

import os
import threading
from typing import Any, NoReturn

from ..core._apply import Tables
from ..core._errors import HistoryUnavailableError, LogError, ReadOnlyError
from ..core._events import Event
from ..core._state import Commit, CommitBatch, CommitSample, State
from ._checkpointer import Checkpointer
from ._copy_writer import CopyWriter
from ._dir_watch import Follower
from ._durability import Durability
from ._event_log import CommitBatches
from ._event_writer import LogWriter
from ._fileio import FileSystem, OsFileSystem
from ._follow import FollowCursor, OnApplied, OnReplaced
from ._history import EventReader, key_history_span
from ._lockfile import acquire_lock, release_lock
from ._log_writer import open_writer, start_session
from ._open import recover
from ._recovery import Tail
from ._retention import PruneReport, prune_log
from ._seal import SealFileError, read_seals
from ._seal_thread import Sealer

__all__ = ["DEFAULT_CHECKPOINT_BYTES", "DEFAULT_SEGMENT_BYTES", "FSYNC_POLICIES", "Log"]

FSYNC_POLICIES = ("always", "interval", "never")
DEFAULT_SEGMENT_BYTES = 64 << 20
#: log between two background checkpoints while the state is smaller (see the spacing
#: in telstate_log.storage._checkpointer: it bounds the replay after kill -9)
DEFAULT_CHECKPOINT_BYTES = 128 << 20


def _refuse(*args: object) -> NoReturn:
    raise ReadOnlyError("a read-only log cannot append")


class Log:
    """The segment files of a log directory (see module docstring).

    Create with :meth:`open`.  ``append``, ``append_sample`` and
    ``append_batch`` are the State's commit hooks
    (:data:`~telstate_log.core._state.Commit`).
    """

    append: Commit
    append_sample: CommitSample
    append_batch: CommitBatch
    append_batches: CommitBatches | None

    def __init__(self, fs: FileSystem, path: str, *, fsync: str, readonly: bool,
                 lock: threading.RLock) -> None:
        self._fs = fs
        self.path = path
        self.fsync = fsync
        self.readonly = readonly
        self.lock = lock
        self._lock = lock
        self._lock_fd = -1
        self._closed = False
        self._state = State()
        self._tables = Tables()
        self._log_id: bytes | None = None
        self._tail: Tail | None = None
        self._writer: LogWriter | None = None
        self._durability: Durability | None = None
        self._ckpt: Checkpointer | None = None
        self._sealer: Sealer | None = None
        self._cursor: FollowCursor | None = None
        self._follower: Follower | None = None
        self._sync_each = fsync == "always"
        self.append = self.append_sample = self.append_batch = _refuse
        self.append_batches = None

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, fsync: str = "interval",
             fsync_interval: float = 1.0, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
             readonly: bool = False, source: str | None = None,
             checkpoint_bytes: int | None = DEFAULT_CHECKPOINT_BYTES,
             flush_interval: float = 0.005, use_checkpoints: bool = True,
             fs: FileSystem | None = None,
             lock: threading.RLock | None = None, copy: bool = False) -> tuple[Log, State]:
        """Open (creating or recovering) the log at `path`: the Log and its State.

        A writer takes the directory's lock (:exc:`LogLockedError` if another
        process holds it); a reader (`readonly`) does not, and follows the
        writer once :meth:`follow` is called.  With `copy` the writer is a
        :class:`~._copy_writer.CopyWriter` (an archive: events recorded
        elsewhere are appended as they were, and ``append`` is refused).
        """
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, not {fsync!r}")
        if segment_bytes < 4096:
            raise ValueError("segment_bytes must be at least 4096")
        if fsync_interval <= 0:
            raise ValueError("fsync_interval must be positive")
        log = cls(fs if fs is not None else OsFileSystem(), os.fspath(path), fsync=fsync,
                  readonly=readonly, lock=lock if lock is not None else threading.RLock())
        log._open(fsync_interval=fsync_interval, segment_bytes=segment_bytes, source=source,
                  checkpoint_bytes=checkpoint_bytes, flush_interval=flush_interval,
                  use_checkpoints=use_checkpoints, copy=copy)
        return log, log._state

    # ------------------------------------------------------------- opening
    def _open(self, *, fsync_interval: float, segment_bytes: int, source: str | None,
              checkpoint_bytes: int | None, flush_interval: float,
              use_checkpoints: bool, copy: bool) -> None:
        fs, path = self._fs, self.path
        if not self.readonly:
            fs.makedirs(path)
            self._lock_fd = acquire_lock(path)
        elif not os.path.isdir(path):
            raise LogError(f"log directory {path!r} does not exist")
        try:
            state, tables, tail = recover(fs, path, readonly=self.readonly,
                                          use_checkpoints=use_checkpoints)
            self._state, self._tables, self._tail = state, tables, tail
            self._log_id = tail.log_id
            if self.readonly:
                self._cursor = FollowCursor(fs, path, self._lock, state, tables, tail)
            else:
                parts = open_writer(fs, path, self._lock, state, tables, tail,
                                    fsync=self.fsync, fsync_interval=fsync_interval,
                                    segment_bytes=segment_bytes, source=source,
                                    checkpoint_bytes=checkpoint_bytes,
                                    flush_interval=flush_interval,
                                    writer_class=CopyWriter if copy else LogWriter)
                self._log_id = parts.log_id
                self._writer, self._durability = parts.writer, parts.durability
                self._ckpt, self._sealer = parts.checkpointer, parts.sealer
                self.append = parts.writer.commit
                self.append_sample = parts.writer.commit_sample
                self.append_batch = parts.writer.commit_batch
                self.append_batches = parts.writer.commit_many_batches
                with self._lock:
                    parts.writer.expect_after(parts.checkpointer.due, always=self._sync_each)
        except BaseException:
            self._release_lock()
            raise

    def _release_lock(self) -> None:
        release_lock(self._lock_fd)
        self._lock_fd = -1

    # ------------------------------------------------------------- writes
    def after_append(self, position: int) -> None:
        """Call (without the lock) after appending event `position`: waits for
        durability under ``fsync="always"``; starts a due checkpoint.  Needed
        only while the writer's ``after_due`` flag is set (see the module docstring)."""
        if self._sync_each:
            self._durability.wait(position)  # type: ignore[union-attr]
        self._checkpoint_if_due()

    async def after_append_async(self, position: int) -> None:
        """:meth:`after_append` for the event loop (awaits durability)."""
        if self._sync_each:
            await self._durability.wait_async(position)  # type: ignore[union-attr]
        self._checkpoint_if_due()

    #: while a checkpoint runs, look again after this many more bytes of log
    RECHECK_BYTES = 64 << 10

    def _checkpoint_if_due(self) -> None:
        writer, ckpt = self._writer, self._ckpt
        assert writer is not None and ckpt is not None
        if writer.bytes_appended >= ckpt.due:
            ckpt.start_background()  # moves ckpt.due on, unless one is running
        if writer.after_due and not self._sync_each:
            with self._lock:  # re-arm the writer's flag for the next due checkpoint
                due = ckpt.due
                if due <= writer.bytes_appended:  # a checkpoint is running
                    due = writer.bytes_appended + self.RECHECK_BYTES
                writer.expect_after(due)

    def new_session(self, source: str | None) -> None:
        """Record the following appends under a new session with this source label."""
        if self._writer is None:
            raise ReadOnlyError("a read-only log records no sessions")
        start_session(self._writer, source)

    def sync(self) -> int:
        """Make every append so far durable; returns the durable position."""
        if self._durability is None:
            return self.position
        return self._durability.sync()

    @property
    def position(self) -> int:
        """Position of the last event appended (or followed)."""
        with self._lock:
            return self._state.position

    @property
    def durable_position(self) -> int:
        """Position up to which events are known to be on stable storage."""
        return self._durability.durable if self._durability is not None else self.position

    @property
    def log_id(self) -> bytes | None:
        """The log's id (in every segment header); None for a reader of an empty log."""
        return self._cursor.tail.log_id if self._cursor is not None else self._log_id

    # -------------------------------------------- checkpoints, seals, prune
    def checkpoint(self, *, sync: bool = False) -> str | None:
        """Write a checkpoint of the current state; returns its path (None if read-only).

        The log is made durable up to the checkpoint first.  The checkpoint
        itself is synced unless ``fsync="never"`` (or with ``sync=True``).
        Raises LogError if it cannot be written (the log is unaffected).
        """
        if self._ckpt is None:
            return None
        return self._ckpt.checkpoint(sync=sync)

    def tail_bytes(self) -> int:
        """Bytes appended since the last checkpoint by this writer."""
        return 0 if self._ckpt is None else self._ckpt.tail_bytes()

    def seal(self) -> str | None:
        """Finish and seal the current segment; returns the head hash (hex)."""
        if self._writer is None:
            raise ReadOnlyError("a read-only backend cannot seal")
        if self._sealer is None:
            raise LogError("sealing is disabled: the seals file is damaged")
        with self._lock:
            if self._closed:
                raise LogError("the log backend is closed")
            self._writer.rotate_now()
        self._sealer.seal_pending()
        if self._sealer.error is not None:
            raise LogError(f"sealing failed: {self._sealer.error}")
        return self._sealer.head

    def prune(self, before: int | None = None,
              older_than: float | None = None) -> PruneReport:
        """Drop old finished, sealed segments (see :mod:`telstate_log.storage._retention`)."""
        if self._writer is None or self._ckpt is None:
            raise ReadOnlyError("a read-only backend cannot prune the log")
        sealer, ckpt = self._sealer, self._ckpt
        if sealer is not None:
            sealer.wait()  # never delete a segment the sealer is reading
        return prune_log(self._fs, self.path, self._lock, self._state, self._tables,
                         sealed=None if sealer is None
                         else lambda: {s.segment for s in sealer.seals},
                         # the pruned log depends on this checkpoint: always synced
                         checkpoint=lambda: ckpt.checkpoint(sync=True),
                         before=before, older_than=older_than)

    @property
    def head_hash(self) -> str | None:
        """The latest seal (hex), or None if no segment is sealed yet."""
        if self._sealer is not None:
            return self._sealer.head
        try:
            seals = read_seals(self.path, self._fs)
        except SealFileError:
            return None
        return seals[-1].seal if seals else None

    # ------------------------------------------------------ history (audit)
    def _reader(self) -> EventReader:
        writer = self._writer
        return EventReader(self._fs, self.path, self._tables, lock=self._lock,
                           flush=writer.flush if writer is not None else None,
                           log_id=self.log_id)

    def _check_history(self, since: int) -> None:
        if since < self._state.history_from:
            raise HistoryUnavailableError(f"history before position "
                                          f"{self._state.history_from} was pruned")

    def resolve_time(self, when: float) -> int:
        """Position of the last event recorded at or before wall-clock `when`."""
        return self._reader().position_at_time(float(when), self.position)

    def key_history(self, key: bytes, sub_key: bytes | None = None) -> list[Event]:
        """The events that changed `key` (or its sub-key `sub_key`), in order."""
        with self._lock:
            span = key_history_span(self._state, self._tables, key, sub_key)
        if span is None:
            return []
        self._check_history(span.start)
        events = self._reader().events(span.start, span.end, span.wants)
        return [e for e in events if sub_key is None or e.sub_key in (None, sub_key)]

    def events(self, since: int = 1, until: int | None = None) -> list[Event]:
        """Every event with a position in ``[since, until]`` (default: to the end)."""
        since = max(1, since)
        self._check_history(since)
        until = self.position if until is None else until
        return list(self._reader().events(since, until))

    def session_info(self, session: int) -> dict[str, Any]:
        """Who wrote events of `session` (source label, host, pid, user, start)."""
        with self._lock:
            return dict(self._tables.sessions.get(session, {}))

    def session_ids(self) -> list[int]:
        """The sessions recorded so far, in order."""
        with self._lock:
            return sorted(self._tables.sessions)

    # ----------------------------------------------------------- following
    def follow(self, on_applied: OnApplied, on_replaced: OnReplaced, *,
               watch: bool = True) -> None:
        """Apply the writer's new events as they come (a reader only).

        `on_applied` gets each batch of events applied (under the lock);
        `on_replaced` the new State when a follower that fell behind a prune
        reloaded it from a checkpoint.  With `watch`, a thread runs
        :meth:`follow_step` whenever the directory changes; else call it.
        """
        cursor = self._cursor
        if cursor is None:
            raise LogError("only a read-only log follows its writer")

        def reset(state: State, tables: Tables) -> None:
            self._state, self._tables = state, tables
            on_replaced(state)

        cursor.on_applied = on_applied
        cursor.on_reset = reset
        if watch:
            self._follower = Follower(self.path, cursor.step)

    def follow_step(self) -> bool:
        """Apply whatever the writer appended since the last step; whether anything was."""
        if self._cursor is None:
            raise LogError("only a read-only log follows its writer")
        return self._cursor.step()

    @property
    def follow_error(self) -> BaseException | None:
        """Why following stopped, if it did (a reader only)."""
        return None if self._follower is None else self._follower.error

    # ------------------------------------------- internals, for tests and tools
    @property
    def tables(self) -> Tables:
        """The id tables (keys, sessions, time index) of the current state."""
        return self._tables

    @property
    def tail(self) -> Tail | None:
        """Where a reader is (segment, offset, CRC); where recovery ended for a writer."""
        return self._cursor.tail if self._cursor is not None else self._tail

    @property
    def writer(self) -> LogWriter | None:
        return self._writer

    @property
    def appender(self) -> LogWriter | None:
        """The event writer, for an event loop's ``nonblocking`` flag (see EventLog)."""
        return self._writer

    @property
    def durability(self) -> Durability | None:
        return self._durability

    @property
    def follower(self) -> Follower | None:
        return self._follower

    @property
    def sealer(self) -> Sealer | None:
        return self._sealer

    # --------------------------------------------------------------- close
    def close(self) -> None:
        """Flush, sync (unless ``fsync="never"``), checkpoint a costly tail, release."""
        if self._closed:
            return
        self._closed = True
        if self._follower is not None:
            self._follower.stop()
        if self._ckpt is not None:
            self._ckpt.join()
        try:
            writer, durability, ckpt = self._writer, self._durability, self._ckpt
            if writer is not None and durability is not None and ckpt is not None:
                if durability.failed is None and writer.failed is None:
                    if self.fsync != "never":
                        durability.sync()
                    if ckpt.tail_is_costly():
                        ckpt.checkpoint()
                if self._sealer is not None:  # while its pre-seal syncs still work
                    self._sealer.close()
                durability.close()
                writer.close()
        finally:
            self._release_lock()

    def __del__(self) -> None:
        if getattr(self, "_lock_fd", -1) >= 0 and not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:  # interpreter shutdown: best effort
                pass
