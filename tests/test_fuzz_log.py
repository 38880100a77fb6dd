"""Fuzzing every decoder that reads outside data: segments (opened read-only and by a
writer), the EventReader (history and audit), the follower's incremental reads,
checkpoints, frames and segment headers, Redis pub/sub messages, RDB imports and the
values stored in logs.

Theory of operation
-------------------
Each decoder has a *case*: ``case(choose, work) -> outcome`` takes a
:class:`Chooser` (where every random decision comes from) and a scratch directory,
builds one damaged input, feeds it to the decoder and checks the result against an
oracle.  It returns a short outcome label ("opened", "refused", "recheck", ...) and
raises ``AssertionError`` when an oracle is violated; any other exception escaping a
case is a bug in the decoder, and so is a case that does not finish (a SIGALRM
:func:`watchdog` turns an endless loop into :exc:`Hang`).  The tests below drive the
cases through :func:`run_case` with hypothesis (a :class:`DataChooser`: a failure
shrinks to the smallest damage and prints its draws and a description);
``tools/fuzz_all.py`` drives the very same cases for as long as wanted with seeded
:class:`RandomChooser` s and counts outcomes per decoder.

The inputs are mutations of a corpus built deterministically (fixed clock, log id
and session, as ``tests/test_format.py`` builds its golden log), so that a seed
reproduces byte for byte:

* ``golden``: ``tests/data/log/golden-v1`` (every event kind, two segments);
* ``mixed``: a log written here with four segments, sessions, batches of fixed and
  variable width, deletes, a clear and a checkpoint;
* ``pruned``: the mixed log pruned (only a checkpoint covers its beginning) and
  written to afterwards.

The state after every position of each corpus log is recorded through as-of views
(themselves checked against prefix replay in ``test_time_travel.py``), and so is
its audit trail.

Damage comes in two classes.  *Raw* damage is what a disk, a crash or a careless
tool does: bit flips, scribbled bytes, truncations (anywhere, or at a frame
boundary), zeroed ranges and tails, appended garbage, hostile length fields, missing
and swapped segment files.  Every byte of a segment is covered by a chained CRC, so
the oracles are strict: an open yields exactly the state after some prefix of the
original events (never an invented value), keeps every event of the finished
segments, refuses damage followed by an intact frame, raises nothing but
``LogCorruptError`` and, read-only, changes no file; a refused writer open changes
nothing either; history answers as before the damage or raises; a follower settles
on a prefix and agrees with a fresh reader.  *Forged* damage recomputes the CRCs
around garbage (spliced, duplicated, dropped, swapped or rewritten frames, hostile
field values, rewritten headers and meta records, extra segments, rewritten
checkpoint trailers, manifests and blobs), so it reaches the semantic layer (the
replayer, the state, the checkpoint loader).  There the oracle is "a typed error or
a readable state": every read of what opened works, history raising only
``LogCorruptError`` or ``HistoryUnavailableError``.

Every input must be decided within ``CASE_SECONDS`` (normal inputs take
milliseconds); inputs with hostile length fields (and every frame scan and raw
checkpoint load) run under tracemalloc with a peak bound (``ALLOC_BOUND``, 16 MiB)
far below the GiB the lengths claim.

Every bug these fuzzers (and ``tools/soak.py``) found has a deterministic regression
test (at the end of this module, or in ``test_concurrency.py``).  While a bug is
open it is listed in ``KNOWN_BUGS`` and the oracles report its symptom as
``known: <bug>`` instead of failing, so the fuzz tests keep guarding everything
else; ``test_oracles_catch_*`` show that the oracles do fail on a
fail-open recovery and on an untyped error.

Figures: the fuzz tests here run about 2,620 inputs (hypothesis examples) and the
whole module takes about 30 s on the project's 2-core machine;
``python tools/fuzz_all.py --seconds 540`` ran 4.84 million inputs with no
violation, unexpected exception or hang beyond the known bugs.  Value decoding
(``decode_value``) is fuzzed by ``tests/test_encoding.py`` (arbitrary bytes,
mutations of encoded values, every byte position of one value) and the RDB reader
and DUMP parser by ``tests/replay/test_rdb_fuzz.py`` (every truncation, 1,000 flips
per file, hostile lengths under tracemalloc); here they get only what those miss:
the values stored in our corpus logs, and ``load_from_file`` into a backend (which
must raise RdbParseError, or a conflict, and leave the backend unchanged).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import math
import os
import random
import re
import shutil
import signal
import struct
import tempfile
import threading
import time
import traceback
import tracemalloc
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Protocol, TypeVar
from unittest import mock

import msgpack
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from telstate_log import KeyType
from telstate_log.backends import (
    ImmutableKeyUpdate,
    IndexedKeyUpdate,
    KeyUpdateBase,
    LogBackend,
    MemoryBackend,
    MutableKeyUpdate,
)
from telstate_log.backends._redis_common import exchange_update, run_exchange
from telstate_log.backends._redis_messages import (
    immutable_message,
    indexed_message,
    mutable_message,
)
from telstate_log.core import _log_format as fmt
from telstate_log.core._encoding import decode_value, encode_value
from telstate_log.core._errors import (
    DecodeError,
    HistoryUnavailableError,
    ImmutableKeyError,
    LogCorruptError,
    RdbParseError,
)
from telstate_log.rdb._reader import iter_rdb
from telstate_log.storage._checkpoint import CheckpointError
from telstate_log.storage._checkpoint_load import load_checkpoint
from telstate_log.storage._recovery import classify_tail
from telstate_log.storage._repair import verify_log

T = TypeVar("T")

DATA = Path(__file__).parent / "data"
GOLDEN_LOG = DATA / "log" / "golden-v1"
RDB_FILES = sorted((DATA / "rdb").glob("*.rdb"))
#: Regression inputs: one directory per damaged log (see tests/data/fuzz/README.md).
REGRESSIONS = DATA / "fuzz"

#: Generous bound on deciding one input (normal inputs take milliseconds).
CASE_SECONDS = 5.0
#: Peak allocation allowed while deciding an input with hostile length fields: the
#: corpus logs are ~20 kB, a normal open peaks at about 1 MB, the lengths claim GiB.
ALLOC_BOUND = 16 << 20
#: Follower steps before a follower that keeps reporting progress is called hung.
MAX_FOLLOW_STEPS = 10_000

#: A history query (EventReader) on a ~20 kB log takes milliseconds; this is a hang.
HANG_SECONDS = 3.0
#: ... and this where a known bug (history-trusts-segment-names) makes hangs likely.
MISNAMED_HANG_SECONDS = 0.5

TYPED_READ_ERRORS = (LogCorruptError, HistoryUnavailableError)
Fingerprint = tuple[int, tuple[Any, ...]]

#: Library bugs found by these fuzzers and by tools/soak.py that are not fixed yet.
#: Each has a failing regression test (named in the entry).  Until a bug is fixed its
#: symptom is reported as the outcome "known: <name>" (tools/fuzz_all.py counts them)
#: instead of failing the fuzz test, so that the fuzzers keep looking for new
#: problems.  Remove the entry when the bug is fixed: its symptom then fails the fuzz
#: tests again.  The bugs fixed so far (commits 1dbbb1c, cc92e56, 0f32b28, d768d93,
#: 7caed5a, 921da0b) keep their regression tests below and in test_concurrency.py:
#: short-first-sample, refused-open-renames-checkpoints, empty-sample-value,
#: refused-open-truncates-tail, history-refuses-torn-tail, history-silently-short,
#: history-trusts-segment-names, follower-stalls-on-gap, follower-classifies-window,
#: follower-partial-apply, decode-frames-short-buffer, reserved-key-id,
#: verify-ignores-log-id, unsorted columns in a forged checkpoint,
#: follower-missing-segment, verify-races-writer, sealer-queue-join,
#: close-abandons-sealer.
# Every bug the fuzzers found is fixed (their regression tests are at the end of
# this file); list a newly found one here while it is open.
KNOWN_BUGS: dict[str, str] = {}


class KnownBug(Exception):
    """An oracle recognised the symptom of a bug listed in KNOWN_BUGS."""


def known(name: str) -> KnownBug:
    """The KnownBug to raise for a symptom of `name` (which must still be listed)."""
    assert name in KNOWN_BUGS, f"the symptom of {name}, listed as fixed, is back"
    return KnownBug(name)


class Hang(BaseException):
    """Raised by :func:`watchdog` when a block overruns (a BaseException, so that no
    ``except Exception`` in the code under test swallows it)."""


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Raise :exc:`Hang` in the main thread if the block runs longer than `seconds`.

    Uses SIGALRM.  A timer already running (pytest-timeout's, or an outer watchdog's)
    is suspended meanwhile and re-armed with the time it had left -- when the block
    ends, and also as the alarm fires, so it still fires if the Hang is swallowed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    start = time.monotonic()
    old_handler = signal.getsignal(signal.SIGALRM)
    old_delay, old_interval = signal.getitimer(signal.ITIMER_REAL)
    restored = False

    def restore() -> None:
        nonlocal restored
        if restored:
            return
        restored = True
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:
            left = max(old_delay - (time.monotonic() - start), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)

    def on_alarm(signum: int, frame: Any) -> None:
        restore()
        raise Hang(f"no answer within {seconds} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        restore()


@contextlib.contextmanager
def history_watchdog(seconds: float = HANG_SECONDS) -> Iterator[None]:
    """A hang inside the EventReader is a known bug (history-trusts-segment-names)."""
    try:
        with watchdog(seconds):
            yield
    except Hang as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        if any(f.filename.endswith(os.path.join("telstate_log", "storage", "_history.py"))
               for f in frames):
            raise known("history-trusts-segment-names") from exc
        raise


# --------------------------------------------------------------------------
# Choosers: where every random decision of a case comes from
# --------------------------------------------------------------------------
class Chooser(Protocol):
    def integer(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""

    def choice(self, options: Sequence[T]) -> T:
        """One of `options`."""

    def raw(self, size: int) -> bytes:
        """`size` arbitrary bytes."""

    def note(self, text: str) -> None:
        """Describe the input (shown when it fails)."""


class RandomChooser:
    """Decisions from a seeded :class:`random.Random` (tools/fuzz_all.py)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.notes: list[str] = []

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def raw(self, size: int) -> bytes:
        return self.rng.randbytes(size)

    def note(self, text: str) -> None:
        self.notes.append(text)


