"""Tamper evidence: sealed segments form a SHA-256 chain that verify checks.

The attacks here keep every frame CRC valid (an attacker recomputes them),
so only the seals can catch them.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from pathlib import Path

import pytest

from telstate_log import _format as fmt
from telstate_log._encoding import encode_value
from telstate_log._fileio import OsFileSystem
from telstate_log._recovery import list_segments
from telstate_log._repair import verify_log
from telstate_log._seal import genesis, read_seals, seal_segment, write_seals
from telstate_log.backends import LogBackend


def make_log(path: Path, n: int = 300) -> str:
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None) as b:
        for i in range(n):
            b.add_mutable(b"sensor", encode_value(float(i)), 1e9 + i)
        head = b.seal()
    assert head is not None
    return head


def frames_of(data: bytes) -> list[bytes]:
    """The frames of a segment without their CRCs."""
    mv = memoryview(data)
    scan = fmt.scan_frames(mv, fmt.HEADER_SIZE, len(data), zlib.crc32(data[:fmt.HEADER_SIZE]))
    assert scan.problem is None
    return [bytes(data[o:o + 8 + n]) for o, n in zip(scan.offsets.tolist(),
                                                    scan.lengths.tolist())]


def rechain(header: bytes, frames: list[bytes]) -> bytes:
    """A segment with valid chained CRCs around (doctored) frames."""
    out = bytearray(header)
    crc = zlib.crc32(header)
    for f in frames:
        c = zlib.crc32(f, crc)
        cb = struct.pack("<I", c)
        crc = zlib.crc32(cb, c)
        out += f + cb
    return bytes(out)


def segments(path: Path) -> list[Path]:
    return [path / name for _, name in list_segments(OsFileSystem(), str(path))]


def test_seal_and_verify(tmp_path: Path) -> None:
    head = make_log(tmp_path / "log")
    report = verify_log(tmp_path / "log")
    assert report.ok, report.problems
    assert report.head == head
    assert report.sealed_segments == len(segments(tmp_path / "log")) - 1
    assert report.unsealed_segments == []
    seals = read_seals(str(tmp_path / "log"))
    assert [s.first for s in seals] == [f for f, _ in list_segments(OsFileSystem(),
                                                                    str(tmp_path / "log"))][:-1]


def _doctor(path: Path, index: int, change: str) -> Path:
    seg = segments(path)[index]
    data = seg.read_bytes()
    frames = frames_of(data)
    events = [i for i, f in enumerate(frames) if f[2] == fmt.ADD]
    if change == "value":
        i = events[3]
        f = bytearray(frames[i])
        f[-1] ^= 0x01  # a different sample value
        frames[i] = bytes(f)
    elif change == "reorder":
        i, j = events[2], events[3]
        fi, fj = bytearray(frames[i]), bytearray(frames[j])
        fi[8:24], fj[8:24] = fj[8:24], fi[8:24]  # swap positions+times: replay accepts it
        frames[i], frames[j] = bytes(fj), bytes(fi)
    seg.write_bytes(rechain(data[:fmt.HEADER_SIZE], frames))
    return seg


@pytest.mark.parametrize("change", ["value", "reorder"])
def test_doctored_sealed_segment_fails_verify(tmp_path: Path, change: str) -> None:
    path = tmp_path / "log"
    make_log(path)
    seg = _doctor(path, 1, change)
    with LogBackend(path, readonly=True, follow=False, use_checkpoints=False):
        pass  # every CRC is valid: the log still opens
    report = verify_log(path)
    assert not report.ok
    assert any(p["file"] == str(seg) and "seal" in p["problem"] for p in report.problems)


def test_removed_record_fails_verify(tmp_path: Path) -> None:
    path = tmp_path / "log"
    make_log(path)
    seg = segments(path)[0]
    data = seg.read_bytes()
    frames = frames_of(data)
    del frames[-1]
    seg.write_bytes(rechain(data[:fmt.HEADER_SIZE], frames))
    report = verify_log(path)
    assert not report.ok
    assert any(p["file"] == str(seg) for p in report.problems)


def test_removed_segment_fails_verify(tmp_path: Path) -> None:
    path = tmp_path / "log"
    make_log(path)
    victim = segments(path)[2]
    victim.unlink()
    report = verify_log(path)
    assert not report.ok
    assert any(p["file"] == str(victim) for p in report.problems)


def test_auditor_head_exposes_a_consistent_rewrite(tmp_path: Path) -> None:
    """An attacker who rewrites a segment AND every seal after it passes a plain
    verify, but the head hash an auditor kept is no longer in the chain."""
    path = tmp_path / "log"
    kept_head = make_log(path)
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None) as b:
        b.add_mutable(b"sensor", encode_value(-1.0), 2e9)
        b.seal()
    assert kept_head in verify_log(path).seal_chain
    _doctor(path, 0, "value")
    fs = OsFileSystem()
    segs = list_segments(fs, str(path))
    log_id = fmt.parse_header((path / segs[0][1]).read_bytes())
    assert not isinstance(log_id, str)
    prev = genesis(log_id.log_id)
    forged = []
    for (first, name), (nxt, _) in itertools.pairwise(segs):
        s = seal_segment(fs, str(path), name, first, nxt - 1, prev)
        forged.append(s)
        prev = bytes.fromhex(s.seal)
    write_seals(str(path), forged)
    report = verify_log(path)
    assert report.ok  # self-consistent...
    assert kept_head not in report.seal_chain  # ...but the auditor's head is gone


def test_seals_survive_reopen_and_crash_before_sealing(tmp_path: Path) -> None:
    path = tmp_path / "log"
    make_log(path, n=100)
    (path / "seals").unlink()  # as if the writer died before sealing anything
    with LogBackend(path, segment_bytes=4096) as b:
        b.seal()
    report = verify_log(path)
    assert report.ok and report.unsealed_segments == []
    assert report.sealed_segments == len(segments(path)) - 1
