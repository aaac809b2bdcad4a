"""JwtAuthMiddleware on a hand-built Starlette SSE app, laid out the way blog posts build it.

``Route("/sse")`` + ``Mount("/messages/")`` around ``SseServerTransport``, the MCP server run
by hand inside the SSE endpoint - no jwtmcp server class, only the ASGI middleware in front.
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
from mcp.server.mcpserver import MCPServer
from mcp.server.sse import SseServerTransport
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from jwtmcp.keys import KeyRing, init_ring
from jwtmcp.mcp import ToolScopeGuard
from jwtmcp.middleware import JwtAuthMiddleware, called_tools, current_caller, get_caller
from jwtmcp.tokens import mint
from jwtmcp.verifier import Verifier
from tests.mcp_support import run
from tests.support import free_port, serve_app

ISSUER = "https://issuer.example"


def seed_style_app(mcp: MCPServer[Any]) -> Starlette:
    """The article's create_starlette_app, unchanged apart from the 2.x server attribute."""
    server = mcp._lowlevel_server  # the article's `mcp._mcp_server`, renamed in 2.x
    sse = SseServerTransport("/messages/")

    async def handle_sse(request: Request) -> Response:
        async with sse.connect_sse(request.scope, request.receive, request._send) as (
            read_stream,
            write_stream,
        ):
            await server.run(read_stream, write_stream, server.create_initialization_options())
        return Response()

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True, "caller": get_caller() is not None})

    return Starlette(
        routes=[
            Route("/sse", endpoint=handle_sse),
            Mount("/messages/", app=sse.handle_post_message),
            Route("/health", endpoint=health),
        ]
    )


def math_server(calls: Counter[str], *, guard: bool) -> MCPServer[Any]:
    mcp: MCPServer[Any] = MCPServer("math-mcp-sse", middleware=[ToolScopeGuard()] if guard else [])

    @mcp.tool()
    def add(a: float, b: float) -> float:
        calls["add"] += 1
        return a + b

    @mcp.tool()
    def subtract(a: float, b: float) -> float:
        calls["subtract"] += 1
        return a - b

    @mcp.tool()
    def whoami() -> str:
        caller = current_caller()
        return json.dumps(
            {"sub": caller.subject, "client_id": caller.client_id, "scopes": list(caller.scopes)}
        )

    return mcp


@dataclass
class Seed:
    ring: KeyRing
    plain: str  # base URL: middleware only
    guarded: str  # base URL: middleware + ToolScopeGuard in the MCP server
    calls: Counter[str]

    def token(self, base: str, tools: list[str], subject: str = "alice") -> str:
        return mint(
            self.ring.active.signing_key,
            issuer=ISSUER,
            subject=subject,
            audience=f"{base}/sse",
            client_id=f"{subject}-laptop",
            tools=tools,
        )


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seed]:
    directory: Path = tmp_path_factory.mktemp("middleware")
    ring = init_ring(directory / "keys")
    jwks = directory / "jwks.json"
    jwks.write_text(json.dumps(ring.jwks()))
    calls: Counter[str] = Counter()
    apps = []
    bases = []
    verifiers = []
    for guard in (False, True):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        verifier = Verifier(issuer=ISSUER, audience=f"{base}/sse", jwks_file=str(jwks))
        app = seed_style_app(math_server(calls, guard=guard))
        app.add_middleware(
            JwtAuthMiddleware,
            verifier=verifier,
            resource=f"{base}/sse",
            issuer=ISSUER,
            tools=["add", "subtract", "whoami"],
            paths=["/sse", "/messages/"],
        )
        apps.append((app, port))
        bases.append(base)
        verifiers.append(verifier)
    with serve_app(apps[0][0], port=apps[0][1]), serve_app(apps[1][0], port=apps[1][1]):
        yield Seed(ring, bases[0], bases[1], calls)
    for verifier in verifiers:
        verifier.close()


@asynccontextmanager
async def sse_stream(base: str, token: str) -> AsyncIterator[str]:
    async with (
        httpx2.AsyncClient(timeout=10) as http,
        http.stream("GET", f"{base}/sse", headers={"authorization": f"Bearer {token}"}) as stream,
    ):
        assert stream.status_code == 200
        async for line in stream.aiter_lines():
            if line.startswith("data:"):
                yield base + line.split(":", 1)[1].strip()
                return
        raise AssertionError("no endpoint event")


async def post(url: str, token: str | None, message: Any) -> httpx2.Response:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient(timeout=10) as http:
        return await http.post(url, content=json.dumps(message), headers=headers)


def session(base: str, token: str) -> Client:
    return Client(
        sse_client(f"{base}/sse", headers={"Authorization": f"Bearer {token}"}),
        read_timeout_seconds=10,
    )


def test_sse_without_token_is_401_with_resource_metadata(seed: Seed) -> None:
    answer = httpx2.get(f"{seed.plain}/sse", timeout=10)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == (
        'Bearer scope="tool:add tool:subtract tool:whoami", '
        f'resource_metadata="{seed.plain}/.well-known/oauth-protected-resource/sse"'
    )


def test_messages_with_bad_token_is_401_invalid_token(seed: Seed) -> None:
    answer = httpx2.post(
        f"{seed.plain}/messages/?session_id=00",
        json={},
        headers={"authorization": "Bearer a.b.c"},
        timeout=10,
    )
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


