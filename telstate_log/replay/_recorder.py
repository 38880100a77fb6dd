"""Record a live Redis used by katsdptelstate clients into a log.

Theory of operation
-------------------
The reverse of the projector.  katsdptelstate's write scripts publish every
successful write on ``update/<key>``; a :class:`Recorder` listens to them
and appends each write to a log as an event, under a session whose source
label names the server (``record:redis://host:port/db``, password
redacted).

1. **Subscribe first**: ``PSUBSCRIBE update/*``, plus the database's
   keyspace-event channel when the server sends generic key events
   (``notify-keyspace-events`` containing ``E`` or ``K`` and ``g``;
   ``keyspace_events=True`` adds ``Egx`` with ``CONFIG SET`` when the server
   allows it).  Messages are buffered from here on.
2. **Baseline**: reconcile the log with a ``SCAN`` + ``DUMP`` snapshot of
   the database (:mod:`._resync`): what Redis holds and the log lacks is
   written as events; the log's keys that Redis lacks are deleted.
3. **Follow**: drain messages in batches and hand each batch to the
   *sink* (:mod:`._log_sink` for a log of its own, :mod:`._shared_sink`
   for a shared log), which *confirms* it in one pipelined round trip
   before anything is written: the key's ``TYPE`` (the immutable and
   sensor messages carry no type byte), and whether the announced value is
   still there (``GET``, ``ZSCORE``, ``HGET``).  Only confirmed writes are
   recorded, which also drops messages about keys of the same name in
   *other* databases (pub/sub channels are server-wide).  A write the log
   refuses means the key was deleted and re-created unseen: the key is
   reconciled from its ``DUMP``.
4. **Gaps**: when the subscription connection drops (server restart, a
   slow subscriber disconnected by Redis, ``CLIENT KILL``), messages
   published meanwhile are lost.  The recorder resubscribes with backoff
   and then reconciles the whole database again, so the log converges on
   Redis's state: missing samples and sub-keys are added, keys gone from
   Redis are deleted, and an immutable that changed is recorded as a
   ``delete`` followed by a ``set`` (the log cannot hold two values of one
   immutable otherwise).  ``resync_interval`` reconciles periodically too.

What pub/sub cannot show
~~~~~~~~~~~~~~~~~~~~~~~~
katsdptelstate publishes nothing for ``delete`` (a ``DEL``) or ``clear`` (a
``FLUSHDB``).  Deletes (and ``RESTORE``, ``RENAME``, expiry) are seen only
through keyspace notifications, which Redis disables by default.  A
``FLUSHDB``/``FLUSHALL`` sends *no* notification at all, whatever the
configuration (Redis 7.0 has no flush event), so a clear shows up only at
the next reconcile (a gap, or ``resync_interval``), as individual deletes.
Without notifications, a key deleted and written again with an equal or
extended value looks unchanged, so the log keeps samples and sub-keys Redis
dropped until the next reconcile.  A value that was already overwritten or
deleted when its message was confirmed is not recorded (the log follows
Redis's state, not every transient), and ``load_from_file`` into Redis
(``RESTORE`` per key, no messages) is seen only with notifications or at a
reconcile.

Into a shared log (mixed fleets)
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
Given a :class:`~telstate_log.backends.RedisLogBackend` of the recorded
database (or by :meth:`Recorder.into_stream`), the recorder appends to its
shared log (:class:`~._shared_sink.SharedLogSink`): writes of unmodified
katsdptelstate clients enter the same total order as the shared-log
writers', whose own messages are skipped (their events are in the stream
already).  Each katsdptelstate write is recorded once, under the
recorder's session, with the time the recorder *saw* it: katsdptelstate
writes keep their publish order among themselves, but enter the stream
after whatever shared-log writers appended before the recorder saw them.
One recorder per stream (a lease refuses a second).  The blind spots above
remain, and writes recovered by a reconcile are recorded in key order.
A katsdptelstate client's delete of a key that shared-log writers write
again before the recorder recorded the delete can make a writer's event
repeat a write the stream already holds, which followers refuse as a
diverged stream: keep katsdptelstate deletes off the shared writers' keys.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import redis
import redis.client
from redis.retry import Retry

from ..backends import RedisLogBackend
from ..backends._redis import REDIS_DOWN
from ..backends._redis_endpoint import check_client, describe_pool, pubsub_pool_options
from ..core._errors import ConnectionError
from ._log_sink import LogSink
from ._record_messages import classify, deletes_visible, keyspace_flags
from ._resync import ReconcileReport
from ._shared_sink import SharedLogSink

__all__ = ["Recorder", "RecorderStats"]

logger = logging.getLogger(__name__)

_RETRY_FIRST, _RETRY_MAX = 0.05, 2.0
_SUBSCRIBE_TIMEOUT = 5.0


@dataclass
class RecorderStats:
    """What a recorder has done so far."""

    messages: int = 0       #: pub/sub messages received
    recorded: int = 0       #: events appended to the log
    unconfirmed: int = 0    #: updates no longer in Redis when checked (not recorded)
    deletes: int = 0        #: keyspace notifications recorded as deletes
    repairs: int = 0        #: keys reconciled one by one
    known: int = 0          #: writes a shared log had already (shared-log writers')
    resyncs: int = 0        #: whole-database reconciles (baseline, gaps, periodic)
    gaps: int = 0           #: lost subscriptions
    seconds: float = 0.0    #: since start()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Recorder:
    """Records a Redis database's telescope state into a backend (see module docstring).

    Parameters
    ----------
    client
        :class:`redis.Redis` on the database to record (``decode_responses=False``).
    backend
        Where to record: a writable :class:`~telstate_log.backends.LogBackend`
        (or any sync backend with ``add_mutable_many``), or the shared log of
        the recorded database (a :class:`~telstate_log.backends.RedisLogBackend`
        or :class:`~._shared_sink.SharedLogSink`; see :meth:`into_stream`).
    source
        Source label of the recording session (default ``record:<url>``).
    keyspace_events
        Enable generic and expiry keyspace events (``CONFIG SET``) if the
        server does not send them, so that deletes are recorded.
    resync_interval
        Seconds between periodic reconciles (None: only at start and after gaps).
    batch
        Most messages confirmed in one round trip.
    """

    def __init__(self, client: redis.Redis, backend: Any, *, source: str | None = None,
                 keyspace_events: bool = False, resync_interval: float | None = None,
                 batch: int = 512) -> None:
        check_client(client)
        self.client = client
        self.backend = backend
        self.sink: LogSink | SharedLogSink = (
            backend if isinstance(backend, SharedLogSink) else SharedLogSink(backend)
            if isinstance(backend, RedisLogBackend) else LogSink(backend, client))
        if isinstance(self.sink, SharedLogSink):
            self.sink.check_database(client)
        pool = client.connection_pool
        self.url = describe_pool(pool)
        self.source = source if source is not None else f"record:{self.url}"
        self.db = int((getattr(pool, "connection_kwargs", None) or {}).get("db") or 0)
        self.resync_interval = resync_interval
        self.batch = batch
        self.stats = RecorderStats()
        self.flags = self._configure(keyspace_events)
        self._sub_client = redis.Redis(connection_pool=redis.ConnectionPool(
            **pubsub_pool_options(pool, Retry)))
        self._pubsub: redis.client.PubSub | None = None
        self._pending: deque[dict[str, Any]] = deque()
        self._retry_at = 0.0
        self._delay = 0.0
        self._started = 0.0
        self._last_resync = 0.0
        self._previous_source: str | None = None

    @classmethod
    def into_stream(cls, client: redis.Redis, stream: str = "telstate-log", *,
                    replicas: int = 0, replica_timeout: float = 1.0,
                    **options: Any) -> Recorder:
        """A recorder of `client`'s database into the shared log `stream` of that database.

        `options` are the constructor's; :meth:`close` closes the stream's connections.
        """
        sink = SharedLogSink.for_client(client, stream=stream, replicas=replicas,
                                        replica_timeout=replica_timeout)
        try:
            return cls(client, sink, **options)
        except BaseException:
            sink.close()
            raise

    # ------------------------------------------------------------ configuration
    def _configure(self, enable: bool) -> str | None:
        flags = keyspace_flags(self.client)
        if enable and flags is not None and not deletes_visible(flags):
            wanted = "".join(c for c in "Egx" if c not in flags)
            try:
                self.client.config_set("notify-keyspace-events", flags + wanted)
            except redis.ResponseError as exc:
                logger.warning("could not enable keyspace events (%s): deletes will only be "
                               "seen at reconciles", exc)
            flags = keyspace_flags(self.client)
        elif enable and flags is None:
            logger.warning("CONFIG is not available: cannot enable keyspace events")
        if not deletes_visible(flags):
            logger.warning("keyspace notifications are off on %s: deletes and clears are "
                           "recorded only at reconciles", self.url)
        return flags

    @property
    def deletes_visible(self) -> bool:
        """Whether deletes are seen as they happen (keyspace notifications on)."""
        return deletes_visible(self.flags)

    def _patterns(self) -> list[bytes]:
        patterns = [b"update/*"]
        if self.deletes_visible:
            assert self.flags is not None
            space = "keyevent" if "E" in self.flags else "keyspace"
            patterns.append(f"__{space}@{self.db}__:*".encode())
        return patterns

    # ----------------------------------------------------------------- lifetime
    def start(self) -> ReconcileReport:
        """Subscribe, then take the baseline; returns what the baseline recorded."""
        self._started = time.monotonic()
        self.sink.keep()
        self._previous_source = self.sink.source
        self.sink.set_source(self.source)
        self._subscribe()
        return self.resync()

    def close(self) -> None:
        """Drop the subscription and restore the backend's source label."""
        self._drop()
        self._sub_client.connection_pool.disconnect()
        if self._started and self.sink.source == self.source:
            self.sink.set_source(self._previous_source)
        self._update_stats()
        self.sink.close()

    def __enter__(self) -> Recorder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _update_stats(self) -> None:
        self.stats.recorded = self.sink.recorded
        self.stats.seconds = time.monotonic() - self._started if self._started else 0.0

    # ------------------------------------------------------------- subscription
    def _subscribe(self) -> None:
        """Subscribe on a new connection and wait for the server's confirmations."""
        pubsub: redis.client.PubSub = self._sub_client.pubsub()
        patterns = self._patterns()
        try:
            pubsub.psubscribe(*patterns)
            confirmed = 0
            deadline = time.monotonic() + _SUBSCRIBE_TIMEOUT
            while confirmed < len(patterns):
                message = pubsub.get_message(timeout=max(deadline - time.monotonic(), 0.0))
                if message is None:
                    raise ConnectionError(f"{self.url} did not confirm the subscription")
                if message.get("type") == "psubscribe":
                    confirmed += 1
                else:
                    self._pending.append(message)
        except BaseException:
            pubsub.close()
            raise
        self._pubsub = pubsub
        self._delay = 0.0

    def _drop(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except REDIS_DOWN:
                pass
            self._pubsub = None

    def _lost(self, exc: BaseException) -> None:
        self._drop()
        self.stats.gaps += 1
        self._delay = min(self._delay * 2 or _RETRY_FIRST, _RETRY_MAX)
        self._retry_at = time.monotonic() + self._delay
        logger.warning("lost the subscription to %s (%s): resubscribing, then reconciling",
                       self.url, exc)

    def _reconnect(self) -> bool:
        """Try to resubscribe (then reconcile the gap); True on success."""
        if time.monotonic() < self._retry_at:
            return False
        try:
            self._subscribe()
            self.resync()
        except (*REDIS_DOWN, ConnectionError) as exc:
            self._drop()
            self._delay = min(self._delay * 2 or _RETRY_FIRST, _RETRY_MAX)
            self._retry_at = time.monotonic() + self._delay
            logger.debug("resubscribing to %s failed (%s)", self.url, exc)
            return False
        return True

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        if self._pending:
            return self._pending.popleft()
        if self._pubsub is None:
            if not self._reconnect():
                time.sleep(min(max(self._retry_at - time.monotonic(), 0.0), timeout))
                return None
            if self._pending:
                return self._pending.popleft()
            timeout = 0.0
        assert self._pubsub is not None
        try:
            message: dict[str, Any] | None = self._pubsub.get_message(timeout=timeout)
        except REDIS_DOWN as exc:
            self._lost(exc)
            return None
        return message

    # --------------------------------------------------------------- recording
    def resync(self) -> ReconcileReport:
        """Reconcile the log with the whole database now."""
        report = self.sink.reconcile(self.client)
        self.stats.resyncs += 1
        self._update_stats()
        self._last_resync = time.monotonic()
        if report.changed:
            logger.info("reconcile with %s: %s", self.url, report.as_dict())
        return report

    def step(self, timeout: float = 0.1) -> int:
        """Record the messages that arrive within `timeout` seconds (a batch at most).

        Returns the number of messages handled.
        """
        self.sink.keep()
        if self.resync_interval is not None and self._pubsub is not None and \
                time.monotonic() - self._last_resync >= self.resync_interval:
            self.resync()
        first = self._receive(timeout)
        if first is None:
            self._update_stats()
            return 0
        batch = [first]
        while len(batch) < self.batch and (message := self._receive(0.0)) is not None:
            batch.append(message)
        items = [item for m in batch if (item := classify(m)) is not None]
        self.stats.messages += len(items)
        if items:
            self.sink.record(items, self.stats)
        self._update_stats()
        return len(items)

    def run(self, stop: threading.Event | None = None, *, poll: float = 0.2) -> RecorderStats:
        """Start if needed and record until `stop` is set; returns the stats."""
        if not self._started:
            self.start()
        while stop is None or not stop.is_set():
            self.step(poll)
        self.drain()
        return self.stats

    def drain(self) -> int:
        """Record the messages already received, without waiting; returns how many."""
        total = 0
        while self._pubsub is not None and (count := self.step(0.0)):
            total += count
        self._update_stats()
        return total
