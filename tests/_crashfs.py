"""Crash-state enumeration for the log: record file operations, replay power losses.

Theory of operation
-------------------
:class:`RecordingFileSystem` is a :class:`~telstate_log.storage._fileio.FileSystem`
that performs every operation on a real directory (through
:class:`~telstate_log.storage._fileio.OsFileSystem`) and appends it to an ordered
*trace*: creates and opens (with the file's identity, an *inode* number of
our own, so renames keep data attached to the file rather than the name),
writes with their bytes and file offset, truncates, ``fdatasync`` of a file,
directory creation, renames, removes and directory syncs.  The workload adds
*marks* ("ack": a write call returned with the log at position P; "durable":
the caller was told P is on stable storage).  Reads are passed through
unrecorded.  Operations are recorded under one lock, in the order they
happened, whichever thread issued them.

:func:`crash_states` turns a trace into the directory contents a power loss
could leave.  It walks the trace keeping a *durable* image -- file contents
by inode and directory entries by directory -- and a list of *pending*
operations not yet made durable:

* ``sync(file)`` makes every pending write/truncate of that file durable
  (its data and its size);
* ``sync_dir(dir)`` makes that directory's pending entry changes durable
  (creates, renames, removes, sub-directory creation), so a renamed, synced
  file is durable only after the directory sync.

Every sync closes an *epoch*.  A crash just before the sync (or at the end
of the trace) leaves the durable image plus any prefix of the pending
operations, in order; because pending lists only grow inside an epoch, this
also covers every earlier crash point of the epoch.  For a prefix the model
produces (the *ordered* model, which a journalling file system respects):

* ``prefix``: the durable image plus the first p pending operations;
* ``torn``/``torn-zero``: the last write of the prefix persisted only up to a
  512-byte or 4 KiB boundary of the file -- the file either ends there or
  keeps its new size with the unwritten sectors reading as zeros;
* ``lost-entries``: the prefix's data, but only a prefix of its directory
  changes (a created or renamed file vanishes, a removed file reappears).

With ``relaxed=True`` it adds states a weaker file system (or an unlucky
writeback order) can produce, reported separately because a log may then
legitimately refuse to open -- but must fail closed, never open wrong:

* ``hole``: a sector in the middle of the last write reads as zeros while
  later sectors persisted;
* ``meta-ahead``: directory changes persisted before the data written ahead
  of them (the classic zero-length file after a rename);
* ``per-file``: each file's pending writes persisted to its own, independent
  prefix.

Each state carries the *floor*: the highest position the workload was told
was durable before the crash point (a state produced by several crash points
keeps the strictest).  Identical states are merged; when there are more than
a budget, a seeded sample is taken (ordered and relaxed states separately).

:func:`check_state` materialises one state into a fresh directory and opens
it with a plain :class:`~telstate_log.backends.LogBackend`.  It must open (or,
in a relaxed state only, raise :exc:`LogCorruptError`), hold exactly the
state after the first P events of the workload (from a deliberately simple
reference model, ``tests/_model.py``) with P at least the floor, accept a
further write and reopen with it, and pass ``verify_log`` (checksums, seal
chain, checkpoints against the replayed log).

Not modelled: the log directory's own entry in its parent (taken as
durable), the LOCK file, reordering of one file's sectors inside the
ordered model (only the last write can be torn), bit rot and misdirected
writes (checksums cover those; see test_log_backend), and the page cache
of a *surviving* kernel (a process kill; see tools/killloop.py).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from _model import Model

from telstate_log.backends import LogBackend
from telstate_log.core._encoding import encode_value
from telstate_log.core._errors import LogCorruptError
from telstate_log.storage._fileio import FileSystem, OsFileSystem
from telstate_log.storage._repair import verify_log

__all__ = [
    "POLICIES",
    "WORKLOADS",
    "CrashSpace",
    "CrashState",
    "Driver",
    "Op",
    "Outcome",
    "RecordingFileSystem",
    "Reference",
    "Snapshot",
    "add_event",
    "check_state",
    "crash_states",
    "durable_image",
    "materialise",
    "record_workload",
    "run_states",
    "scratch_root",
]

DIR = -1  #: directory entry value for a sub-directory (files map to inode numbers)
DATA_OPS = frozenset({"write", "truncate"})
DIR_OPS = frozenset({"create", "mkdir", "rename", "remove"})


# ---------------------------------------------------------------- the trace
@dataclass(frozen=True)
class Op:
    """One recorded operation (fields unused by a kind keep their defaults).

    ``path``/``dst`` are relative to the recorder's root; ``inode`` names the
    file an operation touches; ``offset``/``data`` describe a write, ``size``
    a truncate; ``label``/``value`` a workload mark.
    """

    kind: str
    path: str = ""
    dst: str = ""
    inode: int = -1
    offset: int = 0
    data: bytes = b""
    size: int = 0
    label: str = ""
    value: int = 0

    @property
    def dir(self) -> str:
        """The directory whose entries a create/mkdir/rename/remove changes."""
        return os.path.dirname(self.path)

    def describe(self) -> str:
        if self.kind == "write":
            return f"write(#{self.inode} @{self.offset} +{len(self.data)})"
        if self.kind == "mark":
            return f"mark({self.label} {self.value})"
        if self.kind == "rename":
            return f"rename({self.path} -> {self.dst})"
        if self.kind in ("sync", "close", "truncate"):
            extra = f", {self.size}" if self.kind == "truncate" else ""
            return f"{self.kind}(#{self.inode}{extra})"
        return f"{self.kind}({self.path})"


@dataclass
class Snapshot:
    """File contents by inode and directory entries by directory ("" = root)."""

    data: dict[int, bytes] = field(default_factory=dict)
    dirs: dict[str, dict[str, int]] = field(default_factory=lambda: {"": {}})

    def copy(self) -> Snapshot:
        return Snapshot(dict(self.data), {d: dict(e) for d, e in self.dirs.items()})

    def visible(self) -> tuple[dict[str, bytes], list[str]]:
        """Files (path -> bytes) and sub-directories reachable from the root."""
        files: dict[str, bytes] = {}
        dirs: list[str] = []
        stack = [""]
        while stack:
            d = stack.pop()
            for name, ino in self.dirs.get(d, {}).items():
                p = os.path.join(d, name)
                if ino == DIR:
                    dirs.append(p)
                    stack.append(p)
                else:
                    files[p] = self.data.get(ino, b"")
        return files, sorted(dirs)


def apply_op(snap: Snapshot, op: Op, persisted: bytes | None = None) -> None:
    """Apply a data or directory operation to `snap` in place.

    `persisted` replaces a write's bytes (a torn or holed write).
    """
    kind = op.kind
    if kind == "write":
        payload = op.data if persisted is None else persisted
        cur = snap.data.get(op.inode, b"")
        if op.offset > len(cur):
            cur += bytes(op.offset - len(cur))
        snap.data[op.inode] = cur[:op.offset] + payload + cur[op.offset + len(payload):]
    elif kind == "truncate":
        cur = snap.data.get(op.inode, b"")
        snap.data[op.inode] = cur[:op.size] + bytes(max(0, op.size - len(cur)))
    elif kind == "create":
        snap.dirs.setdefault(op.dir, {})[os.path.basename(op.path)] = op.inode
    elif kind == "mkdir":
        snap.dirs.setdefault(op.dir, {})[os.path.basename(op.path)] = DIR
        snap.dirs.setdefault(op.path, {})
    elif kind == "rename":
        ino = snap.dirs.setdefault(op.dir, {}).pop(os.path.basename(op.path), None)
        if ino is not None:
            snap.dirs.setdefault(os.path.dirname(op.dst), {})[os.path.basename(op.dst)] = ino
    elif kind == "remove":
        snap.dirs.setdefault(op.dir, {}).pop(os.path.basename(op.path), None)
    else:  # pragma: no cover - programming error
        raise ValueError(f"not a data or directory operation: {op.kind}")


class RecordingFileSystem(FileSystem):
    """Performs operations on a real directory and records them (module docstring).

    Files present under `root` when it is created form the initial durable
    image (:attr:`initial`); names in `ignore` (the writer's LOCK) are left
    out.  Every mutation must go through this object: a file the log touches
    that was created behind its back raises :exc:`RuntimeError`, and
    :meth:`check_against_disk` compares the recorded page-cache image with
    the real directory.
    """

    def __init__(self, root: str | os.PathLike[str], inner: FileSystem | None = None,
                 ignore: Iterable[str] = ("LOCK",)) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.inner = inner if inner is not None else OsFileSystem()
        self.ignore = frozenset(ignore)
        self.trace: list[Op] = []
        self._lock = threading.RLock()
        self._fd_inode: dict[int, int] = {}
        self._names: dict[str, int] = {}
        self._dirs: set[str] = {""}
        self._sizes: dict[int, int] = {}
        self._next_inode = 0
        self.initial = self._scan()

    # -------------------------------------------------------------- helpers
    def _new_inode(self) -> int:
        self._next_inode += 1
        return self._next_inode

    def _rel(self, path: str) -> str:
        rel = os.path.relpath(os.path.abspath(path), self.root)
        if rel == ".":
            return ""
        if rel == ".." or rel.startswith(".." + os.sep):
            raise ValueError(f"{path!r} is outside the recorded directory {self.root!r}")
        return rel

    def _scan(self) -> Snapshot:
        snap = Snapshot()
        os.makedirs(self.root, exist_ok=True)
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = self._rel(dirpath)
            entries = snap.dirs.setdefault(rel, {})
            for name in sorted(dirnames):
                entries[name] = DIR
                self._dirs.add(os.path.join(rel, name))
            for name in sorted(filenames):
                p = os.path.join(rel, name)
                if name in self.ignore and rel == "":
                    continue
                ino = self._new_inode()
                with open(os.path.join(dirpath, name), "rb") as f:
                    snap.data[ino] = f.read()
                entries[name] = ino
                self._names[p] = ino
                self._sizes[ino] = len(snap.data[ino])
        return snap

    def _inode_of(self, rel: str) -> int:
        try:
            return self._names[rel]
        except KeyError:
            raise RuntimeError(f"{rel!r} was not created through the recorded file system"
                               ) from None

    def mark(self, label: str, value: int) -> None:
        """Insert a workload mark ("ack", "durable") into the trace."""
        with self._lock:
            self.trace.append(Op("mark", label=label, value=value))

    # ------------------------------------------------------- FileSystem API
    def create(self, path: str) -> int:
        with self._lock:
            fd = self.inner.create(path)
            rel = self._rel(path)
            ino = self._new_inode()
            self._names[rel] = ino
            self._sizes[ino] = 0
            self._fd_inode[fd] = ino
            self.trace.append(Op("create", rel, inode=ino))
            return fd

    def open_append(self, path: str) -> int:
        with self._lock:
            rel = self._rel(path)
            ino = self._inode_of(rel)
            fd = self.inner.open_append(path)
            self._fd_inode[fd] = ino
            self.trace.append(Op("open", rel, inode=ino))
            return fd

    def write(self, fd: int, data: bytes | memoryview) -> int:
        with self._lock:
            n = self.inner.write(fd, data)
            ino = self._fd_inode[fd]
            offset = self._sizes[ino]
            if n > 0:
                self.trace.append(Op("write", inode=ino, offset=offset,
                                     data=bytes(memoryview(data)[:n])))
                self._sizes[ino] = offset + n
            return n

    def sync(self, fd: int) -> None:
        with self._lock:
            self.inner.sync(fd)
            self.trace.append(Op("sync", inode=self._fd_inode[fd]))

    def truncate(self, fd: int, size: int) -> None:
        with self._lock:
            self.inner.truncate(fd, size)
            ino = self._fd_inode[fd]
            self._sizes[ino] = size
            self.trace.append(Op("truncate", inode=ino, size=size))

    def close(self, fd: int) -> None:
        with self._lock:
            self.inner.close(fd)
            ino = self._fd_inode.pop(fd)
            self.trace.append(Op("close", inode=ino))

    def sync_dir(self, path: str) -> None:
        with self._lock:
            self.inner.sync_dir(path)
            self.trace.append(Op("sync_dir", self._rel(path)))

    def rename(self, src: str, dst: str) -> None:
        with self._lock:
            rs, rd = self._rel(src), self._rel(dst)
            if os.path.dirname(rs) != os.path.dirname(rd):
                raise NotImplementedError("renames across directories are not modelled")
            ino = self._inode_of(rs)
            self.inner.rename(src, dst)
            del self._names[rs]
            self._names[rd] = ino
            self.trace.append(Op("rename", rs, rd, inode=ino))

    def remove(self, path: str) -> None:
        with self._lock:
            rel = self._rel(path)
            ino = self._inode_of(rel)
            self.inner.remove(path)
            del self._names[rel]
            self.trace.append(Op("remove", rel, inode=ino))

    def makedirs(self, path: str) -> None:
        with self._lock:
            rel = self._rel(path)
            missing = []
            d = rel
            while d and d not in self._dirs:
                missing.append(d)
                d = os.path.dirname(d)
            self.inner.makedirs(path)
            for d in reversed(missing):
                self._dirs.add(d)
                self.trace.append(Op("mkdir", d))

    def read(self, path: str, offset: int = 0, size: int = -1) -> bytes:
        return self.inner.read(path, offset, size)

    def size(self, path: str) -> int:
        return self.inner.size(path)

    def listdir(self, path: str) -> list[str]:
        return self.inner.listdir(path)

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    # ------------------------------------------------------------ checking
    def page_cache(self) -> Snapshot:
        """The image with every recorded operation applied (what the OS shows now)."""
        snap = self.initial.copy()
        for op in self.trace:
            if op.kind in DATA_OPS or op.kind in DIR_OPS:
                apply_op(snap, op)
        return snap

    def check_against_disk(self) -> None:
        """Raise AssertionError if the real directory differs from the recorded image.

        This is what proves the log sent every mutation through the file
        system interface (the crash states are only as good as the trace).
        """
        files, dirs = self.page_cache().visible()
        real_files: dict[str, bytes] = {}
        real_dirs: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = self._rel(dirpath)
            real_dirs.extend(os.path.join(rel, d) for d in dirnames)
            for name in filenames:
                if rel == "" and name in self.ignore:
                    continue
                with open(os.path.join(dirpath, name), "rb") as f:
                    real_files[os.path.join(rel, name)] = f.read()
        if sorted(real_dirs) != dirs:
            raise AssertionError(f"directories differ: recorded {dirs}, on disk "
                                 f"{sorted(real_dirs)}")
        if set(real_files) != set(files):
            raise AssertionError(f"files differ: recorded {sorted(files)}, on disk "
                                 f"{sorted(real_files)}")
        for p, data in files.items():
            if real_files[p] != data:
                raise AssertionError(f"{p}: recorded {len(data)} bytes differ from the "
                                     f"{len(real_files[p])} bytes on disk")


# ------------------------------------------------------- crash-state model
@dataclass
class CrashState:
    """One directory image a power loss could leave (see module docstring)."""

    files: dict[str, bytes]
    dirs: list[str]
    floor: int  #: events the workload was told were durable before the crash point
    variant: str  #: prefix, torn, torn-zero, lost-entries, hole, meta-ahead, per-file
    ordered: bool  #: produced by the ordered model (so it must open)
    where: str  #: crash point and prefix, for messages


@dataclass
class CrashSpace:
    """The states of one trace: ``states`` (possibly sampled) and counts."""

    states: list[CrashState]
    epochs: int
    candidates: int  #: states generated before merging duplicates
    unique_ordered: int
    unique_relaxed: int


@dataclass
class _Epoch:
    end: int  # index of the sync ending it (or len(trace))
    base: Snapshot
    pending: tuple[int, ...]
    floor: int


def _epochs(trace: list[Op], initial: Snapshot) -> list[_Epoch]:
    durable = initial.copy()
    pending: list[int] = []
    floor = 0
    out: list[_Epoch] = []
    for i, op in enumerate(trace):
        kind = op.kind
        if kind == "sync" or kind == "sync_dir":
            out.append(_Epoch(i, durable.copy(), tuple(pending), floor))
            keep = []
            for j in pending:
                p = trace[j]
                if (kind == "sync" and p.kind in DATA_OPS and p.inode == op.inode) or \
                        (kind == "sync_dir" and p.kind in DIR_OPS and p.dir == op.path):
                    apply_op(durable, p)
                else:
                    keep.append(j)
            pending = keep
        elif kind in DATA_OPS or kind in DIR_OPS:
            pending.append(i)
            if kind == "mkdir":  # the new directory's own (durable) entries: none yet
                durable.dirs.setdefault(op.path, {})
        elif kind == "mark" and op.label == "durable":
            floor = max(floor, op.value)
    out.append(_Epoch(len(trace), durable.copy(), tuple(pending), floor))
    return out


def _cuts(op: Op, granularities: tuple[int, ...], limit: int, rng: random.Random,
          include_start: bool) -> list[int]:
    """File offsets (sector boundaries) inside a write where it may be torn."""
    start, end = op.offset, op.offset + len(op.data)
    cuts: set[int] = {start} if include_start else set()
    for g in granularities:
        first = (start // g + 1) * g
        cuts.update(range(first, end, g))
    out = sorted(cuts)
    if len(out) > limit:  # keep both ends, sample the middle
        keep = set(out[:2] + out[-2:])
        keep.update(rng.sample(out[2:-2], max(0, limit - len(keep))))
        out = sorted(keep)
    return out


class _Collector:
    def __init__(self) -> None:
        self.states: dict[Any, CrashState] = {}
        self.candidates = 0

    def add(self, snap: Snapshot, floor: int, variant: str, ordered: bool, where: str) -> None:
        self.candidates += 1
        files, dirs = snap.visible()
        key = (tuple(sorted(files.items())), tuple(dirs))
        old = self.states.get(key)
        if old is None:
            self.states[key] = CrashState(files, dirs, floor, variant, ordered, where)
            return
        old.floor = max(old.floor, floor)
        if ordered and not old.ordered:
            old.ordered, old.variant, old.where = True, variant, where


def crash_states(trace: list[Op], initial: Snapshot, *, budget: int | None = None,
                 seed: int = 0, relaxed: bool = False,
                 granularities: tuple[int, ...] = (512, 4096), max_cuts: int = 8,
                 relaxed_fraction: float = 0.25, per_file_samples: int = 4) -> CrashSpace:
    """The crash states of `trace` (module docstring), merged and possibly sampled.

    `budget` bounds the number returned (a seeded sample, `relaxed_fraction`
    of it relaxed states); `max_cuts` bounds the tear points tried per write.
    """
    rng = random.Random(seed)
    col = _Collector()
    epochs = _epochs(trace, initial)
    for e in epochs:
        _epoch_states(trace, e, col, rng, relaxed, granularities, max_cuts, per_file_samples)
    ordered = [s for s in col.states.values() if s.ordered]
    loose = [s for s in col.states.values() if not s.ordered]
    chosen = ordered + loose
    if budget is not None and len(chosen) > budget:
        n_loose = min(len(loose), int(budget * relaxed_fraction)) if loose else 0
        n_ord = min(len(ordered), budget - n_loose)
        n_loose = min(len(loose), budget - n_ord)
        chosen = rng.sample(ordered, n_ord) + rng.sample(loose, n_loose)
    return CrashSpace(chosen, len(epochs), col.candidates, len(ordered), len(loose))


def _epoch_states(trace: list[Op], e: _Epoch, col: _Collector, rng: random.Random,
                  relaxed: bool, granularities: tuple[int, ...], max_cuts: int,
                  per_file_samples: int) -> None:
    pend = e.pending
    work = e.base.copy()
    dir_ops: list[Op] = []  # directory operations among pend[:p]
    at = f"crash before op {e.end}"
    col.add(work, e.floor, "prefix", True, f"{at}, nothing pending persisted")
    for p in range(1, len(pend) + 1):
        op = trace[pend[p - 1]]
        where = f"{at}, {p}/{len(pend)} pending ops persisted, last {op.describe()}"
        if op.kind == "write":
            for cut in _cuts(op, granularities, max_cuts, rng, include_start=False):
                keep = op.data[:cut - op.offset]
                s = work.copy()
                apply_op(s, op, keep)
                col.add(s, e.floor, "torn", True, f"{where} torn at {cut}")
            for cut in _cuts(op, granularities, max_cuts, rng, include_start=True):
                keep = op.data[:cut - op.offset]
                s = work.copy()
                apply_op(s, op, keep + bytes(len(op.data) - len(keep)))
                col.add(s, e.floor, "torn-zero", True, f"{where} zeros from {cut}")
            if relaxed:
                _holes(op, work, e, col, rng, granularities, where)
        apply_op(work, op)
        if op.kind in DIR_OPS:
            dir_ops.append(op)
        col.add(work, e.floor, "prefix", True, where)
        if dir_ops and (op.kind in DIR_OPS or p == len(pend)):
            for q in range(len(dir_ops)):
                s = Snapshot(work.data, {d: dict(x) for d, x in e.base.dirs.items()})
                for d_op in dir_ops[:q]:
                    apply_op(s, d_op)
                col.add(s, e.floor, "lost-entries", True,
                        f"{where}, only {q}/{len(dir_ops)} directory changes persisted")
        if relaxed:
            later = [trace[j] for j in pend[p:] if trace[j].kind in DIR_OPS][:3]
            s = work.copy()
            for r, d_op in enumerate(later, 1):
                apply_op(s, d_op)
                col.add(s, e.floor, "meta-ahead", False,
                        f"{where}, {r} later directory changes persisted before their data")
    if relaxed and pend:
        _per_file(trace, e, col, rng, per_file_samples, at)


def _holes(op: Op, work: Snapshot, e: _Epoch, col: _Collector, rng: random.Random,
           granularities: tuple[int, ...], where: str) -> None:
    """A sector in the middle of `op` never written while later ones were."""
    start, end = op.offset, op.offset + len(op.data)
    for g in granularities:
        holes = [b for b in range((start // g + 1) * g, end - g, g)]
        for b in rng.sample(holes, min(2, len(holes))):
            data = bytearray(op.data)
            data[b - start:b - start + g] = bytes(g)
            s = work.copy()
            apply_op(s, op, bytes(data))
            col.add(s, e.floor, "hole", False, f"{where}, sector {b}+{g} lost")


def _per_file(trace: list[Op], e: _Epoch, col: _Collector, rng: random.Random, n: int,
              at: str) -> None:
    """Each file's pending writes persisted to an independent prefix."""
    by_inode: dict[int, list[int]] = {}
    dir_idx: list[int] = []
    for j in e.pending:
        op = trace[j]
        if op.kind in DATA_OPS:
            by_inode.setdefault(op.inode, []).append(j)
        else:
            dir_idx.append(j)
    for _ in range(n):
        chosen: set[int] = set()
        for ops in by_inode.values():
            chosen.update(ops[:rng.randint(0, len(ops))])
        chosen.update(dir_idx[:rng.randint(0, len(dir_idx))])
        s = e.base.copy()
        for j in e.pending:
            if j in chosen:
                apply_op(s, trace[j])
        col.add(s, e.floor, "per-file", False,
                f"{at}, files persisted independently ({len(chosen)}/{len(e.pending)} ops)")


def durable_image(trace: list[Op], initial: Snapshot, end: int | None = None) -> CrashState:
    """Only what was durable just before op `end` (default: after the whole trace)."""
    e = _epochs(trace if end is None else trace[:end], initial)[-1]
    files, dirs = e.base.visible()
    return CrashState(files, dirs, e.floor, "prefix", True, f"durable image before op {e.end}")


def scratch_root() -> str | None:
    """A tmpfs directory for materialised states when there is one (else the default)."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def materialise(state: CrashState, dest: str) -> None:
    """Write `state` into the (empty or missing) directory `dest`."""
    os.makedirs(dest, exist_ok=True)
    for d in state.dirs:
        os.makedirs(os.path.join(dest, d), exist_ok=True)
    for p, data in state.files.items():
        with open(os.path.join(dest, p), "wb") as f:
            f.write(data)


# -------------------------------------------------------- reference model
Signature = tuple[tuple[bytes, tuple[str, Any]], ...]


def model_signature(m: Model) -> Signature:
    out: dict[bytes, tuple[str, Any]] = {}
    for key, v in m.data.items():
        if isinstance(v, bytes):
            out[key] = ("IMMUTABLE", v)
        elif isinstance(v, list):
            out[key] = ("MUTABLE", tuple(m.get_range(key, 0.0, math.inf, False, False) or ()))
        else:
            out[key] = ("INDEXED", tuple(sorted(v.items())))
    return tuple(sorted(out.items()))


def backend_signature(b: LogBackend) -> Signature:
    out: dict[bytes, tuple[str, Any]] = {}
    for key in b.keys(b"*"):
        kt = b.key_type(key)
        assert kt is not None
        if kt.name == "IMMUTABLE":
            out[key] = (kt.name, b.get(key)[0])
        elif kt.name == "MUTABLE":
            out[key] = (kt.name, tuple(b.get_range(key, 0.0, math.inf, False, False) or ()))
        else:
            value = b.get(key)[0]
            assert isinstance(value, dict)
            out[key] = (kt.name, tuple(sorted(value.items())))
    return tuple(sorted(out.items()))


def add_event(key: bytes, value: bytes, ts: float) -> Callable[[Model], object]:
    """The reference event "add sample (value, ts) to key"."""
    return lambda m: m.add_mutable(key, value, ts)


class Reference:
    """The state after each event of a workload: ``sigs[P]`` after the first P."""

    def __init__(self) -> None:
        self.model = Model()
        self.sigs: list[Signature] = [()]
        self._ops: list[Callable[[Model], object]] = []

    def apply(self, fn: Callable[[Model], object]) -> None:
        """Apply one event (a function of the model)."""
        fn(self.model)
        self._ops.append(fn)
        self.sigs.append(model_signature(self.model))

    def prefix(self, n: int) -> Reference:
        """A reference holding only the first `n` events."""
        out = Reference()
        for fn in self._ops[:n]:
            out.apply(fn)
        return out

    @property
    def events(self) -> int:
        return len(self.sigs) - 1


# ----------------------------------------------------------------- checking
@dataclass
class Outcome:
    """``ok`` (opened to a valid prefix), ``fail-closed`` (LogCorruptError in a
    relaxed state) or ``violation`` (anything else), with details."""

    status: str
    position: int | None
    detail: str = ""


AFTER_KEY = b"zz_after_crash"


def check_state(state: CrashState, dest: str, ref: Reference, *, append: bool = True,
                verify: bool = True) -> Outcome:
    """Open `state` (materialised at `dest`) and check it (module docstring)."""
    materialise(state, dest)
    opts: dict[str, Any] = {"fsync": "never", "flush_interval": 0.0, "checkpoint_bytes": None}
    try:
        b = LogBackend(dest, **opts)
    except LogCorruptError as exc:
        if state.ordered:
            return Outcome("violation", None, f"refused to open: {exc}")
        return Outcome("fail-closed", None, str(exc))
    except Exception as exc:
        return Outcome("violation", None, f"open raised {exc!r}")
    try:
        pos = b.position
        if pos > ref.events:
            return Outcome("violation", pos, f"position {pos} beyond the {ref.events} events")
        if backend_signature(b) != ref.sigs[pos]:
            return Outcome("violation", pos, f"state at position {pos} is not the state "
                                             f"after the first {pos} events")
        if pos < state.floor:
            return Outcome("violation", pos, f"lost durable events: position {pos} < "
                                             f"{state.floor} acknowledged as durable")
        if append:
            b.set_immutable(AFTER_KEY, encode_value(pos))
            extra = (AFTER_KEY, ("IMMUTABLE", encode_value(pos)))
            want = tuple(sorted((*ref.sigs[pos], extra)))
    except Exception as exc:
        return Outcome("violation", None, f"after opening: {exc!r}")
    finally:
        b.close()
    try:
        if append:
            with LogBackend(dest, **opts) as b2:
                if b2.position != pos + 1 or backend_signature(b2) != want:
                    return Outcome("violation", pos, "a write after recovery did not reopen "
                                                     f"(position {b2.position})")
        if verify:
            report = verify_log(dest)
            if not report.ok:
                return Outcome("violation", pos, f"verify: {report.problems}")
    except Exception as exc:
        return Outcome("violation", pos, f"after recovery: {exc!r}")
    return Outcome("ok", pos)


# ---------------------------------------------------------------- workloads
class Driver:
    """Runs a workload on a LogBackend over a recording file system.

    Each write call is mirrored in the :class:`Reference` (one event per call,
    one per sample of a batch) and followed by an "ack" mark; writes known
    durable (``fsync="always"``, ``sync()``, a syncing ``close``) by a
    "durable" mark.
    """

    def __init__(self, fs: RecordingFileSystem, path: str, *, fsync: str,
                 flush_interval: float, segment_bytes: int = 4096,
                 ref: Reference | None = None) -> None:
        self.fs = fs
        self.path = path
        self.fsync = fsync
        self.opts: dict[str, Any] = {"fsync": fsync, "flush_interval": flush_interval,
                                     "segment_bytes": segment_bytes,
                                     "checkpoint_bytes": None, "fs": fs}
        self.ref = ref if ref is not None else Reference()
        self.backend = LogBackend(path, **self.opts)
        assert self.backend.position == self.ref.events
        self.calls = 0

    def _acked(self) -> None:
        pos = self.backend.position
        assert pos == self.ref.events, (pos, self.ref.events)
        self.calls += 1
        self.fs.mark("ack", pos)
        if self.fsync == "always":
            self.fs.mark("durable", pos)

    def set_immutable(self, key: bytes, value: bytes) -> None:
        self.backend.set_immutable(key, value)
        self.ref.apply(lambda m: m.set_immutable(key, value))
        self._acked()

    def add(self, key: bytes, value: bytes, ts: float) -> None:
        self.backend.add_mutable(key, value, ts)
        self.ref.apply(lambda m: m.add_mutable(key, value, ts))
        self._acked()

    def add_many(self, key: bytes, values: list[bytes], ts: list[float]) -> None:
        self.backend.add_mutable_many(key, values, ts)
        for v, t in zip(values, ts):
            self.ref.apply(add_event(key, v, t))
        self._acked()

    def set_indexed(self, key: bytes, sub: bytes, value: bytes) -> None:
        self.backend.set_indexed(key, sub, value)
        self.ref.apply(lambda m: m.set_indexed(key, sub, value))
        self._acked()

    def delete(self, key: bytes) -> None:
        self.backend.delete(key)
        self.ref.apply(lambda m: m.delete(key))
        self._acked()

    def clear(self) -> None:
        self.backend.clear()
        self.ref.apply(lambda m: m.clear())
        self._acked()

    def sync(self) -> None:
        self.fs.mark("durable", self.backend.sync())

    def checkpoint(self) -> None:
        pos = self.backend.position
        self.backend.checkpoint()
        self.fs.mark("durable", pos)  # a checkpoint first makes the log durable to it

    def seal(self) -> None:
        self.backend.seal()

    def prune(self, before: int) -> None:
        self.backend.prune(before=before)

    def close(self) -> None:
        pos = self.backend.position
        self.backend.close()
        if self.fsync != "never":
            self.fs.mark("durable", pos)

    def reopen(self) -> None:
        self.close()
        self.backend = LogBackend(self.path, **self.opts)
        assert self.backend.position == self.ref.events


def _value(rng: random.Random, size: int) -> bytes:
    return encode_value(rng.randbytes(size).hex()[:size])


def workload_mixed(d: Driver, rng: random.Random, scale: int = 1) -> None:
    """Every kind of event, large frames, rotations, a checkpoint, a seal, a
    prune and a reopen, with pauses that let a buffered flusher write."""
    d.set_immutable(b"obs_target", encode_value("PKS 1934-63"))
    d.set_immutable(b"obs_params", encode_value({"dump_rate": 0.5, "ants": 64}))
    t = 1.7e9
    for i in range(25 * scale):
        d.add(b"m001_pos_azim", encode_value(180.0 + i / 10), t + i)
        if i % 7 == 3:
            d.add(b"m002_pos_elev", _value(rng, rng.randrange(8, 120)), t + i)
    d.add(b"m003_big", _value(rng, 1500), t)  # frames that straddle sectors
    d.set_indexed(b"cal_gains", encode_value(("m001", "h")), encode_value(1.02 + 0.01j))
    d.set_indexed(b"cal_gains", encode_value(("m001", "v")), _value(rng, 700))
    time.sleep(0.012)  # a buffered flusher hands its buffer to the OS here
    d.add_many(b"m004_batch", [_value(rng, 24) for _ in range(90)],
               [t + i for i in range(90)])  # > segment_bytes // 2: several frames
    d.sync()
    d.delete(b"m002_pos_elev")
    d.add(b"m002_pos_elev", encode_value(-1.0), t)
    d.checkpoint()
    for i in range(15 * scale):
        d.add(b"m001_pos_azim", encode_value(float(i)), t + 100 + i)
    d.add(b"m003_big", _value(rng, 3000), t + 1)
    d.seal()
    cut = d.backend.position // 2
    d.set_indexed(b"cal_gains", encode_value(("m002", "h")), encode_value(0.5))
    d.prune(before=cut)
    for i in range(10 * scale):
        d.add(b"m005_after_prune", encode_value(i), t + i)
    time.sleep(0.012)
    d.reopen()
    d.add(b"m001_pos_azim", encode_value(1.0), t + 1000)
    d.clear()
    d.set_immutable(b"obs_target", encode_value("3C 273"))
    for i in range(12 * scale):
        d.add(b"m006_final", _value(rng, rng.randrange(4, 400)), t + i)
    d.close()


def workload_recover(d: Driver, rng: random.Random, scale: int = 1) -> None:
    """Continue a log that was opened over a crash's leftovers (see prepare_recover)."""
    t = 1.8e9
    for i in range(20 * scale):
        d.add(b"r_after", _value(rng, rng.randrange(4, 200)), t + i)
    d.checkpoint()
    d.add(b"r_after", _value(rng, 900), t + 500)
    d.close()


def prepare_recover(path: str, rng: random.Random) -> Reference:
    """Leave a crashed log at `path` -- a torn tail, a leftover ``.seg.tmp`` and
    a damaged checkpoint -- and return the reference it must recover to."""
    d = Driver(RecordingFileSystem(path), path, fsync="never", flush_interval=0.0)
    t = 1.6e9
    for i in range(40):
        d.add(b"r_before", _value(rng, rng.randrange(4, 100)), t + i)
    d.checkpoint()
    d.seal()  # a fresh segment, so the last events share one
    for i in range(3):
        d.add(b"r_before", encode_value(i), t + 100 + i)
    writer = d.backend.log.writer
    assert writer is not None
    seg, keep, cut = writer.segment_path, d.ref.events, writer.offset
    for i in range(2):  # two events that the "crash" will tear
        d.add(b"r_before", encode_value(i), t + 200 + i)
    assert writer.segment_path == seg
    d.close()
    with open(seg, "r+b") as f:
        f.truncate(cut + 9)
    with open(os.path.join(path, f"{keep + 3:020d}.seg.tmp"), "wb") as f:
        f.write(b"TSLOGSEG half a header")
    cpdir = os.path.join(path, "checkpoints")
    newest = sorted(os.listdir(cpdir))[-1]
    with open(os.path.join(cpdir, newest), "r+b") as f:
        f.seek(10)
        f.write(b"\xff\xfe")
    return d.ref.prefix(keep)


WORKLOADS: dict[str, Callable[[Driver, random.Random, int], None]] = {
    "mixed": workload_mixed,
    "recover": workload_recover,
}

#: (name, fsync, flush_interval): the policies a workload runs under
POLICIES: list[tuple[str, str, float]] = [
    ("always", "always", 0.0),
    ("interval", "interval", 0.005),
    ("interval-flush0", "interval", 0.0),
    ("never", "never", 0.005),
]


@dataclass
class Recorded:
    """A recorded workload: its trace, initial image and reference."""

    name: str
    policy: str
    trace: list[Op]
    initial: Snapshot
    ref: Reference


def record_workload(base: str, workload: str, policy: str, *, seed: int = 0,
                    scale: int = 1) -> Recorded:
    """Run `workload` under `policy` in a new directory below `base` and record it."""
    _, fsync, flush = next(p for p in POLICIES if p[0] == policy)
    rng = random.Random(f"{workload}-{policy}-{seed}")
    path = tempfile.mkdtemp(prefix=f"{workload}-{policy}-", dir=base)
    ref = prepare_recover(path, rng) if workload == "recover" else None
    fs = RecordingFileSystem(path)
    if ref is not None:  # what the recovered log must keep was durable before we began
        fs.mark("durable", ref.events)
    d = Driver(fs, path, fsync=fsync, flush_interval=flush, ref=ref)
    WORKLOADS[workload](d, rng, scale)
    fs.check_against_disk()
    shutil.rmtree(path)
    return Recorded(workload, policy, fs.trace, fs.initial, d.ref)


def run_states(rec: Recorded, states: list[CrashState], base: str, *, append: bool = True,
               verify: bool = True) -> Iterator[tuple[CrashState, Outcome]]:
    """Check each state of `rec` in its own fresh directory below `base`."""
    for i, state in enumerate(states):
        dest = os.path.join(base, f"{rec.name}-{rec.policy}-{i}")
        try:
            yield state, check_state(state, dest, rec.ref, append=append, verify=verify)
        finally:
            shutil.rmtree(dest, ignore_errors=True)
