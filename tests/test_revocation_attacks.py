"""Attacks on revocation: ways a revoked token kept working (regressions).

A real issuer (``create_app`` on uvicorn, loopback) and two real protected MCP servers that
check its revocation list, one injected clock (see tests/test_revocation.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jwtmcp.clients import add_client
from jwtmcp.issuer import create_app
from jwtmcp.keys import init_ring, load_ring
from jwtmcp.mcp import protected_server
from tests.support import FakeClock, free_port, serve_app
from tests.test_revocation import ACCEPTED, REVOKED, World, answers


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
