"""The lean write path (issue 15): the writer's fast path frames exactly what the
format says, bytes_appended survives rotations, and the step after a write is
skipped when it has nothing to do, yet runs whenever it has (fsync="always",
a due checkpoint)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
from _waiting import wait_for

from telstate_log import KeyType
from telstate_log.backends import LogBackend, MemoryBackend
from telstate_log.core import _log_format as fmt
from telstate_log.core._encoding import encode_value
from telstate_log.core._state import State
from telstate_log.storage._checkpoint import list_checkpoints
from telstate_log.storage._fileio import OsFileSystem
from telstate_log.storage._recovery import list_segments as _list_segments


def state_of(b: LogBackend) -> dict[bytes, Any]:
    out = {}
    for key in sorted(b.keys(b"*")):
        out[key] = (b.key_type(key), b.get(key),
                    b.get_range(key, 0.0, math.inf, False, False)
                    if b.key_type(key) == KeyType.MUTABLE else None)
    return out


def list_segments(path: Path) -> list[Path]:
    return [path / name for _, name in _list_segments(OsFileSystem(), str(path))]


def segment_bytes_of(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in list_segments(path))


def test_state_add_mutable_returns_the_position() -> None:
    state = State()
    assert state.add_mutable(b"k", b"v", 1.0) == 1
    assert state.add_mutable(b"k", b"v", 1.0) == 0  # already stored: no event
    assert state.add_mutable(b"other", b"w", 1.0) == 2
    assert state.position == 2


def test_fast_path_frames_are_the_formats(tmp_path: Path) -> None:
    """Every sample's frame is fmt.encode_event's, across a new session and
    rotations (the cached session | key id is dropped with them)."""
    path = tmp_path / "log"
    with LogBackend(path, segment_bytes=8192, checkpoint_bytes=None) as b:
        for i in range(300):
            if i == 150:
                b.set_source("second")
            for key in (b"a", b"bb", b"ccc"):
                b.add_mutable(key, encode_value(float(i) * len(key)), 1e9 + i)
        writer, tables = b.log.writer, b.log.tables
        assert writer is not None
        writer.flush()
        data = segment_bytes_of(path)
        events = b.events()
        assert len(events) == 900 and len({e.session for e in events}) == 2
        for e in events:
            assert e.key is not None and e.value is not None and e.timestamp is not None
            frame = fmt.encode_event(fmt.ADD, e.position, e.recorded, e.session,
                                     tables.key_ids[e.key], b"", e.value, e.timestamp)
            assert frame in data
        before = state_of(b)
        assert len(list_segments(path)) > 3
    with LogBackend(path) as b2:  # the chained CRCs check out on recovery
        assert b2.position == 900
        assert state_of(b2) == before


def test_bytes_appended_counts_every_segment(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None) as b:
        for i in range(500):
            b.add_mutable(b"s%d" % (i % 7), encode_value(i), 1e9 + i)
        writer = b.log.writer
        assert writer is not None
        writer.flush()
        segments = list_segments(path)
        assert len(segments) > 5
        on_disk = sum(os.path.getsize(p) - fmt.HEADER_SIZE for p in segments)
        assert writer.bytes_appended == on_disk


def test_the_step_after_a_write_runs_only_when_it_has_work(tmp_path: Path) -> None:
    # fsync="interval", no checkpoint due: the locked step asks for no after-step
    with LogBackend(tmp_path / "interval", checkpoint_bytes=None) as b:
        w = b.writer()
        assert [w.add_mutable(b"k", encode_value(i), 1.0 + i) for i in range(100)] == [0] * 100
        assert w.set_immutable(b"imm", encode_value(1)) == (None, 0)
        assert b.position == 101
    # fsync="always": every write waits for durability
    with LogBackend(tmp_path / "always", fsync="always") as b:
        w = b.writer()
        for i in range(1, 6):
            pos = w.add_mutable(b"k", encode_value(i), 1.0 + i)
            assert pos == i
            w.after_write(pos)
            assert b.durable_position >= i
        assert w.add_mutable(b"k", encode_value(1), 2.0) == 0  # a duplicate: no event
    # the memory backend has no after-step at all
    m = MemoryBackend().writer()
    assert m.add_mutable(b"k", b"v", 1.0) == 0
    assert m.delete(b"k") == 0


def test_a_due_checkpoint_still_starts(tmp_path: Path) -> None:
    """The writer flags a due checkpoint; the after-step starts it and re-arms."""
    path = tmp_path / "log"
    n = 2000
    with LogBackend(path, checkpoint_bytes=4096) as b:
        w = b.writer()
        asked = 0
        for i in range(n):
            pos = w.add_mutable(b"sensor", encode_value(float(i)), 1e9 + i)
            if pos:
                asked += 1
                w.after_write(pos)
        assert 1 <= asked < n // 4
        wait_for(lambda: list_checkpoints(str(path)))
        b.log.checkpoint()  # moves the due point on: at worst one needless after-step
        asked = 0
        for i in range(n, n + 50):
            pos = w.add_mutable(b"sensor", encode_value(float(i)), 1e9 + i)
            if pos:
                asked += 1
                w.after_write(pos)
        assert asked <= 2


@pytest.mark.parametrize("fsync", ["interval", "never"])
def test_flush_cycles_hand_every_write_to_the_os(tmp_path: Path, fsync: str) -> None:
    """The buffer is flushed by the flusher or by a late append: after a wait
    longer than flush_interval, everything written is in the file."""
    path = tmp_path / "log"
    with LogBackend(path, fsync=fsync, flush_interval=0.002) as b:
        for i in range(200):
            b.add_mutable(b"k", encode_value(i), 1.0 + i)
        writer = b.log.writer
        assert writer is not None
        wait_for(lambda: len(segment_bytes_of(path)) - fmt.HEADER_SIZE
                 == writer.bytes_appended)


def test_a_failed_writer_refuses_samples_of_keys_on_its_fast_path(tmp_path: Path) -> None:
    """The fast path (a buffered sample of a key the segment defines) has no
    failure check of its own: failing the writer empties its table."""
    from telstate_log import LogFailedError

    b = LogBackend(str(tmp_path / "log"), fsync="interval", fsync_interval=60.0)
    try:
        for i in range(3):
            b.add_mutable(b"k", encode_value(float(i)), 1.0 + i)  # the last two: fast path
        b.log.writer.fail(OSError(5, "simulated"))
        with pytest.raises(LogFailedError):
            b.add_mutable(b"k", encode_value(9.0), 10.0)
        assert b.position == 3
        assert len(b.get_range(b"k", 0.0, math.inf, False, False)) == 3
    finally:
        b.close()


def test_front_end_key_cache_respects_views_and_stays_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Full keys are cached per front end (its prefixes never change): a view
    writes under its own prefix, and the cache is emptied when it is full."""
    import telstate_log
    from telstate_log.frontend import _writes

    monkeypatch.setattr(_writes, "KEY_CACHE_MAX", 8)
    ts = telstate_log.TelescopeState(MemoryBackend())
    view = ts.view("cbf")
    ts.add("x", 1.0, ts=1.0)
    view.add("x", 2.0, ts=1.0)
    ts.add(b"y", 3.0, ts=1.0)
    view.add(b"y", 4.0, ts=1.0)
    assert ts.backend.get_range(b"x", 0.0, math.inf, False, False)[0][0] == encode_value(1.0)
    assert ts.backend.get_range(b"cbf_x", 0.0, math.inf, False, False)[0][0] == \
        encode_value(2.0)
    assert ts.backend.get_range(b"cbf_y", 0.0, math.inf, False, False)[0][0] == \
        encode_value(4.0)
    for i in range(50):                      # more distinct keys than the cache holds
        ts.add(f"s{i}", float(i), ts=1.0)
        assert len(ts._writes.cache) <= 8
    assert ts.get("s49") == 49.0 and ts.get("x") == 1.0
