"""Attacks on revocation: ways a revoked token kept working (regressions).

A real issuer (``create_app`` on uvicorn, loopback) and two real protected MCP servers that
check its revocation list, one injected clock (see tests/test_revocation.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from jwtmcp.clients import add_client
from jwtmcp.errors import ConfigError
from jwtmcp.issuer import create_app
from jwtmcp.keys import init_ring, load_ring
from jwtmcp.mcp import protected_server
from jwtmcp.verifier import Verifier
from tests.support import FakeClock, free_port, run_cli, serve_app
from tests.test_revocation import ACCEPTED, REVOKED, World, answers

LONG = 30 * 86400


def _world(
    directory: Path, *, max_age: int = 60, max_lifetime: int | None = None
) -> Iterator[World]:
    init_ring(directory / "keys")
    ring = load_ring(directory / "keys")
    port, a_port, b_port = free_port(), free_port(), free_port()
    issuer = f"http://127.0.0.1:{port}"
    servers = (f"http://127.0.0.1:{a_port}/mcp", f"http://127.0.0.1:{b_port}/mcp")
    clients = directory / "clients.json"
    _, secret = add_client(
        clients, "ops", tools=["add"], audiences=list(servers), scopes=["jwtmcp:revoke"]
    )
    clock = FakeClock(time.time())
    app = create_app(
        issuer_url=issuer,
        keys_dir=directory / "keys",
        clients_file=clients,
        clock=clock,
        reload_interval=0,
        revocation_max_age=max_age,
    )
    options: dict[str, Any] = {"monotonic": clock}
    if max_lifetime is not None:
        options["max_lifetime"] = max_lifetime
    with serve_app(app, port=port, date_header=False):
        built = []
        for url in servers:
            server = protected_server(
                "math",
                issuer=issuer,
                resource=url,
                clock=clock,
                revocations=True,
                verifier_options=options,
            )

            @server.tool()
            def add(a: float, b: float) -> float:
                return a + b

            built.append(server)
        try:
            with (
                serve_app(built[0].streamable_http_app(), port=a_port),
                serve_app(built[1].streamable_http_app(), port=b_port),
            ):
                yield World(directory, ring, clock, issuer, servers, {"ops": secret})
        finally:
            for server in built:
                server.jwt_verifier.close()


@pytest.fixture
def short_world(tmp_path: Path) -> Iterator[World]:
    yield from _world(tmp_path, max_age=5)


@pytest.fixture
def long_world(tmp_path: Path) -> Iterator[World]:
    yield from _world(tmp_path, max_lifetime=LONG)


def test_revocation_reaches_servers_within_a_max_age_shorter_than_the_refetch_cooldown(
    short_world: World,
) -> None:
    """`serve --revocation-max-age 5`: the docs promise refusal within 5 s. The list cache
    held its fetches to one per JWKS refetch cooldown (30 s), serving the old list past
    its max-age: the revoked token kept working for up to 30 s."""
    world = short_world
    token = world.token("alice")
    assert answers(world, token) == ACCEPTED
    code, _, err = world.cli("revoke", "--sub", "alice")
    assert code == 0, err
    world.clock.advance(5)
    assert answers(world, token) == REVOKED


def test_long_lived_token_stays_revoked_after_long_lived_tokens_are_disabled(
    long_world: World,
) -> None:
    """`revoke enable --max-ttl 30d`, `mint --ttl 30d`, `revoke disable` (the docs: tokens
    minted before stay valid), then `revoke --sub`: the entry was listed only for the
    ring's 3600 s, after which the 30-day token worked again."""
    world = long_world
    flags = ("--clients", str(world.directory / "clients.json"))
    assert run_cli("revoke", "enable", "--max-ttl", "30d", *flags, clock=world.clock)[0] == 0
    code, out, err = run_cli(
        "mint", "--subject", "alice", "--tools", "add", "--iss", world.issuer,
        "--audience", world.servers[0], "--audience", world.servers[1], "--ttl", "30d",
        "--keys", str(world.directory / "keys"),
        "--revocations", str(world.directory / "revocations.json"), clock=world.clock,
    )  # fmt: skip
    assert code == 0, err
    token = out.strip()
    assert answers(world, token) == ACCEPTED
    assert run_cli("revoke", "disable", *flags, clock=world.clock)[0] == 0
    code, _, err = world.cli("revoke", "--sub", "alice")
    assert code == 0, err
    world.clock.advance(60)
    assert answers(world, token) == REVOKED
    world.clock.advance(3600 + 60)  # past the ring's lifetime + leeway; the token lives on
    assert answers(world, token) == REVOKED


