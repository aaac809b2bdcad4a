"""An outage of the key source is not a bad token: 503 + Retry-After on every protected path.

Real protected servers whose JWKS URL points at a closed loopback port or at a loopback
server that answers 500; the token is signed by a real key of a real ring.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from jwtmcp.keys import KeyRing, init_ring
from jwtmcp.mcp import protected_server
from jwtmcp.middleware import JwtAuthMiddleware
from jwtmcp.tokens import mint
from jwtmcp.verifier import Verifier
from tests.mcp_support import post_mcp
from tests.support import free_port, serve_app

ISSUER = "https://issuer.example"


async def broken_jwks(scope: Any, receive: Any, send: Any) -> None:
    """An issuer that is up but failing: every request gets 500."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 500, "headers": []})
    await send({"type": "http.response.body", "body": b"internal error"})


@dataclass
class Outage:
    ring: KeyRing
    # base URLs of servers whose key source is down, by how it is down
    streamable: dict[str, str]
    sse: dict[str, str]
    plain: dict[str, str]

    def token(self, resource: str) -> str:
        return mint(
            self.ring.active.signing_key,
            issuer=ISSUER,
            subject="alice",
            audience=resource,
            tools=["add"],
        )


def plain_app() -> Starlette:
    async def hello(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/api", endpoint=hello, methods=["GET", "POST"])])


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    directory: Path = tmp_path_factory.mktemp("outage")
    ring = init_ring(directory / "keys")
    closed = f"http://127.0.0.1:{free_port()}/.well-known/jwks.json"  # nothing listens there
    with serve_app(broken_jwks) as failing_base:
        sources = {"closed": closed, "failing": f"{failing_base}/.well-known/jwks.json"}
        apps: list[tuple[Any, int]] = []
        verifiers: list[Any] = []
        found: dict[str, dict[str, str]] = {"streamable": {}, "sse": {}, "plain": {}}
        for how, jwks_url in sources.items():
            for kind in found:
                port = free_port()
                base = f"http://127.0.0.1:{port}"
                if kind == "plain":
                    verifier = Verifier(issuer=ISSUER, audience=f"{base}/api", jwks_url=jwks_url)
                    app: Any = plain_app()
                    app.add_middleware(
                        JwtAuthMiddleware,
                        verifier=verifier,
                        resource=f"{base}/api",
                        issuer=ISSUER,
                        paths=["/api"],
                    )
                else:
                    path = "/mcp" if kind == "streamable" else "/sse"
                    server = protected_server(
                        "down", issuer=ISSUER, resource=f"{base}{path}", jwks_url=jwks_url
                    )

                    @server.tool()
                    def add(a: float, b: float) -> float:
                        return a + b

                    verifier = server.jwt_verifier
                    app = server.streamable_http_app() if kind == "streamable" else server.sse_app()
                apps.append((app, port))
                verifiers.append(verifier)
                found[kind][how] = base
        with contextlib.ExitStack() as running:
            for app, port in apps:
                running.enter_context(serve_app(app, port=port))
            yield Outage(ring, found["streamable"], found["sse"], found["plain"])
        for verifier in verifiers:
            verifier.close()


def assert_unavailable(answer: httpx2.Response) -> None:
    assert answer.status_code == 503, (answer.status_code, answer.text)
    retry = answer.headers.get("retry-after", "")
    assert retry.isdigit() and int(retry) >= 1, answer.headers
    assert "www-authenticate" not in answer.headers  # not a challenge: the token is not at fault
    body = answer.json()
    assert body["error"] == "temporarily_unavailable"
    assert "keys" in body["error_description"]


HOW = ["closed", "failing"]
CALL_ADD = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "add", "arguments": {"a": 1, "b": 2}},
}


@pytest.mark.parametrize("how", HOW)
def test_streamable_http_answers_503_retry_after_when_keys_are_unavailable(
    outage: Outage, how: str
) -> None:
    url = f"{outage.streamable[how]}/mcp"
    answer = post_mcp(url, outage.token(url), CALL_ADD)
    assert_unavailable(answer)


@pytest.mark.parametrize("how", HOW)
def test_sse_stream_answers_503_retry_after_when_keys_are_unavailable(
    outage: Outage, how: str
) -> None:
    url = f"{outage.sse[how]}/sse"
    answer = httpx2.get(url, headers={"authorization": f"Bearer {outage.token(url)}"}, timeout=20)
    assert_unavailable(answer)


@pytest.mark.parametrize("how", HOW)
def test_sse_message_endpoint_answers_503_retry_after_when_keys_are_unavailable(
    outage: Outage, how: str
) -> None:
    base = outage.sse[how]
    answer = post_mcp(
        f"{base}/messages/?session_id=0123456789abcdef0123456789abcdef",
        outage.token(f"{base}/sse"),
        CALL_ADD,
        accept=False,
    )
    assert_unavailable(answer)


@pytest.mark.parametrize("how", HOW)
def test_plain_middleware_answers_503_retry_after_when_keys_are_unavailable(
    outage: Outage, how: str
) -> None:
    url = f"{outage.plain[how]}/api"
    answer = httpx2.get(url, headers={"authorization": f"Bearer {outage.token(url)}"}, timeout=20)
    assert_unavailable(answer)


def test_bad_token_during_an_outage_is_still_401_invalid_token(outage: Outage) -> None:
    # A token that cannot be parsed is refused before any key is needed: still the client's fault.
    url = f"{outage.plain['closed']}/api"
    answer = httpx2.get(url, headers={"authorization": "Bearer not.a.jwt"}, timeout=20)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
