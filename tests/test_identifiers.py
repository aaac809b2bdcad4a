"""One identifier, compared one way: issuer and resource URLs at every entry point.

Every place an issuer or resource URL enters jwtmcp (``jwtmcp serve``, ``jwtmcp mint``,
``jwtmcp verify``, ``clients add``, ``$JWTMCP_ISSUER``, the clients file, ``mint()``,
``Verifier``, ``protected_server``, ``JwtAuthMiddleware``) accepts the same spellings of
one identifier (a trailing ``/``, upper-case scheme or host, an explicit default port, a
percent-encoded unreserved character) and refuses the same malformed ones. Tokens, RFC 8414
metadata and RFC 9728 metadata carry the one canonical form.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from jwtmcp import JwtMcpError, Verifier, mint
from jwtmcp.clients import add_client, list_clients
from jwtmcp.issuer import create_app
from jwtmcp.keys import KeyRing
from jwtmcp.mcp import protected_server
from jwtmcp.middleware import JwtAuthMiddleware
from jwtmcp.tokens import build_claims, sign
from tests.support import FakeClock, free_port, issuer_process, run_cli, serve_app

DEMO_AUD = "http://127.0.0.1:8001/mcp"
GOOD_ISSUER = "https://auth.example.com"
GOOD_RESOURCE = "https://mcp.example.com/mcp"

# --- helpers -------------------------------------------------------------------------------


def unverified_claims(token: str) -> dict[str, Any]:
    import jwt

    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


@pytest.fixture(autouse=True)
def _no_jwtmcp_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("JWTMCP_"):
            monkeypatch.delenv(name)


@pytest.fixture
def jwks_file(ring: KeyRing, tmp_path: Path) -> str:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(ring.jwks()))
    return str(path)


@pytest.fixture
def start_issuer(
    ring: KeyRing, ring_dir: Path, tmp_path: Path, clock: FakeClock
) -> Iterator[Callable[..., tuple[str, str]]]:
    """Start the real issuer app on loopback with one client ``bot``: (base URL, secret)."""
    stack = contextlib.ExitStack()

    def start(*, issuer_url: str, audiences: list[str]) -> tuple[str, str]:
        clients_file = tmp_path / f"clients-{len(stack._exit_callbacks)}.json"
        _, secret = add_client(clients_file, "bot", tools=["add"], audiences=audiences)
        app = create_app(
            issuer_url=issuer_url,
            keys_dir=ring_dir,
            clients_file=clients_file,
            clock=clock,
            rate_limit=0,
        )
        return stack.enter_context(serve_app(app)), secret

    with stack:
        yield start


def token_from(url: str, secret: str, **form: str) -> httpx2.Response:
    form.setdefault("grant_type", "client_credentials")
    return httpx2.post(f"{url}/token", data=form, auth=("bot", secret), timeout=10)


async def call_add(url: str, token: str) -> Any:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=10)
    async with Client(streamable_http_client(url, http_client=http)) as client:
        result = await client.call_tool("add", {"a": 2, "b": 3})
        assert not result.is_error, result
        return result.structured_content["result"]  # type: ignore[index]


# --- the faults as reported -------------------------------------------------------------------


def test_serve_mint_and_protected_server_agree_on_an_issuer_spelled_with_a_trailing_slash(
    tmp_path: Path,
) -> None:
    port, mcp_port = free_port(), free_port()
    spelled = f"http://127.0.0.1:{port}/"
    with issuer_process(tmp_path, port=port, issuer=spelled) as issuer:
        answer = httpx2.post(
            issuer.token_url,
            data={"grant_type": "client_credentials", "resource": DEMO_AUD},
            auth=(str(issuer.client_id), str(issuer.client_secret)),
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        code, minted, err = run_cli(
            "mint", "--keys", str(issuer.keys_dir), "--sub", "alice", "--tools", "add",
            "--aud", DEMO_AUD, "--issuer", spelled,
        )  # fmt: skip
        assert code == 0, err
        server = protected_server(
            "math", issuer=spelled, resource=DEMO_AUD, jwks_url=issuer.jwks_url
        )

        @server.tool()
        def add(a: float, b: float) -> float:
            return a + b

        with serve_app(server.streamable_http_app(), port=mcp_port) as base:
            for token in (answer.json()["access_token"], minted.strip()):
                assert asyncio.run(call_add(f"{base}/mcp", token)) == 5
        server.jwt_verifier.close()  # type: ignore[attr-defined]


def test_a_client_registered_for_mcp_slash_that_asks_for_mcp_gets_a_token_for_mcp(
    start_issuer: Callable[..., tuple[str, str]], jwks_file: str, clock: FakeClock
) -> None:
    url, secret = start_issuer(issuer_url=GOOD_ISSUER, audiences=["http://127.0.0.1:8001/mcp/"])
    answer = token_from(url, secret, resource="http://127.0.0.1:8001/mcp")
    assert answer.status_code == 200, answer.text
    verifier = Verifier(issuer=GOOD_ISSUER, audience=DEMO_AUD, jwks_file=jwks_file, clock=clock)
    assert verifier.verify(answer.json()["access_token"]).audience == (DEMO_AUD,)


def test_protected_resource_metadata_names_the_issuer_as_the_issuer_names_itself(
    start_issuer: Callable[..., tuple[str, str]], jwks_file: str
) -> None:
    spelled = "HTTP://127.0.0.1:8000/"
    url, _ = start_issuer(issuer_url=spelled, audiences=[DEMO_AUD])
    issuer_metadata = httpx2.get(f"{url}/.well-known/oauth-authorization-server").json()
    server = protected_server(
        "x", issuer=spelled, resource="HTTP://LOCALHOST:80/mcp/", jwks_file=jwks_file
    )
    with serve_app(server.streamable_http_app()) as base:
        prm = httpx2.get(f"{base}/.well-known/oauth-protected-resource/mcp").json()
    assert issuer_metadata["issuer"] == "http://127.0.0.1:8000"
    assert prm["authorization_servers"] == [issuer_metadata["issuer"]]
    assert prm["resource"] == "http://localhost/mcp"


def test_issuer_metadata_and_tokens_carry_the_canonical_issuer(
    start_issuer: Callable[..., tuple[str, str]],
) -> None:
    url, secret = start_issuer(issuer_url="HTTPS://Auth.Example.COM:443/", audiences=[DEMO_AUD])
    metadata = httpx2.get(f"{url}/.well-known/oauth-authorization-server").json()
    token = token_from(url, secret, resource=DEMO_AUD).json()["access_token"]
    assert metadata["issuer"] == GOOD_ISSUER
    assert metadata["token_endpoint"] == f"{GOOD_ISSUER}/token"
    assert unverified_claims(token)["iss"] == GOOD_ISSUER


# --- every entry point writes the canonical form ---------------------------------------------


def test_minted_tokens_carry_canonical_identifiers_from_the_command_line(
    ring_dir: Path, ring: KeyRing
) -> None:
    code, out, err = run_cli(
        "mint", "--keys", str(ring_dir), "--sub", "alice", "--tools", "add",
        "--issuer", "HTTPS://Auth.Example.com:443/", "--aud", "HTTP://127.0.0.1:80/mcp/",
    )  # fmt: skip
    assert code == 0, err
    claims = unverified_claims(out.strip())
    assert (claims["iss"], claims["aud"]) == (GOOD_ISSUER, "http://127.0.0.1/mcp")


def test_minted_tokens_carry_the_canonical_issuer_from_the_environment(
    ring_dir: Path, ring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JWTMCP_ISSUER", "http://127.0.0.1:8000/")
    code, out, err = run_cli(
        "mint", "--keys", str(ring_dir), "--sub", "alice", "--tools", "add", "--aud", DEMO_AUD
    )
    assert code == 0, err
    assert unverified_claims(out.strip())["iss"] == "http://127.0.0.1:8000"


def test_mint_in_python_writes_canonical_identifiers(ring: KeyRing) -> None:
    token = mint(
        ring.active.signing_key,
        issuer="https://AUTH.example.com/",
        subject="alice",
        audience=["https://mcp.example.com:443/mcp/", "https://MCP.example.com/other"],
        tools=["add"],
    )
    claims = unverified_claims(token)
    assert claims["iss"] == GOOD_ISSUER
    assert claims["aud"] == [GOOD_RESOURCE, "https://mcp.example.com/other"]


def test_clients_add_stores_the_canonical_audience(tmp_path: Path) -> None:
    where = tmp_path / "clients.json"
    code, _, err = run_cli(
        "clients", "add", "bot", "--tools", "add", "--aud", "HTTP://127.0.0.1:80/mcp/",
        "--clients", str(where),
    )  # fmt: skip
    assert code == 0, err
    assert list_clients(where)[0].audiences == ("http://127.0.0.1/mcp",)


def test_a_hand_written_clients_file_is_read_in_canonical_form(tmp_path: Path) -> None:
    where = tmp_path / "clients.json"
    add_client(where, "bot", tools=["add"], audiences=[DEMO_AUD])
    doc = json.loads(where.read_text())
    doc["clients"]["bot"]["audiences"] = ["HTTP://127.0.0.1:8001/mcp/", DEMO_AUD]
    where.write_text(json.dumps(doc))
    assert list_clients(where)[0].audiences == (DEMO_AUD,)


# --- the verifier compares one way ---------------------------------------------------------------

ISSUER_SPELLINGS = [
    "https://auth.example.com/",
    "HTTPS://AUTH.EXAMPLE.COM",
    "https://auth.example.com:443",
    "https://Auth.Example.Com:0443/",
]
RESOURCE_SPELLINGS = [
    "https://mcp.example.com/mcp/",
    "https://MCP.example.com/mcp",
    "HTTPS://mcp.example.com:443/mcp",
    "https://mcp.example.com/%6Dcp",
    "https://mcp.example.com/%6dcp/",
]


@pytest.mark.parametrize("issuer", ISSUER_SPELLINGS)
@pytest.mark.parametrize("audience", RESOURCE_SPELLINGS)
def test_the_verifier_accepts_its_identifiers_in_any_spelling(
    ring: KeyRing, jwks_file: str, clock: FakeClock, issuer: str, audience: str
) -> None:
    claims = build_claims(
        issuer=GOOD_ISSUER, subject="alice", audience=GOOD_RESOURCE, tools=["add"], now=clock()
    )
    token = sign(claims, ring.active.signing_key)
    verifier = Verifier(issuer=issuer, audience=audience, jwks_file=jwks_file, clock=clock)
    assert verifier.verify(token).subject == "alice"


@pytest.mark.parametrize("configured", [GOOD_ISSUER, f"{GOOD_ISSUER}/"])
def test_a_token_whose_iss_ends_in_a_slash_verifies_however_the_issuer_is_configured(
    ring: KeyRing, jwks_file: str, clock: FakeClock, configured: str
) -> None:
    # Other issuers (Auth0, for one) put the trailing slash into iss; the same identifier.
    claims = build_claims(
        issuer=GOOD_ISSUER, subject="alice", audience=GOOD_RESOURCE, tools=["add"], now=clock()
    )
    claims["iss"] = f"{GOOD_ISSUER}/"
    claims["aud"] = ["https://other.example.com/mcp", f"{GOOD_RESOURCE}/"]
    token = sign(claims, ring.active.signing_key)
    verifier = Verifier(issuer=configured, audience=GOOD_RESOURCE, jwks_file=jwks_file, clock=clock)
    assert verifier.verify(token).subject == "alice"


@pytest.mark.parametrize(
    ("issuer", "audience"),
    [
        ("https://auth.example.com/other", GOOD_RESOURCE),
        ("https://auth.example.com:8443", GOOD_RESOURCE),
        ("http://auth.example.com", GOOD_RESOURCE),
        (GOOD_ISSUER, "https://mcp.example.com/MCP"),
        (GOOD_ISSUER, "https://mcp.example.com/mcp?tenant=a"),
        (GOOD_ISSUER, "https://mcp.example.com/mcp/x"),
    ],
)
def test_other_identifiers_stay_other(
    ring: KeyRing, jwks_file: str, clock: FakeClock, issuer: str, audience: str
) -> None:
    claims = build_claims(
        issuer=GOOD_ISSUER, subject="alice", audience=GOOD_RESOURCE, tools=["add"], now=clock()
    )
    token = sign(claims, ring.active.signing_key)
    verifier = Verifier(issuer=issuer, audience=audience, jwks_file=jwks_file, clock=clock)
    with pytest.raises(JwtMcpError) as refused:
        verifier.verify(token)
    assert refused.value.code in ("wrong_issuer", "wrong_audience")


# --- malformed identifiers are refused at every entry point ----------------------------------

BAD_ANYWHERE = {
    "scheme": "ftp://h.example.com/x",
    "no-scheme": "h.example.com/x",
    "userinfo": "https://user:pw@h.example.com/x",
    "fragment": "https://h.example.com/x#part",
    "empty-fragment": "https://h.example.com/x#",
    "no-host": "https:///x",
    "port": "https://h.example.com:99999/x",
    "space": "https://h.example.com/a b",
    "dot-segment": "https://h.example.com/a/../x",
    "bad-escape": "https://h.example.com/%zz",
    "non-ascii": "https://h.example.com/caf\u00e9",
    # one trailing '/' is dropped; '//' ends in an empty segment, another path (RFC 3986 §6.2)
    "double-slash-end": "https://h.example.com/x//",
    "double-slash-root": "https://h.example.com//",
}
BAD_ISSUERS = {**BAD_ANYWHERE, "query": "https://h.example.com/?tenant=1"}


def _issuer_entry_points(jwks_file: str, ring: KeyRing, tmp_path: Path) -> dict[str, Any]:
    clients_file = tmp_path / "clients.json"
    if not clients_file.exists():
        add_client(clients_file, "bot", tools=["add"], audiences=[GOOD_RESOURCE])
    return {
        "Verifier": lambda bad: Verifier(issuer=bad, audience=GOOD_RESOURCE, jwks_file=jwks_file),
        "mint": lambda bad: mint(
            ring.active.signing_key, issuer=bad, subject="a", audience=GOOD_RESOURCE
        ),
        "protected_server": lambda bad: protected_server(
            "x", issuer=bad, resource=GOOD_RESOURCE, jwks_file=jwks_file
        ),
        "JwtAuthMiddleware": lambda bad: JwtAuthMiddleware(
            _app,
            verifier=Verifier(issuer=GOOD_ISSUER, audience=GOOD_RESOURCE, jwks_file=jwks_file),
            resource=GOOD_RESOURCE,
            issuer=bad,
        ),
        "create_app": lambda bad: create_app(
            issuer_url=bad, keys_dir=ring.directory, clients_file=clients_file
        ),
    }


def _resource_entry_points(jwks_file: str, ring: KeyRing, tmp_path: Path) -> dict[str, Any]:
    return {
        "Verifier": lambda bad: Verifier(issuer=GOOD_ISSUER, audience=bad, jwks_file=jwks_file),
        "mint": lambda bad: mint(
            ring.active.signing_key, issuer=GOOD_ISSUER, subject="a", audience=bad
        ),
        "protected_server": lambda bad: protected_server(
            "x", issuer=GOOD_ISSUER, resource=bad, jwks_file=jwks_file
        ),
        "JwtAuthMiddleware": lambda bad: JwtAuthMiddleware(
            _app,
            verifier=Verifier(issuer=GOOD_ISSUER, audience=GOOD_RESOURCE, jwks_file=jwks_file),
            resource=bad,
            issuer=GOOD_ISSUER,
        ),
        "add_client": lambda bad: add_client(
            tmp_path / "other-clients.json", "bot", tools=["add"], audiences=[bad]
        ),
    }


async def _app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    pass


@pytest.mark.parametrize(
    "entry", ["Verifier", "mint", "protected_server", "JwtAuthMiddleware", "create_app"]
)
@pytest.mark.parametrize("bad", list(BAD_ISSUERS.values()), ids=list(BAD_ISSUERS))
def test_a_malformed_issuer_is_refused_clearly(
    ring: KeyRing, jwks_file: str, tmp_path: Path, entry: str, bad: str
) -> None:
    build = _issuer_entry_points(jwks_file, ring, tmp_path)[entry]
    with pytest.raises(JwtMcpError, match=r"invalid issuer URL") as refused:
        build(bad)
    assert repr(bad) in refused.value.message


@pytest.mark.parametrize(
    "entry", ["Verifier", "mint", "protected_server", "JwtAuthMiddleware", "add_client"]
)
@pytest.mark.parametrize("bad", list(BAD_ANYWHERE.values()), ids=list(BAD_ANYWHERE))
def test_a_malformed_resource_is_refused_clearly(
    ring: KeyRing, jwks_file: str, tmp_path: Path, entry: str, bad: str
) -> None:
    build = _resource_entry_points(jwks_file, ring, tmp_path)[entry]
    with pytest.raises(JwtMcpError, match=r"invalid resource URL") as refused:
        build(bad)
    assert repr(bad) in refused.value.message


@pytest.mark.parametrize(
    "args",
    [
        ["mint", "--sub", "a", "--tools", "add", "--aud", GOOD_RESOURCE, "--issuer", "{bad}"],
        ["mint", "--sub", "a", "--tools", "add", "--aud", "{bad}"],
        ["verify", "x.y.z", "--jwks", "{jwks}", "--aud", GOOD_RESOURCE, "--iss", "{bad}"],
        ["verify", "x.y.z", "--jwks", "{jwks}", "--aud", "{bad}"],
        ["clients", "add", "bot", "--tools", "add", "--aud", "{bad}"],
        ["serve", "--issuer", "{bad}"],
    ],
    ids=lambda a: " ".join(x for x in a if x.startswith("-")),
)
def test_the_command_line_refuses_a_malformed_identifier_in_one_line(
    ring_dir: Path, ring: KeyRing, jwks_file: str, tmp_path: Path, args: list[str]
) -> None:
    bad = BAD_ANYWHERE["userinfo"]
    filled = [a.format(bad=bad, jwks=jwks_file) for a in args]
    keys = ["--keys", str(ring_dir)] if args[0] in ("mint", "serve") else []
    clients = ["--clients", str(tmp_path / "c.json")] if args[0] in ("clients", "serve") else []
    with socket.socket() as busy:
        # serve must refuse before it listens; were it to get that far, a busy port stops it.
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = ["--port", str(busy.getsockname()[1])] if args[0] == "serve" else []
        code, out, err = run_cli(*filled, *keys, *clients, *port)
    assert code == 1, (out, err)
    assert err.startswith("jwtmcp: error: invalid ") and err.count("\n") == 1, err
    assert "user:pw" in err and "Traceback" not in err


# --- the property: every accepted spelling works end to end --------------------------------


@st.composite
def _spelling(draw: st.DrawFn, scheme: str, host: str, port: int | None, path: str) -> str:
    """One way to write ``scheme://host[:port]path`` that names the same identifier."""
    scheme = draw(st.sampled_from([scheme, scheme.upper(), scheme.capitalize()]))
    host = draw(st.sampled_from([host, host.upper(), host.title()]))
    default = 80 if scheme.lower() == "http" else 443
    zeros = draw(st.sampled_from(["", "0", "00"]))  # leading zeros: the same port number
    written = port or draw(st.sampled_from([None, default]))
    authority = host + (f":{zeros}{written}" if written else "")
    spelled = []
    for char in path:
        if char.isalpha() and draw(st.booleans()):
            code = f"{ord(char):02x}"
            spelled.append("%" + draw(st.sampled_from([code, code.upper()])))
        else:
            spelled.append(char)
    slashes = draw(st.sampled_from(["", "/"]))
    return f"{scheme}://{authority}{''.join(spelled)}{slashes}"


