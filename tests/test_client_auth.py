"""private_key_jwt client authentication at /token (RFC 7523 §2.2, RFC 7521 §4.2).

A real issuer (uvicorn on loopback), a real protected MCP server, the SDK's own
``PrivateKeyJWTOAuthProvider`` unchanged, and a real JWKS server for a ``jwks_uri`` client.
Refusals are hand-made assertions POSTed to /token.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import Client
from mcp.client.auth.extensions.client_credentials import (
    PrivateKeyJWTOAuthProvider,
    SignedJWTParameters,
)
from mcp.client.streamable_http import streamable_http_client

from jwtmcp.client_auth import CLIENT_ASSERTION_TYPE, ClientKeys
from jwtmcp.clients import add_client, load_clients
from jwtmcp.errors import ConfigError
from jwtmcp.issuer import create_app
from jwtmcp.keys import init_ring, rsa_kid, rsa_public_jwk_members
from jwtmcp.mcp import protected_server
from tests.jwks_support import JwksServer, b64url, hs256, segment
from tests.mcp_support import MemoryStorage, run, serve_protected
from tests.support import FakeClock, free_port, run_cli, serve_app


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_jwks(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    public = key.public_key()
    jwk: dict[str, Any] = rsa_public_jwk_members(public)
    jwk.update(kid=rsa_kid(public), use="sig")
    return {"keys": [jwk]}


@dataclass
class World:
    issuer: str
    resource: str
    clock: FakeClock
    signer_key: rsa.RSAPrivateKey
    remote_key: rsa.RSAPrivateKey
    jwks_server: JwksServer
    directory: Path

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"

    def assertion(
        self,
        client_id: str = "signer",
        *,
        key: rsa.RSAPrivateKey | None = None,
        headers: dict[str, Any] | None = None,
        algorithm: str = "RS256",
        **overrides: Any,
    ) -> str:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": client_id,
            "sub": client_id,
            "aud": self.issuer,
            "iat": now,
            "exp": now + 300,
            "jti": str(uuid.uuid4()),
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        signing = pem(key or self.signer_key)
        return jwt.encode(claims, signing, algorithm=algorithm, headers=headers)

    def post(self, assertion: str, **extra: str) -> httpx2.Response:
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": assertion,
            "resource": self.resource,
            **extra,
        }
        return httpx2.post(self.token_url, data=form, timeout=10)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("client-auth")
    init_ring(directory / "keys")
    port, mcp_port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{port}"
    resource = f"http://127.0.0.1:{mcp_port}/mcp"
    signer_key, remote_key = new_key(), new_key()
    clients = directory / "clients.json"
    add_client(clients, "signer", tools=["add"], audiences=[resource], jwks=public_jwks(signer_key))
    add_client(clients, "secretive", tools=["add"], audiences=[resource])
    jwks_server = JwksServer(public_jwks(remote_key))
    clock = FakeClock(time.time())
    with jwks_server.running() as jwks_url:
        add_client(clients, "remote", tools=["add"], audiences=[resource], jwks_uri=jwks_url)
        app = create_app(
            issuer_url=issuer,
            keys_dir=directory / "keys",
            clients_file=clients,
            store=directory / "state.db",
            clock=clock,
            allow_loopback_http_jwks=True,
        )
        with serve_app(app, port=port):  # first: see serve_protected
            server = protected_server("math", issuer=issuer, resource=resource)

            @server.tool()
            def add(a: float, b: float) -> float:
                return a + b

            with serve_protected(server, port=mcp_port):
                yield World(issuer, resource, clock, signer_key, remote_key, jwks_server, directory)


def refused(answer: httpx2.Response, error: str = "invalid_client", status: int = 401) -> str:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error"] == error, body
    return str(body["error_description"])


# --- the SDK's provider, unchanged (acceptance 2) ----------------------------------------


def sdk_add(world: World, client_id: str, key: rsa.RSAPrivateKey) -> tuple[Any, MemoryStorage]:
    world.clock.now = time.time()  # the SDK signs with the real clock
    storage = MemoryStorage()
    provider = PrivateKeyJWTOAuthProvider(
        server_url=world.resource,
        storage=storage,
        client_id=client_id,
        assertion_provider=SignedJWTParameters(
            issuer=client_id, subject=client_id, signing_key=pem(key)
        ).create_assertion_provider(),
        issuer=world.issuer,
    )

    async def go() -> Any:
        http = httpx2.AsyncClient(auth=provider, timeout=10)
        async with Client(
            streamable_http_client(world.resource, http_client=http), read_timeout_seconds=10
        ) as client:
            result = await client.call_tool("add", {"a": 20, "b": 22})
            return result.structured_content

    return run(go), storage


def test_sdk_private_key_jwt_provider_with_inline_jwks_gets_a_token_and_calls_add(
    world: World,
) -> None:
    result, storage = sdk_add(world, "signer", world.signer_key)
    assert result == {"result": 42}
    assert storage.tokens is not None and storage.tokens.scope == "tool:add"


def test_sdk_private_key_jwt_provider_with_a_jwks_uri_client_gets_a_token_and_calls_add(
    world: World,
) -> None:
    result, _ = sdk_add(world, "remote", world.remote_key)
    assert result == {"result": 42}
    assert world.jwks_server.fetches >= 1


def test_metadata_lists_private_key_jwt_and_its_signing_algorithms(world: World) -> None:
    doc = httpx2.get(f"{world.issuer}/.well-known/oauth-authorization-server", timeout=10).json()
    assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
    assert doc["token_endpoint_auth_signing_alg_values_supported"] == ["RS256", "PS256"]


def test_an_assertion_signed_with_ps256_is_accepted(world: World) -> None:
    answer = world.post(world.assertion(algorithm="PS256"))
    assert answer.status_code == 200, answer.text
    claims = jwt.decode(answer.json()["access_token"], options={"verify_signature": False})
    assert claims["client_id"] == "signer" and claims["sub"] == "signer"


# --- refusals: each invalid_client (401) naming the check ---------------------------------


def test_a_replayed_client_assertion_is_refused_by_its_jti(world: World) -> None:
    assertion = world.assertion()
    assert world.post(assertion).status_code == 200
    assert "used before" in refused(world.post(assertion))


def test_an_expired_client_assertion_is_refused(world: World) -> None:
    now = int(world.clock())
    assertion = world.assertion(iat=now - 400, exp=now - 100)
    assert "expired" in refused(world.post(assertion))


def test_a_client_assertion_valid_for_more_than_5_minutes_is_refused(world: World) -> None:
    assertion = world.assertion(exp=int(world.clock()) + 3600)
    assert "more than 300 s" in refused(world.post(assertion))


def test_a_client_assertion_without_exp_is_refused(world: World) -> None:
    assert "no exp" in refused(world.post(world.assertion(exp=None)))


def test_a_client_assertion_without_jti_is_refused(world: World) -> None:
    assert "no jti" in refused(world.post(world.assertion(jti=None)))


def test_a_client_assertion_issued_in_the_future_is_refused(world: World) -> None:
    assertion = world.assertion(iat=int(world.clock()) + 120)
    assert "future" in refused(world.post(assertion))


def test_an_unsigned_alg_none_client_assertion_is_refused(world: World) -> None:
    now = int(world.clock())
    body = {"iss": "signer", "sub": "signer", "aud": world.issuer, "exp": now + 60, "jti": "n1"}
    assertion = f"{segment({'alg': 'none'})}.{segment(body)}."
    assert "not a signed JWT" in refused(world.post(assertion))
    signed_none = f"{segment({'alg': 'none'})}.{segment(body)}.{b64url(b'x')}"
    assert "'none' is not accepted" in refused(world.post(signed_none))


def test_an_hs256_client_assertion_keyed_with_the_public_key_is_refused(world: World) -> None:
    now = int(world.clock())
    body = {"iss": "signer", "sub": "signer", "aud": world.issuer, "exp": now + 60, "jti": "h1"}
    public_pem = world.signer_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assertion = hs256(public_pem, {"alg": "HS256", "typ": "JWT"}, body)
    assert "'HS256' is not accepted" in refused(world.post(assertion))


def test_a_client_assertion_signed_by_an_unregistered_key_is_refused(world: World) -> None:
    intruder = new_key()
    assertion = world.assertion(key=intruder)
    assert "signature does not verify" in refused(world.post(assertion))
    kid = rsa_kid(intruder.public_key())
    assert "not one registered" in refused(
        world.post(world.assertion(key=intruder, headers={"kid": kid}))
    )


def test_a_client_assertion_whose_jku_header_points_elsewhere_is_refused(world: World) -> None:
    intruder = new_key()
    assertion = world.assertion(
        key=intruder, headers={"jku": world.jwks_server.url.replace("/jwks", "/attacker")}
    )
    assert "names a key (jku)" in refused(world.post(assertion))
    assert world.jwks_server.attacker_hits == 0


def test_a_client_assertion_carrying_its_own_jwk_header_is_refused(world: World) -> None:
    intruder = new_key()
    jwk = rsa_public_jwk_members(intruder.public_key())
    assertion = world.assertion(key=intruder, headers={"jwk": jwk})
    assert "names a key (jwk)" in refused(world.post(assertion))


def test_a_client_assertion_for_the_token_endpoint_audience_is_refused(world: World) -> None:
    assertion = world.assertion(aud=world.token_url)
    assert "aud must be this issuer's identifier" in refused(world.post(assertion))


def test_a_client_assertion_for_another_audience_among_ours_is_refused(world: World) -> None:
    assertion = world.assertion(aud=[world.issuer, "https://other.example"])
    assert "aud must be this issuer's identifier" in refused(world.post(assertion))


def test_a_client_assertion_whose_sub_is_not_its_iss_is_refused(world: World) -> None:
    assertion = world.assertion(sub="someone-else")
    assert "iss and sub" in refused(world.post(assertion))


def test_a_client_assertion_for_a_secret_client_is_refused_like_an_unknown_one(
    world: World,
) -> None:
    secret_client = refused(world.post(world.assertion("secretive")))
    unknown = refused(world.post(world.assertion("nobody")))
    assert secret_client == unknown
    assert "no client registered for private_key_jwt" in unknown


def test_a_client_id_parameter_other_than_the_assertion_iss_is_refused(world: World) -> None:
    answer = world.post(world.assertion(), client_id="remote")
    assert "client_id parameter" in refused(answer)


def test_an_assertion_with_a_client_secret_too_is_invalid_request(world: World) -> None:
    answer = world.post(world.assertion(), client_secret="x")
    refused(answer, "invalid_request", 400)


def test_an_unknown_client_assertion_type_is_refused(world: World) -> None:
    answer = world.post(world.assertion(), client_assertion_type="urn:example:saml")
    assert "unsupported client_assertion_type" in refused(answer)


def test_a_jwks_uri_client_whose_keys_cannot_be_fetched_gets_503_with_retry_after(
    world: World,
) -> None:
    key = new_key()
    with JwksServer(public_jwks(key)).running() as url:
        add_client(
            world.directory / "clients.json",
            "flaky",
            tools=["add"],
            audiences=[world.resource],
            jwks_uri=url,
        )
    # The JWKS server has stopped: its port refuses connections now.
    deadline = time.monotonic() + 10
    while True:
        answer = world.post(world.assertion("flaky", key=key))
        if answer.status_code != 401 or time.monotonic() > deadline:
            break  # 401 only until the issuer notices the new client (reload interval)
    refused(answer, "temporarily_unavailable", 503)
    assert int(answer.headers["retry-after"]) >= 1


def test_a_client_assertion_when_the_store_is_down_gets_503_with_retry_after(
    tmp_path: Path,
) -> None:
    init_ring(tmp_path / "keys")
    key = new_key()
    clients = tmp_path / "clients.json"
    add_client(
        clients,
        "signer",
        tools=["add"],
        audiences=["http://127.0.0.1:1/mcp"],
        jwks=public_jwks(key),
    )
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's directory should be")
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    app = create_app(
        issuer_url=issuer,
        keys_dir=tmp_path / "keys",
        clients_file=clients,
        store=blocker / "state.db",
    )
    now = int(time.time())
    claims = {"iss": "signer", "sub": "signer", "aud": issuer, "exp": now + 60, "jti": "s1"}
    assertion = jwt.encode(claims, pem(key), algorithm="RS256")
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    with serve_app(app, port=port):
        answer = httpx2.post(f"{issuer}/token", data=form, timeout=10)
    refused(answer, "temporarily_unavailable", 503)
    assert int(answer.headers["retry-after"]) >= 1


def test_a_plain_http_jwks_uri_is_not_fetched_outside_development_mode() -> None:
    client = load_clients_with_uri("http://127.0.0.1:9/jwks")
    with pytest.raises(ConfigError, match="not https"):
        ClientKeys(allow_loopback_http=False).for_client(client)


def load_clients_with_uri(url: str) -> Any:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clients.json"
        add_client(path, "c", tools=["add"], audiences=["https://a.example/mcp"], jwks_uri=url)
        return load_clients(path).get("c")


# --- the clients file and CLI --------------------------------------------------------------


def test_clients_add_with_a_pem_public_key_registers_a_secretless_client(tmp_path: Path) -> None:
    key = new_key()
    key_file = tmp_path / "client.pub.pem"
    key_file.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    clients = tmp_path / "clients.json"
    code, out, err = run_cli(
        "clients",
        "add",
        "bot",
        "--tools",
        "add",
        "--audience",
        "https://a.example/mcp",
        "--jwks-file",
        str(key_file),
        "--clients",
        str(clients),
    )
    assert code == 0, err
    assert "private_key_jwt (no secret)" in out
    entry = json.loads(clients.read_text())["clients"]["bot"]
    assert "secret_hash" not in entry
    assert entry["jwks"]["keys"][0]["kid"]
    code, _, err = run_cli("clients", "rotate-secret", "bot", "--clients", str(clients))
    assert code != 0 and "private_key_jwt" in err
    code, out, _ = run_cli("clients", "list", "--clients", str(clients))
    assert code == 0 and "keys       private_key_jwt, registered JWKS" in out


def test_clients_add_refuses_a_plain_http_jwks_uri_off_loopback(tmp_path: Path) -> None:
    code, _, err = run_cli(
        "clients",
        "add",
        "bot",
        "--tools",
        "add",
        "--audience",
        "https://a.example/mcp",
        "--jwks-uri",
        "http://keys.example/jwks",
        "--clients",
        str(tmp_path / "clients.json"),
    )
    assert code != 0 and "must use https" in err


def test_a_clients_file_entry_with_a_secret_and_keys_is_refused(tmp_path: Path) -> None:
    clients = tmp_path / "clients.json"
    add_client(clients, "both", tools=["add"], audiences=["https://a.example/mcp"])
    doc = json.loads(clients.read_text())
    doc["clients"]["both"]["jwks"] = public_jwks(new_key())
    clients.write_text(json.dumps(doc))
    with pytest.raises(Exception, match="not secret_hash and jwks"):
        load_clients(clients)


@pytest.mark.parametrize("stray", ["!", "+", "/", "="])
def test_a_client_assertion_whose_header_is_not_strict_base64url_is_refused_naming_it(
    world: World, stray: str
) -> None:
    header, payload, signature = world.assertion().split(".")
    mangled = f"{header[:4]}{stray}{header[4:]}.{payload}.{signature}"
    assert "header is not valid base64url" in refused(world.post(mangled))


def test_a_private_key_jwt_client_cannot_authenticate_with_any_secret(world: World) -> None:
    for secret in ("", "x", "hmac-sha256"):
        answer = httpx2.post(
            world.token_url,
            data={"grant_type": "client_credentials", "resource": world.resource},
            auth=("signer", secret),
            timeout=10,
        )
        refused(answer)