def test_long_lived_tokens_cannot_be_had_or_accepted_without_the_revocation_list(
    tmp_path: Path,
) -> None:
    """The gate on `mint --ttl 30d` ('safe only with revocation') was bypassed two ways: a
    ring made with `keys init --max-lifetime 2592000` minted 30-day tokens with no
    revocation list at all, and a server given max_lifetime=30d accepted them without
    checking one."""
    keys = str(tmp_path / "keys")
    code, out, err = run_cli("keys", "init", "--keys", keys, "--max-lifetime", str(LONG))
    assert (code, out) == (1, "") and err.count("\n") == 1, (code, out, err)
    assert "revoke enable" in err
    minted = run_cli(
        "mint", "--subject", "s", "--tools", "add", "--audience", "http://127.0.0.1:1/mcp",
        "--ttl", "30d", "--keys", keys, "--revocations", str(tmp_path / "revocations.json"),
    )  # fmt: skip
    assert minted[0] == 1 and minted[1] == ""
    issuer = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError, match="revocation"):
        protected_server(
            "math",
            issuer=issuer,
            resource="http://127.0.0.1:1/mcp",
            verifier_options={"max_lifetime": LONG},
        )
    with pytest.raises(ConfigError, match="revocation"):
        Verifier(
            issuer=issuer,
            audience="http://127.0.0.1:1/mcp",
            jwks_url=issuer + "/.well-known/jwks.json",
            max_lifetime=3601,
        )
    checked = protected_server(
        "math",
        issuer=issuer,
        resource="http://127.0.0.1:1/mcp",
        revocations=True,
        verifier_options={"max_lifetime": LONG},
    )
    checked.jwt_verifier.close()


@pytest.fixture
def plain_world(tmp_path: Path) -> Iterator[World]:
    yield from _world(tmp_path)


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
    ids=["origin", "null-origin", "sec-fetch-site"],
)
def test_admin_revoke_refuses_a_cross_origin_form_post(
    plain_world: World, headers: dict[str, str]
) -> None:
    """A browser that has the admin's Basic credentials cached (the endpoint's 401 asks for
    them with WWW-Authenticate: Basic) sends them with a plain cross-site form POST, which
    needs no CORS preflight: any web page could revoke any subject (CSRF). Revocation
    tools are not browsers; a request a browser marks as cross-origin is refused."""
    world = plain_world
    token = world.token("alice")
    reply = httpx2.post(
        world.issuer + "/admin/revoke",
        data={"sub": "alice"},
        auth=("ops", world.secrets["ops"]),
        headers=headers,
        timeout=10,
    )
    assert reply.status_code == 403, reply.text
    assert reply.json()["error"] == "invalid_request"
    world.clock.advance(60)
    assert answers(world, token) == ACCEPTED
    same_origin = httpx2.post(
        world.issuer + "/admin/revoke",
        data={"sub": "alice"},
        auth=("ops", world.secrets["ops"]),
        headers={"Origin": world.issuer, "Sec-Fetch-Site": "same-origin"},
        timeout=10,
    )
    assert same_origin.status_code == 200, same_origin.text


def test_admin_revoke_past_the_rate_limit_logs_which_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 429 at /admin/revoke was logged with "client_id": null: the audit log could not
    say which revoking client was hammering the endpoint."""
    init_ring(tmp_path / "keys")
    clients = tmp_path / "clients.json"
    _, secret = add_client(
        clients, "ops", tools=["add"], audiences=["http://127.0.0.1:1/mcp"],
        scopes=["jwtmcp:revoke"],
    )  # fmt: skip
    app = create_app(
        issuer_url="http://127.0.0.1:1",
        keys_dir=tmp_path / "keys",
        clients_file=clients,
        rate_limit=0.001,
        rate_burst=1,
    )
    caplog.set_level("INFO", logger="jwtmcp.issuer")
    with serve_app(app) as base:
        replies = [
            httpx2.post(base + "/admin/revoke", data={"sub": f"s{i}"}, auth=("ops", secret))
            for i in range(2)
        ]
    assert [r.status_code for r in replies] == [200, 429]
    refused = [r.getMessage() for r in caplog.records if "revoke_refused" in r.getMessage()]
    assert refused and all('"client_id": "ops"' in line for line in refused), refused
