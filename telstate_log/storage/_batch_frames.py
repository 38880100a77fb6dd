"""Framing the records of many new keys at once (``LogWriter.commit_many_batches``).

Theory of operation
-------------------
The RDB import creates thousands of small sensors at a time.  Each gets a
KEY definition and one ADD_BATCH frame (:mod:`telstate_log.core._log_format`);
framing them one by one costs a few Python steps per key.  Keys alike --
one key length, one sample count, all new to the segment -- are framed here
as rows of one numpy structured array instead (:func:`matrix_records`), each
row a KEY record and an ADD_BATCH frame with their CRCs, which are exactly
the bytes ``encode_meta`` and ``encode_batch`` give (checked by the asserts
below when the module loads).  :func:`frame_batches` frames a whole call:
runs of keys alike as matrices, the others one by one.  Pure: bytes and
arrays in, bytes out.
"""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np

from ..core import _log_format as fmt

__all__ = ["BATCH_BODY", "BATCH_HEAD", "KEY_COST", "KEY_META", "MATRIX_RUN", "fitting",
           "frame_batches", "frame_head", "key_ids_for", "matrix_records", "uniform_run"]

_crc32 = zlib.crc32
_OVERHEAD = fmt.FRAME_OVERHEAD
#: CRC-32's residue: the running CRC after any record and its own CRC
_RESIDUE = 0x2144DF1C

# An ADD_BATCH frame's header, event prefix, count and width
# (fmt.encode_batch's, as one struct), the body bytes before its samples, and the
# bytes in the file of a key's frame and KEY definition besides its samples.
_ADD_BATCH = fmt.ADD_BATCH
BATCH_HEAD = struct.Struct("<QQdQQ").pack      # frame header, pos, rec, ids, count | width
KEY_META = struct.Struct("<QI").pack           # frame header, key id (then the key)
BATCH_BODY = fmt.EVENT_PREFIX + 8
KEY_COST = BATCH_BODY + _OVERHEAD + 16


@functools.lru_cache(maxsize=4096)
def frame_head(kind: int, length: int) -> int:
    """A frame's 8-byte header (magic, kind, check byte, body length) as one integer."""
    return fmt.FRAME_MAGIC | kind << 16 | fmt.check_byte(kind, length) << 24 | length << 32


assert BATCH_HEAD(frame_head(_ADD_BATCH, 50), 2, 3.0, 4 | 5 << 32, 1 | 10 << 32) \
    + struct.pack("<d", 6.0) + b"v" * 10 == fmt.encode_batch(
        2, 3.0, 4, 5, np.array([6.0]), np.frombuffer(b"v" * 10, "V10"))
assert KEY_META(frame_head(fmt.KEY, 7), 9) + b"key" == fmt.encode_meta(fmt.KEY, 9, b"key")


def fitting(keys: list[bytes], sizes: list[int], width: int, room: int, limit: int) -> int:
    """How many of `keys` (from the first) fit in `room` bytes of segment, each with a
    KEY definition and one frame (stopping at a key whose batch needs more frames)."""
    used = count = 0
    step = 12 + width                    # commit_batch's chunking: 12 bytes per value
    for key, size in zip(keys, sizes):
        used += KEY_COST + len(key) + size * (8 + width)
        if used > room or size * step > limit:
            break
        count += 1
    return count


#: keys alike (see _uniform_run) from which commit_many_batches frames them as a matrix
MATRIX_RUN = 16


def uniform_run(keys: list[bytes], kids: list[int], sizes: list[int], i: int, stop: int,
                 seg_keys: set[int]) -> int:
    """How many keys from `i` (up to `stop`) are alike: keys of one length, batches of
    one size, and each new to the segment (0 if fewer than MATRIX_RUN)."""
    if stop - i < MATRIX_RUN:
        return 0
    klen, size = len(keys[i]), sizes[i]
    j = i
    while j < stop and sizes[j] == size and len(keys[j]) == klen and kids[j] not in seg_keys:
        j += 1
    return j - i if j - i >= MATRIX_RUN else 0


