"""LogBackend: telescope state in an append-only segment log on disk.

Theory of operation
-------------------
Every successful write becomes an event in the log (format:
:mod:`telstate_log._format`); the materialised
:class:`~telstate_log._state.State` serves all reads.  Opening a log loads
the newest valid checkpoint and replays the segments after it
(:mod:`telstate_log._recovery`), truncating a torn tail and refusing any
other damage.

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

import itertools
import logging
import os
import queue
import threading
import zlib
from typing import Any

from .. import _format as fmt
from .._checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    snapshot_state,
    write_checkpoint,
)
from .._durability import Durability
from .._errors import HistoryUnavailableError, LogCorruptError, LogError, ReadOnlyError
from .._fileio import FileSystem, OsFileSystem
from .._follower import Follower
from .._history import Event, EventReader
from .._lockfile import acquire_lock, release_lock
from .._recovery import Resume, Tail, classify_tail, list_segments, replay_segments
from .._replayer import Replayer, ReplayError, Tables
from .._retention import PruneReport, prune_log, read_pruned
from .._seal import Seal, SealFileError, genesis, read_seals, seal_segment, write_seals
from .._state import Indexed, State
from .._types import ImmutableKeyUpdate, IndexedKeyUpdate, KeyUpdateBase, MutableKeyUpdate
from .._writer import LogWriter, create_segment, session_info
from ._state_backend import StateBackend

__all__ = ["FSYNC_POLICIES", "LogBackend"]

logger = logging.getLogger("telstate_log")
FSYNC_POLICIES = ("always", "interval", "never")
DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_CHECKPOINT_BYTES = 256 << 20
KEEP_CHECKPOINTS = 2


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
        (None: only on :meth:`checkpoint` and, for a large tail, on close).
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
        self._closed = False
        self._checkpointing = threading.Lock()
        self._ckpt_thread: threading.Thread | None = None
        self._ckpt_mark = 0
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
            state, tables, tail = self._recover(use_checkpoints)
            super().__init__(state)
            self._tables = tables
            self._tail = tail
            self.log_id = tail.log_id
            if not readonly:
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

    def _recover(self, use_checkpoints: bool) -> tuple[State, Tables, Tail]:
        mode = "read" if self.readonly else "write"
        if not self.readonly:
            for name in self._fs.listdir(self.path):
                if name.endswith(".seg.tmp"):  # an interrupted segment creation
                    self._fs.remove(os.path.join(self.path, name))
        failed: list[tuple[str, BaseException]] = []
        if use_checkpoints:
            log_id = self._first_log_id()
            for cp in list_checkpoints(self.path):
                try:
                    state, tables, resume = load_checkpoint(cp.path, log_id)
                    replayer = Replayer(state, tables)
                    tail = replay_segments(self._fs, self.path, replayer, resume=resume,
                                           mode=mode)
                    if tail.segment_first is None:
                        raise CheckpointError("log has no segments")
                    self._set_aside(failed)
                    return state, tables, tail
                except (CheckpointError, LogCorruptError) as exc:
                    logger.warning("ignoring checkpoint %s: %s", cp.path, exc)
                    failed.append((cp.path, exc))
        state = State(keep_history=True)
        tables = Tables()
        pruned = read_pruned(self._fs, self.path)
        if pruned > 1:
            # Without a checkpoint a pruned log cannot be rebuilt: report the
            # real damage (from replaying after a checkpoint) if there was one.
            for _path, error in failed:
                if isinstance(error, LogCorruptError):
                    raise error
            raise LogCorruptError(f"the log was pruned before position {pruned} and no valid "
                                  "checkpoint covers the pruned part", self.path)
        # A full replay that fails shows the damage is in the log, not in the
        # checkpoints: then keep them and raise.
        tail = replay_segments(self._fs, self.path, Replayer(state, tables), mode=mode)
        self._set_aside(failed)
        return state, tables, tail

    def _set_aside(self, failed: list[tuple[str, BaseException]]) -> None:
        """Rename checkpoints proven unusable (the log opened without them)."""
        if self.readonly:
            return
        for path, _exc in failed:
            try:  # never try it again; keep it for forensics
                self._fs.rename(path, path + ".bad")
            except OSError:
                pass

    def _is_sealed(self, first: int) -> bool:
        try:
            return any(s.first == first for s in read_seals(self.path, self._fs))
        except SealFileError:
            return False

    def _first_log_id(self) -> bytes | None:
        segs = list_segments(self._fs, self.path)
        if not segs:
            return None
        header = fmt.parse_header(self._fs.read(os.path.join(self.path, segs[0][1]), 0,
                                                fmt.HEADER_SIZE))
        return None if isinstance(header, str) else header.log_id

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
        for old in list_checkpoints(self.path)[KEEP_CHECKPOINTS:]:
            try:
                self._fs.remove(old.path)
            except OSError:
                pass
        return path

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
        """Seal finished segments in a background thread (see telstate_log._seal)."""
        assert self._writer is not None and self.log_id is not None
        self._seals: list[Seal] | None
        try:
            self._seals = read_seals(self.path, self._fs)
        except SealFileError as exc:
            logger.error("not sealing segments: %s", exc)
            self._seals = None
            return
        self._seal_jobs: queue.Queue[tuple[int, int] | None] = queue.Queue()
        self._seal_error: BaseException | None = None
        segments = list_segments(self._fs, self.path)
        sealed = {s.segment for s in self._seals}
        for (first, name), (nxt, _) in itertools.pairwise(segments):
            if name not in sealed and (not self._seals or first > self._seals[-1].first):
                self._seal_jobs.put((first, nxt))
        self._writer.rotated = lambda old, new: self._seal_jobs.put((old, new))
        self._sealer = threading.Thread(target=self._run_sealer, name="telstate-log-seal",
                                        daemon=True)
        self._sealer.start()

    def _run_sealer(self) -> None:
        assert self.log_id is not None and self._seals is not None
        backlog: list[tuple[int, int]] = []
        while True:
            job = self._seal_jobs.get()
            try:
                if job is None:
                    return
                if job != (0, 0):  # (0, 0) only asks to retry the backlog
                    backlog.append(job)
                while backlog:
                    self._seal_one(*backlog[0])
                    backlog.pop(0)
                self._seal_error = None
            except Exception as exc:  # kept in order, retried by the next job or seal()
                self._seal_error = exc
                logger.error("sealing segment failed (will retry): %s", exc)
            finally:
                self._seal_jobs.task_done()

    def _seal_one(self, first: int, nxt: int) -> None:
        assert self.log_id is not None and self._seals is not None
        name = fmt.segment_name(first)
        if self.fsync == "never" and self._writer is not None:
            # Segments were finished without syncs.  Writing the seals syncs the
            # directory, which would make their names durable before their
            # data: make everything written so far durable first.
            self._writer.sync()
        prev = bytes.fromhex(self._seals[-1].seal) if self._seals else genesis(self.log_id)
        new = seal_segment(self._fs, self.path, name, first, nxt - 1, prev)
        write_seals(self.path, [*self._seals, new], self._fs)
        self._seals.append(new)

    def seal(self) -> str | None:
        """Finish and seal the current segment; returns the head hash (hex).

        Call it at the end of an observation and keep the hash: a later
        ``verify`` that reproduces it proves nothing before it changed.
        Raises LogError if sealing fails (a later call retries).
        """
        if self._writer is None:
            raise ReadOnlyError("a read-only backend cannot seal")
        if self._seals is None:
            raise LogError("sealing is disabled: the seals file is damaged")
        with self._lock:
            if not self._writable:
                self._check_writable()
            self._writer.rotate_now()
        self._seal_jobs.put((0, 0))
        self._seal_jobs.join()
        if self._seal_error is not None:
            raise LogError(f"sealing failed: {self._seal_error}")
        return self.head_hash

    def prune(self, before: int | None = None,
              older_than: float | None = None) -> PruneReport:
        """Drop finished segments ending before position `before` (or finished
        more than `older_than` seconds ago), compacting their history into a
        checkpoint; time travel before the cut then raises HistoryUnavailableError.
        See :mod:`telstate_log._retention`."""
        if self._writer is None:
            raise ReadOnlyError("a read-only backend cannot prune the log")
        if self._seals is not None:
            self._seal_jobs.join()  # never delete a segment the sealer is reading
        return prune_log(self, before, older_than)

    @property
    def head_hash(self) -> str | None:
        """The latest seal (hex), or None if no segment is sealed yet."""
        seals = getattr(self, "_seals", None)
        if seals is None and self._writer is None:
            try:
                seals = read_seals(self.path, self._fs)
            except SealFileError:
                return None
        return seals[-1].seal if seals else None

    # ------------------------------------------------------ history (audit)
    def _reader(self) -> EventReader:
        writer = self._writer
        return EventReader(self._fs, self.path, self._tables, lock=self._lock,
                           flush=writer.flush if writer is not None else None)

    def _check_history(self, since: int) -> None:
        if since < self._state.history_from:
            raise HistoryUnavailableError(f"history before position "
                                          f"{self._state.history_from} was pruned")

    def resolve_time(self, when: float) -> int:
        return self._reader().position_at_time(float(when), self.position)

    def history(self, key: bytes, sub_key: bytes | None = None) -> list[Event]:
        with self._lock:
            kid = self._tables.key_ids.get(key)
            state = self._state
            live = state.entry(key)
            buried = state.graveyard.get(key, [])
            if kid is None or (live is None and not buried):
                return []
            start = min([e.created for e, _ in buried] + ([live.created] if live else []))
            removals = {d for e, d in buried
                        if sub_key is None or (type(e) is Indexed and sub_key in e.values)}
            end = state.position
        self._check_history(start)

        def want(kind: int, key_id: int, pos: int) -> bool:
            if kind == fmt.CLEAR or kind == fmt.DELETE:
                return pos in removals
            if key_id != kid:
                return False
            return sub_key is None or kind == fmt.INDEXED

        events = self._reader().events(start, end, want)
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
        """Apply whatever the writer appended since the last step."""
        fs = self._fs
        tail = self._tail
        if tail.segment_first is None:
            first_name = os.path.join(self.path, fmt.segment_name(1))
            if not fs.exists(first_name):
                return False
            with self._lock:
                state, tables = self._state, self._tables
                self._tail = replay_segments(fs, self.path, Replayer(state, tables),
                                             mode="read")
                self.log_id = self._tail.log_id
            return self._tail.segment_first is not None
        seg_path = os.path.join(self.path, fmt.segment_name(tail.segment_first))
        size = fs.size(seg_path)
        if size > tail.offset:
            data = fs.read(seg_path, tail.offset - 4, size - tail.offset + 4)
            mv = memoryview(data)
            scan = fmt.scan_frames(mv, 4, len(data), tail.crc)
            if scan.problem is not None and scan.end == 4 and not classify_tail(data, scan):
                raise LogCorruptError(scan.problem, seg_path,
                                      tail.offset - 4 + scan.problem_offset)
            if len(scan.offsets):
                self._apply_followed(mv, scan, seg_path, tail.offset - 4)
                self._tail = Tail(tail.segment_first, tail.offset - 4 + scan.end, scan.crc,
                                  tail.log_id, tail.segments)
                return True
            if scan.problem is not None:
                return False  # the writer is mid-write: wait for the rest
        # Finished this segment?  Move on when the next one exists.
        next_path = os.path.join(self.path, fmt.segment_name(self._state.position + 1))
        if self._state.position + 1 != tail.segment_first and fs.exists(next_path):
            data = fs.read(next_path, 0, fmt.HEADER_SIZE)
            header = fmt.parse_header(data)
            if isinstance(header, str):
                raise LogCorruptError(header, next_path, 0)
            if header.log_id != self.log_id:
                raise LogCorruptError("segment belongs to another log", next_path, 32)
            self._tail = Tail(header.first_position, fmt.HEADER_SIZE, zlib.crc32(data),
                              tail.log_id, tail.segments + 1)
            return True
        return False

    def _apply_followed(self, mv: memoryview, scan: fmt.Scan, seg_path: str,
                        base: int) -> None:
        with self._lock:
            try:
                dec = Replayer(self._state, self._tables).apply(
                    mv, scan, segment=self._tail.segment_first or 0, base=base)
            except ReplayError as exc:
                raise LogCorruptError(exc.reason, seg_path, base + exc.offset) from None
            if self._hub.active:
                self._publish_followed(mv, dec)

    def _publish_followed(self, mv: memoryview, dec: fmt.Decoded) -> None:
        hub = self._hub
        keys = self._tables.keys
        for i in range(len(dec.kinds)):
            kind = int(dec.kinds[i])
            if kind == fmt.CLEAR:
                hub.publish_all(KeyUpdateBase())
            elif kind in fmt.EVENT_KINDS:
                key = keys[int(dec.event["key"][i])]
                if hub.watched(key):
                    update = _followed_update(mv, dec, i, kind, key)
                    hub.publish(key, lambda u=update: u)  # type: ignore[misc]

    @property
    def follow_error(self) -> BaseException | None:
        """Why following stopped, if it did (a read-only backend only)."""
        return None if self._follower is None else self._follower.error

    # --------------------------------------------------------------- close
    def close(self) -> None:
        """Flush, sync (unless ``fsync="never"``), checkpoint a long tail, release."""
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
                    if self._checkpoint_bytes is not None and \
                            self._tail_bytes() >= min(self._checkpoint_bytes, 16 << 20):
                        self.checkpoint()
                self._durability.close()
                self._writer.close()
                if getattr(self, "_seals", None) is not None:
                    self._seal_jobs.put(None)
                    self._sealer.join()
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


def _followed_update(mv: memoryview, dec: fmt.Decoded, i: int, kind: int,
                     key: bytes) -> KeyUpdateBase:
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
