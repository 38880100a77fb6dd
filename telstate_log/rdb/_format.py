"""The RDB byte formats shared by the reader, writer and DUMP codec.

Theory of operation
-------------------
An RDB file is ``b"REDIS"`` + a 4-digit version, then a stream of opcodes and
key/value records, then ``0xFF`` and (from version 5) an 8-byte little-endian
CRC-64 of everything before it.  A key/value record is a one-byte value type,
the key as an RDB string and the value in the type's layout.  A DUMP payload
is one value record without the key: type byte, value, then a 2-byte
little-endian RDB version and the CRC-64 of all that.

Lengths use a prefix code (the "length encoding"), by the top two bits of the
first byte:

* ``00`` -- the low 6 bits are the length (0..63);
* ``01`` -- 14 bits, the low 6 bits then the next byte (big-endian);
* ``10`` -- ``0x80``: a 32-bit big-endian length follows; ``0x81``: 64-bit;
* ``11`` -- not a length but a string encoding: ``0xC0``/``0xC1``/``0xC2`` an
  8/16/32-bit little-endian signed integer (the string is its decimal form),
  ``0xC3`` an LZF-compressed string (compressed length, plain length, bytes).

Telescope state needs only three Redis types: a string per immutable key, a
hash per indexed key and a sorted set per mutable key, whose members are an
8-byte big-endian IEEE-754 timestamp followed by the encoded value (so that
byte order is time order) and whose scores are all 0.  :func:`pack_member`
and :func:`split_member` convert between that member layout and
``(value, timestamp)``; :func:`member_problem` validates a whole zset.

This module holds the format knowledge that is not about file framing:
constants, length encoding, the decoders of the compact encodings Redis uses
for small hashes and zsets (ziplist, listpack, and the zipmap of Redis 2.x
hashes; see the section below), and :class:`RdbEntry`, the decoded form of a
key that the reader returns and the writer accepts.
"""

from __future__ import annotations

import mmap
import operator
import struct
from collections.abc import Sequence
from itertools import islice
from typing import NamedTuple, TypeAlias

from ..core._types import KeyType

__all__ = [
    "MAGIC", "MAX_READ_VERSION", "MIN_CHECKSUM_VERSION", "OP_AUX", "OP_EOF", "OP_EXPIRETIME",
    "OP_EXPIRETIME_MS", "OP_FREQ", "OP_FUNCTION", "OP_FUNCTION2", "OP_IDLE", "OP_MODULE_AUX",
    "OP_RESIZEDB", "OP_SELECTDB", "OP_SLOT_INFO", "TS_LIMIT", "TYPE_HASH", "TYPE_HASH_LISTPACK",
    "TYPE_HASH_ZIPLIST", "TYPE_HASH_ZIPMAP", "TYPE_NAMES", "TYPE_STRING", "TYPE_ZSET",
    "TYPE_ZSET_2", "TYPE_ZSET_LISTPACK", "TYPE_ZSET_ZIPLIST", "WRITE_VERSION", "PackedError",
    "RdbEntry",
    "Value", "encode_length", "encode_string", "is_zero_score", "length_prefix",
    "listpack_entries", "member_problem", "pack_member", "split_member", "uniform_packed_zset",
    "uniform_records", "uniform_zset_members", "valid_in_order", "ziplist_entries",
    "zipmap_entries",
]

MAGIC = b"REDIS"
#: Version written in our RDB headers and DUMP footers (see _rdb_writer's docstring).
WRITE_VERSION = 9
#: Newest RDB version the reader accepts (Redis 7.4 writes 12).
MAX_READ_VERSION = 12
#: First version whose files end with a CRC-64 after the EOF opcode.
MIN_CHECKSUM_VERSION = 5

# Opcodes (bytes that take the place of a value type).
OP_SLOT_INFO = 0xF4
OP_FUNCTION2 = 0xF5
OP_FUNCTION = 0xF6
OP_MODULE_AUX = 0xF7
OP_IDLE = 0xF8
OP_FREQ = 0xF9
OP_AUX = 0xFA
OP_RESIZEDB = 0xFB
OP_EXPIRETIME_MS = 0xFC
OP_EXPIRETIME = 0xFD
OP_SELECTDB = 0xFE
OP_EOF = 0xFF

