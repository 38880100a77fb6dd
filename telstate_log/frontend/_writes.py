"""The one-call writes of both front ends: ``add``, ``set`` and ``set_indexed``.

Theory of operation
-------------------
Most front-end operations are plans (:mod:`telstate_log.frontend._plan`):
generators that yield backend calls, run by ``run_sync`` or ``run_async``.
A write makes exactly one backend call, and it is the hot path (a telescope
writes a sample every few microseconds), so it skips the plan machinery
(a generator, its driver and an :class:`~._ops.Op` dispatch cost about as
much as the rest of the front end).  Each write is still written once, here,
in three steps that both front ends share:

1. **prepare** (:meth:`OneCallWrites.immutable_args`,
   :meth:`~OneCallWrites.indexed_args`): the full key (the view's first
   prefix) and the encoded value(s), returned as the backend method's
   arguments;
2. **call**: the sync front end calls the backend method
   (``set_immutable``, ``set_indexed``) on them and the async one awaits
   it -- the only step that differs.  A sample, the commonest write, is
   prepared and passed to ``add_mutable`` in one step,
   :meth:`OneCallWrites.add` (the timestamp is now if not given; negative,
   NaN or infinite timestamps raise InvalidTimestampError), which returns
   the backend's result for the async front end to await;
3. **translate**: an ImmutableKeyError from the backend (the key exists with
   another type) becomes katsdptelstate's message via :func:`type_clash`,
   and the old value a backend returns for an immutable or indexed key that
   is already set goes to :func:`check_unchanged` (equivalent: a no-op;
   different: ImmutableKeyError).
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..core._encoding import ENCODING_MSGPACK, encode_value
from ..core._errors import ImmutableKeyError
from ._plan import (
    NO_SUB_KEY,
    Key,
    check_immutable_change,
    check_sample_timestamp,
    display_str,
    ensure_binary,
)

__all__ = ["OneCallWrites", "check_unchanged", "type_clash"]

_time = time.time
_inf = math.inf


#: full keys a front end keeps (see OneCallWrites.full_key); the cache is emptied
#: when it holds this many, so a stream of distinct keys costs no more memory
KEY_CACHE_MAX = 1 << 16


class OneCallWrites:
    """A front end's one-call writes (steps 1 and 2 above, for one view).

    Each front end (and each view) holds one, built with its backend and
    prefixes.  It is a plain object with fixed slots: the sync
    TelescopeState has ``__getattr__`` (``telstate.key``), which makes
    every attribute lookup on a front end slower, so the hot path looks up
    this object once and finds everything else here.

    The full key of a ``str`` or ``bytes`` key is cached (the prefix never
    changes): a sensor's key is prepared once, not at every sample, and the
    backend gets the same bytes object each time, whose hash Python has
    already computed for the state's dictionaries.
    """

    __slots__ = ("backend", "cache", "prefixes")

    def __init__(self, backend: Any, prefixes: tuple[bytes, ...]) -> None:
        self.backend = backend
        #: the view's prefixes; full keys take the first
        self.prefixes = prefixes
        #: full keys by key as given (bounded by KEY_CACHE_MAX)
        self.cache: dict[str | bytes, bytes] = {}

    def full_key(self, key: Key) -> bytes:
        full_key = self.cache.get(key) if type(key) is str or type(key) is bytes \
            else None  # (other keys may not even be hashable)
        if full_key is None:
            full_key = self._new_full_key(key)
        return full_key

    def _new_full_key(self, key: Key) -> bytes:
        if type(key) is str:
            full_key = self.prefixes[0] + key.encode("utf-8", "surrogateescape")
        elif type(key) is bytes:
            full_key = self.prefixes[0] + key
        else:
            return self.prefixes[0] + ensure_binary(key)
        cache = self.cache
        if len(cache) >= KEY_CACHE_MAX:
            cache.clear()
        cache[key] = full_key
        return full_key

    def add(self, key: Key, value: Any, ts: float | None, encoding: bytes) -> Any:
        """Prepare a sample (full key, encoded value, valid timestamp: now if not
        given) and call the backend's ``add_mutable`` with it; returns what the
        backend returns (the async front end awaits it)."""
        full_key = self.cache.get(key) if type(key) is str else None  # full_key, inlined:
        if full_key is None:                                          # the hot path
            full_key = self.full_key(key)
        str_val = encode_value(value, encoding)
        if type(ts) is not float:
            ts = _time() if ts is None else float(ts)
        if not 0.0 <= ts < _inf:
            check_sample_timestamp(ts)  # raises the right error
        return self.backend.add_mutable(full_key, str_val, ts)

    def immutable_args(self, key: Key, value: Any, encoding: bytes) -> tuple[bytes, bytes]:
        """``set_immutable``'s arguments: full key, encoded value."""
        return self.full_key(key), encode_value(value, encoding)

    def indexed_args(self, key: Key, sub_key: Any, value: Any,
                     encoding: bytes) -> tuple[bytes, bytes, bytes]:
        """``set_indexed``'s arguments: full key, encoded sub-key, encoded value."""
        hash(sub_key)  # TypeError for unhashable sub-keys, which could never be looked up
        full_key = self.full_key(key)
        return full_key, encode_value(sub_key, ENCODING_MSGPACK), encode_value(value, encoding)


def type_clash(full_key: bytes, kind: str) -> ImmutableKeyError:
    """The error for a write of `kind` ("mutable", "immutable", "indexed immutable")
    to a key that exists with another type (the backend raised ImmutableKeyError)."""
    return ImmutableKeyError(f"Attempt to change key {display_str(full_key)} to {kind}")


def check_unchanged(full_key: bytes, old: bytes, str_val: bytes, value: Any,
                    sub_key: Any = NO_SUB_KEY) -> None:
    """Accept a write to an immutable key (or sub-key, if given) that was
    already set to `old` if `str_val` is equivalent, else raise ImmutableKeyError."""
    descr = display_str(full_key)
    if sub_key is not NO_SUB_KEY:
        descr = f"{descr}[{sub_key!r}]"
    check_immutable_change(descr, old, str_val, value)
