"""The writing side of a :class:`~telstate_log.storage._log.Log`, opened after recovery.

Theory of operation
-------------------
After recovery a writer appends to the segment the log ended in (from its
recovered tail), or starts segment 1 of a new log (with a new random log
id), or -- if the last segment is already sealed (a crash lost a newer,
empty one) -- starts the next segment: a sealed segment is never appended
to.  Around the :class:`~telstate_log.storage._event_writer.LogWriter` it
builds the durability policy (group commit, interval timer), the
checkpointer and the sealer, and returns them as :class:`WriterParts`.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from ..core import _log_format as fmt
from ..core._apply import Tables
from ..core._state import State
from ._checkpointer import Checkpointer
from ._durability import Durability
from ._event_writer import LogWriter, create_segment
from ._fileio import FileSystem
from ._identity import writer_identity
from ._recovery import Tail
from ._seal import SealFileError, read_seals
from ._seal_thread import Sealer

__all__ = ["WriterParts", "open_writer", "start_session"]

logger = logging.getLogger("telstate_log")


@dataclass
class WriterParts:
    log_id: bytes
    writer: LogWriter
    durability: Durability
    checkpointer: Checkpointer
    #: None if the seals file is damaged (sealing disabled)
    sealer: Sealer | None


def _is_sealed(fs: FileSystem, path: str, first: int) -> bool:
    try:
        return any(s.first == first for s in read_seals(path, fs))
    except SealFileError:
        return False


def open_writer(fs: FileSystem, path: str, lock: threading.RLock, state: State,
                tables: Tables, tail: Tail, *, fsync: str, fsync_interval: float,
                segment_bytes: int, source: str | None, checkpoint_bytes: int | None,
                flush_interval: float, writer_class: type[LogWriter] = LogWriter
                ) -> WriterParts:
    """Start appending to the recovered log at `path` (see module docstring);
    `writer_class` is LogWriter or, for an archive, its CopyWriter."""
    sync = fsync != "never"
    log_id = tail.log_id
    if tail.segment_first is None:
        log_id = os.urandom(16)
        fd, offset, crc = create_segment(fs, path, 1, log_id, sync=sync)
        first = 1
    elif _is_sealed(fs, path, tail.segment_first):
        # Never append to a sealed segment (after a crash lost a newer,
        # empty one): start the next segment instead.
        assert log_id is not None
        first = state.position + 1
        fd, offset, crc = create_segment(fs, path, first, log_id, sync=sync)
    else:
        assert log_id is not None
        first, offset, crc = tail.segment_first, tail.offset, tail.crc
        fd = fs.open_append(os.path.join(path, fmt.segment_name(first)))
    writer = writer_class(fs, path, log_id, tables, segment_first=first, fd=fd, offset=offset,
                           crc=crc, segment_bytes=segment_bytes, sync_on_rotate=sync,
                           session=writer_identity(source), lock=lock,
                           flush_interval=0.0 if fsync == "always" else flush_interval,
                           position=state.position)
    durability = Durability(writer.sync, lambda: writer.position, durable=state.position,
                            interval=fsync_interval if fsync == "interval" else None,
                            on_fail=writer.fail)
    ckpt = Checkpointer(fs, path, lock, log_id, state, tables, writer, durability,
                        checkpoint_bytes=checkpoint_bytes, sync=sync)
    return WriterParts(log_id, writer, durability, ckpt,
                       _start_sealer(fs, path, log_id, writer, fsync))


def _start_sealer(fs: FileSystem, path: str, log_id: bytes, writer: LogWriter,
                  fsync: str) -> Sealer | None:
    """Seal finished segments in a background thread (see telstate_log.storage._seal_thread)."""
    try:
        seals = read_seals(path, fs)
    except SealFileError as exc:
        logger.error("not sealing segments: %s", exc)
        return None
    # Under "never", segments were finished without syncs; writing the
    # seals syncs the directory, which would make their names durable
    # before their data: make everything written so far durable first.
    sealer = Sealer(fs, path, log_id, seals, writer.sync if fsync == "never" else None)
    writer.rotated = sealer.enqueue
    return sealer


def start_session(writer: LogWriter, source: str | None) -> None:
    """Record the writer's following events under a new session labelled `source`."""
    writer.new_session(writer_identity(source))
