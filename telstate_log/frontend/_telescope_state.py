"""The synchronous front end: :class:`TelescopeState`.

A thin driver: every operation runs a plan from :mod:`telstate_log.frontend._frontend`
with :func:`~telstate_log.frontend._frontend.run_sync`, except the writes, which call
the backend once between the shared steps of :mod:`telstate_log.frontend._writes`.
What is specific to the sync API lives here: the constructor's endpoint forms,
attribute and item access, and waiting with a timeout and a cancellation future.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

from ..backends._base import Backend, PathType
from ..core._asof import Changes
from ..core._encoding import ENCODING_DEFAULT, ENCODING_MSGPACK, encode_value
from ..core._errors import CancelledError, ImmutableKeyError, TimeoutError
from ..core._types import KeyType
from ._frontend import (
    NO_SUB_KEY,
    HistoryEvent,
    Key,
    TelescopeStateBase,
    as_key_update,
    display_str,
    ensure_binary,
    run_sync,
)
from ._writes import check_unchanged, type_clash

__all__ = ["TelescopeState"]


def _is_backend(obj: Any) -> bool:
    """Ours, or anything shaped like katsdptelstate's sync Backend."""
    if isinstance(obj, Backend):
        return True
    return all(hasattr(obj, name) for name in ("get_range", "monitor_keys", "set_immutable"))


def _shared_log_backend(endpoint: Any, db: int, stream: str) -> Backend:
    """``TelescopeState(endpoint, db, log=stream)``: a RedisLogBackend on `stream`."""
    from ..backends._redis_endpoint import parse_endpoint
    from ..backends._redis_log import RedisLogBackend

    address = parse_endpoint(endpoint)
    url = address.url if address.url is not None else f"redis://{address}"
    return RedisLogBackend.from_url(url, db=db, stream=stream)


