"""The state as it was after event N, served from the live state (time travel).

Theory of operation
-------------------
Every entry of the materialised :class:`~telstate_log.core._state.State` carries
the position that created it; every sensor sample and indexed sub-key
carries the position that added it; deleted entries sit in the graveyard
with the position that deleted them.  So the state after event N can be
answered without replaying anything:

* a key exists at N if its live entry was created at or before N, or one of
  its graveyard entries was created at or before N and deleted after N;
* an immutable's value never changes; an indexed key shows the sub-keys
  added at or before N; a sensor shows the samples added at or before N
  (:meth:`SensorColumn.upto <telstate_log.core._sensor.SensorColumn.upto>`: a
  zero-copy prefix when positions grow with time, as they do unless samples
  arrived out of order, else a filtered copy).

:class:`AsOfState` offers the read methods of ``State`` for position N.
Resolved entries are cached per key, so the first read of a key costs one
lookup (and at most one filter) and later reads run at in-memory speed; only
keys that are read are ever filtered, so a view never copies the whole
state.  The caller must hold the owning backend's lock while calling it
(columns of the live state may be re-laid out by writers), but what it
returns stays valid afterwards.

Two time axes meet here: sample timestamps are *valid time* (when a value was
true at the telescope) and positions are *system time* (when the store
learned it).  A sample written late with a past timestamp appears in
get_range by its timestamp, but not in a view as of a position before the
event that wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._errors import HistoryUnavailableError
from ._pattern import compile_pattern
from ._sensor import SensorColumn
from ._state import Entry, Immutable, Indexed, State
from ._types import KeyType

__all__ = ["AsOfState", "Changes", "changes_between"]

_TYPES: dict[type, KeyType] = {Immutable: KeyType.IMMUTABLE, Indexed: KeyType.INDEXED,
                               SensorColumn: KeyType.MUTABLE}


class AsOfState:
    """Read-only view of a :class:`State` after event `position` (see module doc)."""

    def __init__(self, state: State, position: int) -> None:
        if position < 0:
            raise ValueError(f"position must be non-negative, not {position}")
        if position > state.position:
            raise ValueError(f"position {position} is beyond the end of the log "
                             f"({state.position})")
        if not state.keep_history:
            raise HistoryUnavailableError("this backend keeps no history (deleted keys and "
                                          "positions): use a LogBackend for time travel")
        if position < state.history_from:
            raise HistoryUnavailableError(f"history before position {state.history_from} was "
                                          f"pruned; cannot show the state at {position}")
        self._state = state
        self.position = position
        self.keep_history = True
        self.history_from = state.history_from
        self._cache: dict[bytes, Entry | None] = {}
        self._keys: list[bytes] | None = None

    # --------------------------------------------------------------- entries
    def entry(self, key: bytes) -> Entry | None:
        try:
            return self._cache[key]
        except KeyError:
            pass
        n = self.position
        found: Entry | None = None
        live = self._state.entry(key)
        if live is not None and live.created <= n:
            found = live
        else:
            for old, deleted in self._state.graveyard.get(key, ()):
                if old.created <= n < deleted:
                    found = old
                    break
        if found is not None:
            found = self._filtered(found)
        self._cache[key] = found
        return found

    def _filtered(self, e: Entry) -> Entry | None:
        n = self.position
        if type(e) is Immutable:
            return e
        if type(e) is Indexed:
            out = Indexed(e.created)
            for sub, pos in e.positions.items():
                if pos <= n:
                    out.values[sub] = e.values[sub]
                    out.positions[sub] = pos
            return out
        assert isinstance(e, SensorColumn)
        return e.upto(n)

    # ----------------------------------------------------------------- reads
    def __contains__(self, key: bytes) -> bool:
        return self.entry(key) is not None

    def _all_keys(self) -> list[bytes]:
        if self._keys is None:
            candidates = set(self._state.keys(b"*")) | set(self._state.graveyard)
            self._keys = sorted(k for k in candidates if self.entry(k) is not None)
        return self._keys

    def __len__(self) -> int:
        return len(self._all_keys())

    def keys(self, pattern: bytes = b"*") -> list[bytes]:
        keys = self._all_keys()
        if pattern == b"*":
            return list(keys)
        match = compile_pattern(pattern)
        return [k for k in keys if match(k)]

    def items(self) -> list[tuple[bytes, Entry]]:
        out = []
        for key in self._all_keys():
            e = self.entry(key)
            assert e is not None
            out.append((key, e))
        return out

    def key_type(self, key: bytes) -> KeyType | None:
        e = self.entry(key)
        return None if e is None else _TYPES[type(e)]

    def get(self, key: bytes) -> tuple[Any, float | None]:
        e = self.entry(key)
        if e is None:
            return None, None
        if type(e) is SensorColumn:
            return e.last
        if type(e) is Immutable:
            return e.value, None
        assert type(e) is Indexed
        return dict(e.values), None

    def get_indexed(self, key: bytes, sub_key: bytes) -> bytes | None:
        e = self.entry(key)
        if e is None:
            raise KeyError(key)
        if type(e) is not Indexed:
            from ._state import _type_error

            raise _type_error(key, e, "indexed")
        return e.values.get(sub_key)

    def sensor(self, key: bytes) -> SensorColumn | None:
        e = self.entry(key)
        if e is None:
            return None
        if type(e) is not SensorColumn:
            from ._state import _type_error

            raise _type_error(key, e, "mutable")
        return e

    def get_range(self, key: bytes, st: float, et: float, include_previous: bool,
                  include_end: bool) -> list[tuple[bytes, float]] | None:
        col = self.sensor(key)
        if col is None:
            return None
        return col.range_list(st, et, include_previous, include_end)

    def nbytes(self) -> int:
        return sum(e.nbytes() for e in self._cache.values() if type(e) is SensorColumn)


@dataclass
class Changes:
    """What changed between two positions (see :func:`changes_between`).

    Backends report keys as bytes and sub-keys encoded; the front ends
    return the same structure with str keys and decoded sub-keys.
    """

    since: int
    until: int
    keys_added: list[Any] = field(default_factory=list)
    keys_deleted: list[Any] = field(default_factory=list)
    #: key -> number of samples added in (since, until]
    samples_added: dict[Any, int] = field(default_factory=dict)
    #: key -> sub-keys added in (since, until]
    sub_keys_added: dict[Any, list[Any]] = field(default_factory=dict)
    #: immutable keys set in (since, until]
    immutables_set: list[Any] = field(default_factory=list)
    #: events in (since, until]
    events: int = 0


def changes_between(state: State, since: int, until: int) -> Changes:
    """Summarise the events in positions ``(since, until]`` from the state alone.

    ``keys_added`` / ``keys_deleted`` compare the key sets at the two
    positions (a key deleted and re-created in between counts as neither);
    the counts include changes later undone within the range.
    """
    if since > until:
        raise ValueError(f"since ({since}) is after until ({until})")
    before = AsOfState(state, since)
    after = AsOfState(state, until)
    out = Changes(since, until, events=until - since)
    k0, k1 = set(before.keys()), set(after.keys())
    out.keys_added = sorted(k1 - k0)
    out.keys_deleted = sorted(k0 - k1)
    entries: list[tuple[bytes, Entry]] = list(state.items())
    for key, lst in state.graveyard.items():
        entries.extend((key, e) for e, _ in lst)
    for key, e in entries:
        if type(e) is SensorColumn:
            e.settle()
            pos = e.positions()
            n = int(((pos > since) & (pos <= until)).sum())
            if n:
                out.samples_added[key] = out.samples_added.get(key, 0) + n
        elif type(e) is Indexed:
            subs = [s for s, p in e.positions.items() if since < p <= until]
            if subs:
                out.sub_keys_added.setdefault(key, []).extend(sorted(subs))
        elif type(e) is Immutable and since < e.created <= until:
            out.immutables_set.append(key)
    out.immutables_set = sorted(set(out.immutables_set))
    return out
