"""The on-disk format: golden segment files and exact frame bytes.

``tests/data/log/golden-v1`` is a small log written deterministically by
:func:`make_golden` (fixed clock, log id and session).  The tests read it
back event by event, and regenerate it into a temporary directory to check
that today's writer produces the very same bytes -- so a format change
cannot slip through in either direction.  Regenerate deliberately with
``python tests/test_format.py --regenerate`` (and bump the format version).
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

from telstate_log.backends import LogBackend
from telstate_log.core import _log_format as fmt
from telstate_log.core._encoding import encode_value
from telstate_log.storage._fileio import OsFileSystem
from telstate_log.storage._recovery import list_segments

GOLDEN = Path(__file__).parent / "data" / "log" / "golden-v1"


def make_golden(path: Path) -> None:
    """Write the golden log at `path` deterministically."""
    clock = iter(1_700_000_000.0 + 0.25 * i for i in range(100000))
    session = {"source": "golden", "host": "golden-host", "pid": 1, "user": "astronomer",
               "started": 1_700_000_000.0, "version": "0.1.0"}
    with mock.patch("telstate_log.storage._event_writer._time", lambda: next(clock)), \
            mock.patch("telstate_log.storage._event_writer.time.time", lambda: 1_700_000_000.0), \
            mock.patch("telstate_log.storage._log_writer.writer_identity",
                       lambda source: session), \
            mock.patch("telstate_log.storage._log_writer.os.urandom", lambda n: bytes(range(n))):
        with LogBackend(path, fsync="never", flush_interval=0, segment_bytes=4096,
                        checkpoint_bytes=None, use_checkpoints=False) as b:
            b.set_immutable(b"obs_name", encode_value("golden run"))
            b.set_immutable(b"undecodable\xff", encode_value(b"\x00\xff"))
            for i in range(40):
                b.add_mutable(b"m001_pos_azim", encode_value(10.0 + i), 1000.0 + i)
            b.add_mutable(b"m001_pos_azim", encode_value(9.5), 1010.5)  # back-dated
            for i in range(40):
                b.add_mutable(b"m001_activity", encode_value(["slew", "track"][i % 2]),
                              1000.0 + 2 * i)
            b.add_mutable(b"status", encode_value("ok"), 1000.0)
            b.add_mutable(b"status", encode_value("warning"), 1000.0)  # same time
            b.set_indexed(b"cal_gains", encode_value((0, "h")), encode_value(np.arange(4.0)))
            b.set_indexed(b"cal_gains", encode_value((1, "v")), encode_value(1 + 2j))
            b.delete(b"status")
            b.add_mutable(b"status", encode_value(3), 2000.0)
            b.clear()
            b.set_immutable(b"obs_name", encode_value("after clear"))
            b.add_mutable_many(b"m002_pos_elev", [encode_value(45.0 + i) for i in range(5)],
                               [3000.0 + i for i in range(5)])
            b.add_mutable_many(b"m002_mode", [encode_value(m) for m in ("stow", "point")],
                               [3000.0, 3001.0])


def events_of(path: Path) -> list[tuple[Any, ...]]:
    """Every frame of the log as (kind, position, recorded, session, key id, ...)."""
    out = []
    for _, name in list_segments(OsFileSystem(), str(path)):
        data = (path / name).read_bytes()
        header = fmt.parse_header(data)
        assert not isinstance(header, str)
        mv = memoryview(data)
        scan = fmt.scan_frames(mv, fmt.HEADER_SIZE, len(data), zlib.crc32(data[:fmt.HEADER_SIZE]))
        assert scan.problem is None
        dec = fmt.decode_frames(mv, scan)
        for i in range(len(scan.offsets)):
            kind, off, length = int(dec.kinds[i]), int(dec.offsets[i]), int(dec.lengths[i])
            if kind in fmt.EVENT_KINDS:
                ev = dec.event[i]
                extra: Any = ()
                if kind in (fmt.IMMUTABLE, fmt.ADD):
                    s, e = fmt.value_span(kind, off, length)
                    extra = (bytes(mv[s:e]), float(dec.ts[i]) if kind == fmt.ADD else None)
                elif kind == fmt.INDEXED:
                    extra = fmt.indexed_fields(mv, off, length)
                elif kind == fmt.ADD_BATCH:
                    fields = fmt.batch_fields(mv, off, length)
                    assert fields is not None
                    extra = (fields[0].tolist(), fields[2])
                out.append((kind, int(ev["pos"]), float(ev["rec"]), int(ev["sess"]),
                            int(ev["key"]), *extra))
            else:
                out.append((kind, *fmt.meta_fields(mv, off, length)))
    return out


def test_golden_log_reads_back() -> None:
    with LogBackend(GOLDEN, readonly=True, follow=False, use_checkpoints=False) as b:
        assert b.position == 98
        assert sorted(b.keys(b"*")) == [b"m002_mode", b"m002_pos_elev", b"obs_name"]
        assert b.get_range(b"m002_pos_elev", 0.0, math.inf, False, False) == \
            [(encode_value(45.0 + i), 3000.0 + i) for i in range(5)]
        assert b.get(b"m002_mode") == (encode_value("point"), 3001.0)
        assert b.get(b"obs_name") == (encode_value("after clear"), None)
        # History: the deleted and cleared keys are in the graveyard.
        assert sorted(b._state.graveyard) == [b"cal_gains", b"m001_activity", b"m001_pos_azim",
                                              b"obs_name", b"status", b"undecodable\xff"]
        col = b._state.graveyard[b"m001_pos_azim"][0][0]
        assert len(col) == 41 and col.timestamps()[11] == 1010.5  # type: ignore[union-attr]
    events = events_of(GOLDEN)
    kinds = [e[0] for e in events]
    assert kinds.count(fmt.SESSION) == len(list_segments(OsFileSystem(), str(GOLDEN))) >= 2
    positions = [e[1] for e in events if e[0] in fmt.EVENT_KINDS]
    assert positions == [*range(1, 93), 97]  # the two ADD_BATCH frames start at 92 and 97
    recorded = [e[2] for e in events if e[0] in fmt.EVENT_KINDS]
    assert recorded == [1_700_000_000.0 + 0.25 * i for i in range(93)]
    assert [e[0] for e in events if e[0] in fmt.EVENT_KINDS][-2:] == [fmt.ADD_BATCH] * 2
    assert [e[:2] for e in events if e[0] == fmt.CLEAR] == [(fmt.CLEAR, 90)]
    assert [e[1] for e in events if e[0] == fmt.DELETE] == [88]


def test_writer_reproduces_golden_bytes(tmp_path: Path) -> None:
    make_golden(tmp_path / "log")
    golden = {name: (GOLDEN / name).read_bytes()
              for _, name in list_segments(OsFileSystem(), str(GOLDEN))}
    fresh = {name: (tmp_path / "log" / name).read_bytes()
             for _, name in list_segments(OsFileSystem(), str(tmp_path / "log"))}
    assert fresh == golden


def test_header_layout() -> None:
    head = fmt.encode_header(17, 1.5, bytes(range(16)))
    assert len(head) == fmt.HEADER_SIZE == 52
    assert head[:8] == b"TSLOGSEG" and head[8] == fmt.FORMAT_VERSION == 1
    assert struct.unpack_from("<Q", head, 16)[0] == 17
    assert struct.unpack_from("<d", head, 24)[0] == 1.5
    assert head[32:48] == bytes(range(16))
    assert struct.unpack_from("<I", head, 48)[0] == zlib.crc32(head[:48])
    parsed = fmt.parse_header(head)
    assert isinstance(parsed, fmt.SegmentHeader) and parsed.first_position == 17
    assert "checksum" in str(fmt.parse_header(head[:47] + b"\x00" + head[48:]))
    assert "version" in str(fmt.parse_header(_reseal(head, 8, 2)))


def test_synced_record_layout() -> None:
    rec = fmt.encode_synced(147, bytes(range(16)))
    assert len(rec) == fmt.SYNCED_SIZE == 40
    assert rec[:8] == b"TSLOGSYN" and rec[8] == 1 and rec[9:12] == bytes(3)
    assert struct.unpack_from("<Q", rec, 12)[0] == 147
    assert rec[20:36] == bytes(range(16))
    assert struct.unpack_from("<I", rec, 36)[0] == zlib.crc32(rec[:36])
    assert fmt.parse_synced(rec) == (147, bytes(range(16)))
    assert "checksum" in str(fmt.parse_synced(rec[:12] + b"\x00" + rec[13:]))
    assert "magic" in str(fmt.parse_synced(b"X" + rec[1:36] + struct.pack(
        "<I", zlib.crc32(b"X" + rec[1:36]))))
    assert "version" in str(fmt.parse_synced(rec[:8] + b"\x02" + rec[9:36] + struct.pack(
        "<I", zlib.crc32(rec[:8] + b"\x02" + rec[9:36]))))
    assert "expected 40" in str(fmt.parse_synced(rec[:39]))
    assert "expected 40" in str(fmt.parse_synced(b""))


def _reseal(head: bytes, index: int, value: int) -> bytes:
    b = bytearray(head)
    b[index] = value
    struct.pack_into("<I", b, 48, zlib.crc32(bytes(b[:48])))
    return bytes(b)


def test_frame_layout() -> None:
    frame = fmt.encode_event(fmt.ADD, 7, 2.0, 3, 4, b"", b"\xff\xc3", 9.5)
    assert frame[:2] == b"\xa7\x1e" and frame[2] == fmt.ADD
    length = struct.unpack_from("<I", frame, 4)[0]
    assert length == len(frame) - 8 == 24 + 8 + 2
    assert frame[3] == fmt.check_byte(fmt.ADD, length)
    assert struct.unpack_from("<QdIId", frame, 8) == (7, 2.0, 3, 4, 9.5)
    assert frame[-2:] == b"\xff\xc3"
    idx = fmt.encode_event(fmt.INDEXED, 8, 2.0, 3, 4, b"\xa1a", b"\xff\x01", 0.0)
    assert fmt.indexed_fields(memoryview(idx + b"\0\0\0\0"), 0, len(idx) - 8) == \
        (b"\xa1a", b"\xff\x01")


if __name__ == "__main__" and "--regenerate" in sys.argv:
    if GOLDEN.exists():
        shutil.rmtree(GOLDEN)
    os.makedirs(GOLDEN.parent, exist_ok=True)
    make_golden(GOLDEN)
    (GOLDEN / "LOCK").unlink()
    print(f"wrote {GOLDEN}")
elif __name__ == "__main__":
    pytest.main([__file__])