def matrix_records(keys: list[bytes], kids: list[int], size: int, width: int, pos: int,
                    rec: float, session: int, stamps: bytes, raw: bytes,
                    crc: int) -> tuple[bytes, int]:
    """The KEY definition and ADD_BATCH frame of each of `keys` (one length, `size`
    samples each, from position `pos`), with their chained CRCs, as commit_many_batches
    frames them one by one; built as one row of bytes per key.  Returns the bytes and the
    row size."""
    m, klen = len(keys), len(keys[0])
    length = BATCH_BODY + size * (8 + width)
    row = np.dtype([("mhead", "<u8"), ("kid", "<u4"), ("key", f"V{klen}"), ("crc1", "<u4"),
                    ("bhead", "<u8"), ("pos", "<u8"), ("rec", "<f8"), ("ids", "<u8"),
                    ("shape", "<u8"), ("ts", "<f8", (size,)), ("values", "u1", (size * width,)),
                    ("crc2", "<u4")])
    rows = np.empty(m, row)
    ids = np.array(kids, np.uint64)
    rows["mhead"] = frame_head(fmt.KEY, 4 + klen)
    rows["kid"] = ids
    rows["key"] = np.frombuffer(b"".join(keys), f"V{klen}")
    rows["bhead"] = frame_head(_ADD_BATCH, length)
    rows["pos"] = np.arange(pos, pos + m * size, size, dtype=np.uint64)
    rows["rec"] = rec
    rows["ids"] = ids << np.uint64(32) | np.uint64(session)
    rows["shape"] = size | width << 32
    rows["ts"] = np.frombuffer(stamps, "<f8").reshape(m, size)
    rows["values"] = np.frombuffer(raw, np.uint8).reshape(m, size * width)
    data = memoryview(rows.tobytes())
    step = row.itemsize
    meta_end, frame_end = 12 + klen, step - 4
    crc1: list[int] = []
    crc2: list[int] = []
    for o in range(0, m * step, step):
        crc1.append(_crc32(data[o:o + meta_end], crc))
        crc = _RESIDUE
        crc2.append(_crc32(data[o + meta_end + 4:o + frame_end], _RESIDUE))
    rows["crc1"] = crc1
    rows["crc2"] = crc2
    return rows.tobytes(), step


def key_ids_for(keys: list[bytes], key_ids: dict[bytes, int], known: dict[int, bytes],
                free: int) -> list[int]:
    """The key id of each of `keys` (id by key: `key_ids`; key by id: `known`): its
    own if it has one, else the next unused id from `free` on.  Stops early if
    the ids run out (at ``fmt.NO_KEY``)."""
    kids: list[int] = []
    for key in keys:
        kid = key_ids.get(key)
        if kid is None:
            while free in known:
                free += 1
            if free >= fmt.NO_KEY:
                break
            kid = free
            free += 1
        kids.append(kid)
    return kids


_U32_PACK = fmt.FRAME_CRC.pack


def frame_batches(keys: list[bytes], kids: list[int], sizes: list[int], width: int,
                  stamps: bytes, raw: bytes, first: int, rec: float, session: int,
                  seg_keys: set[int], head: bytes, crc: int, offset: int
                  ) -> tuple[list[bytes], int, list[int], list[int]]:
    """The records of ``commit_many_batches`` for the keys ``[0, len(kids))``.

    Key ``i`` (id ``kids[i]``) takes the next ``sizes[i]`` samples: `stamps`
    (little-endian float64 bytes) and `raw` (values of `width` bytes), at
    positions from `first`; a KEY definition precedes its frame unless its id
    is in `seg_keys`, and `head` (a SESSION record, or ``b""``) precedes them
    all.  `crc` is the running CRC before them and `offset` the segment offset
    they start at.  Returns the checksummed records (to be joined), the
    running CRC after them, and each key's frame offset and first position.
    """
    out: list[bytes] = []
    if head:
        out += (head, _U32_PACK(_crc32(head, crc)))
        crc = _RESIDUE
        offset += len(head) + 4
    at: list[int] = []
    firsts: list[int] = []
    count = len(kids)
    a = i = 0
    pos = first
    sample = 8 + width
    shape = width << 32
    while i < count:
        key, kid, size = keys[i], kids[i], sizes[i]
        run = uniform_run(keys, kids, sizes, i, count, seg_keys)
        if run >= MATRIX_RUN:               # keys alike: framed as a byte matrix
            b = a + run * size
            block, step = matrix_records(keys[i:i + run], kids[i:i + run], size, width,
                                          pos, rec, session, stamps[8 * a:8 * b],
                                          raw[width * a:width * b], crc)
            out.append(block)
            crc = _RESIDUE
            at += range(offset + 16 + len(key), offset + run * step, step)
            firsts += range(pos, pos + run * size, size)
            offset += run * step
            pos += run * size
            a = b
            i += run
            continue
        if kid not in seg_keys:
            meta_frame = KEY_META(frame_head(fmt.KEY, 4 + len(key)), kid) + key
            out += (meta_frame, _U32_PACK(_crc32(meta_frame, crc)))
            crc = _RESIDUE
            offset += len(meta_frame) + 4
        b = a + size
        length = BATCH_BODY + size * sample
        frame = BATCH_HEAD(frame_head(fmt.ADD_BATCH, length), pos, rec, session | kid << 32,
                           size | shape) + stamps[8 * a:8 * b] + raw[width * a:width * b]
        out += (frame, _U32_PACK(_crc32(frame, crc)))
        crc = _RESIDUE
        at.append(offset)
        firsts.append(pos)
        offset += length + _OVERHEAD
        pos += size
        a = b
        i += 1
    return out, crc, at, firsts
