"""The archiver: a shared log's stream copied into a segment log, exactly once.

Every test runs on a real redis-server.  What the archive holds is compared
event by event (position, recorded time, session, kind, key, value) with
what the stream holds; the archive is also read as an ordinary log
(``verify``, history, time travel, export).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from telstate_log import HistoryUnavailableError, StreamDivergedError, verify_log
from telstate_log.backends import LogBackend, RedisLogBackend
from telstate_log.core._stream_format import HEAD_FORMAT
from telstate_log.replay import Archiver, export_backend

pytestmark = pytest.mark.redis

STREAM = b"telstate-log"


@pytest.fixture
def backend(redis_url: str) -> Iterator[RedisLogBackend]:
    writer = RedisLogBackend.from_url(redis_url, source="writer-a")
    yield writer
    writer.close()


def archive_of(path: Path) -> LogBackend:
    """The archive at `path`, opened read-only (as any log)."""
    return LogBackend(path, readonly=True, follow=False)


def workload(a: RedisLogBackend, b: RedisLogBackend, rounds: int = 30) -> None:
    """Every kind of write, from two sessions (each registered before any batch)."""
    a.set_immutable(b"obs_target", b"\x01zenith")
    b.set_immutable(b"obs_owner", b"\x01b")
    for i in range(rounds):
        a.add_mutable(b"m000_pos", b"\x01%d" % i, 1000.0 + i)
        b.add_mutable_many(b"m001_pos", [b"\x01b%d-%d" % (i, j) for j in range(1 + i % 5)],
                           2000.0 + 10 * i + np.arange(1 + i % 5))
        a.set_indexed(b"cal", b"k%d" % (i % 7), b"\x01%d" % i)
        if i % 11 == 5:
            a.delete(b"m000_pos")
    b.add_mutable(b"m000_pos", b"\x01late", 1.0)
    a.clear()
    a.set_immutable(b"after_clear", b"\x01x")
    b.add_mutable_many(b"big", [b"\x02v%d" % j for j in range(3000)], np.arange(3000.0))


def stream_entries(log_client: redis.Redis) -> list[tuple[bytes, bytes]]:
    return [(ident, fields[b"e"]) for ident, fields in log_client.xrange(STREAM)]


def rebuild_stream(log_client: redis.Redis, entries: list[tuple[bytes, bytes]]) -> None:
    """Replace the stream by `entries` (as a failover to a server holding them would)."""
    last = max((int(i.split(b"-")[0]) for i, _ in entries), default=0)
    with log_client.pipeline(transaction=True) as pipe:
        pipe.delete(STREAM)
        for ident, body in entries:
            pipe.xadd(STREAM, {b"e": body}, id=ident)
        pipe.hset(STREAM + b":meta", "pos", last)
        pipe.execute()


def with_value(body: bytes, value: bytes) -> bytes:
    """An ADD or SET record `body` with another value (same head, key and timestamp)."""
    import struct

    head = struct.Struct(HEAD_FORMAT.replace("I4", "I"))
    kind, _, _, n = head.unpack_from(body)
    cut = head.size + n + (8 if kind == 2 else 0)
    return body[:cut] + value


# ------------------------------------------------------------------ copying
def test_the_archive_holds_every_event_as_the_stream_does(
        redis_url: str, backend: RedisLogBackend, tmp_path: Path) -> None:
    other = RedisLogBackend.from_url(redis_url, source="writer-b")
    try:
        workload(backend, other)
        with Archiver(redis_url, tmp_path / "archive") as archiver:
            copied = archiver.run_once()
            assert copied == archiver.position == backend.position > 3000
            assert archiver.run_once() == 0
        expected = backend.events(1)
        assert len(expected) == backend.position
        archive = archive_of(tmp_path / "archive")
        try:
            assert archive.events(1) == expected         # positions, times, sessions, values
            assert archive.session_ids() == [1, 2]
            for session in (1, 2):
                assert archive.session_info(session) == backend.session_info(session)
            assert {archive.session_info(e.session)["source"] for e in expected} == {
                "writer-a", "writer-b"}
            # the archive's state is the stream's (and Redis's)
            replica = backend.replica()
            assert sorted(archive.keys(b"*")) == sorted(replica.keys(b"*")) == sorted(
                backend.keys(b"*"))
            for key in archive.keys(b"*"):
                assert archive.get(key) == backend.get(key)
            # history and time travel on the archive
            assert archive.history(b"m001_pos") == backend.history(b"m001_pos")
            assert archive.history(b"cal", b"k3") == backend.history(b"cal", b"k3")
            middle = expected[len(expected) // 3].position
            then = archive.as_of(middle)
            assert sorted(then.keys(b"*")) == sorted(replica.as_of(middle).keys(b"*"))
            assert then.get(b"m000_pos") == replica.as_of(middle).get(b"m000_pos")
            moment = expected[40].recorded
            assert archive.resolve_time(moment) == replica.resolve_time(moment)
            stats = export_backend(archive, tmp_path / "archive.rdb")
            assert stats.keys == len(archive.keys(b"*"))
        finally:
            archive.close()
        report = verify_log(tmp_path / "archive")
        assert report.ok and report.events == len(expected), report.problems
        # a copy, not a translation: each frame's body after its prefix is the record's tail
        assert frame_tails(tmp_path / "archive") == {
            r.position: r.tail for r in backend.read_stream(include_sessions=False)}
    finally:
        other.close()


def frame_tails(path: Path) -> dict[int, bytes]:
    """Position -> body after the 24-byte prefix, of every event frame of the log."""
    import zlib

    from telstate_log.core import _log_format as fmt
    from telstate_log.storage import OsFileSystem, list_segments

    tails = {}
    for _, name in list_segments(OsFileSystem(), str(path)):
        data = (path / name).read_bytes()
        scan = fmt.scan_frames(memoryview(data), fmt.HEADER_SIZE, len(data),
                               zlib.crc32(data[:fmt.HEADER_SIZE]))
        assert scan.problem is None
        for off, length, kind in zip(scan.offsets.tolist(), scan.lengths.tolist(),
                                     scan.kinds.tolist()):
            if kind in fmt.EVENT_KINDS:
                body = data[off + 8:off + 8 + length]
                tails[int.from_bytes(body[:8], "little")] = body[fmt.EVENT_PREFIX:]
    return tails


def test_a_restarted_archiver_resumes_without_duplicates(
        redis_url: str, backend: RedisLogBackend, tmp_path: Path) -> None:
    path = tmp_path / "archive"
    for round_ in range(4):
        for i in range(20):
            backend.add_mutable(b"s%d" % (i % 3), b"\x01%d.%d" % (round_, i), 100.0 * round_ + i)
        backend.add_mutable_many(b"batch", [b"\x01%d.%d" % (round_, j) for j in range(50)],
                                 1000.0 * round_ + np.arange(50.0))
        with Archiver(redis_url, path, segment_bytes=4096) as archiver:
            assert archiver.position == 70 * round_          # where the last run ended
            assert archiver.run_once() == 70
            if round_ == 1:
                archiver.log.checkpoint()    # the next run recovers from it
        if round_ == 2:  # an archive is an ordinary log: seal it; archiving goes on after
            with LogBackend(path) as log:
                assert log.seal() is not None
    archive = archive_of(path)
    try:
        assert archive.events(1) == backend.events(1)
        assert [e.position for e in archive.events(1)] == list(range(1, 281))
    finally:
        archive.close()
    report = verify_log(path)
    assert report.ok and report.segments > 1 and report.sealed_segments >= 1
    assert report.checkpoints_ok >= 1


def test_follow_copies_new_events_as_they_come(
        redis_url: str, backend: RedisLogBackend, tmp_path: Path) -> None:
    import threading

    with Archiver(redis_url, tmp_path / "archive") as archiver:
        done = threading.Event()
        copied: list[int] = []
        thread = threading.Thread(target=lambda: copied.append(archiver.follow(done)))
        thread.start()
        try:
            for i in range(200):
                backend.add_mutable(b"s", b"\x01%d" % i, float(i))
        finally:
            from _waiting import wait_for

            wait_for(lambda: archiver.position == 200, what="the archive to reach 200")
            done.set()
            thread.join()
        assert copied == [200]


# -------------------------------------------------------------- divergence
def test_a_different_event_at_the_archived_position_stops_the_archiver(
        redis_url: str, backend: RedisLogBackend, tmp_path: Path) -> None:
    for i in range(10):
        backend.add_mutable(b"s", b"\x01%d" % i, float(i))
    path = tmp_path / "archive"
    with Archiver(redis_url, path) as archiver:
        archiver.run_once()
    # a failover lost event 10 and another write took its position
    entries = stream_entries(backend.log_client)
    entries[-1] = (entries[-1][0], with_value(entries[-1][1], b"\x01other"))
    rebuild_stream(backend.log_client, entries)
    with Archiver(redis_url, path) as archiver:
        with pytest.raises(StreamDivergedError, match="position 10") as info:
            archiver.run_once()
        assert info.value.position == 10
        assert archiver.position == 10                      # nothing merged
    # the same, met by a running archiver (compared with the record it copied last)
    rebuild_stream(backend.log_client, stream_entries(backend.log_client)[:-1])
    for i in range(3):
        backend.add_mutable(b"s", b"\x01new%d" % i, 100.0 + i)   # positions 10..12 reused
    with pytest.raises(StreamDivergedError) as info:
        with Archiver(redis_url, path) as archiver:
            archiver.run_once()
    assert info.value.position == 10


def test_a_running_archiver_sees_a_reused_position(
        redis_url: str, backend: RedisLogBackend, tmp_path: Path) -> None:
    for i in range(5):
        backend.add_mutable(b"s", b"\x01%d" % i, float(i))
    with pytest.raises(ValueError, match="other"):
        Archiver(backend, tmp_path / "archive", stream="other")
    with Archiver(backend, tmp_path / "archive") as archiver:   # the writer's connection
        archiver.run_once()
        entries = stream_entries(backend.log_client)
        rebuild_stream(backend.log_client, entries[:-2])     # lost 4 and 5
        with pytest.raises(StreamDivergedError, match="lost events") as info:
            archiver.run_once()
        assert info.value.position == 4
        for i in range(2):
            backend.add_mutable(b"s", b"\x01again%d" % i, 10.0 + i)  # 4, 5 reused
        with pytest.raises(StreamDivergedError, match="position 5") as info:
            archiver.run_once()
        assert info.value.position == 5 and archiver.position == 5


def test_a_gap_in_the_stream_stops_the_archiver(
        redis_url: str, backend: RedisLogBackend, tmp_path: Path) -> None:
    for i in range(5):
        backend.add_mutable(b"s", b"\x01%d" % i, float(i))
    path = tmp_path / "archive"
    with Archiver(redis_url, path) as archiver:
        archiver.run_once()
    entries = stream_entries(backend.log_client)
    body = entries[-1][1]
    entries.append((b"7-0", with_value(body, b"\x01seven")))    # 6 is missing
    rebuild_stream(backend.log_client, entries)
    with Archiver(redis_url, path) as archiver:
        with pytest.raises(StreamDivergedError, match="missing") as info:
            archiver.run_once()
        assert info.value.position == 7 and archiver.position == 5
    # an archive cannot start from a stream that lost its beginning
    with Archiver(redis_url, tmp_path / "new") as fresh:
        rebuild_stream(backend.log_client, entries[3:])    # from position 3 on
        with pytest.raises(StreamDivergedError) as info:
            fresh.run_once()
        assert info.value.position == 3 and fresh.position == 0


# ---------------------------------------------------------------- trimming
def test_trim_removes_only_synced_entries_and_history_reads_the_archive(
        redis_url: str, backend: RedisLogBackend, tmp_path: Path) -> None:
    other = RedisLogBackend.from_url(redis_url, source="writer-b")
    path = tmp_path / "archive"
    try:
        workload(backend, other, rounds=12)
        before = backend.events(1)
        history_before = backend.history(b"m001_pos")
        early = before[10].position
        early_state = sorted(backend.replica().as_of(early).keys(b"*"))
        log_client = backend.log_client
        with Archiver(redis_url, path, trim=True) as archiver:
            synced_at: list[tuple[int, int]] = []
            real_sync = archiver.log.sync

            def sync() -> int:       # what the stream holds when the archive is synced
                synced_at.append((log_client.xlen(STREAM),
                                  int(log_client.hget(STREAM + b":meta", "trimmed") or 0)))
                return real_sync()

            archiver.log.sync = sync  # type: ignore[method-assign]
            archiver.run_once()
            assert synced_at and synced_at[0][1] == 0      # nothing trimmed before the sync
            trimmed = int(log_client.hget(STREAM + b":meta", "trimmed"))
            # the last record is the batch of 3000: everything before it is trimmed
            assert trimmed == archiver.trimmed == backend.position - 3000
            assert trimmed <= archiver.log.durable_position
            first = log_client.xrange(STREAM, count=1)[0][0]
            assert first == b"%d-0" % (trimmed + 1)          # the anchor stays
        backend.add_mutable(b"m001_pos", b"\x01later", 1e6)
        # without the archive, history before the trim point is gone, and says so
        with pytest.raises(HistoryUnavailableError, match="trimmed"):
            backend.events(1)
        with pytest.raises(HistoryUnavailableError, match="trimmed"):
            backend.history(b"m001_pos")
        # with it, every query reads the archive, then the stream
        reader = RedisLogBackend.from_url(redis_url, archive=path)
        try:
            full = reader.events(1)
            assert full[:len(before)] == before and len(full) == len(before) + 1
            assert reader.events(5, 8) == before[4:8]
            assert reader.history(b"m001_pos")[:-1] == history_before
            assert sorted(reader.as_of(early).keys(b"*")) == early_state
            assert reader.session_info(2)["source"] == "writer-b"
        finally:
            reader.close()
    finally:
        other.close()


def test_a_restarted_trimming_archiver_continues(
        redis_url: str, backend: RedisLogBackend, tmp_path: Path) -> None:
    path = tmp_path / "archive"
    for round_ in range(3):
        for i in range(10):
            backend.add_mutable(b"s", b"\x01%d.%d" % (round_, i), 10.0 * round_ + i)
        with Archiver(redis_url, path, trim=True) as archiver:
            assert archiver.run_once() == 10
            assert archiver.trimmed == 10 * round_ + 9
    assert backend.log_client.xlen(STREAM) == 1
    archive = archive_of(path)
    try:
        assert [e.value for e in archive.events(1)] == [
            b"\x01%d.%d" % (r, i) for r in range(3) for i in range(10)]
    finally:
        archive.close()


# ----------------------------------------------------------- kill -9 loop
KILL_CYCLES = 60


class _Zygote:
    """The archiver processes of the kill loop (tests/replay/_archiver_proc.py)."""

    def __init__(self, url: str, path: Path) -> None:
        import subprocess
        import sys
        import threading

        script = Path(__file__).with_name("_archiver_proc.py")
        self.proc = subprocess.Popen([sys.executable, str(script), url, str(path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._lock:
                self.lines.append(raw.decode().strip())

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def wait_line(self, prefix: str, after: int = 0) -> str:
        from _waiting import wait_for

        found: list[str] = []

        def seen() -> bool:
            with self._lock:
                found[:] = [line for line in self.lines[after:] if line.startswith(prefix)]
            return bool(found) or self.proc.poll() is not None

        wait_for(seen, what=f"a line {prefix!r} from the archiver zygote")
        assert found, self.stderr()
        return found[0]

    def stderr(self) -> str:
        self.proc.kill()
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def _writer(url: str, stop: Any, written: list[tuple[str, bytes, bytes | None, bytes | None]],
            seed: int) -> None:
    """Writes every kind of event (unique values) until `stop`; notes each write."""
    import random
    import time

    rng = random.Random(seed)
    backend = RedisLogBackend.from_url(url, source="kill-loop-writer")
    n = 0
    live: set[bytes] = set()
    try:
        while not stop.is_set():
            n += 1
            choice = rng.random()
            if choice < 0.6:
                key = b"sensor%d" % rng.randrange(8)
                value = b"\x01%d" % n
                backend.add_mutable(key, value, float(n))
                written.append(("add", key, None, value))
                live.add(key)
            elif choice < 0.8:
                key = b"bulk%d" % rng.randrange(3)
                values = [b"\x01%d.%d" % (n, j) for j in range(rng.randrange(1, 60))]
                backend.add_mutable_many(key, values, n + np.arange(len(values)) / 100)
                written.extend(("add", key, None, v) for v in values)
                live.add(key)
            elif choice < 0.9:
                sub = b"s%d" % n
                backend.set_indexed(b"indexed", sub, b"\x01%d" % n)
                written.append(("set_indexed", b"indexed", sub, b"\x01%d" % n))
            elif choice < 0.97 or not live:
                key = b"imm%d" % n
                backend.set_immutable(key, b"\x01%d" % n)
                written.append(("set", key, None, b"\x01%d" % n))
            else:
                key = sorted(live)[rng.randrange(len(live))]
                backend.delete(key)
                written.append(("delete", key, None, None))
                live.discard(key)
            time.sleep(0.002)  # a steady stream, not a flood (paces the writer only)
    finally:
        backend.close()


@pytest.mark.slow
def test_kill_9_of_the_archiver_leaves_exactly_a_prefix_of_the_stream(
        fresh_redis: Any, tmp_path: Path) -> None:
    import os
    import random
    import signal
    import threading
    import time

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    url = fresh_redis.url
    path = tmp_path / "archive"
    written: list[tuple[str, bytes, bytes | None, bytes | None]] = []
    stop = threading.Event()
    writer = threading.Thread(target=_writer, args=(url, stop, written, seed))
    backend = RedisLogBackend.from_url(url)
    zygote = _Zygote(url, path)
    writer.start()
    try:
        kills = 0
        for _cycle in range(KILL_CYCLES):
            mark = len(zygote.lines)
            zygote.send(f"start {rng.randrange(2)}")
            pid = int(zygote.wait_line("pid ", mark).split()[1])
            if rng.random() < 0.7:  # mostly while it copies; else while it opens
                zygote.wait_line(f"ready {pid}", mark)
            time.sleep(rng.uniform(0.0, 0.12))  # picks the moment, asserts nothing
            os.kill(pid, signal.SIGKILL)
            zygote.send(f"reap {pid}")
            code = int(zygote.wait_line(f"reaped {pid} ", mark).split()[2])
            assert code == -signal.SIGKILL, f"archiver {pid} ended with {code} (seed {seed}):" \
                                            f"\n{zygote.stderr()}"
            kills += 1
            if kills % 10 == 0:  # what the killed archiver left: a prefix of the stream
                acknowledged = list(written)
                archive = archive_of(path)
                try:
                    held = archive.events(1)
                finally:
                    archive.close()
                common = min(len(held), len(acknowledged))
                assert [(e.kind, e.key, e.sub_key, e.value) for e in held[:common]] == \
                    acknowledged[:common], seed
                assert [e.position for e in held] == list(range(1, len(held) + 1))
                trimmed = int(backend.log_client.hget(STREAM + b":meta", "trimmed") or 0)
                start = max(trimmed + 1, len(held) - 100, 1)
                assert held[start - 1:] == backend.events(start, len(held)), seed
        assert kills == KILL_CYCLES
    finally:
        stop.set()
        writer.join()
        zygote.close()
    with Archiver(url, path, trim=True) as archiver:       # resumes once more, to the end
        archiver.run_once()
        trimmed = archiver.trimmed
    try:
        archive = archive_of(path)
        try:
            events = archive.events(1)
        finally:
            archive.close()
        # every acknowledged write exactly once, in the writer's order: nothing twice,
        # nothing missing
        assert [e.position for e in events] == list(range(1, len(events) + 1))
        assert [(e.kind, e.key, e.sub_key, e.value) for e in events] == written, seed
        # and exactly the stream's events (times, sessions), where the stream still has them
        assert events[trimmed:] == backend.events(trimmed + 1)
        assert 0 < trimmed < len(events)
        reader = RedisLogBackend.from_url(url, archive=path)
        try:
            assert reader.events(1) == events
        finally:
            reader.close()
        assert verify_log(path).ok
    finally:
        backend.close()
