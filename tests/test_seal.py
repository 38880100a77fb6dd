"""Tamper evidence: sealed segments form a SHA-256 chain that verify checks.

The attacks here keep every frame CRC valid (an attacker recomputes them),
so only the seals can catch them.
"""

from __future__ import annotations

import errno
import itertools
import struct
import zlib
from pathlib import Path

import pytest

from telstate_log import LogError
from telstate_log.backends import LogBackend
from telstate_log.core import _log_format as fmt
from telstate_log.core._encoding import encode_value
from telstate_log.storage._fileio import OsFileSystem
from telstate_log.storage._recovery import list_segments
from telstate_log.storage._repair import verify_log
from telstate_log.storage._seal import (
    NOT_FOUND,
    PRUNED,
    SEALS_FILE,
    Seal,
    genesis,
    read_seals,
    seal_segment,
    write_seals,
)


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


# ------------------------------------------------- kept heads and pruning (issue 14, item 1)
def forge_pruned_claim(path: Path, kept_head: str) -> None:
    """The forgery of issue 14 item 1 on the log at `path`: a first line in
    ``seals`` claims a pruned segment whose seal is `kept_head`, the log's real
    seals are chained on from it, and ``pruned`` says 1."""
    fs = OsFileSystem()
    segs = list_segments(fs, str(path))
    prev = bytes.fromhex(kept_head)
    forged = [Seal(fmt.segment_name(0), 0, 0, 0, "00" * 32, kept_head)]
    for (first, name), (nxt, _) in itertools.pairwise(segs):
        s = seal_segment(fs, str(path), name, first, nxt - 1, prev)
        forged.append(s)
        prev = bytes.fromhex(s.seal)
    write_seals(str(path), forged)
    (path / "pruned").write_text("1\n")


def make_other_log(path: Path) -> None:
    """A different log: the same keys and times, other values."""
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None) as b:
        for i in range(300):
            b.add_mutable(b"sensor", encode_value(-float(i)), 1e9 + i)
        b.seal()


def test_a_forged_log_claiming_the_kept_head_as_pruned_is_not_verified(tmp_path: Path) -> None:
    kept = make_log(tmp_path / "genuine")
    forged = tmp_path / "forged"
    make_other_log(forged)
    forge_pruned_claim(forged, kept)
    report = verify_log(forged)
    assert kept not in report.seal_chain  # only recomputed seals are in it
    assert report.pruned_chain == [kept]
    check = report.check_head(kept)
    assert check.status == PRUNED and not check.ok and check.index == 1
    assert report.check_head(report.seal_chain[-1]).ok  # its own seals do verify


def _sealed_twice_then_pruned(path: Path) -> tuple[str, str, int]:
    """(an early head whose segment is pruned, a later head that survives, the cut)."""
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None) as b:
        for i in range(300):
            b.add_mutable(b"sensor", encode_value(float(i)), 1e9 + i)
        early = b.seal()
        for i in range(300):
            b.add_mutable(b"sensor", encode_value(float(i)), 2e9 + i)
        late = b.seal()
        cut = b.prune(before=301).history_from
    assert early is not None and late is not None and cut == 301
    return early, late, cut


def test_kept_heads_after_a_prune(tmp_path: Path) -> None:
    path = tmp_path / "log"
    early, late, cut = _sealed_twice_then_pruned(path)
    report = verify_log(path)
    assert report.ok and not report.problems and report.pruned_before == cut
    assert report.head == late and not report.head_pruned
    assert early in report.pruned_chain and early not in report.seal_chain
    gone = report.check_head(early)
    assert gone.status == PRUNED and not gone.ok and gone.last == cut - 1
    kept = report.check_head(late.upper())
    assert kept.ok and kept.covered_from == cut and kept.index == kept.of
    assert report.check_head("ab" * 32).status == NOT_FOUND


def test_a_rewritten_pruned_seal_cannot_reproduce_a_later_head(tmp_path: Path) -> None:
    """The recomputation after a prune starts from an unverified pruned seal;
    a kept head reproduced from present bytes pins that start too."""
    path = tmp_path / "log"
    _early, late, cut = _sealed_twice_then_pruned(path)
    fs = OsFileSystem()
    seals = read_seals(str(path))
    n = sum(1 for s in seals if s.last < cut)
    prev = bytes.fromhex("cd" * 32)  # the forger's choice of pruned seal
    rewritten = [*seals[:n - 1], Seal(seals[n - 1].segment, seals[n - 1].first,
                                      seals[n - 1].last, seals[n - 1].size,
                                      seals[n - 1].digest, prev.hex())]
    for s in seals[n:]:  # every surviving seal recomputed from there: self-consistent
        fresh = seal_segment(fs, str(path), s.segment, s.first, s.last, prev)
        rewritten.append(fresh)
        prev = bytes.fromhex(fresh.seal)
    write_seals(str(path), rewritten)
    report = verify_log(path)
    assert report.ok and not report.problems
    assert report.check_head(late).status == NOT_FOUND


def test_head_of_a_wholly_pruned_chain_is_shown_but_not_verified(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None) as b:
        for i in range(400):
            b.add_mutable(b"sensor", encode_value(float(i)), 1e9 + i)
        head = b.seal()
        assert b.prune(older_than=0).history_from == 401
    report = verify_log(path)
    assert report.ok and not report.problems
    assert report.head == head and report.head_pruned  # was None before the fix
    assert report.seal_chain == [] and report.pruned_chain[-1] == head
    assert report.check_head(head).status == PRUNED


class FailingSealsFS(OsFileSystem):
    """Fails every write of the seals file while `failing` is set."""

    failing = False

    def create(self, path: str) -> int:
        if self.failing and path.endswith(SEALS_FILE + ".tmp"):
            raise OSError(errno.EIO, "injected")
        return super().create(path)


def test_prune_keeps_segments_left_unsealed_by_a_failed_seal(tmp_path: Path) -> None:
    """Pruning a finished segment before it was sealed made sealing fail for
    good (the sealer retried a file that was gone) and, after a reopen, the
    chain skipped it ("seal out of order")."""
    path = tmp_path / "log"
    fs = FailingSealsFS()
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None, fs=fs) as b:
        for i in range(100):
            b.add_mutable(b"sensor", encode_value(float(i)), 1e9 + i)
        b.seal()
        sealed = {s.segment for s in read_seals(str(path))}
        fs.failing = True
        for i in range(300):
            b.add_mutable(b"sensor", encode_value(float(i)), 2e9 + i)
        with pytest.raises(LogError, match="sealing failed"):
            b.seal()
        report = b.prune(before=350)
        assert set(report.removed) == sealed and report.unsealed
        assert report.history_from == 101
        fs.failing = False
        head = b.seal()  # the backlog is sealed, in order
    with LogBackend(path, segment_bytes=4096, checkpoint_bytes=None) as b:
        b.add_mutable(b"sensor", encode_value(-1.0), 3e9)
        last = b.seal()
    verified = verify_log(path)
    assert not verified.damaged, verified.problems
    assert verified.check_head(head).ok and verified.head == last
