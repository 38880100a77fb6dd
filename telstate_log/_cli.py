"""The ``telstate-log`` command line: parser assembly, dispatch and shared helpers.

Theory of operation
-------------------
:func:`main` builds one :mod:`argparse` parser whose subcommands come from
``telstate_log._cli_*`` modules.  Each such module exposes
``add_<name>_parser(subparsers)`` functions that add a subcommand and set
its handler (``func``): a function taking the parsed arguments and returning
the exit status.  :data:`COMMAND_MODULES` lists them in ``--help`` order; an
optional module that is not installed is skipped, so a feature can ship as
one more ``_cli_<feature>.py`` without touching anything else.

Exit status: 0 success; 1 a check found a problem or an operation failed
(library errors such as :exc:`~telstate_log.LogCorruptError` are printed as
one line on stderr, never as a traceback); 2 a usage error (argparse's).
Ctrl-C exits with 130, a closed output pipe (``| head``) quietly with 1.

Shared here: opening a log read-only, time-travel options, and the parsing
of times and positions.  A time on the command line is UNIX seconds
(``1714564800.5``), ISO 8601 (``2024-05-01T12:00:00Z``; without a zone it
is UTC), ``now``, or ``now-90s`` / ``now+2m`` / ``now-1.5h`` / ``now-1d``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ._errors import LogCorruptError, TelstateError
from ._version import __version__

if TYPE_CHECKING:
    from ._history import Event
    from ._telescope_state import TelescopeState
    from .backends._log import LogBackend

__all__ = ["COMMAND_MODULES", "CliError", "build_parser", "main"]

PROG = "telstate-log"

#: ``(module, parser-adding functions, required)`` in ``--help`` order.
COMMAND_MODULES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("_cli_demo", ("add_demo_parser",), True),
    ("_cli_inspect", ("add_info_parser", "add_keys_parser", "add_get_parser",
                      "add_range_parser"), True),
    ("_cli_events", ("add_history_parser", "add_audit_parser", "add_tail_parser"), True),
    ("_cli_plot", ("add_plot_parser",), True),
    ("_cli_maint", ("add_verify_parser", "add_repair_parser", "add_checkpoint_parser",
                    "add_seal_parser", "add_prune_parser"), True),
    ("_cli_rdb", ("add_export_parser", "add_import_parser"), False),
    ("_cli_redis", ("add_project_parser", "add_record_parser", "add_replay_parser"), False),
)

_EPILOG = """\
examples:
  telstate-log demo                      write a demo observation and tour it
  telstate-log info obs/log              what is in a log
  telstate-log range obs/log m000_pos_actual_scan_azim --st now-5m
  telstate-log get obs/log obs_target --as-of 2024-05-01T12:00:00Z
  telstate-log tail -f obs/log           follow a log as it is written
  telstate-log verify obs/log --head HASH

Every command takes --help.  Times are UNIX seconds, ISO 8601 (UTC unless a
zone is given), 'now' or 'now-10m'.  Commands that print data take --json.
exit status: 0 ok, 1 check failed or operation failed, 2 usage error."""


class CliError(Exception):
    """A failure to report as one line on stderr (exit status 1)."""


# ------------------------------------------------------------------ parsing
_RELATIVE = re.compile(r"now\s*(?:([+-])\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?))?", re.IGNORECASE)
_UNIT = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_time(text: str) -> float:
    """A command-line time as UNIX seconds (see the module docstring)."""
    s = text.strip()
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"time must be finite, not {text!r}")
        return value
    m = _RELATIVE.fullmatch(s)
    if m:
        sign, amount, unit = m.groups()
        offset = 0.0 if sign is None else float(amount) * _UNIT[unit.lower()]
        return time.time() + (-offset if sign == "-" else offset)
    iso = s[:-1] + "+00:00" if s[-1:] in ("Z", "z") else s
    try:
        dt = datetime.datetime.fromisoformat(iso)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use UNIX seconds, ISO 8601 "
            "(e.g. 2024-05-01T12:00:00Z) or now[-N(s|m|h|d)]") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt.timestamp()


def parse_position(text: str) -> int:
    """A log position (an event number, 0 = before the first event)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid position {text!r}: expected an integer "
                                         ">= 0") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid position {text!r}: must be >= 0")
    return value


