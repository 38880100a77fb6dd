"""A materialised, read-only replica of a shared log's state.

Theory of operation
-------------------
:class:`StreamReplica` is a :class:`~._state_backend.StateBackend` (reads at
in-memory speed, history kept for time travel) fed from the stream of a
shared log.  It does no I/O itself: whoever owns the connection -- the
sync or async shared-log backend, or a follower thread -- reads records and
hands them to :meth:`StreamReplica.apply` in stream order.  Records are
applied under the backend's lock with :func:`~telstate_log.core._stream_apply.apply_record`,
so a replica is always the state at some position of the stream, and a
gap or a different event at a known position raises
:exc:`~telstate_log.StreamDivergedError` (and the replica keeps the state
it had: it never merges two histories).  Monitors of the replica are
notified from the hub like a log backend's.

Recorded times of records are kept in two lists (last position, recorded
time) so :meth:`resolve_time` is a binary search; session records are kept
for :meth:`session_info`.  :meth:`wait_for` blocks until the replica has
applied a position (read-your-writes for a writer that reads through it).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable
from typing import Any

from ..core._errors import HistoryUnavailableError, StreamDivergedError
from ..core._events import SESSION
from ..core._state import State
from ..core._stream_apply import apply_record, session_of
from ..core._stream_format import StreamRecord
from ._redis_log_common import record_updates
from ._state_backend import StateBackend

__all__ = ["StreamReplica"]


class StreamReplica(StateBackend):
    """Read-only state of a shared log, applied from its stream records."""

    _readonly = True
    _writable = False

    def __init__(self) -> None:
        super().__init__(State(keep_history=True))
        self._changed = threading.Condition(self._lock)
        self._rec_pos: list[int] = []
        self._rec_time: list[float] = []
        self._sessions: dict[int, dict[str, Any]] = {}
        #: entry ID of the last record applied (where reading resumes)
        self.last_id = b"0-0"
        #: the error that stopped the replica, if one did
        self.error: BaseException | None = None

    def apply(self, records: Iterable[StreamRecord]) -> int:
        """Apply records in stream order; returns the position reached."""
        with self._lock:
            state = self._state
            try:
                for record in records:
                    if record.kind == SESSION:
                        self._sessions[record.session] = session_of(record)
                    else:
                        apply_record(state, record)
                        self._rec_pos.append(record.last)
                        self._rec_time.append(record.recorded)
                        self._notify(record)
                    self.last_id = record.entry_id
            except StreamDivergedError as exc:
                self.error = exc
                self._changed.notify_all()
                raise
            self._changed.notify_all()
            return state.position

    def _notify(self, record: StreamRecord) -> None:
        hub = self._hub
        for key, update in record_updates(record):
            if key is None:
                hub.publish_all(update)
            elif key in hub.by_key or hub.wildcard:
                hub.publish(key, lambda u=update: u)  # type: ignore[misc]

    def wait_for(self, position: int, timeout: float | None = None) -> bool:
        """Wait until `position` is applied; False on timeout. Raises the stop error."""
        with self._lock:
            ok = self._changed.wait_for(
                lambda: self._state.position >= position or self.error is not None, timeout)
            if self.error is not None:
                raise self.error
            return ok

    def resolve_time(self, when: float) -> int:
        with self._lock:
            i = bisect.bisect_right(self._rec_time, when)
            if i == 0:
                if self._rec_time:
                    return 0
                raise HistoryUnavailableError("the shared log has no events yet")
            return self._rec_pos[i - 1]

    def session_info(self, session: int) -> dict[str, Any]:
        with self._lock:
            return dict(self._sessions.get(session, {}))

    def session_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._sessions)
