#!/usr/bin/env python3
"""jwtmcp against the physical limit and its peers, measured in ONE process and run.

    python scripts/bench.py            # a human table (about a minute)
    python scripts/bench.py --json     # one JSON object for machines
    python scripts/bench.py --quick    # a short, noisier run
    python scripts/bench.py --quick --replicas   # plus /token on 2 replicas sharing Redis

Baselines: raw ``cryptography`` RSA-2048 PKCS#1 v1.5 SHA-256 sign and verify (the physical
limit of an RS256 token) and PyJWT ``encode``/``decode`` (what users write today). Every
jwtmcp figure is reported as a rate or a latency AND as a ratio against a baseline measured
in this same run, so the ratios mean something on a shared, noisy machine.

CPU figures are measured round-robin: each benchmark runs for a short slice in turn, for
several rounds, and the best slice counts. ``/token`` runs against a real ``jwtmcp serve``
subprocess (one worker) on loopback, for ``client_credentials`` and for the sign-in grants
(``authorization_code`` exchanges and ``refresh_token`` rotations, see :func:`sign_in_http`);
and with the ring's keys in custody (:func:`key_custody_http`: PEM files, a SoftHSM2 token
over PKCS#11, moto's KMS emulator); ``tools/call`` goes through the official MCP SDK client
to a real MCP server subprocess, plain and protected, alternating between the two.
Everything binds 127.0.0.1 and is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import http.client
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import jwt  # noqa: E402
from _harness import (  # noqa: E402
    LOOPBACK,
    Issuer,
    McpServer,
    Process,
    child_env,
    free_port,
    percentile,
    proc_cpu_seconds,
    running,
)
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402

import jwtmcp  # noqa: E402
from jwtmcp.keys import init_ring, load_ring  # noqa: E402
from jwtmcp.tokens import mint  # noqa: E402

ISSUER = "http://127.0.0.1:1"
AUDIENCE = "http://127.0.0.1:2/mcp"
TOKEN_LIFETIME = 900
TOOLS = ("add", "subtract")

CPU_RATIOS: dict[str, tuple[str, str]] = {
    # ratio key: (bench, baseline bench), both measured in the same interleaved rounds
    "verify_fresh_vs_raw": ("verify_fresh", "raw_verify"),
    "verify_reused_vs_raw": ("verify_reused", "raw_verify"),
    "pyjwt_verify_vs_raw": ("pyjwt_verify", "raw_verify"),
    "mint_vs_raw_sign": ("mint", "raw_sign"),
    "pyjwt_sign_vs_raw_sign": ("pyjwt_sign", "raw_sign"),
    "verify_3keys_vs_1key": ("verify_3keys", "verify_1key"),
    "verify_50keys_vs_1key": ("verify_50keys", "verify_1key"),
    "verify_revoked10k_vs_1key": ("verify_revoked10k", "verify_1key"),
    "verify_reused_revoked10k_vs_reused": ("verify_reused_revoked10k", "verify_reused"),
}

TARGETS: dict[str, tuple[str, str, float]] = {
    # ratio key: (description, comparison, bound)
    "verify_fresh_vs_raw": ("verify, fresh tokens / raw verify", ">=", 0.75),
    "verify_reused_vs_raw": ("verify, reused token / raw verify", ">=", 25.0),
    "mint_vs_raw_sign": ("mint / raw sign", ">=", 0.95),
    "token_http_vs_raw_sign": ("/token over HTTP, 1 worker / raw sign", ">=", 0.80),
    "code_exchange_http_vs_raw_sign": ("code exchange over HTTP, 1 worker / raw sign", ">=", 0.35),
    "refresh_http_vs_raw_sign": ("refresh grant over HTTP, 1 worker / raw sign", ">=", 0.35),
    "tools_call_p50_auth_vs_noauth": ("tools/call p50 with auth / without", "<=", 1.05),
    "tools_call_p50_observed_vs_auth": (
        "tools/call p50, metrics + audit on / off", "<=", 1.05),
    "verify_50keys_vs_1key": ("verify throughput, 50 keys / 1 key", ">=", 0.95),
    "verify_revoked10k_vs_1key": (
        "verify throughput, 10,000-entry revocation list / none", ">=", 0.95),
}


@dataclass(frozen=True)
class Settings:
    quick: bool
    rounds: int
    slice_s: float
    pool: int
    http_rounds: int
    http_seconds: float
    http_connections: int
    mcp_calls: int
    mcp_warmup: int
    fill_cache: bool  # fill the verified-token cache to its default size (else extrapolate)

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(True, rounds=3, slice_s=0.05, pool=400, http_rounds=1, http_seconds=1.5,
                       http_connections=6, mcp_calls=150, mcp_warmup=20, fill_cache=False)
        return cls(False, rounds=15, slice_s=0.1, pool=2500, http_rounds=3, http_seconds=3.0,
                   http_connections=8, mcp_calls=1500, mcp_warmup=100, fill_cache=True)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the round-robin timer -----------------------------------------------------------------


@dataclass
class Bench:
    """One CPU benchmark: ``run`` does one timed batch and returns how many operations it did;
    ``prepare`` (untimed) runs before every batch."""

    name: str
    run: Callable[[], int]
    prepare: Callable[[], None] | None = None


def measure(
    benches: list[Bench], rounds: int, slice_s: float
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-second rates of every bench, and the ratios between them, measured interleaved.

    Each round runs one batch of every bench in turn, again and again, until each has had
    ``slice_s`` of CPU time: all benches of a round see the same load on the machine. A
    rate is the median of its per-round rates; a ratio (see ``CPU_RATIOS``) is the median
    of the per-round ratios, so drift between rounds cancels out.

    Time is this thread's CPU time (``time.thread_time``): every CPU benchmark is
    single-threaded and CPU-bound, so on a shared machine this counts the work done, not the
    moments another process held the core.
    """
    names = [b.name for b in benches]
    per_round: list[dict[str, float]] = []
    for r in range(rounds):
        gc.collect()
        ops = dict.fromkeys(names, 0)
        spent = dict.fromkeys(names, 0.0)
        active = benches if r % 2 == 0 else list(reversed(benches))
        while active:
            for bench in active:
                if bench.prepare is not None:
                    bench.prepare()
                t0 = time.thread_time()
                ops[bench.name] += bench.run()
                spent[bench.name] += time.thread_time() - t0
            active = [b for b in active if spent[b.name] < slice_s]
        per_round.append({name: ops[name] / spent[name] for name in names})
    rates = {name: statistics.median(r[name] for r in per_round) for name in names}
    ratios = {
        key: statistics.median(r[top] / r[bottom] for r in per_round)
        for key, (top, bottom) in CPU_RATIOS.items()
        if top in names and bottom in names
    }
    return rates, ratios


