"""Shared data and helpers for the RDB/DUMP codec tests (and golden-file generation).

Run ``PYTHONPATH=. python tests/replay/_rdb_helpers.py`` to regenerate the golden files in
tests/data/rdb/ (see the README there); the katsdptelstate and redis-server
files need katsdptelstate and /usr/bin/redis-server.
"""

from __future__ import annotations

import io
import os
import random
import struct
import sys
from pathlib import Path
from typing import Any

from telstate_log.core._types import KeyType
from telstate_log.rdb._format import pack_member
from telstate_log.rdb._reader import iter_rdb
from telstate_log.rdb._writer import RdbWriter

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "rdb"
GOLDEN_KATSDPTELSTATE = DATA_DIR / "katsdptelstate_v6.rdb"
GOLDEN_REDIS7 = DATA_DIR / "redis7_v10.rdb"
GOLDEN_OURS = DATA_DIR / "telstate_log_v9.rdb"

State = dict[bytes, tuple[KeyType, Any]]


def float_value(x: float) -> bytes:
    """katsdptelstate's encoding of a Python float (0xFF + msgpack float 64)."""
    return b"\xff\xcb" + struct.pack(">d", x)


def sensor(n: int, *, start: float = 1.7e9, step: float = 0.5, tag: bytes = b"") -> list[bytes]:
    """`n` sorted members with uniform lengths (the usual float sensor)."""
    return [pack_member(start + i * step, float_value(i * 0.25) + tag) for i in range(n)]


def ragged_sensor(n: int, seed: int = 1) -> list[bytes]:
    """`n` sorted members with values of varied lengths (strings of 1..300 bytes)."""
    rng = random.Random(seed)
    return sorted({pack_member(rng.uniform(0, 2e9), b"\xff" + os.urandom(rng.randint(0, 300)))
                   for _ in range(n)})


def sample_state(big: bool = False) -> State:
    """A mix of every key shape the codec must carry; `big` adds a 100000-sample sensor."""
    rng = random.Random(42)
    state: State = {
        b"obs_name": (KeyType.IMMUTABLE, b"\xff\xa8scan 001"),
        b"empty_value": (KeyType.IMMUTABLE, b""),
        b"int_like": (KeyType.IMMUTABLE, b"12345"),
        b"\x00bin\xffkey\n": (KeyType.IMMUTABLE, bytes(range(256))),
        b"noise_100k": (KeyType.IMMUTABLE, rng.randbytes(100_000)),
        b"zeros_100k": (KeyType.IMMUTABLE, b"\xff" + b"\x00" * 100_000),
        b"sensor_1": (KeyType.MUTABLE, sensor(1)),
        b"sensor_63": (KeyType.MUTABLE, sensor(63)),
        b"sensor_64": (KeyType.MUTABLE, sensor(64)),
        b"sensor_1000": (KeyType.MUTABLE, sensor(1000)),
        b"sensor_ragged": (KeyType.MUTABLE, ragged_sensor(300)),
        b"sensor_edges": (KeyType.MUTABLE, sorted([
            pack_member(0.0, b"\x00"), pack_member(-0.0, b"\x01"), pack_member(5e-324, b"x"),
            pack_member(1.7976931348623157e308, b"max"), pack_member(1.0, b"\xff" * 20000)])),
        b"table_small": (KeyType.INDEXED, {b"\xff\xa1a": b"\xff\x01", b"\xff\xa1b": b""}),
        b"table_large": (KeyType.INDEXED, {b"\xff\xcd%04d" % i: float_value(i)
                                           for i in range(1000)}),
        b"table_binary": (KeyType.INDEXED, {bytes([i, 255 - i]): bytes([i]) * i
                                            for i in range(256)}),
    }
    if big:
        state[b"sensor_100000"] = (KeyType.MUTABLE, sensor(100_000, step=0.001))
    return state


def write_state(state: State, target: Any = None, **kwargs: Any) -> bytes:
    """Write `state` with our RdbWriter; return the bytes (if no target is given)."""
    buf = io.BytesIO() if target is None else target
    with RdbWriter(buf, **kwargs) as writer:
        for key, (kind, value) in state.items():
            writer.write(key, kind, value)
    return buf.getvalue() if target is None else b""


