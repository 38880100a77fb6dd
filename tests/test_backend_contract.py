"""One byte-level contract suite, run over every backend.

Each backend is compared with the reference model in ``_model.py`` (the
semantics of katsdptelstate's lex-packed zsets): every result and every error
of random operation sequences, then the whole final state.  The log backend
is also closed, reopened (replay) and compared again.  ``redis-trio`` is the
async ThreadedRedisBackend on a trio event loop (in a blocking portal),
called through a sync facade; the async wrappers are also tested directly.
``redis-log`` is the shared-log RedisLogBackend, ``redis-log-asyncio`` and
``redis-log-trio`` its async twin on each event loop (through the facade);
each starts on a flushed telstate db and log db.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.from_thread
import pytest
from _model import Model
from _waiting import DEADLINE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import telstate_log.aio
from telstate_log import ImmutableKeyError, InvalidTimestampError, KeyType
from telstate_log.backends import Backend, LogBackend, MemoryBackend, RedisBackend, RedisLogBackend
from telstate_log.backends._log_functions import log_db_for
from telstate_log.core._encoding import encode_value
from telstate_log.core._types import KeyUpdateBase, MutableKeyUpdate
from telstate_log.rdb._dump import parse_dump

_counter = itertools.count()


class _Blocking:
    """A sync face on an async backend whose event loop runs in `portal` (another thread)."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, backend: Any) -> None:
        self._portal = portal
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        return functools.partial(self._portal.call, getattr(self._backend, name))

    def __contains__(self, key: bytes) -> bool:
        return bool(self._portal.call(self._backend.exists, key))

    @property
    def position(self) -> int:
        """A shared log's position, asked of the server (ThreadedRedisBackend has none)."""
        if not hasattr(self._backend, "last_position"):
            raise AttributeError("position")
        return int(self._portal.call(self._backend.last_position))

    def close(self) -> None:
        self._backend.close()
        self._portal.call(self._backend.wait_closed)


