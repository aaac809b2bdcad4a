"""``current_caller().exchange()``: a tool on server A calls server B on behalf of its user.

Real servers on loopback: one issuer app, two protected MCP servers (A and B) under uvicorn,
the MCP SDK client both for the user's call to A and for A's tool calling B. The cache tests
drive :class:`TokenExchangeClient` against an issuer on a fake clock; the outage tests run
small misbehaving servers.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from jwtmcp.clients import add_client
from jwtmcp.errors import ConfigError
from jwtmcp.exchange_client import (
    Caller,
    TokenExchangeClient,
    TokenExchangeError,
    TokenExchangeUnavailable,
)
from jwtmcp.issuer import create_app
from jwtmcp.keys import KeyRing, init_ring, load_ring
from jwtmcp.mcp import current_caller, protected_server
from jwtmcp.tokens import VerifiedClaims, mint
from jwtmcp.users import add_user
from jwtmcp.verifier import Verifier
from tests.mcp_support import run, serve_protected
from tests.support import FakeClock, free_port, serve_app

PASSWORD = "correct horse battery staple"
APP = "https://app.example.com/client.json"  # the user's own MCP client (not an actor)


def sdk_client(url: str, token: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=10)
    return Client(streamable_http_client(url, http_client=http), read_timeout_seconds=10)


async def call_tool(url: str, token: str, tool: str, arguments: dict[str, Any]) -> Any:
    async with sdk_client(url, token) as client:
        result = await client.call_tool(tool, arguments)
        assert not result.is_error, result
        return result.structured_content["result"]  # type: ignore[index]


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("exchange-mcp-users") / "users.json"


@dataclass
class World:
    issuer: str
    ring: KeyRing
    a: str
    b: str
    secret: str

    def user_token(self, subject: str = "alice", tools: tuple[str, ...] = ("*",)) -> str:
        """``subject``'s token for server A, as the sign-in grant would mint it."""
        return mint(
            self.ring, issuer=self.issuer, subject=subject, audience=self.a, client_id=APP,
            tools=tools,
        )  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, users_file: Path) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("exchange-mcp")
    ring = init_ring(directory / "keys")
    issuer_port, a_port, b_port = free_port(), free_port(), free_port()
    issuer = f"http://127.0.0.1:{issuer_port}"
    a = f"http://127.0.0.1:{a_port}/mcp"
    b = f"http://127.0.0.1:{b_port}/mcp"
    add_user(users_file, "alice", password=PASSWORD, tools=["*"], audiences=[a, b])
    add_user(users_file, "bob", password=PASSWORD, tools=["relay"], audiences=[a])
    clients_file = directory / "clients.json"
    _, secret = add_client(
        clients_file, "server-a", tools=[], audiences=[b], resource=a,
        delegate={b: ["whoami"]},
    )  # fmt: skip
    issuer_app = create_app(
        issuer_url=issuer,
        keys_dir=directory / "keys",
        clients_file=clients_file,
        users_file=users_file,
        store=directory / "state.db",
        rate_limit=0,
    )
    # The servers are made once the issuer listens (a with statement enters in order).
    with (
        serve_app(issuer_app, port=issuer_port),
        _protected_servers(issuer, a, b, a_port, b_port, secret),
    ):
        yield World(issuer, ring, a, b, secret)


