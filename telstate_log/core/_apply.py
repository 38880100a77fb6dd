"""Apply decoded log frames to the materialised state, in bulk.

Theory of operation
-------------------
Replay must run at hundreds of thousands of events per second, so it does
not apply events one at a time.  A scanned segment (see
:mod:`telstate_log.core._log_format`) is split into *runs* at every DELETE and CLEAR.
Inside a run no key changes type and every event commutes with events of
other keys, so the run is applied as: meta records (key and session
definitions; many new keys at once), then SET and SET_INDEXED events in
order, then the ADD and ADD_BATCH samples grouped by key
(:mod:`telstate_log.core._apply_samples`: one batch per sensor, the columns of
many new keys built together).  The DELETE or CLEAR closing the run is
applied last.  The result is the state that applying the events one by one
produces, at a cost linear in events and keys: no step does work per key
that grows with the number of keys, nor numpy calls per key.

Everything a valid log guarantees is checked, and a violation raises
:exc:`ReplayError` naming the frame: unknown kinds, short bodies,
positions that are not consecutive, undefined key or session ids,
conflicting definitions, recorded times that go backwards, bad sample
timestamps, and events that contradict the state (a sample for an immutable
key, say).  A run is validated as a whole before any of it is applied
(:mod:`telstate_log.core._apply_check`), so a refused run leaves the state as
the previous run left it: always the state at some position of the log.

:func:`apply_cost` estimates what replaying part of a log costs, from the
state it led to; the log backend checkpoints on close by it.  Pure: no I/O.
"""

from __future__ import annotations

import msgpack
import numpy as np

from . import _log_format as fmt
from ._apply_check import check_run
from ._apply_samples import BULK_KEYS, apply_samples
from ._errors import ImmutableKeyError, InvalidTimestampError
from ._gcpause import collector_paused
from ._state import Indexed, State
from ._tables import ReplayError, Tables
from ._values import gather_numbers

__all__ = ["Applier", "ReplayError", "Tables", "apply_cost"]  # the first and third from _tables


