"""Soak test: concurrent writers, followers, checkpoints, seals, prunes and reopens on one
log, with the invariants checked continuously.

Theory of operation
-------------------
This process owns the log as its writer: one LogBackend shared by ``--writers``
writer threads.  ``--followers`` follower processes (this script with ``--worker
follower``) follow it read-only.  The main thread checkpoints, seals and prunes
while the writers write, and regularly reaches a *quiescent point*: it parks the
writers between two calls, then checks

* the writer's state against the writers' own record of *acknowledged* writes (a
  write is acknowledged when its call returned): every sensor has exactly the
  samples acknowledged for it, intact, the shared table every acknowledged sub-key,
  deleted keys are gone and nothing else exists -- and the same again after closing
  and reopening the writer (``reopens``), so no acknowledged write is ever lost;
* every follower reaches the writer's position and has the same state (a digest of
  every key, type, timestamp and value), without having reported an error;
* ``verify_log`` passes (checksums, replay, checkpoints against the replay, seals).

Values describe themselves (a sample's value is its own timestamp, encoded) and the
shared sensor ``pairs`` only ever grows by two samples in one ``add_mutable_many``,
so followers also check, between quiescent points, every update they are notified
of (intact values) and that they never show half a pair or go backwards.  Followers
are restarted now and then, so new ones open from checkpoints of a pruned log.
Sensors and the table are deleted and started again when they grow large, so the
state stays bounded in an hours-long run.

A follower that stops (``follow_error``), a ``verify_log`` that raises, a ``seal()``
or ``prune()`` that does not return while the writers go on (it is then retried with
the writers parked, to tell a slow call from a stuck one) are violations like the
rest.  Early runs found three library bugs this way (a follower dying when the writer
prunes the segment it reads, ``verify_log`` tripping over a checkpoint a live writer
removes, ``seal()`` and ``prune()`` waiting for segments finished after they were
called), a race in a first version of the follower's gap check, and a false gap
the current one reports when a directory listing misses a segment the writer creates
meanwhile (regression tests in ``tests/test_concurrency.py``).  Exit status: 1 if
there was any violation.

Settings::

    python tools/soak.py --seconds 5 --writers 2 --followers 2          # CI (seconds)
    python tools/soak.py --seconds 14400 --writers 4 --followers 4 \\
        --segment-bytes 1048576 --check-every 30                        # soak (hours)

``tests/test_concurrency.py::test_soak_quick`` runs the CI setting.
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import json
import math
import os
import random
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import IO, Any

import numpy as np

from telstate_log import KeyType
from telstate_log.backends import LogBackend, MutableKeyUpdate
from telstate_log.core._encoding import encode_value
from telstate_log.storage._recovery import list_segments
from telstate_log.storage._repair import verify_log

INF = math.inf
#: A sensor (or the table) is deleted and started again past this many entries.
ROLL_SAMPLES = 20_000
ROLL_TABLE = 5_000
FOLLOWER_REPLY_SECONDS = 120.0
#: seal() and prune() should return within this while writers go on (generous: they
#: wait for the sealer to catch up with the segments finished before the call).
SEAL_SECONDS = 30.0


def value_for(ts: float) -> bytes:
    """A sample's value: its own timestamp, encoded (a msgpack float64)."""
    return b"\xff\xcb" + struct.pack(">d", ts)


def own_key(writer: int) -> bytes:
    return b"w%d" % writer


def summarize(b: Any) -> str:
    """Digest of the position and every key's type and content."""
    h = hashlib.sha256(str(b.position).encode())
    for key in sorted(b.keys(b"*")):
        kind = b.key_type(key)
        h.update(b"\0" + key + b"\0" + kind.name.encode())
        if kind == KeyType.MUTABLE:
            rng = b.get_range_arrays(key, 0.0, INF, False, False)
            h.update(np.ascontiguousarray(rng.timestamps).tobytes())
            floats = rng.floats()
            h.update(floats.tobytes() if floats is not None else b"\0".join(rng.encoded()))
        elif kind == KeyType.INDEXED:
            for sub, value in sorted(b.get(key)[0].items()):
                h.update(sub + b"\0" + value + b"\0")
        else:
            h.update(b.get(key)[0])
    return h.hexdigest()