@st.composite
def _identifier(draw: st.DrawFn, paths: list[str]) -> tuple[str, list[str]]:
    """A canonical identifier and four spellings of it."""
    scheme = draw(st.sampled_from(["http", "https"]))
    host = draw(st.sampled_from(["127.0.0.1", "localhost", "auth.example.com", "[::1]"]))
    port = draw(st.sampled_from([None, 8000]))
    path = draw(st.sampled_from(paths))
    canonical = f"{scheme}://{host}{f':{port}' if port else ''}{path}"
    return canonical, [draw(_spelling(scheme, host, port, path)) for _ in range(4)]


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    issuer=_identifier(["", "/tenant"]),
    resource=_identifier(["", "/mcp", "/team/mcp"]),
)
def test_every_accepted_spelling_verifies_tokens_from_token_and_from_mint(
    ring: KeyRing,
    ring_dir: Path,
    jwks_file: str,
    tmp_path_factory: pytest.TempPathFactory,
    issuer: tuple[str, list[str]],
    resource: tuple[str, list[str]],
) -> None:
    (iss, iss_spelled), (aud, aud_spelled) = issuer, resource
    clock = FakeClock()
    clients_file = tmp_path_factory.mktemp("spellings") / "clients.json"
    _, secret = add_client(clients_file, "bot", tools=["add"], audiences=[aud_spelled[0]])
    app = create_app(
        issuer_url=iss_spelled[0],
        keys_dir=ring_dir,
        clients_file=clients_file,
        clock=clock,
        rate_limit=0,
    )
    with serve_app(app) as url:
        answer = token_from(url, secret, resource=aud_spelled[1])
    assert answer.status_code == 200, answer.text
    code, minted, err = run_cli(
        "mint", "--keys", str(ring_dir), "--sub", "bot", "--tools", "add",
        "--issuer", iss_spelled[0], "--aud", aud_spelled[2], clock=clock,
    )  # fmt: skip
    assert code == 0, err
    for verifier_issuer, verifier_audience in (
        (iss_spelled[0], aud_spelled[0]),
        (iss_spelled[3], aud_spelled[3]),
    ):
        verifier = Verifier(
            issuer=verifier_issuer, audience=verifier_audience, jwks_file=jwks_file, clock=clock
        )
        for token in (answer.json()["access_token"], minted.strip()):
            claims = verifier.verify(token)
            assert (claims.issuer, claims.audience) == (iss, (aud,))