class Applier:
    """Applies scanned frames to a :class:`State` (see module docstring)."""

    def __init__(self, state: State, tables: Tables) -> None:
        self.state = state
        self.tables = tables

    # -------------------------------------------------------------- meta
    def _meta(self, buf: memoryview, kind: int, off: int, length: int) -> None:
        if length < 4:
            raise ReplayError("meta record too short", off)
        ident, payload = fmt.meta_fields(buf, off, length)
        t = self.tables
        if kind == fmt.KEY:
            if ident == fmt.NO_KEY:
                raise ReplayError(f"key id {ident} is reserved (CLEAR events use it)", off)
            known = t.keys.get(ident)
            if known is not None and known != payload:
                raise ReplayError(f"key id {ident} redefined", off)
            other = t.key_ids.get(payload)
            if other is not None and other != ident:
                raise ReplayError(f"key {payload!r} given a second id {ident}", off)
            t.keys[ident] = payload
            t.key_ids[payload] = ident
        else:
            try:
                meta = msgpack.unpackb(payload, raw=False, max_str_len=len(payload),
                                       max_bin_len=len(payload), max_array_len=len(payload),
                                       max_map_len=len(payload))
            except Exception as exc:
                raise ReplayError(f"unreadable session record: {exc}", off) from None
            if not isinstance(meta, dict):
                raise ReplayError("session record is not a map", off)
            known_s = t.sessions.get(ident)
            if known_s is not None and known_s != meta:
                raise ReplayError(f"session id {ident} redefined", off)
            t.sessions[ident] = meta

    def _metas(self, buf: memoryview, dec: fmt.Decoded, idx: np.ndarray) -> None:
        """Apply the meta records `idx`, as :meth:`_meta` in order would.

        Many KEY records that only define new keys (the bulk of a log's meta
        records) are applied together, with a few dictionary operations.
        """
        kinds = dec.kinds[idx]
        key_idx = idx[kinds == fmt.KEY]
        new = self._new_keys(buf, dec, key_idx)
        if new is None:
            for i in idx.tolist():
                self._meta(buf, int(dec.kinds[i]), int(dec.offsets[i]), int(dec.lengths[i]))
            return
        for i in idx[kinds != fmt.KEY].tolist():
            try:
                self._meta(buf, int(dec.kinds[i]), int(dec.offsets[i]), int(dec.lengths[i]))
            except ReplayError:
                for k in key_idx[key_idx < i].tolist():  # the keys defined before it
                    self._meta(buf, fmt.KEY, int(dec.offsets[k]), int(dec.lengths[k]))
                raise
        self.tables.keys.update(new[0])
        self.tables.key_ids.update(new[1])

    def _new_keys(self, buf: memoryview, dec: fmt.Decoded, idx: np.ndarray
                  ) -> tuple[dict[int, bytes], dict[bytes, int]] | None:
        """The definitions of the KEY records `idx` (id -> key, key -> id) if
        there are many and they only define new keys, with distinct ids and
        names; None if not (then they take the record-by-record path)."""
        if len(idx) < BULK_KEYS:
            return None
        off, length = dec.offsets[idx], dec.lengths[idx]
        if bool((length < 4).any()):
            return None
        t = self.tables
        ids = gather_numbers(np.frombuffer(buf, np.uint8), off + 8, "<u4").tolist()
        names = [bytes(buf[o:e]) for o, e in zip((off + 12).tolist(),
                                                  (off + 8 + length).tolist())]
        by_id = dict(zip(ids, names))
        by_name = dict(zip(names, ids))
        if len(by_id) != len(ids) or len(by_name) != len(ids) or fmt.NO_KEY in by_id \
                or not t.keys.keys().isdisjoint(by_id) \
                or not t.key_ids.keys().isdisjoint(by_name):
            return None
        return by_id, by_name

    # ------------------------------------------------------------ events
    def apply(self, buf: memoryview, scan: fmt.Scan, segment: int = 0,
              base: int = 0) -> fmt.Decoded:
        """Apply every frame of `scan`; returns the decoded frames.

        `segment` (first position of the segment) and `base` (file offset of
        ``buf[0]``) place the frames in the log for the time index.
        """
        with collector_paused():  # a column per new key: see telstate_log.core._gcpause
            return self._apply(buf, scan, segment, base)

    def _apply(self, buf: memoryview, scan: fmt.Scan, segment: int, base: int) -> fmt.Decoded:
        dec = fmt.decode_frames(buf, scan)
        kinds = dec.kinds
        n = len(kinds)
        if n == 0:
            return dec
        known = _IS_EVENT[kinds] | _IS_META[kinds]
        if not known.all():
            i = int(np.argmin(known))
            raise ReplayError(f"unknown record kind {int(kinds[i])}", int(dec.offsets[i]))
        is_event = _IS_EVENT[kinds]
        minimum = np.where((kinds == fmt.ADD) | (kinds == fmt.ADD_BATCH), fmt.EVENT_PREFIX + 8,
                           np.where(kinds == fmt.INDEXED, fmt.EVENT_PREFIX + 4,
                                    fmt.EVENT_PREFIX))
        short = is_event & (dec.lengths < minimum)
        if short.any():
            i = int(np.argmax(short))
            raise ReplayError("event body too short", int(dec.offsets[i]))
        ev_idx = np.nonzero(is_event)[0]
        pos = dec.event["pos"][ev_idx].astype(np.int64)
        counts = dec.counts[ev_idx]
        first = self.state.position + 1
        if len(pos):
            expect = first + np.concatenate(([0], np.cumsum(counts)[:-1]))
            gap = (pos != expect) | (counts < 1)
            if gap.any():
                i = int(np.argmax(gap))
                raise ReplayError(f"event position {int(pos[i])} where {int(expect[i])} was "
                                  "expected", int(dec.offsets[ev_idx[i]]))
            rec = dec.event["rec"][ev_idx]
            back = np.diff(np.concatenate(([self.tables.last_recorded], rec))) < 0
            if back.any() or not np.isfinite(rec).all():
                i = int(np.argmax(back)) if back.any() else int(np.argmin(np.isfinite(rec)))
                raise ReplayError("recorded time goes backwards", int(dec.offsets[ev_idx[i]]))
        barrier = np.nonzero((kinds == fmt.DELETE) | (kinds == fmt.CLEAR))[0].tolist()
        start = 0
        for b in [*barrier, n]:
            self._run(buf, dec, start, b)
            if b < n:
                self._single(buf, dec, b, in_sequence=True)
            start = b + 1
        if len(pos):
            self.tables.note_times(pos, dec.event["rec"][ev_idx], dec.offsets[ev_idx] + base,
                                   segment, counts)
        return dec

    def _key(self, dec: fmt.Decoded, i: int) -> bytes:
        kid = int(dec.event["key"][i])
        key = self.tables.keys.get(kid)
        if key is None:
            raise ReplayError(f"undefined key id {kid}", int(dec.offsets[i]))
        return key

    def _single(self, buf: memoryview, dec: fmt.Decoded, i: int, in_sequence: bool) -> None:
        kind = int(dec.kinds[i])
        off = int(dec.offsets[i])
        length = int(dec.lengths[i])
        pos = int(dec.event["pos"][i])
        sess = int(dec.event["sess"][i])
        if sess not in self.tables.sessions:
            raise ReplayError(f"undefined session id {sess}", off)
        sub = value = b""
        ts = 0.0
        key = b""
        if kind != fmt.CLEAR:
            key = self._key(dec, i)
        if kind == fmt.INDEXED:
            fields = fmt.indexed_fields(buf, off, length)
            if fields is None:
                raise ReplayError("malformed SET_INDEXED body", off)
            sub, value = fields
        elif kind in (fmt.IMMUTABLE, fmt.ADD):
            s, e = fmt.value_span(kind, off, length)
            value = bytes(buf[s:e])
            ts = float(dec.ts[i])
        try:
            self.state.apply(kind, pos, key, sub, value, ts, in_sequence=in_sequence)
        except (ImmutableKeyError, InvalidTimestampError, ValueError) as exc:
            raise ReplayError(f"event {pos} is invalid here: {exc}", off) from None

    def _run(self, buf: memoryview, dec: fmt.Decoded, a: int, b: int) -> None:
        """Apply frames [a, b), which contain no DELETE or CLEAR."""
        if a >= b:
            return
        kinds = dec.kinds[a:b]
        meta = _IS_META[kinds]
        self._metas(buf, dec, np.flatnonzero(meta) + a)
        events = np.flatnonzero(~meta) + a  # apply() refused unknown kinds
        if not len(events):
            return
        # all or nothing: nothing of the run is applied unless all of it is valid
        samples, keys = check_run(self.state, self.tables, buf, dec, events)
        for i in (np.flatnonzero((kinds == fmt.IMMUTABLE) | (kinds == fmt.INDEXED))
                  + a).tolist():
            self._single(buf, dec, i, in_sequence=False)
        if len(samples):
            apply_samples(self.state, buf, dec, samples, keys)
        i = int(events[-1])
        self.state.position = max(self.state.position,
                                  int(dec.event["pos"][i]) + int(dec.counts[i]) - 1)