def _flush_shared_log(url: str) -> None:
    """Empty the telstate db of `url` and its shared log's db."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        db = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
        for number in (db, log_db_for(db)):
            client.execute_command("SELECT", number)
            client.flushdb()
    finally:
        client.close()


_ASYNC_LOGS = {"redis-log-asyncio": "asyncio", "redis-log-trio": "trio"}


@pytest.fixture(params=["memory", "log", "log-buffered", "log-always",
                        pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("redis-trio", marks=pytest.mark.redis),
                        pytest.param("redis-log", marks=pytest.mark.redis),
                        pytest.param("redis-log-asyncio", marks=pytest.mark.redis),
                        pytest.param("redis-log-trio", marks=pytest.mark.redis)])
def make_backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Callable[[], Any]]:
    """Factory of fresh sync backends of one kind (closed after the test)."""
    made: list[Any] = []
    portals = contextlib.ExitStack()

    def make() -> Any:
        kind = request.param
        if kind == "memory":
            b: Any = MemoryBackend()
        elif kind == "redis":
            # one database per test: a second backend in the test must start empty
            b = RedisBackend.from_url(request.getfixturevalue("redis_url"))
            b.clear()
        elif kind == "redis-trio":
            portal = portals.enter_context(anyio.from_thread.start_blocking_portal("trio"))
            b = _Blocking(portal, portal.call(telstate_log.aio.ThreadedRedisBackend.from_url,
                                              request.getfixturevalue("redis_url")))
            b.clear()
        elif kind == "redis-log":
            url = request.getfixturevalue("redis_url")
            _flush_shared_log(url)
            b = RedisLogBackend.from_url(url, source="contract")
        elif kind in _ASYNC_LOGS:
            url = request.getfixturevalue("redis_url")
            _flush_shared_log(url)
            portal = portals.enter_context(
                anyio.from_thread.start_blocking_portal(_ASYNC_LOGS[kind]))
            b = _Blocking(portal, portal.call(functools.partial(
                telstate_log.aio.RedisLogBackend.from_url, url, source="contract")))
        else:
            options = {"log": dict(fsync="never", flush_interval=0.0),
                       "log-buffered": dict(fsync="interval"),
                       "log-always": dict(fsync="always")}[kind]
            b = LogBackend(tmp_path / f"log{next(_counter)}", segment_bytes=8192, **options)
        made.append(b)
        return b

    make.kind = request.param  # type: ignore[attr-defined]
    yield make
    with portals:
        for b in made:
            if isinstance(b, (LogBackend, RedisBackend, RedisLogBackend, _Blocking)):
                b.close()


def reopen(b: Any) -> Any:
    """Close a log backend and open it again (replay); memory: unchanged."""
    if not isinstance(b, LogBackend):
        return b
    b.close()
    return LogBackend(b.path, fsync="never")


def assert_same_state(b: Backend, model: Model) -> None:
    assert sorted(b.keys(b"*")) == model.keys()
    for key in model.keys():  # noqa: SIM118 - Model.keys takes a pattern
        kt = b.key_type(key)
        assert kt is not None and kt.name == model.key_type(key)
        assert b.get(key) == model.get(key)
        if kt == KeyType.MUTABLE:
            assert b.get_range(key, 0.0, math.inf, False, False) == \
                model.get_range(key, 0.0, math.inf, False, False)


# --------------------------------------------------------------- basic contract
def test_types_and_values(make_backend: Callable[[], Any]) -> None:
    b = make_backend()
    assert b.key_type(b"x") is None
    assert b.get(b"x") == (None, None)
    assert b.get_range(b"x", 0.0, math.inf, False, False) is None
    assert b.set_immutable(b"imm", b"\xff\x01") is None
    assert b.set_immutable(b"imm", b"\xff\x02") == b"\xff\x01"  # first writer wins
    b.add_mutable(b"sens", b"\xff\x05", 2.0)
    b.add_mutable(b"sens", b"\xff\x04", 1.0)
    assert b.set_indexed(b"idx", b"\xa1a", b"\xff\x01") is None
    assert b.set_indexed(b"idx", b"\xa1a", b"\xff\x02") == b"\xff\x01"
    assert b.key_type(b"imm") == KeyType.IMMUTABLE
    assert b.key_type(b"sens") == KeyType.MUTABLE
    assert b.key_type(b"idx") == KeyType.INDEXED
    assert b.get(b"imm") == (b"\xff\x01", None)
    assert b.get(b"sens") == (b"\xff\x05", 2.0)
    assert b.get(b"idx") == ({b"\xa1a": b"\xff\x01"}, None)
    assert b.get_indexed(b"idx", b"\xa1a") == b"\xff\x01"
    assert b.get_indexed(b"idx", b"\xa1b") is None
    with pytest.raises(KeyError):
        b.get_indexed(b"nope", b"\xa1a")
    assert b"imm" in b and b"nope" not in b
    assert sorted(b.keys(b"*")) == [b"idx", b"imm", b"sens"]
    assert sorted(b.keys(b"i*")) == [b"idx", b"imm"]


def test_wrong_types(make_backend: Callable[[], Any]) -> None:
    b = make_backend()
    b.set_immutable(b"imm", b"\xff\x01")
    b.add_mutable(b"sens", b"\xff\x01", 1.0)
    b.set_indexed(b"idx", b"\xa1a", b"\xff\x01")
    for call in (lambda: b.add_mutable(b"imm", b"\xff\x01", 1.0),
                 lambda: b.set_indexed(b"imm", b"\xa1a", b"\xff\x01"),
                 lambda: b.set_immutable(b"sens", b"\xff\x01"),
                 lambda: b.set_indexed(b"sens", b"\xa1a", b"\xff\x01"),
                 lambda: b.set_immutable(b"idx", b"\xff\x01"),
                 lambda: b.add_mutable(b"idx", b"\xff\x01", 1.0),
                 lambda: b.get_indexed(b"imm", b"\xa1a"),
                 lambda: b.get_indexed(b"sens", b"\xa1a"),
                 lambda: b.get_range(b"imm", 0.0, math.inf, False, False),
                 lambda: b.get_range(b"idx", 0.0, math.inf, False, False)):
        with pytest.raises(ImmutableKeyError):
            call()
    position = getattr(b, "position", None)
    with pytest.raises(ImmutableKeyError):
        b.add_mutable(b"imm", b"\xff\x02", 2.0)
    assert getattr(b, "position", None) == position  # a refused write records nothing


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, -math.inf])
def test_bad_timestamps(make_backend: Callable[[], Any], bad: float) -> None:
    b = make_backend()
    with pytest.raises(InvalidTimestampError):
        b.add_mutable(b"sens", b"\xff\x01", bad)
    assert b"sens" not in b


def test_empty_sample_values_are_refused(make_backend: Callable[[], Any]) -> None:
    """An encoded value is at least one byte; an empty one could not be dumped or exported."""
    b = make_backend()
    b.add_mutable(b"sens", b"\xff\x01", 1.0)
    with pytest.raises(ValueError, match="empty"):
        b.add_mutable(b"sens", b"", 2.0)
    with pytest.raises(ValueError, match="empty"):
        b.add_mutable(b"new", b"", 2.0)
    assert b"new" not in b
    assert b.get_range(b"sens", 0.0, math.inf, False, False) == [(b"\xff\x01", 1.0)]
    if hasattr(b, "add_mutable_many"):
        with pytest.raises(ValueError, match="empty"):
            b.add_mutable_many(b"sens", [b"\xff\x02", b""], [3.0, 4.0])
        assert b.get_range(b"sens", 0.0, math.inf, False, False) == [(b"\xff\x01", 1.0)]


def test_negative_zero_is_zero(make_backend: Callable[[], Any]) -> None:
    b = make_backend()
    b.add_mutable(b"s", b"\xff\x01", -0.0)
    b.add_mutable(b"s", b"\xff\x01", 0.0)  # the same sample
    assert b.get_range(b"s", 0.0, math.inf, False, False) == [(b"\xff\x01", 0.0)]
    assert math.copysign(1.0, b.get(b"s")[1]) == 1.0


def test_delete_and_clear(make_backend: Callable[[], Any]) -> None:
    b = make_backend()
    b.set_immutable(b"a", b"\xff\x01")
    b.add_mutable(b"b", b"\xff\x01", 1.0)
    b.delete(b"a")
    b.delete(b"a")  # no-op
    assert b"a" not in b
    b.set_immutable(b"a", b"\xff\x02")  # a deleted key can be re-created with another value
    assert b.get(b"a") == (b"\xff\x02", None)
    b.clear()
    assert b.keys(b"*") == []
    b.add_mutable(b"a", b"\xff\x03", 5.0)  # and with another type
    assert b.key_type(b"a") == KeyType.MUTABLE


def test_dump_payloads(make_backend: Callable[[], Any]) -> None:
    b = make_backend()
    b.set_immutable(b"imm", encode_value("hello"))
    b.add_mutable(b"sens", encode_value(1.5), 3.0)
    b.add_mutable(b"sens", encode_value("x"), 1.0)
    b.set_indexed(b"idx", encode_value("k"), encode_value([1, 2]))
    assert b.dump(b"missing") is None
    assert parse_dump(b.dump(b"imm")) == (KeyType.IMMUTABLE, encode_value("hello"))
    kind, members = parse_dump(b.dump(b"sens"))
    assert kind == KeyType.MUTABLE
    assert members == sorted(members) and len(members) == 2
    assert parse_dump(b.dump(b"idx")) == (KeyType.INDEXED,
                                          {encode_value("k"): encode_value([1, 2])})


def test_monitor_keys_protocol(make_backend: Callable[[], Any]) -> None:
    if make_backend.kind == "redis-trio":  # type: ignore[attr-defined]
        pytest.skip("an async monitor: see test_async_wrappers_share_data and "
                    "test_redis_backend_threads.py")
    if make_backend.kind in _ASYNC_LOGS:  # type: ignore[attr-defined]
        pytest.skip("an async monitor: see test_async_wrappers_share_data and "
                    "test_redis_log_aio.py")
    b = make_backend()
    monitor = b.monitor_keys([b"watched"])
    # katsdptelstate's protocol: priming yields a "re-check" KeyUpdateBase at once
    # (memory), or None and then the re-check once the subscription is confirmed (Redis).
    first = monitor.send(None)
    if first is None:
        first = monitor.send(5.0)
    assert type(first) is KeyUpdateBase
    assert monitor.send(0.01) is None  # nothing happened
    b.add_mutable(b"other", b"\xff\x01", 1.0)
    assert monitor.send(0.01) is None  # not a watched key
    b.add_mutable(b"watched", b"\xff\x07", 4.0)
    update = monitor.send(1.0)
    assert isinstance(update, MutableKeyUpdate)
    assert (update.key, update.value, update.timestamp) == (b"watched", b"\xff\x07", 4.0)
    b.add_mutable(b"watched", b"\xff\x07", 4.0)  # duplicate: no event, no notification
    assert monitor.send(0.01) is None
    monitor.close()


# ------------------------------------------------------------ random sequences
keys = st.sampled_from([b"a", b"b", b"c", b"ns_a"])
values = st.sampled_from([b"\xff\x01", b"\xff\x02", b"\xff\xcb" + bytes(8),
                          b"\xff\xcb?\xf0\x00\x00\x00\x00\x00\x00", b"\xff\xa3abc", b"\xff\xa1z"])
times = st.sampled_from([0.0, -0.0, 1.0, 1.5, 2.0, 2.0, 3.0, 1e9, 5e-324])
ops = st.lists(st.one_of(
    st.tuples(st.just("set"), keys, values),
    st.tuples(st.just("add"), keys, values, times),
    st.tuples(st.just("add"), keys, values, times),
    st.tuples(st.just("add"), keys, values, times),
    st.tuples(st.just("idx"), keys, values, values),
    st.tuples(st.just("many"), keys, st.lists(st.tuples(values, times), max_size=8)),
    st.tuples(st.just("delete"), keys),
    st.tuples(st.just("clear")),
    st.tuples(st.just("range"), keys, times, times, st.booleans(), st.booleans()),
), max_size=60)


def _add_many(b: Any, key: bytes, samples: list[tuple[bytes, float]]) -> int | None:
    """How many samples were new: add_mutable_many's count, or the model's per-sample
    answers; None for a backend without either (Redis's add_mutable returns None)."""
    if hasattr(b, "add_mutable_many"):
        return int(b.add_mutable_many(key, [v for v, _ in samples], [t for _, t in samples]))
    added = [b.add_mutable(key, value, ts) for value, ts in samples]
    return None if None in added else sum(added)


_CALLS: dict[str, Callable[[Any, tuple[Any, ...]], Any]] = {
    "set": lambda m, o: m.set_immutable(o[1], o[2]),
    "add": lambda m, o: m.add_mutable(o[1], o[2], o[3]),
    "idx": lambda m, o: m.set_indexed(o[1], o[2][1:] or b"k", o[3]),
    "many": lambda m, o: _add_many(m, o[1], o[2]),
    "delete": lambda m, o: m.delete(o[1]),
    "clear": lambda m, o: m.clear(),
    "range": lambda m, o: m.get_range(o[1], o[2], o[3], o[4], o[5]),
}


def apply_ops(b: Any, model: Model, seq: list[tuple[Any, ...]]) -> None:
    for op in seq:
        name = op[0]
        fn = _CALLS[name]
        try:
            want: Any = fn(model, op)
            want_exc = None
        except ImmutableKeyError:
            want_exc = ImmutableKeyError
        if want_exc is not None:
            with pytest.raises(want_exc):
                fn(b, op)
        else:
            got = fn(b, op)
            if name in ("set", "idx", "range") or (name == "many" and got is not None):
                assert got == want, op


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=ops)
def test_random_sequences(make_backend: Callable[[], Any], seq: list[tuple[Any, ...]]) -> None:
    b = make_backend()
    model = Model(redis_ranges=make_backend.kind.startswith("redis"))  # type: ignore[attr-defined]
    apply_ops(b, model, seq)
    assert_same_state(b, model)
    b2 = reopen(b)
    try:
        assert_same_state(b2, model)
    finally:
        if b2 is not b:
            b2.close()


