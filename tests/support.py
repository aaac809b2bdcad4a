"""Shared test helpers: an injectable clock and real uvicorn servers on loopback."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import uvicorn


class FakeClock:
    """A clock tests move by hand: ``clock()`` returns seconds since the epoch."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def run_cli(*args: str, clock: FakeClock | None = None) -> tuple[int, str, str]:
    """``jwtmcp.cli.main(ARGS)`` in this process (fast; the same code path as the command):
    (exit status, stdout, stderr). A usage error's ``SystemExit`` becomes its status."""
    from jwtmcp.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args), clock=clock) if clock else main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def rewrite_keeping_stat(path: Path, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` (same length) in ``path`` in place, then put its mtime back:
    the inode, size and mtime a watcher might compare stay equal (only ctime moves)."""
    assert len(old) == len(new)
    before = path.stat()
    text = path.read_text()
    assert old in text
    with path.open("r+") as handle:
        handle.write(text.replace(old, new))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_app(
    app: Any, *, port: int | None = None, timeout: float = 10.0, date_header: bool = True
) -> Iterator[str]:
    """Run an ASGI app on a real uvicorn server on 127.0.0.1 in a thread; yield its base URL.

    ``date_header=False`` stops uvicorn adding its own ``Date`` (from the real clock), for
    an app that sends one from a test's fake clock, or none.
    """
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and socket.socket() leaves it 0. Without it every response stalls ~40 ms (Nagle plus
    # the client's delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port or 0))
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="auto", access_log=False, date_header=date_header
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


# --- a real `jwtmcp serve` process ---------------------------------------------------------


@dataclass
class RunningIssuer:
    """A ``python -m jwtmcp serve`` subprocess started by :func:`issuer_process`.

    ``base_url`` is where it listens (``http://127.0.0.1:PORT``), ``issuer`` the ``iss`` of its
    tokens. ``client_id``/``client_secret`` are the demo client printed on first start (None
    when the clients file already existed). ``stdout``/``stderr`` read its output so far.
    """

    base_url: str
    issuer: str
    directory: Path
    keys_dir: Path
    clients_file: Path
    client_id: str | None
    client_secret: str | None
    process: subprocess.Popen[bytes]
    _stdout: Path
    _stderr: Path

    @property
    def jwks_url(self) -> str:
        return f"{self.base_url}/.well-known/jwks.json"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    def stdout(self) -> str:
        return self._stdout.read_text(errors="replace")

    def stderr(self) -> str:
        return self._stderr.read_text(errors="replace")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop a child this test started, by its PID: SIGTERM, then SIGKILL after 10 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


MATH_SERVER = Path(__file__).resolve().parent.parent / "scripts" / "math_server.py"


@contextlib.contextmanager
def math_server(
    url: str, log: Path, env: Mapping[str, str], args: Sequence[str] = ()
) -> Iterator[subprocess.Popen[bytes]]:
    """scripts/math_server.py (``args``) as a child process, its output in ``log``.

    Its environment is this one without ``JWTMCP_*``/``MCP_*`` variables, plus ``env`` (give
    ``MCP_PORT``). Yields once ``url`` answers 401 (the server is up and protected); raises
    RuntimeError with its log if it exits or does not answer within 30 s. Stopped by PID.
    """
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("JWTMCP_", "MCP_"))}
    child_env.update(env)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(MATH_SERVER), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(url, timeout=2).status_code == 401:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("math_server.py did not start:\n" + log.read_text())
            time.sleep(0.05)
        yield process
    finally:
        stop_process(process)


def _first_run_credentials(text: str) -> tuple[str | None, str | None]:
    client_id = re.search(r"^\s*client id:\s*(\S+)\s*$", text, re.MULTILINE)
    secret = re.search(r"^\s*client secret:\s*(\S+)\s*$", text, re.MULTILINE)
    return (client_id.group(1) if client_id else None, secret.group(1) if secret else None)


@contextlib.contextmanager
def issuer_process(
    directory: Path,
    *,
    args: Sequence[str] = (),
    port: int | None = None,
    issuer: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Iterator[RunningIssuer]:
    """Run ``python -m jwtmcp serve --port PORT [args]`` in ``directory`` as a real process.

    The working directory is ``directory``, so with no ``--keys``/``--clients`` in ``args`` it
    uses (and on first start creates) ``directory/keys`` and ``directory/clients.json``.
    ``JWTMCP_*`` variables of the test environment are not passed on; give them in ``env``.
    Waits until ``/healthz`` answers, yields a :class:`RunningIssuer`, and stops the process
    (SIGTERM, then SIGKILL) on exit. Raises RuntimeError with the process's stderr if it
    exits or does not answer within ``timeout`` seconds.
    """
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    command = [sys.executable, "-m", "jwtmcp", "serve", "--port", str(port)]
    if issuer is not None:
        command += ["--issuer", issuer]
    command += list(args)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("JWTMCP_")}
    child_env.update(env or {})
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    repo = Path(__file__).resolve().parent.parent
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(repo), child_env.get("PYTHONPATH", "")) if p
    )
    out_path = directory / f".issuer-{port}.stdout"
    err_path = directory / f".issuer-{port}.stderr"
    base_url = f"http://127.0.0.1:{port}"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            command, cwd=directory, stdout=out, stderr=err, env=child_env
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"jwtmcp serve exited with status {process.returncode}:\n"
                    + err_path.read_text(errors="replace")
                )
            try:
                with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as answer:
                    health = json.load(answer)
                break
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        "jwtmcp serve did not answer /healthz in time:\n"
                        + err_path.read_text(errors="replace")
                    ) from None
                time.sleep(0.05)
        client_id, secret = _first_run_credentials(out_path.read_text(errors="replace"))
        yield RunningIssuer(
            base_url=base_url,
            issuer=str(health["issuer"]),
            directory=directory,
            keys_dir=directory / "keys",
            clients_file=directory / "clients.json",
            client_id=client_id,
            client_secret=secret,
            process=process,
            _stdout=out_path,
            _stderr=err_path,
        )
    finally:
        stop_process(process)
