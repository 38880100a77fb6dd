"""Values for people: numpy's layout at numpy's speed, and ``get`` of large arrays.

numpy's own repr of a whole large array takes time that grows faster than the
array (about 10 s for 100,000 floats), so ``get`` lays large arrays out
itself (:func:`format_array`) and, on a terminal, prints numpy's summary.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_cli import cli

from telstate_log import TelescopeState
from telstate_log.backends import LogBackend
from telstate_log.cli._output import SUMMARY_THRESHOLD, format_array, value_repr, value_text

BIG = 100_000
# Numpy names used by the reprs, for evaluating them back into arrays.
NAMES = {"array": np.array, "nan": np.nan, "inf": np.inf, "float32": np.float32,
         "float16": np.float16, "int16": np.int16, "uint8": np.uint8, "complex64": np.complex64}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and \
        bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


@pytest.mark.parametrize("array", [
    np.arange(1500),
    np.arange(2400).reshape(2, 3, 400) - 1000,
    np.arange(1200) % 3 == 0,
    np.arange(1100, dtype=np.int16),
    np.arange(1001, dtype=">i4"),
    np.array(["a", "bb"] * 600),
    np.array([b"a", b"b" * 40] * 600),
    np.zeros(1100, dtype=[("a", "<i4"), ("b", "S2")]),
    np.arange(1100).astype("M8[D]"),
    np.random.default_rng(1).integers(-10**12, 10**12, size=(7, 11, 13, 3)),
])
def test_format_array_is_numpys_layout(array: np.ndarray) -> None:
    with np.printoptions(threshold=sys.maxsize):
        assert format_array(array) == repr(array)


@pytest.mark.parametrize("array", [
    np.random.default_rng(2).normal(size=5000),
    np.random.default_rng(3).normal(size=(40, 50)).astype(np.float32),
    np.array([np.nan, np.inf, -np.inf, 1e300, -5e-324, 0.1] * 200, dtype=np.float64),
    np.arange(1200, dtype=np.float16),
    (np.arange(1500) * (1 + 1j)).astype(np.complex64) / 3,
    np.array([complex(np.nan, 1), complex(2, -3.5)] * 600),
])
def test_format_array_floats_round_trip_exactly(array: np.ndarray) -> None:
    """Floats are written in their shortest exact form (numpy's repr keeps 8 digits)."""
    text = format_array(array)
    back = eval(text, dict(NAMES))
    assert _same(np.asarray(back, dtype=array.dtype), array)
    assert all(len(line) <= 75 for line in text.splitlines())


def test_value_repr_full_and_summary() -> None:
    big = np.arange(BIG, dtype=np.float64) / 8
    value = {("m000", "h"): big, "small": np.arange(3), "t": (big[:2],)}
    text = value_repr(value)
    assert text.startswith("{('m000', 'h'): array([      0.0,     0.125,      0.25,")
    assert text.count("\n") > BIG / 10
    assert text.endswith("'small': array([0, 1, 2]), 't': (array([0.   , 0.125]),)}")
    back = eval(text, dict(NAMES))
    assert _same(back[("m000", "h")], big)
    summary = value_repr(big, summary=True)
    assert len(summary) < 200 and summary.count("...") == 1
    assert summary.startswith("array([0.0000000e+00, 1.2500000e-01, 2.5000000e-01, ...,")
    assert summary.endswith(f"shape=({BIG},))")
    assert value_repr(np.arange(SUMMARY_THRESHOLD), summary=True) == \
        repr(np.arange(SUMMARY_THRESHOLD))
    assert value_text(big).count("...") == 1  # tables always summarise


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("bigvalues") / "log"
    with LogBackend(path) as backend:
        ts = TelescopeState(backend)
        ts["bandpass"] = np.random.default_rng(4).normal(size=BIG)
        ts["tiny"] = np.arange(4, dtype=np.float32)
    return str(path)


def _terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)


def test_get_summarises_a_large_array_on_a_terminal(
        log: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    capsys.readouterr()
    _terminal(monkeypatch)
    rc, out, err = cli(capsys, "get", log, "bandpass")
    assert rc == 0
    array = np.random.default_rng(4).normal(size=BIG)
    assert len(out) < 300 and f"shape=({BIG},)" in out and "..." in out
    first, last = np.format_float_positional(array[0], 8), f"{array[-1]:.8f}"
    assert first.lstrip("-")[:6] in out and last.lstrip("-")[:6] in out
    assert err == (f"(float64 array of shape ({BIG},) summarised: --full prints every "
                   "element, --json gives them as data)\n")
    rc, out, err = cli(capsys, "get", log, "tiny")  # small arrays: as before, no note
    assert (rc, out, err) == (0, "array([0., 1., 2., 3.], dtype=float32)\n", "")


def test_get_full_prints_every_element(log: str, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    array = np.random.default_rng(4).normal(size=BIG)
    for terminal in (False, True):
        if terminal:
            _terminal(monkeypatch)
        args: Any = ("--full",) if terminal else ()  # a pipe gets everything anyway
        rc, out, err = cli(capsys, "get", log, "bandpass", *args)
        assert rc == 0 and err == ""
        assert _same(eval(out, dict(NAMES)), array)


def test_get_json_of_a_large_array(log: str, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import json

    _terminal(monkeypatch)
    _, out, _ = cli(capsys, "get", log, "bandpass", "--json")
    value = json.loads(out)["value"]
    assert value["shape"] == [BIG] and value["dtype"] == "<f8"
    assert np.array_equal(np.array(value["data"]), np.random.default_rng(4).normal(size=BIG))
