#!/usr/bin/env python3
"""Crash-state enumeration at scale: every power-loss state of larger workloads.

    python tools/crash_states.py                  # 3 seeds, scale 2, every state
    python tools/crash_states.py --quick          # 1 seed, 60 states per workload
    python tools/crash_states.py --policies always,interval --seeds 10 --no-relaxed

Theory of operation
-------------------
The model and the checks are those of ``tests/_crashfs.py`` (read its
docstring): each workload (``mixed``: every event kind, rotations, a
checkpoint, a seal, a prune and a reopen; ``recover``: continuing a log
opened over a crash's leftovers) runs under each fsync policy through a
recording file system; every state a power loss could leave -- the ordered
model (prefixes of unsynced operations, torn writes at 512 B and 4 KiB,
lost directory entries) and, unless ``--no-relaxed``, the relaxed one
(sector holes, metadata ahead of data, independent per-file writeback) --
is materialised and opened with a plain LogBackend.  An ordered-model state
must open to the state after a prefix of the writes holding everything
acknowledged as durable; a relaxed state may instead fail closed
(LogCorruptError) but never open wrong.

Seeds vary the values (so frame boundaries fall elsewhere) and, for the
buffered policies, the flusher's timing.  The tool prints per policy the
workloads, states and outcomes, then every kind of violation with an
example, and exits with status 1 if there was any.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from _crashfs import (
    POLICIES,
    WORKLOADS,
    crash_states,
    record_workload,
    run_states,
    scratch_root,
)


@dataclass
class Figures:
    workloads: int = 0
    ops: int = 0
    epochs: int = 0
    candidates: int = 0
    ordered: int = 0  # unique ordered-model states
    relaxed: int = 0  # unique relaxed states
    checked: int = 0
    outcomes: collections.Counter[tuple[bool, str]] = field(default_factory=collections.Counter)
    problems: collections.Counter[tuple[bool, str]] = field(default_factory=collections.Counter)
    examples: dict[tuple[bool, str], str] = field(default_factory=dict)
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: float = 0.0

    @property
    def violations(self) -> int:
        return self.outcomes[(True, "violation")] + self.outcomes[(False, "violation")]


def _kind(detail: str) -> str:
    """A violation's message without paths and numbers (to group them)."""
    text = re.sub(r" in /\S+", "", detail)
    text = re.sub(r"/\S+/", "", text)
    return re.sub(r"\d+", "N", text)[:100]


def run(policies: list[str], workloads: list[str], seeds: int, scale: int,
        budget: int | None, relaxed: bool, max_cuts: int, base: str,
        verbose: bool) -> dict[str, Figures]:
    figures = {p: Figures() for p in policies}
    for policy in policies:
        fig = figures[policy]
        t0 = time.monotonic()
        for seed in range(seeds):
            for workload in workloads:
                rec = record_workload(base, workload, policy, seed=seed, scale=scale)
                space = crash_states(rec.trace, rec.initial, budget=budget, seed=seed,
                                     relaxed=relaxed, max_cuts=max_cuts)
                fig.workloads += 1
                fig.ops += len(rec.trace)
                fig.epochs += space.epochs
                fig.candidates += space.candidates
                fig.ordered += space.unique_ordered
                fig.relaxed += space.unique_relaxed
                for state, out in run_states(rec, space.states, base):
                    fig.checked += 1
                    fig.outcomes[(state.ordered, out.status)] += 1
                    if out.status == "fail-closed":
                        fig.refused[state.variant] += 1
                    if out.status == "violation":
                        key = (state.ordered, _kind(out.detail))
                        fig.problems[key] += 1
                        fig.examples.setdefault(
                            key, f"{workload} seed {seed}: {state.variant}, {state.where}")
                if verbose:
                    print(f"  {policy} {workload} seed {seed}: {len(rec.trace)} ops, "
                          f"{len(space.states)} states, {fig.violations} violations so far",
                          flush=True)
        fig.seconds = time.monotonic() - t0
    return figures


def report(figures: dict[str, Figures], relaxed: bool) -> None:
    head = (f"{'policy':<16}{'workloads':>10}{'trace ops':>10}{'ordered':>9}{'relaxed':>9}"
            f"{'checked':>9}{'opened':>8}{'refused*':>9}{'violations':>11}{'seconds':>9}")
    print(head)
    print("-" * len(head))
    for policy, f in figures.items():
        opened = f.outcomes[(True, "ok")] + f.outcomes[(False, "ok")]
        print(f"{policy:<16}{f.workloads:>10}{f.ops:>10}{f.ordered:>9}{f.relaxed:>9}"
              f"{f.checked:>9}{opened:>8}{f.outcomes[(False, 'fail-closed')]:>9}"
              f"{f.violations:>11}{f.seconds:>9.1f}")
    print("ordered/relaxed: distinct states of each model; * relaxed states refused with "
          "LogCorruptError (allowed: fail closed)" if relaxed else
          "ordered: distinct states of the ordered model")
    for policy, f in figures.items():
        if f.refused:
            kinds = ", ".join(f"{v} {n}" for v, n in f.refused.most_common())
            print(f"{policy}: relaxed states refused (fail-closed) by variant: {kinds}")
    for policy, f in figures.items():
        if not f.problems:
            continue
        print(f"\n{policy}: violations by kind")
        for (ordered, kind), n in f.problems.most_common():
            model = "ordered" if ordered else "relaxed"
            print(f"  {n:5d}  [{model}] {kind}")
            print(f"         e.g. {f.examples[(ordered, kind)]}")
    total = sum(f.checked for f in figures.values())
    bad = sum(f.violations for f in figures.values())
    n_work = sum(f.workloads for f in figures.values())
    print(f"\n{n_work} workloads, {total} crash states checked, {bad} violations")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policies", default=",".join(p[0] for p in POLICIES))
    parser.add_argument("--workloads", default=",".join(sorted(WORKLOADS)))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=2, help="workload length multiplier")
    parser.add_argument("--budget", type=int, default=None,
                        help="states checked per workload (default: all)")
    parser.add_argument("--max-cuts", type=int, default=8, help="tear points per write")
    parser.add_argument("--no-relaxed", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, scale 1, 60 states per workload")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.scale, args.budget = 1, 1, args.budget or 60
    policies = [p for p in args.policies.split(",") if p]
    known = {p[0] for p in POLICIES}
    for p in policies:
        if p not in known:
            parser.error(f"unknown policy {p!r} (choose from {', '.join(sorted(known))})")
    workloads = [w for w in args.workloads.split(",") if w]
    logging.disable(logging.ERROR)  # recovery warns about every torn tail it drops
    base = tempfile.mkdtemp(prefix="crash-states-", dir=scratch_root())
    print(f"crash states: {', '.join(workloads)} x {', '.join(policies)}, {args.seeds} seed(s), "
          f"scale {args.scale}, "
          f"{'every state' if args.budget is None else f'{args.budget} states per workload'}"
          f"{'' if args.no_relaxed else ', relaxed model too'}", flush=True)
    try:
        figures = run(policies, workloads, args.seeds, args.scale, args.budget,
                      not args.no_relaxed, args.max_cuts, base, args.verbose)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    report(figures, not args.no_relaxed)
    return 1 if any(f.violations for f in figures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
