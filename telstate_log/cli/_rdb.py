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
it does not exist yet.  ``import IN.rdb LOG`` reads and validates the file
(:func:`telstate_log.replay._rdb_load.read_rdb`), then opens (or creates) the
log for writing and applies it (``apply_rdb``); nothing is imported if the
file is malformed or conflicts with the log, and a log the import created
is removed again if it fails in any way (Ctrl-C and a full disk included).

Both print a one-line summary (keys, samples, bytes, seconds) or, with
``--json``, one JSON object on stdout; a progress line is shown on stderr
only when it is a terminal (:mod:`telstate_log.core._progress`).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, Any

from .. import LogFailedError, LogWriteError, TelstateError
from ..storage import NewLog
from ._common import (
    CliError,
    command_parser,
    doing,
    error_text,
    is_inside,
    note,
    open_log,
    os_error_text,
    parse_position,
    parse_time,
    report_error,
)
from ._output import format_bytes
from ._progress_bar import Progress

if TYPE_CHECKING:
    from ..replay import ImportStats

__all__ = ["add_export_parser", "add_import_parser"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def _fail(args: argparse.Namespace, exc: BaseException) -> int:
    """Report `exc` as one ``error:`` line, as every command does; the exit status."""
    report_error(args.command, error_text(exc, args))
    return EXIT_FAILURE


def _report(args: argparse.Namespace, summary: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(text)


# ------------------------------------------------------------------- export
def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``export LOG OUT.rdb [--keys PATTERN] [--at N | --as-of TIME] [--json]``."""
    parser = command_parser(
        subparsers, "export", "write the log's state to a Redis RDB file",
        "Write the state of a log (now, or at an earlier point) to an RDB file\n"
        "that redis-server and katsdptelstate can load.  The log may be being\n"
        "written: the export is a consistent snapshot.",
        ["telstate-log export obs/log obs.rdb",
         "telstate-log export obs/log sensors.rdb --keys 'm0*' --as-of now-10m",
         "telstate-log export obs/log before.rdb --at 1000 --json"])
    parser.add_argument("log", metavar="LOG", help="log directory")
    parser.add_argument("out", metavar="OUT.rdb", help="RDB file to write (replaced atomically)")
    parser.add_argument("--keys", default="*", metavar="PATTERN",
                        help="export only keys matching this Redis glob pattern (default: all)")
    when = parser.add_mutually_exclusive_group()
    when.add_argument("--at", type=parse_position, metavar="POSITION",
                      help="export the state just after event POSITION")
    when.add_argument("--as-of", type=parse_time, metavar="TIME", dest="as_of",
                      help="export the state as of TIME (UNIX seconds, ISO 8601, 'now' "
                           "or 'now-10m')")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run_export)
    return parser


def run_export(args: argparse.Namespace) -> int:
    """Run ``export``; returns the exit code."""
    from ..replay import export_rdb

    pattern = os.fsencode(args.keys)
    try:
        backend = open_log(args.log)
    except (CliError, TelstateError) as exc:
        return _fail(args, exc)
    with backend:
        try:
            with doing("reading log", args.log):
                if args.at is not None or args.as_of is not None:
                    items = backend.as_of(position=args.at, time=args.as_of) \
                        .snapshot_items(pattern)
                else:
                    items = backend.snapshot_items(pattern)
            with doing("writing", args.out), Progress() as progress:
                stats = export_rdb(items, args.out, progress=progress)
        except (CliError, TelstateError, ValueError) as exc:
            return _fail(args, exc)
    if not stats.keys:
        what = "no keys" if args.keys == "*" else f"no keys match {args.keys!r}"
        note(args, f"nothing matched: {what} in the state exported, so {args.out} holds no keys")
    summary = {"command": "export", "log": args.log, "out": args.out, **stats.as_dict()}
    _report(args, summary, f"exported {stats.keys:,} keys ({stats.samples:,} samples, "
                           f"{format_bytes(stats.bytes)}) to {args.out} in "
                           f"{stats.seconds:.2f} s")
    return EXIT_OK


# ------------------------------------------------------------------- import
def add_import_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``import IN.rdb LOG [--source LABEL] [--db N] [--json]``."""
    parser = command_parser(
        subparsers, "import", "load a Redis RDB file into a log",
        "Record every key of an RDB file as events in a log (created if missing).\n"
        "Nothing is imported if the file is malformed or conflicts with the log;\n"
        "keys already present with the same data are skipped, so importing a file\n"
        "again adds nothing.  Needs the writer lock.",
        ["telstate-log import dump.rdb obs/log",
         "telstate-log import dump.rdb obs/log --source 'archive copy' --json",
         "telstate-log import multi.rdb obs/log --db 3"])
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


def _check_import_paths(rdb: str, log: str) -> None:
    """CliError unless `rdb` is a file and `log` is a directory or missing."""
    if os.path.isdir(rdb):
        try:
            inside = sorted(name for name in os.listdir(rdb) if name.endswith(".rdb"))
        except OSError:
            inside = []
        hint = f" (it holds {', '.join(inside[:3])})" if inside else ""
        raise CliError(f"cannot import {rdb}: it is a directory, not an RDB file{hint}")
    if not os.path.exists(rdb):
        raise CliError(f"cannot import {rdb}: no such file")
    if os.path.exists(log) and not os.path.isdir(log):
        raise CliError(f"cannot import into {log}: it is a file, not a log directory")


def _failed_import_text(rdb: str, log: str, exc: BaseException, before: int,
                        created: bool = False) -> str:
    """What a write failure left: the log is reopened to see which prefix it kept
    (a log the import `created` is removed again: nothing is left)."""
    from ..backends import LogBackend

    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError) and cause.errno:
        reason = os.strerror(cause.errno)
    else:
        reason = str(exc)
    text = f"importing {rdb} into {log} failed: {reason}"
    if created:
        return f"{text}; nothing was imported and {log} was not created"
    try:
        with LogBackend(log, readonly=True, follow=False) as reopened:
            after = reopened.position
    except (TelstateError, OSError):
        return f"{text}; reopen the log to see what it kept"
    if after <= before:
        return f"{text}; nothing was imported ({log} is unchanged at position {before})"
    return (f"{text}; positions {before + 1}..{after} hold what was imported before the "
            "failure: free space and run the same import again to finish it (what is "
            "there already is skipped)")


def run_import(args: argparse.Namespace) -> int:
    """Run ``import``; returns the exit code.

    The file is read and validated before the log is opened; a log created
    here is removed again if the import fails in any way, Ctrl-C included
    (:class:`~telstate_log.storage._new_log.NewLog`).
    """
    try:
        _check_import_paths(args.rdb, args.log)
    except CliError as exc:
        return _fail(args, exc)
    with Progress() as progress, NewLog(args.log) as new:
        code = _import(args, new, progress)
    for problem in new.problems:
        note(args, f"could not remove the new log: {problem}")
    return code


def _import(args: argparse.Namespace, new: NewLog, progress: Progress) -> int:
    """The body of :func:`run_import`; calls ``new.keep()`` once it has succeeded."""
    from ..backends import LogBackend
    from ..replay import apply_rdb, read_rdb

    try:
        contents = read_rdb(args.rdb, db=args.db, progress=progress)
        action = "opening log" if os.path.isdir(args.log) else "creating log"
        with doing(action, args.log):
            new.make()
            backend = LogBackend(args.log)
    except OSError as exc:
        return _fail(args, CliError(os_error_text(exc, "reading", args.rdb)))
    except (CliError, TelstateError) as exc:
        return _fail(args, exc)
    before = backend.position
    try:
        with backend:
            stats = apply_rdb(backend, contents, source=args.source, progress=progress)
    except (LogWriteError, LogFailedError) as exc:
        return _fail(args, CliError(_failed_import_text(args.rdb, args.log, exc, before,
                                                        new.created)))
    except OSError as exc:
        inside_log = isinstance(exc.filename, str) and is_inside(exc.filename, args.log)
        action, path = ("writing log", args.log) if inside_log else ("reading", args.rdb)
        return _fail(args, CliError(os_error_text(exc, action, path)))
    except TelstateError as exc:
        return _fail(args, exc)
    except KeyboardInterrupt:
        if not new.created and backend.position > before:   # a new log is removed
            note(args, f"interrupted: positions {before + 1}..{backend.position} of "
                       f"{args.log} hold part of {args.rdb}; run the same import again to "
                       "finish it (what is there already is skipped)")
        raise
    new.keep()
    summary = {"command": "import", "rdb": args.rdb, "log": args.log, **stats.as_dict()}
    if stats.events == 0 and stats.keys:
        _report(args, summary, f"nothing new in {args.rdb}: its {stats.keys:,} keys "
                               f"({stats.samples:,} samples) were already in {args.log}, "
                               f"log position {stats.position:,}{_expiry_text(stats)}")
        return EXIT_OK
    _report(args, summary, f"imported {stats.keys:,} keys ({stats.samples:,} samples, "
                           f"{format_bytes(stats.bytes)}) from {args.rdb} in "
                           f"{stats.seconds:.2f} s: {stats.events:,} new events, "
                           f"log position {stats.position:,}{_expiry_text(stats)}")
    return EXIT_OK


def _expiry_text(stats: ImportStats) -> str:
    """What became of keys with an expiry time (telescope state keys never expire)."""
    parts = []
    if stats.expired:
        parts.append(f"{stats.expired:,} keys whose expiry time had passed were skipped")
    if stats.expiry_dropped:
        parts.append(f"{stats.expiry_dropped:,} keys were imported without their expiry "
                     "time (telescope state keys do not expire)")
    return "".join(f"; {part}" for part in parts)
