"""The export/import subcommands (through a local argparse harness) and the progress line."""

from __future__ import annotations

import argparse
import errno
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from replay._rdb_helpers import aof_commands, expiring, rdb_file, sensor, string_record, write_state
from test_faults import FaultyFileSystem

from telstate_log import TelstateError
from telstate_log.backends import LogBackend, MemoryBackend
from telstate_log.backends import _log as log_backend_module
from telstate_log.cli import _progress_bar as _progress
from telstate_log.cli._progress_bar import Progress
from telstate_log.cli._rdb import add_export_parser, add_import_parser
from telstate_log.core._encoding import encode_value
from telstate_log.core._types import KeyType
from telstate_log.replay._rdb_load import import_rdb_to_log

V = encode_value


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="telstate-log")
    sub = parser.add_subparsers(dest="command", required=True)
    add_export_parser(sub)
    add_import_parser(sub)
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def make_log(path: Path, keys: int = 3, samples: int = 100) -> None:
    with LogBackend(path, fsync="never", checkpoint_bytes=None) as log:
        for k in range(keys):
            log.add_mutable_many(b"sensor_%d" % k, [V(i * 0.5) for i in range(samples)],
                                 1.7e9 + np.arange(samples, dtype=float))
        log.set_immutable(b"obs_name", V("scan"))
        log.set_indexed(b"table", V("a"), V(1))


def test_export_then_import_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_log(tmp_path / "log")
    rdb = tmp_path / "out.rdb"
    assert run("export", str(tmp_path / "log"), str(rdb), "--json") == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["command"] == "export" and err == ""
    assert (summary["keys"], summary["samples"]) == (5, 300)
    assert summary["bytes"] == rdb.stat().st_size and summary["seconds"] >= 0
    assert run("import", str(rdb), str(tmp_path / "copy"), "--json", "--source", "test") == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["keys"], summary["samples"], summary["events"]) == (5, 300, 302)
    assert summary["position"] == 302 and summary["bytes"] == rdb.stat().st_size
    with LogBackend(tmp_path / "copy", readonly=True, follow=False) as copy:
        assert sorted(copy.keys(b"*")) == [b"obs_name", b"sensor_0", b"sensor_1", b"sensor_2",
                                           b"table"]
        assert [m["source"] for m in copy.log.tables.sessions.values()] == ["test"]
    assert run("import", str(rdb), str(tmp_path / "copy"), "--json") == 0
    assert json.loads(capsys.readouterr().out)["events"] == 0


def test_human_summaries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_log(tmp_path / "log")
    rdb = tmp_path / "out.rdb"
    assert run("export", str(tmp_path / "log"), str(rdb), "--keys", "sensor_[01]") == 0
    out = capsys.readouterr().out
    assert out.startswith("exported 2 keys (200 samples, ") and str(rdb) in out
    assert run("import", str(rdb), str(tmp_path / "copy")) == 0
    out = capsys.readouterr().out
    assert "imported 2 keys (200 samples" in out and "200 new events" in out


