"""Errors raised by telstate_log.

Theory of operation
-------------------
The public names match katsdptelstate's so that code can switch imports.
Errors are few and named for the decision the caller has to make:

* :exc:`ImmutableKeyError`, :exc:`InvalidTimestampError`, :exc:`EncodeError`:
  the caller asked for something the data model forbids; fix the call.
* :exc:`DecodeError`, :exc:`RdbParseError`, :exc:`LogCorruptError`: stored
  bytes are not what they should be; nothing was changed, decide whether to
  repair or to give up.
* :exc:`LogLockedError`: another writer owns the log; open it read-only or
  wait.
* :exc:`LogWriteError`: one write failed (disk full) and was rolled back;
  free space and retry.
* :exc:`LogFailedError`: the log can no longer guarantee durability (an
  fsync or a rollback failed); reopen the log to recover a consistent prefix.
* :exc:`ReadOnlyError`, :exc:`HistoryUnavailableError`: the object cannot do
  this at all (a read-only view, or a backend that keeps no history).
* :exc:`TimeoutError`, :exc:`CancelledError`, :exc:`ConnectionError`: the
  same as katsdptelstate's.

Interoperability with katsdptelstate
------------------------------------
telstate_log backends can be driven by katsdptelstate's own front ends, which
catch *katsdptelstate's* exception classes.  Exception matching in Python uses
real subclassing (ABC registration does not count), so when
``katsdptelstate.errors`` has been imported, constructing one of our errors
returns an instance of a class derived from both ours and katsdptelstate's
error of the same name.  ``except telstate_log.ImmutableKeyError`` and
``except katsdptelstate.ImmutableKeyError`` then both catch it.  Nothing is
imported on our side: if katsdptelstate is not loaded, our classes are used
as they are.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = [
    "CancelledError",
    "ConnectionError",
    "DecodeError",
    "EncodeError",
    "HistoryUnavailableError",
    "ImmutableKeyError",
    "InvalidKeyError",
    "InvalidTimestampError",
    "LogCorruptError",
    "LogError",
    "LogFailedError",
    "LogLockedError",
    "LogWriteError",
    "RdbAofPreambleError",
    "RdbParseError",
    "RdbUnsupportedTypeError",
    "ReadOnlyError",
    "TelstateError",
    "TimeoutError",
]

_mixed: dict[type, type] = {}


def _interop_class(cls: type) -> type:
    """Return `cls`, or a subclass of it that is also katsdptelstate's namesake."""
    theirs_module = sys.modules.get("katsdptelstate.errors")
    if theirs_module is None:
        return cls
    mixed = _mixed.get(cls)
    if mixed is not None:
        return mixed
    # A subclass without a namesake names the katsdptelstate class it stands for.
    theirs = getattr(theirs_module, cls.__dict__.get("_interop_name", cls.__name__), None)
    if not isinstance(theirs, type) or issubclass(cls, theirs):
        return cls
    try:
        meta: Any = type(cls)
        mixed = meta(cls.__name__, (cls, theirs), {"__module__": cls.__module__,
                                                   "__doc__": cls.__doc__,
                                                   "_interop_mixed": True})
    except TypeError:  # incompatible layouts: keep ours
        mixed = cls
    _mixed[cls] = mixed
    return mixed


