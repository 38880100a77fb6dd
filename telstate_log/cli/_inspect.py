"""Subcommands that read the state: ``info``, ``keys``, ``get`` and ``range``.

Theory of operation
-------------------
Each command opens the log read-only (no lock, so it is safe while a writer
runs) without following it, answers from the materialised state and exits.
``keys``, ``get`` and ``range`` accept ``--at POSITION`` / ``--as-of TIME``
and then answer from an as-of view (:meth:`TelescopeState.as_of`): the
state after that event, with the samples written later -- even back-dated
ones -- left out.  Their JSON output names the position the answer is for.

``info`` only touches what is cheap: the state's indexes, the segment and
checkpoint files, the seals and ``pruned`` files, and two events (the first
and the last still in the segments) for the span of recording times.  After
a prune it shows the pruned range of positions (their state is kept, their
history is not), and says when the head hash belongs to a pruned segment
and so can no longer be verified from the log.  Counting the events of
each writing session means reading every segment, so it is asked for with
``--count-events`` (and shows a progress line on a terminal); it reads the
segments a window at a time and counts from the frames' fixed fields
(:func:`~telstate_log.storage._frame_walk.count_sessions`), without
materialising an event.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import KeyType
from ._common import (
    CliError,
    UsageError,
    add_as_of_arguments,
    add_json_argument,
    add_log_argument,
    command_parser,
    doing,
    note,
    open_log,
    parse_time,
    require_log,
    state_view,
)
from ._output import (
    Table,
    emit_json,
    format_bytes,
    has_large_array,
    iso_utc,
    plural,
    print_fields,
    safe_text,
    to_json,
    value_repr,
    value_text,
)

if TYPE_CHECKING:
    from ..backends import LogBackend
    from ..storage import Summary

__all__ = ["add_get_parser", "add_info_parser", "add_keys_parser", "add_range_parser"]


def type_name(kind: KeyType | None) -> str:
    return "-" if kind is None else kind.name.lower()


# ------------------------------------------------------------------- info
def add_info_parser(subparsers: Any) -> None:
    p = command_parser(
        subparsers, "info", "summarise a log: positions, files, keys, time spans, sources",
        "Summarise a log: event positions, segment and checkpoint files, keys by\n"
        "type, the span of sample timestamps (valid time) and of recording times\n"
        "(system time), the writing sessions (sources) and the head hash (seal).",
        ["telstate-log info obs/log", "telstate-log info obs/log --count-events",
         "telstate-log info obs/log --json | jq .positions"])
    add_log_argument(p)
    p.add_argument("--count-events", action="store_true",
                   help="also count the events of each session (reads the whole log)")
    add_json_argument(p)
    p.set_defaults(func=run_info)


@dataclass
class _StateFacts:
    """What ``info`` reports about the state (from an open log or a checkpoint summary)."""

    last: int
    durable: int
    log_id: bytes | None
    by_type: Counter[str]
    samples: int
    valid: tuple[float, float] | None
    sessions: list[tuple[int, dict[str, Any]]]
    #: (first, last) -> when events `first` and `last` were recorded
    recorded: Callable[[int, int], list[float | None]]


def _backend_facts(backend: LogBackend) -> _StateFacts:
    by_type: Counter[str] = Counter()
    samples = 0
    lo, hi = math.inf, -math.inf
    for key in backend.keys(b"*"):
        kind = backend.key_type(key)
        by_type[type_name(kind)] += 1
        if kind == KeyType.MUTABLE:
            rng = backend.get_range_arrays(key, 0.0, math.inf, False, False)
            if rng is not None and len(rng):
                samples += len(rng)
                lo, hi = min(lo, float(rng.timestamps[0])), max(hi, float(rng.timestamps[-1]))

    def recorded(first: int, last: int) -> list[float | None]:
        return [backend.events(first, first)[0].recorded,
                backend.events(last, last)[0].recorded]

    return _StateFacts(backend.position, backend.durable_position, backend.log_id, by_type,
                       samples, (lo, hi) if samples else None,
                       [(sid, backend.session_info(sid)) for sid in backend.session_ids()],
                       recorded)


def _summary_facts(path: str, summary: Summary) -> _StateFacts:
    """The facts of a read-only open's state, from the checkpoint summary that
    describes it (see telstate_log.storage._quick_info)."""
    from ..storage import OsFileSystem, first_recorded

    def recorded(first: int, last: int) -> list[float | None]:
        assert last == summary.position
        return [first_recorded(OsFileSystem(), path, first, summary.log_id), summary.recorded]

    by_type: Counter[str] = Counter(immutable=summary.immutable, indexed=summary.indexed,
                                    mutable=summary.mutable)
    # a reader's durable position is its position (it has no durability of its own)
    return _StateFacts(summary.position, summary.position, summary.log_id, by_type,
                       summary.samples, summary.valid, sorted(summary.sessions.items()),
                       recorded)


def gather_info(backend: LogBackend, count_events: bool = False) -> dict[str, Any]:
    """Everything ``info`` reports, as JSON-ready data."""
    return _gather(backend.path, _backend_facts(backend), count_events)


def quick_info(path: str, count_events: bool = False) -> dict[str, Any] | None:
    """What :func:`gather_info` reports for the log at `path` opened read-only,
    from its newest checkpoint's summary without loading the state; None when
    that summary does not describe what an open would give (see
    telstate_log.storage._quick_info): then open the log."""
    from ..storage import OsFileSystem, current_summary

    summary = current_summary(OsFileSystem(), path)
    return None if summary is None else _gather(path, _summary_facts(path, summary),
                                                count_events)


def _gather(path: str, facts: _StateFacts, count_events: bool) -> dict[str, Any]:
    from ..storage import (
        OsFileSystem,
        SealFileError,
        list_checkpoints,
        list_segments,
        pruned_prefix,
        read_pruned,
        read_seals,
    )

    last = facts.last
    fs = OsFileSystem()
    segments = list_segments(fs, path)
    cut = read_pruned(fs, path)
    try:
        seals = read_seals(path)
    except SealFileError:
        seals = []
    head_pruned = bool(seals) and pruned_prefix(seals, {name for _, name in segments},
                                                cut) == len(seals)
    sealed = {s.segment for s in seals}
    sizes = [os.path.getsize(os.path.join(path, name)) for _, name in segments]
    files = [{"name": name, "first": first, "bytes": size, "sealed": name in sealed}
             for (first, name), size in zip(segments, sizes)]
    first = segments[0][0] if segments and last >= segments[0][0] else None
    checkpoints = [{"path": cp.path, "position": cp.position,
                    "bytes": os.path.getsize(cp.path)}
                   for cp in reversed(list_checkpoints(path))]
    by_type = facts.by_type
    recorded: list[float | None] = [None, None]
    if first is not None:
        recorded = facts.recorded(first, last)
    counts: Counter[int] | None = None
    if count_events and first is not None:
        counts = _count_sessions(path, first, last)
    sources = []
    for sid, meta in facts.sessions:
        started = meta.get("started")
        sources.append({"session": sid, "source": meta.get("source", ""),
                        "host": meta.get("host"), "pid": meta.get("pid"),
                        "user": meta.get("user"), "version": meta.get("version"),
                        "started": started,
                        "started_utc": iso_utc(started, "microseconds")
                        if isinstance(started, float) else None,
                        "events": None if counts is None else counts.get(sid, 0)})
    valid: tuple[float | None, float | None] = facts.valid or (None, None)
    return {
        "path": path,
        "log_id": None if facts.log_id is None else facts.log_id.hex(),
        "positions": {"first": first, "last": last, "durable": facts.durable,
                      "sealed": seals[-1].last if seals else None,
                      "checkpoint": checkpoints[-1]["position"] if checkpoints else None,
                      "pruned": {"first": 1, "last": min(cut - 1, last)} if cut > 1 else None},
        "segments": {"count": len(files), "bytes": sum(sizes),
                     "files": files},
        "checkpoints": checkpoints,
        "keys": {"total": sum(by_type.values()), "immutable": by_type["immutable"],
                 "indexed": by_type["indexed"], "mutable": by_type["mutable"],
                 "samples": facts.samples},
        "valid_time": _span(*valid),
        "recorded": _span(*recorded),
        "sources": sources,
        "head": seals[-1].seal if seals else None,
        "head_pruned": head_pruned,
        "sealed_segments": len(seals),
    }


def _span(first: float | None, last: float | None) -> dict[str, Any]:
    return {"first": first, "first_utc": iso_utc(first, "microseconds"),
            "last": last, "last_utc": iso_utc(last, "microseconds")}


def _count_sessions(path: str, first: int, last: int) -> Counter[int]:
    """Events per session, counted from the segments' frame arrays (no event is
    materialised; memory bounded by a read window)."""
    from ..storage import OsFileSystem, count_sessions
    from ._progress_bar import Progress

    with Progress() as progress:
        return count_sessions(OsFileSystem(), path, first, last,
                              lambda n: progress("count events", n, last - first + 1))


def _span_text(span: dict[str, Any]) -> str:
    if span["first"] is None:
        return "-"
    return (f"{iso_utc(span['first'])} .. {iso_utc(span['last'])} "
            f"({span['last'] - span['first']:.3f} s)")


def print_info(info: dict[str, Any]) -> None:
    pos, keys, segs = info["positions"], info["keys"], info["segments"]
    extra = [f"durable {pos['durable']}"]
    if pos["sealed"] is not None:
        extra.append(f"sealed up to {pos['sealed']}")
    pruned = pos.get("pruned")
    if pruned is not None:
        extra.insert(0, f"{pruned['first']} .. {pruned['last']} pruned: their state is kept, "
                        "not their history")
    start = pos["first"] if pruned is None else pruned["first"]
    positions = "no events" if start is None or pos["last"] < start else \
        f"{start} .. {pos['last']} ({'; '.join(extra)})"
    cps = info["checkpoints"]
    head = "- (no segment sealed yet)" if info["head"] is None else \
        f"{info['head']} ({plural(info['sealed_segments'], 'segment')} sealed)"
    if info.get("head_pruned"):
        head = head[:-1] + "; its segment was pruned: it can no longer be verified from " \
                           "this log)"
    print_fields([
        ("log", info["path"]),
        ("log id", info["log_id"] or "-"),
        ("positions", positions),
        ("segments", f"{plural(segs['count'], 'file')}, {format_bytes(segs['bytes'])}"),
        ("checkpoints", f"{len(cps)}" + (" (at " + ", ".join(str(c["position"]) for c in cps)
                                          + ")" if cps else "")),
        ("keys", f"{keys['total']}: {keys['mutable']} mutable ({keys['samples']} samples), "
                 f"{keys['immutable']} immutable, {keys['indexed']} indexed"),
        ("valid time", _span_text(info["valid_time"])),
        ("recorded", _span_text(info["recorded"])),
        ("head hash", head),
    ])
    if info["sources"]:
        print()
        counted = info["sources"][0]["events"] is not None
        headers = ["SESSION", "SOURCE", "HOST", "PID", "USER", "STARTED (UTC)"]
        table = Table(headers + (["EVENTS"] if counted else []), right={0, 3, 6})
        for s in info["sources"]:
            row = [str(s["session"]), safe_text(s["source"] or "-"), str(s["host"] or "-"),
                   str(s["pid"] or "-"), str(s["user"] or "-"), iso_utc(s["started"]) or "-"]
            table.add(*row, *([str(s["events"])] if counted else []))
        table.flush()


def run_info(args: argparse.Namespace) -> int:
    with doing("reading log", require_log(args.log)):
        info = quick_info(args.log, args.count_events)
    if info is None:
        with open_log(args.log) as backend:
            info = gather_info(backend, args.count_events)
    if args.json:
        emit_json(info)
    else:
        print_info(info)
    return 0


# ------------------------------------------------------------------- keys
def add_keys_parser(subparsers: Any) -> None:
    p = command_parser(
        subparsers, "keys", "list keys matching a Redis glob pattern",
        "List the keys matching PATTERN (a Redis glob: * ? [abc] [^a] [a-z], with\n"
        "backslash escapes), sorted, one per line.",
        ["telstate-log keys obs/log", "telstate-log keys obs/log 'm00[0-3]_*' --type",
         "telstate-log keys obs/log --at 1000 --json"])
    add_log_argument(p)
    p.add_argument("pattern", metavar="PATTERN", nargs="?", default="*",
                   help="Redis glob pattern (default: every key)")
    p.add_argument("--type", action="store_true",
                   help="add the key type column (immutable, mutable, indexed)")
    add_as_of_arguments(p)
    add_json_argument(p)
    p.set_defaults(func=run_keys)


def run_keys(args: argparse.Namespace) -> int:
    with open_log(args.log) as backend:
        ts = state_view(backend, args)
        keys = [(k, type_name(ts.key_type(k))) for k in ts.keys(args.pattern)]
        position = ts.position
    if not keys:
        note(args, f"nothing matched: no keys match {args.pattern!r}{_where(position, args)}")
    if args.json:
        emit_json({"position": position, "pattern": args.pattern,
                   "keys": [{"key": k, "type": t} for k, t in keys]})
    elif args.type:
        table = Table(["KEY", "TYPE"])
        for key, kind in keys:
            table.add(safe_text(key), kind)
        table.flush()
    else:
        print("\n".join(safe_text(k) for k, _ in keys), end="\n" if keys else "")
    return 0


# -------------------------------------------------------------------- get
def add_get_parser(subparsers: Any) -> None:
    p = command_parser(
        subparsers, "get", "print the value of a key (optionally as of an earlier point)",
        "Print the decoded value of KEY: an attribute's value, a sensor's latest\n"
        "sample, or an indexed key's {sub-key: value} table.  People get its repr;\n"
        "on a terminal, arrays of over 1000 elements are summarised (shape, dtype,\n"
        "first and last elements) unless --full is given.  --json gives every\n"
        "element and adds the key type, the sample timestamp and the position.",
        ["telstate-log get obs/log obs_target", "telstate-log get obs/log m000_activity --at 42",
         "telstate-log get obs/log cal_product_G --as-of now-1h --json",
         "telstate-log get obs/log cal_product_B --full"])
    add_log_argument(p)
    p.add_argument("key", metavar="KEY", help="the key")
    p.add_argument("--full", action="store_true",
                   help="print every element of large arrays, even on a terminal")
    add_as_of_arguments(p)
    add_json_argument(p)
    p.set_defaults(func=run_get)


def _where(position: int, args: argparse.Namespace) -> str:
    travelled = getattr(args, "at", None) is not None or getattr(args, "as_of", None) is not None
    return f" at position {position}" if travelled else ""


def run_get(args: argparse.Namespace) -> int:
    import numpy as np

    with open_log(args.log) as backend:
        ts = state_view(backend, args)
        kind = ts.key_type(args.key)
        if kind is None:
            raise CliError(f"{args.key}: no such key{_where(ts.position, args)}")
        stamp: float | None = None
        if kind == KeyType.MUTABLE:
            value, stamp = ts.get_range(args.key)[-1]
        else:
            value = ts.get(args.key)
        position = ts.position
    if args.json:
        if kind == KeyType.INDEXED:
            shown: Any = [{"sub_key": to_json(k), "value": to_json(v)} for k, v in value.items()]
        else:
            shown = to_json(value)
        emit_json({"key": args.key, "type": type_name(kind), "position": position,
                   "value": shown, "timestamp": stamp,
                   "timestamp_utc": iso_utc(stamp, "microseconds")})
    else:
        summary = not args.full and sys.stdout.isatty() and has_large_array(value)
        print(safe_text(value_repr(value, summary)))
        if summary:
            what = f"{value.dtype} array of shape {value.shape}" \
                if isinstance(value, np.ndarray) else "large arrays"
            print(f"({what} summarised: --full prints every element, --json gives them "
                  "as data)", file=sys.stderr)
    return 0


# ------------------------------------------------------------------ range
def add_range_parser(subparsers: Any) -> None:
    p = command_parser(
        subparsers, "range", "print the samples of a sensor in a time range",
        "Print the samples of sensor KEY with timestamps in [ST, ET) (ET included\n"
        "with --include-end): timestamp, UTC time and value.  Without --st every\n"
        "sample up to ET is printed.",
        ["telstate-log range obs/log m000_pos_actual_scan_azim",
         "telstate-log range obs/log anc_air_temperature --st 2024-05-01T12:00:00Z "
         "--et now --include-previous",
         "telstate-log range obs/log anc_air_temperature --at 1200 --json"])
    add_log_argument(p)
    p.add_argument("key", metavar="KEY", help="a sensor (mutable key)")
    p.add_argument("--st", metavar="TIME", type=parse_time, default=0.0,
                   help="start time, inclusive (default: the beginning)")
    p.add_argument("--et", metavar="TIME", type=parse_time, default=math.inf,
                   help="end time, exclusive (default: the end)")
    p.add_argument("--include-previous", action="store_true",
                   help="also print the last sample before ST (the value in force at ST)")
    p.add_argument("--include-end", action="store_true",
                   help="make ET inclusive")
    add_as_of_arguments(p)
    add_json_argument(p)
    p.set_defaults(func=run_range)


def run_range(args: argparse.Namespace) -> int:
    if args.st > args.et:
        raise UsageError(f"inverted window: --st {iso_utc(args.st)} is after --et "
                         f"{iso_utc(args.et)}")
    with open_log(args.log) as backend:
        ts = state_view(backend, args)
        kind = ts.key_type(args.key)
        if kind is None:
            raise CliError(f"{args.key}: no such key{_where(ts.position, args)}")
        if kind != KeyType.MUTABLE:
            raise CliError(f"{args.key} is an {type_name(kind)} key, not a sensor: use "
                           "'telstate-log get'")
        samples = ts.get_range(args.key, args.st, args.et, args.include_previous,
                               args.include_end)
        position = ts.position
    if not samples:
        note(args, f"nothing matched: {args.key} has no samples from {iso_utc(args.st)} to "
                   f"{iso_utc(args.et) if math.isfinite(args.et) else 'the end'}"
                   f"{_where(position, args)}")
    if args.json:
        et = None if math.isinf(args.et) else args.et
        emit_json({"key": args.key, "position": position, "st": args.st,
                   "st_utc": iso_utc(args.st, "microseconds"), "et": et,
                   "et_utc": iso_utc(et, "microseconds"),
                   "samples": [{"timestamp": t, "timestamp_utc": iso_utc(t, "microseconds"),
                                "value": to_json(v)} for v, t in samples]})
    else:
        table = Table(["TIMESTAMP", "TIME (UTC)", "VALUE"], right={0})
        for value, t in samples:
            table.add(f"{t:.6f}", iso_utc(t) or "-", value_text(value))
        table.flush()
    return 0
