"""A materialised follower of a shared log: reads at in-memory speed.

Theory of operation
-------------------
:class:`StreamFollower` is a read-only Backend whose reads are served by a
:class:`~._stream_replica.StreamReplica` (in-memory indexes, as a log
backend's), which a :class:`~._stream_reader.StreamReader` thread keeps up
to date with blocking ``XREAD`` on the log db, never skipping an entry (see
that module for reconnection and the divergence checks).  Once the reader
stopped -- the stream diverged from what the replica holds, it has a gap,
or the follower was closed -- every read and wait raises the reason
(monitors are woken to re-read, and meet it).  Its monitors are the
replica's: updates come from the hub as entries are applied, so a monitor
that wakes finds the follower's state already showing the change.

Read-your-writes: :meth:`StreamFollower.expect` names a position that
later reads wait for (``None``: the stream's position at the next read,
after a write that changed nothing because someone else had written the
value).  :class:`MaterializedReads` is the part of
:class:`~._redis_log.RedisLogBackend` that routes reads and monitors through
such a follower (``materialize=True``) and calls :meth:`~StreamFollower.expect`
after each write with the position the write function replied.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterable, Sequence
from typing import Any, BinaryIO, TypeVar

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..core._errors import ConnectionError, ReadOnlyError, SharedLogError
from ..core._sensor_range import SensorRange
from ..core._types import KeyType, KeyUpdateBase
from ._base import Backend, GetResult, PathType
from ._log_functions import log_db_for
from ._redis import RedisBackend
from ._redis_connect import connect
from ._redis_endpoint import check_client, parse_endpoint
from ._state_backend import StateBackend
from ._stream_reader import CLIENT_NAME, StreamReader, pool_like
from ._stream_replica import StreamReplica

__all__ = ["MaterializedReads", "StreamFollower"]

_T = TypeVar("_T")


class StreamFollower(Backend):
    """Read-only telescope state materialised from a shared log's stream.

    Parameters
    ----------
    client
        A :class:`redis.Redis` of the telstate database the log belongs to
        (only its connection settings are used; the caller keeps it).
    stream
        Name of the shared log.
    wait
        Catch up with the stream (:meth:`sync`) before returning.
    read_timeout
        Longest a read waits for a position it must see (then ConnectionError).
    """

    def __init__(self, client: redis.Redis, *, stream: str | bytes = "telstate-log",
                 wait: bool = True, read_timeout: float = 30.0) -> None:
        check_client(client)
        self.db = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
        self.stream = stream.encode() if isinstance(stream, str) else bytes(stream)
        self.replica = StreamReplica()
        self.read_timeout = read_timeout
        log_db = log_db_for(self.db)
        # one-off queries retry as the caller's client does; the reader reconnects itself
        self._client = redis.Redis(connection_pool=pool_like(client.connection_pool, db=log_db))
        pool = pool_like(client.connection_pool, db=log_db, retry=Retry(NoBackoff(), 0),
                         health_check_interval=0, client_name=CLIENT_NAME)
        self._reader = StreamReader(pool, self.stream, self.replica)
        self._expect_lock = threading.Lock()
        self._expected = 0
        self._expect_current = False
        self._reader.start()
        if wait:
            try:
                self.sync()
            except BaseException:
                self.close()
                raise

    @classmethod
    def from_url(cls, url: str, *, db: int | None = None, stream: str = "telstate-log",
                 wait: bool = True) -> StreamFollower:
        """Follow the shared log `stream` of the telstate database at `url`
        (``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://``)."""
        endpoint = parse_endpoint(url)
        if endpoint.url is None:
            raise ValueError(f"not a Redis URL: {endpoint}")
        client = connect(endpoint.url, db=db)
        try:
            return cls(client, stream=stream, wait=wait)
        finally:
            client.close()

    # ------------------------------------------------------------ waiting
    def expect(self, position: int | None) -> None:
        """Make later reads wait until `position` is applied (None: the stream's
        position at the next read)."""
        with self._expect_lock:
            if position is None:
                self._expect_current = True
            elif position > self._expected:
                self._expected = position

    def _ready(self) -> StreamReplica:
        """The replica, once it holds what reads must see; raises the stop error."""
        replica = self.replica
        error = replica.error
        if error is not None:
            raise error.with_traceback(None)
        if self._expect_current:
            with self._expect_lock:
                self._expect_current = False
            self.expect(self._stream_position())
        want = self._expected
        if want > replica.applied and not replica.wait_for(want, self.read_timeout):
            raise ConnectionError(f"the follower has not applied position {want} within "
                                  f"{self.read_timeout} s (is the Redis server reachable?)")
        return replica

    def _stream_position(self) -> int:
        raw = self._client.hmget(self.stream + b":meta", ["pos", "db"])
        if raw[1] is not None and int(raw[1]) != self.db:
            raise SharedLogError(f"the shared log {self.stream!r} belongs to database "
                                 f"{int(raw[1])}, not {self.db}")
        return int(raw[0] or 0)

    def sync(self, timeout: float | None = None) -> int:
        """Wait until the follower holds every event written so far; returns the position."""
        position = self._stream_position()
        self.expect(position)
        wait = self.read_timeout if timeout is None else timeout
        if not self.replica.wait_for(position, wait):
            raise ConnectionError(f"the follower has not reached position {position} "
                                  f"within {wait} s")
        return position

    def wait_for(self, position: int, timeout: float | None = None) -> bool:
        """Wait until `position` is applied; False on timeout; raises the stop error."""
        return self.replica.wait_for(position, timeout)

    @property
    def position(self) -> int:
        """The last position applied."""
        return self.replica.applied

    @property
    def error(self) -> BaseException | None:
        """The error that stopped the follower, if one did."""
        return self.replica.error

    # ----------------------------------------------------------------- reads
    def __contains__(self, key: bytes) -> bool:
        return key in self._ready()

    def keys(self, filter: bytes) -> list[bytes]:
        return self._ready().keys(filter)

    def key_type(self, key: bytes) -> KeyType | None:
        return self._ready().key_type(key)

    def get(self, key: bytes) -> GetResult:
        return self._ready().get(key)

    def get_indexed(self, key: bytes, sub_key: bytes) -> bytes | None:
        return self._ready().get_indexed(key, sub_key)

    def get_range(self, key: bytes, start_time: float, end_time: float,
                  include_previous: bool,
                  include_end: bool) -> list[tuple[bytes, float]] | None:
        return self._ready().get_range(key, start_time, end_time, include_previous, include_end)

    def get_range_arrays(self, key: bytes, start_time: float, end_time: float,
                         include_previous: bool, include_end: bool) -> SensorRange | None:
        return self._ready().get_range_arrays(key, start_time, end_time, include_previous,
                                              include_end)

    def dump(self, key: bytes) -> bytes | None:
        return self._ready().dump(key)

    def as_of(self, position: int | None = None, time: float | None = None) -> StateBackend:
        return self._ready().as_of(position, time)

    def resolve_time(self, when: float) -> int:
        return self._ready().resolve_time(when)

    def changes(self, since: int, until: int) -> Any:
        return self._ready().changes(since, until)

    def session_info(self, session: int) -> dict[str, Any]:
        return self._ready().session_info(session)

    def monitor_keys(self, keys: Iterable[bytes]) \
            -> Generator[KeyUpdateBase | None, float | None, None]:
        return self.replica.monitor_keys(keys)

    def watch_all(self) -> Generator[KeyUpdateBase | None, float | None, None]:
        return self.replica.watch_all()

    # ---------------------------------------------------------------- writes
    def _refuse(self) -> ReadOnlyError:
        return ReadOnlyError("a StreamFollower is read-only: write through RedisLogBackend")

    def load_from_file(self, file: PathType | BinaryIO) -> int:
        raise self._refuse()

    def delete(self, key: bytes) -> None:
        raise self._refuse()

    def clear(self) -> None:
        raise self._refuse()

    def set_immutable(self, key: bytes, value: bytes) -> bytes | None:
        raise self._refuse()

    def add_mutable(self, key: bytes, value: bytes, timestamp: float) -> None:
        raise self._refuse()

    def add_mutable_many(self, key: bytes, values: Sequence[bytes] | np.ndarray,
                         timestamps: Any) -> int:
        raise self._refuse()

    def set_indexed(self, key: bytes, sub_key: bytes, value: bytes) -> bytes | None:
        raise self._refuse()

    # -------------------------------------------------------------- lifetime
    @property
    def closed(self) -> bool:
        return self._reader.closed

    def close(self) -> None:
        """Stop following; later reads raise ConnectionError."""
        if self._reader.closed:
            return
        self._reader.close()
        self.replica.fail(ConnectionError("the StreamFollower was closed"))
        self._client.close()
        self._client.connection_pool.disconnect()

    def __repr__(self) -> str:
        return (f"<StreamFollower {self.stream.decode(errors='replace')} db={self.db} "
                f"position={self.replica.applied}>")


class MaterializedReads(RedisBackend):
    """Reads through a :class:`StreamFollower`, when a shared-log backend has one.

    The part of :class:`~._redis_log.RedisLogBackend` that serves
    ``materialize=True``: reads and monitors go to :attr:`follower` and
    wait for the writes this backend made (:meth:`_wrote`); without a
    follower everything is :class:`~._redis.RedisBackend`'s.
    """

    #: the follower serving reads (None: reads go to Redis)
    follower: StreamFollower | None = None

    def _wrote(self, done: tuple[_T, int]) -> tuple[_T, int]:
        """Note a write's ``(result, last position or 0)``: later reads see it."""
        if self.follower is not None:
            self.follower.expect(done[1] or None)
        return done

    def __contains__(self, key: bytes) -> bool:
        f = self.follower
        return key in f if f is not None else super().__contains__(key)

    def keys(self, filter: bytes) -> list[bytes]:
        f = self.follower
        return f.keys(filter) if f is not None else super().keys(filter)

    def key_type(self, key: bytes) -> KeyType | None:
        f = self.follower
        return f.key_type(key) if f is not None else super().key_type(key)

    def get(self, key: bytes) -> GetResult:
        f = self.follower
        return f.get(key) if f is not None else super().get(key)

    def get_indexed(self, key: bytes, sub_key: bytes) -> bytes | None:
        f = self.follower
        return f.get_indexed(key, sub_key) if f is not None else super().get_indexed(key, sub_key)

    def get_range(self, key: bytes, start_time: float, end_time: float,
                  include_previous: bool,
                  include_end: bool) -> list[tuple[bytes, float]] | None:
        f = self.follower
        if f is not None:
            return f.get_range(key, start_time, end_time, include_previous, include_end)
        return super().get_range(key, start_time, end_time, include_previous, include_end)

    def dump(self, key: bytes) -> bytes | None:
        f = self.follower
        return f.dump(key) if f is not None else super().dump(key)

    def close(self) -> None:
        if self.follower is not None:
            self.follower.close()
        super().close()
