"""End to end over legacy SSE: both `/sse` and `/messages/` are protected; the SDK SSE client works.

A real issuer app (in-thread uvicorn) and one protected SSE server are shared by the module.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.sse import sse_client

from jwtmcp.clients import add_client
from jwtmcp.issuer import create_app
from jwtmcp.keys import KeyRing, init_ring
from jwtmcp.mcp import current_caller, protected_server
from jwtmcp.tokens import mint
from tests.mcp_support import run
from tests.support import free_port, serve_app


@dataclass
class SseWorld:
    issuer: str
    ring: KeyRing
    base: str
    resource: str
    calls: Counter[str]

    @property
    def sse(self) -> str:
        return f"{self.base}/sse"

    @property
    def metadata_url(self) -> str:
        return f"{self.base}/.well-known/oauth-protected-resource/sse"

    def token(self, tools: list[str], subject: str = "alice", audience: str | None = None) -> str:
        return mint(
            self.ring.active.signing_key,
            issuer=self.issuer,
            subject=subject,
            audience=audience or self.resource,
            client_id=f"{subject}-cli",
            tools=tools,
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SseWorld]:
    directory: Path = tmp_path_factory.mktemp("mcp-sse")
    ring = init_ring(directory / "keys")
    issuer_port, port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{issuer_port}"
    base = f"http://127.0.0.1:{port}"
    resource = f"{base}/sse"
    add_client(directory / "clients.json", "sse-client", tools=["add"], audiences=[resource])
    issuer_app = create_app(
        issuer_url=issuer, keys_dir=directory / "keys", clients_file=directory / "clients.json"
    )
    calls: Counter[str] = Counter()
    with serve_app(issuer_app, port=issuer_port):
        server = protected_server("math-sse", issuer=issuer, resource=resource)

        @server.tool()
        def add(a: float, b: float) -> float:
            calls["add"] += 1
            return a + b

        @server.tool()
        def subtract(a: float, b: float) -> float:
            calls["subtract"] += 1
            return a - b

        @server.tool()
        def whoami() -> str:
            caller = current_caller()
            return json.dumps(
                {
                    "sub": caller.subject,
                    "client_id": caller.client_id,
                    "scopes": list(caller.scopes),
                }
            )

        with serve_app(server.sse_app(), port=port):
            yield SseWorld(issuer, ring, base, resource, calls)
        server.jwt_verifier.close()  # type: ignore[attr-defined]


@asynccontextmanager
async def sse_stream(url: str, token: str) -> AsyncIterator[str]:
    """Open the SSE stream by hand; yield the message endpoint URL it announces."""
    async with (
        httpx2.AsyncClient(timeout=10) as http,
        http.stream("GET", url, headers={"authorization": f"Bearer {token}"}) as stream,
    ):
        assert stream.status_code == 200
        event = None
        async for line in stream.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "endpoint":
                endpoint = line.split(":", 1)[1].strip()
                yield url.rsplit("/sse", 1)[0] + endpoint
                return
        raise AssertionError("no endpoint event")


async def post(url: str, token: str | None, message: dict[str, Any]) -> httpx2.Response:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.post(url, content=json.dumps(message), headers=headers)


CALL_SUBTRACT = {
    "jsonrpc": "2.0",
    "id": 9,
    "method": "tools/call",
    "params": {"name": "subtract", "arguments": {"a": 3, "b": 1}},
}


def test_sse_stream_without_token_is_401_without_error(world: SseWorld) -> None:
    answer = httpx2.get(world.sse, timeout=10)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == (
        f'Bearer scope="tool:add tool:subtract tool:whoami", '
        f'resource_metadata="{world.metadata_url}"'
    )


def test_sse_stream_with_bad_token_is_401_invalid_token(world: SseWorld) -> None:
    answer = httpx2.get(world.sse, headers={"authorization": "Bearer nope"}, timeout=10)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


def test_sse_stream_with_token_for_another_server_is_401(world: SseWorld) -> None:
    token = world.token(["add"], audience="http://127.0.0.1:1/sse")
    answer = httpx2.get(world.sse, headers={"authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]


def test_sse_stream_refuses_query_token(world: SseWorld) -> None:
    answer = httpx2.get(f"{world.sse}?access_token={world.token(['add'])}", timeout=10)
    assert answer.status_code == 400


def test_messages_without_or_with_bad_token_are_401(world: SseWorld) -> None:
    async def go() -> tuple[httpx2.Response, httpx2.Response]:
        async with sse_stream(world.sse, world.token(["add"])) as endpoint:
            return (
                await post(endpoint, None, CALL_SUBTRACT),
                await post(endpoint, "bad.token.here", CALL_SUBTRACT),
            )

    missing, bad = run(go)
    assert missing.status_code == 401
    assert "error=" not in missing.headers["www-authenticate"]
    assert bad.status_code == 401
    assert bad.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


def test_forbidden_call_on_messages_is_403_and_never_runs(world: SseWorld) -> None:
    before = world.calls["subtract"]
    token = world.token(["add"])

    async def go() -> httpx2.Response:
        async with sse_stream(world.sse, token) as endpoint:
            return await post(endpoint, token, CALL_SUBTRACT)

    answer = run(go)
    assert answer.status_code == 403
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="insufficient_scope", scope="tool:subtract"')
    assert f'resource_metadata="{world.metadata_url}"' in challenge
    assert world.calls["subtract"] == before


def test_sse_session_is_refused_for_another_principal(world: SseWorld) -> None:
    async def go() -> httpx2.Response:
        async with sse_stream(world.sse, world.token(["add"], subject="alice")) as endpoint:
            ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            return await post(endpoint, world.token(["add"], subject="mallory"), ping)

    assert run(go).status_code == 404


def sse_session(world: SseWorld, token: str) -> Client:
    return Client(
        sse_client(world.sse, headers={"Authorization": f"Bearer {token}"}),
        read_timeout_seconds=10,
    )


def test_valid_token_works_end_to_end_with_the_sdk_sse_client(world: SseWorld) -> None:
    before = world.calls["add"]

    async def go() -> tuple[list[str], Any, str]:
        async with sse_session(world, world.token(["add", "whoami"], subject="bob")) as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            added = await client.call_tool("add", {"a": 1.5, "b": 2})
            who = await client.call_tool("whoami", {})
            return names, added.structured_content, who.structured_content["result"]  # type: ignore[index]

    names, added, who = run(go)
    assert names == ["add", "whoami"]
    assert added == {"result": 3.5}
    assert json.loads(who) == {
        "sub": "bob",
        "client_id": "bob-cli",
        "scopes": ["tool:add", "tool:whoami"],
    }
    assert world.calls["add"] == before + 1


def test_lowercase_bearer_works_over_sse(world: SseWorld) -> None:
    token = world.token(["add"])

    async def go() -> list[str]:
        client = Client(
            sse_client(world.sse, headers={"Authorization": f"bearer {token}"}),
            read_timeout_seconds=10,
        )
        async with client:
            return [tool.name for tool in (await client.list_tools()).tools]

    assert run(go) == ["add"]


def test_sse_metadata_lists_the_tool_scopes(world: SseWorld) -> None:
    document = httpx2.get(world.metadata_url, timeout=10).json()
    assert document["resource"] == world.resource
    assert document["authorization_servers"] == [world.issuer]
    assert document["scopes_supported"] == ["tool:add", "tool:subtract", "tool:whoami"]
