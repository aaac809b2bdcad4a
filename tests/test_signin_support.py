"""The two HTTP walkers of the sign-in pages (tests/signin_support.py for the Python SDK,
``followSignIn`` of tests/js/oauth_client.mjs for the TypeScript SDK), on loopback pages that
have the shape of the sign-in contract of issue 10: login form, session cookie
on ``Path=/authorize``, CSRF token bound to it, consent form with ``scope`` checkboxes and
``decision`` buttons, 303 to the redirect URI with ``code``, ``state`` and ``iss``.

These pages are not jwtmcp's issuer: they check the walkers, so that the end-to-end tests
against the real issuer fail only for the issuer's reasons.
"""

from __future__ import annotations

import asyncio
import html
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import httpx2
import pytest
from mcp.client.auth import OAuthRegistrationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from jwtmcp.keys import load_ring
from jwtmcp.mcp import protected_server
from tests.js_support import follow_sign_in_js, run_oauth_client
from tests.signin_support import (
    MemoryTokenStorage,
    SignInError,
    SignInHandlers,
    follow_sign_in,
    page_text,
    parse_forms,
    sign_in_client,
)
from tests.support import free_port, serve_app

REDIRECT_URI = "http://127.0.0.1:33418/callback"
USER, PASSWORD = "alice", "correct horse"
TOOLS = ("add", "subtract", "multiply")


@dataclass
class Pages:
    """State of the contract-shaped pages: pending requests, sessions, issued codes."""

    base_url: str = ""
    requests: dict[str, dict[str, str]] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)  # session id -> user
    csrf: dict[str, str] = field(default_factory=dict)  # browser cookie -> csrf token
    codes: dict[str, list[str]] = field(default_factory=dict)  # code -> approved scopes
    logins: int = 0
    secure_cookies: bool = False  # mark cookies Secure, as an issuer may even on loopback


PAGES = Pages()


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><title>{title}</title></head><body>{body}</body></html>",
        status_code=status,
    )


def login_page(request_id: str, request: Request, error: str = "") -> Response:
    browser = request.cookies.get("browser") or secrets.token_urlsafe(8)
    token = PAGES.csrf.setdefault(browser, secrets.token_urlsafe(8))
    response = page(
        "Sign in",
        f"<p class=error>{html.escape(error)}</p>"
        '<form method="post" action="/authorize/login">'
        '<label for="username">Name</label><input id="username" name="username">'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password">'
        f'<input type="hidden" name="csrf_token" value="{token}">'
        f'<input type="hidden" name="request" value="{request_id}">'
        '<button type="submit">Sign in</button></form>',
    )
    response.set_cookie(
        "browser",
        browser,
        path="/authorize",
        httponly=True,
        samesite="lax",
        secure=PAGES.secure_cookies,
    )
    return response


def consent_page(request_id: str, browser: str) -> Response:
    pending = PAGES.requests[request_id]
    boxes = "".join(
        f'<p><input type="checkbox" name="scope" value="{scope}" id="{box_id}" checked>'
        f'<label for="{box_id}">{scope[5:]}</label></p>'
        for scope in pending["scope"].split()
        for box_id in [f"scope-{scope.replace(':', '-')}"]
    )
    return page(
        "Allow access",
        f"<h1>Allow {html.escape(pending['client_id'])}?</h1>"
        '<form method="post" action="/authorize/consent">'
        f'<input type="hidden" name="csrf_token" value="{PAGES.csrf[browser]}">'
        f'<input type="hidden" name="request" value="{request_id}">{boxes}'
        '<button type="submit" name="decision" value="approve">Allow</button>'
        '<button type="submit" name="decision" value="deny">Deny</button></form>',
    )


def session_user(request: Request) -> str | None:
    return PAGES.sessions.get(request.cookies.get("session", ""))


async def authorize(request: Request) -> Response:
    query = request.query_params
    if query.get("client_id") != "test-client" or query.get("redirect_uri") != REDIRECT_URI:
        return page("Error", "<p>Unknown client or redirect URI.</p>", status=400)
    request_id = secrets.token_urlsafe(8)
    PAGES.requests[request_id] = {k: query.get(k, "") for k in ("client_id", "state", "scope")}
    if session_user(request) is None:
        return login_page(request_id, request)
    return RedirectResponse(f"/authorize/consent?request={request_id}", status_code=303)


