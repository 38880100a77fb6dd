"""When a writer writes checkpoints, and how (for :class:`~telstate_log.storage._log.Log`).

Theory of operation
-------------------
A checkpoint is a snapshot of the state and id tables plus the resume point
in the log (segment, offset, running CRC), taken under the shared lock; it
is written after the log is durable up to it, so it never gets ahead of the
log.  A :class:`Checkpointer` writes one

* on request (:meth:`Checkpointer.checkpoint`),
* in a background thread after ``max(checkpoint_bytes, min(SPACING x the
  size of the previous checkpoint, SPACING_MAX))`` of log since the last
  (:attr:`Checkpointer.due`, checked by the writer after each write; see
  *Spacing* below), and
* on close when replaying the tail would be costly (:meth:`tail_is_costly`):
  judged by what replaying costs (events, keys created, deletes:
  :func:`~telstate_log.core._apply.apply_cost`) as well as by bytes -- 7 MB
  of one-sample keys replay slower than 16 MiB of samples.

Only one checkpoint is written at a time; the newest :data:`KEEP_CHECKPOINTS`
are kept.

Spacing.  A checkpoint costs in proportion to the state (its size), not to
the log since the last one, so a fixed interval in bytes makes the
amortised cost per write grow with the run.  Spacing checkpoints by at
least :data:`SPACING` x the previous checkpoint's size of new log keeps
checkpoint work a bounded fraction of write work: on the telescope
workload (tools/bench_telescope.py, 64 dishes x 1 h: 36.5 MB checkpoint
of 75 MB of log) a checkpoint costs 1-5 ms of CPU per MB (crc32 and
writes, which release the GIL, plus about 20 ms of per-key Python that
holds it; the first, cold one the most), while
writing costs about 60 ms of CPU per MB of log (4.7 us per ~75-byte
event), so with SPACING = 1 checkpoints take at most about 2-8% of the
write work however long the run.  The price is replay: after kill -9 a
reopen replays at most ``max(checkpoint_bytes, min(SPACING x state size,
SPACING_MAX))`` of log (plus what was written while the last checkpoint
was being written), about 11 ms per MB.  The state stays below the default 128 MiB
checkpoint_bytes until about 3.5 h at 64 dishes, so a 4 h log keeps about
that bound.  The worst case is a writer killed while it writes a checkpoint:
the replay starts from the one before (the first checkpoint: from the start
of the log).  With 256 MiB a 4 h log (about 410 MB) had one checkpoint,
written near its end, and a writer killed before it was done replayed the
whole log (3.6 s); with 128 MiB it has three, and the tail is at most about
128 MiB plus what was written while a checkpoint was being written (about
1.5-2 s).  Past that the replay after
kill -9 grows like the state (about as long as replaying a log the size of
the state; a larger SPACING would halve the checkpoint work and double
that), up to :data:`SPACING_MAX` (1 GiB of log, about 12 s, reached at a
state of 1 GiB: about a day at 64 dishes), which bounds it whatever the
run; beyond that, checkpoint work grows again with the state.  A clean
close is unaffected: it checkpoints a costly tail.
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

__all__ = ["CLOSE_CHECKPOINT_BYTES", "CLOSE_CHECKPOINT_COST", "KEEP_CHECKPOINTS", "SPACING",
           "SPACING_MAX", "Checkpointer"]

logger = logging.getLogger("telstate_log")
KEEP_CHECKPOINTS = 2
#: close() checkpoints a tail of this many bytes (or checkpoint_bytes if less) ...
CLOSE_CHECKPOINT_BYTES = 16 << 20
#: ... or one whose replay would cost this much (see telstate_log.core._apply.apply_cost;
#: about 0.1 s): the size of a log says little about its replay time
CLOSE_CHECKPOINT_COST = 100_000
#: the next background checkpoint waits for at least this many times the
#: previous checkpoint's size of new log (see "Spacing" in the module docstring)
SPACING = 1
#: ... but never more than this many bytes (bounds the replay after a crash)
SPACING_MAX = 1 << 30


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
        #: size of the last checkpoint this writer wrote (0: none yet; after a
        #: reopen the first one comes after checkpoint_bytes, as the tail
        #: replayed on opening is not in bytes_appended)
        self.last_size = 0
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
        self._schedule()

    def _schedule(self) -> None:
        """Set `due` from the mark and the last checkpoint's size (see "Spacing")."""
        if self._checkpoint_bytes is not None:
            self.due = self._mark + max(self._checkpoint_bytes,
                                         min(SPACING * self.last_size, SPACING_MAX))

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
        try:
            self.last_size = self._fs.size(path)
        except OSError:
            pass
        self._schedule()
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