def describe(error: BaseException) -> str:
    """An exception's type and message, with the file it names (if any) last."""
    text = f"{type(error).__name__}: {error}"
    filename = getattr(error, "filename", None)
    return f"{text}: {filename}" if filename and str(filename) not in text else text


def sensor_problem(b: Any, key: bytes) -> str | None:
    """Why the samples of `key` are not intact (None if they are)."""
    rng = b.get_range_arrays(key, 0.0, INF, False, False)
    if rng is None:
        return None
    floats = rng.floats()
    if floats is None or not np.array_equal(floats, rng.timestamps):
        return f"{key!r}: a sample's value is not its timestamp"
    return None


# --------------------------------------------------------------------------
# The writer side
# --------------------------------------------------------------------------
class Gate:
    """Parks the writer threads between two calls for a quiescent check."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._paused = False
        self._parked = 0
        self.active = 0

    def between_calls(self) -> None:
        with self._cv:
            if self._paused:
                self._parked += 1
                self._cv.notify_all()
                self._cv.wait_for(lambda: not self._paused)
                self._parked -= 1

    def leave(self) -> None:
        with self._cv:
            self.active -= 1
            self._cv.notify_all()

    def pause(self, timeout: float) -> bool:
        with self._cv:
            self._paused = True
            return self._cv.wait_for(lambda: self._parked >= self.active, timeout)

    def resume(self) -> None:
        with self._cv:
            self._paused = False
            self._cv.notify_all()


class Shared:
    """What every writer acknowledged (a model of the state the log must hold)."""

    def __init__(self, writers: int) -> None:
        self.pairs_lock = threading.Lock()
        self.pairs = 0  # samples of b"pairs"
        self.next_pair = 0.0
        self.table_lock = threading.Lock()
        self.table = 0  # sub-keys of b"table"
        self.own = [0] * writers  # samples of w<i>
        self.tmp: list[set[bytes]] = [set() for _ in range(writers)]
        self.counts: collections.Counter[str] = collections.Counter()
        self.count_lock = threading.Lock()

    def count(self, what: str, n: int = 1) -> None:
        with self.count_lock:
            self.counts[what] += n


class Writers:
    """The writer threads."""

    def __init__(self, ctx: Soak, n: int, seed: int) -> None:
        self.ctx = ctx
        self.gate = Gate()
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.threads = []
        for i in range(n):
            t = threading.Thread(target=self._run, args=(i, random.Random(seed * 1000 + i)),
                                 name=f"writer-{i}", daemon=True)
            self.threads.append(t)
        self.gate.active = n

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _run(self, i: int, rng: random.Random) -> None:
        try:
            ts = 0.0
            while not self.stop.is_set():
                self.gate.between_calls()
                ts = self._one_call(i, rng, ts)
        except Exception as exc:
            self.errors.append(f"writer {i}: {exc!r}")
        finally:
            self.gate.leave()

    def _one_call(self, i: int, rng: random.Random, ts: float) -> float:
        b, m = self.ctx.backend, self.ctx.shared
        key = own_key(i)
        op = rng.random()
        if op < 0.45:
            ts += 1.0
            b.add_mutable(key, value_for(ts), ts)
            m.own[i] += 1
            m.count("writes")
            m.count("acknowledged")
        elif op < 0.55:
            stamps = [ts + 1.0 + j for j in range(rng.randrange(2, 40))]
            ts = stamps[-1]
            b.add_mutable_many(key, [value_for(t) for t in stamps], stamps)
            m.own[i] += len(stamps)
            m.count("writes")
            m.count("acknowledged", len(stamps))
        elif op < 0.75:
            with m.pairs_lock:
                t0 = m.next_pair
                m.next_pair += 2.0
                b.add_mutable_many(b"pairs", [value_for(t0), value_for(t0 + 1.0)],
                                   [t0, t0 + 1.0])
                m.pairs += 2
                if m.pairs >= ROLL_SAMPLES:
                    b.delete(b"pairs")
                    m.pairs = 0
                    m.count("deletes")
            m.count("writes")
            m.count("acknowledged", 2)
        elif op < 0.9:
            with m.table_lock:
                b.set_indexed(b"table", encode_value((i, ts, op)), value_for(ts))
                m.table += 1
                if m.table >= ROLL_TABLE:
                    b.delete(b"table")
                    m.table = 0
                    m.count("deletes")
            m.count("writes")
            m.count("acknowledged")
        elif op < 0.95 or not m.tmp[i]:
            tmp = b"tmp%d_%d" % (i, rng.randrange(1 << 30))
            b.set_immutable(tmp, value_for(ts))
            m.tmp[i].add(tmp)
            m.count("writes")
            m.count("acknowledged")
        else:
            tmp = sorted(m.tmp[i])[rng.randrange(len(m.tmp[i]))]
            b.delete(tmp)
            m.tmp[i].discard(tmp)
            m.count("writes")
            m.count("deletes")
        if m.own[i] >= ROLL_SAMPLES:
            b.delete(key)
            m.own[i] = 0
            m.count("deletes")
        return ts


# --------------------------------------------------------------------------
# Followers (other processes)
# --------------------------------------------------------------------------
class Follower:
    """A follower process, driven through a line protocol on its stdin and stdout."""

    def __init__(self, script: str, path: str, writers: int) -> None:
        self.proc = subprocess.Popen([sys.executable, script, "--worker", "follower",
                                      "--dir", path, "--writers", str(writers)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.hello = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        # One line answers each request: wait for it, but not forever.
        ready, _, _ = select.select([self.proc.stdout], [], [], FOLLOWER_REPLY_SECONDS + 60)
        if not ready:
            self.proc.kill()
            return {"died": f"no reply within {FOLLOWER_REPLY_SECONDS + 60:.0f} s"}
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            return {"died": err.strip().splitlines()[-1] if err.strip() else "no output"}
        return dict(json.loads(line))

    def ask(self, position: int) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"cmd": "check", "position": position}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return {"died": "pipe closed"}
        return self._read()

    def quit(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(30)
        except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def follower_worker(path: str, writers: int) -> None:
    """A follower: validates updates continuously and answers quiescent checks."""
    out: IO[str] = sys.stdout
    try:
        b = LogBackend(path, readonly=True)
    except Exception as exc:
        print(json.dumps({"open_error": repr(exc)}), file=out, flush=True)
        return
    violations: list[str] = []
    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()  # counts and violations are shared with the watcher
    stop = threading.Event()

    def watch() -> None:
        monitor = b.monitor_keys([b"pairs", *(own_key(i) for i in range(writers))])
        monitor.send(None)
        last = 0
        while not stop.is_set():
            update = monitor.send(0.2)
            if update is None:
                continue
            found = []
            if isinstance(update, MutableKeyUpdate) and \
                    update.value != value_for(update.timestamp):
                found.append(f"torn update of {update.key!r} at {update.timestamp}")
            position = b.position
            if position < last:
                found.append(f"position went back from {last} to {position}")
            last = position
            pairs = b.get_range_arrays(b"pairs", 0.0, INF, False, False)
            if pairs is not None and len(pairs) % 2:
                found.append(f"half a pair visible ({len(pairs)} samples)")
            with lock:
                counts["updates"] += 1
                counts["follower_checks"] += 1
                violations.extend(found)
        monitor.close()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    print(json.dumps({"ready": b.position}), file=out, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] != "check":
            break
        deadline = time.monotonic() + FOLLOWER_REPLY_SECONDS
        while b.position < cmd["position"] and b.follow_error is None \
                and time.monotonic() < deadline:
            time.sleep(0.005)
        problems = [sensor_problem(b, k) for k in b.keys(b"*")
                    if b.key_type(k) == KeyType.MUTABLE]
        error = b.follow_error
        with lock:
            reply = {"position": b.position, "digest": summarize(b),
                     "violations": violations[:] + [p for p in problems if p],
                     "follow_error": None if error is None else describe(error),
                     "counts": dict(counts)}
            violations.clear()
            counts.clear()
        print(json.dumps(reply), file=out, flush=True)
    stop.set()
    watcher.join(5)
    b.close()


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------
class Soak:
    def __init__(self, args: argparse.Namespace, path: str) -> None:
        self.args = args
        self.path = path
        self.shared = Shared(args.writers)
        self.backend = self._open()
        self.violations: list[str] = []
        self.followers = [Follower(__file__, path, args.writers)
                          for _ in range(args.followers)]
        for f in self.followers:
            self._check_hello(f)

    def _open(self) -> LogBackend:
        return LogBackend(self.path, fsync=self.args.fsync, segment_bytes=self.args.segment_bytes,
                          checkpoint_bytes=self.args.segment_bytes * 8, source="soak")

    def violation(self, text: str) -> None:
        self.violations.append(text)
        print(f"VIOLATION: {text}", file=sys.stderr, flush=True)

    def _check_hello(self, f: Follower) -> None:
        if "ready" in f.hello:
            return
        self.violation(f"a follower could not open the log: {f.hello}")

    def restart_follower(self, i: int) -> None:
        self.followers[i].quit()
        self.followers[i] = Follower(__file__, self.path, self.args.writers)
        self._check_hello(self.followers[i])
        self.shared.count("follower_restarts")

    # ------------------------------------------------------------ checks
    def check_model(self, when: str) -> None:
        """The writer's state holds exactly what the writers acknowledged."""
        b, m = self.backend, self.shared
        expected = {b"pairs": m.pairs, b"table": m.table}
        for i in range(self.args.writers):
            expected[own_key(i)] = m.own[i]
        keys = set(b.keys(b"*"))
        tmp = set().union(*m.tmp)
        for key, n in expected.items():
            if key == b"table":
                have = len(b.get(key)[0]) if key in keys else 0
            else:
                rng = b.get_range_arrays(key, 0.0, INF, False, False)
                have = 0 if rng is None else len(rng)
                problem = sensor_problem(b, key)
                if problem:
                    self.violation(f"{when}: {problem}")
            if have != n:
                self.violation(f"{when}: {key!r} holds {have} entries, {n} acknowledged")
        if keys - set(expected) != tmp:
            self.violation(f"{when}: keys {sorted(keys - set(expected) ^ tmp)[:5]} differ "
                           "from the acknowledged immutables")
        for key in tmp:
            if b.get(key)[0] is None:
                self.violation(f"{when}: acknowledged immutable {key!r} is missing")

    def quiescent(self, reopen: bool, final: bool = False) -> None:
        writers = self.writers
        if not writers.gate.pause(60):
            self.violation("the writers did not park within 60 s")
            writers.gate.resume()
            return
        try:
            self.shared.count("quiescent_checks")
            self.check_model("quiescent point")
            position = self.backend.position
            digest = summarize(self.backend)
            if reopen:
                self.backend.close()
                self.backend = self._open()
                self.shared.count("reopens")
                if summarize(self.backend) != digest:
                    self.violation("reopening the writer changed the state")
                self.check_model("after reopen")
            try:
                report = verify_log(self.path)
            except Exception as exc:
                self.violation(f"verify_log raised {describe(exc)}")
            else:
                self.shared.count("verifies")
                if not report.ok:
                    self.violation(f"verify_log: {report.problems[:3]}")
            for i, f in enumerate(self.followers):
                self._check_follower(i, f, position, digest, final)
        finally:
            writers.gate.resume()

    def _check_follower(self, i: int, f: Follower, position: int, digest: str,
                        final: bool) -> None:
        reply = f.ask(position)
        if "died" in reply:
            self.violation(f"follower {i} died: {reply['died']}")
            self.restart_follower(i)
            return
        for name, n in reply["counts"].items():
            self.shared.count(name, n)
        for v in reply["violations"]:
            self.violation(f"follower {i}: {v}")
        error = reply["follow_error"]
        if error is not None:
            self.violation(f"follower {i} stopped: {error}")
            if not final:
                self.restart_follower(i)
            return
        if reply["position"] != position:
            self.violation(f"follower {i} at {reply['position']}, writer at {position}")
        elif reply["digest"] != digest:
            self.violation(f"follower {i} differs from the writer at position {position}")
        else:
            self.shared.count("follower_agreements")

    # -------------------------------------------------------------- run
    def run(self) -> None:
        args = self.args
        self.writers = Writers(self, args.writers, args.seed)
        rng = random.Random(args.seed)
        start = time.monotonic()
        end = start + args.seconds
        due = {"checkpoint": start + 0.3, "seal": start + 0.6, "prune": start + 1.0,
               "check": start + args.check_every, "restart": start + 2 * args.check_every}
        checks = 0
        self.writers.start()
        while time.monotonic() < end and not self.violations:
            time.sleep(0.02)
            now = time.monotonic()
            if now >= due["checkpoint"]:
                self.maintain("checkpoints", self.backend.checkpoint)
                due["checkpoint"] = now + rng.uniform(0.2, 0.8) * args.check_every
            if now >= due["seal"]:
                self.while_writing("seals", self.backend.seal)
                due["seal"] = time.monotonic() + rng.uniform(0.3, 1.0) * args.check_every
            if now >= due["prune"]:
                segments = list_segments_of(self.path)
                if len(segments) > 4:
                    self.while_writing("prunes", functools.partial(self.backend.prune,
                                                                   before=segments[-3]))
                due["prune"] = time.monotonic() + rng.uniform(0.5, 1.5) * args.check_every
            if now >= due["check"]:
                checks += 1
                self.quiescent(reopen=checks % 3 == 0)
                self._progress(now - start)
                due["check"] = time.monotonic() + args.check_every
            if now >= due["restart"] and self.followers:
                self.restart_follower(rng.randrange(len(self.followers)))
                due["restart"] = now + 3 * args.check_every
        self.writers.stop.set()
        for t in self.writers.threads:
            t.join(60)
        for error in self.writers.errors:
            self.violation(error)
        self.quiescent(reopen=True, final=True)
        self._progress(time.monotonic() - start)

    def maintain(self, what: str, func: Callable[[], Any]) -> None:
        """Run a maintenance call alongside the writers; any exception is a violation."""
        try:
            func()
        except Exception as exc:
            self.violation(f"{what}: {exc!r}")
        else:
            self.shared.count(what)

    def while_writing(self, what: str, func: Callable[[], Any]) -> None:
        """seal() or prune() alongside the writers; a call that does not return in
        SEAL_SECONDS is a violation -- retried with the writers parked, so the report
        says whether it was stuck for good or only while they wrote."""
        call = threading.Thread(target=self.maintain, args=(what, func), daemon=True)
        call.start()
        call.join(SEAL_SECONDS)
        if not call.is_alive():
            return
        if not self.writers.gate.pause(60):
            self.violation("the writers did not park within 60 s")
        call.join(120)
        self.writers.gate.resume()
        if call.is_alive():
            self.violation(f"{what}: the call does not return even with the writers parked")
        else:
            self.violation(f"{what}: returned only once the writers were parked "
                           f"(waited {SEAL_SECONDS:.0f} s while they wrote)")

    def _progress(self, elapsed: float) -> None:
        c = self.shared.counts
        print(f"[{elapsed:7.1f} s] position {self.backend.position}, writes {c['writes']}, "
              f"checks {c['quiescent_checks']}, follower agreements "
              f"{c['follower_agreements']}, violations {len(self.violations)}",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        for f in self.followers:
            f.quit()
        self.backend.close()


def list_segments_of(path: str) -> list[int]:
    from telstate_log.storage._fileio import OsFileSystem

    return [first for first, _ in list_segments(OsFileSystem(), path)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to run (5)")
    parser.add_argument("--writers", type=int, default=2, help="writer threads (2)")
    parser.add_argument("--followers", type=int, default=2, help="follower processes (2)")
    parser.add_argument("--fsync", default="interval", choices=("always", "interval", "never"))
    parser.add_argument("--segment-bytes", type=int, default=4096,
                        help="segment size: small means many rotations (4096)")
    parser.add_argument("--check-every", type=float, default=None,
                        help="seconds between quiescent checks (default: seconds / 6, 0.5..30)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", help="log directory (default: a temporary one, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the log directory")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON too")
    parser.add_argument("--worker", choices=("follower",), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "follower":
        follower_worker(args.dir, args.writers)
        return 0
    if args.check_every is None:
        args.check_every = min(30.0, max(0.5, args.seconds / 6))
    tmp = None
    if args.dir is None:
        tmp = tempfile.mkdtemp(prefix="soak-")
        args.dir = os.path.join(tmp, "log")
    soak = Soak(args, args.dir)
    try:
        soak.run()
    finally:
        soak.close()
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    counts = dict(soak.shared.counts)
    print(f"soak: {args.seconds:.0f} s, {args.writers} writers, {args.followers} followers, "
          f"fsync={args.fsync}, segment_bytes={args.segment_bytes}")
    for name in sorted(counts):
        print(f"  {name:22} {counts[name]}")
    print(f"  violations             {len(soak.violations)}")
    for v in soak.violations[:20]:
        print(f"    {v}")
    if args.json:
        print(json.dumps({"counts": counts, "violations": soak.violations}))
    return 1 if soak.violations else 0


if __name__ == "__main__":
    sys.exit(main())