async def login(request: Request) -> Response:
    form = await request.form()
    browser = request.cookies.get("browser", "")
    if not browser or form.get("csrf_token") != PAGES.csrf.get(browser):
        return page("Error", "<p>Bad CSRF token.</p>", status=403)
    request_id = str(form.get("request", ""))
    if (form.get("username"), form.get("password")) != (USER, PASSWORD):
        return login_page(request_id, request, error="Wrong name or password.")
    PAGES.logins += 1
    session = secrets.token_urlsafe(8)
    PAGES.sessions[session] = USER
    response = RedirectResponse(f"/authorize/consent?request={request_id}", status_code=303)
    response.set_cookie(
        "session",
        session,
        path="/authorize",
        httponly=True,
        samesite="lax",
        secure=PAGES.secure_cookies,
    )
    return response


async def consent(request: Request) -> Response:
    browser = request.cookies.get("browser", "")
    if session_user(request) is None:
        return page("Error", "<p>Not signed in.</p>", status=403)
    if request.method == "GET":
        return consent_page(request.query_params.get("request", ""), browser)
    form = await request.form()
    if form.get("csrf_token") != PAGES.csrf.get(browser):
        return page("Error", "<p>Bad CSRF token.</p>", status=403)
    pending = PAGES.requests.pop(str(form.get("request", "")))
    answer = {"state": pending["state"], "iss": PAGES.base_url}
    if form.get("decision") == "approve":
        code = secrets.token_urlsafe(16)
        PAGES.codes[code] = [str(s) for s in form.getlist("scope")]
        answer = {"code": code, **answer}
    else:
        answer = {"error": "access_denied", **answer}
    return RedirectResponse(f"{REDIRECT_URI}?{urlencode(answer)}", status_code=303)


@pytest.fixture(scope="module")
def pages() -> Iterator[Pages]:
    app = Starlette(
        routes=[
            Route("/authorize", authorize),
            Route("/authorize/login", login, methods=["POST"]),
            Route("/authorize/consent", consent, methods=["GET", "POST"]),
        ]
    )
    with serve_app(app) as base_url:
        PAGES.base_url = base_url
        yield PAGES


def authorization_url(pages: Pages, state: str = "st4te", client_id: str = "test-client") -> str:
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT_URI,
        "state": state,
        "scope": " ".join(f"tool:{t}" for t in TOOLS),
    }
    return f"{pages.base_url}/authorize?{urlencode(query)}"


def follow(url: str, **kwargs: object) -> object:
    options: dict[str, object] = {
        "redirect_uri": REDIRECT_URI,
        "username": USER,
        "password": PASSWORD,
        **kwargs,
    }
    return asyncio.run(asyncio.wait_for(follow_sign_in(url, **options), 30))  # type: ignore[arg-type]


# --- the HTML form reader ------------------------------------------------------------------


def test_parse_forms_reads_the_consent_page_inputs_checkboxes_buttons_and_labels(
    pages: Pages,
) -> None:
    with httpx2.Client(timeout=10, trust_env=False) as client:
        first = client.get(authorization_url(pages))
        [login] = parse_forms(first.text)
        fields = {i.name: i.value for i in login.inputs if i.type == "hidden"}
        answer = client.post(
            f"{pages.base_url}/authorize/login",
            data={"username": USER, "password": PASSWORD, **fields},
        )
        consent = client.get(f"{pages.base_url}{answer.headers['location']}")
    [form] = parse_forms(consent.text)
    assert (form.action, form.method) == ("/authorize/consent", "post")
    assert [b.value for b in form.checkboxes("scope")] == [f"tool:{t}" for t in TOOLS]
    assert all(b.checked for b in form.checkboxes("scope"))
    assert form.labels["scope-tool-subtract"] == "subtract"
    allow, deny = form.button("Allow"), form.button("Deny")
    assert allow is not None and (allow.name, allow.value) == ("decision", "approve")
    assert deny is not None and deny.value == "deny"
    assert form.input("csrf_token") is not None and form.input("request") is not None


def test_parse_forms_decodes_entities_and_tells_unticked_boxes() -> None:
    [form] = parse_forms(
        '<form method=POST action="/a?x=1&amp;y=2"><input name=n value="&quot;q&quot;">'
        '<input type=checkbox name=scope value="tool:a"><input type=checkbox name=scope'
        ' value="tool:b" checked><input type=submit value="Go &amp; see"></form>'
    )
    assert (form.action, form.method) == ("/a?x=1&y=2", "post")
    assert form.input("n") is not None and form.input("n").value == '"q"'  # type: ignore[union-attr]
    assert [(b.value, b.checked) for b in form.checkboxes("scope")] == [
        ("tool:a", False),
        ("tool:b", True),
    ]
    assert form.button("Go & see") is not None


