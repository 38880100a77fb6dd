"""The ``export`` and ``import`` subcommands of the ``telstate-log`` command line.

Theory of operation
-------------------
:func:`add_export_parser` and :func:`add_import_parser` register argparse
subparsers whose ``func(args)`` runs the command and returns the exit code:
0 on success, 1 on failure (a malformed RDB file, a conflicting key, a
locked or missing log, an I/O error: the message goes to stderr), 2 for
usage errors (argparse's own, and options this build cannot honour).

``export LOG OUT.rdb`` opens the log read-only (it may have a live writer)
and streams a consistent snapshot through
:func:`telstate_log.replay._export.export_rdb`.  ``--at POSITION`` and
``--as-of TIME`` export the state as it was at an earlier point; they need
the backend's as-of view (``as_of(position=..., time=...).snapshot_items(pattern)``) and exit 2 if
it does not exist yet.  ``import IN.rdb LOG`` opens (or creates) the log for
writing and calls :func:`telstate_log.replay._rdb_load.import_rdb`; nothing
is imported if the file is malformed or conflicts with the log.

Both print a one-line summary (keys, samples, bytes, seconds) or, with
``--json``, one JSON object on stdout; a progress line is shown on stderr
only when it is a terminal (:mod:`telstate_log._progress`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from datetime import datetime, timezone
from typing import Any

from ._errors import TelstateError
from ._progress import Progress

__all__ = ["add_export_parser", "add_import_parser", "parse_time"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def parse_time(text: str) -> float:
    """``--as-of`` argument: Unix seconds, or ISO 8601 (UTC unless an offset is given)."""
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a time: {text!r} (give Unix seconds or ISO 8601, "
                "e.g. 2024-05-01T12:00:00Z)") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        value = moment.timestamp()
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"not a valid time: {text!r}")
    return value


def _position(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a log position: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"log positions are not negative: {text!r}")
    return value


def _human_bytes(size: int) -> str:
    if size < 1024:
        return f"{size:,} bytes"
    value = size / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:,.1f} TiB"


def _fail(command: str, exc: BaseException) -> int:
    print(f"telstate-log {command}: {exc}", file=sys.stderr)
    return EXIT_FAILURE


def _report(args: argparse.Namespace, summary: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(text)


# ------------------------------------------------------------------- export
def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``export LOG OUT.rdb [--keys PATTERN] [--at N | --as-of TIME] [--json]``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "export", help="write the log's state to a Redis RDB file",
        description="Write the state of a log (now, or at an earlier point) to an RDB file "
                    "that redis-server and katsdptelstate can load.")
    parser.add_argument("log", metavar="LOG", help="log directory")
    parser.add_argument("out", metavar="OUT.rdb", help="RDB file to write (replaced atomically)")
    parser.add_argument("--keys", default="*", metavar="PATTERN",
                        help="export only keys matching this Redis glob pattern (default: all)")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--at", type=_position, metavar="POSITION",
                      help="export the state just after event POSITION")
    when.add_argument("--as-of", type=parse_time, metavar="TIME", dest="as_of",
                      help="export the state as of TIME (Unix seconds or ISO 8601)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run_export)
    return parser


def run_export(args: argparse.Namespace) -> int:
    """Run ``export``; returns the exit code."""
    from .backends._log import LogBackend
    from .replay._export import export_rdb

    pattern = os.fsencode(args.keys)
    try:
        backend = LogBackend(args.log, readonly=True, follow=False)
    except (TelstateError, OSError) as exc:
        return _fail("export", exc)
    with backend:
        if args.at is not None or args.as_of is not None:
            try:
                view = backend.as_of(position=args.at, time=args.as_of)
                items = view.snapshot_items(pattern)
            except (TelstateError, ValueError) as exc:
                return _fail("export", exc)
        else:
            items = backend.snapshot_items(pattern)
        try:
            with Progress() as progress:
                stats = export_rdb(items, args.out, progress=progress)
        except (TelstateError, OSError, ValueError) as exc:
            return _fail("export", exc)
    summary = {"command": "export", "log": args.log, "out": args.out, **stats.as_dict()}
    _report(args, summary, f"exported {stats.keys:,} keys ({stats.samples:,} samples, "
                           f"{_human_bytes(stats.bytes)}) to {args.out} in "
                           f"{stats.seconds:.2f} s")
    return EXIT_OK


# ------------------------------------------------------------------- import
def add_import_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``import IN.rdb LOG [--source LABEL] [--db N] [--json]``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "import", help="load a Redis RDB file into a log",
        description="Record every key of an RDB file as events in a log (created if "
                    "missing).  Nothing is imported if the file is malformed or conflicts "
                    "with the log; keys already present with the same data are skipped.")
    parser.add_argument("rdb", metavar="IN.rdb", help="RDB file to read")
    parser.add_argument("log", metavar="LOG", help="log directory")
    parser.add_argument("--source", metavar="LABEL",
                        help="source label recorded with the events "
                             "(default: import:<file name>)")
    parser.add_argument("--db", type=int, metavar="N",
                        help="database to import (default: 0, and the file may hold no "
                             "other)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run_import)
    return parser


def run_import(args: argparse.Namespace) -> int:
    """Run ``import``; returns the exit code."""
    from .backends._log import LogBackend
    from .replay._rdb_load import import_rdb

    if not os.path.isfile(args.rdb):
        return _fail("import", FileNotFoundError(f"no such file: {args.rdb!r}"))
    try:
        backend = LogBackend(args.log)
    except (TelstateError, OSError) as exc:
        return _fail("import", exc)
    try:
        with backend:
            with Progress() as progress:
                stats = import_rdb(backend, args.rdb, source=args.source, db=args.db,
                                   progress=progress)
    except (TelstateError, OSError) as exc:
        return _fail("import", exc)
    summary = {"command": "import", "rdb": args.rdb, "log": args.log, **stats.as_dict()}
    _report(args, summary, f"imported {stats.keys:,} keys ({stats.samples:,} samples, "
                           f"{_human_bytes(stats.bytes)}) from {args.rdb} in "
                           f"{stats.seconds:.2f} s: {stats.events:,} new events, "
                           f"log position {stats.position:,}")
    return EXIT_OK
