"""The front-end logic shared by the sync and async TelescopeState.

Theory of operation
-------------------
Everything a front end does -- key prefixes and views, validation, encoding,
decoding, error messages, the condition checks behind ``wait_key`` -- is
written once here as *plans*: generators that yield backend calls and
receive their results::

    def _plan_get(self, key, ...):
        raw, ts = yield "get", (full_key,)
        return decode(raw)

A call is a pair ``(method, args)`` naming an async-Backend method.  The sync
front end runs a plan with :func:`run_sync` (calling the sync backend
directly, ``exists`` mapping to ``in``) and the async front end with
``run_async`` (awaiting the async backend).  An exception raised by the
backend is thrown into the plan at the yield, so the plan's own ``try``
blocks handle it exactly as straight-line code would.  Only waiting differs
between the two front ends, and it lives in their modules.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from ._asof import Changes
from ._encoding import (
    ENCODING_MSGPACK,
    decode_value,
    decode_values,
    encode_value,
    equal_encoded_values,
)
from ._errors import DecodeError, ImmutableKeyError, InvalidTimestampError
from ._types import KeyType, KeyUpdate

__all__ = [
    "HistoryEvent",
    "Plan",
    "TelescopeStateBase",
    "as_key_update",
    "display_str",
    "ensure_binary",
    "ensure_str",
    "run_sync",
]

logger = logging.getLogger("telstate_log")
_time = time.time

_B = TypeVar("_B")
_R = TypeVar("_R")
_T = TypeVar("_T", bound="TelescopeStateBase[Any]")
Key = bytes | str
Call = tuple[str, tuple[Any, ...]]
Plan = Generator[Call, Any, _R]


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


def display_str(s: bytes) -> str:
    """Human-readable but exact rendering of a key."""
    try:
        return repr(s.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(s)


def as_key_update(message: Any) -> Any:
    """`message` if it is a key update with content (ours or katsdptelstate's)."""
    if isinstance(message, KeyUpdate):
        return message
    if hasattr(message, "key") and hasattr(message, "value") and hasattr(message, "key_type"):
        return message
    return None


def _is_indexed_update(message: Any) -> bool:
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
    """Default and validate a sample timestamp (front-end rules)."""
    ts = float(ts) if ts is not None else time.time()
    if math.isnan(ts) or math.isinf(ts):
        raise InvalidTimestampError(f"Non-finite timestamps ({ts}) are not supported")
    if ts < 0.0:
        raise InvalidTimestampError(f"Negative timestamps ({ts}) are not supported")
    return ts


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


def _zip_list(values: list[Any], ts: list[float]) -> list[tuple[Any, float]]:
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
        return _zip_list(floats.tolist(), ts)
    return _zip_list(decode_values(rng.encoded()), ts)


def run_sync(plan: Plan[_R], backend: Any) -> _R:
    """Run a plan against a sync backend."""
    try:
        name, args = plan.send(None)
        while True:
            try:
                if name == "exists":
                    result: Any = args[0] in backend
                else:
                    result = getattr(backend, name)(*args)
            except Exception as exc:
                name, args = plan.throw(exc)
            else:
                name, args = plan.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


class TelescopeStateBase(Generic[_B]):
    """Prefixes, views and the shared plans of both front ends."""

    SEPARATOR = "_"
    SEPARATOR_BYTES = b"_"
    _backend: _B
    _prefixes: tuple[bytes, ...]
    _columnar: bool

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
            if (yield "exists", (prefix + key,)):
                return True
        return False

    def _plan_key_type(self, key: Key) -> Plan[KeyType | None]:
        key = ensure_binary(key)
        for prefix in self._prefixes:
            key_type = yield "key_type", (prefix + key,)
            if key_type is not None:
                return KeyType.coerce(key_type)
        return None

    def _plan_keys(self, filter: Key) -> Plan[list[str]]:
        keys = yield "keys", (ensure_binary(filter),)
        return sorted(ensure_str(k) for k in keys)

    def _plan_key_completions(self) -> Plan[list[str]]:
        keys_b = yield "keys", (b"*",)
        out: list[str] = []
        for prefix in self._prefixes:
            out.extend(ensure_str(k[len(prefix):]) for k in keys_b if k.startswith(prefix))
        return out

    def _plan_delete(self, key: Key) -> Plan[None]:
        key = ensure_binary(key)
        for prefix in self._prefixes:
            yield "delete", (prefix + key,)

    def _plan_clear(self) -> Plan[None]:
        yield "clear", ()

    def _plan_add(self, key: Key, value: Any, ts: float | None, immutable: bool,
                  encoding: bytes) -> Plan[None]:
        full_key = self._prefixes[0] + (key if type(key) is bytes else ensure_binary(key))
        str_val = encode_value(value, encoding)
        if immutable:
            try:
                old = yield "set_immutable", (full_key, str_val)
            except ImmutableKeyError:
                raise ImmutableKeyError(
                    f"Attempt to change key {display_str(full_key)} to immutable") from None
            if old is not None:
                check_immutable_change(display_str(full_key), old, str_val, value)
        else:
            ts = _time() if ts is None else float(ts)
            if not 0.0 <= ts < math.inf:
                check_sample_timestamp(ts)  # raises the right error
            try:
                yield "add_mutable", (full_key, str_val, ts)
            except ImmutableKeyError:
                raise ImmutableKeyError(
                    f"Attempt to change key {display_str(full_key)} to mutable") from None

    def _plan_set_indexed(self, key: Key, sub_key: Any, value: Any,
                          encoding: bytes) -> Plan[None]:
        hash(sub_key)  # TypeError for unhashable sub-keys, which could never be looked up
        full_key = self._prefixes[0] + ensure_binary(key)
        sub_key_enc = encode_value(sub_key, ENCODING_MSGPACK)
        str_val = encode_value(value, encoding)
        try:
            old = yield "set_indexed", (full_key, sub_key_enc, str_val)
        except ImmutableKeyError:
            raise ImmutableKeyError(
                f"Attempt to change key {display_str(full_key)} to indexed immutable") from None
        if old is not None:
            key_descr = f"{display_str(full_key)}[{sub_key!r}]"
            check_immutable_change(key_descr, old, str_val, value)

    def _plan_get_indexed(self, key: Key, sub_key: Any, default: Any,
                          return_encoded: bool) -> Plan[Any]:
        key = ensure_binary(key)
        sub_key_enc = encode_value(sub_key, ENCODING_MSGPACK)
        for prefix in self._prefixes:
            try:
                raw = yield "get_indexed", (prefix + key, sub_key_enc)
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
            raw = (yield "get", (prefix + key,))[0]
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
        method = "get_range_arrays" if self._columnar else "get_range"
        for prefix in self._prefixes:
            full_key = prefix + key
            try:
                samples = yield method, (full_key, st, et, include_previous, include_end)
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
            return _zip_list(samples.encoded(), samples.timestamps.tolist())
        return decode_range(samples)

    def _plan_get_range_arrays(self, key: Key, st: float | None, et: float | None,
                               include_previous: bool | None,
                               include_end: bool) -> Plan[tuple[np.ndarray, Any]]:
        samples = yield from self._plan_range_samples(key, st, et, include_previous,
                                                      include_end)
        if isinstance(samples, list):
            timestamps = np.array([t for _, t in samples], np.float64)
            return timestamps, _as_array(decode_values([v for v, _ in samples]))
        floats = samples.floats()
        values = floats.astype(np.float64) if floats is not None else \
            _as_array(decode_values(samples.encoded()))
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
                    and not _is_indexed_update(message):
                value: Any = message.value
                timestamp = getattr(message, "timestamp", None)
            else:
                value, timestamp = yield "get", (full_key,)
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
                    value = yield "get_indexed", (full_key, sub_key)
                except KeyError:
                    continue  # not under this prefix: try the next one
                if value is None:
                    return False  # key exists without the sub-key (and shadows the rest)
            return True if not condition else bool(condition(decode_value(value)))
        return False

    # ----------------------------------------------------- time travel, audit
    def _plan_as_of(self, position: int | None, time: float | None) -> Plan[Any]:
        backend = yield "as_of", (position, time)
        return self.__class__(backend, prefixes=self._prefixes)  # type: ignore[call-arg]

    def _plan_decode_events(self, events: list[Any]) -> Plan[list[HistoryEvent]]:
        sources: dict[int, dict[str, Any]] = {}
        for sess in sorted({e.session for e in events}):
            sources[sess] = yield "session_info", (sess,)
        return [HistoryEvent.decode(e, sources[e.session]) for e in events]

    def _plan_history(self, key: Key, sub_key: Any) -> Plan[list[HistoryEvent]]:
        key = ensure_binary(key)
        sub_enc = None if sub_key is _NO_SUB_KEY else encode_value(sub_key, ENCODING_MSGPACK)
        for prefix in self._prefixes:
            events = yield "history", (prefix + key, sub_enc)
            if events:
                return (yield from self._plan_decode_events(events))
        return []

    def _plan_audit(self, since: int | None, until: int | None, since_time: float | None,
                    until_time: float | None) -> Plan[list[HistoryEvent]]:
        if since_time is not None:
            # after the last event recorded strictly before since_time
            since = 1 + (yield "resolve_time", (math.nextafter(since_time, -math.inf),))
        if until_time is not None:
            until = yield "resolve_time", (until_time,)
        events = yield "events", (1 if since is None else since, until)
        return (yield from self._plan_decode_events(events))

    def _plan_changes(self, since: int, until: int | None) -> Plan[Changes]:
        if until is None:
            until = self.position
        raw = yield "changes", (since, until)
        return Changes(raw.since, raw.until,
                       keys_added=[ensure_str(k) for k in raw.keys_added],
                       keys_deleted=[ensure_str(k) for k in raw.keys_deleted],
                       samples_added={ensure_str(k): n for k, n in raw.samples_added.items()},
                       sub_keys_added={ensure_str(k): [decode_value(s) for s in subs]
                                       for k, subs in raw.sub_keys_added.items()},
                       immutables_set=[ensure_str(k) for k in raw.immutables_set],
                       events=raw.events)

    @property
    def position(self) -> int:
        """Position of the last event (for an as-of view: the position it shows)."""
        return int(self._backend.position)  # type: ignore[attr-defined]

    def _check_indexed_message(self, message: Any, key_str: str) -> Any:
        """Classify a monitor message for wait_indexed (None: re-read)."""
        update = as_key_update(message)
        if update is not None and not _is_indexed_update(update):
            raise ImmutableKeyError(f"wait_indexed called on non-indexed key {key_str}")
        return update

    def _monitor_keys(self, key: bytes) -> list[bytes]:
        return [prefix + key for prefix in self._prefixes]


_NO_SUB_KEY: Any = object()


@dataclass(frozen=True)
class HistoryEvent:
    """One recorded event, decoded: who wrote what, when, and what it said.

    ``recorded`` and ``position`` are *system time* (when the store learned
    it); ``timestamp`` is the sample's *valid time* (when it was true).
    """

    position: int
    recorded: float
    source: str
    kind: str  # "set", "add", "set_indexed", "delete" or "clear"
    key: str | None
    sub_key: Any
    value: Any
    timestamp: float | None
    session: dict[str, Any]

    @classmethod
    def decode(cls, event: Any, session: dict[str, Any]) -> HistoryEvent:
        def dec(raw: bytes | None) -> Any:
            if raw is None:
                return None
            try:
                return decode_value(raw)
            except DecodeError as exc:  # keep the audit readable even for odd data
                return f"<undecodable: {exc}>"

        return cls(event.position, event.recorded, str(session.get("source", "")), event.kind,
                   None if event.key is None else ensure_str(event.key), dec(event.sub_key),
                   dec(event.value), event.timestamp, session)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (values as repr when not JSON types)."""
        out = dict(self.__dict__)
        for name in ("sub_key", "value"):
            v = out[name]
            if not isinstance(v, (str, int, float, bool, type(None), list, dict)):
                out[name] = repr(v)
        return out


def _as_array(values: list[Any]) -> Any:
    """Values as a numpy array when they are uniformly numeric, else the list."""
    if values and all(type(v) in (int, float, bool) for v in values):
        try:
            return np.asarray(values)
        except (OverflowError, ValueError):
            return values
    return values

