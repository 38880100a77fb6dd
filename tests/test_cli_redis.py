"""The ``project``, ``record`` and ``replay`` commands against a real redis-server."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

pytest.importorskip("katsdptelstate")


sys.path.insert(0, str(Path(__file__).resolve().parent / "replay"))

from _import_export_helpers import fill, redis_view, theirs, view
from test_cli import cli

from telstate_log import TelescopeState, _writer
from telstate_log.backends import LogBackend
from telstate_log.replay import DEFAULT_MARKER_KEY

pytestmark = [pytest.mark.redis, pytest.mark.interop]
MARKER = DEFAULT_MARKER_KEY.decode()
SECRET = "s3cret-Pa55"


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    path = tmp_path / "log"
    with LogBackend(path, fsync="never") as backend:
        fill(TelescopeState(backend), big=300)
    return path



def log_view(path: Path) -> dict[str, Any]:
    with LogBackend(path, readonly=True, follow=False) as backend:
        return view(TelescopeState(backend))


def command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "telstate_log", *argv]


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# ------------------------------------------------------------------ project
def test_project_json_exit_codes_and_refusal(capsys: pytest.CaptureFixture[str],
                                             log_path: Path, client: redis.Redis,
                                             redis_url: str) -> None:
    rc, out, err = cli(capsys, "project", str(log_path), redis_url, "--json")
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["command"] == "project" and summary["stopped"] is False
    assert summary["position"] == summary["log_position"] == summary["events"] > 0
    assert summary["keys"] == len(redis_view(client)) == summary["keys_restored"]
    assert redis_view(client) == log_view(log_path)
    rc, out, err = cli(capsys, "project", str(log_path), redis_url)      # resumes: nothing new
    assert rc == 0 and "projected up to position" in out and "events            0" in out
    client.set(b"intruder", b"1")
    client.delete(DEFAULT_MARKER_KEY)
    rc, out, err = cli(capsys, "project", str(log_path), redis_url)
    assert rc == 1 and "--overwrite" in err and out == ""
    rc, out, err = cli(capsys, "project", str(log_path), redis_url, "--overwrite", "--upto",
                       "5", "--json")
    assert rc == 0 and json.loads(out)["position"] == 5 and client.get(b"intruder") is None
    rc, out, err = cli(capsys, "project", str(log_path), redis_url, "--upto", "999999")
    assert rc == 1 and "beyond the end" in err
    rc, out, err = cli(capsys, "project", str(log_path), redis_url, "--follow", "--upto", "5")
    assert rc == 2 and "not allowed" in err
    rc, out, err = cli(capsys, "project", str(log_path), "localhost:6379")
    assert rc == 1 and "not a Redis URL" in err
    rc, out, err = cli(capsys, "project", str(log_path.parent / "nope"), redis_url)
    assert rc == 1 and "no such log" in err


def test_passwords_are_never_printed(capsys: pytest.CaptureFixture[str], log_path: Path,
                                     fresh_redis: Any) -> None:
    admin = fresh_redis.client()
    admin.config_set("requirepass", SECRET)
    admin.close()
    url = f"redis://:{SECRET}@127.0.0.1:{fresh_redis.port}/0"
    rc, out, err = cli(capsys, "project", str(log_path), url, "--json")
    assert rc == 0, err
    assert json.loads(out)["redis"] == f"redis://:***@127.0.0.1:{fresh_redis.port}/0"
    rc, out, err = cli(capsys, "project", str(log_path), url)
    assert rc == 0 and SECRET not in out + err and "***" in out
    wrong = url.replace(SECRET, "wrong-" + SECRET)
    rc, out, err = cli(capsys, "project", str(log_path), wrong)
    assert rc == 1 and SECRET not in out + err and "***" in err
    query = f"redis://127.0.0.1:{fresh_redis.port}/0?password={SECRET}"
    rc, out, err = cli(capsys, "replay", str(log_path), query, "--speed", "max")
    assert rc == 0 and SECRET not in out + err and "password=***" in out
    rc, out, err = cli(capsys, "replay", str(log_path), query.replace(SECRET, "x" + SECRET))
    assert rc == 1 and SECRET not in out + err
    # record: the source label of the recorded events is redacted too
    record_log = log_path.parent / "recorded"
    proc = subprocess.Popen(command("record", url, str(record_log), "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (record_log / "LOCK").exists() and _position(record_log) > 0)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert SECRET not in out + err
    with LogBackend(record_log, readonly=True, follow=False) as backend:
        labels = {backend.session_info(e.session)["source"] for e in backend.events()}
    assert labels == {f"record:redis://:***@127.0.0.1:{fresh_redis.port}/0"}


def _position(path: Path) -> int:
    try:
        with LogBackend(path, readonly=True, follow=False) as backend:
            return backend.position
    except Exception:
        return 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_project_follow_stops_cleanly_on_a_signal(tmp_path: Path, client: redis.Redis,
                                                  redis_url: str, sig: int) -> None:
    path = tmp_path / "log"
    backend = LogBackend(path, fsync="never")
    ts = TelescopeState(backend)
    ts["start"] = 1
    proc = subprocess.Popen(command("project", str(path), redis_url, "--follow", "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: client.exists("start"))
        for i in range(50):
            ts.add("sensor", float(i), ts=float(i))
        theirs(client).wait_key("sensor", lambda value, t: value == 49.0, timeout=10)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        backend.close()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["stopped"] is True and summary["position"] == 51
    assert theirs(client)[MARKER]["position"] == 51
    assert redis_view(client) == log_view(path)


# ------------------------------------------------------------------- record
def test_record_until_sigterm(tmp_path: Path, client: redis.Redis, redis_url: str) -> None:
    k = theirs(client)
    k["before"] = "start"
    path = tmp_path / "recorded"
    proc = subprocess.Popen(command("record", redis_url, str(path), "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _position(path) == 1)
        fill(k, big=200)
        expected = len(view(k))
        wait_for(lambda: len(log_view(path)) == expected and _position(path) >= 410)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["command"] == "record" and summary["deletes_visible"] is False
    assert summary["recorded"] == summary["position"] and summary["resyncs"] == 1
    assert log_view(path) == view(k)


# ------------------------------------------------------------------- replay
def test_replay_targets(capsys: pytest.CaptureFixture[str], log_path: Path, tmp_path: Path,
                        client: redis.Redis, redis_url: str) -> None:
    rc, out, err = cli(capsys, "replay", str(log_path), "memory", "--speed", "max", "--json")
    assert rc == 0, err
    summary = json.loads(out)
    end = summary["last"]
    assert summary["events"] == end and summary["first"] == 1 and summary["keys_at_end"] == 16
    copy = tmp_path / "copy"
    rc, out, err = cli(capsys, "replay", str(log_path), str(copy), "--speed", "max")
    assert rc == 0 and log_view(copy) == log_view(log_path)
    rc, out, err = cli(capsys, "replay", str(log_path), str(copy))
    assert rc == 1 and "new log" in err
    rc, out, err = cli(capsys, "replay", str(log_path), redis_url, "--speed", "max", "--json",
                       "--from", "3", "--to", "7")
    assert rc == 0 and (json.loads(out)["first"], json.loads(out)["last"]) == (3, 7)
    rc, out, err = cli(capsys, "replay", str(log_path), "memory", "--speed", "0")
    assert rc == 2 and "speed" in err
    rc, out, err = cli(capsys, "replay", str(log_path), "memory", "--speed", "max",
                       "--from-time", "now+1h", "--json")
    assert rc == 0 and json.loads(out)["events"] == 0


def test_replay_stops_on_sigterm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count()
    monkeypatch.setattr(_writer, "_time", lambda: 1.7e9 + 10.0 * next(ticks))
    path = tmp_path / "log"
    with LogBackend(path, fsync="never") as backend:
        for i in range(5):
            backend.set_immutable(b"k%d" % i, b"\xff\x01")      # ten seconds apart
    proc = subprocess.Popen(command("replay", str(path), "memory", "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["stopped"] is True and summary["events"] == 1 and summary["keys_at_end"] == 1
