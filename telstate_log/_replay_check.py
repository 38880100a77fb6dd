"""Validate a run of recorded events before any of it is applied.

Theory of operation
-------------------
The replayer (:mod:`telstate_log._replayer`) applies a run of events -- the
frames between two DELETE or CLEAR events -- grouped by kind and key, not
one by one, so an invalid event found while applying would leave the
state with part of the run in it: events after the bad one, or a sensor
created for a sample that was then refused.  A writer opening the log
throws that state away, but a follower keeps serving it.  So every way an
event can contradict the state is checked here first, vectorised over the
run, and the run is applied only when all of it is valid; a
:exc:`~telstate_log._replayer.ReplayError` then leaves the state exactly
as it was after the previous run (a prefix of the log).

Checked: session and key ids are defined, one key is not written as two
types and not as a type other than the one it has, sample timestamps are
finite and not negative, sample values are not empty, and ADD_BATCH and
SET_INDEXED bodies are well formed.  Pure: no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import _format as fmt

if TYPE_CHECKING:
    from ._replayer import Tables
    from ._state import State

__all__ = ["check_run"]

# key type (KeyType value) written by each event kind; 0: no key type
_KIND_TYPE = np.zeros(256, np.int64)
_KIND_TYPE[fmt.IMMUTABLE] = 1
_KIND_TYPE[fmt.ADD] = 2
_KIND_TYPE[fmt.ADD_BATCH] = 2
_KIND_TYPE[fmt.INDEXED] = 3
_TYPE_NAMES = {1: "immutable", 2: "mutable", 3: "indexed"}


def check_run(state: State, tables: Tables, buf: memoryview, dec: fmt.Decoded,
              ev: np.ndarray) -> dict[int, Any]:
    """Check the events `ev` (frame indices of one run) against `state` and `tables`.

    Returns the parsed ADD_BATCH bodies by frame index (so they are parsed
    once).  Raises ReplayError naming the first offending frame found.
    """
    from ._replayer import ReplayError

    offsets = dec.offsets
    sess = dec.event["sess"][ev]
    for s in np.unique(sess).tolist():
        if s not in tables.sessions:
            i = int(ev[int(np.argmax(sess == s))])
            raise ReplayError(f"undefined session id {s}", int(offsets[i]))
    kinds = dec.kinds[ev]
    kids = dec.event["key"][ev].astype(np.int64)
    keys = tables.keys
    types = _KIND_TYPE[kinds]
    typed = types > 0
    for kid in np.unique(kids[typed]).tolist():
        if kid not in keys:
            i = int(ev[int(np.argmax(typed & (kids == kid)))])
            raise ReplayError(f"undefined key id {kid}", int(offsets[i]))
    pairs = np.unique(kids[typed] * 4 + types[typed])
    for kid, want in zip((pairs // 4).tolist(), (pairs % 4).tolist()):
        have = state.key_type(keys[kid])
        seen = [t for t in (pairs[pairs // 4 == kid] % 4).tolist() if t != want]
        if seen or (have is not None and have.value != want):
            other = seen[0] if seen else have.value  # type: ignore[union-attr]
            i = int(ev[int(np.argmax(typed & (kids == kid) & (types != other)))])
            raise ReplayError(f"event {int(dec.event['pos'][i])} is invalid here: key "
                              f"{keys[kid]!r} is {_TYPE_NAMES[other]}, not {_TYPE_NAMES[want]}",
                              int(offsets[i]))
    add = ev[kinds == fmt.ADD]
    if len(add):
        ts = dec.ts[add]
        bad = ~((ts >= 0.0) & (ts < np.inf)) | (dec.lengths[add] <= fmt.EVENT_PREFIX + 8)
        if bad.any():
            _refuse_sample(dec, int(add[int(np.argmax(bad))]))
    batches: dict[int, Any] = {}
    for i in ev[kinds == fmt.ADD_BATCH].tolist():
        off = int(offsets[i])
        fields = fmt.batch_fields(buf, off, int(dec.lengths[i]))
        if fields is None:
            raise ReplayError("malformed ADD_BATCH body", off)
        ts_b, values, width = fields
        if not bool(np.all((ts_b >= 0.0) & (ts_b < np.inf))) or (
                width == 0 and not all(values)):
            _refuse_sample(dec, i)
        batches[i] = fields
    for i in ev[kinds == fmt.INDEXED].tolist():
        if fmt.indexed_fields(buf, int(offsets[i]), int(dec.lengths[i])) is None:
            raise ReplayError("malformed SET_INDEXED body", int(offsets[i]))
    return batches


def _refuse_sample(dec: fmt.Decoded, i: int) -> None:
    from ._replayer import ReplayError

    raise ReplayError(f"event {int(dec.event['pos'][i])} is invalid here: a sample with a "
                      "bad timestamp or an empty value", int(dec.offsets[i]))
