"""Synchronous Redis backend, interoperable with katsdptelstate's.

Theory of operation
-------------------
A thin driver: every method runs a exchange from :mod:`._redis_common` with
redis-py's blocking client (:meth:`RedisBackend._execute` is all the I/O
there is).  The layout, scripts and pub/sub messages are katsdptelstate's,
so both libraries can read, write and wait on one Redis database.

Retries and reconnection
~~~~~~~~~~~~~~~~~~~~~~~~
Clients made by :meth:`RedisBackend.from_url` and
:func:`redis_backend_for_endpoint` retry a command that fails with a
connection error or timeout, reconnecting first (see
:mod:`._redis_endpoint` for the policy).  A retry can run a command twice --
the first attempt may have been applied before its reply was lost -- so
every command sent here is idempotent:

* reads (``EXISTS``, ``KEYS``, ``TYPE``, ``DUMP``, the ``get`` and
  ``get_indexed`` scripts, the ``get_range`` transaction) change nothing;
* ``set_immutable`` and ``set_indexed`` are first-writer-wins: a repeat
  finds the value its first attempt stored and returns it, which the front
  end sees as "set to an equal value", a no-op; nothing is published twice;
* ``add_mutable`` is ``ZADD`` of one member: a repeat adds and publishes
  nothing;
* ``UNLINK``/``FLUSHDB`` repeat harmlessly unless another client recreated
  a key in between (then that write is deleted too: as with katsdptelstate);
* ``RESTORE`` (``load_from_file``) repeated gets ``BUSYKEY``, which the
  loader accepts when the key already holds exactly the loaded value.

Scripts survive a server restart: redis-py reloads one that the server
reports missing (``NOSCRIPT``).  The first contact (the constructor's
``PING``) raises our :exc:`~telstate_log.ConnectionError` on failure, as
katsdptelstate's ``TelescopeState`` does.

``monitor_keys`` gives each monitor its own pub/sub connection subscribed to
``update/<key>`` for its keys, from a pool whose connections never retry.
When the connection fails, the monitor drops it and resubscribes on a new
one, with backoff, never sleeping past the caller's timeout (one connection
attempt aside: it fails at once if the server is down, within the socket
timeout if it is unreachable).  Messages published while unsubscribed are
lost, so whenever the server confirms the last channel of a
(re)subscription the monitor yields a plain :class:`KeyUpdateBase` and the
caller re-reads: a condition that became true meanwhile is never missed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Generator, Iterable
from typing import Any, BinaryIO

import redis
import redis.client
from redis.retry import Retry

from ..core._errors import ConnectionError
from ..core._types import KeyType, KeyUpdateBase
from . import _redis_common as common
from ._base import Backend, GetResult, PathType
from ._redis_connect import connect
from ._redis_endpoint import (
    check_client,
    client_options,
    connection_error,
    describe_pool,
    parse_endpoint,
    pubsub_pool_options,
)
from ._redis_messages import channel_key, update_channel

__all__ = ["REDIS_DOWN", "RedisBackend", "redis_backend_for_endpoint"]

logger = logging.getLogger(__name__)

#: Errors meaning "the server could not be reached" (rather than "it said no").
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)
_RESUBSCRIBE_FIRST = 0.05
_RESUBSCRIBE_MAX = 2.0


class RedisBackend(Backend):
    """Telescope state in Redis, in katsdptelstate's layout.

    Parameters
    ----------
    client
        A :class:`redis.Redis` with ``decode_responses=False``.  The backend
        owns it (:meth:`close` closes it), and its retry policy governs
        reconnection: prefer :meth:`from_url`, which sets ours.

    Raises
    ------
    ConnectionError
        If the server does not answer a PING.
    ValueError
        If the client decodes responses.
    """

    def __init__(self, client: redis.Redis) -> None:
        check_client(client)
        self.client = client
        self._closed = False
        # Pub/sub connections come from their own pool (no I/O until used).
        pool = redis.ConnectionPool(**pubsub_pool_options(client.connection_pool, Retry))
        self._pubsub_client = redis.Redis(connection_pool=pool)
        self._scripts = {name: client.register_script(text)
                         for name, text in common.SCRIPTS.items()}
        try:
            client.ping()
        except REDIS_DOWN as exc:
            raise connection_error(client.connection_pool, exc) from None

    @classmethod
    def from_url(cls, url: str, *, db: int | None = None) -> RedisBackend:
        """Connect to the server at a ``redis://``, ``rediss://`` or ``unix://`` URL,
        or to the primary of a Sentinel service (``redis+sentinel://``, followed
        across failovers: see :mod:`._redis_connect`).

        `db`, if given, is used unless the URL names a database.  Sets
        katsdptelstate's timeouts and our retry policy.
        """
        client = connect(url, db=db)
        try:
            return cls(client)
        except BaseException:
            client.close()
            raise

    # ----------------------------------------------------------------- driver
    def _execute(self, op: common.RedisCall) -> Any:
        if op[0] == "command":
            return self.client.execute_command(*op[1:])  # type: ignore[no-untyped-call]
        if op[0] == "script":
            return self._scripts[op[1]](keys=op[2], args=op[3])
        with self.client.pipeline(transaction=op[1]) as pipe:
            for args in op[2]:
                pipe.execute_command(*args)  # type: ignore[no-untyped-call]
            return pipe.execute(raise_on_error=False)

    def _run(self, exchange: common.Exchange[Any]) -> Any:
        return common.run_exchange(exchange, self._execute)

    # ------------------------------------------------------------ operations
    def load_from_file(self, file: PathType | BinaryIO) -> int:
        return int(self._run(common.exchange_load(file)))

    def __contains__(self, key: bytes) -> bool:
        return bool(self._run(common.exchange_contains(key)))

    def keys(self, filter: bytes) -> list[bytes]:
        return list(self._run(common.exchange_keys(filter)))

    def delete(self, key: bytes) -> None:
        self._run(common.exchange_delete(key))

    def clear(self) -> None:
        self._run(common.exchange_clear())

    def key_type(self, key: bytes) -> KeyType | None:
        return self._run(common.exchange_key_type(key))  # type: ignore[no-any-return]

    def set_immutable(self, key: bytes, value: bytes) -> bytes | None:
        return self._run(common.exchange_set_immutable(key, value))  # type: ignore[no-any-return]

    def get(self, key: bytes) -> GetResult:
        return self._run(common.exchange_get(key))  # type: ignore[no-any-return]

    def add_mutable(self, key: bytes, value: bytes, timestamp: float) -> None:
        self._run(common.exchange_add_mutable(key, value, timestamp))

    def set_indexed(self, key: bytes, sub_key: bytes, value: bytes) -> bytes | None:
        return self._run(common.exchange_set_indexed(key, sub_key, value))  # type: ignore[no-any-return]

    def get_indexed(self, key: bytes, sub_key: bytes) -> bytes | None:
        return self._run(common.exchange_get_indexed(key, sub_key))  # type: ignore[no-any-return]

    def get_range(self, key: bytes, start_time: float, end_time: float,
                  include_previous: bool,
                  include_end: bool) -> list[tuple[bytes, float]] | None:
        return self._run(common.exchange_get_range(  # type: ignore[no-any-return]
            key, start_time, end_time, include_previous, include_end))

    def dump(self, key: bytes) -> bytes | None:
        """The key in Redis's own DUMP format (as redis-server produces it)."""
        return self._run(common.exchange_dump(key))  # type: ignore[no-any-return]

    # -------------------------------------------------------------- monitor
    def monitor_keys(self, keys: Iterable[bytes]) \
            -> Generator[KeyUpdateBase | None, float | None, None]:
        # Its connections fail fast (the monitor does the retrying).
        link = _Subscription(self._pubsub_client.pubsub, lambda: self._closed,
                             list(dict.fromkeys(update_channel(key) for key in keys)))
        try:
            link.open()
            # Nothing to report until the server confirms the subscription.
            timeout = yield None
            while True:
                timeout = yield self._next_update(link, timeout)
        finally:
            link.close()

    def _next_update(self, link: _Subscription, timeout: float | None) -> KeyUpdateBase | None:
        """The next update within `timeout` seconds (None: wait indefinitely)."""
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        while (message := link.receive(deadline)) is not None:
            kind = message.get("type")
            if kind == "subscribe" and message.get("data") == len(link.channels):
                return KeyUpdateBase()          # (re)subscribed: the caller must re-read
            key = channel_key(message.get("channel"))
            if kind == "message" and key is not None:
                return self._run(common.exchange_update(key, message.get("data")))  # type: ignore[no-any-return]
        return None

    # ------------------------------------------------------------- lifetime
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Close the client and its connections; waiting monitors then raise ConnectionError."""
        self._closed = True
        self.client.close()
        self.client.connection_pool.disconnect()
        self._pubsub_client.connection_pool.disconnect()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {describe_pool(self.client.connection_pool)}>"


class _Subscription:
    """One monitor's pub/sub connection, re-established with backoff when lost.

    `new_pubsub` makes a PubSub (on the backend's pub/sub pool); `closed` says
    whether the backend was closed (a waiting monitor then raises).
    """

    def __init__(self, new_pubsub: Callable[[], redis.client.PubSub],
                 closed: Callable[[], bool], channels: list[bytes]) -> None:
        self._new_pubsub = new_pubsub
        self._closed = closed
        self.channels = channels
        self._pubsub: redis.client.PubSub | None = None
        self._delay = 0.0
        self._retry_at = 0.0

    def open(self) -> None:
        """Subscribe on a new connection (or schedule a retry if the server is down)."""
        if not self.channels:
            return
        pubsub = self._new_pubsub()
        try:
            pubsub.subscribe(*self.channels)
        except REDIS_DOWN as exc:
            self._close(pubsub)
            self._lost(exc)
            return
        except BaseException:
            self._close(pubsub)
            raise
        self._pubsub = pubsub

    def _lost(self, exc: BaseException) -> None:
        level = logging.DEBUG if self._delay else logging.WARNING   # warn once per outage
        self._delay = min(self._delay * 2 or _RESUBSCRIBE_FIRST, _RESUBSCRIBE_MAX)
        self._retry_at = time.monotonic() + self._delay
        logger.log(level, "Redis pub/sub connection failed (%s); resubscribing in %.2fs",
                   exc, self._delay)

    def receive(self, deadline: float) -> dict[str, Any] | None:
        """The next pub/sub message, or None at `deadline` (a ``time.monotonic`` value)."""
        while True:
            if self._closed():
                raise ConnectionError("the Redis backend was closed while waiting")
            now = time.monotonic()
            pubsub = self._pubsub
            if pubsub is None:
                if self.channels and now >= self._retry_at:
                    self.open()
                    continue
                if now >= deadline:
                    return None
                wake = min(deadline, self._retry_at if self.channels else deadline, now + 1.0)
                time.sleep(max(wake - now, 0.0))
                continue
            try:
                # Bounded waits, so that close() is noticed even without a deadline.
                message = pubsub.get_message(timeout=min(max(deadline - now, 0.0), 1.0))
            except REDIS_DOWN as exc:
                self._pubsub = None
                self._close(pubsub)
                self._lost(exc)
                continue
            if message is not None:
                self._delay = 0.0
                return message  # type: ignore[no-any-return]
            if time.monotonic() >= deadline:
                return None

    @staticmethod
    def _close(pubsub: redis.client.PubSub) -> None:
        with contextlib.suppress(*REDIS_DOWN):
            pubsub.close()

    def close(self) -> None:
        if self._pubsub is not None:
            self._close(self._pubsub)
            self._pubsub = None


def redis_backend_for_endpoint(endpoint: Any, db: int = 0) -> RedisBackend:
    """The backend behind ``TelescopeState(endpoint, db)`` for a Redis endpoint.

    `endpoint` is a URL, ``host[:port]``, ``[ipv6][:port]`` or an object with
    ``host`` and ``port`` (see :mod:`._redis_endpoint`).  Raises ValueError if
    it is malformed and :exc:`~telstate_log.ConnectionError` if the server
    cannot be reached.
    """
    address = parse_endpoint(endpoint)
    if address.url is not None:
        return RedisBackend.from_url(address.url, db=db)
    kwargs: dict[str, Any] = {"host": address.host, "db": db, **client_options(Retry)}
    if address.port is not None:
        kwargs["port"] = address.port
    return RedisBackend(redis.Redis(**kwargs))
