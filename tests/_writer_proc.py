"""A writer process for crash and follower tests (run with ``python -m``-style path).

Usage: python _writer_proc.py LOG FSYNC COUNT [DELAY] [SEGMENT_BYTES]

Writes samples 0..COUNT-1 of sensor ``k`` (value i at timestamp i) and an
immutable ``done`` at the end, printing each position after the write call
returns ("acknowledged"), flushed, so a parent can kill it at any moment.
"""

from __future__ import annotations

import sys
import time

from telstate_log import TelescopeState
from telstate_log.backends import LogBackend


def main() -> None:
    path, fsync, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    delay = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    segment_bytes = int(sys.argv[5]) if len(sys.argv) > 5 else 1 << 20
    backend = LogBackend(path, fsync=fsync, segment_bytes=segment_bytes,
                         checkpoint_bytes=64 << 10, source="writer-proc")
    ts = TelescopeState(backend)
    start = backend.position
    out = sys.stdout
    out.write(f"ready {start}\n")
    out.flush()
    for i in range(start, start + count):
        ts.add("k", float(i), ts=float(i))
        out.write(f"{i}\n")
        out.flush()
        if delay:
            time.sleep(delay)
    ts["done"] = True
    out.write("done\n")
    out.flush()
    backend.close()


if __name__ == "__main__":
    main()
