"""Time travel and audit: as-of views, history, changes (issue: bitemporal queries)."""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from _model import Model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import telstate_log
from telstate_log import HistoryUnavailableError, ImmutableKeyError, ReadOnlyError
from telstate_log.backends import LogBackend, MemoryBackend
from telstate_log.core._encoding import encode_value

_counter = itertools.count()

keys = st.sampled_from([b"a", b"b", b"c"])
values = st.sampled_from([b"\xff\x01", b"\xff\x02", b"\xff\xa1z", b"\xff\xcb" + bytes(8)])
times = st.sampled_from([0.0, 1.0, 2.0, 2.0, 3.0, 0.5])
ops = st.lists(st.one_of(
    st.tuples(st.just("set"), keys, values),
    st.tuples(st.just("add"), keys, values, times),
    st.tuples(st.just("add"), keys, values, times),
    st.tuples(st.just("idx"), keys, values, values),
    st.tuples(st.just("many"), keys, st.lists(st.tuples(values, times), max_size=4)),
    st.tuples(st.just("delete"), keys),
    st.tuples(st.just("clear")),
), max_size=40)


def whole(b: Any) -> dict[bytes, Any]:
    out = {}
    for key in sorted(b.keys(b"*")):
        kt = b.key_type(key)
        kind = kt if isinstance(kt, str) else kt.name
        if kind == "MUTABLE":
            out[key] = (kind, b.get_range(key, 0.0, math.inf, False, False))
        else:
            out[key] = (kind, b.get(key))
    return out


class Recorder:
    """Applies ops to a log and a model; remembers the model after every event
    and which events changed which key."""

    def __init__(self, backend: LogBackend) -> None:
        self.b = backend
        self.model = Model()
        self.states: dict[int, dict[bytes, Any]] = {0: {}}
        self.changed: dict[bytes, list[tuple[int, str]]] = {}

    def note(self, key: bytes | None, kind: str) -> None:
        pos = self.b.position
        if key is None:  # clear: changes every key that existed
            for k in self.states[pos - 1]:
                self.changed.setdefault(k, []).append((pos, kind))
        else:
            self.changed.setdefault(key, []).append((pos, kind))
        self.states[pos] = whole(self.model)

    def run(self, op: tuple[Any, ...]) -> None:
        b, m = self.b, self.model
        name = op[0]
        try:
            if name == "set":
                if m.set_immutable(op[1], op[2]) is None:
                    b.set_immutable(op[1], op[2])
                    self.note(op[1], "set")
            elif name == "add":
                if m.add_mutable(op[1], op[2], op[3]):
                    b.add_mutable(op[1], op[2], op[3])
                    self.note(op[1], "add")
            elif name == "idx":
                if m.set_indexed(op[1], op[2], op[3]) is None:
                    b.set_indexed(op[1], op[2], op[3])
                    self.note(op[1], "set_indexed")
            elif name == "many":
                for v, t in op[2]:
                    if m.add_mutable(op[1], v, t):
                        b.add_mutable_many(op[1], [v], [t])
                        self.note(op[1], "add")
            elif name == "delete":
                if m.delete(op[1]):
                    b.delete(op[1])
                    self.note(op[1], "delete")
            elif m.clear():
                b.clear()
                self.note(None, "clear")
        except ImmutableKeyError:
            with pytest.raises(ImmutableKeyError):
                self.replay_error(op)

    def replay_error(self, op: tuple[Any, ...]) -> None:
        b = self.b
        if op[0] == "set":
            b.set_immutable(op[1], op[2])
        elif op[0] == "add":
            b.add_mutable(op[1], op[2], op[3])
        elif op[0] == "idx":
            b.set_indexed(op[1], op[2], op[3])
        elif op[0] == "many":
            b.add_mutable_many(op[1], [v for v, _ in op[2]], [t for _, t in op[2]])


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=ops)
def test_as_of_equals_prefix_replay_and_history_is_exact(seq: list[Any], tmp_path: Path) -> None:
    clock = iter(itertools.count(1000))
    with mock.patch("telstate_log.storage._event_writer._time", lambda: float(next(clock))):
        b = LogBackend(tmp_path / f"log{next(_counter)}", fsync="never", segment_bytes=4096)
        rec = Recorder(b)
        for op in seq:
            rec.run(op)
    try:
        for reopen in (False, True):
            if reopen:
                b.checkpoint()
                b.close()
                b = LogBackend(b.path, fsync="never")
            for n, expected in rec.states.items():
                view = b.as_of(position=n)
                assert view.position == n
                assert whole(view) == expected, n
            # Recorded times are 1000, 1001, ... (distinct): times resolve exactly.
            events = b.events(1, b.position)
            for ev in events:
                assert b.resolve_time(ev.recorded) == ev.position
                assert b.resolve_time(ev.recorded + 0.5) == ev.position
            assert b.resolve_time(0.0) == 0
            for key, changed in rec.changed.items():
                hist = b.history(key)
                assert [(e.position, e.kind) for e in hist] == changed, key
                assert all(e.key in (None, key) for e in hist)
    finally:
        b.close()


