"""Revocation that keeps verification offline: the signed list, its propagation, refusals.

A real issuer (``create_app`` on uvicorn, loopback) and two real protected MCP servers
that check its revocation list; one injected clock, pinned near the wall clock (the SDK's
own bearer layer reads the wall clock), drives the tokens, the list and every cache's age.
The issuer sends no ``Date`` (uvicorn's comes from the real clock, meaningless to caches on
the injected one). Misbehaving list servers are small Starlette apps on loopback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jwtmcp.clients import add_client
from jwtmcp.errors import RevocationsUnavailable, TokenRevoked
from jwtmcp.issuer import create_app
from jwtmcp.keys import KeyRing, init_ring, load_ring
from jwtmcp.mcp import protected_server
from jwtmcp.revocation import DEFAULT_MAX_AGE, LIST_TYPE, WELL_KNOWN_PATH, list_claims
from jwtmcp.tokens import mint, sign
from jwtmcp.verifier import Verifier
from tests.jwks_support import jws
from tests.mcp_support import post_mcp, run
from tests.support import FakeClock, free_port, run_cli, serve_app

PING = {  # an MCP initialize request: 200 when the token is accepted
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"},
    },
}


@dataclass
class World:
    directory: Path
    ring: KeyRing
    clock: FakeClock
    issuer: str
    servers: tuple[str, str]  # the two protected servers' resource URLs
    secrets: dict[str, str]

    def token(self, subject: str = "alice", **options: Any) -> str:
        from jwtmcp.tokens import mint

        return mint(
            self.ring.active.signing_key,
            issuer=self.issuer,
            subject=subject,
            audience=list(self.servers),
            tools=["add"],
            clock=self.clock,
            **options,
        )

    def cli(self, *args: str) -> tuple[int, str, str]:
        return run_cli(
            *args,
            "--keys",
            str(self.directory / "keys"),
            "--clients",
            str(self.directory / "clients.json"),
            clock=self.clock,
        )

    def client_token(self, client: str) -> str:
        answer = httpx2.post(
            self.issuer + "/token",
            data={"grant_type": "client_credentials", "resource": self.servers[0]},
            auth=(client, self.secrets[client]),
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["access_token"])


def answers(world: World, token: str) -> list[tuple[int, str]]:
    """(status, error_description) of a ping with ``token`` at each protected server."""
    out = []
    for url in world.servers:
        reply = post_mcp(url, token, PING, timeout=10)
        description = ""
        if reply.status_code != 200:
            description = str(reply.json().get("error_description", ""))
        out.append((reply.status_code, description))
    return out


ACCEPTED = [(200, ""), (200, "")]
REVOKED = [(401, "token refused (token_revoked): the token has been revoked")] * 2


def _world(directory: Path) -> Iterator[World]:
    ring = init_ring(directory / "keys")
    ring = load_ring(directory / "keys")
    port, a_port, b_port = free_port(), free_port(), free_port()
    issuer = f"http://127.0.0.1:{port}"
    servers = (f"http://127.0.0.1:{a_port}/mcp", f"http://127.0.0.1:{b_port}/mcp")
    clients = directory / "clients.json"
    secrets = {}
    for name, scopes in (("ops", ["jwtmcp:revoke"]), ("ci-bot", []), ("reader", [])):
        _, secrets[name] = add_client(
            clients, name, tools=["add"], audiences=list(servers), scopes=scopes
        )
    clock = FakeClock(time.time())
    app = create_app(
        issuer_url=issuer,
        keys_dir=directory / "keys",
        clients_file=clients,
        clock=clock,
        # A change is published at the next request (the default 0.25 s adds that much
        # real time to the bound, which the injected clock cannot move).
        reload_interval=0,
    )
    with serve_app(app, port=port, date_header=False):
        # Built once the issuer listens: their first fetches must find it.
        built = [_server(name, issuer, url, clock) for name, url in zip("ab", servers)]
        try:
            with (
                serve_app(built[0].streamable_http_app(), port=a_port),
                serve_app(built[1].streamable_http_app(), port=b_port),
            ):
                yield World(directory, ring, clock, issuer, servers, secrets)
        finally:
            for server in built:
                server.jwt_verifier.close()  # type: ignore[attr-defined]


def _server(name: str, issuer: str, url: str, clock: FakeClock) -> Any:
    server = protected_server(
        name,
        issuer=issuer,
        resource=url,
        clock=clock,
        revocations=True,
        verifier_options={"monotonic": clock},
    )

    @server.tool()
    def add(a: float, b: float) -> float:
        return a + b

    return server


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from _world(tmp_path)


# --- propagation: revocation -> refusal on both servers within the list's max-age -------


def test_revoked_subject_is_refused_by_both_servers_within_the_list_max_age(
    world: World,
) -> None:
    token = world.token("alice")
    other = world.token("bob")
    assert answers(world, token) == ACCEPTED
    code, _, err = world.cli("revoke", "--sub", "alice", "--reason", "laptop stolen")
    assert (code, err) == (0, ""), err
    world.clock.advance(DEFAULT_MAX_AGE)
    assert answers(world, token) == REVOKED
    assert answers(world, other) == ACCEPTED
    assert run(lambda: sdk_add(world.servers[1], other)) == {"result": 5}


async def sdk_add(url: str, token: str) -> Any:
    """``add(2, 3)`` through the official MCP SDK client with a static bearer header."""
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=10)
    client = Client(streamable_http_client(url, http_client=http), read_timeout_seconds=10)
    async with client:
        result = await client.call_tool("add", {"a": 2, "b": 3})
        return result.structured_content


def test_revoked_jti_is_refused_by_both_servers_within_the_list_max_age(world: World) -> None:
    token = world.token("alice")
    sibling = world.token("alice")
    assert answers(world, token) == ACCEPTED
    jti = json.loads(
        run_cli(
            "verify",
            token,
            "--jwks",
            str(_jwks_file(world)),
            "--iss",
            world.issuer,
            "--aud",
            world.servers[0],
            clock=world.clock,
        )[1]
    )["jti"]
    reply = httpx2.post(
        world.issuer + "/admin/revoke",
        data={"jti": jti, "reason": "leaked in a log"},
        auth=("ops", world.secrets["ops"]),
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    world.clock.advance(DEFAULT_MAX_AGE)
    assert answers(world, token) == REVOKED
    assert answers(world, sibling) == ACCEPTED


def test_revoked_client_is_refused_by_both_servers_and_its_later_tokens_are_not(
    world: World,
) -> None:
    token = world.client_token("ci-bot")
    assert answers(world, token)[0] == (200, "")
    code, _, err = world.cli("revoke", "--client", "ci-bot")
    assert code == 0, err
    world.clock.advance(DEFAULT_MAX_AGE)
    assert answers(world, token)[0] == REVOKED[0]
    later = world.client_token("ci-bot")  # issued after the revocation time
    assert answers(world, later)[0] == (200, "")


def _jwks_file(world: World) -> Path:
    path = world.directory / "jwks.json"
    path.write_text(json.dumps(world.ring.jwks()))
    return path


# --- the verifier ---------------------------------------------------------------------------


def test_token_already_in_the_verified_cache_is_refused_once_revoked(world: World) -> None:
    verifier = Verifier(
        issuer=world.issuer,
        audience=world.servers[0],
        jwks_url=world.issuer + "/.well-known/jwks.json",
        revocations=True,
        clock=world.clock,
        monotonic=world.clock,
    )
    try:
        token = world.token("alice")
        verifier.verify(token)
        verifier.verify(token)
        assert verifier.verified_cache_len == 1
        assert world.cli("revoke", "--sub", "alice")[0] == 0
        world.clock.advance(DEFAULT_MAX_AGE)
        with pytest.raises(TokenRevoked) as refused:
            verifier.verify(token)
        assert refused.value.code == "token_revoked"
        assert verifier.verified_cache_len == 1  # refused from the cache, not evicted first
    finally:
        verifier.close()


class ListServer:
    """A misbehaving issuer on loopback: the real ring's JWKS at ``/jwks`` and whatever list
    the test sets at ``/list`` (max-age 60, no Date)."""

    def __init__(self, ring: KeyRing) -> None:
        self.jwks = ring.jwks()
        self.body = b""
        self.status = 200
        self.app = Starlette(routes=[Route("/jwks", self._jwks), Route("/list", self._list)])

    async def _jwks(self, request: Request) -> Response:
        return Response(json.dumps(self.jwks), media_type="application/json")

    async def _list(self, request: Request) -> Response:
        return Response(
            self.body, self.status, headers={"Cache-Control": f"max-age={DEFAULT_MAX_AGE}"}
        )


ISSUER = "https://issuer.example"
AUDIENCE = "https://mcp.example/mcp"


def signed_list(
    ring: KeyRing,
    now: float,
    *,
    sequence: int = 1,
    issuer: str = ISSUER,
    subjects: dict[str, int] | None = None,
    typ: str = LIST_TYPE,
) -> bytes:
    claims = list_claims(
        issuer=issuer, sequence=sequence, now=now, jtis={}, subjects=subjects or {}, clients={}
    )
    return sign(claims, ring.active.signing_key, typ=typ).encode()


@pytest.fixture
def list_server(tmp_path: Path) -> Iterator[tuple[ListServer, str, KeyRing, FakeClock]]:
    ring = load_ring(init_ring(tmp_path / "keys").directory)
    server = ListServer(ring)
    with serve_app(server.app, date_header=False) as base:
        yield server, base, ring, FakeClock(time.time())


def _verifier(base: str, clock: FakeClock) -> Verifier:
    return Verifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_url=base + "/jwks",
        revocation_url=base + "/list",
        clock=clock,
        monotonic=clock,
    )


def _mint(ring: KeyRing, clock: FakeClock, subject: str = "alice") -> str:
    from jwtmcp.tokens import mint

    return mint(ring, issuer=ISSUER, subject=subject, audience=AUDIENCE, tools=["add"], clock=clock)


def _tampered(ring: KeyRing, now: float) -> bytes:
    head, _, signature = signed_list(ring, now).decode().split(".")
    other = signed_list(ring, now, subjects={"alice": int(now)}).decode().split(".")[1]
    return f"{head}.{other}.{signature}".encode()


def _unsigned(ring: KeyRing, now: float) -> bytes:
    claims = list_claims(issuer=ISSUER, sequence=1, now=now, jtis={}, subjects={}, clients={})
    return jws({"alg": "none", "typ": LIST_TYPE}, claims).encode()


BAD_LISTS = {
    "tampered": (_tampered, "signature is invalid"),
    "unsigned": (_unsigned, "algorithm is not accepted"),
    "other_issuer": (
        lambda ring, now: signed_list(ring, now, issuer="https://evil.example"),
        "issued by another issuer",
    ),
    "access_token_type": (
        lambda ring, now: signed_list(ring, now, typ="at+jwt"),
        "type (typ) is not",
    ),
}


@pytest.mark.parametrize("case", list(BAD_LISTS))
def test_bad_revocation_list_is_refused_and_the_verifier_answers_unavailable(
    list_server: tuple[ListServer, str, KeyRing, FakeClock], case: str
) -> None:
    server, base, ring, clock = list_server
    make, reason = BAD_LISTS[case]
    server.body = make(ring, clock.now)
    verifier = _verifier(base, clock)
    try:
        with pytest.raises(RevocationsUnavailable):
            verifier.verify(_mint(ring, clock))
        assert verifier.revocations is not None
        assert reason in (verifier.revocations.last_error or "")
    finally:
        verifier.close()


def test_list_with_an_older_sequence_never_replaces_a_newer_one(
    list_server: tuple[ListServer, str, KeyRing, FakeClock],
) -> None:
    server, base, ring, clock = list_server
    token = _mint(ring, clock)
    server.body = signed_list(ring, clock.now, sequence=5, subjects={"alice": int(clock.now)})
    verifier = _verifier(base, clock)
    try:
        with pytest.raises(TokenRevoked):
            verifier.verify(token)
        # A replica behind the others (or a replayed old list) now answers sequence 4.
        server.body = signed_list(ring, clock.now, sequence=4)
        clock.advance(DEFAULT_MAX_AGE)
        with pytest.raises(TokenRevoked):
            verifier.verify(token)
        assert verifier.revocations is not None
        assert verifier.revocations.sequence == 5
        assert "older than the list held" in (verifier.revocations.last_error or "")
    finally:
        verifier.close()


def test_list_past_its_stale_window_answers_503_with_retry_after(tmp_path: Path) -> None:
    ring = load_ring(init_ring(tmp_path / "k2").directory)
    server = ListServer(ring)
    clock = FakeClock(time.time())
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    with serve_app(server.app, date_header=False) as base:
        server.body = signed_list(ring, clock.now)
        mcp = protected_server(
            "a",
            issuer=ISSUER,
            resource=resource,
            jwks_url=base + "/jwks",
            revocation_url=base + "/list",
            clock=clock,
            verifier_options={"monotonic": clock, "stale_window": 120},
        )

        @mcp.tool()
        def add(a: float, b: float) -> float:
            return a + b

        with serve_app(mcp.streamable_http_app(), port=port):
            token = mint_for(ring, clock, resource)
            assert post_mcp(resource, token, PING, timeout=10).status_code == 200
            server.status = 500  # the issuer fails from now on
            clock.advance(DEFAULT_MAX_AGE + 60)  # within the stale window: still served
            assert post_mcp(resource, token, PING, timeout=10).status_code == 200
            clock.advance(61)  # past max-age + stale window
            reply = post_mcp(resource, token, PING, timeout=10)
        mcp.jwt_verifier.close()  # type: ignore[attr-defined]
    assert reply.status_code == 503
    assert reply.json()["error"] == "temporarily_unavailable"
    assert int(reply.headers["retry-after"]) > 0


def mint_for(ring: KeyRing, clock: FakeClock, resource: str, subject: str = "alice") -> str:
    from jwtmcp.tokens import mint

    return mint(ring, issuer=ISSUER, subject=subject, audience=resource, tools=["add"], clock=clock)


def test_server_restarted_while_the_issuer_is_down_still_refuses_revoked_tokens(
    tmp_path: Path,
) -> None:
    ring = load_ring(init_ring(tmp_path / "keys").directory)
    server = ListServer(ring)
    clock = FakeClock(time.time())
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    caches = {
        "jwks_cache_file": str(tmp_path / "jwks-cache.json"),
        "revocation_cache_file": str(tmp_path / "revocations-cache.json"),
    }
    revoked, other = mint_for(ring, clock, resource), mint_for(ring, clock, resource, "bob")

    def protected(base: str) -> Any:
        mcp = protected_server(
            "a",
            issuer=ISSUER,
            resource=resource,
            jwks_url=base + "/jwks",
            revocation_url=base + "/list",
            clock=clock,
            verifier_options={"monotonic": clock},
            **caches,
        )

        @mcp.tool()
        def add(a: float, b: float) -> float:
            return a + b

        return mcp

    with serve_app(server.app, date_header=False) as base:
        server.body = signed_list(ring, clock.now, subjects={"alice": int(clock.now)})
        first = protected(base)
        with serve_app(first.streamable_http_app(), port=port):
            assert post_mcp(resource, revoked, PING, timeout=10).status_code == 401
        first.jwt_verifier.close()
    # The issuer is gone (its port closed); the server restarts with its cache files.
    second = protected(base)
    try:
        with serve_app(second.streamable_http_app(), port=port):
            refused = post_mcp(resource, revoked, PING, timeout=10)
            accepted = post_mcp(resource, other, PING, timeout=10)
    finally:
        second.jwt_verifier.close()
    assert refused.status_code == 401
    assert "token_revoked" in refused.json()["error_description"]
    assert accepted.status_code == 200


# --- the issuer's list and admin endpoint -----------------------------------------------------


def test_published_list_is_a_signed_jwt_with_max_age_and_etag(world: World) -> None:
    reply = httpx2.get(world.issuer + WELL_KNOWN_PATH, timeout=10)
    assert reply.status_code == 200
    assert reply.headers["cache-control"] == f"public, max-age={DEFAULT_MAX_AGE}"
    assert reply.headers["content-type"].startswith("application/jwtmcp-revocations+jwt")
    header = json.loads(_b64(reply.text.split(".")[0]))
    assert header["typ"] == LIST_TYPE and header["kid"] == world.ring.active.kid
    again = httpx2.get(
        world.issuer + WELL_KNOWN_PATH,
        headers={"If-None-Match": reply.headers["etag"]},
        timeout=10,
    )
    assert again.status_code == 304


def test_published_list_max_age_is_configurable(tmp_path: Path) -> None:
    init_ring(tmp_path / "keys")
    add_client(tmp_path / "clients.json", "x", tools=["add"], audiences=["https://a.example/mcp"])
    app = create_app(
        issuer_url="http://127.0.0.1:1",
        keys_dir=tmp_path / "keys",
        clients_file=tmp_path / "clients.json",
        revocation_max_age=10,
    )
    with serve_app(app) as base:
        reply = httpx2.get(base + WELL_KNOWN_PATH, timeout=10)
    assert reply.headers["cache-control"] == "public, max-age=10"


def _b64(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _revoke(world: World, data: dict[str, str], auth: tuple[str, str] | None) -> httpx2.Response:
    return httpx2.post(world.issuer + "/admin/revoke", data=data, auth=auth, timeout=10)


def test_admin_revoke_without_credentials_is_401_invalid_client(world: World) -> None:
    reply = _revoke(world, {"sub": "alice"}, None)
    assert reply.status_code == 401
    assert reply.json()["error"] == "invalid_client"
    assert reply.headers["www-authenticate"].startswith("Basic")


def test_admin_revoke_with_a_wrong_secret_is_401_invalid_client(world: World) -> None:
    reply = _revoke(world, {"sub": "alice"}, ("ops", "wrong"))
    assert (reply.status_code, reply.json()["error"]) == (401, "invalid_client")


def test_admin_revoke_by_a_client_without_the_revoke_scope_is_403(world: World) -> None:
    reply = _revoke(world, {"sub": "alice"}, ("reader", world.secrets["reader"]))
    assert (reply.status_code, reply.json()["error"]) == (403, "insufficient_scope")
    assert "jwtmcp:revoke" in reply.json()["error_description"]


@pytest.mark.parametrize(
    "data",
    [{}, {"sub": "alice", "jti": "x"}, {"sub": "alice", "until": "5"}, {"sub": "a\x01b"}],
    ids=["nothing", "two_kinds", "until_with_sub", "control_character"],
)
def test_admin_revoke_with_a_bad_form_is_400_invalid_request(
    world: World, data: dict[str, str]
) -> None:
    reply = _revoke(world, data, ("ops", world.secrets["ops"]))
    assert (reply.status_code, reply.json()["error"]) == (400, "invalid_request")


def test_admin_revoke_answers_the_entry_and_the_new_sequence(world: World) -> None:
    reply = _revoke(world, {"client": "ci-bot"}, ("ops", world.secrets["ops"]))
    assert reply.status_code == 200
    body = reply.json()
    assert body["sequence"] >= int(world.clock.now)  # the time of the change at least
    assert body["revoked"]["kind"] == "client_id"
    assert body["revoked"]["before"] == int(world.clock.now)


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give exactly one of --sub, --client or --jti"),
        (("--sub", "a", "--client", "b"), "give exactly one of --sub, --client or --jti"),
        (("--sub", "a", "--until", "1900000000"), "--until is for --jti only"),
        (("--jti", "x", "--until", "5"), "that token has expired already"),
        (("--sub", "a\x01"), "holds control characters"),
    ],
    ids=["nothing", "two_kinds", "until_with_sub", "expired_jti", "control_character"],
)
def test_revoke_cli_refuses_bad_arguments_in_one_line(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    init_ring(tmp_path / "keys")
    code, out, err = run_cli(
        "revoke",
        *args,
        "--keys",
        str(tmp_path / "keys"),
        "--clients",
        str(tmp_path / "clients.json"),
    )
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1 and message in err


def test_revoke_list_shows_the_entries_in_force(tmp_path: Path) -> None:
    init_ring(tmp_path / "keys")
    flags = ("--clients", str(tmp_path / "clients.json"))
    clock = FakeClock()
    assert (
        run_cli("revoke", "--sub", "alice", "--keys", str(tmp_path / "keys"), *flags, clock=clock)[
            0
        ]
        == 0
    )
    code, out, _ = run_cli("revoke", "list", "--json", *flags, clock=clock)
    doc = json.loads(out)
    assert code == 0 and doc["sequence"] == int(clock.now)
    assert [(e["kind"], e["value"]) for e in doc["entries"]] == [("sub", "alice")]
    clock.advance(3600 + 60 + 1)  # the ring's max lifetime plus leeway: nothing covered
    assert json.loads(run_cli("revoke", "list", "--json", *flags, clock=clock)[1])["entries"] == []


def test_mint_ttl_above_the_ring_maximum_is_refused_without_the_revocation_list(
    tmp_path: Path,
) -> None:
    init_ring(tmp_path / "keys")
    code, out, err = run_cli(
        "mint",
        "--subject",
        "s",
        "--tools",
        "add",
        "--audience",
        AUDIENCE,
        "--ttl",
        "30d",
        "--keys",
        str(tmp_path / "keys"),
        "--revocations",
        str(tmp_path / "revocations.json"),
    )
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert "revoke enable --max-ttl 30d" in err


def test_mint_ttl_30d_works_once_long_lived_tokens_are_enabled(tmp_path: Path) -> None:
    ring = load_ring(init_ring(tmp_path / "keys").directory)
    flags = ("--revocations", str(tmp_path / "revocations.json"))
    assert run_cli("revoke", "enable", "--max-ttl", "30d", *flags)[0] == 0
    code, out, err = run_cli(
        "mint",
        "--subject",
        "s",
        "--tools",
        "add",
        "--audience",
        AUDIENCE,
        "--ttl",
        "30d",
        "--keys",
        str(tmp_path / "keys"),
        "--iss",
        ISSUER,
        *flags,
    )
    assert code == 0, err
    # (A Verifier accepts it only while checking the list: tests/test_revocation_attacks.py.)
    claims = jwt.decode(out.strip(), _pem(ring), algorithms=["RS256"], audience=AUDIENCE)
    assert claims["exp"] - claims["iat"] == 30 * 86400
    too_long = run_cli(
        "mint",
        "--subject",
        "s",
        "--tools",
        "add",
        "--audience",
        AUDIENCE,
        "--ttl",
        "31d",
        "--keys",
        str(tmp_path / "keys"),
        *flags,
    )
    assert too_long[0] == 1 and "long-lived maximum of 30d" in too_long[2]


def _pem(ring: KeyRing) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return ring.active.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_mint_ttl_that_is_not_a_duration_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = run_cli(
        "mint", "--subject", "s", "--tools", "add", "--audience", AUDIENCE, "--ttl", "3x"
    )
    assert code == 2 and "invalid duration '3x'" in err


def test_issuer_restarted_without_its_revocations_file_publishes_a_newer_sequence(
    tmp_path: Path,
) -> None:
    # Removing revocations.json (to clear it) and restarting the issuer must not send the
    # sequence back: verifiers would refuse the older list until their stale window ran out.
    ring = load_ring(init_ring(tmp_path / "keys").directory)
    clients = tmp_path / "clients.json"
    add_client(clients, "x", tools=["add"], audiences=[AUDIENCE])
    clock = FakeClock(time.time())
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    options = {
        "keys_dir": tmp_path / "keys",
        "clients_file": clients,
        "clock": clock,
        "reload_interval": 0,
    }
    token = mint(
        ring, issuer=issuer, subject="alice", audience=AUDIENCE, tools=["add"], clock=clock
    )
    assert (
        run_cli(
            "revoke",
            "--sub",
            "alice",
            "--keys",
            str(tmp_path / "keys"),
            "--clients",
            str(clients),
            clock=clock,
        )[0]
        == 0
    )
    with serve_app(create_app(issuer_url=issuer, **options), port=port, date_header=False):
        verifier = Verifier(
            issuer=issuer,
            audience=AUDIENCE,
            jwks_url=issuer + "/.well-known/jwks.json",
            revocations=True,
            clock=clock,
            monotonic=clock,
        )
        with pytest.raises(TokenRevoked):
            verifier.verify(token)
    (tmp_path / "revocations.json").unlink()
    clock.advance(DEFAULT_MAX_AGE)
    try:
        with serve_app(create_app(issuer_url=issuer, **options), port=port, date_header=False):
            assert verifier.verify(token).subject == "alice"  # the cleared list is taken
    finally:
        verifier.close()


def test_client_added_with_the_revoke_scope_on_the_command_line_may_revoke(
    world: World,
) -> None:
    code, out, err = run_cli(
        "clients",
        "add",
        "auditor",
        "--tools",
        "add",
        "--scope",
        "jwtmcp:revoke",
        "--audience",
        world.servers[0],
        "--clients",
        str(world.directory / "clients.json"),
    )
    assert code == 0, err
    secret = out.strip().splitlines()[-1]
    reply = _revoke(world, {"sub": "alice"}, ("auditor", secret))
    assert reply.status_code == 200, reply.text


def test_revoke_help_shows_its_action_as_optional() -> None:
    """``jwtmcp revoke --sub alice`` needs no action: the usage line must not say it does."""
    code, out, _ = run_cli("revoke", "--help")
    assert code == 0
    usage = " ".join(out.split("\n\n", 1)[0].split())
    assert "[ACTION] ..." in usage, usage
