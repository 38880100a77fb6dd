"""Zsets given as fixed-width columns: the same bytes and the same checks as the
packed members they stand for."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from telstate_log.rdb._format import member_problem, pack_member
from telstate_log.rdb._writer import RdbWriter
from telstate_log.rdb._zset_columns import ColumnMembers, column_members_problem, column_zset_body


def _members(cols: ColumnMembers) -> list[bytes]:
    body = cols.body.tobytes()
    w = cols.body.shape[1]
    return [struct.pack(">d", t + 0.0) + cols.prefix + body[i * w:(i + 1) * w]
            for i, t in enumerate(cols.timestamps.tolist())]


def _file(write: str, key: bytes, cols: ColumnMembers) -> bytes:
    out = io.BytesIO()
    with RdbWriter(out, aux={}) as writer:
        if write == "columns":
            writer.write_zset_columns(key, cols)
        else:
            writer.write_zset(key, _members(cols))
    return out.getvalue()


def _columns(n: int, width: int, prefix: bytes = b"\xff", seed: int = 1,
             ties: bool = False) -> ColumnMembers:
    rng = np.random.default_rng(seed)
    ts = np.cumsum(rng.uniform(0.0 if ties else 0.01, 2.0, n)) + 1.7e9
    if ties:
        ts = np.round(ts)
    body = rng.integers(0, 256, (n, width), dtype=np.uint8)
    order = np.lexsort([body[:, j] for j in range(width - 1, -1, -1)] + [ts])
    ts, body = ts[order], body[order]
    keep = np.ones(n, bool)
    keep[1:] = (ts[1:] != ts[:-1]) | (body[1:] != body[:-1]).any(axis=1)
    return ColumnMembers.of(ts[keep], prefix, body[keep])


@pytest.mark.parametrize(("n", "width", "prefix", "block"), [
    (1, 1, b"", 4),                   # 9-byte members, no prefix
    (100, 8, b"\xff\xcb", 7),         # floats, several blocks
    (70, 60, b"\xff", 1 << 14),       # members of 69 bytes: a 2-byte length prefix
    (40, 2, b"\xff", 3),
])
def test_same_bytes_as_packed_members(n: int, width: int, prefix: bytes, block: int,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from telstate_log.rdb import _zset_columns
    cols = _columns(n, width, prefix, ties=width <= 2)
    assert b"".join(column_zset_body(cols, block)) == b"".join(column_zset_body(cols))
    monkeypatch.setattr(_zset_columns, "BLOCK_ROWS", block)
    assert _file("columns", b"k", cols) == _file("members", b"k", cols)


def test_negative_zero_is_written_as_zero() -> None:
    cols = ColumnMembers.of(np.array([-0.0, 1.0]), b"\xff", np.array([[1], [2]], np.uint8))
    assert _file("columns", b"k", cols) == _file(
        "members", b"k", ColumnMembers.of(np.array([0.0, 1.0]), b"\xff", cols.body))
    assert pack_member(-0.0, b"\xff\x01") in _file("columns", b"k", cols)


@pytest.mark.parametrize(("ts", "rows", "prefix"), [
    ([], [], b"\xff"),
    ([1.0, 2.0], [[1], [2]], b""),              # 9 bytes: fine
    ([1.0], [[]], b""),                         # 8 bytes: no value
    ([2.0, 1.0], [[1], [1]], b"\xff"),          # out of order
    ([1.0, 1.0], [[2], [1]], b"\xff"),          # same time, values out of order
    ([1.0, 1.0], [[1], [1]], b"\xff"),          # duplicate
    ([1.0, 1.0, 1.0], [[1, 2], [1, 3], [1, 3]], b"\xff"),
    ([-1.0, 1.0], [[1], [2]], b"\xff"),         # negative
    ([1.0, np.inf], [[1], [2]], b"\xff"),
    ([np.nan, 1.0], [[1], [2]], b"\xff"),
    ([1.0, 1.0, 2.0], [[1, 2], [1, 3], [0, 0]], b"\xff"),   # fine
])
def test_same_checks_as_member_problem(ts: list[float], rows: list[list[int]],
                                       prefix: bytes) -> None:
    body = np.array(rows, np.uint8).reshape(len(ts), len(rows[0]) if rows else 1)
    cols = ColumnMembers.of(np.array(ts, np.float64), prefix, body)
    members = [pack_member(t, prefix + bytes(r)) if not t < 0 else
               struct.pack(">d", t) + prefix + bytes(r) for t, r in zip(ts, rows)]
    expected = member_problem(members)
    problem = column_members_problem(cols)
    assert (problem is None) == (expected is None), (problem, expected)
    if problem is not None:
        with pytest.raises(ValueError, match="cannot write key"):
            _file("columns", b"k", cols)


def test_of_checks_shapes() -> None:
    with pytest.raises(ValueError, match="2 timestamps for 3 values"):
        ColumnMembers.of(np.zeros(2), b"", np.zeros((3, 2), np.uint8))
    with pytest.raises(TypeError):
        ColumnMembers.of(np.zeros(2), b"", np.zeros((2, 2), np.int32))
    v = ColumnMembers.of(np.zeros(2), b"p", np.frombuffer(b"abcd", "V2"))
    assert v.body.shape == (2, 2) and v.member_size == 11