# Value types that can hold telescope state.
TYPE_STRING = 0
TYPE_ZSET = 3
TYPE_HASH = 4
TYPE_ZSET_2 = 5
TYPE_HASH_ZIPMAP = 9
TYPE_ZSET_ZIPLIST = 12
TYPE_HASH_ZIPLIST = 13
TYPE_HASH_LISTPACK = 16
TYPE_ZSET_LISTPACK = 17

#: Names of every value type, for error messages.
TYPE_NAMES = {
    0: "string", 1: "list", 2: "set", 3: "zset", 4: "hash", 5: "zset (binary scores)",
    6: "module (pre-release)", 7: "module", 9: "hash (zipmap)", 10: "list (ziplist)",
    11: "set (intset)", 12: "zset (ziplist)", 13: "hash (ziplist)", 14: "list (quicklist)",
    15: "stream", 16: "hash (listpack)", 17: "zset (listpack)", 18: "list (quicklist v2)",
    19: "stream (v2)", 20: "set (listpack)", 21: "stream (v3)",
    22: "hash with field expiry (pre-release)", 23: "hash with field expiry (pre-release)",
    24: "hash with field expiry", 25: "hash with field expiry (listpack)",
}

#: Members whose first 8 bytes sort below this are valid timestamps: the
#: big-endian bit patterns of +0.0 up to the largest finite double.  Negative
#: numbers (including -0.0), infinities and NaNs all sort at or above it.
TS_LIMIT = b"\x7f\xf0\x00\x00\x00\x00\x00\x00"

#: A decoded value: bytes (immutable), sorted zset members (mutable) or a dict (indexed).
Value: TypeAlias = "bytes | list[bytes] | dict[bytes, bytes]"


class RdbEntry(NamedTuple):
    """One key of an RDB file: database number, name, telstate kind and value.

    `expires` is the key's expiry time in the file (Unix milliseconds, None if
    it has none); the writer never writes one.
    """

    db: int
    key: bytes
    kind: KeyType
    value: Value
    expires: int | None = None


_first = operator.itemgetter(0)
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")
_BE_DOUBLE = struct.Struct(">d")


def encode_length(length: int) -> bytes:
    """Return the RDB length encoding of a non-negative integer (1, 2, 5 or 9 bytes)."""
    if length < 0x40:
        if length < 0:
            raise ValueError(f"negative length {length}")
        return bytes((length,))
    if length < 0x4000:
        return _BE16.pack(0x4000 | length)
    if length < 0x1_0000_0000:
        return b"\x80" + _BE32.pack(length)
    if length < 0x1_0000_0000_0000_0000:
        return b"\x81" + _BE64.pack(length)
    raise ValueError(f"length {length} does not fit in 64 bits")


class _PrefixCache(dict[int, bytes]):
    """``cache[n]`` is ``encode_length(n)``, memoised for the lengths of short strings.

    Used through ``map(cache.__getitem__, lengths)`` so that the common case
    stays in C.
    """

    def __missing__(self, length: int) -> bytes:
        encoded = encode_length(length)
        if length < 0x4000:
            self[length] = encoded
        return encoded


_PREFIXES = _PrefixCache((n, bytes((n,))) for n in range(0x40))

#: ``length_prefix(n) == encode_length(n)``, fast for short lengths.
length_prefix = _PREFIXES.__getitem__


def encode_string(data: bytes) -> bytes:
    """Return `data` as a plain (uncompressed, non-integer) RDB string."""
    return length_prefix(len(data)) + data


def pack_member(timestamp: float, value: bytes) -> bytes:
    """Return the zset member for a sample: 8-byte big-endian timestamp + value.

    Matches katsdptelstate's ``pack_timestamp``: -0.0 is stored as +0.0.  The
    caller is responsible for refusing negative or non-finite timestamps.
    """
    return _BE_DOUBLE.pack(abs(timestamp)) + value


def split_member(member: bytes) -> tuple[bytes, float]:
    """Return ``(value, timestamp)`` from a zset member made by :func:`pack_member`."""
    if len(member) < 8:
        raise ValueError(f"zset member of {len(member)} bytes is too short for a timestamp")
    return member[8:], _BE_DOUBLE.unpack_from(member)[0]


