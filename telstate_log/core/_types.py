"""Key types and key-update notifications shared by every backend.

Theory of operation
-------------------
These are plain values with no behaviour beyond comparison.  :class:`KeyType`
compares equal to katsdptelstate's ``KeyType`` member of the same name, so a
telstate_log backend driven by katsdptelstate's front end answers
``key_type(...) == katsdptelstate.KeyType.MUTABLE`` correctly.  Update
notifications carry the same attributes as katsdptelstate's, so either front
end can use them.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "ImmutableKeyUpdate",
    "IndexedKeyUpdate",
    "KeyType",
    "KeyUpdate",
    "KeyUpdateBase",
    "MutableKeyUpdate",
    "display_str",
]


class KeyType(enum.Enum):
    """Type of a key: immutable attribute, mutable sensor or indexed table."""

    IMMUTABLE = 1
    MUTABLE = 2
    INDEXED = 3

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        # katsdptelstate.KeyType is a distinct enum with the same members.
        if isinstance(other, enum.Enum) and type(other).__name__ == "KeyType":
            return bool(self.name == other.name and self.value == other.value)
        return False

    def __hash__(self) -> int:
        return hash(self._name_)

    @classmethod
    def coerce(cls, value: Any) -> KeyType:
        """Return our member for `value` (ours, katsdptelstate's, or its int value)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, enum.Enum):
            value = value.value
        return cls(value)


class KeyUpdateBase:
    """Tells a waiter to check its condition again; says nothing of what changed."""

    __slots__ = ()


class KeyUpdate(KeyUpdateBase):
    """Update notification for a specific key (base of the typed updates)."""

    __slots__ = ("key", "value")
    key_type: KeyType

    def __init__(self, key: bytes, value: bytes) -> None:
        self.key = key
        self.value = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.key!r}, value={self.value!r})"


class MutableKeyUpdate(KeyUpdate):
    """A sample was added to a mutable key."""

    __slots__ = ("timestamp",)
    key_type = KeyType.MUTABLE

    def __init__(self, key: bytes, value: bytes, timestamp: float) -> None:
        super().__init__(key, value)
        self.timestamp = timestamp


class ImmutableKeyUpdate(KeyUpdate):
    """An immutable key was set."""

    __slots__ = ()
    key_type = KeyType.IMMUTABLE


class IndexedKeyUpdate(KeyUpdate):
    """A sub-key of an indexed key was set."""

    __slots__ = ("sub_key",)
    key_type = KeyType.INDEXED

    def __init__(self, key: bytes, sub_key: bytes, value: bytes) -> None:
        super().__init__(key, value)
        self.sub_key = sub_key


def display_str(s: bytes) -> str:
    """Human-readable but exact rendering of a key."""
    try:
        return repr(s.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(s)
