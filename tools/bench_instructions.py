"""Instructions per write on the telescope-shaped workload, against katsdptelstate.

Wall-clock ratios on a shared VM drift by 5-10% from run to run, which hides
a change worth a few percent.  The instructions a write executes do not drift:
this tool counts them with valgrind's callgrind (``--tool=callgrind``, total
instructions of a process) for each backend, as the difference between a
process that writes the workload of :mod:`bench_telescope` and the same
process without the writes (imports, workload generation and opening the
backend cancel out), divided by the number of writes.  ``PYTHONHASHSEED`` is
fixed so both processes hash alike; repeated runs agree within about 0.2%.

Instructions are a proxy for time, not time: cache misses, branch
mispredictions and system calls cost differently.  On this project's workload
the ratio of instructions has tracked the ratio of wall-clock times within a
few percent.  Needs valgrind (``apt-get install valgrind``); each backend takes
about half a minute at the default size.

    python tools/bench_instructions.py                    # 8 dishes x 0.25 h
    python tools/bench_instructions.py --backends log     # only ours, log backend
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ("katsdptelstate", "memory", "log")


def child(backend: str, write: bool, dishes: int, hours: float, seed: int) -> None:
    """Open `backend` and, if `write`, replay the workload into it (run under valgrind)."""
    sys.path.insert(0, HERE)
    import bench_telescope as bt

    from telstate_log.backends import LogBackend, MemoryBackend

    bt.load_oracle()
    work = bt.make_workload(dishes, hours, seed)
    tmp = tempfile.mkdtemp(prefix="bench-instructions-")
    try:
        if backend == "katsdptelstate":
            ts = bt.kt_state()
        elif backend == "memory":
            ts = bt.our_state(MemoryBackend())
        else:
            ts = bt.our_state(LogBackend(os.path.join(tmp, "log")))
        if write:
            bt.replay(ts, work.ops)
        if backend == "log":
            bt.close(ts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(len(work.ops))


def count(backend: str, write: bool, args: argparse.Namespace) -> tuple[int, int]:
    """(instructions, writes) of one child process under callgrind."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
           sys.executable, os.path.abspath(__file__), "--child", backend,
           "--dishes", str(args.dishes), "--hours", str(args.hours), "--seed", str(args.seed)]
    if write:
        cmd.append("--write")
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    match = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or match is None:
        sys.exit(f"{backend}: valgrind failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return int(match.group(1)), int(proc.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dishes", type=int, default=8)
    parser.add_argument("--hours", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.write, args.dishes, args.hours, args.seed)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind not found (apt-get install valgrind)")
    per_write: dict[str, float] = {}
    for backend in args.backends:
        total, writes = count(backend, True, args)
        base, _ = count(backend, False, args)
        per_write[backend] = (total - base) / writes
        print(f"{backend:15s} {per_write[backend]:9,.0f} instructions per write "
              f"({writes:,} writes, {args.dishes} dishes x {args.hours:g} h)", flush=True)
    kt = per_write.get("katsdptelstate")
    if kt is not None:
        for backend in ("memory", "log"):
            if backend in per_write:
                print(f"katsdptelstate / {backend}: {kt / per_write[backend]:.2f}x")


if __name__ == "__main__":
    main()
