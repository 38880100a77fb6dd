"""A checkpoint's summary: what ``telstate-log info`` says about the state.

Theory of operation
-------------------
``info`` reports counts and spans of the state (keys by type, samples, the
span of sample timestamps, the writing sessions, the last recorded time).
Loading a large checkpoint to count them costs far more than the rest of
``info``, so each checkpoint also carries a small summary of the state it
holds, which a reader can check and decode without touching the body.

It is the last thing in the checkpoint's body, just before the manifest
(``checkpoints/<position>.ckpt``, see :mod:`telstate_log.storage._checkpoint`),
so it is covered by the body's CRC like every other byte, and ends with a
footer of its own::

    payload   msgpack map (below), PAYLOAD bytes
    footer    16 bytes:
      0   8   magic b"TSLSUMM1"
      8   4   payload length (u32)
      12  4   CRC-32 of the payload

The footer ends where the manifest starts (the trailer's manifest offset),
and the manifest names it too (``"summary": [offset, length]`` of the
payload and footer), for readers that load the body.  The payload::

    v         1 (its version: a reader ignores a summary of a newer one)
    position  the checkpoint's position
    log_id    the log id (16 bytes)
    resume    [segment first position, byte offset]: where the log continues
    keys      [immutable, indexed, mutable]: live keys of each type
    samples   samples in all live sensors
    valid     [first, last] sample timestamp over the live sensors, or nil
    sessions  [[session id, meta map], ...]: the log's session table
    recorded  recorded time of the event at `position` (0.0 before any)

A summary is only trusted after its footer's magic and CRC, the trailer's
CRC and the position and log id in both agree (:func:`parse_summary`); a
checkpoint without one (written before summaries existed) still loads as
before, and ``info`` then loads the state.  ``verify`` compares each
checkpoint's summary with one computed from the replayed log, so a summary
that does not describe its checkpoint's state is reported like any other
difference.  Pure: bytes in, bytes out.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = ["FOOTER_SIZE", "SUMMARY_MAGIC", "Summary", "encode_summary", "footer_length",
           "parse_summary", "summarise"]

SUMMARY_MAGIC = b"TSLSUMM1"
SUMMARY_VERSION = 1
_FOOT = struct.Struct("<8sII")
FOOTER_SIZE = _FOOT.size
#: a summary is small (a session table, a few numbers): anything larger is damage
MAX_PAYLOAD = 16 << 20


@dataclass(frozen=True)
class Summary:
    """What ``info`` reports about the state at `position` (see module docstring)."""

    position: int
    log_id: bytes
    resume: tuple[int, int]
    immutable: int
    indexed: int
    mutable: int
    samples: int
    valid: tuple[float, float] | None
    sessions: dict[int, dict[str, Any]]
    recorded: float


def summarise(position: int, entries: Iterable[tuple[bytes, Any]],
              sessions: Iterable[tuple[int, dict[str, Any]]], recorded: float,
              resume: tuple[int, int], log_id: bytes) -> Summary:
    """The summary of a snapshot's live `entries` (see ``snapshot_state``)."""
    counts = {"i": 0, "x": 0, "m": 0}
    samples = 0
    lo, hi = math.inf, -math.inf
    for _, e in entries:
        counts[e[0]] += 1
        if e[0] == "m":
            ts = e[1]["ts"]
            samples += len(ts)
            lo, hi = min(lo, float(ts[0])), max(hi, float(ts[-1]))
    return Summary(position, bytes(log_id), (int(resume[0]), int(resume[1])), counts["i"],
                   counts["x"], counts["m"], samples, (lo, hi) if samples else None,
                   {int(s): dict(meta) for s, meta in sessions}, float(recorded))


def encode_summary(s: Summary) -> bytes:
    """The payload and footer of `s`, as stored in a checkpoint."""
    payload: bytes = msgpack.packb({
        "v": SUMMARY_VERSION, "position": s.position, "log_id": s.log_id,
        "resume": list(s.resume), "keys": [s.immutable, s.indexed, s.mutable],
        "samples": s.samples, "valid": None if s.valid is None else list(s.valid),
        "sessions": sorted(s.sessions.items()), "recorded": s.recorded,
    }, use_bin_type=True)
    return payload + _FOOT.pack(SUMMARY_MAGIC, len(payload), zlib.crc32(payload))


def footer_length(footer: bytes) -> int | None:
    """The payload length a footer announces (None: not a summary footer)."""
    if len(footer) != FOOTER_SIZE:
        return None
    magic, length, _ = _FOOT.unpack(footer)
    return length if magic == SUMMARY_MAGIC and length <= MAX_PAYLOAD else None


def parse_summary(data: bytes, position: int, log_id: bytes) -> Summary | None:
    """The summary stored as `data` (payload and footer) of the checkpoint at
    `position` of log `log_id`; None unless it checks out (see module docstring)."""
    length = footer_length(data[-FOOTER_SIZE:])
    if length is None or len(data) != length + FOOTER_SIZE:
        return None
    payload = data[:length]
    if zlib.crc32(payload) != _FOOT.unpack(data[-FOOTER_SIZE:])[2]:
        return None
    try:
        m = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        if type(m) is not dict or m.get("v") != SUMMARY_VERSION:
            return None
        valid = m["valid"]
        immutable, indexed, mutable = (_int(k) for k in _list(m["keys"], 3))
        s = Summary(
            _int(m["position"]), _bytes(m["log_id"]), _pair(m["resume"], int),
            immutable, indexed, mutable, _int(m["samples"]),
            None if valid is None else _pair(valid, float),
            {_int(sid): _map(meta) for sid, meta in _list(m["sessions"])},
            _float(m["recorded"]))
    except Exception:  # malformed (a writer's bug: the CRC held)
        return None
    if s.position != position or s.log_id != log_id or (s.valid is None) != (s.samples == 0):
        return None
    return s


def _int(x: Any) -> int:
    if type(x) is not int or x < 0:
        raise ValueError("not a count")
    return x


def _float(x: Any) -> float:
    if type(x) is not float or not math.isfinite(x):
        raise ValueError("not a time")
    return x


def _bytes(x: Any) -> bytes:
    if type(x) is not bytes:
        raise ValueError("not bytes")
    return x


def _list(x: Any, n: int | None = None) -> list[Any]:
    if type(x) is not list or (n is not None and len(x) != n):
        raise ValueError("not a list")
    return x


def _map(x: Any) -> dict[str, Any]:
    if type(x) is not dict:
        raise ValueError("not a map")
    return x


def _pair(x: Any, kind: type) -> Any:
    a, b = _list(x, 2)
    return (_int(a), _int(b)) if kind is int else (_float(a), _float(b))