class DataChooser:
    """Decisions drawn by hypothesis (shrinkable, printed on failure)."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))

    def choice(self, options: Sequence[T]) -> T:
        return self.data.draw(st.sampled_from(options))

    def raw(self, size: int) -> bytes:
        return self.data.draw(st.binary(min_size=size, max_size=size))

    def note(self, text: str) -> None:
        note(text)


# --------------------------------------------------------------------------
# Segment bytes, parsed independently of telstate_log.core._log_format
# --------------------------------------------------------------------------
HEADER = 52
SEG_RE = re.compile(r"\d{20}\.seg")
_U32 = struct.Struct("<I")


def check_byte(kind: int, length: int) -> int:
    return (kind ^ length ^ (length >> 8) ^ (length >> 16) ^ (length >> 24) ^ 0x5A) & 0xFF


def frame_header(kind: int, length: int) -> bytes:
    return struct.pack("<HBBI", 0x1EA7, kind, check_byte(kind, length), length)


def frames_of(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, frame without its CRC) of every frame of a *valid* segment."""
    out = []
    off = HEADER
    while off < len(data):
        length = _U32.unpack_from(data, off + 4)[0]
        out.append((off, data[off:off + 8 + length]))
        off += 12 + length
    assert off == len(data), "corpus segment is not a sequence of frames"
    return out


def chain(header: bytes, frames: Sequence[bytes]) -> bytes:
    """A segment from a header and frames, with the chained CRCs recomputed."""
    out = bytearray(header)
    crc = zlib.crc32(header)
    for frame in frames:
        crc = zlib.crc32(frame, crc)
        out += frame
        tail = _U32.pack(crc)
        out += tail
        crc = zlib.crc32(tail, crc)
    return bytes(out)


def reseal_header(header: bytes) -> bytes:
    return header[:48] + _U32.pack(zlib.crc32(header[:48]))


def seg_names(files: dict[str, bytes]) -> list[str]:
    return sorted(name for name in files if SEG_RE.fullmatch(name))


def seg_first(name: str) -> int:
    return int(name[:20])


# --------------------------------------------------------------------------
# Reading a backend completely
# --------------------------------------------------------------------------
def fingerprint(b: Any) -> Fingerprint:
    """Position and every key's type and value, comparable across backends."""
    items = []
    for key in sorted(b.keys(b"*")):
        kind = b.key_type(key)
        if kind == KeyType.MUTABLE:
            value: Any = tuple(b.get_range(key, 0.0, math.inf, False, False) or ())
        else:
            value = b.get(key)[0]
            if isinstance(value, dict):
                value = tuple(sorted(value.items()))
        items.append((key, kind.name, value))
    return b.position, tuple(items)


def exercise(b: Any, choose: Chooser, history: bool = True) -> None:
    """Every kind of read; history may only fail with a typed error.

    `history=False` skips the EventReader (for files known to send it round in
    circles: case_history covers that).
    """
    for key in b.keys(b"*")[:12]:
        kind = b.key_type(key)
        b.get(key)
        try:
            b.dump(key)
        except ValueError as exc:
            if "empty zset" in str(exc):
                raise known("follower-partial-apply") from exc
            if "shorter than a timestamp plus a value" in str(exc):
                raise known("empty-sample-value") from exc
            raise
        if kind == KeyType.MUTABLE:
            b.get_range(key, 0.0, math.inf, True, True)
            rng = b.get_range_arrays(key, 0.0, math.inf, True, False)
            assert rng is not None
            len(rng)
        elif kind == KeyType.INDEXED:
            for sub in list(b.get(key)[0])[:3]:
                b.get_indexed(key, sub)
        if history:
            with history_watchdog(), contextlib.suppress(*TYPED_READ_ERRORS):
                b.history(key)
    if not history:
        return
    with history_watchdog(), contextlib.suppress(*TYPED_READ_ERRORS):
        b.events(choose.integer(0, b.position + 1))
    with history_watchdog(), contextlib.suppress(*TYPED_READ_ERRORS):
        b.resolve_time(1_700_000_000.0 + choose.integer(-10, 100))
    with history_watchdog(), contextlib.suppress(*TYPED_READ_ERRORS):
        fingerprint(b.as_of(position=choose.integer(0, b.position)))


def read_dir(path: Path) -> dict[str, bytes]:
    """Every file under `path` (relative POSIX names), except the writer's LOCK."""
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.name != "LOCK":
            out[p.relative_to(path).as_posix()] = p.read_bytes()
    return out


def materialize(path: Path, files: dict[str, bytes]) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    for name, data in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


@contextlib.contextmanager
def bounded(what: str, trace_alloc: bool = False) -> Iterator[None]:
    """Assert the block finishes within CASE_SECONDS of CPU time -- which other
    processes' load does not stretch -- (and below ALLOC_BOUND if traced)."""
    if trace_alloc:
        tracemalloc.start()
    start = time.process_time()
    try:
        yield
    finally:
        elapsed = time.process_time() - start
        peak = 0
        if trace_alloc:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    assert elapsed < CASE_SECONDS, f"{what} took {elapsed:.1f} s"
    assert peak < ALLOC_BOUND, f"{what} allocated {peak} bytes"


# --------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------
@dataclass
class Corpus:
    name: str
    files: dict[str, bytes]
    #: state after every position of the original log
    prefixes: dict[int, Fingerprint]
    #: the audit trail of the original log (one event per position)
    events: list[Any]
    log_id: bytes
    #: the log was pruned before this position (0: never)
    pruned: int = 0

    @property
    def final(self) -> Fingerprint:
        return self.prefixes[max(self.prefixes)]

    def checkpoints(self) -> list[str]:
        return sorted(n for n in self.files if n.startswith("checkpoints/")
                      and n.endswith(".ckpt"))


@contextlib.contextmanager
def deterministic_writer(seed: int) -> Iterator[None]:
    """Fix the writer's clock, session record and log id (as tests/test_format.py does)."""
    clock = (1_700_000_000.0 + 0.125 * i for i in itertools.count())

    def session(source: str | None) -> dict[str, object]:
        return {"source": source or "", "host": "fuzz-host", "pid": 1, "user": "fuzz",
                "started": 1_700_000_000.0, "version": "0"}

    with mock.patch("telstate_log.storage._event_writer._time", lambda: next(clock)), \
            mock.patch("telstate_log.storage._event_writer.time.time", lambda: 1_700_000_000.0), \
            mock.patch("telstate_log.storage._log_writer.writer_identity", session), \
            mock.patch("telstate_log.storage._log_writer.os.urandom",
                       lambda n: bytes((seed + i) % 256 for i in range(n))):
        yield


def write_mixed_log(path: Path, seed: int = 7, ops: int = 220) -> None:
    """A small log with every event kind, several segments and sessions, and a checkpoint."""
    rng = random.Random(seed)
    with deterministic_writer(seed), \
            LogBackend(path, fsync="never", flush_interval=0, segment_bytes=4096,
                       checkpoint_bytes=None, source="fuzz") as b:
        b.set_immutable(b"obs", encode_value("fuzz run"))
        for i in range(ops):
            r = rng.random()
            if r < 0.40:
                b.add_mutable(b"s%d" % rng.randrange(3), encode_value(rng.random()),
                              1000.0 + rng.randrange(300))
            elif r < 0.50:
                b.add_mutable_many(b"batch", [encode_value(float(i + j)) for j in range(3)],
                                   [2000.0 + i + j / 4 for j in range(3)])
            elif r < 0.55:
                b.add_mutable_many(b"modes", [encode_value("x" * rng.randrange(1, 6))
                                              for _ in range(2)], [3000.0 + i, 3000.5 + i])
            elif r < 0.70:
                b.set_indexed(b"idx", encode_value(rng.randrange(40)), encode_value(i))
            elif r < 0.78:
                b.set_immutable(b"imm%d" % rng.randrange(15), encode_value((i, "v")))
            elif r < 0.83:
                b.delete(rng.choice([b"s0", b"idx", b"imm3", b"modes"]))
            elif r < 0.835:
                b.clear()
            elif r < 0.86:
                b.set_source(f"src{i % 3}")
            else:
                b.add_mutable(b"s\xff odd", encode_value([1, (2, "a")]), float(i))
            if i == ops // 2:
                b.checkpoint()


def _references(path: Path) -> tuple[dict[int, Fingerprint], list[Any], bytes]:
    with LogBackend(path, readonly=True, follow=False, use_checkpoints=False) as b:
        prefixes = {p: fingerprint(b.as_of(position=p)) for p in range(b.position + 1)}
        assert prefixes[b.position] == fingerprint(b)
        events = b.events()
        assert [e.position for e in events] == list(range(1, b.position + 1))
        assert b.log_id is not None
        return prefixes, events, b.log_id


def _append_after_prune(path: Path, seed: int, prune_before: int | None) -> None:
    """Reopen the mixed log, prune it (or not), and write a few more events."""
    with deterministic_writer(seed), LogBackend(path, fsync="never", flush_interval=0,
                                                segment_bytes=4096, checkpoint_bytes=None,
                                                source="later") as b:
        if prune_before is not None:
            report = b.prune(before=prune_before)
            assert report.history_from == prune_before and len(report.removed) == 2
        for i in range(40):
            b.add_mutable(b"s1", encode_value(float(i)), 5000.0 + i)
            if i % 10 == 0:
                b.set_indexed(b"late", encode_value(i), encode_value("x" * i))


def _log_files(path: Path) -> dict[str, bytes]:
    """The files of a log that its readers decode (the seals file is written by a
    background thread, so its content depends on timing: left out)."""
    return {n: d for n, d in read_dir(path).items() if n != "seals"}


@cache
def corpus(name: str) -> Corpus:
    """The corpus log `name` ("golden", "mixed" or "pruned"), built once per process."""
    with tempfile.TemporaryDirectory(prefix="fuzz-corpus-") as tmp:
        path = Path(tmp) / "log"
        if name == "golden":
            shutil.copytree(GOLDEN_LOG, path)
            prefixes, events, log_id = _references(path)
            return Corpus(name, _log_files(path), prefixes, events, log_id)
        write_mixed_log(path)
        if name == "mixed":
            prefixes, events, log_id = _references(path)
            return Corpus(name, _log_files(path), prefixes, events, log_id)
        assert name == "pruned"
        # The same writes with and without pruning: the unpruned log is the reference.
        full = Path(tmp) / "full"
        shutil.copytree(path, full)
        cut = seg_first(seg_names(_log_files(path))[2])
        _append_after_prune(path, 7, cut)
        _append_after_prune(full, 7, None)
        prefixes, events, log_id = _references(full)
        files = _log_files(path)
        assert all(files[n] == d for n, d in _log_files(full).items() if n in files
                   and SEG_RE.fullmatch(n)), "pruning changed the segments it kept"
        return Corpus(name, files, prefixes, [e for e in events if e.position >= cut],
                      log_id, pruned=cut)


CORPORA = ("golden", "mixed", "pruned")


# --------------------------------------------------------------------------
# Damage to segments
# --------------------------------------------------------------------------
@dataclass
class Damage:
    files: dict[str, bytes]
    forged: bool  # chained CRCs recomputed around the damage
    hostile: bool = False  # a length field claims far more than the file holds
    what: str = ""


HOSTILE_U32 = (0xFFFFFFFF, fmt.MAX_BODY, fmt.MAX_BODY + 1, 1 << 31, 0x7FFFFFFF, 1 << 24)


def _segment(choose: Chooser, files: dict[str, bytes]) -> tuple[str, bytearray]:
    name = choose.choice([n for n in seg_names(files) if files[n]] or seg_names(files))
    return name, bytearray(files[name] or b"\0")


