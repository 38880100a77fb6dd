"""The short sensor columns of a checkpoint, stored together as one table.

Theory of operation
-------------------
A checkpoint (:mod:`telstate_log.storage._checkpoint`) describes each entry of the
state in its manifest, a sensor column by references to its own arrays.
Writing, decoding and checking a column that way costs tens of Python and
numpy steps, which dominates a state of many short sensors: 100,000 keys of
one sample each loaded slower than replaying their log.  So when a state
holds at least :data:`TABLE_MIN` columns of at most :data:`SHORT` samples,
those columns go into one table instead: a handful of arrays for all its
columns::

    count, created, pos_base    int64 per column (samples, creating position,
                                base of the relative positions)
    width                       int64 per column: bytes per stored value
                                (fixed layout, the prefix removed); 0: var
    prefix                      int64 per column: index into ``prefixes``
    prefixes                    the distinct value prefixes (manifest list)
    ts, pos                     float64 / uint32 or uint64 per sample
    vals                        uint8: every column's values back to back
    lengths                     int64 per sample of a var column
    keys, at                    the live columns (the first ones): their keys
                                (manifest list) and places among the state's
                                entries (int64), whose order is kept

Deleted entries' columns (the graveyard) are the table's last columns,
referenced from the graveyard as ``["t", column number]``; each column is
taken by one entry at most.  A version-2 manifest also lists the log's key
ids as one int64 array and the names as one list.

Loading checks the whole table with vectorised operations -- the
invariants ``_check_column`` checks for one column, plus the table's own
consistency -- and builds each column from views of the table's arrays with
:meth:`SensorColumn.adopt`: a few Python steps per column.  A checkpoint
with a table has version 2, which older readers refuse (they replay the log
instead).  Pure: the blob writer and the array reader are passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..core._sensor import SensorColumn

if TYPE_CHECKING:
    from ..core._state import State

__all__ = ["SHORT", "TABLE_MIN", "CheckpointError", "TableWriter", "is_short", "load_table",
           "wants_table"]


class CheckpointError(Exception):
    """The checkpoint is damaged or does not belong to this log."""


#: Columns of at most this many samples are short.
SHORT = 64
#: A checkpoint gets a table when it has at least this many short columns.
TABLE_MIN = 256
_PER_COLUMN = ("count", "created", "pos_base", "width", "prefix")


class _Blobs(Protocol):
    def blob(self, arr: np.ndarray) -> list[Any]: ...


def is_short(e: Any) -> bool:
    """Whether the snapshot entry `e` (see ``snapshot_state``) is a short column."""
    return bool(e[0] == "m" and len(e[1]["ts"]) <= SHORT)


def wants_table(state: State) -> bool:
    """Whether a checkpoint of `state` gets a table (at least :data:`TABLE_MIN`
    live short columns): one without would load slowly."""
    short = 0
    for _, e in state.items():
        if type(e) is SensorColumn and len(e) <= SHORT:
            short += 1
            if short >= TABLE_MIN:
                return True
    return False


class TableWriter:
    """Collects short column snapshots; :meth:`manifest` writes the table."""

    def __init__(self) -> None:
        self._snaps: list[dict[str, Any]] = []
        self._keys: list[bytes] = []  # of the live columns (the first ones)
        self._at: list[int] = []  # their places among the state's entries

    def add_live(self, key: bytes, at: int, snap: dict[str, Any]) -> None:
        """Take the column snapshot `snap` of live key `key`, entry number `at`."""
        assert len(self._keys) == len(self._snaps), "live columns come first"
        self._snaps.append(snap)
        self._keys.append(key)
        self._at.append(at)

    def add(self, snap: dict[str, Any]) -> list[Any]:
        """Take the column snapshot `snap` of a graveyard entry; returns its manifest entry."""
        self._snaps.append(snap)
        return ["t", len(self._snaps) - 1]

    def manifest(self, w: _Blobs) -> dict[str, Any]:
        snaps = self._snaps
        b = len(snaps)
        prefixes: dict[bytes, int] = {}
        widths, ids, values, lengths = [], [], [], []
        for s in snaps:
            vals = s.get("vals")
            if vals is not None:
                widths.append(vals.dtype.itemsize)
                ids.append(prefixes.setdefault(s["prefix"], len(prefixes)))
                values.append(vals.view(np.uint8).reshape(-1))
            else:
                widths.append(0)
                ids.append(0)
                data = b"".join(s["list"])
                values.append(np.frombuffer(data, np.uint8))
                lengths.append(np.fromiter(map(len, s["list"]), np.int64, len(s["list"])))
        wide = any(s["pos"].dtype.itemsize > 4 for s in snaps)
        pos_type = np.uint64 if wide else np.uint32
        table = {
            "count": w.blob(np.fromiter((len(s["ts"]) for s in snaps), np.int64, b)),
            "created": w.blob(np.fromiter((s["created"] for s in snaps), np.int64, b)),
            "pos_base": w.blob(np.fromiter((s["pos_base"] for s in snaps), np.int64, b)),
            "width": w.blob(np.array(widths, np.int64)),
            "prefix": w.blob(np.array(ids, np.int64)),
            "prefixes": list(prefixes),
            "ts": w.blob(np.concatenate([s["ts"] for s in snaps], dtype=np.float64)),
            "pos": w.blob(np.concatenate([s["pos"] for s in snaps], dtype=pos_type)),
            "vals": w.blob(np.concatenate(values) if values else np.zeros(0, np.uint8)),
            "lengths": w.blob(np.concatenate(lengths) if lengths else np.zeros(0, np.int64)),
            "keys": self._keys,
            "at": w.blob(np.array(self._at, np.int64)),
        }
        return table


def load_table(table: Any, array: Callable[[Any, str], np.ndarray],
               position: int) -> list[SensorColumn]:
    """The columns of `table` (its manifest), checked; `array(ref, dtype)` reads
    the array a reference names, of exactly that dtype.  Raises CheckpointError."""

    if type(table) is not dict or not all(type(p) is bytes for p in table["prefixes"]):
        raise CheckpointError("malformed column table")
    prefixes: list[bytes] = table["prefixes"]
    count, created, pos_base, width, prefix = (array(table[k], "<i8") for k in _PER_COLUMN)
    ts = array(table["ts"], "<f8")
    pos = array(table["pos"], "<u8") if table["pos"][2] == "<u8" else array(table["pos"], "<u4")
    vals = array(table["vals"], "|u1")
    lengths = array(table["lengths"], "<i8")
    b, t, nbytes = len(count), len(ts), len(vals)
    # the table's shape: sizes first, so no sum below can overflow
    fixed = width > 0
    if not (len(created) == len(pos_base) == len(width) == len(prefix) == b
            and len(pos) == t and 0 < b <= t and bool((count >= 1).all())
            and sum(count.tolist()) == t and bool((width >= 0).all())
            and bool(((prefix >= 0) & (~fixed | (prefix < len(prefixes)))).all())
            and bool((~fixed | (count <= nbytes // np.maximum(width, 1))).all())
            and bool(((lengths >= 1) & (lengths <= nbytes)).all())):
        raise CheckpointError("malformed column table")
    col = np.repeat(np.arange(b), count)
    first = np.cumsum(count) - count
    j = np.arange(t) - first[col]
    var = ~fixed[col]
    if sum(count[~fixed].tolist()) != len(lengths):
        raise CheckpointError("var values do not match the sample count")
    size = np.where(var, 0, width[col])
    size[var] = lengths
    if sum(size.tolist()) != nbytes:
        raise CheckpointError("values do not match the table")
    start = np.cumsum(size) - size  # offset of each value in `vals`
    if not bool(((ts >= 0.0) & (ts < np.inf)).all()):
        raise CheckpointError("sensor sample with a bad timestamp")
    if not bool(((pos_base >= 1) & (pos_base <= created) & (created <= position)).all()
                and (pos.astype(np.uint64)
                     <= (position - pos_base)[col].astype(np.uint64)).all()):
        raise CheckpointError("sensor positions outside the checkpoint")
    later = np.flatnonzero(j > 0)  # samples after the first of their column
    if bool((ts[later] < ts[later - 1]).any()):
        raise CheckpointError("sensor samples out of timestamp order")
    raw = memoryview(vals.data)  # values are copied out one at a time: never the whole table
    for i in later[ts[later] == ts[later - 1]].tolist():  # ties: by value, no repeats
        a, c = int(start[i - 1]), int(start[i])
        if not raw[a:a + int(size[i - 1])].tobytes() < raw[c:c + int(size[i])].tobytes():
            raise CheckpointError("sensor samples out of order or repeated")
    back = np.zeros(b, bool)
    back[col[later[pos[later] < pos[later - 1]]]] = True
    return _columns(count, created, pos_base, width, prefix, prefixes, ts, pos, vals, raw,
                    start, size, back)


def _columns(count: np.ndarray, created: np.ndarray, pos_base: np.ndarray, width: np.ndarray,
             prefix: np.ndarray, prefixes: list[bytes], ts: np.ndarray, pos: np.ndarray,
             vals: np.ndarray, raw: memoryview, start: np.ndarray, size: np.ndarray,
             back: np.ndarray) -> list[SensorColumn]:
    """Build the (checked) columns: views of the table's arrays."""
    stamps = ts.tolist()
    starts, sizes = start.tolist(), size.tolist()
    adopt = SensorColumn.adopt
    void: dict[int, np.dtype[np.void]] = {}
    out = []
    a = 0
    for n, c, base, w, p, bad in zip(count.tolist(), created.tolist(), pos_base.tolist(),
                                     width.tolist(), prefix.tolist(), back.tolist()):
        e = a + n
        last = starts[e - 1]
        if w:
            dt = void.get(w)
            if dt is None:
                dt = void[w] = np.dtype(f"V{w}")
            pre = prefixes[p]
            out.append(adopt(c, base, ts[a:e], pos[a:e], stamps[e - 1],
                             pre + raw[last:last + w].tobytes(), not bad,
                             vals[starts[a]:last + w].view(dt), pre))
        else:
            intern: dict[bytes, bytes] = {}
            values = [intern.setdefault(v, v) for v in
                      (raw[s:s + k].tobytes() for s, k in zip(starts[a:e], sizes[a:e]))]
            out.append(adopt(c, base, ts[a:e], pos[a:e], stamps[e - 1], values[-1], not bad,
                             None, values=values, intern=intern))
        a = e
    return out
