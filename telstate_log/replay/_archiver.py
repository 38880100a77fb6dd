"""Archiver: a shared log's stream copied into an ordinary segment log, exactly once.

Theory of operation
-------------------
A shared log (:class:`~telstate_log.backends.RedisLogBackend`) keeps its
events in a Redis stream.  The archiver appends them to a local segment
log, the *archive*, opened with ``Log.open(path, copy=True)``: each event
keeps the stream's position, recorded time and session, and its frame body
is the record's tail as it is (:mod:`telstate_log.storage._copy_writer`).
The archive is an ordinary log -- ``verify``, ``seal``, ``export``,
``history`` and time travel work on it -- and its state follows as the
events are copied (:mod:`telstate_log.storage._record_copier` applies each
one with the State's replay methods, so a reopened archive and the one in
memory are the same).

Exactly once.  The archive knows the last position it holds, *p*: it is the
log's position, recovered from the segments on open (a crash mid-append
leaves a torn frame, which recovery drops, so an event -- a whole ADD_BATCH
too: one frame -- is in the archive whole or not at all).  Every read round
is one pipelined round trip: the stream record holding *p* (the *anchor*),
the stream's ``pos`` and ``trimmed``, and the entries after the last entry
read (``XRANGE``, or ``XREAD BLOCK`` when following).  The anchor must be
the record the archive holds -- compared event by event with the archive's
frames on the first round, then with the record copied last -- and the next
event must be *p* + 1, else :exc:`~telstate_log.StreamDivergedError` names
the position: a failover that lost an unreplicated write and reused its
position, a stream that lost or skipped entries, another stream.  The
archiver never merges two histories.  Session records are copied as they
come (under the stream's ids); re-reading one already held after a restart
changes nothing, a different one is divergence.

Trimming (``trim=True``).  After a round the archive is synced (fsync), and
then, in one ``MULTI``, ``XTRIM <stream> MINID <anchor>-0`` removes every
entry before the record holding *p* and ``HSET <stream>:meta trimmed``
records the highest position removed (``anchor - 1``).  Only synced events
are ever trimmed.  The anchor itself stays in the stream (one record), so
a restarted archiver can still compare what it holds with the stream.
Readers of the shared log consult ``trimmed``: history before it comes
from the archive, or raises :exc:`~telstate_log.HistoryUnavailableError`.
When following, trimming happens at most every ``trim_interval`` seconds.

Durability (``fsync``): ``"interval"`` by default.  An event the archive
lost in a power cut is still in the stream (nothing unsynced is trimmed),
and the restarted archiver copies it again from the recovered position, so
fsyncing every round would buy nothing but time; ``"always"`` is there for
archives that must be on disk the moment :meth:`run_once` returns.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any

import redis

from ..backends._redis_log import RedisLogBackend
from ..backends._redis_log_common import READ_CHUNK
from ..core._errors import StreamCorruptError, StreamDivergedError
from ..core._events import SESSION
from ..core._stream_format import StreamRecord, decode_record, entry_id
from ..storage._log import DEFAULT_SEGMENT_BYTES, Log
from ..storage._record_copier import RecordCopier

__all__ = ["Archiver"]

#: errors of a server that cannot be reached (now): following retries them
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0
#: longest XREAD BLOCK, in ms (well under the client's socket timeout)
_BLOCK_MS = 1000


class Archiver:
    """Copies the stream of a shared log into a segment log (see module docstring).

    Parameters
    ----------
    url_or_backend
        A Redis URL of the telstate database (``redis://host/0``) or a
        :class:`~telstate_log.backends.RedisLogBackend` (not closed by the archiver).
    log_path
        The archive's directory (created if missing; held locked while open).
    stream
        The shared log's name (default ``"telstate-log"``, or the backend's).
    trim
        Remove archived, synced entries from the stream (``XTRIM MINID``).
    fsync
        The archive's durability policy (see module docstring).
    segment_bytes
        Size at which the archive starts a new segment.
    trim_interval
        When following with `trim`: seconds between trims (each syncs the archive).
    chunk
        Stream entries read per round trip.
    """

    def __init__(self, url_or_backend: str | RedisLogBackend, log_path: str | os.PathLike[str],
                 *, stream: str | None = None, trim: bool = False, fsync: str = "interval",
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES, trim_interval: float = 1.0,
                 chunk: int = READ_CHUNK) -> None:
        if isinstance(url_or_backend, str):
            backend = RedisLogBackend.from_url(url_or_backend, stream=stream or "telstate-log")
            self._own = True
        else:
            backend = url_or_backend
            self._own = False
            if stream is not None and stream.encode() != backend.target.stream:
                raise ValueError(f"the backend's shared log is {backend.target.stream!r}, "
                                 f"not {stream!r}")
        self._backend = backend
        self._client = backend.log_client
        self.stream = backend.target.stream
        self._meta = backend.target.meta
        self.trim = trim
        self.trim_interval = trim_interval
        self._chunk = chunk
        try:
            self._log, state = Log.open(log_path, fsync=fsync, segment_bytes=segment_bytes,
                                        copy=True)
        except BaseException:
            self._close_backend()
            raise
        self.path = self._log.path
        self._copier = RecordCopier(self._log, state)
        #: the stream record holding the archive's last position, once compared
        self._anchor: StreamRecord | None = None
        #: the stream entry ID reading resumes after
        self._last_id = entry_id(self._copier.position)
        #: the highest position trimmed from the stream, as last seen or set
        self.trimmed = 0
        #: the stream's last position, as last seen
        self.stream_position = 0
        self._trimmed_at = 0.0
        self.events_copied = 0
        self._closed = False

    @property
    def position(self) -> int:
        """The last position the archive holds."""
        return self._copier.position

    @property
    def log(self) -> Log:
        """The archive (an ordinary segment log, opened for copying)."""
        return self._log

    # -------------------------------------------------------------- rounds
    def _round(self, block: int | None) -> tuple[int, bool]:
        """Check the anchor and copy what one read returns: (events copied, anything read)."""
        p = self._copier.position
        commands: list[tuple[Any, ...]] = []
        if p:
            commands.append(("XREVRANGE", self.stream, entry_id(p), "-", "COUNT", 1))
        commands.append(("HMGET", self._meta, "pos", "trimmed"))
        if block is None:
            commands.append(("XRANGE", self.stream, b"(" + self._last_id, "+",
                             "COUNT", self._chunk))
        else:
            commands.append(("XREAD", "COUNT", self._chunk, "BLOCK", block, "STREAMS",
                             self.stream, self._last_id))
        replies = self._exchange(commands)
        stream_pos, trimmed = (int(v or 0) for v in replies[-2])
        self.stream_position = stream_pos
        self.trimmed = max(self.trimmed, trimmed)
        if p:
            found = _entries(replies[0])
            self._check_anchor(p, [decode_record(i, b) for i, b in zip(*found)][:1],
                               stream_pos, trimmed)
        reply = replies[-1]
        if block is not None:
            reply = (next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]) \
                if reply else []
        ids, bodies = _entries(reply)
        if not ids:
            return 0, False
        try:
            copied = self._copier.copy_entries(ids, bodies)
        except BaseException:
            # some were copied: resume after the archive's position, compare anew
            self._last_id = entry_id(self._copier.position)
            self._anchor = None
            raise
        self.events_copied += copied
        self._last_id = ids[-1]
        for ident, body in zip(reversed(ids), reversed(bodies)):
            record = decode_record(ident, body)
            if record.kind != SESSION:
                self._anchor = record
                break
        return copied, True

    def _exchange(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send `commands` in one round trip; their raw replies (no redis-py parsing)."""
        pool = self._client.connection_pool
        conn = pool.get_connection()
        try:
            for command in commands:
                conn.send_command(*command)  # type: ignore[no-untyped-call]
            return [conn.read_response() for _ in commands]
        except BaseException:
            conn.disconnect()  # type: ignore[no-untyped-call]  # replies may be left unread
            raise
        finally:
            pool.release(conn)

    def _check_anchor(self, p: int, found: list[StreamRecord], stream_pos: int,
                      trimmed: int) -> None:
        """The stream must still hold, at position `p`, the record the archive holds."""
        record = found[0] if found else None
        if record is not None and record.kind != SESSION and record.last >= p:
            if self._anchor is not None:
                if record == self._anchor:
                    return
            elif record.last == p and self._copier.holds(record):
                self._anchor = record
                return
            raise StreamDivergedError(
                f"the stream's event at position {p} differs from the archived one: a "
                "failover reused the position, or this archive is of another stream; the "
                "archiver does not merge two histories", p)
        if stream_pos < p:
            raise StreamDivergedError(
                f"the stream ends at position {stream_pos}, before the archive's last position "
                f"{p}: it lost events the archive holds (a failover?)", stream_pos + 1)
        if trimmed < p:
            raise StreamDivergedError(f"the stream no longer holds position {p}, which was "
                                      "not trimmed: it lost entries", p)
        # trimmed past the archive's end by someone else: nothing left to compare with

    # -------------------------------------------------------------- public
    def run_once(self) -> int:
        """Copy everything the stream holds now (then trim, if asked); returns the count.

        Events written meanwhile are copied too, as far as the stream's position
        when this began (so a busy stream does not keep it running).
        """
        self._check_open()
        before = self.events_copied
        target: int | None = None
        while True:
            read = self._round(None)[1]
            if target is None:
                target = self.stream_position
            if not read or self.position >= target:
                break
        if self.trim:
            self.trim_now()
        return self.events_copied - before

    def follow(self, stop: threading.Event | None = None, *, until: int | None = None,
               timeout: float | None = None) -> int:
        """Copy events as they come until `stop` is set, the archive holds position
        `until`, or `timeout` seconds passed; returns the count.  A lost connection is
        retried with backoff; a divergence raises."""
        self._check_open()
        before = self.events_copied
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        delay = 0.0
        while not (stop is not None and stop.is_set()) and (
                until is None or self.position < until):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                self._round(max(1, int(min(left, _BLOCK_MS / 1000) * 1000)))
                delay = 0.0
            except _UNREACHABLE:
                delay = min(delay * 2 or _BACKOFF_FIRST, _BACKOFF_MAX)
                if stop is not None:
                    stop.wait(delay)
                else:
                    time.sleep(delay)
                continue
            if self.trim and time.monotonic() - self._trimmed_at >= self.trim_interval:
                self.trim_now()
        if self.trim:
            self.trim_now()
        return self.events_copied - before

    def trim_now(self) -> int:
        """Sync the archive, then trim the stream before the anchor; returns ``trimmed``."""
        self._check_open()
        self._trimmed_at = time.monotonic()
        anchor = self._anchor
        if anchor is None:
            return self.trimmed
        self._log.sync()  # every copied event is on disk before any is trimmed
        upto = anchor.position - 1
        if upto <= self.trimmed:
            return self.trimmed
        self._exchange([("MULTI",), ("XTRIM", self.stream, "MINID", entry_id(anchor.position)),
                        ("HSET", self._meta, "trimmed", upto), ("EXEC",)])
        self.trimmed = upto
        return upto

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("the archiver is closed")

    def close(self) -> None:
        """Close the archive (synced unless ``fsync="never"``) and an own connection."""
        if self._closed:
            return
        self._closed = True
        try:
            self._log.close()
        finally:
            self._close_backend()

    def _close_backend(self) -> None:
        if self._own:
            self._backend.close()
            self._client.connection_pool.disconnect()

    def __enter__(self) -> Archiver:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _entries(reply: Any) -> tuple[list[bytes], list[bytes]]:
    """(IDs, ``e`` fields) of the entries of a raw XRANGE reply."""
    ids = [entry[0] for entry in reply]
    bodies = [entry[1][1] for entry in reply]
    if any(len(entry[1]) != 2 or entry[1][0] != b"e" for entry in reply):
        raise StreamCorruptError("the stream has entries without exactly one field 'e' "
                                 "(not a shared log)")
    return ids, bodies
