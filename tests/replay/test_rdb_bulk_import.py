"""Importing many new small sensors builds their columns together: the result is the
import one key at a time gives, into memory and into a log (events, reopening)."""

from __future__ import annotations

import errno
import math
import struct
from pathlib import Path
from typing import Any

import pytest
from _import_export_helpers import full_range, log_events, open_log
from _rdb_helpers import float_value, ragged_sensor, sensor, write_state
from test_faults import FaultyFileSystem

from telstate_log import TelstateError
from telstate_log.backends import LogBackend, MemoryBackend, _rdb_import, _rdb_samples
from telstate_log.backends._state_backend import StateBackend
from telstate_log.backends._state_writer import StateWriter
from telstate_log.core._types import KeyType
from telstate_log.rdb._format import pack_member
from telstate_log.replay._rdb_load import import_rdb


def _state() -> dict[bytes, tuple[KeyType, Any]]:
    state: dict[bytes, tuple[KeyType, Any]] = {
        b"s%03d" % i: (KeyType.MUTABLE, sensor(i % 7 + 1, start=1.7e9 + i)) for i in range(40)}
    for i in range(20):                       # another width: small ints
        state[b"i%02d" % i] = (KeyType.MUTABLE, [pack_member(float(t), b"\xff" + bytes([t]))
                                                 for t in range(i % 4 + 1)])
    # equal timestamps, a value prefix that changes, ragged widths, a huge value
    state[b"ties"] = (KeyType.MUTABLE, sorted([pack_member(5.0, float_value(1.0)),
                                               pack_member(5.0, float_value(2.0))]))
    state[b"prefixes"] = (KeyType.MUTABLE, [pack_member(1.0, b"\xff\xcb" + bytes(8)),
                                            pack_member(2.0, b"\xfe\xcb" + bytes(8))])
    state[b"ragged"] = (KeyType.MUTABLE, ragged_sensor(30))
    state[b"huge"] = (KeyType.MUTABLE, [pack_member(3.0, b"\xff\x93" + bytes(70_000))])
    state[b"zero"] = (KeyType.MUTABLE, [pack_member(0.0, float_value(0.5))])
    # a width no other key has: not worth building together
    state[b"odd"] = (KeyType.MUTABLE, [pack_member(1.0, b"\xff\xa3abc"),
                                       pack_member(2.0, b"\xff\xa3abd")])
    state[b"old"] = (KeyType.MUTABLE, sensor(5))  # partly there already
    state[b"imm"] = (KeyType.IMMUTABLE, b"\xff\xa3abc")
    state[b"table"] = (KeyType.INDEXED, {b"\xff\xa1a": b"\xff\x01"})
    return state


def _contents(b: StateBackend) -> dict[bytes, Any]:
    out: dict[bytes, Any] = {}
    for key in sorted(b.keys(b"*")):
        kind = b.key_type(key)
        if kind is KeyType.MUTABLE:
            out[key] = [(v, struct.pack("<d", t)) for v, t in full_range(b, key)]
        else:
            out[key] = b.get(key)
    return out


def _prefill(b: StateBackend) -> None:
    b.add_mutable(b"old", float_value(0.25), 1.7e9 + 0.5)