@contextmanager
def _protected_servers(
    issuer: str, a: str, b: str, a_port: int, b_port: int, secret: str
) -> Iterator[None]:
    """A (which exchanges the caller's token for one for B) and B, serving on their ports;
    made once the issuer listens (:func:`tests.mcp_support.serve_protected`)."""
    exchange = TokenExchangeClient(issuer=issuer, client_id="server-a", client_secret=secret)
    server_a = protected_server("a", issuer=issuer, resource=a, token_exchange=exchange)
    server_b = protected_server("b", issuer=issuer, resource=b)

    @server_a.tool()
    async def relay(tool: str = "whoami", tools: list[str] | None = None) -> str:
        """Call ``tool`` on B for the caller, with a token for ``tools`` (default: [tool])."""
        token = await current_caller().exchange(resource=b, tools=tools or [tool])
        result = await call_tool(b, token, tool, {})
        return str(result)

    @server_a.tool()
    async def relay_refused(tool: str) -> str:
        """What the exchange raises when asked for ``tool`` on B."""
        try:
            await current_caller().exchange(resource=b, tools=[tool])
        except TokenExchangeError as exc:
            return json.dumps({"type": type(exc).__name__, "error": exc.error})
        return "exchanged"

    @server_a.tool()
    def caller_repr() -> str:
        caller = current_caller()
        return json.dumps(
            {
                "repr": repr(caller),
                "is_verified_claims": isinstance(caller, VerifiedClaims),
                "is_caller": isinstance(caller, Caller),
                "subject": caller.subject,
            }
        )

    @server_b.tool()
    def whoami() -> str:
        caller = current_caller()
        actor = caller.actor
        return json.dumps(
            {
                "sub": caller.subject,
                "client_id": caller.client_id,
                "act": list(actor.chain) if actor is not None else None,
                "scopes": list(caller.scopes),
            }
        )

    @server_b.tool()
    async def exchange_without_config() -> str:
        try:
            await current_caller().exchange(resource=a, tools=["relay"])
        except ConfigError as exc:
            return exc.message
        return "exchanged"

    with serve_protected(server_a, port=a_port), serve_protected(server_b, port=b_port):
        yield


# --- A calls B for its user ---------------------------------------------------------------


def test_a_tool_on_a_calls_b_and_b_sees_the_user_as_sub_and_a_as_actor(world: World) -> None:
    result = run(lambda: call_tool(world.a, world.user_token(), "relay", {}))
    assert json.loads(result) == {
        "sub": "alice",
        "client_id": "server-a",
        "act": ["server-a"],
        "scopes": ["tool:whoami"],
    }


def test_a_tool_not_in_the_delegation_surfaces_invalid_scope_in_the_tool(world: World) -> None:
    result = run(lambda: call_tool(world.a, world.user_token(), "relay_refused", {"tool": "admin"}))
    assert json.loads(result) == {"type": "TokenExchangeError", "error": "invalid_scope"}


def test_a_user_who_may_not_use_b_surfaces_invalid_target_in_the_tool(world: World) -> None:
    token = world.user_token("bob", tools=("relay_refused",))
    result = run(lambda: call_tool(world.a, token, "relay_refused", {"tool": "whoami"}))
    assert json.loads(result) == {"type": "TokenExchangeError", "error": "invalid_target"}


def test_current_caller_is_still_verified_claims_and_its_repr_holds_no_token(
    world: World,
) -> None:
    token = world.user_token()
    result = json.loads(run(lambda: call_tool(world.a, token, "caller_repr", {})))
    assert result["is_verified_claims"] and result["is_caller"]
    assert result["subject"] == "alice"
    assert token.rsplit(".", 1)[1] not in result["repr"]


def test_exchange_on_a_server_without_exchange_credentials_is_a_config_error(
    world: World,
) -> None:
    token = mint(
        world.ring, issuer=world.issuer, subject="alice", audience=world.b, client_id=APP,
        tools=["exchange_without_config"],
    )  # fmt: skip
    result = run(lambda: call_tool(world.b, token, "exchange_without_config", {}))
    assert "token_exchange=TokenExchangeClient" in result


