"""Redis glob patterns, as used by ``KEYS`` and ``SCAN MATCH``.

Theory of operation
-------------------
:func:`compile_pattern` turns a pattern into a function that tells whether a
key matches, with the semantics of redis-server (7.0, x86-64), case-sensitive:

* ``*`` matches any run of bytes (a run of ``*`` acts as one), ``?`` any one
  byte, any other byte itself.
* ``\\x`` matches the byte ``x`` literally; a backslash at the very end of
  the pattern matches a backslash.
* ``[...]`` matches one byte from a class.  ``^`` right after ``[`` negates
  it.  Inside, ``\\x`` is the byte ``x``, ``a-z`` a range (reversed bounds
  are swapped), and the first ``]`` closes the class, so ``[]`` never
  matches and ``[^]`` matches any byte.  A class left open at the end of the
  pattern ends there (``[ab`` is ``[ab]``); a range needs both bounds before
  the end of the pattern, otherwise its bytes are members.  Range bounds are
  compared as *signed* chars, as Redis does on x86-64: ``[a-\\xff]`` is the
  bytes ``\\xff`` and ``\\x00`` to ``a``.
* The empty key matches only the empty pattern and ``*`` (``KEYS *`` lists
  every key without matching; other patterns need at least one byte).
* Redis gives up on patterns with more than 1000 ``*`` runs before the last
  one (a guard against abusive patterns); those match nothing.

A pattern is parsed into *segments* separated by ``*`` runs.  Every element
of a segment matches exactly one byte, so segments have fixed lengths, and a
key matches when the first segment matches at its start, the last at its end,
and the middle ones in order in between.  Taking the leftmost occurrence of
each middle segment is enough, so the matcher never backtracks into a
segment it has placed; a plain regular expression would, taking exponential
time on patterns such as ``*a*a*a*a*b``.  The matcher is one compiled
regular expression in which each middle segment is placed by an atomic
lookahead; patterns of plain bytes with at most one ``*`` use ``bytes``
methods instead.  Compiled patterns are cached.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Final, TypeAlias

__all__ = ["compile_pattern"]

#: Redis matches nothing once more than this many ``*`` runs precede the last.
_MAX_STAR_RUNS: Final = 1000

_ALL_BYTES: Final = frozenset(range(256))


def _signed(byte: int) -> int:
    """The value of `byte` as a C ``char`` on x86-64."""
    return byte - 256 if byte >= 128 else byte


def _parse_class(pattern: bytes, pos: int) -> tuple[frozenset[int], int]:
    """Parse a class starting just after its ``[``; return its bytes and the next position."""
    end = len(pattern)
    negate = pos < end and pattern[pos] == 0x5E  # ^
    if negate:
        pos += 1
    members: set[int] = set()
    while pos < end:
        byte = pattern[pos]
        if byte == 0x5C and pos + 1 < end:  # \x
            members.add(pattern[pos + 1])
            pos += 2
        elif byte == 0x5D:  # ]
            pos += 1
            break
        elif pos + 2 < end and pattern[pos + 1] == 0x2D:  # x-y
            low, high = sorted((_signed(byte), _signed(pattern[pos + 2])))
            members.update(b for b in range(256) if low <= _signed(b) <= high)
            pos += 3
        else:
            members.add(byte)
            pos += 1
    chosen = _ALL_BYTES - members if negate else frozenset(members)
    return chosen, pos


# An element matches one byte: an int for that byte, or a frozenset of bytes.
_Element: TypeAlias = "int | frozenset[int]"


def _parse(pattern: bytes) -> list[list[_Element]]:
    """Split `pattern` into segments of single-byte elements, separated by ``*`` runs."""
    segments: list[list[_Element]] = [[]]
    pos = 0
    end = len(pattern)
    while pos < end:
        byte = pattern[pos]
        pos += 1
        if byte == 0x2A:  # *
            while pos < end and pattern[pos] == 0x2A:
                pos += 1
            segments.append([])
        elif byte == 0x3F:  # ?
            segments[-1].append(_ALL_BYTES)
        elif byte == 0x5B:  # [
            members, pos = _parse_class(pattern, pos)
            segments[-1].append(members)
        elif byte == 0x5C and pos < end:  # \x
            segments[-1].append(pattern[pos])
            pos += 1
        else:
            segments[-1].append(byte)
    return segments


def _class_regex(members: frozenset[int]) -> bytes:
    if not members:
        return b"(?!)"
    if members == _ALL_BYTES:
        return b"."
    parts = [b"["]
    ordered = sorted(members)
    start = prev = ordered[0]
    for byte in [*ordered[1:], -1]:
        if byte != prev + 1:
            parts.append(b"\\x%02x" % start)
            if prev != start:
                parts.append(b"-\\x%02x" % prev)
            start = byte
        prev = byte
    parts.append(b"]")
    return b"".join(parts)


def _literal(elements: list[_Element]) -> bytes | None:
    """The bytes that `elements` match, if they are all plain bytes."""
    if all(isinstance(element, int) for element in elements):
        return bytes(element for element in elements if isinstance(element, int))
    return None


def _regex(elements: list[_Element]) -> bytes:
    return b"".join(re.escape(bytes([element])) if isinstance(element, int)
                    else _class_regex(element) for element in elements)


def _match_all(key: bytes) -> bool:
    return True


def _match_none(key: bytes) -> bool:
    return False


def _match_nonempty(key: bytes) -> bool:
    return len(key) > 0


def _build(pattern: bytes) -> Callable[[bytes], bool]:
    if pattern == b"*":
        return _match_all
    segments = _parse(pattern)
    stars = len(segments) - 1
    if stars - (not segments[-1]) > _MAX_STAR_RUNS:
        return _match_none
    first, last = segments[0], segments[-1]
    first_literal, last_literal = _literal(first), _literal(last)
    if stars == 0 and first_literal is not None:
        return lambda key: key == first_literal
    if stars == 1 and not last and first_literal is not None:
        if not first_literal:
            return _match_nonempty  # '**...'
        return lambda key: key.startswith(first_literal)
    if stars == 1 and not first and last_literal is not None:
        return lambda key: key.endswith(last_literal)
    # One regular expression, in which each middle segment is found at its
    # leftmost position and never revisited: a lookahead is atomic, so
    # (?=(?P<m>.*?S))(?P=m) takes the shortest run up to the first S.
    parts = [_regex(first)]
    for index, middle in enumerate(segments[1:-1]):
        parts.append(b"(?=(?P<m%d>.*?%s))(?P=m%d)" % (index, _regex(middle), index))
    if stars:
        parts.append(b".*")
        parts.append(_regex(last))
    fullmatch = re.compile(b"".join(parts), re.DOTALL).fullmatch
    return lambda key: fullmatch(key) is not None


@functools.lru_cache(maxsize=128)
def compile_pattern(pattern: bytes) -> Callable[[bytes], bool]:
    """Compile a Redis glob `pattern` into a function ``match(key) -> bool``.

    See the module documentation for the syntax.  Results are cached.
    """
    return _build(bytes(pattern))
