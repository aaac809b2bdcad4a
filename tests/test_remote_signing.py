"""A remote signer (AWS KMS here) never stalls the issuer's event loop.

A KMS ``Sign`` is a network round trip. The issuer runs it in a worker thread, so while one
request waits inside ``Sign`` the same process still answers ``/healthz``, the JWKS and
its RFC 8414 metadata. To hold a ``Sign`` without timing anything, a small loopback proxy
stands in front of moto's KMS server: it forwards every call, and holds each ``Sign``
(``X-Amz-Target: TrentService.Sign``) until the test releases it. Every wait is bounded, so
a regression fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from jwtmcp.clients import add_client
from jwtmcp.issuer import create_app
from jwtmcp.jwt_bearer import JWT_BEARER
from jwtmcp.keys import init_ring, load_ring, rsa_kid, rsa_public_jwk_members
from jwtmcp.pkce import s256_challenge
from jwtmcp.registration import KEY_BYTES, StatelessRegistrar
from jwtmcp.resolver import ClientResolver
from jwtmcp.store import new_opaque_token
from jwtmcp.store.sqlite import SqliteStore
from jwtmcp.tokens import mint
from jwtmcp.users import add_user
from tests.custody_support import AWS_TEST_ENV, moto_server
from tests.support import FakeClock, serve_app

WAIT = 10.0
"""Seconds any one step may take before the test fails (never a measure of speed)."""
ISSUER = "https://issuer.example.com"
AUD = "http://127.0.0.1:9000/mcp"
HERE = "http://127.0.0.1:9101/mcp"  # the exchanging server's own resource
THERE = "http://127.0.0.1:9102/mcp"  # the resource it calls on the user's behalf
REDIRECT = "http://127.0.0.1:33418/callback"
VERIFIER = "v" * 20 + "-._~" + "0123456789abcdefghijklmnopqrstuvwxyz"
CLUSTER = "https://kubernetes.default.svc.cluster.local"
SERVICE_ACCOUNT = "system:serviceaccount:tools:reporter"
ALWAYS_ANSWERING = ("/healthz", "/.well-known/jwks.json", "/.well-known/oauth-authorization-server")
SIGN_TARGET = "TrentService.Sign"
GET_PUBLIC_KEY_TARGET = "TrentService.GetPublicKey"
_HOP_BY_HOP = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}


# --- a KMS that holds Sign until the test lets it go ----------------------------------------


@dataclass
class Hold:
    """One armed hold of the KMS calls named ``target`` (an ``X-Amz-Target``): ``arrived`` is
    set when one comes in, ``released`` lets it on."""

    target: str
    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)


class HoldingKmsProxy:
    """A loopback HTTP proxy in front of moto's KMS server. Forwards every request; while a
    :class:`Hold` is armed (:meth:`holding`), each call it names (``Sign`` by default)
    waits (at most ``5 * WAIT`` seconds, longer than the test's checks while it holds)
    until the hold is released, then goes on to KMS."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.hold: Hold | None = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hold = proxy.hold
                if hold is not None and self.headers.get("X-Amz-Target") == hold.target:
                    hold.arrived.set()
                    hold.released.wait(5 * WAIT)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                answer = httpx2.post(
                    proxy.upstream + self.path, content=body, headers=headers, timeout=WAIT
                )
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() not in _HOP_BY_HOP and name.lower() != "content-encoding":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @contextlib.contextmanager
    def holding(self, target: str = SIGN_TARGET) -> Iterator[Hold]:
        """Hold every ``target`` call while inside; on leaving, release them, stop holding."""
        hold = self.hold = Hold(target)
        try:
            yield hold
        finally:
            self.hold = None
            hold.released.set()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(WAIT)


# --- one issuer whose ring lives in KMS, behind the proxy -----------------------------------


@dataclass
class World:
    http: httpx2.Client
    proxy: HoldingKmsProxy
    store: SqliteStore
    clock: FakeClock
    ring_dir: Path
    machine_secret: str
    exchanger_secret: str
    public_id: str
    cluster_key: rsa.RSAPrivateKey

    def code(self) -> str:
        """A code as /authorize makes it after alice approved ``tool:add``."""
        code = new_opaque_token()
        record = {
            "client_id": self.public_id,
            "redirect_uri": REDIRECT,
            "code_challenge": s256_challenge(VERIFIER),
            "resource": AUD,
            "scope": "tool:add",
            "subject": "alice",
            "source_id": "users",
            "auth_time": int(self.clock()),
            "claims": {},
            "max_lifetime": None,
        }
        self.store.put_code(code, record, ttl=60)
        return code

    def code_form(self) -> dict[str, str]:
        return {
            "grant_type": "authorization_code",
            "code": self.code(),
            "redirect_uri": REDIRECT,
            "code_verifier": VERIFIER,
            "client_id": self.public_id,
        }

    def cluster_assertion(self) -> str:
        """A projected service-account token for this issuer, as the kubelet writes it."""
        now = int(self.clock())
        claims = {
            "iss": CLUSTER,
            "sub": SERVICE_ACCOUNT,
            "aud": [ISSUER],
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": str(uuid.uuid4()),
        }
        pem = self.cluster_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        kid = rsa_kid(self.cluster_key.public_key())
        return jwt.encode(claims, pem, algorithm="RS256", headers={"kid": kid})


ProxyT = TypeVar("ProxyT", bound=HoldingKmsProxy)


@contextlib.contextmanager
def kms_behind(proxy_class: type[ProxyT], directory: Path) -> Iterator[ProxyT]:
    """moto's KMS server (logging into ``directory``), with test AWS credentials set,
    behind a ``proxy_class`` proxy; both are stopped afterwards."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in AWS_TEST_ENV.items():
            env.setenv(name, value)
        with moto_server(directory / "moto.log") as (endpoint, _):
            proxy = proxy_class(endpoint)
            try:
                yield proxy
            finally:
                proxy.close()


@pytest.fixture(scope="module")
def kms_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HoldingKmsProxy]:
    """moto's KMS server behind a :class:`HoldingKmsProxy`, with test AWS credentials."""
    with kms_behind(HoldingKmsProxy, tmp_path_factory.mktemp("moto")) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, kms_proxy: HoldingKmsProxy) -> Iterator[World]:
    with _issuer(tmp_path_factory.mktemp("remote-signing"), kms_proxy) as running:
        yield running


