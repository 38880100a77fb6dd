"""``telstate-log demo``: the README's first command, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import cli, run

from telstate_log import TelescopeState
from telstate_log._cli_demo import ANTENNAS, DURATION, LATE_AT, RATE
from telstate_log._repair import verify_log
from telstate_log.backends import LogBackend

POSITION_SAMPLES = len(ANTENNAS) * 2 * (int(DURATION * RATE) + 1)


def test_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "demo"
    start = time.monotonic()
    rc, out, err = cli(capsys, "demo", str(directory))
    assert rc == 0, err
    assert time.monotonic() - start < 10
    for heading in ("== 1. time travel", "== 2. history of anc_air_temperature",
                    "== 3. changes from position", "== 4. seal", "== 5. RDB export",
                    "try next:"):
        assert heading in out
    log = directory / "log"
    report = verify_log(log)
    assert report.ok and not report.problems
    assert f"head hash {report.head}" in out
    with LogBackend(log, readonly=True, follow=False) as backend:
        ts = TelescopeState(backend)
        assert len(ts.get_range("m000_pos_actual_scan_azim", st=0)) == DURATION * RATE + 1
        assert ts.get("obs_target").startswith("PKS 1934-638")
        assert set(ts.get("cal_product_G")) == {(a, p) for a in ANTENNAS for p in "hv"}
        late = ts.history("anc_air_temperature")[-1]
        assert late.position == backend.position == report.events
        assert late.source == "demo weather station (late delivery)"
    rdb = directory / "demo.rdb"
    assert ("wrote " + str(rdb)) in out if rdb.exists() else "skipped" in out


def test_demo_json_and_default_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    rc, out, _ = cli(capsys, "demo", "--json")
    assert rc == 0
    data = json.loads(out)
    assert Path(data["directory"]).name.startswith("telstate-demo-")
    assert Path(data["log"]).is_dir() and data["events"] > POSITION_SAMPLES
    travel = data["time_travel"]
    assert travel["timestamp"] == data["start"] + LATE_AT
    assert travel["late_position"] == data["events"]
    # Before the late sample arrived, the value in force was an earlier sample's.
    assert travel["before"]["timestamp"] < travel["after"]["timestamp"] == travel["timestamp"]
    assert travel["before"]["value"] != travel["after"]["value"]
    assert data["changes"]["sub_keys_added"]["cal_product_G"]
    assert data["head"] == verify_log(data["log"]).head
    # The CLI reads what the demo wrote, including the time travel it showed.
    rc, out, _ = cli(capsys, "range", data["log"], "anc_air_temperature", "--json",
                     "--at", str(travel["before"]["position"]))
    assert travel["timestamp"] not in [s["timestamp"] for s in json.loads(out)["samples"]]
    rc, _, err = cli(capsys, "demo", data["directory"])
    assert rc == 1 and "already exists" in err


def test_demo_as_a_fresh_command(tmp_path: Path) -> None:
    start = time.monotonic()
    proc = run("demo", str(tmp_path / "demo"))
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and elapsed < 15
    assert os.path.isdir(tmp_path / "demo" / "log")
    assert run("verify", str(tmp_path / "demo" / "log")).returncode == 0


def test_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """``telstate-log range ... | head -1``: no traceback when the reader goes away."""
    assert run("demo", str(tmp_path / "demo")).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "telstate_log", "audit",
                             str(tmp_path / "demo" / "log")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 1
    assert err == ""
