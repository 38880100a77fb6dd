"""The reader's shortcuts for small keys decode exactly what the general code does.

* ``uniform_packed_zset``: ziplists/listpacks of equal-width members with
  integer-0 scores are checked whole against their members (layouts seen
  before are remembered); anything else (including any corruption) must
  fall back to the entry-by-entry decoders, so a blob the shortcut accepts
  must be one the decoders accept with the same members.
* ``RdbReader.blocks``: the same entries and errors as iterating the
  reader, with such zsets as one joined blob.
* ``_Cursor.raw_string``: plain strings with 6- and 14-bit lengths are read
  inline; errors still come from the general path, with the same offsets.
* ``_rdb_load``: short zsets are handed to the write path as lists.
"""

from __future__ import annotations

import io
import random
import struct

import numpy as np
import pytest
from _rdb_helpers import (
    GOLDEN_KATSDPTELSTATE,
    GOLDEN_OURS,
    GOLDEN_REDIS7,
    listpack,
    lp_int,
    lp_str,
    packed_record,
    rdb_file,
    rstr,
    ziplist,
    zl_int,
    zl_str,
    zset3,
)

from telstate_log.backends import MemoryBackend
from telstate_log.core._errors import RdbParseError
from telstate_log.rdb import _format as fmt
from telstate_log.rdb._format import pack_member
from telstate_log.rdb._reader import RdbReader, decode_value, iter_rdb


def members(n: int, width: int, seed: int = 0) -> list[bytes]:
    """`n` distinct sorted members of `width` bytes."""
    assert n < 256 ** width
    rng = random.Random(seed)
    out: set[bytes] = set()
    while len(out) < n:
        out.add(rng.randbytes(width))
    return sorted(out)


def packed(ms: list[bytes], zip_: bool, count: int | None = None,
           score: bytes | None = None) -> bytes:
    if zip_:
        zero = zl_int(0) if score is None else score
        return ziplist([e for m in ms for e in (zl_str(m), zero)],
                       count=None if count is None else count)
    zero = lp_int(0) if score is None else score
    return listpack([e for m in ms for e in (lp_str(m), zero)],
                    count=None if count is None else count)


def slow(blob: bytes, zip_: bool) -> list[bytes]:
    entries = fmt.ziplist_entries(blob) if zip_ else fmt.listpack_entries(blob)
    assert entries and len(entries) % 2 == 0
    assert all(fmt.is_zero_score(s) for s in entries[1::2])
    return entries[0::2]


@pytest.mark.parametrize("zip_", [True, False])
@pytest.mark.parametrize("width", [1, 9, 18, 63])
@pytest.mark.parametrize("n", [1, 2, 10, 128, 129, 300])
def test_uniform_blobs_match_the_decoders(zip_: bool, width: int, n: int) -> None:
    ms = members(min(n, 256 ** width - 1), width, seed=width * 1000 + n)
    for count in (None, 0xFFFF):
        blob = packed(ms, zip_, count)
        assert fmt.uniform_packed_zset(blob, zip_) == slow(blob, zip_) == ms


@pytest.mark.parametrize("zip_", [True, False])
def test_other_blobs_are_left_to_the_decoders(zip_: bool) -> None:
    ms = members(5, 18)
    mixed = [*ms[:2], b"x" * 17, *ms[3:]]
    not_zero = zl_int(1) if zip_ else lp_int(1)
    wide_zero = zl_int(0, "8") if zip_ else lp_int(0, "16")
    text_zero = zl_str(b"0") if zip_ else lp_str(b"0")
    for blob in (packed(mixed, zip_), packed(ms, zip_, score=not_zero),
                 packed(ms, zip_, score=wide_zero), packed(ms, zip_, score=text_zero),
                 packed(members(3, 64), zip_), packed(ms, zip_, count=9)):
        assert fmt.uniform_packed_zset(blob, zip_) is None
    int_member = ziplist([zl_int(12), zl_int(0)]) if zip_ else listpack([lp_int(12), lp_int(0)])
    assert fmt.uniform_packed_zset(int_member, zip_) is None
    assert fmt.uniform_packed_zset(ziplist([zl_str(m) for m in ms]), True) is None
    big_prevlen = ziplist([e for m in ms for e in (zl_str(m), zl_int(0))], big_prevlen=True)
    assert fmt.uniform_packed_zset(big_prevlen, True) is None
    assert fmt.uniform_packed_zset(b"", zip_) is None


