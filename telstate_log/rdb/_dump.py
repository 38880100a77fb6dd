"""Redis DUMP payloads for telescope-state values (what DUMP returns and RESTORE takes).

Theory of operation
-------------------
A DUMP payload is one RDB value record without its key::

    <type byte> <value as in an RDB file> <RDB version: u16 LE> <CRC-64: u64 LE>

where the CRC-64 (Redis' Jones variant, :mod:`._crc64`) covers everything
before it.  RESTORE refuses a payload whose CRC does not match (a zero CRC
included) or whose version is newer than the server's own (10 for Redis
7.0).

Encoding uses the same plain types as :mod:`._rdb_writer` -- string (0),
zset with text score ``"0"`` (3) and hash (4) -- and the same version, 9:
redis-server rebuilds these element by element on RESTORE, and every Redis
since 5.0 accepts them.  Decoding accepts whatever the reader accepts, so it
takes redis-server 7's own DUMP output (listpacks, integer-encoded and
LZF-compressed strings, binary-score zsets) and katsdptelstate's (ziplists,
version 6).  katsdptelstate's ``MemoryBackend.dump`` leaves the CRC zero;
:func:`parse_dump` refuses that unless ``allow_zero_crc=True``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import cast

from ..core._errors import RdbParseError
from ..core._types import KeyType
from . import _format as fmt
from ._crc64 import Crc64, crc64
from ._reader import Value, decode_value
from ._writer import hash_body, zset_body

__all__ = ["DUMP_VERSION", "dump_hash", "dump_string", "dump_value", "dump_zset",
           "parse_dump"]

#: RDB version written in our DUMP footers.
DUMP_VERSION = fmt.WRITE_VERSION

_FOOTER_VERSION = struct.Struct("<H").pack(DUMP_VERSION)
_LE16 = struct.Struct("<H")
_LE64 = struct.Struct("<Q")
_WHAT = "DUMP payload"


def _seal(parts: list[bytes]) -> bytes:
    """Append the version and the CRC-64 to the type byte and body in `parts`."""
    parts.append(_FOOTER_VERSION)
    body = b"".join(parts)
    return body + Crc64(body).digest()


def dump_string(value: bytes) -> bytes:
    """DUMP payload of an immutable key's value (Redis string)."""
    return _seal([bytes((fmt.TYPE_STRING,)), fmt.encode_string(value)])


def dump_zset(members: Sequence[bytes]) -> bytes:
    """DUMP payload of a mutable key: packed members, strictly increasing, non-empty."""
    problem = fmt.member_problem(members)
    if problem is not None:
        raise ValueError(f"cannot dump zset: {problem}")
    return _seal([bytes((fmt.TYPE_ZSET,)), *zset_body(members)])


def dump_hash(mapping: Mapping[bytes, bytes]) -> bytes:
    """DUMP payload of an indexed key: a non-empty mapping of sub-key to value."""
    if not mapping:
        raise ValueError("cannot dump an empty hash")
    return _seal([bytes((fmt.TYPE_HASH,)), *hash_body(mapping)])


def dump_value(kind: KeyType, value: Value) -> bytes:
    """DUMP payload of a value of any kind (as :func:`parse_dump` returns it)."""
    kind = KeyType.coerce(kind)
    if kind == KeyType.IMMUTABLE:
        return dump_string(cast(bytes, value))
    if kind == KeyType.MUTABLE:
        return dump_zset(cast("list[bytes]", value))
    return dump_hash(cast("dict[bytes, bytes]", value))


def parse_dump(payload: bytes | bytearray | memoryview, *,
               allow_zero_crc: bool = False) -> tuple[KeyType, Value]:
    """Decode a DUMP payload into ``(kind, value)``, checking footer and CRC strictly.

    `value` is as in :class:`~._rdb_reader.RdbEntry`: bytes, a sorted list of
    zset members, or a dict.  Raises :exc:`RdbParseError` (with the byte
    offset) if the payload is malformed, its CRC is wrong (or zero, unless
    `allow_zero_crc`), its version is unknown, or bytes are left over.
    """
    data = bytes(payload)
    size = len(data)
    if size < 11:
        raise RdbParseError(_WHAT, f"{size} bytes is too short for a DUMP payload", 0)
    version = _LE16.unpack_from(data, size - 10)[0]
    if not 1 <= version <= fmt.MAX_READ_VERSION:
        raise RdbParseError(_WHAT, f"unsupported RDB version {version}", size - 10)
    stored = _LE64.unpack_from(data, size - 8)[0]
    if not (stored == 0 and allow_zero_crc):
        actual = crc64(memoryview(data)[:size - 8])
        if stored != actual:
            raise RdbParseError(_WHAT, f"checksum mismatch: payload says 0x{stored:016x}, "
                                f"data gives 0x{actual:016x}", size - 8)
    kind, value, end = decode_value(data, 1, size - 10, data[0], filename=_WHAT)
    if end != size - 10:
        raise RdbParseError(_WHAT, f"{size - 10 - end} unexpected bytes after the value", end)
    return kind, value
