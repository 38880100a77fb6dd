"""Event kinds and the recorded event: the one place they are declared.

Theory of operation
-------------------
Every change to the telescope state is an *event* of one of a closed set of
kinds.  The kinds are the record kinds of the segment format
(:mod:`telstate_log.core._log_format` holds the byte layout of each and
imports the numbers from here), the kinds the state passes to its
``commit`` hook (:mod:`telstate_log.core._state`), and, by their names in
:data:`KIND_NAMES`, the ``kind`` of an :class:`Event` read back from the
log -- what every history, audit and replay printer shows.

:class:`Kind` is the closed set; the module constants (``ADD``, ...) are its
values as plain ints, which the hot paths compare with numpy arrays of
kinds (an enum member there costs a conversion on every comparison).
Pure: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from ._types import KeyType

__all__ = [
    "ADD",
    "ADD_BATCH",
    "CLEAR",
    "DELETE",
    "EVENT_KINDS",
    "EVENT_NAMES",
    "IMMUTABLE",
    "INDEXED",
    "KEY",
    "KIND_KEY_TYPES",
    "KIND_NAMES",
    "META_KINDS",
    "SESSION",
    "Event",
    "EventName",
    "Kind",
]


class Kind(enum.IntEnum):
    """Record kinds: events (1-6, which carry a position) and meta records (0x40-)."""

    IMMUTABLE = 1  # set an immutable key ("SET" in the format description)
    ADD = 2  # one sensor sample
    INDEXED = 3  # set one sub-key of an indexed key ("SET_INDEXED")
    DELETE = 4  # delete a key
    CLEAR = 5  # delete every key
    ADD_BATCH = 6  # consecutive samples of one sensor, one event each
    KEY = 0x40  # meta: defines a key id
    SESSION = 0x41  # meta: defines a writer session


IMMUTABLE: Final = Kind.IMMUTABLE.value
ADD: Final = Kind.ADD.value
INDEXED: Final = Kind.INDEXED.value
DELETE: Final = Kind.DELETE.value
CLEAR: Final = Kind.CLEAR.value
ADD_BATCH: Final = Kind.ADD_BATCH.value
KEY: Final = Kind.KEY.value
SESSION: Final = Kind.SESSION.value

#: The name an event of each kind has in :attr:`Event.kind`.
EventName = Literal["set", "add", "set_indexed", "delete", "clear"]

#: Event kind -> its name; an ADD_BATCH frame reads back as ADD events.
KIND_NAMES: Final[Mapping[int, EventName]] = {
    IMMUTABLE: "set", ADD: "add", ADD_BATCH: "add", INDEXED: "set_indexed",
    DELETE: "delete", CLEAR: "clear",
}
#: Kinds that are events (have a position); the rest are meta records.
EVENT_KINDS: Final = frozenset(KIND_NAMES)
META_KINDS: Final = frozenset(k.value for k in Kind) - EVENT_KINDS
#: Every event name, in kind order.
EVENT_NAMES: Final[tuple[EventName, ...]] = tuple(dict.fromkeys(KIND_NAMES.values()))
#: The key type an event of each kind writes (kinds that write none are absent).
KIND_KEY_TYPES: Final[Mapping[int, KeyType]] = {
    IMMUTABLE: KeyType.IMMUTABLE, ADD: KeyType.MUTABLE, ADD_BATCH: KeyType.MUTABLE,
    INDEXED: KeyType.INDEXED,
}


@dataclass(frozen=True)
class Event:
    """One event as recorded in the log (values still encoded)."""

    position: int
    recorded: float  # wall-clock time the store learned it (system time)
    session: int
    kind: EventName
    key: bytes | None  # None for clear
    sub_key: bytes | None  # encoded sub-key (set_indexed)
    value: bytes | None  # encoded value (set, add, set_indexed)
    timestamp: float | None  # sample timestamp (add): valid time