#: Replay costs, in units of about one ADD event of an existing key (see
#: :func:`apply_cost`; measured with tools/bench_reopen.py and like logs).
COST_KEY = 5  # a key created (its KEY record and its entry)
COST_SUB_KEY = 4  # a SET_INDEXED sub-key (one Python step per event)
COST_DELETE = 50  # a DELETE or CLEAR: it ends a run, and a run has a fixed cost
#: an event counts one of the above at most
COST_PER_EVENT_MAX = 1 + max(COST_KEY, COST_SUB_KEY, COST_DELETE)


def apply_cost(state: State, since: int) -> int:
    """Estimated cost of replaying the events after position `since` to reach
    `state` (which must keep history, as a log's does), in units of about one
    sample event of an existing key.

    A log's reopen time is not its size: 7 MB of one-sample keys cost more
    than 16 MiB of samples of a few keys, and each DELETE or CLEAR ends a
    run.  So each event counts one, plus :data:`COST_KEY` per key created,
    :data:`COST_SUB_KEY` per sub-key set and :data:`COST_DELETE` per DELETE
    or CLEAR after `since`: at most :data:`COST_PER_EVENT_MAX` per event.
    One pass over the state.
    """
    keys = sub_keys = 0
    for _, entry in state.items():
        if entry.created > since:
            keys += 1
        if type(entry) is Indexed:
            sub_keys += sum(p > since for p in entry.positions.values())
    deleted = len({d for lst in state.graveyard.values() for _, d in lst if d > since})
    return (state.position - since + COST_KEY * keys + COST_SUB_KEY * sub_keys
            + COST_DELETE * deleted)


_IS_META = np.zeros(256, bool)
_IS_META[list(fmt.META_KINDS)] = True
_IS_EVENT = np.zeros(256, bool)
_IS_EVENT[list(fmt.EVENT_KINDS)] = True
