"""The sensors of an RDB import: zsets kept compactly, many new ones created together.

Theory of operation
-------------------
:mod:`._rdb_import` keeps each zset of the file as :class:`Samples`: when all
members have one length (a float sensor) they are kept as one blob of the
members joined -- made by the reader itself for the small packed zsets of
most files (``RdbReader.blocks``), else joined here -- and split later with
a numpy record view -- timestamps as ``>f8``, values as bytes -- instead of
one Python slice per sample.

A file of many small sensors (10,000 keys of 10 samples) would spend most of
its import in fixed costs per key: a locked step, the chunking of the batch,
a :class:`~telstate_log.core._sensor.SensorColumn` with its arrays, numpy
calls.  So new short sensors whose members have one length, when many share
that length, are created together (:func:`apply_bulk`), a part at a time: a
part's blobs are joined, split into timestamps and a value matrix, checked
with :func:`~telstate_log.core._sensor.fitting_groups` (a key that does not
fit a fixed-layout column as it is -- equal timestamps, values whose prefix
changes -- is written alone with ``add_mutable_many``), and handed to
:meth:`~telstate_log.core._state.State.add_new_sensors`, which builds their
columns from shared arrays and records them through the backend's commit
hook, one ADD_BATCH per key, as ``add_mutable_many`` of each key would (each
key holds at most ``_BULK_SAMPLES`` values of at most ``_BULK_WIDTH`` bytes:
well within one atomic chunk).  Longer sensors are written one by one: for
them the fixed cost per key no longer matters, and building together copies
their samples a few more times.  Monitors get one update per key.  Only
backends whose commit hook is known (:func:`batch_hook`: the memory and the
log backend) take this path.
"""

from __future__ import annotations

import functools
import itertools
from typing import TYPE_CHECKING, cast

import numpy as np

from ..core._progress import ProgressCallback
from ..core._sensor import fitting_groups
from ..core._state import SMALL_BATCH
from ..core._types import KeyUpdateBase

if TYPE_CHECKING:
    from ..core._sensor import SensorColumn
    from ..core._state import CommitBatch
    from ..storage._event_log import CommitBatches
    from ._state_writer import StateWriter

__all__ = ["BULK_MIN", "Samples", "apply_bulk", "new_samples", "record_layout"]

#: new sensors created together (see apply_bulk): at least this many keys, values of
#: at most _BULK_WIDTH bytes, at most _BULK_SAMPLES samples per key, and
#: parts of at most _BULK_PART_BYTES of samples
BULK_MIN = 16
_BULK_WIDTH = 4096
_BULK_SAMPLES = 256
_BULK_PART_BYTES = 8 << 20


@functools.lru_cache(maxsize=256)
def record_layout(width: int) -> np.dtype[np.void]:
    """numpy record type of a zset member of `width` bytes: timestamp, then value."""
    return np.dtype([("ts", ">f8"), ("value", f"V{width - 8}")])


class Samples:
    """The members of one zset, kept compactly until the import applies them."""

    __slots__ = ("blob", "count", "members", "width")

    def __init__(self, blob: bytes, width: int, count: int,
                 members: list[bytes] | None = None) -> None:
        """`count` members of `width` bytes joined in `blob` in increasing order
        (how ``RdbReader.blocks`` hands over a zset), or, if `members` is given,
        those members of several lengths (`blob` empty, `width` 0)."""
        self.blob, self.width, self.count, self.members = blob, width, count, members

    @classmethod
    def of_members(cls, members: list[bytes]) -> Samples:
        """The zset of `members` (sorted, non-empty), joined if they have one length."""
        width = len(members[0])
        blob = b"".join(members)
        if len(blob) == width * len(members) and max(map(len, members)) == width:
            return cls(blob, width, len(members))
        return cls(b"", 0, len(members), members)

    def columns(self) -> tuple[np.ndarray, list[bytes] | np.ndarray]:
        """``(float64 timestamps, encoded values)`` of the samples, in member order.

        Fixed-width values come as a ``V<width>`` array, which the bulk write
        path keeps as an array end to end -- except in a batch short enough
        for the plain-Python write path (see ``State.add_mutable_batch``).
        """
        if self.members is None:
            records = np.frombuffer(self.blob, record_layout(self.width))
            times = records["ts"].astype(np.float64)
            if self.count <= SMALL_BATCH:           # the write path wants a short list
                return times, records["value"].tolist()
            return times, np.ascontiguousarray(records["value"])
        members = self.members
        stamps = b"".join([m[:8] for m in members])
        return np.frombuffer(stamps, ">f8").astype(np.float64), [m[8:] for m in members]


