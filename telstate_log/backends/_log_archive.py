"""History of a shared log from before its trim point: read from its archive.

Theory of operation
-------------------
An archiver (:class:`telstate_log.replay.Archiver`) copies a shared log's
stream into a segment log and, with ``--trim``, removes archived and synced
entries from the stream, recording the highest position removed in the
``trimmed`` field of the stream's meta hash.  A
:class:`~._redis_log.RedisLogBackend` opened with ``archive=PATH`` answers
history, audit and time-travel queries that reach back to or before that
position from the archive -- events up to ``trimmed`` from the archive, the
rest from the stream -- so a trimmed stream loses no history; without an
archive such a query raises :exc:`~telstate_log.HistoryUnavailableError`
saying the history was trimmed (:func:`trimmed_error`).

:class:`ArchiveReader` opens the archive read-only on first use (a live
archiver may be appending to it) and catches up with its writer before each
query; an archive that does not reach the trim point cannot answer and says
so.  For a materialised replica the archive's events are handed over as
stream records (:func:`ArchiveReader.records`): each event as the record of
one event (a batch's samples one by one), after the archive's sessions.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgpack

from ..core._errors import HistoryUnavailableError
from ..core._events import ADD, CLEAR, DELETE, IMMUTABLE, INDEXED, SESSION, Event
from ..core._stream_format import StreamRecord, add_tail, indexed_tail
from ._redis_common import Exchange

if TYPE_CHECKING:
    from ._log import LogBackend

__all__ = ["ArchiveReader", "exchange_trimmed", "touches", "trimmed_error"]

_KINDS = {"set": IMMUTABLE, "add": ADD, "set_indexed": INDEXED, "delete": DELETE,
          "clear": CLEAR}


def exchange_trimmed(meta: bytes) -> Exchange[int]:
    """The highest position trimmed from the stream whose meta hash is `meta` (0: none)."""
    reply = yield ("log", "HGET", meta, "trimmed")
    return int(reply or 0)


def trimmed_error(trimmed: int) -> HistoryUnavailableError:
    return HistoryUnavailableError(
        f"the shared log's history up to position {trimmed} was trimmed from the stream; "
        "open the backend with archive=<the archive's directory> to read it")


def touches(event: Event, key: bytes, sub_key: bytes | None) -> bool:
    """Whether `event` belongs to the history of `key` (or its `sub_key`), as the
    stream's history counts it (every clear, the key's deletes)."""
    if event.kind == "clear":
        return True
    return event.key == key and (sub_key is None or event.sub_key == sub_key
                                 or event.kind == "delete")


class ArchiveReader:
    """The archive of a shared log, opened read-only when first needed."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._backend: LogBackend | None = None

    def upto(self, trimmed: int) -> LogBackend:
        """The archive, caught up with its writer; it must hold position `trimmed`."""
        with self._lock:
            if self._backend is None:
                from ._log import LogBackend

                self._backend = LogBackend(self.path, readonly=True, follow=False)
            backend = self._backend
            while backend.log.follow_step():
                pass
        if backend.position < trimmed:
            raise HistoryUnavailableError(
                f"the shared log's history up to position {trimmed} was trimmed from the "
                f"stream, and its archive {self.path} ends at position {backend.position}")
        return backend

    def events(self, since: int, until: int, trimmed: int) -> list[Event]:
        return self.upto(trimmed).events(since, until)

    def session_info(self, session: int) -> dict[str, Any]:
        return self.upto(0).session_info(session)

    def records(self, trimmed: int) -> Iterator[StreamRecord]:
        """The archive's sessions, then its events up to `trimmed`, as stream records."""
        backend = self.upto(trimmed)
        for n, session in enumerate(backend.session_ids(), 1):
            info = msgpack.packb(backend.session_info(session), use_bin_type=True)
            yield StreamRecord(0, n, SESSION, 0.0, session, b"", info)
        for e in backend.events(1, trimmed):
            value = e.value or b""
            if e.kind == "add":
                tail = add_tail(value, e.timestamp or 0.0)
            elif e.kind == "set_indexed":
                tail = indexed_tail(e.sub_key or b"", value)
            else:
                tail = value
            yield StreamRecord(e.position, 0, _KINDS[e.kind], e.recorded, e.session,
                               e.key or b"", tail)

    def close(self) -> None:
        with self._lock:
            if self._backend is not None:
                self._backend.close()
                self._backend = None
