"""The segment log on disk: the :class:`~._log.Log` object and the parts it is built from.

The public names here are what the layers above read directly (the command
line's ``info``, ``verify``, ``seal`` and ``import``): listing a log's
segments, checkpoints and seals, the summary of what it holds (for
``info``), whether a writer holds it, creating one that is removed again on
failure.  They are imported on first use, so that
importing the package (as every module of it does) loads nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core._lazy import lazy_names

if TYPE_CHECKING:
    from ._checkpoint import list_checkpoints
    from ._checkpoint_summary import Summary
    from ._fileio import OsFileSystem
    from ._frame_walk import count_sessions
    from ._lockfile import writer_active
    from ._new_log import NewLog
    from ._quick_info import current_summary, first_recorded
    from ._recovery import list_segments
    from ._retention import read_pruned
    from ._seal import PRUNED, HeadCheck, SealFileError, pruned_prefix, read_seals

__all__ = [
    "PRUNED",
    "HeadCheck",
    "NewLog",
    "OsFileSystem",
    "SealFileError",
    "Summary",
    "count_sessions",
    "current_summary",
    "first_recorded",
    "list_checkpoints",
    "list_segments",
    "pruned_prefix",
    "read_pruned",
    "read_seals",
    "writer_active",
]

_HOMES = {
    "list_checkpoints": "_checkpoint", "OsFileSystem": "_fileio",
    "count_sessions": "_frame_walk", "Summary": "_checkpoint_summary",
    "current_summary": "_quick_info", "first_recorded": "_quick_info",
    "writer_active": "_lockfile", "NewLog": "_new_log", "list_segments": "_recovery",
    "read_pruned": "_retention", "PRUNED": "_seal", "HeadCheck": "_seal",
    "SealFileError": "_seal", "pruned_prefix": "_seal", "read_seals": "_seal",
}


__getattr__ = lazy_names(__name__, {name: f".{home}" for name, home in _HOMES.items()})
