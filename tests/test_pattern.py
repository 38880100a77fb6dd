"""Tests for telstate_log.core._pattern: Redis glob patterns.

The reference is a real redis-server (KEYS); katsdptelstate's matcher, when
installed, is a second oracle for printable keys.
"""

from __future__ import annotations

import itertools
import random
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from telstate_log.core._pattern import compile_pattern

# Small alphabets so that generated patterns and keys interact.
PATTERN_ALPHABET = b"ab-^[]*?\\"
KEY_ALPHABET = b"ab-^[]*?\\"
HIGH_BYTES = b"\x00\x7f\x80\xfe\xff"

patterns = st.lists(st.sampled_from(PATTERN_ALPHABET), max_size=10).map(bytes)
keys = st.lists(st.sampled_from(KEY_ALPHABET), max_size=8).map(bytes)
any_patterns = st.lists(st.sampled_from(PATTERN_ALPHABET + HIGH_BYTES), max_size=10).map(bytes)

# (pattern, key, matches): checked against redis-server by test_against_redis.
CASES: list[tuple[bytes, bytes, bool]] = [
    (b"*", b"", True),            # KEYS * lists every key
    (b"**", b"", False),          # ... but a real match needs a byte
    (b"", b"", True),
    (b"", b"a", False),
    (b"?", b"", False),
    (b"*", b"anything", True),
    (b"**", b"a", True),
    (b"a*", b"a", True),
    (b"a*", b"ba", False),
    (b"*a", b"ba", True),
    (b"*a", b"ab", False),
    (b"a*b", b"ab", True),
    (b"a*b", b"axxb", True),
    (b"a*b", b"axxbc", False),
    (b"a*b*c", b"abbcbc", True),
    (b"*a*a*a*b", b"a" * 40, False),
    (b"*a*a*a*b", b"a" * 40 + b"b", True),
    (b"?", b"\xff", True),
    (b"??", b"a", False),
    (b"a?c", b"abc", True),
    (b"a?c", b"ac", False),
    (b"\\*", b"*", True),
    (b"\\*", b"a", False),
    (b"\\?", b"?", True),
    (b"\\?", b"a", False),
    (b"\\a", b"a", True),
    (b"\\\\", b"\\", True),
    (b"a\\", b"a\\", True),       # trailing backslash is literal
    (b"\\", b"\\", True),
    (b"[abc]", b"b", True),
    (b"[abc]", b"d", False),
    (b"[^abc]", b"d", True),
    (b"[^abc]", b"a", False),
    (b"[a-c]", b"b", True),
    (b"[c-a]", b"b", True),       # reversed range
    (b"[a-c]", b"-", False),
    (b"[-a]", b"-", True),
    (b"[a-]", b"-", False),       # a range from a to ] (and the class is unterminated)
    (b"[a-]", b"^", True),
    (b"[a-]", b"]", True),
    (b"[a-", b"-", True),         # unterminated, too short for a range
    (b"[a-", b"a", True),
    (b"[]", b"]", False),         # empty class never matches
    (b"[]", b"", False),
    (b"[]a]", b"]a]", False),
    (b"[]a]", b"a]", False),
    (b"[^]", b"x", True),         # negated empty class: any byte
    (b"[^]", b"", False),
    (b"[^]]", b"]", False),
    (b"[^]]", b"a]", True),
    (b"[", b"", False),
    (b"[", b"[", False),
    (b"[^", b"x", True),
    (b"[abc", b"c", True),        # unterminated class ends with the pattern
    (b"[abc", b"[", False),
    (b"[\\]]", b"]", True),
    (b"[\\^a]", b"^", True),
    (b"[\\-]", b"-", True),
    (b"[a\\]", b"]", True),         # escaped ], so the class is unterminated
    (b"[a\\]", b"\\", False),
    (b"[a\\", b"\\", True),        # backslash at the end of an unterminated class
    (b"[a\\", b"]", False),
    (b"[\\", b"\\", True),
    (b"[*]", b"*", True),
    (b"[*]", b"a", False),
    (b"[?]", b"a", False),
    (b"[a-c-e]", b"d", False),
    (b"[a-c-e]", b"-", True),
    (b"[^a-c]", b"b", False),
    (b"[^a-c]", b"z", True),
    (b"[a-\xff]", b"\xff", True),  # bounds compare as signed chars
    (b"[a-\xff]", b"\x00", True),
    (b"[a-\xff]", b"b", False),
    (b"[a-\xff]", b"\x80", False),
    (b"[\x80-\xff]", b"\x90", True),
    (b"[\x80-\xff]", b"a", False),
    (b"[\x7f-\x80]", b"a", True),
    (b"[\x00-\x7f]", b"\x80", False),
    (b"Ab", b"ab", False),        # case-sensitive
    (b"a\x00b", b"a\x00b", True),
    (b"*" * 5 + b"a", b"ba", True),
    (b"*a" * 1000, b"a" * 1200, True),          # Redis gives up beyond 1000 * runs
    (b"*a" * 1001, b"a" * 1200, False),
    (b"a*" * 1001, b"a" * 1200, True),          # ... not counting a final one
    (b"a*" * 1002, b"a" * 1200, False),
    (b"*a" * 1001 + b"*", b"a" * 1200, False),
]