def _replace(files: dict[str, bytes], name: str,
             data: bytes | bytearray | None) -> dict[str, bytes]:
    out = dict(files)
    if data is None:
        del out[name]
    else:
        out[name] = bytes(data)
    return out


# Raw damage: what a disk, a crash or a careless tool can do (no CRC recomputed).
def raw_flip(choose: Chooser, files: dict[str, bytes]) -> Damage:
    name, data = _segment(choose, files)
    for _ in range(choose.integer(1, 3)):
        data[choose.integer(0, len(data) - 1)] ^= 1 << choose.integer(0, 7)
    return Damage(_replace(files, name, data), False, what=f"flip {name}")


def raw_scribble(choose: Chooser, files: dict[str, bytes]) -> Damage:
    name, data = _segment(choose, files)
    for _ in range(choose.integer(1, 4)):
        data[choose.integer(0, len(data) - 1)] = choose.integer(0, 255)
    return Damage(_replace(files, name, data), False, what=f"scribble {name}")


def raw_truncate(choose: Chooser, files: dict[str, bytes]) -> Damage:
    name, data = _segment(choose, files)
    cut = choose.integer(0, len(data) - 1)
    return Damage(_replace(files, name, data[:cut]), False, what=f"truncate {name} at {cut}")


def raw_cut_frames(choose: Chooser, files: dict[str, bytes]) -> Damage:
    """Cut at a frame boundary: a valid, shorter segment."""
    name, data = _segment(choose, files)
    frames = frames_of(bytes(data))
    keep = choose.integer(0, len(frames) - 1)
    end = frames[keep][0]
    return Damage(_replace(files, name, data[:end]), False, what=f"keep {keep} frames of {name}")


def raw_zero_tail(choose: Chooser, files: dict[str, bytes]) -> Damage:
    name, data = _segment(choose, files)
    start = choose.integer(0, len(data) - 1)
    data[start:] = bytes(len(data) - start)
    return Damage(_replace(files, name, data), False, what=f"zero {name} from {start}")


def raw_zero_range(choose: Chooser, files: dict[str, bytes]) -> Damage:
    name, data = _segment(choose, files)
    start = choose.integer(0, len(data) - 1)
    size = choose.integer(1, 600)
    data[start:start + size] = bytes(len(data[start:start + size]))
    return Damage(_replace(files, name, data), False, what=f"zero {name}[{start}:+{size}]")


def raw_append(choose: Chooser, files: dict[str, bytes]) -> Damage:
    name, data = _segment(choose, files)
    size = choose.integer(1, 300)
    extra = bytes(size) if choose.integer(0, 1) else choose.raw(size)
    return Damage(_replace(files, name, data + extra), False, what=f"append {size} to {name}")


def raw_hostile_length(choose: Chooser, files: dict[str, bytes]) -> Damage:
    """A frame's length field claims far more than the file holds (check byte consistent)."""
    name, data = _segment(choose, files)
    off, frame = choose.choice(frames_of(bytes(data)))
    length = choose.choice([*HOSTILE_U32, len(data), len(frame) - 7, 0, 3])
    data[off + 3] = check_byte(data[off + 2], length)
    data[off + 4:off + 8] = _U32.pack(length)
    return Damage(_replace(files, name, data), False, hostile=True,
                  what=f"length {length} at {name}:{off}")


def raw_remove(choose: Chooser, files: dict[str, bytes]) -> Damage:
    name = choose.choice(seg_names(files))
    return Damage(_replace(files, name, None), False, what=f"remove {name}")


def raw_swap_files(choose: Chooser, files: dict[str, bytes]) -> Damage:
    a = choose.choice(seg_names(files))
    b = choose.choice(seg_names(files))
    out = dict(files)
    out[a], out[b] = files[b], files[a]
    return Damage(out, False, what=f"swap files {a} {b}")


RAW: dict[str, Callable[[Chooser, dict[str, bytes]], Damage]] = {
    f.__name__: f for f in (raw_flip, raw_scribble, raw_truncate, raw_cut_frames,
                            raw_zero_tail, raw_zero_range, raw_append, raw_hostile_length,
                            raw_remove, raw_swap_files)}


# Forged damage: the chained CRCs are recomputed, so only the semantic checks remain.
def _frames(choose: Chooser, files: dict[str, bytes]) -> tuple[str, bytes, list[bytes]]:
    name = choose.choice(seg_names(files))
    data = files[name]
    return name, data[:HEADER], [f for _, f in frames_of(data)]


def _forged(files: dict[str, bytes], name: str, header: bytes, frames: list[bytes],
            what: str, hostile: bool = False) -> Damage:
    return Damage(_replace(files, name, chain(header, frames)), True, hostile, what)


def forged_splice(choose: Chooser, files: dict[str, bytes]) -> Damage:
    name, header, frames = _frames(choose, files)
    _, _, donor = _frames(choose, files)
    frame = choose.choice(donor)
    at = choose.integer(0, len(frames))
    frames.insert(at, frame)
    return _forged(files, name, header, frames, f"splice kind {frame[2]} into {name}@{at}")


def forged_duplicate(choose: Chooser, files: dict[str, bytes]) -> Damage:
    name, header, frames = _frames(choose, files)
    i = choose.integer(0, len(frames) - 1)
    frames.insert(i, frames[i])
    return _forged(files, name, header, frames, f"duplicate {name}#{i}")


def forged_drop(choose: Chooser, files: dict[str, bytes]) -> Damage:
    name, header, frames = _frames(choose, files)
    i = choose.integer(0, len(frames) - 1)
    del frames[i]
    return _forged(files, name, header, frames, f"drop {name}#{i}")


def forged_swap(choose: Chooser, files: dict[str, bytes]) -> Damage:
    name, header, frames = _frames(choose, files)
    i, j = choose.integer(0, len(frames) - 1), choose.integer(0, len(frames) - 1)
    frames[i], frames[j] = frames[j], frames[i]
    return _forged(files, name, header, frames, f"swap {name}#{i},{j}")


def forged_body(choose: Chooser, files: dict[str, bytes]) -> Damage:
    """Replace a frame's body with arbitrary bytes (keeping or changing its kind)."""
    name, header, frames = _frames(choose, files)
    i = choose.integer(0, len(frames) - 1)
    kind = choose.choice([frames[i][2], frames[i][2], choose.integer(0, 255)])
    body = choose.raw(choose.integer(0, 80))
    if choose.integer(0, 1):  # keep the event prefix (position, time, ids)
        body = frames[i][8:8 + 24] + body
    frames[i] = frame_header(kind, len(body)) + body
    return _forged(files, name, header, frames, f"body {name}#{i} kind {kind}")


_Field = tuple[int, str, tuple[Any, ...]]  # (offset in the body, struct format, values)
_EVENT_FIELDS: dict[str, _Field] = {
    "position": (0, "<Q", (0, 1, 2 ** 63, 2 ** 64 - 1, 17)),
    "recorded": (8, "<d", (math.nan, math.inf, -math.inf, -1.0, 0.0, 1e300, 5e-324)),
    "session": (16, "<I", (0, 1, 2, 7, 0xFFFFFFFF)),
    "key": (20, "<I", (0, 1, 2, 3, 9, 0xFFFFFFFF)),
}
_KIND_FIELDS: dict[int, dict[str, _Field]] = {
    fmt.ADD: {"timestamp": (24, "<d", (math.nan, math.inf, -1.0, -0.0, 0.0, 1e308, 5e-324))},
    fmt.INDEXED: {"sub-key length": (24, "<I", (0, 1, 1000, *HOSTILE_U32))},
    fmt.ADD_BATCH: {"count": (24, "<I", (0, 1, 2, 4, *HOSTILE_U32)),
                    "width": (28, "<I", (0, 1, 9, 10, 11, *HOSTILE_U32))},
}


def forged_field(choose: Chooser, files: dict[str, bytes]) -> Damage:
    """Rewrite one field of an event (or the kind of any frame) with a hostile value."""
    name, header, frames = _frames(choose, files)
    events = [i for i, f in enumerate(frames) if f[2] in fmt.EVENT_KINDS]
    i = choose.choice(events)
    frame = bytearray(frames[i])
    fields: dict[str, _Field] = {**_EVENT_FIELDS, **_KIND_FIELDS.get(frame[2], {}),
                                 "kind": (-6, "<B", ())}
    field_name = choose.choice(sorted(fields))
    off, code, values = fields[field_name]
    if field_name == "kind":
        kind = choose.integer(0, 255)
        frame[2] = kind
        frame[3] = check_byte(kind, len(frame) - 8)
        value: Any = kind
    else:
        value = choose.choice(values) if choose.integer(0, 3) else \
            struct.unpack(code, choose.raw(struct.calcsize(code)))[0]
        struct.pack_into(code, frame, 8 + off, value)
    frames[i] = bytes(frame)
    hostile = field_name in ("sub-key length", "count", "width")
    return _forged(files, name, header, frames, f"{field_name}={value!r} in {name}#{i}", hostile)


_HOSTILE_MSGPACK = (b"\xdb\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
                    b"\xc6\xff\xff\xff\xff", b"\x91" * 5000, b"\x81\xa1a" * 3, b"\xc1",
                    msgpack.packb([1, 2]), msgpack.packb("str"), msgpack.packb({1: 2}),
                    msgpack.packb({"source": [1] * 3}), b"")


def forged_meta(choose: Chooser, files: dict[str, bytes]) -> Damage:
    """Redefine, rename or garble a KEY or SESSION record."""
    name, header, frames = _frames(choose, files)
    metas = [i for i, f in enumerate(frames) if f[2] in (fmt.KEY, fmt.SESSION)]
    i = choose.choice(metas)
    kind, ident, payload = frames[i][2], frames[i][8:12], frames[i][12:]
    how = choose.choice(["id", "payload", "other"])
    if how == "id":
        ident = _U32.pack(choose.choice([0, 1, 2, 3, 0xFFFFFFFF, choose.integer(0, 99)]))
    elif how == "payload":
        payload = choose.choice(_HOSTILE_MSGPACK) if kind == fmt.SESSION else \
            choose.choice([b"", b"obs", b"s0", b"idx", choose.raw(choose.integer(0, 20))])
    else:
        kind = fmt.KEY if kind == fmt.SESSION else fmt.SESSION
    body = ident + payload
    frames[i] = frame_header(kind, len(body)) + body
    hostile = kind == fmt.SESSION and payload in _HOSTILE_MSGPACK[:4]
    return _forged(files, name, header, frames, f"meta {how} {name}#{i}", hostile)


_HEADER_FIELDS = {"magic": (0, "<8s"), "version": (8, "<B"), "flags": (9, "<B"),
                  "header length": (10, "<H"), "reserved": (12, "<I"),
                  "first position": (16, "<Q"), "created": (24, "<d"), "log id": (32, "<16s")}


