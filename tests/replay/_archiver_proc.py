"""Archiver processes for the kill -9 loop, forked from a zygote that imported everything.

Starting a Python process that imports the package takes about half a
second; fifty of them would make most of a kill loop.  This zygote imports
once, then forks one archiver per cycle (it starts no thread and opens no
connection itself, so forking it is safe).  Protocol, one line each::

    stdin  "start <trim>" -> stdout "pid <pid>"   (an archiver was forked; trim 0 or 1)
    archiver              -> stdout "ready <pid>" (archive opened and recovered)
    stdin  "reap <pid>"   -> stdout "reaped <pid> <code>" (-N: killed by signal N,
                                                           else its exit status)
    stdin  EOF            -> the zygote exits

Each archiver runs ``Archiver(URL, LOG, trim=..., trim_interval=0.02).follow()``
until it is killed; an error ends it with status 1 and the error on stderr.

Usage: python _archiver_proc.py URL LOG
"""

from __future__ import annotations

import os
import sys
import traceback

from telstate_log.replay import Archiver


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one write: lines of two processes never mix


def _archive(url: str, path: str, trim: bool) -> None:
    try:
        archiver = Archiver(url, path, trim=trim, trim_interval=0.02)
        _say(f"ready {os.getpid()}")
        archiver.follow()
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def main() -> None:
    url, path = sys.argv[1], sys.argv[2]
    while line := sys.stdin.readline():
        words = line.split()
        if words[:1] == ["start"]:
            pid = os.fork()
            if pid == 0:
                _archive(url, path, words[1] == "1")
            _say(f"pid {pid}")
        elif words[:1] == ["reap"]:
            _, status = os.waitpid(int(words[1]), 0)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            _say(f"reaped {words[1]} {code}")


if __name__ == "__main__":
    main()