# ------------------------------------------------------------------ async twins
@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["memory", "log", pytest.param("redis", marks=pytest.mark.redis),
                                  pytest.param("redis-log", marks=pytest.mark.redis)])
async def test_async_wrappers_share_data(kind: str, tmp_path: Any,
                                         request: pytest.FixtureRequest) -> None:
    if kind == "memory":
        ab: Any = telstate_log.aio.MemoryBackend()
    elif kind == "log":
        ab = await telstate_log.aio.LogBackend.open(tmp_path / "alog", fsync="always")
    elif kind == "redis":
        ab = await telstate_log.aio.ThreadedRedisBackend.from_url(
            request.getfixturevalue("redis_url"))
    else:  # the shared log: a sync writer of its own on the same database and stream
        url = request.getfixturevalue("redis_url")
        ab = await telstate_log.aio.RedisLogBackend.from_url(url)
        own_sync = await anyio.to_thread.run_sync(RedisLogBackend.from_url, url)
    sync = own_sync if kind == "redis-log" else ab.to_sync()
    await ab.set_immutable(b"k", b"\xff\x01")
    assert sync.get(b"k") == (b"\xff\x01", None)
    sync.add_mutable(b"s", b"\xff\x02", 1.0)
    assert await ab.get_range(b"s", 0.0, math.inf, False, False) == [(b"\xff\x02", 1.0)]
    assert await ab.key_type(b"s") == KeyType.MUTABLE
    assert await ab.exists(b"k")
    got: list[Any] = []
    subscribed = anyio.Event()

    async def watch() -> None:
        monitor = ab.monitor_keys([b"s"])
        async for update in monitor:
            got.append(update)
            # Active once the first update (memory, log) or Redis's confirmation is seen.
            if len(got) == (2 if kind == "redis" else 1):
                subscribed.set()
            if isinstance(update, MutableKeyUpdate):
                break
        await monitor.aclose()

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            await subscribed.wait()
            # A write from another thread must wake the task.
            await anyio.to_thread.run_sync(sync.add_mutable, b"s", b"\xff\x03", 2.0)
    assert all(type(update) is KeyUpdateBase for update in got[:-1])   # "check now"
    assert isinstance(got[-1], MutableKeyUpdate) and got[-1].value == b"\xff\x03"
    ab.close()
    await ab.wait_closed()
    if kind == "redis-log":
        own_sync.close()


