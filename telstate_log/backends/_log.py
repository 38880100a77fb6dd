"""LogBackend: telescope state in an append-only segment log on disk.

Theory of operation
-------------------
A :class:`LogBackend` is a thin adapter: the materialised
:class:`~telstate_log.core._state.State` (a :class:`StateBackend`) serves
every read, and an :class:`~telstate_log.storage._event_log.EventLog` keeps
every change as an event.  The log is a
:class:`~telstate_log.storage._log.Log` over segment files (which owns the
lock file, writer, durability, checkpoints, seals, retention, history and
following: see its docstring for the durability contract of ``fsync``); any
other EventLog can stand in for it (:meth:`LogBackend.from_log`).

Writes go straight to the log: the State's commit hooks are the log's
``append`` / ``append_batch``, and ``after_append`` runs once the lock is
released (durability, due checkpoints) when the log's writer flags that it
has work (``after_due``: every write under ``fsync="always"``, otherwise
only once a checkpoint is due).  The backend keeps what is about
readers: monitors (its hub), which a follower's ``on_applied`` callback
feeds with the events another process wrote.

Durability contract -- what is on disk when a write call returns (the
README's "Durability contract"): ``fsync="always"``: on stable storage
(concurrent writers share fsyncs); ``"interval"`` (default): in the writer's
buffer, handed to the OS within ``flush_interval`` (5 ms) of the first
buffered write, so a killed process loses only the writes still in the
buffer (none with ``flush_interval=0``), and fsynced within
``fsync_interval`` seconds (a power loss loses at most that much more);
``"never"``: as ``"interval"`` for a killed process, and the OS decides
when it reaches the disk.  Whatever the policy, recovery yields exactly the
state after some prefix of the writes.  A writer holds an exclusive lock on
``LOCK``; a second writer gets :exc:`LogLockedError`.  ``readonly=True``
opens without the lock and follows the log as its writer appends: indexes
stay current and monitors fire on the writer's events.
"""

from __future__ import annotations

import os
from typing import Any

from ..core._errors import LogError
from ..core._events import Event
from ..core._state import State
from ..core._types import KeyUpdateBase
from ..storage._event_log import EventLog
from ..storage._fileio import FileSystem, OsFileSystem
from ..storage._follow import Applied
from ..storage._log import DEFAULT_CHECKPOINT_BYTES, DEFAULT_SEGMENT_BYTES, FSYNC_POLICIES, Log
from ..storage._retention import PruneReport
from ._state_backend import ALWAYS_AFTER, StateBackend

