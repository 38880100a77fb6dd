"""A projector process for kill tests: python _projector_proc.py LOG URL KEYS_PER_BATCH DELAY.

Backfills the log (opened read-only) into the Redis database at URL with
KEYS_PER_BATCH keys per transaction, printing ``batch <keys done>`` after
every committed transaction (then sleeping DELAY seconds, so a parent can
kill it mid-backfill) and ``done <position>`` at the end.
"""

from __future__ import annotations

import sys
import time

from telstate_log.backends import LogBackend
from telstate_log.replay import Projector


def main() -> None:
    path, url, keys, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    backend = LogBackend(path, readonly=True, follow=False)

    def progress(stage: str, done: int, total: int | None) -> None:
        sys.stdout.write(f"batch {done}\n")
        sys.stdout.flush()
        time.sleep(delay)

    projector = Projector.from_url(backend, url, batch_events=keys, progress=progress)
    position = projector.backfill()
    sys.stdout.write(f"done {position}\n")
    sys.stdout.flush()
    backend.close()


if __name__ == "__main__":
    main()
