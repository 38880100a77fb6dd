"""Loading a checkpoint (``checkpoints/<position>.ckpt``) and checking it.

Theory of operation
-------------------
The format is :mod:`telstate_log.storage._checkpoint`'s.  Loading
memory-maps the file, checks the trailer's CRC and then the body's (a chunk
at a time, dropping each chunk's pages from the process once read, so the
check never holds the whole file resident), and adopts the arrays without
copying.  Every array reference, dtype, column order and the time index are
checked against the manifest; any damage raises :exc:`CheckpointError`, so
the checkpoint is ignored (a full replay happens instead), never trusted.
:func:`load_checkpoint_paged` also drops the file's pages as it goes, for a
caller that reads the state once (``verify``).  :func:`read_summary` reads
and checks only the summary (what ``info`` shows) without the body.
"""

from __future__ import annotations

import functools
import itertools
import mmap
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import numpy as np

from ..core import _log_format as fmt
from ..core._apply import Tables
from ..core._gcpause import collector_paused
from ..core._sensor import SensorColumn
from ..core._state import Immutable, Indexed, State
from ._checkpoint import HEAD, HEAD_SIZE, MAGIC, TABLE_VERSION, VERSION
from ._checkpoint_summary import FOOTER_SIZE, Summary, footer_length, parse_summary
from ._checkpoint_table import CheckpointError, load_table
from ._recovery import Resume

__all__ = ["load_checkpoint", "load_checkpoint_paged", "read_summary"]


def _array(mm: Any, base: int, ref: list[Any], kinds: str) -> np.ndarray:
    """The array `ref` names, whose dtype must be a plain number of one of `kinds`."""
    offset, nbytes, dtype, count = ref
    dt = np.dtype(dtype)
    if dt.kind not in kinds or dt.fields is not None or dt.subdtype is not None:
        raise CheckpointError(f"array of unexpected dtype {dt}")
    if nbytes != dt.itemsize * count or offset + nbytes > len(mm) - HEAD_SIZE - base:
        raise CheckpointError("array reference out of bounds")
    return np.frombuffer(mm, dt, count, base + offset)


def _check_column(snap: dict[str, Any], position: int) -> None:
    """The invariants a sensor column of a valid state keeps (see _sensor)."""
    ts, rel = snap["ts"], snap["pos"]
    n = len(ts)
    if n == 0:
        raise CheckpointError("sensor without samples")
    if not bool(np.all((ts >= 0.0) & (ts < np.inf))):
        raise CheckpointError("sensor sample with a bad timestamp")
    created, pos_base = int(snap["created"]), int(snap["pos_base"])
    if not 1 <= pos_base <= created <= position or int(rel.max()) > position - pos_base:
        raise CheckpointError("sensor positions outside the checkpoint")
    step = ts[1:] - ts[:-1]
    if bool((step < 0).any()):
        raise CheckpointError("sensor samples out of timestamp order")
    vals = snap.get("vals")
    for i in np.nonzero(step == 0)[0].tolist():  # ties: ordered by value, no duplicates
        if vals is not None:
            a, b = vals[i].tobytes(), vals[i + 1].tobytes()
        else:
            a, b = snap["list"][i], snap["list"][i + 1]
        if not a < b:
            raise CheckpointError("sensor samples out of order or repeated")


def _check_time_index(tables: Tables, position: int) -> None:
    """Positions increasing within the log, each in a segment starting at or before
    it, at an offset after the header; recorded times finite and never decreasing."""
    pos = np.asarray(tables.time_pos, np.int64)
    seg = np.asarray(tables.time_seg, np.int64)
    off = np.asarray(tables.time_off, np.int64)
    rec = np.asarray(tables.time_rec, np.float64)
    if len(pos) and not (
            bool(np.all(pos[1:] > pos[:-1])) and int(pos[0]) >= 1 and int(pos[-1]) <= position
            and bool(np.all((seg >= 1) & (seg <= pos))) and bool(np.all(seg[1:] >= seg[:-1]))
            and bool(np.all(off >= fmt.HEADER_SIZE)) and bool(np.all(np.isfinite(rec)))
            and bool(np.all(rec[1:] >= rec[:-1]))):
        raise CheckpointError("time index out of order or outside the log")


