"""The materialised telescope state: apply events, answer queries.

Theory of operation
-------------------
:class:`State` is the pure core shared by every in-process backend.  It
touches no files, clocks, locks or sockets.  It holds the current value of
every key, in the representation each key type needs:

* immutable: :class:`Immutable` (the encoded value and its position);
* indexed: :class:`Indexed` (sub-key -> encoded value, sub-key -> position);
* mutable: :class:`~telstate_log.core._sensor.SensorColumn` (numpy columns).

Every change is an *event* with a position: 1, 2, 3, ... without gaps.
Writers call the mutating methods with a ``commit`` hook.  The state first
decides whether the write changes anything (a duplicate sample, an equal
immutable or an equal indexed value changes nothing and yields no event) or
conflicts with the key's type (:exc:`ImmutableKeyError`); only then does it
call ``commit(kind, position, key, sub_key, value, timestamp)`` -- where the
log backend makes the event durable -- and only if that returns does the
state change.  A failed commit therefore leaves the state untouched.

A bulk write (:meth:`State.add_mutable_batch`) is checked and stored with
numpy, except a batch of at most :data:`SMALL_BATCH` samples, which goes
through an equivalent plain-Python path: for a few samples numpy's fixed
cost per call outweighs the work (importing many small sensors is made of
such batches).

Replaying a log calls :meth:`State.apply` (one event),
:meth:`State.apply_sensor_batch` (a run of samples for one key; for a few
samples :meth:`State.apply_sensor_samples`, in plain Python) or
:meth:`State.add_sensors` (the columns of many new keys, built together) with
the recorded positions; an event that contradicts the state raises
:exc:`ImmutableKeyError`, which the log reports as corruption.

Deleted entries are kept in a graveyard (with the position that deleted
them) when ``keep_history`` is set, so time-travel views can show keys as
they were before a delete or clear.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ._errors import ImmutableKeyError, InvalidTimestampError
from ._events import ADD, CLEAR, DELETE, IMMUTABLE, INDEXED
from ._pattern import compile_pattern
from ._sensor import SensorColumn, fitting_groups
from ._types import KeyType

__all__ = [
    "Commit",
    "CommitBatch",
    "CommitSample",
    "Immutable",
    "Indexed",
    "State",
]

#: commit(kind, position, key, sub_key, value, timestamp); kind is one of the event kinds
#: of :mod:`._events`
Commit = Callable[[int, int, bytes, bytes, bytes, float], None]
#: commit_sample(position, key, value, timestamp): the commonest event, an ADD
#: (a sample), as its own hook: the same as commit(ADD, position, key, b"", value,
#: timestamp), with no kind to pass and dispatch on
CommitSample = Callable[[int, bytes, bytes, float], None]
#: commit_batch(first position, key, timestamps, values): samples at consecutive positions
CommitBatch = Callable[[int, bytes, np.ndarray, "list[bytes] | np.ndarray"], None]


class Immutable:
    """An immutable key: one encoded value."""

    __slots__ = ("created", "value")

    def __init__(self, value: bytes, created: int) -> None:
        self.value = value
        self.created = created


class Indexed:
    """An indexed key: a dict of immutable sub-keys."""

    __slots__ = ("created", "positions", "values")

    def __init__(self, created: int) -> None:
        self.created = created
        self.values: dict[bytes, bytes] = {}
        self.positions: dict[bytes, int] = {}


Entry = Immutable | Indexed | SensorColumn
_INF = math.inf
#: Batches of at most this many samples take the plain-Python path of
#: :meth:`State.add_mutable_batch` (numpy's fixed cost per call dominates them).
SMALL_BATCH = 32
_TYPES: dict[type, KeyType] = {Immutable: KeyType.IMMUTABLE, Indexed: KeyType.INDEXED,
                               SensorColumn: KeyType.MUTABLE}
_TYPE_CODES: dict[type, int] = {type(None): 0, **{t: k.value for t, k in _TYPES.items()}}


def _type_error(key: bytes, entry: Entry, wanted: str) -> ImmutableKeyError:
    have = _TYPES[type(entry)].name.lower()
    return ImmutableKeyError(f"key {key!r} is {have}, not {wanted}")


_EMPTY_SAMPLE = ("a sample value cannot be empty (an encoded value is at least one byte, "
                 "and a Redis sensor member needs one after its timestamp)")


def _unknown_samples(entry: SensorColumn | None, ts: np.ndarray,
                     values: Sequence[bytes]) -> tuple[np.ndarray, list[bytes]]:
    """The samples of a batch not stored in `entry` (nor earlier in the batch), in order."""
    seen: set[tuple[float, bytes]] = set()
    keep = []
    for i, (t, v) in enumerate(zip(ts.tolist(), values)):
        if (t, v) in seen or (entry is not None and entry.contains(t, v)):
            continue
        seen.add((t, v))
        keep.append(i)
    return ts[keep], [values[i] for i in keep]


def check_timestamp(ts: float) -> float:
    """Validate a sample timestamp; returns it with -0.0 normalised to 0.0."""
    if not (ts >= 0.0 and ts != math.inf):
        if math.isnan(ts) or math.isinf(ts):
            raise InvalidTimestampError(f"Non-finite timestamps ({ts}) are not supported")
        raise InvalidTimestampError(f"Negative timestamps ({ts}) are not supported")
    return ts + 0.0


class State:
    """Materialised telescope state (see module docstring)."""

    def __init__(self, keep_history: bool = False) -> None:
        #: Position of the last event applied (0 for an empty log).
        self.position = 0
        self.keep_history = keep_history
        self._keys: dict[bytes, Entry] = {}
        #: key -> [(entry, position of the delete/clear event)], oldest first
        self.graveyard: dict[bytes, list[tuple[Entry, int]]] = {}
        #: history before this position was pruned (time travel refuses it)
        self.history_from = 0

    # ------------------------------------------------------------ write path
    def set_immutable(self, key: bytes, value: bytes, commit: Commit | None = None) -> bytes | None:
        """Set an immutable; returns the existing value (and changes nothing) if set."""
        entry = self._keys.get(key)
        if entry is not None:
            if type(entry) is Immutable:
                return entry.value
            raise _type_error(key, entry, "immutable")
        pos = self.position + 1
        if commit is not None:
            commit(IMMUTABLE, pos, key, b"", value, 0.0)
        self._keys[key] = Immutable(value, pos)
        self.position = pos
        return None

    def add_mutable(self, key: bytes, value: bytes, ts: float,
                    commit: CommitSample | None = None) -> int:
        """Add a sample; returns its event's position, or 0 (no event) if it is
        already stored."""
        if not 0.0 <= ts < _INF:
            check_timestamp(ts)  # raises the right error
        if not value:
            raise ValueError(_EMPTY_SAMPLE)
        ts += 0.0  # -0.0 -> 0.0
        entry = self._keys.get(key)
        pos = self.position + 1
        if type(entry) is SensorColumn:
            if ts > entry.last_ts:  # the newest sample (the hot path)
                if commit is not None:
                    commit(pos, key, value, ts)
                entry.append(ts, value, pos)
            else:
                if entry.contains(ts, value):
                    return 0
                if commit is not None:
                    commit(pos, key, value, ts)
                entry.add(ts, value, pos)
        elif entry is None:
            if commit is not None:
                commit(pos, key, value, ts)
            col = SensorColumn(pos, value)
            col.append(ts, value, pos)
            self._keys[key] = col
        else:
            raise _type_error(key, entry, "mutable")
        self.position = pos
        return pos

    def add_mutable_batch(self, key: bytes, values: Sequence[bytes] | np.ndarray,
                          ts: np.ndarray, commit: CommitBatch | None = None) -> int:
        """Add many samples to one key; returns how many were new (one event each).

        `values` is a list of encoded values or a ``V<width>`` numpy array of
        fixed-width encoded values (kept as an array end to end, so a big
        sensor costs no Python step per sample).  Samples already stored, and
        repeats within the batch, are dropped; the new ones get consecutive
        positions in the order given.  Batches of up to :data:`SMALL_BATCH`
        samples are checked in plain Python instead (same results), since
        numpy's fixed cost per call dominates them.
        """
        ts = np.asarray(ts, np.float64)
        count = len(ts)
        if count != len(values):
            raise ValueError("values and timestamps differ in length")
        if count == 0:
            return 0
        if count <= SMALL_BATCH and ts.ndim == 1 and (
                type(values) is list
                or (isinstance(values, np.ndarray) and values.dtype.kind == "V")):
            return self._add_small_batch(key, values, ts, commit)
        if not bool(np.all((ts >= 0.0) & (ts < _INF))):
            bad = float(ts[~((ts >= 0.0) & (ts < _INF))][0])
            check_timestamp(bad)  # raises the right error
        ts = ts + 0.0
        if values.dtype.itemsize == 0 if isinstance(values, np.ndarray) else not all(values):
            raise ValueError(_EMPTY_SAMPLE)
        entry = self._sensor_entry(key)
        increasing = len(ts) == 1 or bool(np.all(ts[1:] > ts[:-1]))
        if increasing and (entry is None or ts[0] > entry.last_ts):
            new_vals = values if isinstance(values, np.ndarray) else list(values)
            return self._store_batch(key, entry, ts, new_vals, commit)
        vals = values.tolist() if isinstance(values, np.ndarray) else values
        return self._store_batch(key, entry, *_unknown_samples(entry, ts, vals), commit)

    def _add_small_batch(self, key: bytes, values: list[bytes] | np.ndarray, ts: np.ndarray,
                         commit: CommitBatch | None) -> int:
        """:meth:`add_mutable_batch` of a short 1-D batch, in plain Python."""
        stamps = ts.tolist()
        increasing = True
        prev = -1.0
        for t in stamps:
            if not 0.0 <= t < _INF:
                check_timestamp(t)  # raises the right error
            if t <= prev:
                increasing = False
            prev = t
        if 0.0 in stamps:  # -0.0 -> 0.0 (a copy, as the numpy path makes)
            ts = ts + 0.0
            stamps = ts.tolist()
        if isinstance(values, np.ndarray):
            if values.dtype.itemsize == 0:
                raise ValueError(_EMPTY_SAMPLE)
            vals: list[bytes] = values.tolist()
        else:
            if not all(values):
                raise ValueError(_EMPTY_SAMPLE)
            vals = values
        entry = self._sensor_entry(key)
        if not (increasing and (entry is None or stamps[0] > entry.last_ts)):
            return self._store_batch(key, entry, *_unknown_samples(entry, ts, vals), commit)
        k = len(vals)
        first = self.position + 1
        if commit is not None:
            commit(first, key, ts, values if isinstance(values, np.ndarray) else list(vals))
        if entry is None:
            entry = self._keys[key] = SensorColumn(first, vals[0], capacity=k)
        entry.extend_small(ts, stamps[-1], vals, first)
        self.position = first + k - 1
        return k

    def _sensor_entry(self, key: bytes) -> SensorColumn | None:
        """The column of `key`, None if absent; ImmutableKeyError if not mutable."""
        entry = self._keys.get(key)
        if entry is not None and type(entry) is not SensorColumn:
            raise _type_error(key, entry, "mutable")
        return entry

    def _store_batch(self, key: bytes, entry: SensorColumn | None, new_ts: np.ndarray,
                     new_vals: list[bytes] | np.ndarray, commit: CommitBatch | None) -> int:
        """Commit and store new samples of `key` at consecutive positions."""
        k = len(new_vals)
        if k == 0:
            return 0
        first = self.position + 1
        if commit is not None:
            commit(first, key, new_ts, new_vals)
        pos = np.arange(first, first + k, dtype=np.int64)
        if entry is None:
            first_value = new_vals[0] if not isinstance(new_vals, np.ndarray) \
                else new_vals[0].tobytes()
            entry = self._keys[key] = SensorColumn(first, first_value, capacity=k)
        if not entry.extend_sorted(new_ts, new_vals, pos):
            vals2 = new_vals.tolist() if isinstance(new_vals, np.ndarray) else new_vals
            for t, v, p in zip(new_ts.tolist(), vals2, pos.tolist()):
                entry.add(t, v, p)
        self.position = first + k - 1
        return k

    def set_indexed(self, key: bytes, sub_key: bytes, value: bytes,
                    commit: Commit | None = None) -> bytes | None:
        """Set a sub-key; returns the existing value (and changes nothing) if set."""
        entry = self._keys.get(key)
        if entry is None:
            new = True
        elif type(entry) is Indexed:
            old = entry.values.get(sub_key)
            if old is not None:
                return old
            new = False
        else:
            raise _type_error(key, entry, "indexed")
        pos = self.position + 1
        if commit is not None:
            commit(INDEXED, pos, key, sub_key, value, 0.0)
        if new:
            entry = self._keys[key] = Indexed(pos)
        assert type(entry) is Indexed
        entry.values[sub_key] = value
        entry.positions[sub_key] = pos
        self.position = pos
        return None

    def delete(self, key: bytes, commit: Commit | None = None) -> bool:
        """Delete a key; returns False (no event) if it does not exist."""
        if key not in self._keys:
            return False
        pos = self.position + 1
        if commit is not None:
            commit(DELETE, pos, key, b"", b"", 0.0)
        self._bury(key, self._keys.pop(key), pos)
        self.position = pos
        return True

    def clear(self, commit: Commit | None = None) -> list[bytes]:
        """Delete every key; returns the keys removed (none: no event)."""
        if not self._keys:
            return []
        pos = self.position + 1
        if commit is not None:
            commit(CLEAR, pos, b"", b"", b"", 0.0)
        removed = list(self._keys)
        for key, entry in self._keys.items():
            self._bury(key, entry, pos)
        self._keys = {}
        self.position = pos
        return removed

    def _bury(self, key: bytes, entry: Entry, pos: int) -> None:
        if self.keep_history:
            if type(entry) is SensorColumn:
                entry.settle()
            self.graveyard.setdefault(key, []).append((entry, pos))

    # ---------------------------------------------------------------- replay
    def apply(self, kind: int, pos: int, key: bytes, sub_key: bytes, value: bytes,
              ts: float, in_sequence: bool = True) -> bool:
        """Apply a recorded event at position `pos`.

        With `in_sequence` the event must be the next one (``position + 1``);
        without it (replaying a verified run whose events commute) any
        position is accepted and :attr:`position` becomes the larger of the
        two.  Returns whether the event changed the state: a recorded event
        that changes nothing (never written by telstate_log) is tolerated, one
        that contradicts the state raises :exc:`ImmutableKeyError` or
        :exc:`InvalidTimestampError`.
        """
        before = self.position
        if in_sequence and pos != before + 1:
            raise ValueError(f"event position {pos} does not follow {before}")
        self.position = pos - 1
        try:
            if kind == ADD:
                changed = self.add_mutable(key, value, ts) != 0
            elif kind == IMMUTABLE:
                changed = self.set_immutable(key, value) is None
            elif kind == INDEXED:
                changed = self.set_indexed(key, sub_key, value) is None
            elif kind == DELETE:
                changed = self.delete(key)
            elif kind == CLEAR:
                changed = bool(self.clear())
            else:
                raise ValueError(f"unknown event kind {kind}")
        finally:
            self.position = max(before, pos)
        return changed

    def apply_sensor_batch(self, key: bytes, ts: np.ndarray, values: Sequence[bytes] | np.ndarray,
                           pos: np.ndarray, prefix: bytes = b"") -> None:
        """Apply recorded samples of one key (no delete/clear in between).

        Positions need not be contiguous (other keys' events interleave);
        the caller sets :attr:`position` when the whole run is applied.
        `values` is a list of encoded values, or a ``V<width>`` array of
        values with the common `prefix` removed.
        """
        if (len(ts) and float(ts.min()) < 0) or not bool(np.all(np.isfinite(ts))):
            raise InvalidTimestampError(f"recorded sample of {key!r} has a bad timestamp")
        entry = self._keys.get(key)
        if entry is None:
            first = values[0] if not isinstance(values, np.ndarray) else \
                prefix + values[0].tobytes()
            entry = self._keys[key] = SensorColumn(int(pos[0]), first, capacity=len(ts))
        elif type(entry) is not SensorColumn:
            raise _type_error(key, entry, "mutable")
        ts = ts + 0.0  # -0.0 -> 0.0
        if not entry.extend_sorted(ts, values, pos, prefix):
            if isinstance(values, np.ndarray):
                raw = values.tobytes()
                w = values.dtype.itemsize
                values = [prefix + raw[i:i + w] for i in range(0, len(raw), w)]
            for t, v, p in zip(ts.tolist(), values, pos.tolist()):
                if not entry.contains(t, v):
                    entry.add(t, v, p)

    def apply_sensor_samples(self, key: bytes, ts: list[float], values: list[bytes],
                             pos: list[int]) -> None:
        """:meth:`apply_sensor_batch` of a few samples, in plain Python.

        Replaying many keys with a few samples each would otherwise pay
        numpy's fixed cost per call for every key.  `ts`, `values` and
        `pos` are lists; the samples need not be in time order.
        """
        for t in ts:
            if not 0.0 <= t < _INF:
                raise InvalidTimestampError(f"recorded sample of {key!r} has a bad timestamp")
        entry = self._keys.get(key)
        if entry is None:
            entry = self._keys[key] = SensorColumn(pos[0], values[0], capacity=len(ts))
        elif type(entry) is not SensorColumn:
            raise _type_error(key, entry, "mutable")
        for t, v, p in zip(ts, values, pos):
            t += 0.0  # -0.0 -> 0.0
            if not entry.contains(t, v):
                entry.add(t, v, p)

    def add_sensors(self, keys: Sequence[bytes], columns: Sequence[SensorColumn]) -> None:
        """Add new mutable keys with their replayed columns
        (:meth:`SensorColumn.new_columns`); ValueError if a key exists."""
        new: dict[bytes, Entry] = dict(zip(keys, columns))
        if len(new) != len(keys) or not self._keys.keys().isdisjoint(new):
            raise ValueError("add_sensors: a key exists already or is given twice")
        if self._keys:
            self._keys.update(new)
        else:
            self._keys = new

    def add_new_sensors(self, keys: Sequence[bytes], ts: np.ndarray, mat: np.ndarray,
                        sizes: np.ndarray, commit: CommitBatch | None = None) -> int:
        """Create the mutable keys `keys` with their samples, built together.

        What :meth:`add_mutable_batch` of each key in turn does, without its
        fixed cost per key: key ``i`` takes the next ``sizes[i]`` (at least
        1) samples, timestamps `ts` and values the rows of the ``(k, width)``
        uint8 matrix `mat`, at consecutive positions.  The keys must be new
        and distinct, and each key's samples must fit a fixed-layout column
        (:func:`~._sensor.fitting_groups`); ValueError otherwise, and
        :exc:`InvalidTimestampError` for a bad timestamp, before anything is
        committed.  ``commit`` is called once per key (as
        :meth:`add_mutable_batch` would); if it fails, the keys committed
        before stay stored and the error propagates.  Returns the samples added.
        """
        k = len(ts)
        if k != len(mat) or k != int(sizes.sum()) or len(keys) != len(sizes):
            raise ValueError("add_new_sensors: keys, sizes, timestamps and values disagree")
        if not k:
            return 0
        if not bool(np.all((ts >= 0.0) & (ts < _INF))):
            check_timestamp(float(ts[~((ts >= 0.0) & (ts < _INF))][0]))  # raises
        if int(sizes.min()) < 1 or not bool(fitting_groups(ts, mat, sizes).all()):
            raise ValueError("add_new_sensors: samples that do not fit a new column")
        if len(set(keys)) != len(keys) or not self._keys.keys().isdisjoint(keys):
            raise ValueError("add_new_sensors: a key exists already or is given twice")
        ts = ts + 0.0  # -0.0 -> 0.0 (a copy the columns can own)
        first = self.position + 1
        pos = np.arange(first, first + k, dtype=np.int64)
        columns = SensorColumn.new_columns(ts, pos, mat, sizes)
        if commit is None:
            self.add_sensors(keys, columns)
            self.position = first + k - 1
            return k
        vals = np.ascontiguousarray(mat).view(f"V{mat.shape[1]}").reshape(k)
        ends = np.cumsum(sizes).tolist()
        done = 0
        try:
            a = 0
            for key, b in zip(keys, ends):
                commit(first + a, key, ts[a:b], vals[a:b])
                done += 1
                a = b
        finally:
            if done:
                self.add_sensors(keys[:done], columns[:done])
                self.position = first + ends[done - 1] - 1
        return k

    def restore_entries(self, entries: Iterable[tuple[bytes, Entry]]) -> None:
        """Put the entries of a loaded checkpoint into an empty state, in order."""
        if self._keys:
            raise ValueError("restore_entries: the state is not empty")
        self._keys = dict(entries)

    # ------------------------------------------------------------------ reads
    def __contains__(self, key: bytes) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def entry(self, key: bytes) -> Entry | None:
        return self._keys.get(key)

    def items(self) -> Iterator[tuple[bytes, Entry]]:
        return iter(self._keys.items())

    def keys(self, pattern: bytes = b"*") -> list[bytes]:
        if pattern == b"*":
            return list(self._keys)
        match = compile_pattern(pattern)
        return [k for k in self._keys if match(k)]

    def key_type(self, key: bytes) -> KeyType | None:
        entry = self._keys.get(key)
        return None if entry is None else _TYPES[type(entry)]

    def type_codes(self, keys: Sequence[bytes]) -> np.ndarray:
        """The :class:`KeyType` value of each of `keys` (0: absent), in one pass."""
        if not self._keys:
            return np.zeros(len(keys), np.int64)
        get = self._keys.get
        return np.fromiter((_TYPE_CODES[type(get(k))] for k in keys), np.int64, len(keys))

    def get(self, key: bytes) -> tuple[Any, float | None]:
        """katsdptelstate Backend.get: (value, None) / (latest, ts) / (dict, None)."""
        entry = self._keys.get(key)
        if entry is None:
            return None, None
        t = type(entry)
        if t is SensorColumn:
            return entry.last  # type: ignore[union-attr]
        if t is Immutable:
            return entry.value, None  # type: ignore[union-attr]
        assert type(entry) is Indexed
        return dict(entry.values), None

    def get_indexed(self, key: bytes, sub_key: bytes) -> bytes | None:
        entry = self._keys[key]
        if type(entry) is not Indexed:
            raise _type_error(key, entry, "indexed")
        return entry.values.get(sub_key)

    def sensor(self, key: bytes) -> SensorColumn | None:
        """The settled column of a mutable key, None if absent."""
        entry = self._keys.get(key)
        if entry is None:
            return None
        if type(entry) is not SensorColumn:
            raise _type_error(key, entry, "mutable")
        entry.settle()
        return entry

    def get_range(self, key: bytes, st: float, et: float, include_previous: bool,
                  include_end: bool) -> list[tuple[bytes, float]] | None:
        col = self.sensor(key)
        if col is None:
            return None
        return col.range_list(st, et, include_previous, include_end)

    def nbytes(self) -> int:
        """Approximate memory held by sensor columns."""
        return sum(e.nbytes() for e in self._keys.values() if type(e) is SensorColumn)
