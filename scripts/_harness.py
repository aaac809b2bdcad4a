"""Shared plumbing of scripts/bench.py and scripts/soak.py: real processes on loopback.

Not a public API: subprocess launchers for the issuer and for small MCP servers, readiness
polling, and a few statistics helpers. Everything binds 127.0.0.1 only.

Run as ``python scripts/_harness.py mcp-server --port N [--issuer URL --audience URL]`` to
start the benchmark's MCP server (one ``add`` tool), plain or protected by jwtmcp.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

HERE = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def http_get(url: str, *, timeout: float = 2.0) -> tuple[int, bytes]:
    """One GET on loopback with the standard library; (status, body)."""
    rest = url.split("://", 1)[1]
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request("GET", "/" + path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_until_up(url: str, proc: subprocess.Popen[bytes], *, timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers (any status below 500) or raise with the process's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode} before {url} was up")
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, _ = http_get(url, timeout=1.0)
            if status < 500:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up within {timeout:.0f} s")


@dataclass
class Process:
    """A child process whose output goes to a log file; stopped with SIGINT, then SIGKILL."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log: TextIO | None = field(default=None, init=False)

    def start(self) -> Process:
        self._log = open(self.log_path, "a")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(self.argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
        )
        return self

    def start_until_up(self, url: str) -> Process:
        """Start, then wait until ``url`` answers; on failure stop and raise with the log tail."""
        self.start()
        assert self.proc is not None
        try:
            wait_until_up(url, self.proc)
        except RuntimeError as exc:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"{exc}\n{tail}") from None
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


def child_env(**extra: str) -> dict[str, str]:
    """The environment for children: this one, unbuffered, with the repo on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    repo = str(HERE.parent)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def jwtmcp_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "jwtmcp", *args]


def run_jwtmcp(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> str:
    """Run one ``jwtmcp`` CLI command and return its stdout; raise with stderr on failure."""
    done = subprocess.run(
        jwtmcp_argv(*args),
        capture_output=True,
        text=True,
        env=env or child_env(),
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"jwtmcp {' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Issuer:
    """A real jwtmcp issuer subprocess (one worker) on a loopback port.

    It is exactly ``jwtmcp serve``; ``rate_limit`` passes ``--rate-limit`` (``0`` = off), so a
    throughput benchmark from one client measures the issuer, not its limiter.
    """

    workdir: Path
    port: int = field(default_factory=free_port)
    rate_limit: float | None = None
    revocation_max_age: int | None = None
    process: Process | None = None
    extra_args: Sequence[str] = ()  # more ``jwtmcp serve`` flags (e.g. --store redis://...)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def keys_dir(self) -> Path:
        return self.workdir / "keys"

    @property
    def clients_file(self) -> Path:
        return self.workdir / "clients.json"

    def cli(self, *args: str) -> str:
        """A ``jwtmcp`` command against this issuer's ring and clients file."""
        env = child_env(
            JWTMCP_KEYS=str(self.keys_dir),
            JWTMCP_CLIENTS=str(self.clients_file),
            JWTMCP_ISSUER=self.url,
        )
        return run_jwtmcp(*args, env=env)

    def add_client(self, name: str, *, tools: Sequence[str], audiences: Sequence[str]) -> str:
        """Register a client and return its secret (the last line ``clients add`` prints)."""
        out = self.cli("clients", "add", name, "--tools", ",".join(tools),
                       *[a for aud in audiences for a in ("--audience", aud)])
        secret = _secret_from(out)
        if not secret:
            raise RuntimeError(f"could not find the secret in 'jwtmcp clients add' output: {out!r}")
        return secret

    def start(self) -> Issuer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = jwtmcp_argv(
            "serve", "--host", LOOPBACK, "--port", str(self.port), "--issuer", self.url,
            "--keys", str(self.keys_dir), "--clients", str(self.clients_file),
        )
        if self.rate_limit is not None:
            argv += ["--rate-limit", str(self.rate_limit)]
        if self.revocation_max_age is not None:
            argv += ["--revocation-max-age", str(self.revocation_max_age)]
        argv += list(self.extra_args)
        self.process = Process(
            "issuer", argv, self.workdir / "issuer.log", env=child_env(), cwd=self.workdir
        ).start_until_up(self.url + "/healthz")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


