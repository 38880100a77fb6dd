"""LogBackend: telescope state in an append-only segment log on disk.

Theory of operation
-------------------
Every successful write becomes an event in the log (format:
:mod:`telstate_log._format`); the materialised
:class:`~telstate_log._state.State` serves all reads.  Opening a log loads
the newest valid checkpoint and replays the segments after it
(:mod:`telstate_log._recovery`), truncating a torn tail and refusing any
other damage.  :meth:`LogBackend.close` writes a checkpoint when that
replay would be costly, judged by what replaying costs (events, keys
created, deletes: :func:`~telstate_log._replayer.replay_cost`) as well as
by bytes -- 7 MB of one-sample keys replay slower than 16 MiB of samples.

Durability contract -- what is on disk when a write call returns:

``fsync="always"``
    The event is on stable storage (fdatasync'ed; a new segment and its
    directory entry are synced before it is used).  Concurrent writers share
    fsyncs (group commit).  Nothing acknowledged is lost on power failure.
``fsync="interval"`` (default)
    The event has been handed to the OS (``write`` returned), so a crash of
    the process (kill -9) loses nothing.  A timer fsyncs at least every
    ``fsync_interval`` seconds, so a power failure or OS crash loses at most
    the events of the last ``fsync_interval`` seconds (plus one fsync's
    duration).  Segment rotations and close() also sync.
``fsync="never"``
    As "interval" for process crashes; the OS decides when data reaches the
    disk (rotations and close() do not sync either).  :meth:`sync` still
    forces it.

Whatever the policy, recovery yields exactly the state after some prefix of
the writes, never a reordering or a mix.

A writer holds an exclusive lock on ``LOCK``; a second writer gets
:exc:`LogLockedError`.  ``readonly=True`` opens without the lock and
*follows* the log as its writer appends (see :mod:`telstate_log._follower`):
indexes stay current and monitors fire on the writer's events.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from .. import _format as fmt
from .._checkpoint import VERSION as CHECKPOINT_VERSION_1
from .._checkpoint import (
    checkpoint_version,
    list_checkpoints,
    snapshot_state,
    write_checkpoint,
)
from .._checkpoint_table import wants_table
from .._durability import Durability
from .._errors import HistoryUnavailableError, LogError, ReadOnlyError
from .._fileio import FileSystem, OsFileSystem
from .._follower import Follower
from .._history import Event, EventReader, key_history_plan
from .._lockfile import acquire_lock, release_lock
from .._recovery import Resume, Tail
from .._replayer import COST_PER_EVENT_MAX, replay_cost
from .._retention import PruneReport, prune_log
from .._seal import SealFileError, read_seals
from .._sealer import Sealer
from .._writer import LogWriter, create_segment, session_info
from ._log_follow import follow_step
from ._log_open import recover
from ._state_backend import StateBackend

__all__ = ["FSYNC_POLICIES", "LogBackend"]

logger = logging.getLogger("telstate_log")
FSYNC_POLICIES = ("always", "interval", "never")
DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_CHECKPOINT_BYTES = 256 << 20
KEEP_CHECKPOINTS = 2
#: close() checkpoints a tail of this many bytes (or checkpoint_bytes if less) ...
CLOSE_CHECKPOINT_BYTES = 16 << 20
#: ... or one whose replay would cost this much (see telstate_log._replayer.replay_cost;
#: about 0.1 s): the size of a log says little about its replay time
CLOSE_CHECKPOINT_COST = 100_000


class LogBackend(StateBackend):
    """Telescope state backend stored as an append-only log (sync).

    Parameters
    ----------
    path
        Log directory; created if missing (unless `readonly`).
    fsync
        ``"always"``, ``"interval"`` or ``"never"``: see the module docstring
        for exactly what is on disk when a write returns.
    fsync_interval
        Seconds between background fsyncs with ``fsync="interval"``.
    segment_bytes
        Size at which a new segment file is started.
    readonly
        Open without taking the write lock and follow the log as another
        process writes it.
    source
        Label recorded with every event (e.g. the writing program's name).
    checkpoint_bytes
        Write a checkpoint in the background after this many bytes of log
        (None: only on :meth:`checkpoint` and on close).  Whatever it is,
        :meth:`close` writes one if replaying the log after the newest
        checkpoint would take long (:data:`CLOSE_CHECKPOINT_COST`), so a
        cleanly closed log reopens fast whatever its shape.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: str = "interval",
                 fsync_interval: float = 1.0, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 readonly: bool = False, source: str | None = None,
                 checkpoint_bytes: int | None = DEFAULT_CHECKPOINT_BYTES,
                 flush_interval: float = 0.005, use_checkpoints: bool = True,
                 fs: FileSystem | None = None, follow: bool = True) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, not {fsync!r}")
        if segment_bytes < 4096:
            raise ValueError("segment_bytes must be at least 4096")
        if fsync_interval <= 0:
            raise ValueError("fsync_interval must be positive")
        self.path = os.fspath(path)
        self.fsync = fsync
        self.readonly = readonly
        self.source = source
        self._fs = fs if fs is not None else OsFileSystem()
        self._segment_bytes = segment_bytes
        self._checkpoint_bytes = checkpoint_bytes
        self._lock_fd = -1
        self._writer: LogWriter | None = None
        self._durability: Durability | None = None
        self._follower: Follower | None = None
        self._sealer: Sealer | None = None
        self._closed = False
        self._checkpointing = threading.Lock()
        self._ckpt_thread: threading.Thread | None = None
        self._ckpt_mark = 0
        self._ckpt_position = 0  # of the newest checkpoint (replay starts after it)
        self._ckpt_legacy = False  # the newest checkpoint was written without a table
        self._ckpt_due = 1 << 62 if checkpoint_bytes is None else checkpoint_bytes
        self._sync_each = fsync == "always"
        self._flush_interval = flush_interval
        self._readonly = readonly
        self._writable = not readonly
        if not readonly:
            self._fs.makedirs(self.path)
            self._take_lock()
        elif not os.path.isdir(self.path):
            raise LogError(f"log directory {self.path!r} does not exist")
        try:
            state, tables, tail = recover(self._fs, self.path, readonly=readonly,
                                          use_checkpoints=use_checkpoints)
            super().__init__(state)
            self._tables = tables
            self._tail = tail
            self.log_id = tail.log_id
            if not readonly:
                newest = list_checkpoints(self.path)
                self._ckpt_position = min(newest[0].position if newest else 0, state.position)
                # a checkpoint of an older version has no column table
                self._ckpt_legacy = bool(newest) and \
                    checkpoint_version(newest[0].path) == CHECKPOINT_VERSION_1
                self._open_writer(tail, fsync_interval)
            elif follow:
                self._follower = Follower(self.path, self._follow_step)
        except BaseException:
            self._release_lock()
            raise

    # ------------------------------------------------------------- opening
    def _take_lock(self) -> None:
        self._lock_fd = acquire_lock(self.path)

    def _release_lock(self) -> None:
        release_lock(self._lock_fd)
        self._lock_fd = -1

    def _is_sealed(self, first: int) -> bool:
        try:
            return any(s.first == first for s in read_seals(self.path, self._fs))
        except SealFileError:
            return False

    def _open_writer(self, tail: Tail, fsync_interval: float) -> None:
        fs = self._fs
        sync = self.fsync != "never"
        if tail.segment_first is None:
            self.log_id = os.urandom(16)
            fd, offset, crc = create_segment(fs, self.path, 1, self.log_id, sync=sync)
            first = 1
        elif self._is_sealed(tail.segment_first):
            # Never append to a sealed segment (after a crash lost a newer,
            # empty one): start the next segment instead.
            assert self.log_id is not None
            first = self._state.position + 1
            fd, offset, crc = create_segment(fs, self.path, first, self.log_id, sync=sync)
        else:
            assert self.log_id is not None
            first, offset, crc = tail.segment_first, tail.offset, tail.crc
            fd = fs.open_append(os.path.join(self.path, fmt.segment_name(first)))
        self._writer = LogWriter(fs, self.path, self.log_id, self._tables, segment_first=first,
                                 fd=fd, offset=offset, crc=crc,
                                 segment_bytes=self._segment_bytes, sync_on_rotate=sync,
                                 session=session_info(self.source), lock=self._lock,
                                 flush_interval=0.0 if self.fsync == "always"
                                 else self._flush_interval,
                                 position=self._state.position)
        writer = self._writer
        self._durability = Durability(writer.sync, lambda: writer.position,
                                      durable=self._state.position,
                                      interval=fsync_interval if self.fsync == "interval"
                                      else None, on_fail=writer.fail)
        self._commit = writer.commit
        self._commit_batch = writer.commit_batch
        self._start_sealer()

    # ------------------------------------------------------------- writes
    def _after_write(self, position: int) -> None:
        if self._sync_each:
            self._durability.wait(position)  # type: ignore[union-attr]
        if self._writer.bytes_appended >= self._ckpt_due:  # type: ignore[union-attr]
            self._start_background_checkpoint()

    async def _after_write_async(self, position: int) -> None:
        if self._sync_each:
            await self._durability.wait_async(position)  # type: ignore[union-attr]
        if self._writer.bytes_appended >= self._ckpt_due:  # type: ignore[union-attr]
            self._start_background_checkpoint()

    def _set_checkpoint_mark(self) -> None:
        assert self._writer is not None
        self._ckpt_mark = self._writer.bytes_appended
        if self._checkpoint_bytes is not None:
            self._ckpt_due = self._ckpt_mark + self._checkpoint_bytes

    def _tail_bytes(self) -> int:
        """Bytes of log appended since the last checkpoint by this writer."""
        return 0 if self._writer is None else self._writer.bytes_appended - self._ckpt_mark

    def _check_writable(self) -> None:
        if self._closed:
            raise LogError("the log backend is closed")
        super()._check_writable()

    def sync(self) -> int:
        """Make every write so far durable; returns the durable position."""
        if self._durability is None:
            return self.position
        return self._durability.sync()

    def set_source(self, source: str | None) -> None:
        """Record the following writes under a new session with this source label."""
        with self._lock:
            if not self._writable:
                self._check_writable()
            assert self._writer is not None
            self.source = source
            self._writer.new_session(session_info(source))

    @property
    def durable_position(self) -> int:
        """Position up to which events are known to be on stable storage."""
        return self._durability.durable if self._durability is not None else self.position

    # -------------------------------------------------------- checkpoints
    def checkpoint(self, *, sync: bool = False) -> str | None:
        """Write a checkpoint of the current state; returns its path (None if read-only).

        The log is made durable up to the checkpoint first.  The checkpoint
        itself is synced unless ``fsync="never"`` (or with ``sync=True``).
        Raises LogError if it cannot be written (the log is unaffected).
        """
        if self._writer is None:
            return None
        with self._checkpointing:
            return self._write_checkpoint(force_sync=sync)

    def _write_checkpoint(self, force_sync: bool = False) -> str:
        assert self._writer is not None and self._durability is not None
        with self._lock:
            snap = snapshot_state(self._state, self._tables)
            resume = Resume(self._writer.segment_first, self._writer.offset,
                            self._writer.running_crc)
            self._set_checkpoint_mark()
        # Never let a checkpoint get ahead of the durable log.
        self._durability.wait(snap["position"])
        assert self.log_id is not None
        try:
            path = write_checkpoint(self.path, snap, resume, self.log_id, fs=self._fs,
                                    sync=force_sync or self.fsync != "never")
        except OSError as exc:
            tmp = os.path.join(self.path, "checkpoints", f"{snap['position']:020d}.ckpt.tmp")
            try:
                if self._fs.exists(tmp):
                    self._fs.remove(tmp)
            except OSError:
                pass
            raise LogError(f"could not write a checkpoint: {exc}") from exc
        self._ckpt_position = max(self._ckpt_position, snap["position"])
        self._ckpt_legacy = False
        for old in list_checkpoints(self.path)[KEEP_CHECKPOINTS:]:
            try:
                self._fs.remove(old.path)
            except OSError:
                pass
        return path

    def _tail_is_costly(self) -> bool:
        """Whether the log after the newest checkpoint is worth a checkpoint on close:
        many bytes, or a replay cost (keys, events, deletes) of about 0.1 s or more
        -- or the newest checkpoint is of an older version that loads many short
        sensors slowly (it has no column table: see telstate_log._checkpoint_table)."""
        limit = CLOSE_CHECKPOINT_BYTES if self._checkpoint_bytes is None \
            else min(self._checkpoint_bytes, CLOSE_CHECKPOINT_BYTES)
        if self._tail_bytes() >= limit:
            return True
        with self._lock:
            if self._ckpt_legacy and wants_table(self._state):
                return True
            events = self._state.position - self._ckpt_position
            if events * COST_PER_EVENT_MAX < CLOSE_CHECKPOINT_COST:
                return False  # cheap whatever they are (no pass over the state)
            return replay_cost(self._state, self._ckpt_position) >= CLOSE_CHECKPOINT_COST

    def _start_background_checkpoint(self) -> None:
        if not self._checkpointing.acquire(blocking=False):
            return
        self._set_checkpoint_mark()

        def run() -> None:
            try:
                self._write_checkpoint()
            except Exception as exc:  # a failed checkpoint only costs replay time
                logger.warning("background checkpoint failed: %s", exc)
            finally:
                self._checkpointing.release()

        self._ckpt_thread = threading.Thread(target=run, name="telstate-log-checkpoint",
                                             daemon=True)
        self._ckpt_thread.start()

    # ------------------------------------------------------------- sealing
    def _start_sealer(self) -> None:
        """Seal finished segments in a background thread (see telstate_log._sealer)."""
        assert self._writer is not None and self.log_id is not None
        try:
            seals = read_seals(self.path, self._fs)
        except SealFileError as exc:
            logger.error("not sealing segments: %s", exc)
            return
        # Under "never", segments were finished without syncs; writing the
        # seals syncs the directory, which would make their names durable
        # before their data: make everything written so far durable first.
        self._sealer = Sealer(self._fs, self.path, self.log_id, seals,
                              self._writer.sync if self.fsync == "never" else None)
        self._writer.rotated = self._sealer.enqueue

    def seal(self) -> str | None:
        """Finish and seal the current segment; returns the head hash (hex).

        Call it at the end of an observation and keep the hash: a later
        ``verify`` that reproduces it proves nothing before it changed.
        Raises LogError if sealing fails (a later call retries).
        """
        if self._writer is None:
            raise ReadOnlyError("a read-only backend cannot seal")
        if self._sealer is None:
            raise LogError("sealing is disabled: the seals file is damaged")
        with self._lock:
            if not self._writable:
                self._check_writable()
            self._writer.rotate_now()
        self._sealer.seal_pending()
        if self._sealer.error is not None:
            raise LogError(f"sealing failed: {self._sealer.error}")
        return self._sealer.head

    def prune(self, before: int | None = None,
              older_than: float | None = None) -> PruneReport:
        """Drop finished segments ending before position `before` (or finished
        more than `older_than` seconds ago), compacting their history into a
        checkpoint; time travel before the cut then raises HistoryUnavailableError.
        See :mod:`telstate_log._retention`."""
        if self._writer is None:
            raise ReadOnlyError("a read-only backend cannot prune the log")
        if self._sealer is not None:
            self._sealer.wait()  # never delete a segment the sealer is reading
        return prune_log(self, before, older_than)

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
        return self._reader().position_at_time(float(when), self.position)

    def history(self, key: bytes, sub_key: bytes | None = None) -> list[Event]:
        with self._lock:
            plan = key_history_plan(self._state, self._tables, key, sub_key)
        if plan is None:
            return []
        self._check_history(plan.start)
        events = self._reader().events(plan.start, plan.end, plan.wants)
        return [e for e in events if sub_key is None or e.sub_key in (None, sub_key)]

    def events(self, since: int = 1, until: int | None = None) -> list[Event]:
        since = max(1, since)
        self._check_history(since)
        until = self.position if until is None else until
        return list(self._reader().events(since, until))

    def session_info(self, session: int) -> dict[str, Any]:
        with self._lock:
            return dict(self._tables.sessions.get(session, {}))

    # ----------------------------------------------------------- following
    def _follow_step(self) -> bool:
        return follow_step(self)

    @property
    def follow_error(self) -> BaseException | None:
        """Why following stopped, if it did (a read-only backend only)."""
        return None if self._follower is None else self._follower.error

    # --------------------------------------------------------------- close
    def close(self) -> None:
        """Flush, sync (unless ``fsync="never"``), checkpoint a costly tail, release."""
        if self._closed:
            return
        self._closed = True
        self._writable = False
        if self._follower is not None:
            self._follower.stop()
        if self._ckpt_thread is not None:
            self._ckpt_thread.join()
        try:
            if self._writer is not None and self._durability is not None:
                if self._durability.failed is None and self._writer.failed is None:
                    if self.fsync != "never":
                        self._durability.sync()
                    if self._tail_is_costly():
                        self.checkpoint()
                if self._sealer is not None:  # while its pre-seal syncs still work
                    self._sealer.close()
                self._durability.close()
                self._writer.close()
        finally:
            self._release_lock()

    def __enter__(self) -> LogBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_lock_fd", -1) >= 0 and not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:  # interpreter shutdown: best effort
                pass

