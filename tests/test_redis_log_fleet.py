"""Many writer processes on one shared log, on a real redis-server.

* 8 writer processes x 5,000 mixed writes each, at once: every acknowledged
  write that changed something is in the stream exactly once, attributed to
  its writer (session source label), in an order consistent with each
  writer's own; and Redis's state, a StreamFollower in this process, one in
  another process (both following while the writers ran) and a replica
  materialised at the end are equal, key by key and sample by sample.
* writers killed with SIGKILL at random moments: Redis's state is always the
  state materialised from the stream (never a change without its event, nor
  the reverse), every acknowledged write is in the stream once, and every
  event in it is a write some writer started.

Writers are ``_shared_writer_proc.py`` processes (see its docstring).  Also:
``tools/bench_shared.py --quick`` prints consistent figures.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from _redis import RedisServer, require_redis
from _shared_writer_proc import redis_state, state_of
from _waiting import DEADLINE, wait_for

from telstate_log.backends import LogBackend, RedisLogBackend, StreamFollower
from telstate_log.replay import Archiver

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PROC = str(Path(__file__).with_name("_shared_writer_proc.py"))
WRITERS = 8
WRITES = int(os.environ.get("TELSTATE_FLEET_WRITES", "5000"))


class Proc:
    """A helper process whose stdout lines are read as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, PROC, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.out: IO[str] = self.proc.stdout
        self.stdin: IO[str] = self.proc.stdin
        self.lines: list[str] = []

    def expect(self, word: str) -> None:
        """Read lines until one is `word` (they are kept in :attr:`lines`)."""
        for line in self.out:
            self.lines.append(line.rstrip("\n"))
            if self.lines[-1] == word:
                return
        raise AssertionError(f"helper exited ({self.proc.wait()}) before {word!r}")

    def send(self, line: str) -> None:
        self.stdin.write(line + "\n")
        self.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.lines.extend(line.rstrip("\n") for line in self.out)

    def close(self) -> None:
        self.kill()
        self.out.close()
        self.stdin.close()


@pytest.fixture
def server(fresh_redis: RedisServer) -> Iterator[RedisServer]:
    yield fresh_redis


def acked(lines: list[str]) -> list[list[Any]]:
    """The writes a writer reported as returned (JSON lines)."""
    return [json.loads(line) for line in lines if line.startswith("[")]


def tried(lines: list[str]) -> set[int]:
    return {int(line.split()[1]) for line in lines if line.startswith("try ")}


def stream_writes(backend: RedisLogBackend) -> list[tuple[str, tuple[Any, ...], int]]:
    """``(source label, write, position)`` of every event of the stream, in order."""
    sources: dict[int, str] = {}
    out = []
    for event in backend.events(1):
        if event.session not in sources:
            sources[event.session] = backend.session_info(event.session)["source"]
        write = (event.kind, event.key.hex() if event.key is not None else None,
                 event.sub_key.hex() if event.sub_key is not None else None,
                 event.value.hex() if event.value else None, event.timestamp)
        out.append((sources[event.session], write, event.position))
    return out


def as_write(record: list[Any]) -> tuple[Any, ...]:
    _, kind, key, sub, value, ts, _ = record
    return (kind, key, sub, value, ts)


