"""RFC 7591 stateless registration: the rules, the signed client_id, the HTTP endpoint on a
real loopback server, and the official SDK's own registration request and response parsing."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.client.auth.oauth2 import check_registration_usable
from mcp.client.auth.utils import create_client_registration_request, handle_registration_response
from mcp.shared.auth import OAuthClientMetadata
from pydantic import AnyUrl
from starlette.applications import Starlette
from starlette.routing import Route

from jwtmcp.errors import ConfigError, RegistrationError, UnknownClient
from jwtmcp.registration import (
    REGISTRATION_KEY_FILE,
    RegistrationPolicy,
    StatelessRegistrar,
    load_or_create_registration_key,
)
from tests.support import FakeClock, serve_app

GOOD = {"redirect_uris": ["http://127.0.0.1:33418/callback"], "client_name": "Test App"}


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    directory.mkdir(mode=0o700)
    return directory


@pytest.fixture
def registrar(keys_dir: Path, clock: FakeClock) -> StatelessRegistrar:
    return StatelessRegistrar.from_keys_dir(keys_dir, clock=clock)


def refused(registrar: StatelessRegistrar, body: object) -> str:
    with pytest.raises(RegistrationError) as info:
        registrar.issue(body)
    assert info.value.oauth_error == info.value.code
    return info.value.code


# --- the key -------------------------------------------------------------------------------


def test_key_is_created_private_on_first_use_and_reused(keys_dir: Path):
    first = load_or_create_registration_key(keys_dir)
    path = keys_dir / REGISTRATION_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_registration_key(keys_dir) == first
    assert [p.name for p in keys_dir.iterdir()] == [REGISTRATION_KEY_FILE]  # no temp left


def test_group_readable_key_is_refused(keys_dir: Path):
    load_or_create_registration_key(keys_dir)
    os.chmod(keys_dir / REGISTRATION_KEY_FILE, 0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_registration_key(keys_dir)


def test_key_file_without_a_key_is_refused(keys_dir: Path):
    path = keys_dir / REGISTRATION_KEY_FILE
    path.write_text("not a key\n")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="does not hold"):
        load_or_create_registration_key(keys_dir)


def test_missing_key_directory_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match="no key directory"):
        load_or_create_registration_key(tmp_path / "absent")


# --- accepted registrations ----------------------------------------------------------------


def test_registration_answers_per_rfc7591(registrar: StatelessRegistrar, clock: FakeClock):
    answer = registrar.issue(GOOD)
    assert answer["client_id"].startswith("dcr1.")
    assert answer["client_id_issued_at"] == int(clock.now)
    assert answer["redirect_uris"] == GOOD["redirect_uris"]
    assert answer["client_name"] == "Test App"
    assert answer["token_endpoint_auth_method"] == "none"
    assert answer["grant_types"] == ["authorization_code", "refresh_token"]
    assert answer["response_types"] == ["code"]
    assert "client_secret" not in answer


def test_client_id_carries_the_registration(registrar: StatelessRegistrar, clock: FakeClock):
    answer = registrar.issue({**GOOD, "scope": "tool:add tool:subtract"})
    client = registrar.client(answer["client_id"])
    assert client.client_id == answer["client_id"]
    assert client.redirect_uris == tuple(GOOD["redirect_uris"])
    assert client.client_name == "Test App"
    assert client.scope == "tool:add tool:subtract"
    assert client.source == "registered"
    assert client.issued_at == int(clock.now)
    assert client.is_public


def test_client_id_survives_a_new_registrar_on_the_same_key(keys_dir: Path, clock: FakeClock):
    answer = StatelessRegistrar.from_keys_dir(keys_dir, clock=clock).issue(GOOD)
    restarted = StatelessRegistrar.from_keys_dir(keys_dir, clock=clock)
    assert restarted.client(answer["client_id"]).client_name == "Test App"


@pytest.mark.parametrize(
    "uri",
    [
        "https://app.example/oauth/callback",
        "http://127.0.0.1:33418/callback",
        "http://[::1]:8080/cb",
        "http://localhost:3030/callback",
        "cursor://anysphere.cursor-retrieval/oauth/user-test/callback",
        "vscode://vscode.github-authentication/did-authenticate",
        "com.example.app:/oauth2redirect",
    ],
)
def test_redirect_uri_kinds_clients_use_are_accepted(registrar: StatelessRegistrar, uri: str):
    assert registrar.issue({"redirect_uris": [uri]})["redirect_uris"] == [uri]


def test_unknown_members_are_dropped(registrar: StatelessRegistrar):
    answer = registrar.issue(
        {
            **GOOD,
            "client_secret": "chosen-by-client",
            "client_id": "chosen-by-client",
            "logo_uri": "https://evil.example/logo.png",
            "software_statement": "x",
            "application_type": "native",
        }
    )
    assert answer["client_id"] != "chosen-by-client"
    assert not {"client_secret", "logo_uri", "software_statement", "application_type"} & set(answer)


def test_explicit_none_auth_method_is_accepted(registrar: StatelessRegistrar):
    answer = registrar.issue({**GOOD, "token_endpoint_auth_method": "none"})
    assert answer["token_endpoint_auth_method"] == "none"


# --- refused registrations -----------------------------------------------------------------

LONG_URI = "https://app.example/" + "a" * 1100


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (["not", "an", "object"], "invalid_client_metadata"),
        ({}, "invalid_redirect_uri"),
        ({"redirect_uris": []}, "invalid_redirect_uri"),
        ({"redirect_uris": "https://app.example/cb"}, "invalid_redirect_uri"),
        ({"redirect_uris": [42]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://app.example/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://app.example/cb#frag"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["javascript:alert(1)"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["data:text/html,hi"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["file:///etc/passwd"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["/relative/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://user@app.example/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https:///cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://app.example/c b"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://app.example:99999/cb"]}, "invalid_redirect_uri"),
        ({"redirect_uris": [LONG_URI]}, "invalid_redirect_uri"),
        ({"redirect_uris": [f"https://app.example/{i}" for i in range(6)]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["https://app.example/cb"] * 2}, "invalid_redirect_uri"),
        ({**GOOD, "token_endpoint_auth_method": "client_secret_basic"}, "invalid_client_metadata"),
        ({**GOOD, "token_endpoint_auth_method": "client_secret_post"}, "invalid_client_metadata"),
        ({**GOOD, "token_endpoint_auth_method": "private_key_jwt"}, "invalid_client_metadata"),
        ({**GOOD, "grant_types": ["client_credentials"]}, "invalid_client_metadata"),
        ({**GOOD, "grant_types": ["authorization_code", "implicit"]}, "invalid_client_metadata"),
        ({**GOOD, "grant_types": ["refresh_token"]}, "invalid_client_metadata"),
        ({**GOOD, "grant_types": "authorization_code"}, "invalid_client_metadata"),
        ({**GOOD, "response_types": ["token"]}, "invalid_client_metadata"),
        ({**GOOD, "response_types": []}, "invalid_client_metadata"),
        ({**GOOD, "client_name": 7}, "invalid_client_metadata"),
        ({**GOOD, "client_name": "x" * 101}, "invalid_client_metadata"),
        ({**GOOD, "client_name": "Good\u202eliveEvil"}, "invalid_client_metadata"),
        ({**GOOD, "client_name": "  "}, "invalid_client_metadata"),
        ({**GOOD, "scope": "tool:add  tool:sub"}, "invalid_client_metadata"),
        ({**GOOD, "scope": 'tool:"add"'}, "invalid_client_metadata"),
        ({**GOOD, "scope": "x" * 1001}, "invalid_client_metadata"),
    ],
)
def test_invalid_request_is_refused(registrar: StatelessRegistrar, body: object, code: str):
    assert refused(registrar, body) == code


def test_metadata_too_large_for_a_client_id_is_refused(keys_dir: Path):
    small = StatelessRegistrar.from_keys_dir(
        keys_dir, policy=RegistrationPolicy(max_metadata_bytes=300)
    )
    uris = [f"https://app.example/{'a' * 100}/{i}" for i in range(3)]
    assert refused(small, {"redirect_uris": uris}) == "invalid_client_metadata"


# --- tampering -----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def unknown(registrar: StatelessRegistrar, client_id: str) -> str:
    with pytest.raises(UnknownClient) as info:
        registrar.client(client_id)
    return info.value.oauth_error


def test_client_id_with_a_changed_redirect_uri_is_refused(registrar: StatelessRegistrar):
    client_id = registrar.issue(GOOD)["client_id"]
    prefix, payload, mac = client_id.split(".")
    data = json.loads(_unb64(payload))
    data["redirect_uris"] = ["https://attacker.example/cb"]
    forged = f"{prefix}.{_b64(json.dumps(data).encode())}.{mac}"
    assert unknown(registrar, forged) == "invalid_client"


@pytest.mark.parametrize("position", [6, 20, -5, -1])
def test_client_id_with_any_changed_character_is_refused(
    registrar: StatelessRegistrar, position: int
):
    client_id = registrar.issue(GOOD)["client_id"]
    chars = list(client_id)
    chars[position] = "z" if chars[position] != "z" else "A"  # differs in the high bits
    assert unknown(registrar, "".join(chars)) == "invalid_client"


def test_client_id_with_a_non_canonical_encoding_is_refused(registrar: StatelessRegistrar):
    # A 32-byte MAC is 43 base64url characters: the last one carries 2 unused bits. Setting
    # them gives another string that decodes to the same MAC; it must not name the client.
    client_id = registrar.issue(GOOD)["client_id"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(client_id[-1])
    twin = client_id[:-1] + alphabet[last ^ 1]
    assert _unb64(twin.rsplit(".", 1)[1]) == _unb64(client_id.rsplit(".", 1)[1])
    assert unknown(registrar, twin) == "invalid_client"


def test_client_id_from_another_key_is_refused(registrar: StatelessRegistrar, tmp_path: Path):
    other_dir = tmp_path / "other"
    other_dir.mkdir(mode=0o700)
    foreign = StatelessRegistrar.from_keys_dir(other_dir).issue(GOOD)["client_id"]
    assert unknown(registrar, foreign) == "invalid_client"


@pytest.mark.parametrize(
    "client_id",
    ["dcr1.", "dcr1..", "dcr1.e30", "dcr1.e30.", "dcr1.!!!.???", "demo", "dcr1." * 3000],
)
def test_malformed_client_id_is_refused(registrar: StatelessRegistrar, client_id: str):
    assert unknown(registrar, client_id) == "invalid_client"


def test_truncated_client_id_is_refused(registrar: StatelessRegistrar):
    client_id = registrar.issue(GOOD)["client_id"]
    assert unknown(registrar, client_id[:-3]) == "invalid_client"


# --- the endpoint, on a real server --------------------------------------------------------


@pytest.fixture
def endpoint(registrar: StatelessRegistrar) -> Iterator[str]:
    app = Starlette(routes=[Route("/register", registrar.register, methods=["POST"])])
    with serve_app(app) as base:
        yield f"{base}/register"


def post(url: str, **kwargs: Any) -> httpx2.Response:
    with httpx2.Client(timeout=10) as http:
        return http.post(url, **kwargs)


def test_endpoint_registers_with_201_and_no_store(endpoint: str, registrar: StatelessRegistrar):
    response = post(endpoint, json=GOOD)
    assert response.status_code == 201
    assert response.headers["cache-control"] == "no-store"
    assert registrar.client(response.json()["client_id"]).redirect_uris == tuple(
        GOOD["redirect_uris"]
    )


def test_endpoint_answers_rfc7591_errors(endpoint: str):
    response = post(endpoint, json={"redirect_uris": ["http://evil.example/cb"]})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_redirect_uri"


def test_endpoint_refuses_a_body_that_is_not_json_typed(endpoint: str):
    response = post(endpoint, data={"redirect_uris": "https://app.example/cb"})
    assert response.status_code == 415
    assert response.json()["error"] == "invalid_client_metadata"


def test_endpoint_refuses_malformed_json(endpoint: str):
    response = post(endpoint, content=b"{", headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()["error"]) == (400, "invalid_client_metadata")


def test_endpoint_refuses_a_declared_oversize_body(endpoint: str):
    body = json.dumps({**GOOD, "pad": "x" * 20_000}).encode()
    response = post(endpoint, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_endpoint_refuses_a_streamed_oversize_body(endpoint: str):
    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length to check up front
        yield b'{"pad": "'
        for _ in range(40):
            yield b"x" * 1024
        yield b'"}'

    response = post(endpoint, content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_endpoint_refuses_get(endpoint: str):
    with httpx2.Client(timeout=10) as http:
        assert http.get(endpoint).status_code == 405


# --- the official SDK's registration --------------------------------------------------------


async def _sdk_register(endpoint: str, metadata: OAuthClientMetadata) -> Any:
    base = endpoint.removesuffix("/register")
    request = create_client_registration_request(None, metadata, base)
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.send(request)
        return await handle_registration_response(response)


def test_sdk_registration_request_is_accepted(endpoint: str, registrar: StatelessRegistrar):
    metadata = OAuthClientMetadata(
        redirect_uris=[AnyUrl("http://localhost:3030/callback")],
        client_name="SDK client",
        scope="tool:add",
    )
    info = asyncio.run(_sdk_register(endpoint, metadata))
    check_registration_usable(info)  # the SDK's own check that it can use this registration
    assert info.token_endpoint_auth_method == "none"
    assert info.client_secret is None
    client = registrar.client(info.client_id)
    assert client.redirect_uris == tuple(str(u) for u in metadata.redirect_uris or [])
    assert client.client_name == "SDK client"


def test_sdk_registration_asking_for_a_secret_is_refused(endpoint: str):
    metadata = OAuthClientMetadata(
        redirect_uris=[AnyUrl("http://localhost:3030/callback")],
        token_endpoint_auth_method="client_secret_post",
    )
    request = create_client_registration_request(None, metadata, endpoint.removesuffix("/register"))
    with httpx2.Client(timeout=10) as http:
        response = http.send(request)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_client_metadata")


@pytest.mark.parametrize(
    "body",
    [
        b'{"redirect_uris": ["javascript:x"], "redirect_uris": ["http://localhost:1234/cb"]}',
        b'{"redirect_uris": ["http://localhost:1234/cb"], "client_name": "a", "client_name": "b"}',
        b'{"redirect_uris": ["http://localhost:1234/cb"], "dropped": {"k": 1, "k": 2}}',
    ],
)
def test_duplicate_json_members_are_invalid_client_metadata(endpoint: str, body: bytes):
    response = post(endpoint, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_client_metadata"