# --- fixtures: ring, keys, token pools ---------------------------------------------------


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@dataclass
class World:
    """Keys, JWKS files and distinct tokens shared by the CPU benchmarks."""

    workdir: Path
    signing: jwtmcp.SigningKey
    public: rsa.RSAPublicKey
    pool: list[str]  # distinct tokens, all valid for ISSUER/AUDIENCE
    warm_token: str  # a further token, used only to warm a fresh verifier
    mint_one: Callable[[], str]  # mints one more distinct token
    jwks_ring: Path  # the ring's JWKS (active + next key)
    jwks_by_count: dict[int, Path]  # JWKS with 1, 3, 50 keys; the signing key last
    revocation_list: bytes  # a signed revocation list of REVOKED_ENTRIES entries, none ours


def build_world(workdir: Path, settings: Settings) -> World:
    ring = init_ring(workdir / "keys")
    ring = load_ring(workdir / "keys")
    key = ring.active.signing_key
    public = key.private_key.public_key()

    def one() -> str:
        return mint(key, issuer=ISSUER, subject="bench", audience=AUDIENCE, client_id="bench",
                    tools=TOOLS, lifetime=TOKEN_LIFETIME)

    pool = [one() for _ in range(settings.pool)]
    assert len(set(pool)) == len(pool)
    jwks_ring = workdir / "jwks-ring.json"
    jwks_ring.write_text(json.dumps(ring.jwks()))
    mine = ring.active.public_jwk()
    decoys: list[dict[str, str]] = [k.public_jwk() for k in ring.keys if k.kid != key.kid]
    by_count: dict[int, Path] = {}
    for count in (1, 3, 50):
        while len(decoys) < count - 1:
            decoys.append(_decoy_jwk())
        path = workdir / f"jwks-{count}.json"
        path.write_text(json.dumps({"keys": [*decoys[: count - 1], mine]}))
        by_count[count] = path
    return World(workdir, key, public, pool, one(), one, jwks_ring, by_count,
                 revocation_list(key))


REVOKED_ENTRIES = 10_000


def revocation_list(key: jwtmcp.SigningKey) -> bytes:
    """A signed revocation list of :data:`REVOKED_ENTRIES` entries (jti, sub, client_id in
    thirds), none of which covers a bench token: every verification pays the lookups."""
    from jwtmcp.revocation import LIST_TYPE, MAX_LIST_BYTES, list_claims
    from jwtmcp.tokens import new_jti, sign

    now = int(time.time())
    third = REVOKED_ENTRIES // 3
    claims = list_claims(
        issuer=ISSUER, sequence=1, now=now,
        jtis={new_jti(): now + 3600 for _ in range(REVOKED_ENTRIES - 2 * third)},
        subjects={f"user-{i}": now for i in range(third)},
        clients={f"client-{i}": now for i in range(third)},
    )
    return sign(claims, key, typ=LIST_TYPE, max_bytes=MAX_LIST_BYTES).encode()


