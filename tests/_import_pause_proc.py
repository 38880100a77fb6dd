"""The command-line tool in a child process that stops at a known point of an import.

Usage: python _import_pause_proc.py STAGE ARGV...

Runs ``telstate-log ARGV...`` (an ``import``) with Python's own SIGINT
handler installed, whatever this process inherited (a shell's background job
starts with SIGINT ignored).  The first time the import reports progress for
STAGE (``read`` or ``import``) it prints ``paused DONE`` on stdout and blocks
reading stdin: a test then knows the import is under way at that point --
for ``import``, with events already written -- and interrupts it with SIGINT
there, with no timing guesses.  Closing stdin instead lets it go on.
"""

from __future__ import annotations

import signal
import sys

from telstate_log.cli import _main as _cli
from telstate_log.cli._progress_bar import Progress

_report = Progress.__call__


def main() -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stage, argv = sys.argv[1], sys.argv[2:]
    paused = False

    def pausing(self: Progress, at: str, done: int, total: int | None = None) -> None:
        nonlocal paused
        if at == stage and not paused:
            paused = True
            sys.stdout.write(f"paused {done}\n")
            sys.stdout.flush()
            sys.stdin.buffer.read()
        _report(self, at, done, total)

    Progress.__call__ = pausing  # type: ignore[method-assign]
    return _cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
