"""Strict streaming reader for Redis RDB files holding telescope state.

Theory of operation
-------------------
Accepted is what katsdptelstate (RDB version 6) and redis-server up to 7.4
(versions 10-12) write for telescope state; anything else is refused:

* value types: string (0) -> immutable; hash (4, zipmap 9, ziplist 13,
  listpack 16) -> indexed; zset (3 text scores, 5 binary scores, ziplist 12,
  listpack 17) -> mutable, with all scores 0 and members checked by
  :func:`._rdb_format.member_problem`.  Every other type -- lists (1, 10, 14,
  18), sets (2, 11, 20), streams, modules, hashes with field expiry -- is an
  :exc:`RdbUnsupportedTypeError` naming the key, its type and the offset of
  its record.  Any string (including the blob holding a zipmap, ziplist or
  listpack) may be plain, integer-encoded or LZF-compressed.
* opcodes: AUX (kept in :attr:`RdbReader.aux`); SELECTDB; RESIZEDB,
  SLOT_INFO and FUNCTION2 (skipped); expiry (returned as
  :attr:`RdbEntry.expires`, whether or not it has passed: the caller decides),
  IDLE and FREQ (checked, ignored) before a key; MODULE_AUX and the
  pre-release FUNCTION are refused.  EOF must be followed by exactly the
  CRC-64 (version >= 5).  A non-zero CRC is verified over the whole file
  before the first entry is returned; zero means "not computed", as for Redis.
* an append-only file written with ``aof-use-rdb-preamble`` (an RDB file
  followed by AOF commands, ``*<n>\\r\\n$...``) fails its checksum (before
  version 5: has bytes after EOF); before reporting that, the reader looks
  for the end of an RDB preamble (EOF opcode, a CRC-64 that matches the bytes
  before it -- or is zero, and all the rest parses as AOF commands -- then a
  RESP array) and raises :exc:`RdbAofPreambleError` naming where the AOF
  commands start.

Everything is untrusted: lengths are checked against the bytes left before
anything is sliced or allocated, counts against the smallest possible record
size, LZF output is bounded, ziplist/listpack totals, back-links and
terminators must be exact, and keys, zset members and hash fields must be
unique.  Every failure is an :exc:`RdbParseError` carrying the byte offset.

Small zsets are usually a ziplist or listpack of equal-width members with
integer-0 scores (what katsdptelstate and Redis write for a short float
sensor); :func:`._rdb_format.uniform_zset_members` recognises such a blob
whole, and anything else -- every malformed blob included -- goes through
the entry-by-entry decoders, which report the problem.  Such members are
usually already in order: :func:`._rdb_format.valid_in_order` checks them
in one pass, and only if that fails are they sorted and
:func:`._rdb_format.member_problem` names what is wrong.

A path is memory-mapped, a file object read whole, bytes parsed in place.
Values are copied out as ``bytes``; zset members are returned sorted (Redis
stores skiplist zsets in descending order).  Iterating the reader gives
:class:`RdbEntry` items; :meth:`RdbReader.blocks` gives the same fields as
plain tuples, with each zset taken by that fast path handed over as its
members joined in one blob (what an import keeps) -- the same checks, the
same errors, without a list of members or a named tuple per key.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import struct
from collections.abc import Callable, Generator, Iterator
from typing import IO, Any, NoReturn, TypeAlias, TypeVar, cast

from ..core._errors import RdbAofPreambleError, RdbParseError, RdbUnsupportedTypeError
from ..core._types import KeyType
from . import _format as fmt
from ._crc64 import crc64
from ._format import RdbEntry, Value
from ._lzf import MAX_RATIO, LzfError, lzf_decompress

__all__ = ["Block", "RdbEntry", "RdbReader", "Source", "Value", "decode_value", "iter_rdb"]

Source: TypeAlias = "str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]"
_Buffer: TypeAlias = "bytes | mmap.mmap"
_T = TypeVar("_T")
#: What :meth:`RdbReader.blocks` makes of a zset of equal-length members:
#: ``block(members joined in increasing order, member width, number of members)``.
Block: TypeAlias = "Callable[[bytes, int, int], _T]"

_LE64 = struct.Struct("<Q")
_LE_I64 = struct.Struct("<q")
_LE_I32 = struct.Struct("<i")
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")
_LE_DOUBLE = struct.Struct("<d")
_INT_SIZES = (1, 2, 4)          # string encodings 0xC0, 0xC1, 0xC2
_ZERO_SCORE = b"\x00" * 8
_SKIPPED_LENGTHS = {fmt.OP_RESIZEDB: ("database size hint", "expires size hint"),
                    fmt.OP_SLOT_INFO: ("slot id", "slot size", "slot expires size")}
# Errors that bounds checks should make impossible; turned into RdbParseError.
_BACKSTOP = (IndexError, ValueError, struct.error, OverflowError)


class _Cursor:
    """Bounds-checked position in a buffer; every read stays below `end`."""

    __slots__ = ("buf", "end", "filename", "pos")

    def __init__(self, buf: _Buffer, pos: int, end: int, filename: Any) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end
        self.filename = filename

    def fail(self, reason: str, offset: int | None = None) -> NoReturn:
        raise RdbParseError(self.filename, reason, self.pos if offset is None else offset)

    def take(self, size: int, what: str) -> int:
        """Advance past `size` bytes, returning where they start."""
        start = self.pos
        if size > self.end - start:
            self.fail(f"{what} ({size} bytes) runs past the end of the data", start)
        self.pos = start + size
        return start

    def byte(self, what: str) -> int:
        return self.buf[self.take(1, what)]

    def length(self, what: str = "length") -> int:
        """Read a plain length (no string encodings allowed)."""
        start = self.take(1, what)
        first = self.buf[start]
        kind = first >> 6
        if kind == 0:
            return first
        if kind == 1:
            return (first & 0x3F) << 8 | self.buf[self.take(1, what)]
        if first == 0x80:
            return int(_BE32.unpack_from(self.buf, self.take(4, what))[0])
        if first == 0x81:
            return int(_BE64.unpack_from(self.buf, self.take(8, what))[0])
        self.fail(f"invalid {what} encoding byte 0x{first:02x}", start)

    def raw_string(self) -> tuple[bytes, int]:
        """Read an RDB string: ``(data, offset of data in the buffer or -1 if decoded)``."""
        start = self.pos
        buf = self.buf
        if start + 1 < self.end:                  # fast path: plain, length below 2**14
            first = buf[start]
            if first < 0x40:
                at, stop = start + 1, start + 1 + first
            elif first < 0x80:
                at = start + 2
                stop = at + ((first & 0x3F) << 8 | buf[start + 1])
            else:
                stop = -1
            if 0 <= stop <= self.end:
                self.pos = stop
                return buf[at:stop], at
        if start < self.end and self.buf[start] >= 0xC0:
            self.pos += 1
            enc = self.buf[start] & 0x3F
            if enc < 3:
                at = self.take(_INT_SIZES[enc], "integer-encoded string")
                raw = self.buf[at:self.pos]
                return b"%d" % int.from_bytes(raw, "little", signed=True), -1
            if enc == 3:
                return self._lzf_string(start), -1
            self.fail(f"unknown string encoding 0x{self.buf[start]:02x}", start)
        size = self.length("string length")
        at = self.take(size, "string")
        return self.buf[at:self.pos], at

    def string(self) -> bytes:
        return self.raw_string()[0]

    def _lzf_string(self, start: int) -> bytes:
        clen = self.length("compressed length")
        ulen = self.length("uncompressed length")
        at = self.take(clen, "compressed string")
        if clen == 0 or ulen == 0 or ulen > MAX_RATIO * clen:
            self.fail(f"impossible LZF lengths (compressed {clen}, uncompressed {ulen})", start)
        try:
            return lzf_decompress(self.buf[at:self.pos], ulen)
        except LzfError as exc:
            self.fail(f"bad LZF data: {exc.reason}", at + exc.offset)

    def count(self, what: str, min_record: int) -> int:
        """Read an element count, refusing zero and counts the bytes left cannot hold."""
        start = self.pos
        n = self.length(f"{what} size")
        if n == 0:
            self.fail(f"empty {what}", start)
        if n > (self.end - self.pos) // min_record:
            self.fail(f"{what} of {n} elements cannot fit in the bytes left", start)
        return n


def _read_zset(cur: _Cursor, binary: bool) -> list[bytes]:
    """Members of a type 3 (text scores) or type 5 (binary scores) zset."""
    n = cur.count("zset", 9 if binary else 2)
    fast = fmt.uniform_records(cur.buf, cur.pos, cur.end, n, _ZERO_SCORE if binary else b"\x010")
    if fast is not None:
        cur.pos = fast[1]
        return fast[0]
    buf, end = cur.buf, cur.end
    members: list[bytes] = []
    append = members.append
    pos = cur.pos
    for _ in range(n):
        first = buf[pos] if pos < end else 0xFF
        stop = pos + 1 + first
        if first < 0x40 and stop <= end:
            append(buf[pos + 1:stop])
        else:
            cur.pos = pos
            append(cur.string())
            stop = cur.pos
        if binary:
            pos = stop + 8
            if pos > end:
                cur.fail("zset score runs past the end of the data", stop)
            if buf[stop:pos] != _ZERO_SCORE and _LE_DOUBLE.unpack_from(buf, stop)[0] != 0.0:
                cur.fail("zset score is not 0", stop)
        elif stop + 2 <= end and buf[stop] == 1 and buf[stop + 1] == 0x30:
            pos = stop + 2
        else:
            cur.pos = stop
            size = cur.byte("zset score")                  # 253-255: NaN, +inf, -inf
            text = buf[cur.take(size, "zset score"):cur.pos] if size < 253 else b""
            if not fmt.is_zero_score(text):
                cur.fail("zset score is not 0", stop)
            pos = cur.pos
    cur.pos = pos
    return members


def _read_hash(cur: _Cursor) -> dict[bytes, bytes]:
    n = cur.count("hash", 2)
    start = cur.pos
    string = cur.string
    result = {string(): string() for _ in range(n)}
    if len(result) != n:
        cur.fail("duplicate hash field", start)
    return result


def _read_packed(cur: _Cursor, rdb_type: int) -> list[bytes]:
    """Entries of a ziplist or listpack blob, with errors mapped to file offsets."""
    start = cur.pos
    blob, at = cur.raw_string()
    return _packed_entries(cur, rdb_type, start, blob, at)


_PACKED = {fmt.TYPE_ZSET_ZIPLIST: ("ziplist", fmt.ziplist_entries),
           fmt.TYPE_HASH_ZIPLIST: ("ziplist", fmt.ziplist_entries),
           fmt.TYPE_ZSET_LISTPACK: ("listpack", fmt.listpack_entries),
           fmt.TYPE_HASH_LISTPACK: ("listpack", fmt.listpack_entries),
           fmt.TYPE_HASH_ZIPMAP: ("zipmap", fmt.zipmap_entries)}
_PACKED_HASHES = (fmt.TYPE_HASH_ZIPLIST, fmt.TYPE_HASH_LISTPACK, fmt.TYPE_HASH_ZIPMAP)


def _packed_entries(cur: _Cursor, rdb_type: int, start: int, blob: bytes,
                    at: int) -> list[bytes]:
    """Entries of the packed `blob` read at `start` (its data at `at`, -1 if decoded)."""
    name, decode = _PACKED[rdb_type]
    try:
        entries = decode(blob)
    except fmt.PackedError as exc:
        if at >= 0:
            cur.fail(exc.reason, at + exc.offset)
        cur.fail(f"{exc.reason} (at byte {exc.offset} of the decompressed data)", start)
    if not entries or len(entries) % 2:
        cur.fail(f"{name} holds {len(entries)} entries, expected a non-zero even number", start)
    return entries


def _decode_value(cur: _Cursor, rdb_type: int, key: bytes | None, record: int,
                  block: Block[_T] | None = None) -> tuple[KeyType, Value | _T]:
    """Decode one value of `rdb_type` at the cursor (the record starts at `record`).

    With `block`, a zset read whole by the packed fast path is ``block(members
    joined, width, count)`` instead of a list of members.
    """
    start = cur.pos
    members: list[bytes]
    if rdb_type == fmt.TYPE_ZSET_ZIPLIST or rdb_type == fmt.TYPE_ZSET_LISTPACK:
        blob, at = cur.raw_string()
        uniform = fmt.uniform_zset_members(blob, rdb_type == fmt.TYPE_ZSET_ZIPLIST)
        if uniform is not None:
            if fmt.valid_in_order(uniform):       # the usual case: nothing to sort
                if block is not None:
                    return KeyType.MUTABLE, block(b"".join(uniform), len(uniform[0]),
                                                  len(uniform))
                return KeyType.MUTABLE, list(uniform)
            members = list(uniform)
        else:
            entries = _packed_entries(cur, rdb_type, start, blob, at)
            scores = entries[1::2]
            if scores.count(b"0") != len(scores) and not all(map(fmt.is_zero_score, scores)):
                cur.fail("zset score is not 0", start)
            members = entries[0::2]
    elif rdb_type == fmt.TYPE_STRING:
        return KeyType.IMMUTABLE, cur.string()
    elif rdb_type == fmt.TYPE_HASH:
        return KeyType.INDEXED, _read_hash(cur)
    elif rdb_type in (fmt.TYPE_ZSET, fmt.TYPE_ZSET_2):
        members = _read_zset(cur, rdb_type == fmt.TYPE_ZSET_2)
    elif rdb_type in _PACKED_HASHES:
        entries = _read_packed(cur, rdb_type)
        result = dict(zip(entries[0::2], entries[1::2], strict=True))
        if len(result) * 2 != len(entries):
            cur.fail("duplicate hash field", start)
        return KeyType.INDEXED, result
    else:
        name = fmt.TYPE_NAMES.get(rdb_type, "unknown")
        what = f" of key {key!r}" if key is not None else ""
        raise RdbUnsupportedTypeError(
            cur.filename, f"value{what} has type {rdb_type} ({name}), which telescope state "
            "cannot hold (it keeps only strings, hashes and sorted sets)", record, key, rdb_type)
    members.sort()
    problem = fmt.member_problem(members)
    if problem is not None:
        cur.fail(problem, start)
    return KeyType.MUTABLE, members


def decode_value(buf: bytes, pos: int, end: int, rdb_type: int, *,
                 filename: Any = None) -> tuple[KeyType, Value, int]:
    """Decode the value of `rdb_type` stored in ``buf[pos:end]`` (the DUMP codec's entry).

    Returns ``(kind, value, position after the value)``; raises
    :exc:`RdbParseError` with offsets into `buf`.
    """
    cur = _Cursor(buf, pos, end, filename)
    try:
        kind, value = _decode_value(cur, rdb_type, None, pos)
    except _BACKSTOP as exc:
        raise RdbParseError(filename, f"malformed data ({exc})", cur.pos) from exc
    return kind, value, cur.pos


def _open_buffer(source: Source) -> tuple[_Buffer, Any]:
    """Return (buffer, default filename) for any accepted source."""
    if isinstance(source, bytes):
        return source, None
    if isinstance(source, (bytearray, memoryview)):
        return bytes(source), None
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                return b"", os.fspath(source)
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), os.fspath(source)
    data = source.read()
    if not isinstance(data, bytes):
        raise TypeError("RDB file objects must be opened in binary mode")
    return data, getattr(source, "name", None)


#: The end of an RDB preamble: EOF opcode and CRC-64, then an AOF command (a RESP array).
_PREAMBLE_END = re.compile(rb"\xff[\x00-\xff]{8}(?=\*[1-9][0-9]{0,9}\r\n\$)")
_PREAMBLE_CANDIDATES = 16   # CRCs computed at most while looking for a preamble's end
# AOF commands: arrays of bulk strings, and what a file cut short may end with.
_RESP_ARRAY = re.compile(rb"\*([1-9][0-9]{0,9})\r\n")
_RESP_BULK = re.compile(rb"\$(0|[1-9][0-9]{0,11})\r\n")
_RESP_CUT = re.compile(rb"[*$][0-9]*\r?")


def _is_aof_tail(buf: _Buffer, pos: int) -> bool:
    """Whether ``buf[pos:]`` is AOF commands (the last one possibly cut short)."""
    size = len(buf)
    while pos < size:
        array = _RESP_ARRAY.match(buf, pos)
        if array is None:
            return _RESP_CUT.fullmatch(buf, pos) is not None
        pos = array.end()
        for _ in range(int(array[1])):
            bulk = _RESP_BULK.match(buf, pos)
            if bulk is None:
                return pos == size or _RESP_CUT.fullmatch(buf, pos) is not None
            end = bulk.end() + int(bulk[1])
            if end + 2 > size:
                return b"\r\n".startswith(buf[end:size])
            if buf[end:end + 2] != b"\r\n":
                return False
            pos = end + 2
    return True


def _crc_of(buf: _Buffer, size: int) -> int:
    """CRC-64 of ``buf[:size]``, without copying."""
    with memoryview(buf) as view, view[:size] as body:
        return crc64(body)


def _aof_preamble_end(buf: _Buffer) -> int | None:
    """Where the AOF commands start if `buf` is an RDB preamble followed by them, else None.

    A candidate is an EOF opcode and 8 bytes followed by a RESP array header;
    it counts if those 8 bytes are the CRC-64 of everything before them, or
    zero (the preamble's "no checksum") and all the rest is AOF commands.
    Only the first few candidates are checked: a value could hold such bytes.
    """
    for n, match in enumerate(_PREAMBLE_END.finditer(buf, 9)):
        if n == _PREAMBLE_CANDIDATES:
            break
        crc_at = match.start() + 1
        stored = _LE64.unpack_from(buf, crc_at)[0]
        if stored == _crc_of(buf, crc_at) or (stored == 0 and _is_aof_tail(buf, match.end())):
            return match.end()
    return None


def _aof_error(filename: Any, offset: int) -> RdbAofPreambleError:
    return RdbAofPreambleError(
        filename, f"this is a Redis append-only file, not a plain RDB file: an RDB preamble "
        f"followed by AOF commands from byte {offset} on (written with aof-use-rdb-preamble); "
        "import an RDB snapshot instead (SAVE or BGSAVE, or redis-cli --rdb FILE)", offset)


class RdbReader:
    """An RDB file opened for reading; iterate over it once for :class:`RdbEntry` items.

    The header is checked and a non-zero CRC verified on construction.
    Attributes: `version` (RDB version), `aux` (AUX fields seen so far,
    usually all before the first key), `checksum_verified`.
    """

    def __init__(self, source: Source, *, filename: Any = None) -> None:
        buf, default_name = _open_buffer(source)
        self.filename = filename if filename is not None else default_name
        self._buf: _Buffer | None = buf
        self.aux: dict[bytes, bytes] = {}
        self._generator: Generator[Any, None, None] | None = None
        try:
            self.version, end, self.checksum_verified = self._check_header(buf)
        except BaseException:
            self.close()
            raise
        self._cursor = _Cursor(buf, 9, end, self.filename)

    def _check_header(self, buf: _Buffer) -> tuple[int, int, bool]:
        size = len(buf)
        if size < 9 or buf[:5] != fmt.MAGIC:
            raise RdbParseError(self.filename, "not an RDB file (no REDIS header)", 0)
        digits = buf[5:9]
        if not digits.isdigit() or not 1 <= int(digits) <= fmt.MAX_READ_VERSION:
            raise RdbParseError(self.filename, f"unsupported RDB version {digits!r}", 5)
        version = int(digits)
        if version < fmt.MIN_CHECKSUM_VERSION:
            return version, size, False
        if size < 18:
            raise RdbParseError(self.filename, "file too short for EOF and checksum", size)
        stored = _LE64.unpack_from(buf, size - 8)[0]
        if stored:
            actual = _crc_of(buf, size - 8)
            if actual != stored:
                aof = _aof_preamble_end(buf)
                if aof is not None:
                    raise _aof_error(self.filename, aof)
                raise RdbParseError(self.filename, f"checksum mismatch: file says "
                                    f"0x{stored:016x}, data gives 0x{actual:016x}", size - 8)
        return version, size - 8, bool(stored)

    def __iter__(self) -> Iterator[RdbEntry]:
        return cast("Iterator[RdbEntry]", self._start(None))

    def blocks(self, block: Block[_T]) -> Iterator[tuple[int, bytes, KeyType, Value | _T,
                                                        int | None]]:
        """Iterate (instead of ``iter(reader)``) over plain tuples of the fields of
        each :class:`RdbEntry`, where a zset of equal-length members read by the
        packed fast path is ``block(members joined in increasing order, width,
        count)`` (validated like any other): no list of members and no named
        tuple per key."""
        return self._start(block)

    def _start(self, block: Block[Any] | None) -> Generator[Any, None, None]:
        if self._generator is not None or self._buf is None:
            raise RuntimeError("an RdbReader can be iterated only once, before close()")
        self._generator = self._guarded(self._cursor, block)
        return self._generator

    def _guarded(self, cur: _Cursor, block: Block[Any] | None) -> Generator[Any, None, None]:
        try:
            yield from self._entries(cur, block)
        except _BACKSTOP as exc:
            # Backstop: every path is bounds-checked, but never leak a bare error.
            raise RdbParseError(self.filename, f"malformed data ({exc})", cur.pos) from exc

    def _entries(self, cur: _Cursor, block: Block[Any] | None) -> Iterator[Any]:
        db = 0
        seen: dict[int, set[bytes]] = {}
        keys = seen.setdefault(db, set())         # the keys of database `db` so far
        metadata_at = -1                          # offset of expiry/LRU data awaiting a key
        expires: int | None = None                # expiry time awaiting a key
        buf = cur.buf
        while True:
            at = cur.pos
            if at < cur.end:
                op = buf[at]
                cur.pos = at + 1
            else:
                op = cur.byte("opcode (file truncated before EOF?)")  # raises
            if op < fmt.OP_SLOT_INFO:
                size = buf[at + 1] if at + 1 < cur.end else 0xFF
                if size < 0x40 and at + 2 + size <= cur.end:   # a short plain key
                    key = buf[at + 2:at + 2 + size]
                    cur.pos = at + 2 + size
                else:
                    key = cur.raw_string()[0]
                kind, value = _decode_value(cur, op, key, at, block)
                if key in keys:
                    cur.fail(f"duplicate key {key!r} in database {db}", at)
                keys.add(key)
                metadata_at = -1
                entry = (db, key, kind, value, expires)
                yield entry if block is not None else RdbEntry._make(entry)
                expires = None
                continue
            if metadata_at >= 0 and op not in (fmt.OP_IDLE, fmt.OP_FREQ):
                cur.fail("expiry or LRU/LFU data not followed by a key", metadata_at)
            if op == fmt.OP_EOF:
                if cur.pos != cur.end:
                    aof = cur.pos + (8 if self.version >= fmt.MIN_CHECKSUM_VERSION else 0)
                    if _RESP_ARRAY.match(buf, aof) and _is_aof_tail(buf, aof):
                        raise _aof_error(self.filename, aof)
                    cur.fail(f"{cur.end - cur.pos} unexpected bytes after EOF", cur.pos)
                return
            if op == fmt.OP_SELECTDB:
                db = cur.length("database number")
                keys = seen.setdefault(db, set())
            elif op == fmt.OP_AUX:
                name = cur.string()
                self.aux[name] = cur.string()
            elif op in _SKIPPED_LENGTHS:
                for what in _SKIPPED_LENGTHS[op]:
                    cur.length(what)
            elif op == fmt.OP_EXPIRETIME_MS:
                expires = _LE_I64.unpack_from(buf, cur.take(8, "expiry time"))[0]
                metadata_at = at
            elif op == fmt.OP_EXPIRETIME:             # seconds, before RDB version 3
                expires = 1000 * _LE_I32.unpack_from(buf, cur.take(4, "expiry time"))[0]
                metadata_at = at
            elif op == fmt.OP_FREQ:
                cur.take(1, "LFU frequency")
                metadata_at = at
            elif op == fmt.OP_IDLE:
                cur.length("LRU idle time")
                metadata_at = at
            elif op == fmt.OP_FUNCTION2:
                cur.string()                      # Lua library source: not telescope state
            else:
                reason = {fmt.OP_MODULE_AUX: "module auxiliary data (opcode 0xF7)",
                          fmt.OP_FUNCTION: "pre-release function data (opcode 0xF6)"}
                cur.fail(f"{reason.get(op, f'unknown opcode 0x{op:02x}')} is not supported", at)

    def close(self) -> None:
        """Release the memory map (if any); safe to call more than once."""
        generator, self._generator = self._generator, None
        if generator is not None:
            generator.close()
        buf, self._buf = self._buf, None
        if isinstance(buf, mmap.mmap):
            with contextlib.suppress(BufferError):  # a caller still holds a view: GC ends it
                buf.close()

    def __enter__(self) -> RdbReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def iter_rdb(source: Source, *, filename: Any = None) -> Iterator[RdbEntry]:
    """Yield every key of an RDB file (path, binary file object or bytes) in file order."""
    with RdbReader(source, filename=filename) as reader:
        yield from reader