class _Table:
    """The column table of a version-2 checkpoint; each column goes to one entry."""

    def __init__(self, mm: Any, table: Any, position: int) -> None:
        self._table = table
        self._mm = mm
        self.columns = load_table(table, self._exact, position)
        self._taken = [False] * len(self.columns)

    def _exact(self, ref: Any, dtype: str) -> np.ndarray:
        return _exact(self._mm, ref, dtype)

    def live(self, others: int) -> tuple[list[int], list[bytes], list[SensorColumn]]:
        """The live columns (the first ones): their places among the entries
        (increasing), keys, and columns; `others` entries are in the manifest."""
        keys = self._table["keys"]
        at = self._exact(self._table["at"], "<i8").tolist()
        if type(keys) is not list or not all(type(k) is bytes for k in keys) \
                or len(at) != len(keys) or len(keys) > len(self.columns) \
                or (at and not 0 <= at[0] <= at[-1] < len(at) + others) \
                or any(a >= b for a, b in itertools.pairwise(at)):
            raise CheckpointError("malformed column table")
        self._taken[:len(keys)] = [True] * len(keys)
        return at, keys, self.columns[:len(keys)]

    def take(self, m: list[Any]) -> SensorColumn:
        i = m[1]
        if len(m) != 2 or type(i) is not int or not 0 <= i < len(self.columns) \
                or self._taken[i]:
            raise CheckpointError("bad or repeated column table reference")
        self._taken[i] = True
        return self.columns[i]


def _exact(mm: Any, ref: list[Any], dtype: str) -> np.ndarray:
    """The array `ref` names, which must be of exactly `dtype`."""
    arr = _array(mm, 0, ref, np.dtype(dtype).kind)
    if arr.dtype.str != dtype:
        raise CheckpointError(f"array of unexpected dtype {arr.dtype}")
    return arr


def _entry(mm: Any, base: int, m: list[Any], position: int,
           table: _Table | None = None) -> Any:
    tag = m[0]
    if tag == "t" and table is not None:
        return table.take(m)
    if tag == "i":
        return Immutable(bytes(m[2]), int(m[1]))
    if tag == "x":
        ent = Indexed(int(m[1]))
        for sub, value, pos in m[2]:
            ent.values[bytes(sub)] = bytes(value)
            ent.positions[bytes(sub)] = int(pos)
        return ent
    if tag != "m":
        raise CheckpointError(f"unknown entry tag {tag!r}")
    _, created, pos_base, ts_ref, pos_ref, vals = m
    snap: dict[str, Any] = {"created": created, "pos_base": pos_base,
                            "ts": _array(mm, base, ts_ref, "f"),
                            "pos": _array(mm, base, pos_ref, "u")}
    n = len(snap["ts"])
    if vals[0] == "f":
        raw = _array(mm, base, vals[3], "uV")
        width = int(vals[2])
        if width <= 0 or len(raw) != width * n:
            raise CheckpointError("fixed values do not match the sample count")
        snap["prefix"] = bytes(vals[1])
        snap["vals"] = raw.view(f"V{width}")
    else:
        lengths = _array(mm, base, vals[1], "iu")
        data = _array(mm, base, vals[2], "uV").tobytes()
        if len(lengths) != n or int(lengths.sum()) != len(data) or (lengths <= 0).any():
            raise CheckpointError("var values do not match the sample count")
        ends = np.cumsum(lengths).tolist()
        starts = [0, *ends[:-1]]
        snap["list"] = [data[a:b] for a, b in zip(starts, ends)]
    if len(snap["pos"]) != n:
        raise CheckpointError("position column does not match the sample count")
    _check_column(snap, position)
    return SensorColumn.from_snapshot(snap)


