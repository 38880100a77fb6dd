"""LZF decompression: round trips against python-lzf and hostile streams."""

from __future__ import annotations

import os
import random
import time

import pytest

from telstate_log.rdb._lzf import MAX_RATIO, LzfError, lzf_decompress


def _samples() -> list[bytes]:
    rng = random.Random(7)
    out = [b"a", b"ab" * 3, b"\x00" * 1000, os.urandom(5000), b"telescope state " * 300]
    for _ in range(300):
        n = rng.randint(1, 3000)
        alphabet = bytes(rng.sample(range(256), rng.randint(1, 6)))
        out.append(bytes(rng.choice(alphabet) for _ in range(n)))
    return out


@pytest.mark.interop
def test_round_trip_against_python_lzf() -> None:
    lzf = pytest.importorskip("lzf")
    for data in _samples():
        packed = lzf.compress(data, len(data) + len(data) // 16 + 64)
        assert packed is not None
        assert lzf_decompress(packed, len(data)) == data
        assert lzf_decompress(bytearray(packed), len(data)) == data
        assert lzf_decompress(memoryview(packed), len(data)) == data


def test_hand_made_streams() -> None:
    # literal "abc", then a back-reference of length 3 at distance 3 -> "abcabc"
    assert lzf_decompress(b"\x02abc\x20\x02", 6) == b"abcabc"
    # overlapping run: literal "a", then length 9 at distance 1 -> 10 x "a"
    assert lzf_decompress(b"\x00a\xe0\x00\x00", 10) == b"a" * 10
    # long back-reference: 7 + 255 + 2 = 264 bytes copied from distance 1
    assert lzf_decompress(b"\x00z\xe0\xff\x00", 265) == b"z" * 265
    # period-2 overlap: "ab" then length 7 at distance 2
    assert lzf_decompress(b"\x01ab\xa0\x01", 9) == b"ababababa"


@pytest.mark.parametrize(("stream", "length", "reason"), [
    (b"\x20\x00", 3, "before the start"),             # reference with empty output
    (b"\x02abc\x20\x05", 6, "before the start"),      # distance 6 > 3 bytes produced
    (b"\x05abc", 6, "past the end of the input"),     # literal run too long
    (b"\x02abc", 2, "exceed the expected length"),    # literal overruns output
    (b"\x00a\xe0\x00\x00", 5, "exceed the expected length"),  # reference overruns
    (b"\x02abc", 4, "expected 4"),                    # ends short
    (b"\x00a\xe0", 10, "truncated back-reference"),
    (b"\x00a\x20", 10, "truncated back-reference"),
    (b"", 1, "impossible"),
    (b"\x00a", MAX_RATIO * 2 + 1, "impossible"),
    (b"\x00a", -1, "impossible"),
])
def test_hostile_streams(stream: bytes, length: int, reason: str) -> None:
    with pytest.raises(LzfError, match=reason) as info:
        lzf_decompress(stream, length)
    assert isinstance(info.value, ValueError)
    assert 0 <= info.value.offset <= len(stream)


def test_random_garbage_is_bounded() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        stream = rng.randbytes(rng.randint(0, 60))
        expected = rng.randint(0, 2000)
        try:
            out = lzf_decompress(stream, expected)
        except LzfError:
            continue
        assert len(out) == expected


def test_large_runs_are_fast() -> None:
    # 1 MB of one byte: ~4000 maximal back-references, each expanded by slicing.
    stream = b"\x00q" + b"\xe0\xff\x00" * 3972
    length = 1 + 264 * 3972
    start = time.process_time()   # CPU time: other processes' load does not stretch it
    assert lzf_decompress(stream, length) == b"q" * length
    assert time.process_time() - start < 1.0
