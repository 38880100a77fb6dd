"""Record into a backend's own log: the recorder's sink for a local log.

Theory of operation
-------------------
A :class:`~._recorder.Recorder` hands each batch of classified messages to
a *sink*, which decides what to write and writes it.  :class:`LogSink`
writes into a backend that is the only writer of its log (a
:class:`~telstate_log.backends.LogBackend`); :class:`~._shared_sink.SharedLogSink`
appends to a shared log that other writers append to as well.

A batch is *confirmed* in one pipelined round trip before anything is
written (:func:`~._record_messages.exchange_confirmation`), then recorded
in order.  Replaying a write the log already has is harmless: the log
ignores writes that change nothing.  A write the log refuses (an immutable
with a different value, a key of another type) means the key was deleted
and re-created unseen: the key is reconciled from its ``DUMP``
(:func:`~._resync.reconcile_key`), as are keys that appeared by
``RESTORE``, ``RENAME`` and the like.  A delete seen by keyspace
notification is recorded if the log has the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import redis

from ..core._encoding import same_immutable_value
from ..core._errors import ImmutableKeyError, InvalidTimestampError
from ..core._types import IndexedKeyUpdate, MutableKeyUpdate
from ._record_messages import confirmed_update, exchange_confirmation
from ._resync import ReconcileReport, decode_dump, reconcile, reconcile_key

__all__ = ["LogSink", "SinkCounts"]


class SinkCounts(Protocol):
    """The counters a sink adds to (the recorder's stats)."""

    unconfirmed: int
    deletes: int
    repairs: int
    known: int


class LogSink:
    """Records into `backend`, the only writer of its log (see module docstring)."""

    def __init__(self, backend: Any, client: redis.Redis) -> None:
        self.backend = backend
        self.client = client
        self._start = backend.position

    @property
    def position(self) -> int:
        """The log's last position."""
        return int(self.backend.position)

    @property
    def recorded(self) -> int:
        """Events appended since the sink was made."""
        return self.position - int(self._start)

    @property
    def source(self) -> str | None:
        return getattr(self.backend, "source", None)

    def set_source(self, source: str | None) -> None:
        """Record the following writes under a new session (if the backend has sessions)."""
        set_source = getattr(self.backend, "set_source", None)
        if set_source is not None:
            set_source(source)

    def keep(self) -> None:
        """Nothing to renew: the backend's own lock keeps other writers out."""

    def close(self) -> None:
        """The backend stays open: it belongs to the caller."""

    def reconcile(self, client: redis.Redis) -> ReconcileReport:
        """Make the backend's state equal to the database's."""
        return reconcile(self.backend, client)

    def record(self, items: Sequence[tuple[str, bytes, bytes]], counts: SinkCounts) -> None:
        """Confirm a batch of messages in one round trip, then record it in order."""
        exchanges: list[tuple[str, bytes, Any, int]] = []
        with self.client.pipeline(transaction=False) as pipe:
            for what, key, data in items:
                exchange = exchange_confirmation(pipe, what, key, data)
                if exchange is not None:
                    exchanges.append(exchange)
            replies = pipe.execute(raise_on_error=False) if exchanges else []
        at = 0
        for what, key, detail, count in exchanges:
            self._apply(what, key, detail, replies[at:at + count], counts)
            at += count

    def _apply(self, what: str, key: bytes, detail: Any, replies: list[Any],
               counts: SinkCounts) -> None:
        backend = self.backend
        if what == "gone":
            if backend.key_type(key) is not None:
                backend.delete(key)
                counts.deletes += 1
            return
        if what == "appear":
            self._repair(key, replies[0], counts)
            return
        update = confirmed_update(what, key, detail, replies)
        if update is None:
            counts.unconfirmed += 1
            return
        try:
            if isinstance(update, MutableKeyUpdate):
                backend.add_mutable(key, update.value, update.timestamp)
            elif isinstance(update, IndexedKeyUpdate):
                old = backend.set_indexed(key, update.sub_key, update.value)
                if old is not None and not same_immutable_value(old, update.value):
                    self._repair(key, ..., counts)
            else:
                old = backend.set_immutable(key, update)
                if old is not None and not same_immutable_value(old, update):
                    self._repair(key, ..., counts)
        except (ImmutableKeyError, InvalidTimestampError):
            self._repair(key, ..., counts)

    def _repair(self, key: bytes, dump: Any, counts: SinkCounts) -> None:
        """Reconcile one key from its current DUMP (fetched if `dump` is ...)."""
        if dump is ...:
            dump = self.client.dump(key)
        reconcile_key(self.backend, key, decode_dump(key, dump))
        counts.repairs += 1