def uniform_records(buf: bytes | mmap.mmap, pos: int, end: int, count: int,
                    score: bytes) -> tuple[list[bytes], int] | None:
    """Fast path for plain zsets: `count` members of one length below 64, each
    followed by the same `score` bytes, starting at ``buf[pos]``.

    Checks every record's length byte and score with strided slices and
    splits out the members in one struct pass.  Returns ``(members, end of
    the records)``, or None if the records are not laid out like that.
    """
    size = buf[pos] if pos < end else 0x40
    stride = 1 + size + len(score)
    if size >= 0x40 or count * stride > end - pos:
        return None
    region = buf[pos:pos + count * stride]
    if region[0::stride] != bytes((size,)) * count:
        return None
    for i, expected in enumerate(score, start=1 + size):
        if region[i::stride] != bytes((expected,)) * count:
            return None
    layout = struct.Struct(f"x{size}s{len(score)}x")
    return list(map(_first, layout.iter_unpack(region))), pos + count * stride


def is_zero_score(text: bytes) -> bool:
    """True if `text` is a zset score written as a decimal number equal to 0."""
    if not text or text.translate(None, b"0123456789+-.eE"):
        return False
    try:
        return float(text) == 0.0
    except ValueError:
        return False


def member_problem(members: Sequence[bytes]) -> str | None:
    """Say why `members` is not a telescope-state zset, or return None if it is.

    A valid zset is non-empty and strictly increasing (sorted, no duplicates),
    and every member is an 8-byte timestamp (finite, not negative, not -0.0)
    followed by at least one byte of encoded value.  The checks run in C over
    the whole sequence; only the error path loops in Python to name the
    offending member.
    """
    if not members:
        return "empty zset"
    if not all(map(operator.lt, members, islice(members, 1, None))):
        for a, b in zip(members, islice(members, 1, None), strict=False):
            if not a < b:
                return (f"duplicate zset member {b[:40]!r}" if a == b
                        else f"zset members out of order at {b[:40]!r}")
    if min(map(len, members)) < 9:
        short = next(m for m in members if len(m) < 9)
        return f"zset member {short!r} is shorter than a timestamp plus a value"
    if members[-1][:8] >= TS_LIMIT:
        bad = next(m for m in members if m[:8] >= TS_LIMIT)
        return f"zset member {bad[:40]!r} has a negative or non-finite timestamp"
    return None


def valid_in_order(members: Sequence[bytes]) -> bool:
    """True if `members` (non-empty, all of one length) are a telescope-state zset (see
    :func:`member_problem`) in increasing order as given.

    The cheap check of a zset read whole by a fast path, whose members are
    in order unless the file is malformed: one C pass, no sort.  False says
    nothing more (the caller sorts and asks :func:`member_problem`).
    """
    return len(members[0]) >= 9 and members[-1][:8] < TS_LIMIT \
        and all(map(operator.lt, members, members[1:]))


# --- Compact encodings (ziplist, listpack) -----------------------------------
#
# Small hashes and zsets are stored as one RDB string holding a packed list of
# entries, alternately field/value or member/score.  Ziplist (RDB types 12/13,
# Redis < 7): header ``<u32 total bytes> <u32 offset of last entry> <u16
# count>``, entries ``<prevlen: 1 byte, or 0xFE + u32> <encoding> <data>``,
# then 0xFF.  Listpack (types 16/17, Redis >= 7): header ``<u32 total bytes>
# <u16 count>``, entries ``<encoding> <data> <backlen>``, then 0xFF.  Integers
# are little-endian and stand for their decimal text.  A count of 0xFFFF
# means "not recorded".  Both decoders check every field against the blob and
# each other; Redis itself trusts listpacks on load, so this is the strict
# check.
#
# Zipmap (type 9, hashes in RDB files of Redis 2.x, which converts them on
# load): ``<count: 1 byte, 254 = not recorded>`` then per pair ``<len> field
# <len> <free: 1 byte> value <free unused bytes>``, then 0xFF.  A ``<len>`` is
# one byte 0..253, or 254 + a u32 (little-endian); 0xFF where a field would
# start ends the map.  Its decoder checks what Redis' deep integrity check
# does (every length inside the blob, a recorded count equal to the pairs
# found, not empty) and more: the terminator must be the blob's last byte,
# and 255 is never a value length.

