"""Tamper evidence: a SHA-256 hash chain over finished segments.

Theory of operation
-------------------
When a segment is finished (the writer has moved on to the next one) it is
*sealed*::

    digest_k = SHA-256(segment file k, every byte)
    seal_k   = SHA-256(seal_{k-1} || first_k || last_k || size_k || digest_k)
    seal_0   = SHA-256("telstate-log seal chain v1" || 0x00 || log id)

(positions and size as little-endian u64).  The seals are kept in the text
file ``seals`` in the log directory -- one line per sealed segment, rewritten
crash-safely (temporary file, fsync, rename, directory fsync) -- and the
latest seal is the log's *head hash*.  :func:`verify_seals` recomputes the
whole chain from the segment files and compares it with the file.

What it proves: if an auditor kept a head hash from an earlier point (printed
by ``telstate-log verify``, or returned by ``LogBackend.seal()`` at the end of
an observation), a later verification that reproduces that hash proves that
every sealed segment up to it is byte-for-byte what it was: no record was
changed, removed, inserted or reordered, and no segment was dropped or
swapped (SHA-256 second-preimage resistance).

What it does not prove: anything about events after the last seal (the
active segment; call ``seal()`` to close it); that the log was not rewritten
before the auditor recorded the head hash (someone able to write the
directory can rewrite segments *and* recompute every seal -- only a head
hash kept elsewhere defeats that); who wrote an event (source labels are
declared by the writer, not signed); or that recorded wall-clock times were
true.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Any

from ._fileio import FileSystem, OsFileSystem, replace_file

__all__ = ["SEALS_FILE", "Seal", "genesis", "read_seals", "seal_segment", "verify_seals",
           "write_seals"]

SEALS_FILE = "seals"
_HEADER = "telstate-log seals v1"
_READ_CHUNK = 8 << 20


@dataclass(frozen=True)
class Seal:
    segment: str  # file name
    first: int
    last: int
    size: int
    digest: str  # hex SHA-256 of the segment file
    seal: str  # hex chained seal

    def line(self) -> str:
        return f"{self.segment} {self.first} {self.last} {self.size} {self.digest} {self.seal}"


def genesis(log_id: bytes) -> bytes:
    return hashlib.sha256(b"telstate-log seal chain v1\0" + log_id).digest()


def chain(prev: bytes, first: int, last: int, size: int, digest: bytes) -> bytes:
    return hashlib.sha256(prev + struct.pack("<QQQ", first, last, size) + digest).digest()


def file_digest(fs: FileSystem, path: str) -> tuple[bytes, int]:
    """SHA-256 and size of a file, read in chunks."""
    h = hashlib.sha256()
    size = fs.size(path)
    offset = 0
    while offset < size:
        data = fs.read(path, offset, min(_READ_CHUNK, size - offset))
        if not data:
            break
        h.update(data)
        offset += len(data)
    return h.digest(), offset


def seal_segment(fs: FileSystem, log_path: str, name: str, first: int, last: int,
                 prev: bytes) -> Seal:
    digest, size = file_digest(fs, os.path.join(log_path, name))
    return Seal(name, first, last, size, digest.hex(), chain(prev, first, last, size,
                                                            digest).hex())


class SealFileError(Exception):
    """The seals file is malformed."""


def read_seals(log_path: str, fs: FileSystem | None = None) -> list[Seal]:
    fs = fs or OsFileSystem()
    path = os.path.join(log_path, SEALS_FILE)
    if not fs.exists(path):
        return []
    text = fs.read(path).decode("ascii", errors="replace").splitlines()
    if not text or text[0] != _HEADER:
        raise SealFileError(f"{path}: not a seals file")
    out = []
    for n, line in enumerate(text[1:], 2):
        parts = line.split()
        try:
            name, first, last, size, digest, seal = parts
            out.append(Seal(name, int(first), int(last), int(size), digest, seal))
            bytes.fromhex(digest)
            bytes.fromhex(seal)
        except ValueError:
            raise SealFileError(f"{path}:{n}: malformed line") from None
    return out


def write_seals(log_path: str, seals: list[Seal], fs: FileSystem | None = None) -> None:
    """Replace the seals file crash-safely."""
    data = "\n".join([_HEADER, *(s.line() for s in seals)]).encode("ascii") + b"\n"
    replace_file(fs or OsFileSystem(), log_path, SEALS_FILE, data)


def verify_seals(log_path: str, log_id: bytes, segments: list[tuple[int, str]],
                 fs: FileSystem | None = None, pruned_before: int = 0) -> dict[str, Any]:
    """Recompute the chain from the segment files and compare it with ``seals``.

    Returns ``{"ok", "head", "sealed", "unsealed", "problems", "chain"}``
    where ``chain`` lists every recomputed seal (hex) in order, so a head
    hash kept by an auditor can be looked up.
    """
    fs = fs or OsFileSystem()
    result: dict[str, Any] = {"ok": True, "head": None, "sealed": 0, "unsealed": [],
                              "problems": [], "chain": [], "pruned": 0}
    try:
        seals = read_seals(log_path, fs)
    except SealFileError as exc:
        result["ok"] = False
        result["problems"].append({"file": os.path.join(log_path, SEALS_FILE),
                                   "problem": str(exc)})
        return result
    on_disk = {name: first for first, name in segments}
    prev = genesis(log_id)
    expected_first = segments[0][0] if segments else 1
    for s in seals:
        seg_path = os.path.join(log_path, s.segment)
        if s.segment not in on_disk and s.last < pruned_before and not result["sealed"]:
            # Pruned on purpose: its content is gone, so its seal is taken as given.
            result["pruned"] += 1
            result["chain"].append(s.seal)
            prev = bytes.fromhex(s.seal)
            expected_first = s.last + 1
            continue
        if s.segment not in on_disk:
            result["ok"] = False
            result["problems"].append({"file": seg_path,
                                       "problem": "sealed segment is missing"})
            break
        if s.first != on_disk[s.segment] or s.first != expected_first:
            result["ok"] = False
            result["problems"].append({"file": seg_path, "problem": "seal out of order"})
            break
        fresh = seal_segment(fs, log_path, s.segment, s.first, s.last, prev)
        if fresh.digest != s.digest or fresh.seal != s.seal or fresh.size != s.size:
            result["ok"] = False
            result["problems"].append({"file": seg_path,
                                       "problem": "segment differs from its seal "
                                                  "(changed, truncated or reordered)"})
            break
        result["chain"].append(fresh.seal)
        result["sealed"] += 1
        result["head"] = fresh.seal
        prev = bytes.fromhex(fresh.seal)
        expected_first = s.last + 1
    sealed = {s.segment for s in seals}
    result["unsealed"] = [name for _, name in segments[:-1] if name not in sealed]
    return result
