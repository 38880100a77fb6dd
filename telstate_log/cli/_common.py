"""What every command of the command line shares: errors, parsing, opening logs.

Theory of operation
-------------------
Each command module (``cli/_<feature>.py``) builds its parser with
:func:`command_parser` and the ``add_*_argument`` helpers, opens logs with
:func:`open_log` (read-only, so it works while another process writes) and
reports problems by raising :exc:`CliError` (exit 1) or :exc:`UsageError`
(exit 2); :mod:`telstate_log.cli._main` turns them into one ``error:`` line.
:func:`doing` names the user's path and the action in an OS error, and
:func:`note` says on stderr that a query matched nothing.

A time on the command line -- for every option that takes one -- is UNIX
seconds (``1714564800.5``), ISO 8601 (``2024-05-01T12:00:00Z``; without a
zone it is UTC), ``now``, or ``now-90s`` / ``now+2m`` / ``now-1.5h`` /
``now-1d`` (:func:`parse_time`).
"""


from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

from .. import LogCorruptError, LogLockedError

if TYPE_CHECKING:
    from .. import Event, TelescopeState
    from ..backends import LogBackend

__all__ = [
    "PROG",
    "READ_ONLY_COMMANDS",
    "CliError",
    "CommandParser",
    "UsageError",
    "add_as_of_arguments",
    "add_json_argument",
    "add_log_argument",
    "command_parser",
    "doing",
    "error_text",
    "first_position",
    "is_inside",
    "iter_events",
    "note",
    "open_log",
    "os_error_text",
    "parse_count",
    "parse_position",
    "parse_seconds",
    "parse_time",
    "report_error",
    "require_log",
    "state_view",
    "stop_on_signals",
    "stop_signals",
]

PROG = "telstate-log"

#: Commands that only read a log, so they work while another process writes it
#: (the others take the writer lock; ``verify`` reads too, but may take the
#: frame being written for a torn one, so it is not offered here).
READ_ONLY_COMMANDS = ("info", "keys", "get", "range", "history", "audit", "tail", "plot",
                      "export", "project", "replay")


class CliError(Exception):
    """A failure to report as one line on stderr (exit status 1)."""


