"""The ``archive`` command against a real redis-server."""

from __future__ import annotations

import json
import subprocess
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import redis
from _cli_proc import cli_command, killed_on_error, terminate
from _waiting import DEADLINE, wait_for
from test_cli import cli

from telstate_log.backends import LogBackend, RedisLogBackend

pytestmark = pytest.mark.redis


def events_of(path: Path) -> list[object]:
    with LogBackend(path, readonly=True, follow=False) as backend:
        return list(backend.events(1))


def position_of(path: Path) -> int:
    try:
        with LogBackend(path, readonly=True, follow=False) as backend:
            return backend.position
    except Exception:  # not created yet
        return 0


def test_archive_copies_resumes_and_trims(capsys: pytest.CaptureFixture[str], redis_url: str,
                                          tmp_path: Path) -> None:
    path = tmp_path / "archive"
    with closing(RedisLogBackend.from_url(redis_url, source="cli-test")) as writer:
        for i in range(20):
            writer.add_mutable(b"s", b"\x01%d" % i, float(i))
        writer.add_mutable_many(b"b", [b"\x01%d" % j for j in range(100)], np.arange(100.0))
        rc, out, err = cli(capsys, "archive", redis_url, str(path), "--json")
        assert rc == 0, err
        summary = json.loads(out)
        assert summary["command"] == "archive" and summary["stream"] == "telstate-log"
        assert summary["position"] == summary["events"] == 120 and summary["trimmed"] == 0
        assert events_of(path) == writer.events(1)
        rc, out, err = cli(capsys, "archive", redis_url, str(path))      # nothing new
        assert rc == 0 and "archived up to position 120" in out
        assert "events copied         0" in out
        writer.set_immutable(b"late", b"\x01x")
        rc, out, err = cli(capsys, "archive", redis_url, str(path), "--trim", "--json")
        summary = json.loads(out)
        assert rc == 0 and summary["events"] == 1 and summary["trimmed"] == 120
        log_client = writer.log_client
        assert log_client.xlen(b"telstate-log") == 1
        assert events_of(path)[-1] == writer.events(121)[0]


def test_archive_reports_divergence_and_bad_arguments_in_one_line(
        capsys: pytest.CaptureFixture[str], redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "archive"
    with closing(RedisLogBackend.from_url(redis_url)) as writer:
        for i in range(3):
            writer.add_mutable(b"s", b"\x01%d" % i, float(i))
        rc, out, err = cli(capsys, "archive", redis_url, str(path))
        assert rc == 0, err
        # the stream lost its last event (a failover), and another write took its position
        log_client: redis.Redis = writer.log_client
        kept = log_client.xrange(b"telstate-log")[:-1]
        log_client.delete(b"telstate-log")
        for ident, fields in kept:
            log_client.xadd(b"telstate-log", fields, id=ident)
        log_client.hset(b"telstate-log:meta", "pos", 2)
        writer.add_mutable(b"s", b"\x01other", 9.0)
    rc, out, err = cli(capsys, "archive", redis_url, str(path))
    assert rc == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("telstate-log archive: error: ") and "position 3" in err
    rc, out, err = cli(capsys, "archive", "http://nowhere", str(path))
    assert rc == 1 and "unsupported scheme" in err and len(err.strip().splitlines()) == 1
    rc, out, err = cli(capsys, "archive", redis_url)
    assert rc == 2 and "LOG" in err
    rc, out, err = cli(capsys, "archive", "--help")
    assert rc == 0 and "examples:\n  telstate-log archive" in out and "--trim" in out
    rc, out, err = cli(capsys, "--help")
    assert "    archive" in out
    rc, out, err = cli(capsys, "archive", "redis://127.0.0.1:1/0", str(tmp_path / "none"))
    assert rc == 1 and "could not connect" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()             # nothing created for nothing


def test_archive_follow_stops_cleanly_on_sigterm(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "archive"
    with closing(RedisLogBackend.from_url(redis_url)) as writer:
        writer.set_immutable(b"start", b"\x01go")
        proc = subprocess.Popen(cli_command("archive", redis_url, str(path), "--follow",
                                            "--json"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with killed_on_error(proc):
            wait_for(lambda: position_of(path) == 1, what="the archive to start")
            for i in range(50):
                writer.add_mutable(b"s", b"\x01%d" % i, float(i))
            wait_for(lambda: position_of(path) == 51, what="the archive to follow")
            out, _ = terminate(proc, DEADLINE)
        summary = json.loads(out)
        assert summary["stopped"] is True and summary["position"] == summary["events"] == 51
        assert events_of(path) == writer.events(1)
