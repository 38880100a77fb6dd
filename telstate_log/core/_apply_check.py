"""Validate a run of recorded events before any of it is applied.

Theory of operation
-------------------
The replayer (:mod:`telstate_log.core._apply`) applies a run of events -- the
frames between two DELETE or CLEAR events -- grouped by kind and key, not
one by one, so an invalid event found while applying would leave the
state with part of the run in it: events after the bad one, or a sensor
created for a sample that was then refused.  A writer opening the log
throws that state away, but a follower keeps serving it.  So every way an
event can contradict the state is checked here first, vectorised over the
run, and the run is applied only when all of it is valid; a
:exc:`~telstate_log.core._apply.ReplayError` then leaves the state exactly
as it was after the previous run (a prefix of the log).

Checked: session and key ids are defined, one key is not written as two
types and not as a type other than the one it has, sample timestamps are
finite and not negative, sample values are not empty, and ADD_BATCH and
SET_INDEXED bodies are well formed.

The work is linear in the events, samples and keys of the run: the run's
(key, type) pairs are sorted once and each key looked up once (a key
written as two types has adjacent pairs), and every ADD_BATCH frame of the
run is parsed by the same few vectorised operations.  What the check finds
-- every sample (:class:`Samples`) and the keys written with their types
(:class:`RunKeys`) -- is handed to the apply step, so nothing is parsed or
looked up twice.  Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import _log_format as fmt
from ._events import KIND_KEY_TYPES
from ._tables import ReplayError
from ._types import KeyType
from ._values import gather_numbers

if TYPE_CHECKING:
    from ._state import State
    from ._tables import Tables

__all__ = ["RunKeys", "Samples", "check_run"]

# key type (KeyType value) written by each event kind; 0: no key type
_KIND_TYPE = np.zeros(256, np.int64)
for _kind, _type in KIND_KEY_TYPES.items():
    _KIND_TYPE[_kind] = _type.value
_TYPE_NAMES = {t.value: t.name.lower() for t in KeyType}


@dataclass
class Samples:
    """Every sample of a run's ADD and ADD_BATCH frames (ADD frames first, then the
    batches' samples, each part in frame order)."""

    frame: np.ndarray  # int64 index (into the Decoded arrays) of the sample's frame
    kid: np.ndarray  # int64 key id
    pos: np.ndarray  # int64 position
    ts: np.ndarray  # float64 timestamp, finite and not negative
    start: np.ndarray  # int64 offset of the value in the buffer
    length: np.ndarray  # int64 length of the value, at least 1

    def __len__(self) -> int:
        return len(self.pos)