def test_page_text_collapses_the_visible_text() -> None:
    assert page_text("<p>Wrong\n  name</p><p>or password.</p>") == "Wrong name or password."


# --- the Python walker -----------------------------------------------------------------------


def test_follow_sign_in_logs_in_consents_and_returns_code_state_and_iss(pages: Pages) -> None:
    result = follow(authorization_url(pages, state="s-1"))
    assert result.pages == ("login", "consent")  # type: ignore[attr-defined]
    assert result.state == "s-1"  # type: ignore[attr-defined]
    assert result.params["iss"] == pages.base_url  # type: ignore[attr-defined]
    assert pages.codes[result.code] == [f"tool:{t}" for t in TOOLS]  # type: ignore[attr-defined]


def test_follow_sign_in_sends_only_the_boxes_left_ticked(pages: Pages) -> None:
    result = follow(authorization_url(pages), untick=["tool:subtract"])
    assert pages.codes[result.code] == ["tool:add", "tool:multiply"]  # type: ignore[attr-defined]
    assert result.offered_scopes == tuple(f"tool:{t}" for t in TOOLS)  # type: ignore[attr-defined]
    assert result.approved_scopes == ("tool:add", "tool:multiply")  # type: ignore[attr-defined]


def test_follow_sign_in_keeps_the_session_so_a_second_round_skips_the_login(
    pages: Pages,
) -> None:
    jar = httpx2.Cookies()
    first = follow(authorization_url(pages), cookies=jar)
    logins = pages.logins
    second = follow(authorization_url(pages, state="again"), cookies=jar)
    assert first.pages == ("login", "consent")  # type: ignore[attr-defined]
    assert second.pages == ("consent",)  # type: ignore[attr-defined]
    assert pages.logins == logins


@pytest.fixture
def secure_cookies(pages: Pages) -> Iterator[Pages]:
    pages.secure_cookies = True
    try:
        yield pages
    finally:
        pages.secure_cookies = False


def test_follow_sign_in_sends_back_secure_cookies_on_loopback_http_as_browsers_do(
    secure_cookies: Pages,
) -> None:
    """Browsers treat http://127.0.0.1 as a secure context (W3C Secure Contexts §3.1), so a
    Secure session cookie from a loopback issuer comes back; the walker must do the same."""
    result = follow(authorization_url(secure_cookies, state="sec"))
    assert result.pages == ("login", "consent")  # type: ignore[attr-defined]
    assert result.code in secure_cookies.codes  # type: ignore[attr-defined]


def test_ts_client_follow_sign_in_sends_back_secure_cookies_on_loopback_http(
    secure_cookies: Pages,
) -> None:
    run = follow_sign_in_js(
        authorization_url(secure_cookies, state="sec"),
        redirect_uri=REDIRECT_URI,
        username=USER,
        password=PASSWORD,
    )
    assert run.returncode == 0, run.report
    assert run.report["params"]["code"] in secure_cookies.codes


def test_follow_sign_in_stops_when_the_login_form_comes_back(pages: Pages) -> None:
    with pytest.raises(SignInError, match=r"login form came back: .*Wrong name or password"):
        follow(authorization_url(pages), password="wrong")


def test_follow_sign_in_returns_the_error_of_a_denied_consent(pages: Pages) -> None:
    result = follow(authorization_url(pages, state="d"), decision="deny")
    assert result.code is None  # type: ignore[attr-defined]
    assert (result.error, result.state) == ("access_denied", "d")  # type: ignore[attr-defined]
    with pytest.raises(SignInError, match="access_denied"):
        result.code_result()  # type: ignore[attr-defined]


def test_follow_sign_in_names_the_status_and_text_of_an_error_page(pages: Pages) -> None:
    with pytest.raises(SignInError, match=r"answered 400: .*Unknown client") as caught:
        follow(authorization_url(pages, client_id="someone-else"))
    assert caught.value.status == 400


def test_sign_in_handlers_give_the_sdk_the_code_of_the_last_round(pages: Pages) -> None:
    handlers = SignInHandlers(redirect_uri=REDIRECT_URI, username=USER, password=PASSWORD)

    async def one_round() -> tuple[str, str | None]:
        await handlers.redirect_handler(authorization_url(pages, state="h"))
        result = await handlers.callback_handler()
        return result.code, result.state

    code, state = asyncio.run(asyncio.wait_for(one_round(), 30))
    assert state == "h"
    assert code in pages.codes
    assert handlers.rounds[-1].pages == ("login", "consent")


