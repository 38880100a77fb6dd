"""Exporting snapshots to RDB files: content, chunking, memory, atomic replacement."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _import_export_helpers import backend_state, open_log
from _rdb_helpers import read_state

from telstate_log.backends import MemoryBackend
from telstate_log.core._encoding import encode_value
from telstate_log.core._types import KeyType
from telstate_log.rdb._format import pack_member
from telstate_log.rdb._reader import RdbReader
from telstate_log.replay import _export
from telstate_log.replay._export import export_backend, export_rdb

V = encode_value


def _mixed_backend(n: int = 50) -> MemoryBackend:
    b = MemoryBackend()
    ts = 1.7e9 + np.arange(n) * 0.5
    b.add_mutable_many(b"floats", [V(i * 0.1) for i in range(n)], ts)
    b.add_mutable_many(b"bools", [V(i % 3 == 0) for i in range(n)], ts)      # fixed, not float
    b.add_mutable_many(b"strings", [V("s" * (i % 5)) for i in range(n)], ts)  # var layout
    b.add_mutable(b"strings", V("same time"), float(ts[3]))
    b.add_mutable(b"zero", V(1), 0.0)
    b.set_immutable(b"attr", V("x"))
    b.set_indexed(b"table", V("a"), V([1, 2]))
    return b


def test_content_matches_snapshot(tmp_path: Path) -> None:
    b = _mixed_backend()
    stats = export_backend(b, tmp_path / "out.rdb")
    assert read_state(tmp_path / "out.rdb") == backend_state(b)
    assert (stats.keys, stats.samples) == (6, 3 * 50 + 1 + 1)
    assert stats.bytes == (tmp_path / "out.rdb").stat().st_size
    with RdbReader(tmp_path / "out.rdb") as reader:
        list(reader)
        assert reader.checksum_verified and reader.version == 9
    assert not (tmp_path / "out.rdb.tmp").exists()


def test_pattern_selects_keys(tmp_path: Path) -> None:
    b = _mixed_backend()
    stats = export_backend(b, tmp_path / "out.rdb", b"[bfs]*")
    assert stats.keys == 3
    assert sorted(read_state(tmp_path / "out.rdb")) == [b"bools", b"floats", b"strings"]


@pytest.mark.parametrize(("few", "list_limit", "chunk"), [
    (1000, 1000, 1000),         # every sensor packed per sample
    (0, 1000, 1000),            # every sensor through numpy blocks, as one list
    (0, 10, 7),                 # every sensor through the lazy, chunked sequence
])
def test_member_paths_write_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           few: int, list_limit: int, chunk: int) -> None:
    b = _mixed_backend()
    export_backend(b, tmp_path / "default.rdb")
    monkeypatch.setattr(_export, "FEW", few)
    monkeypatch.setattr(_export, "LIST_LIMIT", list_limit)
    monkeypatch.setattr(_export, "CHUNK", chunk)
    export_backend(b, tmp_path / "other.rdb")
    assert (tmp_path / "other.rdb").read_bytes() == (tmp_path / "default.rdb").read_bytes()


@pytest.mark.parametrize("few", [0, 32])
def test_mismatched_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, few: int) -> None:
    monkeypatch.setattr(_export, "FEW", few)
    with pytest.raises(ValueError, match="different numbers"):
        export_rdb([(b"s", KeyType.MUTABLE, _Columns([1.0, 2.0], [b"\xff\x01"]))],
                   tmp_path / "out.rdb")
    assert list(tmp_path.iterdir()) == []


def test_lazy_members_sequence() -> None:
    b = _mixed_backend(100)
    rng = b.get_range_arrays(b"strings", 0.0, np.inf, False, True)
    assert rng is not None
    expected = [pack_member(t, v) for t, v in zip(rng.timestamps.tolist(), rng.encoded())]
    lazy = _export._LazyMembers(_export._Members(rng))
    assert len(lazy) == len(expected) == 101
    assert list(lazy) == expected
    assert lazy[-1] == expected[-1] and lazy[5] == expected[5]
    assert lazy[3:90] == expected[3:90] and lazy[::7] == expected[::7] and lazy[9:2] == []
    assert lazy[_export.CHUNK - 2:] == expected[_export.CHUNK - 2:]
    with pytest.raises(IndexError):
        lazy[101]


def test_memory_stays_flat_for_a_large_sensor(tmp_path: Path) -> None:
    n = 400_000
    b = MemoryBackend()
    b.add_mutable_many(b"big", [V(float(i)) for i in range(n)], np.arange(n, dtype=float))
    tracemalloc.start()
    try:
        stats = export_backend(b, tmp_path / "big.rdb")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stats.samples == n and stats.bytes > 18 * n
    # A list of all members would take ~60 bytes per sample (24 MB here).
    assert peak < 8 << 20, f"export peaked at {peak / 2**20:.1f} MiB"


class _Columns:
    """A minimal sample-columns object (what an as-of snapshot might pass)."""

    def __init__(self, timestamps: list[float], values: list[bytes]) -> None:
        self.timestamps = np.array(timestamps)
        self._values = values

    def __len__(self) -> int:
        return len(self._values)

    def encoded(self) -> list[bytes]:
        return self._values


def test_item_forms(tmp_path: Path) -> None:
    members = [pack_member(1.0, b"\xff\x01"), pack_member(2.0, b"\xff\x02")]

    def items() -> Iterator[tuple[bytes, Any, Any]]:         # no len(): streamed
        yield b"packed", KeyType.MUTABLE, members
        yield b"columns", 2, _Columns([-0.0, 3.0], [b"\xff\xa1a", b"\xff\xa1b"])
        yield b"attr", KeyType.IMMUTABLE, bytearray(b"\xff\x05")
        yield b"table", 3, {b"\xff\xa1k": b"\xff\x06"}

    calls: list[tuple[str, int, int | None]] = []
    stats = export_rdb(items(), tmp_path / "out.rdb", progress=lambda *a: calls.append(a))
    assert calls == [("export", 2, None), ("export", 4, None), ("export", 5, None),
                     ("export", 6, None)]
    assert stats.keys == 4 and stats.samples == 4
    state = read_state(tmp_path / "out.rdb")
    assert state[b"packed"] == (KeyType.MUTABLE, members)
    assert state[b"columns"] == (KeyType.MUTABLE, [pack_member(0.0, b"\xff\xa1a"),
                                                   pack_member(3.0, b"\xff\xa1b")])
    assert state[b"attr"] == (KeyType.IMMUTABLE, b"\xff\x05")


def test_progress_with_total(tmp_path: Path) -> None:
    calls: list[tuple[str, int, int | None]] = []
    export_backend(_mixed_backend(), tmp_path / "out.rdb", progress=lambda *a: calls.append(a))
    assert calls[-1] == ("export", 152 + 2, 154) and len(calls) == 6


def _keep_existing(tmp_path: Path, items: list[tuple[bytes, Any, Any]],
                   error: type[BaseException]) -> None:
    out = tmp_path / "out.rdb"
    out.write_bytes(b"previous export")
    with pytest.raises(error):
        export_rdb(items, out)
    assert out.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.rdb"]


@pytest.mark.parametrize(("bad", "error"), [
    ((b"late", KeyType.IMMUTABLE, 42), TypeError),
    ((b"late", KeyType.INDEXED, [1]), TypeError),
    ((b"late", KeyType.MUTABLE, 42), TypeError),
    ((b"late", KeyType.MUTABLE, [pack_member(2.0, b"x"), pack_member(1.0, b"y")]), ValueError),
    ((b"late", KeyType.MUTABLE, _Columns([1.0, float("nan")], [b"\xff\x01", b"\xff\x02"])),
     ValueError),
    ((b"late", KeyType.MUTABLE, _Columns([1.0], [b"a", b"b"])), ValueError),
    ((b"late", KeyType.INDEXED, {}), ValueError),
    ((b"attr", KeyType.IMMUTABLE, b"duplicate key"), ValueError),
])
def test_failed_export_keeps_the_previous_file(tmp_path: Path, bad: tuple[bytes, Any, Any],
                                               error: type[BaseException]) -> None:
    items = [(key, kind, value) for key, kind, value in
             _mixed_backend().snapshot_items(b"*")]
    _keep_existing(tmp_path, [*items, bad], error)


def test_interrupted_export_leaves_nothing(tmp_path: Path) -> None:
    def items() -> Iterator[tuple[bytes, Any, Any]]:
        yield b"attr", KeyType.IMMUTABLE, b"\xff\x01"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_rdb(items(), tmp_path / "out.rdb")
    assert list(tmp_path.iterdir()) == []


def test_log_snapshot_ignores_later_writes(tmp_path: Path) -> None:
    with open_log(tmp_path / "log") as log:
        log.add_mutable_many(b"s", [V(i) for i in range(100)], np.arange(100.0))
        log.delete(b"s")
        log.add_mutable_many(b"s", [V(i) for i in range(10)], np.arange(10.0))
        items = log.snapshot_items(b"*")
        log.add_mutable_many(b"s", [V(i) for i in range(10, 20)], np.arange(10.0, 20.0))
        stats = export_rdb(items, tmp_path / "out.rdb")
    assert stats.samples == 10
    assert read_state(tmp_path / "out.rdb")[b"s"][1] == [pack_member(float(i), V(i))
                                                          for i in range(10)]
