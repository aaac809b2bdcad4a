"""The issuer over real HTTP: a real uvicorn server on loopback and a real HTTP client."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.shared.auth import OAuthMetadata

from jwtmcp.clients import add_client, remove_client, rotate_secret
from jwtmcp.issuer import DEFAULT_RELOAD_INTERVAL, create_app
from jwtmcp.keys import KeyRing, init_ring, load_ring, revoke_key, rotate_ring
from tests.support import FakeClock, serve_app

AUD = "http://127.0.0.1:9000/mcp"
AUD2 = "https://files.example.com/mcp"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def shared_ring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ring for the tests that never change it (RSA keygen is the slow part)."""
    directory = tmp_path_factory.mktemp("ring") / "keys"
    init_ring(directory)
    return directory


class Issuer:
    """A running issuer plus the secrets of the clients made for it."""

    def __init__(self, url: str, clients_file: Path, keys_dir: Path) -> None:
        self.url = url
        self.issuer = url
        self.clients_file = clients_file
        self.keys_dir = keys_dir
        self.http = httpx2.Client(base_url=url, timeout=10)
        self.secrets: dict[str, str] = {}

    def add(self, name: str, **kwargs: Any) -> str:
        kwargs.setdefault("tools", ["add", "subtract"])
        kwargs.setdefault("audiences", [AUD])
        _, secret = add_client(self.clients_file, name, **kwargs)
        self.secrets[name] = secret
        # The running issuer notices the change within its reload interval; wait for it.
        count = len(json.loads(self.clients_file.read_text())["clients"])
        wait_for(lambda: self.http.get("/healthz").json()["client_count"] == count)
        return secret

    def token(self, name: str = "bot", *, post: bool = False, **form: Any) -> httpx2.Response:
        form.setdefault("grant_type", "client_credentials")
        if post:
            form.update(client_id=name, client_secret=self.secrets[name])
            return self.http.post("/token", data=form)
        return self.http.post("/token", data=form, auth=(name, self.secrets[name]))

    def jwks(self) -> dict[str, Any]:
        return dict(self.http.get("/.well-known/jwks.json").json())

    def decode(self, token: str, audience: str | None = AUD) -> dict[str, Any]:
        """Verify ``token`` with PyJWT against this issuer's published JWKS."""
        kid = jwt.get_unverified_header(token)["kid"]
        keys = {k["kid"]: k for k in self.jwks()["keys"]}
        key = jwt.PyJWK.from_dict(keys[kid]).key
        options = {"verify_aud": audience is not None}
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience=audience,
            issuer=self.issuer,
            options=options,  # type: ignore[arg-type]
        )
        return claims


@pytest.fixture
def make_issuer(tmp_path: Path, shared_ring: Path) -> Iterator[Callable[..., Any]]:
    """Start issuers on real uvicorn servers; each gets a fresh clients file with 'bot'."""
    stack = contextlib.ExitStack()

    def start(*, keys_dir: Path = shared_ring, with_bot: bool = True, **options: Any) -> Issuer:
        clients_file = tmp_path / f"clients-{len(stack._exit_callbacks)}.json"
        if with_bot:
            _, secret = add_client(clients_file, "bot", tools=["add", "subtract"], audiences=[AUD])
        options.setdefault("issuer_url", "http://127.0.0.1:1")
        options.setdefault("rate_limit", 0)
        # Tests that add clients wait for the reload; the "within a second" tests pass the
        # production default (DEFAULT_RELOAD_INTERVAL) explicitly.
        options.setdefault("reload_interval", 0.05)
        app = create_app(keys_dir=keys_dir, clients_file=clients_file, **options)
        url = stack.enter_context(serve_app(app))
        issuer = Issuer(url, clients_file, keys_dir)
        issuer.issuer = options["issuer_url"].rstrip("/")
        if with_bot:
            issuer.secrets["bot"] = secret
        stack.callback(issuer.http.close)
        return issuer

    with stack:
        yield start


def error_of(response: httpx2.Response) -> str:
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    return str(response.json()["error"])


