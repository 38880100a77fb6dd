"""Apply decoded log frames to the materialised state, in bulk.

Theory of operation
-------------------
Replay must run at hundreds of thousands of events per second, so it does
not apply events one at a time.  A scanned segment (see
:mod:`telstate_log._format`) is split into *runs* at every DELETE and CLEAR.
Inside a run no key changes type and every event commutes with events of
other keys, so the run is applied as: meta records (key and session
definitions) in order, then SET and SET_INDEXED events in order, then the
ADD events grouped by key -- one vectorised batch per sensor (numpy gathers
of timestamps, positions and fixed-width values).  The DELETE or CLEAR
closing the run is applied last.  The result is the state that applying the
events one by one produces.

Everything a valid log guarantees is checked, and a violation raises
:exc:`ReplayError` naming the frame: unknown kinds, short bodies,
positions that are not consecutive, undefined key or session ids,
conflicting definitions, recorded times that go backwards, bad sample
timestamps, and events that contradict the state (a sample for an immutable
key, say).  A run is validated as a whole before any of it is applied
(:mod:`telstate_log._replay_check`), so a refused run leaves the state as
the previous run left it: always the state at some position of the log.
Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from . import _format as fmt
from ._errors import ImmutableKeyError, InvalidTimestampError
from ._replay_check import check_run
from ._state import State

__all__ = ["ReplayError", "Replayer", "Tables"]


class ReplayError(Exception):
    """A frame that is well-formed but not a valid event in this log."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(reason, offset)
        self.reason = reason
        self.offset = offset


@dataclass
class Tables:
    """Per-log dictionaries learned from meta records (and kept in checkpoints)."""

    keys: dict[int, bytes] = field(default_factory=dict)
    key_ids: dict[bytes, int] = field(default_factory=dict)
    sessions: dict[int, dict[str, Any]] = field(default_factory=dict)
    last_recorded: float = 0.0
    #: sparse index position -> recorded time: (position, recorded) every
    #: TIME_STRIDE events and at run ends
    time_pos: list[int] = field(default_factory=list)
    time_rec: list[float] = field(default_factory=list)
    #: where those events' frames are: segment (first position) and byte offset
    time_seg: list[int] = field(default_factory=list)
    time_off: list[int] = field(default_factory=list)

    TIME_STRIDE = 1024

    def next_key_id(self) -> int:
        """An id no key has yet (the writer registers the key once its record is written)."""
        return _free_id(self.keys)

    def next_session_id(self) -> int:
        """An id no session has yet."""
        return _free_id(self.sessions)

    def note_times(self, pos: np.ndarray, rec: np.ndarray, offsets: np.ndarray,
                   segment: int, counts: np.ndarray | None = None) -> None:
        """Sample event frames into the sparse index (every TIME_STRIDE-th position,
        the first event of every segment, every ADD_BATCH frame, the first event)."""
        if len(pos):
            pick = ((pos - 1) % self.TIME_STRIDE == 0) | (pos == segment)
            if counts is not None:
                pick |= counts > 1
            if not self.time_pos:
                pick[0] = True
            self.time_pos.extend(pos[pick].tolist())
            self.time_rec.extend(rec[pick].tolist())
            self.time_off.extend(offsets[pick].tolist())
            self.time_seg.extend([segment] * int(pick.sum()))
            self.last_recorded = float(rec[-1])

    def locate(self, position: int) -> tuple[int, int, int] | None:
        """(segment, offset, position) of an indexed event at or before `position`."""
        import bisect

        i = bisect.bisect_right(self.time_pos, position) - 1
        if i < 0:
            return None
        return self.time_seg[i], self.time_off[i], self.time_pos[i]


def _free_id(ids: dict[int, Any]) -> int:
    """An unused u32 id other than NO_KEY (reserved for CLEAR events).

    Our writers assign ids densely from 0, so the count is normally the
    answer (O(1)); a log with gaps in its ids falls back to ``max + 1``,
    and one (hostile) that used the ids just below the reserved one to the
    lowest gap.
    """
    n = len(ids)
    if n not in ids and (n == 0 or n - 1 in ids):
        return n
    top = max(ids) + 1
    if top < fmt.NO_KEY:
        return top
    return next(i for i in range(n + 1) if i not in ids)