def forged_header(choose: Chooser, files: dict[str, bytes]) -> Damage:
    """Rewrite a header field, reseal the header and rechain the frames after it."""
    name, header, frames = _frames(choose, files)
    field_name = choose.choice(sorted(_HEADER_FIELDS))
    off, code = _HEADER_FIELDS[field_name]
    size = struct.calcsize(code)
    head = bytearray(header)
    if field_name == "first position":
        first = seg_first(name)
        value = choose.choice([0, 1, first - 1, first + 1, 2 ** 64 - 1])
        struct.pack_into(code, head, off, value)
    else:
        head[off:off + size] = choose.raw(size)
    return _forged(files, name, reseal_header(bytes(head)), frames, f"header {field_name}")


def forged_extra_segment(choose: Chooser, files: dict[str, bytes]) -> Damage:
    """Add a well-formed segment: empty, or a copy of another's frames, at some position."""
    donor = choose.choice(seg_names(files))
    header = bytearray(files[donor][:HEADER])
    last = seg_first(seg_names(files)[-1])
    first = choose.choice([1, last, last + 1, last + 50, 10 ** 6, choose.integer(1, last + 300)])
    struct.pack_into("<Q", header, 16, first)
    frames = [f for _, f in frames_of(files[donor])] if choose.integer(0, 1) else []
    out = dict(files)
    out[f"{first:020d}.seg"] = chain(reseal_header(bytes(header)), frames)
    return Damage(out, True, what=f"extra segment at {first} ({len(frames)} frames)")


FORGED: dict[str, Callable[[Chooser, dict[str, bytes]], Damage]] = {
    f.__name__: f for f in (forged_splice, forged_duplicate, forged_drop, forged_swap,
                            forged_body, forged_field, forged_meta, forged_header,
                            forged_extra_segment)}
MUTATORS = {**RAW, **FORGED}
#: Mutators that need no valid frame structure (for a second round of damage).
BLIND = ("raw_flip", "raw_scribble", "raw_truncate", "raw_zero_tail", "raw_zero_range",
         "raw_append", "raw_remove", "raw_swap_files")


def damage_segments(choose: Chooser, files: dict[str, bytes],
                    mutators: Sequence[str] = tuple(MUTATORS)) -> Damage:
    """One or (rarely) two rounds of damage to the segments of `files`."""
    damage = MUTATORS[choose.choice(mutators)](choose, files)
    if choose.integer(0, 7) == 0 and seg_names(damage.files):
        again = MUTATORS[choose.choice(BLIND)](choose, damage.files)
        damage = Damage(again.files, damage.forged or again.forged,
                        damage.hostile or again.hostile, f"{damage.what}; {again.what}")
    return damage


def raw_expectations(orig: dict[str, bytes], damaged: dict[str, bytes]) -> tuple[bool, int]:
    """For raw damage read without checkpoints: (must the open refuse, lowest position).

    Finished segments hold no torn tail, so any change to one (or a segment missing
    before the newest) must be refused; so must a changed header of the newest, and
    damage in the newest followed by an intact frame.  An accepted open keeps every
    event before the newest segment.
    """
    present = seg_names(damaged)
    if not present:
        return False, 0
    newest = present[-1]
    must = any(name not in orig or damaged[name] != orig[name] for name in present[:-1])
    must |= any(name not in damaged and name < newest for name in seg_names(orig))
    now, was = damaged[newest], orig.get(newest)
    if not now.strip(b"\0"):
        pass  # a creation cut short (named, never written): it holds no event
    elif was is None or len(now) < HEADER or now[:HEADER] != was[:HEADER]:
        must = True
    elif now != was:
        first_diff = next((i for i, (a, b) in enumerate(zip(now, was)) if a != b),
                          min(len(now), len(was)))
        for off, frame in frames_of(was):
            end = off + len(frame) + 4
            if off - 4 > first_diff and now[off - 4:end] == was[off - 4:end]:
                must = True  # an intact frame after the damage: not a torn tail
                break
    return must, seg_first(newest) - 1


# --------------------------------------------------------------------------
# Cases: one damaged input each, checked against its oracle
# --------------------------------------------------------------------------
def _open(path: Path, **options: Any) -> LogBackend:
    return LogBackend(path, readonly=options.pop("readonly", True), follow=False,
                      **options)


def case_segments(choose: Chooser, work: Path) -> str:
    """Damaged segments opened read-only: a prefix of the log, or LogCorruptError."""
    c = corpus(choose.choice(CORPORA))
    use_ckpt = bool(c.pruned) or bool(choose.integer(0, 1))
    files = c.files if use_ckpt else {n: d for n, d in c.files.items()
                                      if not n.startswith("checkpoints/")}
    damage = damage_segments(choose, files)
    choose.note(f"{c.name}, checkpoints={use_ckpt}: {damage.what}")
    materialize(work, damage.files)
    events: list[Any] | LogCorruptError | None = None
    try:
        with bounded(damage.what, damage.hostile):
            b = _open(work, use_checkpoints=use_ckpt)
    except LogCorruptError as exc:
        refusal: LogCorruptError | None = exc
    else:
        refusal = None
        with b:
            got = fingerprint(b)
            if not use_ckpt:
                try:
                    with history_watchdog():
                        events = b.events()
                except LogCorruptError as exc:
                    events = exc
            exercise(b, choose)
    assert read_dir(work) == damage.files, "a read-only open changed the log"
    if not damage.forged:
        must_refuse, lowest = raw_expectations(files, damage.files)
        if refusal is None:
            assert got == c.prefixes.get(got[0]), "opened to a state that never existed"
            assert got[0] >= lowest, f"lost events of finished segments ({got[0]} < {lowest})"
            if isinstance(events, list):
                assert events == c.events[:got[0]], "history differs from the log"
        if must_refuse and not use_ckpt:
            assert refusal is not None, "damage that is not a torn tail was accepted"
    if isinstance(events, LogCorruptError):
        if torn_tail(damage.files):
            raise known("history-refuses-torn-tail")
        raise AssertionError(f"history fails on a log that opened: {events}")
    if refusal is not None and not use_ckpt and verify_log(work).ok:
        if "belongs to another log" in str(refusal):
            raise known("verify-ignores-log-id")
        raise AssertionError(f"verify passes a log that opening refuses ({refusal})")
    return "opened" if refusal is None else "refused"


def torn_tail(files: dict[str, bytes]) -> bool:
    """Whether the newest segment ends in something that is not a whole frame (or is
    all zeros: a creation cut short)."""
    names = seg_names(files)
    if not names:
        return False
    data = files[names[-1]]
    if not data.strip(b"\0"):
        return True
    if len(data) < HEADER:
        return False
    scan = fmt.scan_frames(memoryview(data), HEADER, len(data), zlib.crc32(data[:HEADER]))
    return scan.problem is not None


def _tail_truncated(before: dict[str, bytes], after: dict[str, bytes]) -> bool:
    """Whether `after` is `before` with the newest segment cut short (or removed, if
    it was all zeros)."""
    newest = seg_names(before)[-1]
    if any(after.get(n) != before[n] for n in before if n != newest):
        return False
    if newest not in after:
        return after.keys() == before.keys() - {newest} and not before[newest].strip(b"\0")
    return after.keys() == before.keys() and len(after[newest]) < len(before[newest]) \
        and before[newest].startswith(after[newest])


def case_segments_write(choose: Chooser, work: Path) -> str:
    """Damaged segments opened by a writer: a prefix (torn tail cut) it can extend, or
    LogCorruptError with nothing changed."""
    c = corpus(choose.choice(CORPORA))
    damage = damage_segments(choose, c.files)
    choose.note(f"{c.name}: {damage.what}")
    materialize(work, damage.files)
    try:
        with bounded(damage.what, damage.hostile), \
                LogBackend(work, fsync="never", checkpoint_bytes=None) as b:
            got = fingerprint(b)
            try:
                b.set_immutable(b"written after recovery", encode_value(got[0]))
            except struct.error:
                if damage.forged and 0xFFFFFFFF in b.log.tables.keys:
                    raise known("reserved-key-id") from None
                raise
            after = fingerprint(b)
    except LogCorruptError:
        now = read_dir(work)
        if now != damage.files and _tail_truncated(damage.files, now):
            raise known("refused-open-truncates-tail") from None
        assert now == damage.files, "a refused open changed the log"
        return "refused"
    if not damage.forged:
        assert got == c.prefixes.get(got[0]), "opened to a state that never existed"
    with _open(work) as again:
        assert fingerprint(again) == after, "reopening lost or changed acknowledged writes"
    return "opened"


_QUERIES = ("events", "history", "history-sub", "time", "as_of")


def _query(b: LogBackend, query: tuple[Any, ...], seconds: float = HANG_SECONDS) -> Any:
    kind = query[0]
    with history_watchdog(seconds):
        if kind == "events":
            return b.events(query[1], query[2])
        if kind == "history":
            return b.history(query[1])
        if kind == "history-sub":
            return b.history(query[1], query[2])
        if kind == "time":
            return b.resolve_time(query[1])
        return fingerprint(b.as_of(time=query[1]))


def _misnamed_segments(files: dict[str, bytes]) -> bool:
    """Whether a segment file holds another segment (its header or first event disagree
    with its name)."""
    for name in seg_names(files):
        data = files[name]
        header = fmt.parse_header(data[:HEADER])
        if isinstance(header, str):
            continue
        if header.first_position != seg_first(name):
            return True
        if len(data) >= HEADER + 20:
            kinds_and_pos = [(f[2], struct.unpack_from("<Q", f, 8)[0])
                             for _, f in _frames_prefix(data) if len(f) >= 16]
            firsts = [pos for kind, pos in kinds_and_pos if kind in fmt.EVENT_KINDS]
            if firsts and firsts[0] != seg_first(name):
                return True
    return False


def _frames_prefix(data: bytes) -> list[tuple[int, bytes]]:
    """The frames at the start of a possibly damaged segment, up to the first bad one."""
    out = []
    off = HEADER
    while off + 12 <= len(data):
        length = _U32.unpack_from(data, off + 4)[0]
        if off + 12 + length > len(data):
            break
        out.append((off, data[off:off + 8 + length]))
        off += 12 + length
    return out


def _silently_short(got: Any, want: Any) -> bool:
    """Whether `got` is `want` with events missing (lost without an error)."""
    if isinstance(want, list) and isinstance(got, list):  # events missing, none invented
        rest = iter(want)
        return len(got) < len(want) and all(any(g == w for w in rest) for g in got)
    if isinstance(want, int) and isinstance(got, int):
        return got < want
    if isinstance(want, tuple) and isinstance(got, tuple):  # as-of views: positions
        return bool(got[0] < want[0])
    return False


