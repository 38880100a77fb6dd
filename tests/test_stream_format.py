"""The stream record format (pure): encoding, decoding, malformed records, applying."""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest

from telstate_log import StreamCorruptError, StreamDivergedError
from telstate_log.core import _log_format as fmt
from telstate_log.core._events import ADD, ADD_BATCH, CLEAR, DELETE, IMMUTABLE, INDEXED, SESSION
from telstate_log.core._state import State
from telstate_log.core._stream_apply import apply_record, session_of
from telstate_log.core._stream_format import (
    HEAD_FORMAT,
    StreamRecord,
    add_tail,
    batch_samples,
    batch_tail,
    decode_record,
    entry_id,
    indexed_tail,
    parse_entry_id,
)

HEAD = struct.Struct(HEAD_FORMAT.replace("I4", "I"))


def body(kind: int, key: bytes, tail: bytes, rec: float = 100.0, session: int = 1) -> bytes:
    return HEAD.pack(kind, rec, session, len(key)) + key + tail


def test_entry_ids_round_trip() -> None:
    assert entry_id(42) == b"42-0"
    assert entry_id(42, 3) == b"42-3"
    assert parse_entry_id(b"42-3") == (42, 3)
    assert parse_entry_id("7-0") == (7, 0)


def test_tails_are_the_segment_frame_bodies_after_the_prefix() -> None:
    """A record's tail is exactly what a segment frame holds after its 24-byte prefix."""
    for kind, sub_key, value, ts, tail in [
            (IMMUTABLE, b"", b"\xff\x01", 0.0, b"\xff\x01"),
            (ADD, b"", b"\xff\x02", 12.5, add_tail(b"\xff\x02", 12.5)),
            (INDEXED, b"sub", b"\xff\x03", 0.0, indexed_tail(b"sub", b"\xff\x03"))]:
        frame = fmt.encode_event(kind, 9, 1.0, 2, 3, sub_key, value, ts)
        assert frame[8 + fmt.EVENT_PREFIX:] == tail
    ts = np.array([1.0, 2.0, 3.0])
    values = [b"\xff\x01", b"\xff\x02\x03", b"\xff"]
    frame = fmt.encode_batch(9, 1.0, 2, 3, ts, values)
    assert frame[8 + fmt.EVENT_PREFIX:] == batch_tail(ts, values)


def test_decode_each_kind() -> None:
    rec = decode_record(b"5-0", body(ADD, b"s", add_tail(b"\xff\x07", 3.0), rec=7.5, session=4))
    assert (rec.position, rec.seq, rec.kind, rec.recorded, rec.session, rec.key) == \
        (5, 0, ADD, 7.5, 4, b"s")
    [event] = rec.events()
    assert (event.kind, event.value, event.timestamp, event.position) == \
        ("add", b"\xff\x07", 3.0, 5)
    rec = decode_record(b"6-0", body(INDEXED, b"t", indexed_tail(b"ab", b"\xff\x01")))
    [event] = rec.events()
    assert (event.kind, event.sub_key, event.value) == ("set_indexed", b"ab", b"\xff\x01")
    rec = decode_record(b"8-0", body(CLEAR, b"", b""))
    assert [e.kind for e in rec.events()] == ["clear"] and rec.events()[0].key is None
    info = {"source": "x", "pid": 3}
    rec = decode_record(b"8-1", body(SESSION, b"", msgpack.packb(info), session=9))
    assert rec.events() == [] and rec.session == 9 and session_of(rec) == info


def test_batches_cover_consecutive_positions() -> None:
    ts = np.array([1.0, 2.0])
    rec = decode_record(b"10-0", body(ADD_BATCH, b"s", batch_tail(ts, [b"\xff\x01", b"\xff\x02"])))
    assert rec.last == 11
    assert [(e.position, e.timestamp, e.value) for e in rec.events()] == \
        [(10, 1.0, b"\xff\x01"), (11, 2.0, b"\xff\x02")]
    fixed = struct.pack("<II", 2, 2) + ts.astype("<f8").tobytes() + b"\xff\x01\xff\x02"
    stamps, values = batch_samples(fixed)
    assert stamps.tolist() == [1.0, 2.0] and values == [b"\xff\x01", b"\xff\x02"]


