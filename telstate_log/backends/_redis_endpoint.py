"""Where a Redis server is and how to connect to it (shared by both drivers).

Theory of operation
-------------------
Endpoints come in the forms katsdptelstate's ``TelescopeState`` takes:

* a URL (anything containing ``://``): ``redis://``, ``rediss://`` (TLS) or
  ``unix://``, optionally with ``user:password@`` and a database number,
  handed to ``Redis.from_url`` unchanged once its scheme and port check out;
* a Sentinel URL, ``redis+sentinel://[user:password@]host[:port][,host[:port]...]
  /service_name[/db]`` (sentinel port 26379 by default; hosts as below): the
  client asks the sentinels for the primary of `service_name` whenever it
  (re)connects, so it follows a failover (redis-py's
  ``SentinelConnectionPool``).  The credentials are the data servers'; the
  query parameters ``sentinel_username`` / ``sentinel_password`` give the
  sentinels' own, if they need any;
* ``host``, ``host:port``, ``[ipv6]``, ``[ipv6]:port`` or a bare IPv6
  address (no port then: write ``[addr]:port`` to give one); the default
  port is Redis's;
* an object with ``host`` and ``port`` attributes (katsdptelstate's
  ``Endpoint``).

Secrets: a password only ever travels inside the URL or keyword arguments
handed to redis-py.  Everything this package renders -- ``repr``/``str`` of
endpoints and backends, error messages -- goes through :func:`redact_url`
or :func:`describe_pool`, which replace it (and ``password=`` and
``sentinel_password=`` query parameters) by ``***``;
:func:`connection_error` also scrubs the passwords (the servers' and the
sentinels') out of redis-py's own message, just in case.

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
The clients themselves are made by :mod:`._redis_connect`.
"""

from __future__ import annotations

import inspect
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.exceptions import AuthenticationError

from ..core._errors import ConnectionError

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_SENTINEL_PORT",
    "FAILOVER_SECONDS",
    "HEALTH_CHECK_INTERVAL",
    "RETRIES",
    "RETRY_BASE",
    "RETRY_CAP",
    "SENTINEL_SCHEME",
    "SOCKET_TIMEOUT",
    "RedisEndpoint",
    "SentinelURL",
    "check_client",
    "client_options",
    "connection_error",
    "describe_pool",
    "failover_options",
    "parse_endpoint",
    "parse_sentinel_url",
    "pubsub_pool_options",
    "redact_url",
    "sentinel_clients",
]

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
SOCKET_TIMEOUT = 5.0
HEALTH_CHECK_INTERVAL = 30
RETRIES = 6
RETRY_BASE = 0.02
RETRY_CAP = 0.5
SENTINEL_SCHEME = "redis+sentinel"
_SCHEMES = ("redis", "rediss", "unix", SENTINEL_SCHEME)
_SENTINEL_QUERY = ("sentinel_username", "sentinel_password")
_SECRET_QUERY = re.compile(r"((?:^|&)(?:sentinel_)?password=)[^&]*", re.IGNORECASE)
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


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL.  Never shows a password."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a ``redis+sentinel://`` URL (see the module docstring).

    Raises ValueError (with any password redacted) if it is malformed.
    """
    shown = redact_url(url)

    def bad(why: str) -> ValueError:
        return ValueError(f"invalid Redis Sentinel URL {shown}: {why}")

    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:
        raise bad(str(exc)) from None
    if parts.scheme != SENTINEL_SCHEME:
        raise bad(f"the scheme must be {SENTINEL_SCHEME}://")
    if parts.fragment:
        raise bad("unexpected '#' (percent-encode it in a password)")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    sentinels = []
    for item in hosts.split(","):
        try:
            where = parse_endpoint(item)
        except ValueError as exc:
            raise bad(f"sentinel {item!r}: {exc}") from None
        port = DEFAULT_SENTINEL_PORT if where.port is None else where.port
        sentinels.append((unquote(where.host), port))   # an IPv6 zone is written %25
    segments = parts.path.split("/")[1:]
    if segments and not segments[-1]:
        segments.pop()                      # a trailing slash
    if not segments or not segments[0] or len(segments) > 2:
        raise bad("the path must be /service_name or /service_name/db")
    db: int | None = None
    if len(segments) == 2:
        text = unquote(segments[1])
        if not (text.isascii() and text.isdigit()):
            raise bad(f"invalid database number {text!r}")
        db = int(text)
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _SENTINEL_QUERY:
            raise bad(f"unknown option {name!r} (known: {', '.join(_SENTINEL_QUERY)})")
        options[name] = value
    return SentinelURL(tuple(sentinels), unquote(segments[0]), db,
                       unquote(user) or None if at else None,
                       unquote(password) or None if colon else None,
                       options.get("sentinel_username") or None,
                       options.get("sentinel_password") or None)


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
        if parts.scheme != SENTINEL_SCHEME:
            parts.port  # noqa: B018 - raises ValueError if the port is not a valid number
    except ValueError as exc:
        raise ValueError(f"invalid Redis URL {shown}: {exc}") from None
    if parts.scheme == SENTINEL_SCHEME:
        parse_sentinel_url(url)
        return url
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


#: How long a client made with :func:`failover_options` keeps retrying a command.
FAILOVER_SECONDS = 15.0


def failover_options(retry_class: type[_RetryT],
                     seconds: float = FAILOVER_SECONDS) -> dict[str, Any]:
    """:func:`client_options` whose retries outlast a Sentinel failover (about `seconds`).

    For shared-log writers behind Sentinel: a command that fails while the
    primary is being replaced is retried (against the new primary, which the
    Sentinel pool rediscovers on reconnect) instead of raising.  Safe because
    every command they send is idempotent in effect.
    """
    backoff = EqualJitterBackoff(cap=RETRY_CAP, base=RETRY_BASE)
    retries = RETRIES + int(seconds / (0.75 * RETRY_CAP))
    return {**client_options(retry_class),
            "retry": _auth_final(retry_class)(backoff, retries)}  # type: ignore[call-arg]


def pubsub_pool_options(pool: Any, retry_class: type[_RetryT]) -> dict[str, Any]:
    """Arguments for a connection pool like `pool` whose connections never retry.

    Pub/sub connections come from such a pool: the monitors reconnect by
    themselves, with backoff that respects their caller's deadline, rather
    than block in redis-py's retries.
    """
    return {"connection_class": pool.connection_class, **pool.connection_kwargs,
            "retry": retry_class(NoBackoff(), 0)}  # type: ignore[call-arg]


def _sentinel_pool(pool: Any) -> Any:
    """The Sentinel pool (or its proxy) behind `pool`, or None: a Sentinel
    client's own pool, or a pool made from its options (the pub/sub pools)."""
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    for candidate in (pool, kwargs.get("connection_pool")):
        try:
            if (getattr(candidate, "service_name", None) is not None
                    and getattr(candidate, "sentinel_manager", None) is not None):
                return candidate
        except ReferenceError:              # a weak proxy outliving its pool
            pass
    return None


