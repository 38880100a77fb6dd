"""The synchronous backend contract (katsdptelstate's byte-level Backend).

A backend stores bytes: keys, encoded values and encoded sub-keys.  Front
ends (:class:`telstate_log.TelescopeState`, or katsdptelstate's) handle
prefixes, encoding and waiting.  The methods and their semantics are exactly
katsdptelstate 1.0.0's, so a backend written against this class also works
under katsdptelstate's front end once registered with
``katsdptelstate.backend.Backend.register(cls)``.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterable
from typing import Any, BinaryIO, Union

from ..core._types import KeyType, KeyUpdateBase

__all__ = ["Backend", "GetResult", "PathType"]

PathType = Union[str, bytes, "os.PathLike[Any]"]
GetResult = tuple[Any, float | None]


class Backend(ABC):
    """Low-level interface for telescope state backends (sync)."""

    @abstractmethod
    def load_from_file(self, file: PathType | BinaryIO) -> int:
        """Load keys from a Redis RDB file; returns the number of keys loaded."""

    @abstractmethod
    def __contains__(self, key: bytes) -> bool:
        """Return if `key` is in the backend."""

    @abstractmethod
    def keys(self, filter: bytes) -> list[bytes]:
        """Return all keys matching `filter` (a Redis glob pattern)."""

    @abstractmethod
    def delete(self, key: bytes) -> None:
        """Delete a key (no-op if it does not exist)."""

    @abstractmethod
    def clear(self) -> None:
        """Remove all keys."""

    @abstractmethod
    def key_type(self, key: bytes) -> KeyType | None:
        """Type of `key`, or None if it does not exist."""

    @abstractmethod
    def set_immutable(self, key: bytes, value: bytes) -> bytes | None:
        """Set an immutable key; returns the existing value (unchanged) if already set.

        Raises :exc:`ImmutableKeyError` if the key exists and is not immutable.
        """

    @abstractmethod
    def get(self, key: bytes) -> GetResult:
        """Value and timestamp of a key.

        immutable: ``(value, None)``; mutable: ``(latest value, timestamp)``;
        indexed: ``(dict of encoded sub-key -> value, None)``; absent:
        ``(None, None)``.
        """

    @abstractmethod
    def add_mutable(self, key: bytes, value: bytes, timestamp: float) -> None:
        """Add a ``(value, timestamp)`` sample to a mutable key.

        Raises :exc:`ImmutableKeyError` if the key exists and is not mutable.
        """

    @abstractmethod
    def set_indexed(self, key: bytes, sub_key: bytes, value: bytes) -> bytes | None:
        """Set a sub-key; returns the existing value (unchanged) if already set.

        Raises :exc:`ImmutableKeyError` if the key exists and is not indexed.
        """

    @abstractmethod
    def get_indexed(self, key: bytes, sub_key: bytes) -> bytes | None:
        """Value of a sub-key; None if the key exists without that sub-key.

        Raises KeyError if the key does not exist and
        :exc:`ImmutableKeyError` if it is not indexed.
        """

    @abstractmethod
    def get_range(self, key: bytes, start_time: float, end_time: float,
                  include_previous: bool,
                  include_end: bool) -> list[tuple[bytes, float]] | None:
        """Samples of a mutable key in ``[start_time, end_time)`` (or ``]`` if
        `include_end`), plus the one before `start_time` if
        `include_previous`.  None if the key does not exist.

        Raises :exc:`ImmutableKeyError` if the key is not mutable.
        """

    @abstractmethod
    def dump(self, key: bytes) -> bytes | None:
        """The key in Redis DUMP format, or None if absent."""

    @abstractmethod
    def monitor_keys(self, keys: Iterable[bytes]) \
            -> Generator[KeyUpdateBase | None, float | None, None]:
        """Report changes to `keys`.

        A generator: the first ``send(None)`` returns None or a
        :class:`KeyUpdateBase` (then the caller checks its condition again).
        After that the caller sends a timeout and receives the next update, or
        None if there was none within the timeout.  Runs until closed.
        """
        yield None  # pragma: no cover
