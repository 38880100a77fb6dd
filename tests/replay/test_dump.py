"""DUMP payloads: round trips, strict parsing, RESTORE/DUMP with redis-server, katsdptelstate."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from _rdb_helpers import fill_redis, listpack, lp_int, lp_str, sample_state, sensor

from telstate_log.core._errors import RdbParseError
from telstate_log.core._types import KeyType
from telstate_log.rdb._crc64 import crc64
from telstate_log.rdb._dump import (
    DUMP_VERSION,
    dump_hash,
    dump_string,
    dump_value,
    dump_zset,
    parse_dump,
)


def seal(body: bytes, version: int = DUMP_VERSION) -> bytes:
    data = body + struct.pack("<H", version)
    return data + struct.pack("<Q", crc64(data))


def test_round_trip_and_footer() -> None:
    for kind, value in sample_state().values():
        payload = dump_value(kind, value)
        assert struct.unpack("<H", payload[-10:-8])[0] == DUMP_VERSION == 9
        assert struct.unpack("<Q", payload[-8:])[0] == crc64(payload[:-8])
        assert parse_dump(payload) == (kind, value)
        assert parse_dump(bytearray(payload)) == (kind, value)


def test_exact_encodings() -> None:
    assert dump_string(b"v") == seal(b"\x00\x01v")
    member = b"\x00" * 8 + b"x"
    assert dump_zset([member]) == seal(b"\x03\x01\x09" + member + b"\x010")
    assert dump_hash({b"f": b"v"}) == seal(b"\x04\x01\x01f\x01v")


def test_parses_listpack_and_other_versions() -> None:
    members = sensor(2)
    blob = listpack([lp_str(members[1]), lp_int(0), lp_str(members[0]), lp_int(0)])
    payload = seal(b"\x11" + bytes([len(blob)]) + blob, version=10)
    assert parse_dump(payload) == (KeyType.MUTABLE, members)
    assert parse_dump(seal(b"\x00\x01v", version=6)) == (KeyType.IMMUTABLE, b"v")
    assert parse_dump(seal(b"\x00\x01v", version=12)) == (KeyType.IMMUTABLE, b"v")


@pytest.mark.parametrize(("payload", "match"), [
    (b"\x00\x01v", "too short"),
    (seal(b"\x00\x01v", version=0), "unsupported RDB version 0"),
    (seal(b"\x00\x01v", version=13), "unsupported RDB version 13"),
    (seal(b"\x00\x01v")[:-1] + b"\x00", "checksum mismatch"),
    (b"\x00\x01v" + struct.pack("<H", 9) + bytes(8), "checksum mismatch"),
    (seal(b"\x00\x01vX"), "1 unexpected bytes after the value"),
    (seal(b"\x00\x05v"), "runs past the end"),
    (seal(b"\x01\x01\x01a"), "type 1 \\(list\\)"),
    (seal(b"\x03\x01\x09" + b"\x00" * 9 + b"\x011"), "score is not 0"),
    (seal(b"\x03\x01\x01x\x010"), "shorter than a timestamp"),
    (seal(b"\x04\x02\x01a\x01b\x01a\x01b"), "duplicate hash field"),
])
def test_bad_payloads(payload: bytes, match: str) -> None:
    with pytest.raises(RdbParseError, match=match) as info:
        parse_dump(payload)
    assert info.value.offset is not None and 0 <= info.value.offset <= len(payload)


def test_zero_crc_only_on_request() -> None:
    payload = b"\x00\x01v" + struct.pack("<H", 6) + bytes(8)
    assert parse_dump(payload, allow_zero_crc=True) == (KeyType.IMMUTABLE, b"v")
    with pytest.raises(RdbParseError):
        parse_dump(payload)


def test_dump_validation() -> None:
    with pytest.raises(ValueError, match="empty zset"):
        dump_zset([])
    with pytest.raises(ValueError, match="out of order"):
        dump_zset(sensor(2)[::-1])
    with pytest.raises(ValueError, match="empty hash"):
        dump_hash({})


@pytest.mark.interop
def test_katsdptelstate_payloads() -> None:
    pytest.importorskip("katsdptelstate")
    from katsdptelstate import rdb_utility

    for kind, value in sample_state().values():
        if kind == KeyType.IMMUTABLE:
            theirs = rdb_utility.dump_string(value)
        elif kind == KeyType.MUTABLE:
            theirs = rdb_utility.dump_zset(value)
        else:
            theirs = rdb_utility.dump_hash(value)
        assert parse_dump(theirs, allow_zero_crc=True) == (kind, value)
        if theirs[0] in (0, 3, 4):      # same plain encoding: only the footer differs
            assert dump_value(kind, value)[:-10] == theirs[:-10]


@pytest.mark.redis
def test_restore_into_redis(redis_url: str, redis_server: Any) -> None:
    client = redis_server.client()
    state = sample_state()
    for key, (kind, value) in state.items():
        client.restore(key, 0, dump_value(kind, value))
    from _rdb_helpers import redis_state

    assert redis_state(client) == state
    assert client.object("encoding", b"sensor_1") == b"listpack"
    assert client.object("encoding", b"sensor_1000") == b"skiplist"
    bad = bytearray(dump_string(b"v"))
    bad[1] ^= 0x10
    with pytest.raises(Exception, match="checksum"):
        client.restore(b"bad", 0, bytes(bad))


@pytest.mark.redis
def test_parse_redis_dump_output(redis_url: str, redis_server: Any) -> None:
    client = redis_server.client()
    state = sample_state()
    state[b"compressible_sensor"] = (KeyType.MUTABLE, sensor(20, tag=b"\x00" * 100))
    state[b"int_hash"] = (KeyType.INDEXED, {b"a": b"1", b"b": b"-70000", b"c": b"2" * 18})
    state[b"int_string"] = (KeyType.IMMUTABLE, b"-123456")
    fill_redis(client, state)
    seen_types = set()
    for key, expected in state.items():
        payload = client.dump(key)
        seen_types.add(payload[0])
        assert parse_dump(payload) == expected, key
    assert {0, 4, 5, 16, 17} <= seen_types