@dataclass
class RunKeys:
    """The keys a run writes: ids (sorted), names, and types before the run
    (:class:`~telstate_log.core._types.KeyType` values; 0: a new key)."""

    kid: np.ndarray
    names: list[bytes]
    types: np.ndarray

    def lookup(self, kids: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        """Names and types of `kids` (ids the run writes), without a dictionary."""
        idx = np.searchsorted(self.kid, kids)
        names = self.names
        return [names[i] for i in idx.tolist()], self.types[idx]


_NO_SAMPLES = Samples(*(np.zeros(0, np.float64 if f == "ts" else np.int64)
                        for f in ("frame", "kid", "pos", "ts", "start", "length")))


def check_run(state: State, tables: Tables, buf: memoryview, dec: fmt.Decoded,
              ev: np.ndarray) -> tuple[Samples, RunKeys]:
    """Check the events `ev` (frame indices of one run) against `state` and `tables`.

    Returns the run's samples and keys (so frames are parsed and keys looked
    up once).  Raises ReplayError naming the first offending frame found.
    The work is linear in the number of events, samples and keys of the run.
    """

    offsets = dec.offsets
    sess = dec.event["sess"][ev]
    for s in _unique(sess).tolist():
        if s not in tables.sessions:
            i = int(ev[int(np.argmax(sess == s))])
            raise ReplayError(f"undefined session id {s}", int(offsets[i]))
    kinds = dec.kinds[ev]
    keys = _check_key_types(state, tables, dec, ev, kinds)
    arr = np.frombuffer(buf, np.uint8)
    add = ev[kinds == fmt.ADD]
    if len(add):
        ts = dec.ts[add]
        bad = ~((ts >= 0.0) & (ts < np.inf)) | (dec.lengths[add] <= fmt.EVENT_PREFIX + 8)
        if bad.any():
            _refuse_sample(dec, int(add[int(np.argmax(bad))]))
    batch = _batch_samples(arr, dec, ev[kinds == fmt.ADD_BATCH])
    for i in ev[kinds == fmt.INDEXED].tolist():
        if fmt.indexed_fields(buf, int(offsets[i]), int(dec.lengths[i])) is None:
            raise ReplayError("malformed SET_INDEXED body", int(offsets[i]))
    body = offsets[add] + (8 + fmt.EVENT_PREFIX + 8)
    single = Samples(add, dec.event["key"][add].astype(np.int64),
                     dec.event["pos"][add].astype(np.int64), dec.ts[add], body,
                     dec.lengths[add] - (fmt.EVENT_PREFIX + 8))
    if not len(batch):
        return single, keys
    if not len(single):
        return batch, keys
    return Samples(*(np.concatenate((getattr(single, f), getattr(batch, f)))
                     for f in ("frame", "kid", "pos", "ts", "start", "length"))), keys


def _check_key_types(state: State, tables: Tables, dec: fmt.Decoded, ev: np.ndarray,
                     kinds: np.ndarray) -> RunKeys:
    """Every key written is defined and written as one type, the type it has.

    One sort of the run's (key, type) pairs and one look-up per key: a key
    written as two types has two adjacent pairs.
    """

    kids = dec.event["key"][ev].astype(np.int64)
    types = _KIND_TYPE[kinds]
    typed = types > 0
    keys = tables.keys
    pairs = _unique(kids[typed] * 4 + types[typed])
    pkid = pairs >> 2
    # the first pair of a key has its smallest type; a second type is the next pair
    first = np.ones(len(pairs), bool)
    first[1:] = pkid[1:] != pkid[:-1]
    ukid = pkid[first]
    get = keys.get
    names = [get(k) for k in ukid.tolist()]
    if None in names:
        kid = int(ukid[names.index(None)])
        i = int(ev[int(np.argmax(typed & (kids == kid)))])
        raise ReplayError(f"undefined key id {kid}", int(dec.offsets[i]))
    multi = np.zeros(len(pairs), bool)
    multi[:-1] = ~first[1:]
    have = state.type_codes(names)  # type: ignore[arg-type]
    conflict = np.zeros(len(pairs), bool)
    conflict[first] = (have != 0) & (have != (pairs & 3)[first])
    conflict |= multi
    if conflict.any():
        j = int(np.argmax(conflict))  # the first pair of the first key in conflict
        kid, want = int(pkid[j]), int(pairs[j] & 3)
        other = int(pairs[j + 1] & 3) if multi[j] else int(have[int(first[:j].sum())])
        i = int(ev[int(np.argmax(typed & (kids == kid) & (types != other)))])
        raise ReplayError(f"event {int(dec.event['pos'][i])} is invalid here: key "
                          f"{keys[kid]!r} is {_TYPE_NAMES[other]}, not {_TYPE_NAMES[want]}",
                          int(dec.offsets[i]))
    return RunKeys(ukid, names, have)  # type: ignore[arg-type]


def _batch_samples(arr: np.ndarray, dec: fmt.Decoded, frames: np.ndarray) -> Samples:
    """The samples of the ADD_BATCH `frames`, all parsed at once (vectorised
    :func:`~telstate_log.core._log_format.batch_fields`).

    Raises ReplayError for the first frame that is malformed or holds a bad
    sample (a bad timestamp, or an empty value).
    """

    nf = len(frames)
    if not nf:
        return _NO_SAMPLES
    off = dec.offsets[frames]
    body = off + (8 + fmt.EVENT_PREFIX)
    end = off + 8 + dec.lengths[frames]
    count = gather_numbers(arr, body, "<u4").astype(np.int64)
    width = gather_numbers(arr, body + 4, "<u4").astype(np.int64)
    ts_end = body + 8 + 8 * count
    ok = ts_end <= end
    count = np.where(ok, count, 0)  # from here on a count is at most the body length / 8
    fixed = width > 0
    ok &= np.where(fixed, ts_end + width * count == end, ts_end + 4 * count <= end)
    count = np.where(ok, count, 0)
    total = int(count.sum())
    frame_of = np.repeat(np.arange(nf), count)
    first = np.cumsum(count) - count  # each frame's first sample
    j = np.arange(total, dtype=np.int64) - first[frame_of]
    ts = gather_numbers(arr, body[frame_of] + 8 + 8 * j, "<f8")
    w = width[frame_of]
    values_at = ts_end[frame_of]
    if fixed.all():  # the usual case: no lengths to read
        lengths = w
        start = values_at + j * w
        bad_sample = ~((ts >= 0.0) & (ts < np.inf))
    else:
        var = w == 0
        lengths = np.where(var, gather_numbers(arr, np.where(var, values_at + 4 * j, 0), "<u4"),
                           w).astype(np.int64)
        upto = np.cumsum(lengths)  # bytes of values up to and including each sample
        before = upto - lengths
        start = np.where(var, values_at + 4 * count[frame_of] + before - before[first[frame_of]],
                         values_at + j * w)
        has = count > 0
        filled = np.zeros(nf, np.int64)
        filled[has] = upto[first[has] + count[has] - 1] - before[first[has]]
        ok &= fixed | (ts_end + 4 * count + filled == end)
        bad_sample = ~((ts >= 0.0) & (ts < np.inf)) | (lengths == 0)
    bad = np.zeros(nf, bool)
    bad[frame_of[bad_sample]] = True
    problem = ~ok | bad
    if problem.any():
        f = int(np.argmax(problem))
        if not ok[f]:
            raise ReplayError("malformed ADD_BATCH body", int(off[f]))
        _refuse_sample(dec, int(frames[f]))
    idx = frames[frame_of]
    return Samples(idx, dec.event["key"][idx].astype(np.int64),
                   dec.event["pos"][idx].astype(np.int64) + j, ts, start, lengths)


def _unique(a: np.ndarray) -> np.ndarray:
    """The sorted distinct values of `a` (np.unique hashes, several times slower)."""
    s = np.sort(a)
    if len(s) < 2:
        return s
    return s[np.concatenate(([True], s[1:] != s[:-1]))]


def _refuse_sample(dec: fmt.Decoded, i: int) -> None:

    raise ReplayError(f"event {int(dec.event['pos'][i])} is invalid here: a sample with a "
                      "bad timestamp or an empty value", int(dec.offsets[i]))