@contextlib.contextmanager
def list_server(body: bytes) -> Any:
    """The revocation list on a loopback HTTP server (stdlib, a thread); yields its URL."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/jwtmcp-revocations+jwt")
            self.send_header("Cache-Control", "max-age=3600")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return

    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}/revocations"
    finally:
        server.shutdown()
        server.server_close()


def _decoy_jwk() -> dict[str, str]:
    from jwtmcp.keys import rsa_kid, rsa_public_jwk_members

    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    jwk = rsa_public_jwk_members(public)
    jwk.update(kid=rsa_kid(public), use="sig", alg="RS256")
    return jwk


def _verifier_class() -> Any:
    try:
        from jwtmcp.verifier import Verifier
    except ImportError:
        return None
    return Verifier


# --- CPU benchmarks ----------------------------------------------------------------------


def cpu_benches(world: World, list_url: str | None = None) -> list[Bench]:
    pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
    signed = []
    for token in world.pool:
        head, body, sig = token.split(".")
        signed.append((f"{head}.{body}".encode(), b64url_decode(sig)))
    private, public = world.signing.private_key, world.public
    claims = jwt.decode(world.pool[0], options={"verify_signature": False})
    headers = {"typ": "at+jwt", "kid": world.signing.kid}
    cursor = {"raw": 0, "pyjwt": 0}
    n_pool = len(world.pool)

    def raw_verify() -> int:
        i = cursor["raw"]
        for _ in range(50):
            message, signature = signed[i]
            public.verify(signature, message, pkcs1, sha256)
            i = (i + 1) % n_pool
        cursor["raw"] = i
        return 50

    def raw_sign() -> int:
        message = signed[0][0]
        for _ in range(10):
            private.sign(message, pkcs1, sha256)
        return 10

    def pyjwt_decode() -> int:
        i = cursor["pyjwt"]
        for _ in range(50):
            jwt.decode(world.pool[i], public, algorithms=["RS256"], audience=AUDIENCE,
                       issuer=ISSUER)
            i = (i + 1) % n_pool
        cursor["pyjwt"] = i
        return 50

    def pyjwt_encode() -> int:
        for _ in range(10):
            jwt.encode(claims, private, algorithm="RS256", headers=headers)
        return 10

    def jwtmcp_mint() -> int:
        for _ in range(10):
            mint(world.signing, issuer=ISSUER, subject="bench", audience=AUDIENCE,
                 client_id="bench", tools=TOOLS, lifetime=TOKEN_LIFETIME)
        return 10

    benches = [
        Bench("raw_verify", raw_verify),
        Bench("raw_sign", raw_sign),
        Bench("pyjwt_verify", pyjwt_decode),
        Bench("pyjwt_sign", pyjwt_encode),
        Bench("mint", jwtmcp_mint),
    ]
    verifier_cls = _verifier_class()
    if verifier_cls is not None:
        benches += verifier_benches(world, verifier_cls, list_url)
    return benches


class FreshVerify:
    """Verifies each pool token once with a verifier that has seen none of them.

    When the pool is used up, ``prepare`` (untimed) builds a new verifier from ``jwks_file``
    and warms it with a token outside the pool, so its key is loaded but its cache is empty.
    """

    def __init__(self, world: World, verifier_cls: Any, jwks_file: Path,
                 **options: Any) -> None:
        self.world, self.cls, self.jwks_file = world, verifier_cls, jwks_file
        self.options = options
        self.verifier: Any = None
        self.next = len(world.pool)

    def prepare(self) -> None:
        if self.next + 50 <= len(self.world.pool):
            return
        if self.verifier is not None:
            self.verifier.close()
        self.verifier = self.cls(issuer=ISSUER, audience=AUDIENCE, jwks_file=self.jwks_file,
                                 **self.options)
        self.verifier.verify(self.world.warm_token)  # with a list: waits for its first fetch
        self.next = 0

    def run(self) -> int:
        verify = self.verifier.verify
        pool = self.world.pool
        start = self.next
        for i in range(start, start + 50):
            verify(pool[i])
        self.next = start + 50
        return 50


def verifier_benches(world: World, verifier_cls: Any, list_url: str | None = None
                     ) -> list[Bench]:
    token = world.pool[0]

    def reused_bench(**options: Any) -> Callable[[], int]:
        verifier = verifier_cls(issuer=ISSUER, audience=AUDIENCE, jwks_file=world.jwks_ring,
                                **options)
        verifier.verify(token)

        def reused() -> int:
            verify = verifier.verify
            for _ in range(1000):
                verify(token)
            return 1000

        return reused

    benches = [Bench("verify_reused", reused_bench())]
    fresh = {
        "verify_fresh": FreshVerify(world, verifier_cls, world.jwks_ring),
        "verify_1key": FreshVerify(world, verifier_cls, world.jwks_by_count[1]),
        "verify_3keys": FreshVerify(world, verifier_cls, world.jwks_by_count[3]),
        "verify_50keys": FreshVerify(world, verifier_cls, world.jwks_by_count[50]),
    }
    if list_url is not None:
        # The same 1-key verifier checking a 10,000-entry revocation list (docs/revocation.md).
        fresh["verify_revoked10k"] = FreshVerify(
            world, verifier_cls, world.jwks_by_count[1], revocation_url=list_url)
        benches.append(Bench("verify_reused_revoked10k",
                             reused_bench(revocation_url=list_url)))
    benches += [Bench(name, f.run, f.prepare) for name, f in fresh.items()]
    return benches


def cache_memory(world: World, verifier_cls: Any, fill: bool) -> dict[str, Any]:
    """Bytes held by the verified-token cache, by tracemalloc, filled with distinct tokens.

    Each token is a fresh string (as a request would bring), so what the cache keeps of it
    counts. With ``fill`` the cache is filled to its default size with newly minted tokens;
    otherwise the per-entry cost is measured on the pool and scaled to the default size
    (``extrapolated: true``).
    """
    verifier = verifier_cls(issuer=ISSUER, audience=AUDIENCE, jwks_file=world.jwks_ring)
    verifier.verify(world.warm_token)
    size = _default_cache_size(verifier_cls, verifier)
    tokens = world.pool if size is None else world.pool[:size]
    if fill and size is not None and len(tokens) < size:
        tokens = tokens + [world.mint_one() for _ in range(size - len(tokens))]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for token in tokens:
        verifier.verify(token.encode().decode())
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    verifier.close()
    per_entry = grown / len(tokens)
    entries = size if size is not None else len(tokens)
    return {
        "cache_default_size": size,
        "cache_bytes_per_entry": round(per_entry),
        "cache_memory_mb_at_default_size": round(per_entry * entries / 1e6, 2),
        "cache_memory_extrapolated": entries > len(tokens),
    }


def _default_cache_size(verifier_cls: Any, verifier: Any) -> int | None:
    import inspect

    with contextlib.suppress(TypeError, ValueError):
        for name, param in inspect.signature(verifier_cls).parameters.items():
            if "cache" in name and isinstance(param.default, int) and name.endswith("size"):
                return int(param.default)
    for attr in ("cache_size", "token_cache_size"):
        value = getattr(verifier, attr, None)
        if isinstance(value, int):
            return value
    return None


# --- /token over HTTP --------------------------------------------------------------------


def token_http(workdir: Path, settings: Settings) -> dict[str, Any]:
    """Requests per second ``POST /token`` sustains on one ``jwtmcp serve`` worker.

    The client is the standard library's ``http.client`` on keep-alive connections from a few
    threads, far lighter per request than the server, so the server is the bottleneck. Two
    figures per round: requests per wall-clock second, and requests per CPU-second the server
    process used (Linux ``/proc``), which is what one worker does with one core even when
    other processes share the machine, and is on the same footing as the CPU-time baselines.
    The best round counts.
    """
    issuer = Issuer(workdir / "issuer", rate_limit=0)
    issuer.workdir.mkdir(parents=True, exist_ok=True)
    secret = issuer.add_client("bench", tools=TOOLS, audiences=[AUDIENCE])
    with running(issuer):
        assert issuer.process is not None
        pid = issuer.process.pid
        auth = "Basic " + base64.b64encode(f"bench:{secret}".encode()).decode()
        body = urlencode({"grant_type": "client_credentials", "resource": AUDIENCE}).encode()
        headers = {"Authorization": auth, "Content-Type": "application/x-www-form-urlencoded"}
        _token_burst(issuer.port, body, headers, 1, 0.5)  # warm-up: imports, key load, caches
        out: dict[str, Any] = {"token_http_per_s": 0.0}
        for _ in range(settings.http_rounds):
            cpu0 = proc_cpu_seconds(pid)
            t0 = time.perf_counter()
            ok, failed = _token_burst(issuer.port, body, headers, settings.http_connections,
                                      settings.http_seconds)
            elapsed = time.perf_counter() - t0
            cpu1 = proc_cpu_seconds(pid)
            if failed:
                raise RuntimeError(f"/token failed {failed} times during the benchmark")
            if ok / elapsed > out["token_http_per_s"]:
                out["token_http_per_s"] = ok / elapsed
                out["token_http_requests"] = ok
            if cpu0 is not None and cpu1 is not None and cpu1 > cpu0:
                per_cpu = ok / (cpu1 - cpu0)
                if per_cpu > out.get("token_http_per_server_cpu_s", 0.0):
                    out["token_http_per_server_cpu_s"] = per_cpu
                    out["token_http_server_cpu"] = round((cpu1 - cpu0) / elapsed, 2)
        return out


def _token_burst(port: int, body: bytes, headers: dict[str, str], connections: int,
                 seconds: float) -> tuple[int, int]:
    deadline = time.perf_counter() + seconds
    counts = [[0, 0] for _ in range(connections)]

    def worker(slot: list[int]) -> None:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
        try:
            while time.perf_counter() < deadline:
                conn.request("POST", "/token", body, headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status == 200 and b'"access_token"' in data:
                    slot[0] += 1
                else:
                    slot[1] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(c,)) for c in counts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


# --- /token on issuer replicas sharing one Redis --------------------------------------------

REDIS_SERVER = Path("/usr/bin/redis-server")


@contextlib.contextmanager
def _redis_server(workdir: Path) -> Any:
    """Debian's redis-server on a free loopback port, no persistence; stopped by its PID."""
    import socket
    import subprocess

    if not REDIS_SERVER.exists():
        raise RuntimeError("needs Debian's redis-server package (scripts/test-deps installs it)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [str(REDIS_SERVER), "--port", str(port), "--bind", LOOPBACK, "--dir", str(workdir),
         "--save", "", "--appendonly", "no", "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://{LOOPBACK}:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def replicas_http(workdir: Path, settings: Settings) -> dict[str, Any]:
    """``client_credentials`` per wall second: one replica, then two replicas sharing Redis.

    Each replica is a one-worker ``jwtmcp serve`` with ``--store redis://...`` and a rate limit
    too high to refuse anything, so every request also takes from the client's bucket in
    Redis (one atomic script: the price of sharing limits). The same client load (the
    connections of :func:`token_http`, split evenly between the replicas) runs against one
    replica, then two. On loopback all of them share this machine's cores, so the two-replica
    figure shows what a second replica adds here, not on a second machine. Best round counts.
    """
    with _redis_server(workdir / "redis") as url:
        flags = ["--store", url, "--rate-burst", "1000000000"]
        a = Issuer(workdir / "replicas", rate_limit=1_000_000, extra_args=flags)
        a.workdir.mkdir(parents=True, exist_ok=True)
        secret = a.add_client("bench", tools=TOOLS, audiences=[AUDIENCE])
        b = Issuer(a.workdir, rate_limit=1_000_000, extra_args=flags)
        auth = "Basic " + base64.b64encode(f"bench:{secret}".encode()).decode()
        body = urlencode({"grant_type": "client_credentials", "resource": AUDIENCE}).encode()
        headers = {"Authorization": auth, "Content-Type": "application/x-www-form-urlencoded"}
        out: dict[str, Any] = {"replicas_1_redis_per_s": 0.0, "replicas_2_redis_per_s": 0.0}
        with running(a, b):
            assert a.process is not None and b.process is not None
            for port in (a.port, b.port):
                _token_burst(port, body, headers, 1, 0.5)  # warm-up
            for _ in range(settings.http_rounds):
                for key, used in (("replicas_1_redis", [a]), ("replicas_2_redis", [a, b])):
                    pids = [i.process.pid for i in used if i.process is not None]
                    cpu0 = [proc_cpu_seconds(pid) for pid in pids]
                    rate, ok = _token_burst_spread([i.port for i in used], body, headers,
                                                   settings)
                    cpu1 = [proc_cpu_seconds(pid) for pid in pids]
                    out[f"{key}_per_s"] = max(out[f"{key}_per_s"], rate)
                    if None not in cpu0 + cpu1:
                        spent = sum(c1 - c0 for c0, c1 in zip(cpu0, cpu1, strict=True))
                        if spent > 0:
                            per_cpu = ok / spent
                            out[f"{key}_per_server_cpu_s"] = max(
                                out.get(f"{key}_per_server_cpu_s", 0.0), per_cpu)
        return out


def _token_burst_spread(ports: list[int], body: bytes, headers: dict[str, str],
                        settings: Settings) -> tuple[float, int]:
    """Requests per wall second with ``settings.http_connections`` split over ``ports``, and
    how many requests that was."""
    share = max(1, settings.http_connections // len(ports))
    totals: list[tuple[int, int]] = []
    threads = [
        threading.Thread(target=lambda p=port: totals.append(
            _token_burst(p, body, headers, share, settings.http_seconds)))
        for port in ports
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    failed = sum(f for _, f in totals)
    if failed:
        raise RuntimeError(f"/token failed {failed} times during the replicas benchmark")
    ok = sum(n for n, _ in totals)
    return ok / elapsed, ok


def replica_lines(results: dict[str, Any]) -> list[str]:
    """The table's rows for :func:`replicas_http` (none when it did not run)."""
    one, two = results.get("replicas_1_redis_per_s"), results.get("replicas_2_redis_per_s")
    if one is None or two is None:
        return []
    single = results.get("token_http_per_s")
    rows = [
        ("POST /token, 1 replica, Redis store", f"{one:,.0f}/s",
         "" if not single else f"{one / single:.2f}", "vs 1 worker, no store"),
        ("POST /token, 2 replicas, one Redis", f"{two:,.0f}/s",
         f"{two / one:.2f}" if one else "", "vs 1 replica, Redis"),
    ]
    cpu_one = results.get("replicas_1_redis_per_server_cpu_s")
    cpu_two = results.get("replicas_2_redis_per_server_cpu_s")
    if cpu_one and cpu_two:
        plain = results.get("token_http_per_server_cpu_s")
        rows.append(("  same, 1 replica, per server CPU-s", f"{cpu_one:,.0f}/s",
                     "" if not plain else f"{cpu_one / plain:.2f}", "vs 1 worker, no store"))
        rows.append(("  same, 2 replicas, per server CPU-s", f"{cpu_two:,.0f}/s",
                     f"{cpu_two / cpu_one:.2f}", "vs 1 replica, Redis"))
    lines = [f"{label:<40} {value:>12} {rat:>7}  {note}" for label, value, rat, note in rows]
    lines.append("  (loopback: the replicas, Redis and the client share this machine's "
                 f"{os.cpu_count()} CPUs; per server CPU-s counts the replicas' CPU, not Redis's)")
    return lines


# --- /token with keys in custody: files, PKCS#11 (SoftHSM2), KMS (moto's emulator) ---------

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def key_custody_http(workdir: Path, settings: Settings) -> dict[str, Any]:
    """``POST /token`` per second on one ``jwtmcp serve`` worker whose ring keys are PEM
    files, keys inside a SoftHSM2 token (PKCS#11), or keys in moto's KMS emulator, each
    measured as :func:`token_http` does (best round; wall-clock and per server CPU-second).

    The PKCS#11 and KMS signers block the worker for each signature (a call into the token,
    an HTTP round trip to KMS), so these rows show what custody costs per token. A backend
    whose engine is missing (Debian's ``softhsm2``, ``moto[server]``) is reported as such.
    """
    out: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        backends: list[tuple[str, list[str], dict[str, str]]] = [("file", [], {})]
        try:
            backends.append(("pkcs11", *_softhsm_token(workdir / "softhsm")))
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            out["token_http_pkcs11_unavailable"] = f"{type(exc).__name__}: {exc}"
        try:
            backends.append(("kms", *_kms_emulator(workdir / "moto", stack)))
        except (OSError, RuntimeError) as exc:
            out["token_http_kms_unavailable"] = f"{type(exc).__name__}: {exc}"
        for name, flags, env in backends:
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)  # the issuer and the CLI inherit it (PIN, AWS settings)
            try:
                issuer = Issuer(workdir / f"custody-{name}", rate_limit=0)
                issuer.workdir.mkdir(parents=True, exist_ok=True)
                issuer.cli("keys", "init", *flags)
                secret = issuer.add_client("bench", tools=TOOLS, audiences=[AUDIENCE])
                figures = _token_rounds(issuer, secret, settings)
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            out[f"token_http_{name}_keys_per_s"] = figures.get("per_s")
            out[f"token_http_{name}_keys_per_server_cpu_s"] = figures.get("per_cpu_s")
    for name in ("pkcs11", "kms"):
        out[f"token_http_{name}_vs_file_keys"] = _ratio(
            out, f"token_http_{name}_keys_per_s", "token_http_file_keys_per_s"
        )
    return out


def _token_rounds(issuer: Issuer, secret: str, settings: Settings) -> dict[str, float]:
    """The best round of ``/token`` bursts against ``issuer`` (started and stopped here)."""
    best: dict[str, float] = {}
    with running(issuer):
        assert issuer.process is not None
        pid = issuer.process.pid
        auth = "Basic " + base64.b64encode(f"bench:{secret}".encode()).decode()
        body = urlencode({"grant_type": "client_credentials", "resource": AUDIENCE}).encode()
        headers = {"Authorization": auth, "Content-Type": "application/x-www-form-urlencoded"}
        _token_burst(issuer.port, body, headers, 1, 0.5)  # warm-up: key load, the session
        for _ in range(settings.http_rounds):
            cpu0 = proc_cpu_seconds(pid)
            t0 = time.perf_counter()
            ok, failed = _token_burst(issuer.port, body, headers, settings.http_connections,
                                      settings.http_seconds)
            elapsed = time.perf_counter() - t0
            cpu1 = proc_cpu_seconds(pid)
            if failed:
                raise RuntimeError(f"/token failed {failed} times during the benchmark")
            best["per_s"] = max(best.get("per_s", 0.0), ok / elapsed)
            if cpu0 is not None and cpu1 is not None and cpu1 > cpu0:
                best["per_cpu_s"] = max(best.get("per_cpu_s", 0.0), ok / (cpu1 - cpu0))
    return best


def _softhsm_token(directory: Path) -> tuple[list[str], dict[str, str]]:
    """A fresh SoftHSM2 token; (``keys init`` flags, environment) for a ring inside it."""
    if not Path(SOFTHSM_MODULE).exists():
        raise RuntimeError("Debian's softhsm2 is not installed (scripts/test-deps installs it)")
    (directory / "tokens").mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\n"
                    "objectstore.backend = file\nlog.level = ERROR\n")
    pin = "bench-" + os.urandom(6).hex()
    env = {"SOFTHSM2_CONF": str(conf), "JWTMCP_PKCS11_PIN": pin}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "bench",
                    "--pin", pin, "--so-pin", pin], env={**os.environ, **env},
                   capture_output=True, check=True, timeout=60)
    flags = ["--backend", "pkcs11", "--pkcs11-module", SOFTHSM_MODULE, "--pkcs11-token", "bench"]
    return flags, env


