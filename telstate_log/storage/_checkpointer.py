"""When a writer writes checkpoints, and how (for :class:`~telstate_log.storage._log.Log`).

Theory of operation
-------------------
A checkpoint is a snapshot of the state and id tables plus the resume point
in the log (segment, offset, running CRC), taken under the shared lock; it
is written after the log is durable up to it, so it never gets ahead of the
log.  A :class:`Checkpointer` writes one

* on request (:meth:`Checkpointer.checkpoint`),
* in a background thread after ``checkpoint_bytes`` of log since the last
  (:attr:`Checkpointer.due`, checked by the writer after each write), and
* on close when replaying the tail would be costly (:meth:`tail_is_costly`):
  judged by what replaying costs (events, keys created, deletes:
  :func:`~telstate_log.core._apply.apply_cost`) as well as by bytes -- 7 MB
  of one-sample keys replay slower than 16 MiB of samples.

Only one checkpoint is written at a time; the newest :data:`KEEP_CHECKPOINTS`
are kept.
"""

from __future__ import annotations

import logging
import os
import threading

from ..core._apply import COST_PER_EVENT_MAX, Tables, apply_cost
from ..core._errors import LogError
from ..core._state import State
from ._checkpoint import VERSION as CHECKPOINT_VERSION_1
from ._checkpoint import checkpoint_version, list_checkpoints, snapshot_state, write_checkpoint
from ._checkpoint_table import wants_table
from ._durability import Durability
from ._event_writer import LogWriter
from ._fileio import FileSystem
from ._recovery import Resume

__all__ = ["CLOSE_CHECKPOINT_BYTES", "CLOSE_CHECKPOINT_COST", "KEEP_CHECKPOINTS",
           "Checkpointer"]

logger = logging.getLogger("telstate_log")
KEEP_CHECKPOINTS = 2
#: close() checkpoints a tail of this many bytes (or checkpoint_bytes if less) ...
CLOSE_CHECKPOINT_BYTES = 16 << 20
#: ... or one whose replay would cost this much (see telstate_log.core._apply.apply_cost;
#: about 0.1 s): the size of a log says little about its replay time
CLOSE_CHECKPOINT_COST = 100_000


class Checkpointer:
    """Writes a writer's checkpoints and decides when (see module docstring)."""

    def __init__(self, fs: FileSystem, path: str, lock: threading.RLock, log_id: bytes,
                 state: State, tables: Tables, writer: LogWriter, durability: Durability, *,
                 checkpoint_bytes: int | None, sync: bool) -> None:
        self._fs = fs
        self._path = path
        self._lock = lock
        self._log_id = log_id
        self._state = state
        self._tables = tables
        self._writer = writer
        self._durability = durability
        self._checkpoint_bytes = checkpoint_bytes
        self._sync = sync
        self._running = threading.Lock()
        self._thread: threading.Thread | None = None
        self._mark = 0
        #: bytes_appended at which the writer starts a background checkpoint
        self.due = 1 << 62 if checkpoint_bytes is None else checkpoint_bytes
        newest = list_checkpoints(path)
        #: position of the newest checkpoint (replay starts after it)
        self.position = min(newest[0].position if newest else 0, state.position)
        # a checkpoint of an older version has no column table
        self._legacy = bool(newest) and \
            checkpoint_version(newest[0].path) == CHECKPOINT_VERSION_1

    def checkpoint(self, *, sync: bool = False) -> str:
        """Write a checkpoint now (waiting for one in progress); returns its path."""
        with self._running:
            return self._write(force_sync=sync)

    def _set_mark(self) -> None:
        self._mark = self._writer.bytes_appended
        if self._checkpoint_bytes is not None:
            self.due = self._mark + self._checkpoint_bytes

    def tail_bytes(self) -> int:
        """Bytes of log appended since the last checkpoint by this writer."""
        return self._writer.bytes_appended - self._mark

    def _write(self, force_sync: bool = False) -> str:
        with self._lock:
            snap = snapshot_state(self._state, self._tables)
            writer = self._writer
            resume = Resume(writer.segment_first, writer.offset, writer.running_crc)
            self._set_mark()
        # Never let a checkpoint get ahead of the durable log.
        self._durability.wait(snap["position"])
        try:
            path = write_checkpoint(self._path, snap, resume, self._log_id, fs=self._fs,
                                    sync=force_sync or self._sync)
        except OSError as exc:
            tmp = os.path.join(self._path, "checkpoints", f"{snap['position']:020d}.ckpt.tmp")
            try:
                if self._fs.exists(tmp):
                    self._fs.remove(tmp)
            except OSError:
                pass
            raise LogError(f"could not write a checkpoint: {exc}") from exc
        self.position = max(self.position, snap["position"])
        self._legacy = False
        for old in list_checkpoints(self._path)[KEEP_CHECKPOINTS:]:
            try:
                self._fs.remove(old.path)
            except OSError:
                pass
        return path

    def tail_is_costly(self) -> bool:
        """Whether the log after the newest checkpoint is worth a checkpoint on close:
        many bytes, or a replay cost (keys, events, deletes) of about 0.1 s or more
        -- or the newest checkpoint is of an older version that loads many short
        sensors slowly (it has no column table: see telstate_log.storage._checkpoint_table)."""
        limit = CLOSE_CHECKPOINT_BYTES if self._checkpoint_bytes is None \
            else min(self._checkpoint_bytes, CLOSE_CHECKPOINT_BYTES)
        if self.tail_bytes() >= limit:
            return True
        with self._lock:
            state = self._state
            if self._legacy and wants_table(state):
                return True
            events = state.position - self.position
            if events * COST_PER_EVENT_MAX < CLOSE_CHECKPOINT_COST:
                return False  # cheap whatever they are (no pass over the state)
            return apply_cost(state, self.position) >= CLOSE_CHECKPOINT_COST

    def start_background(self) -> None:
        """Write a checkpoint in a thread, unless one is being written."""
        if not self._running.acquire(blocking=False):
            return
        self._set_mark()

        def run() -> None:
            try:
                self._write()
            except Exception as exc:  # a failed checkpoint only costs replay time
                logger.warning("background checkpoint failed: %s", exc)
            finally:
                self._running.release()

        self._thread = threading.Thread(target=run, name="telstate-log-checkpoint",
                                        daemon=True)
        self._thread.start()

    def join(self) -> None:
        """Wait for a background checkpoint to finish."""
        if self._thread is not None:
            self._thread.join()
