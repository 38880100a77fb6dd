"""``telstate-log demo``: the README's first command, end to end."""

from __future__ import annotations

import datetime
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import cli, run

from telstate_log import TelescopeState
from telstate_log.backends import LogBackend
from telstate_log.cli._demo import (
    ANTENNAS,
    DURATION,
    LATE_AT,
    RATE,
    command_prefix,
    default_directory_name,
)
from telstate_log.storage._repair import verify_log

POSITION_SAMPLES = len(ANTENNAS) * 2 * (int(DURATION * RATE) + 1)


def test_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "demo"
    start = time.process_time()   # CPU time: other processes' load does not stretch it
    rc, out, err = cli(capsys, "demo", str(directory))
    assert rc == 0, err
    assert time.process_time() - start < 10
    for heading in ("== 1. time travel", "== 2. history of anc_air_temperature",
                    "== 3. changes from position", "== 4. seal", "== 5. RDB export",
                    "try next (commands take the log, "):
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
    # Every time has its ISO twin, as in every command's JSON.
    assert _twins_complete(data) and data["start_utc"].endswith("Z")
    assert data["changes"]["sub_keys_added"]["cal_product_G"]
    assert data["head"] == verify_log(data["log"]).head
    # The CLI reads what the demo wrote, including the time travel it showed.
    rc, out, _ = cli(capsys, "range", data["log"], "anc_air_temperature", "--json",
                     "--at", str(travel["before"]["position"]))
    assert travel["timestamp"] not in [s["timestamp"] for s in json.loads(out)["samples"]]
    rc, _, err = cli(capsys, "demo", data["directory"])
    assert rc == 1 and "already exists" in err


TIME_FIELDS = {"timestamp", "recorded", "start", "at", "st", "et"}


def _twins_complete(doc: object) -> bool:
    """Every time field of a JSON document has its ``*_utc`` twin."""
    if isinstance(doc, list):
        return all(_twins_complete(x) for x in doc)
    if isinstance(doc, dict):
        return all(f"{k}_utc" in doc for k in doc if k in TIME_FIELDS) and \
            all(_twins_complete(v) for v in doc.values())
    return True


def test_demo_as_a_fresh_command(tmp_path: Path) -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = run("demo", str(tmp_path / "demo"))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime  # not stretched
    assert proc.returncode == 0, proc.stderr                                   # by other load
    assert proc.stderr == "" and cpu < 15
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
    assert proc.wait(30) == 0  # quiet and successful, for `set -o pipefail` scripts
    assert err == ""


REPO = Path(__file__).resolve().parents[1]


def _suggestions(out: str) -> tuple[list[str], list[str]]:
    """The demo's "try next" lines: (commands, comment lines)."""
    tail = out[out.index("try next"):].splitlines()[1:]
    lines = [line[2:] for line in tail if line.startswith("  ")]
    return [c for c in lines if not c.startswith("#")], [c for c in lines if c.startswith("#")]


def test_demo_suggestions_work_without_an_activated_venv(tmp_path: Path) -> None:
    """The README's first command ran ``.venv/bin/telstate-log demo``; the demo then
    suggested ``telstate-log ...``, which is not on PATH until the venv is activated."""
    script = Path(sys.executable).parent / "telstate-log"
    if not script.is_file():
        pytest.skip("the telstate-log script is not installed next to this interpreter")
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and shutil.which("telstate-log", path=d) is None)
    env = {**os.environ, "PATH": path}
    proc = subprocess.run([str(script), "demo"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    [directory] = [p.name for p in tmp_path.iterdir()]
    assert directory.startswith("telstate-demo-")
    commands, notes = _suggestions(proc.stdout)
    assert len(commands) == 6 and notes and "activate" in notes[0]
    assert f"take the log, {directory}/log, not {directory}" in proc.stdout
    for command in commands:
        assert shlex.split(command)[0] == str(script)
        ran = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)
        assert ran.returncode == 0 and "not found" not in ran.stderr, (command, ran.stderr)
        assert ran.stdout


def test_command_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "env" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "telstate-log"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    (bin_dir / "activate").write_text("")
    python = str(bin_dir / "python")
    monkeypatch.chdir(tmp_path)
    # Run by its path, not on PATH: that path, and how to put it on PATH.
    prefix, hint = command_prefix("env/bin/telstate-log", python, path="")
    assert prefix == "env/bin/telstate-log"
    assert hint == "telstate-log is not on PATH: '. env/bin/activate' puts it there"
    # On PATH (the very same script): its bare name.
    assert command_prefix(str(script), python, path=str(bin_dir)) == ("telstate-log", None)
    # python -m telstate_log: the script next to the interpreter, relative to here.
    assert command_prefix("/x/__main__.py", python, path="")[0] == "env/bin/telstate-log"
    monkeypatch.chdir(bin_dir)
    assert command_prefix("/x/__main__.py", python, path="")[0] == "./telstate-log"
    # No script at all: the interpreter itself.
    other = str(tmp_path / "my python" / "python3")
    assert command_prefix("/x/__main__.py", other, path="") == \
        (f"'{other}' -m telstate_log", None)


def test_gitignore_covers_the_demo_directory() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and this repository")
    name = default_directory_name(datetime.datetime(2024, 5, 1, 12, 0, 0))
    for path in (f"{name}/", f"{name}-2/", f"{name}/log/00000000000000000001.seg"):
        proc = subprocess.run(["git", "-C", str(REPO), "check-ignore", "--no-index", "-q",
                               path], capture_output=True, timeout=60)
        assert proc.returncode == 0, (path, proc.stderr)


def test_readme_first_command_and_extras() -> None:
    """The README's first command leaves ``telstate-log`` on PATH and can plot; the trio
    example says what it needs, and that extra exists."""
    readme = (REPO / "README.md").read_text()
    first = readme.split("```bash\n", 1)[1].splitlines()[0]
    steps = [step.strip() for step in first.split("#")[0].split("&&")]
    assert ". .venv/bin/activate" in steps and steps[-1] == "telstate-log demo"
    assert steps.index(". .venv/bin/activate") < steps.index("pip install -e '.[plot]'")
    assert "pip install 'telstate-log[trio]'" in readme
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(req.startswith("trio") for req in extras["trio"])
    assert any(req.startswith("matplotlib") for req in extras["plot"])
