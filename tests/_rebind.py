"""Re-run katsdptelstate's own test classes against telstate_log.

``rebind(cls, names)`` returns a copy of a test class whose methods see
telstate_log's objects where katsdptelstate's module globals named them, so
the unmodified test bodies exercise our front end, backends and errors.
``mock.patch`` decorators that target katsdptelstate's pickle switches are
re-targeted at ours.
"""

from __future__ import annotations

import functools
import types
from collections.abc import AsyncIterator
from typing import Any
from unittest import mock

import pytest
import pytest_asyncio

import telstate_log
import telstate_log.aio
from telstate_log.backends import MemoryBackend

#: katsdptelstate's names in its test modules, and ours to put in their place
OUR_NAMES = {
    "TelescopeState": telstate_log.TelescopeState,
    "MemoryBackend": MemoryBackend,
    "ImmutableKeyError": telstate_log.ImmutableKeyError,
    "TimeoutError": telstate_log.TimeoutError,
    "CancelledError": telstate_log.CancelledError,
    "encode_value": telstate_log.encode_value,
    "KeyType": telstate_log.KeyType,
    "ENCODING_MSGPACK": telstate_log.ENCODING_MSGPACK,
}
#: the same for katsdptelstate's aio test module
AIO_NAMES = dict(OUR_NAMES, TelescopeState=telstate_log.aio.TelescopeState,
                 MemoryBackend=telstate_log.aio.MemoryBackend, katsdptelstate=telstate_log)

_PATCH_TARGETS = {
    "katsdptelstate.encoding._allow_pickle": "telstate_log.core._encoding._allow_pickle",
    "katsdptelstate.encoding._warn_on_pickle": "telstate_log.core._encoding._warn_on_pickle",
}


def _rebind_function(func: types.FunctionType, glb: dict[str, Any]) -> Any:
    patchings = getattr(func, "patchings", None)
    if patchings is not None:
        inner = _rebind_function(func.__wrapped__, glb)  # type: ignore[attr-defined]
        for p in reversed(patchings):
            target = f"{p.getter().__name__}.{p.attribute}"
            target = _PATCH_TARGETS.get(target, target)
            inner = mock.patch(target, p.new)(inner)
        return inner
    new = types.FunctionType(func.__code__, glb, func.__name__, func.__defaults__,
                             func.__closure__)
    new.__kwdefaults__ = func.__kwdefaults__
    new.__qualname__ = func.__qualname__
    new.__dict__.update(func.__dict__)
    return functools.update_wrapper(new, func, assigned=("__doc__", "__module__"), updated=())


def rebind(cls: type, replacements: dict[str, Any], name: str) -> type:
    """Copy of test class `cls` (and its bases' tests) with module globals replaced."""
    namespace: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or klass.__module__.startswith("unittest"):
            continue
        glb = dict(vars(__import__(klass.__module__, fromlist=["_"])))
        glb.update(replacements)
        for attr, value in vars(klass).items():
            if isinstance(value, types.FunctionType):
                namespace[attr] = _rebind_function(value, glb)
    bases = tuple(b for b in cls.__bases__ if b.__module__.startswith("unittest")) or (object,)
    return type(name, bases, namespace)


class AioFixtures:
    """Fixtures katsdptelstate's aio test class expects (ts, ns), for rebound suites."""

    @pytest.fixture(autouse=True)
    def _pickles_as_katsdptelstate(self, request: pytest.FixtureRequest) -> Any:
        # The aio test patches katsdptelstate's pickle switch with a string
        # target inside its body; mirror it on ours for that test.
        if request.node.name.startswith("test_immutable_same_value_str"):
            with mock.patch("telstate_log.core._encoding._allow_pickle", True), \
                    mock.patch("telstate_log.core._encoding._warn_on_pickle", False):
                yield
        else:
            yield

    @pytest_asyncio.fixture
    async def ts(self) -> AsyncIterator[Any]:
        ts = await self.make_telescope_state()  # type: ignore[attr-defined]
        yield ts
        ts.backend.close()
        await ts.backend.wait_closed()

    @pytest_asyncio.fixture
    async def ns(self, ts: Any) -> Any:
        return ts.view("ns")
