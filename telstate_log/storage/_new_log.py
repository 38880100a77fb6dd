"""A log directory created for one job, and removed again if the job fails.

Theory of operation
-------------------
A job that creates a log (``telstate-log import IN.rdb NEW_LOG``) must leave
either a complete log or nothing: not an empty log after a refused file, an
interrupt or a full disk.  :func:`make_log_dir` creates the directory and any
missing parents one level at a time with ``mkdir``, which fails if the
directory exists, so a directory someone else made in the meantime is never
claimed; it returns the topmost directory it made (None if the log's
directory already existed: then nothing will be removed).

:func:`discard_log` undoes that after the job's log has been closed.  It
first retakes the log's writer lock: if another writer has opened the log
since, the log is theirs and is left alone.  Holding the lock, it removes
every entry of the directory (the ``LOCK`` file last), then the directory,
then each parent it made, stopping at the first one that is not empty.
Failures to remove are returned (the caller's own error is what matters),
never raised.

:class:`NewLog` ties the two to a ``with`` block: ``make()`` just before the
log is opened, ``keep()`` once the job has succeeded; leaving the block any
other way -- an exception, KeyboardInterrupt, or an early ``return`` --
discards what ``make()`` created.
"""

from __future__ import annotations

import os
import shutil
from types import TracebackType

from ..core._errors import LogLockedError
from ._lockfile import acquire_lock, release_lock

__all__ = ["NewLog", "discard_log", "make_log_dir"]

_LOCK_NAME = "LOCK"


def make_log_dir(path: str) -> str | None:
    """Create the directory `path` and its missing parents; return the topmost
    directory created, or None if `path` already existed."""
    path = os.path.abspath(path)
    missing: list[str] = []
    head = path
    while not os.path.isdir(head):
        missing.append(head)
        parent = os.path.dirname(head)
        if parent == head:
            break
        head = parent
    made: str | None = None
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            if made is None:        # made by someone else: ours start below it
                continue
            raise
        if made is None:
            made = directory
    return made


def discard_log(path: str, made: str) -> list[str]:
    """Remove the log at `path` and the directories :func:`make_log_dir` made,
    up to `made`; returns the problems met (empty if all went)."""
    path = os.path.abspath(path)
    try:
        lock = acquire_lock(path)
    except LogLockedError:
        return [f"{path} is open by another writer; left in place"]
    except OSError as exc:
        return [f"{path}: {exc}"] if os.path.isdir(path) else []
    problems: list[str] = []
    try:
        for name in sorted(os.listdir(path), key=lambda n: n == _LOCK_NAME):
            entry = os.path.join(path, name)
            try:
                if os.path.isdir(entry) and not os.path.islink(entry):
                    shutil.rmtree(entry)
                else:
                    os.remove(entry)
            except OSError as exc:
                problems.append(f"{entry}: {exc}")
        if not problems:
            os.rmdir(path)          # still under the lock: no writer can slip in
    except OSError as exc:
        problems.append(f"{path}: {exc}")
    finally:
        release_lock(lock)
    directory = path
    while not problems and directory != made:
        directory = os.path.dirname(directory)
        try:
            os.rmdir(directory)
        except OSError:
            break                   # someone else has used it since: keep it
    return problems


class NewLog:
    """A log directory that is removed again unless the job using it succeeds
    (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.made: str | None = None      #: the topmost directory make() created
        self.kept = False
        self.problems: list[str] = []     #: what could not be removed

    @property
    def created(self) -> bool:
        """Whether make() created the log's directory (the log is new)."""
        return self.made is not None

    def make(self) -> None:
        """Create the log's directory and missing parents (nothing if it exists)."""
        self.made = make_log_dir(self.path)

    def keep(self) -> None:
        """The job succeeded: keep the log."""
        self.kept = True

    def __enter__(self) -> NewLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.made is None or self.kept:
            return
        self.problems = discard_log(self.path, self.made)
        if self.problems and exc is not None and hasattr(exc, "add_note"):
            exc.add_note("could not remove the new log: " + "; ".join(self.problems))