def read_state(source: Any) -> State:
    """Read an RDB file (db 0 only) into a State with our reader."""
    state: State = {}
    for entry in iter_rdb(source):
        assert entry.db == 0
        state[entry.key] = (entry.kind, entry.value)
    return state


def redis_state(client: Any) -> State:
    """Read every key of a redis-py client's database into a State (scores must be 0)."""
    state: State = {}
    for key in client.keys(b"*"):
        kind = client.type(key)
        if kind == b"string":
            state[key] = (KeyType.IMMUTABLE, client.get(key))
        elif kind == b"hash":
            state[key] = (KeyType.INDEXED, client.hgetall(key))
        elif kind == b"zset":
            pairs = client.zrange(key, 0, -1, withscores=True)
            assert all(score == 0 for _, score in pairs), key
            state[key] = (KeyType.MUTABLE, [member for member, _ in pairs])
        else:
            raise AssertionError(f"unexpected Redis type {kind!r} for {key!r}")
    return state


def fill_redis(client: Any, state: State) -> None:
    """Store `state` in Redis the way katsdptelstate's RedisBackend does."""
    pipe = client.pipeline(transaction=False)
    for key, (kind, value) in state.items():
        if kind == KeyType.IMMUTABLE:
            pipe.set(key, value)
        elif kind == KeyType.MUTABLE:
            for first in range(0, len(value), 10000):
                pipe.zadd(key, dict.fromkeys(value[first:first + 10000], 0))
        else:
            pipe.hset(key, mapping=value)
    pipe.execute()


def katsdptelstate_state(state: State) -> State:
    """Read a katsdptelstate MemoryBackend's contents as a State."""
    return {key: ((KeyType.IMMUTABLE if isinstance(value, bytes) else KeyType.MUTABLE
                   if isinstance(value, list) else KeyType.INDEXED), value)
            for key, value in state.items()}


# --- hand-built RDB pieces (independent of the code under test) -------------

def rlen(n: int) -> bytes:
    """RDB length encoding."""
    if n < 64:
        return bytes([n])
    if n < 16384:
        return struct.pack(">H", 0x4000 | n)
    if n < 2**32:
        return b"\x80" + struct.pack(">I", n)
    return b"\x81" + struct.pack(">Q", n)


def rstr(data: bytes) -> bytes:
    """Plain RDB string."""
    return rlen(len(data)) + data


def rdb_file(body: bytes, *, version: int = 9, crc: bool = True, header: bytes = b"") -> bytes:
    """Header + SELECTDB 0 + `body` + EOF (+ CRC for version >= 5, zero if not `crc`)."""
    from telstate_log.rdb._crc64 import crc64

    data = b"REDIS%04d" % version + header + b"\xfe\x00" + body + b"\xff"
    if version >= 5:
        data += struct.pack("<Q", crc64(data) if crc else 0)
    return data


def zset3(key: bytes, members: list[bytes], score: bytes = b"0") -> bytes:
    """Type 3 record (text scores)."""
    return (b"\x03" + rstr(key) + rlen(len(members))
            + b"".join(rstr(m) + bytes([len(score)]) + score for m in members))


def zset5(key: bytes, members: list[bytes], score: float = 0.0) -> bytes:
    """Type 5 record (binary scores), stored in descending order like Redis."""
    return (b"\x05" + rstr(key) + rlen(len(members))
            + b"".join(rstr(m) + struct.pack("<d", score) for m in reversed(members)))


def hash4(key: bytes, mapping: dict[bytes, bytes]) -> bytes:
    return (b"\x04" + rstr(key) + rlen(len(mapping))
            + b"".join(rstr(f) + rstr(v) for f, v in mapping.items()))


def lp_backlen(size: int) -> bytes:
    if size <= 127:
        return bytes([size])
    n = 2 if size < 16383 else 3 if size < 2097151 else 4 if size < 268435455 else 5
    out = [size >> (7 * (n - 1))]
    out += [((size >> (7 * i)) & 127) | 128 for i in range(n - 2, -1, -1)]
    return bytes(out)


