"""The plain-Python path for short sample batches gives what the numpy path gives.

``State.add_mutable_batch`` checks batches of up to ``SMALL_BATCH`` samples in
plain Python and appends in-order ones with ``SensorColumn.extend_small``.
Every test here runs the same writes twice -- once as shipped, once with
``SMALL_BATCH = 0`` (everything through the numpy path) -- and compares the
results, the columns, the commit-hook calls and the errors.  Also covered:
the shortcuts of ``chunks`` and ``encode_batch`` that small batches take.
"""

from __future__ import annotations

import contextlib
import math
import random
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telstate_log.core import _log_format as fmt
from telstate_log.core import _state, _values
from telstate_log.core._sensor import SensorColumn
from telstate_log.core._state import State

# Same width and prefix (fixed layout), same width with another prefix
# (prefix shrink), other widths (switch to var), a 1-byte value.
VALUES = [b"\xff\xcb" + bytes([i]) * 8 for i in range(4)] + \
    [b"\xff\xca" + bytes(8), b"\xfe\xcb" + bytes(8), b"\xff\x01", b"x", b"\xff\xa3abc",
     b"\xff\xcb" + bytes(7) + b"\x00"]
BAD_TIMES = [math.nan, math.inf, -math.inf, -1.0, -5e-324]


@contextlib.contextmanager
def numpy_path() -> Iterator[None]:
    """Send every batch through the numpy path of add_mutable_batch."""
    saved = _state.SMALL_BATCH
    _state.SMALL_BATCH = 0
    try:
        yield
    finally:
        _state.SMALL_BATCH = saved


def describe(state: State) -> list[Any]:
    """Everything observable about `state` (floats as bytes, so -0.0 shows)."""
    out: list[Any] = [state.position]
    for key, entry in sorted(state.items()):
        if isinstance(entry, SensorColumn):
            last_value, last_ts = entry.last
            item: list[Any] = [key, len(entry), last_value, struct.pack("<d", last_ts)]
            snap = entry.snapshot()
            item += [snap["created"], snap["pos_base"], snap["ts"].tobytes(),
                     snap["pos"].dtype.str, snap["pos"].tolist()]
            if "vals" in snap:
                item += ["fixed", snap["prefix"], snap["vals"].dtype.str, snap["vals"].tobytes()]
            else:
                item += ["var", list(snap["list"])]
            item.append(entry.range_list(0.0, math.inf, False, False))
            out.append(item)
        else:
            out.append([key, type(entry).__name__])
    return out


