"""Column store for the samples of one mutable key (a sensor).

Theory of operation
-------------------
A sensor is a sequence of samples ``(timestamp, encoded value, position)``
kept sorted by ``(timestamp, value bytes)`` -- the order katsdptelstate's
lex-packed Redis zsets give -- with exact duplicates stored once.  Instead of
a Python object per sample the samples live in numpy columns:

* ``_ts``: float64 timestamps;
* ``_pos``: the log position of the event that added the sample, stored as a
  uint32 offset from ``_pos_base`` (widened to uint64 only if a sensor spans
  more than 2**32 events);
* values, in one of two layouts:

  - *fixed*: every value has the same length and starts with the same bytes
    (the common case: a msgpack float64 is ``ff cb`` + 8 bytes).  The shared
    prefix is stored once and the rest in a numpy ``V<width>`` column, so a
    float sample costs 8 + 8 + 4 = 20 bytes plus growth slack.
  - *var*: a Python list of ``bytes``; repeated values (status strings,
    small ints) are interned so they share one object.

  A value that does not fit the fixed layout shortens the prefix or converts
  the column to the var layout (once; it never converts back).  Values longer
  than :data:`FIXED_WIDTH_MAX` (a calibration array of several MB) take the
  var layout from the start: a fixed column reserves room for many values
  and copies them all when it grows.  A fixed column of such values (built
  in bulk, or loaded from a checkpoint written before) converts the first
  time it grows.

Appending in time order is O(1) amortised (columns grow by 25%).  A batch
appended in order is copied in with numpy (:meth:`SensorColumn.extend_sorted`)
or, when it holds only a few samples, in plain Python
(:meth:`SensorColumn.extend_small`): numpy's fixed cost per call would
dominate a short batch.  For the same reason the columns of many new keys (a
replay, a checkpoint) are built together: :meth:`SensorColumn.new_columns`
gives each views of shared arrays, and :meth:`SensorColumn.adopt` makes a
column of given arrays without any numpy call.  A sample older than the
newest goes to a small pending buffer that is merged into the columns in one
vectorised pass when it grows past a fraction of the column or when the
column is read, so out-of-order writes stay O(log n) each and reads always
see a sorted column (the buffer is created with the first such sample: most
columns have none).

Invariant relied on by checkpoints: the first ``_n`` entries of a column
array are never modified in place.  Appends write beyond ``_n``; growing,
merging and re-layout allocate new arrays.  A snapshot can therefore keep
slices ``[:n]`` of the arrays and read them later without a lock.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._values import as_list, as_matrix

__all__ = ["FIXED_WIDTH_MAX", "SensorColumn", "fitting_groups", "prefix_len"]

#: values longer than this many bytes are kept in the var layout (see the module docstring)
FIXED_WIDTH_MAX = 64 << 10

_INTERN_LIMIT = 4096  # distinct values interned per var column
_MIN_CAPACITY = 16
_FLOAT_PREFIX = b"\xff\xcb"
_U32_MAX = 0xFFFFFFFF
_STEPS = np.arange(256, dtype=np.uint32)  # relative positions of a new key's first samples
_STEPS.flags.writeable = False
_NO_PENDING: frozenset[tuple[float, bytes]] = frozenset()
#: the positions column of a key's first sample (read-only, shared), by item size
_FIRST_POS: dict[int, np.ndarray] = {4: np.zeros(1, np.uint32), 8: np.zeros(1, np.uint64)}
for _arr in _FIRST_POS.values():
    _arr.flags.writeable = False


def prefix_len(width: int) -> int:
    """Bytes a fixed-layout column of values of `width` (at least 2) bytes starts
    its prefix with (the rest is stored per sample)."""
    return 2 if width > 2 else 1


def fitting_groups(ts: np.ndarray, mat: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Which groups of samples :meth:`SensorColumn.new_columns` can take as they are.

    Group ``i`` is the next ``sizes[i]`` (at least 1) samples: timestamps
    `ts` and values, the rows of the ``(k, width)`` uint8 matrix `mat`.  It
    fits if its timestamps strictly increase and its values share their first
    :func:`prefix_len` bytes (no group fits if `width` is below 2 or above
    :data:`FIXED_WIDTH_MAX`).  Returns a
    bool per group; a few vectorised passes whatever the number of groups.
    """
    width = mat.shape[1]
    if not 2 <= width <= FIXED_WIDTH_MAX:
        return np.zeros(len(sizes), bool)
    firsts = np.cumsum(sizes) - sizes
    heads = mat[:, :prefix_len(width)]
    bad = (heads != heads[np.repeat(firsts, sizes)]).any(axis=1)
    bad[1:] |= ts[1:] <= ts[:-1]
    bad[firsts] = False  # a group's first sample follows no other and has its own prefix
    group = np.repeat(np.arange(len(sizes)), sizes)
    fits: np.ndarray = np.bincount(group[bad], minlength=len(sizes)) == 0
    return fits


