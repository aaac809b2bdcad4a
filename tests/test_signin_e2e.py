"""Interactive sign-in end to end (issue 10 acceptance), against real servers on loopback.

One module-wide world: a real issuer app (tests/test_authorize.py ``make_world``: users file,
SQLite store, the login and consent pages, /register, /token), a Client ID Metadata Document
server speaking https on loopback with a throwaway CA (tests/tls_support.py; the SDKs only
accept an https ``client_metadata_url``), and a real protected MCP server (tools ``add`` and
``subtract``) on the issuer's fake clock. Each test signs in its own user, so the tests share
servers but no sessions, codes or refresh families.

Three real clients: the Python SDK's unchanged ``OAuthClientProvider`` (tests/signin_support),
the TypeScript SDK's (tests/js/oauth_client.mjs), and a headless Chromium (tests/browser.py).

The Python provider decides on its own whether its access token has expired, from
``time.time()`` and the token's ``expires_in``. Its two modules' ``time`` are pointed at the
test's FakeClock (:func:`sdk_on_the_fake_clock`), so when the test moves that clock past the
token lifetime, the issuer, the MCP server and the client all see the token expired, and the
provider refreshes by itself; no test waits for real time to pass.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import mcp.client.auth.oauth2
import mcp.shared.auth_utils
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from jwtmcp.mcp import protected_server
from jwtmcp.pkce import s256_challenge
from jwtmcp.tokens import VerifiedClaims
from jwtmcp.users import add_user
from jwtmcp.verifier import Verifier
from tests.browser import Browser
from tests.js_support import run_oauth_client
from tests.signin_support import MemoryTokenStorage, SignInHandlers, sign_in_client
from tests.support import free_port, serve_app
from tests.test_authorize import PASSWORD, REDIRECT, World, make_world
from tests.tls_support import make_certificates, serve_tls

CIMD_HOST = "client.test"  # exists nowhere: the issuer's fetcher is pinned to 127.0.0.1
LIFETIME = 300  # seconds, the issuer's default access-token lifetime
USERS = ("py-cimd", "py-dcr", "ts-cimd", "ts-dcr", "ada")


@dataclass
class Sites:
    world: World
    resource: str  # the protected MCP server's URL, the tokens' aud
    cimd_base: str  # https://client.test:PORT; documents at /clients/NAME.json

    def cimd_url(self, name: str) -> str:
        return f"{self.cimd_base}/clients/{name}.json"

    def families(self, user: str) -> list[Any]:
        return list(self.world.store.list_families(subject=user))


def _cimd_app(state: dict[str, str]) -> Starlette:
    async def document(request: Request) -> JSONResponse:
        url = f"{state['base']}/clients/{request.path_params['name']}.json"
        return JSONResponse(
            {
                "client_id": url,
                "client_name": f"E2E {request.path_params['name']}",
                "redirect_uris": [REDIRECT],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
            }
        )

    return Starlette(routes=[Route("/clients/{name}.json", document)])


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    directory = tmp_path_factory.mktemp("signin-e2e")
    ca, cert, key = make_certificates(directory, CIMD_HOST)

    async def pin(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    fetcher_options = {
        "ssl_context": ssl.create_default_context(cafile=str(ca)),
        "resolve": pin,
    }
    state: dict[str, str] = {}
    with (
        serve_tls(_cimd_app(state), cert, key) as cimd_port,
        make_world(directory, fetcher_options=fetcher_options) as world,
    ):
        state["base"] = f"https://{CIMD_HOST}:{cimd_port}"
        port = free_port()
        resource = f"http://127.0.0.1:{port}/mcp"
        for user in USERS:
            add_user(
                directory / "users.json",
                user,
                password=PASSWORD,
                tools=["add", "subtract"],
                audiences=[resource],
                clock=world.clock,
            )
        server = protected_server("calc", issuer=world.issuer, resource=resource, clock=world.clock)

        @server.tool()
        def add(a: int, b: int) -> int:
            return a + b

        @server.tool()
        def subtract(a: int, b: int) -> int:
            return a - b

        try:
            with serve_app(server.streamable_http_app(), port=port):
                yield Sites(world, resource, state["base"])
        finally:
            server.jwt_verifier.close()  # type: ignore[attr-defined]


def verify(sites: Sites, access_token: str) -> VerifiedClaims:
    """The token's claims, checked offline as the MCP server checks them."""
    with Verifier(
        issuer=sites.world.issuer,
        audience=sites.resource,
        jwks_url=f"{sites.world.base}/.well-known/jwks.json",
        clock=sites.world.clock,
    ) as verifier:
        return verifier.verify(access_token)