class Recorder:
    """A commit_batch hook that logs its calls (and can be told to fail)."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.fail = False

    def __call__(self, first: int, key: bytes, ts: np.ndarray, values: Any) -> None:
        as_list = values.tolist() if isinstance(values, np.ndarray) else list(values)
        self.calls.append((first, key, ts.dtype.str, ts.tobytes(), type(values).__name__,
                           as_list))
        if self.fail:
            raise OSError("disk full")


def run(ops: list[tuple[Any, ...]]) -> tuple[list[Any], list[Any], list[Any]]:
    """Apply `ops` to a fresh state: (results or errors, commit calls, final state)."""
    state = State()
    state.set_immutable(b"imm", b"\xff\x01")
    hook = Recorder()
    results: list[Any] = []
    for op in ops:
        try:
            if op[0] == "batch":
                _, key, samples, as_array, failing = op
                values: Any = [v for _, v in samples]
                widths = {len(v) for v in values}
                if as_array and len(widths) == 1:
                    values = np.array(values, dtype=f"V{widths.pop()}")
                hook.fail = failing
                results.append(state.add_mutable_batch(key, values,
                                                       np.array([t for t, _ in samples]), hook))
            elif op[0] == "add":
                results.append(state.add_mutable(op[1], op[3], op[2]))
            else:  # "jump": the next events get positions beyond 2**32
                state.position += 1 << 32
                results.append(None)
        except Exception as exc:  # compared between the two paths
            results.append((type(exc).__name__, str(exc)))
    return results, hook.calls, describe(state)


def both(ops: list[tuple[Any, ...]]) -> None:
    fast = run(ops)
    with numpy_path():
        slow = run(ops)
    assert fast == slow


good_times = st.integers(0, 160).map(lambda i: i / 4) | st.just(-0.0)
times = good_times | st.sampled_from(BAD_TIMES)
values = st.sampled_from(VALUES) | st.just(b"")
keys = st.sampled_from([b"a", b"b", b"imm"])


@st.composite
def batches(draw: st.DrawFn) -> tuple[Any, ...]:
    samples = draw(st.lists(st.tuples(times, values), max_size=40))
    if draw(st.booleans()):  # mostly in order: what the fast path takes
        by_time = {t: v for t, v in samples}
        samples = sorted(by_time.items(), key=lambda s: s[0])
    return ("batch", draw(keys), samples, draw(st.booleans()), draw(st.integers(0, 9)) == 0)


ops = st.lists(batches()
               | st.tuples(st.just("add"), keys, good_times, st.sampled_from(VALUES))
               | st.just(("jump",)), min_size=1, max_size=12)


@settings(max_examples=400, deadline=None)
@given(ops)
def test_fast_path_matches_numpy_path(seq: list[tuple[Any, ...]]) -> None:
    both(seq)


def increasing(n: int, start: float = 1.0, value: bytes = VALUES[0]) -> list[tuple[float, bytes]]:
    return [(start + i * 0.5, value) for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 31, 32, 33, 64])
@pytest.mark.parametrize("as_array", [False, True])
def test_boundary_sizes(n: int, as_array: bool) -> None:
    both([("batch", b"a", increasing(n), as_array, False),
          ("batch", b"a", increasing(n, start=100.0), as_array, False),      # append
          ("batch", b"a", increasing(n, start=0.0), as_array, False),        # overlaps
          ("batch", b"b", increasing(n)[::-1], as_array, False)])            # reversed


def test_duplicates_and_out_of_order() -> None:
    one, two = VALUES[0], VALUES[1]
    both([("batch", b"a", [(1.0, one), (2.0, one), (3.0, one)], False, False),
          ("batch", b"a", [(4.0, one), (4.0, one), (5.0, one)], False, False),   # repeat
          ("batch", b"a", [(3.0, one), (6.0, one)], False, False),              # stored
          ("batch", b"a", [(6.0, two), (7.0, one)], False, False),              # same ts
          ("batch", b"a", [(6.0, VALUES[2]), (6.5, one)], False, False),        # value order
          ("batch", b"a", [(9.0, one), (8.0, one)], False, False),              # backwards
          ("batch", b"a", [(10.0, one), (10.0, two)], False, False)])           # equal times


def test_negative_zero_is_stored_as_zero() -> None:
    for as_array in (False, True):
        both([("batch", b"a", [(-0.0, VALUES[0]), (1.0, VALUES[0])], as_array, False),
              ("batch", b"b", [(-0.0, VALUES[0])], as_array, False),
              ("batch", b"b", [(0.0, VALUES[0]), (-0.0, VALUES[1])], as_array, False)])
    fast = run([("batch", b"a", [(-0.0, VALUES[0])], False, False)])
    assert fast[1][0][3] == struct.pack("<d", 0.0)            # the commit hook saw +0.0


@pytest.mark.parametrize("bad", BAD_TIMES)
def test_bad_timestamps_raise_the_same(bad: float) -> None:
    for samples in ([(bad, VALUES[0])], [(1.0, VALUES[0]), (bad, VALUES[0]), (math.nan, b"")],
                    [(2.0, b""), (bad, VALUES[0])]):
        both([("batch", b"a", samples, False, False)])
    fast = run([("batch", b"a", [(1.0, VALUES[0]), (bad, VALUES[0])], False, False)])
    assert fast[0][0][0] == "InvalidTimestampError"


def test_other_errors_raise_the_same() -> None:
    both([("batch", b"a", [(1.0, b"")], False, False),                  # empty value
          ("batch", b"imm", increasing(3), False, False),               # not a sensor
          ("batch", b"a", increasing(3), False, True),                  # the commit fails
          ("batch", b"a", increasing(3), False, False)])
    state = State()
    with pytest.raises(ValueError, match="differ in length"):
        state.add_mutable_batch(b"a", [VALUES[0]], np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="cannot be empty"):
        state.add_mutable_batch(b"a", np.zeros(2, "V0"), np.array([1.0, 2.0]))


def test_failed_commit_changes_nothing() -> None:
    state = State()
    hook = Recorder()
    state.add_mutable_batch(b"a", [VALUES[0]], np.array([1.0]), hook)
    before = describe(state)
    hook.fail = True
    with pytest.raises(OSError):
        state.add_mutable_batch(b"a", [VALUES[1], VALUES[2]], np.array([2.0, 3.0]), hook)
    with pytest.raises(OSError):
        state.add_mutable_batch(b"new", [VALUES[1]], np.array([2.0]), hook)
    assert describe(state) == before


def test_values_of_varying_length() -> None:
    rng = random.Random(5)
    seq: list[tuple[Any, ...]] = []
    start = 0.0
    for _ in range(30):
        n = rng.randint(1, 40)
        samples = [(start + i, rng.choice(VALUES)) for i in range(n)]
        seq.append(("batch", rng.choice([b"a", b"b"]), samples, rng.random() < 0.5, False))
        start += rng.choice([n, n // 2])           # sometimes overlapping the stored ones
    both(seq)


def test_positions_beyond_32_bits() -> None:
    both([("batch", b"a", increasing(3), False, False), ("jump",),
          ("batch", b"a", increasing(3, start=10.0), False, False),
          ("batch", b"b", increasing(3, start=10.0), True, False)])


def test_small_in_order_batches_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = SensorColumn.extend_small

    def spy(self: SensorColumn, *args: Any) -> None:
        calls.append(len(args[2]))
        original(self, *args)

    monkeypatch.setattr(SensorColumn, "extend_small", spy)
    state = State()
    state.add_mutable_batch(b"a", [v for _, v in increasing(32)], np.arange(32.0))
    state.add_mutable_batch(b"a", [VALUES[0]] * 33, np.arange(40.0, 73.0))    # numpy path
    state.add_mutable_batch(b"a", [VALUES[1]] * 2, np.array([80.0, 79.0]))    # out of order
    assert calls == [32]
    with numpy_path():
        state.add_mutable_batch(b"b", [VALUES[0]], np.array([1.0]))
    assert calls == [32]


def test_extend_small_positions_and_growth() -> None:
    col = SensorColumn(5, VALUES[0])
    pos = 5
    for i in range(40):                    # grows past the initial capacity; positions
        k = 1 + i % 7                      # run past the precomputed steps
        ts = np.arange(k, dtype=np.float64) + 10.0 * i
        col.extend_small(ts, float(ts[-1]), [VALUES[i % 4]] * k, pos)
        pos += k
    assert col.positions().tolist() == list(range(5, pos))
    assert len(col) == pos - 5 and col.is_fixed


# --- chunks and encode_batch shortcuts ----------------------------------------------

def greedy_runs(sizes: list[int], limit: int) -> list[tuple[int, int]]:
    out, i = [], 0
    while i < len(sizes):
        j, total = i + 1, sizes[i]
        while j < len(sizes) and total + sizes[j] <= limit:
            total += sizes[j]
            j += 1
        out.append((i, j))
        i = j
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 50), max_size=60), st.integers(0, 400), st.integers(0, 12),
       st.booleans())
def test_chunks(lengths: list[int], limit: int, overhead: int, short_cut: bool) -> None:
    values = [b"v" * n for n in lengths]
    saved = _values._SHORT
    _values._SHORT = saved if short_cut else -1
    try:
        got = _values.chunks(values, overhead, limit)
    finally:
        _values._SHORT = saved
    assert got == greedy_runs([n + overhead for n in lengths], limit)
    if lengths:
        width = lengths[0]
        array = np.zeros(len(lengths), f"V{width}") if width else None
        if array is not None:
            assert _values.chunks(array, overhead, limit) == \
                greedy_runs([width + overhead] * len(lengths), limit)


@pytest.mark.parametrize("values", [
    [b"\xff\xcb" + bytes(8)] * 3, [b"ab", b"c", b"def"], [b"ab", b"cd", b"e"], [b"", b""],
    [b"x"], [], [b"a" * 300, b"b" * 300],
])
def test_encode_batch_lists(values: list[bytes]) -> None:
    ts = np.arange(len(values), dtype=np.float64)
    frame = fmt.encode_batch(7, 1.5, 2, 3, ts, values)
    buf = memoryview(frame + bytes(4))
    fields = fmt.batch_fields(buf, 0, len(frame) - 8)
    assert fields is not None
    got_ts, got_values, width = fields
    assert got_ts.tolist() == ts.tolist()
    got = got_values.tolist() if isinstance(got_values, np.ndarray) else got_values
    assert got == values
    uniform = bool(values) and len(set(map(len, values))) == 1 and len(values[0]) > 0
    assert width == (len(values[0]) if uniform else 0)
    if uniform:
        array = np.array(values, dtype=f"V{width}")
        assert fmt.encode_batch(7, 1.5, 2, 3, ts, array) == frame
