"""A read-only backend showing a log's state after a given event (time travel)."""

from __future__ import annotations

import threading
from typing import Any, BinaryIO, cast

from .._asof import AsOfState, Changes
from .._errors import ReadOnlyError
from .._history import Event
from .._state import State
from ._base import PathType
from ._state_backend import StateBackend

__all__ = ["AsOfBackend"]


class AsOfBackend(StateBackend):
    """The state of `base` after event `view.position`; every write raises ReadOnlyError.

    Reads share the base backend's lock (the live columns they filter can be
    re-laid out by writers) but return snapshots.  History queries are those
    of the base, cut at this view's position.
    """

    _readonly = True
    _writable = False

    def __init__(self, view: AsOfState, lock: threading.RLock, base: StateBackend) -> None:
        super().__init__(cast(State, view), lock=lock)
        self._view = view
        self._base = base

    def _check_writable(self) -> None:
        raise ReadOnlyError(f"an as-of view (position {self._view.position}) is read-only")

    @property
    def position(self) -> int:
        """The position this view shows the state after."""
        return self._view.position

    def load_from_file(self, file: PathType | BinaryIO) -> int:
        self._check_writable()
        raise AssertionError("unreachable")

    def as_of(self, position: int | None = None, time: float | None = None) -> StateBackend:
        if time is not None:
            position = min(self._base.resolve_time(time), self._view.position)
        if position is None or position > self._view.position:
            raise ValueError(f"an as-of view at position {self._view.position} cannot show "
                             f"position {position}")
        return self._base.as_of(position)

    def resolve_time(self, when: float) -> int:
        return min(self._base.resolve_time(when), self._view.position)

    def history(self, key: bytes, sub_key: bytes | None = None) -> list[Event]:
        return [e for e in self._base.history(key, sub_key) if e.position <= self.position]

    def events(self, since: int = 1, until: int | None = None) -> list[Event]:
        stop = self.position if until is None else min(until, self.position)
        return self._base.events(since, stop)

    def changes(self, since: int, until: int) -> Changes:
        return self._base.changes(since, min(until, self.position))

    def session_info(self, session: int) -> dict[str, Any]:
        return self._base.session_info(session)
