"""Call a tool on a protected MCP server with the official SDK client and a static bearer token.

    TOKEN=$(jwtmcp mint --subject alice --tools add --audience http://127.0.0.1:8001/mcp)
    python scripts/call_tool.py --token "$TOKEN" add a=2 b=3
    python scripts/call_tool.py --url http://127.0.0.1:8001/sse --token "$TOKEN" add a=2 b=3

The token comes from ``--token`` or ``$JWTMCP_TOKEN``; the URL from ``--url`` or ``$MCP_URL``
(default ``http://127.0.0.1:8001/mcp``). A URL ending in ``/sse`` uses the SSE transport.
Arguments are ``name=value``; values that parse as JSON (numbers, true, [..]) are sent as such.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

import httpx2
from mcp import Client, MCPError
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client


def parse_arguments(pairs: list[str]) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"call_tool: error: argument {pair!r} is not name=value")
        try:
            arguments[name] = json.loads(value)
        except ValueError:
            arguments[name] = value
    return arguments


def connect(url: str, token: str, transport: str) -> Client:
    # This is where the Authorization header goes.
    header = {"Authorization": f"Bearer {token}"}
    if transport == "sse" or (transport == "auto" and url.rstrip("/").endswith("/sse")):
        return Client(sse_client(url, headers=header), read_timeout_seconds=30)
    http = httpx2.AsyncClient(headers=header, timeout=30)
    return Client(streamable_http_client(url, http_client=http), read_timeout_seconds=30)


async def call(url: str, token: str, transport: str, tool: str, arguments: dict[str, Any]) -> int:
    async with connect(url, token, transport) as client:
        tools = [t.name for t in (await client.list_tools()).tools]
        print(f"tools this token may call: {', '.join(tools) or '(none)'}")
        result = await client.call_tool(tool, arguments)
        for block in result.content:
            print(getattr(block, "text", block))
        return 1 if result.is_error else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Call an MCP tool with a bearer token.")
    parser.add_argument("--url", default=os.environ.get("MCP_URL", "http://127.0.0.1:8001/mcp"))
    parser.add_argument("--token", default=os.environ.get("JWTMCP_TOKEN"))
    parser.add_argument("--transport", choices=["auto", "streamable-http", "sse"], default="auto")
    parser.add_argument("tool")
    parser.add_argument("arguments", nargs="*", metavar="name=value")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("give a token with --token or $JWTMCP_TOKEN (jwtmcp mint ... prints one)")
    try:
        return asyncio.run(
            call(args.url, args.token, args.transport, args.tool, parse_arguments(args.arguments))
        )
    except Exception as exc:  # one line, never a traceback
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]  # type: ignore[assignment]
        reason = exc.message if isinstance(exc, MCPError) else f"{type(exc).__name__}: {exc}"
        print(f"call_tool: error: {reason}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
