"""Retention: drop old segments, compacting the history they held into a checkpoint.

Theory of operation
-------------------
A log grows forever unless old segments are dropped.  :func:`prune_log`
removes whole finished segments that end before a position (or were
finished longer ago than an age), crash-safely and in this order:

1. in memory, under the log's lock: the state's ``history_from``
   becomes P (the first position kept) and graveyard entries deleted before
   P are dropped -- nothing at or after P needs them;
2. a checkpoint of the current state (recording ``history_from = P``) is
   written and synced: from now on the log opens from it;
3. the file ``pruned`` records P (written crash-safely), so ``verify`` can
   tell segments pruned on purpose from segments that went missing;
4. the old segments are removed and the directory synced.

Only segments the writer has sealed are removed (a segment left unsealed by
a failed seal is kept, and the cut stops there): once its bytes were gone it
could never be sealed, and the chain would skip it.

A crash between any two steps leaves a log that opens to the same state:
before step 2 nothing changed on disk; after it the checkpoint covers the
segments being removed.  Time travel, history and audit queries reaching
before P raise :exc:`HistoryUnavailableError` ("history pruned") instead of
answering wrongly.  The seals of pruned segments stay in ``seals``, so the
chain still runs from the genesis to the head; their content can no longer
be re-verified: ``verify`` takes them as given, never accepts a kept head
hash that matches one of them ("cannot be verified: pruned"), and checks
only the segments still present (see :mod:`telstate_log.storage._seal`).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..core import _log_format as fmt
from ..core._apply import Tables
from ..core._errors import LogError
from ..core._state import State
from ._fileio import FileSystem, replace_file
from ._recovery import list_segments

__all__ = ["PRUNED_FILE", "PruneReport", "prune_log", "read_pruned"]

PRUNED_FILE = "pruned"


@dataclass
class PruneReport:
    history_from: int = 0
    removed: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    checkpoint: str | None = None
    #: finished segments kept because they are not sealed yet (a seal failed;
    #: ``seal()`` retries): removing them would break the chain
    unsealed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_pruned(fs: FileSystem, path: str) -> int:
    """The position before which the log was pruned (0 if never)."""
    p = os.path.join(path, PRUNED_FILE)
    if not fs.exists(p):
        return 0
    try:
        return int(fs.read(p).decode("ascii").strip())
    except ValueError:
        return 0


def _write_pruned(fs: FileSystem, path: str, position: int) -> None:
    replace_file(fs, path, PRUNED_FILE, f"{position}\n".encode())


def _cut(fs: FileSystem, path: str, before: int | None,
         older_than: float | None) -> list[tuple[int, str, int]]:
    """(first, name, next first) of the segments to drop (never the newest)."""
    segs = list_segments(fs, path)
    now = time.time()
    out = []
    for (first, name), (nxt, nxt_name) in itertools.pairwise(segs):
        drop = True
        if before is not None and nxt - 1 >= before:
            drop = False
        if older_than is not None:
            header = fmt.parse_header(fs.read(os.path.join(path, nxt_name), 0,
                                              fmt.HEADER_SIZE))
            finished = header.created if not isinstance(header, str) else now
            if finished > now - older_than:
                drop = False
        if not drop:
            break
        out.append((first, name, nxt))
    return out


def prune_log(fs: FileSystem, path: str, lock: Any, state: State, tables: Tables, *,
              sealed: Callable[[], set[str]] | None,
              checkpoint: Callable[[], str | None],
              before: int | None = None, older_than: float | None = None) -> PruneReport:
    """Drop finished segments ending before `before` / finished more than
    `older_than` seconds ago (see the module docstring).

    `state` and `tables` are the writer's (changed under `lock`); `sealed`
    names the segments sealed so far (None: no sealer, keep nothing back);
    `checkpoint` writes and syncs a checkpoint of the current state.
    """
    if before is None and older_than is None:
        raise ValueError("give before (a position) and/or older_than (seconds)")
    report = PruneReport()
    with lock:
        drop = _cut(fs, path, before, older_than)
        if sealed is not None:  # only what is sealed: the chain never skips one
            names = sealed()
            n = next((i for i, (_, name, _) in enumerate(drop) if name not in names),
                     len(drop))
            report.unsealed = [name for _, name, _ in drop[n:]]
            drop = drop[:n]
        if not drop:
            report.history_from = state.history_from
            return report
        cut = drop[-1][2]
        t = tables
        saved = (state.history_from, dict(state.graveyard),
                 (t.time_pos, t.time_rec, t.time_seg, t.time_off))
        state.history_from = max(state.history_from, cut)
        for key in list(state.graveyard):
            kept = [(e, d) for e, d in state.graveyard[key] if d >= cut]
            if kept:
                state.graveyard[key] = kept
            else:
                del state.graveyard[key]
        keep = [i for i, p in enumerate(t.time_pos) if p >= cut]
        t.time_pos = [t.time_pos[i] for i in keep]
        t.time_rec = [t.time_rec[i] for i in keep]
        t.time_seg = [t.time_seg[i] for i in keep]
        t.time_off = [t.time_off[i] for i in keep]
    report.history_from = cut
    try:
        # The pruned log depends on this checkpoint: it is always synced.
        report.checkpoint = checkpoint()
    except BaseException:
        with lock:  # nothing was removed: put the history back
            state.history_from, state.graveyard = saved[0], saved[1]
            t.time_pos, t.time_rec, t.time_seg, t.time_off = saved[2]
        raise
    try:
        _write_pruned(fs, path, cut)
        for _first, name, _next in drop:
            seg = os.path.join(path, name)
            report.bytes_freed += fs.size(seg)
            fs.remove(seg)
            report.removed.append(name)
        fs.sync_dir(path)
    except OSError as exc:
        # The checkpoint already covers the cut: the log opens to the same
        # state whichever segments are left; a later prune finishes the job.
        raise LogError(f"pruning stopped part-way ({exc}); the log is consistent, "
                       "prune again to finish") from exc
    return report