@functools.lru_cache(maxsize=256)
def _void(width: int) -> np.dtype[np.void]:
    return np.dtype(f"V{width}")


class SensorColumn:
    """The sorted samples of one mutable key (see module docstring)."""

    __slots__ = (
        "_cap",
        "_intern",
        "_last_val",
        "_list",
        "_n",
        "_pend",
        "_pend_set",
        "_pos",
        "_pos_base",
        "_pos_monotonic",
        "_prefix",
        "_ts",
        "_vals",
        "_vlen",
        "created",
        "last_ts",
    )

    def __init__(self, created: int, first_value: bytes, capacity: int = _MIN_CAPACITY) -> None:
        #: Position of the event that created the key (its first sample).
        self.created = created
        self._n = 0
        self._cap = max(capacity, _MIN_CAPACITY)
        self._ts = np.empty(self._cap, np.float64)
        self._pos = np.empty(self._cap, np.uint32)
        self._pos_base = created
        self._pos_monotonic = True  # positions increase along the sorted order
        self.last_ts = -np.inf
        self._last_val = b""
        # out-of-order samples waiting for a merge; a shared empty pair until the
        # first one (most columns never get one: no two containers each)
        self._pend: list[tuple[float, bytes, int]] | tuple[()] = ()
        self._pend_set: set[tuple[float, bytes]] | frozenset[tuple[float, bytes]] = _NO_PENDING
        self._list: list[bytes] | None = None
        self._intern: dict[bytes, bytes] | None = None
        vlen = len(first_value)
        self._vals: np.ndarray | None = None
        self._prefix = b""
        self._vlen = -1
        if 2 <= vlen <= FIXED_WIDTH_MAX:
            plen = prefix_len(vlen)
            self._prefix = first_value[:plen]
            self._vlen = vlen
            self._vals = np.empty(self._cap, _void(vlen - plen))
        else:
            self._to_var()

    @classmethod
    def new_columns(cls, ts: np.ndarray, pos: np.ndarray, mat: np.ndarray,
                    sizes: np.ndarray) -> list[SensorColumn]:
        """Fixed-layout columns for new keys, built together from their samples.

        Column ``i`` takes the next ``sizes[i]`` samples: timestamps `ts`
        (valid, -0.0 normalised, strictly increasing within a column),
        positions `pos` (increasing within a column; the first creates the
        key) and values, the rows of the ``(k, width)`` uint8 matrix `mat`
        (width at least 2; rows of a column share their first
        :func:`prefix_len` bytes).  This is what creating each column and
        appending its samples gives, without numpy's fixed cost per column:
        the columns share three arrays made read-only, and each keeps views
        of its part with no spare capacity, so its first append copies (the
        invariant checkpoints rely on holds).
        """
        k, width = mat.shape
        plen = prefix_len(width)
        firsts = np.cumsum(sizes) - sizes
        base = pos[firsts]
        rel = pos - np.repeat(base, sizes)
        rel = rel.astype(np.uint32 if not k or int(rel.max()) <= _U32_MAX else np.uint64)
        ts = np.array(ts, np.float64)
        vals = np.ascontiguousarray(mat[:, plen:]).view(_void(width - plen)).reshape(k)
        for arr in (ts, rel, vals):
            arr.flags.writeable = False
        lasts = firsts + sizes - 1
        # each column's prefix and newest value, as bytes
        heads = np.ascontiguousarray(mat[firsts, :plen]).view(_void(plen)).reshape(-1).tolist()
        tails = np.ascontiguousarray(mat[lasts]).view(_void(width)).reshape(-1).tolist()
        stamps = ts[lasts].tolist()
        prefixes: dict[bytes, bytes] = {}
        first = _FIRST_POS[rel.dtype.itemsize]
        out = []
        new = cls.__new__
        for a, b, created, prefix, tail, stamp in zip(firsts.tolist(), (lasts + 1).tolist(),
                                                       base.tolist(), heads, tails, stamps):
            # what adopt() does, inline (this loop is the cost per key of a bulk load)
            col = new(cls)
            col.created = col._pos_base = created
            col._n = col._cap = b - a
            col._ts = ts[a:b]
            # a key's first sample is at relative position 0: one shared array
            col._pos = rel[a:b] if b - a > 1 else first
            col._pos_monotonic = True
            col.last_ts = stamp
            col._last_val = tail
            col._pend = ()
            col._pend_set = _NO_PENDING
            col._vals = vals[a:b]
            col._prefix = prefixes.setdefault(prefix, prefix)
            col._vlen = width
            col._list = col._intern = None
            out.append(col)
        return out

    @classmethod
    def adopt(cls, created: int, pos_base: int, ts: np.ndarray, pos: np.ndarray,
              last_ts: float, last_value: bytes, monotonic: bool,
              vals: np.ndarray | None, prefix: bytes = b"",
              values: list[bytes] | None = None,
              intern: dict[bytes, bytes] | None = None) -> SensorColumn:
        """A column adopting arrays known to form a valid one, with no numpy call.

        `ts` (float64), `pos` (uint32 or uint64 offsets from `pos_base`) and,
        for the fixed layout, `vals` (``V<width>``, `prefix` removed) hold
        the column's samples, sorted; for the var layout `vals` is None and
        `values` the list of encoded values (`intern` its intern table).
        `last_ts` and `last_value` are the newest sample's; `monotonic` tells
        whether positions increase along the column.  The column takes no
        spare capacity: its first append copies the arrays.
        """
        col = cls.__new__(cls)
        col.created = created
        col._pos_base = pos_base
        col._n = col._cap = len(ts)
        col._ts = ts
        col._pos = pos
        col._pos_monotonic = monotonic
        col.last_ts = last_ts
        col._last_val = last_value
        col._pend = ()
        col._pend_set = _NO_PENDING
        col._vals = vals
        if vals is not None:
            col._prefix = prefix
            col._vlen = len(prefix) + vals.dtype.itemsize
            col._list = col._intern = None
        else:
            col._prefix = b""
            col._vlen = -1
            col._list = values
            col._intern = {} if intern is None else intern
        return col

    # ------------------------------------------------------------------ layout
    @property
    def is_fixed(self) -> bool:
        return self._vals is not None

    def _to_var(self) -> None:
        """Convert to the var layout (values as a list of bytes)."""
        values = self._fixed_values(0, self._n) if self._vals is not None else []
        intern: dict[bytes, bytes] = {}
        out = []
        for v in values:
            out.append(intern.setdefault(v, v) if len(intern) < _INTERN_LIMIT else v)
        self._list = out
        self._intern = intern
        self._vals = None
        self._prefix = b""
        self._vlen = -1

    def _fit(self, value: bytes) -> None:
        """Make the fixed layout able to hold `value` (or switch to var)."""
        if len(value) != self._vlen:
            self._to_var()
            return
        prefix = self._prefix
        plen = 0
        while plen < len(prefix) and prefix[plen] == value[plen]:
            plen += 1
        # Re-layout with a shorter prefix: the dropped bytes move into the column.
        assert self._vals is not None
        dropped = prefix[plen:]
        old_w = self._vlen - len(prefix)
        new_w = self._vlen - plen
        new = np.empty((self._cap, new_w), np.uint8)
        new[:, : len(dropped)] = np.frombuffer(dropped, np.uint8)
        new[:, len(dropped):] = self._vals.view(np.uint8).reshape(self._cap, old_w)
        self._vals = new.view(f"V{new_w}").reshape(self._cap)
        self._prefix = prefix[:plen]

    def _fits(self, value: bytes) -> bool:
        return len(value) == self._vlen and value.startswith(self._prefix)

    # --------------------------------------------------------------- mutation
    def contains(self, ts: float, value: bytes) -> bool:
        """Whether the exact sample ``(ts, value)`` is already stored."""
        last = self.last_ts
        if ts > last:
            return False
        if ts == last and value >= self._last_val:
            return value == self._last_val
        if (ts, value) in self._pend_set:
            return True
        n = self._n
        tsa = self._ts[:n]
        lo = int(tsa.searchsorted(ts, "left"))
        hi = int(tsa.searchsorted(ts, "right"))
        return any(self.value_at(i) == value for i in range(lo, hi))

    def append(self, ts: float, value: bytes, pos: int) -> None:
        """Add a sample that sorts after every stored one (the hot path of every
        write: one call, no helper)."""
        self.last_ts = ts
        self._last_val = value
        n = self._n
        if n == self._cap:
            self._grow(n + 1)
        vals = self._vals
        if vals is not None and not (len(value) == self._vlen
                                     and value.startswith(self._prefix)):
            self._fit(value)
            vals = self._vals
        if vals is not None:
            vals[n] = value[len(self._prefix):]
        else:
            assert self._list is not None
            self._list.append(self._interned(value))
        self._ts[n] = ts
        try:
            self._pos[n] = pos - self._pos_base
        except OverflowError:
            self._set_pos(n, pos)
        self._n = n + 1

    def add(self, ts: float, value: bytes, pos: int) -> None:
        """Add a sample that :meth:`contains` said is new."""
        last = self.last_ts
        if ts > last or (ts == last and value > self._last_val):
            self.append(ts, value, pos)
        else:
            pend, pend_set = self._pend, self._pend_set
            if not isinstance(pend, list) or not isinstance(pend_set, set):
                pend = self._pend = []
                pend_set = self._pend_set = set()
            pend.append((ts, value, pos))
            pend_set.add((ts, value))
            if len(pend) > max(64, self._n >> 6):
                self._merge()

    def _grow(self, need: int) -> None:
        if self._vlen > FIXED_WIDTH_MAX:  # huge values: no spare room for them (see above)
            self._to_var()
        cap = max(need, self._cap + (self._cap >> 2) + _MIN_CAPACITY)
        n = self._n
        ts = np.empty(cap, np.float64)
        ts[:n] = self._ts[:n]
        pos = np.empty(cap, self._pos.dtype)
        pos[:n] = self._pos[:n]
        if self._vals is not None:
            vals = np.empty(cap, self._vals.dtype)
            vals[:n] = self._vals[:n]
            self._vals = vals
        self._ts, self._pos, self._cap = ts, pos, cap

    def _set_pos(self, i: int, pos: int) -> None:
        rel = pos - self._pos_base
        if rel > _U32_MAX and self._pos.dtype != np.uint64:
            self._pos = self._pos.astype(np.uint64)
        if rel < 0:
            raise ValueError(f"position {pos} precedes the key's first position {self._pos_base}")
        self._pos[i] = rel

    def extend_sorted(self, ts: np.ndarray, values: Sequence[bytes] | np.ndarray,
                      pos: np.ndarray, prefix: bytes = b"") -> bool:
        """Append a batch known to sort strictly after every stored sample.

        `ts` must be strictly increasing with ``ts[0]`` greater than the last
        stored timestamp.  `values` is a list of bytes, or (for the fixed
        layout) a ``V<width>`` array of values with `prefix` removed.  Returns
        False (and changes nothing) if the batch does not qualify, in which
        case the caller adds the samples one at a time.
        """
        k = len(ts)
        if k == 0:
            return True
        if not (ts[0] > self.last_ts) or (k > 1 and not bool(np.all(ts[1:] > ts[:-1]))):
            return False
        rel = pos.astype(np.int64) - self._pos_base
        if rel.min() < 0:
            return False
        n = self._n
        if n + k > self._cap:
            self._grow(n + k + (n >> 2))
        if int(rel.max()) > _U32_MAX and self._pos.dtype != np.uint64:
            self._pos = self._pos.astype(np.uint64)
        self._store_values(values, prefix)
        self._ts[n:n + k] = ts
        self._pos[n:n + k] = rel
        self._n = n + k
        self.last_ts = float(ts[-1])
        self._last_val = self.value_at(n + k - 1)
        return True

    def extend_small(self, ts: np.ndarray, last_ts: float, values: list[bytes],
                     first: int) -> None:
        """Append a small batch at positions ``first, first + 1, ...`` with no
        numpy reduction (their fixed cost dominates a batch of a few samples).

        The caller has checked what :meth:`extend_sorted` checks: `ts` is a
        non-empty, strictly increasing float64 array of valid timestamps whose
        first one is greater than the last stored, `last_ts` is ``ts[-1]`` as
        a Python float, and `first` is not below the key's first position.
        """
        k = len(values)
        n = self._n
        end = n + k
        if end > self._cap:
            self._grow(end + (n >> 2))
        rel = first - self._pos_base
        if rel + k - 1 > _U32_MAX and self._pos.dtype != np.uint64:
            self._pos = self._pos.astype(np.uint64)
        vals = self._vals
        if vals is not None:
            vlen, prefix = self._vlen, self._prefix
            plen = len(prefix)
            i = n
            for v in values:  # writes past _n are invisible until _n moves
                if len(v) != vlen or not v.startswith(prefix):
                    self._extend_values(values)  # re-layout, then store them all
                    break
                vals[i] = v[plen:]
                i += 1
        else:
            self._extend_values(values)
        self._ts[n:end] = ts
        self._pos[n:end] = _STEPS[rel:rel + k] if 0 <= rel <= len(_STEPS) - k \
            else range(rel, rel + k)
        self._n = end
        self.last_ts = last_ts
        self._last_val = values[-1]

    def _store_values(self, values: Sequence[bytes] | np.ndarray, prefix: bytes = b"") -> None:
        """Store values at ``[_n, _n + len(values))`` (capacity already ensured).

        `values` is a list of encoded values, or a ``V<width>`` array of
        encoded values with `prefix` removed.  Fixed-width batches are checked
        and copied with numpy (no Python step per value) whenever they fit
        the column's layout; anything else goes value by value.
        """
        n = self._n
        k = len(values)
        if self._vals is not None:
            mat = as_matrix(values, prefix)
            if mat is not None and mat.shape[1] == self._vlen:
                plen = len(self._prefix)
                head = mat[:, :plen]
                if plen == 0 or bool((head == np.frombuffer(self._prefix, np.uint8)).all()):
                    body = np.ascontiguousarray(mat[:, plen:])
                    self._vals[n:n + k] = body.view(self._vals.dtype).reshape(k)
                    return
        self._extend_values(as_list(values, prefix))

    def _extend_values(self, values: Sequence[bytes]) -> None:
        """Store `values` one by one at ``[_n, _n + len(values))``."""
        if self._vals is not None:
            for v in values:  # make the layout fit every value first
                if not self._fits(v):
                    self._fit(v)
                    if self._vals is None:
                        break
        n = self._n
        if self._vals is not None:
            plen = len(self._prefix)
            self._vals[n:n + len(values)] = np.array([v[plen:] for v in values],
                                                      dtype=self._vals.dtype)
        else:
            assert self._list is not None
            self._list.extend(self._interned(v) for v in values)

    def _interned(self, value: bytes) -> bytes:
        intern = self._intern
        assert intern is not None
        if len(intern) < _INTERN_LIMIT:
            return intern.setdefault(value, value)
        return intern.get(value, value)

    def _merge(self) -> None:
        """Merge the pending out-of-order samples into the sorted columns."""
        pend = sorted(self._pend, key=lambda s: (s[0], s[1]))
        self._pend = ()
        self._pend_set = _NO_PENDING
        n = self._n
        if self._vals is not None:
            for _, v, _ in pend:
                if not self._fits(v):
                    self._fit(v)
                    if self._vals is None:
                        break
        tsa = self._ts[:n]
        pts = np.fromiter((s[0] for s in pend), np.float64, len(pend))
        idx = np.searchsorted(tsa, pts, "left")
        # Equal timestamps: place by value bytes (rare, so plain Python).
        hi = np.searchsorted(tsa, pts, "right")
        for j in np.nonzero(hi > idx)[0].tolist():
            lo, up = int(idx[j]), int(hi[j])
            vals = [self.value_at(i) for i in range(lo, up)]
            idx[j] = lo + bisect.bisect_left(vals, pend[j][1])
        rel = np.fromiter((s[2] for s in pend), np.int64, len(pend)) - self._pos_base
        if rel.min() < 0:
            raise ValueError("pending sample precedes the key's first position")
        if rel.max() > _U32_MAX and self._pos.dtype != np.uint64:
            self._pos = self._pos.astype(np.uint64)
        new_ts = np.insert(tsa, idx, pts)
        new_pos = np.insert(self._pos[:n], idx, rel.astype(self._pos.dtype))
        if self._vals is not None:
            plen = len(self._prefix)
            pv = np.array([s[1][plen:] for s in pend], dtype=self._vals.dtype)
            self._vals = np.insert(self._vals[:n], idx, pv)
        else:
            assert self._list is not None
            old = self._list
            out: list[bytes] = []
            prev = 0
            for j, i in enumerate(idx.tolist()):
                out.extend(old[prev:i])
                out.append(self._interned(pend[j][1]))
                prev = i
            out.extend(old[prev:])
            self._list = out
        self._ts = new_ts
        self._pos = new_pos
        self._pos_monotonic = False
        self._n = self._cap = len(new_ts)

    def settle(self) -> None:
        """Merge pending samples so the columns hold everything, sorted."""
        if self._pend:
            self._merge()

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        return self._n + len(self._pend)

    @property
    def last(self) -> tuple[bytes, float]:
        """The newest sample ``(value, timestamp)``."""
        return self._last_val, float(self.last_ts)

    def value_at(self, i: int) -> bytes:
        if self._vals is not None:
            raw: bytes = self._vals[i].tobytes()
            return self._prefix + raw
        assert self._list is not None
        return self._list[i]

    def _fixed_values(self, i0: int, i1: int) -> list[bytes]:
        assert self._vals is not None
        raw = self._vals[i0:i1].tobytes()
        w = self._vals.dtype.itemsize
        p = self._prefix
        if p:
            return [p + raw[j:j + w] for j in range(0, len(raw), w)]
        return [raw[j:j + w] for j in range(0, len(raw), w)]

    def values(self, i0: int, i1: int) -> list[bytes]:
        """Encoded values of samples ``[i0, i1)`` (call :meth:`settle` first)."""
        if self._vals is not None:
            return self._fixed_values(i0, i1)
        assert self._list is not None
        return self._list[i0:i1]

    def timestamps(self, i0: int = 0, i1: int | None = None) -> np.ndarray:
        return self._ts[i0:self._n if i1 is None else i1]

    def positions(self, i0: int = 0, i1: int | None = None) -> np.ndarray:
        """Log positions of samples ``[i0, i1)`` as int64."""
        rel = self._pos[i0:self._n if i1 is None else i1]
        return rel.astype(np.int64) + self._pos_base

    def float_values(self, i0: int, i1: int) -> np.ndarray | None:
        """Values ``[i0, i1)`` as a float64 array if they are all msgpack doubles."""
        if self._vals is not None and self._vlen == 10:
            p = self._prefix
            if p == _FLOAT_PREFIX:
                return self._vals[i0:i1].view(">f8")
            if _FLOAT_PREFIX.startswith(p):
                raw = self._vals[i0:i1].view(np.uint8).reshape(-1, 10 - len(p))
                head = raw[:, : 2 - len(p)]
                if bool(np.all(head == np.frombuffer(_FLOAT_PREFIX[len(p):], np.uint8))):
                    return np.ascontiguousarray(raw[:, 2 - len(p):]).view(">f8").reshape(-1)
        return None

    def index_range(self, st: float, et: float, include_previous: bool,
                    include_end: bool) -> tuple[int, int]:
        """Sample index range for katsdptelstate's get_range semantics.

        st is inclusive; et exclusive, or inclusive if `include_end`;
        `include_previous` adds the last sample before st.  Matches the
        byte-wise ZRANGEBYLEX bounds katsdptelstate builds (the column must
        be settled).
        """
        tsa = self._ts[:self._n]
        start = int(tsa.searchsorted(st, "left"))
        if et == np.inf:
            end = self._n
        else:
            end = int(tsa.searchsorted(et, "right" if include_end else "left"))
        if include_previous and start > 0:
            start -= 1
        return start, max(start, end)

    def range_list(self, st: float, et: float, include_previous: bool,
                   include_end: bool) -> list[tuple[bytes, float]]:
        """The samples :meth:`index_range` selects, as (encoded value, timestamp)."""
        i0, i1 = self.index_range(st, et, include_previous, include_end)
        return list(zip(self.values(i0, i1), self.timestamps(i0, i1).tolist()))

    def nbytes(self) -> int:
        """Approximate memory held by the column."""
        total = self._ts.nbytes + self._pos.nbytes
        if self._vals is not None:
            total += self._vals.nbytes
        else:
            assert self._list is not None and self._intern is not None
            total += 8 * len(self._list) + sum(33 + len(v) for v in self._intern)
        return total

    # -------------------------------------------------------------- snapshots
    def snapshot(self) -> dict[str, Any]:
        """Immutable description of the (settled) column for checkpoints."""
        self.settle()
        n = self._n
        snap: dict[str, Any] = {
            "created": self.created,
            "pos_base": self._pos_base,
            "ts": self._ts[:n],
            "pos": self._pos[:n],
        }
        if self._vals is not None:
            snap["prefix"] = self._prefix
            snap["vals"] = self._vals[:n]
        else:
            assert self._list is not None
            snap["list"] = self._list[:n]
        return snap

    def upto(self, position: int) -> SensorColumn | None:
        """A read-only column of the samples added at or before `position`.

        Built from views of the immutable column prefix (in-order columns:
        no copy) or, if out-of-order samples made positions non-monotonic, a
        filtered copy.  None if no sample is that old.  Later writes to this
        column do not affect the result.
        """
        self.settle()
        n = self._n
        rel = position - self._pos_base
        if rel < 0 or n == 0:
            return None
        pos = self._pos[:n]
        if self._pos_monotonic:
            cut = int(np.searchsorted(pos, rel, "right"))
            sel: Any = slice(0, cut)
            count = cut
        else:
            sel = np.nonzero(pos <= rel)[0]
            count = len(sel)
        if count == 0:
            return None
        snap: dict[str, Any] = {"created": self.created, "pos_base": self._pos_base,
                                "ts": self._ts[:n][sel], "pos": pos[sel],
                                "monotonic": isinstance(sel, slice)}
        if self._vals is not None:
            snap["prefix"] = self._prefix
            snap["vals"] = self._vals[:n][sel]
        else:
            assert self._list is not None
            lst = self._list
            snap["list"] = lst[:count] if isinstance(sel, slice) else [lst[i] for i in sel.tolist()]
        return SensorColumn.from_snapshot(snap, intern=False)

    @classmethod
    def from_snapshot(cls, snap: dict[str, Any], intern: bool = True) -> SensorColumn:
        """Rebuild a column from :meth:`snapshot` output (arrays are adopted)."""
        col = cls.__new__(cls)
        col.created = int(snap["created"])
        ts = np.asarray(snap["ts"], np.float64)
        n = len(ts)
        col._n = col._cap = n
        col._ts = ts
        col._pos = np.asarray(snap["pos"])
        col._pos_base = int(snap["pos_base"])
        col._pos_monotonic = bool(snap.get("monotonic", False)) or bool(
            n < 2 or np.all(col._pos[1:] >= col._pos[:-1]))
        col._pend = ()
        col._pend_set = _NO_PENDING
        if "vals" in snap:
            col._vals = np.asarray(snap["vals"])
            col._prefix = bytes(snap["prefix"])
            col._vlen = len(col._prefix) + col._vals.dtype.itemsize
            col._list = col._intern = None
        else:
            col._vals = None
            col._prefix = b""
            col._vlen = -1
            table: dict[bytes, bytes] = {}
            if intern:
                lst = []
                for v in snap["list"]:
                    lst.append(table.setdefault(v, v) if len(table) < _INTERN_LIMIT else v)
            else:
                lst = list(snap["list"])
            col._list = lst
            col._intern = table
        if n:
            col.last_ts = float(ts[-1])
            col._last_val = col.value_at(n - 1)
        else:
            col.last_ts = -np.inf
            col._last_val = b""
        return col