__all__ = ["FSYNC_POLICIES", "LogBackend"]


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
        checkpoint would take long (:data:`CLOSE_CHECKPOINT_COST`, in
        :mod:`telstate_log.storage._checkpointer`), so a
        cleanly closed log reopens fast whatever its shape.
    """

    _log: EventLog

    def __init__(self, path: str | os.PathLike[str], *, fsync: str = "interval",
                 fsync_interval: float = 1.0, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 readonly: bool = False, source: str | None = None,
                 checkpoint_bytes: int | None = DEFAULT_CHECKPOINT_BYTES,
                 flush_interval: float = 0.005, use_checkpoints: bool = True,
                 fs: FileSystem | None = None, follow: bool = True) -> None:
        log, state = Log.open(path, fsync=fsync, fsync_interval=fsync_interval,
                              segment_bytes=segment_bytes, readonly=readonly, source=source,
                              checkpoint_bytes=checkpoint_bytes, flush_interval=flush_interval,
                              use_checkpoints=use_checkpoints,
                              fs=fs if fs is not None else OsFileSystem())
        self._attach(log, state, source=source, follow=follow)

    @classmethod
    def from_log(cls, log: EventLog, state: State, *, source: str | None = None,
                 follow: bool = True) -> LogBackend:
        """A backend over an open `log` and the `state` it recovered."""
        backend = cls.__new__(cls)
        cls._attach(backend, log, state, source=source, follow=follow)
        return backend

    def _attach(self, log: EventLog, state: State, *, source: str | None,
                follow: bool) -> None:
        super().__init__(state, log.lock)
        self._log = log
        self.path = log.path
        self.fsync = log.fsync
        self.readonly = self._readonly = log.readonly
        self.source = source
        self._closed = False
        self._writable = not log.readonly
        # The write path calls the log's own methods: no call in between.
        self._commit = log.append
        self._commit_sample = log.append_sample
        self._commit_batch = log.append_batch
        self._commit_batches = log.append_batches
        self._after_write = log.after_append  # type: ignore[method-assign]
        self._after_write_async = log.after_append_async  # type: ignore[method-assign]
        # The segment log's writer flags when after_append has work; any other
        # EventLog gets the call after every write.
        writer = log.writer if isinstance(log, Log) else None
        self._after = writer if writer is not None else ALWAYS_AFTER
        if log.readonly:
            log.follow(self._on_applied, self._on_replaced, watch=follow)

    @property
    def log(self) -> EventLog:
        """The event log behind this backend."""
        return self._log

    @property
    def log_id(self) -> bytes | None:
        """The log's id (None for a reader of a log not yet written)."""
        return self._log.log_id

    # ------------------------------------------------------------- writes
    def _check_writable(self) -> None:
        if self._closed:
            raise LogError("the log backend is closed")
        super()._check_writable()

    def sync(self) -> int:
        """Make every write so far durable; returns the durable position."""
        return self._log.sync()

    def set_source(self, source: str | None) -> None:
        """Record the following writes under a new session with this source label."""
        with self._lock:
            if not self._writable:
                self._check_writable()
            self.source = source
            self._log.new_session(source)

    @property
    def durable_position(self) -> int:
        """Position up to which events are known to be on stable storage."""
        return self._log.durable_position

    # ----------------------------------------------- checkpoints, seals, prune
    def checkpoint(self, *, sync: bool = False) -> str | None:
        """Write a checkpoint of the current state; returns its path (None if read-only).

        The log is made durable up to the checkpoint first.  The checkpoint
        itself is synced unless ``fsync="never"`` (or with ``sync=True``).
        Raises LogError if it cannot be written (the log is unaffected).
        """
        return self._log.checkpoint(sync=sync)

    def seal(self) -> str | None:
        """Finish and seal the current segment; returns the head hash (hex).

        Call it at the end of an observation and keep the hash: a later
        ``verify`` that reproduces it proves nothing before it changed.
        Raises LogError if sealing fails (a later call retries).
        """
        return self._log.seal()

    def prune(self, before: int | None = None,
              older_than: float | None = None) -> PruneReport:
        """Drop finished segments ending before position `before` (or finished
        more than `older_than` seconds ago), compacting their history into a
        checkpoint; time travel before the cut then raises HistoryUnavailableError.
        See :mod:`telstate_log.storage._retention`."""
        return self._log.prune(before, older_than)

    @property
    def head_hash(self) -> str | None:
        """The latest seal (hex), or None if no segment is sealed yet."""
        return self._log.head_hash

    # ------------------------------------------------------ history (audit)
    def resolve_time(self, when: float) -> int:
        return self._log.resolve_time(when)

    def history(self, key: bytes, sub_key: bytes | None = None) -> list[Event]:
        return self._log.key_history(key, sub_key)

    def events(self, since: int = 1, until: int | None = None) -> list[Event]:
        return self._log.events(since, until)

    def session_info(self, session: int) -> dict[str, Any]:
        return self._log.session_info(session)

    def session_ids(self) -> list[int]:
        """The sessions recorded in the log, in order (see :meth:`session_info`)."""
        return self._log.session_ids()

    # ----------------------------------------------------------- following
    def _on_applied(self, applied: Applied) -> None:
        """The follower applied another process's events: notify monitors."""
        hub = self._hub
        if not hub.active:
            return
        for key, update in applied.updates(hub.watched):
            if key is None:
                hub.publish_all(update)
            else:
                hub.publish(key, lambda u=update: u)  # type: ignore[misc]

    def _on_replaced(self, state: State) -> None:
        """The follower reloaded the state after a prune: serve it, tell monitors."""
        self._state = state
        self._hub.publish_all(KeyUpdateBase())

    @property
    def follow_error(self) -> BaseException | None:
        """Why following stopped, if it did (a read-only backend only)."""
        return self._log.follow_error

    # --------------------------------------------------------------- close
    def close(self) -> None:
        """Flush, sync (unless ``fsync="never"``), checkpoint a costly tail, release."""
        if self._closed:
            return
        self._closed = True
        self._writable = False
        self._log.close()

    def __enter__(self) -> LogBackend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
