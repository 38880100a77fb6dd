"""Replay is linear in events and keys, whatever the number of keys.

Reopening used to be quadratic in the number of distinct keys: the replay
check evaluated a numpy mask over every (key, type) pair of a run once per
pair, and the batch apply made some 40 numpy calls per key (100 us each
key).  These tests count numpy's work instead of timing it (the figures are
in tools/bench_reopen.py): every array the replay decodes from a log is
made a :class:`Counted` array, whose numpy operations count themselves and
the elements they are given, and whose results are counted arrays too.  A
linear replay does about four times the work for four times the keys, and a
number of numpy calls that does not grow with the keys.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from telstate_log.backends import LogBackend
from telstate_log.core import _log_format as fmt
from telstate_log.core._apply import Applier, ReplayError, Tables
from telstate_log.core._encoding import encode_value
from telstate_log.core._sensor import SensorColumn
from telstate_log.core._state import State


class Counted(np.ndarray):  # type: ignore[type-arg]
    """An array whose numpy operations are counted (calls, input elements)."""

    calls = 0
    elements = 0

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, out: Any = None,
                        **kwargs: Any) -> Any:
        Counted.calls += 1
        Counted.elements += sum(x.size for x in inputs if isinstance(x, Counted))
        plain = [x.view(np.ndarray) if isinstance(x, Counted) else x for x in inputs]
        if out is not None:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, Counted) else o
                                  for o in out)
        result = getattr(ufunc, method)(*plain, **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _counted(result)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        Counted.calls += 1
        Counted.elements += sum(_sizes(a) for a in (*args, *kwargs.values()))
        return _counted(func(*_plain(args), **{k: _plain(v) for k, v in kwargs.items()}))


def _sizes(a: Any) -> int:
    if isinstance(a, Counted):
        return int(a.size)
    if isinstance(a, (list, tuple)):
        return sum(_sizes(x) for x in a)
    return 0


def _plain(a: Any) -> Any:
    if isinstance(a, Counted):
        return a.view(np.ndarray)
    if isinstance(a, (list, tuple)):
        return type(a)(_plain(x) for x in a)
    return a


def _counted(r: Any) -> Any:
    if isinstance(r, tuple):
        return tuple(_counted(x) for x in r)
    if type(r) is np.ndarray:
        return r.view(Counted)
    return r


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Decoded frames come as Counted arrays while the fixture is active."""
    decode = fmt.decode_frames

    def counted_decode(buf: memoryview, scan: fmt.Scan) -> fmt.Decoded:
        d = decode(buf, scan)
        return fmt.Decoded(*(np.asarray(a).view(Counted) for a in
                             (d.kinds, d.offsets, d.lengths, d.event, d.ts, d.counts)))

    monkeypatch.setattr(fmt, "decode_frames", counted_decode)
    yield


def one_sample_keys(path: Path, keys: int, *, batches: bool = False) -> None:
    """A log of `keys` keys with one sample each (ADD frames, or ADD_BATCH)."""
    with LogBackend(path, fsync="never", checkpoint_bytes=None) as b:
        for i in range(keys):
            key = b"sensor_%06d" % i
            value = encode_value(float(i)) if i % 3 else encode_value("v" * (i % 7))
            if batches:
                b.add_mutable_many(key, [value], [1e9 + i])
            else:
                b.add_mutable(key, value, 1e9 + i)


def replay(path: Path) -> tuple[State, int, int]:
    """Replay every segment of the log at `path`: (state, numpy calls, elements)."""
    state, tables = State(keep_history=True), Tables()
    replayer = Applier(state, tables)
    Counted.calls = Counted.elements = 0
    for seg in sorted(path.glob("*.seg")):
        data = seg.read_bytes()
        mv = memoryview(data)
        scan = fmt.scan_frames(mv, fmt.HEADER_SIZE, len(data),
                               zlib.crc32(mv[:fmt.HEADER_SIZE]))
        replayer.apply(mv, scan, segment=int(seg.name[:20]))
    return state, Counted.calls, Counted.elements


@pytest.mark.parametrize("batches", [False, True], ids=["ADD", "ADD_BATCH"])
def test_replay_work_is_linear_in_keys(tmp_path: Path, counting: None, batches: bool) -> None:
    """Four times the keys: about four times the numpy elements (not sixteen), and
    no more numpy calls (none per key)."""
    small, large = tmp_path / "small", tmp_path / "large"
    one_sample_keys(small, 500, batches=batches)
    one_sample_keys(large, 2000, batches=batches)
    state_s, calls_s, elements_s = replay(small)
    state_l, calls_l, elements_l = replay(large)
    assert len(state_s) == 500 and len(state_l) == 2000
    assert elements_s >= 500  # the counting sees the replay's work
    assert elements_l <= 4.5 * elements_s, (elements_s, elements_l)
    assert calls_l <= calls_s + 20, (calls_s, calls_l)
    for i in (0, 1, 3, 1999):  # and the keys hold their samples
        assert state_l.get(b"sensor_%06d" % i)[1] == 1e9 + i


