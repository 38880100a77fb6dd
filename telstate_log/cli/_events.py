"""Subcommands that read the event log: ``history``, ``audit`` and ``tail``.

Theory of operation
-------------------
The state answers "what is the value"; these commands answer "what
happened": every event with its position and recorded (wall-clock) time --
*system time* -- its writing session's source label, its kind, key,
sub-key, value and, for a sensor sample, its timestamp -- *valid time*.
A back-dated sample shows up here at the position where it was written,
with a timestamp earlier than its neighbours'.

Events are read in chunks (:func:`~telstate_log.cli._common.iter_events`) and
printed as they are decoded, so an audit of any length starts at once and
runs in bounded memory.  Values that cannot be decoded (a pickle, when
pickles are not allowed) are shown as ``<undecodable: ...>`` rather than
stopping the listing.

``tail -f`` opens the log read-only and *follows* it: the backend's
follower thread applies what the writer appends (across segment
rotations), and the command polls the followed position every 50 ms and
prints the events between the last one it printed and the new end.  It
stops on Ctrl-C or SIGTERM (exit status 0), after ``--max-events`` events,
or after ``--timeout`` seconds.  In JSON mode it prints JSON Lines, one
event per line, since the stream has no end.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

from .. import ENCODING_MSGPACK, Event, HistoryEvent, KeyType, decode_value, encode_value
from ._common import (
    CliError,
    UsageError,
    add_json_argument,
    add_log_argument,
    command_parser,
    first_position,
    iter_events,
    note,
    open_log,
    parse_count,
    parse_position,
    parse_seconds,
    parse_time,
)
from ._output import (
    Table,
    emit_json_line,
    emit_json_list,
    iso_utc,
    safe_text,
    to_json,
    value_text,
)

if TYPE_CHECKING:
    from ..backends import LogBackend

__all__ = ["EventDecoder", "EventPrinter", "add_audit_parser", "add_history_parser",
           "add_tail_parser"]

_HEADERS = ["POSITION", "RECORDED (UTC)", "SOURCE", "KIND", "KEY", "SUB-KEY",
            "TIMESTAMP (UTC)", "VALUE"]
POLL_INTERVAL = 0.05  # seconds between looks at the followed position
CHUNK = 16384  # events read at a time while following


class EventDecoder:
    """Events to decoded dicts, looking up each session's source label once."""

    def __init__(self, backend: LogBackend) -> None:
        self._backend = backend
        self._sessions: dict[int, dict[str, Any]] = {}

    def __call__(self, event: Event) -> dict[str, Any]:
        session = self._sessions.get(event.session)
        if session is None:
            session = self._sessions[event.session] = self._backend.session_info(event.session)
        h = HistoryEvent.decode(event, session)
        return {"position": h.position, "recorded": h.recorded,
                "recorded_utc": iso_utc(h.recorded, "microseconds"),
                "session": event.session, "source": h.source, "kind": h.kind,
                "key": h.key, "sub_key": h.sub_key, "value": h.value,
                "timestamp": h.timestamp, "timestamp_utc": iso_utc(h.timestamp, "microseconds")}


def _as_json(event: dict[str, Any]) -> dict[str, Any]:
    return {**event, "sub_key": to_json(event["sub_key"]), "value": to_json(event["value"])}


class EventPrinter:
    """Prints decoded events as a table or as JSON Lines."""

    def __init__(self, as_json: bool) -> None:
        self._table = None if as_json else Table(_HEADERS, right={0})

    def add(self, event: dict[str, Any]) -> None:
        if self._table is None:
            emit_json_line(_as_json(event))
            return
        none = event["kind"] in ("delete", "clear")
        self._table.add(
            str(event["position"]), iso_utc(event["recorded"]) or "-",
            safe_text(event["source"]) or "-", event["kind"],
            "*" if event["key"] is None else safe_text(event["key"]),
            "-" if event["kind"] != "set_indexed" else value_text(event["sub_key"]),
            iso_utc(event["timestamp"]) or "-", "-" if none else value_text(event["value"]))

    def flush(self) -> None:
        if self._table is not None:
            self._table.flush()
        else:
            sys.stdout.flush()


def _print_events(events: Iterable[dict[str, Any]], head: dict[str, Any],
                  as_json: bool) -> int:
    """Print `events` (streaming); returns how many there were."""
    count = 0

    def counted() -> Iterator[dict[str, Any]]:
        nonlocal count
        for event in events:
            count += 1
            yield event

    if as_json:
        emit_json_list(head, "events", (_as_json(e) for e in counted()))
        return count
    printer = EventPrinter(False)
    for event in counted():
        printer.add(event)
    printer.flush()
    return count


# ---------------------------------------------------------------- history
def parse_sub_key(text: str) -> Any:
    """A sub-key given as JSON (lists become tuples); other text is a string."""
    def tuples(value: Any) -> Any:
        if isinstance(value, list):
            return tuple(tuples(v) for v in value)
        return value

    try:
        return tuples(json.loads(text))
    except ValueError:
        return text