# --- the canonical form itself ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelled", "canonical"),
    [
        ("HTTPS://Auth.Example.COM:443/", "https://auth.example.com"),
        ("http://127.0.0.1:80/", "http://127.0.0.1"),
        ("http://127.0.0.1:018800/mcp", "http://127.0.0.1:18800/mcp"),
        ("https://m.example:0000443/mcp", "https://m.example/mcp"),
        ("https://m.example/a//b/", "https://m.example/a//b"),
        ("http://127.0.0.1:08000/", "http://127.0.0.1:8000"),
        ("http://[0:0:0:0:0:0:0:1]:8000/mcp/", "http://[::1]:8000/mcp"),
        ("https://m.example/%7euser/%2fx/%c3%a9", "https://m.example/~user/%2Fx/%C3%A9"),
        ("https://m.example/mcp/?tenant=a", "https://m.example/mcp?tenant=a"),
        ("https://m.example/mcp?", "https://m.example/mcp"),
        ("https://m.example:/mcp", "https://m.example/mcp"),
    ],
)
def test_the_canonical_form_of_a_resource(spelled: str, canonical: str) -> None:
    from jwtmcp import canonical_resource

    assert canonical_resource(spelled) == canonical
    assert canonical_resource(canonical) == canonical


def test_an_issuer_is_canonical_like_a_resource_but_without_a_query() -> None:
    from jwtmcp import canonical_issuer

    assert canonical_issuer("HTTP://LOCALHOST:80/tenant/") == "http://localhost/tenant"
    with pytest.raises(JwtMcpError, match="an issuer has none"):
        canonical_issuer("http://localhost/?")


