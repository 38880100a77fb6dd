"""katsdptelstate 1.0.0's own test suites over the shared log (RedisLogBackend).

The machinery of ``test_redis_interop_suites.py`` (a redis-server flushed
before every test: both the telstate db and the log db), with the shared-log
backends in place of the plain Redis ones, both ways:

* *unchanged*: katsdptelstate's ``TestTelescopeState`` classes, untouched,
  with katsdptelstate's front ends over our RedisLogBackend (sync, and aio
  on asyncio: katsdptelstate's aio tests are asyncio code);
* *rebound*: the same classes with telstate_log's names (``_rebind.py``), so
  they drive our front ends; the sync one through the one-liner
  ``TelescopeState(url, log=True)``.

Each aio suite also runs over the backend's worker-thread link (what
``from_url`` uses under trio), on asyncio.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("katsdptelstate")
pytest.importorskip("pytest_asyncio")
pytest.importorskip("fakeredis")        # imported by katsdptelstate's test modules
pytest.importorskip("async_timeout")

import anyio.to_thread
import katsdptelstate
import katsdptelstate.aio.test.test_telescope_state as kt_aio_tests
import katsdptelstate.test.test_telescope_state as kt_sync_tests
import numpy as np
import redis
from _rebind import AIO_NAMES, OUR_NAMES, AioFixtures, rebind
from test_redis_interop_suites import _AioRebound, _AioUnchanged, _RedisURL

import telstate_log
import telstate_log.aio
from telstate_log.backends import MemoryBackend, RedisLogBackend
from telstate_log.backends._log_functions import log_db_for
from telstate_log.frontend._plan import ensure_str

# Class-level asyncio marks also land on katsdptelstate's two sync methods
# in those classes; pytest-asyncio then warns harmlessly.
pytestmark = [pytest.mark.redis, pytest.mark.interop,
              pytest.mark.filterwarnings("ignore:The test <Function:pytest.PytestWarning")]


class _ThreadLinked:
    """``from_url`` for the aio backend driving a sync one from worker threads."""

    @staticmethod
    async def from_url(url: str) -> telstate_log.aio.RedisLogBackend:
        sync = await anyio.to_thread.run_sync(RedisLogBackend.from_url, url)
        return telstate_log.aio.RedisLogBackend.from_sync(sync)


# ----------------------------------------------------------------------- sync
class TestSyncUnchangedRedisLog(_RedisURL, kt_sync_tests.TestTelescopeState):
    """katsdptelstate's sync tests, unmodified, over our sync RedisLogBackend."""

    def make_telescope_state(self) -> Any:
        backend = RedisLogBackend.from_url(self.redis_url)
        self.addCleanup(backend.close)
        return katsdptelstate.TelescopeState(backend)


# Not bound to a module-level name: pytest would collect the TestCase as it is.
class TestSyncReboundRedisLog(_RedisURL, rebind(kt_sync_tests.TestTelescopeState,  # type: ignore[misc]
                                                OUR_NAMES, "_SyncReboundLog")):
    """katsdptelstate's sync tests with telstate_log's names, over RedisLogBackend."""

    def setUp(self) -> None:
        self.ts = self.make_telescope_state()
        self.ns = self.ts.view("ns")

    def make_telescope_state(self) -> Any:
        ts = telstate_log.TelescopeState(self.redis_url, log=True)    # the one-liner
        assert isinstance(ts.backend, RedisLogBackend)
        self.addCleanup(ts.backend.close)
        return ts


# ------------------------------------------------------------------------ aio
@pytest.mark.asyncio
class TestAioUnchangedRedisLog(_AioUnchanged, kt_aio_tests.TestTelescopeState):
    """katsdptelstate's aio tests, unmodified, over our aio RedisLogBackend."""

    backend_class = telstate_log.aio.RedisLogBackend


@pytest.mark.asyncio
class TestAioReboundRedisLog(_AioRebound, AioFixtures,
                             rebind(kt_aio_tests.TestTelescopeState,  # type: ignore[misc]
                                    AIO_NAMES, "_AioReboundLog")):
    """katsdptelstate's aio tests with telstate_log's names, over our aio RedisLogBackend."""

    backend_class = telstate_log.aio.RedisLogBackend


@pytest.mark.asyncio
class TestAioUnchangedRedisLogThreads(_AioUnchanged, kt_aio_tests.TestTelescopeState):
    """katsdptelstate's aio tests, unmodified, over the worker-thread link."""

    backend_class = _ThreadLinked


@pytest.mark.asyncio
class TestAioReboundRedisLogThreads(_AioRebound, AioFixtures,
                                    rebind(kt_aio_tests.TestTelescopeState,  # type: ignore[misc]
                                           AIO_NAMES, "_AioReboundLogThreads")):
    """katsdptelstate's aio tests with telstate_log's names, over the worker-thread link."""

    backend_class = _ThreadLinked