def parse_count(text: str) -> int:
    """A non-negative count."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected an integer >= 0")
    return value


def parse_seconds(text: str) -> float:
    """A non-negative duration in seconds."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: expected seconds >= 0")
    return value


# ------------------------------------------------------- building parsers
def command_parser(subparsers: Any, name: str, summary: str, description: str,
                   examples: Sequence[str]) -> argparse.ArgumentParser:
    """Add subcommand `name` with a one-line `summary` and an examples epilog."""
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, help=summary, description=description, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def add_log_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("log", metavar="LOG", help="log directory")


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print JSON for programs instead of a table")


def add_as_of_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--at", metavar="POSITION", type=parse_position,
                       help="show the state after event POSITION (time travel)")
    group.add_argument("--as-of", metavar="TIME", type=parse_time,
                       help="show the state as recorded at wall-clock TIME (time travel)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Telescope state as an append-only log: inspect, follow, "
                               "verify and maintain telstate-log logs.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name, adders, required in COMMAND_MODULES:
        full_name = f"{__package__}.{module_name}"
        try:
            module = importlib.import_module(full_name)
        except ModuleNotFoundError as exc:
            if required or exc.name != full_name:
                raise
            continue
        for adder in adders:
            getattr(module, adder)(subparsers)
    return parser


# ------------------------------------------------------------- the logs
def require_log(path: str) -> str:
    """`path` if it is a log directory (holds segment files), else CliError."""
    from ._fileio import OsFileSystem
    from ._recovery import list_segments

    if not os.path.isdir(path):
        raise CliError(f"{path}: no such log directory")
    if not list_segments(OsFileSystem(), path):
        raise CliError(f"{path}: not a telstate-log log (no segment files)")
    return path


def open_log(path: str, *, follow: bool = False) -> LogBackend:
    """Open the log at `path` read-only (no lock: safe while a writer runs)."""
    from .backends._log import LogBackend

    return LogBackend(require_log(path), readonly=True, follow=follow)


def state_view(backend: LogBackend, args: argparse.Namespace) -> TelescopeState:
    """A TelescopeState on `backend`, as of ``--at`` / ``--as-of`` if given."""
    from ._telescope_state import TelescopeState

    ts = TelescopeState(backend)
    at, as_of = getattr(args, "at", None), getattr(args, "as_of", None)
    try:
        if at is not None:
            return ts.as_of(position=at)
        if as_of is not None:
            return ts.as_of(time=as_of)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return ts


def first_position(backend: LogBackend) -> int:
    """The first position still in the log's segments (past 1 once old ones are pruned)."""
    from ._fileio import OsFileSystem
    from ._recovery import list_segments

    segments = list_segments(OsFileSystem(), backend.path)
    return segments[0][0] if segments else 1


def iter_events(backend: LogBackend, since: int, until: int,
                chunk: int = 16384) -> Iterator[Event]:
    """Events ``since..until`` read in chunks, so any range fits in memory."""
    pos = max(1, since)
    while pos <= until:
        stop = min(until, pos + chunk - 1)
        yield from backend.events(pos, stop)
        pos = stop + 1


# ------------------------------------------------------------------- main
def _report(command: str | None, message: str) -> None:
    """One line on stderr, in argparse's format: ``telstate-log get: error: ...``."""
    prog = PROG if command is None else f"{PROG} {command}"
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.stderr.flush()


def _silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with `argv` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    command = getattr(args, "command", None)
    try:
        return func(args)
    except CliError as exc:
        _report(command, str(exc))
    except LogCorruptError as exc:
        _report(command, f"{exc} (see '{PROG} verify' and '{PROG} repair')")
    except TelstateError as exc:
        _report(command, str(exc) or type(exc).__name__)
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            _silence_stdout()
            return 1
        _report(command, f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror
                else str(exc))
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