def test_small_runs_of_many_keys_stay_linear(tmp_path: Path, counting: None) -> None:
    """Keys that already exist (the run after a DELETE) take the plain-Python
    path: no numpy calls per key either."""
    def write(path: Path, keys: int) -> None:
        with LogBackend(path, fsync="never", checkpoint_bytes=None) as b:
            for i in range(keys):
                b.add_mutable(b"k%06d" % i, encode_value(1.0), 1.0)
            b.set_immutable(b"gone", encode_value(0))
            b.delete(b"gone")  # the second run writes to existing keys
            for i in range(keys):
                b.add_mutable(b"k%06d" % i, encode_value(2.0), 2.0)
    small, large = tmp_path / "small", tmp_path / "large"
    write(small, 300)
    write(large, 1200)
    _, calls_s, elements_s = replay(small)
    state_l, calls_l, elements_l = replay(large)
    assert elements_l <= 4.5 * elements_s, (elements_s, elements_l)
    assert calls_l <= calls_s + 20, (calls_s, calls_l)
    column = state_l.sensor(b"k001199")
    assert column is not None and len(column) == 2


def test_bulk_columns_match_one_by_one_columns(tmp_path: Path) -> None:
    """Columns built together for many new keys hold what adding their samples
    one by one gives: values of every layout, out-of-order and repeated
    samples, and keys written by ADD and ADD_BATCH frames in the same run."""
    values = [encode_value(1.5), encode_value(2), encode_value("x"), encode_value("yy"),
              b"\xff\xcb" + bytes(8), b"\xfe\xcb" + bytes(8), b"\xff\xca" + bytes(8),
              encode_value(None), encode_value(300)]
    rng = np.random.default_rng(5)
    live = State(keep_history=True)
    path = tmp_path / "log"
    with LogBackend(path, fsync="never", checkpoint_bytes=None) as b:
        for i in range(400):
            key = b"key%03d" % (i % 160)
            v = values[int(rng.integers(len(values)))]
            t = float(rng.choice([0.0, -0.0, float(rng.integers(5)), 10.0 + i]))
            if i % 5 == 0:
                vs = [values[int(j)] for j in rng.integers(len(values), size=3)]
                b.add_mutable_many(key, vs, [t, t + 1, t + 0.5])
                live.add_mutable_batch(key, vs, np.array([t, t + 1, t + 0.5]))
            else:
                b.add_mutable(key, v, t)
                live.add_mutable(key, v, t)
    state, _, _ = replay(path)
    assert describe(state) == describe(live)


def describe(state: State) -> list[Any]:
    out: list[Any] = [state.position]
    for key, entry in sorted(state.items()):
        assert isinstance(entry, SensorColumn)
        entry.settle()
        n = len(entry)
        out.append((key, entry.created, entry.last, entry.timestamps().tolist(),
                    entry.values(0, n), entry.positions().tolist()))
    return out


def test_bulk_columns_copy_on_append(tmp_path: Path) -> None:
    """Replayed columns share read-only arrays: writing to one key copies its
    arrays and leaves its neighbours (and earlier snapshots) as they were."""
    path = tmp_path / "log"
    one_sample_keys(path, 100)
    with LogBackend(path, fsync="never", checkpoint_bytes=None) as b:
        before = b.get_range(b"sensor_000051", 0.0, math.inf, False, False)
        snap = b._state.sensor(b"sensor_000050").snapshot()  # type: ignore[union-attr]
        b.add_mutable(b"sensor_000050", encode_value(7.0), 2e9)
        b.add_mutable(b"sensor_000050", encode_value(8.0), 1.0)  # out of order
        assert b.get_range(b"sensor_000051", 0.0, math.inf, False, False) == before
        assert b.get_range(b"sensor_000050", 0.0, math.inf, False, False) == [
            (encode_value(8.0), 1.0), (encode_value(50.0), 1e9 + 50), (encode_value(7.0), 2e9)]
        assert snap["ts"].tolist() == [1e9 + 50]


def test_refused_run_of_many_new_keys_leaves_the_state(tmp_path: Path) -> None:
    """The all-or-nothing guarantee holds on the bulk path: a bad sample at the
    end of a run of many new keys leaves the state as the previous run left it."""
    path = tmp_path / "log"
    with LogBackend(path, fsync="never", checkpoint_bytes=None) as b:
        b.add_mutable(b"first", encode_value(1.0), 1.0)
        b.delete(b"first")  # the run of the many keys starts after this
        for i in range(200):
            b.add_mutable(b"key%03d" % i, encode_value(float(i)), 1.0 + i)
    seg = next(path.glob("*.seg"))
    data = bytearray(seg.read_bytes())
    # forge the last sample's timestamp (NaN), recomputing the chained CRCs
    offsets: list[int] = []
    off = fmt.HEADER_SIZE
    while off < len(data):
        offsets.append(off)
        off += 12 + int.from_bytes(data[off + 4:off + 8], "little")
    last = offsets[-1]
    data[last + 8 + fmt.EVENT_PREFIX:last + 16 + fmt.EVENT_PREFIX] = \
        np.array([math.nan]).tobytes()
    crc = zlib.crc32(data[:fmt.HEADER_SIZE])
    for o in offsets:
        end = o + 8 + int.from_bytes(data[o + 4:o + 8], "little")
        crc = zlib.crc32(data[o:end], crc)
        data[end:end + 4] = crc.to_bytes(4, "little")
        crc = zlib.crc32(data[end:end + 4], crc)
    mv = memoryview(bytes(data))
    scan = fmt.scan_frames(mv, fmt.HEADER_SIZE, len(mv), zlib.crc32(mv[:fmt.HEADER_SIZE]))
    state, tables = State(keep_history=True), Tables()
    with pytest.raises(ReplayError, match="bad timestamp"):
        Applier(state, tables).apply(mv, scan, segment=1)
    assert state.position == 2 and len(state) == 0  # after the DELETE: nothing of the run