class _ErrorMeta(type):
    """Metaclass that mints katsdptelstate-compatible instances (see module doc)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        target = cls if cls.__dict__.get("_interop_mixed") else _interop_class(cls)
        return type.__call__(target, *args, **kwargs)


class TelstateError(RuntimeError, metaclass=_ErrorMeta):
    """Base class for errors from this package."""


class ConnectionError(TelstateError):
    """The connection to the Redis server failed."""


class RdbParseError(TelstateError):
    """An RDB file (or DUMP payload) is malformed.

    Attributes
    ----------
    filename
        The file being parsed, if known.
    offset
        Byte offset of the problem within the file, if known.
    reason
        What was wrong.
    """

    def __init__(self, filename: Any = None, reason: str = "", offset: int | None = None) -> None:
        Exception.__init__(self, filename, reason, offset)
        self.filename = filename
        self.reason = reason
        self.offset = offset

    def __str__(self) -> str:
        name = repr(self.filename) if self.filename else "object"
        text = f"Invalid RDB file {name}"
        if self.offset is not None:
            text += f" at byte {self.offset}"
        if self.reason:
            text += f": {self.reason}"
        return text


class RdbUnsupportedTypeError(RdbParseError):
    """An RDB file holds a key of a type telescope state cannot hold (a list,
    set, stream or module value); `offset` is the key's record.

    Attributes (besides :exc:`RdbParseError`'s): `key` (bytes) and `rdb_type`,
    the RDB value type number.  Caught by ``except RdbParseError`` (ours and,
    when it is loaded, katsdptelstate's).
    """

    _interop_name = "RdbParseError"

    def __init__(self, filename: Any = None, reason: str = "", offset: int | None = None,
                 key: bytes | None = None, rdb_type: int | None = None) -> None:
        super().__init__(filename, reason, offset)
        self.args = (filename, reason, offset, key, rdb_type)
        self.key = key
        self.rdb_type = rdb_type


class RdbAofPreambleError(RdbParseError):
    """The file is an append-only file whose first part is an RDB snapshot
    (Redis' ``aof-use-rdb-preamble``), not a plain RDB file; `offset` is where
    the AOF commands start.  Caught by ``except RdbParseError``.
    """

    _interop_name = "RdbParseError"


class InvalidKeyError(TelstateError):
    """Kept for compatibility with katsdptelstate; never raised."""


class InvalidTimestampError(TelstateError):
    """A timestamp is negative, NaN or infinite."""


class ImmutableKeyError(TelstateError):
    """An immutable key (or indexed sub-key) would change, or a key has the wrong type."""


class TimeoutError(TelstateError):
    """A wait for a key timed out."""


class CancelledError(TelstateError):
    """A wait for a key was cancelled."""


class DecodeError(ValueError, TelstateError):
    """An encoded value could not be decoded."""


class EncodeError(ValueError, TelstateError):
    """A value could not be encoded."""


class LogError(TelstateError):
    """Base class for errors concerning the on-disk log."""


class LogCorruptError(LogError):
    """The log holds damaged data that is not a torn tail.

    Nothing was modified.  ``path`` and ``offset`` name the first damaged
    byte; :func:`telstate_log.repair_log` salvages the good prefix.
    """

    def __init__(self, message: str, path: Any = None, offset: int | None = None) -> None:
        Exception.__init__(self, message, path, offset)
        self.message = message
        self.path = path
        self.offset = offset

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = f" in {self.path}"
            if self.offset is not None:
                where += f" at byte {self.offset}"
        return f"{self.message}{where}"


class LogLockedError(LogError):
    """Another process (or object) holds the write lock on this log."""

    #: the writer's process id, when its lock file names one
    pid: int | None = None


class LogFailedError(LogError):
    """A write or fsync failed; the log refuses further writes.

    After a failed fsync the kernel may have dropped the dirty pages, so the
    writer cannot know what is on disk.  Close the backend and reopen the log:
    recovery yields a consistent prefix of the acknowledged writes.
    """


class LogWriteError(LogError):
    """Writing an event failed (disk full, I/O error); nothing was recorded.

    The partial write was rolled back, so the log is unchanged and still
    usable: free space (``errno`` is ENOSPC for a full disk) and retry.
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        Exception.__init__(self, message, errno)
        self.message = message
        self.errno = errno

    def __str__(self) -> str:
        return self.message


class ReadOnlyError(TelstateError):
    """A write was attempted on a read-only backend or view."""


class HistoryUnavailableError(TelstateError):
    """The requested history is not kept (memory backend) or was pruned."""


class SharedLogError(TelstateError):
    """Base class for errors of a shared log kept in a Redis stream."""


class ReplicationError(SharedLogError):
    """A write reached the primary but fewer replicas than asked for confirmed it.

    The write is applied and recorded (its position is :attr:`position`), but
    it may not survive a failover: if the primary fails before a replica has
    it, the write can be lost and its position reused by another write.
    """

    def __init__(self, message: str, position: int = 0, acknowledged: int = 0) -> None:
        super().__init__(message)
        self.position = position
        self.acknowledged = acknowledged


class StreamDivergedError(SharedLogError):
    """The stream holds a different event at a position already archived or applied.

    Raised by archivers and followers instead of merging two histories (an
    unreplicated write lost in a failover whose position was reused).
    """

    def __init__(self, message: str, position: int = 0) -> None:
        super().__init__(message)
        self.position = position


class StreamCorruptError(SharedLogError):
    """A stream entry is not a valid record of a shared log."""