@pytest.mark.parametrize("zip_", [True, False])
def test_damaged_uniform_blobs(zip_: bool) -> None:
    """A blob the shortcut accepts is valid and decodes to the same members."""
    rng = random.Random(7 + zip_)
    for trial in range(3000):
        width = rng.choice([1, 2, 9, 18])
        blob = bytearray(packed(members(rng.randint(1, 6), width, seed=trial), zip_))
        edit = rng.random()
        if edit < 0.7:
            for _ in range(rng.randint(1, 2)):
                blob[rng.randrange(len(blob))] = rng.choice([0, 1, 2, 0x80 | width, width + 1,
                                                             width + 2, 0xF1, 0xFF,
                                                             rng.randrange(256)])
        elif edit < 0.85:
            del blob[rng.randrange(len(blob)):][:rng.randint(1, 4)]
        else:
            at = rng.randrange(len(blob))
            blob[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        data = bytes(blob)
        fast = fmt.uniform_packed_zset(data, zip_)
        if fast is not None:
            entries = fmt.ziplist_entries(data) if zip_ else fmt.listpack_entries(data)
            assert entries[0::2] == fast
            assert entries[1::2] == [b"0"] * len(fast)


def test_reader_uses_both_paths_alike() -> None:
    good = [pack_member(1.0 + i, b"\xff\xcb" + bytes(8)) for i in range(12)]
    ragged = [*good[:5], pack_member(99.0, b"\xff\x01")]
    for rdb_type, zip_ in ((12, True), (17, False)):
        for ms in (good, ragged, good[::-1]):
            (entry,) = iter_rdb(rdb_file(packed_record(rdb_type, b"z", packed(ms, zip_))))
            assert entry.value == sorted(ms)
        dup = packed([good[0], good[0]], zip_)
        with pytest.raises(RdbParseError, match="duplicate zset member"):
            list(iter_rdb(rdb_file(packed_record(rdb_type, b"z", dup))))
        short = packed([b"\x00" * 8], zip_)
        with pytest.raises(RdbParseError, match="shorter than a timestamp"):
            list(iter_rdb(rdb_file(packed_record(rdb_type, b"z", short))))


@pytest.mark.parametrize("size", [0, 1, 63, 64, 300, 16383, 16384, 70000])
def test_plain_strings(size: int) -> None:
    value = bytes(i % 251 for i in range(size))
    (entry,) = iter_rdb(rdb_file(b"\x00" + rstr(b"k" * 63) + rstr(value)))
    assert entry.key == b"k" * 63 and entry.value == value


@pytest.mark.parametrize("size", [5, 63, 64, 16383])
def test_truncated_strings_report_the_data_offset(size: int) -> None:
    data = rstr(bytes(size))
    prefix = len(data) - size
    with pytest.raises(RdbParseError, match=f"string \\({size} bytes\\) runs past") as info:
        decode_value(data, 0, len(data) - 1, fmt.TYPE_STRING)       # one byte missing
    assert info.value.offset == prefix
    if prefix == 2:                                                 # 14-bit length cut short
        with pytest.raises(RdbParseError, match="string length") as info:
            decode_value(data, 0, 1, fmt.TYPE_STRING)
        assert info.value.offset == 1
    assert decode_value(data, 0, len(data), fmt.TYPE_STRING)[1:] == (bytes(size), len(data))


@pytest.mark.parametrize("n", [1, 10, 32, 33, 200])
def test_import_of_short_and_long_zsets(n: int) -> None:
    # Values ending in NUL bytes must survive the fixed-width record split.
    tail_zero = [pack_member(1.0 + i, b"\xff\xcb" + bytes(7) + bytes([i % 2])) for i in range(n)]
    ragged = [pack_member(1.0 + i, b"\xff" + b"\x00" * (i % 3 + 1)) for i in range(n)]
    body = zset3(b"fixed", tail_zero) + zset3(b"ragged", ragged)
    packed_small = packed(tail_zero[:min(n, 60)], True)
    body += packed_record(12, b"packed", packed_small)
    backend = MemoryBackend()
    assert backend.load_from_file(io.BytesIO(rdb_file(body))) == 3
    for key, ms in ((b"fixed", tail_zero), (b"ragged", ragged), (b"packed", tail_zero[:60])):
        expected = [(m[8:], struct.unpack(">d", m[:8])[0]) for m in ms]
        assert backend.get_range(key, 0, np.inf, False, False) == expected
    before = backend.position
    assert backend.load_from_file(io.BytesIO(rdb_file(body))) == 3          # re-import: no-op
    assert backend.position == before


def _outcome(data: bytes, blocks: bool) -> object:
    """The entries of `data` (blocks split back into members) or the error."""
    try:
        with RdbReader(data) as reader:
            if not blocks:
                return [tuple(entry) for entry in reader]
            found = []
            for db, key, kind, value, expires in reader.blocks(lambda *block: block):
                if isinstance(value, tuple):
                    joined, width, count = value
                    assert len(joined) == width * count and count > 0
                    value = [joined[i:i + width] for i in range(0, len(joined), width)]
                found.append((db, key, kind, value, expires))
            return found
    except RdbParseError as exc:
        return type(exc), str(exc), exc.offset


def _sensors_file(rng: random.Random) -> bytes:
    body = b""
    for k in range(6):
        ms = [pack_member(10.0 * k + i, b"\xff\xcb" + rng.randbytes(8)) for i in range(4)]
        zip_ = k % 2 == 0
        body += packed_record(12 if zip_ else 17, b"s%d" % k, packed(ms, zip_))
    return rdb_file(body, crc=False)


def test_blocks_give_what_iteration_gives() -> None:
    rng = random.Random(11)
    corpus = [GOLDEN_OURS.read_bytes(), GOLDEN_REDIS7.read_bytes(),
              GOLDEN_KATSDPTELSTATE.read_bytes(), _sensors_file(rng)]
    corpus[:2] = [data[:-8] + bytes(8) for data in corpus[:2]]       # no CRC: flips parse
    for data in corpus:
        assert _outcome(data, True) == _outcome(data, False)
        for _ in range(400):
            damaged = bytearray(data)
            for _ in range(rng.choice((1, 1, 2))):
                damaged[rng.randrange(9, len(data))] ^= rng.randrange(1, 256)
            assert _outcome(bytes(damaged), True) == _outcome(bytes(damaged), False)


def test_blocks_only_for_valid_ordered_zsets() -> None:
    good = [pack_member(1.0 + i, b"\xff\xcb" + bytes(8)) for i in range(5)]
    body = packed_record(12, b"ordered", packed(good, True)) \
        + packed_record(17, b"reversed", packed(good[::-1], False))
    with RdbReader(rdb_file(body)) as reader:
        values = {key: value for _, key, _, value, _ in reader.blocks(lambda *b: b)}
    assert values == {b"ordered": (b"".join(good), 18, 5), b"reversed": good}
    negative = [*good, struct.pack(">d", -1.0) + b"\xff\xcb" + bytes(8)]   # in byte order
    body += packed_record(12, b"negative", packed(negative, True))
    with pytest.raises(RdbParseError, match="negative or non-finite timestamp"), \
            RdbReader(rdb_file(body)) as reader:
        list(reader.blocks(lambda *b: b))


@pytest.mark.parametrize("zip_", [True, False])
def test_remembered_layout_still_checks_every_byte(zip_: bool) -> None:
    ms = members(3, 18, seed=5)
    blob = packed(ms, zip_)
    assert fmt.uniform_packed_zset(blob, zip_) == ms           # the layout is now known
    prefix = 12 if zip_ else 7
    for at in range(prefix, len(blob)):
        for flip in (1, 0x80):
            damaged = bytearray(blob)
            damaged[at] ^= flip
            fast = fmt.uniform_packed_zset(bytes(damaged), zip_)
            starts = range(prefix, len(blob) - 1, 22)     # first byte of each member
            member = any(s <= at < s + 18 for s in starts)
            assert (fast is not None) == member, at
