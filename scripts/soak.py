#!/usr/bin/env python3
"""Soak: many calls through jwtmcp while keys rotate and the issuer goes away. 0 failures.

    python scripts/soak.py                      # 60 s, rotate every 5 s
    python scripts/soak.py --seconds 120 --rotate-every 4 --clients 6 --json

Runs, all on 127.0.0.1:
- an issuer (``jwtmcp serve`` subprocess) on a ring whose tokens live at most 30 s, so
  ``keys prune`` really removes retired keys during the run;
- two MCP servers protected by jwtmcp (subprocesses), A and B, each fetching the JWKS through
  a counting proxy in this process (so every JWKS fetch is seen) and persisting the last good
  JWKS to a file;
- several clients, each getting tokens from ``POST /token`` (client_credentials) for both
  servers, calling the ``add`` tool continuously through the official SDK client, and fetching
  a new token well before the old one expires.

Meanwhile the ring is rotated every ``--rotate-every`` seconds (``jwtmcp keys rotate``) and
pruned every third rotation (``jwtmcp keys prune``); once, midway, the issuer is stopped,
server B is restarted (it must verify from its JWKS cache file alone), calls go on, and the
issuer is started again. Reports calls, failures and JWKS fetches; exits 1 on any failure.

Revocation phase: both servers check the issuer's signed revocation list (through the same
proxy, kept in a cache file), published with ``max-age`` :data:`REVOCATION_MAX_AGE`. Shortly
before the outage, a victim client (not one of the callers) gets a token for each server,
``jwtmcp revoke --client`` cuts it off, and both servers must refuse its tokens with
``token_revoked`` within the list's max-age (plus :data:`REVOCATION_MARGIN` for the issuer's
file check and the fetch); server B, restarted while the issuer is down, must still refuse
them (its revocation cache file). The other clients' calls must not fail meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import http.server
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import httpx2  # noqa: E402
from _harness import LOOPBACK, Issuer, McpServer, free_port  # noqa: E402

TOKEN_TTL = 30  # seconds; the ring's max lifetime too, so pruning happens within a run
REFRESH_BELOW = 15  # fetch a new token when the current one has fewer seconds left
KEYS_LEEWAY = 5
REVOCATION_MAX_AGE = 2  # seconds: the propagation bound the revocation phase checks
REVOCATION_MARGIN = 1.0  # seconds on top: the issuer's file check (0.25 s) and one fetch
VICTIM = "soak-revoked"


def log(message: str) -> None:
    print(f"soak {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


# --- a counting JWKS proxy ---------------------------------------------------------------


class JwksProxy:
    """Forwards GETs to the issuer and counts them: what the issuer would see of the servers."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.fetched = 0  # answered 200 by the issuer
        self.refused = 0  # issuer down or not 200
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, headers, body = proxy._forward(self.path)
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def jwks_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/.well-known/jwks.json"

    @property
    def revocation_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/.well-known/jwtmcp-revocations"

    def _forward(self, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(LOOPBACK, self.upstream_port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            keep = [(k, v) for k, v in resp.getheaders()
                    if k.lower() in ("content-type", "cache-control")]
            with self._lock:
                if resp.status == 200:
                    self.fetched += 1
                else:
                    self.refused += 1
            return resp.status, keep, body
        except OSError:
            with self._lock:
                self.refused += 1
            return 502, [("Content-Type", "text/plain")], b"issuer unreachable"
        finally:
            conn.close()

    def __enter__(self) -> JwksProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- shared state ------------------------------------------------------------------------


@dataclass
class ServerState:
    """One protected MCP server as the clients see it: up or paused for a restart."""

    name: str
    server: McpServer
    up: asyncio.Event = field(default_factory=asyncio.Event)
    sessions_open: int = 0
    calls: int = 0
    calls_issuer_down: int = 0


@dataclass
class Stats:
    calls: int = 0
    failures: int = 0
    token_fetches: int = 0
    token_fetch_skipped_issuer_down: int = 0
    waits_for_token: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def fail(self, what: str, exc: BaseException | str) -> None:
        self.failures += 1
        reason = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        reason = f"{what}: {reason}".splitlines()[0][:200]
        if self.reasons[reason] == 0:
            log(f"FAILURE {reason}")
        self.reasons[reason] += 1


class Bearer(httpx2.Auth):
    """Sets ``Authorization: Bearer`` from whatever token the client holds right now."""

    def __init__(self) -> None:
        self.token = ""

    def auth_flow(
        self, request: httpx2.Request
    ) -> Generator[httpx2.Request, httpx2.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


@dataclass
class Victim:
    """The client the revocation phase cuts off: its secret and, once got, its tokens."""

    secret: str
    tokens: dict[str, str] = field(default_factory=dict)  # by server name
    expires_at: float = 0.0
    revoked: bool = False


@dataclass
class World:
    issuer: Issuer
    servers: list[ServerState]
    stats: Stats
    victim: Victim
    issuer_up: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight_token_fetches: int = 0


# --- clients -----------------------------------------------------------------------------


async def fetch_token(world: World, http: httpx2.AsyncClient, client_id: str, secret: str,
                      resource: str) -> tuple[str, float] | None:
    """A new token for ``resource``, or None while the issuer is (announced) down."""
    if not world.issuer_up.is_set():
        world.stats.token_fetch_skipped_issuer_down += 1
        return None
    world.in_flight_token_fetches += 1
    try:
        resp = await http.post(
            world.issuer.url + "/token",
            data={"grant_type": "client_credentials", "resource": resource},
            auth=(client_id, secret),
        )
    except httpx2.HTTPError as exc:
        world.stats.fail("token", exc)
        return None
    finally:
        world.in_flight_token_fetches -= 1
    if resp.status_code != 200:
        world.stats.fail("token", f"HTTP {resp.status_code} {resp.text[:100]}")
        return None
    doc = resp.json()
    world.stats.token_fetches += 1
    return str(doc["access_token"]), time.time() + float(doc["expires_in"])


@contextlib.asynccontextmanager
async def mcp_session(url: str, auth: Bearer) -> AsyncIterator[Any]:
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(auth=auth, timeout=20) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def client_loop(world: World, state: ServerState, client_id: str, secret: str,
                      http: httpx2.AsyncClient) -> None:
    """One client against one server: keep a fresh token, call ``add`` until told to stop."""
    auth = Bearer()
    expires_at = 0.0
    stats = world.stats
    resource = state.server.url

    async def ensure_token() -> bool:
        nonlocal expires_at
        if expires_at - time.time() > REFRESH_BELOW:
            return True
        got = await fetch_token(world, http, client_id, secret, resource)
        if got is not None:
            auth.token, expires_at = got
        if expires_at - time.time() > 1:
            return True
        stats.waits_for_token += 1  # issuer down and the token about to expire: wait
        return False

    while not world.stop.is_set():
        await wait_any(state.up, world.stop)
        if world.stop.is_set():
            return
        if not await ensure_token():
            await asyncio.sleep(0.2)
            continue
        state.sessions_open += 1
        try:
            async with mcp_session(resource, auth) as session:
                n = 0
                while state.up.is_set() and not world.stop.is_set():
                    if not await ensure_token():
                        await asyncio.sleep(0.2)
                        continue
                    n += 1
                    result = await session.call_tool("add", {"a": n, "b": 1})
                    text = result.content[0].text if result.content else ""
                    if result.is_error or text != str(n + 1):
                        stats.fail(f"call {state.name}", f"tool answered {text!r}")
                    else:
                        stats.calls += 1
                        state.calls += 1
                        if not world.issuer_up.is_set():
                            state.calls_issuer_down += 1
        except Exception as exc:
            if not world.stop.is_set():
                stats.fail(f"session {state.name}", _root(exc))
                await asyncio.sleep(0.2)
        finally:
            state.sessions_open -= 1


def _root(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def wait_any(*events: asyncio.Event) -> None:
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


# --- the conductor -----------------------------------------------------------------------


@dataclass
class Report:
    seconds: float = 0.0
    rotations: int = 0
    prunes: int = 0
    pruned_keys: int = 0
    restarts: int = 0
    outage_seconds: float = 0.0
    revocation_seconds: dict[str, float] = field(default_factory=dict)  # revoke -> refusal
    revoked_refused_after_restart: bool | None = None


async def conduct(
    world: World, seconds: float, rotate_every: float, report: Report, min_rotations: int = 0
) -> None:
    """Rotate and prune on schedule; midway, stop the issuer, restart B, start the issuer.

    The run lasts ``seconds``, and longer if fewer than ``min_rotations`` rotations happened by
    then (a slow machine spends more of the run on the outage): the missing rotations follow at
    once, bounded by a hard cap, so the figures a test asserts do not depend on machine speed.
    """
    start = time.monotonic()
    hard_stop = start + seconds + max(60.0, 3 * seconds)
    outage_at = start + seconds * 0.45
    # Right before the outage, so the victim's tokens are still valid when B restarts.
    revoke_at = max(start + 1.0, outage_at - REVOCATION_MAX_AGE - REVOCATION_MARGIN - 2.0)
    revocation_done = False
    next_rotation = start + rotate_every
    outage_done = False
    b = world.servers[1]
    while (now := time.monotonic()) < start + seconds or (
        report.rotations < min_rotations and now < hard_stop
    ):
        if now >= start + seconds and outage_done:
            next_rotation = min(next_rotation, now)  # overtime: only the missing rotations
        if not revocation_done and now >= revoke_at:
            revocation_done = True
            await revocation_phase(world, report)
        elif not outage_done and now >= outage_at:
            outage_done = True
            t0 = time.monotonic()
            log("issuer down; restarting server B with only its JWKS cache file")
            world.issuer_up.clear()
            while world.in_flight_token_fetches:
                await asyncio.sleep(0.02)
            await asyncio.to_thread(world.issuer.stop)
            log(f"issuer stopped ({time.monotonic() - t0:.1f} s)")
            await restart(b)
            log(f"server B restarted ({time.monotonic() - t0:.1f} s)")
            report.restarts += 1
            await check_revoked_after_restart(world, b, report)
            b_calls = b.calls
            await asyncio.sleep(min(4.0, max(1.0, rotate_every)))
            if b.calls == b_calls:
                world.stats.fail("outage", "server B answered no call while the issuer was down")
            log(f"server B answered {b.calls - b_calls} calls with the issuer down")
            await asyncio.to_thread(world.issuer.start)
            world.issuer_up.set()
            log(f"issuer up again ({time.monotonic() - t0:.1f} s)")
            report.outage_seconds = time.monotonic() - t0
            next_rotation = time.monotonic() + rotate_every
        elif now >= next_rotation:
            await asyncio.to_thread(world.issuer.cli, "keys", "rotate")
            report.rotations += 1
            log(f"rotation {report.rotations}")
            if report.rotations % 3 == 0:
                out = await asyncio.to_thread(world.issuer.cli, "keys", "prune")
                report.prunes += 1
                report.pruned_keys += sum(1 for line in out.splitlines()
                                          if line.strip().lower().startswith(("removed", "pruned")))
            next_rotation += rotate_every
        await asyncio.sleep(0.05)


async def probe(http: httpx2.AsyncClient, url: str, token: str) -> tuple[int, str]:
    """(status, error_description) of an MCP ``initialize`` with ``token``."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "soak-probe", "version": "0"}}}
    resp = await http.post(url, json=body, headers={
        "Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"})
    description = ""
    if resp.status_code != 200:
        with contextlib.suppress(ValueError):
            description = str(resp.json().get("error_description", ""))
    return resp.status_code, description


async def revocation_phase(world: World, report: Report) -> None:
    """Revoke the victim client; both servers must refuse its tokens within the bound."""
    victim, stats = world.victim, world.stats
    bound = REVOCATION_MAX_AGE + REVOCATION_MARGIN
    async with httpx2.AsyncClient(timeout=10) as http:
        for s in world.servers:
            got = await fetch_token(world, http, VICTIM, victim.secret, s.server.url)
            if got is None:
                stats.fail("revocation", "no token for the victim client")
                return
            victim.tokens[s.name], victim.expires_at = got
            status, why = await probe(http, s.server.url, victim.tokens[s.name])
            if status != 200:
                stats.fail("revocation", f"server {s.name} refused the victim before: {why}")
                return
        await asyncio.to_thread(world.issuer.cli, "revoke", "--client", VICTIM,
                                "--reason", "soak")
        t0 = time.monotonic()  # the revocation is in the file now (the command has finished)
        victim.revoked = True
        pending = {s.name: s for s in world.servers}
        while pending and time.monotonic() - t0 < bound + 10:
            for name, s in list(pending.items()):
                status, why = await probe(http, s.server.url, victim.tokens[name])
                if status == 401 and "(token_revoked)" in why:
                    report.revocation_seconds[name] = round(time.monotonic() - t0, 2)
                    del pending[name]
                elif status not in (200, 401):
                    stats.fail("revocation", f"server {name} answered {status}: {why}")
            await asyncio.sleep(0.05)
    for name in pending:
        stats.fail("revocation", f"server {name} still accepted a revoked token after "
                   f"{bound + 10:.0f} s")
    for name, took in report.revocation_seconds.items():
        if took > bound:
            stats.fail("revocation", f"server {name} refused the revoked token after {took} s, "
                       f"past the bound of {bound} s")
    log(f"revoked {VICTIM}: refused after {report.revocation_seconds} s (bound {bound} s)")


async def check_revoked_after_restart(world: World, state: ServerState, report: Report) -> None:
    """Restarted while the issuer is down, ``state`` must still refuse the victim's token."""
    victim = world.victim
    token = victim.tokens.get(state.name)
    if not victim.revoked or token is None or victim.expires_at - time.time() < 2:
        return  # nothing revoked yet, or its token expires anyway: nothing to tell apart
    async with httpx2.AsyncClient(timeout=10) as http:
        status, why = await probe(http, state.server.url, token)
    report.revoked_refused_after_restart = status == 401 and "(token_revoked)" in why
    if not report.revoked_refused_after_restart:
        world.stats.fail("revocation", f"server {state.name} restarted with the issuer down "
                         f"answered {status} to a revoked token: {why}")


async def restart(state: ServerState) -> None:
    state.up.clear()
    while state.sessions_open:  # let every client finish its call and close its session
        await asyncio.sleep(0.02)
    await asyncio.to_thread(state.server.stop)
    await asyncio.to_thread(state.server.start)
    state.up.set()


def scaled_jwks_policy(rotate_every: float) -> dict[str, float]:
    """The verifiers' JWKS timings, scaled down like the ring's.

    Real rings rotate days apart while verifiers refresh every few minutes (max-age 300 s),
    so a verifier always holds the ``next`` key long before it signs. This run rotates every
    few seconds, so the verifiers refresh twice per rotation period, and the request-driven
    refetch cooldown shrinks in proportion (30 s against 300 s by default). Everything else,
    the stale window and the JWKS cache file included, keeps its default.
    """
    period = max(0.5, rotate_every / 2)
    return {"min_max_age": 0.0, "max_max_age": period, "refetch_cooldown": period / 10,
            "unknown_kid_ttl": period / 10}


async def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    issuer = Issuer(workdir / "issuer", revocation_max_age=REVOCATION_MAX_AGE)
    issuer.workdir.mkdir(parents=True, exist_ok=True)
    issuer.cli("keys", "init", "--max-lifetime", str(TOKEN_TTL), "--leeway", str(KEYS_LEEWAY))
    stats = Stats()
    report = Report()
    with JwksProxy(issuer.port) as proxy:
        servers = [
            ServerState(name, McpServer(workdir, f"server-{name}", issuer_url=issuer.url,
                                        jwks_url=proxy.jwks_url,
                                        jwks_cache_file=workdir / f"jwks-cache-{name}.json",
                                        jwks_policy=scaled_jwks_policy(args.rotate_every),
                                        revocation_url=proxy.revocation_url,
                                        revocation_cache_file=workdir / f"rev-cache-{name}.json",
                                        port=free_port()))
            for name in ("A", "B")
        ]
        audiences = [s.server.url for s in servers]
        secrets = {f"soak-{i}": issuer.add_client(f"soak-{i}", tools=["add"], audiences=audiences)
                   for i in range(args.clients)}
        victim = Victim(issuer.add_client(VICTIM, tools=["add"], audiences=audiences))
        world = World(issuer, servers, stats, victim)
        try:
            await asyncio.to_thread(issuer.start)
            world.issuer_up.set()
            for s in servers:
                await asyncio.to_thread(s.server.start)
                s.up.set()
            log(f"issuer {issuer.url}, servers {audiences}, {args.clients} clients, "
                f"{args.seconds:.0f} s, rotating every {args.rotate_every:g} s")
            t0 = time.monotonic()
            async with httpx2.AsyncClient(timeout=10) as http:
                tasks = [
                    asyncio.create_task(client_loop(world, s, cid, secret, http))
                    for cid, secret in secrets.items()
                    for s in servers
                ]
                try:
                    await conduct(world, args.seconds, args.rotate_every, report,
                                  args.min_rotations)
                finally:
                    world.stop.set()
                    await asyncio.wait(tasks, timeout=30)
            report.seconds = time.monotonic() - t0
        finally:
            for s in servers:
                await asyncio.to_thread(s.server.stop)
            await asyncio.to_thread(issuer.stop)
        return {
            "seconds": round(report.seconds, 1),
            "clients": args.clients,
            "calls": stats.calls,
            "calls_per_s": round(stats.calls / report.seconds, 1) if report.seconds else 0,
            "calls_by_server": {s.name: s.calls for s in servers},
            "calls_with_issuer_down": sum(s.calls_issuer_down for s in servers),
            "failures": stats.failures,
            "failure_reasons": dict(stats.reasons),
            "token_fetches": stats.token_fetches,
            "jwks_fetches": proxy.fetched,
            "jwks_fetches_refused": proxy.refused,
            "rotations": report.rotations,
            "prunes": report.prunes,
            "pruned_keys": report.pruned_keys,
            "server_restarts_with_issuer_down": report.restarts,
            "outage_seconds": round(report.outage_seconds, 1),
            "revocation_max_age": REVOCATION_MAX_AGE,
            "revocation_refused_after_s": report.revocation_seconds,
            "revoked_refused_after_restart": report.revoked_refused_after_restart,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long (default 60)")
    parser.add_argument("--rotate-every", type=float, default=5.0,
                        help="seconds between key rotations (default 5)")
    parser.add_argument("--clients", type=int, default=4, help="client count (default 4)")
    parser.add_argument("--min-rotations", type=int, default=0,
                        help="run past --seconds until this many rotations happened (default 0)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.seconds < 5 or args.rotate_every <= 0 or args.clients < 1:
        parser.error("need --seconds >= 5, --rotate-every > 0 and --clients >= 1")
    with tempfile.TemporaryDirectory(prefix="jwtmcp-soak-") as tmp:
        result = asyncio.run(soak(args, Path(tmp)))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:<34} {value}")
    ok = result["failures"] == 0 and result["calls"] > 0
    print("soak: PASS" if ok else "soak: FAIL", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
