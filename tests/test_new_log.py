"""A log created for one job is removed again if the job fails, and nothing else is."""

from __future__ import annotations

from pathlib import Path

import pytest

from telstate_log.backends import LogBackend
from telstate_log.core._encoding import encode_value
from telstate_log.storage._new_log import NewLog, discard_log, make_log_dir


def test_make_log_dir_reports_the_topmost_directory_it_made(tmp_path: Path) -> None:
    assert make_log_dir(str(tmp_path / "a" / "b" / "log")) == str(tmp_path / "a")
    assert (tmp_path / "a" / "b" / "log").is_dir()
    assert make_log_dir(str(tmp_path / "a" / "b" / "log")) is None          # exists
    assert make_log_dir(str(tmp_path / "a" / "c")) == str(tmp_path / "a" / "c")


def test_new_log_removed_on_error_and_on_early_exit(tmp_path: Path) -> None:
    path = tmp_path / "top" / "log"
    with pytest.raises(KeyboardInterrupt), NewLog(path) as new:
        new.make()
        with LogBackend(path, fsync="never") as log:
            log.set_immutable(b"k", encode_value(1))
        raise KeyboardInterrupt
    assert not (tmp_path / "top").exists() and new.problems == []
    with NewLog(path) as new:                   # left without keep(): a failed job
        new.make()
        LogBackend(path, fsync="never").close()
    assert not (tmp_path / "top").exists()
    with NewLog(path) as new:
        new.make()
        LogBackend(path, fsync="never").close()
        new.keep()
    assert (path / "LOCK").exists()


def test_an_existing_log_is_never_removed(tmp_path: Path) -> None:
    path = tmp_path / "log"
    LogBackend(path, fsync="never").close()
    with NewLog(path) as new:
        new.make()
        assert not new.created
    assert (path / "LOCK").exists()


def test_discard_leaves_a_log_another_writer_has_opened(tmp_path: Path) -> None:
    path = tmp_path / "top" / "log"
    made = make_log_dir(str(path))
    assert made is not None
    with LogBackend(path, fsync="never") as other:
        other.set_immutable(b"k", encode_value(1))
        problems = discard_log(str(path), made)
        assert problems and "another writer" in problems[0]
    with LogBackend(path, readonly=True, follow=False) as log:
        assert log.position == 1


def test_discard_keeps_a_parent_someone_else_has_used(tmp_path: Path) -> None:
    path = tmp_path / "top" / "log"
    made = make_log_dir(str(path))
    assert made is not None
    LogBackend(path, fsync="never").close()
    (tmp_path / "top" / "theirs.txt").write_text("keep me")
    assert discard_log(str(path), made) == []
    assert not path.exists() and (tmp_path / "top" / "theirs.txt").read_text() == "keep me"
