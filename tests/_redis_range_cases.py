"""get_range over a grid of windows on every kind of key, katsdptelstate as the oracle.

katsdptelstate's RedisBackend sends a range query only when the window can
hold a sample (or a sample before `st` is asked for); a query on a key that
is not a sensor fails with WRONGTYPE (ImmutableKeyError), while an existing
key that no query touched gives ``[]``.  The grid crosses every start and end
form (``-inf``, negative, ``-0.0``, ``0``, a sample's time, ``inf``) with
`include_previous` and `include_end`, on immutable, indexed, mutable, missing
and foreign-typed keys, and the checks compare each outcome (the result, or
the type of the exception) of our backends with katsdptelstate's on the same
Redis database.  Used by the sync, asyncio and threaded backends' tests.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable
from typing import Any

import katsdptelstate.redis
import redis

TIMES = (-math.inf, -1.0, -0.0, 0.0, 3.0, 5.0, math.inf)
KEYS = (b"immutable", b"indexed", b"mutable", b"missing", b"list")
Case = tuple[bytes, float, float, bool, bool]
Outcome = tuple[str, Any]


def fill(client: redis.Redis) -> list[Case]:
    """Write the grid's keys with katsdptelstate; return the cases to check."""
    oracle = katsdptelstate.redis.RedisBackend(client)
    oracle.set_immutable(b"immutable", b"\xffv")
    oracle.set_indexed(b"indexed", b"\xffs", b"\xffv")
    for stamp in (0.0, 3.0, 4.0, 5.0):
        oracle.add_mutable(b"mutable", b"\xff%d" % stamp, stamp)
    client.rpush(b"list", b"v")
    return list(itertools.product(KEYS, TIMES, TIMES, (False, True), (False, True)))


def outcome(call: Callable[[], Any]) -> Outcome:
    """``("value", result)``, or ``("raises", name of the exception's class)``: the
    libraries' errors share names (ours also derive from katsdptelstate's once it is
    imported, see telstate_log.core._errors)."""
    try:
        return "value", call()
    except Exception as exc:
        return "raises", type(exc).__name__


async def async_outcome(call: Callable[[], Awaitable[Any]]) -> Outcome:
    try:
        return "value", await call()
    except Exception as exc:
        return "raises", type(exc).__name__


def expected(client: redis.Redis, cases: list[Case]) -> list[Outcome]:
    """katsdptelstate's outcome of each case, checked to cover both behaviours that
    differ for a non-sensor key: ``[]`` (no query sent) and ImmutableKeyError."""
    oracle = katsdptelstate.redis.RedisBackend(client)
    outcomes = [outcome(lambda case=case: oracle.get_range(*case)) for case in cases]
    immutable = [o for case, o in zip(cases, outcomes, strict=True) if case[0] == b"immutable"]
    assert ("value", []) in immutable
    assert ("raises", "ImmutableKeyError") in immutable
    return outcomes


def mismatches(cases: list[Case], ours: list[Outcome],
               theirs: list[Outcome]) -> list[tuple[Case, Outcome, Outcome]]:
    """The cases whose outcomes differ: ``(case, ours, katsdptelstate's)``."""
    return [(case, a, b) for case, a, b in zip(cases, ours, theirs, strict=True) if a != b]
