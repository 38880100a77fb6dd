"""Checkpoints of many short sensors: the column table (checkpoint version 2).

A checkpoint listed every sensor column with references to its own arrays,
which made loading 100,000 one-sample keys slower than replaying their log,
so a clean close() could not leave such a log fast to reopen.  A state with
at least ``TABLE_MIN`` short columns now stores them in one table
(``telstate_log.storage._checkpoint_table``).  Checked here: it loads to exactly the
state it was written from (order of keys included), small states keep the
version-1 layout, the loader does a bounded amount of numpy work per key
(counted, not timed), and a damaged or forged table is refused rather than
trusted -- with the damage generators of tests/test_fuzz_log.py.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_fuzz_log import (
    RandomChooser,
    _join_checkpoint,
    _split_checkpoint,
    damage_checkpoint,
    foreign_checkpoint,
)

from telstate_log.backends import LogBackend
from telstate_log.core._encoding import encode_value
from telstate_log.core._sensor import SensorColumn
from telstate_log.core._state import Immutable, Indexed, State
from telstate_log.storage import _checkpoint, _checkpoint_load
from telstate_log.storage._checkpoint import CheckpointError, list_checkpoints
from telstate_log.storage._checkpoint_load import load_checkpoint
from telstate_log.storage._checkpoint_table import SHORT, TABLE_MIN

VALUES = [encode_value(1.5), encode_value(3), encode_value("x"), encode_value("yyy"),
          b"\xfe\xcb" + bytes(8), encode_value(None), encode_value(300)]


def many_keys_log(path: Path, keys: int = TABLE_MIN + 44) -> LogBackend:
    """A writer on a log with `keys` short sensors of every layout, long sensors,
    deleted short sensors (the graveyard), immutables and an indexed key."""
    b = LogBackend(path, fsync="never", checkpoint_bytes=None)
    for i in range(keys):
        key = b"short%04d" % i
        for j in range(1 + i % 4):
            b.add_mutable(key, VALUES[(i + j) % len(VALUES)], float(j if i % 5 else 3 - j))
        if i % 50 == 7:
            b.set_immutable(b"imm%04d" % i, encode_value(i))
    for i in range(3):
        for j in range(SHORT + 10):
            b.add_mutable(b"long%d" % i, encode_value(float(j)), float(j))
    b.set_indexed(b"idx", encode_value(1), encode_value("one"))
    for i in range(0, keys, 40):
        b.delete(b"short%04d" % i)
    b.add_mutable(b"short0000", encode_value(9.0), 9.0)  # re-created after its delete
    return b


def describe(state: State) -> list[Any]:
    """Everything a loaded state holds, in order (keys in the state's order)."""
    def entry(e: Any) -> Any:
        if isinstance(e, Immutable):
            return ("i", e.created, e.value)
        if isinstance(e, Indexed):
            return ("x", e.created, sorted(e.values.items()), sorted(e.positions.items()))
        assert isinstance(e, SensorColumn)
        e.settle()
        return ("m", e.created, e.last, e.timestamps().tolist(), e.values(0, len(e)),
                e.positions().tolist())
    return [state.position, [(k, entry(e)) for k, e in state.items()],
            sorted((k, [(entry(e), d) for e, d in lst]) for k, lst in state.graveyard.items())]


def unordered(description: list[Any]) -> list[Any]:
    """A description without the order of the keys: a replay applies a run's SET
    events before its samples, so it orders keys differently than the writes did."""
    return [description[0], sorted(description[1]), description[2]]


def checkpoint_of(tmp_path: Path, keys: int = TABLE_MIN + 44) -> tuple[Path, bytes, Any]:
    """(checkpoint path, log id, description of the state it holds)."""
    b = many_keys_log(tmp_path / "log", keys)
    try:
        want = describe(b._state)
        path = Path(b.checkpoint() or "")
        assert b.log_id is not None
        return path, b.log_id, want
    finally:
        b.close()


def version(path: Path) -> int:
    data = path.read_bytes()
    return data[len(data) - _checkpoint.HEAD_SIZE + 8]


def test_table_round_trip(tmp_path: Path) -> None:
    path, log_id, want = checkpoint_of(tmp_path)
    assert version(path) == _checkpoint.TABLE_VERSION
    state, tables, _ = load_checkpoint(str(path), log_id)
    assert describe(state) == want
    with LogBackend(tmp_path / "log", readonly=True, follow=False,
                    use_checkpoints=False) as replayed:
        assert tables.keys == replayed.log.tables.keys
        assert tables.key_ids == replayed.log.tables.key_ids
        assert unordered(describe(replayed._state)) == unordered(want)


def test_small_states_keep_version_1(tmp_path: Path) -> None:
    path, log_id, want = checkpoint_of(tmp_path, keys=TABLE_MIN // 2)
    assert version(path) == _checkpoint.VERSION
    assert describe(load_checkpoint(str(path), log_id)[0]) == want


def test_reopen_after_close_uses_the_table(tmp_path: Path) -> None:
    """The log reopens from the table and keeps working (writes copy the
    table's read-only arrays)."""
    b = many_keys_log(tmp_path / "log")
    b.checkpoint()
    b.close()
    with LogBackend(tmp_path / "log", fsync="never") as b2:
        want = describe(b2._state)
        b2.add_mutable(b"short0001", encode_value(5.0), 100.0)
        b2.add_mutable(b"short0002", encode_value(5.0), -0.0)
        want2 = describe(b2._state)
    assert want2 != want
    with LogBackend(tmp_path / "log", readonly=True, follow=False) as b3:
        assert describe(b3._state) == want2


def test_loading_does_no_numpy_work_per_key(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a table makes the same number of numpy array constructions for
    four times the keys (the per-column path made several per key)."""
    calls = {"n": 0}
    frombuffer = np.frombuffer

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return frombuffer(*args, **kwargs)

    counts = []
    for keys in (TABLE_MIN + 10, 4 * (TABLE_MIN + 10)):
        path, log_id, want = checkpoint_of(tmp_path / str(keys), keys)
        monkeypatch.setattr(_checkpoint.np, "frombuffer", counted)
        calls["n"] = 0
        state, _, _ = load_checkpoint(str(path), log_id)
        monkeypatch.undo()
        assert describe(state) == want
        counts.append(calls["n"])
    assert counts[1] <= counts[0] + 20, counts


def check_columns(state: State, position: int) -> None:
    """Every sensor of a loaded state keeps the column invariants, and no two
    entries share a column."""
    seen: set[int] = set()
    entries = [e for _, e in state.items()] + \
        [e for lst in state.graveyard.values() for e, _ in lst]
    for e in entries:
        if isinstance(e, SensorColumn):
            assert id(e) not in seen
            seen.add(id(e))
            _checkpoint_load._check_column(e.snapshot(), position)


def test_damaged_tables_are_refused(tmp_path: Path) -> None:
    """Raw damage is refused; forged damage (CRCs recomputed) is refused or loads
    a state that keeps every column invariant -- never a broken one."""
    path, log_id, _ = checkpoint_of(tmp_path)
    good = path.read_bytes()
    other = foreign_checkpoint()
    outcomes = {"refused": 0, "loaded": 0}
    for seed in range(150):
        data, forged, what = damage_checkpoint(RandomChooser(seed), good, other)
        path.write_bytes(data)
        try:
            state, _, _ = load_checkpoint(str(path), log_id)
        except CheckpointError:
            outcomes["refused"] += 1
            continue
        assert forged or data == good, f"seed {seed}: {what} was accepted"
        check_columns(state, state.position)
        outcomes["loaded"] += 1
        del state
    assert outcomes["refused"] > 50, outcomes


def forge(path: Path, change: Any) -> None:
    """Rewrite the checkpoint at `path` with `change(manifest, blobs)` applied."""
    blobs, manifest, fields = _split_checkpoint(path.read_bytes())
    garbled = bytearray(blobs)
    change(manifest, garbled)
    path.write_bytes(_join_checkpoint(bytes(garbled), manifest, fields))


def _swap_timestamps(manifest: dict[str, Any], blobs: bytearray) -> None:
    table = manifest["table"]
    off = table["ts"][0]
    count = np.frombuffer(bytes(blobs), "<i8", len(table["count"]) and table["count"][3],
                          table["count"][0])
    i = int(np.argmax(count >= 2))  # a column with two samples: swap them
    first = int(count[:i].sum())
    a = off + 8 * first
    blobs[a:a + 16] = blobs[a + 8:a + 16] + blobs[a:a + 8]


def _repeat_reference(manifest: dict[str, Any], blobs: bytearray) -> None:
    for _, lst in manifest["graveyard"]:
        for m in lst:
            if m[0][0] == "t":
                m[0][1] = 0  # the first live column, given to a deleted entry too
                return
    raise AssertionError("no graveyard column in the table")


def _shuffle_order(manifest: dict[str, Any], blobs: bytearray) -> None:
    off = manifest["table"]["at"][0]
    a, b = struct.unpack_from("<qq", blobs, off)
    struct.pack_into("<qq", blobs, off, b, a)


def _position_beyond(manifest: dict[str, Any], blobs: bytearray) -> None:
    ref = manifest["table"]["pos"]
    assert ref[2] == "<u4"
    struct.pack_into("<I", blobs, ref[0], manifest["position"] + 1)


def _unknown_prefix(manifest: dict[str, Any], blobs: bytearray) -> None:
    manifest["table"]["prefixes"] = []


@pytest.mark.parametrize("change", [_swap_timestamps, _repeat_reference, _shuffle_order,
                                    _position_beyond, _unknown_prefix])
def test_forged_tables_are_refused(tmp_path: Path, change: Any) -> None:
    path, log_id, _ = checkpoint_of(tmp_path)
    forge(path, change)
    with pytest.raises(CheckpointError):
        load_checkpoint(str(path), log_id)


def test_writer_ignores_a_refused_table(tmp_path: Path) -> None:
    """A refused table costs a replay, nothing else: the log opens to its state."""
    path, _, want = checkpoint_of(tmp_path)
    forge(path, _swap_timestamps)
    with LogBackend(tmp_path / "log", fsync="never") as b:
        assert unordered(describe(b._state)) == unordered(want)
    assert not list_checkpoints(str(tmp_path / "log")) or \
        list_checkpoints(str(tmp_path / "log"))[0].path != str(path)


def test_close_replaces_a_checkpoint_without_table(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint of many short sensors written without a table (by an older
    version) loads slowly, so the next clean close writes one with a table,
    even with nothing to replay after it; a table checkpoint is left alone."""
    path = tmp_path / "log"
    with monkeypatch.context() as m:  # write the checkpoint as an older version did
        m.setattr(_checkpoint, "TABLE_MIN", 1 << 62)
        b = many_keys_log(path)
        old = Path(b.checkpoint() or "")
        b.close()
    assert version(old) == _checkpoint.VERSION
    with LogBackend(path, fsync="never"):
        pass
    newest = Path(list_checkpoints(str(path))[0].path)
    assert version(newest) == _checkpoint.TABLE_VERSION
    written = newest.stat().st_ino  # a checkpoint is written to a new file
    with LogBackend(path, fsync="never"):
        pass
    assert Path(list_checkpoints(str(path))[0].path).stat().st_ino == written
