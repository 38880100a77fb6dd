"""The front-end logic shared by the sync and async TelescopeState.

Theory of operation
-------------------
Everything a front end does -- key prefixes and views, validation, encoding,
decoding, error messages, the condition checks behind ``wait_key`` -- is
written once here as *plans* (see :mod:`telstate_log.frontend._plan`): generators
that yield backend calls and receive their results.  The sync front end runs
them with ``run_sync`` and the async one with ``run_async``; only waiting
differs between the two front ends, and it lives in their modules.  The
time-travel and audit plans live in :mod:`telstate_log.frontend._history`.
The writes (``add``, ``set``, ``set_indexed``) make one backend call each and
skip the plans: their shared steps live in :mod:`telstate_log.frontend._writes`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np

from ..core._encoding import ENCODING_MSGPACK, decode_value, decode_values, encode_value
from ..core._errors import ImmutableKeyError
from ..core._types import KeyType
from . import _ops as ops
from ._history import HistoryEvent, HistoryPlans
from ._plan import (
    NO_SUB_KEY,
    Key,
    Plan,
    as_array,
    as_key_update,
    decode_range,
    display_str,
    ensure_binary,
    ensure_str,
    is_indexed_update,
    range_args,
    run_sync,
    zip_list,
)
from ._writes import OneCallWrites

__all__ = [
    "NO_SUB_KEY",
    "HistoryEvent",
    "Key",
    "Plan",
    "TelescopeStateBase",
    "as_key_update",
    "display_str",
    "ensure_binary",
    "ensure_str",
    "run_sync",
]

_B = TypeVar("_B")
_T = TypeVar("_T", bound="TelescopeStateBase[Any]")


class TelescopeStateBase(HistoryPlans, Generic[_B]):
    """Prefixes, views, the shared plans and write steps of both front ends."""

    SEPARATOR = "_"
    SEPARATOR_BYTES = b"_"
    _backend: _B
    _prefixes: tuple[bytes, ...]
    _columnar: bool
    _writes: OneCallWrites

    def _init_base(self, backend: _B | None, prefixes: tuple[Key, ...],
                   base: TelescopeStateBase[_B] | None) -> None:
        if base is not None and backend is not None:
            raise ValueError("cannot specify both base and backend")
        if backend is not None:
            object.__setattr__(self, "_backend", backend)
        elif base is not None:
            object.__setattr__(self, "_backend", base._backend)
        else:
            raise ValueError("must specify either base or backend")
        object.__setattr__(self, "_prefixes", tuple(ensure_binary(p) for p in prefixes))
        object.__setattr__(self, "_writes", OneCallWrites(self._backend, self._prefixes))
        object.__setattr__(self, "_columnar", hasattr(self._backend, "get_range_arrays"))

    @property
    def prefixes(self) -> tuple[str, ...]:
        """The active key prefixes as a tuple of strings."""
        return tuple(ensure_str(p) for p in self._prefixes)

    @property
    def backend(self) -> _B:
        return self._backend

    @classmethod
    def join(cls, *names: str) -> str:
        """Join string components of key with supported separator."""
        return cls.SEPARATOR.join(names)

    def view(self: _T, name: Key, add_separator: bool = True, exclusive: bool = False) -> _T:
        """A view with `name` added as the first prefix (or the only one if exclusive).

        The separator is appended to a non-empty `name` unless it already ends
        with it or `add_separator` is false.
        """
        name = ensure_binary(name)
        if name != b"" and name[-1:] != self.SEPARATOR_BYTES and add_separator:
            name += self.SEPARATOR_BYTES
        prefixes = (name,) if exclusive else (name, *self._prefixes)
        return self._derive(prefixes)

    def root(self: _T) -> _T:
        """A view containing only the root namespace."""
        return self._derive((b"",))

    def _derive(self: _T, prefixes: tuple[bytes, ...]) -> _T:
        return self.__class__(prefixes=prefixes, base=self)  # type: ignore[call-arg]

    # ------------------------------------------------------------------ plans
    def _plan_exists(self, key: Key) -> Plan[bool]:
        key = ensure_binary(key)
        for prefix in self._prefixes:
            if (yield ops.EXISTS, (prefix + key,)):
                return True
        return False

    def _plan_key_type(self, key: Key) -> Plan[KeyType | None]:
        key = ensure_binary(key)
        for prefix in self._prefixes:
            key_type = yield ops.KEY_TYPE, (prefix + key,)
            if key_type is not None:
                return KeyType.coerce(key_type)
        return None

    def _plan_keys(self, filter: Key) -> Plan[list[str]]:
        keys = yield ops.KEYS, (ensure_binary(filter),)
        return sorted(ensure_str(k) for k in keys)

    def _plan_key_completions(self) -> Plan[list[str]]:
        keys_b = yield ops.KEYS, (b"*",)
        out: list[str] = []
        for prefix in self._prefixes:
            out.extend(ensure_str(k[len(prefix):]) for k in keys_b if k.startswith(prefix))
        return out

    def _plan_delete(self, key: Key) -> Plan[None]:
        key = ensure_binary(key)
        for prefix in self._prefixes:
            yield ops.DELETE, (prefix + key,)

    def _plan_clear(self) -> Plan[None]:
        yield ops.CLEAR, ()

    def _plan_get_indexed(self, key: Key, sub_key: Any, default: Any,
                          return_encoded: bool) -> Plan[Any]:
        key = ensure_binary(key)
        sub_key_enc = encode_value(sub_key, ENCODING_MSGPACK)
        for prefix in self._prefixes:
            try:
                raw = yield ops.GET_INDEXED, (prefix + key, sub_key_enc)
            except KeyError:
                continue  # key absent with this prefix: try the next one
            if raw is None:
                return default
            return raw if return_encoded else decode_value(raw)
        return default

    def _plan_get(self, key: Key, return_encoded: bool) -> Plan[Any]:
        """The value of `key`; raises KeyError if absent under every prefix."""
        key = ensure_binary(key)
        for prefix in self._prefixes:
            raw = (yield ops.GET, (prefix + key,))[0]
            if raw is not None:
                if return_encoded:
                    return raw
                if isinstance(raw, dict):
                    return {decode_value(k): decode_value(v) for k, v in raw.items()}
                return decode_value(raw)
        raise KeyError(f"{display_str(key)} not found")

    def _plan_get_default(self, key: Key, default: Any, return_encoded: bool) -> Plan[Any]:
        try:
            return (yield from self._plan_get(key, return_encoded))
        except KeyError:
            return default

    def _plan_range_samples(self, key: Key, st: float | None, et: float | None,
                            include_previous: bool | None, include_end: bool) -> Plan[Any]:
        """The samples of the first prefix holding `key`: a backend SensorRange
        (columnar backends) or a list of (encoded value, timestamp)."""
        st, et, include_previous = range_args(st, et, include_previous)
        key = ensure_binary(key)
        op = ops.GET_RANGE_ARRAYS if self._columnar else ops.GET_RANGE
        for prefix in self._prefixes:
            full_key = prefix + key
            try:
                samples = yield op, (full_key, st, et, include_previous, include_end)
            except ImmutableKeyError:
                raise ImmutableKeyError(
                    f"{display_str(full_key)} is immutable, cannot use get_range") from None
            if samples is not None:
                return samples
        raise KeyError(f"{display_str(key)} not found")

    def _plan_get_range(self, key: Key, st: float | None, et: float | None,
                        include_previous: bool | None, include_end: bool,
                        return_encoded: bool) -> Plan[list[tuple[Any, float]]]:
        samples = yield from self._plan_range_samples(key, st, et, include_previous,
                                                      include_end)
        if isinstance(samples, list):
            if return_encoded:
                return samples
            return [(decode_value(v), t) for v, t in samples]
        if return_encoded:
            return zip_list(samples.encoded(), samples.timestamps.tolist())
        return decode_range(samples)

    def _plan_get_range_arrays(self, key: Key, st: float | None, et: float | None,
                               include_previous: bool | None,
                               include_end: bool) -> Plan[tuple[np.ndarray, Any]]:
        samples = yield from self._plan_range_samples(key, st, et, include_previous,
                                                      include_end)
        if isinstance(samples, list):
            timestamps = np.array([t for _, t in samples], np.float64)
            return timestamps, as_array(decode_values([v for v, _ in samples]))
        floats = samples.floats()
        values = floats.astype(np.float64) if floats is not None else \
            as_array(decode_values(samples.encoded()))
        return np.array(samples.timestamps, np.float64), values

    def _plan_check_condition(self, key: bytes,
                              condition: Callable[[Any, float | None], bool] | None,
                              message: Any = None) -> Plan[bool]:
        """Whether `key` exists and satisfies `condition` (see wait_key).

        `message` is a key update: if it is for one of our full keys and not
        indexed, its value and timestamp stand for the key's latest value.
        """
        if condition is None:
            if message is not None:
                return True
            return (yield from self._plan_exists(key))
        for prefix in self._prefixes:
            full_key = prefix + key
            if message is not None and full_key == message.key \
                    and not is_indexed_update(message):
                value: Any = message.value
                timestamp = getattr(message, "timestamp", None)
            else:
                value, timestamp = yield ops.GET, (full_key,)
                if value is None:
                    continue  # not under this prefix: try the next one
            if isinstance(value, dict):
                value = {decode_value(k): decode_value(v) for k, v in value.items()}
            else:
                value = decode_value(value)
            return bool(condition(value, timestamp))
        return False

    def _plan_check_indexed_condition(self, key: bytes, sub_key: bytes,
                                      condition: Callable[[Any], bool] | None,
                                      message: Any = None) -> Plan[bool]:
        """Whether sub-key `sub_key` of `key` exists and satisfies `condition`."""
        if message is not None and message.sub_key != sub_key:
            return False  # not the sub-key we wait for
        for prefix in self._prefixes:
            full_key = prefix + key
            if message is not None and full_key == message.key:
                value = message.value
            else:
                try:
                    value = yield ops.GET_INDEXED, (full_key, sub_key)
                except KeyError:
                    continue  # not under this prefix: try the next one
                if value is None:
                    return False  # key exists without the sub-key (and shadows the rest)
            return True if not condition else bool(condition(decode_value(value)))
        return False

    def _check_indexed_message(self, message: Any, key_str: str) -> Any:
        """Classify a monitor message for wait_indexed (None: re-read)."""
        update = as_key_update(message)
        if update is not None and not is_indexed_update(update):
            raise ImmutableKeyError(f"wait_indexed called on non-indexed key {key_str}")
        return update

    def _monitor_keys(self, key: bytes) -> list[bytes]:
        return [prefix + key for prefix in self._prefixes]


