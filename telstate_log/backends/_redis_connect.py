"""Clients for every kind of Redis URL, plain or through Sentinel (sync and asyncio).

Theory of operation
-------------------
:func:`connect` and :func:`connect_async` turn a URL checked by
:mod:`._redis_endpoint` into a redis-py client (sync or ``redis.asyncio``)
with that module's timeouts and retry policy (:func:`client_options`).  They
do no I/O: the first command connects.

``redis://``, ``rediss://`` and ``unix://`` URLs go to ``Redis.from_url``
unchanged.  A ``redis+sentinel://`` URL becomes redis-py's
``Sentinel(...).master_for(service)``: a client whose
``SentinelConnectionPool`` asks the sentinels for the service's primary
each time it opens a connection, and drops idle connections when the
answer changes.  So after a failover the same client (and the backend that
owns it) talks to the new primary: a command that fails because the old
primary went away is retried by the usual policy, each attempt asking the
sentinels afresh.  The retries bridge a reconnect, not a whole failover
(detection alone takes Sentinel's ``down-after-milliseconds``): a caller
that must outlast one retries the call until its own deadline.  A demoted
primary that answers ``READONLY`` is treated by redis-py as a lost
connection, so it is retried against the new primary too.

The sentinels are asked with a short timeout (:data:`SENTINEL_TIMEOUT`) and
no retries: master discovery already moves on to the next sentinel.  The
URL's credentials are the data servers'; ``sentinel_username`` /
``sentinel_password`` query parameters are the sentinels'.  Closing a
Sentinel client (``close``, or ``aclose`` in asyncio) also closes its
connections to the sentinels.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.retry
import redis.sentinel
from redis.backoff import NoBackoff

from ._redis_endpoint import (
    SENTINEL_SCHEME,
    SentinelURL,
    client_options,
    parse_endpoint,
    parse_sentinel_url,
    sentinel_clients,
)

__all__ = ["SENTINEL_TIMEOUT", "connect", "connect_async"]

#: Connect and reply timeout towards a sentinel (they answer at once, or are gone).
SENTINEL_TIMEOUT = 1.0


class _SentinelRedis(redis.Redis):
    """A client of a Sentinel service that also closes its sentinel connections."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            for client in sentinel_clients(self.connection_pool):
                client.close()


async def _aclose(client: Any) -> None:
    await (getattr(client, "aclose", None) or client.close)()   # aclose: redis-py >= 5.0.1


class _AsyncSentinelRedis(redis.asyncio.Redis):
    """The asyncio :class:`_SentinelRedis`."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        base: Any = super()
        try:
            await (getattr(base, "aclose", None) or base.close)(close_connection_pool)
        finally:
            for client in sentinel_clients(self.connection_pool):
                await _aclose(client)


def _parse(url: str) -> tuple[str, SentinelURL | None]:
    """`url` checked, and its parts if it is a Sentinel URL."""
    endpoint = parse_endpoint(url)
    if endpoint.url is None:
        raise ValueError(f"not a Redis URL: {endpoint}")
    if urlsplit(endpoint.url).scheme != SENTINEL_SCHEME:
        return endpoint.url, None
    return endpoint.url, parse_sentinel_url(endpoint.url)


def _sentinel_options(where: SentinelURL, retry_class: type[Any]) -> dict[str, Any]:
    """Options of the clients that ask the sentinels (each asked once: no retries)."""
    options: dict[str, Any] = {"socket_timeout": SENTINEL_TIMEOUT,
                               "socket_connect_timeout": SENTINEL_TIMEOUT,
                               "retry": retry_class(NoBackoff(), 0)}
    if where.sentinel_username:
        options["username"] = where.sentinel_username
    if where.sentinel_password:
        options["password"] = where.sentinel_password
    return options


def _primary_options(where: SentinelURL, db: int | None, options: dict[str, Any]) \
        -> dict[str, Any]:
    """Options of the primary's client: `options`, overridden by what the URL says
    (as ``Redis.from_url`` does)."""
    merged = {**options, "db": where.db if where.db is not None else (db or 0)}
    if where.username:
        merged["username"] = where.username
    if where.password:
        merged["password"] = where.password
    return merged


def connect(url: str, *, db: int | None = None, **options: Any) -> redis.Redis:
    """A client (no I/O yet) of the server, or Sentinel service's primary, at `url`.

    `url` is ``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://``;
    `db`, if given, is used unless the URL names a database.  The client has
    :func:`client_options` (overridden by `options`).  Raises ValueError if
    `url` is malformed, with any password redacted.
    """
    text, where = _parse(url)
    kwargs = {**client_options(redis.retry.Retry), **options}
    if where is None:
        return redis.Redis.from_url(text, db=db, **kwargs)
    sentinel = redis.sentinel.Sentinel(
        where.sentinels, sentinel_kwargs=_sentinel_options(where, redis.retry.Retry))
    return cast("redis.Redis", sentinel.master_for(
        where.service, redis_class=_SentinelRedis, **_primary_options(where, db, kwargs)))


def connect_async(url: str, *, db: int | None = None, **options: Any) -> redis.asyncio.Redis:
    """The asyncio :func:`connect`: a ``redis.asyncio`` client (no I/O yet)."""
    text, where = _parse(url)
    kwargs = {**client_options(redis.asyncio.retry.Retry), **options}
    if where is None:
        return redis.asyncio.Redis.from_url(text, db=db, **kwargs)
    sentinel = redis.asyncio.sentinel.Sentinel(
        where.sentinels, sentinel_kwargs=_sentinel_options(where, redis.asyncio.retry.Retry))
    return cast("redis.asyncio.Redis", sentinel.master_for(
        where.service, redis_class=_AsyncSentinelRedis, **_primary_options(where, db, kwargs)))
