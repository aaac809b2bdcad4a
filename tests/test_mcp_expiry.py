"""One leeway, one message: a protected server and `jwtmcp verify` agree on an expired token.

The servers' verifiers and the CLI read the same injected clock, pinned near the wall clock
(the SDK's own bearer layer reads the wall clock and must not refuse earlier than jwtmcp).
Tokens are minted so that the clock stands 10 s past ``exp`` (inside the 30 s leeway: both
accept) or leeway + 1 s past it (both refuse, with the same reason).
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer

from jwtmcp.cli import main as jwtmcp_main
from jwtmcp.keys import KeyRing, init_ring
from jwtmcp.mcp import protected_server
from jwtmcp.tokens import mint
from jwtmcp.verifier import DEFAULT_LEEWAY, Verifier
from tests.mcp_support import post_mcp, run, sdk_guarded_server
from tests.support import FakeClock, free_port, serve_app

ISSUER = "https://issuer.example"
LIFETIME = 300


@dataclass
class Expiry:
    ring: KeyRing
    clock: FakeClock
    jwks: Path
    streamable: str  # resource URLs
    sse: str
    sdk_only: str  # MCPServer + JwtTokenVerifier, no jwtmcp HTTP layer

    def token(self, resource: str, seconds_past_exp: float) -> str:
        # Issued LIFETIME + seconds_past_exp ago by the clock everyone reads.
        minted_at = FakeClock(self.clock.now - LIFETIME - seconds_past_exp)
        return mint(
            self.ring.active.signing_key,
            issuer=ISSUER,
            subject="alice",
            audience=resource,
            tools=["add"],
            lifetime=LIFETIME,
            clock=minted_at,
        )

    def cli_verify(self, token: str, resource: str) -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = jwtmcp_main(
                ["verify", token, "--jwks", str(self.jwks), "--iss", ISSUER, "--aud", resource],
                clock=self.clock,
            )
        return code, err.getvalue().strip()


def add_tool(server: MCPServer[Any]) -> None:
    @server.tool()
    def add(a: float, b: float) -> float:
        return a + b


@pytest.fixture(scope="module")
def expiry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Expiry]:
    directory: Path = tmp_path_factory.mktemp("expiry")
    ring = init_ring(directory / "keys")
    jwks = directory / "jwks.json"
    jwks.write_text(json.dumps(ring.jwks()))
    clock = FakeClock(time.time())
    s_port, e_port, g_port = free_port(), free_port(), free_port()
    streamable = f"http://127.0.0.1:{s_port}/mcp"
    sse = f"http://127.0.0.1:{e_port}/sse"
    sdk_only = f"http://127.0.0.1:{g_port}/mcp"
    server_s = protected_server(
        "s", issuer=ISSUER, resource=streamable, jwks_file=str(jwks), clock=clock
    )
    server_e = protected_server("e", issuer=ISSUER, resource=sse, jwks_file=str(jwks), clock=clock)
    verifier = Verifier(issuer=ISSUER, audience=sdk_only, jwks_file=str(jwks), clock=clock)
    server_g = sdk_guarded_server("g", verifier, issuer=ISSUER, resource=sdk_only)
    for server in (server_s, server_e, server_g):
        add_tool(server)
    with (
        serve_app(server_s.streamable_http_app(), port=s_port),
        serve_app(server_e.sse_app(), port=e_port),
        serve_app(server_g.streamable_http_app(), port=g_port),
    ):
        yield Expiry(ring, clock, jwks, streamable, sse, sdk_only)
    for v in (verifier, server_s.jwt_verifier, server_e.jwt_verifier):
        v.close()  # type: ignore[attr-defined]


async def sdk_add(url: str, token: str) -> Any:
    header = {"Authorization": f"Bearer {token}"}
    if url.endswith("/sse"):
        client = Client(sse_client(url, headers=header), read_timeout_seconds=10)
    else:
        http = httpx2.AsyncClient(headers=header, timeout=10)
        client = Client(streamable_http_client(url, http_client=http), read_timeout_seconds=10)
    async with client:
        result = await client.call_tool("add", {"a": 2, "b": 3})
        return result.structured_content


def refusal(url: str, token: str) -> httpx2.Response:
    if url.endswith("/sse"):
        return httpx2.get(url, headers={"authorization": f"Bearer {token}"}, timeout=10)
    return post_mcp(url, token, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=10)


PROTECTED = ["streamable", "sse"]


@pytest.mark.parametrize("kind", [*PROTECTED, "sdk_only"])
def test_token_10s_past_exp_is_accepted_by_server_and_cli_alike(
    expiry: Expiry, kind: str
) -> None:
    url = getattr(expiry, kind)
    token = expiry.token(url, 10)
    code, message = expiry.cli_verify(token, url)
    assert code == 0, message
    assert run(lambda: sdk_add(url, token)) == {"result": 5}


@pytest.mark.parametrize("kind", PROTECTED)
def test_token_past_exp_and_leeway_is_refused_by_server_and_cli_with_the_same_reason(
    expiry: Expiry, kind: str
) -> None:
    url = getattr(expiry, kind)
    token = expiry.token(url, DEFAULT_LEEWAY + 1)
    code, message = expiry.cli_verify(token, url)
    assert code == 1
    answer = refusal(url, token)
    assert answer.status_code == 401
    description = answer.json()["error_description"]
    assert message == f"jwtmcp: error: {description}"
    assert "(token_expired)" in description
    assert f'error_description="{description}"' in answer.headers["www-authenticate"]
