"""The time-travel and audit half of the front ends: plans and HistoryEvent.

Theory of operation
-------------------
A log keeps every event, so a front end can answer questions about the past:
``as_of`` (the store as it was at a position or time), ``history`` (every
event that touched one key), ``audit`` (every event in a range, with the
session that wrote it) and ``changes`` (a summary between two positions).
:class:`HistoryPlans` writes them as plans (see :mod:`telstate_log.frontend._plan`),
so the sync and async front ends share them; the backend finds the events
and this module decodes them into :class:`HistoryEvent` records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..core._asof import Changes
from ..core._encoding import ENCODING_MSGPACK, decode_value, encode_value
from ..core._errors import DecodeError
from . import _ops as ops
from ._plan import NO_SUB_KEY, Key, Plan, ensure_binary, ensure_str

__all__ = ["HistoryEvent", "HistoryPlans"]


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


class HistoryPlans:
    """Plans for time travel and audit, mixed into the front-end base class."""

    _backend: Any
    _prefixes: tuple[bytes, ...]

    def _plan_as_of(self, position: int | None, time: float | None) -> Plan[Any]:
        backend = yield ops.AS_OF, (position, time)
        return self.__class__(backend, prefixes=self._prefixes)  # type: ignore[call-arg]

    def _plan_decode_events(self, events: list[Any]) -> Plan[list[HistoryEvent]]:
        sources: dict[int, dict[str, Any]] = {}
        for sess in sorted({e.session for e in events}):
            sources[sess] = yield ops.SESSION_INFO, (sess,)
        return [HistoryEvent.decode(e, sources[e.session]) for e in events]

    def _plan_history(self, key: Key, sub_key: Any) -> Plan[list[HistoryEvent]]:
        key = ensure_binary(key)
        sub_enc = None if sub_key is NO_SUB_KEY else encode_value(sub_key, ENCODING_MSGPACK)
        for prefix in self._prefixes:
            events = yield ops.HISTORY, (prefix + key, sub_enc)
            if events:
                return (yield from self._plan_decode_events(events))
        return []

    def _plan_audit(self, since: int | None, until: int | None, since_time: float | None,
                    until_time: float | None) -> Plan[list[HistoryEvent]]:
        if since_time is not None:
            # after the last event recorded strictly before since_time
            since = 1 + (yield ops.RESOLVE_TIME, (math.nextafter(since_time, -math.inf),))
        if until_time is not None:
            until = yield ops.RESOLVE_TIME, (until_time,)
        events = yield ops.EVENTS, (1 if since is None else since, until)
        return (yield from self._plan_decode_events(events))

    def _plan_changes(self, since: int, until: int | None) -> Plan[Changes]:
        if until is None:
            until = self.position
        raw = yield ops.CHANGES, (since, until)
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
        return int(self._backend.position)
