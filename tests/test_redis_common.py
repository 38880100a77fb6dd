"""Pure parts of the Redis backends: messages, range bounds, endpoints, redaction, plans.

No server needed.  Where katsdptelstate has an equivalent (range bounds,
endpoint parsing) it serves as the oracle.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest

from telstate_log import ImmutableKeyError, InvalidTimestampError, KeyType
from telstate_log.backends import (
    ImmutableKeyUpdate,
    IndexedKeyUpdate,
    KeyUpdateBase,
    MutableKeyUpdate,
)
from telstate_log.backends._redis_common import (
    REDIS_TYPES,
    exchange_get_indexed,
    exchange_update,
    is_wrongtype,
    key_type_from_redis,
    range_bounds,
    run_exchange,
)
from telstate_log.backends._redis_endpoint import (
    RedisEndpoint,
    describe_pool,
    parse_endpoint,
    redact_url,
)
from telstate_log.backends._redis_messages import (
    channel_key,
    decode_update,
    immutable_message,
    indexed_message,
    mutable_message,
    update_channel,
)

TS = struct.pack(">d", 1234.5)


def _updates_equal(a: KeyUpdateBase, b: KeyUpdateBase) -> bool:
    return type(a) is type(b) and all(
        getattr(a, name, None) == getattr(b, name, None)
        for name in ("key", "value", "timestamp", "sub_key"))


def _decode(data: bytes, key_type: str = "none") -> KeyUpdateBase:
    """Run exchange_update with a fake TYPE reply for untyped messages."""
    calls: list[Any] = []

    def execute(op: Any) -> Any:
        calls.append(op)
        assert op == ("command", "TYPE", b"k")
        return key_type.encode()

    return run_exchange(exchange_update(b"k", data), execute)


# ----------------------------------------------------------------- messages
def test_message_encoding_is_katsdptelstates() -> None:
    assert update_channel(b"a/b") == b"update/a/b"
    assert channel_key(b"update/a/b") == b"a/b"
    assert channel_key(b"other") is None and channel_key("update/x") is None
    assert immutable_message(b"\xffv") == b"\xffv"
    assert mutable_message(b"\xffv", 1234.5) == TS + b"\xffv"
    assert mutable_message(b"v", -0.0) == b"\x00" * 8 + b"v"
    assert indexed_message(b"\xffsub", b"\xffval") == b"\x034\n\xffsub\xffval"
    assert indexed_message(b"", b"x") == b"\x030\nx"


@pytest.mark.parametrize(("data", "expected"), [
    (b"\x01\xffval", ImmutableKeyUpdate(b"k", b"\xffval")),
    (b"\x01", ImmutableKeyUpdate(b"k", b"")),
    (b"\x02" + TS + b"\xffv", MutableKeyUpdate(b"k", b"\xffv", 1234.5)),
    (b"\x03" + b"3\nabcVALUE", IndexedKeyUpdate(b"k", b"abc", b"VALUE")),
    (b"\x03" + b"0\nVALUE", IndexedKeyUpdate(b"k", b"", b"VALUE")),
    (b"\x03" + b"3\nabc", IndexedKeyUpdate(b"k", b"abc", b"")),
    (b"\x03" + b"12\n" + b"x" * 12 + b"\n", IndexedKeyUpdate(b"k", b"x" * 12, b"\n")),
])
def test_typed_messages(data: bytes, expected: KeyUpdateBase) -> None:
    assert _updates_equal(_decode(data), expected)


@pytest.mark.parametrize("data", [
    b"\x02" + TS,                                   # no value
    b"\x02" + TS[:5],                               # short timestamp
    b"\x02" + struct.pack(">d", -1.0) + b"v",       # negative
    b"\x02" + struct.pack(">d", math.nan) + b"v",   # NaN
    b"\x02" + struct.pack(">d", math.inf) + b"v",   # infinite
    b"\x03",                                        # nothing
    b"\x03abc",                                     # no newline
    b"\x03\nabc",                                   # no digits
    b"\x03+3\nabc", b"\x03 3\nabc", b"\x03-1\nabc", b"\x033 \nabc",  # not plain digits
    b"\x03\xd9\xa3\nabc",                           # non-ASCII digit
    b"\x034\nabc",                                  # length beyond the end
    b"\x0399999999999\nabc",                        # absurd length
    b"\x03" + b"9" * 5000 + b"\nx",                 # long digit string: no int() of it
])
def test_malformed_messages_mean_check_again(data: bytes) -> None:
    assert type(_decode(data)) is KeyUpdateBase


def test_untyped_messages_look_up_the_key_type() -> None:
    assert _updates_equal(_decode(b"\xffv", "string"), ImmutableKeyUpdate(b"k", b"\xffv"))
    assert _updates_equal(_decode(b"S'x'\np0\n.", "string"),
                          ImmutableKeyUpdate(b"k", b"S'x'\np0\n."))
    assert _updates_equal(_decode(TS + b"\xffv", "zset"), MutableKeyUpdate(b"k", b"\xffv", 1234.5))
    assert _updates_equal(_decode(b"", "string"), ImmutableKeyUpdate(b"k", b""))
    # Deleted meanwhile, foreign type, indexed without its type byte, bad sample.
    for data, kind in [(b"\xffv", "none"), (b"\xffv", "list"), (b"3\nabc", "hash"),
                       (b"short", "zset")]:
        assert type(_decode(data, kind)) is KeyUpdateBase
    assert type(run_exchange(exchange_update(b"k", None), lambda op: None)) is KeyUpdateBase


def test_decode_update_direct() -> None:
    assert _updates_equal(decode_update(b"k", KeyType.INDEXED, b"1\nab"),
                          IndexedKeyUpdate(b"k", b"a", b"b"))


# ------------------------------------------------------------ types, errors
def test_key_types() -> None:
    assert key_type_from_redis(b"k", b"none") is None
    assert key_type_from_redis(b"k", b"string") == KeyType.IMMUTABLE
    assert key_type_from_redis(b"k", "zset") == KeyType.MUTABLE
    assert key_type_from_redis(b"k", b"hash") == KeyType.INDEXED
    for kind, name in REDIS_TYPES.items():
        assert key_type_from_redis(b"k", name) == kind
    for foreign in (b"list", b"set", b"stream", b"ReJSON-RL"):
        with pytest.raises(ImmutableKeyError, match="not telescope state"):
            key_type_from_redis(b"k", foreign)


def test_wrongtype_detection() -> None:
    assert is_wrongtype(Exception("WRONGTYPE Operation against a key"))
    assert is_wrongtype(Exception("Error running script (call to f_1): @user_script:1: "
                                  "WRONGTYPE Operation against a key"))
    assert not is_wrongtype(Exception("ERR something WRONGTYPE-ish"))
    assert not is_wrongtype(Exception())


def test_get_indexed_reply_convention() -> None:
    with pytest.raises(KeyError):
        run_exchange(exchange_get_indexed(b"k", b"s"), lambda op: 1)
    assert run_exchange(exchange_get_indexed(b"k", b"s"), lambda op: None) is None
    assert run_exchange(exchange_get_indexed(b"k", b"s"), lambda op: b"1") == b"1"


# --------------------------------------------------------------- range bounds
_TIMES = [0.0, -0.0, -1.0, -math.inf, 5e-324, 1.0, 5.0, 1.7e9, 1.7976931348623157e308,
          math.inf]


def test_range_bounds_match_katsdptelstate() -> None:
    utils = pytest.importorskip("katsdptelstate.utils")
    for time in _TIMES:
        for include_end in (False, True):
            start, end = range_bounds(time, time, include_end)
            assert start == utils.pack_query_timestamp(time, False)
            assert end == utils.pack_query_timestamp(time, True, include_end)


def test_range_bounds_refuse_nan() -> None:
    with pytest.raises(InvalidTimestampError):
        range_bounds(math.nan, 1.0, False)
    with pytest.raises(InvalidTimestampError):
        range_bounds(0.0, math.nan, True)


# ------------------------------------------------------------------ endpoints
@pytest.mark.parametrize(("text", "host", "port"), [
    ("localhost", "localhost", None),
    ("redis.example.com:7148", "redis.example.com", 7148),
    ("127.0.0.1:6379", "127.0.0.1", 6379),
    ("[::1]:6380", "::1", 6380),
    ("[fe80::1%eth0]:1", "fe80::1%eth0", 1),
    ("[::1]", "::1", None),
    ("::1", "::1", None),
    ("  host:1  ", "host", 1),
])
def test_parse_host_port(text: str, host: str, port: int | None) -> None:
    assert parse_endpoint(text) == RedisEndpoint(host, port)


def test_parse_host_port_matches_katsdptelstate() -> None:
    endpoint = pytest.importorskip("katsdptelstate.endpoint")
    parser = endpoint.endpoint_parser(None)
    for text in ("localhost", "host:7148", "[::1]:6380", "[::1]", "10.0.0.1:1"):
        theirs = parser(text)
        assert parse_endpoint(text) == RedisEndpoint(theirs.host, theirs.port)
        assert parse_endpoint(theirs) == RedisEndpoint(theirs.host, theirs.port)


@pytest.mark.parametrize("text", [
    "", ":6379", "host:", "host:port", "host:0", "host:65536", "host:-1", "host:+1",
    "host:１２", "[::1", "[::1]x", "[::1]:", "[notipv6]:1", "fe80::zz", "a:b:c",
])
def test_parse_bad_host_port(text: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text)


def test_parse_urls() -> None:
    for url in ("redis://h", "rediss://u:p@h:1/2", "unix:///tmp/redis.sock?db=1",
                "redis://:p%40ss@[::1]:6379/0"):
        assert parse_endpoint(url).url == url
    with pytest.raises(ValueError, match="unsupported scheme 'http'"):
        parse_endpoint("http://user:hunter2@h/")
    with pytest.raises(ValueError, match="invalid Redis URL") as info:
        parse_endpoint("redis://:hunter2@h:notaport/")
    assert "hunter2" not in str(info.value)
    with pytest.raises(TypeError):
        parse_endpoint(12)


# ------------------------------------------------------------------ redaction
@pytest.mark.parametrize(("url", "shown"), [
    ("redis://h:1/0", "redis://h:1/0"),
    ("redis://:hunter2@h:1/0", "redis://:***@h:1/0"),
    ("redis://alice:hunter2@h/0", "redis://alice:***@h/0"),
    ("redis://hunter2@h/0", "redis://***@h/0"),
    ("rediss://a:p@ss:w@rd@h/0", "rediss://a:***@h/0"),
    ("redis://h/0?password=hunter2&db=1", "redis://h/0?password=***&db=1"),
    ("unix://:hunter2@/tmp/s.sock?PassWord=hunter2", "unix://:***@/tmp/s.sock?PassWord=***"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    endpoint = parse_endpoint(url)
    assert "hunter2" not in str(endpoint) and "hunter2" not in repr(endpoint)


def test_describe_pool_redacts() -> None:
    class Pool:
        connection_kwargs = {"host": "::1", "port": 7, "db": 3, "username": "alice",
                             "password": "hunter2"}

    assert describe_pool(Pool()) == "redis://alice:***@[::1]:7/3"
    Pool.connection_kwargs = {"path": "/tmp/s", "password": "hunter2"}
    assert describe_pool(Pool()) == "unix://:***@/tmp/s?db=0"
    Pool.connection_kwargs = {}
    assert describe_pool(Pool()) == "redis://localhost:6379/0"
