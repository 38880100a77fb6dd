"""Checkpoints: the materialised state at a position, saved atomically.

Theory of operation
-------------------
Reopening a large log replays only the events after the newest valid
checkpoint.  A checkpoint file ``checkpoints/<position>.ckpt`` is::

    body: array blobs (8-byte aligned), the summary, then the msgpack manifest
    trailer (the last 80 bytes):
    0   8   magic b"TSLOGCKP"
    8   1   format version (1; 2 if the manifest has a column table)
    9   7   reserved (0)
    16  8   position (u64): the state after this event
    24  16  log id
    40  8   created (f64, wall clock)
    48  8   manifest offset within the body (u64)
    56  8   manifest length (u64)
    64  8   body length (u64)
    72  4   CRC-32 of the body
    76  4   CRC-32 of trailer bytes 0..76

(a trailer rather than a header, so the file is written strictly
sequentially through the log's file interface).

The manifest lists every key (type, creation position, values; sensors as
references to blobs: timestamps, position offsets, values), the graveyard
(deleted entries kept for time travel), the log's key/session tables, and
the resume point (segment, byte offset, running CRC) where replay continues.
The summary just before the manifest (what ``info`` shows: key counts by
type, samples, time spans, sessions; with its own footer and CRC, and named
by the manifest's ``"summary"``) can be read and checked without the body
(:func:`read_summary`, format in :mod:`telstate_log.storage._checkpoint_summary`);
checkpoints written before it existed have none, and readers of those
versions ignore it (it is covered by the body CRC and unreferenced by the
rest of the manifest).
A state of many short sensors stores them in one column table instead
(:mod:`telstate_log.storage._checkpoint_table`), and small arrays are written in
batches of one dtype: the cost per key stays a few Python steps.

Writing streams the blobs from a snapshot taken under the backend's lock
(column prefixes never change in place, so no copy is needed) to
``<name>.tmp``, then fsyncs it, renames it into place and fsyncs the
directory.  The log is made durable up to the checkpoint's position first,
so a checkpoint is never ahead of the log.  Loading and checking one is
:mod:`telstate_log.storage._checkpoint_load`'s job.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from ..core._apply import Tables
from ..core._state import Immutable, Indexed, State
from ._checkpoint_summary import encode_summary, summarise
from ._checkpoint_table import TABLE_MIN, CheckpointError, TableWriter, is_short
from ._fileio import FileSystem, OsFileSystem, write_all
from ._recovery import Resume

__all__ = ["CHECKPOINT_DIR", "HEAD", "HEAD_SIZE", "MAGIC", "TABLE_VERSION", "VERSION",
           "CheckpointError", "CheckpointInfo", "checkpoint_version", "list_checkpoints",
           "snapshot_state", "write_checkpoint"]

MAGIC = b"TSLOGCKP"
VERSION = 1
TABLE_VERSION = 2  # the same, with short sensor columns in a table (see _checkpoint_table)
#: the trailer without its CRC (see the module docstring)
HEAD = struct.Struct("<8sB7xQ16sdQQQI")
HEAD_SIZE = HEAD.size + 4
CHECKPOINT_DIR = "checkpoints"


@dataclass
class CheckpointInfo:
    path: str
    position: int


def checkpoint_name(position: int) -> str:
    return f"{position:020d}.ckpt"


def list_checkpoints(path: str) -> list[CheckpointInfo]:
    """Checkpoints of the log at `path`, newest first."""
    cdir = os.path.join(path, CHECKPOINT_DIR)
    try:
        names = os.listdir(cdir)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if name.endswith(".ckpt") and name[:-5].isdigit():
            out.append(CheckpointInfo(os.path.join(cdir, name), int(name[:-5])))
    out.sort(key=lambda c: c.position, reverse=True)
    return out


def checkpoint_version(cp_path: str) -> int | None:
    """The format version in the trailer of the checkpoint at `cp_path` (None if
    it is not readable as one); nothing else is checked."""
    try:
        with open(cp_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < HEAD_SIZE:
                return None
            f.seek(-HEAD_SIZE, os.SEEK_END)
            head = f.read(HEAD.size)
    except OSError:
        return None
    return head[8] if head[:8] == MAGIC else None


# ------------------------------------------------------------------ writing
_SMALL_BLOB = 4096  # arrays smaller than this are written in batches of one dtype
_SMALL_FLUSH = 1 << 20  # bytes of small arrays of one dtype held back at most


class _BlobWriter:
    """Streams the body through the file interface, buffering small writes."""

    def __init__(self, fs: FileSystem, fd: int) -> None:
        self.fs = fs
        self.fd = fd
        self.offset = 0
        self.crc = 0
        self._buf: list[bytes] = []
        self._buffered = 0
        #: dtype -> small arrays not written yet, their references, their bytes
        self._small: dict[str, tuple[list[np.ndarray], list[list[Any]], int]] = {}

    def write(self, data: Any) -> None:
        mv = memoryview(data).cast("B")
        self.crc = zlib.crc32(mv, self.crc)
        self.offset += len(mv)
        if len(mv) >= 1 << 16:
            self.flush()
            write_all(self.fs, self.fd, mv)
            return
        self._buf.append(bytes(mv))
        self._buffered += len(mv)
        if self._buffered >= 1 << 20:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            write_all(self.fs, self.fd, b"".join(self._buf))
            self._buf = []
            self._buffered = 0

    def blob(self, arr: np.ndarray) -> list[Any]:
        """Write `arr` (8-byte aligned); returns its reference ``[offset, nbytes,
        dtype, count]``.

        Small arrays are held back and written with the others of their dtype
        in one piece (:meth:`flush_small`, which fills in their offsets): a
        state of many short sensors would otherwise cost a few Python steps
        and CRC calls per array.
        """
        nbytes = int(arr.nbytes)
        ref = [0, nbytes, arr.dtype.str, len(arr)]
        if nbytes < _SMALL_BLOB:
            arrays, refs, size = self._small.get(ref[2], ([], [], 0))
            arrays.append(arr)
            refs.append(ref)
            self._small[ref[2]] = (arrays, refs, size + nbytes)
            if size + nbytes >= _SMALL_FLUSH:
                self._flush_small(ref[2])
            return ref
        self._align()
        ref[0] = self.offset
        self.write(np.ascontiguousarray(arr).view(np.uint8))
        return ref

    def _align(self) -> None:
        pad = -self.offset % 8
        if pad:
            self.write(b"\0" * pad)

    def flush_small(self) -> None:
        """Write the small arrays held back by :meth:`blob`."""
        for dtype in list(self._small):
            self._flush_small(dtype)

    def _flush_small(self, dtype: str) -> None:
        arrays, refs, _ = self._small.pop(dtype)
        self._align()
        sizes = np.fromiter((r[1] for r in refs), np.int64, len(refs))
        for ref, offset in zip(refs, (self.offset + np.cumsum(sizes) - sizes).tolist()):
            ref[0] = offset
        # arrays of one dtype, back to back: each stays aligned to its item size
        self.write(np.concatenate([a.reshape(-1) for a in arrays]).view(np.uint8))


def snapshot_state(state: State, tables: Tables) -> dict[str, Any]:
    """Everything a checkpoint needs, taken under the owner's lock.

    Writers wait while it runs, so it only takes references and C-speed
    shallow copies (sensor columns are views of their append-only arrays;
    indexed keys copy their two dicts); everything costing a Python step per
    sample or sub-key happens in :func:`write_checkpoint`, outside the lock.
    """
    def entry(e: Any) -> Any:
        if type(e) is Immutable:
            return ("i", e.created, e.value)
        if type(e) is Indexed:
            return ("x", e.created, dict(e.values), dict(e.positions))
        return ("m", e.snapshot())

    return {
        "position": state.position,
        "entries": [(k, entry(e)) for k, e in state.items()],
        "graveyard": [(k, [(entry(e), d) for e, d in lst]) for k, lst in state.graveyard.items()],
        "keys": sorted(tables.keys.items()),
        "sessions": sorted(tables.sessions.items()),
        "last_recorded": tables.last_recorded,
        "time_pos": np.array(tables.time_pos, np.int64),
        "time_rec": np.array(tables.time_rec, np.float64),
        "time_seg": np.array(tables.time_seg, np.int64),
        "time_off": np.array(tables.time_off, np.int64),
        "history_from": state.history_from,
    }


_CHUNK = 1 << 15  # values joined per C call: bounds how long the GIL is held


def _entry_manifest(w: _BlobWriter, e: Any, table: TableWriter | None) -> list[Any]:
    if table is not None and is_short(e):
        return table.add(e[1])
    if e[0] == "x":
        _, created, values, positions = e
        return ["x", created, [(s, v, positions[s]) for s, v in values.items()]]
    if e[0] != "m":
        return list(e)
    snap = e[1]
    out: list[Any] = ["m", snap["created"], snap["pos_base"], w.blob(snap["ts"]),
                      w.blob(snap["pos"])]
    if "vals" in snap:
        vals = snap["vals"]
        out.append(["f", snap["prefix"], vals.dtype.itemsize, w.blob(vals.view(np.uint8))])
    else:
        # In chunks, so the writers (waiting for the GIL) run in between.
        values = snap["list"]
        lengths = np.empty(len(values), np.int64)
        parts = []
        for i in range(0, len(values), _CHUNK):
            part = values[i:i + _CHUNK]
            lengths[i:i + len(part)] = list(map(len, part))
            parts.append(b"".join(part))
        data = b"".join(parts)
        out.append(["v", w.blob(lengths), w.blob(np.frombuffer(data, np.uint8))])
    return out


def write_checkpoint(path: str, snap: dict[str, Any], resume: Resume, log_id: bytes,
                     sync: bool = True, fs: FileSystem | None = None) -> str:
    """Write a checkpoint of `snap` crash-safely; returns its path."""
    fs = fs or OsFileSystem()
    cdir = os.path.join(path, CHECKPOINT_DIR)
    fs.makedirs(cdir)
    final = os.path.join(cdir, checkpoint_name(snap["position"]))
    tmp = final + ".tmp"
    if fs.exists(tmp):
        fs.remove(tmp)
    fd = fs.create(tmp)
    try:
        w = _BlobWriter(fs, fd)
        short = sum(map(is_short, (e for _, e in snap["entries"]))) + sum(
            is_short(e) for _, lst in snap["graveyard"] for e, _ in lst)
        table = TableWriter() if short >= TABLE_MIN else None
        keys: Any = snap["keys"]
        if table is None:
            entries = [[k, _entry_manifest(w, e, None)] for k, e in snap["entries"]]
        else:  # the live short columns first, then the graveyard's
            entries = []
            for i, (k, e) in enumerate(snap["entries"]):
                if is_short(e):
                    table.add_live(k, i, e[1])
                else:
                    entries.append([k, _entry_manifest(w, e, None)])
            keys = [w.blob(np.fromiter((k for k, _ in keys), np.int64, len(keys))),
                    [name for _, name in keys]]
        manifest: dict[str, Any] = {
            "position": snap["position"],
            "resume": [resume.segment_first, resume.offset, resume.crc],
            "entries": entries,
            "graveyard": [[k, [[_entry_manifest(w, e, table), d] for e, d in lst]]
                          for k, lst in snap["graveyard"]],
            "keys": keys,
            "sessions": snap["sessions"],
            "last_recorded": snap["last_recorded"],
            "time_pos": w.blob(snap["time_pos"]),
            "time_rec": w.blob(snap["time_rec"]),
            "time_seg": w.blob(snap["time_seg"]),
            "time_off": w.blob(snap["time_off"]),
            "history_from": snap["history_from"],
        }
        if table is not None:
            manifest["table"] = table.manifest(w)
        w.flush_small()  # fills in the offsets of the small arrays' references
        summary = encode_summary(summarise(
            snap["position"], snap["entries"], snap["sessions"], snap["last_recorded"],
            (resume.segment_first, resume.offset), log_id))
        manifest["summary"] = [w.offset, len(summary)]
        w.write(summary)  # ends where the manifest starts (see _checkpoint_summary)
        packed = msgpack.packb(manifest, use_bin_type=True)
        moff = w.offset
        w.write(packed)
        w.flush()
        trailer = HEAD.pack(MAGIC, VERSION if table is None else TABLE_VERSION,
                             snap["position"], log_id, time.time(), moff, len(packed),
                             w.offset, w.crc)
        write_all(fs, fd, trailer + struct.pack("<I", zlib.crc32(trailer)))
        if sync:
            fs.sync(fd)
    finally:
        fs.close(fd)
    fs.rename(tmp, final)
    if sync:
        fs.sync_dir(cdir)
    return final
