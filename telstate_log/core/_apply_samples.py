"""Apply the samples of a run of log events: one batch per key, new keys in bulk.

Theory of operation
-------------------
The replayer (:mod:`telstate_log.core._apply`) hands over the ADD and
ADD_BATCH samples of a run once :func:`~telstate_log.core._apply_check.check_run`
has validated all of it.  They are sorted by key (positions in order within
a key) and applied one batch per key, at a cost linear in samples and keys
however few samples each key has -- a log of 100,000 keys of one sample
each used to cost some 40 numpy calls per key:

* keys new to the state whose samples fit a fixed-layout column as they are
  (timestamps increasing, one width, one prefix) -- when a run creates at
  least :data:`BULK_KEYS` keys -- get their columns built together, a few
  vectorised operations per value width
  (:meth:`~telstate_log.core._sensor.SensorColumn.new_columns`,
  :meth:`~telstate_log.core._state.State.add_sensors`);
* other keys with at most ``SMALL_BATCH`` samples take the plain-Python path
  (:meth:`~telstate_log.core._state.State.apply_sensor_samples`): numpy's fixed
  cost per call would dominate them;
* the others take one numpy batch each
  (:meth:`~telstate_log.core._state.State.apply_sensor_batch`).

Each path stores what adding the samples one by one stores.  Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _log_format as fmt
from ._apply_check import RunKeys, Samples
from ._errors import ImmutableKeyError, InvalidTimestampError
from ._sensor import FIXED_WIDTH_MAX, SensorColumn, prefix_len
from ._state import SMALL_BATCH, State
from ._tables import ReplayError
from ._values import gather

__all__ = ["BULK_KEYS", "apply_samples"]

#: A run creating at least this many keys builds their columns together.
BULK_KEYS = 16


def apply_samples(state: State, buf: memoryview, dec: fmt.Decoded, s: Samples,
                  keys: RunKeys) -> None:
    """Apply the samples `s` of one run (checked by
    :func:`~telstate_log.core._apply_check.check_run`, which found `keys`) to
    `state`; see the module docstring."""

    kid, pos = s.kid, s.pos
    if _in_order(kid, pos):  # often: each key's samples together (no sort)
        order = np.arange(len(kid))
        ts, start, length = s.ts + 0.0, s.start, s.length  # + 0.0: -0.0 -> 0.0
    else:
        order = np.lexsort((pos, kid))
        kid, pos = kid[order], pos[order]
        ts, start, length = s.ts[order] + 0.0, s.start[order], s.length[order]
    n = len(kid)
    lo = np.flatnonzero(np.concatenate(([True], kid[1:] != kid[:-1])))
    sizes = np.diff(np.append(lo, n))
    gkeys, types = keys.lookup(kid[lo])
    new = types == 0
    arr = np.frombuffer(buf, np.uint8)
    if len(gkeys) >= BULK_KEYS:
        fixed = new & _fits_new_column(arr, ts, start, length, lo, sizes)
    else:
        fixed = np.zeros(len(gkeys), bool)
    if fixed.any():
        _new_columns(state, arr, gkeys, np.flatnonzero(fixed), ts, pos, start, length, lo,
                     sizes)
    rest = np.flatnonzero(~fixed).tolist()
    if not rest:
        return
    lo_l, sizes_l = lo.tolist(), sizes.tolist()
    small = any(sizes_l[g] <= SMALL_BATCH for g in rest)
    if small:
        ts_l, pos_l = ts.tolist(), pos.tolist()
        start_l, length_l = start.tolist(), length.tolist()
    for g in rest:
        a = lo_l[g]
        b = a + sizes_l[g]
        key = gkeys[g]
        try:
            if b - a <= SMALL_BATCH:
                values = [bytes(buf[x:x + m]) for x, m in zip(start_l[a:b], length_l[a:b])]
                state.apply_sensor_samples(key, ts_l[a:b], values, pos_l[a:b])
            else:
                vals, prefix = _gather_values(buf, arr, start[a:b], length[a:b])
                state.apply_sensor_batch(key, ts[a:b], vals, pos[a:b], prefix)
        except (ImmutableKeyError, InvalidTimestampError, ValueError) as exc:
            frame = int(s.frame[order[a]])
            raise ReplayError(f"samples of {key!r} are invalid here: {exc}",
                              int(dec.offsets[frame])) from None


def _new_columns(state: State, arr: np.ndarray, gkeys: list[bytes], groups: np.ndarray,
                 ts: np.ndarray, pos: np.ndarray, start: np.ndarray, length: np.ndarray,
                 lo: np.ndarray, sizes: np.ndarray) -> None:
    """Create the columns of new keys `groups` in bulk, one pass per value width."""
    widths = length[lo[groups]]
    if bool((widths != widths[0]).any()):
        groups = groups[np.argsort(widths, kind="stable")]
        widths = length[lo[groups]]
    cuts = np.flatnonzero(widths[1:] != widths[:-1]) + 1
    for part in np.split(groups, cuts):
        w = int(length[lo[part[0]]])
        counts = sizes[part]
        # the samples of these groups, group after group
        idx = np.repeat(lo[part] - (np.cumsum(counts) - counts), counts) + \
            np.arange(int(counts.sum()))
        columns = SensorColumn.new_columns(ts[idx], pos[idx], gather(arr, start[idx], w),
                                           counts)
        state.add_sensors([gkeys[g] for g in part.tolist()], columns)


def _in_order(kid: np.ndarray, pos: np.ndarray) -> bool:
    """Whether samples are sorted by key, and by position within a key."""
    if len(kid) < 2:
        return True
    step = kid[1:] - kid[:-1]
    return bool(((step > 0) | ((step == 0) & (pos[1:] > pos[:-1]))).all())


def _fits_new_column(arr: np.ndarray, ts: np.ndarray, start: np.ndarray, length: np.ndarray,
                     lo: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Which groups of samples (``[lo, lo + sizes)``, one key each) fit one
    fixed-layout column as they are: timestamps strictly increasing, values of
    one width of at least 2 bytes (and at most
    :data:`~telstate_log.core._sensor.FIXED_WIDTH_MAX`) that share the column prefix
    (:func:`~telstate_log.core._sensor.prefix_len` bytes)."""
    first = np.repeat(lo, sizes)
    bad = (length != length[first]) | (length < 2) | (length > FIXED_WIDTH_MAX)
    later = np.ones(len(ts), bool)
    later[lo] = False  # a group's first timestamp follows no other
    later[1:] &= ts[1:] <= ts[:-1]
    bad |= later
    head = arr[start]
    bad |= head != head[first]
    second = arr[start + 1]  # values of 1 byte are refused above
    bad |= (length > 2) & (second != second[first])
    group = np.repeat(np.arange(len(lo)), sizes)
    fits: np.ndarray = np.bincount(group[bad], minlength=len(lo)) == 0
    return fits


def _gather_values(buf: memoryview, arr: np.ndarray, starts: np.ndarray,
                   lengths: np.ndarray) -> tuple[Any, bytes]:
    """Values at `starts` as a V-array plus common prefix, or a list of bytes."""
    w = int(lengths[0]) if len(lengths) else 0
    if w >= 2 and bool((lengths == w).all()):
        mat = gather(arr, starts, w)
        plen = prefix_len(w)
        head = mat[:, :plen]
        if bool((head == head[0]).all()):
            prefix = head[0].tobytes()
            return np.ascontiguousarray(mat[:, plen:]).view(f"V{w - plen}").reshape(-1), prefix
        return mat.view(f"V{w}").reshape(-1), b""
    return [bytes(buf[s:s + n]) for s, n in zip(starts.tolist(), lengths.tolist())], b""
