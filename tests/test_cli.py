"""The telstate-log command line: parsing, exit codes, and the read-only commands.

Every command is driven through ``main(argv)`` (output captured) and, for
the JSON forms, also as ``python -m telstate_log`` in a subprocess.  The
shared log built here (:func:`build_log`) is reused by the other
``test_cli_*`` modules.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from telstate_log import TelescopeState, __version__
from telstate_log.backends import LogBackend
from telstate_log.cli._main import main, parse_position, parse_time
from telstate_log.cli._output import Table, iso_utc, to_json, value_text

T0 = 1_700_000_000.0
LOG_EVENTS = 49


def build_log(path: Path) -> dict[str, Any]:
    """A small log with every kind of event; returns landmarks (positions, times).

    Positions: 1 obs_target, 2 obs_params, 3..42 sensor ``s`` (value i at
    T0 + i), 43..44 ``status``, 45..46 indexed ``gains`` (source "cal
    pipeline"), 47 ``tmp`` set, 48 ``tmp`` deleted, 49 a late sample of
    ``s`` stamped T0 + 10.5 (source "late station").
    """
    marks: dict[str, Any] = {}
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None,
                    source="test script") as backend:
        ts = TelescopeState(backend)
        ts["obs_target"] = "Sun, special"
        ts["obs_params"] = {"observer": "tester", "n": 3}
        for i in range(40):
            ts.add("s", float(i), ts=T0 + i)
        ts.add("status", "slew", ts=T0)
        ts.add("status", "track", ts=T0 + 10)
        backend.set_source("cal pipeline")
        ts.set_indexed("gains", ("m000", "h"), np.array([1 + 1j, 2 - 1j], np.complex64))
        ts.set_indexed("gains", ("m000", "v"), np.array([3 + 0j, 4 + 2j], np.complex64))
        ts["tmp"] = 1
        ts.delete("tmp")
        backend.sync()
        time.sleep(0.05)
        marks["time_before_late"] = time.time()
        time.sleep(0.05)
        backend.set_source("late station")
        ts.add("s", 99.0, ts=T0 + 10.5)
        assert backend.position == LOG_EVENTS
    return marks


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    path = tmp_path_factory.mktemp("cli") / "log"
    return str(path), build_log(path)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run main(argv) in process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m telstate_log ARGV`` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "telstate_log", *argv], capture_output=True,
                          text=True, timeout=timeout)


# ------------------------------------------------------------ parsing
def test_parse_time_forms() -> None:
    assert parse_time("1700000000.5") == 1700000000.5
    assert parse_time("2023-11-14T22:13:20Z") == 1700000000.0
    assert parse_time("2023-11-14T22:13:20") == 1700000000.0  # naive means UTC
    assert parse_time("2023-11-15T00:13:20+02:00") == 1700000000.0
    assert parse_time("2023-11-14 22:13:20.250Z") == 1700000000.25
    now = time.time()
    assert abs(parse_time("now") - now) < 5
    assert abs(parse_time("now-5m") - (now - 300)) < 5
    assert abs(parse_time("now+1.5h") - (now + 5400)) < 5
    assert abs(parse_time("NOW - 2d") - (now - 172800)) < 5
    for bad in ("yesterday", "nan", "inf", "now-5y", "2023-13-01"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"invalid time|finite"):
            parse_time(bad)
    assert parse_position("0") == 0
    with pytest.raises(Exception, match="invalid position"):
        parse_position("-1")


def test_output_helpers() -> None:
    assert to_json({"a": [1, 2.5]}) == {"a": [1, 2.5]}  # tagged values: test_cli_json.py
    assert iso_utc(1700000000.25) == "2023-11-14T22:13:20.250Z"
    assert iso_utc(None) is None and iso_utc(1e300) == "1e+300"
    assert value_text(np.arange(3).reshape(3, 1)) == "array([[0], [1], [2]])"
    import io

    out = io.StringIO()
    table = Table(["N", "NAME", "VALUE"], right={0}, out=out, batch=2)
    table.add("1", "a", "x y")
    table.add("100", "bb", "z")
    table.add("7", "a-much-longer-name", "w")  # widths only grow after the first batch
    table.flush()
    assert out.getvalue().splitlines() == [
        "  N  NAME  VALUE", "  1  a     x y", "100  bb    z", "  7  a-much-longer-name  w"]


# ------------------------------------------------------ status and usage
def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = cli(capsys, "--version")
    assert rc == 0 and out.strip() == f"telstate-log {__version__}"
    rc, out, _ = cli(capsys, "--help")
    assert rc == 0 and "examples:" in out
    for command in ("info", "keys", "get", "range", "history", "audit", "tail", "verify",
                    "repair", "checkpoint", "seal", "plot", "demo", "project", "record",
                    "replay"):
        assert f"    {command}" in out
        rc, sub, _ = cli(capsys, command, "--help")
        assert rc == 0 and "examples:\n  telstate-log " + command in sub
    rc, _, err = cli(capsys)
    assert rc == 2 and "usage:" in err
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"telstate-log {__version__}"


@pytest.mark.parametrize("argv", [
    ["get"],
    ["bogus"],
    ["range", "LOG", "s", "--st", "yesterday"],
    ["get", "LOG", "s", "--at", "-1"],
    ["get", "LOG", "s", "--at", "1", "--as-of", "now"],
    ["audit", "LOG", "--since", "1", "--since-time", "now"],
    ["verify", "LOG", "--head", "not-a-hash"],
    ["tail", "LOG", "-n", "many"],
])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                             log: tuple[str, dict[str, Any]]) -> None:
    argv = [log[0] if a == "LOG" else a for a in argv]
    rc, out, err = cli(capsys, *argv)
    assert rc == 2 and out == "" and "usage:" in err and "error:" in err


def test_usage_error_exit_2_in_a_subprocess(log: tuple[str, dict[str, Any]]) -> None:
    proc = run("range", log[0], "s", "--st", "yesterday")
    assert proc.returncode == 2 and "invalid time 'yesterday'" in proc.stderr


def test_failures_are_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          log: tuple[str, dict[str, Any]]) -> None:
    cases = [
        (["info", str(tmp_path / "nowhere")], "no such log directory"),
        (["keys", str(tmp_path)], "not a telstate-log log"),
        (["get", log[0], "nokey"], "nokey: no such key"),
        (["get", log[0], "tmp", "--at", "46"], "tmp: no such key at position 46"),
        (["get", log[0], "s", "--at", "1000"], "beyond the end of the log"),
        (["range", log[0], "obs_target"], "not a sensor"),
        (["history", log[0], "never"], "no such key"),
    ]
    for argv, message in cases:
        rc, out, err = cli(capsys, *argv)
        assert rc == 1 and out == "", argv
        assert err.startswith(f"telstate-log {argv[0]}: error: ") and message in err, err
        assert err.count("\n") == 1, err


def test_a_corrupt_log_is_reported_not_a_traceback(tmp_path: Path) -> None:
    build_log(tmp_path / "log")
    seg = sorted((tmp_path / "log").glob("*.seg"))[0]
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0x10
    seg.write_bytes(bytes(data))
    proc = run("info", str(tmp_path / "log"))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert str(seg) in proc.stderr and "at byte" in proc.stderr


# ------------------------------------------------------------------ info
def test_info(capsys: pytest.CaptureFixture[str], log: tuple[str, dict[str, Any]]) -> None:
    path, _ = log
    rc, out, _ = cli(capsys, "info", path, "--json")
    assert rc == 0
    info = json.loads(out)
    assert info["positions"] == {"first": 1, "last": LOG_EVENTS, "durable": LOG_EVENTS,
                                 "sealed": None, "checkpoint": None, "pruned": None}
    assert info["keys"] == {"total": 5, "immutable": 2, "indexed": 1, "mutable": 2,
                            "samples": 43}
    assert info["valid_time"]["first"] == T0 and info["valid_time"]["last"] == T0 + 39
    assert info["valid_time"]["first_utc"] == "2023-11-14T22:13:20.000000Z"
    assert info["recorded"]["first"] <= info["recorded"]["last"]
    assert info["segments"]["count"] == len(list(Path(path).glob("*.seg")))
    assert info["segments"]["bytes"] == sum(f.stat().st_size for f in Path(path).glob("*.seg"))
    assert [s["source"] for s in info["sources"]] == ["test script", "cal pipeline",
                                                      "late station"]
    assert all(s["events"] is None for s in info["sources"])
    assert info["head"] is None
    rc, out, _ = cli(capsys, "info", path, "--count-events", "--json")
    assert [s["events"] for s in json.loads(out)["sources"]] == [44, 4, 1]
    rc, out, _ = cli(capsys, "info", path)
    assert rc == 0
    assert f"positions    1 .. {LOG_EVENTS}" in out
    assert "keys         5: 2 mutable (43 samples), 2 immutable, 1 indexed" in out
    assert "valid time   2023-11-14T22:13:20.000Z .. 2023-11-14T22:13:59.000Z" in out
    assert "late station" in out and "head hash    -" in out


# ------------------------------------------------------------------ keys
def test_keys(capsys: pytest.CaptureFixture[str], log: tuple[str, dict[str, Any]]) -> None:
    path, _ = log
    rc, out, _ = cli(capsys, "keys", path)
    assert rc == 0 and out.split() == ["gains", "obs_params", "obs_target", "s", "status"]
    rc, out, _ = cli(capsys, "keys", path, "obs_*", "--type")
    assert out.splitlines() == ["KEY         TYPE", "obs_params  immutable",
                                "obs_target  immutable"]
    rc, out, _ = cli(capsys, "keys", path, "--at", "47", "--json")
    data = json.loads(out)
    assert data["position"] == 47 and {"key": "tmp", "type": "immutable"} in data["keys"]
    rc, out, _ = cli(capsys, "keys", path, "z*")
    assert rc == 0 and out == ""


# ------------------------------------------------------------------- get
def test_get(capsys: pytest.CaptureFixture[str], log: tuple[str, dict[str, Any]]) -> None:
    path, marks = log
    rc, out, _ = cli(capsys, "get", path, "obs_target")
    assert rc == 0 and out == "'Sun, special'\n"
    rc, out, _ = cli(capsys, "get", path, "s")
    assert out == "39.0\n"  # the latest sample by timestamp, not the late one
    rc, out, _ = cli(capsys, "get", path, "gains")
    assert out.startswith("{('m000', 'h'): array([1.+1.j, 2.-1.j], dtype=complex64)")
    rc, out, _ = cli(capsys, "get", path, "s", "--json")
    assert json.loads(out) == {"key": "s", "type": "mutable", "position": LOG_EVENTS,
                               "value": 39.0, "timestamp": T0 + 39,
                               "timestamp_utc": "2023-11-14T22:13:59.000000Z"}
    rc, out, _ = cli(capsys, "get", path, "gains", "--at", "45", "--json")
    data = json.loads(out)
    assert data["position"] == 45 and data["type"] == "indexed"
    assert data["value"] == [{"sub_key": {"$type": "tuple", "items": ["m000", "h"]},
                              "value": {"$type": "ndarray", "dtype": "<c8", "shape": [2],
                                        "data": [{"$type": "complex", "real": 1.0, "imag": 1.0},
                                                 {"$type": "complex", "real": 2.0,
                                                  "imag": -1.0}]}}]
    rc, out, _ = cli(capsys, "get", path, "tmp", "--at", "47")
    assert out == "1\n"
    rc, out, _ = cli(capsys, "get", path, "obs_params", "--as-of",
                     str(marks["time_before_late"]), "--json")
    data = json.loads(out)
    assert data["position"] == LOG_EVENTS - 1 and data["value"] == {"observer": "tester", "n": 3}


# ----------------------------------------------------------------- range
def test_range(capsys: pytest.CaptureFixture[str], log: tuple[str, dict[str, Any]]) -> None:
    path, marks = log
    rc, out, _ = cli(capsys, "range", path, "s", "--st", str(T0 + 10), "--et", str(T0 + 12))
    assert rc == 0
    assert out.splitlines() == [
        "        TIMESTAMP  TIME (UTC)                VALUE",
        "1700000010.000000  2023-11-14T22:13:30.000Z  10.0",
        "1700000010.500000  2023-11-14T22:13:30.500Z  99.0",
        "1700000011.000000  2023-11-14T22:13:31.000Z  11.0"]
    iso = "2023-11-14T22:13:30.250Z"
    rc, out, _ = cli(capsys, "range", path, "s", "--st", iso, "--et", str(T0 + 12),
                     "--include-previous", "--include-end", "--json")
    data = json.loads(out)
    assert [(x["timestamp"], x["value"]) for x in data["samples"]] == \
        [(T0 + 10, 10.0), (T0 + 10.5, 99.0), (T0 + 11, 11.0), (T0 + 12, 12.0)]
    assert data["st"] == T0 + 10.25 and data["et"] == T0 + 12
    # As of the position before the late sample arrived, it is not there.
    for travel in (["--at", str(LOG_EVENTS - 1)], ["--as-of", str(marks["time_before_late"])]):
        rc, out, _ = cli(capsys, "range", path, "s", "--st", str(T0 + 10), "--et",
                         str(T0 + 11), "--json", *travel)
        data = json.loads(out)
        assert data["position"] == LOG_EVENTS - 1
        assert [x["value"] for x in data["samples"]] == [10.0]
    rc, out, _ = cli(capsys, "range", path, "status", "--json")
    assert [x["value"] for x in json.loads(out)["samples"]] == ["slew", "track"]
    rc, out, _ = cli(capsys, "range", path, "s", "--st", str(T0 + 1000))
    assert rc == 0 and out == ""


# ------------------------------------------------------ history and audit
def test_history(capsys: pytest.CaptureFixture[str], log: tuple[str, dict[str, Any]]) -> None:
    path, _ = log
    rc, out, _ = cli(capsys, "history", path, "s", "--json")
    assert rc == 0
    events = json.loads(out)["events"]
    assert [e["position"] for e in events] == [*range(3, 43), LOG_EVENTS]
    late = events[-1]
    assert late["source"] == "late station" and late["kind"] == "add"
    assert late["timestamp"] == T0 + 10.5 and late["value"] == 99.0
    assert late["timestamp_utc"] == "2023-11-14T22:13:30.500000Z"
    assert late["recorded"] > events[0]["recorded"] and late["recorded_utc"].endswith("Z")
    rc, out, _ = cli(capsys, "history", path, "gains", "--sub-key", '["m000", "v"]', "--json")
    [event] = json.loads(out)["events"]
    assert (event["position"], event["kind"], event["sub_key"]) == (
        46, "set_indexed", {"$type": "tuple", "items": ["m000", "v"]})
    assert event["source"] == "cal pipeline" and event["timestamp"] is None
    rc, out, _ = cli(capsys, "history", path, "tmp")
    lines = out.splitlines()
    assert lines[0].split() == ["POSITION", "RECORDED", "(UTC)", "SOURCE", "KIND", "KEY",
                                "SUB-KEY", "TIMESTAMP", "(UTC)", "VALUE"]
    assert lines[1].split()[0::3] == ["47", "pipeline", "-"]
    assert lines[2].split()[4:] == ["delete", "tmp", "-", "-", "-"]
    rc, _, err = cli(capsys, "history", path, "gains", "--sub-key", "nope")
    assert rc == 1 and "gains has no sub-key nope in its history" in err


def test_audit(capsys: pytest.CaptureFixture[str], log: tuple[str, dict[str, Any]]) -> None:
    path, marks = log
    rc, out, _ = cli(capsys, "audit", path, "--json")
    data = json.loads(out)
    assert rc == 0 and (data["since"], data["until"]) == (1, LOG_EVENTS)
    events = data["events"]
    assert [e["position"] for e in events] == list(range(1, LOG_EVENTS + 1))
    assert [e["kind"] for e in events[43:48]] == ["add", "set_indexed", "set_indexed", "set",
                                                  "delete"]
    assert {e["session"] for e in events} == {0, 1, 2}
    rc, out, _ = cli(capsys, "audit", path, "--since", "44", "--until", "46")
    assert [line.split()[0] for line in out.splitlines()] == ["POSITION", "44", "45", "46"]
    t = marks["time_before_late"]
    rc, out, _ = cli(capsys, "audit", path, "--since-time", str(t), "--json")
    assert [e["position"] for e in json.loads(out)["events"]] == [LOG_EVENTS]
    rc, out, _ = cli(capsys, "audit", path, "--until-time", iso_utc(t, "microseconds") or "",
                     "--since", "47", "--json")
    assert [e["position"] for e in json.loads(out)["events"]] == [47, 48]
    rc, out, err = cli(capsys, "audit", path, "--since", "40", "--until", "39", "--json")
    assert rc == 2 and out == "" and "inverted window" in err


# ------------------------------------------------------- tail (no follow)
def test_tail(capsys: pytest.CaptureFixture[str], log: tuple[str, dict[str, Any]]) -> None:
    path, _ = log
    rc, out, _ = cli(capsys, "tail", path, "-n", "3")
    assert rc == 0
    assert [line.split()[0] for line in out.splitlines()] == ["POSITION", "47", "48", "49"]
    rc, out, _ = cli(capsys, "tail", path, "st*", "obs_?arget", "--json")
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["position"] for e in events] == [1, 43, 44]
    rc, out, _ = cli(capsys, "tail", path, "s", "-n", "2", "--json")
    assert [json.loads(line)["position"] for line in out.splitlines()] == [42, LOG_EVENTS]
    rc, out, _ = cli(capsys, "tail", path, "-n", "0")
    assert rc == 0 and out == ""
    rc, out, _ = cli(capsys, "tail", path, "--max-events", "1", "--json")
    assert [json.loads(line)["position"] for line in out.splitlines()] == [LOG_EVENTS]


# ---------------------------------------------------- JSON in subprocesses
@pytest.mark.parametrize("argv, check", [
    (["info", "LOG", "--json"], lambda d: d["positions"]["last"] == LOG_EVENTS),
    (["keys", "LOG", "--json"], lambda d: len(d["keys"]) == 5),
    (["get", "LOG", "obs_params", "--json"], lambda d: d["value"]["observer"] == "tester"),
    (["range", "LOG", "s", "--json"], lambda d: len(d["samples"]) == 41),
    (["history", "LOG", "status", "--json"], lambda d: len(d["events"]) == 2),
    (["audit", "LOG", "--since", "45", "--json"], lambda d: len(d["events"]) == 5),
])
def test_json_in_a_subprocess(log: tuple[str, dict[str, Any]], argv: list[str],
                              check: Any) -> None:
    proc = run(*[log[0] if a == "LOG" else a for a in argv])
    assert proc.returncode == 0 and proc.stderr == ""
    assert check(json.loads(proc.stdout))


def test_tail_json_lines_in_a_subprocess(log: tuple[str, dict[str, Any]]) -> None:
    proc = run("tail", log[0], "-n", "5", "--json")
    assert proc.returncode == 0
    assert [json.loads(line)["position"] for line in proc.stdout.splitlines()] == \
        list(range(LOG_EVENTS - 4, LOG_EVENTS + 1))