# --- the TypeScript client's walker ----------------------------------------------------------


def test_ts_client_follow_sign_in_returns_the_code_for_the_boxes_left_ticked(
    pages: Pages,
) -> None:
    run = follow_sign_in_js(
        authorization_url(pages, state="js"),
        redirect_uri=REDIRECT_URI,
        username=USER,
        password=PASSWORD,
        untick=["tool:multiply"],
    )
    assert run.returncode == 0, run.report
    params = run.report["params"]
    assert (params["state"], params["iss"]) == ("js", pages.base_url)
    assert pages.codes[params["code"]] == ["tool:add", "tool:subtract"]


def test_ts_client_follow_sign_in_fails_clearly_on_a_refused_login(pages: Pages) -> None:
    run = follow_sign_in_js(
        authorization_url(pages),
        redirect_uri=REDIRECT_URI,
        username=USER,
        password="wrong",
    )
    assert run.returncode == 1
    assert run.report["ok"] is False
    assert "the login form came back: " in run.report["error"]
    assert "Wrong name or password." in run.report["error"]


# --- both SDK clients, up to an authorization server without sign-in -------------------------


@dataclass
class NoSignInWorld:
    """A jwtmcp-protected MCP server whose authorization server is client_credentials-only
    (RFC 8414 metadata without ``authorization_endpoint`` or ``registration_endpoint``);
    ``seen`` lists the paths that server was asked for."""

    resource: str
    seen: list[str]


@pytest.fixture(scope="module")
def no_sign_in(_template_ring: Path) -> Iterator[NoSignInWorld]:
    ring = load_ring(_template_ring)
    seen: list[str] = []

    async def metadata(request: Request) -> Response:
        seen.append(f"{request.method} {request.url.path}")
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "issuer": base,
                "token_endpoint": f"{base}/token",
                "jwks_uri": f"{base}/.well-known/jwks.json",
                "response_types_supported": ["token"],
                "grant_types_supported": ["client_credentials"],
            }
        )

    async def jwks(request: Request) -> Response:
        return JSONResponse(ring.jwks())

    async def anything_else(request: Request) -> Response:
        seen.append(f"{request.method} {request.url.path}")
        return JSONResponse({"error": "not_found"}, status_code=404)

    authorization_server = Starlette(
        routes=[
            Route("/.well-known/oauth-authorization-server", metadata),
            Route("/.well-known/jwks.json", jwks),
            Route("/{path:path}", anything_else, methods=["GET", "POST"]),
        ]
    )
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    with serve_app(authorization_server) as issuer:
        server = protected_server("math", issuer=issuer, resource=resource)

        @server.tool()
        def add(a: float, b: float) -> float:
            return a + b

        with serve_app(server.streamable_http_app(), port=port):
            yield NoSignInWorld(resource, seen)


def test_ts_client_reaches_the_authorization_server_then_fails_in_one_json_line(
    no_sign_in: NoSignInWorld,
) -> None:
    """The SDK follows the 401 to the RFC 9728 and RFC 8414 metadata, then refuses metadata
    without ``authorization_endpoint``; the script says why in one JSON line, exit 1."""
    no_sign_in.seen.clear()
    run = run_oauth_client(no_sign_in.resource, calls=[("add", {"a": 1, "b": 2})], timeout=30)
    assert run.returncode == 1
    assert run.report["ok"] is False
    assert run.report["stage"] == "connect"
    assert "authorization_endpoint" in run.report["error"]
    assert "GET /.well-known/oauth-authorization-server" in no_sign_in.seen


def test_python_sign_in_client_reaches_the_authorization_server_then_fails_to_register(
    no_sign_in: NoSignInWorld,
) -> None:
    """The Python SDK's provider, wired by sign_in_client, asks the same server for its
    metadata, finds no usable authorization server (no ``authorization_endpoint``), and its
    RFC 7591 registration at the fallback ``/register`` fails: no sign-in page is asked for."""
    no_sign_in.seen.clear()
    handlers = SignInHandlers(redirect_uri=REDIRECT_URI, username=USER, password=PASSWORD)

    async def go() -> None:
        async with sign_in_client(no_sign_in.resource, handlers, MemoryTokenStorage()):
            pass

    with pytest.raises(BaseException) as caught:
        asyncio.run(asyncio.wait_for(go(), 30))
    error: BaseException = caught.value
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    assert isinstance(error, OAuthRegistrationError)
    assert "GET /.well-known/oauth-authorization-server" in no_sign_in.seen
    assert handlers.rounds == []