def sentinel_clients(pool: Any) -> list[Any]:
    """The clients of the sentinels that `pool` asks for its primary ([] if none)."""
    manager = getattr(_sentinel_pool(pool), "sentinel_manager", None)
    return list(getattr(manager, "sentinels", None) or ())


def _address(kwargs: dict[str, Any], default_port: int) -> str:
    host = str(kwargs.get("host", "localhost"))
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{kwargs.get('port', default_port)}"


def describe_pool(pool: Any) -> str:
    """A URL naming the server a redis-py connection pool talks to, password redacted."""
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    user = kwargs.get("username")
    if kwargs.get("password"):
        auth = f"{user or ''}:***@"
    else:
        auth = f"{user}@" if user else ""
    db = kwargs.get("db") or 0
    sentinel = _sentinel_pool(pool)
    if sentinel is not None:
        hosts = ",".join(_address(client.connection_pool.connection_kwargs, DEFAULT_SENTINEL_PORT)
                         for client in sentinel_clients(pool))
        return f"{SENTINEL_SCHEME}://{auth}{hosts}/{quote(str(sentinel.service_name))}/{db}"
    if kwargs.get("path"):
        return f"unix://{auth}{kwargs['path']}?db={db}"
    scheme = "rediss" if "SSL" in getattr(getattr(pool, "connection_class", None),
                                          "__name__", "") else "redis"
    return f"{scheme}://{auth}{_address(kwargs, DEFAULT_PORT)}/{db}"


def check_client(client: Any) -> None:
    """Refuse clients that would decode replies: telescope state is bytes."""
    kwargs = getattr(client.connection_pool, "connection_kwargs", None) or {}
    if kwargs.get("decode_responses"):
        raise ValueError("the Redis client must be created with decode_responses=False")


def connection_error(pool: Any, exc: BaseException) -> ConnectionError:
    """Our ConnectionError for a failed first contact, with no password in it."""
    text = str(exc)
    pools = [pool, *(client.connection_pool for client in sentinel_clients(pool))]
    for each in pools:
        secret = (getattr(each, "connection_kwargs", None) or {}).get("password")
        if isinstance(secret, str) and secret:
            text = text.replace(secret, "***")
    return ConnectionError(f"could not connect to Redis server {describe_pool(pool)}: {text}")
