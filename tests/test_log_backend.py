"""LogBackend: durability policies, reopening, checkpoints, locking, rotation, errors."""

from __future__ import annotations

import errno
import logging
import math
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from _waiting import wait_for

import telstate_log
from telstate_log import LogCorruptError, LogError, LogLockedError, ReadOnlyError
from telstate_log.backends import LogBackend, _log
from telstate_log.core import _log_format as fmt
from telstate_log.core._apply import COST_DELETE, COST_KEY, COST_SUB_KEY, apply_cost
from telstate_log.core._encoding import encode_value
from telstate_log.core._errors import LogFailedError, LogWriteError
from telstate_log.storage import _checkpointer
from telstate_log.storage._checkpoint import list_checkpoints
from telstate_log.storage._fileio import OsFileSystem
from telstate_log.storage._recovery import list_segments


def fill(b: LogBackend, n: int, key: bytes = b"sensor", start: float = 1e9) -> None:
    for i in range(n):
        b.add_mutable(key, encode_value(float(i)), start + i)


def state_of(b: LogBackend) -> dict[bytes, Any]:
    out = {}
    for key in sorted(b.keys(b"*")):
        out[key] = (b.key_type(key), b.get(key),
                    b.get_range(key, 0.0, math.inf, False, False)
                    if b.key_type(key) == telstate_log.KeyType.MUTABLE else None)
    return out


