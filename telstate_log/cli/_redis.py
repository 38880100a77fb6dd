"""The ``project``, ``record`` and ``replay`` subcommands: a log and a live Redis.

Theory of operation
-------------------
Thin shells over :mod:`telstate_log.replay`:

* ``project LOG URL`` opens the log read-only (a live writer may be
  appending) and backfills the Redis database at URL with its state
  (:class:`~telstate_log.replay.Projector`); ``--follow`` then keeps the
  database in step as the log grows, until Ctrl-C or SIGTERM;
* ``record URL LOG`` records a Redis database used by katsdptelstate
  clients into a log (:class:`~telstate_log.replay.Recorder`) until Ctrl-C
  or SIGTERM;
* ``replay LOG TARGET`` re-enacts the log's events with their original
  spacing (``--speed`` scales it) into a Redis URL, a new log directory, or
  ``memory`` (a dry run).

Ctrl-C and SIGTERM stop each command cleanly: the projector stops between
transactions (the position in Redis is whatever the last one committed, and
running the command again resumes there), the recorder after the batch it
is recording, a replay after the group of events it applied.  Each command
then prints a summary (``--json``: one JSON object) and exits 0; 1 if it
failed (or an interrupted one-shot ``project`` left its backfill pending);
2 for usage errors.  A progress line goes to stderr on a terminal.  URLs are
shown with any password replaced by ``***``, in summaries and errors alike.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._common import (
    CliError,
    UsageError,
    add_json_argument,
    command_parser,
    open_log,
    parse_position,
    parse_seconds,
    parse_time,
    stop_on_signals,
    stop_signals,
)
from ._output import emit_json, print_fields
from ._progress_bar import Progress

__all__ = ["add_project_parser", "add_record_parser", "add_replay_parser"]



# ------------------------------------------------------------------ helpers
def _redis_client(url: str) -> Any:
    """A client for `url` (which must be a redis://, rediss:// or unix:// URL)."""
    from ..replay import client_for_url

    try:
        return client_for_url(url)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _shown(url: str) -> str:
    from ..backends import redact_url

    return redact_url(url)


@contextmanager
def _redis_errors(client: Any) -> Iterator[None]:
    """Report failures talking to Redis as one line, without any password."""
    import redis

    from ..backends import connection_error

    pool = getattr(client, "connection_pool", None)
    try:
        yield
    except redis.RedisError as exc:
        if pool is None:
            raise
        raise CliError(str(connection_error(pool, exc))
                       .replace("could not connect to", "failed talking to")) from None


def _single(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups of one, else `exc` itself."""
    inner = getattr(exc, "exceptions", None)
    while isinstance(inner, tuple) and len(inner) == 1 and isinstance(inner[0], BaseException):
        exc = inner[0]
        inner = getattr(exc, "exceptions", None)
    return exc


def _summary(args: argparse.Namespace, summary: dict[str, Any], text: str) -> None:
    if args.json:
        emit_json(summary)
    else:
        fields = [(name.replace("_", " "), _text(value)) for name, value in summary.items()
                  if name != "command"]
        print(text)
        print_fields(fields)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


# ------------------------------------------------------------------ project
def add_project_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers, "project", "keep a Redis database equal to the log (katsdptelstate layout)",
        "Load the log's state into a Redis database in katsdptelstate's layout (fast "
        "backfill), then with --follow keep it in step as the log grows.  The database must "
        "be empty or a projection of this log (resumed exactly where it stopped) unless "
        "--overwrite.  Ctrl-C/SIGTERM stop cleanly; running again resumes.",
        ["telstate-log project obs/log redis://localhost:6379/0",
         "telstate-log project obs/log redis://localhost:6379/1 --follow",
         "telstate-log project obs/log redis://localhost/2 --upto 5000 --overwrite"])
    parser.add_argument("log", metavar="LOG", help="log directory (opened read-only)")
    parser.add_argument("redis", metavar="URL", help="Redis database URL, e.g. "
                        "redis://host:6379/0")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--follow", action="store_true",
                      help="keep projecting new events until Ctrl-C or SIGTERM")
    mode.add_argument("--upto", metavar="POSITION", type=parse_position,
                      help="project the state after event POSITION (default: the end)")
    parser.add_argument("--overwrite", action="store_true",
                        help="FLUSHDB a database holding other data instead of refusing")
    parser.add_argument("--marker-db", metavar="N", type=_database, default=None,
                        help="the server's database that keeps the projection's position "
                             "marker, apart from the projected keys (default 15; any but "
                             "the projected one)")
    add_json_argument(parser)
    parser.set_defaults(func=run_project)
    return parser


def _database(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid database {text!r}: a number >= 0")
    return value


def run_project(args: argparse.Namespace) -> int:
    from ..replay import Projector

    client = _redis_client(args.redis)
    options: dict[str, Any] = {} if args.marker_db is None else {"marker_db": args.marker_db}
    started = time.perf_counter()
    with open_log(args.log, follow=args.follow) as backend, _redis_errors(client), \
            stop_on_signals() as stop, Progress() as progress:
        if args.upto is not None and args.upto > backend.position:
            raise CliError(f"--upto {args.upto} is beyond the end of the log "
                           f"({backend.position})")
        try:
            projector = Projector(backend, client, overwrite=args.overwrite,
                                  progress=progress, **options)
        except ValueError as exc:                    # --marker-db is the projected database
            raise CliError(str(exc)) from None
        try:
            projector.backfill(args.upto, stop=stop)
            if args.follow and not stop.is_set():
                projector.follow(stop)
            status = projector.status()
        finally:
            projector.close()
        keys = int(client.dbsize())
    client.close()
    pending = status.backfill_target is not None
    summary = {"command": "project", "log": args.log, "redis": _shown(args.redis),
               "position": status.position, "log_position": status.log_position,
               "events": status.events_applied, "keys": keys,
               "keys_restored": status.keys_restored, "transactions": status.transactions,
               "seconds": time.perf_counter() - started, "stopped": stop.is_set(),
               "backfill_pending": status.backfill_target}
    verb = "stopped at" if stop.is_set() else "projected up to"
    _summary(args, summary, f"{verb} position {status.position:,} of {status.log_position:,} "
                            f"into {_shown(args.redis)}")
    if pending:
        raise CliError(f"backfill to position {status.backfill_target} interrupted; run the "
                       "same command again to finish it")
    return 0


# ------------------------------------------------------------------- record
def add_record_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers, "record", "record a live Redis used by katsdptelstate clients into a log",
        "Subscribe to a Redis database's update messages, take a baseline of its keys, then "
        "append every write of katsdptelstate clients to the log (created if missing) until "
        "Ctrl-C or SIGTERM.  Deletes are seen only with keyspace notifications "
        "(--keyspace-events enables them); a FLUSHDB is seen only at a reconcile "
        "(after a lost connection, or every --resync-interval seconds).  With --stream "
        "instead of LOG, the writes are appended to that shared log of the same database, "
        "in one total order with the shared-log writers' own (one recorder per stream).",
        ["telstate-log record redis://localhost:6379/0 obs/log",
         "telstate-log record redis://sdp:6379/0 obs/log --keyspace-events --json",
         "telstate-log record redis://sdp:6379/0 --stream telstate-log --keyspace-events"])
    parser.add_argument("redis", metavar="URL", help="Redis database URL")
    parser.add_argument("log", metavar="LOG", nargs="?",
                        help="log directory (created if missing)")
    parser.add_argument("--stream", metavar="NAME",
                        help="record into the shared log NAME of the database instead of LOG")
    parser.add_argument("--source", metavar="LABEL",
                        help="source label of the recorded events (default record:URL)")
    parser.add_argument("--keyspace-events", action="store_true",
                        help="enable keyspace notifications (CONFIG SET) so deletes are "
                             "recorded as they happen")
    parser.add_argument("--resync-interval", metavar="SECONDS", type=parse_seconds,
                        help="also reconcile with the whole database this often")
    add_json_argument(parser)
    parser.set_defaults(func=run_record)
    return parser


def run_record(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from ..backends import LogBackend
    from ..replay import Recorder

    if (args.log is None) == (args.stream is None):
        raise UsageError("give either LOG or --stream NAME")
    client = _redis_client(args.redis)
    with _redis_errors(client):
        client.ping()                    # before creating the log
    options = {"source": args.source, "keyspace_events": args.keyspace_events,
               "resync_interval": args.resync_interval}
    with (LogBackend(args.log) if args.log else nullcontext()) as backend, \
            _redis_errors(client), stop_on_signals() as stop, Progress() as progress:
        recorder = (Recorder(client, backend, **options) if backend is not None
                    else Recorder.into_stream(client, args.stream, **options))
        try:
            recorder.start()
            while not stop.is_set():
                recorder.step(0.2)
                progress("record", recorder.stats.recorded, None)
            recorder.drain()
            position = recorder.sink.position
        finally:
            recorder.close()
    client.close()
    where = args.log if args.log else f"the shared log {args.stream}"
    summary = {"command": "record", "redis": _shown(args.redis), "log": args.log,
               **({"stream": args.stream} if args.stream else {}),
               "position": position, "deletes_visible": recorder.deletes_visible,
               **recorder.stats.as_dict()}
    _summary(args, summary, f"recorded {recorder.stats.recorded:,} events from "
                            f"{_shown(args.redis)} into {where}")
    return 0


# ------------------------------------------------------------------- replay
def _speed(text: str) -> float:
    if text.lower() in ("inf", "max"):
        return math.inf
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"invalid speed {text!r}: a factor > 0, or 'max'")
    return value


def add_replay_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = command_parser(
        subparsers, "replay", "re-enact a log's events with their original timing",
        "Apply a log's events to TARGET with their recorded spacing (scaled by --speed): "
        "a Redis URL (katsdptelstate clients see the writes and update messages), a new log "
        "directory, or 'memory' (a dry run that prints a summary).",
        ["telstate-log replay obs/log redis://localhost:6379/3 --speed 10",
         "telstate-log replay obs/log copy-log --from-time 2024-05-01T12:00:00Z",
         "telstate-log replay obs/log memory --speed max --json"])
    parser.add_argument("log", metavar="LOG", help="log directory (opened read-only)")
    parser.add_argument("target", metavar="TARGET",
                        help="redis:// URL, a new log directory, or 'memory'")
    parser.add_argument("--speed", type=_speed, default=1.0, metavar="X",
                        help="replay X times faster than recorded ('max': no waiting)")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--from", dest="since", type=parse_position, metavar="POS",
                       help="first event position to replay")
    start.add_argument("--from-time", dest="since_time", type=parse_time, metavar="T",
                       help="first event recorded at or after T")
    end = parser.add_mutually_exclusive_group()
    end.add_argument("--to", dest="until", type=parse_position, metavar="POS",
                     help="last event position to replay")
    end.add_argument("--to-time", dest="until_time", type=parse_time, metavar="T",
                     help="last event recorded at or before T")
    add_json_argument(parser)
    parser.set_defaults(func=run_replay)
    return parser


def _replay_target(target: str, log: str) -> tuple[Any, str, Any]:
    """``(target object, how to show it, thing to close)`` for TARGET."""
    from ..backends import LogBackend, MemoryBackend

    if "://" in target:
        client = _redis_client(target)
        return client, _shown(target), client
    if target == "memory":
        return MemoryBackend(), "memory", None
    if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
        raise CliError(f"{target}: exists and is not an empty directory; replay writes a new "
                       "log")
    backend = LogBackend(target, source=f"replay:{os.path.abspath(log)}")
    return backend, target, backend


def run_replay(args: argparse.Namespace) -> int:
    import anyio
    from anyio.abc import TaskStatus

    from ..replay import ReplayStats, replay_into

    stats = ReplayStats()
    stopped = False
    with open_log(args.log) as backend:
        target, shown, closer = _replay_target(args.target, args.log)
        try:
            with Progress() as progress:

                async def main() -> None:
                    nonlocal stopped
                    async with anyio.create_task_group() as group:
                        async def on_signal(*, task_status: TaskStatus[None] =
                                            anyio.TASK_STATUS_IGNORED) -> None:
                            nonlocal stopped
                            with anyio.open_signal_receiver(*stop_signals()) as signals:
                                task_status.started()
                                async for _ in signals:
                                    stopped = True
                                    group.cancel_scope.cancel()
                                    return

                        await group.start(on_signal)    # listening before the first event
                        await replay_into(backend, target, since=args.since, until=args.until,
                                          since_time=args.since_time,
                                          until_time=args.until_time, speed=args.speed,
                                          progress=progress, stats=stats)
                        group.cancel_scope.cancel()

                with _redis_errors(closer):
                    try:
                        anyio.run(main)
                    except BaseException as exc:   # the task group wraps errors in a group
                        raise _single(exc) from None
            keys = len(target.keys(b"*")) if args.target == "memory" else None
        finally:
            if closer is not None:
                closer.close()
    summary = {"command": "replay", "log": args.log, "target": shown, **stats.as_dict(),
               "stopped": stopped, "speed": "max" if math.isinf(args.speed) else args.speed}
    if keys is not None:
        summary["keys_at_end"] = keys
    _summary(args, summary, f"replayed {stats.events:,} events into {shown}"
                            + (" (stopped)" if stopped else ""))
    return 0
