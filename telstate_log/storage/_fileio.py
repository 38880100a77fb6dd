"""The small file-system interface the log writes through.

Theory of operation
-------------------
Every file operation whose ordering matters for crash safety -- creating,
writing, syncing, truncating, renaming and removing files, and syncing
directories -- goes through a :class:`FileSystem`.  :class:`OsFileSystem`
maps each method to one system call.  Tests substitute a recording file
system to enumerate the states a power loss could leave, or a faulty one to
inject ENOSPC, EIO and short writes.  Reads go through it too, so a
simulated file system is complete.
"""

from __future__ import annotations

import errno
import os
from typing import Any

__all__ = ["FileSystem", "OsFileSystem", "replace_file", "write_all"]

_HAS_FDATASYNC = hasattr(os, "fdatasync")
_O_BINARY = getattr(os, "O_BINARY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class FileSystem:
    """File operations used by the log (see module docstring)."""

    def create(self, path: str) -> int:
        """Create a new file (must not exist) for writing; returns a descriptor."""
        raise NotImplementedError

    def open_append(self, path: str) -> int:
        """Open an existing file for appending; returns a descriptor."""
        raise NotImplementedError

    def write(self, fd: int, data: bytes | memoryview) -> int:
        """Write some of `data` at the end; returns the number of bytes written."""
        raise NotImplementedError

    def sync(self, fd: int) -> None:
        """Make the file's data (and the size) durable (fdatasync)."""
        raise NotImplementedError

    def truncate(self, fd: int, size: int) -> None:
        raise NotImplementedError

    def close(self, fd: int) -> None:
        raise NotImplementedError

    def sync_dir(self, path: str) -> None:
        """Make the directory's entries (creates, renames, removes) durable."""
        raise NotImplementedError

    def rename(self, src: str, dst: str) -> None:
        raise NotImplementedError

    def remove(self, path: str) -> None:
        raise NotImplementedError

    def read(self, path: str, offset: int = 0, size: int = -1) -> bytes:
        """Read a file (from `offset`, at most `size` bytes; -1 for all)."""
        raise NotImplementedError

    def size(self, path: str) -> int:
        raise NotImplementedError

    def listdir(self, path: str) -> list[str]:
        raise NotImplementedError

    def makedirs(self, path: str) -> None:
        raise NotImplementedError

    def exists(self, path: str) -> bool:
        raise NotImplementedError


class OsFileSystem(FileSystem):
    """The real file system: one system call per method."""

    def create(self, path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY | _O_CLOEXEC,
                       0o644)

    def open_append(self, path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | _O_BINARY | _O_CLOEXEC)

    def write(self, fd: int, data: bytes | memoryview) -> int:
        return os.write(fd, data)

    def sync(self, fd: int) -> None:
        if _HAS_FDATASYNC:
            os.fdatasync(fd)
        else:  # pragma: no cover - macOS, Windows
            os.fsync(fd)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def sync_dir(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        except OSError as exc:  # pragma: no cover - platforms without directory fds
            if exc.errno in (errno.EACCES, errno.EISDIR):
                return
            raise
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)

    def read(self, path: str, offset: int = 0, size: int = -1) -> bytes:
        with open(path, "rb") as f:
            if offset:
                f.seek(offset)
            return f.read(size)

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)


def write_all(fs: FileSystem, fd: int, data: bytes | memoryview) -> None:
    """Write all of `data`, retrying short writes; raises OSError on failure."""
    view: Any = memoryview(data)
    while len(view):
        n = fs.write(fd, view)
        if n <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[n:]


def replace_file(fs: FileSystem, directory: str, name: str, data: bytes, *,
                 sync: bool = True, sync_dir: bool = True) -> None:
    """Replace (or create) ``directory/name`` with `data` crash-safely.

    Writes ``name.tmp``, syncs it, renames it over `name` and syncs the
    directory: after a crash the file holds either the old or the new bytes.
    With ``sync=False`` (``fsync="never"``) nothing is synced: the rename
    still never exposes a partly written file to a running reader, but after
    a power loss the file may be empty (recovery copes with that).
    With ``sync_dir=False`` the caller syncs the directory itself (one sync
    after renaming several files into it).
    """
    path = f"{directory}/{name}"
    tmp = path + ".tmp"
    if fs.exists(tmp):
        fs.remove(tmp)
    fd = fs.create(tmp)
    try:
        write_all(fs, fd, data)
        if sync:
            fs.sync(fd)
    finally:
        fs.close(fd)
    fs.rename(tmp, path)
    if sync and sync_dir:
        fs.sync_dir(directory)
