"""Import an RDB file into a log, creating the log if it is missing.

The import itself (read and validate, plan, apply) is
:mod:`telstate_log.backends._rdb_import`; this adds the log's life cycle: a
log created for the import is removed again if the import fails, so a failed
import into a new log leaves nothing behind (:mod:`telstate_log.storage._new_log`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from ..backends._log import LogBackend
from ..backends._rdb_import import (
    FileArg,
    ImportStats,
    RdbContents,
    apply_rdb,
    import_rdb,
    load_rdb_into,
    read_rdb,
)
from ..core._progress import ProgressCallback
from ..storage._new_log import NewLog

__all__ = ["ImportStats", "RdbContents", "apply_rdb", "import_rdb", "import_rdb_to_log",
           "load_rdb_into", "read_rdb"]


def import_rdb_to_log(file: FileArg, path: str | os.PathLike[str], *,
                      source: str | None = None, db: int | None = None,
                      progress: ProgressCallback | None = None,
                      clock: Callable[[], float] = time.time,
                      **log_options: Any) -> ImportStats:
    """Import an RDB file into the log at `path`, creating the log if it is missing.

    The file is read and validated first (see :func:`import_rdb` for the
    arguments); then the log is opened, or created with the directories it
    needs, with `log_options` (``fsync``, ``fs``, ... of
    :class:`~telstate_log.backends.LogBackend`).  If anything fails after
    that -- a conflict, a full disk, an interrupt, closing the log -- a log
    created here is removed again, with the directories made for it, and the
    error re-raised: a failed import into a new log leaves nothing.
    """
    contents = read_rdb(file, db=db, progress=progress, clock=clock)
    with NewLog(path) as new:
        new.make()
        with LogBackend(new.path, **log_options) as log:
            stats = apply_rdb(log, contents, source=source, progress=progress)
        new.keep()
    return stats
