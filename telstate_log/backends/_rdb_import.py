"""Import a Redis RDB file into a state backend (``load_from_file``).

Theory of operation
-------------------
Every key of the file becomes ordinary write events, as if a client had
written it: a string is ``set_immutable``, a hash one ``set_indexed`` per
field, a zset one bulk ``add_mutable_many`` per key (the log records
ADD_BATCH frames) with the samples' own timestamps.  The import runs in
three steps, so that a bad file or a conflict changes *nothing*:

1. **Read and validate everything** (no lock held; :func:`read_rdb`, and
   steps 2 and 3 are :func:`apply_rdb`).  The whole file goes
   through :class:`~._rdb_reader.RdbReader`, which checks every byte
   (katsdptelstate writes a zero CRC, so the checksum alone proves
   nothing); any problem raises :exc:`RdbParseError` with the offset before
   the backend is touched.  Zsets are kept compactly
   (:class:`~._rdb_samples.Samples`: a small zset whose members all have one
   length comes from the reader as one joined blob, checked whole, and is
   split with numpy when applied).  Peak
   memory is about the file size plus the member list of the largest key,
   roughly what the imported state holds anyway; a validation-only first
   pass would keep memory lower but parse the file twice (parsing is about
   40% of an import).
2. **Plan under the backend's lock.**  Each key is compared with the
   current state (read directly: the lock is held) using our write
   semantics: an equal immutable (or sub-key) is skipped, a different
   one or a key of another type raises :exc:`ImmutableKeyError` naming
   the key; samples already stored are dropped.  Nothing has been written
   yet when a conflict is found.
3. **Apply under the same lock**, so no other writer can interleave or
   invalidate the plan: key by key, except that many new small sensors are
   created together after the other keys (:mod:`._rdb_samples`; the same
   events and state, without the fixed costs of a write per key).  For a
   :class:`~telstate_log.backends.LogBackend`
   the events are recorded under a session whose source label names the
   file (``import:<basename>`` unless `source` is given); the previous
   label is restored afterwards.  Durability (``fsync="always"``) and
   checkpoint scheduling are handled once, after the lock is released.

Re-importing a file already loaded plans no events and writes nothing.  Only
a failure during step 3 -- an I/O error of the log itself (disk full) or an
interrupt (Ctrl-C) -- can leave part of a file imported; each event written
is valid on its own, and importing the file again completes it.
:func:`telstate_log.replay.import_rdb_to_log` removes a log it created
when the import fails for any reason, so a failed import into a new log
leaves nothing behind; it reads and validates the file before it opens or
creates the log.

Telescope state has no expiry.  A key whose expiry time in the file has
already passed is skipped, as redis-server does when it loads the file
(judged against one reading of `clock` taken when the import starts: a key
is expired if its expiry is before that millisecond); a key with a future
expiry is imported for good.  :class:`ImportStats` counts both.

Only one database is imported: by default the file must hold keys in
database 0 alone (other databases raise :exc:`RdbParseError` naming them);
pass `db` to pick one and ignore the rest (a `db` with no keys in the file
raises :exc:`RdbParseError` naming the databases it has).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import IO, TYPE_CHECKING, Any, Union, cast

from ..core._encoding import decode_value, same_immutable_value
from ..core._errors import DecodeError, ImmutableKeyError, RdbParseError
from ..core._progress import ProgressCallback
from ..core._types import KeyType
from ..rdb._reader import RdbReader, Source
from ._rdb_samples import BULK_MIN, Samples, apply_bulk, new_samples

if TYPE_CHECKING:
    from ..core._state import CommitBatch, State
    from ._state_backend import StateBackend
    from ._state_writer import StateWriter

__all__ = ["FileArg", "ImportStats", "RdbContents", "apply_rdb", "import_rdb", "load_rdb_into",
           "read_rdb"]

FileArg = Union[str, bytes, "os.PathLike[Any]", IO[bytes]]
_Payload = Union[bytes, dict[bytes, bytes], "Samples"]
_PROGRESS_KEYS = 256          # keys read between two "read" progress reports


@dataclass(frozen=True)
class ImportStats:
    """What an import did."""

    keys: int        #: keys of the imported database in the file (expired ones left out)
    samples: int     #: sensor samples in the file
    bytes: int       #: size of the file
    seconds: float   #: wall-clock time of the whole import
    events: int      #: new events written (0 if the file was already loaded)
    position: int    #: backend position afterwards
    expired: int = 0         #: keys skipped because their expiry time had passed
    expiry_dropped: int = 0  #: keys imported without the (future) expiry time they had

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Step:
    """One key's planned writes."""

    __slots__ = ("count", "key", "kind", "payload")

    def __init__(self, key: bytes, kind: KeyType, payload: Any, count: int) -> None:
        self.key = key
        self.kind = kind
        self.payload = payload
        self.count = count