class Replayer:
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

    # ------------------------------------------------------------ events
    def apply(self, buf: memoryview, scan: fmt.Scan, segment: int = 0,
              base: int = 0) -> fmt.Decoded:
        """Apply every frame of `scan`; returns the decoded frames.

        `segment` (first position of the segment) and `base` (file offset of
        ``buf[0]``) place the frames in the log for the time index.
        """
        dec = fmt.decode_frames(buf, scan)
        kinds = dec.kinds
        n = len(kinds)
        if n == 0:
            return dec
        known = np.isin(kinds, list(fmt.EVENT_KINDS | fmt.META_KINDS))
        if not known.all():
            i = int(np.argmin(known))
            raise ReplayError(f"unknown record kind {int(kinds[i])}", int(dec.offsets[i]))
        is_event = np.isin(kinds, list(fmt.EVENT_KINDS))
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

    def _check_session(self, dec: fmt.Decoded, idx: np.ndarray) -> None:
        sess = np.unique(dec.event["sess"][idx])
        for s in sess.tolist():
            if s not in self.tables.sessions:
                i = int(idx[int(np.argmax(dec.event["sess"][idx] == s))])
                raise ReplayError(f"undefined session id {s}", int(dec.offsets[i]))

    def _single(self, buf: memoryview, dec: fmt.Decoded, i: int, in_sequence: bool) -> None:
        kind = int(dec.kinds[i])
        off = int(dec.offsets[i])
        length = int(dec.lengths[i])
        pos = int(dec.event["pos"][i])
        self._check_session(dec, np.array([i]))
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
        for i in (np.nonzero(np.isin(kinds, list(fmt.META_KINDS)))[0] + a).tolist():
            self._meta(buf, int(dec.kinds[i]), int(dec.offsets[i]), int(dec.lengths[i]))
        events = np.nonzero(np.isin(kinds, list(fmt.EVENT_KINDS)))[0] + a
        if not len(events):
            return
        # all or nothing: nothing of the run is applied unless all of it is valid
        batches = check_run(self.state, self.tables, buf, dec, events)
        for i in (np.nonzero((kinds == fmt.IMMUTABLE) | (kinds == fmt.INDEXED))[0] + a).tolist():
            self._single(buf, dec, i, in_sequence=False)
        adds = np.nonzero((kinds == fmt.ADD) | (kinds == fmt.ADD_BATCH))[0] + a
        if len(adds):
            self._adds(buf, dec, adds, batches)
        i = int(events[-1])
        self.state.position = max(self.state.position,
                                  int(dec.event["pos"][i]) + int(dec.counts[i]) - 1)

    def _adds(self, buf: memoryview, dec: fmt.Decoded, idx: np.ndarray,
              batches: dict[int, Any]) -> None:
        """Apply the ADD and ADD_BATCH frames `idx` of one run, one batch per key."""
        parts: dict[int, list[tuple[np.ndarray, np.ndarray, Any, bytes]]] = {}
        single = idx[dec.kinds[idx] == fmt.ADD]
        if len(single):
            kid = dec.event["key"][single]
            order = np.argsort(kid, kind="stable")
            single = single[order]
            cuts = np.nonzero(np.diff(kid[order]))[0] + 1
            arr = np.frombuffer(buf, np.uint8, int(dec.offsets[-1] + 12 + dec.lengths[-1]))
            for group in np.split(single, cuts):
                starts = dec.offsets[group] + 8 + fmt.EVENT_PREFIX + 8
                vlen = dec.lengths[group] - (fmt.EVENT_PREFIX + 8)
                values, prefix = _gather_values(buf, arr, starts, vlen)
                parts.setdefault(int(dec.event["key"][group[0]]), []).append(
                    (dec.event["pos"][group].astype(np.int64), dec.ts[group], values, prefix))
        for i in idx[dec.kinds[idx] == fmt.ADD_BATCH].tolist():
            ts, values, width = batches[i]
            first = int(dec.event["pos"][i])
            pos = np.arange(first, first + len(ts), dtype=np.int64)
            if width >= 2:
                plen = 2 if width > 2 else 1
                assert isinstance(values, np.ndarray)
                mat = np.frombuffer(values, np.uint8).reshape(-1, width)
                head = mat[:, :plen]
                if bool((head == head[0]).all()):
                    values = np.ascontiguousarray(mat[:, plen:]).view(f"V{width - plen}")
                    parts.setdefault(int(dec.event["key"][i]), []).append(
                        (pos, ts, values.reshape(-1), head[0].tobytes()))
                    continue
                values = [mat[j].tobytes() for j in range(len(mat))]
            parts.setdefault(int(dec.event["key"][i]), []).append(
                (pos, ts, list(values) if not isinstance(values, list) else values, b""))
        first_frame = {int(dec.event["key"][i]): int(dec.offsets[i]) for i in idx[::-1].tolist()}
        for kid, lst in parts.items():
            key = self._key_id(kid, first_frame[kid])
            pos, ts, values, prefix = _merge_parts(lst)
            try:
                self.state.apply_sensor_batch(key, ts, values, pos, prefix)
            except (ImmutableKeyError, InvalidTimestampError, ValueError) as exc:
                raise ReplayError(f"samples of {key!r} are invalid here: {exc}",
                                  first_frame[kid]) from None

    def _key_id(self, kid: int, offset: int) -> bytes:
        key = self.tables.keys.get(kid)
        if key is None:
            raise ReplayError(f"undefined key id {kid}", offset)
        return key


