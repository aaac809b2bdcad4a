"""A real ``redis-server`` (Debian's package ``redis-server``) on loopback for the tests.

:func:`redis_server` starts one on a free 127.0.0.1 port in a temporary directory, without
persistence (no RDB snapshots, no AOF), waits until it answers ``PING``, and stops it by its
PID. scripts/test-deps installs the package; run outside scripts/test without it, the tests
that need it are skipped with a reason naming the package, except under ``CI=true``, where
a missing server fails them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.support import free_port, stop_process

REDIS_SERVER = Path("/usr/bin/redis-server")


def require_redis_server() -> None:
    """Skip (fail under ``CI=true``) when Debian's ``redis-server`` is not installed."""
    if REDIS_SERVER.exists():
        return
    reason = "needs Debian's redis-server package (/usr/bin/redis-server; scripts/test installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class RedisServer:
    """A running ``redis-server``: its port, ``url`` (``redis://127.0.0.1:PORT/0``, with the
    password when it has one), process and log file."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path
    password: str | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A redis-py client of this server (for checks that bypass the store)."""
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5
        )

    def stop(self) -> None:
        """Stop the server by its PID (SIGTERM, then SIGKILL)."""
        stop_process(self.process)


@contextlib.contextmanager
def redis_server(
    directory: Path,
    *,
    password: str | None = None,
    extra: Sequence[str] = (),
    port: int | None = None,
) -> Iterator[RedisServer]:
    """Run ``redis-server`` on 127.0.0.1 (on ``port``, default a free one) with its files in
    ``directory``; stop it by PID."""
    require_redis_server()
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    command = [
        str(REDIS_SERVER),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(directory),
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--protected-mode", "yes",
        "--logfile", "",
    ]
    if password is not None:
        command += ["--requirepass", password]
    command += list(extra)
    log = directory / "redis.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=directory, stdout=out, stderr=subprocess.STDOUT)
    server = RedisServer(port=port, process=process, log=log, password=password)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError("redis-server exited:\n" + log.read_text(errors="replace"))
            with contextlib.suppress(redis.RedisError), server.client() as client:
                if client.ping():
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer:\n" + log.read_text())
            time.sleep(0.05)
        yield server
    finally:
        server.stop()