def case_history(choose: Chooser, work: Path) -> str:
    """EventReader over segments damaged after the log was opened: the same answers as
    before the damage, or a typed error."""
    c = corpus(choose.choice(CORPORA))
    use_ckpt = bool(c.pruned) or bool(choose.integer(0, 1))
    materialize(work, c.files)
    outcomes = set()
    with _open(work, use_checkpoints=use_ckpt) as b:
        keys = sorted({e.key for e in c.events if e.key is not None})
        queries: list[tuple[Any, ...]] = []
        for _ in range(3):
            q = choose.choice(_QUERIES)
            if q == "events":
                since = choose.integer(max(1, c.pruned), b.position)
                queries.append((q, since, choose.integer(since, b.position)))
            elif q in ("history", "history-sub"):
                key = choose.choice(keys)
                subs = sorted({e.sub_key for e in c.events if e.key == key and e.sub_key})
                queries.append((q, key, choose.choice(subs) if subs else b"\xff"))
            else:
                queries.append((q, 1_700_000_000.0 + choose.integer(0, 300) / 8))
        expected = []
        for query in queries:
            try:
                expected.append(_query(b, query))
            except HistoryUnavailableError:
                expected.append(HistoryUnavailableError)
        damage = damage_segments(choose, c.files)
        choose.note(f"{c.name}, checkpoints={use_ckpt}: {damage.what}; {queries}")
        materialize(work, damage.files)
        # Misnamed segments can send the EventReader round in circles (a known bug):
        # do not wait long for those.
        seconds = MISNAMED_HANG_SECONDS if _misnamed_segments(damage.files) else HANG_SECONDS
        short = False
        for query, want in zip(queries, expected):
            try:
                with bounded(f"{query} after {damage.what}", damage.hostile):
                    got = _query(b, query, seconds)
            except TYPED_READ_ERRORS as exc:
                outcomes.add(type(exc).__name__)
                continue
            if not damage.forged and got != want:
                if _silently_short(got, want):
                    short = True
                    continue
                if _misnamed_segments(damage.files):
                    raise known("history-trusts-segment-names")
                raise AssertionError(f"{query} answered wrongly from a damaged log")
            outcomes.add("answered")
        if short:
            raise known("history-silently-short")
    return "+".join(sorted(outcomes))


def case_follower(choose: Chooser, work: Path) -> str:
    """A follower reading damaged growth: it applies a prefix of the log and settles, or
    stops with LogCorruptError -- and agrees with a fresh reader of the same files."""
    c = corpus(choose.choice(("golden", "mixed")))
    segs = {n: d for n, d in c.files.items() if SEG_RE.fullmatch(n)}
    names = seg_names(segs)
    s = choose.integer(0, len(names) - 1)
    frames = frames_of(segs[names[s]])
    k = choose.integer(0, len(frames))
    cut = frames[k][0] if k < len(frames) else len(segs[names[s]])
    start = {n: segs[n] for n in names[:s]}
    start[names[s]] = segs[names[s]][:cut]
    materialize(work, start)
    damage = damage_segments(choose, segs)
    choose.note(f"{c.name}: follower from {names[s]}:{cut}; {damage.what}")
    with _open(work, use_checkpoints=False) as b:
        first = fingerprint(b)
        assert first == c.prefixes[first[0]]
        materialize(work, damage.files)
        refused = False
        with bounded(f"following {damage.what}", damage.hostile):
            try:
                for _ in range(MAX_FOLLOW_STEPS):
                    if not b.log.follow_step():
                        break
                else:
                    raise AssertionError("the follower never settled")
            except LogCorruptError:
                refused = True
            except FileNotFoundError:
                current = fmt.segment_name(b.log.tail.segment_first or 0)
                if current not in damage.files:
                    raise known("follower-missing-segment") from None
                raise
        got = fingerprint(b)
        exercise(b, choose, history=not _misnamed_segments(damage.files))
    assert got[0] >= first[0], "the follower went backwards"
    if damage.forged:
        return "refused" if refused else "settled"
    assert got == c.prefixes.get(got[0]), "the follower reached a state that never existed"
    consumed = all(damage.files.get(n) == segs[n] for n in names[:s]) and \
        damage.files.get(names[s], b"")[:cut] == segs[names[s]][:cut]
    if consumed:  # the damage is all in what the follower had not read yet
        try:
            with _open(work, use_checkpoints=False) as fresh:
                fresh_position: int | None = fresh.position
        except LogCorruptError:
            fresh_position = None
        if fresh_position is None and not refused:
            raise known("follower-stalls-on-gap")
        if fresh_position is not None and refused and got[0] == fresh_position:
            newest = seg_names(damage.files)[-1]
            if not damage.files[newest].strip(b"\0"):
                raise known("follower-refuses-torn-creation")
            raise known("follower-classifies-window")
        if fresh_position is not None:
            assert not refused and got[0] == fresh_position, \
                f"follower at {got[0]} (refused={refused}), a fresh reader at {fresh_position}"
    return "refused" if refused else "settled"


# Checkpoints ------------------------------------------------------------------
_TRAILER = struct.Struct("<8sB7xQ16sdQQQI")
_TRAILER_SIZE = _TRAILER.size + 4


def _split_checkpoint(data: bytes) -> tuple[bytes, dict[str, Any], list[Any]]:
    """(blob area, manifest, trailer fields) of a valid checkpoint."""
    fields = list(_TRAILER.unpack_from(data, len(data) - _TRAILER_SIZE))
    moff, mlen = fields[5], fields[6]
    manifest = msgpack.unpackb(data[moff:moff + mlen], raw=False, strict_map_key=False)
    return data[:moff], manifest, fields


def _join_checkpoint(blobs: bytes, manifest: Any, fields: list[Any]) -> bytes:
    packed = msgpack.packb(manifest, use_bin_type=True)
    body = blobs + packed
    fields = list(fields)
    fields[5], fields[6], fields[7], fields[8] = len(blobs), len(packed), len(body), \
        zlib.crc32(body)
    trailer = _TRAILER.pack(*fields)
    return bytes(body + trailer + _U32.pack(zlib.crc32(trailer)))


def _reseal_trailer(data: bytes, fields: list[Any]) -> bytes:
    trailer = _TRAILER.pack(*fields)
    return data[:len(data) - _TRAILER_SIZE] + trailer + _U32.pack(zlib.crc32(trailer))


_HOSTILE_VALUES: tuple[Any, ...] = (-1, 0, 1, 2 ** 63 - 1, -2 ** 63, 2 ** 64 - 1, 1.5, math.nan,
                                    None, "x", b"\xff", [], {}, [0, 0, 0], [0, 8, "<f8", 1],
                                    [0, 2 ** 40, "<f8", 2 ** 37], [8, 8, "|V8", 1],
                                    [0, 8, "O", 1], [0, 0, "<f8", 0])