def test_create_write_reopen(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with LogBackend(path, source="test") as b:
        b.set_immutable(b"imm", encode_value({"a": 1}))
        fill(b, 100)
        b.set_indexed(b"idx", encode_value(3), encode_value("three"))
        b.add_mutable(b"sensor", encode_value(-1.0), 5.0)  # out of order
        b.delete(b"imm")
        b.set_immutable(b"imm", encode_value("again"))
        before = state_of(b)
        position = b.position
    assert position == 1 + 100 + 1 + 1 + 1 + 1
    with LogBackend(path) as b2:
        assert b2.position == position
        assert state_of(b2) == before


def test_noop_writes_record_nothing(tmp_path: Path) -> None:
    with LogBackend(tmp_path / "log") as b:
        b.set_immutable(b"k", b"\xff\x01")
        b.add_mutable(b"s", b"\xff\x01", 1.0)
        b.set_indexed(b"i", b"\xa1a", b"\xff\x01")
        p = b.position
        b.set_immutable(b"k", b"\xff\x01")
        b.set_immutable(b"k", b"\xff\x02")  # first writer wins: no event either
        b.add_mutable(b"s", b"\xff\x01", 1.0)
        b.set_indexed(b"i", b"\xa1a", b"\xff\x01")
        b.delete(b"absent")
        assert b.position == p


def test_second_writer_refused(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with LogBackend(path) as b:
        fill(b, 3)
        b.sync()
        with pytest.raises(LogLockedError, match="locked by another writer"):
            LogBackend(path)
        with LogBackend(path, readonly=True, follow=False) as r:
            assert r.position == 3
            with pytest.raises(ReadOnlyError):
                r.add_mutable(b"x", b"\xff\x01", 1.0)
    with LogBackend(path) as b3:  # the lock is released on close
        assert b3.position == 3


def test_readonly_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(LogError):
        LogBackend(tmp_path / "nope", readonly=True)


def test_closed_backend_refuses_writes(tmp_path: Path) -> None:
    b = LogBackend(tmp_path / "log")
    b.close()
    with pytest.raises(LogError, match="closed"):
        b.add_mutable(b"s", b"\xff\x01", 1.0)


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LogBackend(tmp_path / "a", fsync="sometimes")
    with pytest.raises(ValueError):
        LogBackend(tmp_path / "b", segment_bytes=10)


def test_rotation_and_segment_names(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with LogBackend(path, segment_bytes=4096) as b:
        fill(b, 500)
        fill(b, 10, key=b"other")
        before = state_of(b)
    segs = list_segments(OsFileSystem(), str(path))
    assert len(segs) > 5
    assert segs[0][0] == 1
    for first, name in segs:
        assert name == f"{first:020d}.seg"
        assert os.path.getsize(path / name) <= 4096
    with LogBackend(path, use_checkpoints=False) as b2:
        assert state_of(b2) == before


def test_checkpoint_used_and_damaged_checkpoint_ignored(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "log"
    with LogBackend(path, segment_bytes=8192) as b:
        fill(b, 300)
        b.set_indexed(b"idx", b"\xa1a", b"\xff\x01")
        b.delete(b"idx")
        cp = b.checkpoint()
        assert cp is not None and os.path.exists(cp)
        fill(b, 50, key=b"later")
        before = state_of(b)
    assert list_checkpoints(str(path))[0].position == 302
    with LogBackend(path) as b2:
        assert state_of(b2) == before
        assert b2._state.graveyard[b"idx"][0][1] == 302  # history survives the checkpoint
    # Damage the checkpoint: it must be ignored (full replay), never trusted.
    with open(cp, "r+b") as f:
        f.seek(os.path.getsize(cp) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    with caplog.at_level(logging.WARNING, logger="telstate_log"), LogBackend(path) as b3:
        assert state_of(b3) == before
    assert "ignoring checkpoint" in caplog.text


def test_checkpoint_ahead_of_log_is_ignored(tmp_path: Path) -> None:
    """A checkpoint newer than the log (log lost its tail) must not be trusted."""
    path = tmp_path / "log"
    with LogBackend(path) as b:
        fill(b, 20)
        b.checkpoint()
    seg = path / list_segments(OsFileSystem(), str(path))[-1][1]
    # Simulate the log losing its last events after the checkpoint was written.
    data = seg.read_bytes()
    seg.write_bytes(data[: len(data) - 200])
    with LogBackend(path) as b2:
        assert b2.position < 20
        assert b2.get(b"sensor")[1] == 1e9 + b2.position - 1


def many_keys(b: LogBackend, keys: int) -> None:
    for i in range(keys):
        b.add_mutable(b"key%06d" % i, encode_value(float(i)), 1e9 + i)


@pytest.mark.parametrize("checkpoint_bytes", [_log.DEFAULT_CHECKPOINT_BYTES, None])
def test_close_checkpoints_a_small_tail_of_many_keys(tmp_path: Path,
                                                     checkpoint_bytes: int | None) -> None:
    """Issue 14, defect 3: close() only checkpointed a tail of 16 MiB, so a log of
    many keys (100,000 keys in 7 MB) replayed in full on every open.  It now
    checkpoints by replay cost: a tail of one-sample keys worth the cost, far
    below 16 MiB, gets a checkpoint, and the log reopens from it."""
    path = tmp_path / "log"
    keys = _checkpointer.CLOSE_CHECKPOINT_COST // (1 + COST_KEY) + 1
    with LogBackend(path, fsync="never", checkpoint_bytes=checkpoint_bytes) as b:
        many_keys(b, keys)
        assert b.log.tail_bytes() < _checkpointer.CLOSE_CHECKPOINT_BYTES // 8
        before = state_of(b)
    assert [c.position for c in list_checkpoints(str(path))] == [keys]
    with LogBackend(path, readonly=True, follow=False) as b2:
        assert state_of(b2) == before


def test_close_checkpoints_a_costly_tail_it_only_replayed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tail left without a checkpoint (a crash, or an older version) is
    replayed by the next writer; its clean close checkpoints it even if it wrote
    nothing itself (the bytes it appended were all the old rule looked at)."""
    path = tmp_path / "log"
    keys = _checkpointer.CLOSE_CHECKPOINT_COST // (1 + COST_KEY) + 1
    with monkeypatch.context() as m:  # a writer that never checkpoints on close
        m.setattr(_checkpointer, "CLOSE_CHECKPOINT_COST", 1 << 62)
        with LogBackend(path, fsync="never") as b:
            many_keys(b, keys)
    assert not list_checkpoints(str(path))
    with LogBackend(path, fsync="never"):
        pass
    assert len(list_checkpoints(str(path))) == 1
    with LogBackend(path, fsync="never"):  # nothing since that checkpoint: no other
        pass
    assert len(list_checkpoints(str(path))) == 1


def test_close_leaves_a_cheap_tail(tmp_path: Path) -> None:
    """A tail that replays fast is not worth a checkpoint: close() writes none."""
    path = tmp_path / "log"
    with LogBackend(path, fsync="never") as b:
        many_keys(b, 100)
        fill(b, 1000)
    assert not list_checkpoints(str(path))


def test_replay_cost_counts_events_keys_sub_keys_and_deletes(tmp_path: Path) -> None:
    with LogBackend(path := tmp_path / "log", fsync="never", checkpoint_bytes=None) as b:
        fill(b, 10)  # positions 1..10: one key
        since = b.position
        fill(b, 5, start=2e9)  # 5 events of a key created before `since`
        b.set_immutable(b"imm", encode_value(1))  # a key
        b.set_indexed(b"idx", encode_value(1), encode_value(1))  # a key, a sub-key
        b.set_indexed(b"idx", encode_value(2), encode_value(2))  # a sub-key
        many_keys(b, 3)  # 3 keys
        b.delete(b"key000000")  # a delete
        cost = apply_cost(b._state, since)
        assert b.position - since == 5 + 1 + 2 + 3 + 1
        assert cost == 12 + COST_KEY * (1 + 1 + 2) + COST_SUB_KEY * 2 + COST_DELETE * 1
        assert apply_cost(b._state, b.position) == 0
    assert path.exists()


def test_torn_tail_truncated_every_offset(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "log"
    with LogBackend(path, fsync="never", flush_interval=0) as b:
        fill(b, 5)
        size5 = os.path.getsize(b.log.writer.segment_path)  # type: ignore[union-attr]
        fill(b, 1, start=2e9)
    seg = path / list_segments(OsFileSystem(), str(path))[-1][1]
    full = seg.read_bytes()
    for cut in range(size5, len(full)):
        seg.write_bytes(full[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="telstate_log"):
            with LogBackend(path, use_checkpoints=False) as b2:
                assert b2.position == 5
        if cut > size5:
            assert f"dropped a torn tail of {cut - size5} bytes" in caplog.text
        assert os.path.getsize(seg) == size5
    # A zero-filled tail (allocated, never written) is torn too.
    seg.write_bytes(full[:size5] + bytes(300))
    with LogBackend(path, use_checkpoints=False) as b3:
        assert b3.position == 5


def test_every_single_byte_flip_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with LogBackend(path, fsync="never", checkpoint_bytes=None) as b:
        b.set_immutable(b"imm", encode_value("value"))
        fill(b, 6)
        b.set_indexed(b"idx", encode_value(1), encode_value(2))
    seg = path / list_segments(OsFileSystem(), str(path))[0][1]
    good = seg.read_bytes()
    rng = __import__("random").Random(1)
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 1 << rng.randrange(8)
        seg.write_bytes(bytes(bad))
        with pytest.raises(LogCorruptError) as info:
            LogBackend(path, use_checkpoints=False).close()
        assert info.value.path is not None and str(seg) in str(info.value.path)
        assert seg.read_bytes() == bytes(bad)  # nothing was modified
    seg.write_bytes(good)


def test_corruption_followed_by_valid_data_names_offset(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with LogBackend(path, fsync="never", flush_interval=0) as b:
        fill(b, 3)
        offset = b.log.writer.offset  # type: ignore[union-attr]
        fill(b, 3, start=2e9)
    seg = path / list_segments(OsFileSystem(), str(path))[0][1]
    data = bytearray(seg.read_bytes())
    data[offset + 20] ^= 0xFF  # inside the 4th event, with two intact events after it
    seg.write_bytes(bytes(data))
    with pytest.raises(LogCorruptError) as info:
        LogBackend(path)
    assert info.value.offset == offset
    assert "checksum" in str(info.value)


def test_missing_middle_segment_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None) as b:
        fill(b, 300)
    segs = list_segments(OsFileSystem(), str(path))
    os.remove(path / segs[1][1])
    with pytest.raises(LogCorruptError, match="segment starts at position"):
        LogBackend(path, use_checkpoints=False)


# ------------------------------------------------------------------ durability
class CountingFS(OsFileSystem):
    def __init__(self) -> None:
        self.syncs = 0
        self.writes = 0
        self.fail_writes: int | None = None

    def sync(self, fd: int) -> None:
        self.syncs += 1
        super().sync(fd)

    def write(self, fd: int, data: Any) -> int:
        self.writes += 1
        if self.fail_writes is not None:
            raise OSError(self.fail_writes, os.strerror(self.fail_writes))
        return super().write(fd, data)


def test_fsync_always_syncs_before_returning(tmp_path: Path) -> None:
    fs = CountingFS()
    with LogBackend(tmp_path / "log", fsync="always", fs=fs) as b:
        for i in range(5):
            before = fs.syncs
            b.add_mutable(b"s", encode_value(i), float(i))
            assert fs.syncs > before
            assert b.durable_position == b.position


def test_group_commit_shares_fsyncs(tmp_path: Path) -> None:
    fs = CountingFS()
    with LogBackend(tmp_path / "log", fsync="always", fs=fs) as b:
        start = fs.syncs
        n_threads, per = 8, 50

        def writer(t: int) -> None:
            for i in range(per):
                b.add_mutable(f"s{t}".encode(), encode_value(i), float(i))

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert b.durable_position == n_threads * per
        used = fs.syncs - start
        assert used < n_threads * per * 0.9, used


def test_interval_policy_syncs_in_background(tmp_path: Path) -> None:
    fs = CountingFS()
    with LogBackend(tmp_path / "log", fsync="interval", fsync_interval=0.05, fs=fs) as b:
        b.add_mutable(b"s", b"\xff\x01", 1.0)
        wait_for(lambda: b.durable_position >= 1, what="the background fsync")
        assert b.durable_position == 1


def test_sync_returns_durable_position(tmp_path: Path) -> None:
    with LogBackend(tmp_path / "log", fsync="never") as b:
        fill(b, 10)
        assert b.sync() == 10
        assert b.durable_position == 10


def test_disk_full_write_through_is_rolled_back(tmp_path: Path) -> None:
    fs = CountingFS()
    path = tmp_path / "log"
    with LogBackend(path, fsync="always", fs=fs) as b:
        fill(b, 3)
        fs.fail_writes = errno.ENOSPC
        with pytest.raises(LogWriteError) as info:
            b.add_mutable(b"sensor", encode_value(99.0), 5e9)
        assert info.value.errno == errno.ENOSPC
        assert b.position == 3 and b.get(b"sensor")[1] == 1e9 + 2  # nothing applied
        fs.fail_writes = None
        b.add_mutable(b"sensor", encode_value(100.0), 6e9)  # still usable
        assert b.position == 4
    with LogBackend(path) as b2:
        assert b2.position == 4
        assert b2.get(b"sensor") == (encode_value(100.0), 6e9)


def test_disk_full_buffered_fails_writer(tmp_path: Path) -> None:
    fs = CountingFS()
    path = tmp_path / "log"
    b = LogBackend(path, fsync="interval", fs=fs)
    fill(b, 3)
    b.sync()
    fs.fail_writes = errno.ENOSPC
    fill(b, 2, start=2e9)  # buffered: accepted
    with pytest.raises(LogFailedError):
        b.sync()
    with pytest.raises(LogFailedError):
        fill(b, 1, start=3e9)
    fs.fail_writes = None
    b.close()
    with LogBackend(path) as b2:  # reopening recovers the durable prefix
        assert b2.position == 3


def test_new_source_is_recorded_before_the_next_sample(tmp_path: Path) -> None:
    """set_source() between two buffered samples of one key (regression)."""
    with LogBackend(tmp_path / "log") as b:
        b.add_mutable(b"k", encode_value(1.0), 1.0)
        b.set_source("second")
        b.add_mutable(b"k", encode_value(2.0), 2.0)
    with LogBackend(tmp_path / "log") as b2:
        sources = [b2.session_info(e.session)["source"] for e in b2.history(b"k")]
        assert sources == ["", "second"]


def test_seal_after_reopen_covers_the_earlier_writers_events(tmp_path: Path) -> None:
    """A reopened writer knows its segment already holds events (regression)."""
    with LogBackend(tmp_path / "log") as b:
        fill(b, 3)
    with LogBackend(tmp_path / "log") as b2:
        head = b2.seal()
        assert head is not None
    from telstate_log.storage._seal import read_seals

    assert read_seals(str(tmp_path / "log"))[-1].last == 3


@pytest.mark.parametrize("synced", [True, False])
def test_follower_judges_an_empty_next_segment_by_the_synced_record(tmp_path: Path,
                                                                    synced: bool) -> None:
    """A reader following the log that finds the next segment named but empty
    waits for the writer to remove it only if its creation may have been cut
    short; if ``synced-segment`` says it was created with syncs it is damage
    (issue 14, defect 2) and following fails instead of waiting forever."""
    path = tmp_path / "log"
    with LogBackend(path, fsync="always", segment_bytes=4096, checkpoint_bytes=None) as w:
        fill(w, 100)
        log_id = w.log_id
    assert log_id is not None
    with LogBackend(path, readonly=True, follow=False) as r:
        assert r.position == 100
        assert not r.log.follow_step()
        nxt = path / fmt.segment_name(101)
        if synced:
            (path / fmt.SYNCED_FILE).write_bytes(fmt.encode_synced(101, log_id))
        nxt.write_bytes(bytes(700))
        if synced:
            with pytest.raises(LogCorruptError, match="created with syncs") as info:
                r.log.follow_step()
            assert info.value.path == str(nxt)
        else:
            assert not r.log.follow_step()  # a crash's leftover: the next writer removes it
            assert r.position == 100
