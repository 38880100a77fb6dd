"""Random front-end operation sequences: telstate_log against katsdptelstate.

The same sequence of calls (through views, with deletes, clears, immutables,
indexed keys and out-of-order timestamps) runs on katsdptelstate's
TelescopeState (the oracle) and on ours over the memory and log backends.
Every result and every error class must match; the log is then closed,
reopened (replayed) and its whole state compared again.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

katsdptelstate = pytest.importorskip("katsdptelstate")

import telstate_log  # noqa: E402
from telstate_log.backends import LogBackend, MemoryBackend  # noqa: E402

pytestmark = pytest.mark.interop
_counter = itertools.count()

views = st.sampled_from([(), ("ns",), ("ns", "sub"), ("other",)])
keys = st.sampled_from(["a", "b", "ns_a", "sub_b"])
values = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, 1.5, "x", "yy", b"z", (1, 2),
                                                        None, True, [1, 2]]))
times = st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.0, 3.0, 1e9, 5e-324, 1e-300])
bounds = st.one_of(st.none(), times, st.sampled_from([-1.0, math.inf, -0.0]))
calls = st.lists(st.one_of(
    st.tuples(st.just("add"), views, keys, values, times),
    st.tuples(st.just("add"), views, keys, values, times),
    st.tuples(st.just("add_now"), views, keys, values),
    st.tuples(st.just("set"), views, keys, values),
    st.tuples(st.just("set_indexed"), views, keys, st.sampled_from(["i", 1, (2, 3)]), values),
    st.tuples(st.just("get"), views, keys),
    st.tuples(st.just("get_indexed"), views, keys, st.sampled_from(["i", 1, (2, 3)])),
    st.tuples(st.just("get_range"), views, keys, bounds, bounds,
              st.sampled_from([None, True, False]), st.booleans()),
    st.tuples(st.just("key_type"), views, keys),
    st.tuples(st.just("exists"), views, keys),
    st.tuples(st.just("delete"), views, keys),
    st.tuples(st.just("clear"),),
    st.tuples(st.just("keys"), st.sampled_from(["*", "ns_*", "?", "[ab]"])),
), max_size=40)


def view(ts: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        ts = ts.view(name)
    return ts


def run(ts: Any, call: tuple[Any, ...]) -> Any:
    name = call[0]
    if name == "clear":
        return ts.clear()
    if name == "keys":
        return ts.keys(call[1])
    v = view(ts, call[1])
    if name == "add":
        return v.add(call[2], call[3], ts=call[4])
    if name == "add_now":
        return v.add(call[2], call[3], ts=1234.5)
    if name == "set":
        return v.add(call[2], call[3], immutable=True)
    if name == "set_indexed":
        return v.set_indexed(call[2], call[3], call[4])
    if name == "get":
        return v.get(call[2])
    if name == "get_indexed":
        return v.get_indexed(call[2], call[3])
    if name == "get_range":
        return v.get_range(call[2], st=call[3], et=call[4], include_previous=call[5],
                           include_end=call[6])
    if name == "key_type":
        kt = v.key_type(call[2])
        return None if kt is None else kt.name
    if name == "exists":
        return call[2] in v
    if name == "delete":
        return v.delete(call[2])
    raise AssertionError(name)


def outcome(ts: Any, call: tuple[Any, ...]) -> tuple[str, Any]:
    try:
        return "ok", run(ts, call)
    except Exception as exc:  # compare error classes by name (ours mirror katsdptelstate's)
        return "error", type(exc).__name__ if not isinstance(exc, KeyError) else "KeyError"


def normalise(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return ("array", x.tolist())
    if isinstance(x, list):
        return [normalise(i) for i in x]
    if isinstance(x, tuple):
        return tuple(normalise(i) for i in x)
    if isinstance(x, dict):
        return {k: normalise(v) for k, v in x.items()}
    return x


def whole_state(ts: Any) -> Any:
    out = {}
    for key in ts.keys():  # noqa: SIM118 - TelescopeState.keys, not a dict
        kt = ts.key_type(key).name
        if kt == "MUTABLE":
            out[key] = (kt, normalise(ts.get_range(key, st=0)))
        else:
            out[key] = (kt, normalise(ts.get(key)))
    return out


@pytest.mark.parametrize("kind", ["memory", "log"])
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=calls)
def test_same_results_as_katsdptelstate(kind: str, seq: list[tuple[Any, ...]],
                                        tmp_path: Path) -> None:
    oracle = katsdptelstate.TelescopeState()
    if kind == "memory":
        ours = telstate_log.TelescopeState(MemoryBackend())
        backend = None
    else:
        backend = LogBackend(tmp_path / f"log{next(_counter)}", fsync="never",
                             segment_bytes=4096)
        ours = telstate_log.TelescopeState(backend)
    try:
        for call in seq:
            want = outcome(oracle, call)
            got = outcome(ours, call)
            assert normalise(got) == normalise(want), call
        expected = whole_state(oracle)
        assert whole_state(ours) == expected
        if backend is not None:
            backend.close()
            backend = LogBackend(backend.path, fsync="never")
            assert whole_state(telstate_log.TelescopeState(backend)) == expected
    finally:
        if backend is not None:
            backend.close()