class TelescopeState(TelescopeStateBase[Backend]):
    """Interface to attributes and sensors stored in a database (sync).

    Each instance has a list of key prefixes: lookups try each in turn,
    writes use the first.  :meth:`view` builds prefix lists conventionally
    separated by underscores.

    Parameters
    ----------
    endpoint
        * empty (default): a new :class:`~telstate_log.backends.MemoryBackend`;
        * a backend instance (ours, or a katsdptelstate sync backend);
        * a :class:`os.PathLike` (e.g. :class:`pathlib.Path`): a
          :class:`~telstate_log.backends.LogBackend` on that directory;
        * a URL containing ``://``: a Redis backend via ``redis.Redis.from_url``;
        * any other string: ``host[:port]`` of a Redis server.
    db
        Redis database number (only with a Redis endpoint).
    prefixes
        Key prefixes, normally built with :meth:`view`.
    base
        Existing instance to share the backend with (for views).
    log
        With a Redis endpoint: True (or a stream name) writes through the
        shared log in Redis, a
        :class:`~telstate_log.backends.RedisLogBackend` on the stream
        ``"telstate-log"`` (or the one named): every write is one event of
        one ordered log shared by every writer on every host, with
        :meth:`history`, :meth:`audit`, :meth:`as_of` and :meth:`changes`,
        while katsdptelstate clients keep reading (and writing) the same
        database.  So ``TelescopeState("redis://host:6379", log=True)``.
        For a writer label, replicas and the rest, pass
        ``RedisLogBackend.from_url(url, source=..., replicas=...)`` as the
        endpoint instead.

    Raises
    ------
    ValueError
        If `base` is combined with an endpoint or db, `db` with a backend, or
        `log` with anything but a Redis endpoint.
    ConnectionError
        If the initial connection to a Redis server fails.
    """

    def __init__(self, endpoint: Any = "", db: int = 0,
                 prefixes: tuple[Key, ...] = (b"",),
                 base: TelescopeState | None = None, *,
                 log: bool | str | None = False) -> None:
        backend: Backend | None
        if log is None:
            log = False
        elif log is not False and (not log or not isinstance(log, (bool, str))):
            raise ValueError(f"log must be True, False or a stream name, not {log!r}")
        if log and (base is not None or _is_backend(endpoint) or not endpoint
                    or isinstance(endpoint, os.PathLike)):
            raise ValueError("log= needs a Redis endpoint (a URL or host[:port])")
        if base is not None:
            if not (isinstance(endpoint, str) and endpoint == ""):
                raise ValueError("Cannot specify both base and endpoint")
            if db != 0:
                raise ValueError("Cannot specify both base and db")
            backend = None
        elif _is_backend(endpoint):
            if db != 0:
                raise ValueError("Cannot specify both a backend and a db")
            backend = endpoint
        elif isinstance(endpoint, os.PathLike):
            if db != 0:
                raise ValueError("Cannot specify a db with a log directory")
            from ..backends._log import LogBackend

            backend = LogBackend(endpoint)
        elif not endpoint:
            if db != 0:
                raise ValueError("Cannot specify a db when using the default backend")
            from ..backends._memory import MemoryBackend

            backend = MemoryBackend()
        elif log:
            backend = _shared_log_backend(endpoint, db, "telstate-log" if log is True else log)
        else:
            from ..backends._redis import redis_backend_for_endpoint

            backend = redis_backend_for_endpoint(endpoint, db)
        self._init_base(backend, prefixes, base)

    def _run(self, plan: Any) -> Any:
        return run_sync(plan, self._backend)

    # ------------------------------------------------------- attribute access
    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self._run(self._plan_get(key, False))
        except KeyError as error:
            raise AttributeError(str(error)) from None

    def __getitem__(self, key: Key) -> Any:
        return self._run(self._plan_get(key, False))

    def __setattr__(self, key: str, value: Any) -> None:
        if key.startswith("_"):
            super().__setattr__(key, value)
        elif any(key in cls.__dict__ for cls in type(self).__mro__):
            raise AttributeError("The specified key already exists as a class method "
                                 "and thus cannot be set via attribute access.")
        else:
            self.add(key, value, immutable=True)

    def __setitem__(self, key: Key, value: Any) -> None:
        self.add(key, value, immutable=True)

    def __contains__(self, key: Key) -> bool:
        """Whether `key` exists under any prefix."""
        return bool(self._run(self._plan_exists(key)))

    def _ipython_key_completions_(self) -> list[str]:
        """Keys for IPython tab completion, with the view's prefixes removed."""
        return list(self._run(self._plan_key_completions()))

    # ------------------------------------------------------------------- reads
    def exists(self, key: Key) -> bool:
        """Whether `key` exists under any prefix."""
        return bool(self._run(self._plan_exists(key)))

    def is_immutable(self, key: Key) -> bool:
        """Deprecated: use ``key_type(key) == KeyType.IMMUTABLE``."""
        warnings.warn("is_immutable is deprecated; use key_type instead", FutureWarning,
                      stacklevel=2)
        return self.key_type(key) == KeyType.IMMUTABLE

    def key_type(self, key: Key) -> KeyType | None:
        """Type of `key`, or None if it does not exist."""
        return self._run(self._plan_key_type(key))  # type: ignore[no-any-return]

    def keys(self, filter: Key = "*") -> list[str]:
        """Sorted fully-qualified keys matching the Redis glob `filter` (ignores the view)."""
        return self._run(self._plan_keys(filter))  # type: ignore[no-any-return]

    def get(self, key: Key, default: Any = None, return_encoded: bool = False) -> Any:
        """The value of `key` (latest sample for a sensor), or `default` if absent."""
        return run_sync(self._plan_get_default(key, default, return_encoded), self._backend)

    def get_indexed(self, key: Key, sub_key: Any, default: Any = None,
                    return_encoded: bool = False) -> Any:
        """The value of sub-key `sub_key` of indexed key `key`, or `default`."""
        return self._run(self._plan_get_indexed(key, sub_key, default, return_encoded))

    def get_range(self, key: Key, st: float | None = None, et: float | None = None,
                  include_previous: bool | None = None, include_end: bool = False,
                  return_encoded: bool = False) -> list[tuple[Any, float]]:
        """Samples of sensor `key` as a list of ``(value, timestamp)``.

        ``st`` is inclusive and ``et`` exclusive (inclusive with
        `include_end`).  With ``st=None`` the latest sample before ``et`` is
        returned (`include_previous` defaults to True then, else False);
        ``st=0`` returns everything.

        Raises KeyError if the key is absent, ImmutableKeyError if it is not
        a sensor.
        """
        return self._run(self._plan_get_range(key, st, et, include_previous,  # type: ignore[no-any-return]
                                              include_end, return_encoded))

    def get_range_arrays(self, key: Key, st: float | None = None, et: float | None = None,
                         include_previous: bool | None = None,
                         include_end: bool = False) -> tuple[np.ndarray, Any]:
        """Like :meth:`get_range` but as columns: ``(timestamps, values)``.

        `timestamps` is a float64 array; `values` is a numpy array when every
        value is a number (a column of msgpack doubles decodes in one numpy
        call), else a list of decoded values.
        """
        return self._run(self._plan_get_range_arrays(key, st, et, include_previous,  # type: ignore[no-any-return]
                                                     include_end))

    # ------------------------------------------------------------------ writes
    def add(self, key: Key, value: Any, ts: float | None = None, immutable: bool = False,
            encoding: bytes = ENCODING_DEFAULT) -> None:
        """Add a sample to a sensor (or set an immutable with ``immutable=True``).

        ``ts`` defaults to now and may be in the past or future; negative,
        NaN or infinite timestamps raise InvalidTimestampError.  Setting an
        existing immutable to an equivalent value is a no-op; a different
        value, or a key of another type, raises ImmutableKeyError.
        """
        if immutable:
            self._set_immutable(key, value, encoding)
            return
        writes = self._writes
        try:
            writes.add(key, value, ts, encoding)
        except ImmutableKeyError:
            raise type_clash(writes.full_key(key), "mutable") from None

    def set(self, key: Key, value: Any) -> None:
        """Set an immutable key (same as ``add(key, value, immutable=True)``)."""
        self._set_immutable(key, value, ENCODING_DEFAULT)

    def _set_immutable(self, key: Key, value: Any, encoding: bytes) -> None:
        full_key, str_val = self._writes.immutable_args(key, value, encoding)
        try:
            old = self._backend.set_immutable(full_key, str_val)
        except ImmutableKeyError:
            raise type_clash(full_key, "immutable") from None
        if old is not None:
            check_unchanged(full_key, old, str_val, value)

    def set_indexed(self, key: Key, sub_key: Any, value: Any,
                    encoding: bytes = ENCODING_DEFAULT) -> None:
        """Set sub-key `sub_key` (hashable, msgpack-encodable) of indexed key `key`."""
        full_key, sub_key_enc, str_val = self._writes.indexed_args(key, sub_key, value, encoding)
        try:
            old = self._backend.set_indexed(full_key, sub_key_enc, str_val)
        except ImmutableKeyError:
            raise type_clash(full_key, "indexed immutable") from None
        if old is not None:
            check_unchanged(full_key, old, str_val, value, sub_key)

    def delete(self, key: Key) -> None:
        """Remove `key` under every prefix of the view (rarely appropriate)."""
        self._run(self._plan_delete(key))

    def clear(self) -> None:
        """Remove all keys in all namespaces (rarely appropriate)."""
        self._run(self._plan_clear())

    def load_from_file(self, file: PathType | BinaryIO) -> int:
        """Load keys from a Redis RDB file into the backend; returns the key count."""
        return int(self._backend.load_from_file(file))

    # ----------------------------------------------------- time travel, audit
    def as_of(self, position: int | None = None, time: float | None = None) -> TelescopeState:
        """A read-only view of the state after event `position`, or as of wall-clock `time`.

        The view is a TelescopeState with the same prefixes and read API;
        ``view.position`` is the event it resolved to (a time is only an
        approximation of a position), writes raise ReadOnlyError, and keys
        deleted or cleared later appear as they were.  Needs a LogBackend.
        """
        return self._run(self._plan_as_of(position, time))  # type: ignore[no-any-return]

    def history(self, key: Key, sub_key: Any = NO_SUB_KEY) -> list[HistoryEvent]:
        """Every event that changed `key` (or just its sub-key `sub_key`), oldest first.

        Each :class:`HistoryEvent` gives the position, recorded time, source
        label, kind, sub-key, decoded value and sample timestamp.
        """
        return self._run(self._plan_history(key, sub_key))  # type: ignore[no-any-return]

    def audit(self, since: int | None = None, until: int | None = None, *,
              since_time: float | None = None,
              until_time: float | None = None) -> list[HistoryEvent]:
        """Every event (all keys) between two positions or wall-clock times, inclusive."""
        return self._run(self._plan_audit(since, until, since_time,  # type: ignore[no-any-return]
                                          until_time))

    def changes(self, since: int, until: int | None = None) -> Changes:
        """What changed between positions `since` and `until` (default: now)."""
        return self._run(self._plan_changes(since, until))  # type: ignore[no-any-return]

    # ----------------------------------------------------------------- waiting
    def wait_key(self, key: Key, condition: Callable[[Any, float | None], bool] | None = None,
                 timeout: float | None = None, cancel_future: Any = None) -> None:
        """Wait for `key` to exist, or for ``condition(value, ts)`` to hold.

        Raises TimeoutError after `timeout` seconds, CancelledError once
        ``cancel_future.done()`` is true (polled every 0.1 s).
        """
        key_b = ensure_binary(key)
        if self._run(self._plan_check_condition(key_b, condition)):
            return

        def check(message: Any) -> bool:
            update = as_key_update(message)
            return bool(self._run(self._plan_check_condition(key_b, condition, update)))

        self._wait(key_b, display_str(key_b), check, timeout, cancel_future)

    def wait_indexed(self, key: Key, sub_key: Any,
                     condition: Callable[[Any], bool] | None = None,
                     timeout: float | None = None, cancel_future: Any = None) -> None:
        """Wait for sub-key `sub_key` of `key` to exist, or ``condition(value)`` to hold.

        Raises TimeoutError, CancelledError (as :meth:`wait_key`), and
        ImmutableKeyError if the key exists (or appears) but is not indexed.
        """
        key_b = ensure_binary(key)
        sub_key_enc = encode_value(sub_key, ENCODING_MSGPACK)
        if self._run(self._plan_check_indexed_condition(key_b, sub_key_enc, condition)):
            return
        key_str = f"{display_str(key_b)}[{sub_key!r}]"

        def check(message: Any) -> bool:
            update = self._check_indexed_message(message, key_str)
            return bool(self._run(self._plan_check_indexed_condition(
                key_b, sub_key_enc, condition, update)))

        self._wait(key_b, key_str, check, timeout, cancel_future)

    def _wait(self, key: bytes, key_str: str, check: Callable[[Any], bool],
              timeout: float | None, cancel_future: Any) -> None:
        def check_cancelled() -> None:
            if cancel_future is not None and cancel_future.done():
                raise CancelledError(f"Wait for {key_str} cancelled")

        check_cancelled()
        poll = 1.0 if cancel_future is None else 0.1
        monitor = self._backend.monitor_keys(self._monitor_keys(key))
        with contextlib.closing(monitor):
            message = monitor.send(None)
            if message is not None and check(message):
                return
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                check_cancelled()
                wait = poll
                if deadline is not None:
                    remain = deadline - time.monotonic()
                    if remain <= 0:
                        raise TimeoutError(f"Timed out waiting for {key_str} after {timeout}s")
                    wait = min(wait, remain)
                message = monitor.send(wait)
                if message is not None and check(message):
                    return
