"""RDB reader: golden files, every supported encoding, strictness, and real producers."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import pytest
from _rdb_helpers import (
    GOLDEN_KATSDPTELSTATE,
    GOLDEN_OURS,
    GOLDEN_REDIS7,
    aof_commands,
    fill_redis,
    golden_ours_state,
    golden_redis7_state,
    hash4,
    katsdptelstate_state,
    listpack,
    lp_int,
    lp_str,
    packed_record,
    rdb_file,
    read_state,
    rlen,
    rstr,
    sample_state,
    sensor,
    string_record,
    ziplist,
    zipmap,
    zl_int,
    zl_str,
    zset3,
    zset5,
)
from _redis import RedisServer, require_redis

from telstate_log.core._errors import RdbAofPreambleError, RdbParseError, RdbUnsupportedTypeError
from telstate_log.core._types import KeyType
from telstate_log.rdb._format import pack_member, split_member
from telstate_log.rdb._reader import RdbEntry, RdbReader, iter_rdb

M1, M2, M3 = (pack_member(t, b"\xff" + bytes([i])) for i, t in enumerate((1.0, 2.0, 3.0)))


def read(data: bytes) -> list[RdbEntry]:
    return list(iter_rdb(data))


def one(record: bytes, **kwargs: Any) -> Any:
    (entry,) = read(rdb_file(record, **kwargs))
    return entry.value


def fails(data: bytes, match: str) -> RdbParseError:
    with pytest.raises(RdbParseError, match=match) as info:
        read(data)
    assert info.value.offset is not None
    assert 0 <= info.value.offset <= len(data)
    return info.value


# --- golden files ---------------------------------------------------------------

def test_golden_redis7() -> None:
    assert read_state(GOLDEN_REDIS7) == golden_redis7_state()
    with RdbReader(GOLDEN_REDIS7) as reader:
        entries = list(reader)
        assert reader.version == 10
        assert reader.checksum_verified
        assert reader.aux[b"redis-ver"].startswith(b"7.")
        assert reader.aux[b"redis-bits"] == b"64"          # int-encoded AUX value
    assert {e.db for e in entries} == {0}


def test_golden_redis7_uses_the_encodings_it_is_meant_to_cover() -> None:
    data = GOLDEN_REDIS7.read_bytes()
    # Each key record is <type byte> <key as a plain string>; find the type bytes.
    types = {data[data.index(rstr(key)) - 1] for key in golden_redis7_state()}
    assert {0, 4, 5, 16, 17} <= types
    assert b"\xc3" in data                            # LZF somewhere
    assert rstr(b"int_mid") + b"\xc1" in data          # int-encoded string value


def test_golden_katsdptelstate() -> None:
    state = read_state(GOLDEN_KATSDPTELSTATE)
    with RdbReader(GOLDEN_KATSDPTELSTATE) as reader:
        list(reader)
        assert reader.version == 6
        assert not reader.checksum_verified
    assert state[b"sensor_3"][0] == KeyType.MUTABLE
    assert [split_member(m)[1] for m in state[b"sensor_64"][1]] == [1.7e9 + i for i in range(64)]
    assert state[b"table"][0] == KeyType.INDEXED and len(state[b"table"][1]) == 2


@pytest.mark.interop
def test_golden_katsdptelstate_matches_its_own_reader() -> None:
    pytest.importorskip("katsdptelstate")
    from katsdptelstate.memory import MemoryBackend

    backend = MemoryBackend()
    backend.load_from_file(str(GOLDEN_KATSDPTELSTATE))
    assert read_state(GOLDEN_KATSDPTELSTATE) == katsdptelstate_state(backend._data)


def test_golden_ours() -> None:
    assert read_state(GOLDEN_OURS) == golden_ours_state()


# --- sources ------------------------------------------------------------------------

def test_sources(tmp_path: Path) -> None:
    data = rdb_file(zset3(b"k", [M1, M2]))
    path = tmp_path / "x.rdb"
    path.write_bytes(data)
    expected = [RdbEntry(0, b"k", KeyType.MUTABLE, [M1, M2])]
    assert list(iter_rdb(path)) == expected
    assert list(iter_rdb(str(path))) == expected
    assert list(iter_rdb(io.BytesIO(data))) == expected
    with open(path, "rb") as f:
        assert list(iter_rdb(f)) == expected
    assert list(iter_rdb(bytearray(data))) == expected
    assert list(iter_rdb(memoryview(data))) == expected


def test_error_names_file_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.rdb"
    path.write_bytes(b"REDIS0009\xfe\x00\x01")
    with pytest.raises(RdbParseError) as info:
        list(iter_rdb(path))
    assert info.value.filename == str(path)
    assert "bad.rdb" in str(info.value) and "at byte" in str(info.value)
    path.write_bytes(b"")
    with pytest.raises(RdbParseError, match="no REDIS header"):
        list(iter_rdb(path))
    with pytest.raises(RdbParseError) as info:
        list(iter_rdb(b"junk", filename="named"))
    assert info.value.filename == "named"


def test_reader_iterates_once_and_closes_midway(tmp_path: Path) -> None:
    path = tmp_path / "x.rdb"
    path.write_bytes(rdb_file(zset3(b"a", [M1]) + zset3(b"b", [M2])))
    reader = RdbReader(path)
    it = iter(reader)
    assert next(it).key == b"a"
    with pytest.raises(RuntimeError):
        iter(reader)
    reader.close()
    reader.close()
    with pytest.raises(StopIteration):
        next(it)


# --- strings --------------------------------------------------------------------------

@pytest.mark.parametrize(("encoded", "text"), [
    (b"\xc0\x7f", b"127"), (b"\xc0\x80", b"-128"), (b"\xc1\x39\x30", b"12345"),
    (b"\xc1\x00\x80", b"-32768"), (b"\xc2\xff\xff\xff\x7f", b"2147483647"),
    (b"\xc2\x00\x00\x00\x80", b"-2147483648"),
    (rlen(3) + b"abc", b"abc"), (b"\x40\x03abc", b"abc"), (b"\x80\x00\x00\x00\x03abc", b"abc"),
    (b"\x81" + struct.pack(">Q", 3) + b"abc", b"abc"),
    (b"\xc3\x06\x0a\x02abc\xa0\x02", b"abcabcabca"),        # LZF
])
def test_string_encodings(encoded: bytes, text: bytes) -> None:
    (entry,) = read(rdb_file(b"\x00" + encoded + encoded))
    assert entry.key == text and entry.value == text and entry.kind == KeyType.IMMUTABLE


@pytest.mark.parametrize(("encoded", "match"), [
    (b"\xc4", "unknown string encoding"),
    (b"\x82", "invalid string length encoding"),
    (b"\x80\xff\xff\xff\xff", "runs past the end"),
    (b"\x81\x7f\xff\xff\xff\xff\xff\xff\xff", "runs past the end"),
    (b"\xc3\x03\x0a\x00abc", "bad LZF data"),
    (b"\xc3\x00\x00", "impossible LZF lengths"),
    (b"\xc3\x02\x80\x00\x01\x00\x00\x00ab", "impossible LZF lengths"),
    (b"\xc3\x02\x02\x20\x00", "before the start"),
    (b"\xc2\x01", "runs past the end"),
])
def test_bad_strings(encoded: bytes, match: str) -> None:
    fails(rdb_file(b"\x00\x01k" + encoded), match)


# --- zsets ----------------------------------------------------------------------------

def test_zset_plain_types_sort_members() -> None:
    assert one(zset3(b"z", [M3, M1, M2])) == [M1, M2, M3]
    assert one(zset5(b"z", [M1, M2, M3])) == [M1, M2, M3]       # stored descending
    for score in (b"0.0", b"-0", b"0e5", b"+0"):
        assert one(zset3(b"z", [M1], score)) == [M1]
    assert one(zset5(b"z", [M1], -0.0)) == [M1]


@pytest.mark.parametrize("binary", [False, True])
def test_zset_uniform_fast_path_falls_back(binary: bool) -> None:
    members = sensor(50)

    def record(odd_score: bytes) -> bytes:
        normal = bytes(8) if binary else b"\x010"
        return (bytes([5 if binary else 3]) + rstr(b"z") + rlen(50)
                + b"".join(rstr(m) + (odd_score if i == 30 else normal)
                           for i, m in enumerate(members)))

    assert one(record(bytes(8) if binary else b"\x010")) == members
    assert one(record(struct.pack("<d", -0.0) if binary else b"\x030.0")) == members
    fails(rdb_file(record(struct.pack("<d", 1.0) if binary else b"\x011")), "score is not 0")
    truncated = record(bytes(8) if binary else b"\x010")[:-20]
    fails(rdb_file(truncated, crc=False), "runs past the end|score|string encoding")


def test_zset_ragged_and_long_members() -> None:
    members = sorted([pack_member(5.0, b"x" * n) for n in (1, 62, 63, 64, 16383, 16384, 70000)])
    assert one(zset3(b"z", members)) == members


@pytest.mark.parametrize("record", [
    zset3(b"z", [M1], b"1"), zset3(b"z", [M1], b"nan"), zset3(b"z", [M1], b"0x0"),
    zset3(b"z", [M1], b" 0"), zset5(b"z", [M1], 1.0), zset5(b"z", [M1], float("nan")),
    b"\x03\x01z\x01" + rstr(M1) + b"\xfd", b"\x03\x01z\x01" + rstr(M1) + b"\xfe",
    packed_record(17, b"z", listpack([lp_str(M1), lp_int(1)])),
    packed_record(12, b"z", ziplist([zl_str(M1), zl_str(b"0.5")])),
])
def test_zset_scores_must_be_zero(record: bytes) -> None:
    fails(rdb_file(record), "score is not 0")


@pytest.mark.parametrize(("members", "match"), [
    ([M1, M1], "duplicate zset member"),
    ([b"\x00" * 8], "shorter than a timestamp"),
    ([b"short"], "shorter than a timestamp"),
    ([pack_member(1.0, b"x"), b"\x80" + bytes(7) + b"x"], "negative or non-finite"),   # -0.0
    ([struct.pack(">d", -1.0) + b"x"], "negative or non-finite"),
    ([struct.pack(">d", float("inf")) + b"x"], "negative or non-finite"),
    ([struct.pack(">d", float("nan")) + b"x"], "negative or non-finite"),
])
@pytest.mark.parametrize("writer", [zset3, zset5])
def test_zset_members_must_be_telstate_samples(members: list[bytes], match: str,
                                               writer: Any) -> None:
    fails(rdb_file(writer(b"z", members)), match)


def test_zset_listpack_and_ziplist() -> None:
    lp = listpack([lp_str(M2), lp_int(0), lp_str(M1), lp_int(0, "13bit")])
    assert one(packed_record(17, b"z", lp)) == [M1, M2]
    zl = ziplist([zl_str(M2), zl_int(0), zl_str(M1), zl_str(b"0")])
    assert one(packed_record(12, b"z", zl)) == [M1, M2]
    big = [pack_member(float(i), b"v" * 300) for i in range(3)]        # prevlen > 253
    zl = ziplist([e for m in big for e in (zl_str(m), zl_int(0))])
    assert one(packed_record(12, b"z", zl)) == big
    zl = ziplist([zl_str(M1), zl_int(0)], big_prevlen=True)           # 5-byte prevlen < 254
    assert one(packed_record(12, b"z", zl)) == [M1]


def test_empty_and_absurd_counts() -> None:
    fails(rdb_file(b"\x03\x01z\x00"), "empty zset")
    fails(rdb_file(b"\x04\x01h\x00"), "empty hash")
    fails(rdb_file(b"\x03\x01z\x80\xff\xff\xff\xff"), "cannot fit")
    fails(rdb_file(b"\x05\x01z\x0a" + rstr(M1) + bytes(8)), "cannot fit")
    fails(rdb_file(packed_record(17, b"z", listpack([]))), "expected a non-zero even")
    fails(rdb_file(packed_record(16, b"h", listpack([lp_str(b"a")]))), "expected a non-zero even")


# --- hashes ---------------------------------------------------------------------------

def test_hash_types() -> None:
    mapping = {b"a": b"1", b"": b"", b"\xff" * 100: b"x" * 20000}
    assert one(hash4(b"h", mapping)) == mapping
    lp = listpack([lp_str(b"f7"), lp_int(127, "7bit"), lp_str(b"f13"), lp_int(-4096, "13bit"),
                   lp_str(b"f16"), lp_int(-32768, "16"), lp_str(b"f24"), lp_int(8388607, "24"),
                   lp_str(b"f32"), lp_int(-2**31, "32"), lp_str(b"f64"), lp_int(2**63 - 1, "64"),
                   lp_str(b"s12"), lp_str(b"y" * 100), lp_str(b"s32"), lp_str(b"z" * 5000)])
    assert one(packed_record(16, b"h", lp)) == {
        b"f7": b"127", b"f13": b"-4096", b"f16": b"-32768", b"f24": b"8388607",
        b"f32": b"-2147483648", b"f64": b"9223372036854775807", b"s12": b"y" * 100,
        b"s32": b"z" * 5000}
    zl = ziplist([zl_str(b"i8"), zl_int(-5, "8"), zl_str(b"i16"), zl_int(-300, "16"),
                  zl_str(b"i24"), zl_int(70000, "24"), zl_str(b"i32"), zl_int(-2**31, "32"),
                  zl_str(b"i64"), zl_int(-2**63, "64"), zl_str(b"imm"), zl_int(12),
                  zl_str(b"s14"), zl_str(b"q" * 100), zl_str(b"s32"), zl_str(b"r" * 20000)])
    assert one(packed_record(13, b"h", zl)) == {
        b"i8": b"-5", b"i16": b"-300", b"i24": b"70000", b"i32": b"-2147483648",
        b"i64": b"-9223372036854775808", b"imm": b"12", b"s14": b"q" * 100,
        b"s32": b"r" * 20000}


def test_hash_duplicates() -> None:
    fails(rdb_file(b"\x04\x01h\x02\x01a\x01b\x01a\x01c"), "duplicate hash field")
    fails(rdb_file(packed_record(16, b"h", listpack([lp_str(b"a"), lp_int(1)] * 2))),
          "duplicate hash field")


# --- packed-blob strictness -----------------------------------------------------------

def _lp_ok() -> bytes:
    return listpack([lp_str(b"a"), lp_int(1)])


@pytest.mark.parametrize(("blob", "match"), [
    (listpack([lp_str(b"a"), lp_int(1)], count=3), "header says 3 entries"),
    (_lp_ok()[:-1] + b"\xfe", "does not end with 0xFF"),
    (struct.pack("<I", 99) + _lp_ok()[4:], "header says 99 bytes"),
    (listpack([lp_str(b"a")[:-1] + b"\x03", lp_int(1)]), "wrong back-length"),
    (listpack([lp_str(b"a"), b"\xf5\x01"]), "invalid listpack entry encoding"),
    (listpack([lp_str(b"a"), b"\xff\x01"]), "invalid listpack entry encoding"),
    (listpack([b"\x85ab\x06"]), "runs past the end"),
    (b"\x06\x00\x00\x00\x00\x00", "shorter than its header"),
])
def test_listpack_strictness(blob: bytes, match: str) -> None:
    fails(rdb_file(packed_record(16, b"h", blob)), match)


def test_listpack_unknown_count_accepted() -> None:
    assert one(packed_record(16, b"h", listpack([lp_str(b"a"), lp_int(1)], count=0xFFFF))) \
        == {b"a": b"1"}
    assert one(packed_record(13, b"h", ziplist([zl_str(b"a"), zl_int(1)], count=0xFFFF))) \
        == {b"a": b"1"}


def _zl_ok() -> bytes:
    return ziplist([zl_str(b"a"), zl_int(1)])


@pytest.mark.parametrize(("blob", "match"), [
    (ziplist([zl_str(b"a"), zl_int(1)], count=4), "header says 4 entries"),
    (_zl_ok()[:4] + struct.pack("<I", 10) + _zl_ok()[8:], "tail offset"),
    (_zl_ok()[:10] + b"\x05" + _zl_ok()[11:], "previous entry has 5 bytes"),
    (_zl_ok()[:-1] + b"\x00", "does not end with 0xFF"),
    (ziplist([zl_str(b"a"), b"\x90"]), "invalid ziplist entry encoding"),
    (ziplist([zl_str(b"a"), b"\x81\x00\x00\x00\x01x"]), "invalid ziplist entry encoding"),
    (ziplist([b"\x05ab"]), "runs past the end"),
    (ziplist([zl_str(b"a")]) [:-1] + b"\xff\xff", "header says"),
])
def test_ziplist_strictness(blob: bytes, match: str) -> None:
    fails(rdb_file(packed_record(13, b"h", blob)), match)


def test_packed_error_offsets_point_into_the_file() -> None:
    blob = listpack([lp_str(b"a"), b"\xf5\x01"])
    data = rdb_file(packed_record(16, b"h", blob))
    err = fails(data, "invalid listpack entry encoding")
    assert data[err.offset] == 0xF5


# --- zipmap (Redis 2.x hashes, RDB type 9) ----------------------------------------------

ZIPMAP_PAIRS = [(b"f1", b"v1"), (b"empty", b""), (b"long", b"x" * 300), (b"k" * 260, b"\xff\x01")]


@pytest.mark.parametrize("version", [1, 2, 3, 4, 6, 9])
def test_hash_zipmap(version: int) -> None:
    expected = dict(ZIPMAP_PAIRS)
    for blob in (zipmap(ZIPMAP_PAIRS), zipmap(ZIPMAP_PAIRS, free=3),
                 zipmap(ZIPMAP_PAIRS, big=True), zipmap(ZIPMAP_PAIRS, count=254)):
        (entry,) = read(rdb_file(packed_record(9, b"h", blob), version=version))
        assert (entry.kind, entry.value) == (KeyType.INDEXED, expected)


def test_hash_zipmap_of_254_pairs_or_more() -> None:
    pairs = [(b"f%03d" % i, b"%d" % i) for i in range(300)]
    assert one(packed_record(9, b"h", zipmap(pairs, count=254)), version=3) == dict(pairs)


_ZM_PAIR = b"\x01a\x01\x00b"          # field "a", value "b", no free bytes


@pytest.mark.parametrize(("blob", "match"), [
    (b"\x01", "shorter than its header"),
    (b"\x01" + _ZM_PAIR, "does not end with 0xFF"),
    (b"\x00\xff", "empty zipmap"),
    (b"\xfe\xff", "empty zipmap"),
    (b"\x02" + _ZM_PAIR + b"\xff", "header says 2 pairs, found 1"),
    (b"\x00" + _ZM_PAIR + b"\xff", "header says 0 pairs, found 1"),
    (b"\x01\x01a\xff", "truncated zipmap value"),
    (b"\x01\x01a\x01\xff", "truncated zipmap value"),
    (b"\x01\x01a\xff\x00b\xff", "invalid zipmap value length byte 0xff"),
    (b"\x01\x01a\x05\x00b\xff", "zipmap value runs past the end"),
    (b"\x01\x01a\x01\x09b\xff", "zipmap value runs past the end"),
    (b"\x01\x09a\xff", "zipmap field runs past the end"),
    (b"\x01\xfe\x01\x00\xff", "truncated zipmap field"),
    (b"\x01\x01a\xfe\x01\x00\x00\xff", "truncated zipmap value"),
    (b"\x01" + _ZM_PAIR + b"\xff\x00\xff", "ends at byte 6, 2 bytes before the end"),
])
def test_zipmap_strictness(blob: bytes, match: str) -> None:
    fails(rdb_file(packed_record(9, b"h", blob), version=3), match)


def test_zipmap_duplicates_and_offsets() -> None:
    fails(rdb_file(packed_record(9, b"h", zipmap([(b"a", b"1"), (b"a", b"2")])), version=3),
          "duplicate hash field")
    blob = b"\x01\x01a\xff\x00b\xff"
    data = rdb_file(packed_record(9, b"h", blob), version=3)
    err = fails(data, "value length byte")
    assert data[err.offset] == 0xFF and err.offset == data.index(blob) + 3


# --- types telescope state cannot hold ------------------------------------------------

@pytest.mark.parametrize(("rdb_type", "body", "name"), [
    (1, b"\x01\x01a", "list"),
    (2, b"\x01\x01a", "set"),
    (10, rstr(ziplist([zl_str(b"a"), zl_int(5)])), "list \\(ziplist\\)"),
    (11, rstr(b"\x02\x00\x00\x00\x01\x00\x00\x00\x07\x00"), "set \\(intset\\)"),
    (14, b"\x01" + rstr(ziplist([zl_str(b"a")])), "list \\(quicklist\\)"),
    (15, b"", "stream"),
    (18, b"", "list \\(quicklist v2\\)"),
    (20, rstr(listpack([lp_str(b"a")])), "set \\(listpack\\)"),
    (6, b"", "module"),
    (7, b"", "module"),
    (24, b"", "hash with field expiry"),
    (25, b"", "hash with field expiry"),
    (30, b"", "unknown"),
])
def test_types_telescope_state_cannot_hold(rdb_type: int, body: bytes, name: str) -> None:
    good = b"\x00" + rstr(b"before") + rstr(b"v")
    for version in (3, 9):
        data = rdb_file(good + bytes([rdb_type]) + rstr(b"the key") + body, version=version)
        err = fails(data, f"key b'the key' has type {rdb_type} \\({name}")
        assert isinstance(err, RdbUnsupportedTypeError)
        assert (err.key, err.rdb_type) == (b"the key", rdb_type)
        assert err.offset == data.index(b"\x07the key") - 1 and data[err.offset] == rdb_type
        assert "cannot hold" in str(err) and f"at byte {err.offset}" in str(err)


# --- append-only files with an RDB preamble ---------------------------------------------

AOF_TAIL = aof_commands((b"SELECT", b"0"), (b"SET", b"tail", b"2"))


@pytest.mark.parametrize(("version", "crc"), [(9, True), (9, False), (10, True), (4, False)])
def test_aof_with_rdb_preamble(version: int, crc: bool) -> None:
    preamble = rdb_file(string_record(b"pre", b"1"), version=version, crc=crc)
    data = preamble + AOF_TAIL
    err = fails(data, "append-only file, not a plain RDB file: an RDB preamble followed by "
                      "AOF commands")
    assert isinstance(err, RdbAofPreambleError)
    assert err.offset == len(preamble) and "checksum" not in str(err)
    assert read(preamble)[0].key == b"pre"          # the preamble alone is a fine RDB file


@pytest.mark.parametrize("lookalike", [
    b"\xff" + bytes(8) + b"*3\r\n$3\r\nSET",                  # EOF, zero CRC, an AOF command
    b"\xff" + bytes(8) + aof_commands((b"SET", b"k", b"v")),  # ... a whole command
])
def test_aof_lookalike_in_a_value_is_not_taken_for_a_preamble(lookalike: bytes) -> None:
    good = rdb_file(string_record(b"k", lookalike) + string_record(b"z", b"x"))
    bad = bytearray(good)
    bad[-12] ^= 1
    fails(bytes(bad), "checksum mismatch")
    assert read(good)[0].value == lookalike


def test_aof_tail_cut_short_is_still_recognised() -> None:
    preamble = rdb_file(string_record(b"pre", b"1"), crc=False)
    err = fails(preamble + AOF_TAIL[:-7], "RDB preamble followed by AOF commands")
    assert err.offset == len(preamble)


# --- opcodes, framing, versions ------------------------------------------------------

def test_opcodes_and_databases() -> None:
    body = (b"\xfa" + rstr(b"note") + b"\xc0\x05"
            + b"\xfb\x02\x00"
            + b"\xfc" + struct.pack("<q", 1_700_000_000_123) + b"\xf8\x05\xf9\x03"
            + zset3(b"a", [M1])
            + b"\xfd" + struct.pack("<i", 1_700_000_000) + b"\x00\x01s\x01v"
            + b"\xf5" + rstr(b"#!lua name=lib\n")
            + b"\xf4\x01\x02\x00"
            + b"\xfe\x03" + b"\x00\x01s\x01w" + b"\xfe\x40\x10" + b"\x00\x01s\x01x")
    with RdbReader(rdb_file(body)) as reader:
        entries = list(reader)
        assert reader.aux == {b"note": b"5"}
    assert entries == [RdbEntry(0, b"a", KeyType.MUTABLE, [M1], 1_700_000_000_123),
                       RdbEntry(0, b"s", KeyType.IMMUTABLE, b"v", 1_700_000_000_000),
                       RdbEntry(3, b"s", KeyType.IMMUTABLE, b"w"),
                       RdbEntry(16, b"s", KeyType.IMMUTABLE, b"x")]


@pytest.mark.parametrize(("body", "match"), [
    (b"\xfc" + bytes(8) + b"\xfe\x00", "not followed by a key"),
    (b"\xf8\x05", "not followed by a key"),
    (b"\xf7\x01", "module auxiliary data"),
    (b"\xf6\x01", "pre-release function"),
    (b"\x00\x01k\x01v\x00\x01k\x01w", "duplicate key b'k' in database 0"),
    (b"\xf3\x01k", "type 243"),
    (b"\x01\x01q\x01\x01a", "key b'q' has type 1 \\(list\\)"),
    (b"\x02\x01q\x01\x01a", "type 2 \\(set\\)"),
    (b"\x0f\x01q", "stream"),
    (b"\x07\x01q", "module"),
    (b"\x00\x01k\x05ab", "runs past the end"),
])
def test_bad_records(body: bytes, match: str) -> None:
    fails(rdb_file(body), match)


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
def test_versions(version: int) -> None:
    assert read(rdb_file(zset3(b"z", [M1]), version=version))[0].value == [M1]
    assert read(rdb_file(zset3(b"z", [M1]), version=version, crc=False))[0].value == [M1]


@pytest.mark.parametrize(("data", "match"), [
    (b"REDIS0013\xfe\x00\xff" + bytes(8), "unsupported RDB version"),
    (b"REDIS0000\xfe\x00\xff" + bytes(8), "unsupported RDB version"),
    (b"REDIS00a9\xfe\x00\xff" + bytes(8), "unsupported RDB version"),
    (b"RODIS0009\xfe\x00\xff" + bytes(8), "no REDIS header"),
    (b"REDIS0009\xff", "too short"),
    (b"REDIS0009\xfe\x00\xff" + bytes(9), "unexpected bytes after EOF"),
    (b"REDIS0004\xfe\x00\xff\x00", "unexpected bytes after EOF"),
    (b"REDIS0004\xfe\x00", "truncated before EOF"),
    (b"REDIS0009\xfe\x00\x00\x01k\x01v" + bytes(8), "truncated before EOF"),
])
def test_framing(data: bytes, match: str) -> None:
    fails(data, match)


def test_checksum() -> None:
    good = rdb_file(zset3(b"z", [M1]))
    bad = bytearray(good)
    bad[-12] ^= 1
    err = fails(bytes(bad), "checksum mismatch")
    assert err.offset == len(good) - 8
    with RdbReader(good) as reader:
        assert reader.checksum_verified
    with RdbReader(rdb_file(zset3(b"z", [M1]), crc=False)) as reader:
        assert not reader.checksum_verified


# --- real producers -----------------------------------------------------------------

@pytest.mark.interop
def test_katsdptelstate_rdbwriter_output(tmp_path: Path) -> None:
    katsdptelstate = pytest.importorskip("katsdptelstate")
    from katsdptelstate.rdb_writer import RDBWriter

    telstate = katsdptelstate.TelescopeState()
    telstate["int_attr"] = 12345
    telstate["str_attr"] = "x" * 1000
    telstate["array"] = list(range(100))
    for n in (1, 63, 64, 1000):
        for i in range(n):
            telstate.add(f"sensor_{n}", {"i": i, "pad": "p" * (i % 9)}, ts=1.6e9 + i * 0.1)
    telstate.add("sensor_zero_ts", 1.0, ts=0.0)
    for i in range(300):
        telstate.set_indexed("small_index" if i < 5 else "big_index", f"sub{i}", i)
    path = tmp_path / "katsdptelstate.rdb"
    with RDBWriter(path) as writer:
        writer.save(telstate)
    expected = katsdptelstate_state(telstate.backend._data)
    assert read_state(path) == expected


@pytest.mark.redis
def test_redis_server_save(fresh_redis: Any) -> None:
    state = sample_state(big=True)
    state[b"sensor_long_lzf"] = (KeyType.MUTABLE, sensor(10, tag=b"\x00" * 500))
    state[b"table_lzf"] = (KeyType.INDEXED, {b"f": b"a" * 1000, b"g": b"12"})
    client = fresh_redis.client()
    fill_redis(client, state)
    client.save()
    path = fresh_redis.dir / fresh_redis.dbfilename
    with RdbReader(path) as reader:
        got = {e.key: (e.kind, e.value) for e in reader}
        assert reader.version == 10 and reader.checksum_verified
    assert got == state


def _loaded_by_redis(directory: Path, name: str, data: bytes,
                     extra: tuple[str, ...] = ()) -> dict[bytes, tuple[bytes, Any]]:
    """What a redis-server 7 started on `data` (as ``directory/name``) holds: type and value."""
    require_redis()
    (directory / name).write_bytes(data)
    server = RedisServer(directory, dbfilename=name, extra_args=extra).start()
    try:
        client = server.client()
        held: dict[bytes, tuple[bytes, Any]] = {}
        for key in client.keys(b"*"):
            kind = client.type(key)
            value = {b"string": client.get, b"hash": client.hgetall,
                     b"list": lambda k: client.lrange(k, 0, -1),
                     b"set": client.smembers}[kind](key)
            held[key] = (kind, value)
        return held
    finally:
        server.cleanup()


@pytest.mark.redis
def test_redis_server_reads_the_obsolete_encodings_as_we_do(tmp_path: Path) -> None:
    """A version-3 file with a zipmap hash, a ziplist list and an intset set: redis-server
    7 loads all three; we import the hash and name the other two."""
    hash_record = packed_record(9, b"zm", zipmap(ZIPMAP_PAIRS, free=2))
    data = rdb_file(hash_record, version=3)
    assert _loaded_by_redis(tmp_path, "zipmap.rdb", data) == {
        b"zm": (b"hash", dict(ZIPMAP_PAIRS))}
    assert read(data)[0].value == dict(ZIPMAP_PAIRS)
    others = (packed_record(10, b"zl", ziplist([zl_str(b"a"), zl_int(5)]))
              + packed_record(11, b"is", b"\x02\x00\x00\x00\x02\x00\x00\x00\x07\x00\x09\x00"))
    data = rdb_file(hash_record + others, version=3)
    assert _loaded_by_redis(tmp_path, "others.rdb", data) == {
        b"zm": (b"hash", dict(ZIPMAP_PAIRS)), b"zl": (b"list", [b"a", b"5"]),
        b"is": (b"set", {b"7", b"9"})}
    err = fails(data, "type 10")
    assert isinstance(err, RdbUnsupportedTypeError) and err.key == b"zl"


@pytest.mark.interop
def test_katsdptelstate_reads_a_zipmap_as_we_do() -> None:
    pytest.importorskip("katsdptelstate")
    from katsdptelstate.memory import MemoryBackend

    data = rdb_file(packed_record(9, b"zm", zipmap(ZIPMAP_PAIRS, free=1)), version=3)
    theirs = MemoryBackend()
    assert theirs.load_from_file(io.BytesIO(data)) == 1
    assert katsdptelstate_state(theirs._data) == read_state(data)


@pytest.mark.redis
def test_redis_server_loads_the_preamble_file_as_an_aof(tmp_path: Path) -> None:
    """The AOF-with-preamble test file is what redis-server 7 takes for one."""
    data = rdb_file(string_record(b"pre", b"1")) + AOF_TAIL
    held = _loaded_by_redis(tmp_path, "appendonly.aof", data,
                            ("--appendonly", "yes", "--appendfilename", "appendonly.aof"))
    assert held == {b"pre": (b"string", b"1"), b"tail": (b"string", b"2")}
    assert isinstance(fails(data, "AOF commands"), RdbAofPreambleError)


@pytest.mark.interop
def test_the_new_rdb_errors_are_katsdptelstate_rdb_parse_errors() -> None:
    """Code that catches katsdptelstate's RdbParseError catches them too."""
    theirs = pytest.importorskip("katsdptelstate.errors")
    for data, ours in ((rdb_file(b"\x01" + rstr(b"l") + b"\x01\x01a"), RdbUnsupportedTypeError),
                       (rdb_file(string_record(b"k", b"v")) + AOF_TAIL, RdbAofPreambleError)):
        with pytest.raises(theirs.RdbParseError) as info:
            read(data)
        assert isinstance(info.value, ours) and isinstance(info.value, RdbParseError)
