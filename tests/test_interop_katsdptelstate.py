"""katsdptelstate 1.0.0's own test suites, run against telstate_log.

Two ways, for the memory and the log backend:

* *rebound*: katsdptelstate's sync and aio ``TestTelescopeState`` with their
  ``TelescopeState``, ``MemoryBackend`` and error names rebound to
  telstate_log's, so our front ends run katsdptelstate's tests;
* *unchanged*: the same classes, untouched, over telstate_log backends
  under katsdptelstate's own front ends (the drop-in path for users who
  migrate one piece at a time).
"""

from __future__ import annotations

import itertools
import tempfile
from typing import Any

import pytest

pytest.importorskip("katsdptelstate")
pytest.importorskip("pytest_asyncio")
pytest.importorskip("fakeredis")
pytest.importorskip("async_timeout")

import katsdptelstate
import katsdptelstate.aio
import katsdptelstate.aio.test.test_telescope_state as kt_aio_tests
import katsdptelstate.backend
import katsdptelstate.test.test_telescope_state as kt_sync_tests
from _rebind import AIO_NAMES, OUR_NAMES, AioFixtures, rebind

import telstate_log
import telstate_log.aio
from telstate_log.backends import Backend, LogBackend, MemoryBackend

# Class-level asyncio marks also land on katsdptelstate's two sync methods
# in those classes; pytest-asyncio then warns harmlessly.
pytestmark = [pytest.mark.interop,
              pytest.mark.filterwarnings("ignore:The test <Function:pytest.PytestWarning")]

katsdptelstate.backend.Backend.register(Backend)

_tmp = tempfile.TemporaryDirectory(prefix="telstate-log-interop-")
_counter = itertools.count()


def _log_dir() -> str:
    return f"{_tmp.name}/log{next(_counter)}"



# ----------------------------------------------------------------------- sync
_SyncRebound: Any = rebind(kt_sync_tests.TestTelescopeState, OUR_NAMES, "_SyncRebound")


class TestSyncReboundMemory(_SyncRebound):
    """katsdptelstate's sync tests with telstate_log's names, memory backend."""

    def setUp(self) -> None:
        self.ts = self.make_telescope_state()
        self.ns = self.ts.view("ns")


class TestSyncReboundLog(TestSyncReboundMemory):
    """katsdptelstate's sync tests with telstate_log's names, log backend."""

    def make_telescope_state(self) -> Any:
        self.backend = LogBackend(_log_dir(), fsync="never")
        self.addCleanup(self.backend.close)
        return telstate_log.TelescopeState(self.backend)


class TestSyncUnchangedMemory(kt_sync_tests.TestTelescopeState):
    """katsdptelstate's sync tests, unmodified, over telstate_log's MemoryBackend."""

    def make_telescope_state(self) -> Any:
        return katsdptelstate.TelescopeState(MemoryBackend())


class TestSyncUnchangedLog(kt_sync_tests.TestTelescopeState):
    """katsdptelstate's sync tests, unmodified, over telstate_log's LogBackend."""

    def make_telescope_state(self) -> Any:
        backend = LogBackend(_log_dir(), fsync="never")
        self.addCleanup(backend.close)
        return katsdptelstate.TelescopeState(backend)


# ------------------------------------------------------------------------ aio


_AioRebound: Any = rebind(kt_aio_tests.TestTelescopeState, AIO_NAMES, "_AioRebound")


@pytest.mark.asyncio
class TestAioReboundMemory(AioFixtures, _AioRebound):
    """katsdptelstate's aio tests with telstate_log's names, memory backend."""

    async def make_telescope_state(self) -> Any:
        return telstate_log.aio.TelescopeState()


@pytest.mark.asyncio
class TestAioReboundLog(AioFixtures, _AioRebound):
    """katsdptelstate's aio tests with telstate_log's names, log backend."""

    async def make_telescope_state(self) -> Any:
        backend = await telstate_log.aio.LogBackend.open(_log_dir(), fsync="never")
        return telstate_log.aio.TelescopeState(backend)


@pytest.mark.asyncio
class TestAioUnchangedMemory(kt_aio_tests.TestTelescopeState):
    """katsdptelstate's aio tests, unmodified, over telstate_log's aio MemoryBackend."""

    async def make_telescope_state(self) -> Any:
        return katsdptelstate.aio.TelescopeState(telstate_log.aio.MemoryBackend())


@pytest.mark.asyncio
class TestAioUnchangedLog(kt_aio_tests.TestTelescopeState):
    """katsdptelstate's aio tests, unmodified, over telstate_log's aio LogBackend."""

    async def make_telescope_state(self) -> Any:
        backend = await telstate_log.aio.LogBackend.open(_log_dir(), fsync="always")
        return katsdptelstate.aio.TelescopeState(backend)


@pytest.mark.asyncio
class TestAioSharedMemoryBackend:
    """katsdptelstate's to_sync/from_sync test, with telstate_log's backends."""

    async def test_shared(self) -> None:
        async_backend = telstate_log.aio.MemoryBackend()
        sync_ts = telstate_log.TelescopeState(async_backend.to_sync())
        async_ts = telstate_log.aio.TelescopeState(async_backend)
        sync_ts["foo"] = "bar"
        assert await async_ts.get("foo") == "bar"
        ts2 = telstate_log.aio.TelescopeState(
            telstate_log.aio.MemoryBackend.from_sync(async_backend.to_sync()))
        assert await ts2.get("foo") == "bar"
