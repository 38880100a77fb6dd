"""The ``demo`` subcommand: write a simulated observation, then tour what a log offers.

Theory of operation
-------------------
The demo needs nothing but this package: no server, no data files.  It
simulates one minute of a short observation that ended a few seconds ago
and writes it to a fresh log, as the telescope's processes would:

* attributes (immutable keys): the observation's parameters and target, and
  each antenna's description (``m000_observer``, katpoint style);
* sensors: every antenna's pointing (``m000_pos_actual_scan_azim`` and
  ``..._elev``) at 5 Hz -- a slew, then tracking -- the observation's
  activity, and the air temperature every 10 s;
* an indexed key: complex gain solutions per (antenna, polarisation) from
  a "calibration pipeline" (``cal_product_G``);
* a late, back-dated sample: the weather station's 30 s reading is written
  last, after everything else, with its original timestamp.

Values come from a seeded generator and the key names, sample timestamps
(relative to the start) and positions are always the same; only the
wall-clock times (the observation is placed just before now), the log's id
and hence the head hash differ between runs.

The tour then shows, with the library's API: time travel (the temperature
in force at 35 s as of the position just before the late sample arrived,
and now: valid time versus system time), that key's history, a
``changes`` summary from calibration on, the seal (head hash), and an RDB
export when the RDB exporter (:mod:`telstate_log.replay._export`) is
installed.  It finishes with the files it wrote and commands to try next,
spelled the way that works in the user's shell: ``telstate-log`` when that
is on PATH, else the script's path (``.venv/bin/telstate-log``, with a hint
to activate the environment) or ``python -m telstate_log``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import math
import os
import shlex
import shutil
import sys
import time
from typing import Any

import numpy as np

from ._common import PROG, CliError, add_json_argument, command_parser
from ._output import emit_json, iso_utc, print_fields, to_json, value_text

__all__ = ["add_demo_parser", "write_observation"]

ANTENNAS = ("m000", "m001", "m002", "m003")
RATE = 5.0  # Hz, pointing sensors
DURATION = 60.0  # seconds simulated
SLEW = 12.0  # seconds of slewing before tracking
WEATHER_EVERY = 10.0
LATE_AT = 30.0  # the weather reading that arrives late
CAL_AT = 45.0  # when the calibration pipeline reports gains
CHANNELS = 8
TARGET = "PKS 1934-638, radec, 19:39:25.03, -63:42:45.6"
LATE_SOURCE = "demo weather station (late delivery)"


def add_demo_parser(subparsers: Any) -> None:
    p = command_parser(
        subparsers, "demo", "write a simulated observation to a new log and tour it",
        "Simulate a one-minute observation (4 antennas' pointing at 5 Hz,\n"
        "attributes, calibration gains, and a late back-dated weather sample),\n"
        "write it to a log in DIR, then show time travel, a key's history, a\n"
        "changes summary, the seal (head hash) and an RDB export.  Needs no\n"
        "server.  DIR defaults to a new ./telstate-demo-YYYYmmdd-HHMMSS.",
        ["telstate-log demo", "telstate-log demo /tmp/demo",
         "telstate-log demo /tmp/demo --json | jq -r .head"])
    p.add_argument("directory", metavar="DIR", nargs="?",
                   help="directory to create the log in (default: a new one here)")
    add_json_argument(p)
    p.set_defaults(func=run_demo)


# ------------------------------------------------------------- simulation
def _antenna_description(i: int, ant: str) -> str:
    east, north = -8.3 + 31.7 * i, -207.3 + 44.1 * i * (-1) ** i
    return (f"{ant}, -30:42:39.8, 21:26:38.0, 1035.0, 13.5, "
            f"{east:.3f} {north:.3f} {1.2 + 0.3 * i:.4f}, , 1.22")


def write_observation(ts: Any, backend: Any, t0: float) -> dict[str, Any]:
    """Write the simulated observation starting at UNIX time `t0`; returns landmarks."""
    rng = np.random.default_rng(20240501)
    backend.set_source("demo observation script")
    ts["obs_params"] = {"observer": "Demo Observer", "proposal_id": "DEMO-0001",
                        "description": "telstate-log demo: a short track of a calibrator"}
    ts["obs_target"] = TARGET
    for i, ant in enumerate(ANTENNAS):
        ts[f"{ant}_observer"] = _antenna_description(i, ant)
    # Pointing: slew from the stow-ish start to the target, then track it.
    n = int(DURATION * RATE) + 1
    offsets = np.arange(n) / RATE
    start = {ant: (170.0 + 5.0 * i, 25.0 + 2.0 * i) for i, ant in enumerate(ANTENNAS)}
    goal_az, goal_el = 196.25, 41.5
    weather = [k * WEATHER_EVERY for k in range(int(DURATION // WEATHER_EVERY) + 1)]
    temperature = {t: round(14.0 + 0.08 * t / WEATHER_EVERY + rng.normal(0, 0.05), 2)
                   for t in weather}
    landmarks: dict[str, Any] = {}
    ts.add("obs_activity", "slew", ts=t0)
    for k, dt in enumerate(offsets):
        now = t0 + float(dt)
        if dt == SLEW:
            ts.add("obs_activity", "track", ts=now)
        if dt == CAL_AT:
            landmarks["before_cal"] = backend.position
            _write_gains(ts, backend, rng)
            backend.set_source("demo observation script")
        if dt in temperature and dt != LATE_AT:
            ts.add("anc_air_temperature", temperature[dt], ts=now)
        frac = min(1.0, float(dt) / SLEW)
        for ant in ANTENNAS:
            az0, el0 = start[ant]
            drift = max(0.0, float(dt) - SLEW) * 0.004
            az = az0 + (goal_az - az0) * frac + drift + rng.normal(0, 0.002)
            el = el0 + (goal_el - el0) * frac + drift / 2 + rng.normal(0, 0.002)
            jitter = 0.001 * (k % 7)
            ts.add(f"{ant}_pos_actual_scan_azim", round(az, 4), ts=now + jitter)
            ts.add(f"{ant}_pos_actual_scan_elev", round(el, 4), ts=now + jitter)
    ts.add("obs_activity", "idle", ts=t0 + DURATION)
    # The weather station's 30 s reading arrives last, stamped with its valid time.
    landmarks["before_late"] = backend.position
    backend.set_source(LATE_SOURCE)
    ts.add("anc_air_temperature", temperature[LATE_AT], ts=t0 + LATE_AT)
    landmarks["late"] = backend.position
    return landmarks


def _write_gains(ts: Any, backend: Any, rng: np.random.Generator) -> None:
    backend.set_source("demo calibration pipeline")
    for ant in ANTENNAS:
        for pol in ("h", "v"):
            phase = rng.uniform(-np.pi, np.pi) + np.linspace(0, 0.3, CHANNELS)
            gains = (rng.normal(1.0, 0.05, CHANNELS) * np.exp(1j * phase)).astype(np.complex64)
            ts.set_indexed("cal_product_G", (ant, pol), gains)


# ------------------------------------------------------------------- tour
def default_directory_name(when: datetime.datetime) -> str:
    """The demo's directory when none is given (``.gitignore`` lists the pattern)."""
    return when.strftime("telstate-demo-%Y%m%d-%H%M%S")


