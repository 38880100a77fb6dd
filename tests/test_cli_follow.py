"""``tail -f``: following a log while another writer appends to it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _cli_proc import cli_command, ignores_sigint
from _waiting import DEADLINE
from test_cli import cli

from telstate_log import TelescopeState
from telstate_log.backends import LogBackend
from telstate_log.cli import _events as _cli_events

WRITER = str(Path(__file__).with_name("_writer_proc.py"))


def tail_command(*argv: str, sigint_ignored: bool = False) -> list[str]:
    return cli_command("tail", *argv, sigint_ignored=sigint_ignored)


def start_writer(path: Path, count: int, delay: float) -> subprocess.Popen[str]:
    """tests/_writer_proc.py: samples 0..count-1 of ``k`` then ``done``; 4 KiB segments."""
    proc = subprocess.Popen([sys.executable, WRITER, str(path), "interval", str(count),
                             str(delay), "4096"], stdout=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("ready")
    return proc


def test_tail_follows_a_writer_process(tmp_path: Path) -> None:
    path = tmp_path / "log"
    count = 400
    writer = start_writer(path, count, delay=0.003)
    try:
        # Print what is there, then follow: every event exactly once, in order.
        tail = subprocess.run(tail_command(str(path), "-f", "-n", "1000000", "--json",
                                           "--max-events", str(count + 1), "--timeout", "60"),
                              capture_output=True, text=True, timeout=90)
        assert writer.wait(30) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
    assert tail.returncode == 0, tail.stderr
    events = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [e["position"] for e in events] == list(range(1, count + 2))
    assert [e["value"] for e in events[:-1]] == [float(i) for i in range(count)]
    assert events[-1]["key"] == "done" and events[-1]["kind"] == "set"
    assert {e["source"] for e in events} == {"writer-proc"}
    assert len(list(path.glob("*.seg"))) > 3  # it followed across segment rotations


def test_tail_follows_in_process_with_a_key_filter(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log"
    backend = LogBackend(path, segment_bytes=4096, checkpoint_bytes=None)
    ts = TelescopeState(backend)
    ts.add("a", -1.0, ts=1.0)
    following = threading.Event()
    follow = _cli_events._follow

    def signalling_follow(*args: Any, **kwargs: Any) -> Iterator[Any]:
        following.set()  # the existing event is printed: from here on, tail follows
        yield from follow(*args, **kwargs)

    monkeypatch.setattr(_cli_events, "_follow", signalling_follow)

    def write() -> None:
        if not following.wait(DEADLINE):
            return  # the tail's --timeout reports it
        for i in range(200):
            ts.add("a" if i % 2 else "b", float(i), ts=10.0 + i)
            time.sleep(0.001)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        rc, out, err = cli(capsys, "tail", str(path), "a", "-f", "-n", "5", "--json",
                           "--max-events", "101", "--timeout", str(DEADLINE))
    finally:
        writer.join()
        backend.close()
    assert rc == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["value"] for e in events] == [-1.0, *[float(i) for i in range(1, 200, 2)]]
    assert {e["key"] for e in events} == {"a"}


def test_tail_timeout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log"
    with LogBackend(path) as backend:
        TelescopeState(backend).add("a", 1.0, ts=1.0)
    start = time.monotonic()
    rc, out, _ = cli(capsys, "tail", str(path), "-f", "--timeout", "0.3")
    assert rc == 0 and out.splitlines()[1].split()[0] == "1"
    assert 0.25 < time.monotonic() - start < DEADLINE  # not before the timeout; no hang
    # A timeout before --max-events events arrived is a failure.
    rc, out, _ = cli(capsys, "tail", str(path), "-f", "--timeout", "0.2", "--max-events", "2")
    assert rc == 1 and len(out.splitlines()) == 2


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_tail_stops_cleanly_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    path = tmp_path / "log"
    with LogBackend(path) as backend:
        TelescopeState(backend).add("a", 1.0, ts=1.0)
    proc = subprocess.Popen(tail_command(str(path), "-f", "--json"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed once it is following (and handling signals)
        assert json.loads(first)["position"] == 1
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out == "" and "Traceback" not in err


def test_tail_started_with_sigint_ignored_keeps_following(tmp_path: Path) -> None:
    """A shell starts a background job with SIGINT ignored (Ctrl-C at the terminal is
    not for it): ``tail -f`` keeps it ignored, as Python does, and stops on SIGTERM."""
    path = tmp_path / "log"
    backend = LogBackend(path)
    ts = TelescopeState(backend)
    ts.add("a", 1.0, ts=1.0)
    proc = subprocess.Popen(tail_command(str(path), "-f", "--json", sigint_ignored=True),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["position"] == 1
        assert ignores_sigint(proc.pid)
        proc.send_signal(signal.SIGINT)
        ts.add("a", 2.0, ts=2.0)
        assert json.loads(proc.stdout.readline())["value"] == 2.0  # still following
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
        backend.close()
    assert proc.returncode == 0, err
    assert out == "" and "Traceback" not in err
