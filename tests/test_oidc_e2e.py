"""Upstream sign-in end to end (issue 11 acceptance 1): a real OpenID provider, a real browser.

The provider is panva's certified ``oidc-provider`` from npm (tests/js/oidc_provider.mjs, its
own development login and consent pages), started on loopback as its own process and stopped
by its PID. The issuer is the real app with a providers file and a policy file; the MCP
server is a real protected server. A headless Chromium (tests/browser.py) signs a person in
at the provider, consents at jwtmcp, and the token it gets calls a tool the policy grants
through the person's group; a person outside every rule gets jwtmcp's refusal page.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from selenium.webdriver.common.by import By

from jwtmcp.clients import add_client
from jwtmcp.issuer import create_app
from jwtmcp.keys import init_ring
from jwtmcp.mcp import protected_server
from jwtmcp.pkce import s256_challenge
from jwtmcp.store.sqlite import SqliteStore
from jwtmcp.users import add_user
from jwtmcp.verifier import Verifier
from tests.browser import Browser
from tests.js_support import JS_DIR, node_binary
from tests.support import FakeClock, free_port, serve_app
from tests.test_authorize import PASSWORD, REDIRECT

PROVIDER_SCRIPT = JS_DIR / "oidc_provider.mjs"
CLIENT_ID = "jwtmcp"
ACCOUNTS = {
    "alice": {
        "email": "alice@example.com",
        "email_verified": True,
        "name": "Alice Example",
        "groups": ["eng"],
    },
    "eve": {
        "email": "eve@elsewhere.example",
        "email_verified": True,
        "name": "Eve",
        "groups": ["sales"],
    },
}


def _require_oidc_provider() -> None:
    if (JS_DIR / "node_modules" / "oidc-provider").is_dir():
        return
    message = "the npm package oidc-provider is missing from tests/js: run scripts/test-deps"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def oidc_provider(directory: Path, redirect_uri: str, secret: str) -> Iterator[str]:
    """``node tests/js/oidc_provider.mjs PORT CONFIG`` on loopback; yields its issuer URL and
    stops it by its PID (SIGTERM, then SIGKILL)."""
    _require_oidc_provider()
    config = directory / "oidc-provider.json"
    config.write_text(
        json.dumps(
            {
                "client_id": CLIENT_ID,
                "client_secret": secret,
                "redirect_uris": [redirect_uri],
                "accounts": ACCOUNTS,
                "cookie_key": secrets.token_urlsafe(32),
            }
        )
    )
    port = free_port()
    process = subprocess.Popen(
        [node_binary(), str(PROVIDER_SCRIPT), str(port), str(config)],
        cwd=JS_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        line = process.stdout.readline().decode() if ready else ""
        if not line.startswith("listening "):
            raise RuntimeError(f"oidc-provider did not start (exit status {process.poll()})")
        yield line.split()[1]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


@dataclass
class Site:
    base: str
    issuer: str
    resource: str
    clock: FakeClock
    store: SqliteStore


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = tmp_path_factory.mktemp("oidc-e2e")
    # The provider stamps ID tokens with the real time: the issuer's clock starts there.
    clock = FakeClock(time.time())
    port, mcp_port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{port}"
    resource = f"http://127.0.0.1:{mcp_port}/mcp"
    secret = secrets.token_urlsafe(32)
    init_ring(directory / "keys")
    add_client(directory / "clients.json", "bot", tools=["add"], audiences=[resource])
    add_user(directory / "users.json", "bob", password=PASSWORD, tools=["add"],
             audiences=[resource], clock=clock)  # fmt: skip
    policy = {
        "version": 1,
        "rules": {
            "engineers": {
                "match": {"source": "oidc:corp", "group": "eng"},
                "grant": {"tools": ["add"], "audiences": [resource], "max_ttl": 600},
            }
        },
    }
    (directory / "policy.json").write_text(json.dumps(policy))
    store = SqliteStore(directory / "state.db", clock=clock)
    server = protected_server("calc", issuer=issuer, resource=resource, clock=clock)

    @server.tool()
    def add(a: int, b: int) -> int:
        return a + b

    @server.tool()
    def subtract(a: int, b: int) -> int:
        return a - b

    with oidc_provider(directory, f"{issuer}/authorize/callback/corp", secret) as upstream:
        providers = {
            "version": 1,
            "providers": {
                "corp": {
                    "display_name": "Corp SSO",
                    "issuer": upstream,
                    "client_id": CLIENT_ID,
                    "client_secret": secret,
                    "scopes": ["openid", "email", "profile", "groups"],
                }
            },
        }
        (directory / "providers.json").write_text(json.dumps(providers))
        app = create_app(
            issuer_url=issuer,
            keys_dir=directory / "keys",
            clients_file=directory / "clients.json",
            users_file=directory / "users.json",
            store=store,
            clock=clock,
        )
        try:
            with (
                serve_app(app, port=port) as base,
                serve_app(server.streamable_http_app(), port=mcp_port),
            ):
                yield Site(base, issuer, resource, clock, store)
        finally:
            server.jwt_verifier.close()  # type: ignore[attr-defined]
            store.close()


def _register(site: Site) -> str:
    body = {"redirect_uris": [REDIRECT], "client_name": "Example Editor"}
    answer = httpx2.post(f"{site.base}/register", json=body, timeout=10, trust_env=False)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["client_id"])


def _sign_in_at_the_provider(
    browser: Browser, site: Site, client_id: str, verifier: str, login: str
) -> None:
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "state": "st-e2e",
        "code_challenge": s256_challenge(verifier),
        "code_challenge_method": "S256",
        "resource": site.resource,
        "scope": "tool:add tool:subtract",
    }
    browser.open(f"{site.base}/authorize?{urlencode(query)}")
    browser.driver.find_element(By.LINK_TEXT, "Sign in with Corp SSO").click()
    browser.fill("login", login)
    browser.fill("password", "any password (development interactions)")
    browser.click("Sign-in")
    browser.click("Continue")  # the provider's own consent page


async def _call_add(url: str, token: str) -> Any:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=10)
    async with Client(streamable_http_client(url, http_client=http)) as client:
        tools = [t.name for t in (await client.list_tools()).tools]
        result = await client.call_tool("add", {"a": 2, "b": 3})
        assert not result.is_error, result
        return tools, result.structured_content["result"]  # type: ignore[index]


def test_a_group_member_signs_in_at_the_provider_consents_and_calls_the_granted_tool(
    site: Site, browser: Browser, screenshot_dir: Path
) -> None:
    client_id = _register(site)
    verifier = secrets.token_urlsafe(48)
    _sign_in_at_the_provider(browser, site, client_id, verifier, "alice")
    # Back at jwtmcp: the consent page offers what the policy grants the eng group.
    assert browser.checked_values("scope") == ["tool:add"]
    browser.screenshot(screenshot_dir / "oidc-consent.png")
    browser.click("Allow")
    landed = browser.wait_for_url(REDIRECT + "?")
    params = {k: v[0] for k, v in parse_qs(urlsplit(landed).query).items()}
    assert (params["state"], params["iss"]) == ("st-e2e", site.issuer)
    answer = httpx2.post(
        f"{site.base}/token",
        data={
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
            "client_id": client_id,
            "resource": site.resource,
        },
        timeout=10,
        trust_env=False,
    )
    assert answer.status_code == 200, answer.text
    token = answer.json()["access_token"]
    with Verifier(
        issuer=site.issuer,
        audience=site.resource,
        jwks_url=f"{site.base}/.well-known/jwks.json",
        clock=site.clock,
    ) as check:
        claims = check.verify(token)
    assert claims.subject == "oidc:corp:alice"
    assert claims.claims["email"] == "alice@example.com"
    assert claims.scopes == ("tool:add",)
    tools, total = asyncio.run(_call_add(site.resource, token))
    assert (tools, total) == (["add"], 5)


def test_a_person_outside_every_rule_gets_a_clear_refusal_page(
    site: Site, browser: Browser, screenshot_dir: Path
) -> None:
    client_id = _register(site)
    _sign_in_at_the_provider(browser, site, client_id, secrets.token_urlsafe(48), "eve")
    text = browser.text()
    browser.screenshot(screenshot_dir / "oidc-refused.png")
    assert "No access" in text
    assert "eve@elsewhere.example" in text and "no rule" in text
    assert browser.url.startswith(f"{site.base}/authorize/callback/corp?")
    assert site.store.list_families(subject="oidc:corp:eve") == ()