@pytest.mark.redis
def test_dump_payloads_restore_into_redis(make_backend: Callable[[], Any],
                                          redis_url: str) -> None:
    """Every backend's DUMP payloads are accepted by redis-server's RESTORE."""
    import redis

    b = make_backend()
    b.set_immutable(b"imm", encode_value("value"))
    for i in range(200):  # more than a listpack holds
        b.add_mutable(b"sens", encode_value(i * 0.5), float(i))
    b.add_mutable(b"sens", encode_value("late"), 0.5)
    b.set_indexed(b"idx", encode_value(("m000", "h")), encode_value([1, 2]))
    client = redis.Redis.from_url(redis_url)
    try:
        for key in (b"imm", b"sens", b"idx"):  # (the Redis backend's own keys are in this db)
            client.restore(b"copy-" + key, 0, b.dump(key))
        assert client.get(b"copy-imm") == encode_value("value")
        members = client.zrange(b"copy-sens", 0, -1)
        assert [m[8:] for m in members] == [v for v, _ in
                                            b.get_range(b"sens", 0.0, math.inf, False, False)]
        assert client.hgetall(b"copy-idx") == {encode_value(("m000", "h")): encode_value([1, 2])}
        assert client.zcard(b"copy-sens") == 201
    finally:
        client.close()
