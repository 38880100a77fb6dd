"""Opening a log: newest usable checkpoint plus the segments after it.

Theory of operation
-------------------
:func:`recover` tries the checkpoints newest first: load one (its own CRCs
must hold and its log id must match), then replay the segments from its
resume point.  If every checkpoint fails, it replays the whole log.  A
checkpoint is only set aside (renamed ``.bad``) once the log has opened
without it -- a replay that fails after a checkpoint may be damage in the
log itself, and then the checkpoints are kept and the damage is reported.
A pruned log cannot be rebuilt without a checkpoint and says so.
Interrupted segment creations (``*.seg.tmp``, ``synced-segment.tmp``) are
removed by a writer.
"""

from __future__ import annotations

import logging
import os

from ..core import _log_format as fmt
from ..core._apply import Applier, Tables
from ..core._errors import LogCorruptError
from ..core._state import State
from ._checkpoint import CheckpointError, list_checkpoints
from ._checkpoint_load import load_checkpoint
from ._fileio import FileSystem
from ._recovery import Tail, finish_recovery, list_segments, replay_segments
from ._retention import read_pruned

__all__ = ["first_log_id", "recover"]

logger = logging.getLogger("telstate_log")


def first_log_id(fs: FileSystem, path: str) -> bytes | None:
    """The log id in the oldest segment's header (None if there is none)."""
    segs = list_segments(fs, path)
    if not segs:
        return None
    header = fmt.parse_header(fs.read(os.path.join(path, segs[0][1]), 0, fmt.HEADER_SIZE))
    return None if isinstance(header, str) else header.log_id


def recover(fs: FileSystem, path: str, *, readonly: bool,
            use_checkpoints: bool) -> tuple[State, Tables, Tail]:
    """The state, tables and tail of the log at `path` (see module docstring)."""
    mode = "read" if readonly else "write"
    failed: list[tuple[str, BaseException]] = []
    if use_checkpoints:
        log_id = first_log_id(fs, path)
        for cp in list_checkpoints(path):
            try:
                state, tables, resume = load_checkpoint(cp.path, log_id)
                tail = replay_segments(fs, path, Applier(state, tables), resume=resume,
                                       mode=mode)
                if tail.segment_first is None:
                    raise CheckpointError("log has no segments")
                _accept(fs, path, tail, failed, readonly)
                return state, tables, tail
            except FileNotFoundError:
                continue  # a live writer replaced it since it was listed (readers)
            except (CheckpointError, LogCorruptError) as exc:
                logger.warning("ignoring checkpoint %s: %s", cp.path, exc)
                failed.append((cp.path, exc))
    state = State(keep_history=True)
    tables = Tables()
    pruned = read_pruned(fs, path)
    if pruned > 1:
        # Without a checkpoint a pruned log cannot be rebuilt: report the
        # real damage (from replaying after a checkpoint) if there was one.
        for _path, error in failed:
            if isinstance(error, LogCorruptError):
                raise error
        raise LogCorruptError(f"the log was pruned before position {pruned} and no valid "
                              "checkpoint covers the pruned part", path)
    # A full replay that fails shows the damage is in the log, not in the
    # checkpoints: then they are kept and the error propagates.
    tail = replay_segments(fs, path, Applier(state, tables), mode=mode)
    _accept(fs, path, tail, failed, readonly)
    return state, tables, tail


def _accept(fs: FileSystem, path: str, tail: Tail, failed: list[tuple[str, BaseException]],
            readonly: bool) -> None:
    """A writer's open succeeded: only now change files (a refused open changes none).

    Interrupted segment creations are removed, the torn tail is cut, and
    checkpoints proven unusable (the log opened without them) are renamed.
    """
    if readonly:
        return
    for name in fs.listdir(path):
        if name.endswith(".seg.tmp") or name == fmt.SYNCED_FILE + ".tmp":
            # an interrupted segment creation
            fs.remove(os.path.join(path, name))
    finish_recovery(fs, path, tail)
    for cp_path, _exc in failed:
        try:  # never try it again; keep it for forensics
            fs.rename(cp_path, cp_path + ".bad")
        except OSError:
            pass