def _describe(file: FileArg) -> tuple[Source, str | None, int]:
    """``(reader source, file name if known, size in bytes)`` for a path or file object."""
    if isinstance(file, (str, bytes, os.PathLike)):
        path = os.fsdecode(os.fspath(file))
        return path, path, os.path.getsize(path)
    data = file.read()
    if not isinstance(data, bytes):
        raise TypeError("RDB file objects must be opened in binary mode")
    name = getattr(file, "name", None)
    return data, name if isinstance(name, str) else None, len(data)


class RdbContents:
    """A read and validated RDB file, ready for :func:`apply_rdb` (once)."""

    __slots__ = ("entries", "expired", "expiry_dropped", "filename", "samples", "size",
                 "started")

    def __init__(self, entries: list[tuple[bytes, KeyType, _Payload]], samples: int,
                 expired: int, expiry_dropped: int, filename: str | None, size: int,
                 started: float) -> None:
        self.entries = entries
        self.samples = samples
        self.expired = expired
        self.expiry_dropped = expiry_dropped
        self.filename = filename
        self.size = size
        self.started = started


def read_rdb(file: FileArg, *, db: int | None = None, progress: ProgressCallback | None = None,
             clock: Callable[[], float] = time.time) -> RdbContents:
    """Read and validate an RDB file (step 1 of :func:`import_rdb`; same arguments)."""
    started = time.perf_counter()
    reader_source, filename, size = _describe(file)
    return _read(reader_source, filename, size, db, progress, clock, started)


def _read(source: Source, filename: str | None, size: int, db: int | None,
          progress: ProgressCallback | None, clock: Callable[[], float],
          started: float) -> RdbContents:
    """Parse and validate the whole file, keeping the live keys of the chosen db."""
    wanted = 0 if db is None else db
    entries: list[tuple[bytes, KeyType, _Payload]] = []
    others: set[int] = set()
    samples = expired = expiry_dropped = 0
    now_ms = math.floor(clock() * 1000)     # what redis-server compares expiry times with
    append = entries.append
    mutable = KeyType.MUTABLE
    with RdbReader(source, filename=filename) as reader:
        for entry_db, key, kind, raw, expires in reader.blocks(Samples):
            if expires is not None:
                if expires < now_ms:
                    expired += entry_db == wanted
                    continue
                expiry_dropped += entry_db == wanted
            if entry_db != wanted:
                others.add(entry_db)
                continue
            value: _Payload
            if kind is mutable:
                value = raw if isinstance(raw, Samples) else Samples.of_members(
                    cast("list[bytes]", raw))
                samples += value.count
            else:
                value = cast("bytes | dict[bytes, bytes]", raw)
            append((key, kind, value))
            if progress is not None and len(entries) % _PROGRESS_KEYS == 0:
                progress("read", len(entries), None)
    if db is None and others:
        listed = ", ".join(map(str, sorted(others)))
        raise RdbParseError(filename, f"keys in database(s) {listed} as well as 0; choose one "
                            "database to import (db=N, or --db N on the command line)")
    if db is not None and not entries and not expired:
        held = ", ".join(map(str, sorted(others)))
        raise RdbParseError(filename, f"no keys in database {db}" + (
            f"; the file has keys in database(s) {held}" if held else "; the file holds no keys"))
    return RdbContents(entries, samples, expired, expiry_dropped, filename, size, started)


def _conflict(key: bytes, label: str, reason: str) -> ImmutableKeyError:
    text = key.decode("utf-8", "backslashreplace")  # keys are text, shown as such
    return ImmutableKeyError(f"cannot import key {text!r} from {label}: {reason}; "
                             "nothing was imported")


def _sub_key_text(sub_key: bytes) -> str:
    """An encoded sub-key as the value it encodes (its bytes if it does not decode)."""
    try:
        return repr(decode_value(sub_key))
    except (DecodeError, ValueError):
        return repr(sub_key)


def _steps_for(state: State, entries: Iterable[tuple[bytes, KeyType, _Payload]],
               label: str, bulk: list[tuple[bytes, Samples]] | None = None) -> list[_Step]:
    """Check `entries` against the state (lock held); return the writes that change
    something (new sensors whose members have one length go to `bulk` if given)."""
    steps: list[_Step] = []
    for key, kind, value in entries:
        have = state.key_type(key)
        if have is not None and have is not kind:
            raise _conflict(key, label, f"it is {have.name.lower()} here but "
                            f"{kind.name.lower()} in the file")
        if kind is KeyType.IMMUTABLE:
            assert isinstance(value, bytes)
            if have is None:
                steps.append(_Step(key, kind, value, 1))
            elif not same_immutable_value(state.get(key)[0], value):
                raise _conflict(key, label, "the immutable value differs")
        elif kind is KeyType.INDEXED:
            assert isinstance(value, dict)
            current: dict[bytes, bytes] = state.get(key)[0] if have is not None else {}
            new = {}
            for sub_key, sub_value in value.items():
                old = current.get(sub_key)
                if old is None:
                    new[sub_key] = sub_value
                elif not same_immutable_value(old, sub_value):
                    raise _conflict(key, label, f"the value of sub-key "
                                    f"{_sub_key_text(sub_key)} differs")
            if new:
                steps.append(_Step(key, kind, new, len(new)))
        else:
            assert isinstance(value, Samples)
            col = state.sensor(key) if have is not None else None
            if col is None:                     # split into columns only when applied
                if bulk is not None and value.members is None:
                    bulk.append((key, value))
                else:
                    steps.append(_Step(key, kind, value, value.count))
            else:
                columns = new_samples(col, value)
                if columns[1]:
                    steps.append(_Step(key, kind, columns, len(columns[1])))
    return steps


