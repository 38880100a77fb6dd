"""Key-update fan-out from writers to monitors (sync threads and async tasks).

Theory of operation
-------------------
A :class:`Hub` maps watched keys to subscriptions.  Writers publish after a
change is applied; a key nobody watches costs one dict lookup.  Each
subscription is a queue drained by one monitor:

* :class:`ThreadSubscription` wakes a thread blocked in :meth:`get` (the sync
  ``monitor_keys`` generator);
* :class:`TaskSubscription` wakes an async task through anyio.  Writers may be
  on any thread (a sync writer sharing data with an async reader, or the log
  follower's thread), so a wake-up from another thread is scheduled into the
  subscriber's event loop with the loop's thread-safe call-soon.

A queue never grows without bound: past :data:`QUEUE_LIMIT` pending updates
it collapses to a single :class:`KeyUpdateBase` ("check again"), which is
all a waiter needs because it re-reads the current state anyway.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable

import anyio
import anyio.lowlevel

from ..core._types import KeyUpdateBase

__all__ = ["QUEUE_LIMIT", "Hub", "TaskSubscription", "ThreadSubscription"]

QUEUE_LIMIT = 4096


class _Subscription:
    __slots__ = ("_queue", "keys")

    def __init__(self, keys: Iterable[bytes] | None) -> None:
        #: watched keys; None watches every key (a wildcard subscription)
        self.keys = None if keys is None else frozenset(keys)
        self._queue: deque[KeyUpdateBase] = deque()

    def _enqueue(self, update: KeyUpdateBase) -> None:
        q = self._queue
        if len(q) >= QUEUE_LIMIT:
            q.clear()
            update = KeyUpdateBase()
        q.append(update)

    def push(self, update: KeyUpdateBase) -> None:
        raise NotImplementedError


class ThreadSubscription(_Subscription):
    """Subscription consumed by a thread (blocking :meth:`get`)."""

    __slots__ = ("_cv",)

    def __init__(self, keys: Iterable[bytes] | None) -> None:
        super().__init__(keys)
        self._cv = threading.Condition(threading.Lock())

    def push(self, update: KeyUpdateBase) -> None:
        with self._cv:
            self._enqueue(update)
            self._cv.notify()

    def get(self, timeout: float | None) -> KeyUpdateBase | None:
        """Next update, or None if none arrives within `timeout` seconds."""
        with self._cv:
            if not self._queue and not self._cv.wait_for(lambda: bool(self._queue), timeout):
                return None
            return self._queue.popleft()


class TaskSubscription(_Subscription):
    """Subscription consumed by an async task (anyio: asyncio or trio)."""

    __slots__ = ("_event", "_thread", "_token")

    def __init__(self, keys: Iterable[bytes] | None) -> None:
        super().__init__(keys)
        # Created inside the subscriber's event loop.
        self._event = anyio.Event()
        self._thread = threading.get_ident()
        self._token = anyio.lowlevel.current_token()

    def _wake(self) -> None:
        self._event.set()

    def push(self, update: KeyUpdateBase) -> None:
        self._enqueue(update)
        if threading.get_ident() == self._thread:
            self._event.set()
        else:
            token = self._token
            try:
                token.backend_class.run_sync_soon(self._wake, (), token.native_token)
            except Exception:  # the subscriber's loop has finished: nobody to wake
                pass

    async def get(self) -> KeyUpdateBase:
        """Wait for the next update."""
        while not self._queue:
            await self._event.wait()
            self._event = anyio.Event()
        return self._queue.popleft()


class Hub:
    """Routes updates for watched keys to their subscriptions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: watched key -> subscriptions (read without the lock on the hot path)
        self.by_key: dict[bytes, set[_Subscription]] = {}
        self._all: set[_Subscription] = set()
        #: subscriptions watching every key
        self.wildcard: set[_Subscription] = set()

    def subscribe(self, sub: _Subscription) -> None:
        with self._lock:
            self._all.add(sub)
            if sub.keys is None:
                self.wildcard.add(sub)
                return
            for key in sub.keys:
                self.by_key.setdefault(key, set()).add(sub)

    def unsubscribe(self, sub: _Subscription) -> None:
        with self._lock:
            self._all.discard(sub)
            self.wildcard.discard(sub)
            for key in sub.keys or ():
                subs = self.by_key.get(key)
                if subs is not None:
                    subs.discard(sub)
                    if not subs:
                        del self.by_key[key]

    def watched(self, key: bytes) -> bool:
        return key in self.by_key or bool(self.wildcard)

    @property
    def active(self) -> bool:
        return bool(self._all)

    def publish(self, key: bytes, make_update: Callable[[], KeyUpdateBase]) -> None:
        """Send ``make_update()`` to the subscribers of `key`, if any."""
        subs = self.by_key.get(key)
        if subs or self.wildcard:
            update = make_update()
            for sub in [*(subs or ()), *self.wildcard]:
                sub.push(update)

    def publish_all(self, update: KeyUpdateBase) -> None:
        """Send `update` to every subscription (used for clear)."""
        for sub in list(self._all):
            sub.push(update)
