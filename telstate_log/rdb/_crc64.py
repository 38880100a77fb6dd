"""CRC-64 as used by Redis for RDB files and DUMP payloads.

Theory of operation
-------------------
Redis protects RDB files (the 8 bytes after the EOF opcode) and DUMP payloads
(the last 8 bytes) with the "Jones" CRC-64 variant:

* polynomial 0xad93d23594c935a9 (written with the implicit top bit as
  ``0x1ad93d23594c935a9`` for crcmod),
* reflected input and output,
* initial value 0 and no final XOR,
* stored little-endian.

Check value: ``crc64(b"123456789") == 0xe9c6d914c4b8d9ca``.

Because there is no final XOR the CRC can be carried from one chunk to the
next: ``crc64(b, crc64(a)) == crc64(a + b)``.  The writer uses that to checksum
a file while streaming it, and the reader to checksum an mmap without copying.
The table-driven C implementation comes from ``crcmod`` (the ``crcmod-plus``
distribution); this module only gives it a typed face.
"""

from __future__ import annotations

import struct

import crcmod

__all__ = ["CRC64_CHECK", "Crc64", "crc64"]

#: crc64(b"123456789") for this variant (the usual catalogue check value).
CRC64_CHECK = 0xE9C6D914C4B8D9CA

_crc64_jones = crcmod.mkCrcFun(0x1AD93D23594C935A9, initCrc=0, rev=True, xorOut=0)
_LE64 = struct.Struct("<Q")


def crc64(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """Return the CRC-64/Jones of `data`, continuing from a previous `crc`.

    `crc` is the value returned for the preceding bytes (0 to start afresh),
    so a long stream can be checksummed chunk by chunk.  Any object exposing
    the buffer protocol (bytes, bytearray, memoryview, mmap) is accepted.
    """
    return int(_crc64_jones(data, crc))


class Crc64:
    """Incremental CRC-64/Jones hasher (the hashlib-style face of :func:`crc64`).

    >>> h = Crc64(); h.update(b"1234"); h.update(b"56789")
    >>> hex(h.value)
    '0xe9c6d914c4b8d9ca'
    """

    __slots__ = ("_crc",)

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        self._crc = crc64(data) if data else 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed more bytes."""
        self._crc = int(_crc64_jones(data, self._crc))

    @property
    def value(self) -> int:
        """The CRC of everything fed so far, as an integer."""
        return self._crc

    def digest(self) -> bytes:
        """The CRC as 8 little-endian bytes, as stored in RDB files and DUMP payloads."""
        return _LE64.pack(self._crc)

    def copy(self) -> Crc64:
        """An independent hasher with the same state."""
        other = Crc64()
        other._crc = self._crc
        return other
