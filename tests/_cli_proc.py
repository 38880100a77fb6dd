"""The command-line tool as a child process, started with a known SIGINT disposition.

A child inherits whether SIGINT is ignored.  A non-interactive shell starts
a background job (``pytest ... &``) with SIGINT ignored, and the tool keeps
it ignored then, as Python itself does -- so a test that stops a command
with SIGINT must not depend on how the test run itself was started.
:func:`cli_command` sets the disposition in the child explicitly, then execs
``python -m telstate_log`` in the same process (same pid, so signals sent to
the Popen reach the command itself).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

_EXEC = ("import os, signal, sys; "
         "signal.signal(signal.SIGINT, "
         "signal.SIG_IGN if sys.argv[1] == 'ignored' else signal.SIG_DFL); "
         "os.execv(sys.executable, [sys.executable, '-m', 'telstate_log', *sys.argv[2:]])")


def cli_command(*argv: str, sigint_ignored: bool = False) -> list[str]:
    """Argv for ``python -m telstate_log ARGV...`` started with SIGINT at its default
    (as from a terminal) or ignored (as a shell's background job), whatever this
    test run inherited."""
    return [sys.executable, "-c", _EXEC, "ignored" if sigint_ignored else "default", *argv]


def ignores_sigint(pid: int) -> bool:
    """Whether process `pid` has SIGINT ignored (Linux: /proc/PID/status, SigIgn)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGINT - 1) & 1)
    raise AssertionError(f"/proc/{pid}/status has no SigIgn line")


@contextlib.contextmanager
def killed_on_error(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """Kill `proc` on leaving the block if it is still running (a failed wait)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()


def terminate(proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """Stop a following command with SIGTERM, as a service manager would; returns its
    stdout and stderr once it has exited, which it must do with status 0."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out, err