def test_the_exchanged_token_is_refused_by_a_itself(world: World) -> None:
    # The new token is bound to B: it cannot be replayed to A (audience).
    exchange = TokenExchangeClient(
        issuer=world.issuer, client_id="server-a", client_secret=world.secret
    )
    token = run(lambda: exchange.exchange(world.user_token(), resource=world.b, tools=["whoami"]))
    answer = httpx2.post(
        world.a,
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"authorization": f"Bearer {token}", "accept": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 401
    assert "wrong_audience" in answer.headers["www-authenticate"]


# --- the cache (an issuer on a fake clock) ------------------------------------------------


@dataclass
class CacheWorld:
    issuer: str
    ring: KeyRing
    clock: FakeClock
    secret: str
    a: str = "http://127.0.0.1:9201/mcp"
    b: str = "http://127.0.0.1:9202/mcp"

    def client(self, **options: Any) -> TokenExchangeClient:
        return TokenExchangeClient(
            issuer=self.issuer,
            client_id="server-a",
            client_secret=self.secret,
            clock=self.clock,
            **options,
        )

    def subject(self, subject: str = "alice", lifetime: int = 3600) -> str:
        return mint(
            self.ring, issuer=self.issuer, subject=subject, audience=self.a, client_id=APP,
            tools=["*"], lifetime=lifetime, clock=self.clock,
        )  # fmt: skip

    def claims(self, token: str) -> VerifiedClaims:
        jwks = self.ring.jwks()
        path = self.ring.directory.parent / "jwks.json"
        path.write_text(json.dumps(jwks))
        with Verifier(
            issuer=self.issuer, audience=self.b, jwks_file=str(path), clock=self.clock
        ) as verifier:
            return verifier.verify(token)


@pytest.fixture(scope="module")
def cache_world(tmp_path_factory: pytest.TempPathFactory, users_file: Path) -> Iterator[CacheWorld]:
    directory = tmp_path_factory.mktemp("exchange-cache")
    clock = FakeClock()
    init_ring(directory / "keys", clock=clock)
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    world = CacheWorld(issuer, load_ring(directory / "keys"), clock, "")
    add_user(users_file, "carol", password=PASSWORD, tools=["*"], audiences=[world.a, world.b])
    add_user(users_file, "dave", password=PASSWORD, tools=["*"], audiences=[world.a, world.b])
    _, world.secret = add_client(
        directory / "clients.json", "server-a", tools=[], audiences=[world.b],
        resource=world.a, delegate={world.b: ["*"]},
    )  # fmt: skip
    app = create_app(
        issuer_url=issuer,
        keys_dir=directory / "keys",
        clients_file=directory / "clients.json",
        users_file=users_file,
        store=directory / "state.db",
        clock=clock,
        rate_limit=0,
        default_ttl=300,
    )
    with serve_app(app, port=port):
        yield world


def exchange(client: TokenExchangeClient, subject: str, b: str, tools: list[str]) -> str:
    return run(lambda: client.exchange(subject, resource=b, tools=tools))


def test_a_cached_token_is_reused_until_near_expiry(cache_world: CacheWorld) -> None:
    client = cache_world.client(refresh_margin=30)
    subject = cache_world.subject("carol")
    first = exchange(client, subject, cache_world.b, ["search"])
    cache_world.clock.advance(300 - 30 - 1)  # one second before the refresh point
    assert exchange(client, subject, cache_world.b, ["search"]) == first
    cache_world.clock.advance(2)  # inside the last 30 s: exchanged again
    second = exchange(client, subject, cache_world.b, ["search"])
    assert second != first
    assert cache_world.claims(second).expires_at > cache_world.claims(first).expires_at


def test_a_cached_token_is_not_reused_for_another_caller(cache_world: CacheWorld) -> None:
    client = cache_world.client()
    for_carol = exchange(client, cache_world.subject("carol"), cache_world.b, ["search"])
    for_dave = exchange(client, cache_world.subject("dave"), cache_world.b, ["search"])
    assert for_carol != for_dave
    assert cache_world.claims(for_carol).subject == "carol"
    assert cache_world.claims(for_dave).subject == "dave"


def test_a_cached_token_is_not_reused_for_other_tools(cache_world: CacheWorld) -> None:
    client = cache_world.client()
    subject = cache_world.subject("carol")
    search = exchange(client, subject, cache_world.b, ["search"])
    fetch = exchange(client, subject, cache_world.b, ["fetch"])
    assert cache_world.claims(search).scopes == ("tool:search",)
    assert cache_world.claims(fetch).scopes == ("tool:fetch",)
    # The same tools in another order are the same request.
    both = exchange(client, subject, cache_world.b, ["search", "fetch"])
    assert exchange(client, subject, cache_world.b, ["fetch", "search"]) == both


def test_the_cache_holds_at_most_cache_size_tokens(cache_world: CacheWorld) -> None:
    client = cache_world.client(cache_size=2)
    subjects = [cache_world.subject("carol") for _ in range(3)]  # three tokens, new jtis
    tokens = [exchange(client, s, cache_world.b, ["search"]) for s in subjects]
    assert client.cached_count() == 2
    # The least recently used (the first) was dropped: asking again exchanges anew.
    assert exchange(client, subjects[0], cache_world.b, ["search"]) != tokens[0]


def test_a_short_lived_token_is_refreshed_a_quarter_of_its_life_before_expiry(
    cache_world: CacheWorld,
) -> None:
    client = cache_world.client(refresh_margin=30)
    subject = cache_world.subject("carol", lifetime=40)  # the exchanged token lives 40 s
    first = exchange(client, subject, cache_world.b, ["search"])
    cache_world.clock.advance(29)
    assert exchange(client, subject, cache_world.b, ["search"]) == first
    cache_world.clock.advance(2)  # 31 s: within the last 10 s (a quarter of 40)
    assert exchange(client, subject, cache_world.b, ["search"]) != first


def test_a_refusal_carries_the_oauth_error_code(cache_world: CacheWorld) -> None:
    client = cache_world.client()
    expired = cache_world.subject("carol", lifetime=60)
    cache_world.clock.advance(61)
    with pytest.raises(TokenExchangeError) as refused:
        exchange(client, expired, cache_world.b, ["search"])
    assert refused.value.error == refused.value.code == "invalid_grant"
    assert refused.value.status == 400
    assert "token_expired" in refused.value.message


def test_a_wrong_client_secret_is_invalid_client_not_an_outage(cache_world: CacheWorld) -> None:
    client = TokenExchangeClient(
        issuer=cache_world.issuer, client_id="server-a", client_secret="wrong",
        clock=cache_world.clock,
    )  # fmt: skip
    with pytest.raises(TokenExchangeError) as refused:
        exchange(client, cache_world.subject("carol"), cache_world.b, ["search"])
    assert refused.value.error == "invalid_client"


# --- the issuer unreachable ---------------------------------------------------------------


def test_an_issuer_that_does_not_answer_is_token_exchange_unavailable() -> None:
    port = free_port()  # nothing listens there
    client = TokenExchangeClient(
        issuer=f"http://127.0.0.1:{port}", client_id="server-a", client_secret="s"
    )
    with pytest.raises(TokenExchangeUnavailable) as failed:
        exchange(client, "subject-token", "http://127.0.0.1:9202/mcp", ["search"])
    assert failed.value.code == "token_exchange_unavailable"
    assert "subject-token" not in failed.value.message


def misbehaving_issuer(status: int, body: str, headers: dict[str, str]) -> Starlette:
    async def token(request: Request) -> Response:
        return PlainTextResponse(body, status, headers=headers)

    return Starlette(routes=[Route("/token", token, methods=["POST"])])


@pytest.mark.parametrize(
    ("status", "body", "headers", "retry_after"),
    [
        (503, '{"error":"temporarily_unavailable"}', {"Retry-After": "7"}, 7),
        # A digit to str.isdigit() that int() cannot read: the default, not a ValueError.
        (503, '{"error":"temporarily_unavailable"}', {"Retry-After": "\u00b2"}, 5),
        (503, '{"error":"temporarily_unavailable"}', {"Retry-After": "soon"}, 5),
        (500, "Internal Server Error", {}, 5),
        (200, "<html>a proxy page</html>", {}, 5),
        (200, '{"access_token":"x","token_type":"Bearer"}', {}, 5),
    ],
)
def test_an_issuer_that_answers_garbage_or_5xx_is_token_exchange_unavailable(
    status: int, body: str, headers: dict[str, str], retry_after: int
) -> None:
    with serve_app(misbehaving_issuer(status, body, headers)) as url:
        client = TokenExchangeClient(issuer=url, client_id="server-a", client_secret="s")
        with pytest.raises(TokenExchangeUnavailable) as failed:
            exchange(client, "subject-token", "http://127.0.0.1:9202/mcp", ["search"])
    assert failed.value.retry_after == retry_after


def test_an_issuer_that_never_answers_is_unavailable_after_the_timeout() -> None:
    # A listening socket nobody accepts from: the connection opens, no answer ever comes.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        client = TokenExchangeClient(
            issuer=url, client_id="server-a", client_secret="s", timeout=0.2
        )
        with pytest.raises(TokenExchangeUnavailable) as failed:
            exchange(client, "subject-token", "http://127.0.0.1:9202/mcp", ["search"])
    assert "could not be reached" in failed.value.message


def test_client_options_out_of_range_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="client_secret"):
        TokenExchangeClient(issuer="http://127.0.0.1:1", client_id="a", client_secret="")
    with pytest.raises(ConfigError, match="cache_size"):
        TokenExchangeClient(
            issuer="http://127.0.0.1:1", client_id="a", client_secret="s", cache_size=-1
        )
