"""The single-writer lock of a log directory.

A writer holds an exclusive ``flock`` on ``<log>/LOCK`` (which records its
pid for the error message) for as long as it has the log open; the kernel
releases it when the process dies, so a crashed writer never leaves a stale
lock.  Readers never take it.
"""

from __future__ import annotations

import fcntl
import os

from ._errors import LogLockedError

__all__ = ["acquire_lock", "release_lock"]


def acquire_lock(path: str) -> int:
    """Take the writer lock of the log at `path`; returns the lock's descriptor."""
    lock_path = os.path.join(path, "LOCK")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        except OSError:
            holder = ""
        os.close(fd)
        raise LogLockedError(f"log {path!r} is locked by another writer"
                             + (f" (pid {holder})" if holder else "")
                             + "; open it with readonly=True to follow it") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release_lock(fd: int) -> None:
    """Release a lock taken by :func:`acquire_lock` (closing releases the flock)."""
    if fd >= 0:
        os.close(fd)