def lp_str(data: bytes) -> bytes:
    """Listpack string entry (smallest encoding)."""
    n = len(data)
    if n < 64:
        enc = bytes([0x80 | n])
    elif n < 4096:
        enc = bytes([0xE0 | n >> 8, n & 0xFF])
    else:
        enc = b"\xf0" + struct.pack("<I", n)
    return enc + data + lp_backlen(len(enc) + n)


def lp_int(value: int, width: str = "auto") -> bytes:
    """Listpack integer entry: width 7bit, 13bit, 16, 24, 32, 64 (or smallest)."""
    if width == "auto":
        width = ("7bit" if 0 <= value <= 127 else "13bit" if -4096 <= value < 4096 else "16"
                 if -2**15 <= value < 2**15 else "24" if -2**23 <= value < 2**23 else "32"
                 if -2**31 <= value < 2**31 else "64")
    if width == "7bit":
        enc = bytes([value])
    elif width == "13bit":
        v = value & 0x1FFF
        enc = bytes([0xC0 | v >> 8, v & 0xFF])
    else:
        size = {"16": 2, "24": 3, "32": 4, "64": 8}[width]
        enc = bytes([{"16": 0xF1, "24": 0xF2, "32": 0xF3, "64": 0xF4}[width]])
        enc += value.to_bytes(size, "little", signed=True)
    return enc + lp_backlen(len(enc))


def listpack(entries: list[bytes], count: int | None = None) -> bytes:
    body = b"".join(entries)
    n = len(entries) if count is None else count
    return struct.pack("<IH", 6 + len(body) + 1, n) + body + b"\xff"


def zl_str(data: bytes) -> bytes:
    """Ziplist entry encoding + data for a string (prevlen added by ziplist())."""
    n = len(data)
    if n < 64:
        return bytes([n]) + data
    if n < 16384:
        return struct.pack(">H", 0x4000 | n) + data
    return b"\x80" + struct.pack(">I", n) + data


def zl_int(value: int, width: str = "auto") -> bytes:
    """Ziplist integer: imm (0..12), 8, 16, 24, 32, 64."""
    if width == "auto":
        width = "imm" if 0 <= value <= 12 else "8" if -128 <= value < 128 else "64"
    if width == "imm":
        return bytes([0xF1 + value])
    tag, size = {"8": (0xFE, 1), "16": (0xC0, 2), "24": (0xF0, 3), "32": (0xD0, 4),
                 "64": (0xE0, 8)}[width]
    return bytes([tag]) + value.to_bytes(size, "little", signed=True)


def ziplist(entries: list[bytes], count: int | None = None, big_prevlen: bool = False) -> bytes:
    parts, prev, offset, last = [], 0, 10, 10
    for enc in entries:
        prevlen = (b"\xfe" + struct.pack("<I", prev) if prev >= 254 or big_prevlen
                   else bytes([prev]))
        entry = prevlen + enc
        parts.append(entry)
        last, offset, prev = offset, offset + len(entry), len(entry)
    body = b"".join(parts)
    n = len(entries) if count is None else count
    return struct.pack("<IIH", 10 + len(body) + 1, last, n) + body + b"\xff"


def packed_record(rdb_type: int, key: bytes, blob: bytes) -> bytes:
    return bytes([rdb_type]) + rstr(key) + rstr(blob)


def zm_len(n: int, big: bool = False) -> bytes:
    """Zipmap length: one byte below 254, else (or if `big`) 254 + u32 little-endian."""
    return bytes([n]) if n < 254 and not big else b"\xfe" + struct.pack("<I", n)


def zipmap(pairs: list[tuple[bytes, bytes]], count: int | None = None, free: int = 0,
           big: bool = False) -> bytes:
    """Zipmap blob (Redis 2.x small hash); `free` unused bytes after each value."""
    body = b"".join(zm_len(len(f), big) + f + zm_len(len(v), big) + bytes([free]) + v
                    + b"\x00" * free for f, v in pairs)
    return bytes([len(pairs) if count is None else count]) + body + b"\xff"


