"""The export/import subcommands (through a local argparse harness) and the progress line."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from telstate_log import _progress
from telstate_log._cli_rdb import add_export_parser, add_import_parser, parse_time
from telstate_log._encoding import encode_value
from telstate_log._progress import Progress
from telstate_log.backends import LogBackend, MemoryBackend

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
        assert [m["source"] for m in copy._tables.sessions.values()] == ["test"]
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
    assert run("import", str(rdb), str(tmp_path / "copy")) == 1
    err = capsys.readouterr().err
    assert err.startswith("telstate-log import: Invalid RDB file") and "at byte" in err
    with LogBackend(tmp_path / "copy", readonly=True, follow=False) as copy:
        assert copy.position == 0


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
    assert "does not exist" in capsys.readouterr().err
    make_log(tmp_path / "log")
    assert run("export", str(tmp_path / "log"), str(tmp_path / "no" / "dir.rdb")) == 1
    assert capsys.readouterr().err.startswith("telstate-log export: ")


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


def test_parse_time() -> None:
    assert parse_time("1700000000") == 1700000000.0
    assert parse_time("2024-01-01T02:00:00+02:00") == 1704067200.0
    assert parse_time("2024-01-01 00:00") == 1704067200.0          # naive: UTC
    for bad in ("-5", "nan", "inf", "soon"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_time(bad)


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
