"""A Redis primary, its replicas and three sentinels on loopback, for failover tests.

:class:`RedisCluster` starts, in a directory of its own and on free ports of
127.0.0.1, one primary redis-server, `replicas` redis-servers replicating it
(``--replicaof``) and `sentinels` redis-sentinel processes monitoring it as
the service :data:`SERVICE` (quorum 2, ``down-after-milliseconds`` 1000,
``failover-timeout`` 5000, so a killed primary is replaced within seconds).
Servers are :class:`_redis.RedisServer` instances.

Readiness is waited for by condition, never by time: every replica reports
``master_link_status:up``; every sentinel sees the primary up, every replica
(connected, its link to the primary ok) and every other sentinel (connected).
Only then can a failover be started and completed, which
:meth:`RedisCluster.wait_failover` waits for in the same way: every running
sentinel names one new primary, and that server says it is one (``ROLE``).

Every process is stopped and the directory removed by :meth:`cleanup`
(or leaving the ``with`` block), also when starting fails half-way.
Sentinel logs are kept at ``notice`` level: :meth:`RedisCluster.logs` shows
them (and the servers') when a test fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import redis
from _redis import RedisServer, redis_available
from _waiting import wait_for

REDIS_SENTINEL = shutil.which("redis-sentinel") or "/usr/bin/redis-sentinel"
#: The name of the monitored service (the ``service_name`` of Sentinel URLs).
SERVICE = "telstate"
HOST = "127.0.0.1"
#: Seconds to wait for processes to start and for the cluster to be ready.
START_TIMEOUT = 30.0
_BAD_FLAGS = ("s_down", "o_down", "disconnected", "failover_in_progress")


def sentinel_available() -> bool:
    return redis_available() and os.path.exists(REDIS_SENTINEL)


def require_sentinel() -> None:
    """Skip (or, under CI, fail) when redis-server or redis-sentinel is not installed."""
    if not sentinel_available():
        if os.environ.get("CI"):
            pytest.fail("redis-sentinel is not installed but CI requires the Sentinel tests")
        pytest.skip("redis-server or redis-sentinel is not installed")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _healthy(entry: dict[str, Any]) -> bool:
    return not any(flag in str(entry.get("flags", "")).split(",") for flag in _BAD_FLAGS)


class SentinelProcess:
    """One redis-sentinel process with its own configuration file (which it rewrites)."""

    def __init__(self, directory: Path, settings: list[str]) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelProcess:
        for _attempt in range(5):
            self.port = _free_port()
            config = [f"port {self.port}", f"bind {HOST}", "daemonize no",
                      f"dir {self.dir}", f"logfile {self.dir / 'sentinel.log'}",
                      "loglevel notice", *self.settings]
            (self.dir / "sentinel.conf").write_text("\n".join(config) + "\n")
            self.proc = subprocess.Popen([REDIS_SENTINEL, str(self.dir / "sentinel.conf")],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                wait_for(self._answers, START_TIMEOUT, f"redis-sentinel on port {self.port}")
                return self
            except AssertionError:
                self.stop()                 # the port was taken meanwhile: try another
        raise RuntimeError(f"redis-sentinel did not start; log:\n{self.log()}")

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError("redis-sentinel exited")
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.ConnectionError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, decode_responses=True,
                           socket_timeout=5)

    def log(self) -> str:
        try:
            return (self.dir / "sentinel.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class RedisCluster:
    """A primary, `replicas` replicas and `sentinels` sentinels (see the module docstring).

    `fsync_always` runs the servers with ``appendonly yes`` and
    ``appendfsync always`` (AOF is on, with the default ``everysec``, otherwise).
    `password`, if given, is required by every server (``requirepass``, set
    once replication is up; ``masterauth`` for the replicas, ``auth-pass``
    for the sentinels); the sentinels themselves need none.
    """

    def __init__(self, directory: Path | None = None, *, replicas: int = 1,
                 sentinels: int = 3, quorum: int = 2, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 5000, fsync_always: bool = False,
                 password: str | None = None) -> None:
        self._own_dir = directory is None
        self.dir = Path(directory) if directory is not None else Path(
            tempfile.mkdtemp(prefix="telstate-log-sentinel-"))
        self.n_replicas = replicas
        self.n_sentinels = sentinels
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.password = password
        # No wait before a full sync (Redis 7 waits 5 s for more replicas to join).
        self.server_args = ("--appendonly", "yes", "--appendfsync",
                            "always" if fsync_always else "everysec",
                            "--repl-diskless-sync-delay", "0")
        self.servers: list[RedisServer] = []      # the first one started as the primary
        self.sentinels: list[SentinelProcess] = []
        self._primary_port = 0

    # ------------------------------------------------------------ lifetime
    def start(self) -> RedisCluster:
        try:
            primary = self._server("primary", ())
            self._primary_port = primary.port
            for i in range(self.n_replicas):
                self._server(f"replica{i}", ("--replicaof", HOST, str(primary.port)))
            wait_for(self._replicas_linked, START_TIMEOUT, "the replicas' links to the primary")
            if self.password:
                self._require_password(self.password)
            settings = [
                "sentinel resolve-hostnames no",
                f"sentinel monitor {SERVICE} {HOST} {primary.port} {self.quorum}",
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}",
                f"sentinel failover-timeout {SERVICE} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {SERVICE} 1",
            ]
            if self.password:
                settings.append(f"sentinel auth-pass {SERVICE} {self.password}")
            for i in range(self.n_sentinels):
                self.sentinels.append(SentinelProcess(self.dir / f"sentinel{i}", settings).start())
            wait_for(self._sentinels_ready, START_TIMEOUT, "the sentinels to see everyone")
        except BaseException:
            print(self.logs())
            self.cleanup()
            raise
        return self

    def _require_password(self, password: str) -> None:
        # Any server may become a replica after a failover: all get masterauth.
        for server in self.servers:
            with server.client() as client:
                client.config_set("masterauth", password)
        for server in self.servers:
            with server.client() as client:
                client.config_set("requirepass", password)

    def _server(self, name: str, args: tuple[str, ...]) -> RedisServer:
        directory = self.dir / name
        directory.mkdir(parents=True, exist_ok=True)
        server = RedisServer(directory, extra_args=(*self.server_args, *args))
        self.servers.append(server)
        return server.start()

    def cleanup(self) -> None:
        """Stop every process (sentinels first: no failover while stopping), remove the dir."""
        for process in [*self.sentinels, *self.servers]:
            try:
                process.stop()
            except Exception as exc:    # keep stopping the others
                print(f"could not stop {process!r}: {exc!r}")
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None:
            print(self.logs())
        self.cleanup()

    # ---------------------------------------------------------- readiness
    def _replicas_linked(self) -> bool:
        for server in self.servers[1:]:
            with server.client(password=self.password) as client:
                if client.info("replication").get("master_link_status") != "up":
                    return False
        return True

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                try:
                    master = client.sentinel_master(SERVICE)
                    replicas = client.sentinel_slaves(SERVICE)
                    others = client.sentinel_sentinels(SERVICE)
                except redis.ResponseError:         # not monitoring it yet
                    return False
            if not (master["is_master"] and _healthy(master)
                    and int(master["port"]) == self._primary_port):
                return False
            if len(replicas) != self.n_replicas or not all(
                    _healthy(r) and r.get("master-link-status") == "ok" for r in replicas):
                return False
            if len(others) != self.n_sentinels - 1 or not all(map(_healthy, others)):
                return False
        return True

    # ------------------------------------------------------------- access
    def sentinel_url(self, db: int = 0, password: str | None = None) -> str:
        auth = f":{password}@" if password else ""
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{auth}{hosts}/{SERVICE}/{db}"

    def primary_port(self) -> int:
        """The port of the primary: the first one, or the one :meth:`wait_failover` saw."""
        return self._primary_port

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def primary_client(self, db: int = 0) -> redis.Redis:
        return self.server(self._primary_port).client(db, self.password)

    def running_replicas(self) -> list[RedisServer]:
        return [s for s in self.servers if s.proc is not None and s.port != self._primary_port]

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Wait until every running replica holds every write the primary had on entry."""
        with self.primary_client() as client:
            goal = int(client.info("replication")["master_repl_offset"])

        def caught_up() -> bool:
            for server in self.running_replicas():
                with server.client(password=self.password) as client:
                    info = client.info("replication")
                if (info.get("master_link_status") != "up"
                        or int(info["slave_repl_offset"]) < goal):
                    return False
            return True

        wait_for(caught_up, timeout, f"the replicas to reach offset {goal}")

    # ------------------------------------------------------------ failover
    def kill_primary(self) -> int:
        """SIGKILL the primary; returns its port."""
        port = self._primary_port
        self.server(port).kill()
        return port

    def _reported_primaries(self) -> set[tuple[str, int]]:
        seen = set()
        for sentinel in self.sentinels:
            if sentinel.proc is None:
                continue
            with sentinel.client() as client:
                address = client.sentinel_get_master_addr_by_name(SERVICE)
            if not address:
                return set()
            seen.add((str(address[0]), int(address[1])))
        return seen

    def _new_primary(self, old: int) -> int | None:
        seen = self._reported_primaries()
        if len(seen) != 1:
            return None
        host, port = seen.pop()
        if port == old:
            return None
        try:
            with redis.Redis(host=host, port=port, password=self.password,
                             socket_timeout=5) as client:
                role = client.role()
        except redis.ConnectionError:
            return None
        return port if role[0] in (b"master", "master") else None

    def wait_failover(self, timeout: float = 30.0) -> int:
        """Wait until every sentinel names one new primary and that server is a
        primary (``ROLE``); returns its port, from now on :meth:`primary_port`."""
        old = self._primary_port
        found: list[int] = []

        def done() -> bool:
            port = self._new_primary(old)
            if port is not None:
                found.append(port)
            return port is not None

        wait_for(done, timeout, f"a failover away from port {old}")
        self._primary_port = found[-1]
        return self._primary_port

    def logs(self) -> str:
        parts = [f"--- {s.dir.name} (port {s.port})\n{s.log()}" for s in self.servers]
        parts += [f"--- {s.dir.name} (port {s.port})\n{s.log()}" for s in self.sentinels]
        return "\n".join(parts)
