"""Where a Redis server is and how to connect to it (shared by both drivers).

Theory of operation
-------------------
Endpoints come in the forms katsdptelstate's ``TelescopeState`` takes:

* a URL (anything containing ``://``): ``redis://``, ``rediss://`` (TLS) or
  ``unix://``, optionally with ``user:password@`` and a database number,
  handed to ``Redis.from_url`` unchanged once its scheme and port check out;
* ``host``, ``host:port``, ``[ipv6]``, ``[ipv6]:port`` or a bare IPv6
  address (no port then: write ``[addr]:port`` to give one); the default
  port is Redis's;
* an object with ``host`` and ``port`` attributes (katsdptelstate's
  ``Endpoint``).

Secrets: a password only ever travels inside the URL or keyword arguments
handed to redis-py.  Everything this package renders -- ``repr``/``str`` of
endpoints and backends, error messages -- goes through :func:`redact_url`
or :func:`describe_pool`, which replace it (and ``password=`` query
parameters) by ``***``; :func:`connection_error` also scrubs the password
out of redis-py's own message, just in case.

Client options are katsdptelstate's (``socket_timeout=5``,
``health_check_interval=30``) plus an explicit retry policy (older redis-py
versions retry nothing by default): up to :data:`RETRIES` retries of a
command that failed with a connection error or timeout, with jittered
exponential backoff capped at :data:`RETRY_CAP` -- about a second and a
half in all, enough to ride out a dropped connection or a quick server
restart (but not an authentication failure: a wrong password is reported
at once).  Why retrying is safe for every command we send is explained in
:mod:`telstate_log.backends._redis`.  Pub/sub connections do not retry:
the monitors handle reconnection themselves (:func:`pubsub_pool_options`).
"""

from __future__ import annotations

import inspect
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.exceptions import AuthenticationError

from ..core._errors import ConnectionError

__all__ = [
    "DEFAULT_PORT", "HEALTH_CHECK_INTERVAL", "RETRIES", "RETRY_BASE", "RETRY_CAP",
    "SOCKET_TIMEOUT", "RedisEndpoint", "check_client", "client_options", "connection_error",
    "describe_pool", "parse_endpoint", "pubsub_pool_options", "redact_url",
]

DEFAULT_PORT = 6379
SOCKET_TIMEOUT = 5.0
HEALTH_CHECK_INTERVAL = 30
RETRIES = 6
RETRY_BASE = 0.02
RETRY_CAP = 0.5
_SCHEMES = ("redis", "rediss", "unix")
_SECRET_QUERY = re.compile(r"((?:^|&)password=)[^&]*", re.IGNORECASE)
_RetryT = TypeVar("_RetryT")


@dataclass(frozen=True)
class RedisEndpoint:
    """A parsed endpoint: a URL, or a host and optional port.  Never shows a password."""

    host: str = ""
    port: int | None = None
    url: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        if self.url is not None:
            return redact_url(self.url)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def __repr__(self) -> str:
        return f"RedisEndpoint({str(self)!r})"


def redact_url(url: str) -> str:
    """`url` with any password (in the authority or the query) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        # A lone userinfo is a user name to redis-py, but often a password to users.
        netloc = f"{user}:***@{hostport}" if colon else f"***@{hostport}"
    query = _SECRET_QUERY.sub(r"\1***", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _port(text: str, endpoint: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise ValueError(f"invalid port {text!r} in Redis endpoint {endpoint!r}")
    return int(text)


def _check_ipv6(host: str, endpoint: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f"invalid IPv6 address {host!r} in Redis endpoint {endpoint!r}; "
                         "write [address]:port") from None


def _check_url(url: str) -> str:
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError if the port is not a valid number
    except ValueError as exc:
        raise ValueError(f"invalid Redis URL {shown}: {exc}") from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"unsupported scheme {parts.scheme!r} in Redis URL {shown}; "
                         f"use one of {', '.join(s + '://' for s in _SCHEMES)}")
    return url


def parse_endpoint(endpoint: Any) -> RedisEndpoint:
    """Parse an endpoint given to ``TelescopeState`` (see the module docstring).

    Raises ValueError (with any password redacted) if it is malformed.
    """
    if not isinstance(endpoint, str):
        host, given = getattr(endpoint, "host", None), getattr(endpoint, "port", None)
        if host is None:
            raise TypeError(f"cannot use a {type(endpoint).__name__} as a Redis endpoint")
        return RedisEndpoint(str(host), None if given is None else _port(str(given), str(host)))
    text = endpoint.strip()
    if "://" in text:
        return RedisEndpoint(url=_check_url(text))
    port: int | None = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError(f"missing ']' in Redis endpoint {text!r}")
        host, rest = text[1:close], text[close + 1:]
        _check_ipv6(host, text)
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"unexpected {rest!r} after ']' in Redis endpoint {text!r}")
            port = _port(rest[1:], text)
    elif text.count(":") > 1:
        _check_ipv6(text, text)
        host = text
    else:
        host, colon, port_text = text.partition(":")
        if colon:
            port = _port(port_text, text)
    if not host:
        raise ValueError(f"no host in Redis endpoint {text!r}")
    return RedisEndpoint(host, port)


class _Refused(Exception):
    """Carries an authentication failure through redis-py's retry loop unretried."""

    def __init__(self, error: AuthenticationError) -> None:
        super().__init__(error)
        self.error = error