@pytest.mark.parametrize(
    ("spelled", "canonical"),
    [
        ("http://127.0.0.1:018800", "http://127.0.0.1:18800"),
        ("http://127.0.0.1:08001/mcp/", "http://127.0.0.1:8001/mcp"),
        ("http://127.0.0.1:00080/", "http://127.0.0.1"),
    ],
)
@pytest.mark.parametrize("kind", ["issuer", "resource"])
def test_a_port_with_leading_zeros_is_the_same_port_for_issuers_and_resources(
    kind: str, spelled: str, canonical: str
) -> None:
    from jwtmcp import canonical_issuer, canonical_resource

    canonical_of = canonical_issuer if kind == "issuer" else canonical_resource
    assert canonical_of(spelled) == canonical


@pytest.mark.parametrize("spelled", ["http://127.0.0.1:18800//", "http://127.0.0.1:8001/mcp//"])
@pytest.mark.parametrize("kind", ["issuer", "resource"])
def test_a_path_ending_in_two_slashes_is_refused_for_issuers_and_resources(
    kind: str, spelled: str
) -> None:
    from jwtmcp import canonical_issuer, canonical_resource

    canonical_of = canonical_issuer if kind == "issuer" else canonical_resource
    with pytest.raises(JwtMcpError, match="ends in '//'"):
        canonical_of(spelled)


