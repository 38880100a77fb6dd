"""Group commit: writers waiting for their events to be durable share fsyncs.

Theory of operation
-------------------
The writer's *written* position is the last event it committed (buffered
or handed to the OS); the sync function flushes and fsyncs.
A writer that needs it *durable* (``fsync="always"``, or ``sync()``) waits:

* if the durable position already covers it, it returns at once;
* if no fsync is running, it becomes the *leader*: it notes the current
  written position as the target, runs one fsync (outside every lock), and
  advances the durable position to the target;
* otherwise it *follows*: it sleeps until the running fsync ends, then
  checks again (leading the next fsync if its event came too late for the
  running one).

So N concurrent writers cost about two fsyncs, not N.

Gathering.  The writers released by one fsync write again while the next
one is already running (its leader took as target what was written during
the previous fsync), so each would get one write per two fsyncs: N writers
at most N/2 writes per fsync.  So a leader first *gathers*: if more than
one writer was waiting when the previous fsync ended (others are active),
it waits -- before taking its target -- until as many writers are waiting
again, or at most :data:`GATHER_FRACTION` of the last fsync's duration
(never more than :data:`GATHER_MAX`).  That adds a bounded latency (a
quarter of an fsync, paid in full only when a released writer does not come
back) and lets about N writes share each fsync; a lone writer never gathers,
so it pays nothing.  (A tenth was too short for Python threads: eight
writers released together take a few hundred microseconds to write again on
two cores, and with a 2 ms fsync a tenth let only about 7 of 8 share it.)
The contract is unchanged: a write returns only once an fsync that began
after it was committed has ended.

Sync threads wait on a condition variable; async tasks run the leader's
gather and fsync in a worker thread and followers wait on anyio events woken
through their own event loop, so sync and async writers on one log share
the same fsyncs.  For
``fsync="interval"`` a timer thread leads an fsync whenever something was
written and ``interval`` seconds have passed.

A failed fsync is final (the page cache may have dropped the data, so a retry
could report success for data that is gone): every current and future
waiter gets :exc:`LogFailedError`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import anyio
import anyio.lowlevel
import anyio.to_thread

from ..core._errors import LogFailedError

__all__ = ["GATHER_FRACTION", "GATHER_MAX", "Durability"]

#: a leader gathers for at most this fraction of the last fsync's duration ...
GATHER_FRACTION = 0.25
#: ... and never more than this many seconds
GATHER_MAX = 0.005


class Durability:
    """Tracks written/durable positions and runs shared fsyncs."""

    def __init__(self, sync_fn: Callable[[], None], written: Callable[[], int],
                 durable: int = 0, interval: float | None = None,
                 on_fail: Callable[[BaseException], None] | None = None) -> None:
        self._sync_fn = sync_fn
        self._on_fail = on_fail
        self._written = written
        lock = threading.Lock()
        self._cv = threading.Condition(lock)
        # a gathering leader waits on this (same lock) for writers to arrive
        self._gather_cv = threading.Condition(lock)
        #: positions the writers waiting for durability wait for
        self._waiting: list[int] = []
        #: writers that began waiting so far; that count when the last fsync
        #: ended; how many waiters that fsync released
        self._arrivals = 0
        self._arrivals_mark = 0
        self._released = 0
        #: a leader is gathering now; how many times one gathered
        self.gathering = False
        self.gathers = 0
        self._last_fsync = 0.0
        self.durable = durable
        self.syncing = False
        self.failed: BaseException | None = None
        self.fsyncs = 0
        self._async_waiters: list[tuple[anyio.Event, int, anyio.lowlevel.EventLoopToken]] = []
        self._closing = False
        self._timer: threading.Thread | None = None
        if interval is not None:
            self._timer = threading.Thread(target=self._run_timer, args=(interval,),
                                           name="telstate-log-fsync", daemon=True)
            self._timer.start()

    # ---------------------------------------------------------------- writers
    @property
    def written(self) -> int:
        """Last position committed by the writer (maybe not yet durable)."""
        return self._written()

    @property
    def waiters(self) -> int:
        """Writers waiting for durability now."""
        return len(self._waiting)

    def _raise_failed(self) -> None:
        raise LogFailedError(f"the log can no longer be written: fsync failed ({self.failed})")

    def _begin(self, position: int) -> int | None:
        """Under the lock: -1 if durable, a target if we lead, None to follow."""
        if self.failed is not None:
            self._raise_failed()
        if self.durable >= position:
            return -1
        if not self.syncing:
            self.syncing = True
            return self.written
        return None

    def _arrive(self, position: int) -> None:
        """Under the lock: one more writer waits for durability."""
        self._waiting.append(position)
        self._arrivals += 1
        if self.gathering:
            self._gather_cv.notify()

    def _gather(self) -> int:
        """Under the lock, as leader: wait for the writers the last fsync released
        (see "Gathering" in the module docstring); returns the target."""
        want = self._arrivals_mark + self._released
        if self._released > 1 and self._arrivals < want:
            deadline = time.monotonic() + min(GATHER_MAX, GATHER_FRACTION * self._last_fsync)
            self.gathering = True
            self.gathers += 1
            try:
                while self._arrivals < want:
                    remain = deadline - time.monotonic()
                    if remain <= 0 or not self._gather_cv.wait(remain):
                        break
            finally:
                self.gathering = False
        return self.written

    def _lead(self) -> None:
        """As leader (`syncing` set by us): gather, then run one fsync."""
        with self._cv:
            target = self._gather()
        self._do_sync(target)

    def _do_sync(self, target: int) -> None:
        error: BaseException | None = None
        start = time.monotonic()
        try:
            self._sync_fn()
        except BaseException as exc:
            error = exc
        with self._cv:
            self._last_fsync = time.monotonic() - start
            if error is None and target > self.durable:
                self._released = sum(p <= target for p in self._waiting)
                self._arrivals_mark = self._arrivals
            self.syncing = False
            self.fsyncs += 1
            if error is not None:
                self.failed = error
                if self._on_fail is not None:
                    self._on_fail(error)  # the writer refuses every later write
            elif target > self.durable:
                self.durable = target
            self._cv.notify_all()
            waiters, self._async_waiters = self._async_waiters, []
        for event, thread, token in waiters:
            if thread == threading.get_ident():
                event.set()
            else:
                try:
                    token.backend_class.run_sync_soon(event.set, (), token.native_token)
                except Exception:  # the waiter's event loop is gone
                    pass
        if error is not None:
            raise LogFailedError(f"fsync failed: {error}") from error

    def wait(self, position: int) -> None:
        """Block until `position` is durable (leading an fsync if needed)."""
        with self._cv:
            if self._begin_counted(position) == -1:
                return
        try:
            while True:
                with self._cv:
                    while True:
                        target = self._begin(position)
                        if target == -1:
                            return
                        if target is not None:
                            break
                        self._cv.wait()
                # our event may have come after the target: check again
                self._lead()
        finally:
            with self._cv:
                self._waiting.remove(position)

    def _begin_counted(self, position: int) -> int | None:
        """Under the lock: -1 if `position` is durable; else counts a waiter
        (to be uncounted when it returns) and gives None."""
        if self.failed is not None:
            self._raise_failed()
        if self.durable >= position:
            return -1
        self._arrive(position)
        return None

    async def wait_async(self, position: int) -> None:
        """Like :meth:`wait` for async tasks (gather and fsync run in a worker thread)."""
        with self._cv:
            if self._begin_counted(position) == -1:
                return
        try:
            while True:
                with self._cv:
                    target = self._begin(position)
                    if target == -1:
                        return
                    if target is None:
                        event = anyio.Event()
                        self._async_waiters.append(
                            (event, threading.get_ident(), anyio.lowlevel.current_token()))
                if target is not None:
                    await anyio.to_thread.run_sync(self._lead)
                else:
                    await event.wait()
        finally:
            with self._cv:
                self._waiting.remove(position)

    def sync(self) -> int:
        """Make everything written so far durable; returns the durable position."""
        with self._cv:
            target = self.written
        self.wait(target)
        return target

    # ------------------------------------------------------------------ timer
    def _run_timer(self, interval: float) -> None:
        next_due = time.monotonic() + interval
        while True:
            with self._cv:
                while not self._closing:
                    remain = next_due - time.monotonic()
                    if remain <= 0:
                        break
                    self._cv.wait(remain)
                if self._closing:
                    return
                next_due = time.monotonic() + interval
                pending = self.written > self.durable and not self.syncing \
                    and self.failed is None
                target = self.written
                if pending:
                    self.syncing = True
            if pending:
                try:
                    self._do_sync(target)
                except LogFailedError:
                    return

    def close(self) -> None:
        """Stop the timer thread (does not sync; call :meth:`sync` first)."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.join()
