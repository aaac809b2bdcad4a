"""A protected MCP math server: add, subtract, multiply (and whoami), each behind its own
tool scope.

    python scripts/math_server.py                      # Streamable HTTP on :8001/mcp
    python scripts/math_server.py --transport sse      # legacy SSE on :8001/sse

Every flag has an environment variable:

    --issuer     JWTMCP_ISSUER      issuer URL (token iss)          http://127.0.0.1:8000
    --audience   JWTMCP_AUDIENCE    this server's URL (token aud)   http://HOST:PORT/mcp (or /sse)
    --jwks-url   JWTMCP_JWKS_URL    key source: the issuer's JWKS   ISSUER/.well-known/jwks.json
    --jwks-file  JWTMCP_JWKS_FILE   key source: a JWKS file (jwtmcp jwks > jwks.json)
    --public-key JWTMCP_PUBLIC_KEY  key source: a PEM public key file
    --host       MCP_HOST           127.0.0.1
    --port       MCP_PORT           8001
    --transport  MCP_TRANSPORT      streamable-http | sse

A token minted with ``--tools add`` lists and calls ``add`` only; ``subtract`` answers 403.
``whoami`` (``--tools whoami``) answers with what ``current_caller()`` says about the token.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from jwtmcp.errors import JwtMcpError
from jwtmcp.mcp import current_caller, protected_server

log = logging.getLogger("math_server")


def _audit(tool: str) -> None:
    caller = current_caller()
    log.info("%s called by %s (client %s)", tool, caller.subject, caller.client_id)


def build(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    path = "/sse" if args.transport == "sse" else "/mcp"
    audience = args.audience or f"http://{args.host}:{args.port}{path}"
    public_key = Path(args.public_key).read_bytes() if args.public_key else None
    server = protected_server(
        "math",
        issuer=args.issuer,
        resource=audience,
        jwks_url=args.jwks_url,
        jwks_file=args.jwks_file,
        public_key_pem=public_key,
    )

    @server.tool()
    def add(a: float, b: float) -> float:
        """Add two numbers."""
        _audit("add")
        return a + b

    @server.tool()
    def subtract(a: float, b: float) -> float:
        """Subtract b from a."""
        _audit("subtract")
        return a - b

    @server.tool()
    def multiply(a: float, b: float) -> float:
        """Multiply two numbers."""
        _audit("multiply")
        return a * b

    @server.tool()
    def whoami() -> str:
        """Who is calling: the subject, client and scopes of the verified token."""
        caller = current_caller()  # the verified token behind this call
        return f"{caller.subject} via {caller.client_id}, scopes {' '.join(caller.scopes)}"

    return server, audience


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="A jwtmcp-protected MCP math server.")
    parser.add_argument("--issuer", default=env("JWTMCP_ISSUER", "http://127.0.0.1:8000"))
    parser.add_argument("--iss", dest="issuer", help=argparse.SUPPRESS)  # jwtmcp's other spelling
    parser.add_argument("--audience", default=env("JWTMCP_AUDIENCE"))
    parser.add_argument("--aud", "--resource", dest="audience", help=argparse.SUPPRESS)
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--jwks-url", default=env("JWTMCP_JWKS_URL"))
    keys.add_argument("--jwks-file", default=env("JWTMCP_JWKS_FILE"))
    keys.add_argument("--public-key", default=env("JWTMCP_PUBLIC_KEY"))
    parser.add_argument("--host", default=env("MCP_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("MCP_PORT", "8001")))
    parser.add_argument(
        "--transport",
        choices=["streamable-http", "sse"],
        default=env("MCP_TRANSPORT", "streamable-http"),
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        server, audience = build(args)
    except (JwtMcpError, OSError) as exc:
        print(f"math_server: error: {exc}", file=sys.stderr)
        return 1
    print(f"math server: {audience} (issuer {args.issuer}, transport {args.transport})", flush=True)
    if args.transport == "sse":
        server.run("sse", host=args.host, port=args.port)
    else:
        server.run("streamable-http", host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
