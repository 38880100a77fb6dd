"""Background checkpoints are spaced by the size of the previous one (issue 15).

A checkpoint costs in proportion to the state; with a fixed interval in bytes
the amortised cost per write grew with the run.  The next background
checkpoint now waits for max(checkpoint_bytes, SPACING x the last checkpoint's
size) of new log (telstate_log.storage._checkpointer, "Spacing").
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from _waiting import wait_for

from telstate_log.backends import LogBackend
from telstate_log.storage import _checkpointer
from telstate_log.storage._checkpoint import checkpoint_name, list_checkpoints


def background_checkpoints(path: Path, writes: int) -> list[tuple[int, int, int]]:
    """Write `writes` events with checkpoint_bytes=1024, waiting for each
    background checkpoint to be written (so how fast that is does not matter);
    returns (position, bytes appended, checkpoint size) at each one's start."""
    started: list[tuple[int, int, int]] = []
    with LogBackend(path, fsync="never", checkpoint_bytes=1024) as b:
        writer = b.log.writer
        assert writer is not None
        tail = 0
        for i in range(writes):
            b.add_mutable(b"sensor%d" % (i % 3), float(i).hex().encode() * 4, float(i))
            if b.log.tail_bytes() < tail:  # a background checkpoint started here
                pos = b.position
                wait_for(lambda p=pos: any(c.position == p for c in list_checkpoints(str(path))),
                         what=f"the checkpoint at {pos}")
                size = os.path.getsize(path / "checkpoints" / checkpoint_name(pos))
                started.append((pos, writer.bytes_appended, size))
            tail = b.log.tail_bytes()
    return started


def test_background_checkpoints_wait_for_their_size_of_log(tmp_path: Path) -> None:
    """With checkpoint_bytes far below the state's size, each background
    checkpoint still comes at least SPACING x the previous one's size of log
    after it (the old rule wrote one every checkpoint_bytes: here every ~20
    events, each larger than the last)."""
    started = background_checkpoints(tmp_path / "log", 3000)
    assert len(started) >= 3  # the rule was exercised
    assert len(started) < 100  # the old rule: about one per 1 KiB of log (~150 here)
    for (first, at, size), (nxt, nxt_at, _) in itertools.pairwise(started):
        gap = nxt_at - at
        assert gap >= _checkpointer.SPACING * size, (first, nxt, gap, size)
        assert gap >= 1024


def test_spacing_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SPACING_MAX bounds the log a crash leaves to replay, however large the state."""
    monkeypatch.setattr(_checkpointer, "SPACING_MAX", 4096)
    started = background_checkpoints(tmp_path / "log", 2000)
    assert started[-1][2] > 4096 * 4  # the state outgrew the cap
    for (_, at, size), (_, nxt_at, _) in itertools.pairwise(started):
        # the next starts with the first event at or past max(1024, min(size, cap))
        assert max(1024, min(size, 4096)) <= nxt_at - at < max(1024, min(size, 4096)) + 256


def test_a_checkpoint_on_request_moves_the_next_one_on(tmp_path: Path) -> None:
    """checkpoint() spaces the next background one by its size too."""
    path = tmp_path / "log"
    with LogBackend(path, fsync="never", checkpoint_bytes=1024) as b:
        writer = b.log.writer
        assert writer is not None
        for i in range(2000):
            b.add_mutable(b"s", b"x" * 32 + str(i).encode(), float(i))
        cp = b.log.checkpoint(sync=False)
        assert cp is not None
        size = os.path.getsize(cp)
        at = writer.bytes_appended
        assert size > 1024
        written = 0
        while writer.bytes_appended - at < size - 200:  # short of the spacing
            b.add_mutable(b"s", b"y" * 32 + str(written).encode(), 1e6 + written)
            written += 1
        # no background checkpoint started (starting one moves the mark)
        assert b.log.tail_bytes() == writer.bytes_appended - at
        assert next(c.path for c in list_checkpoints(str(path))) == cp
