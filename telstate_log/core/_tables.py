"""What replaying a log learns besides the state, and how replay refuses an event.

:class:`Tables` holds the per-log dictionaries learned from meta records
(key and session ids, the sparse time index) and kept in checkpoints;
:exc:`ReplayError` names a well-formed frame that is not a valid event in
this log.  Pure: no I/O.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _log_format as fmt

__all__ = ["ReplayError", "Tables"]


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

    def index_frames(self, positions: list[int], rec: float, segment: int,
                     offsets: list[int]) -> None:
        """Add frames recorded at `rec` in `segment` to the sparse index: the
        frame at ``offsets[i]`` holds event ``positions[i]``."""
        self.time_pos += positions
        self.time_rec += [rec] * len(positions)
        self.time_seg += [segment] * len(positions)
        self.time_off += offsets
        self.last_recorded = rec

    def add_keys(self, new: list[tuple[int, bytes]]) -> None:
        """Define new keys, as ``(key id, key)`` pairs."""
        self.keys.update(new)
        self.key_ids.update((key, kid) for kid, key in new)

    def locate(self, position: int) -> tuple[int, int, int] | None:
        """(segment, offset, position) of an indexed event at or before `position`."""
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
