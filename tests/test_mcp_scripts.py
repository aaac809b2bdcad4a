"""The ready-to-copy scripts work as documented: math_server, call_tool, call_tool_oauth."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jwtmcp.clients import add_client
from jwtmcp.issuer import create_app
from jwtmcp.keys import KeyRing, init_ring
from jwtmcp.tokens import mint
from tests.support import free_port, math_server, serve_app

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"


@dataclass
class Setup:
    issuer: str
    url: str
    ring: KeyRing
    secret: str
    server_log: Path

    def token(self, audience: str) -> str:
        """alice's token for ``audience``, granting the tool add."""
        return mint(
            self.ring.active.signing_key,
            issuer=self.issuer,
            subject="alice",
            audience=audience,
            tools=["add"],
        )


def script(
    name: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("JWTMCP_", "MCP_"))}
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env,
        check=False,
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    directory = tmp_path_factory.mktemp("scripts")
    ring = init_ring(directory / "keys")
    issuer_port, port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{issuer_port}"
    url = f"http://127.0.0.1:{port}/mcp"
    _, secret = add_client(
        directory / "clients.json", "robot", tools=["add", "subtract"], audiences=[url]
    )
    app = create_app(
        issuer_url=issuer, keys_dir=directory / "keys", clients_file=directory / "clients.json"
    )
    log = directory / "server.log"
    env = {"JWTMCP_ISSUER": issuer, "MCP_PORT": str(port)}
    with serve_app(app, port=issuer_port), math_server(url, log, env):
        yield Setup(issuer, url, ring, secret, log)


def test_call_tool_with_a_static_bearer_token(setup: Setup) -> None:
    token = setup.token(setup.url)
    done = script(
        "call_tool.py", "--url", setup.url, "add", "a=2", "b=3", env={"JWTMCP_TOKEN": token}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["tools this token may call: add", "5.0"]
    assert "add called by alice" in setup.server_log.read_text()


def test_call_tool_reports_a_forbidden_tool_in_one_line(setup: Setup) -> None:
    token = setup.token(setup.url)
    done = script("call_tool.py", "--url", setup.url, "--token", token, "multiply", "a=2", "b=3")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "call_tool: error: forbidden: calling multiply needs scope tool:multiply, "
        "which this token does not grant"
    )


def test_call_tool_prints_the_servers_reason_for_a_token_for_another_server(
    setup: Setup,
) -> None:
    token = setup.token("http://127.0.0.1:9/mcp")
    done = script("call_tool.py", "--url", setup.url, "--token", token, "add", "a=2", "b=3")
    assert done.returncode == 1
    assert done.stderr.startswith("call_tool: error: token refused (wrong_audience): ")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.fixture(scope="module")
def sse_url(setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """math_server.py over legacy SSE, against the same issuer."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/sse"
    log = tmp_path_factory.mktemp("sse-server") / "server.log"
    env = {"JWTMCP_ISSUER": setup.issuer, "MCP_PORT": str(port), "MCP_TRANSPORT": "sse"}
    with math_server(url, log, env):
        yield url


def test_call_tool_over_sse_reports_a_forbidden_tool_in_one_line_not_a_timeout(
    setup: Setup, sse_url: str
) -> None:
    token = setup.token(sse_url)
    done = script("call_tool.py", "--url", sse_url, "--token", token, "multiply", "a=2", "b=3")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "call_tool: error: forbidden: calling multiply needs scope tool:multiply, "
        "which this token does not grant"
    )


def test_call_tool_over_sse_prints_the_servers_reason_for_a_refused_token(
    setup: Setup, sse_url: str
) -> None:
    token = setup.token(setup.url)  # the Streamable HTTP server's, not this one's
    done = script("call_tool.py", "--url", sse_url, "--token", token, "add", "a=2", "b=3")
    assert done.returncode == 1
    assert done.stderr.startswith("call_tool: error: token refused (wrong_audience): ")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_call_tool_oauth_discovers_everything(setup: Setup) -> None:
    done = script(
        "call_tool_oauth.py",
        "subtract",
        "a=10",
        "b=4",
        env={
            "MCP_URL": setup.url,
            "JWTMCP_ISSUER": setup.issuer,
            "JWTMCP_CLIENT_ID": "robot",
            "JWTMCP_CLIENT_SECRET": setup.secret,
        },
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["tools this client may call: add, subtract", "6.0"]
    assert "token scope: tool:add tool:subtract" in done.stderr


def test_math_server_refuses_two_key_sources(tmp_path: Path) -> None:
    done = script("math_server.py", "--jwks-url", "http://127.0.0.1:1/j", "--jwks-file", "x.json")
    assert done.returncode == 2
    assert "not allowed with argument" in done.stderr


def test_math_server_takes_the_claim_name_spellings_of_its_flags() -> None:
    # Parsed (exit 1 for the bad issuer URL, not 2 for an unknown flag) and not listed.
    answer = script("math_server.py", "--iss", "http://[bad", "--aud", "http://127.0.0.1:1/mcp")
    assert answer.returncode == 1, answer.stderr
    assert "invalid issuer URL" in answer.stderr
    helped = script("math_server.py", "--help").stdout
    assert "--audience" in helped and "--aud " not in helped and "--iss " not in helped


def test_call_tool_oauth_names_an_issuer_mismatch_and_the_fix_in_one_line(setup: Setup) -> None:
    done = script(
        "call_tool_oauth.py",
        "add",
        "a=1",
        "b=2",
        env={
            "MCP_URL": setup.url,
            "JWTMCP_ISSUER": "http://127.0.0.1:9",  # not the issuer the server names
            "JWTMCP_CLIENT_ID": "robot",
            "JWTMCP_CLIENT_SECRET": setup.secret,
        },
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no SDK traceback before it
    assert lines[0].startswith("call_tool_oauth: error: ")
    assert "http://127.0.0.1:9" in lines[0] and setup.issuer in lines[0]
    assert "--issuer" in lines[0] and "JWTMCP_ISSUER" in lines[0]
    assert setup.secret not in done.stderr


def test_math_server_whoami_tells_the_caller_what_its_verified_token_says(setup: Setup) -> None:
    # The README's math_server.py excerpt shows current_caller() through this tool.
    token = mint(
        setup.ring.active.signing_key,
        issuer=setup.issuer,
        subject="alice",
        audience=setup.url,
        client_id="robot",
        tools=["add", "whoami"],
    )
    done = script("call_tool.py", "--url", setup.url, "--token", token, "whoami")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "tools this token may call: add, whoami",
        "alice via robot, scopes tool:add tool:whoami",
    ]