_UNKNOWN_COUNT = 0xFFFF
_ZM_BIGLEN = 254        # zipmap: a u32 length follows; as a count: "not recorded"
_ZL_INT_SIZES = {0xC0: 2, 0xD0: 4, 0xE0: 8, 0xF0: 3, 0xFE: 1}
_LP_INT_SIZES = {0xF1: 2, 0xF2: 3, 0xF3: 4, 0xF4: 8}
_ZL_HEADER = struct.Struct("<IIH")
_LP_HEADER = struct.Struct("<IH")
_LE32 = struct.Struct("<I")
_SMALL_INTS = [b"%d" % i for i in range(128)]   # shared texts of 7-bit/immediate integers


class PackedError(ValueError):
    """A ziplist or listpack is malformed; `offset` is relative to the blob."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"{reason} (at byte {offset})")
        self.reason = reason
        self.offset = offset


def _int_text(blob: bytes, pos: int, size: int) -> bytes:
    return b"%d" % int.from_bytes(blob[pos:pos + size], "little", signed=True)


def _packed_header(blob: bytes, header: struct.Struct, name: str) -> tuple[int, ...]:
    size = len(blob)
    if size < header.size + 1:
        raise PackedError(f"{name} of {size} bytes is shorter than its header", 0)
    fields = header.unpack_from(blob)
    if fields[0] != size:
        raise PackedError(f"{name} header says {fields[0]} bytes, blob has {size}", 0)
    if blob[-1] != 0xFF:
        raise PackedError(f"{name} does not end with 0xFF", size - 1)
    return tuple(fields)


def ziplist_entries(blob: bytes) -> list[bytes]:
    """Decode a ziplist into its entries (integers as decimal text)."""
    _, tail, count = _packed_header(blob, _ZL_HEADER, "ziplist")
    stop = len(blob) - 1
    entries: list[bytes] = []
    pos, prev_size, last = _ZL_HEADER.size, 0, _ZL_HEADER.size
    while pos < stop:
        start = pos
        prevlen = blob[pos]
        if prevlen == 0xFE:
            if pos + 5 > stop:
                raise PackedError("truncated ziplist entry", start)
            prevlen = _LE32.unpack_from(blob, pos + 1)[0]
            pos += 5
        else:
            pos += 1
        if prevlen != prev_size:
            raise PackedError(f"ziplist entry says previous entry has {prevlen} bytes, "
                              f"not {prev_size}", start)
        if pos >= stop:
            raise PackedError("truncated ziplist entry", start)
        enc = blob[pos]
        if enc < 0x80:
            if enc < 0x40:
                pos, size = pos + 1, enc
            elif pos + 2 <= stop:
                pos, size = pos + 2, (enc & 0x3F) << 8 | blob[pos + 1]
            else:
                raise PackedError("truncated ziplist entry", start)
        elif enc == 0x80 and pos + 5 <= stop:
            pos, size = pos + 5, struct.unpack_from(">I", blob, pos + 1)[0]
        elif enc in _ZL_INT_SIZES:
            pos, size = pos + 1, _ZL_INT_SIZES[enc]
        elif 0xF1 <= enc <= 0xFD:
            entries.append(_SMALL_INTS[enc - 0xF1])
            pos += 1
            prev_size, last = pos - start, start
            continue
        else:
            raise PackedError(f"invalid ziplist entry encoding 0x{enc:02x}", pos)
        if pos + size > stop:
            raise PackedError("ziplist entry runs past the end of the ziplist", start)
        entries.append(blob[pos:pos + size] if enc < 0xC0 else _int_text(blob, pos, size))
        pos += size
        prev_size, last = pos - start, start
    if tail != last:
        raise PackedError(f"ziplist tail offset is {tail}, last entry is at {last}", 4)
    if count not in (_UNKNOWN_COUNT, len(entries)):
        raise PackedError(f"ziplist header says {count} entries, found {len(entries)}", 8)
    return entries


def _backlen(size: int) -> bytes:
    """A listpack entry's trailing length: 7 bits per byte, continuation bit on
    all but the first byte, most significant group first (Redis' size bands)."""
    if size <= 127:
        return bytes((size,))
    nbytes = 2 if size < 16383 else 3 if size < 2097151 else 4 if size < 268435455 else 5
    groups = [(size >> (7 * i)) & 0x7F for i in range(nbytes - 1, -1, -1)]
    return bytes([size >> (7 * (nbytes - 1))] + [g | 0x80 for g in groups[1:]])


_WHOLE_STRUCT = 128  # uniform packed zsets up to this many members: one struct call
_KNOWN_LIMIT = 512   # layouts kept by uniform_zset_members (then it starts over)


class _Layout(NamedTuple):
    """How :func:`uniform_zset_members` reads a blob of `size` bytes holding
    `width`-byte members: where the records start (after the header) and the
    first member, the bytes between two members and after the last one
    (ending with the terminator), and the struct that splits out the members
    from the records (every one at once up to :data:`_WHOLE_STRUCT` members,
    else one record at a time)."""

    size: int
    head: int
    start: int
    between: bytes
    after: bytes
    members: struct.Struct


#: Layouts seen, by the blob's first bytes -- its header and the fixed bytes
#: before the first member, which fix everything else given the blob's size.
_KNOWN: tuple[dict[bytes, _Layout], dict[bytes, _Layout]] = ({}, {})


def _uniform_layout(blob: bytes, ziplist: bool) -> _Layout | None:
    """The layout of `blob` if its header and first record are those of a
    uniform packed zset (see :func:`uniform_zset_members`) and its size fits."""
    size = len(blob)
    head = _ZL_HEADER.size if ziplist else _LP_HEADER.size
    if size < head + 5:
        return None
    width = blob[head + 1] if ziplist else blob[head] ^ 0x80
    if width >= 0x40:
        return None
    n, extra = divmod(size - head - 1, width + 4)
    if extra:
        return None
    if ziplist:
        total, tail, count = _ZL_HEADER.unpack_from(blob)
        if tail != size - 3 or blob[head] != 0:
            return None
        between = bytes((width + 2, 0xF1, 2, width))
        after, record = bytes((width + 2, 0xF1, 0xFF)), f"2x{width}s2x"
    else:
        total, count = _LP_HEADER.unpack_from(blob)
        between = bytes((width + 1, 0, 1, width | 0x80))
        after, record = bytes((width + 1, 0, 1, 0xFF)), f"x{width}s3x"
    if total != size or (count != 2 * n and count != _UNKNOWN_COUNT):
        return None
    layout = struct.Struct(record * n if n <= _WHOLE_STRUCT else record)
    return _Layout(size, head, head + 2 if ziplist else head + 1, between, after, layout)


def uniform_zset_members(blob: bytes, ziplist: bool) -> tuple[bytes, ...] | None:
    """Fast path for small zsets: the members of a ziplist (`ziplist`) or
    listpack holding only members of one length below 64, each followed by
    the score 0 as a one-byte integer -- what Redis and katsdptelstate write
    for a small float sensor.

    Records of width + 4 bytes, fixed except for the member::

        ziplist   <prevlen: 0 first, else 2> <width> member <width + 2> <0xF1: integer 0>
        listpack  <0x80 | width> member <backlen width + 1> <0x00: integer 0> <backlen 1>

    So every byte of such a blob is fixed by its size and the member width
    except the member data: the header and the bytes before the first member
    are checked (or found among the layouts seen before: they are the same
    for every zset of a sensor type and length), the members split out in
    one struct pass, and the rest of the blob checked whole against them:
    joined with the fixed bytes between them, they must give it back
    exactly.  Returns the members (in blob order) only if the whole blob is
    laid out exactly like that, which makes it valid; otherwise None, and
    the caller decodes it entry by entry (which reports any problem).
    """
    known = _KNOWN[ziplist]
    prefix = blob[:12 if ziplist else 7]          # header, then the bytes before a member
    layout = known.get(prefix)
    if layout is None or layout.size != len(blob):
        layout = _uniform_layout(blob, ziplist)
        if layout is None:
            return None
        if layout.members.size != layout.size - layout.head - 1:     # too many members
            members = tuple(map(_first, layout.members.iter_unpack(blob[layout.head:-1])))
        else:
            if len(known) >= _KNOWN_LIMIT:
                known.clear()
            known[prefix] = layout
            members = layout.members.unpack_from(blob, layout.head)
    else:
        members = layout.members.unpack_from(blob, layout.head)
    if blob.endswith(layout.after) and blob.startswith(layout.between.join(members),
                                                        layout.start):
        return members
    return None


def uniform_packed_zset(blob: bytes, ziplist: bool) -> list[bytes] | None:
    """:func:`uniform_zset_members` as a list."""
    members = uniform_zset_members(blob, ziplist)
    return None if members is None else list(members)


def listpack_entries(blob: bytes) -> list[bytes]:
    """Decode a listpack into its entries (integers as decimal text)."""
    _, count = _packed_header(blob, _LP_HEADER, "listpack")
    stop = len(blob) - 1
    entries: list[bytes] = []
    pos = _LP_HEADER.size
    while pos < stop:
        start = pos
        enc = blob[pos]
        value: bytes | None = None
        if enc < 0x80:
            value, pos = _SMALL_INTS[enc], pos + 1
        elif enc < 0xC0:
            size, pos = enc & 0x3F, pos + 1
        elif pos + 2 > stop:
            raise PackedError("truncated listpack entry", start)
        elif enc < 0xE0:
            number = (enc & 0x1F) << 8 | blob[pos + 1]
            value, pos = b"%d" % (number - 0x2000 if number >= 0x1000 else number), pos + 2
        elif enc < 0xF0:
            size, pos = (enc & 0x0F) << 8 | blob[pos + 1], pos + 2
        elif enc == 0xF0 and pos + 5 <= stop:
            size, pos = _LE32.unpack_from(blob, pos + 1)[0], pos + 5
        elif enc in _LP_INT_SIZES:
            size, pos = _LP_INT_SIZES[enc], pos + 1
        else:
            raise PackedError(f"invalid listpack entry encoding 0x{enc:02x}", pos)
        if value is None:
            if pos + size > stop:
                raise PackedError("listpack entry runs past the end of the listpack", start)
            value = blob[pos:pos + size] if enc < 0xF1 else _int_text(blob, pos, size)
            pos += size
        back = _backlen(pos - start)
        if blob[pos:pos + len(back)] != back or pos + len(back) > stop:
            raise PackedError("listpack entry has a wrong back-length", pos)
        pos += len(back)
        entries.append(value)
    if count not in (_UNKNOWN_COUNT, len(entries)):
        raise PackedError(f"listpack header says {count} entries, found {len(entries)}", 4)
    return entries


def zipmap_entries(blob: bytes) -> list[bytes]:
    """Decode a zipmap into its entries: field, value, field, value, ..."""
    size = len(blob)
    stop = size - 1
    if size < 2:
        raise PackedError(f"zipmap of {size} bytes is shorter than its header", 0)
    if blob[stop] != 0xFF:
        raise PackedError("zipmap does not end with 0xFF", stop)
    entries: list[bytes] = []
    pos = 1
    while blob[pos] != 0xFF:
        start = pos
        for part in ("field", "value"):
            first = blob[pos] if pos < stop else 0xFF
            if first < _ZM_BIGLEN:
                length, pos = first, pos + 1
            elif first == _ZM_BIGLEN and pos + 5 <= stop:
                length, pos = _LE32.unpack_from(blob, pos + 1)[0], pos + 5
            elif first == 0xFF and pos < stop:
                raise PackedError(f"invalid zipmap {part} length byte 0xff", pos)
            else:
                raise PackedError(f"truncated zipmap {part}", start)
            free = 0
            if part == "value":
                if pos >= stop:
                    raise PackedError("truncated zipmap value", start)
                free, pos = blob[pos], pos + 1
            if pos + length + free > stop:
                raise PackedError(f"zipmap {part} runs past the end of the zipmap", start)
            entries.append(blob[pos:pos + length])
            pos += length + free
    if pos != stop:
        raise PackedError(f"zipmap ends at byte {pos}, {stop - pos} bytes before the end "
                          "of its blob", pos)
    if not entries:
        raise PackedError("empty zipmap", 0)
    if blob[0] != _ZM_BIGLEN and blob[0] != len(entries) // 2:
        raise PackedError(f"zipmap header says {blob[0]} pairs, found {len(entries) // 2}", 0)
    return entries
