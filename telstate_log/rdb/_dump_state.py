"""DUMP payloads of materialised-state entries (the Redis view of a key).

Redis's representation -- a sensor as a zset of lex-packed members, an
indexed key as a hash -- is built here, at the edge, from the state's own
columns; the in-memory indexes never hold it.
"""

from __future__ import annotations

from ..core._sensor import SensorColumn
from ..core._state import Immutable, Indexed
from ._dump import dump_hash, dump_string, dump_zset

__all__ = ["dump_entry", "packed_members"]

def packed_members(col: SensorColumn, i0: int = 0, i1: int | None = None) -> list[bytes]:
    """Zset members (8-byte big-endian timestamp + value) of samples ``[i0, i1)``."""
    col.settle()
    i1 = len(col) if i1 is None else i1
    ts = col.timestamps(i0, i1).astype(">f8").tobytes()
    values = col.values(i0, i1)
    return [ts[8 * i:8 * i + 8] + v for i, v in enumerate(values)]

def dump_entry(entry: Immutable | Indexed | SensorColumn) -> bytes:
    """The DUMP payload of one key's entry."""
    if type(entry) is Immutable:
        return dump_string(entry.value)
    if type(entry) is Indexed:
        return dump_hash(entry.values)
    assert isinstance(entry, SensorColumn)
    return dump_zset(packed_members(entry))