def test_eight_writers_one_total_order(server: RedisServer, tmp_path: Path) -> None:
    url = server.url
    here = StreamFollower.from_url(url)          # follows while the writers run
    there = Proc("follow", url)                  # another process, following too
    archiver = Archiver(url, tmp_path / "archive")   # and an archive, copying as they write
    archived = threading.Event()
    archiving = threading.Thread(target=archiver.follow, args=(archived,), daemon=True)
    archiving.start()
    writers = [Proc("write", url, str(w), str(WRITES), str(1000 + w)) for w in range(WRITERS)]
    try:
        there.expect("ready")
        for proc in writers:
            proc.expect("ready")
        for proc in writers:                     # all at once
            proc.send("go")
        for proc in writers:
            proc.expect("done")
            assert proc.proc.wait(DEADLINE) == 0
        there.send(f"dump {tmp_path / 'there.pickle'}")
        there.expect("dumped")
    finally:
        for p in (*writers, there):
            p.close()

    backend = RedisLogBackend.from_url(url)
    try:
        events = stream_writes(backend)
        # Exactly once, attributed to the writer that made it.
        for w, proc in enumerate(writers):
            records = acked(proc.lines)
            assert len(records) == WRITES
            mine = [(write, pos) for source, write, pos in events if source == f"writer-{w}"]
            expected = Counter(as_write(r) for r in records if r[-1])
            assert Counter(write for write, _ in mine) == expected
            # ... in an order consistent with the writer's own (equal writes, such as
            # deletes of one key, are matched in turn).
            index: dict[tuple[Any, ...], list[int]] = {}
            for r in records:
                if r[-1]:
                    index.setdefault(as_write(r), []).append(r[0])
            order = [index[write].pop(0) for write, _ in sorted(mine, key=lambda m: m[1])]
            assert order == sorted(order)
        assert len(events) == backend.position
        # Each raced immutable was set once: by one writer, whom every other was refused.
        raced = {r[2] for proc in writers for r in acked(proc.lines)
                 if r[1] == "set" and bytes.fromhex(r[2]).startswith(b"race-")}
        sets = Counter(write[1] for _, write, _ in events if write[0] == "set")
        assert raced and all(sets[key] == 1 for key in raced)
        # history names each event's writer (the shared sensor's values say who wrote them)
        import telstate_log

        sources: dict[int, str] = {}
        for event in backend.history(b"shared"):
            assert event.value is not None
            writer = telstate_log.decode_value(event.value)[0]
            if event.session not in sources:
                sources[event.session] = backend.session_info(event.session)["source"]
            assert sources[event.session] == f"writer-{writer}"

        # One state: Redis, two followers, a replica materialised now, the archive.
        in_redis = redis_state(url)
        wait_for(lambda: archiver.position == backend.position, what="the archive")
        archived.set()
        archiving.join(DEADLINE)
        archiver.close()
        with LogBackend(tmp_path / "archive", readonly=True, follow=False) as archive:
            assert state_of(archive) == in_redis
            assert archive.events() == backend.events()    # positions, times, sessions
        position = here.sync()
        assert position == backend.position
        assert state_of(here) == in_redis
        there_position, there_state = pickle.loads((tmp_path / "there.pickle").read_bytes())
        assert there_position == position
        assert there_state == in_redis
        assert state_of(backend.replica()) == in_redis
        assert len(in_redis[b"shared"][1]) == sum(
            1 for proc in writers for r in acked(proc.lines) if r[2] == b"shared".hex())
    finally:
        backend.close()
        here.close()
        archived.set()
        archiver.close()


def test_kill_writers_never_half_applied(server: RedisServer) -> None:
    url = server.url
    rng = random.Random(7)
    live: list[tuple[int, Proc]] = []
    done: list[tuple[int, Proc]] = []
    follower = StreamFollower.from_url(url)

    def kill(victim: tuple[int, Proc]) -> None:
        # A random moment: after a random number of its writes were started.
        victim[1].expect(f"try {rng.randrange(20, 400)}")
        victim[1].kill()
        done.append(victim)

    try:
        for writer in range(24):
            proc = Proc("write", url, str(writer), "1000000", str(writer))
            proc.expect("ready")
            proc.send("go")
            live.append((writer, proc))
            if len(live) >= 3:
                kill(live.pop(rng.randrange(len(live))))
        while live:
            kill(live.pop())
    finally:
        for _, proc in live + done:
            proc.close()

    backend = RedisLogBackend.from_url(url)
    try:
        in_redis = redis_state(url)
        assert state_of(backend.replica()) == in_redis
        follower.sync()
        assert state_of(follower) == in_redis
        assert state_of(StreamFollower.from_url(url)) == in_redis
        events = stream_writes(backend)
        for writer, proc in done:
            mine = Counter(w for source, w, _ in events if source == f"writer-{writer}")
            records = acked(proc.lines)
            expected = Counter(as_write(r) for r in records if r[-1])
            assert expected - mine == Counter()  # every acknowledged write, once
            # ... and nothing else but the write in flight when it was killed, if any.
            assert sum((mine - expected).values()) <= 1
            assert len(tried(proc.lines)) - len(records) <= 1
    finally:
        backend.close()
        follower.close()


@pytest.mark.interop
def test_bench_shared_quick() -> None:
    """tools/bench_shared.py --quick: its figures are consistent (not how fast they are)."""
    pytest.importorskip("katsdptelstate")
    require_redis()
    bench = Path(__file__).resolve().parent.parent / "tools" / "bench_shared.py"
    proc = subprocess.run([sys.executable, str(bench), "--quick"], capture_output=True,
                          text=True, timeout=DEADLINE * 4)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout
    for figure in ("add ratio", "add_mutable_many ratio", "follower latency p99",
                   "materialise", "archive"):
        assert f"  {figure}: " in proc.stdout
