"""Watching a log directory for growth from another process.

Theory of operation
-------------------
A read-only Log (storage._log) follows a log that another process writes.  A
:class:`DirectoryWatcher` blocks until the directory may have changed: on
Linux it uses inotify (through ctypes: no polling while idle, wake-up within
a fraction of a millisecond of a write); elsewhere, or if inotify is not
available, it polls with a short sleep that backs off from 1 ms to 10 ms
while nothing changes.  Either way it also wakes every ``max_wait`` seconds,
so a missed notification can only delay, never stop, the follower.

:class:`Follower` runs a thread that waits on the watcher and calls a step
function (the log's "read what is new and apply it") until stopped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import sys
import threading
from collections.abc import Callable

__all__ = ["DirectoryWatcher", "Follower"]

logger = logging.getLogger("telstate_log")

_IN_MODIFY = 0x00000002
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000


def _load_inotify() -> tuple[Callable[..., int], Callable[..., int]] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        init = libc.inotify_init1
        add = libc.inotify_add_watch
    except (OSError, AttributeError):
        return None
    init.argtypes = [ctypes.c_int]
    init.restype = ctypes.c_int
    add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    add.restype = ctypes.c_int
    return init, add


_INOTIFY = _load_inotify()


class DirectoryWatcher:
    """Blocks until a directory's files may have changed (see module docstring)."""

    def __init__(self, path: str, max_wait: float = 0.5, use_inotify: bool = True) -> None:
        self._max_wait = max_wait
        self._fd = -1
        if use_inotify and _INOTIFY is not None:
            init, add = _INOTIFY
            fd = init(_IN_NONBLOCK | _IN_CLOEXEC)
            if fd >= 0:
                mask = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
                if add(fd, os.fsencode(path), mask) >= 0:
                    self._fd = fd
                else:
                    os.close(fd)
        r, w = os.pipe()
        self._wake_r, self._wake_w = r, w

    @property
    def uses_inotify(self) -> bool:
        return self._fd >= 0

    def wait(self, idle_rounds: int) -> None:
        """Wait for a change (or the backstop timeout, or :meth:`wake`).

        `idle_rounds` counts the consecutive waits that found nothing new; the
        polling fallback backs off from 1 ms to 10 ms with it.
        """
        if self._fd >= 0:
            fds = [self._fd, self._wake_r]
            timeout = self._max_wait
        else:
            fds = [self._wake_r]
            timeout = min(0.01, 0.001 * (1 << min(idle_rounds, 4)))
        ready, _, _ = select.select(fds, [], [], timeout)
        for fd in ready:
            try:
                os.read(fd, 65536)  # drain what is queued; select says it won't block
            except BlockingIOError:
                pass

    def wake(self) -> None:
        """Make a current or the next :meth:`wait` return promptly."""
        try:
            os.write(self._wake_w, b"x")
        except OSError:  # pragma: no cover - pipe closed
            pass

    def close(self) -> None:
        for fd in (self._fd, self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:  # pragma: no cover
                    pass
        self._fd = self._wake_r = self._wake_w = -1


class Follower:
    """A thread that applies a log's growth as another process writes it."""

    def __init__(self, path: str, step: Callable[[], bool], *, use_inotify: bool = True,
                 name: str = "telstate-log-follow") -> None:
        self._watcher = DirectoryWatcher(path, use_inotify=use_inotify)
        self._step = step
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def uses_inotify(self) -> bool:
        return self._watcher.uses_inotify

    def _run(self) -> None:
        idle = 0
        try:
            while not self._stop.is_set():
                if self._step():
                    idle = 0
                    continue  # drain everything available before sleeping
                self._watcher.wait(idle)
                idle += 1
        except BaseException as exc:
            self.error = exc
            logger.error("log follower stopped: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._watcher.wake()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        self._watcher.close()