def _merge_parts(parts: list[tuple[np.ndarray, np.ndarray, Any, bytes]]
                 ) -> tuple[np.ndarray, np.ndarray, Any, bytes]:
    """One (positions, timestamps, values, prefix) batch, in position order."""
    if len(parts) == 1:
        return parts[0]
    pos = np.concatenate([p[0] for p in parts])
    ts = np.concatenate([p[1] for p in parts])
    order = np.argsort(pos, kind="stable")
    fixed = all(isinstance(p[2], np.ndarray) for p in parts)
    if fixed and len({(p[3], p[2].dtype.itemsize) for p in parts}) == 1:
        values: Any = np.concatenate([p[2] for p in parts])[order]
        return pos[order], ts[order], values, parts[0][3]
    flat: list[bytes] = []
    for _, _, vals, prefix in parts:
        if isinstance(vals, np.ndarray):
            raw = vals.tobytes()
            w = vals.dtype.itemsize
            flat.extend(prefix + raw[j:j + w] for j in range(0, len(raw), w))
        else:
            flat.extend(vals)
    return pos[order], ts[order], [flat[j] for j in order.tolist()], b""


_GATHER_CHUNK = 1 << 15


def _gather_values(buf: memoryview, arr: np.ndarray, starts: np.ndarray,
                   lengths: np.ndarray) -> tuple[Any, bytes]:
    """Values at `starts` as a V-array plus common prefix, or a list of bytes."""
    w = int(lengths[0]) if len(lengths) else 0
    if w >= 2 and bool((lengths == w).all()):
        mat = np.empty((len(starts), w), np.uint8)
        cols = np.arange(w)
        for c0 in range(0, len(starts), _GATHER_CHUNK):
            c1 = min(len(starts), c0 + _GATHER_CHUNK)
            mat[c0:c1] = arr[starts[c0:c1, None] + cols]
        plen = 2 if w > 2 else 1
        head = mat[:, :plen]
        if bool((head == head[0]).all()):
            prefix = head[0].tobytes()
            return np.ascontiguousarray(mat[:, plen:]).view(f"V{w - plen}").reshape(-1), prefix
        return mat.view(f"V{w}").reshape(-1), b""
    return [bytes(buf[s:s + n]) for s, n in zip(starts.tolist(), lengths.tolist())], b""