def command_prefix(argv0: str, executable: str,
                   path: str | None = None) -> tuple[str, str | None]:
    """How the user can run this command again: ``(prefix, hint or None)``.

    `argv0` and `executable` are ``sys.argv[0]`` and ``sys.executable``;
    `path` is the search path (default: ``$PATH``).  The script the
    interpreter's environment installed is preferred under its bare name when
    PATH finds that very script, else by its path.
    """
    def on_path(script: str) -> bool:
        found = shutil.which(PROG, path=path)
        try:
            return found is not None and os.path.samefile(found, script)
        except OSError:
            return False

    if os.path.basename(argv0) == PROG and os.path.isfile(argv0):
        script = shown = argv0  # as the user typed it, relative to this directory
    else:
        script = os.path.join(os.path.dirname(executable), PROG)
        if not os.path.isfile(script):
            return f"{shlex.quote(executable)} -m telstate_log", None
        shown = os.path.relpath(script)
        if shown.startswith(os.pardir):
            shown = os.path.abspath(script)
    if on_path(script):
        return PROG, None
    if os.sep not in shown:  # a bare name would be looked up on PATH
        shown = os.path.join(os.curdir, shown)
    activate = os.path.join(os.path.dirname(shown), "activate")
    hint = (f"{PROG} is not on PATH: '. {shlex.quote(activate)}' puts it there"
            if os.path.isfile(activate) else None)
    return shlex.quote(shown), hint


