"""What one transaction of a shared-log recorder has decided to observe.

Theory of operation
-------------------
A :class:`~._shared_sink.SharedLogSink` decides, message by message, which
writes the shared log's stream lacks, against the stream's materialised
replica as it was *after* the transaction's ``WATCH``.  Decisions earlier in
the same transaction count as well: an :class:`ObservationBatch` keeps them
(kinds, immutables, sub-keys and samples decided, keys deleted) and answers
reads from them first, then from the replica.  It only needs to know what
the recorder's decisions ask (key type, one immutable, one sub-key, one
sample); a key whose history is in doubt is reconciled whole from its
``DUMP`` with :func:`~._resync.reconcile_key`, which uses the batch as its
backend -- for keys the batch has not touched yet, so its reads of whole
values come straight from the replica (the sink ends the transaction
before such a key otherwise).  Writes to the batch are observations: the
``(kind, key, tail)`` of each ``tslog_observe`` call, in order.  Pure: no
I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core._events import ADD, DELETE, IMMUTABLE, INDEXED
from ..core._stream_format import add_tail, indexed_tail
from ..core._types import IndexedKeyUpdate, KeyType, MutableKeyUpdate

__all__ = ["ObservationBatch"]


class ObservationBatch:
    """One transaction's view: the replica plus the observations decided so far."""

    def __init__(self, replica: Any) -> None:
        self.replica = replica
        self.ops: list[tuple[int, bytes, bytes]] = []
        self.kinds: dict[bytes, KeyType | None] = {}
        self.masked: set[bytes] = set()          # deleted in this batch
        self.immutables: dict[bytes, bytes] = {}
        self.subs: dict[tuple[bytes, bytes], bytes] = {}
        self.samples: set[tuple[bytes, float, bytes]] = set()

    def _observe(self, kind: int, key: bytes, tail: bytes, now: KeyType | None) -> None:
        self.ops.append((kind, key, tail))
        self.kinds[key] = now

    # -------------------------------------------------- reads (replica + batch)
    def key_type(self, key: bytes) -> KeyType | None:
        if key in self.kinds:
            return self.kinds[key]
        kind: KeyType | None = self.replica.key_type(key)
        return kind

    def get(self, key: bytes) -> Any:
        return self.replica.get(key)

    def get_range_arrays(self, *args: Any) -> Any:
        return self.replica.get_range_arrays(*args)

    def immutable(self, key: bytes) -> bytes | None:
        if key in self.immutables or key in self.masked:
            return self.immutables.get(key)
        value: bytes = self.replica.get(key)[0]
        return value

    def sub_value(self, key: bytes, sub_key: bytes) -> bytes | None:
        if (key, sub_key) in self.subs or key in self.masked \
                or self.replica.key_type(key) is None:
            return self.subs.get((key, sub_key))
        value: bytes | None = self.replica.get_indexed(key, sub_key)
        return value

    def has_sample(self, key: bytes, timestamp: float, value: bytes) -> bool:
        if (key, timestamp, value) in self.samples:
            return True
        if key in self.masked:
            return False
        found = self.replica.get_range_arrays(key, timestamp, timestamp, False, True)
        return found is not None and value in found.encoded()

    # ----------------------------------------------------- writes (observed)
    def delete(self, key: bytes) -> None:
        self._observe(DELETE, key, b"", None)
        self.masked.add(key)
        self.immutables.pop(key, None)

    def set_immutable(self, key: bytes, value: bytes) -> None:
        self._observe(IMMUTABLE, key, value, KeyType.IMMUTABLE)
        self.immutables[key] = value

    def set_indexed(self, key: bytes, sub_key: bytes, value: bytes) -> None:
        self._observe(INDEXED, key, indexed_tail(sub_key, value), KeyType.INDEXED)
        self.subs[key, sub_key] = value

    def add_mutable(self, key: bytes, value: bytes, timestamp: float) -> None:
        self._observe(ADD, key, add_tail(value, timestamp), KeyType.MUTABLE)
        self.samples.add((key, timestamp, value))

    def add_mutable_many(self, key: bytes, values: Sequence[bytes] | np.ndarray,
                         timestamps: Any) -> int:
        vals = values.tolist() if isinstance(values, np.ndarray) else list(values)
        for value, stamp in zip(vals, np.asarray(timestamps, np.float64).tolist()):
            self.add_mutable(key, value, stamp)
        return len(vals)

    # --------------------------------------------------------------- decide
    def decide(self, key: bytes, update: Any) -> bool:
        """Observe a confirmed write unless the stream has it; False: reconcile the key."""
        kind = self.key_type(key)
        if isinstance(update, MutableKeyUpdate):
            if kind not in (None, KeyType.MUTABLE):
                return False
            if not self.has_sample(key, update.timestamp, update.value):
                self.add_mutable(key, update.value, update.timestamp)
        elif isinstance(update, IndexedKeyUpdate):
            old = self.sub_value(key, update.sub_key) if kind == KeyType.INDEXED else None
            if kind not in (None, KeyType.INDEXED) or old not in (None, update.value):
                return False
            if old is None:
                self.set_indexed(key, update.sub_key, update.value)
        elif kind is None:
            self.set_immutable(key, update)
        elif kind != KeyType.IMMUTABLE or self.immutable(key) != update:
            return False
        return True
