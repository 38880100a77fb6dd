"""Checks shared by the two async Redis backends' tests (asyncio's and the threaded one).

Both implement the same async Backend over the same Redis layout, so the
byte-level operations, RDB loading, the first contact with a dead server and
recovery from a server restart are checked by one function each, called from
tests/test_redis_backend_aio.py and tests/test_redis_backend_threads.py with
their own backend.  What differs (pub/sub plumbing, threads, closing) stays
in those modules.
"""

from __future__ import annotations

import math
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "replay"))

import _redis_range_cases as range_cases
from _rdb_helpers import redis_state, sample_state, write_state
from _redis import RedisServer
from _waiting import DEADLINE

import telstate_log
import telstate_log.aio
from telstate_log import ImmutableKeyError, KeyType
from telstate_log.backends import KeyUpdateBase, MutableKeyUpdate


async def next_update(monitor: Any, want: type = KeyUpdateBase,
                      timeout: float = DEADLINE) -> Any:
    """The next update of `monitor` that is a `want` (within `timeout` seconds)."""
    with anyio.fail_after(timeout):
        async for update in monitor:
            if isinstance(update, want):
                return update
    raise AssertionError("monitor ended")


async def check_operations(backend: Any, client: Any) -> None:
    """Every byte-level method, its results and its typed errors."""
    assert await backend.set_immutable(b"i", b"\xffv") is None
    assert await backend.set_immutable(b"i", b"\xffw") == b"\xffv"
    await backend.add_mutable(b"m", b"\xff1", 2.0)
    await backend.add_mutable(b"m", b"\xff0", 1.0)
    assert await backend.set_indexed(b"x", b"\xffs", b"\xffv") is None
    assert await backend.set_indexed(b"x", b"\xffs", b"\xffw") == b"\xffv"
    assert await backend.get(b"i") == (b"\xffv", None)
    assert await backend.get(b"m") == (b"\xff1", 2.0)
    assert await backend.get(b"x") == ({b"\xffs": b"\xffv"}, None)
    assert await backend.get_indexed(b"x", b"\xffs") == b"\xffv"
    assert await backend.get_indexed(b"x", b"\xffnone") is None
    with pytest.raises(KeyError):
        await backend.get_indexed(b"missing", b"\xffs")
    assert await backend.get_range(b"m", 0.0, math.inf, False, False) == [(b"\xff0", 1.0),
                                                                          (b"\xff1", 2.0)]
    assert await backend.get_range(b"m", 2.0, 2.0, True, True) == [(b"\xff0", 1.0),
                                                                   (b"\xff1", 2.0)]
    assert await backend.get_range(b"missing", 0.0, 1.0, True, False) is None
    assert [await backend.key_type(k) for k in (b"i", b"m", b"x", b"no")] == [
        KeyType.IMMUTABLE, KeyType.MUTABLE, KeyType.INDEXED, None]
    assert await backend.exists(b"i") and not await backend.exists(b"no")
    assert sorted(await backend.keys(b"*")) == [b"i", b"m", b"x"]
    assert await backend.dump(b"i") == client.dump(b"i")
    assert await backend.dump(b"no") is None
    for call in (backend.set_indexed(b"i", b"\xffs", b"\xffv"),          # script WRONGTYPE
                 backend.get_range(b"x", 0.0, math.inf, True, False),     # pipeline
                 backend.add_mutable(b"x", b"\xffv", 1.0)):
        with pytest.raises(ImmutableKeyError):
            await call
    with pytest.raises(telstate_log.InvalidTimestampError):
        await backend.add_mutable(b"m", b"\xffv", math.nan)
    await backend.delete(b"i")
    assert not await backend.exists(b"i")
    await backend.clear()
    assert await backend.keys(b"*") == []
    assert repr(backend).startswith(f"<{type(backend).__name__} redis://127.0.0.1:")


async def check_get_range_matches_katsdptelstate(backend: Any, client: Any) -> None:
    """get_range's result or exception type, for every window and key kind, is
    katsdptelstate's (see _redis_range_cases)."""
    cases = range_cases.fill(client)
    theirs = range_cases.expected(client, cases)
    ours = [await range_cases.async_outcome(lambda case=case: backend.get_range(*case))
            for case in cases]
    wrong = range_cases.mismatches(cases, ours, theirs)
    assert not wrong, wrong[:10]


async def check_load_from_file(tmp_path: Path, backend: Any, client: Any) -> None:
    """An RDB file loads into Redis; a conflicting key is refused by name."""
    state = sample_state()
    path = tmp_path / "state.rdb"
    write_state(state, path)
    assert await backend.load_from_file(path) == len(state)
    assert redis_state(client) == state
    client.set(b"obs_name", b"\xffother")
    with pytest.raises(ImmutableKeyError, match="obs_name"):
        await telstate_log.aio.TelescopeState(backend).load_from_file(str(path))


async def check_first_contact_failure(from_url: Callable[[str], Awaitable[Any]]) -> None:
    """No server: our ConnectionError naming the address, never the password."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(telstate_log.ConnectionError, match=f"127.0.0.1:{port}") as info:
        await from_url(f"redis://:hunter2@127.0.0.1:{port}/0")
    assert "hunter2" not in str(info.value)


async def check_wrong_password(from_url: Callable[[str], Awaitable[Any]],
                               fresh_redis: RedisServer) -> None:
    """A wrong password: our ConnectionError at once (one attempt), password hidden."""
    fresh_redis.client().config_set("requirepass", "hunter2")
    with pytest.raises(telstate_log.ConnectionError, match="username-password") as info:
        await from_url(f"redis://:wrong-secret@127.0.0.1:{fresh_redis.port}/0")
    assert "wrong-secret" not in str(info.value)
    log = fresh_redis.client(password="hunter2").acl_log()
    assert sum(e["count"] for e in log if e["reason"] == "auth") == 1, log


async def check_restart(backend: Any, fresh_redis: RedisServer) -> Any:
    """A monitor resubscribes after a server restart and tells its waiter to re-read;
    scripts are reloaded.  Returns the monitor (still open) for more checks."""
    ts = telstate_log.aio.TelescopeState(backend)
    await ts.set("before", 1)
    monitor = backend.monitor_keys([b"k"])
    await next_update(monitor)
    await next_update(monitor)                                   # subscribed
    await anyio.to_thread.run_sync(fresh_redis.restart)          # no persistence: data gone
    assert type(await next_update(monitor)) is KeyUpdateBase     # resubscribed: re-read
    assert not await ts.exists("before")
    await ts.add("k", 3.0, ts=1.0)                               # scripts reloaded
    assert (await next_update(monitor, MutableKeyUpdate)).timestamp == 1.0
    return monitor
