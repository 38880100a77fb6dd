"""Who is writing: the identity a writer session records once, with its events.

A segment log records it in a SESSION meta record per segment; a shared log
in a session entry of its stream.  Either way the map is the same: source
label, host, process id, user, start time and package version.
"""

from __future__ import annotations

import getpass
import os
import socket
import time
from typing import Any

from .._version import __version__

__all__ = ["writer_identity"]


def writer_identity(source: str | None) -> dict[str, Any]:
    """The identity of this process as a writer labelled `source`."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name available (containers)
        user = ""
    return {"source": source or "", "host": socket.gethostname(), "pid": os.getpid(),
            "user": user, "started": time.time(), "version": __version__}
