"""A real redis-server on loopback, started and stopped by the tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def redis_available() -> bool:
    return os.path.exists(REDIS_SERVER)


def require_redis() -> None:
    """Skip (or, under CI, fail) when redis-server is not installed."""
    if not redis_available():
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed but CI requires the Redis tests")
        pytest.skip("redis-server is not installed")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process bound to 127.0.0.1 with its own data directory."""

    def __init__(self, directory: Path | None = None, dbfilename: str = "dump.rdb",
                 extra_args: tuple[str, ...] = ()) -> None:
        self._own_dir = directory is None
        self.dir = Path(directory) if directory is not None else Path(
            tempfile.mkdtemp(prefix="telstate-log-redis-"))
        self.dbfilename = dbfilename
        self.extra_args = extra_args
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, db: int = 0, password: str | None = None) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=password)

    def start(self, port: int | None = None) -> RedisServer:
        for _attempt in range(5):
            self.port = port or _free_port()
            args = [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port),
                    "--dir", str(self.dir), "--dbfilename", self.dbfilename,
                    "--save", "", "--appendonly", "no", "--protected-mode", "yes",
                    "--daemonize", "no", "--loglevel", "warning",
                    "--logfile", str(self.dir / "redis.log"), *self.extra_args]
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            if self._wait_ready():
                return self
            self.stop()
            if port is not None:
                break
        raise RuntimeError(f"redis-server did not start; log:\n{self.log()}")

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                if self.client().ping():
                    # PING succeeds while an RDB file is still loading: wait for it.
                    info = self.client().info("persistence")
                    if not info.get("loading"):
                        return True
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            time.sleep(0.02)
        return False

    def log(self) -> str:
        try:
            return (self.dir / "redis.log").read_text(errors="replace")
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

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        port = self.port
        self.stop()
        self.start(port=port)

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def subscribers(client: redis.Redis, channel: bytes) -> int:
    """How many connections the server has subscribed to `channel` (a readiness check:
    a write published after this counts them reaches them)."""
    return int(client.pubsub_numsub(channel)[0][1])
