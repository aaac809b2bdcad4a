"""Header and log injection: untrusted values never reach a header raw, nor a log line unescaped.

A real protected server (Streamable HTTP) and a token for ``tool:add`` only; tool names,
subjects and kids carry CR/LF, other control characters, quotes, backslashes, spaces and
non-ASCII letters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from jwtmcp.keys import KeyRing, init_ring
from jwtmcp.mcp import protected_server
from jwtmcp.tokens import mint
from jwtmcp.verifier import Verifier
from tests.jwks_support import claims, header, jws
from tests.mcp_support import post_mcp, sdk_guarded_server
from tests.support import free_port, serve_app

ISSUER = "https://issuer.example"

# Names that cannot be a scope token (RFC 6749 §3.3: %x21 / %x23-5B / %x5D-7E).
BAD_NAMES = {
    "crlf-header": "subtract\r\nX-Injected: yes",
    "lf-only": "subtract\nfake log line",
    "cr-only": "subtract\rX",
    "nul": "sub\x00tract",
    "tab": "sub\ttract",
    "del": "sub\x7ftract",
    "quote": 'sub"tract',
    "backslash": "sub\\tract",
    "quote-then-param": 'x", error="invalid_token',
    "space": "tool:add subtract",
    "non-ascii": "añadir",
    "line-separator": "sub\u2028tract",
    "next-line": "sub\x85tract",
    "empty": "",
}

# The ones a log line could be forged or garbled with: control or non-ASCII characters.
UNPRINTABLE = {k: v for k, v in BAD_NAMES.items() if not all(0x20 <= ord(c) <= 0x7E for c in v)}


@dataclass
class Injection:
    ring: KeyRing
    url: str
    sdk_only: str  # MCPServer + JwtTokenVerifier + ToolScopeGuard, no jwtmcp HTTP layer

    def token(self, subject: str = "alice", audience: str | None = None) -> str:
        return mint(
            self.ring.active.signing_key,
            issuer=ISSUER,
            subject=subject,
            audience=audience or self.url,
            tools=["add"],
        )


@pytest.fixture(scope="module")
def injection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Injection]:
    directory: Path = tmp_path_factory.mktemp("injection")
    ring = init_ring(directory / "keys")
    jwks = directory / "jwks.json"
    jwks.write_text(json.dumps(ring.jwks()))
    port, g_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    sdk_only = f"http://127.0.0.1:{g_port}/mcp"
    server = protected_server("inj", issuer=ISSUER, resource=url, jwks_file=str(jwks))
    verifier = Verifier(issuer=ISSUER, audience=sdk_only, jwks_file=str(jwks))
    guarded = sdk_guarded_server("inj-guarded", verifier, issuer=ISSUER, resource=sdk_only)
    for each in (server, guarded):

        @each.tool()
        def add(a: float, b: float) -> float:
            return a + b

    with (
        serve_app(server.streamable_http_app(), port=port),
        serve_app(guarded.streamable_http_app(), port=g_port),
    ):
        yield Injection(ring, url, sdk_only)
    server.jwt_verifier.close()  # type: ignore[attr-defined]
    verifier.close()


def call(url: str, token: str, body: Any) -> httpx2.Response:
    return post_mcp(url, token, body, timeout=10)


def tools_call(name: str, request_id: int = 7) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": {"a": 1, "b": 2}},
    }


def assert_clean_headers(answer: httpx2.Response) -> None:
    """Every header value is visible ASCII (or space) and nothing was smuggled in."""
    for name, value in answer.headers.raw:
        assert all(0x20 <= byte <= 0x7E for byte in value), (name, value)
    assert "x-injected" not in answer.headers


def assert_clean_log(records: list[logging.LogRecord]) -> None:
    """No jwtmcp log line holds a control character or an unescaped non-ASCII one."""
    for record in records:
        if record.name.startswith("jwtmcp"):
            message = record.getMessage()
            assert all(0x20 <= ord(c) <= 0x7E for c in message), repr(message)


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_call_of_a_name_that_cannot_be_a_scope_is_refused_400_with_a_valid_challenge(
    injection: Injection, name: str
) -> None:
    answer = call(injection.url, injection.token(), tools_call(name))
    assert answer.status_code == 400, answer.text
    assert_clean_headers(answer)
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="invalid_request"')
    assert "scope=" not in challenge
    body = answer.json()
    assert body["id"] == 7
    assert body["error"]["message"].startswith("invalid tool name")


def test_batch_naming_a_bad_tool_is_refused_400_with_a_valid_challenge(
    injection: Injection,
) -> None:
    batch = [tools_call("subtract", 1), tools_call(BAD_NAMES["crlf-header"], 2)]
    answer = call(injection.url, injection.token(), batch)
    assert answer.status_code == 400
    assert_clean_headers(answer)


@pytest.mark.parametrize("name", UNPRINTABLE.values(), ids=UNPRINTABLE.keys())
def test_refusing_an_unprintable_tool_name_logs_it_escaped(
    injection: Injection, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="jwtmcp"):
        call(injection.url, injection.token(), tools_call(name))
    assert_clean_log(caplog.records)
    assert any(r.name.startswith("jwtmcp") for r in caplog.records)


def test_403_for_a_subject_with_crlf_logs_the_subject_escaped(
    injection: Injection, caplog: pytest.LogCaptureFixture
) -> None:
    token = injection.token(subject="mallory\r\n2026-01-01 jwtmcp.middleware granted ñ")
    with caplog.at_level(logging.DEBUG, logger="jwtmcp"):
        answer = call(injection.url, token, tools_call("subtract"))
    assert answer.status_code == 403
    assert_clean_headers(answer)
    assert_clean_log(caplog.records)
    assert any("mallory" in r.getMessage() for r in caplog.records)


def test_token_with_a_crlf_kid_signed_by_a_real_key_is_401_with_clean_header_and_log(
    injection: Injection, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    token = jws(
        header("evil\r\nX-Injected: yes\u2028"),
        claims(now, iss=ISSUER, aud=injection.url, sub="a\r\nb", jti="j\r\nk"),
        injection.ring.active.private_key,
    )
    with caplog.at_level(logging.DEBUG, logger="jwtmcp"):
        answer = call(injection.url, token, tools_call("add"))
    assert answer.status_code == 401
    assert_clean_headers(answer)
    assert_clean_log(caplog.records)


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_guard_alone_refuses_a_bad_tool_name_with_an_mcp_error_that_does_not_echo_it_raw(
    injection: Injection, name: str
) -> None:
    token = injection.token(audience=injection.sdk_only)

    async def go() -> None:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=10)
        transport = streamable_http_client(injection.sdk_only, http_client=http)
        async with Client(transport, read_timeout_seconds=10) as client:
            await client.call_tool(name, {"a": 1, "b": 2})

    try:
        asyncio.run(asyncio.wait_for(go(), 30))
    except Exception as exc:
        error: BaseException = exc
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
    else:
        raise AssertionError("the call was not refused")
    assert isinstance(error, MCPError), repr(error)
    assert error.message.startswith("invalid tool name"), error.message
    assert all(0x20 <= ord(c) <= 0x7E for c in error.message), repr(error.message)
