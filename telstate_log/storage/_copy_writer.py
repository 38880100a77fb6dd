"""CopyWriter: appends events recorded elsewhere to a log, exactly as they were recorded.

Theory of operation
-------------------
An *archive* (:mod:`telstate_log.replay._archiver`) is an ordinary segment
log whose events were recorded by another log -- a shared log's Redis
stream, whose records carry each event's position, recorded time, session
id and *tail*: the bytes a segment frame body holds after its 24-byte
prefix (:mod:`telstate_log.core._stream_format`).  So a copied event's frame
is the frame header, the prefix (the record's position, recorded time and
session, and the archive's id for its key) and the tail as it is: a copy,
not a translation.

:class:`CopyWriter` is the :class:`~._event_writer.LogWriter` of such a log
(``Log.open(..., copy=True)``).  It takes the recorded time and the session
from the caller instead of the clock and its own session, and it never
writes a session of its own: its sessions are the recorded ones, under
their recorded ids (:meth:`copy_session` defines one when the stream does;
an event names one), so no id of the archive can clash with one the stream
gives out later.  Like the LogWriter it defines lazily, per segment, every
key and session a segment's events use, so each segment reads on its own,
and rotates before an event that would overflow the segment.  Each call
appends its frames (definitions and event) in one write: a crash leaves the
event whole or absent, never half a batch.  The normal write hooks
(``commit``, ``commit_batch``, ``new_session``) are refused: an event of
the archive's own would take a position the stream gives to another.

The writer only frames and appends; what the events do to the state is the
caller's business (:mod:`telstate_log.storage._record_copier`), which
validates them first, so nothing is written that a replay of the log would
refuse.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, NoReturn

import msgpack

from ..core import _log_format as fmt
from ..core._errors import LogFailedError, ReadOnlyError
from ._event_writer import LogWriter

__all__ = ["ADD_CHECK", "EVENT_HEAD", "CopyWriter"]

#: frame header (magic, kind, check, body length) + event prefix (position,
#: recorded, session, key id), as core/_log_format lays them out: a copied
#: event's frame is this and the record's tail
EVENT_HEAD = _HEAD = struct.Struct("<HBBIQdII")
assert _HEAD.size == 8 + fmt.EVENT_PREFIX == fmt.ADD_FRAME.size - 8
#: check bytes of ADD frames by body length (up to 4 KiB; longer: fmt.check_byte)
ADD_CHECK = bytes(fmt.check_byte(fmt.ADD, n) for n in range(4096))
_U32 = fmt.FRAME_CRC
_crc32 = zlib.crc32


class CopyWriter(LogWriter):
    """Appends copied events and sessions (see module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: sessions this segment defines, and the msgpack maps of the sessions copied
        self._seg_sessions: set[int] = set()
        self._payloads: dict[int, bytes] = {}
        super().__init__(*args, **kwargs)
        self._stride = self._tables.TIME_STRIDE

    def _segment_started(self) -> None:
        super()._segment_started()
        self._seg_sessions = set()

    # ------------------------------------------------- the normal hooks: refused
    def _refuse(self) -> NoReturn:
        raise ReadOnlyError("this log is an archive: it holds copied events only")

    def commit(self, kind: int, pos: int, key: bytes, sub_key: bytes, value: bytes,
               ts: float) -> None:
        self._refuse()

    def commit_sample(self, pos: int, key: bytes, value: bytes, ts: float) -> None:
        self._refuse()

    def commit_batch(self, first: int, key: bytes, ts: Any, values: Any) -> None:
        self._refuse()

    def commit_many_batches(self, first: int, keys: list[bytes], ts: Any, values: Any,
                            sizes: list[int]) -> int:
        self._refuse()

    def new_session(self, session: dict[str, object]) -> int:
        self._refuse()

    # ----------------------------------------------------------------- copying
    def copy_session(self, session: int, payload: bytes, info: dict[str, Any]) -> None:
        """Define `session` (its msgpack map `payload`, decoded: `info`) in the log now."""
        if self.failed is not None:
            raise LogFailedError(f"the log writer has failed: {self.failed}")
        self._append_pieces([fmt.encode_meta(fmt.SESSION, session, payload)])
        self._seg_sessions.add(session)
        self._payloads[session] = payload
        self._tables.sessions[session] = info

    def _payload(self, session: int) -> bytes:
        payload = self._payloads.get(session)
        if payload is None:  # defined before this writer opened: its map is in the tables
            payload = self._payloads[session] = msgpack.packb(self._tables.sessions[session],
                                                              use_bin_type=True)
        return payload

    def copy_event(self, kind: int, pos: int, count: int, rec: float, session: int,
                   key: bytes, tail: bytes) -> None:
        """Append an event recorded elsewhere (an ADD_BATCH of `count` samples) as it was.

        `session` must be defined (:meth:`copy_session`, or by the log
        already) and `rec` must not be before the log's last recorded time.
        """
        if self.failed is not None:
            raise LogFailedError(f"the log writer has failed: {self.failed}")
        tables = self._tables
        kid = fmt.NO_KEY if kind == fmt.CLEAR else tables.key_ids.get(key)
        new_key = kid is None
        if kid is None:
            kid = tables.next_key_id()
        length = fmt.EVENT_PREFIX + len(tail)
        frame = _HEAD.pack(fmt.FRAME_MAGIC, kind, fmt.check_byte(kind, length), length, pos,
                           rec, session, kid) + tail
        if (kid in self._seg_keys or kind == fmt.CLEAR) and session in self._seg_sessions:
            pieces = [frame]  # the segment defines both already: no rotation check needed
            if self.offset + len(frame) + 4 > self._segment_bytes and self._seg_events:
                pieces = self._with_definitions(frame, kind, pos, kid, key, session)
        else:
            pieces = self._with_definitions(frame, kind, pos, kid, key, session)
        offset = self.offset + sum(len(p) + 4 for p in pieces[:-1])
        self._append_pieces(pieces)
        # book-keeping, now that the records exist
        if kind != fmt.CLEAR:
            self._seg_keys.add(kid)
            if new_key:
                tables.keys[kid] = key
                tables.key_ids[key] = kid
        self._seg_sessions.add(session)
        if (kind == fmt.ADD_BATCH or (pos - 1) % self._stride == 0 or not tables.time_pos
                or not self._seg_events):
            self._note_time(pos, rec, offset)  # as recovery indexes the frames
        self._seg_events += count
        self._last_rec = tables.last_recorded = rec
        self.position = pos + count - 1

    # ------------------------------------------------------ runs of frames
    def segment_definitions(self) -> tuple[set[int], set[int]]:
        """The key ids and session ids the current segment defines (read them only)."""
        return self._seg_keys, self._seg_sessions

    def room(self) -> int:
        """Bytes of frames the current segment takes before it is full."""
        return self._segment_bytes - self.offset

    def copy_frames(self, frames: list[bytes], first: int, recs: list[float]) -> None:
        """Append event frames of one position each (from `first`; recorded at `recs`),
        built by the caller for keys and sessions the current segment defines, and
        within its :meth:`room`.  One write: all of them are appended, or none."""
        if self.failed is not None:
            raise LogFailedError(f"the log writer has failed: {self.failed}")
        crc = self._crc
        start = offset = self.offset
        out: list[bytes] = []
        notes = []
        stride = self._stride
        pack = _U32.pack
        for i, frame in enumerate(frames):
            c = _crc32(frame, crc)
            crc_bytes = pack(c)
            crc = _crc32(crc_bytes, c)
            out.append(frame)
            out.append(crc_bytes)
            if (first + i - 1) % stride == 0:
                notes.append((first + i, recs[i], offset))
            offset += len(frame) + 4
        self._append_chained(b"".join(out), crc)
        assert self.offset == offset, (start, offset, self.offset)
        for pos, rec, where in notes:
            self._note_time(pos, rec, where)
        count = len(frames)
        self._seg_events += count
        self._last_rec = self._tables.last_recorded = recs[-1]
        self.position = first + count - 1

    def _with_definitions(self, frame: bytes, kind: int, pos: int, kid: int, key: bytes,
                          session: int) -> list[bytes]:
        """The frame with the definitions its segment lacks, rotating first if it must."""
        need = len(frame) + 4 + 16 + len(key) + 16 + len(self._payload(session))
        if self.offset + need > self._segment_bytes and self._seg_events:
            self._rotate(pos)
        pieces = []
        if session not in self._seg_sessions:
            pieces.append(fmt.encode_meta(fmt.SESSION, session, self._payload(session)))
        if kind != fmt.CLEAR and kid not in self._seg_keys:
            pieces.append(fmt.encode_meta(fmt.KEY, kid, key))
        pieces.append(frame)
        return pieces
