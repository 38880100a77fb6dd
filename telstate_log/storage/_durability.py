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

So N concurrent writers cost about two fsyncs, not N.  Sync threads wait on a
condition variable; async tasks run the leader's fsync in a worker thread
and followers wait on anyio events woken through their own event loop, so
sync and async writers on one log share the same fsyncs.  For
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

__all__ = ["Durability"]


class Durability:
    """Tracks written/durable positions and runs shared fsyncs."""

    def __init__(self, sync_fn: Callable[[], None], written: Callable[[], int],
                 durable: int = 0, interval: float | None = None,
                 on_fail: Callable[[BaseException], None] | None = None) -> None:
        self._sync_fn = sync_fn
        self._on_fail = on_fail
        self._written = written
        self._cv = threading.Condition(threading.Lock())
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

    def _do_sync(self, target: int) -> None:
        error: BaseException | None = None
        try:
            self._sync_fn()
        except BaseException as exc:
            error = exc
        with self._cv:
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
            while True:
                target = self._begin(position)
                if target == -1:
                    return
                if target is not None:
                    break
                self._cv.wait()
        self._do_sync(target)
        self.wait(position)  # our event may have come after the target

    async def wait_async(self, position: int) -> None:
        """Like :meth:`wait` for async tasks (fsync runs in a worker thread)."""
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
                await anyio.to_thread.run_sync(self._do_sync, target)
            else:
                await event.wait()

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
