"""Redis Sentinel: ``redis+sentinel://`` URLs, and backends that follow a failover.

* parsing (no server): hosts, default port, IPv6, service, database,
  credentials of the servers and of the sentinels, every malformed form
  refused, passwords never shown;
* the clients :func:`connect` / :func:`connect_async` make (no I/O): a
  Sentinel-managed pool with our options; other URLs as before;
* first contact with no sentinel answering: our ConnectionError, redacted;
* with a real primary, replica and three sentinels (:mod:`_redis_cluster`):
  a ``RedisBackend.from_url('redis+sentinel://...')`` (sync; aio under
  asyncio and trio) writes, the primary is SIGKILLed, and the same backend
  object writes and reads again once the new primary is reachable; a
  monitor opened before the failover sees a write made after it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from _redis_cluster import RedisCluster, require_sentinel
from _waiting import wait_for

import telstate_log
import telstate_log.aio
from telstate_log.backends import KeyUpdateBase, MutableKeyUpdate, RedisBackend
from telstate_log.backends._redis import redis_backend_for_endpoint
from telstate_log.backends._redis_connect import SENTINEL_TIMEOUT, connect, connect_async
from telstate_log.backends._redis_endpoint import (
    RETRIES,
    SentinelURL,
    describe_pool,
    parse_endpoint,
    parse_sentinel_url,
    redact_url,
)

#: Errors of a call made while no primary is reachable.
DOWN = (redis.ConnectionError, redis.TimeoutError, OSError, telstate_log.ConnectionError)
#: Seconds a write may take to succeed again after the primary is killed.
FAILOVER_DEADLINE = 30.0


# ------------------------------------------------------------------- parsing
@pytest.mark.parametrize(("url", "expected"), [
    ("redis+sentinel://h/svc",
     SentinelURL((("h", 26379),), "svc")),
    ("redis+sentinel://h1:1,h2:2,[::1]:3,h4/svc/7",
     SentinelURL((("h1", 1), ("h2", 2), ("::1", 3), ("h4", 26379)), "svc", 7)),
    ("redis+sentinel://alice:p%40ss@h:5/my%20svc/",
     SentinelURL((("h", 5),), "my svc", None, "alice", "p@ss")),
    ("redis+sentinel://:pw@h:5/svc/0?sentinel_password=spw&sentinel_username=sue",
     SentinelURL((("h", 5),), "svc", 0, None, "pw", "sue", "spw")),
    ("redis+sentinel://bob@[fe80::1%25eth0]:9/svc/15",
     SentinelURL((("fe80::1%eth0", 9),), "svc", 15, "bob")),
])
def test_parse_sentinel_url(url: str, expected: SentinelURL) -> None:
    assert parse_sentinel_url(url) == expected
    assert parse_endpoint(url).url == url


@pytest.mark.parametrize("url", [
    "redis+sentinel://:hunter2@/svc",                    # no sentinel
    "redis+sentinel://:hunter2@h:1,,h:2/svc",            # an empty one
    "redis+sentinel://:hunter2@h:x/svc",                 # bad port
    "redis+sentinel://:hunter2@h:0/svc",
    "redis+sentinel://:hunter2@h:1",                     # no service
    "redis+sentinel://:hunter2@h:1/",
    "redis+sentinel://:hunter2@h:1//0",
    "redis+sentinel://:hunter2@h:1/svc/x",               # bad database
    "redis+sentinel://:hunter2@h:1/svc/-1",
    "redis+sentinel://:hunter2@h:1/svc/0/1",             # too much path
    "redis+sentinel://:hunter2@h:1/svc?db=2",            # unknown option
    "redis+sentinel://h:1/svc?sentinel_password=hunter2&socket_timeout=1",
    "redis+sentinel://:hunter2@h:1/svc#x",
    "redis+sentinel://:hunter2@[::1:1/svc",
])
def test_parse_bad_sentinel_url(url: str) -> None:
    with pytest.raises(ValueError, match="Redis") as info:
        parse_endpoint(url)
    assert "hunter2" not in str(info.value)
    with pytest.raises(ValueError) as info:
        connect(url)
    assert "hunter2" not in str(info.value)


def test_sentinel_secrets_never_shown() -> None:
    url = "redis+sentinel://al:hunter2@h:1,h:2/svc/3?sentinel_password=hunter2"
    assert redact_url(url) == "redis+sentinel://al:***@h:1,h:2/svc/3?sentinel_password=***"
    for shown in (str(parse_endpoint(url)), repr(parse_endpoint(url)),
                  repr(parse_sentinel_url(url))):
        assert "hunter2" not in shown


# ------------------------------------------------------------------- clients
def _sentinel_kwargs(client: Any) -> list[dict[str, Any]]:
    manager = client.connection_pool.sentinel_manager
    return [s.connection_pool.connection_kwargs for s in manager.sentinels]


def test_connect_sentinel_client() -> None:
    url = "redis+sentinel://al:hunter2@h1:1,[::1]:2/svc/3?sentinel_password=s3cret"
    client = connect(url, db=5, socket_timeout=7)
    try:
        pool = client.connection_pool
        assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
        assert pool.service_name == "svc" and pool.is_master
        kwargs = pool.connection_kwargs
        assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (3, "al", "hunter2")
        assert kwargs["socket_timeout"] == 7                # options override ours
        assert kwargs["retry"].get_retries() == RETRIES     # our retry policy
        sentinels = _sentinel_kwargs(client)
        assert [(s["host"], s["port"]) for s in sentinels] == [("h1", 1), ("::1", 2)]
        for s in sentinels:
            assert s["password"] == "s3cret" and s.get("username") is None
            assert s["socket_timeout"] == SENTINEL_TIMEOUT
            assert s["retry"].get_retries() == 0            # discovery moves on instead
        assert describe_pool(pool) == "redis+sentinel://al:***@h1:1,[::1]:2/svc/3"
    finally:
        client.close()
    # The URL's database wins; without one, `db` is used.
    client = connect("redis+sentinel://h/svc", db=4)
    assert client.connection_pool.connection_kwargs["db"] == 4
    assert _sentinel_kwargs(client)[0].get("password") is None
    client.close()


def test_connect_async_sentinel_client() -> None:
    client = connect_async("redis+sentinel://:hunter2@h1:1/svc/2")
    try:
        pool = client.connection_pool
        assert isinstance(pool, redis.asyncio.sentinel.SentinelConnectionPool)
        assert pool.service_name == "svc"
        assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == \
            (2, "hunter2")
        assert pool.connection_kwargs["retry"].get_retries() == RETRIES
        assert _sentinel_kwargs(client)[0]["socket_timeout"] == SENTINEL_TIMEOUT
        assert describe_pool(pool) == "redis+sentinel://:***@h1:1/svc/2"
    finally:
        asyncio.run(client.aclose())
    assert type(connect_async("redis://h/1")) is redis.asyncio.Redis


def test_connect_other_urls_unchanged() -> None:
    client = connect("redis://:pw@h:1/2")
    assert type(client) is redis.Redis
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == \
        ("h", 1, 2, "pw")
    assert kwargs["retry"].get_retries() == RETRIES
    client.close()
    with pytest.raises(ValueError, match="not a Redis URL"):
        connect("localhost:6379")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_no_sentinel_answers() -> None:
    url = f"redis+sentinel://:hunter2@127.0.0.1:{_closed_port()}/svc/1?sentinel_password=pw2"
    with pytest.raises(telstate_log.ConnectionError, match="redis\\+sentinel://") as info:
        RedisBackend.from_url(url)
    assert "hunter2" not in str(info.value) and "pw2" not in str(info.value)
    # TelescopeState's endpoints take Sentinel URLs too.
    with pytest.raises(telstate_log.ConnectionError, match="redis\\+sentinel://"):
        redis_backend_for_endpoint(url, db=2)


# ------------------------------------------------------------------ failover
@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    require_sentinel()
    with RedisCluster(tmp_path / "cluster", replicas=1) as started:
        yield started


def _retry(call: Callable[[], Any], what: str) -> float:
    """Call until it stops failing for want of a primary; returns the seconds it took."""
    start = time.monotonic()

    def succeeds() -> bool:
        try:
            call()
        except DOWN:
            return False
        return True

    wait_for(succeeds, FAILOVER_DEADLINE, what)
    return time.monotonic() - start


async def _aretry(call: Callable[[], Awaitable[Any]], what: str) -> float:
    start = time.monotonic()
    try:
        with anyio.fail_after(FAILOVER_DEADLINE):
            while True:
                try:
                    await call()
                    return time.monotonic() - start
                except DOWN:
                    await anyio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {FAILOVER_DEADLINE} s waiting for {what}") \
            from None


def _recheck(monitor: Generator[KeyUpdateBase | None, float | None, None]) -> bool:
    """Whether the monitor's next step is the confirmation of a (re)subscription."""
    return type(monitor.send(0.5)) is KeyUpdateBase


