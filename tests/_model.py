"""A deliberately simple reference model of katsdptelstate's byte-level semantics.

Sensors are sorted lists of lex-packed members (8-byte big-endian timestamp +
value), exactly Redis's zset-by-lex representation, queried with bisect.  It
is slow and obviously right, which is what an oracle should be.
"""

from __future__ import annotations

import bisect
import math
import struct
from typing import Any

from telstate_log import ImmutableKeyError
from telstate_log.core._pattern import compile_pattern


def pack(ts: float) -> bytes:
    return struct.pack(">d", abs(ts))


class Model:
    def __init__(self, redis_ranges: bool = False) -> None:
        self.data: dict[bytes, Any] = {}
        # katsdptelstate's two backends differ on get_range with st > et and
        # include_previous: its memory backend returns items[start:end] (the
        # previous sample only if it is before et); its Redis Lua script returns the
        # previous sample followed by the (empty) range.  Each of our backends
        # matches its katsdptelstate twin.
        self.redis_ranges = redis_ranges

    def set_immutable(self, key: bytes, value: bytes) -> bytes | None:
        old = self.data.get(key)
        if old is None:
            self.data[key] = value
            return None
        if isinstance(old, bytes):
            return old
        raise ImmutableKeyError(key)

    def add_mutable(self, key: bytes, value: bytes, ts: float) -> bool:
        items = self.data.setdefault(key, [])
        if not isinstance(items, list):
            raise ImmutableKeyError(key)
        member = pack(ts) + value
        i = bisect.bisect_left(items, member)
        if i < len(items) and items[i] == member:
            return False
        items.insert(i, member)
        return True

    def set_indexed(self, key: bytes, sub: bytes, value: bytes) -> bytes | None:
        d = self.data.setdefault(key, {})
        if not isinstance(d, dict):
            raise ImmutableKeyError(key)
        if sub in d:
            return d[sub]  # type: ignore[no-any-return]
        d[sub] = value
        return None

    def delete(self, key: bytes) -> bool:
        return self.data.pop(key, None) is not None

    def clear(self) -> bool:
        had = bool(self.data)
        self.data.clear()
        return had

    def get(self, key: bytes) -> tuple[Any, float | None]:
        v = self.data.get(key)
        if isinstance(v, list):
            return v[-1][8:], struct.unpack(">d", v[-1][:8])[0]
        if isinstance(v, dict):
            return dict(v), None
        return v, None

    def keys(self, pattern: bytes = b"*") -> list[bytes]:
        m = compile_pattern(pattern)
        return sorted(k for k in self.data if m(k))

    def key_type(self, key: bytes) -> str | None:
        v = self.data.get(key)
        if v is None:
            return None
        return {bytes: "IMMUTABLE", list: "MUTABLE", dict: "INDEXED"}[type(v)]

    def get_indexed(self, key: bytes, sub: bytes) -> bytes | None:
        d = self.data[key]
        if not isinstance(d, dict):
            raise ImmutableKeyError(key)
        return d.get(sub)  # type: ignore[no-any-return]

    def get_range(self, key: bytes, st: float, et: float, include_previous: bool,
                  include_end: bool) -> list[tuple[bytes, float]] | None:
        items = self.data.get(key)
        if items is None:
            return None
        if self.redis_ranges and _no_redis_query(st, et, include_previous, include_end):
            return []  # katsdptelstate's RedisBackend sends no query: any existing key gives []
        if not isinstance(items, list):
            raise ImmutableKeyError(key)

        def lo(t: float) -> int:
            if t < 0 or t == 0:
                return 0
            return bisect.bisect_left(items, pack(t))

        def hi(t: float) -> int:
            if t == math.inf:
                return len(items)
            if t < 0 or (t == 0 and not include_end):
                return 0
            packed = pack(t)
            if include_end:
                packed = struct.pack(">Q", struct.unpack(">Q", packed)[0] + 1)
            return bisect.bisect_left(items, packed)

        start = lo(st)
        end = hi(et)
        if self.redis_ranges:
            found = items[start:max(start, end)]
            if include_previous and start > 0:
                found.insert(0, items[start - 1])
        else:
            if include_previous and start > 0:
                start -= 1
            found = items[start:end]
        return [(m[8:], struct.unpack(">d", m[:8])[0]) for m in found]


def _no_redis_query(st: float, et: float, include_previous: bool, include_end: bool) -> bool:
    """Whether katsdptelstate's RedisBackend answers get_range without a range query:
    the window is empty (``st=inf``, ``et<0``, ``et=0`` without `include_end`) and no
    sample before `st` is asked for (`include_previous` off, or ``st <= 0``)
    (tests/_redis_range_cases.py checks this rule against katsdptelstate itself)."""
    empty = st == math.inf or et < 0 or (et == 0 and not include_end)
    return empty and (not include_previous or st <= 0)
