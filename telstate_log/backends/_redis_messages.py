"""The ``update/<key>`` pub/sub wire format shared with katsdptelstate.

Theory of operation
-------------------
Every successful write publishes one message on ``update/<key>``.  The
bytes are katsdptelstate 1.0.0's, so waiters of either library wake on
writes of the other:

* immutable key: the encoded value;
* mutable key: the zset member, i.e. 8-byte big-endian timestamp + value;
* indexed key: ``b"\\x03"`` + the sub-key's length in ASCII decimal +
  ``b"\\n"`` + sub-key + value.

The first two carry no type byte (katsdptelstate's older form, still what
its scripts send); readers accept an optional leading byte 1, 2 or 3 (the
:class:`~telstate_log.KeyType` value) on any message.  That byte is
ambiguous in theory -- an untyped value or timestamp could start with it --
but encoded values start with 0xFF or a pickle opcode, and a timestamp
would have to be a denormal near 0.

Decoding is strict: a body that is not exactly one of the forms above
becomes a plain :class:`~telstate_log.backends.KeyUpdateBase` ("check
again"), never an exception, so a stray or hostile publisher can cost a
waiter one re-read but cannot crash it or make it act on garbage.  This
module is pure (no I/O); looking up the type of an untyped message is the
job of :func:`telstate_log.backends._redis_common.exchange_update`.
"""

from __future__ import annotations

from typing import Any

from ..core._types import (
    ImmutableKeyUpdate,
    IndexedKeyUpdate,
    KeyType,
    KeyUpdateBase,
    MutableKeyUpdate,
)
from ..rdb import _format as fmt

__all__ = [
    "CHANNEL_PREFIX",
    "channel_key",
    "decode_update",
    "immutable_message",
    "indexed_message",
    "mutable_message",
    "split_type",
    "update_channel",
]

CHANNEL_PREFIX = b"update/"
_TYPE_BYTES = {kind.value: kind for kind in KeyType}
#: Longest sub-key length accepted, in decimal digits (10**10 bytes is beyond any Redis).
_MAX_LENGTH_DIGITS = 10


def update_channel(key: bytes) -> bytes:
    """The channel on which writes to `key` are announced."""
    return CHANNEL_PREFIX + key


def channel_key(channel: Any) -> bytes | None:
    """The key of an update channel, or None for any other channel."""
    if isinstance(channel, bytes) and channel.startswith(CHANNEL_PREFIX):
        return channel[len(CHANNEL_PREFIX):]
    return None


def immutable_message(value: bytes) -> bytes:
    """Message announcing that an immutable key was set: its value, untyped."""
    return value


def mutable_message(value: bytes, timestamp: float) -> bytes:
    """Message announcing a new sample: the packed zset member, untyped."""
    return fmt.pack_member(timestamp, value)


def indexed_message(sub_key: bytes, value: bytes) -> bytes:
    """Message announcing a new sub-key (always typed)."""
    return b"\x03%d\n%s%s" % (len(sub_key), sub_key, value)


def split_type(data: bytes) -> tuple[KeyType | None, bytes]:
    """Split off a leading type byte: ``(kind, body)``, or ``(None, data)`` if untyped."""
    kind = _TYPE_BYTES.get(data[0]) if data else None
    return (kind, data[1:]) if kind is not None else (None, data)


def decode_update(key: bytes, kind: KeyType, body: bytes) -> KeyUpdateBase:
    """Decode the body of a message for a key of `kind`.

    Returns the typed update, or a plain :class:`KeyUpdateBase` if the body
    is malformed: a sample shorter than a timestamp plus one byte of value
    or with a negative or non-finite timestamp; an indexed body without a
    plain decimal length and newline, or shorter than that length says.
    """
    if kind == KeyType.IMMUTABLE:
        return ImmutableKeyUpdate(key, body)
    if kind == KeyType.MUTABLE:
        if len(body) < 9 or body[:8] >= fmt.TS_LIMIT:
            return KeyUpdateBase()
        value, timestamp = fmt.split_member(body)
        return MutableKeyUpdate(key, value, timestamp)
    newline = body.find(b"\n", 0, _MAX_LENGTH_DIGITS + 1)
    digits = body[:newline]
    if newline <= 0 or not digits.isdigit():   # bytes.isdigit(): ASCII 0-9 only, no sign
        return KeyUpdateBase()
    start = newline + 1
    end = start + int(digits)
    if end > len(body):
        return KeyUpdateBase()
    return IndexedKeyUpdate(key, body[start:end], body[end:])
