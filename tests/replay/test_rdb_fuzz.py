"""Fuzzing the RDB reader and DUMP parser: truncations, byte flips, hostile lengths.

Every damaged input must either raise RdbParseError, or -- only where no
checksum protects it -- parse; never another exception, never a hang, never
an allocation far beyond the input.  Checksummed inputs must always fail.
"""

from __future__ import annotations

import random
import struct
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from _rdb_helpers import (
    GOLDEN_KATSDPTELSTATE,
    GOLDEN_OURS,
    GOLDEN_REDIS7,
    hash4,
    listpack,
    lp_int,
    lp_str,
    packed_record,
    rdb_file,
    rstr,
    sensor,
    ziplist,
    zipmap,
    zl_int,
    zl_str,
    zset3,
    zset5,
)

from telstate_log.core._errors import RdbParseError
from telstate_log.rdb._dump import dump_hash, dump_string, dump_zset, parse_dump
from telstate_log.rdb._reader import iter_rdb

CASE_SECONDS = 1.0
FLIPS_PER_FILE = 1000


def _zero_crc(data: bytes) -> bytes:
    return data[:-8] + bytes(8)


def _hand_built(crc: bool) -> bytes:
    members = sensor(6)
    body = (b"\xfa" + rstr(b"redis-ver") + rstr(b"7.0.15")
            + zset3(b"z3", members[:3]) + zset5(b"z5", members)
            + packed_record(17, b"zlp", listpack([e for m in members
                                                  for e in (lp_str(m), lp_int(0))]))
            + packed_record(12, b"zzl", ziplist([e for m in members
                                                 for e in (zl_str(m), zl_int(0))]))
            + packed_record(16, b"hlp", listpack([lp_str(b"a"), lp_int(-3000), lp_str(b"b"),
                                                  lp_str(b"x" * 70)]))
            + packed_record(13, b"hzl", ziplist([zl_str(b"a"), zl_int(70000, "24")]))
            + packed_record(9, b"hzm", zipmap([(b"a", b"1"), (b"long", b"y" * 300)], free=1))
            + hash4(b"h4", {b"f": b"v", b"g": b"\xc0"})
            + b"\x00" + rstr(b"lzf") + b"\xc3\x06\x0a\x02abc\xa0\x02"
            + b"\x00\x03int\xc1\x39\x30")
    return rdb_file(body, crc=crc)


def _corpus() -> list[tuple[str, bytes, bool]]:
    """(name, data, checksummed) for each valid file we damage."""
    ours = GOLDEN_OURS.read_bytes()
    redis7 = GOLDEN_REDIS7.read_bytes()
    return [
        ("ours", ours, True), ("ours-nocrc", _zero_crc(ours), False),
        ("redis7", redis7, True), ("redis7-nocrc", _zero_crc(redis7), False),
        ("katsdptelstate", GOLDEN_KATSDPTELSTATE.read_bytes(), False),
        ("hand", _hand_built(True), True), ("hand-nocrc", _hand_built(False), False),
    ]


def _timed(func: Callable[[], Any]) -> Any:
    start = time.process_time()   # CPU time: other processes' load does not stretch it
    try:
        return func()
    finally:
        assert time.process_time() - start < CASE_SECONDS


def _parse(data: bytes) -> list[Any] | None:
    """Entries, or None if the reader refused the data with RdbParseError."""
    try:
        return _timed(lambda: list(iter_rdb(data)))
    except RdbParseError as exc:
        assert exc.offset is not None and 0 <= exc.offset <= len(data), exc
        return None


def _cut_points(size: int, rng: random.Random) -> list[int]:
    if size <= 2500:
        return list(range(size))
    return sorted(set(range(600)) | set(range(size - 600, size))
                  | set(rng.sample(range(size), 900)))


@pytest.mark.parametrize(("name", "data", "checksummed"), _corpus(),
                         ids=[c[0] for c in _corpus()])
def test_truncations(name: str, data: bytes, checksummed: bool) -> None:
    rng = random.Random(name)
    assert _parse(data) is not None
    for cut in _cut_points(len(data), rng):
        assert _parse(data[:cut]) is None, cut