@contextlib.contextmanager
def _issuer(directory: Path, proxy: HoldingKmsProxy, **options: Any) -> Iterator[World]:
    ring_dir = directory / "keys"
    # A KMS timeout far above WAIT: a held Sign must not end by timing out in boto3.
    init_ring(
        ring_dir,
        backend="kms",
        backend_settings={"endpoint_url": proxy.url, "region": "us-east-1", "timeout": 120},
    )
    clock = FakeClock()
    clients = directory / "clients.json"
    _, machine_secret = add_client(clients, "machine", tools=["add"], audiences=[AUD])
    _, exchanger_secret = add_client(
        clients, "server-a", tools=[], audiences=[THERE], resource=HERE,
        delegate={THERE: ["add"]},
    )  # fmt: skip
    add_user(directory / "users.json", "alice", password="pw-" + "x" * 20, tools=["add"],
             audiences=[AUD, HERE, THERE])  # fmt: skip
    cluster_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cluster_jwk = rsa_public_jwk_members(cluster_key.public_key())
    cluster_jwk.update(kid=rsa_kid(cluster_key.public_key()), use="sig", alg="RS256")
    (directory / "cluster-jwks.json").write_text(json.dumps({"keys": [cluster_jwk]}))
    (directory / "trusted-issuers.json").write_text(
        json.dumps({"version": 1, "issuers": {CLUSTER: {"jwks_file": "cluster-jwks.json"}}})
    )
    policy = {
        "version": 1,
        "rules": {
            "reporter": {
                "match": {"source": f"issuer:{CLUSTER}", "sub": SERVICE_ACCOUNT},
                "grant": {"tools": ["add"], "audiences": [AUD]},
            }
        },
    }
    (directory / "policy.json").write_text(json.dumps(policy))
    registrar = StatelessRegistrar(b"k" * KEY_BYTES, clock=clock)
    public = registrar.issue({"redirect_uris": [REDIRECT], "client_name": "Public"})
    store_path = directory / "state.db"
    store = SqliteStore(store_path, clock=clock)
    app = create_app(
        issuer_url=ISSUER,
        keys_dir=ring_dir,
        clients_file=clients,
        clock=clock,
        store=store_path,
        client_resolver=ClientResolver(registrar=registrar),
        **{"rate_limit": 0, **options},
    )
    try:
        with serve_app(app) as url, httpx2.Client(base_url=url, timeout=WAIT) as http:
            yield World(
                http=http,
                proxy=proxy,
                store=store,
                clock=clock,
                ring_dir=ring_dir,
                machine_secret=machine_secret,
                exchanger_secret=exchanger_secret,
                public_id=str(public["client_id"]),
                cluster_key=cluster_key,
            )
    finally:
        store.close()


# --- the requests that sign, each prepared before the hold ----------------------------------

Send = Callable[[World], Callable[[], httpx2.Response]]


def _client_credentials(world: World) -> Callable[[], httpx2.Response]:
    form = {"grant_type": "client_credentials"}
    return lambda: world.http.post("/token", data=form, auth=("machine", world.machine_secret))


def _authorization_code(world: World) -> Callable[[], httpx2.Response]:
    form = world.code_form()
    return lambda: world.http.post("/token", data=form)


def _refresh_token(world: World) -> Callable[[], httpx2.Response]:
    first = world.http.post("/token", data=world.code_form())
    assert first.status_code == 200, first.text
    form = {
        "grant_type": "refresh_token",
        "refresh_token": first.json()["refresh_token"],
        "client_id": world.public_id,
    }
    return lambda: world.http.post("/token", data=form)