def test_import_damaged_file_fails_cleanly(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    make_log(tmp_path / "log")
    rdb = tmp_path / "out.rdb"
    assert run("export", str(tmp_path / "log"), str(rdb)) == 0
    data = rdb.read_bytes()
    rdb.write_bytes(data[:len(data) // 2])
    capsys.readouterr()
    assert run("import", str(rdb), str(tmp_path / "new" / "deeper" / "copy")) == 1
    err = capsys.readouterr().err
    assert err.startswith("telstate-log import: error: Invalid RDB file") and "at byte" in err
    assert not (tmp_path / "new").exists()          # no log, no directory made for it
    before = _files(tmp_path / "log")
    assert run("import", str(rdb), str(tmp_path / "log")) == 1
    assert _files(tmp_path / "log") == before        # an existing log: exactly as it was


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def test_import_conflict_and_missing_input(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    make_log(tmp_path / "log")
    assert run("export", str(tmp_path / "log"), str(tmp_path / "out.rdb")) == 0
    with LogBackend(tmp_path / "other", fsync="never") as other:
        other.set_immutable(b"obs_name", V("another scan"))
    capsys.readouterr()
    assert run("import", str(tmp_path / "out.rdb"), str(tmp_path / "other")) == 1
    assert "obs_name" in capsys.readouterr().err
    assert run("import", str(tmp_path / "missing.rdb"), str(tmp_path / "new")) == 1
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_export_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("export", str(tmp_path / "nowhere"), str(tmp_path / "out.rdb")) == 1
    assert "nowhere: no such log directory" in capsys.readouterr().err
    make_log(tmp_path / "log")
    assert run("export", str(tmp_path / "log"), str(tmp_path / "no" / "dir.rdb")) == 1
    assert capsys.readouterr().err.startswith("telstate-log export: error: writing ")


def test_export_of_a_log_with_a_live_writer(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with LogBackend(tmp_path / "log", fsync="never") as writer:
        writer.set_immutable(b"k", V(1))
        writer.sync()
        assert run("export", str(tmp_path / "log"), str(tmp_path / "out.rdb"), "--json") == 0
    assert json.loads(capsys.readouterr().out)["keys"] == 1


def test_time_travel_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--at/--as-of export the state as it was: here before the immutable and the table."""
    make_log(tmp_path / "log")
    out = str(tmp_path / "out.rdb")
    assert run("export", str(tmp_path / "log"), out, "--at", "300", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["keys"], summary["samples"]) == (3, 300)
    mem = MemoryBackend()
    mem.load_from_file(out)
    assert sorted(mem.keys(b"*")) == [b"sensor_0", b"sensor_1", b"sensor_2"]
    assert run("export", str(tmp_path / "log"), out, "--at", "150", "--keys", "sensor_1") == 0
    mem = MemoryBackend()
    mem.load_from_file(out)
    assert len(mem.get_range(b"sensor_1", 0.0, float("inf"), False, False) or []) == 50
    with LogBackend(tmp_path / "log", readonly=True, follow=False) as log:
        recorded = log.events(301, 301)[0].recorded
    assert run("export", str(tmp_path / "log"), out, "--as-of", str(recorded)) == 0
    mem = MemoryBackend()
    mem.load_from_file(out)
    assert mem.get(b"obs_name")[0] == V("scan") and b"table" not in mem
    assert run("export", str(tmp_path / "log"), out, "--at", "9999") == 1
    assert "beyond the end of the log" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["export", "log", "out.rdb", "--at", "-1"],
    ["export", "log", "out.rdb", "--at", "x"],
    ["export", "log", "out.rdb", "--at", "1", "--as-of", "2"],
    ["export", "log", "out.rdb", "--as-of", "yesterday"],
    ["export", "log"],
    ["import", "in.rdb"],
    ["import", "in.rdb", "log", "--db", "x"],
])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        run(*argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


# ------------------------------------------ failed imports into a new log leave nothing
IMPORT_PROC = Path(__file__).resolve().parent / "_import_pause_proc.py"


def _sensors_rdb(path: Path, keys: int = 600) -> Path:
    """An RDB file of `keys` small sensors (more than one "read" progress report)."""
    path.write_bytes(write_state({b"s%04d" % i: (KeyType.MUTABLE, sensor(20))
                                  for i in range(keys)}))
    return path


@pytest.mark.parametrize("stage", ["read", "import"])
def test_interrupted_import_into_a_new_log_leaves_nothing(tmp_path: Path, stage: str) -> None:
    rdb = _sensors_rdb(tmp_path / "in.rdb")
    log = tmp_path / "new" / "log"
    proc = subprocess.Popen([sys.executable, str(IMPORT_PROC), stage, "import", str(rdb),
                             str(log)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[:1] == [b"paused"] and int(line[1]) > 0, line
        if stage == "import":           # events of the first keys are in the new log
            assert (log / "LOCK").exists()
        else:                           # the file is read before the log is created
            assert not (tmp_path / "new").exists()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert not (tmp_path / "new").exists()


def test_interrupted_read_leaves_an_existing_log_as_it_was(tmp_path: Path) -> None:
    make_log(tmp_path / "log")
    before = _files(tmp_path / "log")
    rdb = _sensors_rdb(tmp_path / "in.rdb")
    proc = subprocess.Popen([sys.executable, str(IMPORT_PROC), "read", "import", str(rdb),
                             str(tmp_path / "log")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"paused ")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert _files(tmp_path / "log") == before


def test_interrupted_import_into_an_existing_log_says_what_it_kept(tmp_path: Path) -> None:
    """Events already written stay (each is valid); the message says where, and running
    the import again finishes it."""
    make_log(tmp_path / "log")
    # fewer keys than the import creates together (one progress report per key)
    rdb = _sensors_rdb(tmp_path / "in.rdb", keys=10)
    proc = subprocess.Popen([sys.executable, str(IMPORT_PROC), "import", "import", str(rdb),
                             str(tmp_path / "log")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"paused 20\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    with LogBackend(tmp_path / "log", readonly=True, follow=False) as log:
        kept = log.position
    assert f"interrupted: positions 303..{kept} of".encode() in err, err
    assert run("import", str(rdb), str(tmp_path / "log"), "--json") == 0
    with LogBackend(tmp_path / "log", readonly=True, follow=False) as log:
        assert log.position == 302 + 10 * 20


def _disk_full(after: int) -> FaultyFileSystem:
    """A file system whose segment writes fail with ENOSPC after `after` of them."""
    fs = FaultyFileSystem()
    fs.arm("write", ".seg", err=errno.ENOSPC, after=after, times=None)
    return fs


@pytest.mark.parametrize("after", [0, 1, 3])
def test_full_disk_import_into_a_new_log_leaves_nothing(tmp_path: Path, after: int) -> None:
    """0: the new log's first segment cannot be written; 1, 3: events can't (the
    small sensors are created in one append: the long ones, a write each, come first)."""
    state = {b"s%04d" % i: (KeyType.MUTABLE, sensor(20)) for i in range(50)}
    state.update({b"long%d" % i: (KeyType.MUTABLE, sensor(300)) for i in range(4)})
    rdb = tmp_path / "in.rdb"
    rdb.write_bytes(write_state(state))
    fs = _disk_full(after)
    with pytest.raises((TelstateError, OSError)) as info:
        import_rdb_to_log(rdb, tmp_path / "new" / "log", fs=fs, fsync="always")
    assert "No space left" in str(info.value) or isinstance(info.value.__cause__, OSError)
    assert fs.rules[0].fired >= 1
    assert not (tmp_path / "new").exists()


def test_full_disk_cli_import_into_a_new_log_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    rdb = _sensors_rdb(tmp_path / "in.rdb", keys=50)
    fs = _disk_full(1)                  # the segment header goes, the events do not
    monkeypatch.setattr(log_backend_module, "OsFileSystem", lambda: fs)
    assert run("import", str(rdb), str(tmp_path / "new" / "log")) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "was not created" in err, err
    assert fs.rules[0].fired >= 1
    assert not (tmp_path / "new").exists()


def test_import_into_a_new_log_succeeds_and_keeps_it(tmp_path: Path) -> None:
    rdb = _sensors_rdb(tmp_path / "in.rdb", keys=5)
    stats = import_rdb_to_log(rdb, tmp_path / "new" / "log", fsync="never")
    assert (stats.keys, stats.events) == (5, 100)
    with LogBackend(tmp_path / "new" / "log", readonly=True, follow=False) as log:
        assert log.position == 100


def test_aof_file_is_named_for_what_it_is(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    aof = tmp_path / "appendonly.aof"
    aof.write_bytes(rdb_file(string_record(b"k", b"v"))
                    + aof_commands((b"SET", b"other", b"1")))
    assert run("import", str(aof), str(tmp_path / "log")) == 1
    err = capsys.readouterr().err
    assert "append-only file, not a plain RDB file" in err and "checksum" not in err, err
    assert not (tmp_path / "log").exists()


def test_import_summary_tells_what_became_of_expiry_times(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    now_ms = int(time.time() * 1000)
    rdb = tmp_path / "in.rdb"
    rdb.write_bytes(rdb_file(expiring(string_record(b"gone", V(1)), now_ms - 60_000)
                             + expiring(string_record(b"kept", V(2)), now_ms + 3_600_000)
                             + string_record(b"plain", V(3))))
    assert run("import", str(rdb), str(tmp_path / "log")) == 0
    out = capsys.readouterr().out
    assert "imported 2 keys" in out and "1 keys whose expiry time had passed were skipped" \
        in out and "1 keys were imported without their expiry time" in out, out
    assert run("import", str(rdb), str(tmp_path / "log2"), "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["keys"], summary["expired"], summary["expiry_dropped"]) == (2, 1, 1)


# ------------------------------------------------------------------ progress
class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_silent_unless_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(stream)
    progress("export", 1, 10)
    progress.close()
    assert stream.getvalue() == "" and not progress.enabled


def test_progress_rate_limit_and_erase(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 0.05, 0.2, 0.21, 0.22])
    monkeypatch.setattr(_progress, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    stream = _Tty()
    with Progress(stream) as progress:
        progress("read", 100, None)            # shown: first call
        progress("read", 200, None)            # 0.05 s later: skipped
        progress("read", 300, None)            # shown
        progress("import", 5, 1000)            # new stage: shown at once
        progress("import", 1000, 1000)         # too soon: skipped
    text = stream.getvalue()
    assert text.split("\r")[1:4] == ["read: 100", "read: 300", "import: 5/1,000 (0%)"]
    assert text.endswith("\r" + " " * len("import: 5/1,000 (0%)") + "\r")


def test_progress_shows_rate_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([10.0, 10.2, 12.0, 12.5])
    monkeypatch.setattr(_progress, "time", SimpleNamespace(monotonic=lambda: next(clock)))
    stream = _Tty()
    progress = Progress(stream)
    progress("export", 0, 5_000_000)
    progress("export", 1000, 5_000_000)          # too soon for a rate
    progress("export", 2_500_000, 5_000_000)     # 2 s in: 1.25M/s
    progress("import", 1500, None)               # new stage: its own clock
    last = "export: 2,500,000/5,000,000 (50%) 1.25M/s"
    assert stream.getvalue().split("\r")[1:] == [
        "export: 0/5,000,000 (0%)", "export: 1,000/5,000,000 (0%)", last,
        "import: 1,500".ljust(len(last))]