def expiring(record: bytes, expires_ms: int) -> bytes:
    """`record` preceded by an EXPIRETIME_MS opcode."""
    return b"\xfc" + struct.pack("<q", expires_ms) + record


def string_record(key: bytes, value: bytes) -> bytes:
    return b"\x00" + rstr(key) + rstr(value)


def aof_commands(*commands: tuple[bytes, ...]) -> bytes:
    """Commands in the RESP form of an append-only file."""
    return b"".join(b"*%d\r\n" % len(c) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in c)
                    for c in commands)


# --- golden-file inputs -------------------------------------------------------

def golden_ours_state() -> State:
    """Fixed input for the byte-exact golden file of our writer."""
    return {
        b"attr": (KeyType.IMMUTABLE, b"\xff\xa5hello"),
        b"sensor_2": (KeyType.MUTABLE, sensor(2)),
        b"sensor_ragged": (KeyType.MUTABLE, [pack_member(1.0, b"a"), pack_member(2.0, b"bb")]),
        b"sensor_70": (KeyType.MUTABLE, sensor(70, tag=b"\x00" * 60)),
        b"table": (KeyType.INDEXED, {b"\xff\xa1x": b"\xff\x01", b"\xff\xa1y": b"\xff\x02"}),
    }


GOLDEN_OURS_AUX = {"telstate-log-ver": "golden"}


def golden_redis7_state() -> State:
    """What the redis-server 7 golden file holds (SET/ZADD/HSET through redis-py)."""
    return {
        b"attr": (KeyType.IMMUTABLE, b"\xff\xa5hello"),
        b"int_small": (KeyType.IMMUTABLE, b"-7"),           # int-encoded 8-bit
        b"int_mid": (KeyType.IMMUTABLE, b"12345"),          # int-encoded 16-bit
        b"int_big": (KeyType.IMMUTABLE, b"-2000000000"),    # int-encoded 32-bit
        b"long_text": (KeyType.IMMUTABLE, b"\xff\xda\x01\x00" + b"telescope " * 50),  # LZF
        b"sensor_small": (KeyType.MUTABLE, sensor(5)),       # zset listpack
        b"sensor_big": (KeyType.MUTABLE, sensor(200)),       # zset skiplist (type 5)
        b"sensor_compressible": (KeyType.MUTABLE, sensor(20, tag=b"\x00" * 40)),  # LZF listpack
        b"table_small": (KeyType.INDEXED, {b"a": b"1", b"b": b"-300", b"c": b"70000",
                                           b"d": b"-5000000000", b"e": b"\xff\x01"}),
        b"table_big": (KeyType.INDEXED, {b"k%03d" % i: b"v" * 70 for i in range(150)}),
    }


def _make_golden_katsdptelstate() -> None:
    import katsdptelstate
    from katsdptelstate.rdb_writer import RDBWriter

    telstate = katsdptelstate.TelescopeState()
    telstate["obs_name"] = "scan 001"
    telstate["gains"] = [1.5, 2.5]
    for n in (1, 3, 64):
        for i in range(n):
            telstate.add(f"sensor_{n}", i * 0.5, ts=1.7e9 + i)
    telstate.set_indexed("table", "x", 1)
    telstate.set_indexed("table", ("y", 2), "two")
    with RDBWriter(GOLDEN_KATSDPTELSTATE) as writer:
        writer.save(telstate)


def _make_golden_redis7() -> None:
    import shutil
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from _redis import RedisServer

    server = RedisServer(Path(tempfile.mkdtemp())).start()
    try:
        client = server.client()
        fill_redis(client, golden_redis7_state())
        client.save()
        shutil.copy(server.dir / server.dbfilename, GOLDEN_REDIS7)
    finally:
        server.cleanup()
        shutil.rmtree(server.dir, ignore_errors=True)


def _make_golden_ours() -> None:
    with open(GOLDEN_OURS, "wb") as f:
        write_state(golden_ours_state(), f, aux=GOLDEN_OURS_AUX)


if __name__ == "__main__":
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    _make_golden_ours()
    _make_golden_katsdptelstate()
    _make_golden_redis7()
    print("wrote", GOLDEN_OURS, GOLDEN_KATSDPTELSTATE, GOLDEN_REDIS7)