def test_the_metadata_url_of_a_resource_keeps_its_query_after_the_path() -> None:
    from jwtmcp.middleware import resource_metadata_url

    assert resource_metadata_url("HTTPS://M.example:443/mcp/?tenant=a") == (
        "https://m.example/.well-known/oauth-protected-resource/mcp?tenant=a"
    )


_URL_CHARS = st.sampled_from(list("hHtTpPsS:/[]@?#%.-_~0123456789aAfF!$&'()*+,;= \u00e9\t\"\\<>"))


@settings(max_examples=400, deadline=None)
@given(
    text=st.one_of(
        st.text(_URL_CHARS, max_size=40),
        st.builds(lambda tail: "http://" + tail, st.text(_URL_CHARS, max_size=30)),
        st.builds(lambda tail: "HTTPS://h.example" + tail, st.text(_URL_CHARS, max_size=30)),
    )
)
def test_any_text_is_refused_clearly_or_has_one_stable_canonical_form(text: str) -> None:
    from jwtmcp import ConfigError, canonical_resource
    from jwtmcp.identifiers import canonical_or_none

    untrusted = canonical_or_none(text, "resource")  # the /token and token-claim path
    try:
        canonical = canonical_resource(text)
    except ConfigError as exc:
        assert untrusted is None
        assert exc.message.startswith(("invalid resource URL", "an audience"))
        return
    assert untrusted == canonical
    assert canonical_resource(canonical) == canonical
    # Safe inside an RFC 9110 quoted-string (the challenge's resource_metadata) as it is.
    assert not any(c in canonical for c in '"\\<> ')


# --- the remembered canonical forms (the token endpoint's hot path) ----------------------


def test_remembered_canonical_forms_stay_within_their_bound() -> None:
    from jwtmcp import identifiers

    identifiers._canonical_cached.cache_clear()
    bound = identifiers._canonical_cached.cache_info().maxsize
    assert bound is not None
    for n in range(bound + 50):
        assert identifiers.canonical_resource(f"https://mcp.example.com/s{n}/") == (
            f"https://mcp.example.com/s{n}"
        )
    assert identifiers._canonical_cached.cache_info().currsize == bound


def test_a_malformed_url_is_refused_again_after_being_refused_once() -> None:
    from jwtmcp import identifiers

    for _ in range(2):
        with pytest.raises(JwtMcpError, match="invalid resource URL"):
            identifiers.canonical_resource("https://mcp.example.com/a b")
