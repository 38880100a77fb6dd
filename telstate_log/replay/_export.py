"""Export a snapshot of telescope state to an RDB file, streaming.

Theory of operation
-------------------
The input is an iterable of ``(key, KeyType, value)`` items, as
:meth:`~telstate_log.backends._state_backend.StateBackend.snapshot_items`
produces (and as-of-position snapshots will): the encoded value of an
immutable key, a dict of encoded sub-key -> value for an indexed key, and
for a mutable key its sample columns (an object with a ``timestamps`` array
and ``encoded()``, such as :class:`~telstate_log.core._sensor.SensorRange`) or an
already packed, sorted list of zset members.  Keys are written in the order
given, through :class:`~._rdb_writer.RdbWriter`, which owns the byte format
(loadable by redis-server 7 and katsdptelstate) and validates every zset;
this module supplies the content.

A zset member is the sample's 8-byte big-endian timestamp followed by its
encoded value.  How the members reach the writer depends on the values:

* fixed-width values (float sensors via ``floats()``, or any sensor column
  in the fixed layout) go to the writer as columns -- timestamps, shared
  prefix, ``(count, width)`` byte matrix of the rest -- which it validates
  and encodes block by block with numpy
  (:meth:`~telstate_log.rdb._writer.RdbWriter.write_zset_columns`), with no
  Python object per sample;
* variable-width values are concatenated to their timestamp bytes, in blocks
  of :data:`CHUNK` samples;
* sensors of at most :data:`FEW` samples are packed sample by sample, which
  for a handful of samples costs less than setting up numpy arrays.

Variable-width sensors up to :data:`LIST_LIMIT` samples are handed to the
writer as one list; larger ones as a lazy sequence that rebuilds blocks on
demand (the writer walks it a few times: validation, then encoding), so
memory stays at a few blocks whatever the size of the log.  The sample
columns themselves are the snapshot's views, never copies.

The file is written to ``<out>.tmp``, fsync'ed and renamed over `out` only
when complete, so an error never leaves a partial RDB file behind.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import asdict, dataclass
from typing import Any, Protocol, overload

import numpy as np

from ..core._progress import ProgressCallback
from ..core._sensor_range import SensorRange
from ..core._types import KeyType
from ..rdb._writer import RdbWriter
from ..rdb._zset_columns import ColumnMembers

__all__ = ["CHUNK", "FEW", "LIST_LIMIT", "ExportStats", "export_backend", "export_rdb"]

#: Samples per vectorised block of zset members.
CHUNK = 1 << 14
#: Sensors with more samples than this are passed to the writer lazily.
LIST_LIMIT = 1 << 16
#: Sensors with at most this many samples are packed per sample, without numpy.
FEW = 32
_BE_DOUBLE = struct.Struct(">d")
_FLOAT_PREFIX = b"\xff\xcb"           # encoded value of a float: 0xFF + msgpack float 64

Item = tuple[bytes, Any, Any]


@dataclass(frozen=True)
class ExportStats:
    """What an export wrote."""

    keys: int        #: keys written
    samples: int     #: sensor samples written
    bytes: int       #: size of the RDB file
    seconds: float   #: wall-clock time of the export

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Snapshotting(Protocol):
    def snapshot_items(self, pattern: bytes = b"*") -> list[tuple[bytes, KeyType, Any]]: ...


def _column_members(columns: Any) -> ColumnMembers | None:
    """The members of fixed-width values as columns (see :mod:`~telstate_log.rdb._zset_columns`).

    Sensor columns in the fixed layout go through ``fixed()``, other float
    sensors through ``floats()``, so no per-sample list is built; None for
    variable-width values.
    """
    if isinstance(columns, SensorRange):
        fixed = columns.fixed()
        if fixed is not None and fixed[1].dtype.itemsize > 0:
            return ColumnMembers.of(columns.timestamps, *fixed)
    floats = columns.floats() if hasattr(columns, "floats") else None
    if floats is not None:
        body = np.ascontiguousarray(floats, ">f8")
        return ColumnMembers.of(columns.timestamps, _FLOAT_PREFIX,
                                body.view(np.uint8).reshape(len(body), 8))
    return None


class _Members:
    """Builds the packed zset members of rows ``[i, j)`` of one sensor of variable-width
    values."""

    def __init__(self, columns: Any) -> None:
        self.timestamps = np.asarray(columns.timestamps, np.float64)
        self.count = len(self.timestamps)
        self._values: list[bytes] = list(columns.encoded())
        if len(self._values) != self.count:
            raise ValueError("sensor columns hold different numbers of timestamps "
                             "and values")

    def rows(self, i: int, j: int) -> list[bytes]:
        stamps = (self.timestamps[i:j] + 0.0).astype(">f8")   # + 0.0: -0.0 becomes 0.0
        return list(map(bytes.__add__, stamps.view("V8").tolist(), self._values[i:j]))


class _LazyMembers(Sequence[bytes]):
    """A read-only sequence of members built block by block (two blocks cached)."""

    def __init__(self, members: _Members) -> None:
        self._members = members
        self._count = members.count
        self._cache: dict[int, list[bytes]] = {}

    def __len__(self) -> int:
        return self._count

    def _block(self, b: int) -> list[bytes]:
        block = self._cache.get(b)
        if block is None:
            if len(self._cache) >= 2:
                del self._cache[min(self._cache)]
            start = b * CHUNK
            block = self._cache[b] = self._members.rows(start, min(start + CHUNK, self._count))
        return block

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._count)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            if start >= stop:
                return []
            if start // CHUNK == (stop - 1) // CHUNK:
                base = start // CHUNK * CHUNK
                return self._block(start // CHUNK)[start - base:stop - base]
            return self._members.rows(start, stop)
        i = index + self._count if index < 0 else index
        if not 0 <= i < self._count:
            raise IndexError("member index out of range")
        return self._block(i // CHUNK)[i % CHUNK]

    def __iter__(self) -> Iterator[bytes]:
        for b in range((self._count + CHUNK - 1) // CHUNK):
            yield from self._block(b)


def _few_members(columns: Any) -> list[bytes]:
    """Members of a small sensor, built per sample (cheaper than numpy for a few)."""
    values = columns.encoded()
    stamps = np.asarray(columns.timestamps, np.float64).tolist()
    if len(values) != len(stamps):
        raise ValueError("sensor columns hold different numbers of timestamps and values")
    pack = _BE_DOUBLE.pack
    return [pack(t + 0.0) + v for t, v in zip(stamps, values)]   # + 0.0: -0.0 becomes 0.0


def _zset_members(value: Any) -> tuple[Sequence[bytes] | ColumnMembers, int]:
    """Members to hand to the writer for a mutable key, and the sample count."""
    if hasattr(value, "timestamps"):
        count = len(value.timestamps)
        if count <= FEW:
            return _few_members(value), count
        columns = _column_members(value)
        if columns is not None:
            if len(columns) != count:
                raise ValueError("sensor columns hold different numbers of timestamps "
                                 "and values")
            return columns, count
        members = _Members(value)
        if members.count <= LIST_LIMIT:
            return members.rows(0, members.count), members.count
        return _LazyMembers(members), members.count
    if isinstance(value, Sequence) and not isinstance(value, (bytes, str)):
        return value, len(value)
    raise TypeError(f"mutable values must be sample columns or packed members, "
                    f"not {type(value).__name__}")


def _write_item(writer: RdbWriter, key: bytes, kind: Any, value: Any) -> int:
    """Write one key; returns its number of samples."""
    kind = KeyType.coerce(kind)
    if kind == KeyType.MUTABLE:
        members, count = _zset_members(value)
        if isinstance(members, ColumnMembers):
            writer.write_zset_columns(key, members)
        else:
            writer.write_zset(key, members)
        return count
    if kind == KeyType.IMMUTABLE:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"immutable key {key!r} has a {type(value).__name__} value, "
                            "not bytes")
        writer.write_string(key, bytes(value))
    elif isinstance(value, Mapping):
        writer.write_hash(key, value)
    else:
        raise TypeError(f"indexed key {key!r} has a {type(value).__name__} value, not a dict")
    return 0


def _units(kind: Any, value: Any) -> int:
    """Progress units of an item: its samples, or 1."""
    if KeyType.coerce(kind) != KeyType.MUTABLE:
        return 1
    return len(value.timestamps) if hasattr(value, "timestamps") else len(value)


def _sync_directory(path: str) -> None:
    """Make a rename in `path` durable (best effort: not every platform allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def export_rdb(items: Iterable[Item], out: str | os.PathLike[str], *,
               progress: ProgressCallback | None = None,
               aux: Mapping[bytes | str, bytes | str] | None = None) -> ExportStats:
    """Write `items` to the RDB file `out` (see the module docstring).

    Parameters
    ----------
    items
        ``(key, KeyType, value)`` triples with unique keys, in the order to write.
    out
        Path of the RDB file; replaced only once the new file is complete.
    progress
        ``progress("export", done, total)`` callback; units are samples for
        mutable keys and 1 for other keys (total None if `items` has no length).
    aux
        AUX fields for the header (default: the writer's version field).
    """
    started = time.perf_counter()
    target = os.fspath(out)
    tmp = target + ".tmp"
    key_count = total = None
    if isinstance(items, Sized):
        items = list(items)
        key_count = len(items)
        if progress is not None:
            total = sum(_units(kind, value) for _, kind, value in items)
    samples = done = 0
    try:
        with open(tmp, "wb") as fh:
            with RdbWriter(fh, key_count=key_count, aux=aux) as writer:
                for key, kind, value in items:
                    count = _write_item(writer, key, kind, value)
                    samples += count
                    if progress is not None:
                        done += count if KeyType.coerce(kind) == KeyType.MUTABLE else 1
                        progress("export", done, total)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_directory(os.path.dirname(os.path.abspath(target)))
    return ExportStats(keys=writer.keys_written, samples=samples, bytes=writer.bytes_written,
                       seconds=time.perf_counter() - started)


def export_backend(backend: _Snapshotting, out: str | os.PathLike[str], pattern: bytes = b"*",
                   *, progress: ProgressCallback | None = None) -> ExportStats:
    """Export the keys of `backend` matching `pattern` (a consistent snapshot) to `out`."""
    return export_rdb(backend.snapshot_items(pattern), out, progress=progress)