@pytest.mark.parametrize("ident, data", [
    (b"1-0", b"\x02"),                                              # shorter than a head
    (b"1-0", HEAD.pack(99, 1.0, 1, 0)),                             # unknown kind
    (b"1-0", HEAD.pack(IMMUTABLE, 1.0, 1, 50) + b"k"),              # key longer than record
    (b"1-0", HEAD.pack(ADD, 1.0, 1, 1) + b"s" + b"\x00" * 4),       # ADD tail cut short
    (b"1-2", HEAD.pack(ADD, 1.0, 1, 1) + b"s" + add_tail(b"v", 1.0)),  # event with a session ID
    (b"1-0", HEAD.pack(SESSION, 1.0, 1, 0) + msgpack.packb({})),    # session with an event ID
])
def test_malformed_records_raise_a_typed_error(ident: bytes, data: bytes) -> None:
    with pytest.raises(StreamCorruptError):
        decode_record(ident, data)


@pytest.mark.parametrize("tail", [
    struct.pack("<II", 3, 0) + b"\x00" * 8,                         # timestamps cut short
    struct.pack("<II", 1, 0) + struct.pack("<d", 1.0) + struct.pack("<I", 9) + b"v",
    struct.pack("<II", 2, 3) + b"\x00" * 16 + b"abcde",             # fixed width not filled
])
def test_malformed_batches_raise_a_typed_error(tail: bytes) -> None:
    with pytest.raises(StreamCorruptError):
        batch_samples(tail)


def _record(pos: int, kind: int, key: bytes, tail: bytes) -> StreamRecord:
    return decode_record(entry_id(pos), body(kind, key, tail))


def test_apply_builds_the_state_the_events_describe() -> None:
    state = State(keep_history=True)
    apply_record(state, _record(1, IMMUTABLE, b"a", b"\xff\x01"))
    apply_record(state, _record(2, ADD_BATCH, b"s", batch_tail(np.array([1.0, 2.0]),
                                                                [b"\xff\x01", b"\xff\x02"])))
    apply_record(state, _record(4, INDEXED, b"t", indexed_tail(b"x", b"\xff\x05")))
    apply_record(state, _record(5, DELETE, b"a", b""))
    assert state.position == 5
    assert sorted(state.keys(b"*")) == [b"s", b"t"]
    assert state.get_range(b"s", 0.0, np.inf, False, False) == \
        [(b"\xff\x01", 1.0), (b"\xff\x02", 2.0)]
    # a delete or clear of keys the state never saw (written by clients that
    # bypassed the shared log) still moves the position on
    apply_record(state, _record(6, DELETE, b"unknown", b""))
    apply_record(state, _record(7, CLEAR, b"", b""))
    apply_record(state, _record(8, CLEAR, b"", b""))
    assert state.position == 8 and state.keys(b"*") == []


def test_apply_refuses_gaps_reused_positions_and_contradictions() -> None:
    state = State()
    apply_record(state, _record(1, IMMUTABLE, b"a", b"\xff\x01"))
    with pytest.raises(StreamDivergedError) as gap:
        apply_record(state, _record(3, IMMUTABLE, b"b", b"\xff\x01"))
    assert gap.value.position == 3 and "missing" in str(gap.value)
    with pytest.raises(StreamDivergedError, match="reuses"):
        apply_record(state, _record(1, IMMUTABLE, b"b", b"\xff\x01"))
    with pytest.raises(StreamDivergedError, match="contradicts"):
        apply_record(state, _record(2, ADD, b"a", add_tail(b"\xff\x02", 1.0)))
    assert state.position == 1


def test_apply_moves_on_past_writes_the_state_already_reflects() -> None:
    """A repeat (a bypassing delete not yet recorded, then the same write again)
    changes nothing and moves the position on, as the archive's copier does."""
    state = State(keep_history=True)
    apply_record(state, _record(1, IMMUTABLE, b"a", b"\xff\x01"))
    apply_record(state, _record(2, ADD, b"s", add_tail(b"\xff\x02", 1.0)))
    apply_record(state, _record(3, IMMUTABLE, b"a", b"\xff\x01"))
    apply_record(state, _record(4, ADD, b"s", add_tail(b"\xff\x02", 1.0)))
    apply_record(state, _record(5, ADD_BATCH, b"s", batch_tail(np.array([1.0, 2.0]),
                                                                [b"\xff\x02", b"\xff\x03"])))
    assert state.position == 6
    assert state.get(b"a")[0] == b"\xff\x01"
    assert state.get_range(b"s", 0.0, np.inf, False, False) == \
        [(b"\xff\x02", 1.0), (b"\xff\x03", 2.0)]