def wait_for(condition: Callable[[], bool], seconds: float = 1.0) -> float:
    """Poll ``condition`` until it holds; returns how long it took (fails after ``seconds``)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > seconds:
            pytest.fail(f"condition not met within {seconds} s")
        time.sleep(0.02)
    return time.monotonic() - start


# --- client authentication -----------------------------------------------------------------


def test_client_secret_basic_gets_a_token_that_verifies(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer()
    r = iss.token()
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["pragma"] == "no-cache"
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "tool:add tool:subtract"
    claims = iss.decode(body["access_token"])
    assert claims["sub"] == "bot" and claims["client_id"] == "bot"
    assert claims["aud"] == AUD
    assert claims["exp"] - claims["iat"] == 300
    header = jwt.get_unverified_header(body["access_token"])
    assert header["typ"] == "at+jwt"
    assert header["kid"] == load_ring(iss.keys_dir).active.kid


def test_client_secret_post_gets_a_token(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer()
    r = iss.token(post=True)
    assert r.status_code == 200
    assert iss.decode(r.json()["access_token"])["client_id"] == "bot"


def test_basic_credentials_are_form_urlencoded_as_rfc6749_says(
    make_issuer: Callable[..., Issuer],
) -> None:
    iss = make_issuer()
    secret = iss.add("ci.bot-1")
    raw = f"{quote('ci.bot-1', safe='')}:{quote(secret, safe='')}"
    auth = "Basic " + base64.b64encode(raw.encode()).decode()
    r = iss.http.post(
        "/token", content=b"grant_type=client_credentials", headers={**FORM, "Authorization": auth}
    )
    assert r.status_code == 200


def test_two_authentication_methods_at_once_is_invalid_request(
    make_issuer: Callable[..., Issuer],
) -> None:
    iss = make_issuer()
    r = iss.http.post(
        "/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "bot",
            "client_secret": iss.secrets["bot"],
        },
        auth=("bot", iss.secrets["bot"]),
    )
    assert r.status_code == 400 and error_of(r) == "invalid_request"


def test_body_client_id_must_match_the_basic_one(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer()
    r = iss.token(client_id="someone-else")
    assert r.status_code == 400 and error_of(r) == "invalid_request"


def _comparable(r: httpx2.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted((k, v) for k, v in r.headers.items() if k != "date")
    return r.status_code, r.content, headers


@pytest.mark.parametrize("post", [False, True])
def test_wrong_secret_and_unknown_client_look_the_same(
    make_issuer: Callable[..., Issuer], post: bool
) -> None:
    iss = make_issuer()
    good = iss.secrets["bot"]
    iss.secrets["ghost"] = good
    iss.secrets["bot"] = good[:-1] + ("A" if good[-1] != "A" else "B")
    wrong_secret = iss.token("bot", post=post)
    unknown_client = iss.token("ghost", post=post)
    assert wrong_secret.status_code == 401
    assert error_of(wrong_secret) == "invalid_client"
    assert wrong_secret.headers["www-authenticate"].startswith("Basic realm=")
    assert _comparable(wrong_secret) == _comparable(unknown_client)


def test_no_credentials_is_invalid_client(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer()
    r = iss.http.post("/token", data={"grant_type": "client_credentials"})
    assert r.status_code == 401 and error_of(r) == "invalid_client"
    assert "www-authenticate" in r.headers


@pytest.mark.parametrize(
    "header",
    [
        "Basic",
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon-here").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
        "Basic " + base64.b64encode(b"bot:%zz").decode(),
        "Bearer abc.def.ghi",
        "Digest username=bot",
    ],
)
def test_malformed_authorization_headers_are_invalid_client(
    make_issuer: Callable[..., Issuer], header: str
) -> None:
    iss = make_issuer()
    r = iss.http.post(
        "/token",
        content=b"grant_type=client_credentials",
        headers={**FORM, "Authorization": header},
    )
    assert r.status_code == 401 and error_of(r) == "invalid_client"


# --- scope -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tools", "requested", "granted"),
    [
        (["add", "subtract"], None, "tool:add tool:subtract"),
        (["add", "subtract"], "tool:add", "tool:add"),
        (["add", "subtract"], "tool:add tool:delete", "tool:add"),  # partial grant
        (["add", "subtract"], "tool:*", "tool:add tool:subtract"),  # broader: what it may have
        (["*"], "tool:delete", "tool:delete"),
        (["read_*"], "tool:read_file tool:write_file", "tool:read_file"),
        (["read_*"], "tool:read_x*", "tool:read_x*"),
        (["add", "subtract"], "  tool:add   tool:add ", "tool:add"),
    ],
)
def test_scope_narrows_the_clients_allowance(
    make_issuer: Callable[..., Issuer], tools: list[str], requested: str | None, granted: str
) -> None:
    iss = make_issuer()
    iss.add("c", tools=tools)
    form = {} if requested is None else {"scope": requested}
    r = iss.token("c", **form)
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == granted
    assert iss.decode(r.json()["access_token"])["scope"] == granted


def test_other_scopes_are_granted_only_when_allowed(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer()
    iss.add("c", tools=["add"], scopes=["profile"])
    assert iss.token("c", scope="profile tool:add email").json()["scope"] == "profile tool:add"


def test_asking_for_nothing_allowed_is_invalid_scope(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer()
    r = iss.token(scope="tool:delete admin")
    assert r.status_code == 400 and error_of(r) == "invalid_scope"


def test_malformed_scope_is_invalid_request(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer()
    r = iss.token(scope='tool:add "quoted"')
    assert r.status_code == 400 and error_of(r) == "invalid_request"


# --- resource (RFC 8707) -----------------------------------------------------------------------


def test_resource_picks_the_audience(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer()
    iss.add("c", audiences=[AUD, AUD2])
    r = iss.token("c", resource=AUD2)
    assert r.status_code == 200
    assert iss.decode(r.json()["access_token"], audience=AUD2)["aud"] == AUD2


def test_no_resource_from_a_client_with_several_audiences_is_invalid_target_naming_them(
    make_issuer: Callable[..., Issuer],
) -> None:
    # One token for every server would let each of them replay it to the others.
    iss = make_issuer()
    iss.add("c", audiences=[AUD, AUD2])
    r = iss.token("c")
    assert r.status_code == 400 and error_of(r) == "invalid_target"
    assert AUD in r.json()["error_description"] and AUD2 in r.json()["error_description"]


def test_no_resource_from_a_client_with_one_audience_gets_that_audience_alone(
    make_issuer: Callable[..., Issuer],
) -> None:
    iss = make_issuer()
    claims = iss.decode(iss.token().json()["access_token"])
    assert claims["aud"] == AUD


def test_several_resources_in_one_request_are_invalid_target(
    make_issuer: Callable[..., Issuer],
) -> None:
    iss = make_issuer()
    iss.add("c", audiences=[AUD, AUD2, "https://third.example/mcp"])
    r = iss.token("c", resource=[AUD2, AUD])
    assert r.status_code == 400 and error_of(r) == "invalid_target"
    assert "one resource" in r.json()["error_description"]


def test_two_spellings_of_one_resource_are_one_resource(
    make_issuer: Callable[..., Issuer],
) -> None:
    iss = make_issuer()
    r = iss.token(resource=[AUD, f"{AUD}/", "HTTP://127.0.0.1:9000/mcp"])
    assert r.status_code == 200, r.text
    assert iss.decode(r.json()["access_token"])["aud"] == AUD


def test_resource_matches_case_and_trailing_slash_insensitively(
    make_issuer: Callable[..., Issuer],
) -> None:
    iss = make_issuer()
    r = iss.token(resource="HTTP://127.0.0.1:9000/mcp/")
    assert r.status_code == 200
    assert iss.decode(r.json()["access_token"])["aud"] == AUD  # as registered


@pytest.mark.parametrize(
    "resource",
    ["https://evil.example/mcp", "http://127.0.0.1:9000/other", f"{AUD}#frag", "not a url"],
)
def test_a_resource_the_client_may_not_use_is_invalid_target(
    make_issuer: Callable[..., Issuer], resource: str
) -> None:
    iss = make_issuer()
    r = iss.token(resource=resource)
    assert r.status_code == 400 and error_of(r) == "invalid_target"


def test_a_server_the_client_may_not_use_is_invalid_target_whatever_scope_it_asks_for(
    make_issuer: Callable[..., Issuer],
) -> None:
    # The SDK's OAuth client asks for the other server's tool scopes (from that server's
    # metadata): the answer must name the real reason, the resource, not the scopes.
    iss = make_issuer()
    r = iss.token(resource="https://evil.example/mcp", scope="tool:delete_everything")
    assert r.status_code == 400 and error_of(r) == "invalid_target"


def test_one_bad_resource_among_good_ones_is_invalid_target(
    make_issuer: Callable[..., Issuer],
) -> None:
    iss = make_issuer()
    r = iss.token(resource=[AUD, "https://evil.example/mcp"])
    assert r.status_code == 400 and error_of(r) == "invalid_target"


# --- grant type and parameters -------------------------------------------------------------


def test_other_grant_types_are_unsupported(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer()
    # authorization_code and refresh_token are jwtmcp.grants' (tests/test_grants.py).
    for grant in ("password", "implicit", "urn:ietf:params:oauth:grant-type:device_code"):
        r = iss.token(grant_type=grant)
        assert r.status_code == 400 and error_of(r) == "unsupported_grant_type"


def test_missing_grant_type_is_invalid_request(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer()
    r = iss.http.post("/token", data={"scope": "tool:add"}, auth=("bot", iss.secrets["bot"]))
    assert r.status_code == 400 and error_of(r) == "invalid_request"
    assert "grant_type" in r.json()["error_description"]


@pytest.mark.parametrize(
    "body",
    [
        "grant_type=client_credentials&grant_type=client_credentials",
        "grant_type=client_credentials&scope=tool:add&scope=tool:subtract",
        "grant_type=client_credentials&expires_in=60&expires_in=61",
    ],
)
def test_duplicated_parameters_are_invalid_request(
    make_issuer: Callable[..., Issuer], body: str
) -> None:
    iss = make_issuer()
    r = iss.http.post(
        "/token", content=body.encode(), headers=FORM, auth=("bot", iss.secrets["bot"])
    )
    assert r.status_code == 400 and error_of(r) == "invalid_request"
    assert "more than once" in r.json()["error_description"]


def test_duplicated_client_secret_in_the_body_is_invalid_request(
    make_issuer: Callable[..., Issuer],
) -> None:
    iss = make_issuer()
    secret = iss.secrets["bot"]
    body = f"grant_type=client_credentials&client_id=bot&client_secret={secret}&client_secret=x"
    r = iss.http.post("/token", content=body.encode(), headers=FORM)
    assert r.status_code == 400 and error_of(r) == "invalid_request"


def test_empty_parameters_count_as_absent(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer()
    r = iss.token(scope="", resource="")
    assert r.status_code == 200 and r.json()["scope"] == "tool:add tool:subtract"


# --- lifetime --------------------------------------------------------------------------------


def test_lifetime_is_the_smallest_of_requested_client_and_issuer_max(
    make_issuer: Callable[..., Issuer],
) -> None:
    iss = make_issuer(default_ttl=30)
    iss.add("capped", max_ttl=120)
    assert iss.token().json()["expires_in"] == 30  # issuer default
    assert iss.token(expires_in="60").json()["expires_in"] == 60  # requested
    assert iss.token(expires_in="999999").json()["expires_in"] == 3600  # ring maximum
    assert iss.token("capped", expires_in="600").json()["expires_in"] == 120  # client maximum
    token = iss.token("capped", expires_in="600").json()["access_token"]
    claims = iss.decode(token)
    assert claims["exp"] - claims["iat"] == 120


@pytest.mark.parametrize("value", ["abc", "-5", "0", "1.5", "99999999999"])
def test_invalid_requested_lifetime_is_invalid_request(
    make_issuer: Callable[..., Issuer], value: str
) -> None:
    iss = make_issuer()
    r = iss.token(expires_in=value)
    assert r.status_code == 400 and error_of(r) == "invalid_request"


# Digits of other scripts (superscript, Arabic-Indic, fullwidth, Devanagari), signs, spaces,
# underscores, exponents and more digits than int() will convert (4300+): all refused alike.
NOT_ASCII_DIGITS = [
    "\u00b2",
    "\u0661\u0662\u0663",
    "\uff11\uff12\uff13",
    "\u0967\u0968",
    "1\u00b2",
    "+60",
    " 60",
    "60 ",
    "1_000",
    "6e1",
    "0x3c",
    "9" * 5000,
]


@pytest.mark.parametrize("value", NOT_ASCII_DIGITS, ids=lambda v: ascii(v)[:24])
def test_expires_in_other_than_ascii_digits_is_invalid_request(
    make_issuer: Callable[..., Issuer], value: str
) -> None:
    iss = make_issuer()
    r = iss.token(expires_in=value)
    assert r.status_code == 400 and error_of(r) == "invalid_request"
    assert r.json()["error_description"] == "expires_in must be a positive number of seconds"


def test_tokens_are_stamped_with_the_injected_clock(make_issuer: Callable[..., Issuer]) -> None:
    clock = FakeClock(1_700_000_000)
    iss = make_issuer(clock=clock)
    token = iss.token().json()["access_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["iat"], claims["exp"]) == (1_700_000_000, 1_700_000_300)


# --- request bodies ----------------------------------------------------------------------------


def test_a_huge_body_is_refused_with_413(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer()
    body = b"grant_type=client_credentials&scope=" + b"a" * 100_000
    r = iss.http.post("/token", content=body, headers=FORM, auth=("bot", iss.secrets["bot"]))
    assert r.status_code == 413 and error_of(r) == "invalid_request"


def test_a_huge_chunked_body_is_refused_with_413(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer(max_body_bytes=1024)

    def chunks() -> Iterator[bytes]:
        yield b"grant_type=client_credentials&scope="
        for _ in range(10):
            yield b"a" * 512

    r = iss.http.post("/token", content=chunks(), headers=FORM, auth=("bot", iss.secrets["bot"]))
    assert r.status_code == 413


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"\xff\xfe\x00garbage", FORM["Content-Type"]),
        (b"grant_type=client_credentials&scope=%FF%FE", FORM["Content-Type"]),
        (b"grant_type", FORM["Content-Type"]),
        (b"&&&&", FORM["Content-Type"]),
        (b"a=1&" * 100, FORM["Content-Type"]),
        (b'{"grant_type": "client_credentials"}', "application/json"),
        (b"grant_type=client_credentials", "text/plain"),
        (b"grant_type=client_credentials", ""),
    ],
)
def test_garbage_bodies_are_4xx(
    make_issuer: Callable[..., Issuer], body: bytes, content_type: str
) -> None:
    iss = make_issuer()
    headers = {"Content-Type": content_type} if content_type else {}
    r = iss.http.post("/token", content=body, headers=headers, auth=("bot", iss.secrets["bot"]))
    assert r.status_code == 400 and error_of(r) == "invalid_request"


@pytest.fixture(scope="module")
def fuzz_issuer(tmp_path_factory: pytest.TempPathFactory, shared_ring: Path) -> Iterator[Issuer]:
    clients_file = tmp_path_factory.mktemp("fuzz") / "clients.json"
    _, secret = add_client(clients_file, "bot", tools=["*"], audiences=[AUD])
    app = create_app(
        issuer_url="http://127.0.0.1:1",
        keys_dir=shared_ring,
        clients_file=clients_file,
        rate_limit=0,
    )
    with serve_app(app) as url:
        iss = Issuer(url, clients_file, shared_ring)
        iss.secrets["bot"] = secret
        yield iss
        iss.http.close()


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.binary(max_size=300)
    | st.text(alphabet="=&%+;abcdegilnoprstu_:*/ \x00\xe9", max_size=120).map(str.encode),
    auth=st.one_of(
        st.none(),
        st.binary(min_size=1, max_size=40).map(lambda b: "Basic " + base64.b64encode(b).decode()),
    ),
)
def test_fuzzed_requests_never_get_a_500(
    fuzz_issuer: Issuer, body: bytes, auth: str | None
) -> None:
    headers = dict(FORM)
    if auth is not None:
        headers["Authorization"] = auth
    r = fuzz_issuer.http.post("/token", content=body, headers=headers)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.json()["error"]


def test_other_methods_on_token_are_405(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer()
    for method in ("GET", "PUT", "DELETE"):
        r = iss.http.request(method, "/token")
        assert r.status_code == 405 and r.headers["allow"] == "POST, OPTIONS"


def test_empty_token_request_is_invalid_request_naming_grant_type(
    make_issuer: Callable[..., Issuer],
) -> None:
    iss = make_issuer()
    r = iss.http.post("/token", content=b"", headers=FORM)
    assert r.status_code == 400 and error_of(r) == "invalid_request"
    assert "grant_type" in r.json()["error_description"]


def test_unknown_grant_type_is_unsupported_grant_type_before_client_authentication(
    make_issuer: Callable[..., Issuer],
) -> None:
    iss = make_issuer()
    anonymous = iss.http.post("/token", data={"grant_type": "bogus"})
    wrong_secret = iss.http.post("/token", data={"grant_type": "bogus"}, auth=("bot", "nope"))
    for r in (anonymous, wrong_secret):
        assert r.status_code == 400 and error_of(r) == "unsupported_grant_type"


# --- CORS for browser-based clients ----------------------------------------------------------

ORIGIN = "http://localhost:6274"
CORS_ENDPOINTS = [
    ("/token", "POST"),
    ("/register", "POST"),
    ("/.well-known/oauth-authorization-server", "GET"),
    ("/.well-known/jwks.json", "GET"),
]


def preflight(http: httpx2.Client, path: str, method: str) -> httpx2.Response:
    return http.options(
        path,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type, mcp-protocol-version",
        },
    )


def _listed(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",")}


@pytest.mark.parametrize(("path", "method"), CORS_ENDPOINTS)
def test_cors_preflight_is_204_for_any_origin_without_credentials(
    make_issuer: Callable[..., Issuer], path: str, method: str
) -> None:
    iss = make_issuer()
    r = preflight(iss.http, path, method)
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert method.lower() in _listed(r.headers["access-control-allow-methods"])
    assert {"authorization", "content-type", "mcp-protocol-version"} <= _listed(
        r.headers["access-control-allow-headers"]
    )
    assert int(r.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in r.headers


def test_cors_preflight_of_metadata_at_the_issuer_path(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer(issuer_url="http://127.0.0.1:1/tenant")
    r = preflight(iss.http, "/.well-known/oauth-authorization-server/tenant", "GET")
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"


def test_options_on_token_allows_post_and_options(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer()
    r = iss.http.options("/token")
    assert r.status_code == 204 and _listed(r.headers["allow"]) == {"post", "options"}


def test_token_answers_allow_any_origin_on_success_and_error(
    make_issuer: Callable[..., Issuer],
) -> None:
    iss = make_issuer()
    origin = {"Origin": ORIGIN}
    ok = iss.http.post(
        "/token",
        data={"grant_type": "client_credentials"},
        auth=("bot", iss.secrets["bot"]),
        headers=origin,
    )
    refused = iss.http.post("/token", data={"grant_type": "client_credentials"}, headers=origin)
    assert ok.status_code == 200 and refused.status_code == 401
    for r in (ok, refused):
        assert r.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in r.headers


def test_register_answers_allow_any_origin_on_success_and_error(
    make_issuer: Callable[..., Issuer],
) -> None:
    iss = make_issuer()
    origin = {"Origin": ORIGIN}
    ok = iss.http.post(
        "/register", json={"redirect_uris": ["http://localhost:1234/cb"]}, headers=origin
    )
    refused = iss.http.post("/register", json={"redirect_uris": "nope"}, headers=origin)
    assert ok.status_code == 201 and refused.status_code == 400
    for r in (ok, refused):
        assert r.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in r.headers


def test_metadata_and_jwks_allow_any_origin(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer()
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/jwks.json"):
        r = iss.http.get(path, headers={"Origin": ORIGIN})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"


def test_authorize_pages_get_no_cors(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer()
    page = iss.http.get("/authorize", headers={"Origin": ORIGIN})
    asked = preflight(iss.http, "/authorize", "POST")
    for r in (page, asked):
        assert "access-control-allow-origin" not in r.headers
    assert asked.status_code != 204


# --- rate limit ------------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after(make_issuer: Callable[..., Issuer]) -> None:
    tick = FakeClock(0.0)
    iss = make_issuer(rate_limit=0.5, rate_burst=2, rate_limit_clock=tick)
    iss.add("other")
    assert iss.token().status_code == 200
    assert iss.token().status_code == 200
    r = iss.token()
    assert r.status_code == 429
    assert r.headers["retry-after"] == "2"  # one request per 2 s
    assert error_of(r) == "slow_down"
    assert iss.token("other").status_code == 200  # buckets are per client
    tick.advance(1.0)
    assert iss.token().headers["retry-after"] == "1"
    tick.advance(1.0)
    assert iss.token().status_code == 200


def test_unauthenticated_requests_do_not_drain_a_clients_bucket(
    make_issuer: Callable[..., Issuer],
) -> None:
    iss = make_issuer(rate_limit=1, rate_burst=1, rate_limit_clock=FakeClock(0.0))
    for _ in range(5):
        bad = iss.http.post(
            "/token", data={"grant_type": "client_credentials"}, auth=("bot", "wrong")
        )
        assert bad.status_code == 401
    assert iss.token().status_code == 200


def test_rate_limit_zero_means_unlimited(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer(rate_limit=0, rate_burst=1)
    assert all(iss.token().status_code == 200 for _ in range(25))


# --- JWKS, metadata, health ------------------------------------------------------------------


def test_jwks_holds_public_keys_only_and_is_cacheable(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer()
    r = iss.http.get("/.well-known/jwks.json")
    assert r.status_code == 200
    assert r.headers["cache-control"] == "public, max-age=300"
    keys = r.json()["keys"]
    ring = load_ring(iss.keys_dir)
    assert {k["kid"] for k in keys} == {k.kid for k in ring.keys}
    for key in keys:
        assert set(key) == {"kty", "n", "e", "kid", "use", "alg"}
        assert (key["kty"], key["use"], key["alg"]) == ("RSA", "sig", "RS256")
    again = iss.http.get("/.well-known/jwks.json", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304


def test_jwks_max_age_is_configurable(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer(jwks_max_age=42)
    assert iss.http.get("/.well-known/jwks.json").headers["cache-control"] == "public, max-age=42"


def test_metadata_parses_with_the_mcp_sdk_model(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer(issuer_url="https://auth.example.com")
    iss.add("reader", tools=["read_*"])
    r = iss.http.get("/.well-known/oauth-authorization-server")
    assert r.status_code == 200
    doc = r.json()
    meta = OAuthMetadata.model_validate(doc)
    assert str(meta.issuer).rstrip("/") == "https://auth.example.com"
    assert str(meta.token_endpoint) == "https://auth.example.com/token"
    assert doc["jwks_uri"] == "https://auth.example.com/.well-known/jwks.json"
    assert meta.grant_types_supported == [
        "client_credentials",
        "authorization_code",
        "refresh_token",
        "urn:ietf:params:oauth:grant-type:token-exchange",
    ]
    assert meta.token_endpoint_auth_methods_supported == [
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "none",
    ]
    assert meta.response_types_supported == ["code"]
    assert str(meta.authorization_endpoint) == "https://auth.example.com/authorize"
    assert str(meta.registration_endpoint) == "https://auth.example.com/register"
    assert meta.code_challenge_methods_supported == ["S256"]
    assert doc["client_id_metadata_document_supported"] is True
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert meta.scopes_supported == ["tool:add", "tool:read_*", "tool:subtract"]


def test_metadata_of_an_issuer_with_a_path_is_also_at_the_rfc8414_path(
    make_issuer: Callable[..., Issuer],
) -> None:
    iss = make_issuer(issuer_url="https://example.com/auth/")
    r = iss.http.get("/.well-known/oauth-authorization-server/auth")
    assert r.status_code == 200
    assert r.json()["issuer"] == "https://example.com/auth"
    assert r.json()["token_endpoint"] == "https://example.com/auth/token"


def test_authorize_without_a_client_is_an_error_page_not_a_redirect(
    make_issuer: Callable[..., Issuer],
) -> None:
    iss = make_issuer()
    r = iss.http.get("/authorize", params={"response_type": "code"})
    assert r.status_code == 400 and "location" not in r.headers
    assert r.headers["content-type"].startswith("text/html")


def test_healthz_reports_the_active_kid(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer()
    doc = iss.http.get("/healthz").json()
    ring = load_ring(iss.keys_dir)
    assert doc["status"] == "ok"
    assert doc["active_kid"] == ring.active.kid
    assert doc["next_kid"] == (ring.next.kid if ring.next else None)
    assert doc["ring"] == "ok" and doc["clients"] == "ok"
    assert doc["client_count"] == 1


# --- live reload -----------------------------------------------------------------------------


def _kid(response: httpx2.Response) -> str:
    return str(jwt.get_unverified_header(response.json()["access_token"])["kid"])


def test_rotation_is_picked_up_within_a_second(
    make_issuer: Callable[..., Issuer], ring: KeyRing, ring_dir: Path
) -> None:
    iss = make_issuer(keys_dir=ring_dir, reload_interval=DEFAULT_RELOAD_INTERVAL)
    assert _kid(iss.token()) == ring.active.kid
    assert ring.next is not None
    former_next = ring.next.kid
    rotate_ring(ring_dir)
    took = wait_for(lambda: _kid(iss.token()) == former_next)
    assert len(iss.jwks()["keys"]) == 3
    assert took < 1.0
    assert iss.decode(iss.token().json()["access_token"])["sub"] == "bot"


def test_revocation_drops_the_key_from_the_jwks(
    make_issuer: Callable[..., Issuer], ring: KeyRing, ring_dir: Path
) -> None:
    iss = make_issuer(keys_dir=ring_dir)
    old = ring.active.kid
    revoke_key(ring_dir, old)
    wait_for(lambda: old not in {k["kid"] for k in iss.jwks()["keys"]})
    assert _kid(iss.token()) != old


def test_client_changes_are_picked_up_without_a_restart(make_issuer: Callable[..., Issuer]) -> None:
    iss = make_issuer(reload_interval=DEFAULT_RELOAD_INTERVAL)
    iss.add("late")
    wait_for(lambda: iss.token("late").status_code == 200)
    new = rotate_secret(iss.clients_file, "late")
    old = iss.secrets["late"]
    wait_for(lambda: iss.token("late").status_code == 401)
    iss.secrets["late"] = new
    assert iss.token("late").status_code == 200
    remove_client(iss.clients_file, "late")
    wait_for(lambda: iss.token("late").status_code == 401)
    assert old != new


def test_a_broken_clients_file_keeps_the_last_good_clients(
    make_issuer: Callable[..., Issuer],
) -> None:
    iss = make_issuer()
    iss.clients_file.write_text("{ not json")
    wait_for(lambda: iss.http.get("/healthz").json()["status"] == "degraded")
    assert iss.token().status_code == 200
    assert iss.http.get("/healthz").json()["clients"] == "stale"


def test_degraded_healthz_reports_states_and_logs_the_details(
    make_issuer: Callable[..., Issuer],
    ring: KeyRing,
    ring_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="jwtmcp.issuer")
    iss = make_issuer(keys_dir=ring_dir)
    add_client(iss.clients_file, "partner-acme-internal", tools=["add"], audiences=[AUD])
    doc = json.loads(iss.clients_file.read_text())
    doc["clients"]["partner-acme-internal"]["tools"] = "not a list"
    iss.clients_file.write_text(json.dumps(doc))
    (ring_dir / "ring.json").write_text("{ not json")
    wait_for(lambda: iss.http.get("/healthz").json()["clients"] == "stale")
    wait_for(lambda: iss.http.get("/healthz").json()["ring"] == "stale")
    r = iss.http.get("/healthz")
    body = r.text
    assert r.status_code == 200
    assert r.json()["status"] == "degraded"
    assert r.json()["active_kid"] == ring.active.kid
    # Nothing about the machine or the clients for an unauthenticated caller...
    for secret in (str(ring_dir), str(iss.clients_file), "ring.json", "partner-acme-internal"):
        assert secret not in body
    assert "/" not in body.replace(iss.issuer, "")
    # ... but the operator's log says what broke and where.
    logged = caplog.text
    assert str(ring_dir / "ring.json") in logged and "corrupted" in logged
    assert "partner-acme-internal" in logged


# --- access log ------------------------------------------------------------------------------


def test_access_log_names_client_scope_audience_kid_jti_but_no_secret_or_token(
    make_issuer: Callable[..., Issuer], caplog: pytest.LogCaptureFixture
) -> None:
    iss = make_issuer()
    caplog.set_level(logging.INFO, logger="jwtmcp.issuer")
    token = iss.token(scope="tool:add").json()["access_token"]
    iss.token(scope="tool:nothing")
    iss.http.post("/token", data={"grant_type": "client_credentials"}, auth=("bot", "wrong-pw"))
    swapped = (iss.secrets["bot"], "bot")  # id and secret mixed up: the secret must not be logged
    iss.http.post("/token", data={"grant_type": "client_credentials"}, auth=swapped)
    lines = [r.getMessage() for r in caplog.records if r.name == "jwtmcp.issuer"]
    issued = [json.loads(line) for line in lines if "token_issued" in line]
    assert len(issued) == 1
    claims = jwt.decode(token, options={"verify_signature": False})
    assert issued[0]["client_id"] == "bot"
    assert issued[0]["scope"] == "tool:add"
    assert issued[0]["aud"] == AUD
    assert issued[0]["kid"] == jwt.get_unverified_header(token)["kid"]
    assert issued[0]["jti"] == claims["jti"]
    refused = [json.loads(line) for line in lines if "token_refused" in line]
    assert [(r["error"], r["client_id"]) for r in refused] == [
        ("invalid_scope", "bot"),
        ("invalid_client", "bot"),
        ("invalid_client", None),
    ]
    everything = "\n".join(lines)
    assert iss.secrets["bot"] not in everything
    assert "wrong-pw" not in everything
    assert token not in everything and token.split(".")[2] not in everything


# --- the token request form --------------------------------------------------------------


def _reference_form(body: bytes) -> tuple[str, Any]:
    """What parse_form answers, defined with the standard library's parse_qsl."""
    from urllib.parse import parse_qsl

    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True,
                          errors="strict", max_num_fields=64)
    except (UnicodeDecodeError, ValueError):
        return "invalid_request", None
    params: dict[str, str] = {}
    resources: list[str] = []
    seen: set[str] = set()
    for name, value in pairs:
        if name == "resource":
            if value:
                resources.append(value)
            continue
        if name in seen and name in {"grant_type", "scope", "client_id", "client_secret",
                                     "expires_in"}:
            return "invalid_request", None
        seen.add(name)
        if value:
            params[name] = value
    return "ok", (params, tuple(dict.fromkeys(resources)))


def _parsed_form(body: bytes) -> tuple[str, Any]:
    from jwtmcp.issuer import OAuthError, parse_form

    try:
        form = parse_form(body)
    except OAuthError as exc:
        return exc.error, None
    return "ok", (form.params, form.resources)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.text(alphabet="ab=&%+2F0é ", max_size=6), max_size=70), st.booleans())
def test_the_token_form_reads_exactly_as_parse_qsl_reads_it(parts: list[str], names: bool):
    """Any body: the same parameters, or the same refusal (a field without '=', an empty
    field, too many fields, bad percent-encoding, a repeated single parameter)."""
    fields = [p if i % 7 == 6 else f"{'grant_type' if names and i % 3 == 0 else 'resource'}={p}"
              for i, p in enumerate(parts)]
    for body in ("&".join(fields).encode(), "&".join(parts).encode(), b"a=%FF", b"%FF=a",
                 b"a=%e9", b"%C3%A9+x=%2B+&resource=a%2Fb+c", b"=", b"&", b"a=b&"):
        assert _parsed_form(body) == _reference_form(body), body
