"""EventLog: what a log backend needs from the store that keeps its events.

Theory of operation
-------------------
A log backend serves reads from a materialised
:class:`~telstate_log.core._state.State` and keeps every change as an event
in an :class:`EventLog`.  The segment-file :class:`~telstate_log.storage._log.Log`
is one; another (events in a Redis stream, say) plugs in behind the same
backend by providing these members:

* ``lock`` -- held by the backend around every change of the State (and by
  the log's own threads when they touch it);
* ``append`` / ``append_sample`` / ``append_batch`` -- the State's commit
  hooks (:data:`~telstate_log.core._state.Commit`, ``CommitSample``,
  ``CommitBatch``): record one event / one sample / a batch of samples
  before the State applies it (raise to refuse the write);
* ``append_batches`` -- records the batches of many new keys in one append
  (:data:`CommitBatches`), or None where the log has no such step (the
  backend then records them key by key through ``append_batch``);
* ``after_append`` / ``after_append_async`` -- called once the lock is
  released: wait for durability, do deferred work;
* positions (``position``, ``durable_position``, ``sync``), ``log_id``;
* maintenance: ``checkpoint``, ``seal``, ``head_hash``, ``prune``;
* history: ``events``, ``key_history``, ``resolve_time``, ``session_info``,
  ``session_ids``, ``new_session``;
* following another writer (a reader): ``follow`` with the callbacks the
  backend notifies its monitors from, ``follow_step``, ``follow_error``;
* ``appender`` -- what an event loop's driver flags ``nonblocking`` while it
  writes on the loop (a write that would wait for the disk then raises
  ``WouldBlock`` before changing anything, and is redone in a worker thread);
  None where every append is cheap or the log is read-only;
* ``close``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from ..core._events import Event
from ..core._state import Commit, CommitBatch, CommitSample
from ._follow import OnApplied, OnReplaced
from ._retention import PruneReport

__all__ = ["CommitBatches", "EventLog", "NonBlocking"]

#: ``append_batches(first, keys, timestamps, values, sizes) -> keys recorded``: key
#: ``i`` takes the next ``sizes[i]`` samples (`values` a ``V<width>`` array) at
#: consecutive positions from `first`; the first ``r`` keys (at least one) are
#: recorded all or none and ``r`` is returned (see ``LogWriter.commit_many_batches``)
CommitBatches = Callable[[int, list[bytes], np.ndarray, np.ndarray, list[int]], int]


class NonBlocking(Protocol):
    """An appender that can refuse, rather than do, work that waits for the disk."""

    nonblocking: bool


class EventLog(Protocol):
    """The storage a log backend relies on (see module docstring)."""

    path: str
    fsync: str
    readonly: bool
    lock: threading.RLock
    append: Commit
    append_sample: CommitSample
    append_batch: CommitBatch
    append_batches: CommitBatches | None

    def after_append(self, position: int) -> None: ...

    async def after_append_async(self, position: int) -> None: ...

    @property
    def position(self) -> int: ...

    @property
    def durable_position(self) -> int: ...

    @property
    def log_id(self) -> bytes | None: ...

    def sync(self) -> int: ...

    def new_session(self, source: str | None) -> None: ...

    def checkpoint(self, *, sync: bool = False) -> str | None: ...

    def seal(self) -> str | None: ...

    @property
    def head_hash(self) -> str | None: ...

    def prune(self, before: int | None = None,
              older_than: float | None = None) -> PruneReport: ...

    def events(self, since: int = 1, until: int | None = None) -> list[Event]: ...

    def key_history(self, key: bytes, sub_key: bytes | None = None) -> list[Event]: ...

    def resolve_time(self, when: float) -> int: ...

    def session_info(self, session: int) -> dict[str, Any]: ...

    def session_ids(self) -> list[int]: ...

    def follow(self, on_applied: OnApplied, on_replaced: OnReplaced, *,
               watch: bool = True) -> None: ...

    def follow_step(self) -> bool: ...

    @property
    def follow_error(self) -> BaseException | None: ...

    @property
    def appender(self) -> NonBlocking | None: ...

    def close(self) -> None: ...