def _demo_directory(requested: str | None) -> str:
    if requested is not None:
        os.makedirs(requested, exist_ok=True)
        if os.path.exists(os.path.join(requested, "log")):
            raise CliError(f"{os.path.join(requested, 'log')} already exists: give the demo "
                           "a new directory")
        return requested
    name = default_directory_name(datetime.datetime.now())
    for n in range(1, 100):
        path = name + ("" if n == 1 else f"-{n}")
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            continue
    raise CliError("could not create a fresh demo directory here")


def _export(backend: Any, out: str) -> tuple[str, str | None]:
    """Export an RDB snapshot if the exporter is installed: (status, path)."""
    name = "telstate_log.replay._export"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return "skipped: the RDB exporter (telstate_log.replay._export) is not installed", None
    export = getattr(module, "export_backend", None)
    if export is None:
        return "skipped: this version's RDB exporter has no export_backend", None
    export(backend, out)
    return f"wrote {out} ({os.path.getsize(out)} bytes)", out


class _Narrator:
    """Prints the tour for people; says nothing in JSON mode."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def say(self, text: str = "") -> None:
        if not self.quiet:
            print(text)

    def fields(self, pairs: list[tuple[str, str]]) -> None:
        if not self.quiet:
            print_fields(pairs)


def run_demo(args: argparse.Namespace) -> int:
    from .. import TelescopeState
    from ..backends import LogBackend

    tour = _Narrator(args.json)
    directory = _demo_directory(args.directory)
    log = os.path.join(directory, "log")
    t0 = math.floor(time.time()) - DURATION - 5.0
    started = time.monotonic()
    tour.say(f"telstate-log demo: simulating a {DURATION:.0f} s observation with "
             f"{len(ANTENNAS)} antennas into {log}")
    with LogBackend(log, segment_bytes=32 << 10, checkpoint_bytes=None,
                    source="demo observation script") as backend:
        ts = TelescopeState(backend)
        marks = write_observation(ts, backend, t0)
        backend.sync()
        total = backend.position
        tour.say(f"wrote {total} events ({len(ts.keys())} keys) in "
                 f"{time.monotonic() - started:.2f} s")
        travel = _time_travel(tour, ts, backend, t0, marks)
        history = _history(tour, backend)
        changes = ts.changes(marks["before_cal"])
        _show_changes(tour, changes)
        head = backend.seal()
        tour.say("\n== 4. seal: tamper evidence ==")
        tour.say(f"head hash {head}\nkeep it: later, 'verify --head HASH' (the command "
                 "below) proves that nothing sealed up to it changed")
        status, rdb = _export(backend, os.path.join(directory, "demo.rdb"))
        tour.say(f"\n== 5. RDB export ==\n{status}")
    if args.json:
        emit_json({"directory": directory, "log": log, "rdb": rdb, "export": status,
                   "events": total, "head": head, "start": t0,
                   "start_utc": iso_utc(t0, "microseconds"), "time_travel": to_json(travel),
                   "history_events": history,
                   "changes": {"since": changes.since, "until": changes.until,
                               "events": changes.events,
                               "samples_added": changes.samples_added,
                               "sub_keys_added": to_json(changes.sub_keys_added),
                               "immutables_set": changes.immutables_set}})
        return 0
    q = shlex.quote(log)
    tour.say("\n== files ==")
    tour.fields([("log", log), ("rdb", rdb or "-")])
    cmd, hint = command_prefix(sys.argv[0], sys.executable)
    tour.say(f"\ntry next (commands take the log, {log}, not {directory}):")
    if hint:
        tour.say(f"  # {hint}")
    plot = (f"{cmd} plot {q} obs_activity m000_pos_actual_scan_azim anc_air_temperature "
            f"-o {shlex.quote(os.path.join(directory, 'demo.png'))}")
    if importlib.util.find_spec("matplotlib") is None:
        plot += "   # needs: pip install 'telstate-log[plot]'"
    for line in (f"{cmd} info {q}",
                 f"{cmd} range {q} m000_pos_actual_scan_azim | head",
                 f"{cmd} history {q} anc_air_temperature",
                 f"{cmd} get {q} cal_product_G --json",
                 f"{cmd} verify {q} --head {head}",
                 plot):
        tour.say(f"  {line}")
    return 0


def _time_travel(tour: _Narrator, ts: Any, backend: Any, t0: float,
                 marks: dict[str, Any]) -> dict[str, Any]:
    key, when = "anc_air_temperature", t0 + LATE_AT + 5.0
    before_pos, late_pos = marks["before_late"], marks["late"]
    [(old, old_t)] = ts.as_of(position=before_pos).get_range(key, et=when)
    [(new, new_t)] = ts.get_range(key, et=when)
    recorded = backend.events(late_pos, late_pos)[0].recorded
    tour.say("\n== 1. time travel: valid time vs system time ==")
    tour.say(f"the weather station's {LATE_AT:.0f} s reading of {key} arrived late: it "
             f"was written last,\nat position {late_pos}, stamped with the time it was "
             "measured:")
    tour.fields([("  valid time", f"{iso_utc(t0 + LATE_AT)} (the sample's timestamp)"),
                 ("  system time", f"{iso_utc(recorded)} (recorded, position {late_pos})")])
    tour.say(f"so the temperature in force at {iso_utc(when)} (valid time) depends on "
             "when you ask:")
    tour.fields([(f"  as of position {before_pos}",
                  f"{value_text(old)} (sample stamped {iso_utc(old_t)})"),
                 (f"  now, position {backend.position}",
                  f"{value_text(new)} (sample stamped {iso_utc(new_t)})")])
    def utc(t: float) -> str | None:
        return iso_utc(t, "microseconds")

    return {"key": key, "at": when, "at_utc": utc(when), "late_position": late_pos,
            "recorded": recorded, "recorded_utc": utc(recorded),
            "timestamp": t0 + LATE_AT, "timestamp_utc": utc(t0 + LATE_AT),
            "before": {"position": before_pos, "value": old, "timestamp": old_t,
                       "timestamp_utc": utc(old_t)},
            "after": {"position": backend.position, "value": new, "timestamp": new_t,
                      "timestamp_utc": utc(new_t)}}


def _history(tour: _Narrator, backend: Any) -> int:
    from ._events import EventDecoder, EventPrinter

    key = b"anc_air_temperature"
    events = backend.history(key)
    tour.say(f"\n== 2. history of {key.decode()}: positions are system time, so the "
             "late sample comes last ==")
    if not tour.quiet:
        printer, decode = EventPrinter(False), EventDecoder(backend)
        for event in events:
            printer.add(decode(event))
        printer.flush()
    return len(events)


def _show_changes(tour: _Narrator, changes: Any) -> None:
    tour.say(f"\n== 3. changes from position {changes.since} (before calibration) to "
             f"{changes.until}: {changes.events} events ==")
    subs = {k: len(v) for k, v in changes.sub_keys_added.items()}
    tour.fields([
        ("keys added", ", ".join(changes.keys_added) or "-"),
        ("samples added", f"{sum(changes.samples_added.values())} in "
                          f"{len(changes.samples_added)} sensors"),
        ("sub-keys added", ", ".join(f"{k}: {n}" for k, n in subs.items()) or "-"),
        ("immutables set", ", ".join(changes.immutables_set) or "-"),
    ])
