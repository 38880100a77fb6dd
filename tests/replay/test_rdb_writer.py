"""RDB writer: exact bytes, validation, streaming, loading by redis-server and katsdptelstate."""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from _rdb_helpers import (
    GOLDEN_OURS,
    GOLDEN_OURS_AUX,
    golden_ours_state,
    ragged_sensor,
    read_state,
    redis_state,
    sample_state,
    sensor,
    write_state,
)

from telstate_log._version import __version__
from telstate_log.core._types import KeyType
from telstate_log.rdb._crc64 import crc64
from telstate_log.rdb._format import pack_member
from telstate_log.rdb._reader import RdbReader, iter_rdb
from telstate_log.rdb._writer import RdbWriter


def test_golden_bytes() -> None:
    """A format change must be deliberate: regenerate the golden file and say why."""
    assert write_state(golden_ours_state(), aux=GOLDEN_OURS_AUX) == GOLDEN_OURS.read_bytes()


def test_layout() -> None:
    buf = io.BytesIO()
    with RdbWriter(buf, key_count=1) as writer:
        writer.write_string(b"k", b"v")
    data = buf.getvalue()
    aux = b"\xfa\x10telstate-log-ver" + bytes([len(__version__)]) + __version__.encode()
    assert data == (b"REDIS0009" + aux + b"\xfe\x00" + b"\xfb\x01\x00" + b"\x00\x01k\x01v"
                    + b"\xff" + struct.pack("<Q", crc64(data[:-8])))
    assert writer.keys_written == 1 and writer.bytes_written == len(data)
    assert not buf.closed


def test_zset_record_layout() -> None:
    members = [pack_member(1.0, b"a"), pack_member(2.0, b"bc")]
    data = write_state({b"z": (KeyType.MUTABLE, members)}, aux={})
    assert b"\x03\x01z\x02" + b"\x09" + members[0] + b"\x010" + b"\x0a" + members[1] + b"\x010" \
        in data


def test_round_trip() -> None:
    state = sample_state()
    state[b"ragged_big"] = (KeyType.MUTABLE, ragged_sensor(70_000))     # crosses a chunk
    state[b"uniform_big"] = (KeyType.MUTABLE, sensor(140_000, step=0.01))
    data = write_state(state)
    assert read_state(data) == state
    with RdbReader(data) as reader:
        list(reader)
        assert reader.checksum_verified and reader.version == 9
        assert reader.aux == {b"telstate-log-ver": __version__.encode()}


def test_buffer_size_does_not_change_output(tmp_path: Path) -> None:
    state = sample_state()
    expected = write_state(state)
    assert write_state(state, buffer_size=1) == expected
    assert write_state(state, buffer_size=1000) == expected
    path = tmp_path / "x.rdb"
    write_state(state, str(path))
    assert path.read_bytes() == expected


def test_databases() -> None:
    buf = io.BytesIO()
    with RdbWriter(buf, aux={b"a": b"b"}, db=2) as writer:
        writer.write_string(b"k", b"0")
        writer.select_db(5, key_count=1)
        writer.write_string(b"k", b"1")
    assert [(e.db, e.value) for e in iter_rdb(buf.getvalue())] == [(2, b"0"), (5, b"1")]


@pytest.mark.parametrize(("call", "exc", "match"), [
    (lambda w: w.write_zset(b"z", []), ValueError, "empty zset"),
    (lambda w: w.write_hash(b"h", {}), ValueError, "empty hash"),
    (lambda w: w.write_zset(b"z", sensor(3)[::-1]), ValueError, "out of order"),
    (lambda w: w.write_zset(b"z", sensor(2) * 2), ValueError, "out of order|duplicate"),
    (lambda w: w.write_zset(b"z", [sensor(1)[0]] * 2), ValueError, "duplicate"),
    (lambda w: w.write_zset(b"z", [b"\x00" * 8]), ValueError, "shorter"),
    (lambda w: w.write_zset(b"z", [struct.pack(">d", -1.0) + b"x"]), ValueError, "negative"),
    (lambda w: w.write_zset(b"z", [struct.pack(">d", float("inf")) + b"x"]), ValueError,
     "non-finite"),
    (lambda w: w.write_string(b"k", b"again"), ValueError, "written twice"),
    (lambda w: w.write_string("text", b"v"), TypeError, "keys must be bytes"),
    (lambda w: w.write_hash(b"h", {b"a": "text"}), TypeError, None),
    (lambda w: w.write_zset(b"z", [sensor(1)[0], "text"]), TypeError, None),
])
def test_validation_leaves_writer_usable(call: Any, exc: type[Exception],
                                         match: str | None) -> None:
    buf = io.BytesIO()
    with RdbWriter(buf) as writer:
        writer.write_string(b"k", b"v")
        with pytest.raises(exc, match=match):
            call(writer)
        writer.write_string(b"after", b"ok")
    assert read_state(buf.getvalue()) == {b"k": (KeyType.IMMUTABLE, b"v"),
                                          b"after": (KeyType.IMMUTABLE, b"ok")}