def _kms_emulator(directory: Path, stack: contextlib.ExitStack) -> tuple[list[str], dict[str, str]]:
    """moto's KMS server on loopback (stopped with ``stack``); (flags, environment)."""
    directory.mkdir(parents=True)
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    emulator = Process("moto", [sys.executable, "-m", "moto.server", "-H", LOOPBACK,
                                "-p", str(port)], directory / "moto.log", env=child_env())
    stack.callback(emulator.stop)
    emulator.start_until_up(url + "/moto-api/")
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    return ["--backend", "kms", "--kms-endpoint-url", url], env


# --- the sign-in grants over HTTP ----------------------------------------------------------

REDIRECT_URI = "http://127.0.0.1:33418/callback"
BENCH_USER = "bench-user"
PKCE_VERIFIER = "bench-" + "v" * 60


def sign_in_http(workdir: Path, settings: Settings) -> dict[str, Any]:
    """Code exchanges and refresh grants per second on one ``jwtmcp serve`` worker.

    The front channel (a browser, the login and consent pages) is not what is measured, so
    the bench makes codes the way ``/authorize`` does after consent: it writes code records
    (the sign-in contract's fields) straight into the issuer's SQLite store with
    ``Store.put_code``, untimed, before each round. The client is an RFC 7591 registration
    signed with the issuer's own registration key, as ``POST /register`` would issue it.
    Every exchange sends the PKCE verifier and gets an access token and a refresh token (two
    store writes: take the code, start the family). Every refresh presents the connection's
    newest refresh token and gets the next (one store write, one users-file lookup). Figures
    per server CPU-second when ``/proc`` tells it, as for ``client_credentials``.
    """
    from jwtmcp.pkce import s256_challenge
    from jwtmcp.registration import StatelessRegistrar
    from jwtmcp.store import default_store_path, new_opaque_token, open_store

    issuer = Issuer(workdir / "sign-in", rate_limit=0)
    issuer.workdir.mkdir(parents=True, exist_ok=True)
    issuer.cli("users", "add", BENCH_USER, "--tools", ",".join(TOOLS), "--audience", AUDIENCE)
    with running(issuer):
        assert issuer.process is not None
        pid = issuer.process.pid
        # The issuer reads its registration key lazily, on the first sign-in request.
        registrar = StatelessRegistrar.from_keys_dir(issuer.keys_dir)
        client_id = registrar.issue({"redirect_uris": [REDIRECT_URI]})["client_id"]
        store_path = default_store_path(issuer.keys_dir)
        store = open_store(store_path)
        record = {
            "client_id": client_id,
            "redirect_uri": REDIRECT_URI,
            "code_challenge": s256_challenge(PKCE_VERIFIER),
            "resource": AUDIENCE,
            "scope": " ".join(f"tool:{t}" for t in TOOLS),
            "subject": BENCH_USER,
            "source_id": "users",
            "auth_time": int(time.time()),
            "claims": {},
            "max_lifetime": None,
        }
        headers = {"Content-Type": "application/x-www-form-urlencoded"}

        def codes(count: int) -> list[bytes]:
            bodies = []
            for _ in range(count):
                code = new_opaque_token()
                store.put_code(code, record, ttl=60)
                bodies.append(urlencode({
                    "grant_type": "authorization_code", "code": code, "client_id": client_id,
                    "redirect_uri": REDIRECT_URI, "code_verifier": PKCE_VERIFIER,
                }).encode())
            # Writing the codes is the front channel's work: move it out of the write-ahead
            # log now, or the issuer's next checkpoint would copy it inside the timed window.
            with contextlib.closing(sqlite3.connect(store_path)) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return bodies

        def refresh_body(token: str) -> bytes:
            return urlencode({"grant_type": "refresh_token", "refresh_token": token,
                              "client_id": client_id}).encode()

        out: dict[str, Any] = {}
        try:
            _grant_round(issuer.port, pid, headers, codes(50), 1, 0.5)  # warm-up
            per_round = max(200, int(settings.http_seconds * 1500))
            for _ in range(settings.http_rounds):
                figures = _grant_round(issuer.port, pid, headers, codes(per_round),
                                       settings.http_connections, settings.http_seconds)
                _keep_best(out, "code_exchange_http", figures)
            for _ in range(settings.http_rounds):
                starts = [json.loads(answer)["refresh_token"] for answer in _grant_round(
                    issuer.port, pid, headers, codes(settings.http_connections),
                    settings.http_connections, settings.http_seconds, keep=True)[2]]
                figures = _grant_round(issuer.port, pid, headers, [], settings.http_connections,
                                       settings.http_seconds, chains=starts, next_body=refresh_body)
                _keep_best(out, "refresh_http", figures)
        finally:
            store.close()
        return out


