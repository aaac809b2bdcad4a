"""protected_server / JwtAuthMiddleware configuration: wrong set-ups fail at start, clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp.server.auth.settings import AuthSettings

from jwtmcp.errors import ConfigError
from jwtmcp.keys import init_ring
from jwtmcp.mcp import protected_server
from jwtmcp.middleware import JwtAuthMiddleware, resource_metadata_url
from jwtmcp.verifier import Verifier

ISSUER = "https://issuer.example"
RESOURCE = "https://mcp.example/mcp"


@pytest.fixture(scope="module")
def jwks_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory: Path = tmp_path_factory.mktemp("config")
    path = directory / "jwks.json"
    path.write_text(json.dumps(init_ring(directory / "keys").jwks()))
    return str(path)


def test_metadata_url_inserts_the_well_known_path_before_the_resource_path() -> None:
    assert resource_metadata_url(RESOURCE) == (
        "https://mcp.example/.well-known/oauth-protected-resource/mcp"
    )
    assert resource_metadata_url("http://h:1/") == "http://h:1/.well-known/oauth-protected-resource"


def test_resource_must_be_an_absolute_http_url(jwks_file: str) -> None:
    with pytest.raises(ConfigError, match="absolute http"):
        protected_server("x", issuer=ISSUER, resource="/mcp", jwks_file=jwks_file)


def test_a_verifier_and_key_options_together_are_refused(jwks_file: str) -> None:
    verifier = Verifier(issuer=ISSUER, audience=RESOURCE, jwks_file=jwks_file)
    with pytest.raises(ConfigError, match="either a verifier or key-source"):
        protected_server(
            "x", issuer=ISSUER, resource=RESOURCE, verifier=verifier, jwks_file=jwks_file
        )


def test_sdk_auth_options_are_refused(jwks_file: str) -> None:
    settings = AuthSettings(
        issuer_url=ISSUER,  # type: ignore[arg-type]
        resource_server_url=RESOURCE,  # type: ignore[arg-type]
        validate_token_resource=True,
    )
    with pytest.raises(ConfigError, match="drop auth"):
        protected_server("x", issuer=ISSUER, resource=RESOURCE, jwks_file=jwks_file, auth=settings)


def test_two_key_sources_are_refused_by_the_verifier(jwks_file: str) -> None:
    with pytest.raises(ConfigError, match="exactly one key source"):
        protected_server(
            "x", issuer=ISSUER, resource=RESOURCE, jwks_file=jwks_file, jwks_url=f"{ISSUER}/j"
        )


def test_server_settings_carry_the_audience_check(jwks_file: str) -> None:
    server = protected_server("x", issuer=ISSUER, resource=RESOURCE, jwks_file=jwks_file)
    auth = server.settings.auth
    assert auth is not None
    assert str(auth.issuer_url) == ISSUER
    assert str(auth.resource_server_url) == RESOURCE
    assert auth.validate_token_resource is True


def test_middleware_refuses_a_relative_resource(jwks_file: str) -> None:
    verifier = Verifier(issuer=ISSUER, audience=RESOURCE, jwks_file=jwks_file)

    async def app(scope: object, receive: object, send: object) -> None:  # pragma: no cover
        pass

    with pytest.raises(ConfigError):
        JwtAuthMiddleware(app, verifier=verifier, resource="mcp", issuer=ISSUER)
