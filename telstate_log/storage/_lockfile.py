"""The single-writer lock of a log directory.

A writer holds an exclusive ``flock`` on ``<log>/LOCK`` (which records its
pid for the error message) for as long as it has the log open; the kernel
releases it when the process dies, so a crashed writer never leaves a stale
lock.  Readers never take it.
"""

from __future__ import annotations

import fcntl
import os

from ..core._errors import LogLockedError

__all__ = ["acquire_lock", "release_lock", "writer_active"]


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
        error = LogLockedError(f"log {path!r} is locked by another writer"
                               + (f" (pid {holder})" if holder else "")
                               + "; open it with readonly=True to follow it")
        error.pid = int(holder) if holder.isdigit() else None
        raise error from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release_lock(fd: int) -> None:
    """Release a lock taken by :func:`acquire_lock` (closing releases the flock)."""
    if fd >= 0:
        os.close(fd)


def writer_active(path: str) -> bool:
    """Whether a process holds the writer lock of the log at `path` now.

    Read from ``/proc/locks`` without touching the lock (taking even a shared
    lock to test it would make a starting writer fail), so it is Linux only:
    elsewhere, or for a lock held on another host, the answer is False.
    """
    try:
        st = os.stat(os.path.join(path, "LOCK"))
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            table = f.read()
    except OSError:
        return False
    target = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in table.splitlines():
        # "1: FLOCK  ADVISORY  WRITE 14046 fe:00:2146328 0 EOF"; "->" marks a waiter
        fields = line.split()
        if "->" in fields or "FLOCK" not in fields:
            continue
        where = fields[fields.index("FLOCK") + 4:][:1]
        parts = where[0].split(":") if where else []
        try:
            if len(parts) == 3 and \
                    (int(parts[0], 16), int(parts[1], 16), int(parts[2])) == target:
                return True
        except ValueError:
            continue
    return False
