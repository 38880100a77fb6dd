"""The checkpoint summary that ``telstate-log info`` reads instead of the state.

``info`` on a large log spent most of its time loading the newest
checkpoint to count keys and samples.  Each checkpoint now carries a small
summary of its state (``telstate_log.storage._checkpoint_summary``), which
``info`` uses when nothing follows the checkpoint in the log
(``telstate_log.storage._quick_info``).  Checked here: ``info`` from the
summary says exactly what ``info`` from the opened log says; it is not used
when events follow the checkpoint, when the checkpoint has none (an older
one) or when it is damaged; a summary that does not describe its state is
found by ``verify``; and the paged checkpoint loading ``verify`` uses loads
the same state.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
from test_checkpoint_table import describe, many_keys_log

from telstate_log import verify_log
from telstate_log.backends import LogBackend
from telstate_log.cli._common import open_log
from telstate_log.cli._inspect import gather_info, quick_info
from telstate_log.core._encoding import encode_value
from telstate_log.storage import OsFileSystem, _checkpoint, current_summary
from telstate_log.storage._checkpoint import list_checkpoints
from telstate_log.storage._checkpoint_load import (
    load_checkpoint,
    load_checkpoint_paged,
    read_summary,
)
from telstate_log.storage._checkpoint_summary import (
    FOOTER_SIZE,
    Summary,
    encode_summary,
    parse_summary,
    summarise,
)

LOG_ID = bytes(range(16))


def closed_log(path: Path, keys: int = 300) -> str:
    """A log closed cleanly with a checkpoint at its last event, written by two
    sessions, with deletes and every key type."""
    b = many_keys_log(path, keys)
    b.close()
    with LogBackend(path, fsync="never", source="second") as b2:
        b2.add_mutable(b"late", encode_value(1.0), 5.0)
        b2.set_immutable(b"late_imm", encode_value("x"))
        b2.checkpoint(sync=True)
    return str(path)


def full_info(path: str, count_events: bool = False) -> dict[str, Any]:
    with open_log(path) as backend:
        return gather_info(backend, count_events)


@pytest.mark.parametrize("count_events", [False, True])
def test_info_from_the_summary_is_info_from_the_log(tmp_path: Path,
                                                    count_events: bool) -> None:
    path = closed_log(tmp_path / "log")
    quick = quick_info(path, count_events)
    assert quick is not None
    assert quick == full_info(path, count_events)
    assert len(quick["sources"]) == 2 and quick["keys"]["samples"] > 0


def test_an_empty_state_summary(tmp_path: Path) -> None:
    """Only immutables: no samples, no valid time."""
    with LogBackend(tmp_path / "log", fsync="never") as b:
        b.set_immutable(b"a", encode_value(1))
        b.checkpoint(sync=True)
    quick = quick_info(str(tmp_path / "log"))
    assert quick is not None and quick["valid_time"]["first"] is None
    assert quick == full_info(str(tmp_path / "log"))


def test_events_after_the_checkpoint_open_the_log(tmp_path: Path) -> None:
    path = closed_log(tmp_path / "log")
    with LogBackend(path, fsync="never") as b:
        b.add_mutable(b"after", encode_value(2.0), 6.0)
    assert current_summary(OsFileSystem(), path) is None
    assert quick_info(path) is None
    assert full_info(path)["positions"]["last"] > list_checkpoints(path)[0].position


def test_a_checkpoint_without_summary_still_loads(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """As one written before summaries existed: info opens the log, and the
    checkpoint loads and verifies as before."""
    monkeypatch.setattr(_checkpoint, "encode_summary", lambda s: b"")
    path = closed_log(tmp_path / "log")
    cp = list_checkpoints(path)[0].path
    assert read_summary(cp, None) is None
    assert quick_info(path) is None
    load_checkpoint(cp, None)
    assert verify_log(path).ok


def test_a_damaged_summary_is_not_trusted(tmp_path: Path) -> None:
    path = closed_log(tmp_path / "log")
    cp = list_checkpoints(path)[0].path
    found = read_summary(cp, None)
    assert found is not None
    data = bytearray(Path(cp).read_bytes())
    trailer = data[-_checkpoint.HEAD_SIZE:]
    moff = int.from_bytes(trailer[48:56], "little")
    data[moff - FOOTER_SIZE - 3] ^= 0x40  # in the payload
    Path(cp).write_bytes(bytes(data))
    assert read_summary(cp, None) is None
    assert quick_info(path) is None
    problems = [p["problem"] for p in verify_log(path).problems if p["file"] == cp]
    assert problems == ["damaged checkpoint (ignored on open): body checksum mismatch"]


def test_verify_finds_a_summary_that_lies(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A summary with valid checksums that does not describe its state (a
    writer's bug) makes the checkpoint differ from the replayed log."""
    real = summarise

    def lying(*args: Any) -> Summary:
        s = real(*args)
        return dataclasses.replace(s, samples=s.samples + 1)

    monkeypatch.setattr(_checkpoint, "summarise", lying)
    path = closed_log(tmp_path / "log")
    monkeypatch.undo()
    report = verify_log(path)
    assert not report.ok
    assert [p["problem"] for p in report.problems if p["kind"] == "checkpoint"] == \
        ["checkpoint differs from the replayed log"] * len(list_checkpoints(path))


def test_verify_accepts_true_summaries(tmp_path: Path) -> None:
    path = closed_log(tmp_path / "log")
    report = verify_log(path)
    assert report.ok and report.checkpoints_ok == len(list_checkpoints(path)) >= 1


def test_parse_summary_checks_everything() -> None:
    s = Summary(7, LOG_ID, (1, 300), 2, 1, 3, 10, (1.0, 2.5),
                {0: {"source": "x", "pid": 3, "started": 1.5}}, 4.25)
    data = encode_summary(s)
    assert parse_summary(data, 7, LOG_ID) == s
    assert parse_summary(data, 8, LOG_ID) is None  # another checkpoint's
    assert parse_summary(data, 7, bytes(16)) is None  # another log's
    assert parse_summary(data[1:], 7, LOG_ID) is None  # cut short
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 1
        assert parse_summary(bytes(damaged), 7, LOG_ID) is None
    lying = dataclasses.replace(s, valid=None)  # samples without a span
    assert parse_summary(encode_summary(lying), 7, LOG_ID) is None


def test_paged_loading_loads_the_same_state(tmp_path: Path) -> None:
    path = closed_log(tmp_path / "log")
    cp = list_checkpoints(path)[0].path
    state, _, _, drop_pages = load_checkpoint_paged(cp, None)
    want = describe(load_checkpoint(cp, None)[0])
    drop_pages()  # the pages are read again when used
    assert describe(state) == want
    drop_pages()
    assert describe(state) == want
    assert os.path.exists(cp)