def _walk(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths to every element of a manifest."""
    yield path
    if isinstance(node, dict):
        for k in node:
            yield from _walk(node[k], (*path, k))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, (*path, i))


def _set_path(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head = path[0]
    copy = dict(node) if isinstance(node, dict) else list(node)
    copy[head] = _set_path(node[head], path[1:], value)
    return copy


@cache
def foreign_checkpoint() -> bytes:
    """A valid checkpoint of another log (another log id)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_mixed_log(Path(tmp) / "other", seed=99, ops=60)
        files = read_dir(Path(tmp) / "other")
    return next(d for n, d in files.items() if n.endswith(".ckpt"))


def damage_checkpoint(choose: Chooser, data: bytes, other: bytes) -> tuple[bytes, bool, str]:
    """(damaged checkpoint, forged?, what)."""
    how = choose.choice(["flip", "scribble", "truncate", "extend", "zero", "foreign",
                         "trailer", "manifest", "manifest", "blob"])
    out = bytearray(data)
    if how == "flip":
        for _ in range(choose.integer(1, 3)):
            out[choose.integer(0, len(out) - 1)] ^= 1 << choose.integer(0, 7)
    elif how == "scribble":
        for _ in range(choose.integer(1, 4)):
            out[choose.integer(0, len(out) - 1)] = choose.integer(0, 255)
    elif how == "truncate":
        out = out[:choose.integer(0, len(out) - 1)]
    elif how == "extend":
        out += choose.raw(choose.integer(1, 100))
    elif how == "zero":
        start = choose.integer(0, len(out) - 1)
        out[start:start + 4096] = bytes(len(out[start:start + 4096]))
    elif how == "foreign":  # a valid checkpoint of another log
        out = bytearray(other)
    elif how == "trailer":  # one trailer field rewritten, trailer CRC recomputed
        fields = list(_TRAILER.unpack_from(data, len(data) - _TRAILER_SIZE))
        i = choose.integer(0, len(fields) - 1)
        old = fields[i]
        if isinstance(old, bytes):
            fields[i] = choose.raw(len(old))
        elif isinstance(old, float):
            fields[i] = choose.choice([math.nan, -1.0, 0.0, old + 1.0])
        else:
            limit = 0xFF if i == 1 else 0xFFFFFFFF if i == 8 else 2 ** 64 - 1
            fields[i] = min(limit, max(0, choose.choice([0, 1, old - 1, old + 1, limit])))
        return _reseal_trailer(data, fields), True, f"trailer field {i}: {old!r} -> {fields[i]!r}"
    elif how == "manifest":  # one manifest element replaced, every CRC recomputed
        blobs, manifest, fields = _split_checkpoint(data)
        paths = list(_walk(manifest))
        path = choose.choice(paths[1:])
        value = choose.choice(_HOSTILE_VALUES)
        return _join_checkpoint(blobs, _set_path(manifest, path, value), fields), True, \
            f"manifest {path} = {value!r}"
    else:  # blob bytes rewritten (timestamps, positions, values), every CRC recomputed
        blobs, manifest, fields = _split_checkpoint(data)
        garbled = bytearray(blobs)
        for _ in range(choose.integer(1, 8)):
            if garbled:
                garbled[choose.integer(0, len(garbled) - 1)] = choose.integer(0, 255)
        return _join_checkpoint(bytes(garbled), manifest, fields), True, "blob bytes"
    return bytes(out), False, how


def case_checkpoint(choose: Chooser, work: Path) -> str:
    """A damaged checkpoint is refused (CheckpointError) and the log opens by full replay
    to the same state; forged ones give a typed error or a readable state."""
    c = corpus(choose.choice(("mixed", "pruned")))
    name = choose.choice(c.checkpoints())
    data, forged, what = damage_checkpoint(choose, c.files[name], foreign_checkpoint())
    choose.note(f"{c.name}: {name}: {what}")
    files = {**c.files, name: data}
    materialize(work, files)
    with bounded(f"loading checkpoint ({what})", trace_alloc=not forged):
        try:
            state = load_checkpoint(str(work / name), c.log_id)
        except CheckpointError:
            state = None
    accepted = state is not None
    del state  # release the checkpoint's memory map
    if not forged and data != c.files[name]:
        assert not accepted, "a damaged checkpoint was accepted"
    # Opening read-only, then as a writer (which sets a bad checkpoint aside).
    results: list[Fingerprint | None] = []
    for readonly in (True, False):
        try:
            with bounded(f"opening with checkpoint ({what})"), \
                    _open(work, readonly=readonly, checkpoint_bytes=None) as b:
                results.append(fingerprint(b))
                try:
                    exercise(b, choose)
                except (ValueError, OSError) as exc:
                    if forged:  # reads of a state taken from an unvalidated checkpoint
                        raise known("forged-checkpoint-trusted") from exc
                    raise
        except LogCorruptError:
            results.append(None)
    if forged:
        return "opened" if results[0] is not None else "refused"
    for got in results:
        if c.pruned and name == c.checkpoints()[-1] and data != c.files[name]:
            # the only checkpoint covering the pruned segments is gone: refuse
            assert got is None, "a pruned log opened without its checkpoint"
        else:
            assert got == c.final, "a damaged checkpoint changed the opened state"
    return "opened" if results[0] is not None else "refused"


# Small decoders ------------------------------------------------------------------
def case_frames(choose: Chooser, work: Path) -> str:
    """scan_frames / decode_frames / find_valid_frame / classify_tail on garbage after
    valid frames: never an exception, never stopping before an intact frame, and every
    frame reported really verifies."""
    c = corpus(choose.choice(("golden", "mixed")))
    seg = c.files[choose.choice(seg_names(c.files))]
    frames = frames_of(seg)
    k = choose.integer(0, len(frames))
    good_end = frames[k][0] if k < len(frames) else len(seg)
    tail_kind = choose.choice(["raw", "mutated", "zeros", "frames"])
    if tail_kind == "raw":
        tail = choose.raw(choose.integer(0, 64))
    elif tail_kind == "zeros":
        tail = bytes(choose.integer(0, 700))
    else:
        rest = bytearray(seg[good_end:])
        for _ in range(choose.integer(0, 4)):
            if rest:
                rest[choose.integer(0, len(rest) - 1)] = choose.integer(0, 255)
        if tail_kind == "frames" and len(rest) >= 8:  # a hostile length in the next frame
            length = choose.choice(HOSTILE_U32)
            rest[3] = check_byte(rest[2], length)
            rest[4:8] = _U32.pack(length)
        tail = bytes(rest[:choose.integer(0, len(rest))])
    data = seg[:good_end] + tail
    # Scan from the header, or from a frame boundary as the EventReader and the
    # follower do: a window starting with the previous frame's CRC.
    frame_starts = [o for o, _ in frames[:k]] + [good_end]
    base = choose.choice(frame_starts) - 4 if choose.integer(0, 1) else 0
    window = data[base:]
    start = HEADER if base == 0 else 4
    seed = zlib.crc32(data[:HEADER]) if base == 0 else \
        zlib.crc32(window[:4], _U32.unpack_from(window, 0)[0])
    mv = memoryview(window)
    with bounded("scan", trace_alloc=True):
        scan = fmt.scan_frames(mv, start, len(window), seed)
        dec = fmt.decode_frames(mv, scan)
        torn = classify_tail(window, scan) if scan.problem else None
        found = fmt.find_valid_frame(mv, choose.integer(0, len(window)), len(window))
    assert scan.end >= good_end - base, "scanning stopped before an intact frame"
    assert (scan.problem is None) == (scan.end == len(window))
    crc = seed
    off = start
    for o, length in zip(scan.offsets.tolist(), scan.lengths.tolist()):
        assert o == off and o + 12 + length <= len(window)
        crc = zlib.crc32(window[o:o + 8 + length], crc)
        assert crc == _U32.unpack_from(window, o + 8 + length)[0], "an unverified frame"
        crc = zlib.crc32(window[o + 8 + length:o + 12 + length], crc)
        off = o + 12 + length
    assert off == scan.end and crc == scan.crc
    assert len(dec.kinds) == len(scan.offsets)
    if found is not None:
        length = _U32.unpack_from(window, found + 4)[0]
        prev = _U32.unpack_from(window, found - 4)[0]
        assert zlib.crc32(window[found - 4:found + 8 + length], prev) == \
            _U32.unpack_from(window, found + 8 + length)[0]
    header = bytearray(seg[:HEADER])
    for _ in range(choose.integer(0, 2)):
        header[choose.integer(0, HEADER - 1)] = choose.integer(0, 255)
    if choose.integer(0, 1):
        header = bytearray(reseal_header(bytes(header)))
    cut = choose.integer(0, HEADER)
    parsed = fmt.parse_header(bytes(header[:cut]))
    if not isinstance(parsed, str):
        assert cut == HEADER and header[:8] == b"TSLOGSEG" and header[8] == 1
        assert zlib.crc32(header[:48]) == _U32.unpack_from(header, 48)[0]
    return "torn" if torn else "corrupt" if torn is False else "clean"


_TYPE_REPLIES: tuple[Any, ...] = (b"none", b"string", b"zset", b"hash", b"list", b"stream",
                                  "zset", "string", b"", b"\xff\xfe", 5, None)


def _message(choose: Chooser) -> Any:
    kind = choose.choice(["raw", "typed", "immutable", "mutable", "indexed", "mutated",
                          "other"])
    if kind == "raw":
        return choose.raw(choose.integer(0, 40))
    if kind == "typed":
        return bytes([choose.integer(1, 3)]) + choose.raw(choose.integer(0, 40))
    if kind == "other":
        return choose.choice(["text", 3, None, [b"x"], bytearray(b"\x01a"), memoryview(b"\x01")])
    ts = struct.unpack(">d", choose.raw(8))[0] if choose.integer(0, 1) else \
        float(choose.integer(0, 10 ** 10)) / 7
    value = choose.raw(choose.integer(0, 20))
    if kind == "immutable":
        return immutable_message(value)
    if kind == "mutable":
        return b"\x02" * choose.integer(0, 1) + mutable_message(value, abs(ts))
    msg = bytearray(indexed_message(choose.raw(choose.integer(0, 12)), value))
    if kind == "mutated":
        for _ in range(choose.integer(1, 3)):
            msg[choose.integer(0, len(msg) - 1)] = choose.choice(
                [ord("0"), ord("9"), ord("\n"), ord("-"), 0xD9, choose.integer(0, 255)])
    return bytes(msg)


def case_messages(choose: Chooser, work: Path) -> str:
    """Redis ``update/<key>`` messages: a typed update that re-encodes to the message,
    or a plain KeyUpdateBase ("check again"); never an exception."""
    key = choose.raw(choose.integer(0, 6))
    data = _message(choose)
    reply = choose.choice(_TYPE_REPLIES)
    lookups = []

    def execute(op: Any) -> Any:
        assert op == ("command", "TYPE", key), op
        lookups.append(op)
        return reply

    with bounded("decoding a message"):
        update = run_exchange(exchange_update(key, data), execute)
    assert isinstance(update, KeyUpdateBase)
    if type(update) is KeyUpdateBase:
        return "recheck"
    assert isinstance(data, bytes)
    body = data if lookups else data[1:]
    assert isinstance(update, (MutableKeyUpdate, IndexedKeyUpdate, ImmutableKeyUpdate))
    assert update.key == key
    if isinstance(update, MutableKeyUpdate):
        assert 0.0 <= update.timestamp < math.inf
        assert mutable_message(update.value, update.timestamp) == body
        return "mutable"
    if isinstance(update, IndexedKeyUpdate):
        assert not lookups, "an untyped message decoded as indexed"
        digits, _, rest = body.partition(b"\n")
        assert digits.isdigit() and int(digits) == len(update.sub_key)
        assert rest == update.sub_key + update.value
        return "indexed"
    assert isinstance(update, ImmutableKeyUpdate) and update.value == body
    return "immutable"


@cache
def _rdb_corpus() -> tuple[bytes, ...]:
    return tuple(p.read_bytes() for p in RDB_FILES)


def case_rdb_load(choose: Chooser, work: Path) -> str:
    """load_from_file of a damaged RDB file into a MemoryBackend: RdbParseError (or a
    conflict) with the backend unchanged, or exactly the file's keys added."""
    data = bytearray(choose.choice(_rdb_corpus()))
    how = choose.choice(["flip", "scribble", "truncate", "none"])
    if how == "flip":
        for _ in range(choose.integer(1, 3)):
            data[choose.integer(0, len(data) - 1)] ^= 1 << choose.integer(0, 7)
    elif how == "scribble":
        for _ in range(choose.integer(1, 3)):
            data[choose.integer(0, len(data) - 1)] = choose.integer(0, 255)
    elif how == "truncate":
        data = data[:choose.integer(0, len(data) - 1)]
    backend = MemoryBackend()
    backend.set_immutable(b"before", encode_value("untouched"))
    backend.add_mutable(b"before_sensor", encode_value(1.0), 5.0)
    backend.set_indexed(b"before_index", encode_value("a"), encode_value(2))
    before = fingerprint(backend)
    try:
        with bounded(f"load_from_file ({how})"):
            backend.load_from_file(io.BytesIO(bytes(data)))
    except (RdbParseError, ImmutableKeyError) as exc:
        assert fingerprint(backend) == before, f"a refused import changed the backend: {exc}"
        return type(exc).__name__
    entries = [e for e in iter_rdb(bytes(data)) if e.db == 0]
    for entry in entries:
        if entry.kind in (KeyType.IMMUTABLE, KeyType.INDEXED):
            assert backend.get(entry.key)[0] == entry.value
        else:
            got = backend.get_range(entry.key, 0.0, math.inf, False, False)
            assert got is not None
            assert [struct.pack(">d", t) + v for v, t in got] == entry.value
    assert len(backend.keys(b"*")) == len(before[1]) + len({e.key for e in entries})
    return "loaded"


@cache
def _stored_values() -> tuple[bytes, ...]:
    values = set()
    for name in ("golden", "mixed"):
        for e in corpus(name).events:
            for v in (e.value, e.sub_key):
                if v:
                    values.add(v)
    return tuple(sorted(values))


def case_values(choose: Chooser, work: Path) -> str:
    """The values stored in the corpus logs, mutated: DecodeError or a value."""
    value = bytearray(choose.choice(_stored_values()))
    for _ in range(choose.integer(0, 3)):
        value[choose.integer(0, len(value) - 1)] = choose.integer(0, 255)
    value = value[:choose.integer(0, len(value))]
    try:
        with bounded("decode_value", trace_alloc=choose.integer(0, 9) == 0):
            decode_value(bytes(value), allow_pickle=False)
    except DecodeError:
        return "DecodeError"
    return "decoded"


#: Every decoder's cases, for the tests below and tools/fuzz_all.py.
CASES: dict[str, Callable[[Chooser, Path], str]] = {
    "segments (read-only open)": case_segments,
    "segments (writer open)": case_segments_write,
    "history (EventReader)": case_history,
    "follower (incremental reads)": case_follower,
    "checkpoints": case_checkpoint,
    "frames and headers": case_frames,
    "redis pub/sub messages": case_messages,
    "rdb load_from_file": case_rdb_load,
    "values (decode_value)": case_values,
}


def run_case(decoder: str, choose: Chooser, work: Path) -> str:
    """Run one input of `decoder`; symptoms of known bugs become "known: <bug>"."""
    try:
        try:
            return CASES[decoder](choose, work)
        except IndexError as exc:
            where = traceback.extract_tb(exc.__traceback__)[-1]
            if where.name == "decode_frames" and where.filename.endswith("_format.py"):
                raise known("decode-frames-short-buffer") from exc
            raise
    except KnownBug as bug:
        return f"known: {bug}"


def quiet_library_warnings() -> int:
    """Mute the library's (expected) warnings about damage; returns the old level."""
    logger = logging.getLogger("telstate_log")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    return level


# --------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------
def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A scratch directory; the library's warnings about damage are expected and muted."""
    level = quiet_library_warnings()
    yield tmp_path_factory.mktemp("fuzz") / "case"
    logging.getLogger("telstate_log").setLevel(level)


def test_corpus_is_deterministic_and_complete() -> None:
    """The corpus reproduces byte for byte (so seeds replay) and covers every record kind."""
    with tempfile.TemporaryDirectory() as tmp:
        write_mixed_log(Path(tmp) / "again")
        assert _log_files(Path(tmp) / "again") == corpus("mixed").files
    kinds = set()
    for name in ("golden", "mixed"):
        for seg in seg_names(corpus(name).files):
            kinds |= {frame[2] for _, frame in frames_of(corpus(name).files[seg])}
    assert kinds == fmt.EVENT_KINDS | {fmt.KEY, fmt.SESSION}
    assert len(seg_names(corpus("mixed").files)) >= 4
    assert corpus("mixed").checkpoints() and corpus("pruned").pruned > 1


@fuzz_settings(400)
@given(st.data())
def test_fuzz_segments_read_only(work: Path, data: st.DataObject) -> None:
    run_case("segments (read-only open)", DataChooser(data), work)


@fuzz_settings(250)
@given(st.data())
def test_fuzz_segments_writer(work: Path, data: st.DataObject) -> None:
    run_case("segments (writer open)", DataChooser(data), work)


@fuzz_settings(250)
@given(st.data())
def test_fuzz_history(work: Path, data: st.DataObject) -> None:
    run_case("history (EventReader)", DataChooser(data), work)


@fuzz_settings(200)
@given(st.data())
def test_fuzz_follower(work: Path, data: st.DataObject) -> None:
    run_case("follower (incremental reads)", DataChooser(data), work)


@fuzz_settings(120)
@given(st.data())
def test_fuzz_checkpoints(work: Path, data: st.DataObject) -> None:
    run_case("checkpoints", DataChooser(data), work)


@fuzz_settings(400)
@given(st.data())
def test_fuzz_frames_and_headers(work: Path, data: st.DataObject) -> None:
    run_case("frames and headers", DataChooser(data), work)


@fuzz_settings(600)
@given(st.data())
def test_fuzz_redis_messages(work: Path, data: st.DataObject) -> None:
    run_case("redis pub/sub messages", DataChooser(data), work)


@fuzz_settings(200)
@given(st.data())
def test_fuzz_rdb_load_from_file(work: Path, data: st.DataObject) -> None:
    run_case("rdb load_from_file", DataChooser(data), work)


@fuzz_settings(200)
@given(st.data())
def test_fuzz_stored_values(work: Path, data: st.DataObject) -> None:
    run_case("values (decode_value)", DataChooser(data), work)


def _outcomes(decoder: str, seeds: range, work: Path) -> list[str]:
    """Outcomes of seeded inputs, with oracle violations as "violation"."""
    out = []
    for seed in seeds:
        try:
            out.append(run_case(decoder, RandomChooser(seed), work))
        except AssertionError:
            out.append("violation")
    return out


def test_oracles_catch_a_fail_open_recovery(work: Path) -> None:
    """The oracles can fail: a recovery that takes every damaged tail for a torn one
    (and so silently drops intact events after damage) is caught."""
    with mock.patch("telstate_log.storage._recovery.classify_tail", lambda data, scan: True):
        outcomes = _outcomes("segments (read-only open)", range(300), work)
    assert "violation" in outcomes
    assert "violation" not in _outcomes("segments (read-only open)", range(300), work)


def test_oracles_catch_an_untyped_error(work: Path) -> None:
    """An exception other than the decoder's typed error escapes the case."""
    def strict_header(data: Any) -> Any:
        if bytes(data[:8]) != b"TSLOGSEG":
            raise ValueError("bad magic")
        return real_parse_header(data)

    real_parse_header = fmt.parse_header
    with mock.patch.object(fmt, "parse_header", strict_header), pytest.raises(ValueError):
        _outcomes("segments (read-only open)", range(300), work)


# --------------------------------------------------------------------------
# Regression tests for the bugs these fuzzers found.  Each docstring describes the
# bug as it was found; all are fixed except those still listed in KNOWN_BUGS.
# --------------------------------------------------------------------------
def test_short_first_sample_in_memory_and_rdb_import() -> None:
    """short-first-sample: values are arbitrary bytes at the backend API (katsdptelstate
    accepts them), and our own golden RDB file holds a sensor with 1-byte values."""
    memory = MemoryBackend()
    memory.add_mutable(b"k", b"a", 1.0)
    memory.add_mutable_many(b"many", [b"c", b"bb"], [1.0, 2.0])
    assert memory.get_range(b"k", 0.0, math.inf, False, False) == [(b"a", 1.0)]
    assert memory.get_range(b"many", 0.0, math.inf, False, False) == [(b"c", 1.0),
                                                                       (b"bb", 2.0)]
    imported = MemoryBackend()
    imported.load_from_file(str(DATA / "rdb" / "telstate_log_v9.rdb"))
    entries = {e.key: e for e in iter_rdb(str(DATA / "rdb" / "telstate_log_v9.rdb"))}
    assert set(imported.keys(b"*")) == set(entries)


def test_short_first_sample_does_not_corrupt_the_log(tmp_path: Path) -> None:
    """short-first-sample on a log: the event is written, the state is not updated, the
    next write reuses its position and the log no longer opens."""
    with LogBackend(tmp_path / "log", fsync="never") as b:
        b.set_immutable(b"before", encode_value(1))
        with contextlib.suppress(AttributeError):
            b.add_mutable(b"short", b"a", 1.0)
        b.set_immutable(b"after", encode_value(2))
        written = fingerprint(b)
    with _open(tmp_path / "log") as again:
        assert fingerprint(again) == written


def test_refused_writer_open_changes_nothing(tmp_path: Path) -> None:
    """refused-open-renames-checkpoints: README: damage "raises LogCorruptError ... and
    changes nothing".  A writer that finds damage after a checkpoint's resume point
    renames the (healthy) checkpoint to .bad; for a pruned log that was the only
    checkpoint covering the pruned part, so restoring the damaged segment from a
    backup no longer makes the log open."""
    c = corpus("pruned")
    newest = seg_names(c.files)[-1]
    damaged = bytearray(c.files[newest])
    damaged[len(damaged) - 150] ^= 0x01  # after the checkpoint, intact frames follow
    files = {**c.files, newest: bytes(damaged)}
    materialize(tmp_path / "log", files)
    with pytest.raises(LogCorruptError):
        LogBackend(tmp_path / "log")
    (tmp_path / "log" / newest).write_bytes(c.files[newest])  # restored from a backup
    with _open(tmp_path / "log") as b:
        assert fingerprint(b) == c.final
    assert read_dir(tmp_path / "log") == c.files


def test_history_with_missing_segment_is_not_silently_short(tmp_path: Path) -> None:
    """history-silently-short: with a segment gone (or cut short) after the log was
    opened, history answers from what is left instead of raising LogCorruptError."""
    c = corpus("golden")
    materialize(tmp_path / "log", c.files)
    newest = seg_names(c.files)[-1]
    with _open(tmp_path / "log") as b:
        key = c.events[-1].key
        want_history = b.history(key)
        (tmp_path / "log" / newest).unlink()
        with pytest.raises(LogCorruptError):
            events = b.events()
            assert events == c.events, f"{len(events)} of {len(c.events)} events"
        with pytest.raises(LogCorruptError):
            assert b.history(key) == want_history


def test_history_of_misnamed_segment_does_not_hang(tmp_path: Path) -> None:
    """history-trusts-segment-names: the EventReader goes from file to file by event
    positions without checking headers or progress; the newest segment file holding a
    copy of the first segment (a misfiled copy) sends it round in circles."""
    c = corpus("mixed")
    names = seg_names(c.files)
    materialize(tmp_path / "log", c.files)
    with _open(tmp_path / "log", use_checkpoints=False) as b:
        (tmp_path / "log" / names[-1]).write_bytes(c.files[names[0]])
        with watchdog(HANG_SECONDS), pytest.raises(LogCorruptError):
            b.events()


def test_history_of_misnamed_segments_is_not_wrong(tmp_path: Path) -> None:
    """history-trusts-segment-names: with two segment files swapped, history answers
    with the events of the wrong segment (their frames verify locally)."""
    c = corpus("mixed")
    names = seg_names(c.files)
    materialize(tmp_path / "log", c.files)
    with _open(tmp_path / "log") as b:
        want = b.history(b"s1")
        (tmp_path / "log" / names[2]).write_bytes(c.files[names[3]])
        (tmp_path / "log" / names[3]).write_bytes(c.files[names[2]])
        with contextlib.suppress(LogCorruptError):
            assert b.history(b"s1") == want


def test_history_of_a_log_with_a_torn_tail(tmp_path: Path) -> None:
    """history-refuses-torn-tail: a zero-filled tail (allocated, never written) is a torn
    tail that a read-only open accepts, but the EventReader reads on into it and
    raises LogCorruptError."""
    c = corpus("golden")
    newest = seg_names(c.files)[-1]
    materialize(tmp_path / "log", {**c.files, newest: c.files[newest] + bytes(4096)})
    with _open(tmp_path / "log") as b:
        assert fingerprint(b) == c.final
        assert b.events() == c.events


def test_accepted_samples_can_be_dumped() -> None:
    """empty-sample-value: a backend that accepts a sample must be able to dump the
    sensor (DUMP payloads and RDB exports need at least one byte of value)."""
    b = MemoryBackend()
    b.add_mutable(b"k", encode_value(1.0), 1.0)
    try:
        b.add_mutable(b"k", b"", 2.0)
    except ValueError:
        return  # refusing empty values is a fix too
    assert b.dump(b"k") is not None


def test_refused_writer_open_does_not_truncate(tmp_path: Path) -> None:
    """refused-open-truncates-tail: README: damage raises LogCorruptError "and changes
    nothing"; the writer cuts a torn tail before it replays the frames before it, so
    an open refused for a bad event in the newest segment has dropped its tail."""
    c = corpus("golden")
    newest = seg_names(c.files)[-1]
    frames = [f for _, f in frames_of(c.files[newest])]
    frames.insert(8, frames[3])  # a duplicated event: position out of sequence
    damaged = chain(c.files[newest][:HEADER], frames) + bytes(700)
    files = {**c.files, newest: damaged}
    materialize(tmp_path / "log", files)
    with pytest.raises(LogCorruptError):
        LogBackend(tmp_path / "log")
    assert read_dir(tmp_path / "log") == files


def test_refused_writer_open_keeps_a_torn_segment_creation(tmp_path: Path) -> None:
    """refused-open-truncates-tail: an all-zero newest segment (named, never written) is
    removed by a writer as a creation cut short while it tries the checkpoint, before
    the older segments are validated by the full replay that follows, so an open
    refused for damage in one of those has changed the log."""
    c = corpus("pruned")
    names = seg_names(c.files)
    damaged = bytearray(c.files[names[0]])
    damaged[len(damaged) // 2] ^= 0x01  # a finished segment: never a torn tail
    files = {**c.files, names[0]: bytes(damaged), names[-1]: bytes(len(c.files[names[-1]]))}
    materialize(tmp_path / "log", files)
    with pytest.raises(LogCorruptError):
        LogBackend(tmp_path / "log")
    assert read_dir(tmp_path / "log") == files


def _event_frame(kind: int, pos: int, rec: float, session: int, key_id: int,
                 extra: bytes) -> bytes:
    body = struct.pack("<QdII", pos, rec, session, key_id) + extra
    return frame_header(kind, len(body)) + body


def test_follower_state_after_an_invalid_frame(tmp_path: Path) -> None:
    """follower-partial-apply: a follower that meets an invalid event stops with
    LogCorruptError, but keeps what the replayer had applied of that batch: a sensor
    created for a sample with a bad timestamp (and no samples), and events after it."""
    c = corpus("golden")
    second = seg_names(c.files)[-1]
    frames = [f for _, f in frames_of(c.files[second])]
    last = c.events[-1]
    pos, rec = last.position + 1, last.recorded
    frames += [
        frame_header(fmt.KEY, 4 + 7) + _U32.pack(900) + b"phantom",
        _event_frame(fmt.ADD, pos, rec, 0, 900, struct.pack("<d", math.nan) + b"\xff\xc0"),
        frame_header(fmt.KEY, 4 + 4) + _U32.pack(901) + b"late",
        _event_frame(fmt.IMMUTABLE, pos + 1, rec, 0, 901, b"\xff\xc3"),
    ]
    materialize(tmp_path / "log", c.files)
    with _open(tmp_path / "log", use_checkpoints=False) as b:
        (tmp_path / "log" / second).write_bytes(chain(c.files[second][:HEADER], frames))
        with pytest.raises(LogCorruptError):
            while b.log.follow_step():
                pass
        assert fingerprint(b) == c.final


def test_follower_reports_a_gap(tmp_path: Path) -> None:
    """follower-stalls-on-gap: a follower looks only for the segment named after its
    position + 1, so a later segment after a gap (events lost) leaves it waiting
    forever with follow_error None, where a fresh reader raises LogCorruptError."""
    c = corpus("golden")
    first, second = seg_names(c.files)
    materialize(tmp_path / "log", {first: c.files[first][:HEADER]})
    with _open(tmp_path / "log", use_checkpoints=False) as b:
        (tmp_path / "log" / second).write_bytes(c.files[second])
        with pytest.raises(LogCorruptError):
            LogBackend(tmp_path / "log", readonly=True, follow=False)
        with pytest.raises(LogCorruptError):
            while b.log.follow_step():
                pass


def test_follower_refuses_an_empty_segment_before_a_written_one(tmp_path: Path) -> None:
    """follower-stalls-on-gap (again, found by test_fuzz_follower): the follower took
    an empty segment named after its next position for a creation cut short and
    waited, although a written segment follows it (so it is damage, which a fresh
    reader refuses).  Only a trailing run of empty segments is a crash's leftover."""
    c = corpus("mixed")
    names = seg_names(c.files)
    assert len(names) >= 3
    materialize(tmp_path / "log", {names[0]: c.files[names[0]]})
    with _open(tmp_path / "log", use_checkpoints=False) as b:
        b.log.follow_step()
        for name in names[1:]:
            (tmp_path / "log" / name).write_bytes(c.files[name])
        (tmp_path / "log" / names[1]).write_bytes(b"")
        with pytest.raises(LogCorruptError):
            LogBackend(tmp_path / "log", readonly=True, follow=False)
        with pytest.raises(LogCorruptError):
            for _ in range(5):
                b.log.follow_step()


def test_follower_accepts_a_torn_tail(tmp_path: Path) -> None:
    """follower-classifies-window: the follower hands classify_tail a window starting
    at its read offset, so the 512-byte sector boundaries of a zero-filled tail are
    computed from the window, not the file, and the follower can refuse (and stop
    for good) a torn tail that a fresh reader, or the writer, accepts."""
    c = corpus("golden")
    first, second = seg_names(c.files)
    offsets = [off for off, _ in frames_of(c.files[second])]
    for start_frame in range(1, len(offsets)):
        for zero_from in range(offsets[start_frame] + 1, len(c.files[second]), 37):
            torn = bytearray(c.files[second])
            torn[zero_from:] = bytes(len(torn) - zero_from)
            materialize(tmp_path / "log", {first: c.files[first],
                                           second: c.files[second][:offsets[start_frame]]})
            with _open(tmp_path / "log", use_checkpoints=False) as b:
                (tmp_path / "log" / second).write_bytes(bytes(torn))
                try:
                    with _open(tmp_path / "log", use_checkpoints=False) as fresh:
                        accepted = fresh.position
                except LogCorruptError:
                    continue
                try:
                    while b.log.follow_step():
                        pass
                except LogCorruptError as exc:
                    raise AssertionError(f"follower from {offsets[start_frame]} refuses a "
                                         f"tail zeroed from {zero_from} that a fresh reader "
                                         f"accepts at {accepted}: {exc}") from None
                assert b.position == accepted


def test_follower_accepts_a_torn_segment_creation(tmp_path: Path) -> None:
    """follower-refuses-torn-creation: a crash can leave the newest segment named but
    empty (created without syncs); a fresh reader ignores it and a restarted writer
    removes it, but a follower moving on to it stops for good on its missing header."""
    c = corpus("golden")
    first, second = seg_names(c.files)
    materialize(tmp_path / "log", {first: c.files[first]})
    with _open(tmp_path / "log", use_checkpoints=False) as b:
        (tmp_path / "log" / second).write_bytes(b"")
        with _open(tmp_path / "log", use_checkpoints=False) as fresh:
            accepted = fresh.position
        while b.log.follow_step():
            pass
        assert b.position == accepted


def test_decode_frames_of_a_short_window() -> None:
    """decode-frames-short-buffer: decode_frames gathers 24 bytes for every frame, so a
    buffer shorter than that (a window holding one short KEY frame, as the follower
    reads while the writer is between writes) raises IndexError."""
    crc = 0x1234ABCD
    window = bytearray(_U32.pack(crc))
    frame = frame_header(fmt.KEY, 5) + _U32.pack(7) + b"k"
    running = zlib.crc32(frame, zlib.crc32(window, crc))
    window += frame + _U32.pack(running)
    mv = memoryview(bytes(window))
    scan = fmt.scan_frames(mv, 4, len(window), zlib.crc32(window[:4], crc))
    assert scan.problem is None and len(scan.offsets) == 1
    dec = fmt.decode_frames(mv, scan)
    assert dec.kinds.tolist() == [fmt.KEY] and dec.counts.tolist() == [0]


def test_reserved_key_id_is_refused(tmp_path: Path) -> None:
    """reserved-key-id: a KEY record may not take the id CLEAR events use (NO_KEY); a log
    that has one either refuses to open or stays writable -- it used to open, and the
    writer then numbered the next key 2**32, which cannot be framed."""
    c = corpus("golden")
    newest = seg_names(c.files)[-1]
    frames = [f for _, f in frames_of(c.files[newest])]
    last = c.events[-1]
    frames += [frame_header(fmt.KEY, 4 + 8) + _U32.pack(fmt.NO_KEY) + b"reserved",
               _event_frame(fmt.IMMUTABLE, last.position + 1, last.recorded, 0, fmt.NO_KEY,
                            encode_value(1))]
    materialize(tmp_path / "log", {**c.files, newest: chain(c.files[newest][:HEADER], frames)})
    try:
        b = LogBackend(tmp_path / "log", fsync="never")
    except LogCorruptError:
        return
    with b:
        b.set_immutable(b"a new key", encode_value(2))
        assert b.get(b"a new key")[0] == encode_value(2)


def test_verify_checks_log_ids(tmp_path: Path) -> None:
    """verify-ignores-log-id: a segment of another log (its header carries another log
    id) makes opening fail, but verify_log reports the log as ok."""
    c = corpus("golden")
    first, second = seg_names(c.files)
    header = bytearray(c.files[second][:HEADER])
    header[32:48] = bytes(range(100, 116))
    foreign = chain(reseal_header(bytes(header)), [f for _, f in frames_of(c.files[second])])
    materialize(tmp_path / "log", {first: c.files[first], second: foreign})
    with pytest.raises(LogCorruptError, match="another log"):
        _open(tmp_path / "log")
    assert not verify_log(tmp_path / "log").ok


def test_checkpoint_time_index_is_validated(tmp_path: Path) -> None:
    """forged-checkpoint-trusted: the time index a checkpoint carries (segment and byte
    offset of every 1024th event) is adopted unchecked; offsets outside the segments
    make every history query fail with OSError (a negative seek) instead of being
    refused when the checkpoint is loaded."""
    c = corpus("mixed")
    name = c.checkpoints()[-1]
    blobs, manifest, fields = _split_checkpoint(c.files[name])
    offset, nbytes, dtype, count = manifest["time_off"]
    assert count and dtype == "<i8"
    garbled = bytearray(blobs)
    garbled[offset:offset + nbytes] = struct.pack(f"<{count}q", *[-4096] * count)
    forged = _join_checkpoint(bytes(garbled), manifest, fields)
    materialize(tmp_path / "log", {**c.files, name: forged})
    with _open(tmp_path / "log") as b, contextlib.suppress(*TYPED_READ_ERRORS):
        assert b.events() == c.events


def test_checkpoint_columns_are_validated(tmp_path: Path) -> None:
    """forged-checkpoint-trusted: load_checkpoint checks CRCs and lengths but not the
    columns it adopts; a checkpoint whose sample timestamps are out of order is
    trusted and reads of that sensor then fail (dump raises ValueError)."""
    c = corpus("mixed")
    name = c.checkpoints()[-1]
    blobs, manifest, fields = _split_checkpoint(c.files[name])
    entries = manifest["entries"]
    i = next(i for i, (_, m) in enumerate(entries) if m[0] == "m" and m[3][3] >= 2)
    offset = entries[i][1][3][0]
    garbled = bytearray(blobs)
    a, b = garbled[offset:offset + 8], garbled[offset + 8:offset + 16]
    garbled[offset:offset + 16] = b + a  # the first two timestamps swapped
    forged = _join_checkpoint(bytes(garbled), manifest, fields)
    materialize(tmp_path / "log", {**c.files, name: forged})
    with pytest.raises(CheckpointError):
        load_checkpoint(str(tmp_path / "log" / name), c.log_id)
