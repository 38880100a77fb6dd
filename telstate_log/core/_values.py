"""Fixed-width value batches: the shapes the bulk paths pass values in.

Values travel either as a list of encoded ``bytes`` or, when they all have
the same length, as a ``V<width>`` numpy array (one buffer, no Python object
per value).  These helpers convert between the two and split batches into
chunks of bounded size, or gather fixed-width fields out of a buffer (log
frames, checkpoint arrays); they are pure functions used by the sensor
columns, the log writer, the replayer, checkpoints and the backends.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = ["as_list", "as_matrix", "chunks", "gather", "gather_numbers"]

_SHORT = 4096  # list batches this short are sized in plain Python first


def chunks(values: Sequence[bytes] | np.ndarray, overhead: int,
           limit: int) -> list[tuple[int, int]]:
    """Split `values` into runs ``[i, j)`` of at most `limit` bytes each (counting
    `overhead` per value; a single value larger than that is a run of its own)."""
    n = len(values)
    if isinstance(values, np.ndarray):
        if n * (values.dtype.itemsize + overhead) <= limit:
            return [(0, n)] if n else []
        sizes = np.full(n, values.dtype.itemsize + overhead, np.int64)
    elif n <= _SHORT and sum(map(len, values)) + n * overhead <= limit:
        return [(0, n)] if n else []
    else:
        sizes = np.fromiter(map(len, values), np.int64, n) + overhead
    ends = np.cumsum(sizes)
    out = []
    i = 0
    while i < n:
        base = int(ends[i - 1]) if i else 0
        j = max(i + 1, int(np.searchsorted(ends, base + limit, "right")))
        out.append((i, j))
        i = j
    return out


def as_matrix(values: Sequence[bytes] | np.ndarray, prefix: bytes) -> np.ndarray | None:
    """Fixed-width values (with `prefix` restored) as a (k, width) uint8 matrix, or None."""
    k = len(values)
    if isinstance(values, np.ndarray):
        w = values.dtype.itemsize
        body = np.frombuffer(values.tobytes(), np.uint8).reshape(k, w) \
            if not values.flags.c_contiguous else values.view(np.uint8).reshape(k, w)
        if not prefix:
            return body
        mat = np.empty((k, len(prefix) + w), np.uint8)
        mat[:, :len(prefix)] = np.frombuffer(prefix, np.uint8)
        mat[:, len(prefix):] = body
        return mat
    if not k:
        return None
    joined = b"".join(values)
    w = len(values[0])
    if w == 0 or len(joined) != w * k or max(map(len, values)) != w:
        return None
    return np.frombuffer(joined, np.uint8).reshape(k, w)


def as_list(values: Sequence[bytes] | np.ndarray, prefix: bytes) -> list[bytes]:
    """Values as a list of encoded bytes."""
    if isinstance(values, np.ndarray):
        raw = values.tobytes()
        w = values.dtype.itemsize
        return [prefix + raw[i:i + w] for i in range(0, len(raw), w)]
    return list(values)


def gather(arr: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    """The `width` bytes at each of `offsets` in the uint8 array `arr`, as a
    ``(len(offsets), width)`` matrix: one vectorised copy, at any alignment."""
    if not len(offsets):
        return np.zeros((0, width), np.uint8)
    return sliding_window_view(arr, width)[offsets]  # type: ignore[no-any-return]


def gather_numbers(arr: np.ndarray, offsets: np.ndarray, dtype: str) -> np.ndarray:
    """The numbers of `dtype` (e.g. ``"<u4"``) at each of `offsets` in `arr`."""
    dt = np.dtype(dtype)
    return gather(arr, offsets, dt.itemsize).view(dt).reshape(len(offsets))