@pytest.mark.parametrize(("name", "data", "checksummed"),
                         [c for c in _corpus() if not c[2]], ids=[c[0] for c in _corpus()
                                                                   if not c[2]])
def test_truncated_body_with_valid_framing(name: str, data: bytes, checksummed: bool) -> None:
    """Cut the records short but keep EOF and a zero CRC: the parser itself must notice."""
    rng = random.Random(name)
    full = _parse(data)
    assert full is not None
    trailer = b"\xff" + (bytes(8) if data[5:9] >= b"0005" else b"")
    body = data[:len(data) - len(trailer)]
    for cut in _cut_points(len(body), rng):
        entries = _parse(body[:cut] + trailer)
        # Cutting exactly between records yields a shorter, valid file.
        assert entries is None or entries == full[:len(entries)], cut


@pytest.mark.parametrize(("name", "data", "checksummed"), _corpus(),
                         ids=[c[0] for c in _corpus()])
def test_byte_flips(name: str, data: bytes, checksummed: bool) -> None:
    rng = random.Random(f"flip-{name}")
    for _ in range(FLIPS_PER_FILE):
        damaged = bytearray(data)
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            damaged[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        result = _parse(bytes(damaged))
        if checksummed:
            assert result is None, "a flip in a checksummed file went unnoticed"


def test_dump_payload_damage() -> None:
    rng = random.Random(5)
    payloads = [dump_string(b"\xff" * 50), dump_zset(sensor(70)), dump_hash({b"a": b"b"})]
    for payload in payloads:
        for cut in range(len(payload)):
            with pytest.raises(RdbParseError):
                _timed(lambda p=payload[:cut]: parse_dump(p))
        for _ in range(300):
            damaged = bytearray(payload)
            damaged[rng.randrange(len(payload))] ^= rng.randrange(1, 256)
            with pytest.raises(RdbParseError):
                _timed(lambda d=bytes(damaged): parse_dump(d))


_HUGE32 = b"\x80\xff\xff\xff\xff"
_HUGE64 = b"\x81\x7f\xff\xff\xff\xff\xff\xff\xff"


@pytest.mark.parametrize("body", [
    b"\x00\x01k" + _HUGE32 + b"x" * 50,                       # string of 4 GiB
    b"\x00" + _HUGE64 + b"x" * 50,                            # key of 2**63 bytes
    b"\x03\x01z" + _HUGE32 + rstr(b"\x00" * 9) + b"\x010",    # zset of 4 billion members
    b"\x05\x01z" + _HUGE64 + rstr(b"\x00" * 9) + bytes(8),
    b"\x04\x01h" + _HUGE32 + b"\x01a\x01b",                    # hash of 4 billion fields
    b"\x00\x01k\xc3\x05" + _HUGE32 + b"\x04abcde",             # LZF claiming 4 GiB output
    b"\x00\x01k\xc3" + _HUGE32 + b"\x05" + b"\x04abcde",        # LZF input of 4 GiB
    b"\x10\x01h" + rstr(struct.pack("<IH", 0xFFFFFFFF, 0xFFFF) + b"\x81a\x02\xff"),
    b"\x0d\x01h" + rstr(struct.pack("<IIH", 0xFFFFFFFF, 10, 0xFFFF) + b"\xff"),
    b"\x11\x01z\xc3\x10\x40\xff" + b"\x1f" + bytes(32),       # LZF listpack, huge ulen
    b"\xfa" + _HUGE32 + b"\x00",                              # AUX name of 4 GiB
    b"\xfe" + _HUGE64,                                        # database 2**63-1
])
def test_hostile_lengths_fail_fast_without_allocating(body: bytes) -> None:
    data = rdb_file(body, crc=False)
    tracemalloc.start()
    try:
        start = time.process_time()
        entries = _parse(data)
        elapsed = time.process_time() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert entries is None or entries == []
    assert elapsed < 0.1
    assert peak < 100_000 + 100 * len(data), peak
