"""What the challenges and the metadata tell a client (MCP authorization spec, RFC 6750, RFC 9728).

A real issuer app and real protected servers on loopback; the SDK's OAuth client discovers
everything from the 401 it gets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer

from jwtmcp.clients import add_client
from jwtmcp.issuer import create_app
from jwtmcp.keys import KeyRing, init_ring
from jwtmcp.mcp import protected_server
from jwtmcp.tokens import mint
from tests.mcp_support import MemoryStorage, post_mcp, run
from tests.support import free_port, serve_app

TOOLS = ("add", "subtract", "multiply")
ALL_TOOL_SCOPES = "tool:add tool:subtract tool:multiply"


def add_tools(server: MCPServer[Any]) -> None:
    @server.tool()
    def add(a: float, b: float) -> float:
        return a + b

    @server.tool()
    def subtract(a: float, b: float) -> float:
        return a - b

    @server.tool()
    def multiply(a: float, b: float) -> float:
        return a * b


@dataclass
class World:
    directory: Path
    issuer: str
    ring: KeyRing
    secret: str  # of client "adder", allowed tool:add on every server here
    streamable: str  # resource URLs
    sse: str
    hidden_port: int

    @property
    def hidden(self) -> str:
        return f"http://127.0.0.1:{self.hidden_port}/mcp"

    def token(self, resource: str, tools: tuple[str, ...] = ("add",)) -> str:
        return mint(
            self.ring.active.signing_key,
            issuer=self.issuer,
            subject="alice",
            audience=resource,
            tools=tools,
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory: Path = tmp_path_factory.mktemp("challenges")
    ring = init_ring(directory / "keys")
    issuer_port, s_port, e_port, h_port = free_port(), free_port(), free_port(), free_port()
    issuer = f"http://127.0.0.1:{issuer_port}"
    streamable = f"http://127.0.0.1:{s_port}/mcp"
    sse = f"http://127.0.0.1:{e_port}/sse"
    hidden = f"http://127.0.0.1:{h_port}/mcp"
    _, secret = add_client(
        directory / "clients.json", "adder", tools=["add"], audiences=[streamable, sse, hidden]
    )
    issuer_app = create_app(
        issuer_url=issuer, keys_dir=directory / "keys", clients_file=directory / "clients.json"
    )
    with serve_app(issuer_app, port=issuer_port):
        server_s = protected_server("open", issuer=issuer, resource=streamable)
        server_e = protected_server("open-sse", issuer=issuer, resource=sse)
        add_tools(server_s)
        add_tools(server_e)
        with (
            serve_app(server_s.streamable_http_app(), port=s_port),
            serve_app(server_e.sse_app(), port=e_port),
        ):
            yield World(directory, issuer, ring, secret, streamable, sse, h_port)
        server_s.jwt_verifier.close()  # type: ignore[attr-defined]
        server_e.jwt_verifier.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def hidden(world: World) -> Iterator[str]:
    """A server that does not list its tool names in public (``advertise_tools=False``)."""
    server = protected_server(
        "hidden", issuer=world.issuer, resource=world.hidden, advertise_tools=False
    )
    add_tools(server)
    with serve_app(server.streamable_http_app(), port=world.hidden_port):
        yield world.hidden
    server.jwt_verifier.close()  # type: ignore[attr-defined]


def request(url: str, token: str | None, body: Any = None) -> httpx2.Response:
    if url.endswith("/sse"):
        headers = {} if token is None else {"authorization": f"Bearer {token}"}
        return httpx2.get(url, headers=headers, timeout=10)
    body = body if body is not None else {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    return post_mcp(url, token, body, timeout=10)


def metadata_url(resource: str) -> str:
    base, _, path = resource.rpartition("/")
    return f"{base}/.well-known/oauth-protected-resource/{path}"


# --- the 401 says what a first token should ask for (MCP 2025-11-25) --------------------


@pytest.mark.parametrize("kind", ["streamable", "sse"])
def test_no_token_401_challenge_carries_the_tool_scopes(world: World, kind: str) -> None:
    url = getattr(world, kind)
    answer = request(url, None)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == (
        f'Bearer scope="{ALL_TOOL_SCOPES}", resource_metadata="{metadata_url(url)}"'
    )


@pytest.mark.parametrize("kind", ["streamable", "sse"])
def test_invalid_token_401_challenge_carries_the_tool_scopes(world: World, kind: str) -> None:
    url = getattr(world, kind)
    answer = request(url, "not.a.jwt")
    assert answer.status_code == 401
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="invalid_token"')
    assert f'scope="{ALL_TOOL_SCOPES}"' in challenge


def test_no_token_401_body_has_no_error_code_not_unauthorized(world: World) -> None:
    # RFC 6750 §3.1: a request with no authentication gets no error code.
    body = request(world.streamable, None).json()
    assert "error" not in body
    assert body["error_description"]


# --- one 403 names every missing scope -----------------------------------------------------


def test_batch_refused_for_several_tools_names_every_missing_scope_in_one_challenge(
    world: World,
) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": name}}
        for i, name in enumerate(["add", "subtract", "multiply", "subtract"], 1)
    ]
    answer = request(world.streamable, world.token(world.streamable), batch)
    assert answer.status_code == 403
    challenge = answer.headers["www-authenticate"]
    assert 'error="insufficient_scope", scope="tool:subtract tool:multiply"' in challenge
    assert answer.json()["error"]["data"]["scope"] == "tool:subtract tool:multiply"


# --- advertise_tools=False: no tool names in public -----------------------------------------


def test_hidden_server_metadata_lists_no_tool_name(world: World, hidden: str) -> None:
    document = httpx2.get(metadata_url(hidden), timeout=10).json()
    assert document["scopes_supported"] == ["tool:*"]
    assert not any(name in json.dumps(document) for name in TOOLS)


def test_hidden_server_401_scope_names_no_tool(world: World, hidden: str) -> None:
    answer = request(hidden, None)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == (
        f'Bearer scope="tool:*", resource_metadata="{metadata_url(hidden)}"'
    )


def test_hidden_server_still_refuses_a_tool_with_its_scope(world: World, hidden: str) -> None:
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "subtract"}}
    answer = request(hidden, world.token(hidden), call)
    assert answer.status_code == 403
    assert 'scope="tool:subtract"' in answer.headers["www-authenticate"]


def test_sdk_oauth_client_gets_a_least_privilege_token_from_a_hidden_server(
    world: World, hidden: str
) -> None:
    storage = MemoryStorage()
    provider = ClientCredentialsOAuthProvider(
        server_url=hidden,
        storage=storage,
        client_id="adder",
        client_secret=world.secret,
        issuer=world.issuer,
    )

    async def go() -> tuple[list[str], Any]:
        http = httpx2.AsyncClient(auth=provider, timeout=10)
        client = Client(streamable_http_client(hidden, http_client=http), read_timeout_seconds=10)
        async with client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            result = await client.call_tool("add", {"a": 1, "b": 2})
            return names, result.structured_content

    names, result = run(go)
    assert names == ["add"]
    assert result == {"result": 3}
    assert storage.tokens is not None and storage.tokens.scope == "tool:add"