# ---------------------------------------------------------- the one-liner
def test_log_one_liner(redis_url: str, tmp_path: Any) -> None:
    """``TelescopeState(endpoint, log=...)`` opens a RedisLogBackend on that stream,
    for a URL and for ``host:port``; refused with anything but a Redis endpoint."""
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    default = telstate_log.TelescopeState(redis_url, log=True)
    named = telstate_log.TelescopeState(f"127.0.0.1:{port}", db=3, log="obs-42")
    try:
        for ts, stream, db in ((default, b"telstate-log", 0), (named, b"obs-42", 3)):
            assert isinstance(ts.backend, RedisLogBackend)
            assert (ts.backend.target.stream, ts.backend.target.data_db) == (stream, db)
            ts["key"] = stream.decode()
            assert [h.value for h in ts.history("key")] == [stream.decode()]
        raw = redis.Redis.from_url(f"{redis_url.rsplit('/', 1)[0]}/{log_db_for(0)}")
        assert raw.xlen(b"telstate-log") == raw.xlen(b"obs-42") == 2   # session + set
        raw.close()
    finally:
        default.backend.close()
        named.backend.close()
    for bad in (dict(endpoint=""), dict(endpoint=tmp_path), dict(endpoint=MemoryBackend()),
                dict(base=telstate_log.TelescopeState())):
        with pytest.raises(ValueError, match="Redis endpoint"):
            telstate_log.TelescopeState(log=True, **bad)
    for log in ("", 0, 1.5):
        with pytest.raises(ValueError, match="stream name"):
            telstate_log.TelescopeState(redis_url, log=log)  # type: ignore[arg-type]


# ----------------------------------------------------------------- katdal
_CBID = "1600000000"
_ANTENNAS = {"m000": "m000, -30:42:39.8, 21:26:38.0, 1035.0, 13.5, -8.258 -207.289 1.2075",
             "m001": "m001, -30:42:39.8, 21:26:38.0, 1035.0, 13.5, 1.126 -171.761 1.0605"}


def _fill_sdp(telstate: Any, store: Any) -> Any:
    """What ingest writes for a capture block (katdal's own fake L0 and L1 flag streams,
    two antennas); returns the L0 data put in `store`."""
    from katdal.test.test_datasources import make_fake_data_source

    return make_fake_data_source(telstate, store, (10, 16, 12), cbid=_CBID)[3]


def _fill_cam(telstate: Any) -> None:
    """What the subarray's controller and sensor bridge write: the rest katdal needs."""
    t0 = 1600000000.0 + 123.0                   # katdal's fake sync time + first timestamp
    telstate["capture_block_id"] = _CBID
    telstate["stream_name"] = "sdp_l0"
    telstate["sub_pool_resources"] = "m000,m001,cbf_1,sdp_1"
    telstate["sub_product"] = "c856M4k"
    telstate["sub_band"] = "l"
    for name, description in _ANTENNAS.items():
        telstate[f"{name}_observer"] = description
    telstate.view(_CBID)["obs_params"] = {"observer": "shared log", "experiment_id": "x1"}
    telstate.add("obs_activity", "slew", ts=t0 - 5)
    telstate.add("obs_activity", "track", ts=t0 + 4)
    telstate.add("cbf_target", "Sun, special", ts=t0 - 5)
    telstate.add("obs_label", "track", ts=t0 - 5)
    telstate.set_indexed(f"{_CBID}_cal_info", "G", [1, 2])
    telstate.set_indexed(f"{_CBID}_cal_info", "K", [3])


@pytest.mark.parametrize("db", [0, 15])          # 15: its shared log is in db 14
def test_katdal_reads_an_observation_written_through_the_shared_log(
        redis_url: str, tmp_path: Any, db: int) -> None:
    katdal = pytest.importorskip("katdal")
    from katdal.chunkstore_npy import NpyFileChunkStore

    server = redis_url.rsplit("/", 1)[0]          # redis://host:port
    url = f"{server}/{db}"
    (tmp_path / "store").mkdir()
    store = NpyFileChunkStore(str(tmp_path / "store"))
    ingest = RedisLogBackend.from_url(url, source="ingest")     # two writers, two front ends
    cam = telstate_log.TelescopeState(url, log=True)
    try:
        l0 = _fill_sdp(katsdptelstate.TelescopeState(ingest), store)
        _fill_cam(cam)
        # The same observation in katsdptelstate's memory backend: the keys to expect.
        (tmp_path / "ref").mkdir()
        reference = katsdptelstate.TelescopeState()
        _fill_sdp(reference, NpyFileChunkStore(str(tmp_path / "ref")))
        _fill_cam(reference)
        expected = {key: reference.key_type(key) for key in reference.keys("*")}

        # katsdptelstate over its own RedisBackend lists exactly those keys, and
        # key_type (which raises KeyError on a stream) answers for every one.
        theirs = katsdptelstate.TelescopeState(server.split("//")[1], db)
        assert {key: theirs.key_type(key) for key in theirs.keys("*")} == expected

        dataset = katdal.open(f"{server}?db={db}", chunk_store=store)
        assert dataset.name == f"{_CBID}_sdp_l0"
        assert [ant.name for ant in dataset.ants] == ["m000", "m001"]
        assert dataset.observer == "shared log"
        np.testing.assert_array_equal(dataset.vis[:], l0["correlator_data"])
        assert list(dataset.sensor["Observation/scan_state"]) == ["slew"] * 3 + ["track"] * 7

        # Every key came through the shared log, each writer named.
        history = telstate_log.TelescopeState(ingest).history("obs_activity")
        assert [(h.value, h.source) for h in history] == [("slew", ""), ("track", "")]
        assert telstate_log.TelescopeState(ingest).history("sdp_l0_n_chans")[0].source == \
            "ingest"
        logged = {ensure_str(e.key) for e in ingest.events() if e.key is not None}
        assert logged == set(expected)
    finally:
        ingest.close()
        cam.backend.close()
