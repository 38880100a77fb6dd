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

Pruned logs.  Pruning removes old segments but keeps their lines in
``seals``; those seals cannot be recomputed, so they are *taken as given*
(:func:`verify_seals` lists them apart, in ``pruned_chain``) -- anyone able
to write the directory can put any value there, including an auditor's kept
head.  So :func:`check_head` accepts a kept hash only where it equals a seal
recomputed from bytes present in the log (``chain``).  That is sound even
when the first recomputed seal is chained from an unverified pruned one: the
chain start is an input of every later seal, so reproducing the kept hash
reproduces the start too (a forger would need a second preimage).  A kept
hash that matches a pruned seal proves nothing and is reported as "cannot be
verified: pruned".  The log id that seeds the genesis is read from a segment
header, which a forger also controls; that is harmless for the same reason:
it is an input of every seal, so only the log id a head was computed with can
reproduce it.  After a prune a verified head covers only the segments
still present up to it; the events before the cut are gone, and what they
left in the state comes from the pruning checkpoint, which no seal covers.

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
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from ._fileio import FileSystem, OsFileSystem, replace_file

__all__ = ["SEALS_FILE", "HeadCheck", "Seal", "check_head", "genesis", "pruned_prefix",
           "read_seals", "seal_segment", "verify_seals", "write_seals"]

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


def pruned_prefix(seals: list[Seal], on_disk: Collection[str], pruned_before: int) -> int:
    """How many leading `seals` belong to segments pruned on purpose: gone from
    the directory (`on_disk` names what is there) and ending before the cut."""
    n = 0
    for s in seals:
        if s.segment in on_disk or s.last >= pruned_before:
            break
        n += 1
    return n


def verify_seals(log_path: str, log_id: bytes, segments: list[tuple[int, str]],
                 fs: FileSystem | None = None, pruned_before: int = 0) -> dict[str, Any]:
    """Recompute the chain from the segment files and compare it with ``seals``.

    Returns ``{"ok", "head", "head_pruned", "sealed", "unsealed", "problems",
    "chain", "pruned_chain", "seals"}``: ``chain`` lists every seal recomputed
    from the segment files (hex, in order) -- the only values a kept head may
    be matched against (:func:`check_head`); ``pruned_chain`` lists the seals
    of pruned segments before them, taken as given; ``seals`` the accepted
    lines of both, in order; ``head`` the latest of them (``head_pruned``:
    it is a pruned one, so it cannot be verified from this log).
    """
    fs = fs or OsFileSystem()
    result: dict[str, Any] = {"ok": True, "head": None, "head_pruned": False, "sealed": 0,
                              "unsealed": [], "problems": [], "chain": [], "pruned_chain": [],
                              "seals": []}
    try:
        seals = read_seals(log_path, fs)
    except SealFileError as exc:
        result["ok"] = False
        result["problems"].append({"file": os.path.join(log_path, SEALS_FILE),
                                   "problem": str(exc)})
        return result
    on_disk = {name: first for first, name in segments}
    n_pruned = pruned_prefix(seals, on_disk, pruned_before)
    prev = genesis(log_id)
    expected_first = segments[0][0] if segments else 1
    accepted: list[Seal] = []
    for i, s in enumerate(seals):
        seg_path = os.path.join(log_path, s.segment)
        if i < n_pruned:
            # Pruned on purpose: its content is gone, so its seal is taken as
            # given -- it can be chained from, never matched (see check_head).
            if i and s.first != expected_first:
                result["ok"] = False
                result["problems"].append({"file": seg_path,
                                           "problem": "pruned seal out of order"})
                break
            result["pruned_chain"].append(s.seal)
            accepted.append(s)
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
        accepted.append(fresh)
        result["sealed"] += 1
        prev = bytes.fromhex(fresh.seal)
        expected_first = s.last + 1
    result["seals"] = accepted
    if accepted:
        result["head"] = accepted[-1].seal
        result["head_pruned"] = not result["chain"]
    sealed = {s.segment for s in seals}
    result["unsealed"] = [name for _, name in segments[:-1] if name not in sealed]
    return result


VERIFIED = "verified"
PRUNED = "pruned"
NOT_FOUND = "not found"


@dataclass(frozen=True)
class HeadCheck:
    """Whether a kept head hash is reproduced by the log (see :func:`check_head`)."""

    hash: str
    #: VERIFIED (recomputed from present bytes), PRUNED (matches only a seal
    #: of a pruned segment: cannot be verified) or NOT_FOUND
    status: str
    #: 1-based place of the matched seal in the whole chain (pruned seals first)
    index: int | None
    of: int
    segment: str | None = None
    first: int | None = None
    last: int | None = None
    #: first position the recomputed part of the chain covers (None: nothing
    #: recomputed); a verified head proves positions covered_from..last
    covered_from: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == VERIFIED

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "found": self.ok}


def check_head(wanted: str, pruned_chain: list[str], chain: list[str],
               seals: list[Seal]) -> HeadCheck:
    """Look a kept head hash up in a chain from :func:`verify_seals`.

    Only ``chain`` (seals recomputed from the segment files) can verify it:
    a match there reproduces every input of that seal, back to the genesis or
    to the pruned seal the recomputation started from.  A match in
    ``pruned_chain`` (values read from the seals file, which whoever can
    write the directory controls) is PRUNED: it cannot be verified.
    """
    wanted = wanted.lower()
    total = len(pruned_chain) + len(chain)
    covered = seals[len(pruned_chain)].first if chain else None
    if wanted in chain:
        index = len(pruned_chain) + chain.index(wanted)
        status = VERIFIED
    elif wanted in pruned_chain:
        index = pruned_chain.index(wanted)
        status = PRUNED
    else:
        return HeadCheck(wanted, NOT_FOUND, None, total, covered_from=covered)
    s = seals[index]
    return HeadCheck(wanted, status, index + 1, total, s.segment, s.first, s.last, covered)
