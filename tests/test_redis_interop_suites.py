"""katsdptelstate 1.0.0's own test suites over telstate_log's Redis backends.

Against a real redis-server (flushed before every test), two ways each for
the sync and the aio suite (the aio suite also over ThreadedRedisBackend):

* *unchanged*: katsdptelstate's ``TestTelescopeState`` classes, untouched,
  with katsdptelstate's front ends over our ``RedisBackend`` -- the drop-in
  path for users who swap the backend only;
* *rebound*: the same classes with ``TelescopeState``, the backends and the
  error names rebound to telstate_log's (see ``_rebind.py``), so
  katsdptelstate's tests drive our front ends over our Redis backends.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("katsdptelstate")
pytest.importorskip("pytest_asyncio")
pytest.importorskip("fakeredis")        # imported by katsdptelstate's test modules
pytest.importorskip("async_timeout")

import katsdptelstate
import katsdptelstate.aio
import katsdptelstate.aio.test.test_telescope_state as kt_aio_tests
import katsdptelstate.backend
import katsdptelstate.test.test_telescope_state as kt_sync_tests
from _rebind import AIO_NAMES, OUR_NAMES, AioFixtures, rebind

import telstate_log
import telstate_log.aio
from telstate_log.backends import Backend, RedisBackend

# Class-level asyncio marks also land on katsdptelstate's two sync methods
# in those classes; pytest-asyncio then warns harmlessly.
pytestmark = [pytest.mark.redis, pytest.mark.interop,
              pytest.mark.filterwarnings("ignore:The test <Function:pytest.PytestWarning")]

katsdptelstate.backend.Backend.register(Backend)



class _RedisURL:
    """Gives each test ``self.redis_url``: an empty database on the shared server."""

    redis_url: str

    @pytest.fixture(autouse=True)
    def _redis_url(self, redis_url: str) -> None:
        self.redis_url = redis_url


# ----------------------------------------------------------------------- sync
class TestSyncUnchangedRedis(_RedisURL, kt_sync_tests.TestTelescopeState):
    """katsdptelstate's sync tests, unmodified, over our sync RedisBackend."""

    def make_telescope_state(self) -> Any:
        backend = RedisBackend.from_url(self.redis_url)
        self.addCleanup(backend.close)
        return katsdptelstate.TelescopeState(backend)


# Not bound to a module-level name: pytest would collect the TestCase as it is.
class TestSyncReboundRedis(_RedisURL, rebind(kt_sync_tests.TestTelescopeState,  # type: ignore[misc]
                                             OUR_NAMES, "_SyncRebound")):
    """katsdptelstate's sync tests with telstate_log's names, over our RedisBackend."""

    def setUp(self) -> None:
        self.ts = self.make_telescope_state()
        self.ns = self.ts.view("ns")

    def make_telescope_state(self) -> Any:
        # The endpoint form, as users write it: exercises redis_backend_for_endpoint.
        ts = telstate_log.TelescopeState(self.redis_url)
        self.addCleanup(ts.backend.close)
        return ts


# ------------------------------------------------------------------------ aio
class _AioUnchanged(_RedisURL):
    backend_class: Any

    async def make_telescope_state(self) -> Any:
        return katsdptelstate.aio.TelescopeState(
            await self.backend_class.from_url(self.redis_url))


class _AioRebound(_RedisURL):
    backend_class: Any

    async def make_telescope_state(self) -> Any:
        return telstate_log.aio.TelescopeState(await self.backend_class.from_url(self.redis_url))


@pytest.mark.asyncio
class TestAioUnchangedRedis(_AioUnchanged, kt_aio_tests.TestTelescopeState):
    """katsdptelstate's aio tests, unmodified, over our aio RedisBackend."""

    backend_class = telstate_log.aio.RedisBackend


@pytest.mark.asyncio
class TestAioReboundRedis(_AioRebound, AioFixtures,
                          rebind(kt_aio_tests.TestTelescopeState,  # type: ignore[misc]
                                 AIO_NAMES, "_AioRebound")):
    """katsdptelstate's aio tests with telstate_log's names, over our aio RedisBackend."""

    backend_class = telstate_log.aio.RedisBackend


@pytest.mark.asyncio
class TestAioUnchangedThreadedRedis(_AioUnchanged, kt_aio_tests.TestTelescopeState):
    """katsdptelstate's aio tests, unmodified, over our ThreadedRedisBackend (on asyncio)."""

    backend_class = telstate_log.aio.ThreadedRedisBackend


@pytest.mark.asyncio
class TestAioReboundThreadedRedis(_AioRebound, AioFixtures,
                                  rebind(kt_aio_tests.TestTelescopeState,  # type: ignore[misc]
                                         AIO_NAMES, "_AioReboundThreaded")):
    """katsdptelstate's aio tests with telstate_log's names, over our ThreadedRedisBackend."""

    backend_class = telstate_log.aio.ThreadedRedisBackend
