"""Subcommands that check and maintain a log: ``verify``, ``repair``, ``checkpoint``, ``seal``.

Theory of operation
-------------------
``verify`` runs :func:`~telstate_log.storage._repair.verify_log` -- every checksum,
every frame, a full replay, every checkpoint against the replayed state,
and the seal chain recomputed from the segment files -- and prints the file
and byte offset of any damage.  With ``--head HASH`` it also looks the hash
up among the seals recomputed from the segment files: an auditor who kept
an earlier head hash learns whether everything sealed up to it is
byte-for-byte unchanged.  A hash that matches only the seal of a pruned
segment "cannot be verified: pruned" and fails (see :mod:`telstate_log.storage._seal`
for what a head proves and what it does not).  Problems that ``repair``
cannot fix are marked, and verify suggests ``repair`` only for the others.

``repair`` is the salvage path, :func:`~telstate_log.storage._repair.repair_log`:
it keeps the good prefix and moves the damage -- and every checkpoint verify
objects to -- into ``damaged-<time>/`` inside the log, then verifies the
result with the same definition of damage as ``verify``.  ``--dry-run``
reports what it would do and changes nothing.

``checkpoint`` and ``seal`` open the log as its writer (so they take the
writer lock and fail while another writer runs; opening as a writer also
drops a torn tail left by a crash, as any writer does).  Neither adds an
event: a checkpoint saves the state so that opening replays less, and a
seal finishes the current segment and extends the hash chain over it.

Exit status: 0 when the check passed or the operation succeeded, 1 when
verify found any problem (or the head hash is not verified), when
repair could not produce a log that verifies (or found damage in a dry
run), or when the log could not be opened for writing.
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .. import VerifyReport
    from ..storage import HeadCheck
from ._common import (
    CliError,
    UsageError,
    add_json_argument,
    add_log_argument,
    command_parser,
    require_log,
)
from ._output import emit_json, format_bytes, plural, print_fields

__all__ = ["add_checkpoint_parser", "add_repair_parser", "add_seal_parser",
           "add_verify_parser"]

_HASH = re.compile(r"[0-9a-f]{64}")


def parse_hash(text: str) -> str:
    value = text.strip().lower()
    if not _HASH.fullmatch(value):
        raise argparse.ArgumentTypeError(f"invalid head hash {text!r}: expected 64 hex digits")
    return value


def _problem_text(problem: dict[str, Any]) -> str:
    where = str(problem.get("file"))
    if problem.get("offset") is not None:
        where += f" at byte {problem['offset']}"
    text = f"{where}: {problem.get('problem')}"
    if problem.get("repairable") is False:
        note = problem.get("repair_note")
        text += f" [repair cannot fix this: {note}]" if note else " [repair cannot fix this]"
    return text


_RESTORE = "restore the files named from a copy kept elsewhere"


def _pruned_text(report: VerifyReport) -> str | None:
    """The pruned range of positions, or None if the log was never pruned."""
    if report.pruned_before <= 1 and not report.pruned_seals:
        return None
    text = f"positions 1..{report.pruned_before - 1}" if report.pruned_before > 1 \
        else "no positions"
    if report.pruned_seals:
        text += f" ({plural(report.pruned_seals, 'sealed segment')}: their seals are " \
                "taken as given, the bytes are gone)"
    return text


# ----------------------------------------------------------------- verify
def add_verify_parser(subparsers: Any) -> None:
    p = command_parser(
        subparsers, "verify", "check every checksum and invariant; print the head hash",
        "Check every checksum and invariant of a log (read-only): segment headers,\n"
        "chained CRCs, frames, a full replay, checkpoints and the seal chain.\n"
        "Prints the file and byte offset of any damage, and the head hash.  Run it\n"
        "when no writer has the log open, or the frame being written may look torn.",
        ["telstate-log verify obs/log",
         "telstate-log verify obs/log --head \"$(cat head-hash.txt)\"",
         "telstate-log verify obs/log --json | jq .problems"])
    add_log_argument(p)
    p.add_argument("--head", metavar="HASH", type=parse_hash,
                   help="also require this earlier head hash to be reproduced from the "
                        "segment files (proves nothing sealed up to it changed; a head "
                        "whose segment was pruned cannot be verified and fails)")
    add_json_argument(p)
    p.set_defaults(func=run_verify)


def _head_check_text(check: HeadCheck) -> str:
    where = f"seal {check.index} of {check.of} ({check.segment}, positions " \
            f"{check.first}..{check.last})"
    if check.ok:
        text = f"{check.hash} is in the seal chain: {where}: "
        if check.covered_from is not None and check.covered_from > 1:
            return text + f"the segments still in the log up to it (positions " \
                          f"{check.covered_from}..{check.last}) are unchanged; positions " \
                          f"before {check.covered_from} were pruned and are not covered"
        return text + "nothing sealed up to it changed"
    from ..storage import PRUNED  # imported on use: see run_verify

    if check.status == PRUNED:
        return f"{check.hash} cannot be verified: pruned ({where} belongs to a pruned " \
               "segment; its seal is taken as given from the seals file, the bytes it " \
               "sealed are gone)"
    return f"{check.hash} is NOT in the recomputed seal chain"


def _verdict(path: str, report: VerifyReport, check: HeadCheck | None) -> str:
    if report.damaged:
        n = len(report.problems)
        fixable = sum(1 for p in report.problems if p.get("repairable"))
        what = "salvages the good prefix" if any(p["kind"] == "segment"
                                                 for p in report.problems) \
            else "sets the damage aside"
        if fixable == n:
            return f"DAMAGED: {plural(n, 'problem')}; 'telstate-log repair {path}' {what}"
        if not fixable:
            return f"DAMAGED: {plural(n, 'problem')} that 'telstate-log repair' cannot fix: " \
                   f"{_RESTORE}"
        return f"DAMAGED: {plural(n, 'problem')}; 'telstate-log repair {path}' fixes " \
               f"{fixable}, the other {n - fixable} cannot be repaired: {_RESTORE}"
    from ..storage import PRUNED

    if check is not None and check.status == PRUNED:
        return "FAILED: the head hash cannot be verified: pruned"
    if check is not None and not check.ok:
        return "FAILED: the head hash is not in the seal chain"
    return "OK"


def run_verify(args: argparse.Namespace) -> int:
    # The storage engine is imported only by the command that uses it: the
    # parser imports this module for every command.
    from .. import verify_log

    path = require_log(args.log)
    report = verify_log(path)
    check = None if args.head is None else report.check_head(args.head)
    passed = not report.damaged and (check is None or check.ok)
    if args.json:
        pruned = [1, report.pruned_before - 1] if report.pruned_before > 1 else None
        emit_json({**report.as_dict(), "pruned_positions": pruned,
                   "head_check": None if check is None else check.as_dict(),
                   "passed": passed})
        return 0 if passed else 1
    if report.head is None:
        head = "- (no segment sealed yet: 'telstate-log seal' seals)"
    elif report.head_pruned:
        head = f"{report.head} (its segment was pruned: it can no longer be verified " \
               "from this log)"
    else:
        head = report.head
    fields = [
        ("log", path),
        ("segments", f"{plural(report.segments, 'file')}, {format_bytes(report.bytes)}"),
        ("events", str(report.events)),
        ("checkpoints", f"{report.checkpoints_ok} verified"),
    ]
    pruned_text = _pruned_text(report)
    if pruned_text is not None:
        fields.append(("pruned", pruned_text))
    fields += [
        ("seals", f"{plural(report.sealed_segments, 'segment')} sealed"
                  + (f"; finished but unsealed: {', '.join(report.unsealed_segments)}"
                     if report.unsealed_segments else "")),
        ("head hash", head),
    ]
    if check is not None:
        fields.append(("head check", _head_check_text(check)))
    fields.extend(("problem", _problem_text(p)) for p in report.problems)
    fields.append(("result", _verdict(path, report, check)))
    print_fields(fields)
    return 0 if passed else 1


# ----------------------------------------------------------------- repair
def add_repair_parser(subparsers: Any) -> None:
    p = command_parser(
        subparsers, "repair", "salvage a damaged log: keep the good prefix, move the rest aside",
        "Salvage a log that opening refuses: keep everything before the first damage\n"
        "(truncating that segment at its last good frame), move the rest into\n"
        "damaged-<time>/ inside the log, and verify the result.  Reports exactly\n"
        "which positions were lost and what was moved where.  Needs the writer lock.\n"
        "Exit status 0 if nothing was damaged or the log was repaired, else 1\n"
        "(a dry run that finds damage exits 1: nothing was repaired).",
        ["telstate-log repair obs/log --dry-run", "telstate-log repair obs/log",
         "telstate-log repair obs/log --json"])
    add_log_argument(p)
    p.add_argument("--dry-run", action="store_true",
                   help="report what would be kept, lost and moved; change nothing")
    add_json_argument(p)
    p.set_defaults(func=run_repair)


def run_repair(args: argparse.Namespace) -> int:
    from .. import repair_log, verify_log

    path = require_log(args.log)
    report = repair_log(path, dry_run=args.dry_run)
    after = None if args.dry_run else verify_log(path)
    if after is None:
        ok = not report.damaged and not report.unrepairable
    else:
        ok = not after.damaged  # the same definition of damage as verify's
    data = report.as_dict()
    if data["lost_positions"] is not None:
        data["lost_positions"] = list(data["lost_positions"])
    if args.json:
        emit_json({**data, "dry_run": args.dry_run,
                   "verified": None if after is None else not after.damaged,
                   "remaining_problems": [] if after is None else after.problems, "ok": ok})
        return 0 if ok else 1
    fields: list[tuple[str, str]] = []
    if not report.damaged and not report.unrepairable:
        fields.append(("damage", f"none found: nothing to repair ({report.kept_position} "
                                 "events)"))
    elif report.damaged:
        assert report.problem is not None
        fields.append(("damage", _problem_text(report.problem)))
        if report.lost_positions is not None:
            lo, hi = report.lost_positions
            fields += [("kept", f"positions 1..{report.kept_position} "
                                f"({report.kept_position} events)"),
                       ("lost", f"positions {lo}..{hi} ({hi - lo + 1} events)")]
        verb = "would be " if args.dry_run else ""
        if report.truncated:
            fields.append(("truncated", f"{report.truncated['file']} {verb}cut at byte "
                                        f"{report.truncated['at']} (the rest {verb}saved "
                                        f"in {report.moved_to})"))
        fields += [("moved", f"{src} -> {report.moved_to}/") for src in report.moved]
    remaining = report.unrepairable if after is None else after.problems
    fields += [("problem", _problem_text(p)) for p in remaining]
    if args.dry_run:
        result = "dry run: nothing changed" + \
            ("; run without --dry-run to repair" if report.damaged else "")
        if report.unrepairable:
            result += f"; repair cannot fix {plural(len(report.unrepairable), 'problem')}: " \
                      f"{_RESTORE}"
    elif ok:
        result = "repaired: the log verifies" if report.damaged else "OK: the log verifies"
    elif report.unrepairable:
        result = f"FAILED: repair cannot fix {plural(len(report.unrepairable), 'problem')}: " \
                 f"{_RESTORE}"
    else:
        result = "FAILED: the log still does not verify (see 'telstate-log verify')"
    fields.append(("result", result))
    print_fields(fields)
    return 0 if ok else 1


# ---------------------------------------------------- checkpoint and seal
def _open_writer(path: str, what: str) -> Any:
    from ..backends import LogBackend

    return LogBackend(require_log(path), source=f"telstate-log {what}", checkpoint_bytes=None)


def add_checkpoint_parser(subparsers: Any) -> None:
    p = command_parser(
        subparsers, "checkpoint", "save the state now, so opening the log replays less",
        "Write a checkpoint of the current state (the log is opened as its writer,\n"
        "so no other writer may have it open).  Adds no event.",
        ["telstate-log checkpoint obs/log", "telstate-log checkpoint obs/log --json"])
    add_log_argument(p)
    add_json_argument(p)
    p.set_defaults(func=run_checkpoint)


def run_checkpoint(args: argparse.Namespace) -> int:
    with _open_writer(args.log, "checkpoint") as backend:
        cp_path = backend.checkpoint()
        position = backend.position
    if cp_path is None:
        raise CliError(f"{args.log}: no checkpoint written")
    if args.json:
        emit_json({"path": args.log, "position": position, "checkpoint": cp_path})
    else:
        print(f"checkpoint at position {position}: {cp_path}")
    return 0


def add_seal_parser(subparsers: Any) -> None:
    p = command_parser(
        subparsers, "seal", "finish and seal the current segment; print the head hash",
        "Finish the current segment and seal it (extend the SHA-256 chain over it),\n"
        "then print the head hash.  Keep the hash elsewhere: a later\n"
        "'telstate-log verify --head HASH' proves nothing sealed up to it changed.\n"
        "Needs the writer lock; adds no event.",
        ["telstate-log seal obs/log", "telstate-log seal obs/log --json | jq -r .head"])
    add_log_argument(p)
    add_json_argument(p)
    p.set_defaults(func=run_seal)


def run_seal(args: argparse.Namespace) -> int:
    from ..storage import OsFileSystem, list_segments, read_seals

    before = len(read_seals(require_log(args.log)))
    with _open_writer(args.log, "seal") as backend:
        head = backend.seal()
        position = backend.position
        seals = read_seals(backend.path)
        current_first, current = list_segments(OsFileSystem(), backend.path)[-1]
    new = [{"segment": s.segment, "first": s.first, "last": s.last, "seal": s.seal}
           for s in seals[before:]]
    # The current segment should now be empty; if it still holds events, the
    # library declined to finish it (it only finishes a segment its own
    # writer wrote to), and saying "sealed" would be a lie.
    unsealed = None if position < current_first else \
        {"segment": current, "first": current_first, "last": position}
    if args.json:
        emit_json({"path": args.log, "position": position, "head": head,
                   "sealed_segments": len(seals), "newly_sealed": new, "unsealed": unsealed})
    else:
        for s in new:
            print(f"sealed {s['segment']} (positions {s['first']}..{s['last']})")
        if not new and unsealed is None:
            print("nothing new to seal: the current segment holds no events")
        print(f"head hash {head}" if head else "head hash - (nothing sealed)")
    if unsealed is not None:
        raise CliError(f"positions {current_first}..{position} in {current} were not sealed")
    return 0


def add_prune_parser(subparsers: Any) -> None:
    p = command_parser(
        subparsers, "prune", "drop old segments, compacting their history into a checkpoint",
        "Remove finished segments that end before --before POSITION and/or were\n"
        "finished more than --older-than SECONDS ago.  The state is kept (a\n"
        "checkpoint covers the removed part); time travel, history and audit\n"
        "before the cut then report 'history pruned'.  Needs the writer lock.",
        ["telstate-log prune obs/log --before 1000000",
         "telstate-log prune obs/log --older-than 2592000 --json"])
    add_log_argument(p)
    p.add_argument("--before", type=int, metavar="POSITION",
                   help="drop segments whose events all precede this position")
    p.add_argument("--older-than", type=float, metavar="SECONDS",
                   help="drop segments finished more than this many seconds ago")
    add_json_argument(p)
    p.set_defaults(func=run_prune)


def run_prune(args: argparse.Namespace) -> int:
    if args.before is None and args.older_than is None:
        raise UsageError("give --before POSITION and/or --older-than SECONDS")
    with _open_writer(args.log, "prune") as backend:
        report = backend.prune(before=args.before, older_than=args.older_than)
    if args.json:
        emit_json({"path": args.log, **report.as_dict()})
    elif report.removed:
        print(f"removed {len(report.removed)} segments ({report.bytes_freed:,} bytes); "
              f"history now starts at position {report.history_from}")
    else:
        print("nothing to prune")
    return 0
