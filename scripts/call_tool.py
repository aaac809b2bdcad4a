"""Call a tool on a protected MCP server with the official SDK client and a static bearer token.

    TOKEN=$(jwtmcp mint --subject alice --tools add --audience http://127.0.0.1:8001/mcp)
    python scripts/call_tool.py --token "$TOKEN" add a=2 b=3
    python scripts/call_tool.py --url http://127.0.0.1:8001/sse --token "$TOKEN" add a=2 b=3

The token comes from ``--token`` or ``$JWTMCP_TOKEN``; the URL from ``--url`` or ``$MCP_URL``
(default ``http://127.0.0.1:8001/mcp``). A URL ending in ``/sse`` uses the SSE transport.
Arguments are ``name=value``; values that parse as JSON (numbers, true, [..]) are sent as such.

A refusal is printed in one line with the server's own reason (its JSON-RPC error message or
its ``error_description``). Over SSE the SDK client posts each message separately and, when
that POST is refused, only logs the HTTP error while the call waits for an answer that never
comes; this script watches the replies itself and ends at once with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
from collections.abc import Callable
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


class Refused(Exception):
    """The server refused a request; the message is its own reason."""


class RefusalWatch:
    """An httpx2 response hook that keeps the reason of the first refused request."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.seen = asyncio.Event()

    async def __call__(self, response: httpx2.Response) -> None:
        if response.status_code < 400 or self.reason is not None:
            return
        await response.aread()
        self.reason = server_reason(response)
        self.seen.set()


_DESCRIPTION = re.compile(r'error_description="([^"]*)"')


def server_reason(response: httpx2.Response) -> str:
    """The server's words for a refusal: JSON-RPC error message, else OAuth error_description."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(body.get("error_description"), str):
            return str(body["error_description"])
    found = _DESCRIPTION.search(response.headers.get("www-authenticate", ""))
    if found:
        return found.group(1)
    return f"HTTP {response.status_code} {response.reason_phrase}"


def connect(url: str, token: str, transport: str, watch: RefusalWatch) -> Client:
    # This is where the Authorization header goes.
    header = {"Authorization": f"Bearer {token}"}
    hooks: dict[str, list[Callable[..., Any]]] = {"response": [watch]}
    if transport == "sse" or (transport == "auto" and url.rstrip("/").endswith("/sse")):

        def factory(
            headers: dict[str, str] | None = None,
            timeout: httpx2.Timeout | None = None,
            auth: httpx2.Auth | None = None,
        ) -> httpx2.AsyncClient:
            return httpx2.AsyncClient(
                headers=headers, timeout=timeout, auth=auth, event_hooks=hooks
            )

        return Client(
            sse_client(url, headers=header, httpx_client_factory=factory), read_timeout_seconds=30
        )
    http = httpx2.AsyncClient(headers=header, timeout=30, event_hooks=hooks)
    return Client(streamable_http_client(url, http_client=http), read_timeout_seconds=30)


async def call(url: str, token: str, transport: str, tool: str, arguments: dict[str, Any]) -> int:
    watch = RefusalWatch()

    async def session() -> int:
        async with connect(url, token, transport, watch) as client:
            tools = [t.name for t in (await client.list_tools()).tools]
            print(f"tools this token may call: {', '.join(tools) or '(none)'}")
            result = await client.call_tool(tool, arguments)
            for block in result.content:
                print(getattr(block, "text", block))
            return 1 if result.is_error else 0

    work = asyncio.create_task(session())
    refused = asyncio.create_task(watch.seen.wait())
    try:
        await asyncio.wait({work, refused}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        refused.cancel()
    if not work.done():
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        raise Refused(watch.reason)
    try:
        return work.result()
    except Exception:
        if watch.reason is not None:
            raise Refused(watch.reason) from None
        raise


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
    # The SDK logs a refused SSE POST with a traceback; this script reports it in one line.
    logging.getLogger("mcp").addHandler(logging.NullHandler())
    try:
        return asyncio.run(
            call(args.url, args.token, args.transport, args.tool, parse_arguments(args.arguments))
        )
    except Exception as exc:  # one line, never a traceback
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]  # type: ignore[assignment]
        if isinstance(exc, Refused | MCPError):
            reason = str(exc) if isinstance(exc, Refused) else exc.message
        else:
            reason = f"{type(exc).__name__}: {exc}"
        print(f"call_tool: error: {reason}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