@pytest.mark.redis
def test_sync_backend_follows_failover(tmp_path: Path) -> None:
    require_sentinel()
    with RedisCluster(tmp_path / "cluster", replicas=1, fsync_always=True,
                      password="hunter2") as cluster:
        backend = RedisBackend.from_url(cluster.sentinel_url(db=3, password="hunter2"))
        try:
            assert "hunter2" not in repr(backend) and "redis+sentinel://" in repr(backend)
            assert backend.set_immutable(b"before", b"1") is None
            backend.add_mutable(b"sensor", b"a", 1.0)
            monitor = backend.monitor_keys([b"sensor"])
            assert next(monitor) is None
            wait_for(lambda: _recheck(monitor), FAILOVER_DEADLINE, "the monitor to subscribe")
            cluster.wait_replicated()
            old = cluster.kill_primary()

            took = _retry(lambda: backend.add_mutable(b"sensor", b"b", 2.0),
                          "a write after the failover")
            new = cluster.wait_failover()
            print(f"failover: first write on the new primary {took:.2f} s after the kill")
            assert new != old
            assert backend.get(b"before") == (b"1", None)
            assert backend.get(b"sensor") == (b"b", 2.0)
            assert backend.get_range(b"sensor", 0, 10, False, True) == [(b"a", 1.0),
                                                                      (b"b", 2.0)]
            with cluster.primary_client(db=3) as primary:
                assert primary.zcard(b"sensor") == 2        # written on the new primary

            # The monitor resubscribes on the new primary (a recheck), then sees writes.
            wait_for(lambda: _recheck(monitor), FAILOVER_DEADLINE, "the monitor to resubscribe")
            backend.add_mutable(b"sensor", b"c", 3.0)

            def updated() -> bool:
                update = monitor.send(0.5)
                return isinstance(update, MutableKeyUpdate) and update.value == b"c"
            wait_for(updated, FAILOVER_DEADLINE, "the monitor to see the write")
            monitor.close()
        finally:
            backend.close()


