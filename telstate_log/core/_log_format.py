"""The on-disk log format, version 1 (the one place it is defined).

Theory of operation
-------------------
A log is a directory::

    LOCK                          held (flock) by the one writer; holds its pid
    00000000000000000001.seg      segments, named by the position of their
    00000000000000052311.seg      first event (20 decimal digits)
    checkpoints/<position>.ckpt   materialised state at a position (optional)
    seals                         SHA-256 seals of finished segments (optional)
    synced-segment                newest segment whose creation was synced (optional)

Every change to the telescope state is an *event* with a *position*: 1, 2,
3, ... without gaps across the whole log.  Segments hold consecutive events;
a new segment starts when the current one reaches ``segment_bytes``.

Segment file (all integers little-endian)::

    offset size  field
    0      8     magic b"TSLOGSEG"
    8      1     format version (1)
    9      1     flags (0)
    10     2     header length (52)
    12     4     reserved (0)
    16     8     first position (u64)
    24     8     created: wall-clock seconds since the epoch (f64)
    32     16    log id (random, the same in every segment of a log)
    48     4     CRC-32 of bytes 0..48
    52     ...   frames

Frame::

    0      2     frame magic 0x1EA7 (bytes A7 1E)
    2      1     kind
    3      1     check = kind ^ len ^ len>>8 ^ len>>16 ^ len>>24 ^ 0x5A (low byte)
    4      4     body length L (u32, at most MAX_BODY)
    8      L     body
    8+L    4     CRC-32 (zlib) of every byte of the file before this field

The CRC is *chained*: it is computed over every byte of the file before it,
so one CRC call over a whole segment verifies every frame at once, and a
frame can still be checked alone from the four bytes before it (the
previous CRC, which is also the running CRC state at that point).  What the
chain protects is less than it seems: CRC-32 over some bytes followed by
their own CRC is always the same residue, so after the first frame the
running state is that constant and each frame's CRC depends only on its own
bytes.  The CRCs catch damage inside a frame; frames moved or swapped whole
are caught by the consecutive positions recovery checks, and tampering by
the seals (SHA-256 over whole segments).  The check byte guards
the length field, so a damaged length is reported as corruption rather than
mistaken for a frame cut short by a crash.

Event kinds and bodies (every event body starts with the same 24 bytes; the
kind numbers are declared in :mod:`telstate_log.core._events`)::

    position u64 | recorded f64 (wall clock) | session id u32 | key id u32
    1 SET          + value
    2 ADD          + timestamp f64 + value
    3 SET_INDEXED  + sub-key length u32 + sub-key + value
    4 DELETE       (nothing more)
    5 CLEAR        (key id 0xFFFFFFFF)
    6 ADD_BATCH    + count u32 + width u32 + timestamps f64[count] + values:
                   width > 0: count values of exactly `width` bytes;
                   width = 0: lengths u32[count], then the values back to back.
                   `count` ADD events of one key at positions position,
                   position + 1, ... (all with the same recorded time and
                   session); bulk writes and imports use it.

Meta records carry no position:

* ``0x40 KEY``: key id u32 + key bytes.  Defines a key id; a segment defines
  every key id it uses before the first use, so each segment can be read on
  its own.  Ids are global: the same key has the same id in every segment.
  Id 0xFFFFFFFF is reserved (CLEAR events carry it); a KEY record with it
  is corruption.
* ``0x41 SESSION``: session id u32 + msgpack map (source, host, pid, user,
  started, version).  Each writer session gets an id; each segment declares
  the sessions it uses.  The session of an event says who wrote it.

Recorded times never decrease within a log (the writer clamps them), so a
wall-clock time maps to a position by binary search.

Synced segment creations (file ``synced-segment``, 40 bytes)::

    0      8     magic b"TSLOGSYN"
    8      1     version (1)
    9      3     reserved (0)
    12     8     first position of the newest segment created synced (u64)
    20     16    log id
    36     4     CRC-32 of bytes 0..36

A segment is created as ``<name>.tmp`` holding its header and renamed into
place; unless ``fsync="never"`` the file is synced before the rename and
the directory after it.  After a power loss a segment file that holds
nothing -- empty or all zeros, no valid header -- is therefore a creation
cut short only if that creation was not synced; after a synced one it is
damage (events acknowledged in it are gone).  A zeroed file cannot say
which, so the record lives outside it: before creating segment P synced, a
writer replaces ``synced-segment`` with P (a synced ``.tmp`` file renamed
into place before the segment, whose directory sync makes both durable
before any event goes into P).  Recovery removes a trailing segment that
holds nothing only if it starts after the recorded position, or if there
is no record (logs written before it existed, or only ever without syncs);
otherwise it raises :exc:`~telstate_log.LogCorruptError` naming the file.
The segment before P was finished with an fsync before the record was
written, so an empty trailing segment before P is damage as well.  What
decides is what is on disk, never the options of whoever opens the log.

A writer that finds the recorded position past its newest segment (a crash
between the record and the segment's rename, or segments moved aside by
repair) lowers it to that segment, or removes it if there is none, durably
and before creating any segment: a position reused by a later creation
without syncs is never taken for a synced one.  A damaged record is set
aside (``synced-segment.bad``) by a writer and is an error only where it
is needed to judge a segment that holds nothing.  The segment format is
unchanged (version 1).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

# The kind numbers are declared once, in _events; re-exported for the format's readers.
from ._events import (
    ADD,
    ADD_BATCH,
    CLEAR,
    DELETE,
    EVENT_KINDS,
    IMMUTABLE,
    INDEXED,
    KEY,
    META_KINDS,
    SESSION,
)

__all__ = [
    "ADD",
    "ADD_BATCH",
    "ADD_FRAME",
    "CLEAR",
    "DELETE",
    "EVENT_KINDS",
    "FORMAT_VERSION",
    "FRAME_CRC",
    "FRAME_MAGIC",
    "FRAME_OVERHEAD",
    "HEADER_SIZE",
    "IMMUTABLE",
    "INDEXED",
    "KEY",
    "MAX_BODY",
    "META_KINDS",
    "NO_KEY",
    "SEGMENT_MAGIC",
    "SESSION",
    "SYNCED_FILE",
    "SYNCED_SIZE",
    "Decoded",
    "SegmentHeader",
    "batch_fields",
    "check_byte",
    "decode_frames",
    "encode_batch",
    "encode_event",
    "encode_header",
    "encode_meta",
    "encode_synced",
    "parse_header",
    "parse_synced",
    "scan_frames",
    "segment_name",
]

FORMAT_VERSION = 1
SEGMENT_MAGIC = b"TSLOGSEG"
HEADER_SIZE = 52
FRAME_MAGIC = 0x1EA7
MAX_BODY = 1 << 30
FRAME_OVERHEAD = 12  # 8-byte frame header + 4-byte CRC
EVENT_PREFIX = 24

NO_KEY = 0xFFFFFFFF

_HEADER = struct.Struct("<8sBBHIQd16s")
SYNCED_FILE = "synced-segment"
SYNCED_MAGIC = b"TSLOGSYN"
SYNCED_VERSION = 1
_SYNCED = struct.Struct("<8sB3xQ16s")
SYNCED_SIZE = _SYNCED.size + 4
_U32 = struct.Struct("<I")
_FRAME = struct.Struct("<HBBI")
_EVENT = struct.Struct("<HBBIQdII")
_ADD = struct.Struct("<HBBIQdIId")
#: an ADD frame up to its value (frame header, event prefix, timestamp), and the
#: chained CRC that ends every frame: public for the writer's fast path
ADD_FRAME = _ADD
FRAME_CRC = _U32
_INDEXED = struct.Struct("<HBBIQdIII")
_BATCH = struct.Struct("<HBBIQdIIII")
_BATCH_FIELDS = struct.Struct("<II")

#: numpy view of the 24-byte event prefix
EVENT_DTYPE = np.dtype([("pos", "<u8"), ("rec", "<f8"), ("sess", "<u4"), ("key", "<u4")])
_CHUNK = 1 << 16


def segment_name(first_position: int) -> str:
    return f"{first_position:020d}.seg"


def check_byte(kind: int, length: int) -> int:
    return (kind ^ length ^ (length >> 8) ^ (length >> 16) ^ (length >> 24) ^ 0x5A) & 0xFF


@dataclass(frozen=True)
class SegmentHeader:
    version: int
    first_position: int
    created: float
    log_id: bytes


def encode_header(first_position: int, created: float, log_id: bytes) -> bytes:
    head = _HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, HEADER_SIZE, 0, first_position,
                        created, log_id)
    return head + _U32.pack(zlib.crc32(head))


def parse_header(data: bytes | memoryview) -> SegmentHeader | str:
    """Parse a segment header; returns a reason string if it is invalid."""
    if len(data) < HEADER_SIZE:
        return f"header is {len(data)} bytes, expected {HEADER_SIZE}"
    magic, version, _flags, hlen, _res, first, created, log_id = _HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC:
        return "not a telstate-log segment (bad magic)"
    if zlib.crc32(data[:48]) != _U32.unpack_from(data, 48)[0]:
        return "segment header checksum mismatch"
    if version != FORMAT_VERSION:
        return f"unsupported segment format version {version} (this is {FORMAT_VERSION})"
    if hlen != HEADER_SIZE:
        return f"unexpected header length {hlen}"
    return SegmentHeader(version, first, created, bytes(log_id))


def encode_synced(first_position: int, log_id: bytes) -> bytes:
    """The ``synced-segment`` record: segment `first_position` was created synced."""
    body = _SYNCED.pack(SYNCED_MAGIC, SYNCED_VERSION, first_position, log_id)
    return body + _U32.pack(zlib.crc32(body))


def parse_synced(data: bytes) -> tuple[int, bytes] | str:
    """(first position, log id) of a ``synced-segment`` record; a reason if invalid."""
    if len(data) != SYNCED_SIZE:
        return f"record is {len(data)} bytes, expected {SYNCED_SIZE}"
    magic, version, first, log_id = _SYNCED.unpack_from(data)
    if magic != SYNCED_MAGIC:
        return "not a synced-segment record (bad magic)"
    if zlib.crc32(data[:_SYNCED.size]) != _U32.unpack_from(data, _SYNCED.size)[0]:
        return "synced-segment record checksum mismatch"
    if version != SYNCED_VERSION:
        return f"unsupported synced-segment version {version} (this is {SYNCED_VERSION})"
    return first, bytes(log_id)


def _frame_start(kind: int, length: int) -> tuple[int, int, int, int]:
    return FRAME_MAGIC, kind, check_byte(kind, length), length


def encode_event(kind: int, pos: int, rec: float, sess: int, key_id: int, sub_key: bytes,
                 value: bytes, ts: float) -> bytes:
    """A frame without its trailing CRC (the writer appends the chained CRC)."""
    if kind == ADD:
        length = EVENT_PREFIX + 8 + len(value)
        return _ADD.pack(FRAME_MAGIC, ADD, check_byte(ADD, length), length, pos, rec, sess,
                         key_id, ts) + value
    if kind == INDEXED:
        length = EVENT_PREFIX + 4 + len(sub_key) + len(value)
        return _INDEXED.pack(FRAME_MAGIC, INDEXED, check_byte(INDEXED, length), length, pos,
                             rec, sess, key_id, len(sub_key)) + sub_key + value
    length = EVENT_PREFIX + len(value)
    return _EVENT.pack(*_frame_start(kind, length), pos, rec, sess, key_id) + value


def encode_batch(pos: int, rec: float, sess: int, key_id: int, ts: np.ndarray,
                 values: list[bytes] | np.ndarray) -> bytes:
    """An ADD_BATCH frame (without its CRC) for samples at positions pos, pos+1, ...

    `values` is a list of encoded values or a ``V<width>`` array of them.
    """
    count = len(values)
    if isinstance(values, np.ndarray):
        width = values.dtype.itemsize
        tail = values.tobytes()
    else:
        tail = b"".join(values)
        width = len(values[0]) if count else 0
        if not (width and len(tail) == width * count and max(map(len, values)) == width):
            width = 0
            tail = np.fromiter(map(len, values), np.int64, count).astype("<u4").tobytes() + tail
    stamps = np.ascontiguousarray(ts, "<f8").tobytes()
    length = EVENT_PREFIX + 8 + len(stamps) + len(tail)
    return _BATCH.pack(FRAME_MAGIC, ADD_BATCH, check_byte(ADD_BATCH, length), length, pos, rec,
                       sess, key_id, count, width) + stamps + tail


def batch_fields(buf: memoryview, off: int, length: int
                 ) -> tuple[np.ndarray, list[bytes] | np.ndarray, int] | None:
    """(timestamps, values, width) of an ADD_BATCH frame, None if malformed.

    With width > 0 the values are a ``V<width>`` array (views of `buf`).
    """
    body = off + 8 + EVENT_PREFIX
    end = off + 8 + length
    if length < EVENT_PREFIX + 8:
        return None
    count, width = _BATCH_FIELDS.unpack_from(buf, body)
    ts_end = body + 8 + 8 * count
    if ts_end > end:
        return None
    ts = np.frombuffer(buf, "<f8", count, body + 8)
    if width:
        if ts_end + width * count != end:
            return None
        return ts, np.frombuffer(buf, f"V{width}", count, ts_end), width
    if ts_end + 4 * count > end:
        return None
    lengths = np.frombuffer(buf, "<u4", count, ts_end).astype(np.int64)
    start = ts_end + 4 * count
    if start + int(lengths.sum()) != end:
        return None
    ends = (np.cumsum(lengths) + start).tolist()
    starts = [start, *ends[:-1]]
    return ts, [bytes(buf[a:b]) for a, b in zip(starts, ends)], 0


def encode_meta(kind: int, ident: int, payload: bytes) -> bytes:
    """A KEY or SESSION frame without its trailing CRC."""
    length = 4 + len(payload)
    return _FRAME.pack(*_frame_start(kind, length)) + _U32.pack(ident) + payload


@dataclass
class Scan:
    """Result of :func:`scan_frames` over ``buf[start:end]``."""

    offsets: np.ndarray  # frame start offsets of complete, well-formed frames
    lengths: np.ndarray  # their body lengths
    kinds: np.ndarray  # their kinds
    end: int  # offset just past the last good frame
    crc: int  # running CRC state at `end`
    problem: str | None  # why scanning stopped before the end of the data, if it did
    problem_offset: int  # where


def _local_crc_ok(buf: memoryview, off: int, length: int) -> bool:
    """Check one frame from the previous CRC (the 4 bytes before it)."""
    seed = _U32.unpack_from(buf, off - 4)[0]
    crc_off = off + 8 + length
    want = _U32.unpack_from(buf, crc_off)[0]
    return bool(zlib.crc32(buf[off - 4:crc_off], seed) == want)


def scan_frames(buf: memoryview, start: int, end: int, crc: int) -> Scan:
    """Find the well-formed, checksummed frames in ``buf[start:end]``.

    `start` is a frame boundary and `crc` the running CRC of ``buf[:start]``.
    Scanning stops at the first frame that is cut short, malformed or fails
    its CRC; the caller decides whether that is a torn tail or corruption.
    """
    offsets: list[int] = []
    unpack = _U32.unpack_from
    off = start
    while off + 12 <= end:
        length = unpack(buf, off + 4)[0]
        nxt = off + 12 + length
        if nxt > end or length > MAX_BODY:
            break
        offsets.append(off)
        off = nxt
    offs = np.array(offsets, np.int64)
    arr = np.frombuffer(buf, np.uint8, end)
    problem: str | None = None
    n = len(offs)
    if n:
        magic = arr[offs].astype(np.uint16) | (arr[offs + 1].astype(np.uint16) << 8)
        kinds = arr[offs + 2]
        lengths = (arr[offs + 4].astype(np.int64) | (arr[offs + 5].astype(np.int64) << 8)
                   | (arr[offs + 6].astype(np.int64) << 16)
                   | (arr[offs + 7].astype(np.int64) << 24))
        check = (kinds.astype(np.int64) ^ lengths ^ (lengths >> 8) ^ (lengths >> 16)
                 ^ (lengths >> 24) ^ 0x5A) & 0xFF
        bad = (magic != FRAME_MAGIC) | (check != arr[offs + 3])
        if bad.any():
            n = int(np.argmax(bad))
            problem = "malformed frame header"
    else:
        kinds = np.zeros(0, np.uint8)
        lengths = np.zeros(0, np.int64)
    good_end = int(offs[n - 1] + 12 + lengths[n - 1]) if n else start
    if n:
        last_crc_off = good_end - 4
        whole = zlib.crc32(buf[start:last_crc_off], crc)
        if whole != unpack(buf, last_crc_off)[0]:
            # Find the first frame whose chained CRC fails.
            running = crc
            for i in range(n):
                o = int(offs[i])
                c_off = o + 8 + int(lengths[i])
                running = zlib.crc32(buf[o:c_off], running)
                if running != unpack(buf, c_off)[0]:
                    n = i
                    problem = "frame checksum mismatch"
                    break
                running = zlib.crc32(buf[c_off:c_off + 4], running)
            good_end = int(offs[n - 1] + 12 + lengths[n - 1]) if n else start
    crc_end = zlib.crc32(buf[start:good_end], crc) if n else crc
    if problem is None and good_end < end:
        problem = _tail_problem(buf, good_end, end)
    return Scan(offs[:n], lengths[:n], kinds[:n], good_end, crc_end, problem,
                good_end if problem else end)


def _tail_problem(buf: memoryview, off: int, end: int) -> str:
    """Classify the bytes at `off` that do not form a complete frame."""
    if end - off < 8:
        return "incomplete frame"
    magic, kind, check, length = _FRAME.unpack_from(buf, off)
    if magic != FRAME_MAGIC or check != check_byte(kind, length):
        return "malformed frame header"
    if length > MAX_BODY:
        return "oversized frame"
    return "incomplete frame"


def find_valid_frame(buf: memoryview, start: int, end: int) -> int | None:
    """Offset of the first intact frame at or after `start` (resync after damage)."""
    magic = bytes((FRAME_MAGIC & 0xFF, FRAME_MAGIC >> 8))
    data = buf.obj if isinstance(buf.obj, bytes) and len(buf.obj) >= end else bytes(buf[:end])
    pos = data.find(magic, max(start, 4), end)
    while pos != -1:
        if pos + 12 <= end:
            kind = data[pos + 2]
            length = _U32.unpack_from(data, pos + 4)[0]
            if (data[pos + 3] == check_byte(kind, length) and length <= MAX_BODY
                    and pos + 12 + length <= end and _local_crc_ok(buf, pos, length)):
                return pos
        pos = data.find(magic, pos + 1, end)
    return None


@dataclass
class Decoded:
    """Structure-of-arrays view of the frames of a :class:`Scan`."""

    kinds: np.ndarray  # uint8
    offsets: np.ndarray  # int64 frame offsets
    lengths: np.ndarray  # int64 body lengths
    event: np.ndarray  # EVENT_DTYPE per frame (garbage for meta frames)
    ts: np.ndarray  # float64 sample timestamps (ADD frames; garbage elsewhere)
    counts: np.ndarray  # int64 events per frame: 0 meta, 1 event, n for ADD_BATCH


def decode_frames(buf: memoryview, scan: Scan) -> Decoded:
    """Extract the fixed fields of every frame with vectorised gathers."""
    offs = scan.offsets
    n = len(offs)
    arr = np.frombuffer(buf, np.uint8, scan.end)
    if n == 0:
        return Decoded(scan.kinds, offs, scan.lengths, np.zeros(0, EVENT_DTYPE),
                       np.zeros(0, np.float64), np.zeros(0, np.int64))
    if len(arr) < EVENT_PREFIX:
        # only short meta frames: the dummy gathers at offset 0 need the room
        arr = np.concatenate((arr, np.zeros(EVENT_PREFIX, np.uint8)))
    is_event = scan.lengths >= EVENT_PREFIX
    is_add = (scan.kinds == ADD) & (scan.lengths >= EVENT_PREFIX + 8)
    event = np.empty(n, EVENT_DTYPE)
    ts = np.zeros(n, np.float64)
    ev_cols = np.arange(EVENT_PREFIX)
    ts_cols = np.arange(8)
    # Gather in chunks to bound the (chunk x 24) index temporaries.
    for c0 in range(0, n, _CHUNK):
        c1 = min(n, c0 + _CHUNK)
        o = offs[c0:c1]
        # Meta frames can be shorter than an event prefix: gather inside the buffer.
        base = np.where(is_event[c0:c1], o + 8, 0)
        event[c0:c1] = arr[base[:, None] + ev_cols].view(EVENT_DTYPE).reshape(c1 - c0)
        tbase = np.where(is_add[c0:c1], o + 8 + EVENT_PREFIX, 0)
        ts[c0:c1] = arr[tbase[:, None] + ts_cols].view("<f8").reshape(c1 - c0)
    counts = np.isin(scan.kinds, list(EVENT_KINDS)).astype(np.int64)
    for i in np.nonzero((scan.kinds == ADD_BATCH) & (scan.lengths >= EVENT_PREFIX + 8))[0]:
        counts[i] = _U32.unpack_from(buf, int(offs[i]) + 8 + EVENT_PREFIX)[0]
    return Decoded(scan.kinds, offs, scan.lengths, event, ts, counts)


def meta_fields(buf: memoryview, off: int, length: int) -> tuple[int, bytes]:
    """(id, payload) of a KEY or SESSION frame."""
    ident = _U32.unpack_from(buf, off + 8)[0]
    return ident, bytes(buf[off + 12:off + 8 + length])


def indexed_fields(buf: memoryview, off: int, length: int) -> tuple[bytes, bytes] | None:
    """(sub-key, value) of a SET_INDEXED frame, None if malformed."""
    body = off + 8 + EVENT_PREFIX
    if length < EVENT_PREFIX + 4:
        return None
    sub_len = _U32.unpack_from(buf, body)[0]
    end = off + 8 + length
    if body + 4 + sub_len > end:
        return None
    return bytes(buf[body + 4:body + 4 + sub_len]), bytes(buf[body + 4 + sub_len:end])


def value_span(kind: int, off: int, length: int) -> tuple[int, int]:
    """Byte range of the value in a SET or ADD frame."""
    start = off + 8 + EVENT_PREFIX + (8 if kind == ADD else 0)
    return start, off + 8 + length