@pytest.mark.parametrize("kind", ["memory", "log"])
def test_bulk_import_matches_one_key_at_a_time(tmp_path: Path, kind: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    rdb = tmp_path / "in.rdb"
    rdb.write_bytes(write_state(_state()))
    results = []
    together: list[bytes] = []
    create = _rdb_samples._create

    def spy(writer: Any, keys: list[bytes], *args: Any) -> int:
        together.extend(keys)
        return create(writer, keys, *args)
    for bulk, name in ((False, "slow"), (True, "fast")):
        if not bulk:
            monkeypatch.setattr(_rdb_import, "BULK_MIN", math.inf)
        else:
            monkeypatch.undo()
            monkeypatch.setattr(_rdb_samples, "_create", spy)
        backend: StateBackend = MemoryBackend() if kind == "memory" else \
            open_log(tmp_path / name)
        _prefill(backend)
        stats = import_rdb(backend, str(rdb))
        again = import_rdb(backend, str(rdb))           # already loaded: nothing to write
        results.append((_contents(backend), stats.events, stats.position, again.events))
        if isinstance(backend, LogBackend):
            backend.close()
            with LogBackend(tmp_path / name, readonly=True, follow=False) as reopened:
                assert _contents(reopened) == results[-1][0]
            events = log_events(tmp_path / name)
            assert sum(e.get("count", 1) for e in events) == stats.position
    assert results[0] == results[1]
    # every new key of a width many keys share went to the bulk path (those that do not
    # fit a new column, "ties" and "prefixes", are written one by one from there)
    assert sorted(together) == sorted(k for k, (kind, v) in _state().items()
                                      if kind is KeyType.MUTABLE
                                      and k not in (b"huge", b"ragged", b"old", b"odd"))
    assert results[1][1] == sum(len(v) for k, v in _state().values() if k is KeyType.MUTABLE) \
        - 1 + 2                                      # 1 sample of "old" was there; imm, table
    assert results[1][3] == 0


def test_bulk_import_notifies_monitors(tmp_path: Path) -> None:
    rdb = tmp_path / "in.rdb"
    rdb.write_bytes(write_state({b"s%03d" % i: (KeyType.MUTABLE, sensor(3)) for i in range(20)}))
    backend = MemoryBackend()
    watch = backend.monitor_keys([b"s007"])
    assert next(watch) is not None                     # "check now"
    import_rdb(backend, str(rdb))
    assert watch.send(0.0) is not None
    assert watch.send(0.0) is None                     # one update for the key
    watch.close()


def _small_sensors(n: int) -> dict[bytes, tuple[KeyType, Any]]:
    """`n` new small float sensors of a few lengths of key and sample count, then as
    many alike (keys of one length, one sample count: framed as a matrix)."""
    state = {b"k%d_" % (i % 3) + b"x" * (i % 5) + b"%04d" % i:
             (KeyType.MUTABLE, sensor(i % 4 + 1, start=1.7e9 + i)) for i in range(n)}
    state.update({b"kalike%05d" % i: (KeyType.MUTABLE, sensor(3, start=1.8e9 + i))
                  for i in range(n)})
    return state


def _frames(path: Path) -> list[tuple[Any, ...]]:
    """The log's event frames without their recorded times."""
    return [tuple(sorted((k, v) for k, v in e.items() if k != "rec"))
            for e in log_events(path)]


@pytest.mark.parametrize("segment_bytes", [1 << 26, 4096])
def test_keys_recorded_together_as_one_key_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, segment_bytes: int) -> None:
    """The log's many-keys hook writes the frames commit_batch of each key would (in
    runs that fill each segment: small segments take many runs)."""
    rdb = tmp_path / "in.rdb"
    rdb.write_bytes(write_state(_small_sensors(300)))
    runs: list[int] = []
    record = StateWriter.commit_batches.fget   # type: ignore[attr-defined]

    def counted(writer: StateWriter) -> Any:
        hook = record(writer)

        def run(*args: Any) -> int:
            runs.append(hook(*args))
            return runs[-1]
        return run
    for name, many in (("one", False), ("many", True)):
        if not many:
            monkeypatch.setattr(StateWriter, "commit_batches", property(lambda self: None))
        else:
            monkeypatch.undo()
            monkeypatch.setattr(StateWriter, "commit_batches", property(counted))
        with open_log(tmp_path / name, segment_bytes=segment_bytes) as backend:
            import_rdb(backend, str(rdb))
            contents = _contents(backend)
        with LogBackend(tmp_path / name, readonly=True, follow=False) as reopened:
            assert _contents(reopened) == contents
            assert reopened.position == sum(len(v) for _, v in _small_sensors(300).values())
    assert _frames(tmp_path / "many") == _frames(tmp_path / "one")
    assert sum(runs) == 600
    assert len(runs) == 1 if segment_bytes > 1 << 20 else len(runs) > 5
    segments = len(list((tmp_path / "many").glob("*.seg")))
    assert segments == len(list((tmp_path / "one").glob("*.seg")))


@pytest.mark.parametrize("after", [1, 2])
def test_keys_recorded_together_all_or_none(tmp_path: Path, after: int) -> None:
    """A failed append of many keys records none of them, and the state holds what the
    log holds (reopened: the same)."""
    rdb = tmp_path / "in.rdb"
    state = _small_sensors(30)
    state.update({b"long%d" % i: (KeyType.MUTABLE, sensor(300)) for i in range(2)})
    rdb.write_bytes(write_state(state))
    fs = FaultyFileSystem()
    backend = open_log(tmp_path / "log", fsync="always", fs=fs)
    fs.arm("write", ".seg", err=errno.ENOSPC, after=after, times=None)
    with pytest.raises(TelstateError):
        import_rdb(backend, str(rdb))
    kept = _contents(backend)
    position = backend.position
    assert fs.rules[0].fired >= 1
    fs.disarm()
    backend.close()
    with LogBackend(tmp_path / "log", readonly=True, follow=False) as reopened:
        assert (_contents(reopened), reopened.position) == (kept, position)
    assert not any(key.startswith(b"k") for key in kept)   # created together: none
    assert sum(key.startswith(b"long") for key in kept) == after   # written before them
