"""Call a tool with the SDK's own OAuth client: no token handling, everything by discovery.

    jwtmcp clients add robot --tools add,subtract --audience http://127.0.0.1:8001/mcp
    export JWTMCP_CLIENT_ID=robot JWTMCP_CLIENT_SECRET=...    # printed once by the command above
    python scripts/call_tool_oauth.py add a=2 b=3

The SDK's ``ClientCredentialsOAuthProvider`` gets a 401 from the server, reads its RFC 9728
metadata (which names the issuer and the tool scopes), reads the issuer's RFC 8414 metadata,
asks ``/token`` for a token (client_credentials, with ``resource`` = the server) and retries.
On a 403 ``insufficient_scope`` it asks for the missing tool scope and retries (step-up).

``--url``/``$MCP_URL`` (default ``http://127.0.0.1:8001/mcp``), ``--issuer``/``$JWTMCP_ISSUER``
(default ``http://127.0.0.1:8000``; the client only ever sends its secret to that issuer),
``--client-id``/``$JWTMCP_CLIENT_ID``, ``--client-secret``/``$JWTMCP_CLIENT_SECRET``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any

import httpx2
from mcp import Client, MCPError
from mcp.client.auth.exceptions import OAuthFlowError
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken


class MemoryTokenStorage:
    """Keeps the token for this run only (the SDK asks for a TokenStorage)."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


def parse_arguments(pairs: list[str]) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"call_tool_oauth: error: argument {pair!r} is not name=value")
        try:
            arguments[name] = json.loads(value)
        except ValueError:
            arguments[name] = value
    return arguments


async def call(args: argparse.Namespace, arguments: dict[str, Any]) -> int:
    storage = MemoryTokenStorage()
    auth = ClientCredentialsOAuthProvider(
        server_url=args.url,
        storage=storage,
        client_id=args.client_id,
        client_secret=args.client_secret,
        issuer=args.issuer,
    )
    if args.url.rstrip("/").endswith("/sse"):
        client = Client(sse_client(args.url, auth=auth), read_timeout_seconds=30)
    else:
        http = httpx2.AsyncClient(auth=auth, timeout=30)
        client = Client(streamable_http_client(args.url, http_client=http), read_timeout_seconds=30)
    async with client:
        tools = [t.name for t in (await client.list_tools()).tools]
        print(f"tools this client may call: {', '.join(tools) or '(none)'}")
        result = await client.call_tool(args.tool, arguments)
        for block in result.content:
            print(getattr(block, "text", block))
        if storage.tokens is not None:
            print(f"token scope: {storage.tokens.scope}", file=sys.stderr)
        return 1 if result.is_error else 0


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Call an MCP tool via OAuth client credentials.")
    parser.add_argument("--url", default=env("MCP_URL", "http://127.0.0.1:8001/mcp"))
    parser.add_argument("--issuer", default=env("JWTMCP_ISSUER", "http://127.0.0.1:8000"))
    parser.add_argument("--iss", dest="issuer", help=argparse.SUPPRESS)  # jwtmcp's other spelling
    parser.add_argument("--client-id", default=env("JWTMCP_CLIENT_ID"))
    parser.add_argument("--client-secret", default=env("JWTMCP_CLIENT_SECRET"))
    parser.add_argument("tool")
    parser.add_argument("arguments", nargs="*", metavar="name=value")
    args = parser.parse_args(argv)
    if not args.client_id or not args.client_secret:
        parser.error("give --client-id/--client-secret or $JWTMCP_CLIENT_ID/$JWTMCP_CLIENT_SECRET")
    # The SDK logs a failed OAuth flow ("OAuth flow error") with a traceback; this script
    # reports it in one line.
    logging.getLogger("mcp").addHandler(logging.NullHandler())
    try:
        return asyncio.run(call(args, parse_arguments(args.arguments)))
    except Exception as exc:  # one line, never a traceback
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]  # type: ignore[assignment]
        if isinstance(exc, OAuthFlowError) and "issuer mismatch" in str(exc):
            reason = (
                f"the server's authorization server is not the issuer this client trusts "
                f"({exc}); pass --issuer or set $JWTMCP_ISSUER to the issuer the server names "
                f"(not {args.issuer})"
            )
        elif isinstance(exc, MCPError):
            reason = exc.message
        else:
            reason = f"{type(exc).__name__}: {exc}"
        print(f"call_tool_oauth: error: {reason}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
