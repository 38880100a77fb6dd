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
below when the module loads).  Pure: bytes and arrays in, bytes out.
"""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np

from ..core import _log_format as fmt

__all__ = ["BATCH_BODY", "BATCH_HEAD", "KEY_COST", "KEY_META", "MATRIX_RUN", "fitting",
           "frame_head", "matrix_records", "uniform_run"]

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
