"""The backend operations a plan can ask for, typed for both kinds of backend.

Theory of operation
-------------------
A plan (:mod:`telstate_log.frontend._plan`) yields ``(operation, args)``;
the sync front end calls ``operation.sync(backend, *args)`` and the async
one awaits ``operation.aio(backend, *args)``.  Each :class:`Op` binds one
backend method twice, once against the sync :class:`~telstate_log.backends.Backend`
and once against the async one, so mypy checks that the method exists with
those arguments on both, and a reader can follow a plan to the backend
method it runs (no method names as strings).  The time-travel operations
are not part of the Backend contract; they are typed against the
:class:`HistorySource` protocols, which the state backends implement (a
backend without them raises AttributeError, thrown into the plan).  The
writes are not here: they are not plans (see :mod:`telstate_log.frontend._writes`),
each front end calls its own kind of backend's write methods directly.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from ..backends._base import Backend, GetResult
from ..core._asof import Changes
from ..core._types import KeyType

if TYPE_CHECKING:
    from ..backends.aio._backend import Backend as AsyncBackend
else:
    AsyncBackend = Any

__all__ = [
    "AS_OF",
    "CHANGES",
    "CLEAR",
    "DELETE",
    "EVENTS",
    "EXISTS",
    "GET",
    "GET_INDEXED",
    "HISTORY",
    "KEYS",
    "KEY_TYPE",
    "RESOLVE_TIME",
    "SESSION_INFO",
    "AsyncHistorySource",
    "HistorySource",
    "Op",
]

_R = TypeVar("_R")


class Op(Generic[_R]):
    """One backend operation: how to run it on a sync and on an async backend."""

    __slots__ = ("aio", "name", "sync")

    def __init__(self, name: str, sync: Callable[..., _R],
                 aio: Callable[..., Awaitable[_R]]) -> None:
        self.name = name
        self.sync = sync
        self.aio = aio

    def __repr__(self) -> str:
        return f"<backend operation {self.name}>"


class HistorySource(Protocol):
    """What a sync backend with a history offers (the state backends)."""

    def as_of(self, position: int | None, time: float | None) -> Any: ...
    def session_info(self, session: int) -> dict[str, Any]: ...
    def history(self, key: bytes, sub_key: bytes | None) -> list[Any]: ...
    def resolve_time(self, when: float) -> int: ...
    def events(self, since: int, until: int | None) -> list[Any]: ...
    def changes(self, since: int, until: int) -> Changes: ...


class ColumnarSource(Protocol):
    """A sync backend that serves sample ranges as columns (the state backends)."""

    def get_range_arrays(self, key: bytes, start_time: float, end_time: float,
                         include_previous: bool, include_end: bool) -> Any: ...


class AsyncColumnarSource(Protocol):
    """An async backend that serves sample ranges as columns."""

    async def get_range_arrays(self, key: bytes, start_time: float, end_time: float,
                               include_previous: bool, include_end: bool) -> Any: ...


class AsyncHistorySource(Protocol):
    """What an async backend with a history offers."""

    async def as_of(self, position: int | None, time: float | None) -> Any: ...
    async def session_info(self, session: int) -> dict[str, Any]: ...
    async def history(self, key: bytes, sub_key: bytes | None) -> list[Any]: ...
    async def resolve_time(self, when: float) -> int: ...
    async def events(self, since: int, until: int | None) -> list[Any]: ...
    async def changes(self, since: int, until: int) -> Changes: ...


# The async front end's `exists` is a method; the sync Backend's is `in`.
def _exists(b: Backend, key: bytes) -> bool:
    return key in b


def _aexists(b: AsyncBackend, key: bytes) -> Awaitable[bool]:
    return b.exists(key)


def _keys(b: Backend, pattern: bytes) -> list[bytes]:
    return b.keys(pattern)


def _akeys(b: AsyncBackend, pattern: bytes) -> Awaitable[list[bytes]]:
    return b.keys(pattern)


def _key_type(b: Backend, key: bytes) -> KeyType | None:
    return b.key_type(key)


def _akey_type(b: AsyncBackend, key: bytes) -> Awaitable[KeyType | None]:
    return b.key_type(key)


def _delete(b: Backend, key: bytes) -> None:
    b.delete(key)


def _adelete(b: AsyncBackend, key: bytes) -> Awaitable[None]:
    return b.delete(key)


def _clear(b: Backend) -> None:
    b.clear()


def _aclear(b: AsyncBackend) -> Awaitable[None]:
    return b.clear()


def _get(b: Backend, key: bytes) -> GetResult:
    return b.get(key)


def _aget(b: AsyncBackend, key: bytes) -> Awaitable[GetResult]:
    return b.get(key)


def _get_indexed(b: Backend, key: bytes, sub_key: bytes) -> bytes | None:
    return b.get_indexed(key, sub_key)


def _aget_indexed(b: AsyncBackend, key: bytes, sub_key: bytes) -> Awaitable[bytes | None]:
    return b.get_indexed(key, sub_key)


def _get_range(b: Backend, key: bytes, st: float, et: float, include_previous: bool,
               include_end: bool) -> list[tuple[bytes, float]] | None:
    return b.get_range(key, st, et, include_previous, include_end)


def _aget_range(b: AsyncBackend, key: bytes, st: float, et: float, include_previous: bool,
                include_end: bool) -> Awaitable[list[tuple[bytes, float]] | None]:
    return b.get_range(key, st, et, include_previous, include_end)


def _get_range_arrays(b: ColumnarSource, key: bytes, st: float, et: float,
                      include_previous: bool, include_end: bool) -> Any:
    return b.get_range_arrays(key, st, et, include_previous, include_end)


def _aget_range_arrays(b: AsyncColumnarSource, key: bytes, st: float, et: float,
                       include_previous: bool, include_end: bool) -> Awaitable[Any]:
    return b.get_range_arrays(key, st, et, include_previous, include_end)


def _as_of(b: HistorySource, position: int | None, time: float | None) -> Any:
    return b.as_of(position, time)


def _aas_of(b: AsyncHistorySource, position: int | None, time: float | None) -> Awaitable[Any]:
    return b.as_of(position, time)


def _session_info(b: HistorySource, session: int) -> dict[str, Any]:
    return b.session_info(session)


def _asession_info(b: AsyncHistorySource, session: int) -> Awaitable[dict[str, Any]]:
    return b.session_info(session)


def _history(b: HistorySource, key: bytes, sub_key: bytes | None) -> list[Any]:
    return b.history(key, sub_key)


def _ahistory(b: AsyncHistorySource, key: bytes, sub_key: bytes | None) -> Awaitable[list[Any]]:
    return b.history(key, sub_key)


def _resolve_time(b: HistorySource, when: float) -> int:
    return b.resolve_time(when)


def _aresolve_time(b: AsyncHistorySource, when: float) -> Awaitable[int]:
    return b.resolve_time(when)


def _events(b: HistorySource, since: int, until: int | None) -> list[Any]:
    return b.events(since, until)


def _aevents(b: AsyncHistorySource, since: int, until: int | None) -> Awaitable[list[Any]]:
    return b.events(since, until)


def _changes(b: HistorySource, since: int, until: int) -> Changes:
    return b.changes(since, until)


def _achanges(b: AsyncHistorySource, since: int, until: int) -> Awaitable[Changes]:
    return b.changes(since, until)


EXISTS = Op("exists", _exists, _aexists)
KEYS = Op("keys", _keys, _akeys)
KEY_TYPE = Op("key_type", _key_type, _akey_type)
DELETE = Op("delete", _delete, _adelete)
CLEAR = Op("clear", _clear, _aclear)
GET = Op("get", _get, _aget)
GET_INDEXED = Op("get_indexed", _get_indexed, _aget_indexed)
GET_RANGE = Op("get_range", _get_range, _aget_range)
GET_RANGE_ARRAYS = Op("get_range_arrays", _get_range_arrays, _aget_range_arrays)
AS_OF = Op("as_of", _as_of, _aas_of)
SESSION_INFO = Op("session_info", _session_info, _asession_info)
HISTORY = Op("history", _history, _ahistory)
RESOLVE_TIME = Op("resolve_time", _resolve_time, _aresolve_time)
EVENTS = Op("events", _events, _aevents)
CHANGES = Op("changes", _changes, _achanges)
