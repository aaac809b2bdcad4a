"""Helpers for the tests that talk to real MCP servers: raw JSON-RPC posts and SDK pieces."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx2
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from jwtmcp.mcp import JwtTokenVerifier, ToolScopeGuard
from jwtmcp.verifier import Verifier
from tests.support import serve_app

MCP_ACCEPT = "application/json, text/event-stream"
"""The Accept header a streamable-HTTP MCP client must send."""

T = TypeVar("T")


def run(factory: Callable[[], Awaitable[T]]) -> T:
    """``await factory()`` in a new event loop, bounded to 30 s (a hang fails the test)."""

    async def bounded() -> T:
        return await asyncio.wait_for(factory(), 30)

    return asyncio.run(bounded())


@contextmanager
def serve_protected(server: Any, *, port: int) -> Iterator[str]:
    """Serve a :func:`jwtmcp.mcp.protected_server` on ``port`` (yields its base URL); close
    its verifier afterwards.

    Make the server only once its issuer listens: its verifier starts fetching the JWKS when
    it is made, and a fetch refused by a port nobody listens on yet holds its keys back for
    the retry backoff (1 s), so the first calls would get 503 whenever the fetch thread is
    quick (``tests/test_schedules.py`` runs the suite's fixtures under that schedule).
    """
    try:
        with serve_app(server.streamable_http_app(), port=port) as url:
            yield url
    finally:
        server.jwt_verifier.close()


def post_mcp(
    url: str,
    token: str | None,
    body: Any,
    *,
    accept: bool = True,
    headers: Mapping[str, str] | None = None,
    timeout: float = 20,
) -> httpx2.Response:
    """POST ``body`` to an MCP endpoint as a client would: JSON content (``body`` as given
    when it is str or bytes, else JSON-encoded), :data:`MCP_ACCEPT` unless ``accept`` is
    False, then ``headers``, then ``Bearer token`` unless ``token`` is None."""
    sent = {"accept": MCP_ACCEPT} if accept else {}
    sent |= {"content-type": "application/json", **(headers or {})}
    if token is not None:
        sent["authorization"] = f"Bearer {token}"
    content = body if isinstance(body, str | bytes) else json.dumps(body)
    return httpx2.post(url, content=content, headers=sent, timeout=timeout)


def sdk_guarded_server(
    name: str, verifier: Verifier, *, issuer: str, resource: str
) -> MCPServer[Any]:
    """The SDK's own ``MCPServer`` (no jwtmcp HTTP layer) with only jwtmcp's
    ``JwtTokenVerifier`` and ``ToolScopeGuard`` inside: the guard as defence in depth."""
    return MCPServer(
        name,
        token_verifier=JwtTokenVerifier(verifier, resource),
        auth=AuthSettings(
            issuer_url=issuer,  # type: ignore[arg-type]
            resource_server_url=resource,  # type: ignore[arg-type]
            validate_token_resource=True,
        ),
        middleware=[ToolScopeGuard()],
    )


class MemoryStorage:
    """The SDK's ``TokenStorage`` for one test: tokens and client info in memory."""

    def __init__(self, tokens: OAuthToken | None = None) -> None:
        self.tokens = tokens
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info