def new_samples(col: SensorColumn, samples: Samples) -> tuple[np.ndarray, list[bytes]]:
    """The samples not already stored in `col` (compared over the overlapping time span)."""
    ts, column = samples.columns()
    values = column.tolist() if isinstance(column, np.ndarray) else column
    stamps = ts.tolist() if len(ts) <= SMALL_BATCH else None
    i0, i1 = col.index_range(float(ts[0]), float(ts[-1]), False, True)
    if i0 == i1:
        return ts, values
    have_ts = col.timestamps(i0, i1)
    have_values = col.values(i0, i1)
    if i1 - i0 == len(ts) and have_values == values and (
            have_ts.tolist() == stamps if stamps is not None else np.array_equal(have_ts, ts)):
        return ts[:0], []                       # the usual re-import: all present
    have = set(zip(have_values, have_ts.tolist()))
    keep = [i for i, pair in enumerate(zip(values, ts.tolist())) if pair not in have]
    return ts[keep], [values[i] for i in keep]


def apply_bulk(writer: StateWriter, bulk: list[tuple[bytes, Samples]],
               hook: CommitBatch | None, done: int, total: int,
               progress: ProgressCallback | None) -> int:
    """Create the new sensors of `bulk` (members of one length each; lock held) a
    part at a time, each part's keys together
    (:meth:`~telstate_log.core._state.State.add_new_sensors`, recorded through
    `hook`: one ADD_BATCH per key); returns the last new position (0 if none).

    A part holds keys of one member width and up to about ``_BULK_PART_BYTES`` of
    samples (cut with numpy: no Python step per key here).  Keys with values of
    1 byte or more than ``_BULK_WIDTH``, more than ``_BULK_SAMPLES`` samples, or
    a width fewer than :data:`BULK_MIN` such keys share (not worth a part's numpy
    calls) are written one by one instead."""
    keys = [key for key, _ in bulk]
    items: list[Samples | None] = [value for _, value in bulk]
    widths = np.array([value.width for _, value in bulk], np.int64)
    counts = np.array([value.count for _, value in bulk], np.int64)
    bulk.clear()                                # free each part's data once written
    ok = (widths >= 10) & (widths <= _BULK_WIDTH + 8) & (counts <= _BULK_SAMPLES)
    _, group, shared = np.unique(np.where(ok, widths, -1), return_inverse=True,
                                 return_counts=True)
    ok &= shared[group] >= BULK_MIN
    last = 0
    for i in np.flatnonzero(~ok).tolist():
        samples = items[i]
        assert samples is not None
        items[i] = None
        stamps, column = samples.columns()
        last = writer.add_mutable_many(keys[i], column, stamps)[1] or last
        done += samples.count
        if progress is not None:
            progress("import", done, total)
    chosen = np.flatnonzero(ok)
    order = chosen[np.argsort(widths[chosen], kind="stable")]
    size = (counts * widths)[order]
    part = (np.cumsum(size) - size) // _BULK_PART_BYTES
    sorted_widths = widths[order]
    cuts = np.flatnonzero((part[1:] != part[:-1]) | (sorted_widths[1:] != sorted_widths[:-1]))
    bounds = [0, *(cuts + 1).tolist(), len(order)] if len(order) else [0]
    in_order = len(order) == len(keys) and bool((order[1:] > order[:-1]).all())
    for a, b in itertools.pairwise(bounds):
        if in_order:
            part_keys, part_items = keys[a:b], items[a:b]
            items[a:b] = [None] * (b - a)       # free the keys' data as we go
        else:
            idx = order[a:b].tolist()
            part_keys, part_items = [keys[i] for i in idx], [items[i] for i in idx]
            for i in idx:
                items[i] = None
        last = _create(writer, part_keys, cast("list[Samples]", part_items),
                       int(sorted_widths[a]), hook) or last
        done += int(counts[order[a:b]].sum())
        if progress is not None:
            progress("import", done, total)
    return last


