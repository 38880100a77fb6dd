"""Plans: how one front-end logic drives two kinds of backend.

Theory of operation
-------------------
Everything a front end does -- key prefixes and views, validation, encoding,
decoding, error messages, the condition checks behind ``wait_key`` -- is
written once (in :mod:`telstate_log.frontend._frontend`) as *plans*: generators that
yield backend calls and receive their results::

    def _plan_get(self, key, ...):
        raw, ts = yield ops.GET, (full_key,)
        return decode(raw)

A call is a pair ``(operation, args)``: an :class:`~._ops.Op`, typed against
both kinds of backend, and its arguments.  The sync front end runs a plan
with :func:`run_sync` (``operation.sync(backend, *args)``) and the async
front end with ``run_async`` (awaiting ``operation.aio(backend, *args)``).
An exception raised by the backend is thrown into the plan at the yield, so the plan's own ``try``
blocks handle it exactly as straight-line code would.

The writes (one backend call each, the hot path) are not plans: they share
their steps in :mod:`telstate_log.frontend._writes` and skip the generator.

This module holds the plan types, :func:`run_sync` and the pure helpers the
plans and writes share: key conversion, timestamp and range validation,
the immutable-change check, bulk decoding.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Generator
from typing import Any, TypeVar

import numpy as np

from ..core._encoding import decode_value, decode_values, equal_encoded_values
from ..core._errors import DecodeError, ImmutableKeyError, InvalidTimestampError
from ..core._state import check_timestamp
from ..core._types import KeyType, KeyUpdate, display_str
from ._ops import Op

__all__ = [
    "NO_SUB_KEY",
    "Call",
    "Key",
    "Plan",
    "as_array",
    "as_key_update",
    "check_immutable_change",
    "check_sample_timestamp",
    "decode_range",
    "display_str",
    "ensure_binary",
    "ensure_str",
    "is_indexed_update",
    "range_args",
    "run_sync",
    "zip_list",
]

logger = logging.getLogger("telstate_log")

_R = TypeVar("_R")
Key = bytes | str
Call = tuple[Op[Any], tuple[Any, ...]]
Plan = Generator[Call, Any, _R]

#: Marks "no sub_key given" (None is a valid sub_key).
NO_SUB_KEY: Any = object()


def ensure_binary(s: Key) -> bytes:
    """Key as bytes (str encoded as UTF-8, surrogates escaped)."""
    if type(s) is bytes:
        return s
    if isinstance(s, str):
        return s.encode("utf-8", "surrogateescape")
    if isinstance(s, bytes | bytearray | memoryview):
        return bytes(s)
    raise TypeError(f"key must be str or bytes, not {type(s).__name__}")


def ensure_str(s: Key) -> str:
    """Key as str (undecodable bytes kept as surrogates)."""
    if isinstance(s, str):
        return s
    return bytes(s).decode("utf-8", "surrogateescape")


def as_key_update(message: Any) -> Any:
    """`message` if it is a key update with content (ours or katsdptelstate's)."""
    if isinstance(message, KeyUpdate):
        return message
    if hasattr(message, "key") and hasattr(message, "value") and hasattr(message, "key_type"):
        return message
    return None


def is_indexed_update(message: Any) -> bool:
    return bool(KeyType.coerce(message.key_type) == KeyType.INDEXED)


def check_immutable_change(key: str, old_enc: bytes, new_enc: bytes, new: Any) -> None:
    """Raise ImmutableKeyError unless `new_enc` is equivalent to `old_enc`."""
    try:
        if not equal_encoded_values(new_enc, old_enc):
            raise ImmutableKeyError(
                f"Attempt to change value of immutable key {key} from "
                f"{decode_value(old_enc)!r} to {new!r}")
        logger.debug("Attribute %s updated with the same value", key)
    except DecodeError as error:
        raise ImmutableKeyError(
            f"Attempt to set value of immutable key {key} to {new!r} but "
            f"failed to decode the previous value to compare: {error}") from error


def check_sample_timestamp(ts: float | None) -> float:
    """Default a sample timestamp to now and validate it (core rules: check_timestamp)."""
    return check_timestamp(float(ts) if ts is not None else time.time())


def range_args(st: float | None, et: float | None,
               include_previous: bool | None) -> tuple[float, float, bool]:
    """Resolve katsdptelstate's get_range defaults."""
    if include_previous is None:
        include_previous = st is None
    et = math.inf if et is None else float(et)
    st = et if st is None else float(st)
    if math.isnan(st) or math.isnan(et):
        raise InvalidTimestampError("cannot use NaN start or end time")
    return st, et, include_previous


def zip_list(values: list[Any], ts: list[float]) -> list[tuple[Any, float]]:
    """``list(zip(values, ts))``, pausing the cyclic GC for big results.

    A million fresh tuples trigger dozens of pointless generation-0
    collections (tuples of floats cannot form cycles); pausing the collector
    while building the list makes it about 30% faster.
    """
    if len(ts) < 50_000 or not gc.isenabled():
        return list(zip(values, ts))
    gc.disable()
    try:
        return list(zip(values, ts))
    finally:
        gc.enable()


def decode_range(rng: Any) -> list[tuple[Any, float]]:
    """Decode a backend SensorRange in bulk."""
    ts = rng.timestamps.tolist()
    floats = rng.floats()
    if floats is not None:
        return zip_list(floats.tolist(), ts)
    return zip_list(decode_values(rng.encoded()), ts)


def run_sync(plan: Plan[_R], backend: Any) -> _R:
    """Run a plan against a sync backend."""
    try:
        op, args = plan.send(None)
        while True:
            try:
                result = op.sync(backend, *args)
            except Exception as exc:
                op, args = plan.throw(exc)
            else:
                op, args = plan.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def as_array(values: list[Any]) -> Any:
    """Values as a numpy array when they are uniformly numeric, else the list."""
    if values and all(type(v) in (int, float, bool) for v in values):
        try:
            return np.asarray(values)
        except (OverflowError, ValueError):
            return values
    return values
