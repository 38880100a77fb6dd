"""Pub/sub messages as the recorder sees them: classify, confirm, and keyspace flags.

Theory of operation
-------------------
The recorder (:mod:`._recorder`) receives two kinds of message:

* ``update/<key>`` from katsdptelstate's write scripts: the value of an
  immutable or a sensor sample *without* a type byte, or a typed indexed
  update (:mod:`telstate_log.backends._redis_messages`);
* keyspace events, when the server sends them: ``__keyevent@<db>__:<event>``
  carrying the key (or ``__keyspace@<db>__:<key>`` carrying the event).

Before recording, a batch of messages is *confirmed* in one pipelined round
trip: :func:`exchange_confirmation` queues, per message, the commands that show
whether Redis (in the recorded database) still holds what the message
announces -- ``TYPE``, ``GET`` and ``ZSCORE`` for an untyped message, so its
kind is known whatever it turns out to be; ``GET``/``ZSCORE``/``HGET`` for a
typed one; ``DUMP`` for a key that appeared by ``RESTORE``, ``RENAME``,
``COPY`` or ``MOVE``.  :func:`confirmed_update` then reads the replies.
Deletes need no confirmation: messages arrive in the order Redis executed
the commands, so a later re-creation comes as later messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import redis

from ..backends._redis_messages import channel_key, decode_update, split_type
from ..core._types import IndexedKeyUpdate, KeyType, MutableKeyUpdate

__all__ = [
    "APPEAR_EVENTS",
    "DELETE_EVENTS",
    "classify",
    "confirmed_update",
    "deletes_visible",
    "exchange_confirmation",
    "keyspace_flags",
]

#: Keyspace events after which the key no longer exists.
DELETE_EVENTS = frozenset({b"del", b"expired", b"evicted", b"rename_from", b"move_from"})
#: Keyspace events after which the key exists with content no message announced.
APPEAR_EVENTS = frozenset({b"restore", b"rename_to", b"copy_to", b"move_to"})


def keyspace_flags(client: redis.Redis) -> str | None:
    """The server's ``notify-keyspace-events`` flags (None if CONFIG is not allowed)."""
    try:
        reply = client.config_get("notify-keyspace-events")
    except redis.ResponseError:
        return None
    for value in dict(reply).values():
        return value.decode() if isinstance(value, bytes) else str(value)
    return None


def deletes_visible(flags: str | None) -> bool:
    """Whether these flags make Redis announce deletes of keys."""
    if not flags:
        return False
    return ("E" in flags or "K" in flags) and any(c in flags for c in "gA")


def classify(message: dict[str, Any]) -> tuple[str, bytes, bytes] | None:
    """``("update", key, data)`` or ``("event", name, key)`` for a pub/sub message."""
    if message.get("type") not in ("pmessage", "message"):
        return None
    channel, data = message.get("channel"), message.get("data")
    if not isinstance(channel, bytes) or not isinstance(data, bytes):
        return None
    key = channel_key(channel)
    if key is not None:
        return "update", key, data
    head, sep, tail = channel.partition(b"__:")
    if not sep:
        return None
    if head.startswith(b"__keyevent@"):
        return "event", tail, data
    if head.startswith(b"__keyspace@"):
        return "event", data, tail
    return None


def exchange_confirmation(pipe: Any, what: str, key: bytes,
                      data: bytes) -> tuple[str, bytes, Any, int] | None:
    """Queue the commands confirming one message: ``(kind, key, detail, replies)``."""
    if what == "event":
        name, key = key, data
        if name in DELETE_EVENTS:
            return "gone", key, None, 0
        if name in APPEAR_EVENTS:
            pipe.execute_command("DUMP", key)
            return "appear", key, None, 1
        return None
    kind, body = split_type(data)
    if kind is None:
        pipe.execute_command("TYPE", key)
        pipe.execute_command("GET", key)
        pipe.execute_command("ZSCORE", key, body)
        return "untyped", key, body, 3
    update = decode_update(key, kind, body)
    if kind == KeyType.IMMUTABLE:
        pipe.execute_command("GET", key)
        return "immutable", key, body, 1
    if isinstance(update, MutableKeyUpdate):
        pipe.execute_command("ZSCORE", key, body)
        return "mutable", key, update, 1
    if isinstance(update, IndexedKeyUpdate):
        pipe.execute_command("HGET", key, update.sub_key)
        return "indexed", key, update, 1
    return None


def confirmed_update(what: str, key: bytes, detail: Any,
               replies: Iterable[Any]) -> bytes | MutableKeyUpdate | IndexedKeyUpdate | None:
    """The update to record if Redis still holds it, else None."""
    replies = list(replies)
    if what == "untyped":
        type_name, value, score = replies
        if type_name in (b"string", "string"):
            return detail if value == detail else None
        if type_name in (b"zset", "zset") and score is not None \
                and not isinstance(score, Exception):
            update = decode_update(key, KeyType.MUTABLE, detail)
            return update if isinstance(update, MutableKeyUpdate) else None
        return None
    reply = replies[0]
    if isinstance(reply, Exception) or reply is None:
        return None
    if what == "immutable":
        return detail if reply == detail else None
    if what == "mutable":
        return detail  # type: ignore[no-any-return]
    return detail if reply == detail.value else None
