"""The front channel of interactive sign-in over real HTTP: /authorize, login, consent.

A real issuer app (create_app) on loopback with a real SQLite store and users file; the
pages are followed as a browser without JavaScript would (cookies kept, forms read by
input name). Codes are read back from the store to see exactly what the back channel gets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from jwtmcp.authorize import LoginLimits
from jwtmcp.cimd import ClientMetadataFetcher
from jwtmcp.clients import add_client
from jwtmcp.issuer import create_app
from jwtmcp.keys import init_ring
from jwtmcp.pkce import s256_challenge
from jwtmcp.store.sqlite import SqliteStore
from jwtmcp.users import add_user

from .signin_support import (
    MemoryTokenStorage,
    SignInError,
    SignInHandlers,
    follow_sign_in,
    page_text,
    parse_forms,
    sign_in_client,
)
from .support import FakeClock, free_port, issuer_process, serve_app

CALC = "http://127.0.0.1:8001/mcp"
OTHER = "http://127.0.0.1:8002/mcp"
REDIRECT = "http://127.0.0.1:33418/callback"
VERIFIER = "v" * 43
CHALLENGE = s256_challenge(VERIFIER)
PASSWORD = "correct horse battery staple"
CONTRACT_MEMBERS = {
    "client_id",
    "redirect_uri",
    "code_challenge",
    "resource",
    "scope",
    "subject",
    "source_id",
    "auth_time",
    "claims",
    "max_lifetime",
}


@dataclass
class World:
    base: str
    issuer: str
    store: SqliteStore
    clock: FakeClock
    docs: str
    directory: Path

    def register(self, redirect_uris: list[str] | None = None, name: str = "Test App") -> str:
        body = {"redirect_uris": redirect_uris or [REDIRECT], "client_name": name}
        answer = httpx2.post(f"{self.base}/register", json=body, timeout=10)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["client_id"])

    def authorize_url(self, client_id: str, **overrides: str | None) -> str:
        params: dict[str, str | None] = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "state": "st-123",
            "code_challenge": CHALLENGE,
            "code_challenge_method": "S256",
            "resource": CALC,
            "scope": "tool:add tool:subtract",
        }
        params.update(overrides)
        return f"{self.base}/authorize?" + urlencode(
            {k: v for k, v in params.items() if v is not None}
        )

    def grant(self, code: str) -> dict[str, Any]:
        redemption = self.store.take_code(code)
        assert redemption is not None and not redemption.reused
        return dict(redemption.grant)


def _docs_app(state: dict[str, Any]) -> Starlette:
    async def doc(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        self_url = f"{state['base']}/clients/{name}.json"
        claimed = f"{state['base']}/clients/someone-else.json" if name == "impostor" else self_url
        return JSONResponse(
            {
                "client_id": claimed,
                "client_name": f"CIMD {name}",
                "redirect_uris": [REDIRECT],
                "token_endpoint_auth_method": "none",
            }
        )

    return Starlette(routes=[Route("/clients/{name}.json", doc)])


def make_world(
    directory: Path,
    *,
    limits: LoginLimits | None = None,
    store: SqliteStore | None = None,
    fetcher_options: dict[str, Any] | None = None,
) -> contextlib.AbstractContextManager[World]:
    """A running issuer on loopback (users alice and bob, a clients file, a store, a plain
    http CIMD document server); ``fetcher_options`` go to its ClientMetadataFetcher (e.g.
    ``ssl_context=`` and ``resolve=`` for documents served over https on loopback)."""

    @contextlib.contextmanager
    def run() -> Iterator[World]:
        clock = FakeClock()
        init_ring(directory / "keys")
        users = directory / "users.json"
        if not (directory / "clients.json").exists():
            add_client(directory / "clients.json", "bot", tools=["add"], audiences=[CALC])
        if not users.exists():
            add_user(
                users,
                "alice",
                password=PASSWORD,
                tools=["add", "subtract", "multiply"],
                audiences=[CALC, OTHER],
                display_name="Alice A.",
                clock=clock,
            )
            add_user(users, "bob", password=PASSWORD, tools=["add"], audiences=[CALC], clock=clock)
        the_store = store or SqliteStore(directory / "state.db", clock=clock)
        state: dict[str, Any] = {}
        fetcher = ClientMetadataFetcher(
            clock=clock, allow_loopback_for_development=True, **(fetcher_options or {})
        )
        with serve_app(_docs_app(state)) as docs:
            state["base"] = docs
            port = free_port()
            issuer = f"http://127.0.0.1:{port}"
            app = create_app(
                issuer_url=issuer,
                keys_dir=directory / "keys",
                clients_file=directory / "clients.json",
                users_file=users,
                store=the_store,
                metadata_fetcher=fetcher,
                login_limits=limits,
                clock=clock,
            )
            with serve_app(app, port=port) as base:
                yield World(base, issuer, the_store, clock, docs, directory)
        the_store.close()

    return run()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with make_world(tmp_path) as w:
        yield w


def sign_in(url: str, **options: Any) -> Any:
    options.setdefault("username", "alice")
    options.setdefault("password", PASSWORD)
    return asyncio.run(follow_sign_in(url, redirect_uri=REDIRECT, **options))


def browser() -> httpx2.Client:
    return httpx2.Client(timeout=10, follow_redirects=False, trust_env=False)


def form_fields(html: str, action: str) -> dict[str, Any]:
    """The fields a browser would send from the form posting to ``action`` (ticked boxes)."""
    form = next(f for f in parse_forms(html) if f.action == action)
    fields: dict[str, Any] = {}
    for item in form.inputs:
        if item.type == "checkbox":
            if item.checked:
                fields.setdefault(item.name, []).append(item.value)
        elif item.type == "hidden":
            fields[item.name] = item.value
    return fields


def login_page(http: httpx2.Client, url: str) -> str:
    page = http.get(url)
    assert page.status_code == 200, page.text
    return page.text


def post_login(http: httpx2.Client, world: World, html: str, user: str, password: str) -> Any:
    fields = form_fields(html, "/authorize/login")
    fields.update(username=user, password=password)
    return http.post(f"{world.base}/authorize/login", data=fields)


def error_redirect(response: Any) -> dict[str, str]:
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


# --- the whole flow ---------------------------------------------------------------------------


def test_login_and_consent_give_a_code_holding_the_contract_record(world: World) -> None:
    client_id = world.register()
    result = sign_in(world.authorize_url(client_id))
    assert result.pages == ("login", "consent")
    assert result.params["state"] == "st-123"
    assert result.params["iss"] == world.issuer
    grant = world.grant(result.code)
    assert set(grant) == CONTRACT_MEMBERS
    assert grant["client_id"] == client_id
    assert grant["redirect_uri"] == REDIRECT
    assert grant["code_challenge"] == CHALLENGE
    assert grant["resource"] == CALC
    assert grant["scope"] == "tool:add tool:subtract"
    assert (grant["subject"], grant["source_id"]) == ("alice", "users")
    assert grant["auth_time"] == int(world.clock())
    assert grant["claims"] == {"name": "Alice A."}
    assert grant["max_lifetime"] is None


def test_an_unticked_tool_is_absent_from_the_code_record(world: World) -> None:
    result = sign_in(world.authorize_url(world.register()), untick=["tool:subtract"])
    assert result.offered_scopes == ("tool:add", "tool:subtract")
    assert world.grant(result.code)["scope"] == "tool:add"


def test_consent_offers_only_requested_tools_the_user_may_have(world: World) -> None:
    url = world.authorize_url(world.register(), scope="tool:add tool:delete openid")
    result = sign_in(url, username="bob")
    assert result.offered_scopes == ("tool:add",)


def test_without_scope_consent_offers_every_tool_of_the_user(world: World) -> None:
    result = sign_in(world.authorize_url(world.register(), scope=None))
    assert result.offered_scopes == ("tool:add", "tool:subtract", "tool:multiply")


def test_without_resource_a_user_with_one_audience_gets_it(world: World) -> None:
    result = sign_in(world.authorize_url(world.register(), resource=None), username="bob")
    assert world.grant(result.code)["resource"] == CALC


def test_without_resource_a_user_with_several_audiences_gets_invalid_target(
    world: World,
) -> None:
    result = sign_in(world.authorize_url(world.register(), resource=None))
    assert (result.error, result.state, result.code) == ("invalid_target", "st-123", None)
    assert result.params["iss"] == world.issuer


def test_a_resource_the_user_may_not_use_is_invalid_target(world: World) -> None:
    result = sign_in(world.authorize_url(world.register(), resource=OTHER), username="bob")
    assert result.error == "invalid_target" and result.code is None


def test_no_allowed_tool_is_invalid_scope(world: World) -> None:
    result = sign_in(world.authorize_url(world.register(), scope="tool:delete"))
    assert result.error == "invalid_scope" and result.code is None


def test_deny_redirects_with_access_denied(world: World) -> None:
    result = sign_in(world.authorize_url(world.register()), decision="deny")
    assert (result.error, result.state, result.params["iss"]) == (
        "access_denied",
        "st-123",
        world.issuer,
    )


def test_signed_in_user_goes_straight_to_consent(world: World) -> None:
    client_id = world.register()
    jar = httpx2.Cookies()
    sign_in(world.authorize_url(client_id), cookies=jar)
    again = sign_in(world.authorize_url(client_id, state="second"), cookies=jar)
    assert again.pages == ("consent",) and again.state == "second"


def _hold_a_refresh_family(world: World, client_id: str, code: str) -> None:
    """Redeem ``code`` at /token, so the client holds a refresh family for its scopes."""
    answer = httpx2.post(
        f"{world.base}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": VERIFIER,
            "client_id": client_id,
            "resource": CALC,
        },
        timeout=10,
        trust_env=False,
    )
    assert answer.status_code == 200, answer.text


def test_a_step_up_consent_offers_only_the_tools_the_client_does_not_hold_yet(
    world: World,
) -> None:
    """Step-up (issue 10 item 7): the client holds tool:add and asks again for add and
    subtract (SEP-2350 unions the scopes); consent asks only for subtract, and the code
    carries both."""
    client_id = world.register()
    jar = httpx2.Cookies()
    first = sign_in(world.authorize_url(client_id), cookies=jar, untick=["tool:subtract"])
    _hold_a_refresh_family(world, client_id, first.code)
    again = sign_in(world.authorize_url(client_id, state="up"), cookies=jar)
    assert again.offered_scopes == ("tool:subtract",)
    assert world.grant(again.code)["scope"] == "tool:add tool:subtract"


def test_consent_for_another_client_offers_every_tool_again(world: World) -> None:
    jar = httpx2.Cookies()
    holder = world.register()
    first = sign_in(world.authorize_url(holder), cookies=jar, untick=["tool:subtract"])
    _hold_a_refresh_family(world, holder, first.code)
    other = sign_in(world.authorize_url(world.register(name="Other App")), cookies=jar)
    assert other.offered_scopes == ("tool:add", "tool:subtract")


def test_cimd_client_signs_in_and_is_named_on_consent(world: World) -> None:
    client_id = f"{world.docs}/clients/editor.json"
    with browser() as http:
        html = login_page(http, world.authorize_url(client_id))
        assert "CIMD editor" in page_text(html)
        consent = http.get(
            world.base + post_login(http, world, html, "alice", PASSWORD).headers["location"]
        )
        text = page_text(consent.text)
        assert "CIMD editor" in text and "127.0.0.1:33418" in text and CALC in text
        form = next(f for f in parse_forms(consent.text) if f.action == "/authorize/consent")
        assert form.labels["scope-tool-add"].strip() == "add"
    result = sign_in(world.authorize_url(client_id))
    assert world.grant(result.code)["client_id"] == client_id


def test_a_registered_custom_scheme_redirect_works(world: World) -> None:
    cursor = "cursor://anysphere.cursor-retrieval/oauth/callback"
    client_id = world.register([cursor])
    url = world.authorize_url(client_id, redirect_uri=cursor)
    result = asyncio.run(
        follow_sign_in(url, redirect_uri=cursor, username="alice", password=PASSWORD)
    )
    assert world.grant(result.code)["redirect_uri"] == cursor


def test_a_loopback_redirect_on_another_port_is_accepted(world: World) -> None:
    other_port = "http://127.0.0.1:50123/callback"
    url = world.authorize_url(world.register(), redirect_uri=other_port)
    result = asyncio.run(
        follow_sign_in(url, redirect_uri=other_port, username="alice", password=PASSWORD)
    )
    assert world.grant(result.code)["redirect_uri"] == other_port


# --- refusals that go back to the client ------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),
        ({"code_challenge": "short"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"resource": "not a url"}, "invalid_target"),
    ],
    ids=["pkce-missing", "pkce-plain", "pkce-method-missing", "bad-challenge", "token", "res"],
)
def test_bad_requests_are_error_redirects_with_state_and_iss(
    world: World, overrides: dict[str, str | None], error: str
) -> None:
    with browser() as http:
        params = error_redirect(http.get(world.authorize_url(world.register(), **overrides)))
    assert (params["error"], params["state"], params["iss"]) == (error, "st-123", world.issuer)
    assert "code" not in params and params["error_description"]


# --- refusals that must not redirect ----------------------------------------------------------


def assert_error_page(response: Any, *words: str) -> None:
    assert response.status_code == 400, response.text
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert not parse_forms(response.text)
    for word in words:
        assert word in page_text(response.text)


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://127.0.0.1:33418/other",
        "https://evil.example/callback",
        "http://127.0.0.1:33418/callback#frag",
        "javascript:alert(1)",
    ],
)
def test_an_unregistered_redirect_uri_is_an_error_page_and_no_redirect(
    world: World, redirect_uri: str
) -> None:
    with browser() as http:
        response = http.get(world.authorize_url(world.register(), redirect_uri=redirect_uri))
    assert_error_page(response, "did not register")


def test_a_missing_redirect_uri_is_an_error_page(world: World) -> None:
    with browser() as http:
        response = http.get(world.authorize_url(world.register(), redirect_uri=None))
    assert_error_page(response, "redirect_uri")


def test_an_unknown_or_altered_client_is_an_error_page(world: World) -> None:
    altered = world.register()[:-2] + "AA"
    with browser() as http:
        assert_error_page(http.get(world.authorize_url(altered)), "not registered")
        assert_error_page(http.get(world.authorize_url("no-such-client")), "not registered")


@pytest.mark.parametrize(
    "client_id",
    [
        "https://10.0.0.1/client.json",
        "https://192.168.1.10/client.json",
        "https://169.254.169.254/latest/meta-data.json",
        "https://[fd00::1]/client.json",
    ],
)
def test_a_cimd_url_on_a_private_address_is_an_error_page(world: World, client_id: str) -> None:
    with browser() as http:
        response = http.get(world.authorize_url(client_id))
    assert_error_page(response, "refused")


def test_a_cimd_document_naming_another_client_id_is_an_error_page(world: World) -> None:
    with browser() as http:
        response = http.get(world.authorize_url(f"{world.docs}/clients/impostor.json"))
    assert_error_page(response, "refused")


def test_a_repeated_parameter_is_an_error_page(world: World) -> None:
    url = world.authorize_url(world.register()) + "&redirect_uri=" + REDIRECT
    with browser() as http:
        assert_error_page(http.get(url), "more than once")


# --- CSRF, sessions, pending requests --------------------------------------------------------


def test_a_consent_post_without_the_csrf_token_is_refused(world: World) -> None:
    with browser() as http:
        html = login_page(http, world.authorize_url(world.register()))
        consent = http.get(
            world.base + post_login(http, world, html, "alice", PASSWORD).headers["location"]
        )
        fields = form_fields(consent.text, "/authorize/consent")
        del fields["csrf_token"]
        response = http.post(
            f"{world.base}/authorize/consent", data={**fields, "decision": "approve"}
        )
    assert response.status_code == 403 and "location" not in response.headers


def test_a_consent_post_with_another_sessions_csrf_token_is_refused(world: World) -> None:
    url = world.authorize_url(world.register())
    with browser() as mallory, browser() as victim:
        html = login_page(mallory, url)
        consent = mallory.get(
            world.base + post_login(mallory, world, html, "bob", PASSWORD).headers["location"]
        )
        forged = form_fields(consent.text, "/authorize/consent")
        victim_html = login_page(victim, url)
        victim.get(
            world.base
            + post_login(victim, world, victim_html, "alice", PASSWORD).headers["location"]
        )
        response = victim.post(
            f"{world.base}/authorize/consent", data={**forged, "decision": "approve"}
        )
    assert response.status_code == 403


def test_a_login_post_without_the_csrf_token_is_refused(world: World) -> None:
    with browser() as http:
        html = login_page(http, world.authorize_url(world.register()))
        fields = form_fields(html, "/authorize/login")
        del fields["csrf_token"]
        response = http.post(
            f"{world.base}/authorize/login",
            data={**fields, "username": "alice", "password": PASSWORD},
        )
    assert response.status_code == 403 and "set-cookie" not in response.headers


def test_a_login_post_without_the_session_cookie_is_refused(world: World) -> None:
    with browser() as http:
        html = login_page(http, world.authorize_url(world.register()))
        http.cookies.clear()
        assert post_login(http, world, html, "alice", PASSWORD).status_code == 403


def test_an_expired_pending_request_is_refused(world: World) -> None:
    with browser() as http:
        html = login_page(http, world.authorize_url(world.register()))
        world.clock.advance(601)
        response = post_login(http, world, html, "alice", PASSWORD)
    assert response.status_code == 400 and "expired" in page_text(response.text)


def test_an_altered_pending_request_is_refused(world: World) -> None:
    with browser() as http:
        html = login_page(http, world.authorize_url(world.register()))
        fields = form_fields(html, "/authorize/login")
        payload, mac = fields["request"].split(".")
        fields["request"] = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + mac
        response = http.post(
            f"{world.base}/authorize/login",
            data={**fields, "username": "alice", "password": PASSWORD},
        )
    assert response.status_code == 400


def test_login_issues_a_new_session_id(world: World) -> None:
    with browser() as http:
        html = login_page(http, world.authorize_url(world.register()))
        before = http.cookies.get("jwtmcp_session", path="/authorize")
        after = post_login(http, world, html, "alice", PASSWORD).cookies.get("jwtmcp_session")
    assert before and after and before != after


# --- login: failures and rate limits ---------------------------------------------------------


def test_unknown_user_and_wrong_password_get_the_same_answer(world: World) -> None:
    with browser() as http:
        html = login_page(http, world.authorize_url(world.register()))
        unknown = post_login(http, world, html, "nobody", "whatever")
        wrong = post_login(http, world, html, "alice", "whatever")
    assert unknown.status_code == wrong.status_code == 401
    assert page_text(unknown.text).replace("nobody", "X") == page_text(wrong.text).replace(
        "alice", "X"
    )


def test_failed_logins_are_rate_limited_per_user(tmp_path: Path) -> None:
    limits = LoginLimits(per_user=3, per_address=100, window=60)
    with make_world(tmp_path, limits=limits) as w, browser() as http:
        html = login_page(http, w.authorize_url(w.register()))
        statuses = [post_login(http, w, html, "Alice", "wrong").status_code for _ in range(3)]
        limited = post_login(http, w, html, "alice", PASSWORD)
        with browser() as other:
            other_html = login_page(other, w.authorize_url(w.register()))
            other_user = post_login(other, w, other_html, "bob", PASSWORD)
        w.clock.advance(61)
        later = post_login(http, w, html, "alice", PASSWORD)
    assert statuses == [401, 401, 401]
    assert limited.status_code == 429 and limited.headers["retry-after"] == "60"
    assert other_user.status_code == 303
    assert later.status_code == 303


def test_failed_logins_are_rate_limited_per_address(tmp_path: Path) -> None:
    limits = LoginLimits(per_user=100, per_address=3, window=60)
    with make_world(tmp_path, limits=limits) as w, browser() as http:
        html = login_page(http, w.authorize_url(w.register()))
        for name in ("u1", "u2", "u3"):
            assert post_login(http, w, html, name, "wrong").status_code == 401
        limited = post_login(http, w, html, "alice", PASSWORD)
    assert limited.status_code == 429 and "retry-after" in limited.headers


def test_successful_logins_do_not_use_up_an_addresss_failed_login_budget(tmp_path: Path) -> None:
    """Attempts are counted before the password check (so racing them gains nothing) and a
    success gives its count back: many people behind one address (a NAT, an ingress) who
    sign in correctly never lock that address out."""
    limits = LoginLimits(per_user=100, per_address=3, window=60)
    with make_world(tmp_path, limits=limits) as w, browser() as http:
        html = login_page(http, w.authorize_url(w.register()))
        assert post_login(http, w, html, "u1", "wrong").status_code == 401
        for _ in range(4):  # each a person of their own, behind the same address
            with browser() as other:
                other_html = login_page(other, w.authorize_url(w.register()))
                assert post_login(other, w, other_html, "alice", PASSWORD).status_code == 303
        assert post_login(http, w, html, "u2", "wrong").status_code == 401
        assert post_login(http, w, html, "u3", "wrong").status_code == 401
        assert post_login(http, w, html, "alice", PASSWORD).status_code == 429


def test_a_store_outage_is_a_503_with_retry_after(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SqliteStore(tmp_path / "state.db", clock=clock, busy_timeout=0.2)
    with make_world(tmp_path, store=store) as w, browser() as http:
        html = login_page(http, w.authorize_url(w.register()))
        consent = http.get(
            w.base + post_login(http, w, html, "alice", PASSWORD).headers["location"]
        )
        fields = form_fields(consent.text, "/authorize/consent")
        holder = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        try:
            response = http.post(
                f"{w.base}/authorize/consent", data={**fields, "decision": "approve"}
            )
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    assert response.status_code == 503 and response.headers["retry-after"].isdigit()
    assert "location" not in response.headers


# --- what every page sends -------------------------------------------------------------------


def test_pages_send_security_headers_and_a_strict_session_cookie(world: World) -> None:
    with browser() as http:
        page = http.get(world.authorize_url(world.register()))
        css = http.get(f"{world.base}/authorize/static/jwtmcp.css")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "style-src 'self'" in csp and "base-uri 'none'" in csp
    assert "form-action 'self' http://127.0.0.1:33418" in csp
    assert "script" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "no-store" in page.headers["cache-control"]
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/authorize" in cookie
    assert "secure" not in cookie  # the issuer is plain http on loopback
    assert "<script" not in page.text and 'href="/authorize/static/jwtmcp.css"' in page.text
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


def test_the_consent_page_lets_a_custom_scheme_redirect_through_form_action(
    world: World,
) -> None:
    cursor = "cursor://anysphere.cursor-retrieval/oauth/callback"
    with browser() as http:
        page = http.get(world.authorize_url(world.register([cursor]), redirect_uri=cursor))
    assert "form-action 'self' cursor:;" in page.headers["content-security-policy"]


def test_untrusted_names_are_escaped_on_the_pages(world: World) -> None:
    client_id = world.register(name="<b>Evil</b> & co")
    with browser() as http:
        page = http.get(world.authorize_url(client_id))
    assert "<b>Evil</b>" not in page.text and "&lt;b&gt;Evil&lt;/b&gt; &amp; co" in page.text


# --- the SDK's OAuthClientProvider ------------------------------------------------------------


def test_the_sdk_oauth_client_provider_gets_a_code_from_the_pages(tmp_path: Path) -> None:
    from jwtmcp.mcp import protected_server

    with make_world(tmp_path) as w:
        port = free_port()
        resource = f"http://127.0.0.1:{port}/mcp"
        add_user(
            tmp_path / "users.json",
            "carol",
            password=PASSWORD,
            tools=["add"],
            audiences=[resource],
            clock=w.clock,
        )
        server = protected_server("calc", issuer=w.issuer, resource=resource, clock=w.clock)

        @server.tool()
        def add(a: int, b: int) -> int:
            return a + b

        handlers = SignInHandlers(redirect_uri=REDIRECT, username="carol", password=PASSWORD)
        storage = MemoryTokenStorage()

        async def connect() -> None:
            async with sign_in_client(resource, handlers, storage) as client:
                await client.list_tools()

        with serve_app(server.streamable_http_app(), port=port):
            try:
                asyncio.run(connect())
                refused: BaseException | None = None
            except BaseException as exc:
                refused = exc
        server.jwt_verifier.close()  # type: ignore[attr-defined]
        assert storage.client_info is not None  # registered by RFC 7591 at /register
        (round_,) = handlers.rounds
        assert round_.pages == ("login", "consent") and round_.params["iss"] == w.issuer
        assert storage.tokens is not None and storage.tokens.refresh_token
        claims = json.loads(
            base64.urlsafe_b64decode(storage.tokens.access_token.split(".")[1] + "==")
        )
    assert refused is None  # the code exchange (jwtmcp.grants) gave a token the server took
    assert claims["client_id"] == storage.client_info.client_id and claims["sub"] == "carol"
    assert claims["aud"] == resource and claims["scope"] == "tool:add"


def test_a_sign_in_that_fails_says_why(world: World) -> None:
    with pytest.raises(SignInError, match="answered 401"):
        sign_in(world.authorize_url(world.register()), password="wrong")


# --- a real `jwtmcp serve` ---------------------------------------------------------------------


def test_first_serve_prints_a_demo_user_who_can_sign_in(tmp_path: Path) -> None:
    with issuer_process(tmp_path) as iss:
        out = iss.stdout()
        name = re.search(r"^\s*user name:\s*(\S+)\s*$", out, re.MULTILINE)
        password = re.search(r"^\s*user password:\s*(\S+)\s*$", out, re.MULTILINE)
        assert name and password and name.group(1) == "demo"
        answer = httpx2.post(
            f"{iss.base_url}/register", json={"redirect_uris": [REDIRECT]}, timeout=10
        )
        query = urlencode(
            {
                "response_type": "code",
                "client_id": answer.json()["client_id"],
                "redirect_uri": REDIRECT,
                "state": "s",
                "code_challenge": CHALLENGE,
                "code_challenge_method": "S256",
            }
        )
        result = asyncio.run(
            follow_sign_in(
                f"{iss.base_url}/authorize?{query}",
                redirect_uri=REDIRECT,
                username="demo",
                password=password.group(1),
            )
        )
        assert result.code and result.params["iss"] == iss.issuer
        assert result.offered_scopes == ("tool:add", "tool:subtract", "tool:multiply")
        assert (tmp_path / "users.json").exists() and (tmp_path / "jwtmcp-state.db").exists()
    with issuer_process(tmp_path) as again:
        assert "user password" not in again.stdout()


# --- a pending request is used once -----------------------------------------------------------


def consent_form(http: httpx2.Client, world: World, client_id: str) -> dict[str, Any]:
    """Signed in as alice: the fields of the consent form (ticked boxes), ready to post."""
    html = login_page(http, world.authorize_url(client_id))
    consent = http.get(
        world.base + post_login(http, world, html, "alice", PASSWORD).headers["location"]
    )
    return form_fields(consent.text, "/authorize/consent")


def stored_codes(world: World) -> int:
    with contextlib.closing(sqlite3.connect(world.directory / "state.db")) as db:
        return int(db.execute("SELECT count(*) FROM codes").fetchone()[0])


@pytest.mark.parametrize("second", ["approve", "deny"])
def test_a_consent_form_posted_twice_gives_one_code(world: World, second: str) -> None:
    with browser() as http:
        fields = consent_form(http, world, world.register())
        first = http.post(f"{world.base}/authorize/consent", data={**fields, "decision": "approve"})
        again = http.post(f"{world.base}/authorize/consent", data={**fields, "decision": second})
    assert first.status_code == 303 and "code=" in first.headers["location"]
    assert_error_page(again, "already been used")
    assert stored_codes(world) == 1


def test_a_consent_page_shown_again_for_a_used_request_gives_no_second_code(
    world: World,
) -> None:
    with browser() as http:
        fields = consent_form(http, world, world.register())
        first = http.post(f"{world.base}/authorize/consent", data={**fields, "decision": "approve"})
        world.clock.advance(1)  # the page is shown again, later
        shown = http.get(
            f"{world.base}/authorize/consent?" + urlencode({"request": fields["request"]})
        )
        refreshed = form_fields(shown.text, "/authorize/consent")
        again = http.post(
            f"{world.base}/authorize/consent", data={**refreshed, "decision": "approve"}
        )
    assert first.status_code == 303
    assert_error_page(again, "already been used")
    assert stored_codes(world) == 1


def test_a_consent_form_denied_then_approved_gives_no_code(world: World) -> None:
    with browser() as http:
        fields = consent_form(http, world, world.register())
        first = http.post(f"{world.base}/authorize/consent", data={**fields, "decision": "deny"})
        again = http.post(f"{world.base}/authorize/consent", data={**fields, "decision": "approve"})
    assert error_redirect(first)["error"] == "access_denied"
    assert_error_page(again, "already been used")
    assert stored_codes(world) == 0


# --- echoed parameters are refused, never altered ---------------------------------------------


def raw_authorize_url(world: World, client_id: str, /, **raw: str) -> str:
    """``authorize_url`` with some parameters given already percent-encoded, as sent."""
    parts = urlsplit(world.authorize_url(client_id))
    kept = [(k, v) for k, v in parse_qsl(parts.query) if k not in raw]
    return f"{world.base}/authorize?{urlencode(kept)}" + "".join(
        f"&{name}={value}" for name, value in raw.items()
    )


@pytest.mark.parametrize(
    "state",
    [
        pytest.param("%ff%fe%00%0d%0a", id="review-case"),
        pytest.param("ab%ffcd", id="invalid-utf8"),
        pytest.param("a%00b", id="nul"),
        pytest.param("a%0d%0aLocation:x", id="crlf"),
        pytest.param("a%09b", id="tab"),
        pytest.param("a%7fb", id="del"),
        pytest.param("caf%C3%A9", id="non-ascii-utf8"),
        pytest.param("x" * 2049, id="too-long"),
    ],
)
def test_a_state_outside_vschar_is_an_error_page_not_an_altered_redirect(
    world: World, state: str
) -> None:
    with browser() as http:
        response = http.get(raw_authorize_url(world, world.register(), state=state))
    assert_error_page(response, "state")


def test_a_state_of_every_vschar_comes_back_unchanged(world: World) -> None:
    state = "".join(chr(c) for c in range(0x20, 0x7F)) + "x" * 1953  # 2048 characters
    result = sign_in(world.authorize_url(world.register(), state=state))
    assert result.params["state"] == state and result.code


@pytest.mark.parametrize(
    "name", ["scope", "resource", "redirect_uri", "code_challenge", "client_id", "response_type"]
)
def test_a_parameter_that_is_not_utf8_is_an_error_page_not_replaced(
    world: World, name: str
) -> None:
    client_id = world.register()
    good = parse_qs(urlsplit(world.authorize_url(client_id)).query)[name][0]
    with browser() as http:
        response = http.get(
            raw_authorize_url(world, client_id, **{name: urlencode({"": good})[1:] + "%ff"})
        )
    assert_error_page(response, name, "UTF-8")


@pytest.mark.parametrize("name", ["scope", "resource", "redirect_uri", "code_challenge"])
def test_a_parameter_with_control_characters_is_an_error_page(world: World, name: str) -> None:
    client_id = world.register()
    good = parse_qs(urlsplit(world.authorize_url(client_id)).query)[name][0]
    with browser() as http:
        response = http.get(
            raw_authorize_url(world, client_id, **{name: urlencode({"": good})[1:] + "%0d%0a"})
        )
    assert_error_page(response, name, "control characters")


# --- failed and refused logins are logged -----------------------------------------------------

TRICKY_NAME = 'eve\n{"event": "login", "sub": "alice"}\u2028<b>'
SECRET = "hunter2-never-logged"


def sign_in_events(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``event`` from the sign-in pages, each checked to be one line."""
    found = []
    for record in caplog.records:
        if record.name != "jwtmcp.authorize":
            continue
        message = record.getMessage()
        assert "\n" not in message and "\r" not in message and "\u2028" not in message
        line = json.loads(message)
        if line["event"] == event:
            found.append(line)
    return found


