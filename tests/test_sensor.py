"""SensorColumn against a sorted-set model: layouts, batches, ordering, views."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from telstate_log.core._sensor import FIXED_WIDTH_MAX, SensorColumn
from telstate_log.core._sensor_range import SensorRange

# Values chosen to exercise the layouts: same width and prefix (fixed), same
# width but another prefix (prefix shrink), other widths (switch to var),
# 1-byte values (var from the start).
VALUES = [b"\xff\xcb" + bytes([i]) * 8 for i in range(4)] + \
    [b"\xff\xca" + bytes(8), b"\xfe\xcb" + bytes(8), b"\xff\x01", b"x", b"\xff\xa3abc"]
values = st.sampled_from(VALUES)
times = st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0, 3.0, 7.5])
ops = st.lists(st.one_of(
    st.tuples(st.just("add"), times, values),
    st.tuples(st.just("batch"), st.lists(st.tuples(times, values), min_size=1, max_size=6),
              st.booleans()),
), min_size=1, max_size=40)


def run(seq: list[tuple[object, ...]]
        ) -> tuple[SensorColumn | None, list[tuple[float, bytes, int]]]:
    """Apply ops to a column and to a model; returns both (model: sorted, with positions)."""
    col: SensorColumn | None = None
    model: dict[tuple[float, bytes], int] = {}
    pos = 0
    for op in seq:
        if op[0] == "add":
            samples = [(op[1], op[2])]
            as_array = False
        else:
            samples = list(op[1])  # type: ignore[arg-type]
            as_array = bool(op[2])
        new = []
        for t, v in samples:
            if (t, v) not in model and (t, v) not in {(a, b) for a, b in new}:
                new.append((t, v))
        if not new:
            continue
        ts = np.array([t for t, _ in new])
        vals = [v for _, v in new]
        positions = np.arange(pos + 1, pos + 1 + len(new))
        if col is None:
            col = SensorColumn(pos + 1, vals[0])
        widths = {len(v) for v in vals}
        batch: object = vals
        if as_array and len(widths) == 1:
            batch = np.array(vals, dtype=f"V{widths.pop()}")
        if not col.extend_sorted(ts, batch, positions):  # type: ignore[arg-type]
            for (t, v), p in zip(new, positions.tolist()):
                assert not col.contains(t, v)
                col.add(t, v, p)
        for (t, v), p in zip(new, positions.tolist()):
            model[(t, v)] = p
        pos += len(new)
    return col, sorted((t, v, p) for (t, v), p in model.items())


@settings(max_examples=300, deadline=None)
@given(seq=ops)
def test_column_matches_model(seq: list[tuple[object, ...]]) -> None:
    col, model = run(seq)
    if col is None:
        return
    col.settle()
    n = len(col)
    assert n == len(model)
    assert col.timestamps().tolist() == [t for t, _, _ in model]
    assert col.values(0, n) == [v for _, v, _ in model]
    assert col.positions().tolist() == [p for _, _, p in model]
    assert col.last == (model[-1][1], model[-1][0])
    for t, v, _ in model:
        assert col.contains(t, v)
    # A range's encoded values and floats agree with per-sample values.
    rng = SensorRange(col, 0, n)
    assert rng.encoded() == [v for _, v, _ in model]
    floats = rng.floats()
    if floats is not None:
        assert floats.tolist() == [np.frombuffer(v[2:], ">f8")[0] for _, v, _ in model]
    # Views up to every position show exactly the samples added by then.
    for upto in range(max(p for _, _, p in model) + 1):
        view = col.upto(upto)
        expected = [(t, v) for t, v, p in model if p <= upto]
        if not expected:
            assert view is None
            continue
        assert view is not None
        assert list(zip(view.timestamps().tolist(), view.values(0, len(view)))) == expected
    # Snapshots round-trip.
    again = SensorColumn.from_snapshot(col.snapshot())
    assert again.values(0, len(again)) == col.values(0, n)
    assert again.positions().tolist() == col.positions().tolist()


def test_batches_of_mixed_width_values() -> None:
    """A batch whose values change width moves a fixed column to the var layout."""
    vals = [b"\xff\xa5" + b"a" * i for i in (300, 12, 5, 200)]
    col = SensorColumn(1, vals[0])
    assert col.extend_sorted(np.array([1.0, 2.0, 3.0, 4.0]), vals, np.arange(1, 5))
    assert col.values(0, 4) == vals and not col.is_fixed


def test_one_byte_first_value() -> None:
    col = SensorColumn(1, b"x")
    col.add(1.0, b"x", 1)
    col.add(2.0, b"\xff\xcb" + bytes(8), 2)
    assert col.values(0, 2) == [b"x", b"\xff\xcb" + bytes(8)]


def test_memory_per_float_sample() -> None:
    col = SensorColumn(1, b"\xff\xcb" + bytes(8))
    n = 100_000
    vals = np.zeros(n, "V8")
    col.extend_sorted(np.arange(n, dtype=np.float64), vals, np.arange(1, n + 1), b"\xff\xcb")
    # 8 bytes timestamp + 8 bytes value + 4 bytes position, plus growth slack
    assert col.nbytes() <= n * 20 * 1.3


def test_huge_values_take_the_var_layout() -> None:
    """A value above FIXED_WIDTH_MAX starts a var column: no room reserved for 16 of them."""
    big = [b"\xff\x93" + bytes([i]) * FIXED_WIDTH_MAX for i in range(3)]
    col = SensorColumn(1, big[0])
    assert not col.is_fixed
    col.add(1.0, big[0], 1)
    assert col.extend_sorted(np.array([2.0, 3.0]), np.array(big[1:], f"V{len(big[0])}"),
                             np.arange(2, 4))
    assert col.values(0, 3) == big and col.positions().tolist() == [1, 2, 3]
    assert col.nbytes() < 4 * len(big[0])
    again = SensorColumn.from_snapshot(col.snapshot())
    assert again.values(0, 3) == big and "list" in col.snapshot()
    # at the limit the fixed layout still applies
    assert SensorColumn(1, b"\xff\x93" + bytes(FIXED_WIDTH_MAX - 2)).is_fixed


def test_fixed_column_of_huge_values_converts_when_it_grows() -> None:
    """A fixed column of huge values (built in bulk, or from an older checkpoint) moves
    to the var layout the first time it grows; views taken before are unaffected."""
    width = FIXED_WIDTH_MAX + 8
    raw = np.frombuffer(bytes(range(2)) * (width - 2), np.uint8).reshape(2, width - 2)
    snap = {"created": 1, "pos_base": 1, "ts": np.array([1.0, 2.0]),
            "pos": np.array([0, 1], np.uint32), "prefix": b"\xff\x93",
            "vals": raw.view(f"V{width - 2}").reshape(2)}
    col = SensorColumn.from_snapshot(snap)
    assert col.is_fixed
    before = col.upto(2)
    old = col.values(0, 2)
    new = b"\xff\x93" + b"\x07" * (width - 2)
    col.add(3.0, new, 3)
    assert not col.is_fixed
    assert col.values(0, 3) == [*old, new]
    assert col.nbytes() < 5 * width
    assert before is not None and before.values(0, 2) == old