@pytest.fixture
def sdk_on_the_fake_clock(sites: Sites, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python SDK's token-expiry checks read the test's clock (see the module docstring)."""
    fake_time = SimpleNamespace(time=sites.world.clock)
    monkeypatch.setattr(mcp.client.auth.oauth2, "time", fake_time)
    monkeypatch.setattr(mcp.shared.auth_utils, "time", fake_time)


# --- 1. the Python SDK's OAuthClientProvider ------------------------------------------------


@dataclass
class PythonRun:
    tools: list[str]
    sums: list[int]
    difference: int
    generations_after_refresh: list[int]
    handlers: SignInHandlers
    storage: MemoryTokenStorage


def python_client_run(sites: Sites, user: str, client_metadata_url: str | None) -> PythonRun:
    """Sign in with ``subtract`` unticked, list, call ``add``; expire the token, call ``add``
    again (a refresh); call ``subtract`` (a step-up)."""
    handlers = SignInHandlers(
        redirect_uri=REDIRECT, username=user, password=PASSWORD, untick=["tool:subtract"]
    )
    storage = MemoryTokenStorage()

    async def go() -> PythonRun:
        client = sign_in_client(
            sites.resource, handlers, storage, client_metadata_url=client_metadata_url
        )
        async with client:
            tools = [tool.name for tool in (await client.list_tools()).tools]
            sums = [(await client.call_tool("add", {"a": 2, "b": 3})).structured_content["result"]]  # type: ignore[index]
            sites.world.clock.advance(LIFETIME + 1)
            sums.append(
                (await client.call_tool("add", {"a": 4, "b": 5})).structured_content["result"]  # type: ignore[index]
            )
            generations = [f.generation for f in sites.families(user)]
            handlers.untick = []
            result = await client.call_tool("subtract", {"a": 9, "b": 4})
            assert not result.is_error, result
            difference = result.structured_content["result"]  # type: ignore[index]
        return PythonRun(tools, sums, difference, generations, handlers, storage)

    return asyncio.run(asyncio.wait_for(go(), 60))


def assert_python_run(sites: Sites, user: str, run: PythonRun, client_id: str) -> None:
    assert run.tools == ["add"]  # tools/list shows only what the user approved
    assert run.sums == [5, 9]
    assert run.generations_after_refresh == [1]  # one family, rotated once: a refresh grant
    assert run.storage.token_saves == 3  # code, refresh, step-up code
    first, step_up = run.handlers.rounds
    assert first.pages == ("login", "consent")
    assert first.offered_scopes == ("tool:add", "tool:subtract")
    assert first.approved_scopes == ("tool:add",)
    assert step_up.pages == ("consent",)  # the session cookie kept the login
    assert step_up.offered_scopes == ("tool:subtract",)  # consent asks only for the new tool
    assert run.difference == 5
    assert run.storage.tokens is not None and run.storage.client_info is not None
    token = verify(sites, run.storage.tokens.access_token)
    assert (token.subject, token.client_id) == (user, client_id)
    assert set(token.scopes) == {"tool:add", "tool:subtract"}


def test_python_sdk_registered_by_cimd_signs_in_refreshes_and_steps_up(
    sites: Sites, sdk_on_the_fake_clock: None
) -> None:
    url = sites.cimd_url("python")
    run = python_client_run(sites, "py-cimd", url)
    assert run.storage.client_info is not None and run.storage.client_info.client_id == url
    assert_python_run(sites, "py-cimd", run, url)


def test_python_sdk_registered_by_dcr_signs_in_refreshes_and_steps_up(
    sites: Sites, sdk_on_the_fake_clock: None
) -> None:
    run = python_client_run(sites, "py-dcr", None)
    assert run.storage.client_info is not None
    client_id = str(run.storage.client_info.client_id)
    assert client_id.startswith("dcr1.")  # RFC 7591 at /register
    assert_python_run(sites, "py-dcr", run, client_id)


# --- 2. the TypeScript SDK's client -----------------------------------------------------------


def ts_client_run(sites: Sites, user: str, tmp_path: Path, cimd: str | None) -> list[Any]:
    """Two runs of the TypeScript client sharing its saved registration and tokens: the first
    signs in with ``subtract`` unticked and calls ``add``; the clock passes the token lifetime;
    the second refreshes, calls ``add``, then ``subtract`` (a step-up)."""
    state = tmp_path / f"{user}.json"
    first = run_oauth_client(
        sites.resource,
        username=user,
        password=PASSWORD,
        untick=["tool:subtract"],
        calls=[("add", {"a": 2, "b": 3})],
        client_metadata_url=cimd,
        state_file=state,
        timeout=40,
    )
    assert first.returncode == 0, (first.report, first.stderr[-2000:])
    sites.world.clock.advance(LIFETIME + 1)
    second = run_oauth_client(
        sites.resource,
        username=user,
        password=PASSWORD,
        calls=[("add", {"a": 4, "b": 5}), ("subtract", {"a": 9, "b": 4})],
        client_metadata_url=cimd,
        state_file=state,
        timeout=40,
    )
    assert second.returncode == 0, (second.report, second.stderr[-2000:])
    return [first.report, second.report]


def assert_ts_runs(sites: Sites, user: str, first: Any, second: Any) -> None:
    assert first["tools"] == ["add"]
    assert first["result"]["structuredContent"] == {"result": 5}
    assert first["token_claims"]["scope"] == "tool:add"
    assert first["token_claims"]["sub"] == user
    assert first["authorizations"] == 1 and first["callback_iss"] == [sites.world.issuer]
    assert second["refreshes"] >= 1  # the expired token was refreshed, not signed in again
    assert max(f.generation for f in sites.families(user)) >= 1  # a refresh_token grant
    assert [r["structuredContent"] for r in second["results"]] == [
        {"result": 9},
        {"result": 5},
    ]
    assert second["authorizations"] == 1  # the step-up
    assert set(second["token_scope"].split()) == {"tool:add", "tool:subtract"}
    assert second["tools_after"] == ["add", "subtract"]
    assert second["client_id"] == first["client_id"]


def test_typescript_sdk_registered_by_cimd_signs_in_refreshes_and_steps_up(
    sites: Sites, tmp_path: Path
) -> None:
    url = sites.cimd_url("typescript")
    first, second = ts_client_run(sites, "ts-cimd", tmp_path, url)
    assert first["client_id"] == url
    assert_ts_runs(sites, "ts-cimd", first, second)


def test_typescript_sdk_registered_by_dcr_signs_in_refreshes_and_steps_up(
    sites: Sites, tmp_path: Path
) -> None:
    first, second = ts_client_run(sites, "ts-dcr", tmp_path, None)
    assert str(first["client_id"]).startswith("dcr1.")
    assert_ts_runs(sites, "ts-dcr", first, second)


# --- 3. a real browser --------------------------------------------------------------------------


def test_chromium_signs_in_unticks_a_tool_and_the_token_lacks_it(
    sites: Sites, browser: Browser, screenshot_dir: Path
) -> None:
    world = sites.world
    client_id = world.register(name="Example Editor")
    verifier = secrets.token_urlsafe(48)
    state = secrets.token_urlsafe(8)
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "state": state,
        "code_challenge": s256_challenge(verifier),
        "code_challenge_method": "S256",
        "resource": sites.resource,
        "scope": "tool:add tool:subtract",
    }
    browser.open(f"{world.base}/authorize?{urlencode(query)}")
    browser.screenshot(screenshot_dir / "signin-login.png")
    browser.fill("username", "ada")
    browser.fill("password", PASSWORD)
    browser.click("Sign in")
    assert browser.checked_values("scope") == ["tool:add", "tool:subtract"]
    browser.screenshot(screenshot_dir / "signin-consent.png")
    browser.set_checked("scope", "tool:subtract", False)
    browser.click("Allow")
    landed = browser.wait_for_url(REDIRECT + "?")
    params = {k: v[0] for k, v in parse_qs(urlsplit(landed).query).items()}
    assert (params["state"], params["iss"]) == (state, world.issuer)
    answer = httpx2.post(
        f"{world.base}/token",
        data={
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
            "client_id": client_id,
            "resource": sites.resource,
        },
        timeout=10,
        trust_env=False,
    )
    assert answer.status_code == 200, answer.text
    token = verify(sites, answer.json()["access_token"])
    assert token.scopes == ("tool:add",)
    assert (token.subject, token.client_id) == ("ada", client_id)
    assert answer.json()["scope"] == "tool:add"
