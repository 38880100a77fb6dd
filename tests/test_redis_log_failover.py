"""Shared-log writers through Sentinel: the primary killed under write load.

A primary, one replica and three sentinels (tests/_redis_cluster.py).  Writers
with ``replicas=1`` write as fast as they can; the primary is SIGKILLed; the
sentinels promote the replica.  Every write acknowledged without an error
(confirmed by the replica) must be on the new primary, in the telescope state
and exactly once in the stream, and the stream must still be one consistent
history: consecutive positions whose events build exactly the Redis state.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from _redis_cluster import RedisCluster, require_sentinel
from _waiting import wait_for

from telstate_log import ConnectionError, ReplicationError, StreamDivergedError
from telstate_log.backends import RedisLogBackend, StreamReplica
from telstate_log.backends._log_functions import log_db_for
from telstate_log.core._encoding import decode_value, encode_value
from telstate_log.core._stream_format import decode_record
from telstate_log.replay import Archiver

pytestmark = pytest.mark.redis

WRITERS = 2
UNCERTAIN = (ReplicationError, ConnectionError, redis.RedisError, OSError)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    require_sentinel()
    with RedisCluster(tmp_path / "cluster", replicas=1) as started:
        yield started


class Writer(threading.Thread):
    """Adds samples 0, 1, 2, ... to its own sensor until stopped."""

    def __init__(self, url: str, index: int) -> None:
        super().__init__(daemon=True)
        self.key = b"sensor-%d" % index
        self.backend = RedisLogBackend.from_url(url, source=f"writer-{index}", replicas=1,
                                                replica_timeout=0.5)
        self.acked: list[int] = []           # confirmed by a replica
        self.uncertain: list[int] = []       # raised: may or may not have been applied
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 0
        try:
            while not self.stop.is_set():
                try:
                    self.backend.add_mutable(self.key, encode_value(n), float(n))
                except UNCERTAIN:
                    self.uncertain.append(n)
                else:
                    self.acked.append(n)
                n += 1
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.error = exc


class ArchiverThread(threading.Thread):
    """An archiver following the stream through the failover."""

    def __init__(self, url: str, path: Path) -> None:
        super().__init__(daemon=True)
        self.archiver = Archiver(url, path)
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.archiver.follow(self.stop)
        except BaseException as exc:
            self.error = exc


def test_acknowledged_writes_survive_a_failover(cluster: RedisCluster, tmp_path: Path) -> None:
    url = cluster.sentinel_url(0)
    writers = [Writer(url, i) for i in range(WRITERS)]
    archiver = ArchiverThread(url, tmp_path / "archive")
    archiver.start()
    for writer in writers:
        writer.start()
    try:
        wait_for(lambda: all(len(w.acked) >= 200 for w in writers), what="writes before the kill")
        # sync() confirms the replica holds every write so far, whoever made it
        checker = RedisLogBackend.from_url(url, replicas=1, replica_timeout=30.0)
        assert checker.sync() >= 400
        checker.close()
        old = cluster.kill_primary()
        new = cluster.wait_failover()
        assert new != old
        # the writers go on on the new primary (with no replica left, each write
        # is applied and raises ReplicationError after replica_timeout: it may not
        # survive another failover)
        marks = [len(w.acked) + len(w.uncertain) for w in writers]
        wait_for(lambda: all(len(w.acked) + len(w.uncertain) >= m + 5
                             for w, m in zip(writers, marks)), what="writes after the failover")
    finally:
        for writer in writers:
            writer.stop.set()
        for writer in writers:
            writer.join(60)
            writer.backend.close()
    assert all(w.error is None for w in writers), [w.error for w in writers]
    # the archiver either went on consistently or stopped on the divergence
    if archiver.error is None:
        wait_for(lambda: archiver.error is not None or archiver.archiver.position >= max(
            int(RedisLogBackend.from_url(url).position), 1), what="the archiver to catch up")
    archiver.stop.set()
    archiver.join(60)
    assert archiver.error is None or isinstance(archiver.error, StreamDivergedError), \
        archiver.error

    primary = cluster.primary_client(0)
    log = cluster.primary_client(log_db_for(0))
    records = [decode_record(ident, fields[b"e"]) for ident, fields in log.xrange(b"telstate-log")]
    events = [r for r in records if r.seq == 0]
    # one history: consecutive positions from 1
    assert [r.position for r in events] == list(range(1, len(events) + 1))
    for writer in writers:
        stored = {decode_value(m[8:]) for m in primary.zrange(writer.key, 0, -1)}
        missing = set(writer.acked) - stored
        assert not missing, f"{writer.key!r} lost acknowledged writes {sorted(missing)[:10]}"
        logged = Counter(decode_value(r.tail[8:]) for r in events if r.key == writer.key)
        assert all(logged[n] == 1 for n in writer.acked)
        assert max(logged.values()) == 1                     # nothing recorded twice
        assert set(logged) == stored                          # stream and state agree
        # the writer's own order is the stream's order
        order = [decode_value(r.tail[8:]) for r in events if r.key == writer.key]
        assert order == sorted(order)
    replica = StreamReplica()
    replica.apply(records)
    for writer in writers:
        assert replica.get_range(writer.key, 0.0, float("inf"), False, False) == [
            (m[8:], float(decode_value(m[8:]))) for m in primary.zrange(writer.key, 0, -1)]
    print(f"\narchiver after the failover: {archiver.error or 'went on'}")
    # what the archive holds is the stream's history, never a merge of two
    archived = archiver.archiver.log.events()
    archiver.archiver.close()
    held = [e for r in events for e in r.events()]
    if archiver.error is None:
        assert archived == held[:len(archived)] and len(archived) == len(held)
    else:
        position = archiver.error.position     # type: ignore[attr-defined]
        assert archived[:position - 1] == held[:position - 1]
        assert len(archived) < position or archived[position - 1] != held[position - 1]
    primary.close()
    log.close()