def test_front_end_as_of_views(tmp_path: Path) -> None:
    ts = telstate_log.TelescopeState(LogBackend(tmp_path / "log", source="observer"))
    ns = ts.view("m001")
    ns["name"] = "m001"
    for i in range(5):
        ns.add("pos", float(i), ts=100.0 + i)
    ns.add("pos", -1.0, ts=50.0)  # arrives late, valid long ago
    ts.delete("m001_name")
    assert ts.position == 8
    before_late = ts.as_of(position=6)
    assert before_late.position == 6
    assert before_late.view("m001").get_range("pos", st=0)[0] == (0.0, 100.0)
    after_late = ts.as_of(position=7)
    assert after_late.view("m001").get_range("pos", st=0)[0] == (-1.0, 50.0)
    assert ts.get("m001_name") is None
    assert after_late.view("m001")["name"] == "m001"  # deleted later: visible as it was
    with pytest.raises(ReadOnlyError):
        after_late.add("x", 1)
    with pytest.raises(ReadOnlyError):
        after_late["y"] = 1
    with pytest.raises(ValueError):
        ts.as_of(position=9)
    hist = ns.history("pos")
    assert [e.position for e in hist] == [2, 3, 4, 5, 6, 7]
    assert hist[-1].value == -1.0 and hist[-1].timestamp == 50.0
    assert {e.source for e in hist} == {"observer"}
    assert [e.kind for e in ts.history("m001_name")] == ["set", "delete"]
    audit = ts.audit(2, 3)
    assert [(e.position, e.key) for e in audit] == [(2, "m001_pos"), (3, "m001_pos")]
    t0 = audit[0].recorded
    assert ts.as_of(time=t0).position >= 2
    changes = ts.changes(1)
    assert changes.samples_added == {"m001_pos": 6}
    assert changes.keys_deleted == ["m001_name"] and changes.keys_added == ["m001_pos"]
    ts.backend.close()


def test_indexed_sub_key_history(tmp_path: Path) -> None:
    ts = telstate_log.TelescopeState(LogBackend(tmp_path / "log"))
    ts.set_indexed("cal", ("m001", "h"), 1.5)
    ts.set_indexed("cal", ("m002", "h"), 2.5)
    ts.set_indexed("cal", ("m001", "h"), 1.5)  # no-op: not in history
    ts.clear()
    assert [(e.kind, e.sub_key) for e in ts.history("cal", ("m001", "h"))] == \
        [("set_indexed", ("m001", "h")), ("clear", None)]
    assert [e.kind for e in ts.history("cal")] == ["set_indexed", "set_indexed", "clear"]
    assert ts.as_of(position=1).get("cal") == {("m001", "h"): 1.5}
    ts.backend.close()


def test_memory_backend_has_no_history() -> None:
    ts = telstate_log.TelescopeState(MemoryBackend())
    ts.add("k", 1)
    with pytest.raises(HistoryUnavailableError):
        ts.as_of(position=1)
    with pytest.raises(HistoryUnavailableError):
        ts.history("k")
    with pytest.raises(HistoryUnavailableError):
        ts.as_of(time=0.0)


def test_as_of_is_a_snapshot(tmp_path: Path) -> None:
    """Writes after a view is made (even out of order) never show in it."""
    b = LogBackend(tmp_path / "log")
    for i in range(10):
        b.add_mutable(b"s", encode_value(i), float(i))
    view = b.as_of(position=10)
    assert len(view.get_range(b"s", 0.0, math.inf, False, False)) == 10
    b.add_mutable(b"s", encode_value(99), 100.0)
    b.add_mutable(b"s", encode_value(-1), -0.0 + 0.5)  # out of order
    assert len(view.get_range(b"s", 0.0, math.inf, False, False)) == 10
    assert view.get(b"s") == (encode_value(9), 9.0)
    b.delete(b"s")
    assert view.key_type(b"s") is not None
    late = b.as_of(position=12)
    assert late.get_range(b"s", 0.0, 1.0, False, False) == [(encode_value(0), 0.0),
                                                            (encode_value(-1), 0.5)]
    b.close()


def test_copy_of_states_is_independent() -> None:
    # (guards the Recorder: whole() must return fresh structures)
    m = Model()
    m.add_mutable(b"k", b"\xff\x01", 1.0)
    snap = whole(m)
    m.add_mutable(b"k", b"\xff\x02", 2.0)
    assert snap != whole(m) and copy.deepcopy(snap) == snap