def test_a_failed_login_is_logged_with_the_name_escaped_and_the_address(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jwtmcp.authorize")
    with browser() as http:
        html = login_page(http, world.authorize_url(world.register()))
        assert post_login(http, world, html, TRICKY_NAME, SECRET).status_code == 401
    (line,) = sign_in_events(caplog, "login_failed")
    assert line["user"] == TRICKY_NAME and line["address"] == "127.0.0.1"
    assert SECRET not in caplog.text


def test_unknown_user_and_wrong_password_are_logged_alike(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jwtmcp.authorize")
    with browser() as http:
        html = login_page(http, world.authorize_url(world.register()))
        post_login(http, world, html, "nobody", SECRET)
        post_login(http, world, html, "alice", SECRET)
    unknown, wrong = sign_in_events(caplog, "login_failed")
    assert (unknown["user"], wrong["user"]) == ("nobody", "alice")
    assert {**unknown, "user": "X"} == {**wrong, "user": "X"}
    assert SECRET not in caplog.text


def test_a_locked_out_login_is_logged_with_the_name_and_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jwtmcp.authorize")
    limits = LoginLimits(per_user=1, per_address=100, window=60)
    with make_world(tmp_path, limits=limits) as w, browser() as http:
        html = login_page(http, w.authorize_url(w.register()))
        post_login(http, w, html, TRICKY_NAME, "wrong")
        assert post_login(http, w, html, TRICKY_NAME, SECRET).status_code == 429
    (line,) = sign_in_events(caplog, "login_rate_limited")
    assert line["user"] == TRICKY_NAME and line["address"] == "127.0.0.1"
    assert line["limit"] == "user"
    assert SECRET not in caplog.text


# --- messages say what happened ---------------------------------------------------------------


@pytest.mark.parametrize("blob", ["abc.def", "", "x" * 40, "eyJ9.AAAA"])
def test_a_tampered_pending_request_is_called_invalid_not_expired(world: World, blob: str) -> None:
    with browser() as http:
        response = http.get(f"{world.base}/authorize/consent?" + urlencode({"request": blob}))
    assert_error_page(response, "invalid")
    assert "expired" not in page_text(response.text)


def test_an_altered_pending_request_posted_to_login_is_called_invalid(world: World) -> None:
    with browser() as http:
        html = login_page(http, world.authorize_url(world.register()))
        fields = form_fields(html, "/authorize/login")
        payload, mac = fields["request"].split(".")
        fields["request"] = payload + "." + mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB")
        response = http.post(
            f"{world.base}/authorize/login",
            data={**fields, "username": "alice", "password": PASSWORD},
        )
    assert_error_page(response, "invalid")
    assert "expired" not in page_text(response.text)


def test_an_expired_pending_request_is_still_called_expired(world: World) -> None:
    with browser() as http:
        html = login_page(http, world.authorize_url(world.register()))
        blob = form_fields(html, "/authorize/login")["request"]
        world.clock.advance(601)
        response = http.get(f"{world.base}/authorize/consent?" + urlencode({"request": blob}))
    assert_error_page(response, "expired")
    assert "invalid" not in page_text(response.text)


# --- log lines name a registered client briefly -----------------------------------------------


def logged_client_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name.startswith("jwtmcp")]
    return [line for line in lines if isinstance(line, dict) and "client_id" in line]


def test_sign_in_log_lines_name_a_registered_client_by_a_short_stable_id_and_its_name(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jwtmcp")
    client_id = world.register(name="Test App")
    with browser() as http:
        html = login_page(http, world.authorize_url(client_id))
        post_login(http, world, html, "alice", "wrong")
    sign_in(world.authorize_url(client_id))
    sign_in(world.authorize_url(client_id), decision="deny")
    short = "dcr1:" + hashlib.sha256(client_id.encode()).hexdigest()[:16]
    lines = logged_client_lines(caplog)
    assert {line["event"] for line in lines} >= {
        "login_failed",
        "login",
        "code_issued",
        "authorize_refused",
    }
    assert all(line["client_id"] == short for line in lines), lines
    assert all(line["client_name"] == "Test App" for line in lines), lines
    assert client_id not in caplog.text
