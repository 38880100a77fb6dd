"""Run every fuzzer of tests/test_fuzz_log.py for a time budget and count the outcomes.

Theory of operation
-------------------
The fuzz *cases* live in ``tests/test_fuzz_log.py`` (one per decoder that reads
outside data: segments opened read-only and by a writer, the EventReader, the
follower, checkpoints, frames and headers, Redis pub/sub messages, RDB imports and
stored values).  The tests there drive them with hypothesis for a few hundred inputs
each; this tool drives the very same cases with seeded
:class:`~test_fuzz_log.RandomChooser` s for as long as you like, so a long run
explores far more damage while the oracles stay in one place.

Input ``i`` of decoder ``d`` uses the seed ``hash(d) ^ (base seed + i)``, so every
reported failure can be replayed exactly::

    python tools/fuzz_all.py --decoder checkpoints --replay 1234

Each input runs under a watchdog (SIGALRM, ``test_fuzz_log.watchdog``): an input not decided within
``--hang-seconds`` counts as a hang.  The outcome of an input is one of

* a label returned by the case ("opened", "refused", "recheck", ...);
* ``known: <bug>`` -- a symptom of a library bug that has its own failing
  regression test (see ``KNOWN_BUGS`` in the test module), counted apart so the
  fuzzers keep looking for new problems;
* a *violation* (an oracle's AssertionError), an *unexpected exception* (any other
  exception escaping the decoder) or a *hang*.

The summary gives, per decoder, the inputs tried and these counts; the exit status
is 1 if there was any violation, unexpected exception or hang.

Usage::

    python tools/fuzz_all.py --seconds 60            # a minute, all decoders
    python tools/fuzz_all.py --seconds 3600 --decoder segments
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import test_fuzz_log as fuzz


def seed_for(decoder: str, base: int, i: int) -> int:
    return zlib.crc32(decoder.encode()) ^ (base + i)


def run_one(decoder: str, seed: int, work: Path, hang_seconds: float) -> tuple[str, str | None]:
    """(outcome, details): outcome is a label, "violation", "unexpected" or "hang"."""
    choose = fuzz.RandomChooser(seed)
    try:
        with fuzz.watchdog(hang_seconds):
            label = fuzz.run_case(decoder, choose, work)
    except fuzz.Hang:
        return "hang", _details(choose, f"no decision within {hang_seconds} s")
    except AssertionError as exc:
        return "violation", _details(choose, "".join(
            traceback.format_exception_only(type(exc), exc)).strip())
    except Exception as exc:
        return "unexpected", _details(choose, "".join(traceback.format_exception(
            type(exc), exc, exc.__traceback__)[-4:]).rstrip())
    return label, None


def _details(choose: fuzz.RandomChooser, text: str) -> str:
    return "\n".join([*(f"input: {n}" for n in choose.notes), text])


def resolve(name: str) -> str:
    matches = [d for d in fuzz.CASES if d.startswith(name)]
    if len(matches) != 1:
        raise SystemExit(f"--decoder {name!r} matches {matches or 'nothing'}; "
                         f"choose from {list(fuzz.CASES)}")
    return matches[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="total time budget, shared by the decoders (default 60)")
    parser.add_argument("--decoder", action="append",
                        help="only this decoder (prefix of its name; repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--hang-seconds", type=float, default=20.0,
                        help="an input not decided in this time is a hang (default 20)")
    parser.add_argument("--replay", type=int, metavar="SEED",
                        help="run one input with this seed and show the full result")
    parser.add_argument("--show", type=int, default=3,
                        help="failures to print per decoder and kind (default 3)")
    args = parser.parse_args(argv)
    decoders = [resolve(d) for d in args.decoder] if args.decoder else list(fuzz.CASES)
    fuzz.quiet_library_warnings()
    with tempfile.TemporaryDirectory(prefix="fuzz-all-") as tmp:
        work = Path(tmp) / "case"
        if args.replay is not None:
            for decoder in decoders:
                outcome, details = run_one(decoder, args.replay, work, args.hang_seconds)
                print(f"{decoder}: seed {args.replay}: {outcome}")
                if details:
                    print(details)
            return 0
        for name in fuzz.CORPORA:  # build the corpus outside the budget
            fuzz.corpus(name)
        return _run(decoders, args, work)


def _run(decoders: list[str], args: Any, work: Path) -> int:
    share = args.seconds / len(decoders)
    rows = []
    failures: dict[str, list[tuple[str, int, str]]] = collections.defaultdict(list)
    bad = 0
    for decoder in decoders:
        counts: collections.Counter[str] = collections.Counter()
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < share or i == 0:
            seed = seed_for(decoder, args.seed, i)
            outcome, details = run_one(decoder, seed, work, args.hang_seconds)
            counts[outcome] += 1
            if outcome in ("violation", "unexpected", "hang"):
                failures[decoder].append((outcome, seed, details or ""))
            i += 1
        elapsed = time.monotonic() - start
        problems = counts["violation"] + counts["unexpected"] + counts["hang"]
        bad += problems
        known = sum(n for k, n in counts.items() if k.startswith("known: "))
        labels = ", ".join(f"{k} {n}" for k, n in sorted(counts.items())
                           if k not in ("violation", "unexpected", "hang")
                           and not k.startswith("known: "))
        rows.append((decoder, i, counts["violation"], counts["unexpected"], counts["hang"],
                     known, elapsed, labels))
        print(f"{decoder}: {i} inputs tried, {counts['violation']} violations, "
              f"{counts['unexpected']} unexpected exceptions, {counts['hang']} hangs, "
              f"{known} known-bug hits ({elapsed:.0f} s)", flush=True)
        for key in sorted(k for k in counts if k.startswith("known: ")):
            print(f"    {key}: {counts[key]}")
    print()
    print(f"{'decoder':32} {'inputs':>8} {'viol.':>6} {'unexp.':>6} {'hangs':>6} "
          f"{'known':>6} {'inputs/s':>9}  outcomes")
    for decoder, n, viol, unexp, hangs, known, elapsed, labels in rows:
        print(f"{decoder:32} {n:8d} {viol:6d} {unexp:6d} {hangs:6d} {known:6d} "
              f"{n / max(elapsed, 1e-9):9.0f}  {labels}")
    total = sum(r[1] for r in rows)
    print(f"{'total':32} {total:8d} {sum(r[2] for r in rows):6d} {sum(r[3] for r in rows):6d} "
          f"{sum(r[4] for r in rows):6d} {sum(r[5] for r in rows):6d}")
    for decoder, items in failures.items():
        shown: collections.Counter[str] = collections.Counter()
        for outcome, seed, details in items:
            if shown[outcome] >= args.show:
                continue
            shown[outcome] += 1
            print(f"\n--- {decoder}: {outcome} (replay: --decoder '{decoder}' --replay {seed})")
            print(details)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