@pytest.mark.redis
@pytest.mark.anyio
async def test_aio_backend_follows_failover(cluster: RedisCluster, anyio_backend: str) -> None:
    backend = await telstate_log.aio.RedisBackend.from_url(cluster.sentinel_url(db=2))
    try:
        if anyio_backend == "asyncio":
            assert isinstance(backend, telstate_log.aio.RedisBackend)
        assert "redis+sentinel://" in repr(backend)
        assert await backend.set_immutable(b"before", b"1") is None
        await backend.add_mutable(b"sensor", b"a", 1.0)
        await anyio.to_thread.run_sync(cluster.wait_replicated)
        old = cluster.kill_primary()

        took = await _aretry(lambda: backend.add_mutable(b"sensor", b"b", 2.0),
                             "a write after the failover")
        new = await anyio.to_thread.run_sync(cluster.wait_failover)
        print(f"failover: first write on the new primary {took:.2f} s after the kill")
        assert new != old
        assert await backend.get(b"before") == (b"1", None)
        assert await backend.get_range(b"sensor", 0, 10, False, True) == [(b"a", 1.0),
                                                                         (b"b", 2.0)]
        with cluster.primary_client(db=2) as primary:
            assert primary.zcard(b"sensor") == 2
    finally:
        await backend.wait_closed()
