"""The ``telstate-log`` command line: parser assembly and dispatch.

Theory of operation
-------------------
:func:`main` builds one :mod:`argparse` parser whose subcommands come from
``telstate_log.cli._*`` modules.  Each such module exposes
``add_<name>_parser(subparsers)`` functions that add a subcommand and set
its handler (``func``): a function taking the parsed arguments and returning
the exit status.  :data:`COMMAND_MODULES` lists them in ``--help`` order; an
optional module that is not installed is skipped, so a feature can ship as
one more ``cli/_<feature>.py`` without touching anything else.

Subcommand parsers (:class:`CommandParser`) accept options and
positional arguments in any order (``tail LOG -n 2 'anc_*'``), as
:meth:`argparse.ArgumentParser.parse_intermixed_args` does.

Exit status: 0 success; 1 a check found a problem or an operation failed
(library errors such as :exc:`~telstate_log.LogCorruptError` are printed as
one line on stderr, never as a traceback); 2 a usage error (argparse's, and
:exc:`UsageError` for what only the command can check, such as an inverted
time window).  Ctrl-C exits with 130; a closed output pipe (``| head``)
ends the command quietly with 0, so ``set -o pipefail`` scripts do not
fail.  Every error is one line, ``telstate-log COMMAND: error: ...``; an OS
error names the user's path and what the command was doing
(:func:`~._common.doing`), never only an internal file.  A query that matches nothing
prints no data and says so on stderr (:func:`~._common.note`), still with status 0.

What the commands share (errors, parsing of times and positions, opening
logs) is :mod:`telstate_log.cli._common`; this module only assembles the
parser and runs it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from .. import TelstateError, __version__
from ._common import (
    PROG,
    READ_ONLY_COMMANDS,
    CliError,
    CommandParser,
    UsageError,
    error_text,
    parse_position,
    parse_time,
    report_error,
)

__all__ = ["COMMAND_MODULES", "READ_ONLY_COMMANDS", "build_parser", "main", "parse_position",
           "parse_time"]


#: ``(module, parser-adding functions, required)`` in ``--help`` order.
COMMAND_MODULES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("_demo", ("add_demo_parser",), True),
    ("_inspect", ("add_info_parser", "add_keys_parser", "add_get_parser",
                  "add_range_parser"), True),
    ("_events", ("add_history_parser", "add_audit_parser", "add_tail_parser"), True),
    ("_plot", ("add_plot_parser",), True),
    ("_maint", ("add_verify_parser", "add_repair_parser", "add_checkpoint_parser",
                "add_seal_parser", "add_prune_parser"), True),
    ("_rdb", ("add_export_parser", "add_import_parser"), False),
    ("_redis", ("add_project_parser", "add_record_parser", "add_replay_parser"), False),
    ("_archive", ("add_archive_parser",), False),
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
zone is given), 'now' or 'now-10m'.  Commands that print data take --json;
when nothing matches they say so on stderr.  Options and arguments may come
in any order.
exit status: 0 ok (also when a pipe's reader such as 'head' stops reading),
1 check failed or operation failed, 2 usage error."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Telescope state as an append-only log: inspect, follow, "
                               "verify and maintain telstate-log logs.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                       parser_class=CommandParser)
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


# ------------------------------------------------------------------- main
def _silence_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _usage_error(args: argparse.Namespace, message: str) -> int:
    """Report a :exc:`UsageError` as argparse does (usage line, then the error): 2."""
    parser = getattr(args, "command_parser", None)
    if isinstance(parser, argparse.ArgumentParser):
        try:
            parser.error(message)
        except SystemExit:
            pass
    else:
        report_error(getattr(args, "command", None), message)
    return 2


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
    status = 0
    try:
        status = func(args)
        sys.stdout.flush()  # so that a closed pipe shows here, not at exit
        return status
    except BrokenPipeError:  # the reader (| head) has all it wanted
        _silence_stdout()
        return status
    except UsageError as exc:
        return _usage_error(args, str(exc))
    except (CliError, TelstateError, OSError) as exc:
        report_error(getattr(args, "command", None), error_text(exc, args))
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