def _trailer(data: bytes, tail: int, log_id: bytes | None
             ) -> tuple[int, int, bytes, int, int, int]:
    """The checked trailer `data` of a checkpoint whose body is `tail` bytes long:
    (version, position, log id, manifest offset, manifest length, body CRC)."""
    head = data[:HEAD.size]
    if len(data) != HEAD_SIZE or zlib.crc32(head) != struct.unpack_from("<I", data,
                                                                         HEAD.size)[0]:
        raise CheckpointError("trailer checksum mismatch")
    magic, version, position, cp_log_id, _created, moff, mlen, blen, bcrc = HEAD.unpack(head)
    if magic != MAGIC or version not in (VERSION, TABLE_VERSION):
        raise CheckpointError(f"not a checkpoint of version {VERSION} or {TABLE_VERSION}")
    if log_id is not None and cp_log_id != log_id:
        raise CheckpointError("checkpoint belongs to another log")
    if blen != tail or moff + mlen != blen:
        raise CheckpointError("length fields do not match the file")
    return version, position, cp_log_id, moff, mlen, bcrc


def read_summary(cp_path: str, log_id: bytes | None) -> Summary | None:
    """The summary in the checkpoint at `cp_path` (see _checkpoint_summary), read
    and checked without the body: None if it has none or it does not check out
    (CheckpointError if the trailer is damaged)."""
    with open(cp_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < HEAD_SIZE:
            raise CheckpointError("file too short")
        tail = size - HEAD_SIZE
        _, position, cp_log_id, moff, _, _ = _trailer(os.pread(f.fileno(), HEAD_SIZE, tail),
                                                      tail, log_id)
        if moff < FOOTER_SIZE:
            return None
        length = footer_length(os.pread(f.fileno(), FOOTER_SIZE, moff - FOOTER_SIZE))
        if length is None or length > moff - FOOTER_SIZE:
            return None
        start = moff - FOOTER_SIZE - length
        data = os.pread(f.fileno(), length + FOOTER_SIZE, start)
    return parse_summary(data, position, cp_log_id)


_CRC_CHUNK = 8 << 20  # a multiple of every page size


def _drop_pages(mm: mmap.mmap, start: int = 0, length: int = 0) -> None:
    """Drop `length` bytes (0: to the end) of `mm`'s pages from the process: safe
    for a read-only map of a file, whose pages are read again when used."""
    drop = getattr(mmap, "MADV_DONTNEED", None)
    if drop is not None and not mm.closed:
        mm.madvise(drop, start, length or len(mm) - start)


def _body_crc(mm: mmap.mmap, n: int) -> int:
    """CRC-32 of the first `n` bytes of `mm`, a chunk at a time, each chunk's pages
    dropped from the process once read (they stay in the page cache): the
    check does not make the whole file resident at once, only the arrays
    used later are brought back."""
    crc = 0
    with memoryview(mm) as mv:
        for a in range(0, n, _CRC_CHUNK):
            b = min(n, a + _CRC_CHUNK)
            crc = zlib.crc32(mv[a:b], crc)
            _drop_pages(mm, a, b - a)
    return crc


def load_checkpoint(cp_path: str, log_id: bytes | None) -> tuple[State, Tables, Resume]:
    """Load and verify a checkpoint; raises CheckpointError if it cannot be trusted."""
    state, tables, resume, _ = _load(cp_path, log_id, lean=False)
    return state, tables, resume


def load_checkpoint_paged(cp_path: str, log_id: bytes | None
                          ) -> tuple[State, Tables, Resume, Callable[[], None]]:
    """:func:`load_checkpoint`, and a function that drops the file's pages from the
    process (the arrays adopted from it read them again from the page cache as
    they are used): for a caller that reads the state once, key by key, and
    would otherwise hold the whole file resident (``verify``).  The pages are
    also dropped while loading, every :data:`_ENTRIES_PER_DROP` entries."""
    return _load(cp_path, log_id, lean=True)


#: entries loaded between two drops of the file's pages (load_checkpoint_paged)
_ENTRIES_PER_DROP = 64


def _load(cp_path: str, log_id: bytes | None, *, lean: bool
          ) -> tuple[State, Tables, Resume, Callable[[], None]]:
    with open(cp_path, "rb") as f:
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # empty file
            raise CheckpointError(str(exc)) from None
    body = memoryview(b"")
    try:
        if len(mm) < HEAD_SIZE:
            raise CheckpointError("file too short")
        tail = len(mm) - HEAD_SIZE
        version, position, _, moff, mlen, bcrc = _trailer(mm[tail:], tail, log_id)
        body = memoryview(mm)[:tail]
        if _body_crc(mm, tail) != bcrc:
            raise CheckpointError("body checksum mismatch")
        try:
            with collector_paused():  # an object per key: see telstate_log.core._gcpause
                man = msgpack.unpackb(body[moff:moff + mlen], raw=False, strict_map_key=False,
                                      max_bin_len=mlen, max_str_len=mlen, max_array_len=mlen,
                                      max_map_len=mlen)
                if man["position"] != position:
                    raise CheckpointError("manifest position differs from the header")
                state = State(keep_history=True)
                state.position = position
                table = _Table(mm, man["table"], position) if version == TABLE_VERSION else None
                if lean:
                    _drop_pages(mm)
                loaded = itertools.count(1)
                at, names, columns = table.live(len(man["entries"])) if table is not None \
                    else ([], [], [])
                entries = iter(man["entries"])
                at.append(-1)

                def live() -> Iterator[tuple[bytes, Any]]:
                    j = 0
                    for i in range(len(names) + len(man["entries"])):
                        if i == at[j]:  # the live short columns are in the table
                            yield names[j], columns[j]
                            j += 1
                        else:
                            key, m = next(entries)
                            yield bytes(key), _entry(mm, 0, m, position, table)
                            if lean and next(loaded) % _ENTRIES_PER_DROP == 0:
                                _drop_pages(mm)

                state.restore_entries(live())
                for key, lst in man["graveyard"]:
                    state.graveyard[bytes(key)] = [(_entry(mm, 0, m, position, table), int(d))
                                                   for m, d in lst]
                tables = Tables()
                if table is None:
                    for kid, key in man["keys"]:
                        tables.keys[int(kid)] = bytes(key)
                        tables.key_ids[bytes(key)] = int(kid)
                else:
                    ids, key_names = _exact(mm, man["keys"][0], "<i8").tolist(), man["keys"][1]
                    if type(key_names) is not list or len(ids) != len(key_names) \
                            or not all(type(k) is bytes for k in key_names):
                        raise CheckpointError("malformed key table")
                    tables.keys = dict(zip(ids, key_names))
                    tables.key_ids = dict(zip(tables.keys.values(), ids))
                tables.sessions = {int(s): dict(meta) for s, meta in man["sessions"]}
                tables.last_recorded = float(man["last_recorded"])
                tables.time_pos = _array(mm, 0, man["time_pos"], "iu").tolist()
                tables.time_rec = _array(mm, 0, man["time_rec"], "f").tolist()
                tables.time_seg = _array(mm, 0, man["time_seg"], "iu").tolist()
                tables.time_off = _array(mm, 0, man["time_off"], "iu").tolist()
                if not (len(tables.time_pos) == len(tables.time_rec) == len(tables.time_seg)
                        == len(tables.time_off)):
                    raise CheckpointError("time index columns differ in length")
                _check_time_index(tables, position)
                state.history_from = int(man["history_from"])
                seg, off, crc = man["resume"]
                resume = Resume(int(seg), int(off), int(crc))
        except CheckpointError:
            raise
        except Exception as exc:  # malformed manifest
            raise CheckpointError(f"malformed manifest: {exc}") from None
        return state, tables, resume, functools.partial(_drop_pages, mm)
    except BaseException:
        del body
        try:
            mm.close()
        except BufferError:  # arrays already adopted keep the map alive
            pass
        raise
