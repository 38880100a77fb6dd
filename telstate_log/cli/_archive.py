"""The ``archive`` subcommand: a shared log's Redis stream copied into a log.

Theory of operation
-------------------
A thin shell over :class:`telstate_log.replay.Archiver`: ``archive URL LOG``
copies every event the shared log at URL (``--stream NAME``, default
``telstate-log``) holds that the log LOG (created if missing) does not,
exactly once, and exits; ``--follow`` keeps copying as writers write, until
Ctrl-C or SIGTERM; ``--trim`` removes from the stream what the log holds
and has synced (history before that point is then read from the log).  A
restarted archive resumes after the last event the log holds; a stream that
no longer holds what the log holds (a failover reused a position) stops the
command with one line naming the position and status 1, and nothing is
merged.  Lost connections are retried while following.

The summary (``--json``: one JSON object) says where the log ended, how many
events were copied and how far the stream is trimmed.  URLs are shown with
any password replaced by ``***``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from ._common import CliError, add_json_argument, command_parser, stop_on_signals
from ._output import emit_json, print_fields

__all__ = ["add_archive_parser"]


def add_archive_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers, "archive", "copy a shared log's stream into a log, exactly once",
        "Append the events of the shared log at URL (a Redis stream written by "
        "RedisLogBackend writers) to the log LOG, created if missing, with their positions, "
        "recorded times and sessions; a restart resumes where the log ends, never copying "
        "an event twice or skipping one.  --follow keeps copying until Ctrl-C or SIGTERM; "
        "--trim removes archived and synced entries from the stream.",
        ["telstate-log archive redis://localhost:6379/0 obs/archive",
         "telstate-log archive redis://sdp:6379/0 obs/archive --follow --trim",
         "telstate-log archive redis://sdp/0 obs/archive --stream obs-42 --json"])
    parser.add_argument("redis", metavar="URL", help="Redis URL of the telstate database "
                        "(redis://, rediss://, unix:// or redis+sentinel://)")
    parser.add_argument("log", metavar="LOG", help="the archive's log directory (created "
                        "if missing)")
    parser.add_argument("--stream", metavar="NAME", default="telstate-log",
                        help="the shared log's name (default: telstate-log)")
    parser.add_argument("--trim", action="store_true",
                        help="remove archived, synced entries from the stream (XTRIM)")
    parser.add_argument("--follow", action="store_true",
                        help="keep copying new events until Ctrl-C or SIGTERM")
    add_json_argument(parser)
    parser.set_defaults(func=run_archive)
    return parser


def run_archive(args: argparse.Namespace) -> int:
    import redis

    from ..backends import redact_url
    from ..replay import Archiver

    shown = redact_url(args.redis)
    started = time.perf_counter()
    try:
        with stop_on_signals() as stop:
            try:
                archiver = Archiver(args.redis, args.log, stream=args.stream, trim=args.trim)
            except ValueError as exc:  # not a Redis URL
                raise CliError(str(exc)) from None
            try:
                copied = archiver.follow(stop) if args.follow else archiver.run_once()
                summary: dict[str, Any] = {
                    "command": "archive", "redis": shown, "stream": args.stream,
                    "log": args.log, "position": archiver.position, "events": copied,
                    "trimmed": archiver.trimmed,
                    "seconds": round(time.perf_counter() - started, 3),
                    "stopped": stop.is_set()}
            finally:
                archiver.close()
    except redis.RedisError as exc:
        raise CliError(f"failed talking to {shown}: {exc}") from None
    if args.json:
        emit_json(summary)
    else:
        print(f"archived up to position {summary['position']:,} of {shown} "
              f"(stream {args.stream}) in {args.log}")
        print_fields([("events copied", f"{copied:,}"),
                      ("stream trimmed up to", f"{archiver.trimmed:,}"),
                      ("seconds", f"{summary['seconds']:.3f}")])
    return 0