def test_forbidden_tools_call_is_403_and_never_runs(seed: Seed) -> None:
    before = seed.calls["subtract"]
    token = seed.token(seed.plain, ["add"])
    call = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "subtract"}}

    async def go() -> httpx2.Response:
        async with sse_stream(seed.plain, token) as endpoint:
            return await post(endpoint, token, call)

    answer = run(go)
    assert answer.status_code == 403
    assert answer.headers["www-authenticate"].startswith(
        'Bearer error="insufficient_scope", scope="tool:subtract"'
    )
    assert seed.calls["subtract"] == before


def test_caller_reaches_tools_through_the_middleware_alone(seed: Seed) -> None:
    token = seed.token(seed.plain, ["add", "whoami"], subject="carol")

    async def go() -> Any:
        async with session(seed.plain, token) as client:
            added = await client.call_tool("add", {"a": 2, "b": 2})
            assert added.structured_content == {"result": 4}
            return (await client.call_tool("whoami", {})).structured_content

    seen = json.loads(run(go)["result"])
    assert seen == {
        "sub": "carol",
        "client_id": "carol-laptop",
        "scopes": ["tool:add", "tool:whoami"],
    }


def test_guard_filters_tools_list_of_the_hand_built_app(seed: Seed) -> None:
    token = seed.token(seed.guarded, ["add"])

    async def go() -> list[str]:
        async with session(seed.guarded, token) as client:
            return [tool.name for tool in (await client.list_tools()).tools]

    assert run(go) == ["add"]


def test_unprotected_paths_pass_through_without_a_caller(seed: Seed) -> None:
    answer = httpx2.get(f"{seed.plain}/health", timeout=10)
    assert answer.status_code == 200
    assert answer.json() == {"ok": True, "caller": False}


def test_metadata_document_is_served_by_the_middleware(seed: Seed) -> None:
    answer = httpx2.get(f"{seed.plain}/.well-known/oauth-protected-resource/sse", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == "*"
    assert answer.json() == {
        "resource": f"{seed.plain}/sse",
        "authorization_servers": [ISSUER],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["tool:add", "tool:subtract", "tool:whoami"],
    }


def test_two_authorization_headers_are_refused(seed: Seed) -> None:
    token = seed.token(seed.plain, ["add"])
    answer = httpx2.get(
        f"{seed.plain}/sse",
        headers=[("authorization", f"Bearer {token}"), ("authorization", f"Bearer {token}")],
        timeout=10,
    )
    assert answer.status_code == 400
    assert 'error="invalid_request"' in answer.headers["www-authenticate"]


def test_token_for_the_other_app_is_refused(seed: Seed) -> None:
    token = seed.token(seed.guarded, ["add"])
    answer = httpx2.get(
        f"{seed.plain}/sse", headers={"authorization": f"Bearer {token}"}, timeout=10
    )
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]


def test_current_caller_outside_a_request_raises_lookup_error() -> None:
    assert get_caller() is None
    with pytest.raises(LookupError, match="no authenticated caller"):
        current_caller()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"jsonrpc":"2.0","id":1,"method":"ping"}', []),
        (b"not json at all", []),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}}', [(1, "add")]),
        (
            b'[{"id":1,"method":"tools/call","params":{"name":"a"}},{"id":2,"method":"ping"},'
            b'{"id":3,"method":"tools/call","params":{"name":"b"}}]',
            [(1, "a"), (3, "b")],
        ),
        (b'{"id":1,"method":"tools\\/call","params":{"name":"x"}}', [(1, "x")]),
        (b'{"id":1,"method":"tools/call","params":{"name":5}}', None),
        (b'{"id":1,"method":"tools/call" garbage', None),
        (b'{"id":1,"method":"tools/call","method":"tools/call","params":{"name":"x"}}', None),
        (b'"tools/call"', []),
        (
            '{"id":7,"method":"tools/call","params":{"name":"subtract"}}'.encode("utf-16"),
            [(7, "subtract")],
        ),
        ('{"id":7,"method":"ping"}'.encode("utf-32-le"), []),
    ],
)
def test_called_tools_reads_json_rpc_bodies(body: bytes, expected: Any) -> None:
    assert called_tools(body) == expected


def test_cors_preflight_passes_without_a_token_but_its_body_never_reaches_the_server(
    seed: Seed,
) -> None:
    # A preflight carries no credentials (Fetch standard), so it is no 401; and the SSE
    # transport takes any method on /messages/ as a message post: the preflight's body must
    # not be accepted (202) into a live session.
    token = seed.token(seed.plain, ["add"])
    call = {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "add"}}

    async def go() -> httpx2.Response:
        async with sse_stream(seed.plain, token) as endpoint, httpx2.AsyncClient() as http:
            return await http.request(
                "OPTIONS",
                endpoint,
                content=json.dumps(call),
                headers={
                    "origin": "http://localhost:6274",
                    "access-control-request-method": "POST",
                    "content-type": "application/json",
                },
                timeout=10,
            )

    answer = run(go)
    assert answer.status_code != 401 and "www-authenticate" not in answer.headers
    assert answer.status_code != 202