def _token_exchange(world: World) -> Callable[[], httpx2.Response]:
    subject = mint(
        load_ring(world.ring_dir), issuer=ISSUER, subject="alice", audience=HERE,
        tools=["add"], clock=world.clock,
    )  # fmt: skip
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": subject,
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "resource": THERE,
    }
    auth = ("server-a", world.exchanger_secret)
    return lambda: world.http.post("/token", data=form, auth=auth)


def _jwt_bearer(world: World) -> Callable[[], httpx2.Response]:
    form = {"grant_type": JWT_BEARER, "assertion": world.cluster_assertion()}
    return lambda: world.http.post("/token", data=form)


def _revocation_list(world: World) -> Callable[[], httpx2.Response]:
    world.clock.advance(3600)  # past any cached list's max-age: this GET signs a new one
    return lambda: world.http.get("/.well-known/jwtmcp-revocations")


SIGNING_REQUESTS: dict[str, Send] = {
    "client_credentials": _client_credentials,
    "authorization_code": _authorization_code,
    "refresh_token": _refresh_token,
    "token_exchange": _token_exchange,
    "jwt_bearer": _jwt_bearer,
    "revocation_list": _revocation_list,
}


def _status_within_wait(http: httpx2.Client, path: str) -> int | str:
    try:
        return http.get(path, timeout=WAIT).status_code
    except httpx2.TimeoutException:
        return f"no answer within {WAIT:.0f} s"


def _signed_by_jwks(document: str, jwks: dict[str, Any]) -> str:
    """The kid of ``document`` once its RS256 signature verifies against ``jwks``."""
    kid = jwt.get_unverified_header(document)["kid"]
    key = jwt.PyJWKSet.from_dict(jwks)[kid]
    jwt.api_jws.decode_complete(document, key.key, algorithms=["RS256"])
    return str(kid)


@pytest.mark.parametrize("request_kind", list(SIGNING_REQUESTS))
def test_a_request_held_inside_kms_sign_leaves_healthz_jwks_and_metadata_answering(
    world: World, request_kind: str
) -> None:
    send = SIGNING_REQUESTS[request_kind](world)
    outcome: dict[str, httpx2.Response | BaseException] = {}

    def run() -> None:
        try:
            outcome["answer"] = send()
        except BaseException as exc:  # reported below, in the test's thread
            outcome["answer"] = exc

    worker = threading.Thread(target=run, daemon=True)
    with world.proxy.holding() as hold:
        worker.start()
        assert hold.arrived.wait(WAIT), f"the {request_kind} request never reached KMS Sign"
        while_held = {path: _status_within_wait(world.http, path) for path in ALWAYS_ANSWERING}
    worker.join(WAIT)
    assert while_held == dict.fromkeys(ALWAYS_ANSWERING, 200), while_held
    assert not worker.is_alive(), f"the {request_kind} request did not end once released"
    answer = outcome.get("answer")
    assert isinstance(answer, httpx2.Response), f"the held request ended with {answer!r}"
    assert answer.status_code == 200, answer.text
    document = answer.text if request_kind == "revocation_list" else answer.json()["access_token"]
    jwks = world.http.get("/.well-known/jwks.json").json()
    assert _signed_by_jwks(document, jwks) == load_ring(world.ring_dir).active.kid


# --- a ring reload that reads a new key's public key from KMS -------------------------------


def test_a_ring_reload_held_inside_kms_get_public_key_leaves_healthz_jwks_and_metadata_answering(
    kms_proxy: HoldingKmsProxy, tmp_path: Path
) -> None:
    with _issuer(tmp_path, kms_proxy, reload_interval=0) as world:
        before = world.http.get("/healthz").json()
        # Another process rotates: the issuer must read the new next key's public key.
        rotate = subprocess.run(
            [sys.executable, "-m", "jwtmcp", "keys", "rotate", "--keys", str(world.ring_dir)],
            env={**os.environ, **AWS_TEST_ENV}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert rotate.returncode == 0, rotate.stderr
        state = json.loads((world.ring_dir / "ring.json").read_text())
        (new_next,) = [k["kid"] for k in state["keys"] if k["state"] == "next"]
        with kms_proxy.holding(GET_PUBLIC_KEY_TARGET) as hold:
            first = _status_within_wait(world.http, "/healthz")  # notices the change
            assert hold.arrived.wait(WAIT), "the reload never asked KMS for the public key"
            while_held = {path: _status_within_wait(world.http, path) for path in ALWAYS_ANSWERING}
        assert first == 200, first
        assert while_held == dict.fromkeys(ALWAYS_ANSWERING, 200), while_held
        # Released: the new ring is served (the reload finishes without a request waiting).
        deadline = time.monotonic() + WAIT
        while world.http.get("/healthz").json()["next_kid"] != new_next:
            assert time.monotonic() < deadline, "the reloaded ring was never served"
            time.sleep(0.01)
        assert before["next_kid"] != new_next
