"""The command line's first hour: the errors, times, options, pipes and help a new user meets.

Each test drives ``telstate-log`` as a user types it -- on the log and RDB
file that ``telstate-log demo`` makes, or on small logs built here -- and
checks what the user is told: one ``error:`` line naming their own path and
what the command was doing, the CLI's words rather than the library's, exit
status 2 for every usage error, a note on stderr when nothing matched, and
status 0 when the reader of a pipe goes away.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_cli import cli, run
from test_cli_rdb import make_log
from test_faults import FaultyFileSystem

import telstate_log.backends._log as log_module
from telstate_log.backends import LogBackend
from telstate_log.cli._main import READ_ONLY_COMMANDS, build_parser, main, parse_time
from telstate_log.core._encoding import encode_value

Capsys = pytest.CaptureFixture[str]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``telstate-log demo DIR``: the log and the RDB file it made, and DIR."""
    directory = tmp_path_factory.mktemp("first-hour") / "demo"
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["demo", str(directory), "--json"]) == 0
    data = json.loads(out.getvalue())
    assert data["rdb"], "the demo made no RDB file"
    return {"dir": directory, "log": Path(data["log"]), "rdb": Path(data["rdb"])}


@pytest.fixture
def log_copy(demo: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the demo log, for tests that write or lock it."""
    copy = tmp_path / "log"
    shutil.copytree(demo["log"], copy)
    return copy


def one_error(err: str, command: str) -> str:
    """`err` checked to be one ``telstate-log COMMAND: error: ...`` line; the message."""
    prefix = f"telstate-log {command}: error: "
    assert err.startswith(prefix) and err.count("\n") == 1, err
    assert "Errno" not in err and "Traceback" not in err, err
    return err[len(prefix):-1]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


# ------------------------------------------------------------- OS errors
def test_export_into_a_missing_directory_names_the_users_path(demo: dict[str, Path],
                                                              tmp_path: Path,
                                                              capsys: Capsys) -> None:
    out = tmp_path / "nowhere" / "o.rdb"
    rc, stdout, err = cli(capsys, "export", str(demo["log"]), str(out))
    message = one_error(err, "export")
    assert rc == 1 and stdout == ""
    assert message == f"writing {out}: no such directory {out.parent}"
    assert ".tmp" not in message


def test_export_on_a_full_disk_names_the_file(demo: dict[str, Path], tmp_path: Path,
                                              capsys: Capsys,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # the exporter syncs the file before renaming it
    out = tmp_path / "o.rdb"
    rc, _, err = cli(capsys, "export", str(demo["log"]), str(out))
    assert rc == 1
    assert one_error(err, "export") == f"writing {out}: No space left on device"
    assert os.listdir(tmp_path) == []  # neither the file nor its temporary


def test_import_into_a_file_is_refused_by_name(demo: dict[str, Path], tmp_path: Path,
                                               capsys: Capsys) -> None:
    afile = tmp_path / "afile.txt"
    afile.write_text("hello\n")
    rc, _, err = cli(capsys, "import", str(demo["rdb"]), str(afile))
    assert rc == 1
    assert one_error(err, "import") == \
        f"cannot import into {afile}: it is a file, not a log directory"
    assert afile.read_text() == "hello\n"


# ---------------------------------------------------- misleading messages
def test_info_on_a_file_says_it_is_a_file(tmp_path: Path, capsys: Capsys) -> None:
    afile = tmp_path / "afile.txt"
    afile.write_text("hello\n")
    rc, _, err = cli(capsys, "info", str(afile))
    message = one_error(err, "info")
    assert rc == 1 and "no such" not in message
    assert message.startswith(f"{afile}: not a log directory: it is a file")


def test_import_of_a_directory_says_it_is_a_directory(demo: dict[str, Path], tmp_path: Path,
                                                      capsys: Capsys) -> None:
    rc, _, err = cli(capsys, "import", str(demo["dir"]), str(tmp_path / "i1"))
    message = one_error(err, "import")
    assert rc == 1 and "no such file" not in message
    assert message.startswith(f"cannot import {demo['dir']}: it is a directory, not an RDB file")
    assert demo["rdb"].name in message  # the RDB file it holds
    assert not (tmp_path / "i1").exists()


@contextlib.contextmanager
def full_disk(monkeypatch: pytest.MonkeyPatch, after: int) -> Iterator[FaultyFileSystem]:
    """Logs opened inside fail every write to a segment file after the first `after`."""
    fs = FaultyFileSystem()
    fs.arm("write", lambda path: path.endswith(".seg"), err=errno.ENOSPC, after=after,
           times=None)
    with monkeypatch.context() as patch:
        patch.setattr(log_module, "OsFileSystem", lambda: fs)
        yield fs


def test_import_on_a_full_disk_when_nothing_was_written(demo: dict[str, Path], tmp_path: Path,
                                                        capsys: Capsys,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "full"
    with full_disk(monkeypatch, after=0) as fs:
        rc, out, err = cli(capsys, "import", str(demo["rdb"]), str(target))
    assert fs.failed_at is not None, "no fault was injected"
    message = one_error(err, "import")
    assert rc == 1 and out == ""
    assert "recover the written prefix" not in message
    assert message == (f"importing {demo['rdb']} into {target} failed: No space left on "
                       f"device; nothing was imported and {target} was not created")
    assert not target.exists()
    existing = tmp_path / "existing"
    LogBackend(existing).close()
    with full_disk(monkeypatch, after=0) as fs:
        rc, out, err = cli(capsys, "import", str(demo["rdb"]), str(existing))
    assert fs.failed_at is not None, "no fault was injected"
    assert rc == 1 and out == ""
    assert one_error(err, "import") == (
        f"importing {demo['rdb']} into {existing} failed: No space left on "
        f"device; nothing was imported ({existing} is unchanged at position 0)")
    with LogBackend(existing, readonly=True, follow=False) as reopened:
        assert reopened.position == 0


def test_import_on_a_full_disk_after_part_was_written(tmp_path: Path, capsys: Capsys,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    make_log(tmp_path / "big", keys=4, samples=20000)  # 4 buffered flushes of one key each
    rdb = tmp_path / "big.rdb"
    assert main(["export", str(tmp_path / "big"), str(rdb)]) == 0
    target = tmp_path / "full"
    LogBackend(target).close()  # an existing log keeps what was written before a failure
    with full_disk(monkeypatch, after=1) as fs:
        rc, _, err = cli(capsys, "import", str(rdb), str(target))
    assert fs.failed_at is not None, "no fault was injected"
    message = one_error(err, "import")
    with LogBackend(target, readonly=True, follow=False) as reopened:
        kept = reopened.position
    assert rc == 1 and 0 < kept < 4 * 20000 + 2
    assert f"failed: No space left on device; positions 1..{kept} hold what was imported " \
           "before the failure" in message
    rc, out, _ = cli(capsys, "import", str(rdb), str(target), "--json")  # as it advises
    assert rc == 0 and json.loads(out)["position"] == 4 * 20000 + 2


def test_a_re_import_says_the_keys_were_already_there(demo: dict[str, Path], tmp_path: Path,
                                                      capsys: Capsys) -> None:
    target = tmp_path / "i1"
    rc, out, _ = cli(capsys, "import", str(demo["rdb"]), str(target))
    assert rc == 0 and " new events" in out
    rc, out, _ = cli(capsys, "import", str(demo["rdb"]), str(target))
    assert rc == 0 and "0 new events" not in out
    assert out.startswith(f"nothing new in {demo['rdb']}: its 17 keys ") and \
        f"were already in {target}" in out


def test_an_import_conflict_shows_keys_as_text(demo: dict[str, Path], tmp_path: Path,
                                               capsys: Capsys) -> None:
    with LogBackend(tmp_path / "a") as other:
        other.set_immutable(b"obs_target", encode_value("another target"))
    rc, _, err = cli(capsys, "import", str(demo["rdb"]), str(tmp_path / "a"))
    message = one_error(err, "import")
    assert rc == 1 and "b'" not in message
    assert message.startswith("cannot import key 'obs_target' from ")
    with LogBackend(tmp_path / "b") as other:
        other.set_indexed(b"cal_product_G", encode_value(("m000", "h")), encode_value(0))
    rc, _, err = cli(capsys, "import", str(demo["rdb"]), str(tmp_path / "b"))
    message = one_error(err, "import")
    assert rc == 1 and "b'" not in message and "\\x" not in message
    assert "cannot import key 'cal_product_G'" in message and \
        "sub-key ('m000', 'h') differs" in message


def test_history_of_a_missing_sub_key_of_a_key_that_exists(demo: dict[str, Path],
                                                           capsys: Capsys) -> None:
    rc, _, err = cli(capsys, "history", str(demo["log"]), "cal_product_G", "--sub-key", "m000")
    message = one_error(err, "history")
    assert rc == 1 and "no such key" not in message
    assert message.startswith("cal_product_G has no sub-key m000 in its history; its sub-keys "
                              "(as --sub-key takes them) are '[\"m000\", \"h\"]', ")
    # and what it suggests works
    rc, out, _ = cli(capsys, "history", str(demo["log"]), "cal_product_G", "--sub-key",
                     '["m000", "h"]')
    assert rc == 0 and len(out.splitlines()) == 2
    rc, _, err = cli(capsys, "history", str(demo["log"]), "obs_target", "--sub-key", "m000")
    assert rc == 1 and one_error(err, "history") == \
        "obs_target is an immutable key: it has no sub-keys (drop --sub-key)"


def test_the_lock_error_names_the_commands_that_work(log_copy: Path, tmp_path: Path,
                                                     demo: dict[str, Path],
                                                     capsys: Capsys) -> None:
    with LogBackend(log_copy):
        for argv in (["seal", str(log_copy)], ["checkpoint", str(log_copy)],
                     ["prune", str(log_copy), "--before", "10"],
                     ["import", str(demo["rdb"]), str(log_copy)]):
            rc, _, err = cli(capsys, *argv)
            message = one_error(err, argv[0])
            assert rc == 1 and "readonly=True" not in message
            assert message.startswith(f"{log_copy} is locked: another process (pid "
                                      f"{os.getpid()}) is writing it, and '{argv[0]}' needs "
                                      "the writer lock; while it writes, these commands "
                                      "work: info, keys, get, range, ")
        # ... and they do (those that need neither Redis nor matplotlib)
        for argv in (["info"], ["keys"], ["get", "obs_target"],
                     ["range", "anc_air_temperature"], ["history", "obs_target"], ["audit"],
                     ["tail"], ["export", str(tmp_path / "o.rdb")]):
            assert argv[0] in READ_ONLY_COMMANDS
            rc, _, err = cli(capsys, argv[0], str(log_copy), *argv[1:])
            assert rc == 0, err


def test_import_of_a_database_the_file_does_not_have(demo: dict[str, Path], tmp_path: Path,
                                                     capsys: Capsys) -> None:
    target = tmp_path / "i3"
    rc, out, err = cli(capsys, "import", str(demo["rdb"]), str(target), "--db", "3")
    message = one_error(err, "import")
    assert rc == 1 and out == ""
    assert message.endswith("no keys in database 3; the file has keys in database(s) 0")
    if target.exists():
        with LogBackend(target, readonly=True, follow=False) as log:
            assert log.position == 0


def test_prune_without_options_is_a_usage_error(log_copy: Path, capsys: Capsys) -> None:
    rc, out, err = cli(capsys, "prune", str(log_copy))
    assert rc == 2 and out == ""
    assert err.startswith("usage: telstate-log prune ")
    assert err.splitlines()[-1] == \
        "telstate-log prune: error: give --before POSITION and/or --older-than SECONDS"


def test_info_on_a_directory_holding_a_log_says_where_it_is(log_copy: Path, tmp_path: Path,
                                                            capsys: Capsys) -> None:
    (tmp_path / "demo.rdb").write_bytes(b"")  # as the demo leaves it: a log and an RDB file
    rc, _, err = cli(capsys, "info", str(tmp_path))
    assert rc == 1 and one_error(err, "info") == \
        f"{tmp_path}: not a telstate-log log (no segment files); found a log in {log_copy}"


# ------------------------------------------------- times, options, pipes
def test_every_time_option_takes_now_minus(demo: dict[str, Path], tmp_path: Path,
                                           capsys: Capsys) -> None:
    out = tmp_path / "o.rdb"
    rc, stdout, err = cli(capsys, "export", str(demo["log"]), str(out), "--as-of", "now-10m")
    assert rc == 0, err
    assert stdout.startswith("exported 0 keys") and "nothing matched" in err  # before the demo
    rc, stdout, _ = cli(capsys, "export", str(demo["log"]), str(out), "--as-of", "now+1m")
    assert rc == 0 and stdout.startswith("exported 17 keys")
    checked = 0
    for name, parser in subparsers().items():
        for action in parser._actions:
            if action.metavar in ("TIME", "T"):
                assert action.type is parse_time, (name, action.dest)
                checked += 1
    assert checked >= 10


def test_options_and_positional_patterns_in_any_order(demo: dict[str, Path],
                                                      capsys: Capsys) -> None:
    log = str(demo["log"])
    rc, out, err = cli(capsys, "tail", log, "-n", "2", "anc_*")
    assert rc == 0, err
    rows = out.splitlines()[1:]
    assert len(rows) == 2 and all(" anc_" in row for row in rows)
    rc, out, err = cli(capsys, "keys", log, "--type", "obs_*")
    assert rc == 0, err
    assert out.splitlines()[1:] and all(line.startswith("obs_") for line in out.splitlines()[1:])
    rc, out, err = cli(capsys, "range", "--st", "0", log, "--include-end",
                       "anc_air_temperature")
    assert rc == 0 and len(out.splitlines()) > 2, err


def test_a_closed_pipe_ends_range_quietly_with_status_0(tmp_path: Path) -> None:
    """``telstate-log range LOG KEY | head`` under ``set -o pipefail``."""
    with LogBackend(tmp_path / "log", fsync="never") as log:  # ~1 MB of output: the pipe fills
        log.add_mutable_many(b"s", [encode_value(float(i)) for i in range(20000)],
                             1.7e9 + np.arange(20000.0))
    proc = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | head -n 2', "sh", sys.executable, "-m",
         "telstate_log", "range", str(tmp_path / "log"), "s"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and len(proc.stdout.splitlines()) == 2


def test_empty_results_say_so_on_stderr(demo: dict[str, Path], capsys: Capsys) -> None:
    log = str(demo["log"])
    cases = [
        (["keys", log, "nothing_*"], "nothing matched: no keys match 'nothing_*'"),
        (["range", log, "anc_air_temperature", "--st", "now+1h"],
         "nothing matched: anc_air_temperature has no samples from "),
        (["audit", log, "--since-time", "now+1h"], "nothing matched: no events in the window"),
        (["tail", log, "nothing_*"], "nothing matched: no events of keys matching nothing_*"),
    ]
    for argv, message in cases:
        rc, out, err = cli(capsys, *argv)
        assert rc == 0 and out == "", argv
        assert err.startswith(f"telstate-log {argv[0]}: {message}") and err.count("\n") == 1
    rc, out, err = cli(capsys, "keys", log, "nothing_*", "--json")
    assert rc == 0 and json.loads(out)["keys"] == [] and "nothing matched" in err


@pytest.mark.parametrize("argv", [
    ["range", "LOG", "anc_air_temperature", "--st", "now-2h", "--et", "now-3h"],
    ["audit", "LOG", "--since", "10", "--until", "5"],
    ["audit", "LOG", "--since-time", "now", "--until-time", "now-1h"],
])
def test_an_inverted_window_is_a_usage_error(demo: dict[str, Path], argv: list[str],
                                             capsys: Capsys) -> None:
    argv = [str(demo["log"]) if a == "LOG" else a for a in argv]
    rc, out, err = cli(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.startswith(f"usage: telstate-log {argv[0]} ")
    assert err.splitlines()[-1].startswith(f"telstate-log {argv[0]}: error: inverted window: ")


# ------------------------------------------------------------------ help
def test_every_command_has_help_with_an_example(capsys: Capsys) -> None:
    commands = subparsers()
    assert {"export", "import", "demo", "info", "prune"} <= set(commands)
    for name in commands:
        rc, out, _ = cli(capsys, name, "--help")
        assert rc == 0 and re.search(rf"\nexamples:\n  telstate-log {name}[ \n]", out), name
    proc = run("export", "--help")
    assert proc.returncode == 0 and "examples:\n  telstate-log export " in proc.stdout
