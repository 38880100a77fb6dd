"""``State.add_new_sensors`` (many new keys' columns built together) gives what
``State.add_mutable_batch`` of each key in turn gives: the same state, the same
commit-hook calls, the same errors; a failing commit keeps the keys before it.
Also ``fitting_groups``, which tells which keys it can take."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_small_batch import describe

from telstate_log.core._errors import InvalidTimestampError
from telstate_log.core._sensor import FIXED_WIDTH_MAX, fitting_groups
from telstate_log.core._state import State


class Hook:
    """A commit_batch hook that logs its calls (values as lists) and can fail at a call."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[Any] = []
        self.fail_at = fail_at

    def __call__(self, first: int, key: bytes, ts: np.ndarray, values: Any) -> None:
        if len(self.calls) == self.fail_at:
            raise OSError("disk full")
        as_list = values.tolist() if isinstance(values, np.ndarray) else list(values)
        self.calls.append((first, key, ts.dtype.str, ts.tobytes(), as_list))


def matrix(values: list[bytes]) -> np.ndarray:
    width = len(values[0])
    return np.frombuffer(b"".join(values), np.uint8).reshape(len(values), width)


def one_by_one(state: State, keys: list[bytes], groups: list[list[tuple[float, bytes]]],
               hook: Hook | None) -> None:
    for key, group in zip(keys, groups):
        state.add_mutable_batch(key, [v for _, v in group], np.array([t for t, _ in group]),
                                hook)


def together(state: State, keys: list[bytes], groups: list[list[tuple[float, bytes]]],
             hook: Hook | None) -> int:
    ts = np.array([t for g in groups for t, _ in g], np.float64)
    mat = matrix([v for g in groups for _, v in g])
    return state.add_new_sensors(keys, ts, mat, np.array([len(g) for g in groups]), hook)


def prefilled() -> State:
    state = State()
    state.set_immutable(b"imm", b"\xff\x01")
    state.add_mutable(b"old", b"\xff\xcb" + bytes(8), 1.0)
    return state


@st.composite
def sensor_groups(draw: st.DrawFn) -> tuple[list[bytes], list[list[tuple[float, bytes]]]]:
    """Distinct new keys, each with strictly increasing samples of one width whose values
    share their first prefix_len bytes (the width differs from test to test)."""
    width = draw(st.sampled_from([2, 3, 10, 17]))
    head = b"\xff\xcb"[:1 if width == 2 else 2]
    count = draw(st.integers(1, 40))
    keys = [b"k%03d" % i for i in range(count)]
    groups = []
    for _ in keys:
        n = draw(st.integers(1, 12))
        start = draw(st.sampled_from([0.0, -0.0, 1.0, 1.7e9]))
        steps = draw(st.lists(st.sampled_from([0.25, 1.0, 0.5]), min_size=n, max_size=n))
        stamps = [start] + [start + sum(steps[:i]) for i in range(1, n)]  # -0.0 stays
        tails = draw(st.lists(st.binary(min_size=width - len(head), max_size=width - len(head)),
                              min_size=n, max_size=n))
        groups.append([(t, head + tail) for t, tail in zip(stamps, tails)])
    return keys, groups


@settings(max_examples=200, deadline=None)
@given(sensor_groups(), st.booleans())
def test_matches_one_batch_per_key(case: tuple[list[bytes], list[Any]], hooked: bool) -> None:
    keys, groups = case
    results = []
    for run in (one_by_one, together):
        state = prefilled()
        hook = Hook() if hooked else None
        run(state, keys, groups, hook)
        results.append((describe(state), hook.calls if hook else None))
    assert results[0] == results[1]


@pytest.mark.parametrize("fail_at", [0, 1, 5, 9])
def test_failing_commit_keeps_the_keys_before(fail_at: int) -> None:
    keys = [b"k%d" % i for i in range(10)]
    groups = [[(1.0 + j, b"\xff\xcb" + bytes([i, j]) * 4) for j in range(i % 3 + 1)]
              for i in range(10)]
    expected = prefilled()
    one_by_one(expected, keys[:fail_at], groups[:fail_at], Hook())
    state = prefilled()
    hook = Hook(fail_at)
    with pytest.raises(OSError):
        together(state, keys, groups, hook)
    assert describe(state) == describe(expected)
    assert [call[0] for call in hook.calls] == [2 + sum(len(g) for g in groups[:i]) + 1
                                                for i in range(fail_at)]


@pytest.mark.parametrize(("keys", "groups", "error"), [
    ([b"old"], [[(5.0, b"\xff\xcb" + bytes(8))]], ValueError),          # exists (mutable)
    ([b"imm"], [[(5.0, b"\xff\xcb" + bytes(8))]], ValueError),          # exists (immutable)
    ([b"a", b"a"], [[(1.0, b"ab")], [(2.0, b"ab")]], ValueError),       # twice
    ([b"a"], [[(1.0, b"ab"), (1.0, b"ac")]], ValueError),               # equal timestamps
    ([b"a"], [[(2.0, b"ab"), (1.0, b"ab")]], ValueError),               # out of order
    ([b"a"], [[(1.0, b"xab"), (2.0, b"yab")]], ValueError),             # prefixes differ
    ([b"a"], [[(1.0, b"a")]], ValueError),                              # 1-byte values
    ([b"a"], [[(-1.0, b"ab")]], InvalidTimestampError),
    ([b"a"], [[(math.nan, b"ab")]], InvalidTimestampError),
    ([b"a"], [[(math.inf, b"ab")]], InvalidTimestampError),
])
def test_refused_before_anything_is_committed(keys: list[bytes], groups: list[Any],
                                              error: type[Exception]) -> None:
    state = prefilled()
    before = describe(state)
    hook = Hook()
    with pytest.raises(error):
        together(state, keys, groups, hook)
    assert hook.calls == [] and describe(state) == before


def test_shapes_must_agree() -> None:
    state = State()
    with pytest.raises(ValueError):
        state.add_new_sensors([b"a"], np.array([1.0, 2.0]), matrix([b"ab", b"ab"]),
                              np.array([1]))
    assert state.add_new_sensors([], np.zeros(0), np.zeros((0, 2), np.uint8),
                                 np.zeros(0, np.int64)) == 0
    assert state.position == 0 and len(state) == 0


def test_fitting_groups() -> None:
    values = [b"\xff\xcb" + bytes(8)] * 3 + [b"\xff\xca" + bytes(8)] + [b"\xff\xcb" + bytes(8)] * 4
    ts = np.array([1.0, 2.0, 3.0,  1.0,  0.5, 0.5,  3.0, 2.0])
    sizes = np.array([3, 1, 2, 2])  # fits, fits (own prefix), equal stamps, out of order
    assert fitting_groups(ts, matrix(values), sizes).tolist() == [True, True, False, False]
    mixed = [b"\xff\xcb" + bytes(8), b"\xff\xca" + bytes(8)]
    assert fitting_groups(np.array([1.0, 2.0]), matrix(mixed), np.array([2])).tolist() == [False]
    assert fitting_groups(np.array([1.0]), matrix([b"x"]), np.array([1])).tolist() == [False]
    huge = np.zeros((1, FIXED_WIDTH_MAX + 1), np.uint8)
    assert fitting_groups(np.array([1.0]), huge, np.array([1])).tolist() == [False]
