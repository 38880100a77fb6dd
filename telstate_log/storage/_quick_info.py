"""What a reader would open, from the newest checkpoint's summary alone (for ``info``).

Theory of operation
-------------------
A read-only open (:func:`~telstate_log.storage._open.recover`) loads the
newest usable checkpoint and replays the log after its resume point.  When
nothing follows that point -- the segment it names is the newest one and
ends exactly there -- the replay applies nothing, so the state opened is the
checkpoint's, and its summary
(:mod:`telstate_log.storage._checkpoint_summary`) describes it.
:func:`current_summary` returns that summary only in this case, after
checking it: the trailer's and the summary's own CRCs, the log id of the
oldest and of the newest segment, the newest segment's header.  Anything
else -- no checkpoint, a checkpoint written before summaries, events after
it (a writer killed after its last checkpoint, or one still writing), any
damage -- gives None, and the caller opens the log as before.  A writer
appending meanwhile is no different from one appending just after an open.

:func:`first_recorded` reads the recording time of the oldest event still
in the segments, as an open log's ``events(first, first)`` does.
"""

from __future__ import annotations

import os

from ..core import _log_format as fmt
from ..core._apply import Tables
from ._checkpoint import CheckpointError, list_checkpoints
from ._checkpoint_load import read_summary
from ._checkpoint_summary import Summary
from ._fileio import FileSystem
from ._history import EventReader
from ._recovery import list_segments

__all__ = ["current_summary", "first_recorded"]


def _log_id(fs: FileSystem, path: str, first: int, name: str) -> bytes | None:
    header = fmt.parse_header(fs.read(os.path.join(path, name), 0, fmt.HEADER_SIZE))
    if isinstance(header, str) or header.first_position != first:
        return None
    return header.log_id


def current_summary(fs: FileSystem, path: str) -> Summary | None:
    """The summary of the state a read-only open of `path` would yield now, if the
    newest checkpoint holds it (see module docstring); else None."""
    segments = list_segments(fs, path)
    checkpoints = list_checkpoints(path)
    if not segments or not checkpoints:
        return None
    try:
        log_id = _log_id(fs, path, *segments[0])
        if log_id is None or _log_id(fs, path, *segments[-1]) != log_id:
            return None
        summary = read_summary(checkpoints[0].path, log_id)
        if summary is None:
            return None
        seg_first, offset = summary.resume
        last_first, last_name = segments[-1]
        if seg_first != last_first or fs.size(os.path.join(path, last_name)) != offset:
            return None
    except (OSError, CheckpointError):
        return None
    return summary


def first_recorded(fs: FileSystem, path: str, first: int, log_id: bytes) -> float | None:
    """When event `first` (the oldest in the segments) was recorded; None if the
    segments do not hold it (LogCorruptError if they are damaged there)."""
    for event in EventReader(fs, path, Tables(), log_id=log_id).events(first, first):
        return event.recorded
    return None