_AUTH_FINAL: dict[Any, Any] = {}


def _auth_final(retry_class: type[_RetryT]) -> type[_RetryT]:
    """`retry_class` (sync or asyncio), except that an authentication failure is
    raised at once: redis-py counts it as a connection error, but retrying a
    wrong password only delays the error."""
    made = _AUTH_FINAL.get(retry_class)
    if made is not None:
        return cast("type[_RetryT]", made)
    base: Any = retry_class
    if inspect.iscoroutinefunction(base.call_with_retry):
        class AsyncRetry(base):  # type: ignore[misc]
            async def call_with_retry(self, do: Any, fail: Any, *args: Any, **kw: Any) -> Any:
                async def guarded() -> Any:
                    try:
                        return await do()
                    except AuthenticationError as exc:
                        raise _Refused(exc) from None
                try:
                    return await super().call_with_retry(guarded, fail, *args, **kw)
                except _Refused as refused:
                    raise refused.error from None
        _AUTH_FINAL[retry_class] = AsyncRetry
        return cast("type[_RetryT]", AsyncRetry)

    class SyncRetry(base):  # type: ignore[misc]
        def call_with_retry(self, do: Any, fail: Any, *args: Any, **kw: Any) -> Any:
            def guarded() -> Any:
                try:
                    return do()
                except AuthenticationError as exc:
                    raise _Refused(exc) from None
            try:
                return super().call_with_retry(guarded, fail, *args, **kw)
            except _Refused as refused:
                raise refused.error from None
    _AUTH_FINAL[retry_class] = SyncRetry
    return cast("type[_RetryT]", SyncRetry)


def client_options(retry_class: type[_RetryT]) -> dict[str, Any]:
    """Keyword arguments for a redis-py client (sync or asyncio: pass its Retry class)."""
    backoff = EqualJitterBackoff(cap=RETRY_CAP, base=RETRY_BASE)
    return {"socket_timeout": SOCKET_TIMEOUT, "health_check_interval": HEALTH_CHECK_INTERVAL,
            "retry": _auth_final(retry_class)(backoff, RETRIES)}  # type: ignore[call-arg]


def pubsub_pool_options(pool: Any, retry_class: type[_RetryT]) -> dict[str, Any]:
    """Arguments for a connection pool like `pool` whose connections never retry.

    Pub/sub connections come from such a pool: the monitors reconnect by
    themselves, with backoff that respects their caller's deadline, rather
    than block in redis-py's retries.
    """
    return {"connection_class": pool.connection_class, **pool.connection_kwargs,
            "retry": retry_class(NoBackoff(), 0)}  # type: ignore[call-arg]


def describe_pool(pool: Any) -> str:
    """A URL naming the server a redis-py connection pool talks to, password redacted."""
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    user = kwargs.get("username")
    if kwargs.get("password"):
        auth = f"{user or ''}:***@"
    else:
        auth = f"{user}@" if user else ""
    db = kwargs.get("db") or 0
    if kwargs.get("path"):
        return f"unix://{auth}{kwargs['path']}?db={db}"
    host = str(kwargs.get("host", "localhost"))
    host = f"[{host}]" if ":" in host else host
    scheme = "rediss" if "SSL" in getattr(getattr(pool, "connection_class", None),
                                          "__name__", "") else "redis"
    return f"{scheme}://{auth}{host}:{kwargs.get('port', DEFAULT_PORT)}/{db}"


def check_client(client: Any) -> None:
    """Refuse clients that would decode replies: telescope state is bytes."""
    kwargs = getattr(client.connection_pool, "connection_kwargs", None) or {}
    if kwargs.get("decode_responses"):
        raise ValueError("the Redis client must be created with decode_responses=False")


def connection_error(pool: Any, exc: BaseException) -> ConnectionError:
    """Our ConnectionError for a failed first contact, with no password in it."""
    text = str(exc)
    secret = (getattr(pool, "connection_kwargs", None) or {}).get("password")
    if isinstance(secret, str) and secret:
        text = text.replace(secret, "***")
    return ConnectionError(f"could not connect to Redis server {describe_pool(pool)}: {text}")
