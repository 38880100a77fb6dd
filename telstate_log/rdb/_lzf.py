"""Bounded pure-Python LZF decompression (the compression Redis uses in RDB files).

Theory of operation
-------------------
Redis compresses long strings in RDB files and DUMP payloads with LZF (liblzf
by Marc Lehmann).  The stream is a sequence of tokens, each starting with a
control byte ``c``:

* ``c < 0x20``: a literal run; the next ``c + 1`` bytes are copied to the
  output.
* otherwise a back-reference: ``n = c >> 5`` (1..6, or 7 meaning "7 plus the
  next byte"), then one more byte ``lo``; copy ``n + 2`` bytes starting
  ``((c & 0x1f) << 8 | lo) + 1`` bytes back from the end of the output.  The
  source may overlap the bytes being produced (distance < length), which is
  how runs are encoded.

Redis stores the uncompressed length beside the compressed bytes, so the
decompressor knows exactly how much output to expect.  Input is untrusted, so
every token is checked before it is applied: literal runs must lie inside the
input, back-references must start inside the output, and the output may never
grow past `expected_length`.  A token yields at most 264 bytes from 3 input
bytes, so an `expected_length` above ``MAX_RATIO * len(data)`` is refused
before anything is allocated.

Work is done a token at a time with slice copies; an overlapping reference is
expanded by repeating its period, never byte by byte.
"""

from __future__ import annotations

__all__ = ["MAX_RATIO", "LzfError", "lzf_decompress"]

#: The largest possible ratio of output to input bytes in an LZF stream
#: (a 3-byte back-reference copies 264 bytes).
MAX_RATIO = 88


class LzfError(ValueError):
    """An LZF stream is malformed or does not decompress to the expected length.

    `offset` is the position in the compressed input where the problem lies.
    """

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"{reason} (at byte {offset} of the compressed data)")
        self.reason = reason
        self.offset = offset


def lzf_decompress(data: bytes | bytearray | memoryview, expected_length: int) -> bytes:
    """Decompress an LZF stream that must expand to exactly `expected_length` bytes.

    Raises :exc:`LzfError` if the stream is truncated, refers outside the
    output, would produce more than `expected_length` bytes, or ends short.
    Memory use never exceeds about `expected_length` (itself capped by
    :data:`MAX_RATIO` times the input size).
    """
    src = data if isinstance(data, bytes) else bytes(data)
    size = len(src)
    if expected_length < 0 or expected_length > MAX_RATIO * size:
        raise LzfError(f"uncompressed length {expected_length} is impossible "
                       f"for {size} compressed bytes", 0)
    out = bytearray()
    produced = 0
    ip = 0
    while ip < size:
        token = ip
        ctrl = src[ip]
        ip += 1
        if ctrl < 0x20:
            run = ctrl + 1
            if ip + run > size:
                raise LzfError("literal run goes past the end of the input", token)
            if produced + run > expected_length:
                raise LzfError("output would exceed the expected length", token)
            out += src[ip:ip + run]
            ip += run
            produced += run
            continue
        length = ctrl >> 5
        if length == 7:
            if ip >= size:
                raise LzfError("truncated back-reference", token)
            length += src[ip]
            ip += 1
        if ip >= size:
            raise LzfError("truncated back-reference", token)
        distance = ((ctrl & 0x1F) << 8 | src[ip]) + 1
        ip += 1
        length += 2
        start = produced - distance
        if start < 0:
            raise LzfError("back-reference before the start of the output", token)
        if produced + length > expected_length:
            raise LzfError("output would exceed the expected length", token)
        if distance >= length:
            out += out[start:start + length]
        else:
            period = out[start:]
            repeats = -(-length // distance)
            out += (period * repeats)[:length]
        produced += length
    if produced != expected_length:
        raise LzfError(f"output is {produced} bytes, expected {expected_length}", size)
    return bytes(out)
