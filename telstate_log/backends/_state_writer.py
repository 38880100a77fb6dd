"""The write side of a state backend, for the drivers built on it.

Theory of operation
-------------------
A :class:`~._state_backend.StateBackend` write is two steps: the *locked
step* takes the backend's lock, checks that writes are allowed, changes the
state (a log backend records the event first), notifies monitors and
returns the new event's position -- or 0 if nothing changed *or nothing is
due after it* (with the old value for the set methods); then, for a
non-zero position and without the lock, *after the write* waits for what
the backend promises (a log backend: durability under its ``fsync`` policy,
and it starts a due checkpoint; the memory backend: nothing, so its locked
steps always return 0).  Under ``fsync="interval"`` most log writes have
nothing due after them, so returning 0 saves the call.  The backend's own
write methods run both steps.  Drivers need them apart:

* the async backend (:mod:`.aio._state_backend`) runs a locked step on the
  event loop when the lock is free (or in a worker thread) and *awaits*
  :attr:`StateWriter.after_write_async`, so a durability wait never blocks
  the loop;
* an RDB import (:mod:`._rdb_import`) holds :attr:`StateWriter.lock` while it
  checks a whole file against :attr:`StateWriter.state` and writes it (the
  lock is re-entrant), then calls :attr:`StateWriter.after_write` once.

A :class:`StateWriter` holds those parts explicitly (the backend's bound
methods, its lock and monitor hub), so a driver never reaches into the
backend.  :meth:`StateBackend.writer() <._state_backend.StateBackend.writer>`
makes one; a driver keeps it (its attributes are plain slots: calling
``writer.add_mutable`` costs what calling the backend's own method does).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core._state import CommitBatch, State
from ._notify import Hub

if TYPE_CHECKING:
    from ..storage._event_log import CommitBatches

__all__ = ["StateWriter"]


class StateWriter:
    """The locked write steps of one state backend, and what goes with them.

    Each ``set_immutable`` ... ``add_mutable_many`` is a locked step (see the
    module docstring): it returns ``(old value or None, position)`` for the
    set methods, the position for the others, and ``(samples added,
    position)`` for ``add_mutable_many``; a position of 0 means nothing was
    written or nothing is due after the write.  For a non-zero position the
    caller then calls ``after_write(position)`` (or awaits
    ``after_write_async(position)``), without holding :attr:`lock`.
    """

    __slots__ = ("_commit_batch", "_commit_batches", "_state", "add_mutable",
                 "add_mutable_many", "after_write", "after_write_async", "check_writable",
                 "clear", "delete", "hub", "lock", "set_immutable", "set_indexed")

    #: the backend's lock (re-entrant; every read and locked step takes it)
    lock: threading.RLock
    #: where writes notify monitors (an async monitor subscribes its task here)
    hub: Hub
    #: raise the reason writes are refused (read-only, closed), if they are
    check_writable: Callable[[], None]
    set_immutable: Callable[[bytes, bytes], tuple[bytes | None, int]]
    add_mutable: Callable[[bytes, bytes, float], int]
    set_indexed: Callable[[bytes, bytes, bytes], tuple[bytes | None, int]]
    delete: Callable[[bytes], int]
    clear: Callable[[], int]
    add_mutable_many: Callable[[bytes, Sequence[bytes] | np.ndarray, Any], tuple[int, int]]
    after_write: Callable[[int], None]
    after_write_async: Callable[[int], Awaitable[None]]

    def __init__(self, *, lock: threading.RLock, hub: Hub, state: Callable[[], State],
                 check_writable: Callable[[], None],
                 set_immutable: Callable[[bytes, bytes], tuple[bytes | None, int]],
                 add_mutable: Callable[[bytes, bytes, float], int],
                 set_indexed: Callable[[bytes, bytes, bytes], tuple[bytes | None, int]],
                 delete: Callable[[bytes], int], clear: Callable[[], int],
                 add_mutable_many: Callable[[bytes, Sequence[bytes] | np.ndarray, Any],
                                            tuple[int, int]],
                 after_write: Callable[[int], None],
                 after_write_async: Callable[[int], Awaitable[None]],
                 commit_batch: Callable[[], CommitBatch | None] = lambda: None,
                 commit_batches: Callable[[], CommitBatches | None] = lambda: None) -> None:
        self.lock = lock
        self._commit_batch = commit_batch
        self._commit_batches = commit_batches
        self.hub = hub
        self._state = state
        self.check_writable = check_writable
        self.set_immutable = set_immutable
        self.add_mutable = add_mutable
        self.set_indexed = set_indexed
        self.delete = delete
        self.clear = clear
        self.add_mutable_many = add_mutable_many
        self.after_write = after_write
        self.after_write_async = after_write_async

    @property
    def state(self) -> State:
        """The backend's current state (read it holding :attr:`lock`).

        A log backend that follows another writer may swap in a new state
        (after that writer prunes), so a driver asks each time it takes the lock.
        """
        return self._state()

    @property
    def commit_batch(self) -> CommitBatch | None:
        """The hook that records a batch of samples before the state applies it
        (:data:`~telstate_log.core._state.CommitBatch`; None: nothing is recorded).

        For a driver that builds many keys' samples in one locked step
        (the RDB import): it records them through this hook as the backend's
        own ``add_mutable_many`` would."""
        return self._commit_batch()

    @property
    def commit_batches(self) -> CommitBatches | None:
        """The hook that records the batches of many new keys in one append
        (:data:`~telstate_log.storage.CommitBatches`), or None (then record
        them key by key through :attr:`commit_batch`).  The RDB import uses it
        for many new small sensors (:mod:`._rdb_samples`)."""
        return self._commit_batches()
