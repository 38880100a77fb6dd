"""Project a log into a Redis database in katsdptelstate's exact layout.

Theory of operation
-------------------
A :class:`Projector` keeps one Redis database equal to the state of a log
at some position, so that katsdptelstate clients (readers, ``wait_key``
users, katdal) can use the log as if it were their Redis.  How far it got
lives on the same server, in a marker kept in another database (by default
15, see :mod:`._marker`) so that clients listing the projected database meet
only telescope state; every batch of writes commits together with its
marker update in one ``MULTI``/``EXEC`` guarded by ``WATCH``: a projector
killed at any moment and restarted resumes exactly after the last committed
batch, and no event is ever applied twice.

*Claiming a database.*  An empty database, or one whose marker names this
log, is used; anything else (keys but no marker, a marker of another log,
a marker that records a failure) raises :exc:`ForeignDatabaseError` unless
``overwrite=True``, which ``FLUSHDB``\\ s it first (in the transaction that
writes the new marker).  A marker ahead of the log (the log was truncated
or repaired) is refused the same way.  A marker that an earlier version
kept in the projected database is moved to the marker database first.

*Backfill* (:meth:`Projector.backfill`) loads the state at a position N
(default: the log's current position) as fast as Redis can take it: the
target N is written to the marker first; then the as-of snapshot at N
(``as_of(position=N).snapshot_items()``, sorted by key, reproducible for a
given N) is sent as ``RESTORE ... REPLACE`` commands (:mod:`._translate`),
many keys per transaction, each transaction also recording the last key it
restored; each batch is built while Redis executes the previous
transaction.  A projector restarted mid-backfill finishes the *same* N from
the key after that one, so an interrupted and an uninterrupted backfill
leave byte-identical databases; the last transaction sets the position to
N and drops the backfill fields.  Each restored key is announced on
``update/<key>`` in the same transaction (its value, last sample or
sub-keys: :func:`~._translate.announce_commands`), so a katsdptelstate
client already waiting for it wakes.  Asked to backfill a
database already projected up to some position, the projector catches up
through events instead (so waiters are woken).

*Follow* (:meth:`Projector.step`, :meth:`Projector.follow`) translates the
events after the marker's position into the commands and ``update/<key>``
messages katsdptelstate clients would have sent, many events per
transaction when catching up.  ``follow`` wakes on the backend's
``watch_all()`` (an in-process log, or a read-only follower of a log written
by another process) and also polls, so it never misses growth; it returns
when its ``stop`` event is set, having committed whatever it had sent.

If another projector moves the marker, or an ``EXEC`` reply is lost, the
projector re-reads the marker and carries on from what it says.  A marker
that vanished from an empty database (Redis restarted without persistence)
restarts the projection; any other surprise stops it with
:exc:`ProjectionError`.  Writes to the projected database by other clients
are not supported: Redis would then differ from the log.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import redis

from ..backends._redis_endpoint import check_client
from ..core._errors import HistoryUnavailableError
from ..core._events import Event
from ..core._progress import ProgressCallback
from ._marker import (
    DEFAULT_MARKER_DB,
    DEFAULT_MARKER_KEY,
    ForeignDatabaseError,
    Marker,
    MarkerMoved,
    MarkerStore,
    PendingCommit,
    ProjectionError,
    client_for_url,
)
from ._translate import Batch, Command, event_commands, restore_batches, split_events

__all__ = ["Projector", "ProjectorStatus"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProjectorStatus:
    """Where a projection stands."""

    log_id: str
    position: int                  #: last event committed to Redis
    log_position: int              #: last event in the log
    backfill_target: int | None    #: position a pending backfill loads, if any
    events_applied: int            #: events applied by this projector object
    keys_restored: int             #: keys restored by this projector's backfills
    transactions: int              #: transactions committed by this projector

    @property
    def lag(self) -> int:
        """Events in the log not yet in Redis."""
        return max(self.log_position - self.position, 0)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lag": self.lag}


class Projector:
    """Keeps a Redis database equal to a log's state (see the module docstring).

    Parameters
    ----------
    backend
        A :class:`~telstate_log.backends.LogBackend` (writable, or a
        read-only follower of a log another process writes).
    client
        A :class:`redis.Redis` on the target database (``decode_responses=False``).
    overwrite
        FLUSHDB a database holding data not projected from this log, instead
        of raising :exc:`ForeignDatabaseError`.
    marker_key
        Name of the marker key (followed by ``:<database number>`` in the
        marker database).
    marker_db
        The database of the same server that keeps the marker (never the
        projected one; the server must have it: see its ``databases`` setting).
    batch_events, batch_bytes
        Most events per catch-up step, and about how many bytes go in one
        transaction (backfills and catch-up).
    progress
        ``progress(stage, done, total)`` callback for backfills (keys).
    """

    def __init__(self, backend: Any, client: redis.Redis, *, overwrite: bool = False,
                 marker_key: bytes = DEFAULT_MARKER_KEY, marker_db: int = DEFAULT_MARKER_DB,
                 batch_events: int = 4096,
                 batch_bytes: int = 8 << 20, progress: ProgressCallback | None = None) -> None:
        log_id = getattr(backend, "log_id", None)
        if not isinstance(log_id, bytes) or not hasattr(backend, "events"):
            raise TypeError("a Projector needs a LogBackend (with a log id and events), "
                            f"not {type(backend).__name__}")
        check_client(client)
        if batch_events < 1 or batch_bytes < 1:
            raise ValueError("batch_events and batch_bytes must be positive")
        self.backend = backend
        self.client = client
        self.log_id = log_id.hex()
        self.store = MarkerStore(client, marker_key, marker_db=marker_db)
        self.batch_events = batch_events
        self.batch_bytes = batch_bytes
        self.progress = progress
        self.events_applied = 0
        self.keys_restored = 0
        try:
            self._claim(overwrite)
        except BaseException:
            self.store.close()
            raise

    # ------------------------------------------------------------- claiming
    def _claim(self, overwrite: bool) -> None:
        try:
            marker = self.store.read()
            problem = self._problem(marker)
        except ForeignDatabaseError as exc:            # not a marker at all
            marker, problem = None, str(exc)
        if problem is None and marker is not None:
            return
        if problem is not None and not overwrite:
            raise ForeignDatabaseError(f"{problem}; pass overwrite=True (--overwrite) to "
                                       "FLUSHDB it and project this log")
        self.store.initialise(self.log_id, flush=problem is not None)

    def _problem(self, marker: Marker | None) -> str | None:
        """Why the database cannot be used as it is (None: it can)."""
        if marker is None:
            others = self.store.dbsize()
            return None if not others else \
                f"the Redis database holds {others} key(s) and no projector marker"
        if marker.log_id != self.log_id:
            return f"the Redis database holds a projection of another log ({marker.log_id})"
        if marker.error is not None:
            return f"a previous projection into this database failed: {marker.error}"
        if marker.position > self.backend.position:
            return (f"the Redis database is ahead of the log (position {marker.position} > "
                    f"{self.backend.position}): was the log truncated or repaired?")
        return None

    @property
    def marker(self) -> Marker:
        """The marker as last committed or read."""
        if self.store.current is None:
            self._reread()
        assert self.store.current is not None
        return self.store.current

    @property
    def position(self) -> int:
        """Position of the last event committed to Redis."""
        return self.marker.position

    def _reread(self) -> None:
        """After MarkerMoved: adopt what the marker says, or restart an emptied database."""
        marker = self.store.read()
        if marker is None and self.store.dbsize() == 0:
            logger.warning("the projector marker vanished from an empty database (Redis "
                           "restarted without persistence?): projecting again from scratch")
            self.store.initialise(self.log_id, flush=False)
            return
        problem = self._problem(marker)
        if problem is not None:
            raise ProjectionError(f"cannot continue projecting: {problem}")

    def _commit(self, commands: Sequence[Command], new: Marker) -> bool:
        """Commit; False if the marker moved (it has been re-read: the caller retries)."""
        try:
            self.store.commit(commands, new)
        except MarkerMoved as exc:
            logger.info("projection transaction not applied: %s", exc)
            self._reread()
            return False
        return True

    # ------------------------------------------------------------- backfill
    def backfill(self, upto: int | None = None, *,
                 stop: threading.Event | None = None) -> int:
        """Load the log's state up to position `upto` (default: now); returns the position.

        Finishes a pending backfill (of its recorded target) first.  Returns
        early, with the target still recorded, if `stop` is set.
        """
        log_position = self.backend.position
        if upto is not None and not 0 <= upto <= log_position:
            raise ValueError(f"cannot backfill to position {upto}: the log ends at "
                             f"{log_position}")
        while True:
            marker = self.marker
            if marker.backfill_target is not None:
                if self._restore_snapshot(marker.backfill_target, stop):
                    continue
                return self.position
            target = log_position if upto is None else upto
            if marker.position >= target:
                return marker.position
            if marker.position > 0:     # already projected: catch up through events
                while self.position < target and not (stop is not None and stop.is_set()):
                    self.step(upto=target)
                return self.position
            self._commit([], replace(marker, backfill_target=target, backfill_after=None))

    def _snapshot(self, target: int, after: bytes | None) -> list[tuple[bytes, Any, Any]]:
        """The items still to restore for a backfill to `target` (after key `after`)."""
        items: list[tuple[bytes, Any, Any]] = \
            self.backend.as_of(position=target).snapshot_items(b"*")
        if after is not None:
            items = [item for item in items if item[0] > after]
        return items

    def _restore_snapshot(self, target: int, stop: threading.Event | None) -> bool:
        """Restore the snapshot at `target`; True if the marker moved (start over).

        Each batch is built while Redis executes the previous transaction
        (``begin`` sends it, ``finish`` reads its outcome).
        """
        items = self._snapshot(target, self.marker.backfill_after)
        if not items:
            if not self._commit([], Marker(self.log_id, target)):
                return True
            self.events_applied += target
            return False
        done = 0
        pending: tuple[PendingCommit, Batch] | None = None
        try:
            for batch in restore_batches(items, batch_bytes=self.batch_bytes,
                                         batch_keys=self.batch_events):
                if pending is not None:
                    if not self._finish(*pending):
                        return True
                    done += pending[1].keys
                    if self.progress is not None:
                        self.progress("backfill", done, len(items))
                    if stop is not None and stop.is_set():
                        pending = None
                        return False
                new = Marker(self.log_id, target) if batch.final else \
                    replace(self.marker, backfill_after=batch.last_key)
                try:
                    pending = self.store.begin(batch.commands, new), batch
                except MarkerMoved as exc:
                    pending = None
                    logger.info("projection transaction not applied: %s", exc)
                    self._reread()
                    return True
            assert pending is not None
            commit, pending = pending, None
            if not self._finish(*commit):
                return True
        finally:
            if pending is not None:           # an error while building: read the outcome
                with contextlib.suppress(ProjectionError):
                    pending[0].finish()
        if self.progress is not None:
            self.progress("backfill", len(items), len(items))
        self.events_applied += target
        return False

    def _finish(self, commit: PendingCommit, batch: Batch) -> bool:
        """Read a sent transaction's outcome; False if the marker moved (re-read)."""
        try:
            commit.finish()
        except MarkerMoved as exc:
            logger.info("projection transaction not applied: %s", exc)
            self._reread()
            return False
        self.keys_restored += batch.keys
        return True

    # --------------------------------------------------------------- follow
    def step(self, upto: int | None = None) -> int:
        """Apply the next events after the marker (at most `batch_events`, up to
        position `upto`); returns how many were applied.  A pending backfill is
        finished first (and counts as the events it covered)."""
        marker = self.marker
        if marker.backfill_target is not None:
            before = marker.position
            return self.backfill() - before
        end = self.backend.position if upto is None else min(upto, self.backend.position)
        start = marker.position + 1
        if start > end:
            return 0
        try:
            events = self.backend.events(start, min(end, start + self.batch_events - 1))
        except HistoryUnavailableError as exc:
            raise ProjectionError(f"the log no longer holds the events after position "
                                  f"{marker.position} ({exc}): re-project with overwrite"
                                  ) from None
        applied = 0
        for chunk in split_events(events, self.batch_bytes):
            if not self._apply_events(chunk):
                break
            applied += len(chunk)
        return applied

    def _apply_events(self, events: Sequence[Event]) -> bool:
        """Apply one run of events in one transaction; False if the marker moved."""
        marker = self.marker
        if events[0].position != marker.position + 1:
            return False
        commands = event_commands(events, lambda p: self.backend.as_of(position=p - 1).keys(b"*"))
        if not self._commit(commands, replace(marker, position=events[-1].position)):
            return False
        self.events_applied += len(events)
        return True

    def follow(self, stop: threading.Event | None = None, *,
               poll_interval: float = 0.2) -> int:
        """Keep Redis in step with the log until `stop` is set; returns the position.

        Backfills first if nothing was projected yet (or a backfill is
        pending).  Wakes on the backend's updates and polls every
        `poll_interval` seconds (which also bounds how long a stop takes).
        """
        stop = stop if stop is not None else threading.Event()
        if self.marker.position == 0 or self.marker.backfill_target is not None:
            self.backfill(stop=stop)
        watch = getattr(self.backend, "watch_all", None)
        watcher = watch() if watch is not None else None
        try:
            if watcher is not None:
                next(watcher)           # subscribed: growth from here on wakes us
            while not stop.is_set():
                error = getattr(self.backend, "follow_error", None)
                if error is not None:
                    raise ProjectionError(f"the log can no longer be followed: {error}")
                if self.step():
                    continue
                if watcher is not None:
                    watcher.send(poll_interval)
                else:
                    stop.wait(poll_interval)
        finally:
            if watcher is not None:
                watcher.close()
        return self.position

    # --------------------------------------------------------------- status
    def status(self) -> ProjectorStatus:
        """Where the projection stands (re-reads the marker from Redis; thread-safe)."""
        try:
            marker = self.store.read(remember=False)
        except ForeignDatabaseError:
            marker = None
        if marker is None or marker.log_id != self.log_id:
            raise ProjectionError("the projector marker is gone or belongs to another log")
        return ProjectorStatus(self.log_id, marker.position, self.backend.position,
                               marker.backfill_target, self.events_applied,
                               self.keys_restored, self.store.transactions)

    def close(self) -> None:
        """Close the connections to the marker database (the client is the caller's)."""
        self.store.close()

    @classmethod
    def from_url(cls, backend: Any, url: str, **options: Any) -> Projector:
        """A projector into the Redis database at `url` (katsdptelstate's client options)."""
        return cls(backend, client_for_url(url), **options)

    def __repr__(self) -> str:
        return f"<Projector log={self.log_id} position={self.store.current and self.position}>"