def sub_key_text(value: Any) -> str:
    """A sub-key as ``--sub-key`` takes it (:func:`parse_sub_key`'s inverse where it can)."""
    def lists(v: Any) -> Any:
        return [lists(x) for x in v] if isinstance(v, (tuple, list)) else v

    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value  # plain text is taken as it is
    try:
        return json.dumps(lists(value), ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def add_history_parser(subparsers: Any) -> None:
    p = command_parser(
        subparsers, "history", "every event that changed a key, oldest first",
        "Print every event that changed KEY (or just its sub-key): position,\n"
        "recorded time (system time), source, kind, sub-key, timestamp (valid\n"
        "time) and value -- including the deletes and clears that removed it.",
        ["telstate-log history obs/log obs_target",
         "telstate-log history obs/log cal_product_G --sub-key '[\"m000\", \"h\"]'",
         "telstate-log history obs/log anc_air_temperature --json"])
    add_log_argument(p)
    p.add_argument("key", metavar="KEY", help="the key")
    p.add_argument("--sub-key", metavar="JSON", type=parse_sub_key,
                   help="only this sub-key of an indexed key, as JSON (lists become "
                        "tuples; text that is not JSON is a string)")
    add_json_argument(p)
    p.set_defaults(func=run_history)


def run_history(args: argparse.Namespace) -> int:
    key = args.key.encode("utf-8", "surrogateescape")
    sub = None if args.sub_key is None else encode_value(args.sub_key, ENCODING_MSGPACK)
    with open_log(args.log) as backend:
        events = backend.history(key, sub)
        if not events and sub is not None and backend.history(key):
            raise CliError(_no_sub_key_text(backend, args.key, key, args.sub_key))
        if not events:
            raise CliError(f"{args.key}: no such key, and no history")
        decode = EventDecoder(backend)
        head = {"key": args.key, "sub_key": to_json(args.sub_key), "position": backend.position}
        _print_events((decode(e) for e in events), head, args.json)
    return 0


_SUB_KEYS_SHOWN = 4


def _no_sub_key_text(backend: LogBackend, name: str, key: bytes, sub_key: Any) -> str:
    """Why ``history --sub-key`` found nothing for a key that has a history."""
    kind = backend.key_type(key)
    if kind is not None and kind is not KeyType.INDEXED:
        return f"{name} is an {kind.name.lower()} key: it has no sub-keys (drop --sub-key)"
    seen: list[str] = []
    for event in backend.history(key):
        if event.sub_key is not None:
            try:
                text = shlex.quote(sub_key_text(decode_value(event.sub_key)))
            except ValueError:  # DecodeError: show the bytes
                text = repr(event.sub_key)
            if text not in seen:
                seen.append(text)
    shown = ", ".join(seen[:_SUB_KEYS_SHOWN]) + (", ..." if len(seen) > _SUB_KEYS_SHOWN else "")
    return (f"{name} has no sub-key {shlex.quote(sub_key_text(sub_key))} in its history; "
            f"its sub-keys (as --sub-key takes them) are {shown}")


# ------------------------------------------------------------------ audit
def add_audit_parser(subparsers: Any) -> None:
    p = command_parser(
        subparsers, "audit", "every event (all keys) between two positions or times",
        "Print every event, all keys, between two positions or recorded\n"
        "(wall-clock) times, both ends included (default: the whole log).",
        ["telstate-log audit obs/log --since 1000 --until 1100",
         "telstate-log audit obs/log --since-time now-10m",
         "telstate-log audit obs/log --since-time 2024-05-01T12:00Z --json | jq '.events[]'"])
    add_log_argument(p)
    since = p.add_mutually_exclusive_group()
    since.add_argument("--since", metavar="POSITION", type=parse_position,
                       help="first position (default: 1)")
    since.add_argument("--since-time", metavar="TIME", type=parse_time,
                       help="first event recorded at or after TIME")
    until = p.add_mutually_exclusive_group()
    until.add_argument("--until", metavar="POSITION", type=parse_position,
                       help="last position (default: the end)")
    until.add_argument("--until-time", metavar="TIME", type=parse_time,
                       help="last event recorded at or before TIME")
    add_json_argument(p)
    p.set_defaults(func=run_audit)


def run_audit(args: argparse.Namespace) -> int:
    if args.since is not None and args.until is not None and args.since > args.until:
        raise UsageError(f"inverted window: --since {args.since} is after --until {args.until}")
    if args.since_time is not None and args.until_time is not None and \
            args.since_time > args.until_time:
        raise UsageError(f"inverted window: --since-time {iso_utc(args.since_time)} is after "
                         f"--until-time {iso_utc(args.until_time)}")
    with open_log(args.log) as backend:
        last = backend.position
        first = first_position(backend)
        since = first if args.since is None else max(1, args.since)
        if args.since_time is not None:
            # just after the last event recorded strictly before since_time
            since = 1 + backend.resolve_time(math.nextafter(args.since_time, -math.inf))
        until = last if args.until is None else min(args.until, last)
        if args.until_time is not None:
            until = backend.resolve_time(args.until_time)
        decode = EventDecoder(backend)
        head = {"since": since, "until": until, "position": last}
        printed = _print_events((decode(e) for e in iter_events(backend, since, until)), head,
                                args.json)
    if not printed:
        held = f"positions {first}..{last}" if last >= first else "no events"
        note(args, f"nothing matched: no events in the window (the log holds {held})")
    return 0


# ------------------------------------------------------------------- tail
def add_tail_parser(subparsers: Any) -> None:
    p = command_parser(
        subparsers, "tail", "print the last events; with -f, follow the log as it grows",
        "Print the last N events (of every key, or of the KEYs given: Redis glob\n"
        "patterns).  With -f, keep printing events as another process appends\n"
        "them, until Ctrl-C or SIGTERM (exit status 0).  --max-events and\n"
        "--timeout bound it; a timeout before --max-events events exits 1.\n"
        "With --json, prints one JSON object per line (JSON Lines).",
        ["telstate-log tail obs/log", "telstate-log tail -f obs/log 'm000_*'",
         "telstate-log tail -f -n 0 obs/log --json --max-events 100 --timeout 60"])
    add_log_argument(p)
    p.add_argument("keys", metavar="KEY", nargs="*",
                   help="only events of keys matching these Redis glob patterns "
                        "(plus clears, which remove every key)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing events as they are written")
    p.add_argument("-n", "--lines", metavar="N", type=parse_count, default=10,
                   help="how many of the last events to print first (default: 10)")
    p.add_argument("--max-events", metavar="N", type=parse_count,
                   help="exit after printing N events in all")
    p.add_argument("--timeout", metavar="SECONDS", type=parse_seconds,
                   help="stop following after SECONDS")
    add_json_argument(p)
    p.set_defaults(func=run_tail)


def _key_filter(patterns: list[str]) -> Callable[[Event], bool] | None:
    if not patterns:
        return None
    from ..core import compile_pattern

    matchers = [compile_pattern(p.encode("utf-8", "surrogateescape")) for p in patterns]
    return lambda e: e.key is None or any(m(e.key) for m in matchers)


def _last_events(backend: LogBackend, end: int, n: int,
                 wanted: Callable[[Event], bool] | None) -> list[Event]:
    """The last `n` wanted events up to `end`, scanning back in growing chunks."""
    if n == 0 or end == 0:
        return []
    first = first_position(backend)
    if wanted is None:
        return backend.events(max(first, end - n + 1), end)
    found: list[Event] = []
    hi, span = end, max(4096, 4 * n)
    while hi >= first and len(found) < n:
        lo = max(first, hi - span + 1)
        found[:0] = [e for e in backend.events(lo, hi) if wanted(e)]
        hi, span = lo - 1, min(2 * span, 1 << 18)
    return found[-n:]


class _SigTerm:
    """While installed, SIGTERM sets :attr:`received` instead of killing the process."""

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = True

    def __enter__(self) -> _SigTerm:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: only Ctrl-C stops us
            self._previous = None
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def run_tail(args: argparse.Namespace) -> int:
    limit = math.inf if args.max_events is None else args.max_events
    wanted = _key_filter(args.keys)
    printer = EventPrinter(args.json)
    with open_log(args.log, follow=args.follow) as backend, _SigTerm() as sigterm:
        try:
            return _tail(args, backend, wanted, limit, printer, sigterm)
        except KeyboardInterrupt:
            if not args.follow:
                raise
            return 0  # Ctrl-C is how one stops following
        finally:
            printer.flush()


def _tail(args: argparse.Namespace, backend: LogBackend,
          wanted: Callable[[Event], bool] | None, limit: float, printer: EventPrinter,
          sigterm: _SigTerm) -> int:
    decode = EventDecoder(backend)
    last = backend.position
    initial = _last_events(backend, last, int(min(args.lines, limit)), wanted)
    for event in initial:
        printer.add(decode(event))
    printer.flush()
    printed = len(initial)
    if not initial and not args.follow and min(args.lines, limit) > 0:
        what = f"of keys matching {' '.join(args.keys)}" if args.keys else "in the log"
        note(args, f"nothing matched: no events {what}")
    if not args.follow or printed >= limit:
        return 0
    deadline = math.inf if args.timeout is None else time.monotonic() + args.timeout
    for batch in _follow(backend, last, deadline, sigterm):
        for event in batch:
            if wanted is None or wanted(event):
                printer.add(decode(event))
                printed += 1
                if printed >= limit:
                    return 0
        printer.flush()
    if sigterm.received:
        return 0
    return 1 if args.max_events is not None else 0  # the timeout expired first


def _follow(backend: LogBackend, last: int, deadline: float,
            sigterm: _SigTerm) -> Iterator[list[Event]]:
    """Batches of the events after `last`, as the followed backend learns of them.

    Ends at `deadline` (monotonic clock) or when SIGTERM has arrived.
    """
    while not sigterm.received:
        error = backend.follow_error
        if error is not None:
            raise CliError(f"following the log stopped: {error}")
        end = backend.position
        if end > last:
            while last < end and not sigterm.received:
                stop = min(end, last + CHUNK)
                yield backend.events(last + 1, stop)
                last = stop
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        time.sleep(min(POLL_INTERVAL, remaining))