def _apply(writer: StateWriter, steps: list[_Step], bulk: list[tuple[bytes, Samples]],
           hook: CommitBatch | None, total: int, progress: ProgressCallback | None) -> int:
    """Write the planned steps, then create the new sensors of `bulk` together
    (lock held); returns the last new position (0 if none)."""
    last = done = 0
    for step in steps:
        key = step.key
        if step.kind is KeyType.IMMUTABLE:
            last = writer.set_immutable(key, step.payload)[1] or last
        elif step.kind is KeyType.INDEXED:
            for sub_key, value in step.payload.items():
                last = writer.set_indexed(key, sub_key, value)[1] or last
        else:
            payload = step.payload
            ts, values = payload.columns() if isinstance(payload, Samples) else payload
            last = writer.add_mutable_many(key, values, ts)[1] or last
        step.payload = None                     # free the key's data as we go
        done += step.count
        if progress is not None:
            progress("import", done, total)
    if bulk:
        last = apply_bulk(writer, bulk, hook, done, total, progress) or last
    return last


def import_rdb(backend: StateBackend, file: FileArg, *, source: str | None = None,
               db: int | None = None, progress: ProgressCallback | None = None,
               clock: Callable[[], float] = time.time) -> ImportStats:
    """Import the keys of an RDB file into `backend` (see the module docstring).

    Parameters
    ----------
    backend
        A memory or log backend.
    file
        Path (str, bytes or path-like) or binary file object.
    source
        Source label for the log session recording the import (default
        ``import:<file name>``); ignored by backends without sessions.
    db
        Database to import; None (default) means 0 and refuses files with
        keys in other databases.
    progress
        ``progress(stage, done, total)`` callback (see :mod:`telstate_log.core._progress`).
    clock
        Current time in Unix seconds, read once to tell expired keys (the
        default is the system clock).

    Raises
    ------
    RdbParseError
        The file is malformed (nothing was imported).
    ImmutableKeyError
        A key conflicts with the backend's data (nothing was imported).
    """
    contents = read_rdb(file, db=db, progress=progress, clock=clock)
    return apply_rdb(backend, contents, source=source, progress=progress)


def apply_rdb(backend: StateBackend, contents: RdbContents, *, source: str | None = None,
              progress: ProgressCallback | None = None) -> ImportStats:
    """Plan and apply a file read by :func:`read_rdb` (steps 2 and 3 of :func:`import_rdb`)."""
    filename, entries = contents.filename, contents.entries
    contents.entries = []                   # applied once; freed as the steps are written
    label = source if source is not None else \
        f"import:{os.path.basename(filename) if filename else '<stream>'}"
    writer = backend.writer()
    hook = writer.commit_batch
    with writer.lock:
        writer.check_writable()
        before = backend.position
        bulk: list[tuple[bytes, Samples]] = []
        steps = _steps_for(writer.state, entries, filename or "<stream>",
                           bulk)
        if len(bulk) < BULK_MIN:                # too few to gain from building together
            steps += [_Step(key, KeyType.MUTABLE, value, value.count) for key, value in bulk]
            bulk = []
        keys = len(entries)
        del entries
        last = _apply_as(backend, writer, steps, bulk, hook, label, progress) \
            if steps or bulk else 0
        after = backend.position
    if last:
        writer.after_write(last)
    return ImportStats(keys=keys, samples=contents.samples, bytes=contents.size,
                       seconds=time.perf_counter() - contents.started, events=after - before,
                       position=after, expired=contents.expired,
                       expiry_dropped=contents.expiry_dropped)


def _apply_as(backend: StateBackend, writer: StateWriter, steps: list[_Step],
              bulk: list[tuple[bytes, Samples]], hook: CommitBatch | None, label: str,
              progress: ProgressCallback | None) -> int:
    """:func:`_apply` under the source `label` (for backends with sessions)."""
    total = sum(step.count for step in steps) + sum(value.count for _, value in bulk)
    set_source = getattr(backend, "set_source", None)
    if set_source is None:
        return _apply(writer, steps, bulk, hook, total, progress)
    previous = getattr(backend, "source", None)
    set_source(label)
    try:
        last = _apply(writer, steps, bulk, hook, total, progress)
    except BaseException:
        with contextlib.suppress(Exception):  # keep the original error
            set_source(previous)
        raise
    set_source(previous)
    return last


def load_rdb_into(backend: StateBackend, file: FileArg, *, source: str | None = None,
                  db: int | None = None) -> int:
    """Import an RDB file (see :func:`import_rdb`); returns the number of keys imported
    from it (present already or not; keys whose expiry time had passed are left out)."""
    return import_rdb(backend, file, source=source, db=db).keys