def _keep_best(out: dict[str, Any], name: str, figures: tuple[float, float | None, list[bytes]]
               ) -> None:
    wall, per_cpu, _ = figures
    if wall > out.get(f"{name}_per_s", 0.0):
        out[f"{name}_per_s"] = wall
    if per_cpu is not None and per_cpu > out.get(f"{name}_per_server_cpu_s", 0.0):
        out[f"{name}_per_server_cpu_s"] = per_cpu


def _grant_round(port: int, pid: int, headers: dict[str, str], bodies: list[bytes],
                 connections: int, seconds: float, *, keep: bool = False,
                 chains: list[str] | None = None,
                 next_body: Callable[[str], bytes] | None = None,
                 ) -> tuple[float, float | None, list[bytes]]:
    """POST ``bodies`` (each once) or, with ``chains``, refresh one chain per connection.

    Stops when the bodies run out or after ``seconds``. Returns (successes per wall second,
    successes per server CPU-second or None, the answers when ``keep``). Any refusal raises.
    """
    deadline = time.perf_counter() + seconds
    pending = list(reversed(bodies))
    answers: list[bytes] = []
    counts = [0] * connections
    failures: list[str] = []

    def worker(slot: int) -> None:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
        chain = chains[slot] if chains is not None else None
        try:
            while time.perf_counter() < deadline and not failures:
                if chain is not None and next_body is not None:
                    body = next_body(chain)
                else:
                    try:
                        body = pending.pop()
                    except IndexError:
                        return
                conn.request("POST", "/token", body, headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200 or b'"access_token"' not in data:
                    failures.append(f"{resp.status} {data[:200]!r}")
                    return
                counts[slot] += 1
                if chain is not None:
                    chain = json.loads(data)["refresh_token"]
                if keep:
                    answers.append(data)
        finally:
            conn.close()

    cpu0 = proc_cpu_seconds(pid)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    cpu1 = proc_cpu_seconds(pid)
    if failures:
        raise RuntimeError(f"a sign-in grant failed during the benchmark: {failures[0]}")
    ok = sum(counts)
    per_cpu = ok / (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None and cpu1 > cpu0 else None
    return ok / elapsed, per_cpu, answers


# --- tools/call through the SDK ----------------------------------------------------------


def tools_call(workdir: Path, settings: Settings) -> dict[str, Any]:
    """p50/p99 of ``tools/call`` via the official SDK client: plain server, protected server,
    and protected server with metrics and the audit log on (``observed``).

    All are the same MCPServer (one ``add`` tool) in subprocesses; the protected ones verify
    tokens from a real issuer, the observed one also counts every check and call
    (``/metrics``) and writes an audit line per call to a file. One session and one token
    each; calls alternate in batches between them so drift on the machine hits all alike.
    """
    issuer = Issuer(workdir / "mcp-issuer")
    plain = McpServer(workdir, "mcp-plain")
    protected = McpServer(workdir, "mcp-auth", issuer_url=issuer.url)
    observed = McpServer(workdir, "mcp-observed", issuer_url=issuer.url, observe=True)
    issuer.workdir.mkdir(parents=True, exist_ok=True)
    secret = issuer.add_client("bench", tools=["add"], audiences=[protected.url, observed.url])
    with running(issuer, plain, protected, observed):
        tokens = {
            "auth": (protected.url, _fetch_token(issuer.url, "bench", secret, protected.url)),
            "observed": (observed.url, _fetch_token(issuer.url, "bench", secret, observed.url)),
        }
        out = asyncio.run(_tools_call_async(plain.url, tokens, settings))
        out["tools_call_observed_counted"] = _counted_calls(observed.metrics_url)
        out["tools_call_observed_audit_lines"] = len(observed.audit_log.read_text().splitlines())
        return out


def _counted_calls(metrics_url: str) -> float:
    """The allowed ``add`` calls the observed server's /metrics reports (proves it was on)."""
    import httpx2
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx2.get(metrics_url, timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "jwtmcp_tool_calls_total" and sample.labels == {
                "tool": "add", "decision": "allowed"}:
                return float(sample.value)
    return 0.0


def _fetch_token(issuer_url: str, client_id: str, secret: str, resource: str) -> str:
    import httpx2

    resp = httpx2.post(
        issuer_url + "/token",
        data={"grant_type": "client_credentials", "resource": resource},
        auth=(client_id, secret),
        timeout=10,
    )
    resp.raise_for_status()
    return str(resp.json()["access_token"])


async def _tools_call_async(plain_url: str, protected: dict[str, tuple[str, str]],
                            settings: Settings) -> dict[str, Any]:
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with contextlib.AsyncExitStack() as stack:
        sessions: dict[str, Any] = {}
        servers = [("noauth", plain_url, {})] + [
            (name, url, {"Authorization": f"Bearer {token}"})
            for name, (url, token) in protected.items()
        ]
        for name, url, headers in servers:
            client = await stack.enter_async_context(httpx2.AsyncClient(headers=headers,
                                                                        timeout=30))
            read, write = await stack.enter_async_context(
                streamable_http_client(url, http_client=client)
            )
            session = await stack.enter_async_context(ClientSession(read, write))
            await session.initialize()
            sessions[name] = session

        async def call(session: Any) -> float:
            t0 = time.perf_counter()
            result = await session.call_tool("add", {"a": 2, "b": 3})
            elapsed = time.perf_counter() - t0
            if result.is_error:
                raise RuntimeError(f"tools/call failed: {result.content}")
            return elapsed

        for _ in range(settings.mcp_warmup):
            for session in sessions.values():
                await call(session)
        samples: dict[str, list[float]] = {name: [] for name in sessions}
        batch = 25
        done = 0
        turn = 0
        while done < settings.mcp_calls:
            # Alternating batches, so a slow moment of the machine weighs on both sides alike.
            names = list(sessions) if turn % 2 == 0 else list(reversed(sessions))
            for name in names:
                for _ in range(batch):
                    samples[name].append(await call(sessions[name]))
            done += batch
            turn += 1
    out: dict[str, Any] = {"tools_call_iterations": done,
                           "tools_call_per_server": settings.mcp_warmup + done}
    for name, values in samples.items():
        values.sort()
        out[f"tools_call_p50_ms_{name}"] = percentile(values, 50) * 1000
        out[f"tools_call_p99_ms_{name}"] = percentile(values, 99) * 1000
    return out


# --- the run -----------------------------------------------------------------------------


def run(settings: Settings, replicas: bool | None = None) -> dict[str, Any]:
    """Every figure; ``replicas`` (None: in full runs only) adds :func:`replicas_http`."""
    results: dict[str, Any] = {
        "quick": settings.quick,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    unavailable: dict[str, str] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jwtmcp-bench-") as tmp:
        workdir = Path(tmp)
        log("bench: minting the token pool and the JWKS files ...")
        world = build_world(workdir, settings)
        log("bench: CPU figures (round-robin) ...")
        # Two groups, each interleaved within itself: signing, then verifying. Verifiers keep
        # what they verified, and the garbage collector a later allocation triggers would
        # charge scanning those caches to whichever bench allocated next (mint, not the
        # allocation-free raw sign), so the signing group runs on its own.
        with list_server(world.revocation_list) as list_url:
            benches = cpu_benches(world, list_url)
            signing = {"raw_sign", "pyjwt_sign", "mint"}
            for group in ([b for b in benches if b.name in signing],
                          [b for b in benches if b.name not in signing]):
                rates, cpu_ratios = measure(group, settings.rounds, settings.slice_s)
                results.update({f"{name}_per_s": rate for name, rate in rates.items()})
                results.update(cpu_ratios)
        verifier_cls = _verifier_class()
        if verifier_cls is None:
            unavailable["verify"] = "jwtmcp.verifier is not available"
        else:
            log("bench: verified-token cache memory ...")
            results.update(cache_memory(world, verifier_cls, settings.fill_cache))
        for name, fn in (("token_http", token_http), ("sign_in_http", sign_in_http),
                         ("tools_call", tools_call), ("key_custody_http", key_custody_http)):
            log(f"bench: {name} ...")
            try:
                results.update(fn(workdir, settings))
            except Exception as exc:  # a missing piece must not hide the figures we have
                unavailable[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                log(f"bench: {name} unavailable: {unavailable[name]}")
        if replicas if replicas is not None else not settings.quick:
            log("bench: replicas_http (two replicas sharing Redis) ...")
            try:
                results.update(replicas_http(workdir, settings))
            except Exception as exc:  # e.g. no redis-server: the other figures still count
                unavailable["replicas_http"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    results["seconds"] = round(time.perf_counter() - started, 1)
    results.update(ratios(results))
    results["targets"] = targets(results)
    if unavailable:
        results["unavailable"] = unavailable
    for key in (
        "raw_verify_per_s", "raw_sign_per_s", "pyjwt_verify_per_s", "verify_fresh_per_s",
        "verify_reused_per_s", "mint_per_s", "token_http_per_s", "code_exchange_http_per_s",
        "refresh_http_per_s", "tools_call_p50_ms_auth",
        "tools_call_p50_ms_noauth", "tools_call_p50_ms_observed", "verify_1key_per_s",
        "verify_50keys_per_s",
        "tools_call_p50_ms_noauth", "verify_1key_per_s", "verify_50keys_per_s",
        "verify_revoked10k_per_s", "verify_reused_revoked10k_per_s",
    ):
        results.setdefault(key, None)
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in results.items()}


def _ratio(results: dict[str, Any], top: str, bottom: str) -> float | None:
    a, b = results.get(top), results.get(bottom)
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return float(a) / float(b)
    return None


def ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """Ratios not measured pairwise: rates of separate runs against this run's baselines."""
    out: dict[str, float | None] = {
        key: _ratio(results, f"{top}_per_s", f"{bottom}_per_s")
        for key, (top, bottom) in CPU_RATIOS.items()
        if key not in results
    }
    # Per server CPU-second when /proc tells it (the baselines are per CPU-second too).
    out["token_http_wall_vs_raw_sign"] = _ratio(results, "token_http_per_s", "raw_sign_per_s")
    out["token_http_vs_raw_sign"] = (
        _ratio(results, "token_http_per_server_cpu_s", "raw_sign_per_s")
        or out["token_http_wall_vs_raw_sign"]
    )
    for grant in ("code_exchange_http", "refresh_http"):
        out[f"{grant}_vs_raw_sign"] = _ratio(
            results, f"{grant}_per_server_cpu_s", "raw_sign_per_s"
        ) or _ratio(results, f"{grant}_per_s", "raw_sign_per_s")
    out["tools_call_p50_auth_vs_noauth"] = _ratio(
        results, "tools_call_p50_ms_auth", "tools_call_p50_ms_noauth"
    )
    out["tools_call_p50_observed_vs_auth"] = _ratio(
        results, "tools_call_p50_ms_observed", "tools_call_p50_ms_auth"
    )
    return out


def targets(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, (label, op, bound) in TARGETS.items():
        value = results.get(key)
        holds = None if value is None else (value >= bound if op == ">=" else value <= bound)
        ratio = None if value is None else round(value, 3)
        out[key] = {"figure": label, "target": f"{op} {bound}", "ratio": ratio, "holds": holds}
    return out


def table(results: dict[str, Any]) -> str:
    def rate(key: str) -> str:
        value = results.get(key)
        return "n/a" if value is None else f"{value:,.0f}/s"

    def ms(key: str) -> str:
        value = results.get(key)
        return "n/a" if value is None else f"{value:.2f} ms"

    def ratio(key: str) -> str:
        value = results.get(key)
        return "" if value is None else f"{value:.2f}"

    rows = [
        ("raw RSA-2048 verify (cryptography)", rate("raw_verify_per_s"), "1.00", "baseline"),
        ("PyJWT decode", rate("pyjwt_verify_per_s"), ratio("pyjwt_verify_vs_raw"), ""),
        ("jwtmcp verify, fresh tokens", rate("verify_fresh_per_s"),
         ratio("verify_fresh_vs_raw"), "verify_fresh_vs_raw"),
        ("jwtmcp verify, reused token", rate("verify_reused_per_s"),
         ratio("verify_reused_vs_raw"), "verify_reused_vs_raw"),
        ("jwtmcp verify, 1 key in JWKS", rate("verify_1key_per_s"), "1.00", "baseline"),
        ("jwtmcp verify, 3 keys in JWKS", rate("verify_3keys_per_s"),
         ratio("verify_3keys_vs_1key"), ""),
        ("jwtmcp verify, 50 keys in JWKS", rate("verify_50keys_per_s"),
         ratio("verify_50keys_vs_1key"), "verify_50keys_vs_1key"),
        ("jwtmcp verify, 1 key, 10k revocations", rate("verify_revoked10k_per_s"),
         ratio("verify_revoked10k_vs_1key"), "verify_revoked10k_vs_1key"),
        ("jwtmcp verify, reused, 10k revocations", rate("verify_reused_revoked10k_per_s"),
         ratio("verify_reused_revoked10k_vs_reused"), "(vs reused token, no list)"),
        ("raw RSA-2048 sign (cryptography)", rate("raw_sign_per_s"), "1.00", "baseline"),
        ("PyJWT encode", rate("pyjwt_sign_per_s"), ratio("pyjwt_sign_vs_raw_sign"), ""),
        ("jwtmcp mint", rate("mint_per_s"), ratio("mint_vs_raw_sign"), "mint_vs_raw_sign"),
        ("POST /token, 1 worker, per server CPU-s", rate("token_http_per_server_cpu_s"),
         ratio("token_http_vs_raw_sign"), "token_http_vs_raw_sign"),
        ("POST /token, 1 worker, per wall second", rate("token_http_per_s"),
         ratio("token_http_wall_vs_raw_sign"), ""),
        ("code exchange, 1 worker, per server CPU-s", rate("code_exchange_http_per_server_cpu_s"),
         ratio("code_exchange_http_vs_raw_sign"), "code_exchange_http_vs_raw_sign"),
        ("refresh grant, 1 worker, per server CPU-s", rate("refresh_http_per_server_cpu_s"),
         ratio("refresh_http_vs_raw_sign"), "refresh_http_vs_raw_sign"),
        ("POST /token, file keys, per wall second", rate("token_http_file_keys_per_s"),
         "1.00", "baseline"),
        ("POST /token, PKCS#11 (SoftHSM2) keys", rate("token_http_pkcs11_keys_per_s"),
         ratio("token_http_pkcs11_vs_file_keys"), ""),
        ("POST /token, KMS keys (moto emulator)", rate("token_http_kms_keys_per_s"),
         ratio("token_http_kms_vs_file_keys"), ""),
        ("tools/call p50, no auth", ms("tools_call_p50_ms_noauth"), "1.00", "baseline"),
        ("tools/call p50, jwtmcp auth", ms("tools_call_p50_ms_auth"),
         ratio("tools_call_p50_auth_vs_noauth"), "tools_call_p50_auth_vs_noauth"),
        ("tools/call p50, auth + metrics + audit", ms("tools_call_p50_ms_observed"),
         ratio("tools_call_p50_observed_vs_auth"), "tools_call_p50_observed_vs_auth"),
        ("tools/call p99, no auth", ms("tools_call_p99_ms_noauth"), "", ""),
        ("tools/call p99, jwtmcp auth", ms("tools_call_p99_ms_auth"), "", ""),
    ]
    tgt = results.get("targets", {})
    lines = [f"{'figure':<40} {'result':>12} {'ratio':>7}  target"]
    lines.append("-" * 78)
    for label, value, rat, key in rows:
        note = key
        if key in tgt:
            t = tgt[key]
            mark = {True: "holds", False: "MISSED", None: "n/a"}[t["holds"]]
            note = f"{t['target']}  {mark}"
        lines.append(f"{label:<40} {value:>12} {rat:>7}  {note}")
    if results.get("cache_memory_mb_at_default_size") is not None:
        lines.append(
            f"verified-token cache: {results['cache_bytes_per_entry']} B/entry, "
            f"{results['cache_memory_mb_at_default_size']} MB at its default size "
            f"({results['cache_default_size']} entries"
            f"{', extrapolated' if results['cache_memory_extrapolated'] else ''})"
        )
    if results.get("token_http_server_cpu") is not None:
        lines.append(f"/token server CPU during the window: {results['token_http_server_cpu']:.0%}"
                     " of one core")
    lines.extend(replica_lines(results))
    for name, why in results.get("unavailable", {}).items():
        lines.append(f"not measured: {name}: {why}")
    for name in ("pkcs11", "kms"):
        if results.get(f"token_http_{name}_unavailable"):
            lines.append(f"not measured: /token with {name} keys: "
                         f"{results[f'token_http_{name}_unavailable']}")
    lines.append(f"({'quick' if results['quick'] else 'full'} run, {results['seconds']} s, "
                 f"Python {results['python']}, {results['machine']})")
    return "\n".join(lines)


def profile(name: str, seconds: float = 2.0) -> int:
    """Run one CPU benchmark under cProfile for about ``seconds`` and print where time goes."""
    with tempfile.TemporaryDirectory(prefix="jwtmcp-bench-") as tmp:
        world = build_world(Path(tmp), Settings.make(quick=True))
        with list_server(world.revocation_list) as list_url:
            return _profile(name, seconds, {b.name: b for b in cpu_benches(world, list_url)})


def _profile(name: str, seconds: float, benches: dict[str, Bench]) -> int:
    import cProfile
    import pstats

    if name not in benches:
        print(f"bench.py: unknown benchmark {name!r}; choose from {', '.join(benches)}",
              file=sys.stderr)
        return 2
    bench = benches[name]
    profiler = cProfile.Profile()
    ops = 0
    deadline = time.thread_time() + seconds
    while time.thread_time() < deadline:
        if bench.prepare is not None:
            bench.prepare()  # untimed set-up stays out of the profile
        profiler.enable()
        ops += bench.run()
        profiler.disable()
    print(f"{name}: {ops} operations under cProfile (its overhead inflates Python frames)")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="a short run (noisier)")
    parser.add_argument("--profile", metavar="BENCH",
                        help="profile one CPU benchmark (e.g. verify_fresh, mint) with cProfile")
    parser.add_argument("--table-from", metavar="FILE",
                        help="print the table of a saved --json run instead of running")
    parser.add_argument("--replicas", action=argparse.BooleanOptionalAction, default=None,
                        help="/token on 1 vs 2 replicas sharing Redis (default: full runs only)")
    args = parser.parse_args(argv)
    if args.table_from:
        print(table(json.loads(Path(args.table_from).read_text())))
        return 0
    if args.profile:
        return profile(args.profile)
    results = run(Settings.make(args.quick), replicas=args.replicas)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(table(results))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
