"""The ``project``, ``record`` and ``replay`` commands against a real redis-server."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

pytest.importorskip("katsdptelstate")


sys.path.insert(0, str(Path(__file__).resolve().parent / "replay"))

from _cli_proc import cli_command, ignores_sigint, killed_on_error, terminate
from _import_export_helpers import fill, marker_view, redis_view, theirs, view
from _waiting import DEADLINE, wait_for
from test_cli import cli

from telstate_log import TelescopeState
from telstate_log.backends import LogBackend
from telstate_log.replay._marker import MarkerStore
from telstate_log.storage import _event_writer as _writer

pytestmark = [pytest.mark.redis, pytest.mark.interop]
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


def command(*argv: str, sigint_ignored: bool = False) -> list[str]:
    return cli_command(*argv, sigint_ignored=sigint_ignored)


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
    store = MarkerStore(client)
    store.meta.delete(store.key)
    store.close()
    rc, out, err = cli(capsys, "project", str(log_path), redis_url)
    assert rc == 1 and "--overwrite" in err and out == ""
    rc, out, err = cli(capsys, "project", str(log_path), redis_url, "--marker-db", "0")
    assert rc == 1 and "marker database (0)" in err and out == ""
    rc, out, err = cli(capsys, "project", str(log_path), redis_url, "--marker-db", "x")
    assert rc == 2 and "invalid database" in err
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
        out, err = proc.communicate(timeout=DEADLINE)
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
        theirs(client).wait_key("sensor", lambda value, t: value == 49.0, timeout=DEADLINE)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
        backend.close()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["stopped"] is True and summary["position"] == 51
    assert marker_view(client)["position"] == 51
    assert redis_view(client) == log_view(path)


def test_project_follow_started_with_sigint_ignored_keeps_it_ignored(
        tmp_path: Path, client: redis.Redis, redis_url: str) -> None:
    """A shell starts a background job with SIGINT ignored (Ctrl-C at the terminal is
    for its foreground job): the command keeps following, and stops on SIGTERM."""
    path = tmp_path / "log"
    backend = LogBackend(path, fsync="never")
    ts = TelescopeState(backend)
    ts["start"] = 1
    proc = subprocess.Popen(command("project", str(path), redis_url, "--follow", "--json",
                                    sigint_ignored=True),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: client.exists("start"), what="the backfill")
        assert ignores_sigint(proc.pid)             # no handler installed over SIG_IGN
        proc.send_signal(signal.SIGINT)
        ts["after"] = 2
        wait_for(lambda: client.exists("after"), what="an event written after SIGINT")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
        backend.close()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["stopped"] is True and summary["position"] == 2


# ------------------------------------------------------------------- record
def test_record_until_sigterm(tmp_path: Path, client: redis.Redis, redis_url: str) -> None:
    k = theirs(client)
    k["before"] = "start"
    path = tmp_path / "recorded"
    proc = subprocess.Popen(command("record", redis_url, str(path), "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with killed_on_error(proc):
        wait_for(lambda: _position(path) == 1)
        fill(k, big=200)
        expected = len(view(k))
        wait_for(lambda: len(log_view(path)) == expected and _position(path) >= 410)
        out, _ = terminate(proc, DEADLINE)
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


@pytest.mark.parametrize(("signals", "sigint_ignored"), [
    ([signal.SIGTERM], False), ([signal.SIGINT], False),
    ([signal.SIGINT, signal.SIGTERM], True)], ids=["SIGTERM", "SIGINT", "SIGINT-ignored"])
def test_replay_stops_on_a_signal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  signals: list[signal.Signals], sigint_ignored: bool) -> None:
    """SIGTERM or Ctrl-C stops a replay after the events applied so far; started with
    SIGINT ignored (a shell's background job), it keeps SIGINT ignored."""
    ticks = itertools.count()
    monkeypatch.setattr(_writer, "_time", lambda: 1.7e9 + 1000.0 * next(ticks))
    path = tmp_path / "log"
    with LogBackend(path, fsync="never") as backend:
        for i in range(5):
            backend.set_immutable(b"k%d" % i, b"\xff\x01")      # 1000 seconds apart
    copy = tmp_path / "copy"
    proc = subprocess.Popen(command("replay", str(path), str(copy), "--json",
                                    sigint_ignored=sigint_ignored),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Ready: the first event is in the copy, so the replay is under way (and listening
        # for signals); the next one is due 1000 s later.
        wait_for(lambda: _position(copy) >= 1, what="the first replayed event")
        assert ignores_sigint(proc.pid) == sigint_ignored
        for sig in signals:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["stopped"] is True and (summary["events"], summary["last"]) == (1, 1)
    assert set(log_view(copy)) == {"k0"}
