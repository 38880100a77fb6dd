"""CRC-64/Jones: catalogue vectors, chaining, and agreement with what Redis stores."""

from __future__ import annotations

import os
import struct

import pytest

from telstate_log.rdb._crc64 import CRC64_CHECK, Crc64, crc64


def _bitwise_crc64(data: bytes) -> int:
    """Independent slow reference: reflected polynomial, init 0, no final XOR."""
    poly = 0x95AC9329AC4BC9B5          # bit-reversed 0xad93d23594c935a9
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
    return crc


@pytest.mark.parametrize(("data", "expected"), [
    (b"", 0),
    (b"123456789", 0xE9C6D914C4B8D9CA),
    (b"a", _bitwise_crc64(b"a")),
    (bytes(range(256)) * 3, _bitwise_crc64(bytes(range(256)) * 3)),
])
def test_known_vectors(data: bytes, expected: int) -> None:
    assert crc64(data) == expected
    assert crc64(bytearray(data)) == expected
    assert crc64(memoryview(data)) == expected


def test_check_value_constant() -> None:
    assert crc64(b"123456789") == CRC64_CHECK == _bitwise_crc64(b"123456789")


def test_chaining_matches_one_shot() -> None:
    data = os.urandom(10_000)
    for cut in (0, 1, 7, 4096, 9999, 10_000):
        assert crc64(data[cut:], crc64(data[:cut])) == crc64(data)


def test_hasher() -> None:
    h = Crc64()
    assert h.value == 0
    for piece in (b"1234", b"", b"5", b"6789"):
        h.update(piece)
    assert h.value == CRC64_CHECK
    assert h.digest() == struct.pack("<Q", CRC64_CHECK)
    clone = h.copy()
    clone.update(b"x")
    assert h.value == CRC64_CHECK
    assert clone.value == crc64(b"123456789x")
    assert Crc64(b"123456789").value == CRC64_CHECK


def test_matches_redis_rdb_footer() -> None:
    """Redis' own file: the trailing 8 bytes are the CRC-64 of everything before."""
    from _rdb_helpers import GOLDEN_REDIS7

    data = GOLDEN_REDIS7.read_bytes()
    assert struct.unpack("<Q", data[-8:])[0] == crc64(data[:-8]) != 0