@pytest.mark.parametrize("pattern, key, expected", CASES,
                         ids=[f"{p[:12]!r}-{k[:12]!r}" for p, k, _ in CASES])
def test_cases(pattern: bytes, key: bytes, expected: bool) -> None:
    result = compile_pattern(pattern)(key)
    assert type(result) is bool
    assert result is expected


def test_cached() -> None:
    assert compile_pattern(b"x*y") is compile_pattern(b"x*y")
    assert compile_pattern.cache_info().maxsize


def test_pathological_pattern_is_fast() -> None:
    key = b"a" * 20000
    pattern = b"*a" * 30 + b"*b"
    start = time.process_time()   # CPU time: other processes' load does not stretch it
    assert not compile_pattern(pattern)(key)
    assert compile_pattern(pattern[:-1] + b"a")(key)
    assert not compile_pattern(b"*[a]?" * 40 + b"[b]")(key)
    assert time.process_time() - start < 0.5


def _brute_force(pattern: bytes, key: bytes) -> bool:
    """A direct, slow transcription of the documented semantics (a third opinion)."""

    def signed(byte: int) -> int:
        return byte - 256 if byte >= 128 else byte

    def match(p: int, k: int) -> bool:
        while p < len(pattern):
            byte = pattern[p]
            if byte == ord("*"):
                while p < len(pattern) and pattern[p] == ord("*"):
                    p += 1
                if p == len(pattern):
                    return True  # a final star matches the rest, even nothing
                return any(match(p, start) for start in range(k, len(key)))
            if k >= len(key):
                return False
            c = key[k]
            if byte == ord("?"):
                p += 1
            elif byte == ord("["):
                p += 1
                negate = p < len(pattern) and pattern[p] == ord("^")
                p += negate
                found = False
                while p < len(pattern):
                    if pattern[p] == ord("\\") and p + 1 < len(pattern):
                        found |= pattern[p + 1] == c
                        p += 2
                    elif pattern[p] == ord("]"):
                        p += 1
                        break
                    elif p + 2 < len(pattern) and pattern[p + 1] == ord("-"):
                        low, high = sorted((signed(pattern[p]), signed(pattern[p + 2])))
                        found |= low <= signed(c) <= high
                        p += 3
                    else:
                        found |= pattern[p] == c
                        p += 1
                if found == negate:
                    return False
            else:
                if byte == ord("\\") and p + 1 < len(pattern):
                    p += 1
                if pattern[p] != c:
                    return False
                p += 1
            k += 1
        return k == len(key)

    if pattern == b"*":
        return True
    if not key:
        return not pattern
    return match(0, 0)


@settings(max_examples=400, deadline=None)
@given(any_patterns, st.lists(st.sampled_from(KEY_ALPHABET + HIGH_BYTES), max_size=8).map(bytes))
@example(b"a*", b"")
@example(b"[\xff-a]", b"\x00")
def test_brute_force(pattern: bytes, key: bytes) -> None:
    assert compile_pattern(pattern)(key) is _brute_force(pattern, key)


# --------------------------------------------------------------------------
# katsdptelstate as an oracle
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ktel_compile() -> Any:
    memory = pytest.importorskip("katsdptelstate.memory")
    return memory._compile_pattern


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(patterns, keys)
@example(b"[a-]", b"]")
@example(b"[]", b"]")
@example(b"\\", b"\\")
def test_matches_katsdptelstate(ktel_compile: Any, pattern: bytes, key: bytes) -> None:
    theirs = ktel_compile(pattern).match(key) is not None
    if not key:
        # katsdptelstate's regex matches the empty key with '**' and the like;
        # Redis matches it only with '' (and lists it for KEYS *).
        assert compile_pattern(pattern)(key) is (pattern in (b"", b"*"))
    else:
        assert compile_pattern(pattern)(key) is theirs


# --------------------------------------------------------------------------
# A real redis-server as the oracle
# --------------------------------------------------------------------------

def _redis_keys() -> list[bytes]:
    short = [bytes(chars) for n in range(3) for chars in itertools.product(b"ab-]\\\xff", repeat=n)]
    rng = random.Random(20240501)
    alphabet = KEY_ALPHABET + HIGH_BYTES
    longer = [bytes(rng.choice(alphabet) for _ in range(rng.randint(3, 8))) for _ in range(300)]
    extra = [key for _, key, _ in CASES]
    return sorted(set(short + longer + extra))


REDIS_KEYS = _redis_keys()


def _check_against_redis(client: Any, pattern: bytes) -> None:
    expected = set(client.keys(pattern))
    matcher = compile_pattern(pattern)
    ours = {key for key in REDIS_KEYS if matcher(key)}
    assert ours == expected, pattern


@pytest.mark.redis
def test_against_redis(redis_server: Any) -> None:
    client = redis_server.client()
    try:
        client.flushall()
        with client.pipeline(transaction=False) as pipe:
            for key in REDIS_KEYS:
                pipe.set(key, b"")
            pipe.execute()
        assert set(client.keys(b"*")) == set(REDIS_KEYS)

        for pattern, _, _ in CASES:
            _check_against_redis(client, pattern)

        @settings(max_examples=300, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(any_patterns)
        def generated(pattern: bytes) -> None:
            _check_against_redis(client, pattern)

        generated()
    finally:
        client.flushall()
        client.close()
