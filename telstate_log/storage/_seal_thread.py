"""The writer's sealing thread: seals finished segments in order, off the write path.

Theory of operation
-------------------
When the writer finishes a segment (rotation, or ``seal()`` forcing one) it
enqueues ``(first position, next segment's first position)``.  One thread
seals jobs strictly in order (the chain depends on the previous seal),
writing the ``seals`` file crash-safely after each (see
:mod:`telstate_log.storage._seal`).  A failed job stays at the head of a backlog and is
retried, still in order, by the next job or by :meth:`Sealer.seal_pending`;
the chain never skips a segment.  At start-up, finished segments left
unsealed by a crash are enqueued first.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections.abc import Callable

from ..core import _log_format as fmt
from ._fileio import FileSystem
from ._recovery import list_segments
from ._seal import Seal, genesis, seal_segment, write_seals

__all__ = ["Sealer"]

logger = logging.getLogger("telstate_log")
_RETRY = (0, 0)  # a job that only asks to retry the backlog


class Sealer:
    """Seals the finished segments of one log (see module docstring)."""

    def __init__(self, fs: FileSystem, path: str, log_id: bytes, seals: list[Seal],
                 before_seal: Callable[[], None] | None = None) -> None:
        self._fs = fs
        self._path = path
        self._log_id = log_id
        self.seals = seals
        #: called before a seal is written (e.g. to make unsynced data durable)
        self._before_seal = before_seal
        self.error: BaseException | None = None
        self._jobs: queue.Queue[tuple[int, int] | None] = queue.Queue()
        # Jobs are numbered: wait() waits for the jobs queued before it, never
        # for jobs finished later (under steady writes the queue need never empty).
        self._progress = threading.Condition()
        self._queued = 0
        self._attempted = 0
        sealed = {s.segment for s in seals}
        for (first, name), (nxt, _) in itertools.pairwise(list_segments(fs, path)):
            if name not in sealed and (not seals or first > seals[-1].first):
                self._put((first, nxt))
        self._thread = threading.Thread(target=self._run, name="telstate-log-seal",
                                        daemon=True)
        self._thread.start()

    @property
    def head(self) -> str | None:
        return self.seals[-1].seal if self.seals else None

    def _put(self, job: tuple[int, int] | None) -> int:
        with self._progress:
            self._queued += 1
            ticket = self._queued
            self._jobs.put(job)
        return ticket

    def _wait_for(self, ticket: int) -> None:
        with self._progress:
            self._progress.wait_for(lambda: self._attempted >= ticket
                                    or not self._thread.is_alive())

    def enqueue(self, first: int, next_first: int) -> None:
        """Seal segment `first`, finished when `next_first` began."""
        self._put((first, next_first))

    def wait(self) -> None:
        """Wait until every job queued so far was attempted (no retry)."""
        with self._progress:
            ticket = self._queued
        self._wait_for(ticket)

    def seal_pending(self) -> None:
        """Retry any backlog and wait for the jobs queued so far; the error (if any)
        stays in `error`."""
        self._wait_for(self._put(_RETRY))

    def close(self) -> None:
        """Seal every job queued so far, then stop the thread."""
        self._put(None)
        self._thread.join()

    def _run(self) -> None:
        backlog: list[tuple[int, int]] = []
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if job != _RETRY:
                    backlog.append(job)
                while backlog:
                    self._seal_one(*backlog[0])
                    backlog.pop(0)
                self.error = None
            except Exception as exc:  # kept in order, retried by the next job
                self.error = exc
                logger.error("sealing segment failed (will retry): %s", exc)
            finally:
                with self._progress:
                    self._attempted += 1
                    self._progress.notify_all()

    def _seal_one(self, first: int, nxt: int) -> None:
        if self._before_seal is not None:
            self._before_seal()
        prev = bytes.fromhex(self.seals[-1].seal) if self.seals else genesis(self._log_id)
        new = seal_segment(self._fs, self._path, fmt.segment_name(first), first, nxt - 1,
                           prev)
        write_seals(self._path, [*self.seals, new], self._fs)
        self.seals.append(new)