class UsageError(CliError):
    """A usage error only the command can detect (exit status 2, with the usage line)."""


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
class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: options and positional arguments in any order.

    Plain argparse matches positionals greedily in the first run of them, so
    in ``tail LOG -n 2 'anc_*'`` the patterns (``nargs="*"``) are matched --
    empty -- together with LOG, and ``'anc_*'`` is left over.  Intermixed
    parsing takes the options out first.  It also keeps the parser on the
    namespace (``args.command_parser``), so a command can report a
    :exc:`UsageError` with its own usage line.
    """

    _intermixing = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(command_parser=self)

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None,
                         ) -> tuple[argparse.Namespace, list[str]]:
        if self._intermixing:  # the two passes of parse_known_intermixed_args
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


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


# ------------------------------------------------------------- the logs
_LOGS_SHOWN = 3  # logs below a directory named in the "not a log" error
_SCAN_LIMIT = 1000  # directory entries looked at for them


def _is_log(path: str) -> bool:
    from ..storage import OsFileSystem, list_segments

    try:
        return bool(list_segments(OsFileSystem(), path))
    except OSError:
        return False


def _logs_below(path: str) -> list[str]:
    """Log directories directly inside `path` (a few, sorted), for a hint."""
    found: list[str] = []
    try:
        with os.scandir(path) as entries:
            for n, entry in enumerate(entries):
                if n >= _SCAN_LIMIT:
                    break
                if entry.is_dir() and _is_log(entry.path):
                    found.append(entry.path)
    except OSError:
        return []
    return sorted(found)[:_LOGS_SHOWN]


def require_log(path: str) -> str:
    """`path` if it is a log directory (holds segment files), else CliError."""
    if not os.path.exists(path):
        raise CliError(f"{path}: no such log directory")
    if not os.path.isdir(path):
        raise CliError(f"{path}: not a log directory: it is a file (a log is a directory "
                       "of segment files)")
    from ..storage import OsFileSystem, list_segments

    with doing("reading log", path):
        if list_segments(OsFileSystem(), path):
            return path
    below = _logs_below(path)
    if below:
        raise CliError(f"{path}: not a telstate-log log (no segment files); found a log in "
                       + ", ".join(below))
    raise CliError(f"{path}: not a telstate-log log (no segment files)")


def open_log(path: str, *, follow: bool = False) -> LogBackend:
    """Open the log at `path` read-only (no lock: safe while a writer runs)."""
    from ..backends import LogBackend

    require_log(path)
    with doing("reading log", path):
        return LogBackend(path, readonly=True, follow=follow)


# --------------------------------------------------------- errors, notes
def is_inside(name: str, directory: str) -> bool:
    """Whether file `name` is strictly inside `directory`."""
    name, directory = os.path.abspath(name), os.path.abspath(directory)
    return name != directory and os.path.commonpath([name, directory]) == directory


def os_error_text(exc: OSError, action: str, path: str) -> str:
    """One line for `exc`: `action` on the user's `path`, and why.

    An internal file the error names (a segment, ``OUT.rdb.tmp``) is added
    only when it is inside `path` (a file of the user's log directory).
    """
    code = exc.errno
    reason = os.strerror(code) if code else (exc.strerror or str(exc) or type(exc).__name__)
    parent = os.path.dirname(os.path.abspath(path))
    if code == errno.ENOENT and not os.path.isdir(parent):
        reason = f"no such directory {os.path.dirname(path) or parent}"
    filename = exc.filename if isinstance(exc.filename, str) else None
    detail = f" ({filename})" if filename and is_inside(filename, path) else ""
    return f"{action} {path}: {reason}{detail}" if action else f"{path}: {reason}{detail}"


@contextlib.contextmanager
def doing(action: str, path: str) -> Iterator[None]:
    """Report an OSError raised inside as a :exc:`CliError`: `action` on `path`.

    ``with doing("writing", args.out): ...`` turns ``[Errno 28] No space
    left on device`` into ``writing OUT.rdb: No space left on device``.  A
    closed output pipe (BrokenPipeError) passes through to :func:`main`.
    """
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise CliError(os_error_text(exc, action, path)) from exc


def report_error(command: str | None, message: str) -> None:
    """One line on stderr, in argparse's format: ``telstate-log get: error: ...``."""
    prog = PROG if command is None else f"{PROG} {command}"
    sys.stderr.write(f"{prog}: error: {message}\n")
    sys.stderr.flush()


def note(args: argparse.Namespace, message: str) -> None:
    """A remark on stderr that is not an error (``nothing matched``)."""
    command = getattr(args, "command", None)
    prog = PROG if command is None else f"{PROG} {command}"
    sys.stderr.write(f"{prog}: {message}\n")
    sys.stderr.flush()


def _locked_text(args: argparse.Namespace, exc: LogLockedError) -> str:
    path = getattr(args, "log", None) or "the log"
    who = "another process" if exc.pid is None else f"another process (pid {exc.pid})"
    command = getattr(args, "command", None) or "this command"
    return (f"{path} is locked: {who} is writing it, and '{command}' needs the writer "
            "lock; while it writes, these commands work: " + ", ".join(READ_ONLY_COMMANDS))


def error_text(exc: BaseException, args: argparse.Namespace) -> str:
    """The one-line message for an error that ended a command."""
    if isinstance(exc, LogLockedError):
        return _locked_text(args, exc)
    if isinstance(exc, LogCorruptError):
        return f"{exc} (see '{PROG} verify' and '{PROG} repair')"
    if isinstance(exc, OSError):
        path = getattr(args, "log", None)
        if isinstance(path, str):  # the prefix names the command: what it was doing
            return os_error_text(exc, "", path)
        filename = exc.filename if isinstance(exc.filename, str) else None
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return f"{filename}: {reason}" if filename else reason
    return str(exc) or type(exc).__name__


def state_view(backend: LogBackend, args: argparse.Namespace) -> TelescopeState:
    """A TelescopeState on `backend`, as of ``--at`` / ``--as-of`` if given."""
    from .. import TelescopeState

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
    from ..storage import OsFileSystem, list_segments

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


# ------------------------------------------------------------ stop signals
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop a command: SIGTERM, and SIGINT unless it is ignored.

    A shell starts a background job with SIGINT ignored so that Ctrl-C at the
    terminal leaves the job running; like Python's own Ctrl-C handling (and so
    ``tail -f``), these commands keep it ignored then.
    """
    return tuple(sig for sig in _STOP_SIGNALS
                 if sig != signal.SIGINT or signal.getsignal(sig) is not signal.SIG_IGN)


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by Ctrl-C or SIGTERM while the block runs (main thread only)."""
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    try:
        for sig in stop_signals():
            previous[sig] = signal.signal(sig, handle)
    except ValueError:      # not the main thread: the default handlers stay
        pass
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