def _secret_from(output: str) -> str | None:
    """The client secret printed by ``jwtmcp clients add`` (JSON, ``secret: X`` or a bare line)."""
    text = output.strip()
    with contextlib.suppress(ValueError):
        doc = json.loads(text)
        if isinstance(doc, dict):
            for key in ("client_secret", "secret"):
                if isinstance(doc.get(key), str):
                    return str(doc[key])
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and "secret" in key.lower() and value.strip():
            return value.strip().split()[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and " " not in lines[-1]:
        return lines[-1]  # a message, then the secret alone on the last line
    return None


@dataclass
class McpServer:
    """The benchmark's MCP server (one ``add`` tool) as a subprocess, with or without jwtmcp."""

    workdir: Path
    name: str
    issuer_url: str | None = None
    jwks_url: str | None = None
    jwks_cache_file: Path | None = None
    jwks_policy: dict[str, float] | None = None
    observe: bool = False  # metrics on (/metrics) and audit lines written to a file
    revocation_url: str | None = None  # check the issuer's revocation list there
    revocation_cache_file: Path | None = None
    port: int = field(default_factory=free_port)
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/mcp"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/metrics"

    @property
    def audit_log(self) -> Path:
        return self.workdir / f"{self.name}.audit.log"

    def start(self) -> McpServer:
        argv = [sys.executable, str(HERE / "_harness.py"), "mcp-server", "--port", str(self.port)]
        if self.issuer_url:
            argv += ["--issuer", self.issuer_url]
        if self.jwks_url:
            argv += ["--jwks-url", self.jwks_url]
        if self.jwks_cache_file:
            argv += ["--jwks-cache-file", str(self.jwks_cache_file)]
        if self.jwks_policy is not None:
            argv += ["--jwks-policy", json.dumps(self.jwks_policy)]
        if self.observe:
            argv += ["--observe", str(self.audit_log)]
        if self.revocation_url:
            argv += ["--revocation-url", self.revocation_url]
        if self.revocation_cache_file:
            argv += ["--revocation-cache-file", str(self.revocation_cache_file)]
        # Any answer (401 with auth, 406 without an Accept header) means it is listening.
        self.process = Process(
            self.name, argv, self.workdir / f"{self.name}.log", env=child_env()
        ).start_until_up(self.url)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


@contextlib.contextmanager
def running(*things: Issuer | McpServer) -> Iterator[None]:
    """Start ``things`` in order; stop every one of them on the way out, whatever happened."""
    try:
        for thing in things:
            thing.start()
        yield
    finally:
        for thing in reversed(things):
            thing.stop()


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used by ``pid`` so far (Linux ``/proc``), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank) of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(pct / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


# --- the benchmark's MCP server ------------------------------------------------------------


def build_mcp_app(
    issuer_url: str | None,
    port: int,
    jwks_url: str | None = None,
    jwks_cache_file: str | None = None,
    jwks_policy: dict[str, float] | None = None,
    audit_log: str | None = None,
    revocation_url: str | None = None,
    revocation_cache_file: str | None = None,
) -> Any:
    """A Starlette app serving an MCPServer with one ``add`` tool on ``/mcp``.

    Without ``issuer_url`` it is the plain SDK server; with it, the same server protected by
    jwtmcp (tokens from that issuer, audience = this server's URL), keys from ``jwks_url``
    (default: the issuer's), the last good JWKS kept in ``jwks_cache_file``, and
    ``jwks_policy`` overriding fields of the verifier's :class:`jwtmcp.jwks.JwksPolicy`.
    ``audit_log`` (protected only) turns observability on: metrics at ``/metrics`` and the
    ``jwtmcp.audit`` lines appended to that file. With ``revocation_url`` it checks the
    issuer's revocation list there (kept in ``revocation_cache_file``).
    """
    from mcp.server.mcpserver import MCPServer

    resource = f"http://{LOOPBACK}:{port}/mcp"
    if issuer_url is None:
        server: Any = MCPServer("bench-math")
    else:
        from jwtmcp.mcp import protected_server

        options: dict[str, Any] = {}
        if jwks_cache_file:
            options["cache_file"] = jwks_cache_file
        if jwks_policy:
            from jwtmcp.jwks import JwksPolicy

            options["jwks_policy"] = JwksPolicy(**dict[str, Any](jwks_policy))
        if revocation_url:
            options["revocation_url"] = revocation_url
        if revocation_cache_file:
            options["revocation_cache_file"] = revocation_cache_file
        server = protected_server(
            "bench-math",
            issuer=issuer_url,
            resource=resource,
            jwks_url=jwks_url,
            verifier_options=options,
            metrics=audit_log is not None,
        )
        if audit_log is not None:
            import logging

            handler = logging.FileHandler(audit_log)
            audit = logging.getLogger("jwtmcp.audit")
            audit.addHandler(handler)
            audit.setLevel(logging.INFO)
            audit.propagate = False

    @server.tool()  # type: ignore[untyped-decorator]
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return server.streamable_http_app()


def _serve_mcp(argv: Sequence[str]) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="_harness.py mcp-server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--issuer")
    parser.add_argument("--jwks-url")
    parser.add_argument("--jwks-cache-file")
    parser.add_argument("--jwks-policy", type=json.loads, help="JwksPolicy fields as JSON")
    parser.add_argument("--observe", metavar="AUDIT_LOG",
                        help="metrics at /metrics and audit lines appended to AUDIT_LOG")
    parser.add_argument("--revocation-url")
    parser.add_argument("--revocation-cache-file")
    args = parser.parse_args(argv)
    app = build_mcp_app(args.issuer, args.port, args.jwks_url, args.jwks_cache_file,
                        args.jwks_policy, audit_log=args.observe,
                        revocation_url=args.revocation_url,
                        revocation_cache_file=args.revocation_cache_file)
    profile_to = os.environ.get("JWTMCP_BENCH_PROFILE")  # where a profile of the run goes
    if not profile_to:
        uvicorn.run(app, host=LOOPBACK, port=args.port, log_level="warning", access_log=False)
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        uvicorn.run(app, host=LOOPBACK, port=args.port, log_level="warning", access_log=False)
    finally:
        profiler.disable()
        profiler.dump_stats(profile_to)


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "mcp-server":
        sys.path.insert(0, str(HERE.parent))
        _serve_mcp(sys.argv[2:])
    else:
        sys.exit("usage: _harness.py mcp-server --port N [--issuer URL] [--jwks-cache-file F]")
