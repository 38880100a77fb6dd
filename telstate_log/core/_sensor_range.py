"""A read-only slice of a sensor column, safe to use after the lock is released.

:class:`SensorRange` is what columnar reads return (``get_range_arrays``,
``snapshot_items``): views of a column's immutable prefix (see
:mod:`telstate_log.core._sensor`) or copies, never live mutable state, with the
bulk accessors the front end and the exporters use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ._sensor import SensorColumn

__all__ = ["SensorRange"]


class SensorRange:
    """Samples ``[i0, i1)`` of a column, safe to read without the owner's lock.

    Holds views of the column's immutable prefix (see the module invariant)
    or copies, never live mutable state.
    """

    __slots__ = ("_float", "_prefix", "_vals", "_values", "timestamps")

    def __init__(self, col: SensorColumn, i0: int, i1: int) -> None:
        #: float64 timestamps of the samples
        self.timestamps: np.ndarray = col._ts[i0:i1]
        self._vals = col._vals[i0:i1] if col._vals is not None else None
        self._prefix = col._prefix
        self._values: list[bytes] | None = None if col._vals is not None else col.values(i0, i1)
        self._float = col.float_values(i0, i1)

    def __len__(self) -> int:
        return len(self.timestamps)

    def encoded(self) -> list[bytes]:
        """The encoded values."""
        if self._values is not None:
            return self._values
        assert self._vals is not None
        raw = self._vals.tobytes()
        w = self._vals.dtype.itemsize
        p = self._prefix
        return [p + raw[j:j + w] for j in range(0, len(raw), w)]

    def last(self) -> tuple[bytes, float]:
        """The last sample: ``(encoded value, timestamp)`` (the range must not be empty)."""
        i = len(self.timestamps) - 1
        ts = float(self.timestamps[i])
        if self._values is not None:
            return self._values[i], ts
        assert self._vals is not None
        return self._prefix + self._vals[i].tobytes(), ts

    def floats(self) -> np.ndarray | None:
        """The values as float64 if every one is a msgpack double, else None."""
        return self._float

    def fixed(self) -> tuple[bytes, np.ndarray] | None:
        """``(shared prefix, V<width> array of the rest)`` for fixed-width values, else None."""
        if self._vals is None:
            return None
        return self._prefix, self._vals
