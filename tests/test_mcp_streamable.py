"""End to end over Streamable HTTP: a real `jwtmcp serve`, real protected servers, the SDK client.

One issuer process and two protected servers (A and B) are shared by the whole module.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared.auth import OAuthToken

from jwtmcp.clients import add_client
from jwtmcp.keys import KeyRing, init_ring
from jwtmcp.mcp import current_caller, protected_server
from jwtmcp.tokens import mint
from jwtmcp.verifier import Verifier
from tests.mcp_support import MCP_ACCEPT, MemoryStorage, post_mcp, run, sdk_guarded_server
from tests.support import FakeClock, RunningIssuer, free_port, issuer_process, serve_app

TOOLS = ("add", "subtract", "multiply", "read_file", "read_env", "whoami", "whoami_async")


def run_error(factory: Callable[[], Awaitable[Any]]) -> BaseException:
    """Run ``factory`` expecting it to fail; the error, unwrapped from task-group groups."""
    try:
        run(factory)
    except Exception as exc:
        error: BaseException = exc
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        return error
    raise AssertionError("expected an error")


def add_math_tools(server: MCPServer[Any], calls: Counter[str]) -> None:
    @server.tool()
    def add(a: float, b: float) -> float:
        calls["add"] += 1
        return a + b

    @server.tool()
    def subtract(a: float, b: float) -> float:
        calls["subtract"] += 1
        return a - b

    @server.tool()
    def multiply(a: float, b: float) -> float:
        calls["multiply"] += 1
        return a * b

    @server.tool()
    def read_file(path: str) -> str:
        calls["read_file"] += 1
        return f"contents of {path}"

    @server.tool()
    def read_env(name: str) -> str:
        calls["read_env"] += 1
        return f"value of {name}"

    @server.tool()
    def whoami() -> str:
        caller = current_caller()
        return json.dumps(
            {"sub": caller.subject, "client_id": caller.client_id, "scopes": list(caller.scopes)}
        )

    @server.tool()
    async def whoami_async() -> str:
        await asyncio.sleep(0)
        caller = current_caller()
        return json.dumps({"sub": caller.subject, "iss": caller.claims["iss"]})


@dataclass
class World:
    issuer: RunningIssuer
    ring: KeyRing
    a: str  # resource URL of server A (its MCP endpoint)
    b: str  # resource URL of server B
    guarded: str  # a plain MCPServer with only the handler-level guard
    secrets: dict[str, str]
    calls: Counter[str]

    def token(self, client: str, *, scope: str | None = None, resource: str | None = None) -> str:
        return self.token_response(client, scope=scope, resource=resource)["access_token"]

    def token_response(
        self, client: str, *, scope: str | None = None, resource: str | None = None
    ) -> dict[str, Any]:
        form = {"grant_type": "client_credentials", "resource": resource or self.a}
        if scope is not None:
            form["scope"] = scope
        answer = httpx2.post(
            self.issuer.token_url, data=form, auth=(client, self.secrets[client]), timeout=10
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json())


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory: Path = tmp_path_factory.mktemp("mcp-streamable")
    ring = init_ring(directory / "keys")
    a_port, b_port, g_port = free_port(), free_port(), free_port()
    a = f"http://127.0.0.1:{a_port}/mcp"
    b = f"http://127.0.0.1:{b_port}/mcp"
    guarded = f"http://127.0.0.1:{g_port}/mcp"
    clients = {
        "adder": ["add"],
        "calc": ["add", "subtract"],
        "everything": ["*"],
        "reader": ["read_*", "whoami"],
    }
    secrets = {}
    for name, tools in clients.items():
        _, secrets[name] = add_client(
            directory / "clients.json", name, tools=tools, audiences=[a, b, guarded]
        )
    calls: Counter[str] = Counter()
    with issuer_process(directory) as issuer:
        server_a = protected_server("math", issuer=issuer.issuer, resource=a)
        add_math_tools(server_a, calls)
        server_b = protected_server("other", issuer=issuer.issuer, resource=b)
        add_math_tools(server_b, Counter())
        # Defence in depth: the SDK's own app (no jwtmcp HTTP layer), only the guard inside.
        verifier = Verifier(issuer=issuer.issuer, audience=guarded, jwks_url=issuer.jwks_url)
        server_g = sdk_guarded_server("guarded", verifier, issuer=issuer.issuer, resource=guarded)
        add_math_tools(server_g, calls)
        with (
            serve_app(server_a.streamable_http_app(), port=a_port),
            serve_app(server_b.streamable_http_app(), port=b_port),
            serve_app(server_g.streamable_http_app(), port=g_port),
        ):
            yield World(issuer, ring, a, b, guarded, secrets, calls)
        verifier.close()
        server_a.jwt_verifier.close()  # type: ignore[attr-defined]
        server_b.jwt_verifier.close()  # type: ignore[attr-defined]


def client_with_token(url: str, token: str, scheme: str = "Bearer") -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"{scheme} {token}"}, timeout=10)
    return Client(streamable_http_client(url, http_client=http), read_timeout_seconds=10)


async def list_names(url: str, token: str) -> list[str]:
    async with client_with_token(url, token) as client:
        return [tool.name for tool in (await client.list_tools()).tools]


async def call(url: str, token: str, tool: str, arguments: dict[str, Any]) -> Any:
    async with client_with_token(url, token) as client:
        result = await client.call_tool(tool, arguments)
        assert not result.is_error, result
        return result.structured_content["result"]  # type: ignore[index]


def raw_call(url: str, token: str | None, tool: str, **headers: str) -> httpx2.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {"a": 5, "b": 3}},
    }
    return post_mcp(url, token, body, headers=headers, timeout=10)


def metadata_url(resource: str) -> str:
    origin = resource.partition("/mcp")[0]
    return f"{origin}/.well-known/oauth-protected-resource/mcp"


# --- per-tool authorisation (acceptance 1) -------------------------------------------------


def test_token_for_add_lists_only_add(world: World) -> None:
    assert run(lambda: list_names(world.a, world.token("adder"))) == ["add"]


def test_token_for_add_calls_add(world: World) -> None:
    assert run(lambda: call(world.a, world.token("adder"), "add", {"a": 2, "b": 3})) == 5


def test_calling_subtract_without_its_scope_is_403_step_up_challenge(world: World) -> None:
    before = world.calls["subtract"]
    answer = raw_call(world.a, world.token("adder"), "subtract")
    assert answer.status_code == 403
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="insufficient_scope", scope="tool:subtract"')
    assert f'resource_metadata="{metadata_url(world.a)}"' in challenge
    body = answer.json()
    assert body["id"] == 7
    assert "tool:subtract" in body["error"]["message"]
    assert world.calls["subtract"] == before


def test_sdk_client_gets_mcp_error_naming_the_scope_and_tool_never_runs(world: World) -> None:
    before = world.calls["subtract"]
    error = run_error(lambda: call(world.a, world.token("adder"), "subtract", {"a": 1, "b": 2}))
    assert isinstance(error, MCPError)
    assert "needs scope tool:subtract" in error.message
    assert world.calls["subtract"] == before


def test_wildcard_grant_lists_and_calls_every_tool(world: World) -> None:
    token = world.token("everything")
    assert run(lambda: list_names(world.a, token)) == list(TOOLS)
    assert run(lambda: call(world.a, token, "multiply", {"a": 4, "b": 5})) == 20


def test_prefix_grant_covers_matching_tools_only(world: World) -> None:
    token = world.token("reader")
    assert run(lambda: list_names(world.a, token)) == ["read_file", "read_env", "whoami"]
    assert run(lambda: call(world.a, token, "read_env", {"name": "HOME"})) == "value of HOME"
    answer = raw_call(world.a, token, "add")
    assert answer.status_code == 403
    assert 'scope="tool:add"' in answer.headers["www-authenticate"]


def test_batch_with_one_forbidden_call_is_refused_whole(world: World) -> None:
    before = world.calls["add"]
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add"}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "multiply"}},
    ]
    answer = post_mcp(world.a, world.token("adder"), json.dumps(batch), timeout=10)
    assert answer.status_code == 403
    assert 'scope="tool:multiply"' in answer.headers["www-authenticate"]
    assert world.calls["add"] == before


def test_json_escaped_method_name_is_still_recognised(world: World) -> None:
    before = world.calls["subtract"]
    body = (
        '{"jsonrpc":"2.0","id":3,"method":"tools\\/call",'
        '"params":{"name":"sub\\u0074ract","arguments":{"a":1,"b":1}}}'
    )
    answer = post_mcp(world.a, world.token("adder"), body, timeout=10)
    assert answer.status_code == 403
    assert 'scope="tool:subtract"' in answer.headers["www-authenticate"]
    assert world.calls["subtract"] == before


def test_duplicate_keys_in_a_tools_call_are_refused(world: World) -> None:
    body = (
        '{"jsonrpc":"2.0","id":3,"method":"tools/call",'
        '"params":{"name":"add","name":"subtract","arguments":{"a":1,"b":1}}}'
    )
    answer = post_mcp(world.a, world.token("adder"), body, timeout=10)
    assert answer.status_code == 400


def test_garbage_body_is_answered_by_the_sdk_not_a_500(world: World) -> None:
    answer = post_mcp(world.a, world.token("adder"), b"\xff\xfe not json", timeout=10)
    assert 400 <= answer.status_code < 500


def test_oversized_body_is_refused_413(world: World) -> None:
    body = b"[" + b" " * (4 * 1024 * 1024) + b"]"
    answer = post_mcp(world.a, world.token("adder"), body, timeout=10)
    assert answer.status_code == 413


# --- 401 challenges and metadata -----------------------------------------------------------


def test_no_token_is_401_without_error_attribute(world: World) -> None:
    answer = raw_call(world.a, None, "add")
    assert answer.status_code == 401
    scope = " ".join(f"tool:{name}" for name in TOOLS)
    assert answer.headers["www-authenticate"] == (
        f'Bearer scope="{scope}", resource_metadata="{metadata_url(world.a)}"'
    )


def test_other_auth_scheme_is_treated_as_no_token(world: World) -> None:
    answer = raw_call(world.a, None, "add", authorization="Basic YWxpY2U6c2VjcmV0")
    assert answer.status_code == 401
    assert "error=" not in answer.headers["www-authenticate"]


def test_bad_token_is_401_invalid_token(world: World) -> None:
    answer = raw_call(world.a, "not.a.jwt", "add")
    assert answer.status_code == 401
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="invalid_token"')
    assert f'resource_metadata="{metadata_url(world.a)}"' in challenge


def test_expired_token_is_401_invalid_token(world: World) -> None:
    past = FakeClock(time.time() - 3600)
    token = mint(
        world.ring.active.signing_key,
        issuer=world.issuer.issuer,
        subject="alice",
        audience=world.a,
        tools=["add"],
        clock=past,
    )
    answer = raw_call(world.a, token, "add")
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]
    assert "expired" in answer.json()["error_description"]


def test_protected_resource_metadata_points_at_the_issuer(world: World) -> None:
    answer = httpx2.get(metadata_url(world.a), timeout=10)
    assert answer.status_code == 200
    document = answer.json()
    assert document["resource"] == world.a
    assert document["authorization_servers"] == [world.issuer.issuer]
    assert document["scopes_supported"] == [f"tool:{name}" for name in TOOLS]
    assert document["bearer_methods_supported"] == ["header"]


# --- audience, query tokens, scheme case (acceptance 3) ----------------------------------


def test_token_for_server_a_is_refused_by_server_b(world: World) -> None:
    token = world.token("everything", resource=world.a)
    answer = raw_call(world.b, token, "add")
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]
    run_error(lambda: list_names(world.b, token))


def test_token_in_query_string_is_refused(world: World) -> None:
    token = world.token("everything")
    for headers in ({}, {"authorization": f"Bearer {token}"}):
        answer = httpx2.post(
            f"{world.a}?access_token={token}",
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"accept": MCP_ACCEPT, **headers},
            timeout=10,
        )
        assert answer.status_code == 400
        assert 'error="invalid_request"' in answer.headers["www-authenticate"]


def test_lowercase_bearer_scheme_is_accepted(world: World) -> None:
    token = world.token("adder")

    async def go() -> list[str]:
        async with client_with_token(world.a, token, scheme="bearer") as client:
            return [tool.name for tool in (await client.list_tools()).tools]

    assert run(go) == ["add"]


def test_session_of_one_principal_is_refused_for_another(world: World) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"},
        },
    }
    headers = {"accept": MCP_ACCEPT, "content-type": "application/json"}
    opened = httpx2.post(
        world.a,
        json=initialize,
        headers={**headers, "authorization": f"Bearer {world.token('adder')}"},
        timeout=10,
    )
    assert opened.status_code == 200
    session = opened.headers["mcp-session-id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    same = httpx2.post(
        world.a,
        json=ping,
        headers={
            **headers,
            "mcp-session-id": session,
            "authorization": f"Bearer {world.token('adder')}",
        },
        timeout=10,
    )
    assert same.status_code == 200
    other = httpx2.post(
        world.a,
        json=ping,
        headers={
            **headers,
            "mcp-session-id": session,
            "authorization": f"Bearer {world.token('calc')}",
        },
        timeout=10,
    )
    assert other.status_code == 404


# --- the caller inside a tool (acceptance 6) -----------------------------------------------


def test_sync_tool_reads_subject_client_id_and_scopes(world: World) -> None:
    seen = json.loads(run(lambda: call(world.a, world.token("reader"), "whoami", {})))
    assert seen == {
        "sub": "reader",
        "client_id": "reader",
        "scopes": ["tool:read_*", "tool:whoami"],
    }


def test_async_tool_reads_raw_claims(world: World) -> None:
    seen = json.loads(run(lambda: call(world.a, world.token("everything"), "whoami_async", {})))
    assert seen == {"sub": "everything", "iss": world.issuer.issuer}


def test_caller_comes_from_a_token_minted_offline_too(world: World) -> None:
    token = mint(
        world.ring.active.signing_key,
        issuer=world.issuer.issuer,
        subject="alice@example.com",
        audience=world.a,
        client_id="laptop",
        tools=["whoami"],
    )
    seen = json.loads(run(lambda: call(world.a, token, "whoami", {})))
    assert seen == {"sub": "alice@example.com", "client_id": "laptop", "scopes": ["tool:whoami"]}


# --- defence in depth: only the handler-level guard --------------------------------------


def test_guard_alone_filters_tools_list(world: World) -> None:
    assert run(lambda: list_names(world.guarded, world.token("adder", resource=world.guarded))) == [
        "add"
    ]


def test_guard_alone_refuses_call_with_mcp_error_naming_scope(world: World) -> None:
    before = world.calls["subtract"]
    token = world.token("adder", resource=world.guarded)
    error = run_error(lambda: call(world.guarded, token, "subtract", {"a": 1, "b": 2}))
    assert isinstance(error, MCPError)
    assert "needs scope tool:subtract" in error.message
    assert world.calls["subtract"] == before


# --- the SDK's OAuth client, discovering everything (acceptance 2) -----------------------


def oauth_client(world: World, name: str, storage: MemoryStorage) -> Client:
    provider = ClientCredentialsOAuthProvider(
        server_url=world.a,
        storage=storage,
        client_id=name,
        client_secret=world.secrets[name],
        issuer=world.issuer.issuer,
    )
    http = httpx2.AsyncClient(auth=provider, timeout=10)
    return Client(streamable_http_client(world.a, http_client=http), read_timeout_seconds=10)


def test_oauth_client_discovers_issuer_gets_token_and_calls_add(world: World) -> None:
    storage = MemoryStorage()

    async def go() -> tuple[list[str], Any]:
        async with oauth_client(world, "adder", storage) as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            result = await client.call_tool("add", {"a": 20, "b": 22})
            return names, result.structured_content

    names, result = run(go)
    assert names == ["add"]
    assert result == {"result": 42}
    assert storage.tokens is not None and storage.tokens.scope == "tool:add"


def test_oauth_client_steps_up_on_403_and_succeeds(world: World) -> None:
    # The client starts with a least-privilege token (tool:add only) from an earlier run.
    earlier = world.token_response("calc", scope="tool:add")
    storage = MemoryStorage(OAuthToken.model_validate(earlier))
    before = world.calls["subtract"]

    async def go() -> Any:
        async with oauth_client(world, "calc", storage) as client:
            assert [t.name for t in (await client.list_tools()).tools] == ["add"]
            result = await client.call_tool("subtract", {"a": 10, "b": 4})
            return result.structured_content

    assert run(go) == {"result": 6}
    assert world.calls["subtract"] == before + 1
    assert storage.tokens is not None
    assert set((storage.tokens.scope or "").split()) == {"tool:add", "tool:subtract"}


def test_oauth_client_not_allowed_a_tool_cannot_step_up_and_tool_never_runs(world: World) -> None:
    storage = MemoryStorage()
    before = world.calls["subtract"]

    async def go() -> None:
        async with oauth_client(world, "adder", storage) as client:
            await client.call_tool("subtract", {"a": 1, "b": 1})

    # The step-up asks the issuer again; it grants only tool:add, so the retry is refused
    # too and the client surfaces the 403's JSON-RPC error.
    error = run_error(go)
    assert isinstance(error, MCPError)
    assert error.data == {"error": "insufficient_scope", "scope": "tool:subtract"}
    assert world.calls["subtract"] == before


# --- CORS preflight ------------------------------------------------------------------------


def test_cors_preflight_needs_no_token_and_never_reaches_a_tool(world: World) -> None:
    # A browser sends a preflight without credentials (Fetch standard, CORS-preflight
    # request): it must reach the app (whose CORS setting answers it), not get a 401; and
    # whatever body it carries must never run a tool.
    before = world.calls["add"]
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "add", "arguments": {"a": 1, "b": 2}},
        }
    )
    r = httpx2.request(
        "OPTIONS",
        world.a,
        content=body,
        headers={
            "Origin": "http://localhost:6274",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        },
        timeout=10,
    )
    assert r.status_code != 401 and "www-authenticate" not in r.headers
    assert r.status_code < 500
    assert world.calls["add"] == before


def test_options_that_is_no_preflight_still_needs_a_token(world: World) -> None:
    r = httpx2.request("OPTIONS", world.a, timeout=10)
    assert r.status_code == 401


def test_preflight_is_answered_for_any_origin_without_credentials(world: World) -> None:
    r = httpx2.request(
        "OPTIONS",
        world.a,
        headers={
            "Origin": "http://localhost:6274",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, mcp-session-id",
        },
        timeout=10,
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    methods = {m.strip() for m in r.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "POST", "DELETE"} <= methods
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "mcp-session-id", "mcp-protocol-version"} <= allowed
    assert "access-control-allow-credentials" not in r.headers


def test_browser_clients_can_read_the_401_challenge_and_the_session_id(world: World) -> None:
    origin = {"Origin": "http://localhost:6274"}
    challenge = raw_call(world.a, None, "add", **origin)
    answered = raw_call(world.a, world.token("calc"), "add", **origin)
    # (the SDK's 400 - no session yet - is an answer of the app all the same)
    assert challenge.status_code == 401 and answered.status_code in (200, 400)
    for r in (challenge, answered):
        assert r.headers["access-control-allow-origin"] == "*"
        exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
        assert {"www-authenticate", "mcp-session-id"} <= exposed
        assert "access-control-allow-credentials" not in r.headers