def _create(writer: StateWriter, keys: list[bytes], items: list[Samples], width: int,
            hook: CommitBatch | None) -> int:
    """Create the sensors `keys` with the samples `items` (zset members of `width`
    bytes each; lock held)."""
    counts = [samples.count for samples in items]
    blob = b"".join([samples.blob for samples in items])
    ts = np.frombuffer(blob, record_layout(width))["ts"].astype(np.float64)
    mat = np.frombuffer(blob, np.uint8).reshape(-1, width)[:, 8:]
    sizes = np.array(counts, np.int64)
    last = 0
    fits = fitting_groups(ts, mat, sizes)
    if not bool(fits.all()):                # e.g. equal timestamps: the ordinary path
        ends = np.cumsum(sizes).tolist()
        for i in np.flatnonzero(~fits).tolist():
            a, b = ends[i] - counts[i], ends[i]
            values = np.ascontiguousarray(mat[a:b]).view(f"V{width - 8}").reshape(-1)
            last = writer.add_mutable_many(keys[i], values, ts[a:b])[1] or last
        keys = [keys[i] for i in np.flatnonzero(fits).tolist()]
        mask = np.repeat(fits, sizes)
        ts, mat, sizes = ts[mask], mat[mask], sizes[fits]
    if not keys:
        return last
    state = writer.state
    many = writer.commit_batches if hook is not None else None
    if many is not None:
        hook = _Runs(many, keys, ts, mat, sizes.tolist())
    state.add_new_sensors(keys, ts, mat, sizes, hook)
    hub = writer.hub
    if hub.active:
        for key in keys:
            hub.publish(key, KeyUpdateBase)
    return state.position


class _Runs:
    """The commit hook :meth:`~telstate_log.core._state.State.add_new_sensors` calls
    once per key, recording the keys in runs through a many-keys hook instead.

    ``add_new_sensors`` validates every key before its first commit and calls
    the hook for each key in order, with consecutive positions, applying to
    the state only the keys whose call returned.  So at the first key of a
    run, this hook records that key and as many of the following ones as the
    many-keys hook takes in one append (all or none), and for the others it
    only checks they were recorded: if an append fails, the keys before the
    failing run are both recorded and applied, and none after -- the state
    never differs from the log.  The samples recorded are those
    ``add_new_sensors`` commits (timestamps ``+ 0.0``, values as one
    ``V<width>`` array).
    """

    __slots__ = ("_keys", "_many", "_next", "_recorded", "_sizes", "_starts", "_ts",
                 "_values")

    def __init__(self, many: CommitBatches, keys: list[bytes], ts: np.ndarray,
                 mat: np.ndarray, sizes: list[int]) -> None:
        self._many = many
        self._keys = keys
        self._ts = ts + 0.0                      # -0.0 -> 0.0, as add_new_sensors commits
        self._values = np.ascontiguousarray(mat).view(f"V{mat.shape[1]}").reshape(len(mat))
        self._sizes = sizes
        self._starts = list(itertools.accumulate(sizes, initial=0))
        self._next = 0                           # index of the key of the next call
        self._recorded = 0                       # keys recorded so far

    def __call__(self, first: int, key: bytes, ts: np.ndarray,
                 values: list[bytes] | np.ndarray) -> None:
        i = self._next
        if i >= len(self._keys) or key != self._keys[i] or len(ts) != self._sizes[i]:
            raise ValueError("add_new_sensors committed keys out of the planned order")
        if i >= self._recorded:
            a = self._starts[i]
            self._recorded = i + self._many(first, self._keys[i:], self._ts[a:],
                                            self._values[a:], self._sizes[i:])
        self._next = i + 1