def test_failure_after_partial_flush_poisons_writer(tmp_path: Path) -> None:
    path = tmp_path / "x.rdb"
    writer = RdbWriter(path, buffer_size=10)
    mapping = {b"f%d" % i: b"v" for i in range(20_000)}     # bad value in the 2nd chunk
    mapping[b"bad"] = "text"  # type: ignore[assignment]
    with pytest.raises(TypeError):
        writer.write_hash(b"h", mapping)
    with pytest.raises(ValueError, match="failed"):
        writer.write_string(b"k", b"v")
    with pytest.raises(ValueError, match="discarded"):
        writer.close()
    assert not path.exists()


def test_exception_in_with_block_aborts(tmp_path: Path) -> None:
    path = tmp_path / "x.rdb"
    with pytest.raises(RuntimeError), RdbWriter(path) as writer:
        writer.write_string(b"k", b"v")
        raise RuntimeError("boom")
    assert not path.exists()
    buf = io.BytesIO()
    with pytest.raises(RuntimeError), RdbWriter(buf) as writer:
        raise RuntimeError("boom")
    assert b"\xff" not in buf.getvalue()              # no EOF: readers refuse it
    writer.close()                                    # closing an aborted writer is a no-op


def test_bad_header_arguments_leave_no_file(tmp_path: Path) -> None:
    path = tmp_path / "x.rdb"
    with pytest.raises(ValueError, match="negative"):
        RdbWriter(path, db=-1)
    assert not path.exists()


def test_memory_stays_flat(tmp_path: Path) -> None:
    zsets = [sensor(1000, start=1e9 + k) for k in range(300)]    # ~6 MB of output
    big = sensor(300_000)                                          # one ~6 MB key
    tracemalloc.start()
    try:
        with RdbWriter(tmp_path / "x.rdb") as writer:
            for k, members in enumerate(zsets):
                writer.write_zset(b"s%d" % k, members)
            writer.write_zset(b"big", big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = os.path.getsize(tmp_path / "x.rdb")
    assert size > 10_000_000
    assert peak < 4_000_000, f"peak {peak} bytes while writing {size} bytes"


@pytest.mark.redis
def test_redis_server_loads_our_file(fresh_redis: Any) -> None:
    state = sample_state(big=True)
    write_state(state, str(fresh_redis.dir / fresh_redis.dbfilename), key_count=len(state))
    fresh_redis.restart()
    client = fresh_redis.client()
    assert client.dbsize() == len(state)
    assert redis_state(client) == state
    log = fresh_redis.log()
    assert not any(word in log for word in ("checksum", "orrupt", "Internal error")), log
    # ... and what redis-server saves again reads back the same.
    client.save()
    assert read_state(fresh_redis.dir / fresh_redis.dbfilename) == state


@pytest.mark.interop
def test_katsdptelstate_loads_our_file(tmp_path: Path) -> None:
    pytest.importorskip("katsdptelstate")
    pytest.importorskip("rdbtools")
    import katsdptelstate
    from katsdptelstate.memory import MemoryBackend

    state = sample_state()
    path = tmp_path / "ours.rdb"
    write_state(state, str(path), key_count=len(state))
    backend = MemoryBackend()
    assert backend.load_from_file(str(path)) == len(state)
    assert backend._data == {key: value for key, (_, value) in state.items()}
    telstate = katsdptelstate.TelescopeState()
    telstate.load_from_file(str(path))
    assert telstate.get_range("sensor_1000", st=0)[-1] == (249.75, 1.7e9 + 999 * 0.5)
    assert telstate.key_type("table_large") == katsdptelstate.KeyType.INDEXED
