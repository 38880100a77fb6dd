"""Export and import of telescope state as Redis RDB files and DUMP payloads; projecting
a log into a live Redis, recording a live Redis into a log, paced replay, and
archiving a shared log's stream into a log (:class:`Archiver`).

The names are imported on first use, so that importing this package loads
neither redis-py nor the storage engine until they are needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core._lazy import lazy_names

if TYPE_CHECKING:
    from ._archiver import Archiver
    from ._export import ExportStats, export_backend, export_rdb
    from ._marker import (
        DEFAULT_MARKER_DB,
        DEFAULT_MARKER_KEY,
        ForeignDatabaseError,
        ProjectionError,
        client_for_url,
    )
    from ._paced import ReplayStats, paced_events, replay_into
    from ._projector import Projector, ProjectorStatus
    from ._rdb_load import ImportStats, apply_rdb, import_rdb_to_log, read_rdb
    from ._recorder import Recorder, RecorderStats
    from ._shared_sink import SharedLogSink

__all__ = [
    "DEFAULT_MARKER_DB",
    "DEFAULT_MARKER_KEY",
    "Archiver",
    "ExportStats",
    "ForeignDatabaseError",
    "ImportStats",
    "ProjectionError",
    "Projector",
    "ProjectorStatus",
    "Recorder",
    "RecorderStats",
    "ReplayStats",
    "SharedLogSink",
    "apply_rdb",
    "client_for_url",
    "export_backend",
    "export_rdb",
    "import_rdb_to_log",
    "paced_events",
    "read_rdb",
    "replay_into",
]

_HOMES = {
    "Archiver": "_archiver",
    "DEFAULT_MARKER_DB": "_marker", "DEFAULT_MARKER_KEY": "_marker",
    "ForeignDatabaseError": "_marker",
    "ProjectionError": "_marker", "Projector": "_projector", "ProjectorStatus": "_projector",
    "Recorder": "_recorder", "RecorderStats": "_recorder", "ReplayStats": "_paced",
    "SharedLogSink": "_shared_sink",
    "paced_events": "_paced", "replay_into": "_paced", "export_backend": "_export",
    "export_rdb": "_export", "ExportStats": "_export",
    "ImportStats": "_rdb_load", "import_rdb_to_log": "_rdb_load",
    "apply_rdb": "_rdb_load", "read_rdb": "_rdb_load", "client_for_url": "_marker",
}


__getattr__ = lazy_names(__name__, {name: f".{home}" for name, home in _HOMES.items()})
