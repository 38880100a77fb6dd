"""Record into a shared log: the recorder's sink for a mixed fleet.

Theory of operation
-------------------
In a mixed fleet, shared-log writers (:class:`~telstate_log.backends.RedisLogBackend`:
each write changes the telstate db and appends its event to the stream in
one atomic ``FCALL``, then publishes katsdptelstate's ``update/<key>``) and
unmodified katsdptelstate clients (their writes change the db and publish,
but append nothing) share one database.  A :class:`~._recorder.Recorder`
with a :class:`SharedLogSink` hears both kinds of message and appends an
event only for the writes the stream lacks, with ``tslog_observe`` (an
event for a write that already happened: no layout change, no message), so
both kinds of writer enter one total order.

Deciding that the stream lacks a write and appending its event must be one
step as far as other writers can tell: a writer deleting or rewriting the
key in between would make the observation repeat or contradict the stream,
which every follower refuses as a diverged stream.  So every batch is a
``WATCH`` transaction on the telstate db:

1. ``WATCH`` the batch's keys;
2. read Redis -- the recorder's confirmations (``GET``/``ZSCORE``/``HGET``),
   a ``DUMP`` for deletes and keys to reconcile -- and bring the
   materialised replica of the stream (the backend's
   :meth:`~telstate_log.backends.RedisLogBackend.replica`) up to its end;
3. decide message by message, in publish order, against the replica plus
   what the batch has already decided: a write the replica holds is a
   shared-log writer's (its event entered the stream with its change,
   before its message was published) and is skipped; a confirmed write it
   lacks is a katsdptelstate client's and is observed; a key deleted,
   restored or replaced unseen is reconciled from its ``DUMP``
   (:func:`~._resync.reconcile_key`: a ``delete`` when Redis no longer has
   it, else the difference);
4. ``MULTI``, the ``tslog_observe`` calls, ``EXEC``.

Every write that appends an event about a key also changes that key in the
telstate db (``FLUSHDB`` touches every key), so an ``EXEC`` that succeeds
proves that no event about the batch's keys entered the stream since step
2: the observations extend exactly the state they were decided against.  An
aborted ``EXEC`` recorded nothing; the batch is decided again, halved each
time down to one message.  A reconcile (baseline, gaps) goes the same way,
a ``SCAN`` chunk of keys per transaction.

One recorder per stream: two would observe the same write twice
(``tslog_observe`` changes no key, so ``WATCH`` cannot see the other).  A
lease (``<stream>:recorder`` in the log db, renewed while the recorder
runs, expiring :data:`LEASE_SECONDS` after it stopped renewing) refuses a
second recorder; it is a guard against mistakes, not a fence -- a
recorder stalled for longer than the lease can overlap with its successor.

What this does not guarantee.  An observed event's recorded time is when
the recorder appended it, and its place in the total order is where the
recorder put it: after whatever shared-log writers appended before the
recorder saw the write (katsdptelstate writes keep their publish order
among themselves; those a reconcile recovers go in key order).  The
recorder's blind spots remain (writes undone before they were confirmed,
deletes without keyspace notifications, ``FLUSHDB``).  A katsdptelstate
delete of a key that a shared-log writer then writes again *before the
recorder recorded the delete* lets that writer's function append a write
the stream already holds (same immutable, same sample): followers refuse
the stream as diverged from there on.  ``tslog_observe`` has no batch
kind, so a key recorded whole (a baseline) is one event per sample, in one
transaction.  The replica holds the stream's whole history in memory,
from its first entry (a stream trimmed by an archiver raises
:exc:`~telstate_log.HistoryUnavailableError`).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import redis
import redis.client

from ..backends import RedisLogBackend
from ..core._errors import SharedLogError
from ._log_sink import SinkCounts
from ._marker import is_marker
from ._observation_batch import ObservationBatch
from ._record_messages import confirmed_update, exchange_confirmation
from ._resync import SCAN_BATCH, ReconcileReport, decode_dump, dump_keys, reconcile_key

__all__ = ["LEASE_SECONDS", "SharedLogSink"]

#: Seconds a recorder's claim on a stream outlives its last renewal.
LEASE_SECONDS = 10.0

_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return holder
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class SharedLogSink:
    """Where a :class:`~._recorder.Recorder` records into a shared log (see module docstring).

    Parameters
    ----------
    backend
        The shared log, a :class:`~telstate_log.backends.RedisLogBackend` of the
        recorded database; its observations are recorded under a session of
        their own (:meth:`set_source`).
    own
        Close `backend` with the sink.
    """

    def __init__(self, backend: RedisLogBackend, *, own: bool = False) -> None:
        self.backend = backend
        self.own = own
        #: events this sink appended
        self.recorded = 0
        target = backend.target
        self.lease_key = target.stream + b":recorder"
        self.token = f"{socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:8]}"
        self._claim_script = backend.log_client.register_script(_CLAIM)
        self._release_script = backend.log_client.register_script(_RELEASE)
        self._renewed = -LEASE_SECONDS

    @classmethod
    def for_client(cls, client: redis.Redis, *, stream: str = "telstate-log",
                   replicas: int = 0, replica_timeout: float = 1.0) -> SharedLogSink:
        """A sink into the shared log `stream` of `client`'s database (owning its backend)."""
        from ..backends._redis_log import client_for_db

        db = int(client.connection_pool.connection_kwargs.get("db") or 0)
        backend = RedisLogBackend(client_for_db(client, db), stream=stream,
                                  replicas=replicas, replica_timeout=replica_timeout)
        return cls(backend, own=True)

    def check_database(self, client: redis.Redis) -> None:
        """Refuse to record `client`'s database unless it is the shared log's own."""
        db = int(client.connection_pool.connection_kwargs.get("db") or 0)
        try:
            servers = {c.info("server").get("run_id") for c in (client, self.backend.client)}
        except redis.ResponseError:     # INFO renamed away: trust the caller on the server
            servers = set()
        if db != self.backend.target.data_db or len(servers) > 1:
            raise ValueError("a recorder records into the shared log of the database it "
                             "records (same server, same db)")

    # ------------------------------------------------------ the recorder's view
    @property
    def position(self) -> int:
        return self.backend.position

    @property
    def source(self) -> str | None:
        return self.backend.source

    def set_source(self, source: str | None) -> None:
        """Record the following observations under a new session with this source label."""
        self.backend.source = source
        self.backend.target.session = 0

    def keep(self) -> None:
        """Claim the stream's recorder lease, or renew it; raises if another recorder holds it."""
        now = time.monotonic()
        if now - self._renewed < LEASE_SECONDS / 5:
            return
        holder = self._claim_script(keys=[self.lease_key],
                                    args=[self.token, int(LEASE_SECONDS * 1000)])
        if holder != 1:
            text = holder.decode(errors="replace") if isinstance(holder, bytes) else holder
            raise SharedLogError(
                f"the shared log {self.backend.target.stream.decode(errors='replace')} is "
                f"already recorded by {text} (one recorder per stream; its claim expires "
                f"{LEASE_SECONDS:g} s after that recorder stops)")
        self._renewed = now

    def close(self) -> None:
        """Give up the lease (and close an owned backend)."""
        if self._renewed >= 0 and not self.backend.closed:
            try:
                self._release_script(keys=[self.lease_key], args=[self.token])
            except redis.RedisError:
                pass
        self._renewed = -LEASE_SECONDS
        if self.own:
            self.backend.close()

    # --------------------------------------------------------- transactions
    def _commit(self, pipe: redis.client.Pipeline, batch: ObservationBatch) -> bool:
        """EXEC the batch's observations; False if a watched key changed."""
        if not batch.ops:
            return True
        pipe.multi()
        for kind, key, tail in batch.ops:
            self.backend.observe(kind, key, tail, pipe=pipe)
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.WatchError:
            return False
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        self.recorded += len(batch.ops)
        if self.backend.target.replicas:
            self.backend.sync()
        return True

    def _dumps(self, keys: list[bytes]) -> dict[bytes, Any]:
        dumps = dict(dump_keys(self.backend.client, keys))
        for reply in dumps.values():
            if isinstance(reply, Exception):
                raise reply
        return dumps

    def record(self, items: Sequence[tuple[str, bytes, bytes]], counts: SinkCounts) -> None:
        """Record a batch of classified messages (see module docstring), in order."""
        at, size = 0, len(items)
        while at < len(items):
            self.keep()
            done = self._try_record(items[at:at + size], counts)
            if done:
                at += done
            else:
                size = max(1, size // 2)

    def _try_record(self, items: Sequence[tuple[str, bytes, bytes]], counts: SinkCounts) -> int:
        """One transaction over a prefix of `items`; how many it consumed (0: aborted)."""
        client = self.backend.client
        with client.pipeline(transaction=True) as pipe:
            keys = {data if what == "event" else key for what, key, data in items}
            pipe.watch(*keys)  # type: ignore[no-untyped-call]
            exchanges: list[tuple[str, bytes, Any, int] | None] = []
            with client.pipeline(transaction=False) as reads:
                for what, key, data in items:
                    exchange = exchange_confirmation(reads, what, key, data)
                    if exchange is not None and exchange[0] == "gone":
                        reads.execute_command("DUMP", exchange[1])  # type: ignore[no-untyped-call]
                        exchange = ("appear", exchange[1], "gone", 1)
                    exchanges.append(exchange)
                replies = reads.execute(raise_on_error=False) if any(exchanges) else []
            batch = ObservationBatch(self.backend.replica())
            tally = {"unconfirmed": 0, "deletes": 0, "repairs": 0, "known": 0}
            done = at = 0
            for exchange in exchanges:
                if exchange is not None:
                    what, key, detail, count = exchange
                    answer, at = replies[at:at + count], at + count
                    if not self._decide(batch, what, key, detail, answer, tally):
                        break
                done += 1
            if not self._commit(pipe, batch):
                return 0
        for name, value in tally.items():
            setattr(counts, name, getattr(counts, name) + value)
        return done

    def _decide(self, batch: ObservationBatch, what: str, key: bytes, detail: Any,
                answer: list[Any], tally: dict[str, int]) -> bool:
        """Decide one message into `batch`; False: end the batch before it."""
        if what != "appear":
            update = confirmed_update(what, key, detail, answer)
            if update is None:
                tally["unconfirmed"] += 1
                return True
            before = len(batch.ops)
            if batch.decide(key, update):
                tally["known"] += len(batch.ops) == before
                return True
            answer = [self._dumps([key])[key]]
        if key in batch.kinds:          # decided against this batch: reconcile in the next
            return False
        report = reconcile_key(batch, key, decode_dump(key, answer[0]))
        tally["known" if not report.changed else "deletes" if detail == "gone"
              else "repairs"] += 1
        return True

    def reconcile(self, client: redis.Redis) -> ReconcileReport:
        """Make the shared log's state equal to the database's (see module docstring)."""
        report = ReconcileReport()
        seen: set[bytes] = set()
        cursor = 0
        while True:
            cursor, keys = client.scan(cursor, count=SCAN_BATCH)
            fresh = [k for k in dict.fromkeys(keys) if isinstance(k, bytes) and k not in seen]
            seen.update(fresh)
            self._reconcile_keys(fresh, report)
            if not cursor:
                break
        self._reconcile_keys([k for k in self.backend.replica().keys(b"*") if k not in seen],
                             report)
        return report

    def _reconcile_keys(self, keys: list[bytes], report: ReconcileReport) -> None:
        chunks = [keys[i:i + SCAN_BATCH] for i in range(0, len(keys), SCAN_BATCH)][::-1]
        while chunks:
            chunk = chunks.pop()
            self.keep()
            attempt = ReconcileReport()
            with self.backend.client.pipeline(transaction=True) as pipe:
                pipe.watch(*chunk)  # type: ignore[no-untyped-call]
                dumps = self._dumps(chunk)
                batch = ObservationBatch(self.backend.replica())
                for key in chunk:
                    found = decode_dump(key, dumps[key]) if dumps[key] is not None else None
                    if found is not None and is_marker(*found):
                        found = None
                    elif found is None and dumps[key] is not None:
                        attempt.skipped += 1
                    reconcile_key(batch, key, found, attempt)
                committed = self._commit(pipe, batch)
            if committed:
                for name, value in attempt.as_dict().items():
                    setattr(report, name, getattr(report, name) + value)
            elif len(chunk) > 1:
                chunks += [chunk[len(chunk) // 2:], chunk[:len(chunk) // 2]]
            else:
                chunks.append(chunk)
