"""Upstream OpenID Connect login over real HTTP, against a small misbehaving provider.

The provider is a Starlette app on loopback written here: discovery, a JWKS, an
authorization endpoint that signs the browser in at once (redirecting back with a code), and
a token endpoint that checks the client's secret and the PKCE verifier, then answers with an
ID token crafted the way the test asks (``mode``): right, or with a wrong nonce, audience,
issuer, an unknown key, ``alg`` none or HS256, expired. The issuer is the real app
(create_app) with a providers file, a policy file, a SQLite store and a fake clock that the
provider shares. The pages are followed as a browser without JavaScript would.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from jwtmcp.clients import add_client
from jwtmcp.issuer import create_app
from jwtmcp.keys import init_ring
from jwtmcp.oidc import ProvidersError, federated_subject, load_providers
from jwtmcp.store.sqlite import SqliteStore
from jwtmcp.users import add_user
from jwtmcp.verifier import Verifier
from tests.support import FakeClock, free_port, serve_app
from tests.test_authorize import CALC, CHALLENGE, OTHER, PASSWORD, REDIRECT, VERIFIER, form_fields

CLIENT_ID = "jwtmcp-at-corp"
CLIENT_SECRET = "upstream secret: with spaces & symbols"
ALICE = {
    "sub": "00u-alice",
    "email": "alice@example.com",
    "email_verified": True,
    "name": "Alice Example",
    "groups": ["eng"],
}


def _rule(match: dict[str, Any], tools: list[str], **grant: Any) -> dict[str, Any]:
    return {"match": match, "grant": {"tools": tools, "audiences": [CALC], **grant}}


POLICY = {
    "version": 1,
    "rules": {
        "eng": _rule({"source": "oidc:corp", "group": "eng"}, ["add", "subtract"], max_ttl=600),
        "staff": _rule({"source": "oidc:corp", "email_domain": "example.com"}, ["multiply"]),
    },
}


# --- the misbehaving provider ---------------------------------------------------------------


@dataclass
class FakeProvider:
    clock: FakeClock
    base: str = ""
    mode: str = "ok"
    account: dict[str, Any] = field(default_factory=lambda: dict(ALICE))
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    other_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    logins: dict[str, dict[str, str]] = field(default_factory=dict)
    token_requests: list[dict[str, Any]] = field(default_factory=list)
    discovery_fetches: int = 0

    def id_token(self, nonce: str) -> str:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.base,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
            "auth_time": now,
            **self.account,
        }
        key: Any = self.key
        headers = {"kid": "good"}
        alg = "RS256"
        if self.mode == "wrong_nonce":
            claims["nonce"] = "not-the-nonce"
        elif self.mode == "wrong_audience":
            claims["aud"] = "someone-else"
        elif self.mode == "wrong_issuer":
            claims["iss"] = "https://evil.example"
        elif self.mode == "expired":
            claims["iat"], claims["exp"] = now - 400, now - 100
        elif self.mode == "unknown_kid":
            key, headers = self.other_key, {"kid": "unknown"}
        elif self.mode == "alg_none":
            key, alg = None, "none"
        elif self.mode == "hs256":
            key, alg = CLIENT_SECRET.encode() + b"-padded-to-32-bytes!", "HS256"
        elif self.mode == "good_key_wrong_signature":
            key = self.other_key
        elif self.mode == "es256":
            key, alg = ec.generate_private_key(ec.SECP256R1()), "ES256"
        elif self.mode == "two_audiences_no_azp":
            claims["aud"] = [CLIENT_ID, "another-client"]
        elif self.mode == "foreign_azp":
            claims["azp"] = "another-client"
        elif self.mode in ("no_kid", "no_kid_two_keys"):
            headers = {}
        return jwt.encode(claims, key, algorithm=alg, headers=headers)

    def app(self) -> Starlette:
        async def discovery(request: Request) -> JSONResponse:
            self.discovery_fetches += 1
            return JSONResponse(
                {
                    "issuer": self.base,
                    "authorization_endpoint": f"{self.base}/auth",
                    "token_endpoint": f"{self.base}/token",
                    "jwks_uri": f"{self.base}/jwks",
                }
            )

        async def jwks(request: Request) -> JSONResponse:
            jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
            jwk.update(kid="good", alg="RS256", use="sig")
            keys = [jwk]
            if self.mode == "no_kid_two_keys":
                other = json.loads(RSAAlgorithm.to_jwk(self.other_key.public_key()))
                keys.append({**other, "kid": "other", "alg": "RS256", "use": "sig"})
            return JSONResponse({"keys": keys}, headers={"Cache-Control": "max-age=300"})

        async def authorize(request: Request) -> Response:
            params = dict(request.query_params)
            code = f"code-{len(self.logins)}"
            self.logins[code] = params
            query = urlencode({"code": code, "state": params["state"], "iss": self.base})
            return RedirectResponse(f"{params['redirect_uri']}?{query}", status_code=302)

        async def token(request: Request) -> Response:
            form = dict(await request.form())
            self.token_requests.append({"form": form, "auth": request.headers.get("authorization")})
            login = self.logins.get(str(form.get("code")))
            basic = base64.b64decode(request.headers["authorization"].split()[1]).decode()
            user, _, password = basic.partition(":")  # RFC 6749 §2.3.1: each part urlencoded
            if (unquote_plus(user), unquote_plus(password)) != (CLIENT_ID, CLIENT_SECRET):
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            if login is None or self.mode == "token_error":
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            verifier = str(form.get("code_verifier"))
            digest = hashlib.sha256(verifier.encode()).digest()
            challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            if challenge != login["code_challenge"]:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            return JSONResponse(
                {
                    "access_token": "opaque",
                    "token_type": "Bearer",
                    "id_token": self.id_token(login["nonce"]),
                }
            )

        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", discovery),
                Route("/jwks", jwks),
                Route("/auth", authorize),
                Route("/token", token, methods=["POST"]),
            ]
        )


@dataclass
class OidcWorld:
    base: str
    issuer: str
    store: SqliteStore
    clock: FakeClock
    provider: FakeProvider
    directory: Path
    policy_file: Path

    def register(self) -> str:
        body = {"redirect_uris": [REDIRECT], "client_name": "Test App"}
        answer = httpx2.post(f"{self.base}/register", json=body, timeout=10, trust_env=False)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["client_id"])

    def authorize_url(self, client_id: str, **overrides: str) -> str:
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": REDIRECT,
            "state": "st-1",
            "code_challenge": CHALLENGE,
            "code_challenge_method": "S256",
            "resource": CALC,
            "scope": "tool:add tool:subtract tool:multiply",
            **overrides,
        }
        return f"{self.base}/authorize?{urlencode(params)}"


def _write_providers(path: Path, provider_base: str, **extra: Any) -> None:
    corp = {
        "display_name": "Corp SSO",
        "issuer": provider_base,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scopes": ["openid", "email", "profile", "groups"],
    }
    corp.update(extra.pop("corp", {}))
    providers = {"corp": corp}
    for pid, changes in extra.pop("others", {}).items():
        providers[pid] = {**corp, **changes}
    path.write_text(json.dumps({"version": 1, "providers": providers, **extra}))


@contextlib.contextmanager
def oidc_world(
    directory: Path, *, providers: dict[str, Any] | None = None, provider_base: str | None = None
) -> Iterator[OidcWorld]:
    clock = FakeClock()
    init_ring(directory / "keys")
    add_client(directory / "clients.json", "bot", tools=["add"], audiences=[CALC])
    add_user(
        directory / "users.json",
        "bob",
        password=PASSWORD,
        tools=["add"],
        audiences=[CALC],
        clock=clock,
    )
    policy_file = directory / "policy.json"
    policy_file.write_text(json.dumps(POLICY))
    provider = FakeProvider(clock)
    store = SqliteStore(directory / "state.db", clock=clock)
    with serve_app(provider.app(), date_header=False) as provider_url:
        provider.base = provider_base or provider_url
        _write_providers(directory / "providers.json", provider.base, **(providers or {}))
        port = free_port()
        issuer = f"http://127.0.0.1:{port}"
        app = create_app(
            issuer_url=issuer,
            keys_dir=directory / "keys",
            clients_file=directory / "clients.json",
            users_file=directory / "users.json",
            store=store,
            clock=clock,
            reload_interval=0.0,
        )
        with serve_app(app, port=port) as base:
            yield OidcWorld(base, issuer, store, clock, provider, directory, policy_file)
    store.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[OidcWorld]:
    with oidc_world(tmp_path) as w:
        yield w


def http_client() -> httpx2.Client:
    return httpx2.Client(timeout=10, follow_redirects=False, trust_env=False)


def provider_link(html: str) -> str:
    match = re.search(r'<a class="provider" href="([^"]+)"', html)
    assert match, html
    return unescape(match.group(1))


def upstream_sign_in(world: OidcWorld, http: httpx2.Client, client_id: str) -> httpx2.Response:
    """From /authorize to the answer of the callback (the consent redirect or a page)."""
    page = http.get(world.authorize_url(client_id))
    assert page.status_code == 200, page.text
    to_provider = http.get(world.base + provider_link(page.text))
    assert to_provider.status_code == 303, to_provider.text
    assert to_provider.headers["location"].startswith(world.provider.base + "/auth?")
    back = http.get(to_provider.headers["location"])
    assert back.status_code == 302
    callback = back.headers["location"]
    assert callback.startswith(f"{world.issuer}/authorize/callback/corp?")
    return http.get(callback)


def consent_and_code(world: OidcWorld, http: httpx2.Client, answer: httpx2.Response) -> str:
    assert answer.status_code == 303, answer.text
    consent = http.get(world.base + answer.headers["location"])
    assert consent.status_code == 200, consent.text
    fields = form_fields(consent.text, "/authorize/consent")
    fields["decision"] = "approve"
    done = http.post(f"{world.base}/authorize/consent", data=fields)
    assert done.status_code == 303, done.text
    params = parse_qs(urlsplit(done.headers["location"]).query)
    return params["code"][0]


def redeem(world: OidcWorld, client_id: str, code: str) -> dict[str, Any]:
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
    return dict(answer.json())


def verify(world: OidcWorld, token: str) -> Any:
    with Verifier(
        issuer=world.issuer,
        audience=CALC,
        jwks_url=f"{world.base}/.well-known/jwks.json",
        clock=world.clock,
    ) as verifier:
        return verifier.verify(token)


# --- signing in -------------------------------------------------------------------------------


def test_the_login_page_offers_the_provider_beside_the_password_form(world: OidcWorld) -> None:
    with http_client() as http:
        page = http.get(world.authorize_url(world.register()))
    assert "Sign in with Corp SSO" in page.text
    assert 'action="/authorize/login"' in page.text


def test_a_group_member_gets_a_token_with_the_policy_tools_and_a_provider_scoped_sub(
    world: OidcWorld,
) -> None:
    client_id = world.register()
    with http_client() as http:
        code = consent_and_code(world, http, upstream_sign_in(world, http, client_id))
    tokens = redeem(world, client_id, code)
    claims = verify(world, tokens["access_token"])
    assert claims.subject == "oidc:corp:00u-alice" == federated_subject("corp", "00u-alice")
    assert claims.scopes == ("tool:add", "tool:subtract", "tool:multiply")
    assert (claims.claims["name"], claims.claims["email"]) == ("Alice Example", "alice@example.com")
    assert claims.expires_at - claims.issued_at <= 600  # the eng rule's max_ttl


def test_the_upstream_request_carries_pkce_state_and_nonce_and_the_secret_goes_basic(
    world: OidcWorld,
) -> None:
    with http_client() as http:
        upstream_sign_in(world, http, world.register())
    (login,) = world.provider.logins.values()
    assert login["code_challenge_method"] == "S256" and len(login["code_challenge"]) == 43
    assert len(login["state"]) >= 43 and len(login["nonce"]) >= 43
    assert login["scope"] == "openid email profile groups"
    assert login["redirect_uri"] == f"{world.issuer}/authorize/callback/corp"
    (request,) = world.provider.token_requests
    assert request["auth"].startswith("Basic ") and "client_secret" not in request["form"]


# --- ID tokens refused ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        ("wrong_nonce", "wrong_nonce"),
        ("wrong_audience", "wrong_audience"),
        ("wrong_issuer", "wrong_issuer"),
        ("unknown_kid", "unknown_kid"),
        ("alg_none", "unsupported_alg"),
        ("hs256", "unsupported_alg"),
        ("expired", "token_expired"),
        ("good_key_wrong_signature", "bad_signature"),
        ("es256", "unsupported_alg"),
        ("two_audiences_no_azp", "wrong_audience"),
        ("foreign_azp", "wrong_audience"),
        ("token_error", "token_endpoint_error"),
    ],
)
def test_a_bad_id_token_is_refused_with_a_page_naming_the_check_and_no_code(
    world: OidcWorld, mode: str, code: str
) -> None:
    world.provider.mode = mode
    client_id = world.register()
    with http_client() as http:
        answer = upstream_sign_in(world, http, client_id)
    assert answer.status_code == 502, answer.text
    assert "Sign-in was refused" in answer.text and f"({code})" in answer.text
    assert "location" not in answer.headers
    assert world.store.list_families(client_id=client_id) == ()


def test_an_id_token_without_kid_from_a_one_key_provider_is_checked_with_that_key(
    world: OidcWorld,
) -> None:
    # OpenID Connect Core 10.1: kid is required only when the provider publishes several keys.
    world.provider.mode = "no_kid"
    client_id = world.register()
    with http_client() as http:
        code = consent_and_code(world, http, upstream_sign_in(world, http, client_id))
    claims = verify(world, redeem(world, client_id, code)["access_token"])
    assert claims.subject == federated_subject("corp", "00u-alice")


def test_an_id_token_without_kid_from_a_provider_with_several_keys_is_refused(
    world: OidcWorld,
) -> None:
    world.provider.mode = "no_kid_two_keys"
    client_id = world.register()
    with http_client() as http:
        answer = upstream_sign_in(world, http, client_id)
    assert answer.status_code == 502, answer.text
    assert "(unknown_kid)" in answer.text
    assert world.store.list_families(client_id=client_id) == ()


def test_a_replayed_callback_is_refused(world: OidcWorld) -> None:
    with http_client() as http:
        page = http.get(world.authorize_url(world.register()))
        to_provider = http.get(world.base + provider_link(page.text))
        callback = http.get(to_provider.headers["location"]).headers["location"]
        cookies = dict(http.cookies)
        first = http.get(callback)
        assert first.status_code == 303
        http.cookies.clear()
        http.cookies.update(cookies)
        again = http.get(callback)
    assert again.status_code == 400 and "already answered" in again.text


def test_a_callback_with_another_state_is_refused(world: OidcWorld) -> None:
    with http_client() as http:
        page = http.get(world.authorize_url(world.register()))
        to_provider = http.get(world.base + provider_link(page.text))
        callback = http.get(to_provider.headers["location"]).headers["location"]
        forged = re.sub(r"state=[^&]+", "state=forged", callback)
        answer = http.get(forged)
    assert answer.status_code == 400 and "state" in answer.text
    assert world.provider.token_requests == []


def test_a_callback_in_another_browser_is_refused(world: OidcWorld) -> None:
    with http_client() as http:
        page = http.get(world.authorize_url(world.register()))
        to_provider = http.get(world.base + provider_link(page.text))
        callback = http.get(to_provider.headers["location"]).headers["location"]
    with http_client() as other:
        answer = other.get(callback)
    assert answer.status_code == 400 and "started in this browser" in answer.text
    assert world.provider.token_requests == []


# --- the policy decides ---------------------------------------------------------------------


def test_an_identity_no_rule_matches_gets_a_clear_refusal_page_and_no_code(
    world: OidcWorld,
) -> None:
    world.provider.account = {
        "sub": "00u-eve",
        "email": "eve@elsewhere.example",
        "email_verified": True,
        "groups": ["sales"],
    }
    client_id = world.register()
    with http_client() as http:
        answer = upstream_sign_in(world, http, client_id)
    assert answer.status_code == 403
    assert "No access" in answer.text and "eve@elsewhere.example" in answer.text
    assert "no rule" in answer.text
    assert world.store.list_families(client_id=client_id) == ()


def test_an_unverified_email_matched_by_domain_is_refused(world: OidcWorld) -> None:
    world.provider.account = {
        "sub": "00u-mallory",
        "email": "mallory@example.com",
        "email_verified": False,
        "groups": [],
    }
    with http_client() as http:
        answer = upstream_sign_in(world, http, world.register())
    assert answer.status_code == 403 and "No access" in answer.text


def test_allowed_email_domains_refuse_another_domain_before_the_policy(tmp_path: Path) -> None:
    only_corp = {"corp": {"allowed_email_domains": ["corp.example"]}}
    with oidc_world(tmp_path, providers=only_corp) as w, http_client() as http:
        answer = upstream_sign_in(w, http, w.register())
    assert answer.status_code == 403
    assert "not in a domain allowed" in answer.text


def test_a_refresh_follows_the_policy_as_it_is_at_refresh_time(world: OidcWorld) -> None:
    client_id = world.register()
    with http_client() as http:
        code = consent_and_code(world, http, upstream_sign_in(world, http, client_id))
    tokens = redeem(world, client_id, code)
    policy = json.loads(world.policy_file.read_text())
    policy["rules"]["eng"]["grant"]["tools"] = ["add"]
    world.policy_file.write_text(json.dumps(policy))
    refreshed = httpx2.post(
        f"{world.base}/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": client_id,
        },
        timeout=10,
        trust_env=False,
    )
    assert refreshed.status_code == 200, refreshed.text
    assert verify(world, refreshed.json()["access_token"]).scopes == ("tool:add", "tool:multiply")
    world.policy_file.write_text(json.dumps({"version": 1, "rules": {}}))
    denied = httpx2.post(
        f"{world.base}/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refreshed.json()["refresh_token"],
            "client_id": client_id,
        },
        timeout=10,
        trust_env=False,
    )
    assert denied.status_code == 400 and denied.json()["error"] == "invalid_grant"


def test_password_login_false_hides_the_password_form_and_refuses_it(tmp_path: Path) -> None:
    with oidc_world(tmp_path, providers={"password_login": False}) as w, http_client() as http:
        page = http.get(w.authorize_url(w.register()))
        assert "Sign in with Corp SSO" in page.text
        assert 'action="/authorize/login"' not in page.text
        csrf = re.search(r'name="request" value="([^"]+)"', page.text)
        assert csrf is None


# --- outages ------------------------------------------------------------------------------------


def test_an_unreachable_provider_gives_a_503_page_with_retry_after(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with oidc_world(tmp_path, provider_base=closed) as w, http_client() as http:
        page = http.get(w.authorize_url(w.register()))
        answer = http.get(w.base + provider_link(page.text))
    assert answer.status_code == 503
    assert int(answer.headers["retry-after"]) > 0
    assert "identity provider cannot be reached" in answer.text


# --- the providers file -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("corp", "says"),
    [
        ({"issuer": "http://idp.example.com"}, "https"),
        ({"client_secret_env": "X"}, "exactly one of client_secret"),
        ({"scopes": ["email"]}, "'openid'"),
        ({"token_endpoint_auth_method": "private_key_jwt"}, "token_endpoint_auth_method"),
        ({"colour": "red"}, "unknown field 'colour'"),
    ],
)
def test_a_bad_provider_is_refused_naming_the_provider_and_field(
    tmp_path: Path, corp: dict[str, Any], says: str
) -> None:
    path = tmp_path / "providers.json"
    _write_providers(path, "https://idp.example.com", corp=corp)
    with pytest.raises(ProvidersError) as info:
        load_providers(path)
    assert "provider 'corp'" in info.value.message and says in info.value.message


def test_a_secret_from_the_environment_or_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "providers.json"
    monkeypatch.setenv("CORP_SECRET", "from-env")
    _write_providers(path, "https://idp.example.com", corp={"client_secret": None})
    doc = json.loads(path.read_text())
    del doc["providers"]["corp"]["client_secret"]
    doc["providers"]["corp"]["client_secret_env"] = "CORP_SECRET"
    path.write_text(json.dumps(doc))
    assert load_providers(path).providers["corp"].client_secret == "from-env"
    (tmp_path / "corp.secret").write_text("from-file\n")
    del doc["providers"]["corp"]["client_secret_env"]
    doc["providers"]["corp"]["client_secret_file"] = "corp.secret"
    path.write_text(json.dumps(doc))
    provider = load_providers(path).providers["corp"]
    assert provider.client_secret == "from-file"
    assert "from-file" not in repr(provider)


def test_other_audiences_are_not_granted_by_an_unrelated_rule(world: OidcWorld) -> None:
    client_id = world.register()
    with http_client() as http:
        page = http.get(world.authorize_url(client_id, resource=OTHER))
        to_provider = http.get(world.base + provider_link(page.text))
        back = http.get(to_provider.headers["location"])
        answer = http.get(back.headers["location"])
        consent = http.get(world.base + answer.headers["location"])
    assert consent.status_code == 303
    assert "error=invalid_target" in consent.headers["location"]


# --- jwtmcp serve ---------------------------------------------------------------------------------


def test_serve_offers_the_providers_of_its_providers_flag(tmp_path: Path) -> None:
    from tests.support import issuer_process
    from tests.test_cli import run

    providers, policy = tmp_path / "idp.json", tmp_path / "rules.json"
    _write_providers(providers, "https://idp.example.com")
    policy.write_text(json.dumps(POLICY))
    args = ["--providers", str(providers), "--policy", str(policy)]
    with issuer_process(tmp_path / "run", args=args) as issuer:
        client = httpx2.post(
            f"{issuer.base_url}/register",
            json={"redirect_uris": [REDIRECT]},
            timeout=10,
            trust_env=False,
        )
        query = {
            "response_type": "code",
            "client_id": client.json()["client_id"],
            "redirect_uri": REDIRECT,
            "code_challenge": CHALLENGE,
            "code_challenge_method": "S256",
            "resource": "http://127.0.0.1:8001/mcp",
        }
        page = httpx2.get(
            f"{issuer.base_url}/authorize?{urlencode(query)}", timeout=10, trust_env=False
        )
        assert "Sign in with Corp SSO" in page.text
        assert "upstream sign-in with Corp SSO" in issuer.stdout()
    policy.write_text('{"version": 1, "rules": {"x": {}}}')
    bad = run("serve", "--port", str(free_port()), *args, cwd=tmp_path / "run")
    assert bad.code == 1 and "rule 'x'" in bad.err and "Traceback" not in bad.err


def test_the_discovery_document_is_fetched_once_for_many_sign_ins(world: OidcWorld) -> None:
    client_id = world.register()
    for _ in range(3):
        with http_client() as http:
            assert upstream_sign_in(world, http, client_id).status_code == 303
    assert world.provider.discovery_fetches == 1


def test_an_answer_delivered_to_another_providers_callback_is_refused(tmp_path: Path) -> None:
    two = {"others": {"other": {"display_name": "Other SSO"}}}
    with oidc_world(tmp_path, providers=two) as w, http_client() as http:
        page = http.get(w.authorize_url(w.register()))
        assert "Sign in with Other SSO" in page.text
        to_provider = http.get(w.base + provider_link(page.text))  # the first: Corp SSO
        callback = http.get(to_provider.headers["location"]).headers["location"]
        answer = http.get(callback.replace("/callback/corp?", "/callback/other?"))
    assert answer.status_code == 400 and "another identity provider" in answer.text
    assert w.provider.token_requests == []


def test_an_endless_answer_from_the_provider_is_read_no_further_than_the_cap(
    tmp_path: Path,
) -> None:
    sent = [0]

    async def endless(request: Request) -> StreamingResponse:
        async def body() -> Any:
            yield b'{"issuer": "'
            for _ in range(1024):  # 64 MiB at most, so the test ends whatever happens
                if await request.is_disconnected():
                    return  # the issuer hung up
                sent[0] += 65536
                yield b"x" * 65536

        return StreamingResponse(body(), media_type="application/json")

    provider = Starlette(routes=[Route("/.well-known/openid-configuration", endless)])
    with (
        serve_app(provider) as base,
        oidc_world(tmp_path, provider_base=base) as w,
        http_client() as http,
    ):
        page = http.get(w.authorize_url(w.register()))
        answer = http.get(w.base + provider_link(page.text))
    assert answer.status_code == 503
    assert sent[0] < 16 * 2**20  # cut off near the 256 KiB cap (plus socket buffers)
