#!/usr/bin/env python3
"""A telescope-shaped workload against katsdptelstate 1.0.0, measured in one run (issue 15).

The workload (:func:`make_workload`, deterministic from ``--seed``) is what a
subarray of ``--dishes`` dishes writes in ``--hours``: per dish 4 position
sensors at 1 Hz, 14 sparse event sensors (initial values with past
timestamps, then events every few minutes) and 2 config immutables (one a
nested dict); 60 subarray sensors (20 periodic, 40 sparse, 6 of them from a
weather station that now and then delivers samples 10-35 s late); subarray
config immutables; calibration products as numpy arrays (``cal_product_B``
is 4096 x 2 x dishes complex64: 4 MB at 64 dishes); imager status in indexed
keys.  It is generated once as a list of operations in arrival order, so
every backend replays exactly the same writes through its TelescopeState.

Measured (best of ``--repeat``, with the spread; ratios are katsdptelstate's
time / ours, above 1 we are faster; for memory katsdptelstate's MB / ours):

* writes: katsdptelstate's MemoryBackend vs our MemoryBackend and LogBackend
  with fsync "interval" and "never"; fsync "always" on a slice of
  ``--always-writes`` operations, 1 thread vs 8 threads together (group commit),
  on this machine's disk and on a modelled disk whose fsync takes at least
  ``--fsync-model`` ms (2 by default, a disk without a volatile write cache).
  Group commit shares one fsync among the writers waiting for it, so it pays
  where fsyncs are slow; where they take 0.15 ms (this VM) the 8 threads'
  Python work on 2 cores sets the pace instead, so the 5x target is judged on
  the modelled disk and this disk's ratio is printed beside it;
* katdal-style read of every key (``keys()``, ``key_type()``, then
  ``get_range(st=0)`` / ``get``), RDB export (``export_backend`` vs RDBWriter),
  import of katsdptelstate's RDB of the state (ours into memory and into a log vs
  katsdptelstate's ``load_from_file``), and of an RDB of 10,000 keys x 10 samples;
* reopening the log after a clean close and after kill -9 (a child process
  writes the workload and kills itself: no final checkpoint), each open in a
  new process; resident memory of the state (RSS growth of a child process
  replaying the workload into each backend);
* cost per write of the full run against a run of 0.25 h (or a quarter of
  ``--hours`` if less) of the same shape, measured side by side (flat within 15%?).

Each figure is compared with the issue's target; the exit status is 1 if a
target fails (unless ``--no-targets``) or if a correctness check fails:
every backend, import, export and reopened log must hold exactly
katsdptelstate's state (a writer killed with fsync "interval" may lose the
writes still in its buffer, as the README says: its reopened log must be
katsdptelstate's state after that prefix of the writes); ``--no-check``
skips the state digests of a big run.
``--quick`` (2 dishes x 0.02 h) checks the numbers, not the speed: it exits 0
whatever the timings.  Instead of the benchmark, ``--profile memory|log``
prints a cProfile of the writes (per write, in microseconds), ``--profile
layers`` the CPU cost per sample written at each layer of the write path
(front end, backend, locked step, State, commit, SensorColumn: the
differences are each layer's own cost), ``--profile along`` the cost per
write chunk by chunk through one log (segment rotations, background
checkpoints).  ``--gc freeze|off`` runs the in-process writes after
``gc.freeze()`` or with the collector disabled; ``--clock cpu`` times them
by the process's CPU time (steadier on a shared machine).

    python tools/bench_telescope.py                      # 64 dishes x 1 h
    python tools/bench_telescope.py --quick              # CI: correctness of the figures
    python tools/bench_telescope.py --dishes 16 --hours 0.25 --profile log
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import json
import math
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import telstate_log
from telstate_log.backends import LogBackend, MemoryBackend
from telstate_log.replay import export_backend
from telstate_log.storage import OsFileSystem

katsdptelstate: Any = None
KtMemoryBackend: Any = None
RDBWriter: Any = None


def load_oracle() -> None:
    """Import katsdptelstate (on first use: a child process that does not need it starts
    faster)."""
    global katsdptelstate, KtMemoryBackend, RDBWriter
    try:
        import katsdptelstate as module
        from katsdptelstate.memory import MemoryBackend
        from katsdptelstate.rdb_writer import RDBWriter as Writer
    except ImportError:  # pragma: no cover - the oracle is required for ratios
        sys.exit("bench_telescope.py needs katsdptelstate (pip install -e .[interop])")
    katsdptelstate, KtMemoryBackend, RDBWriter = module, MemoryBackend, Writer


ADD, IMMUTABLE, INDEXED = 0, 1, 2
Op = tuple[int, str, Any, float]      # (kind, key, value or (sub_key, value), timestamp)
T0 = 1.7e9
EVENT_SENSORS = [("activity", "s"), ("target", "s"), ("ap_indexer_position", "s"),
                 ("ap_on_target", "b"), ("dig_noise_diode", "f"), ("lock", "b"),
                 ("ap_mode", "s"), ("rsc_rxl_startup_state", "s"), ("windstow_active", "b"),
                 ("dig_l_band_attenuation", "i"), ("ap_control", "s"), ("data_suspect", "b"),
                 ("ap_e_stop_reason", "s"), ("rx_temperature", "f")]
WORDS = ["track", "slew", "scan", "stop", "stow", "l", "s", "x", "u", "remote", "manual",
         "none", "Moon, radec, 3:12:00, -12:00:00", "PKS 1934-63, radec, 19:39:25, -63:42:45"]


@dataclass
class Workload:
    dishes: int
    hours: float
    seed: int
    ops: list[Op]
    keys: dict[str, str] = field(default_factory=dict)     # key -> kind name

    def count(self, kind: int) -> int:
        return sum(1 for op in self.ops if op[0] == kind)


def make_workload(dishes: int, hours: float, seed: int) -> Workload:
    """The operations of `dishes` dishes over `hours`, in arrival order."""
    rnd = np.random.default_rng(seed)
    seconds = hours * 3600.0
    staged: list[tuple[float, Op]] = []
    keys: dict[str, str] = {}

    def put(arrival: float, kind: int, key: str, value: Any, ts: float = 0.0) -> None:
        keys.setdefault(key, ("mutable", "immutable", "indexed")[kind])
        staged.append((arrival, (kind, key, value, ts)))

    def scalar(kind: str) -> Any:
        if kind == "s":
            return WORDS[int(rnd.integers(len(WORDS)))]
        if kind == "b":
            return bool(rnd.integers(2))
        if kind == "i":
            return int(rnd.integers(0, 64))
        return float(np.round(rnd.normal(20.0, 5.0), 3))

    def sparse(key: str, kind: str, mean: float) -> None:
        put(T0 + 0.001, ADD, key, scalar(kind), T0 - float(rnd.uniform(0, 600)))
        t = T0 + float(rnd.exponential(mean))
        while t < T0 + seconds:
            put(t, ADD, key, scalar(kind), t)
            t += float(rnd.exponential(mean))

    names = [f"m{d:03d}" for d in range(dishes)]
    for d, dish in enumerate(names):
        put(T0, IMMUTABLE, f"{dish}_observer",
            f"{dish}, -30:42:{d % 60:02d}.8, 21:26:38.0, 1035.0, 13.5, , , 1.15")
        put(T0, IMMUTABLE, f"{dish}_config",
            {"receiver": {"band": "l", "serial": 4000 + d}, "delays": {"h": d * 1e-9, "v": 0.0},
             "pointing_model": [round(float(x), 6) for x in rnd.normal(0, 1e-3, 22)]})
        times = T0 + d * 0.013 + np.arange(int(seconds))
        for name, start in (("pos_actual_scan_azim", -90.0), ("pos_actual_scan_elev", 40.0),
                            ("pos_request_scan_azim", -90.0), ("pos_request_scan_elev", 40.0)):
            values = np.round(start + 0.004 * np.arange(len(times)) + rnd.normal(0, 1e-3,
                                                                                len(times)), 6)
            key = f"{dish}_{name}"
            for t, v in zip(times.tolist(), values.tolist()):
                put(t, ADD, key, v, t)
        for name, kind in EVENT_SENSORS:
            sparse(f"{dish}_{name}", kind, float(rnd.uniform(60, 420)))
    config: dict[str, Any] = {
        "sdp_config": {"version": "3.1", "inputs": {
            f"{dish}{pol}": {"type": "cbf.antenna_channelised_voltage", "src": f"{dish}.{pol}",
                             "gains": [1.0, 0.5], "index": i}
            for i, (dish, pol) in enumerate((a, p) for a in names for p in "hv")},
            "outputs": {"l0": {"type": "sdp.vis", "n_chans": 4096, "int_time": 8.0}}},
        "obs_params": {"description": "bench", "observer": "bench", "proposal_id": "BENCH",
                       "targets": WORDS[-2:], "durations": [float(seconds)]},
        "sub_band": "l", "sub_product": "c856M4k", "cbf_n_chans": 4096,
        "cbf_bandwidth": 856e6, "cbf_center_freq": 1284e6, "cbf_sync_time": T0 - 86400.0,
        "cbf_adc_sample_rate": 1712e6, "cbf_int_time": 0.49978, "sdp_l0_int_time": 7.997,
        "sub_pool_resources": ",".join(names), "capture_block_id": "1700000000",
        "cal_pol_ordering": ["h", "v"], "cal_antlist": names, "cal_refant": names[0]}
    for key, value in config.items():
        put(T0, IMMUTABLE, key, value)
    put(T0 + 60.0, IMMUTABLE, "1700000000_imager_config", {"clean": {"niter": 1000}})
    weather = ["anc_air_temperature", "anc_air_pressure", "anc_air_relative_humidity",
               "anc_wind_speed", "anc_wind_direction", "anc_mean_wind_speed"]
    for i, key in enumerate(weather):
        for t in (T0 + i * 0.1 + np.arange(0.0, seconds, 5.0)).tolist():
            put(t, ADD, key, float(np.round(rnd.normal(10.0 + i, 1.0), 3)), t)
    arrival = T0 + 40.0                      # the late station: samples 10-35 s old
    while arrival < T0 + seconds:
        for _ in range(3):
            put(arrival, ADD, weather[int(rnd.integers(len(weather)))],
                float(np.round(rnd.normal(10.0, 1.0), 3)), arrival - float(rnd.uniform(10, 35)))
        arrival += float(rnd.uniform(300, 900))
    for i in range(14):
        key = f"sdp_{i}_ingest_rate" if i % 2 else f"cbf_{i}_input_data_rate"
        for t in (T0 + 0.05 + i * 0.01 + np.arange(0.0, seconds, 2.0)).tolist():
            put(t, ADD, key, float(np.round(rnd.uniform(0, 1e9), 1)), t)
    for i in range(40):
        sparse(f"sub_{i:02d}_state" if i % 3 else f"obs_{i:02d}_activity", "sfbi"[i % 4], 60.0)
    for key, period, shape, dtype in (("cal_product_G", 60.0, (2, dishes), np.complex64),
                                      ("cal_product_K", 300.0, (2, dishes), np.float32),
                                      ("cal_product_B", 900.0, (4096, 2, dishes), np.complex64)):
        for t in np.arange(T0 + 30.0, T0 + seconds, period).tolist():
            value = rnd.normal(size=shape).astype(dtype)
            if np.issubdtype(dtype, np.complexfloating):
                value = (value + 1j * rnd.normal(size=shape)).astype(dtype)
            put(t, ADD, key, value, t - 10.0)
    for i, t in enumerate(np.arange(T0 + 5.0, T0 + seconds, 10.0).tolist()):
        status = {"state": "done", "progress": 1.0, "time": t}
        if i % 3 == 0:
            put(t, INDEXED, "1700000000_continuum_image_status", (f"target{i}", status))
        elif i % 3 == 1:
            put(t, INDEXED, "1700000000_spectral_image_status", ((f"target{i}", i % 16), status))
        else:
            put(t, INDEXED, "1700000000_imager_timing", (i, round(t - T0, 3)))
    order = np.argsort(np.array([a for a, _ in staged]), kind="stable")
    return Workload(dishes, hours, seed, [staged[i][1] for i in order.tolist()], keys)


# ---------------------------------------------------------------- replaying
def replay(ts: Any, ops: list[Op]) -> int:
    """Write `ops` through a TelescopeState (ours or katsdptelstate's); returns the count."""
    add, set_indexed = ts.add, ts.set_indexed
    for kind, key, value, t in ops:
        if kind == ADD:
            add(key, value, ts=t)
        elif kind == IMMUTABLE:
            add(key, value, immutable=True)
        else:
            set_indexed(key, value[0], value[1])
    return len(ops)


def kt_state() -> Any:
    return katsdptelstate.TelescopeState(KtMemoryBackend())


def our_state(backend: Any) -> Any:
    return telstate_log.TelescopeState(backend)


def katdal_read(ts: Any) -> int:
    """What katdal does on opening a data set: every key, its type, all its samples."""
    n = 0
    for key in ts.keys():  # noqa: SIM118 - a TelescopeState, not a dict
        if ts.key_type(key).name == "MUTABLE":
            n += len(ts.get_range(key, st=0))
        else:
            ts.get(key)
            n += 1
    return n


def _canon(value: Any, out: Any) -> None:
    if isinstance(value, np.ndarray):
        out.update(b"A%s%s" % (value.dtype.str.encode(), str(value.shape).encode()))
        out.update(value.tobytes())
    elif isinstance(value, dict):
        out.update(b"D%d" % len(value))
        for k in sorted(value, key=repr):
            _canon(k, out)
            _canon(value[k], out)
    elif isinstance(value, (list, tuple)):
        out.update(b"%s%d" % (type(value).__name__.encode(), len(value)))
        for item in value:
            _canon(item, out)
    else:
        out.update(f"{type(value).__name__}:{value!r};".encode())


def digest(ts: Any) -> str:
    """A hash of everything a reader sees: keys, types, values, samples and timestamps."""
    out = hashlib.sha256()
    for key in sorted(ts.keys()):
        kind = ts.key_type(key).name
        out.update(f"{key}:{kind}:".encode())
        _canon(ts.get_range(key, st=0) if kind == "MUTABLE" else ts.get(key), out)
    return out.hexdigest()


def set_gc(mode: str) -> None:
    gc.enable()
    gc.collect()
    if mode == "freeze":
        gc.freeze()
    elif mode == "off":
        gc.disable()


#: the clock of the in-process timings (--clock): wall, or the process's CPU time
CLOCK: Callable[[], float] = time.perf_counter


def timed(run: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None,
          gc_mode: str = "default", clock: Callable[[], float] | None = None) -> list[float]:
    clock = clock or CLOCK
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        set_gc(gc_mode)
        t0 = clock()
        run()
        times.append(clock() - t0)
        gc.enable()
        gc.unfreeze()
    return times


# --------------------------------------------------------- child processes
def rss_bytes(field_name: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    return 0


def child(task: dict[str, Any]) -> None:
    """Run one task in this (new) process; print its result as a JSON line."""
    if task["task"] == "reopen":
        t0, c0 = time.perf_counter(), time.process_time()
        backend = LogBackend(task["path"])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        result = {"wall": wall, "cpu": cpu, "position": backend.position}
        if task["check"]:
            result["digest"] = digest(our_state(backend))
        print(json.dumps(result), flush=True)
        os._exit(0)                          # a copy: no close, no checkpoint
    work = make_workload(task["dishes"], task["hours"], task["seed"])
    if task["task"] == "kill":
        backend = LogBackend(task["path"], fsync="interval")
        replay(our_state(backend), work.ops)
        print(json.dumps({"written": len(work.ops), "position": backend.position}), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    name = task["backend"]
    if name == "katsdptelstate":
        load_oracle()
    ts = kt_state() if name == "katsdptelstate" else our_state(
        MemoryBackend() if name == "memory" else LogBackend(task["path"]))
    gc.collect()
    base = rss_bytes()                       # the workload and an empty backend
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                     # reset the peak (VmHWM) to the current RSS
    except OSError:
        pass
    replay(ts, work.ops)
    gc.collect()
    print(json.dumps({"rss": rss_bytes() - base, "peak": rss_bytes("VmHWM") - base}), flush=True)
    os._exit(0)


def run_children(tasks: list[dict[str, Any]], parallel: int = 1) -> list[dict[str, Any]]:
    """Run each task in a new process (`parallel` at a time); their results in order.
    A "kill" task must end by SIGKILL, any other with status 0."""
    results: list[dict[str, Any]] = []
    for i in range(0, len(tasks), parallel):
        batch = tasks[i:i + parallel]
        procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child",
                                   json.dumps(task)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for task in batch]
        for task, proc in zip(batch, procs):
            out, err = proc.communicate()
            if proc.returncode != (-signal.SIGKILL if task["task"] == "kill" else 0):
                raise RuntimeError(f"child {task['task']} exited {proc.returncode}: {err}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    return results


# ---------------------------------------------------------------- reporting
@dataclass
class Report:
    quick: bool
    checks: list[str] = field(default_factory=list)       # failed correctness checks
    failed: list[str] = field(default_factory=list)       # failed targets
    section: str = ""

    def header(self, title: str, columns: bool = True) -> None:
        """Start a section; a missed target is reported with its first words."""
        self.section = title.split(" (")[0].split(":")[0]
        print(f"\n{title}")
        if columns:
            print(f"  {'':<36}{'best':>9}    {'spread':>17}{'rate':>14}{'ratio':>9}")

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.checks.append(what)
            print(f"  CHECK FAILED: {what}")

    def row(self, name: str, times: list[float], *, base: list[float] | None = None,
            count: int = 0, target: float | None = None, ratio: float | None = None,
            unit: str = "s") -> float | None:
        """One line: best (spread), rate, ratio against `base`, verdict against `target`."""
        best = min(times)
        spread = f"{best:.3g}-{max(times):.3g}" if len(times) > 1 else ""
        line = f"  {name:<36}{best:>9.4g} {unit:<3}{spread:>17}"
        line += f"{count / best:>12,.0f}/s" if count else " " * 14
        if ratio is None and base is not None:
            ratio = min(base) / best
        if ratio is not None:
            self.check(math.isfinite(ratio) and ratio > 0, f"{name}: ratio {ratio}")
            line += f"{ratio:>8.2f}x"
            if target is not None:
                ok = ratio >= target
                verdict = "PASS" if ok else ("FAIL" if not self.quick else "(not checked)")
                line += f"  >= {target:g}x {verdict}"
                if not ok:
                    self.failed.append(f"{self.section}, {name}: {ratio:.2f}x < {target:g}x")
        print(line)
        return ratio

    def limit(self, name: str, value: float, limit: float, unit: str) -> None:
        """A figure with an upper bound (seconds, growth ratio)."""
        self.check(math.isfinite(value) and value > 0, f"{name}: {value}")
        ok = value <= limit
        verdict = "PASS" if ok else ("FAIL" if not self.quick else "(not checked)")
        print(f"  {name:<54}{value:>9.3f} {unit:<4} <= {limit:g} {unit} {verdict}")
        if not ok:
            self.failed.append(f"{name}: {value:.3f} {unit} > {limit:g} {unit}")


# ---------------------------------------------------------------- benchmark
class Bench:
    def __init__(self, args: argparse.Namespace, tmp: str) -> None:
        self.args, self.tmp, self.report = args, tmp, Report(args.quick)
        self.counter = iter(range(1 << 30))
        self.check_states = args.quick or not args.no_check

    def path(self, name: str) -> str:
        return os.path.join(self.tmp, f"{name}{next(self.counter)}")

    def writes(self, work: Workload, small: Workload) -> dict[str, Any]:
        """Replay into each backend `repeat` times; keep the last of each (open).
        Each repeat runs every backend in turn (so a change in the machine's load
        hits them alike), each first with the `small` workload (the cost per write
        at two sizes)."""
        args, report, ops = self.args, self.report, work.ops
        kept: dict[str, Any] = {}
        self.small, self.small_times = small, {}
        makers: dict[str, Callable[[], Any]] = {
            "katsdptelstate": kt_state, "memory": lambda: our_state(MemoryBackend()),
            "log interval": lambda: our_state(LogBackend(self.path("interval"))),
            "log never": lambda: our_state(LogBackend(self.path("never"), fsync="never"))}
        times: dict[str, list[float]] = {name: [] for name in makers}
        for _ in range(args.repeat):
            for name, make in makers.items():
                if name != "log never":
                    ts = make()
                    self.small_times.setdefault(name, []).extend(
                        timed(lambda ts=ts: replay(ts, small.ops), 1, gc_mode=args.gc))
                    close(ts)
                old = kept.pop(name, None)
                if old is not None:
                    close(old)
                ts = make()
                times[name] += timed(lambda ts=ts: replay(ts, ops), 1, gc_mode=args.gc)
                kept[name] = ts
                if name != "katsdptelstate":
                    count = ts.backend.position
                    report.check(count == len(ops), f"{name}: {count} events for {len(ops)} writes")
        report.header(f"writes: {len(ops):,} operations ({work.count(ADD):,} samples, "
                      f"{work.count(IMMUTABLE):,} immutables, {work.count(INDEXED):,} indexed) "
                      f"into {len(work.keys):,} keys")
        kt = times["katsdptelstate"]
        report.row("katsdptelstate MemoryBackend", kt, count=len(ops))
        report.row("ours MemoryBackend", times["memory"], base=kt, count=len(ops), target=2.0)
        report.row("ours LogBackend fsync=interval", times["log interval"], base=kt,
                   count=len(ops), target=1.5)
        report.row("ours LogBackend fsync=never", times["log never"], base=kt, count=len(ops))
        close(kept.pop("log never"))
        self.times = times
        if self.check_states:
            kept["digest"] = want = digest(kept["katsdptelstate"])
            for name in ("memory", "log interval"):
                report.check(digest(kept[name]) == want, f"{name}: state differs from "
                             "katsdptelstate's")
        return kept

    def always(self, work: Workload) -> None:
        """fsync="always": a slice of the workload by 1 thread, then split over 8 threads,
        on this machine's disk and on a modelled slower disk (--fsync-model)."""
        args, report = self.args, self.report
        mid = len(work.ops) // 2
        ops = work.ops[mid:mid + args.always_writes]
        parts = split_by_key(ops, 8)
        measured = fsync_latency(self.tmp)
        model = args.fsync_model / 1e3
        disks: list[tuple[str, Any]] = [
            (f"this machine's disk (fsync {measured * 1e3:.2f} ms)", None)]
        if model > 0:
            disks.append((f"a modelled disk whose fsync takes at least {model * 1e3:g} ms "
                          "(SlowSync: this disk's fsync, then a sleep for the rest)",
                          SlowSync(model)))
        for title, fs in disks:
            one, eight = self._always_on(ops, parts, fs)
            report.header(f"writes with fsync=always: {len(ops):,} operations of the "
                          f"workload, on {title}")
            report.row("ours LogBackend 1 thread", one, count=len(ops))
            # the target is judged where the disk, not this machine's 2 cores, sets the
            # pace (see the module docstring)
            report.row("ours LogBackend 8 threads (vs 1)", eight, base=one, count=len(ops),
                       target=5.0 if fs is not None or model <= 0 else None)

    def _always_on(self, ops: list[Op], parts: list[list[Op]],
                   fs: Any) -> tuple[list[float], list[float]]:
        """Times of `ops` written by 1 thread and by 8 (`parts`), each into a new log."""
        args, report = self.args, self.report
        states: list[Any] = []

        def fresh() -> None:
            for ts in states:
                close(ts)
            states[:] = [our_state(LogBackend(self.path("always"), fsync="always", fs=fs))]

        def threads() -> None:
            barrier = threading.Barrier(len(parts))

            def work_on(part: list[Op]) -> None:
                barrier.wait()
                replay(states[0], part)
            pool = [threading.Thread(target=work_on, args=(p,)) for p in parts]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
        wall = time.perf_counter               # the threads wait for the disk
        one = timed(lambda: replay(states[0], ops), args.repeat, fresh, clock=wall)
        one_digest = digest(states[0])
        eight = timed(threads, args.repeat, fresh, clock=wall)
        report.check(states[0].backend.position == len(ops),
                     f"8 threads: {states[0].backend.position} events for {len(ops)} writes")
        report.check(digest(states[0]) == one_digest, "8 threads: state differs from 1 thread")
        close(states[0])
        return one, eight

    def reads_export_import(self, work: Workload, kept: dict[str, Any]) -> None:
        args, report = self.args, self.report
        kt, mem, log = kept["katsdptelstate"], kept["memory"], kept["log interval"]
        samples = work.count(ADD) + len(work.keys) - sum(
            1 for k in work.keys.values() if k == "mutable")
        self.report.header("katdal-style read of every key (keys, key_type, get_range(st=0) / get)")
        counts = {name: katdal_read(ts) for name, ts in
                  (("katsdptelstate", kt), ("memory", mem), ("log", log))}
        report.check(set(counts.values()) == {samples}, f"values read {counts} != {samples}")
        base = timed(lambda: katdal_read(kt), args.repeat)
        report.row("katsdptelstate", base, count=samples)
        report.row("ours MemoryBackend", timed(lambda: katdal_read(mem), args.repeat),
                   base=base, count=samples, target=5.0)
        report.row("ours LogBackend", timed(lambda: katdal_read(log), args.repeat), base=base,
                   count=samples, target=5.0)

        theirs_rdb, ours_rdb = os.path.join(self.tmp, "kt.rdb"), os.path.join(self.tmp, "o.rdb")

        def save_theirs() -> None:
            with RDBWriter(theirs_rdb) as writer:
                writer.save(kt.backend)
        self.report.header("RDB export of the state")
        base = timed(save_theirs, args.repeat)
        report.row("katsdptelstate RDBWriter", base)
        for name, ts in (("MemoryBackend", mem), ("LogBackend", log)):
            report.row(f"ours export_backend({name})",
                       timed(lambda ts=ts: export_backend(ts.backend, ours_rdb), args.repeat),
                       base=base, target=2.0)
            if self.check_states:
                back = kt_state()
                back.backend.load_from_file(ours_rdb)
                report.check(digest(back) == kept["digest"], f"export of {name} differs")
        self.imports("import of katsdptelstate's RDB of this state", theirs_rdb,
                     kept.get("digest"), 2.0)

    def imports(self, title: str, rdb: str, want: str | None, target: float) -> None:
        args, report = self.args, self.report
        self.report.header(title)
        base = timed(lambda: KtMemoryBackend().load_from_file(rdb), args.repeat)
        report.row("katsdptelstate load_from_file", base)
        into: list[Any] = []

        def new(log: bool) -> None:
            for b in into:
                if isinstance(b, LogBackend):
                    b.close()
            into[:] = [LogBackend(self.path("import")) if log else MemoryBackend()]
        for name, log in (("memory", False), ("log", True)):
            report.row(f"ours into {name}", timed(lambda: into[0].load_from_file(rdb),
                                                  args.repeat, lambda log=log: new(log)),
                       base=base, target=target)
            if want is not None:
                report.check(digest(our_state(into[0])) == want, f"import into {name} differs")
        new(False)

    def small_keys_import(self) -> None:
        keys = 1000 if self.args.quick else 10_000
        kt = kt_state()
        for k in range(keys):
            for i in range(10):
                kt.add(f"sensor_{k:05d}", k + i * 0.25, ts=T0 + i)
        rdb = os.path.join(self.tmp, "small.rdb")
        with RDBWriter(rdb) as writer:
            writer.save(kt.backend)
        self.imports(f"import of an RDB of {keys:,} keys x 10 samples", rdb,
                     digest(kt) if self.check_states else None, 1.5)

    def children(self, work: Workload) -> str:
        """Two at a time (nothing is timed meanwhile): a writer of the whole workload that
        kills itself, and a replay into each backend measuring its resident memory.
        Prints the memory; returns the killed writer's log."""
        shape = {"dishes": work.dishes, "hours": work.hours, "seed": work.seed}
        killed = self.path("killed")
        names = ("katsdptelstate", "memory", "log")
        results = run_children([{"task": "kill", "path": killed, **shape}] + [
            {"task": "rss", "backend": name, "path": self.path("rss"), **shape}
            for name in names], parallel=2)
        n = len(work.ops)
        self.report.check(results[0] == {"written": n, "position": n},
                          f"killed writer: {results[0]}")
        self.report.header("resident memory of the state (RSS growth of a child process "
                           "replaying it)", False)
        base = 0.0
        for name, out in zip(names, results[1:]):
            mb, peak = out["rss"] / 1e6, out["peak"] / 1e6
            self.report.check(math.isfinite(mb) and peak >= mb - 1.0, f"rss of {name}: {out}")
            base = base or mb
            ratio = f"  katsdptelstate / ours {base / mb:.2f}x" if min(base, mb) >= 1.0 else ""
            print(f"  {name:<36}{mb:>9.1f} MB  (peak {peak:.1f} MB)"
                  + ("" if name == "katsdptelstate" else ratio))
        return killed

    def reopen(self, work: Workload, kept: dict[str, Any], killed: str) -> None:
        args, report = self.args, self.report
        log = kept.pop("log interval")
        t0 = time.perf_counter()
        close(log)
        print(f"\n(close of the log written with fsync=interval: "
              f"{time.perf_counter() - t0:.3f} s)")
        clean = log.backend.path
        n = len(work.ops)
        self.report.header("reopen of the log (writable, in a new process; wall clock, cpu)", False)
        repeat = 1 if args.quick else args.repeat
        for name, path, limit in (("after a clean close", clean, 1.0),
                                  ("after kill -9 (no final checkpoint)", killed, 3.0)):
            walls, cpus, found = [], [], set()
            for _ in range(repeat):
                copy = self.path("copy")
                shutil.copytree(path, copy)
                out = run_children([{"task": "reopen", "path": copy,
                                     "check": self.check_states}])[0]
                shutil.rmtree(copy)
                walls.append(out["wall"])
                cpus.append(out["cpu"])
                found.add((out["position"], out.get("digest")))
            print(f"  {name:<36}{min(walls):>9.3f} s  {min(walls):.3g}-{max(walls):.3g}"
                  f"  (cpu {min(cpus):.3f} s)")
            report.check(len(found) == 1, f"reopen {name}: copies differ {found}")
            position, state = found.pop()
            if path == clean:
                report.check(position == n, f"reopen {name}: position {position} != {n}")
            else:
                # README: a killed "interval" writer loses the writes still in its
                # buffer (handed to the OS flush_interval, 5 ms, after the first)
                print(f"  (the killed writer lost its last {n - position:,} of {n:,} writes "
                      f"still in its buffer)")
                report.check(0 < position <= n, f"reopen {name}: position {position}")
            if self.check_states:
                want = kept["digest"]
                if position != n:              # exactly katsdptelstate after that prefix
                    prefix = kt_state()
                    replay(prefix, work.ops[:position])
                    want = digest(prefix)
                report.check(state == want, f"reopen {name}: not the state after "
                             f"{position} writes")
            report.limit(f"reopen {name}", min(walls), limit, "s")

    def growth(self, work: Workload) -> None:
        small, n, m = self.small, len(work.ops), len(self.small.ops)
        self.report.header(f"cost per write: {m:,} writes ({small.hours:g} h) vs {n:,} "
                           f"({work.hours:g} h), us/write best (spread)", False)
        for name, t in self.small_times.items():
            big = self.times[name]
            growth = (min(big) / n) / (min(t) / m)
            print(f"  {name:<16} {min(t) / m * 1e6:6.2f} ({min(t) / m * 1e6:.2f}-"
                  f"{max(t) / m * 1e6:.2f}) at {small.hours:g} h, {min(big) / n * 1e6:6.2f} "
                  f"({min(big) / n * 1e6:.2f}-{max(big) / n * 1e6:.2f}) at {work.hours:g} h: "
                  f"x{growth:.2f}")
            if name == "log interval":
                self.report.limit("growth of the log's cost per write (big/small)", growth,
                                  1.15, "x")


def split_by_key(ops: list[Op], n: int) -> list[list[Op]]:
    """`ops` in `n` parts of about the same size, each key's operations in one part (in
    their order), for `n` writer threads."""
    count: dict[str, int] = {}
    for op in ops:
        count[op[1]] = count.get(op[1], 0) + 1
    load, home = [0] * n, {}
    for key in sorted(count, key=lambda k: (-count[k], k)):   # biggest first, to the least
        home[key] = i = load.index(min(load))
        load[i] += count[key]
    parts: list[list[Op]] = [[] for _ in range(n)]
    for op in ops:
        parts[home[op[1]]].append(op)
    return parts


def close(ts: Any) -> None:
    if isinstance(ts.backend, LogBackend):
        ts.backend.close()


class SlowSync(OsFileSystem):
    """This machine's file system, but an fsync takes at least `latency` seconds: the
    disk's own fsync, then a sleep for the rest (like a disk, it holds no lock and
    releases the GIL), so group commit can be measured where fsyncs cost what they do on
    a disk without a write cache instead of on this machine's."""

    def __init__(self, latency: float) -> None:
        self.latency = latency

    def sync(self, fd: int) -> None:
        start = time.perf_counter()
        super().sync(fd)
        rest = self.latency - (time.perf_counter() - start)
        if rest > 0:
            time.sleep(rest)


def fsync_latency(directory: str) -> float:
    path = os.path.join(directory, "fsync.probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        times = []
        for _ in range(20):
            os.write(fd, b"x" * 100)
            t0 = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(times)


def layers(args: argparse.Namespace, work: Workload, tmp: str) -> None:
    """The samples of the workload written at each layer of the write path, without a
    profiler: the differences are each layer's own cost per write."""
    from telstate_log.core._events import ADD as EVENT_ADD
    from telstate_log.core._sensor import SensorColumn
    from telstate_log.core._state import State

    adds = [op for op in work.ops if op[0] == ADD]
    enc = [(key.encode(), telstate_log.encode_value(value), t) for _, key, value, t in adds]
    counter = iter(range(1 << 30))

    def fresh(kind: str) -> Any:
        return MemoryBackend() if kind == "memory" else LogBackend(
            os.path.join(tmp, f"layers{next(counter)}"), fsync="interval")

    def run(kind: str, layer: str) -> Callable[[], object]:
        backend = fresh(kind)
        ts = our_state(backend)
        state = backend.writer().state
        commit = backend.log.append if kind == "log" else None
        made.append(backend)
        if layer == "TelescopeState.add":
            return lambda: replay(ts, adds)
        if layer == "encode_value + key":
            encode = telstate_log.encode_value
            return lambda: [(key.encode(), encode(value)) for _, key, value, _ in adds]
        if layer == "backend.add_mutable":
            call = backend.add_mutable
        elif layer == "writer().add_mutable (locked step)":
            call = backend.writer().add_mutable
        elif layer == "State.add_mutable(commit)":
            return lambda: [state.add_mutable(k, v, t, commit) for k, v, t in enc]
        elif layer == "State.add_mutable":
            bare = State(keep_history=False)
            return lambda: [bare.add_mutable(k, v, t) for k, v, t in enc]
        elif layer == "log.append (commit)":
            def commits() -> None:
                for pos, (k, v, t) in enumerate(enc, 1):
                    commit(EVENT_ADD, pos, k, b"", v, t)  # type: ignore[misc]
            return commits
        else:                                  # the SensorColumns alone
            def columns() -> None:
                cols: dict[bytes, SensorColumn] = {}
                for pos, (k, v, t) in enumerate(enc, 1):
                    col = cols.get(k)
                    if col is None:
                        col = cols[k] = SensorColumn(pos, v)
                    if not (t <= col.last_ts and col.contains(t, v)):
                        col.add(t, v, pos)
            return columns
        return lambda: [call(k, v, t) for k, v, t in enc]

    steps = ["TelescopeState.add", "encode_value + key", "backend.add_mutable",
             "writer().add_mutable (locked step)", "State.add_mutable(commit)",
             "State.add_mutable", "log.append (commit)", "SensorColumn.add"]
    print(f"{len(adds):,} samples of the workload, us/write of process CPU time (all its "
          f"threads), best (spread) of {args.repeat}, gc {args.gc}")
    cases = [(kind, layer) for kind in ("memory", "log") for layer in steps
             if kind == "log" or layer not in ("log.append (commit)", "State.add_mutable")]
    times: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
    made: list[Any] = []
    for _ in range(args.repeat):               # each repeat runs every case in turn
        for case in cases:
            runner = run(*case)
            times[case] += timed(runner, 1, gc_mode=args.gc, clock=time.process_time)
            for backend in made:
                if isinstance(backend, LogBackend):
                    backend.close()
            made.clear()
    for (kind, layer), t in times.items():
        per = [x / len(adds) * 1e6 for x in t]
        print(f"  {kind:<7} {layer:<36} {min(per):6.2f} ({min(per):.2f}-{max(per):.2f})")


def along(work: Workload, tmp: str, chunk: int = 250_000) -> None:
    """The cost per write along one run into a LogBackend (defaults, fsync="interval"),
    chunk by chunk, with the segments and checkpoints in the log as it goes.

    Each chunk is first written into a MemoryBackend growing alongside, then into
    the log, so a machine whose speed drifts during the run (a shared VM) moves
    both alike: the log's own cost per write is the difference, which is what
    must stay flat across segment rotations and background checkpoints."""
    path = os.path.join(tmp, "along")
    ts = our_state(LogBackend(path))
    mem = our_state(MemoryBackend())
    print(f"us/write per chunk of {chunk:,} writes (wall clock): into a MemoryBackend, then "
          "into the log: process CPU (all threads), wall, the writing thread's CPU; the "
          "log's wall minus memory's")
    for i in range(0, len(work.ops), chunk):
        part = work.ops[i:i + chunk]
        t0 = time.perf_counter()
        replay(mem, part)
        m = time.perf_counter() - t0
        c0, t0, w0 = time.process_time(), time.perf_counter(), time.thread_time()
        replay(ts, part)
        c, t, w = (time.process_time() - c0, time.perf_counter() - t0,
                   time.thread_time() - w0)
        segments = sum(name.endswith(".seg") for name in os.listdir(path))
        ckpts = os.path.join(path, "checkpoints")
        checkpoints = len(os.listdir(ckpts)) if os.path.isdir(ckpts) else 0
        us = [x / len(part) * 1e6 for x in (m, c, t, w, t - m)]
        print(f"  {i + len(part):>10,}  memory {us[0]:5.2f}  log: cpu {us[1]:5.2f}  wall "
              f"{us[2]:5.2f}  writer {us[3]:5.2f}  log - memory {us[4]:5.2f}   segments "
              f"{segments}, checkpoints kept {checkpoints}")
    close(ts)


def profile(args: argparse.Namespace, work: Workload, tmp: str) -> None:
    """cProfile of one replay into our `args.profile` backend, per write in microseconds."""
    if args.profile == "layers":
        layers(args, work, tmp)
        return
    if args.profile == "along":
        along(work, tmp)
        return
    ts = our_state(MemoryBackend() if args.profile == "memory" else
                   LogBackend(os.path.join(tmp, "profile"), fsync="interval"))
    n = len(work.ops)
    plain = our_state(MemoryBackend() if args.profile == "memory" else
                      LogBackend(os.path.join(tmp, "plain"), fsync="interval"))
    unprofiled = timed(lambda: replay(plain, work.ops), 1, gc_mode=args.gc)[0]
    close(plain)
    prof = cProfile.Profile()
    set_gc(args.gc)
    prof.enable()
    replay(ts, work.ops)
    prof.disable()
    gc.enable()
    close(ts)
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{os.path.basename(file)}:{line}({func})" if line else func
        rows.append((tottime, cumtime, calls, where))
    print(f"{args.profile}: {n:,} writes, {unprofiled / n * 1e6:.2f} us/write without the "
          f"profiler (gc {args.gc})")
    for title, index in (("own time", 0), ("cumulative time", 1)):
        print(f"\ntop 25 by {title}, per write: calls  own us  cum us")
        for row in sorted(rows, key=lambda r: -r[index])[:25]:
            print(f"  {row[2] / n:6.2f} {row[0] / n * 1e6:7.3f} {row[1] / n * 1e6:7.3f}  {row[3]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dishes", type=int, default=64)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--always-writes", type=int, default=3000,
                        help="operations written with fsync=always (1 and 8 threads)")
    parser.add_argument("--fsync-model", type=float, default=2.0, metavar="MS",
                        help="also run the fsync=always writes on a modelled disk whose "
                        "fsync takes at least MS milliseconds (0: only this machine's disk)")
    parser.add_argument("--quick", action="store_true",
                        help="2 dishes x 0.02 h: check the figures' correctness, not speed")
    parser.add_argument("--no-targets", action="store_true", help="exit 0 if a target fails")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the state digests (correctness) of a big run")
    parser.add_argument("--gc", choices=["default", "freeze", "off"], default="default",
                        help="collector during the in-process writes")
    parser.add_argument("--profile", choices=["memory", "log", "layers", "along"],
                        help="print a cProfile of the writes into this backend instead; "
                        "layers: the cost per write at each layer of the write path; along: "
                        "the cost per write along a log's run, chunk by chunk")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="time in-process steps by the wall clock or by the process's "
                        "CPU time (steadier on a shared machine; fsync=always is wall)")
    parser.add_argument("--dir", default=None, help="directory for the logs (default: temp)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
    load_oracle()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.quick:
        args.dishes, args.hours, args.repeat, args.always_writes = 2, 0.02, 2, 100
    t0 = time.perf_counter()
    work = make_workload(args.dishes, args.hours, args.seed)
    print(f"workload: {args.dishes} dishes x {args.hours:g} h (seed {args.seed}): "
          f"{len(work.ops):,} writes, {len(work.keys):,} keys "
          f"({', '.join(f'{n} {k}' for k, n in count_kinds(work).items())}); "
          f"generated in {time.perf_counter() - t0:.1f} s; katsdptelstate "
          f"{katsdptelstate.__version__}, telstate-log {telstate_log.__version__}; "
          f"{'process CPU' if args.clock == 'cpu' else 'wall-clock'} times, best of "
          f"{args.repeat} (spread: best-worst)")
    tmp = tempfile.mkdtemp(prefix="bench-telescope-", dir=args.dir)
    try:
        if args.profile:
            profile(args, work, tmp)
            return
        bench = Bench(args, tmp)
        again = make_workload(args.dishes, args.hours, args.seed)
        bench.report.check(len(again.ops) == len(work.ops) and all(
            a[:2] == b[:2] and a[3] == b[3] for a, b in zip(again.ops, work.ops)),
            "the workload is not deterministic")
        del again
        kept = bench.writes(work, make_workload(args.dishes, min(0.25, args.hours / 4),
                                                args.seed))
        bench.always(work)
        bench.reads_export_import(work, kept)
        bench.small_keys_import()
        killed = bench.children(work)
        bench.reopen(work, kept, killed)
        bench.growth(work)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report = bench.report
    print("\nratios: katsdptelstate's time / ours (above 1: we are faster)")
    if report.checks:
        sys.exit(f"{len(report.checks)} correctness check(s) failed: " + "; ".join(report.checks))
    if args.quick:
        print("quick run: figures checked for correctness; timings not held to the targets")
    elif report.failed:
        print(f"{len(report.failed)} target(s) missed: " + "; ".join(report.failed))
        if not args.no_targets:
            sys.exit(1)
    else:
        print("all targets met")


def count_kinds(work: Workload) -> dict[str, int]:
    """Keys of each kind, and the samples that arrive after a later one of their key."""
    out: dict[str, int] = {}
    for kind in work.keys.values():
        out[kind] = out.get(kind, 0) + 1
    last: dict[str, float] = {}
    late = 0
    for kind, key, _, t in work.ops:
        if kind == ADD:
            late += t < last.get(key, -math.inf)
            last[key] = max(t, last.get(key, -math.inf))
    out["late samples"] = late
    return out


if __name__ == "__main__":
    main()
