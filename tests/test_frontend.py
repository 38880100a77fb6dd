"""Sync front-end behaviour beyond katsdptelstate's own tests."""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _waiting import DEADLINE

import telstate_log
from telstate_log import CancelledError, ImmutableKeyError, KeyType, TimeoutError
from telstate_log.backends import LogBackend, MemoryBackend


def test_constructor_forms(tmp_path: Path) -> None:
    assert isinstance(telstate_log.TelescopeState().backend, MemoryBackend)
    ts = telstate_log.TelescopeState(tmp_path / "log")  # a path opens a log
    assert isinstance(ts.backend, LogBackend)
    ts.add("k", 1.0, ts=1.0)
    ts.backend.close()
    with pytest.raises(ValueError):
        telstate_log.TelescopeState(tmp_path / "log2", db=1)
    with pytest.raises(ValueError):
        telstate_log.TelescopeState(MemoryBackend(), base=telstate_log.TelescopeState())


def test_get_range_arrays_and_bulk_decoding() -> None:
    ts = telstate_log.TelescopeState()
    for i in range(100):
        ts.add("f", i * 0.5, ts=float(i))
        ts.add("i", i, ts=float(i))
        ts.add("s", f"v{i % 3}", ts=float(i))
    times, values = ts.get_range_arrays("f", st=10, et=20)
    assert times.dtype == np.float64 and times.tolist() == [float(t) for t in range(10, 20)]
    assert values.dtype == np.float64 and values.tolist() == [t * 0.5 for t in range(10, 20)]
    _, ints = ts.get_range_arrays("i", st=0)
    assert ints.tolist() == list(range(100))
    _, strings = ts.get_range_arrays("s", st=98)
    assert strings == ["v2", "v0"]
    # the decoded list form agrees exactly with per-value decoding
    assert ts.get_range("f", st=0) == [(i * 0.5, float(i)) for i in range(100)]
    assert ts.get_range("s", st=0, return_encoded=True)[0] == (telstate_log.encode_value("v0"),
                                                               0.0)
    with pytest.raises(KeyError):
        ts.get_range_arrays("missing")
    ts["imm"] = 1
    with pytest.raises(ImmutableKeyError):
        ts.get_range_arrays("imm")


def test_mixed_width_values_in_one_sensor() -> None:
    """Values of changing length and prefix re-layout the column correctly."""
    ts = telstate_log.TelescopeState()
    values = [1.5, 2, "abc", 3.25, np.arange(3), None, -7, 2**40, "x" * 300]
    for i, v in enumerate(values):
        ts.add("mixed", v, ts=float(i))
    got = ts.get_range("mixed", st=0)
    assert [t for _, t in got] == [float(i) for i in range(len(values))]
    for (g, _), v in zip(got, values):
        if isinstance(v, np.ndarray):
            assert (g == v).all()
        else:
            assert g == v


def test_out_of_order_and_ties() -> None:
    ts = telstate_log.TelescopeState()
    rng = np.random.default_rng(3)
    samples = {(float(t), int(v)) for t, v in zip(rng.integers(0, 50, 500),
                                                  rng.integers(0, 5, 500))}
    for t, v in rng.permutation(sorted(samples)).tolist():
        ts.add("s", int(v), ts=float(t))
    got = ts.get_range("s", st=0, return_encoded=True)
    expected = sorted((t, telstate_log.encode_value(v)) for t, v in samples)
    assert [(t, e) for e, t in got] == expected
    assert ts.get("s") == telstate_log.decode_value(expected[-1][1])


def test_position_and_completions(tmp_path: Path) -> None:
    ts = telstate_log.TelescopeState(LogBackend(tmp_path / "log"))
    assert ts.position == 0
    ns = ts.view("ns")
    ns["a"] = 1
    ts["b"] = 2
    assert ts.position == 2 and ns.position == 2
    assert sorted(ns._ipython_key_completions_()) == ["a", "b", "ns_a"]
    with pytest.warns(FutureWarning):
        assert ts.is_immutable("b")
    assert ts.key_type("b") == KeyType.IMMUTABLE
    ts.backend.close()


def test_wait_key_timeout_and_cancel_future(monkeypatch: pytest.MonkeyPatch) -> None:
    ts = telstate_log.TelescopeState()
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        ts.wait_key("k", timeout=0.2)
    assert 0.15 < time.monotonic() - start < DEADLINE  # not early, and it does end
    # Record how long each wait for an update lasts (the monitor's send(timeout)), and
    # cancel during the third.
    waits: list[float | None] = []
    future: concurrent.futures.Future[None] = concurrent.futures.Future()
    monitor_keys = ts.backend.monitor_keys

    class RecordingMonitor:
        def __init__(self, keys: Any) -> None:
            self._monitor = monitor_keys(keys)

        def send(self, wait: float | None) -> Any:
            waits.append(wait)
            if len(waits) == 3:
                future.set_result(None)
            return self._monitor.send(wait)

        def close(self) -> None:
            self._monitor.close()

    monkeypatch.setattr(ts.backend, "monitor_keys", RecordingMonitor)
    with pytest.raises(CancelledError):
        ts.wait_key("k", cancel_future=future)
    assert len(waits) == 3 and waits[0] is None
    assert all(w is not None and w <= 0.1 for w in waits[1:])  # polled every 0.1 s, not 1 s
    monkeypatch.undo()
    threading.Timer(0.1, ts.add, ("k", 5.0)).start()
    ts.wait_key("k", lambda v, t: v == 5.0 and not math.isnan(t), timeout=DEADLINE)
