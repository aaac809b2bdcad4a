"""ClientResolver: one client_id in, one OAuthClient out, from each source (CIMD served by a
real loopback server, stateless registration, operator-configured clients)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from jwtmcp.cimd import CimdPolicy, ClientMetadataFetcher
from jwtmcp.client_metadata import OAuthClient
from jwtmcp.errors import ClientMetadataError, ConfigError, UnknownClient
from jwtmcp.registration import StatelessRegistrar
from jwtmcp.resolver import ClientResolver
from tests.support import FakeClock, serve_app

FILE_CLIENT = OAuthClient(
    client_id="desktop-app", redirect_uris=("http://127.0.0.1/cb",), source="file"
)


@pytest.fixture
def cimd_base() -> Iterator[str]:
    async def doc(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "client_id": str(request.url),
                "client_name": "Served Client",
                "redirect_uris": ["http://127.0.0.1:9/cb"],
            }
        )

    with serve_app(Starlette(routes=[Route("/client.json", doc)])) as base:
        yield base


@pytest.fixture
def registrar(tmp_path: Path, clock: FakeClock) -> StatelessRegistrar:
    keys = tmp_path / "keys"
    keys.mkdir(mode=0o700)
    return StatelessRegistrar.from_keys_dir(keys, clock=clock)


@pytest.fixture
def resolver(registrar: StatelessRegistrar, clock: FakeClock) -> ClientResolver:
    fetcher = ClientMetadataFetcher(
        policy=CimdPolicy(timeout=5.0), clock=clock, allow_loopback_for_development=True
    )
    return ClientResolver(
        metadata_documents=fetcher, registrar=registrar, clients={"desktop-app": FILE_CLIENT}
    )


def resolve(resolver: ClientResolver, client_id: str) -> OAuthClient:
    return asyncio.run(resolver.resolve(client_id))


def test_metadata_document_url_resolves_by_cimd(resolver: ClientResolver, cimd_base: str):
    client = resolve(resolver, f"{cimd_base}/client.json")
    assert (client.source, client.client_name) == ("cimd", "Served Client")


def test_registered_id_resolves_by_its_signature(
    resolver: ClientResolver, registrar: StatelessRegistrar
):
    client_id = registrar.issue({"redirect_uris": ["https://app.example/cb"]})["client_id"]
    client = resolve(resolver, client_id)
    assert (client.source, client.redirect_uris) == ("registered", ("https://app.example/cb",))


def test_configured_client_resolves_from_the_file(resolver: ClientResolver):
    assert resolve(resolver, "desktop-app") is FILE_CLIENT


@pytest.mark.parametrize("client_id", ["", "nobody", "dcr1.e30.AAAA", "x" * 10_000])
def test_unknown_client_id_is_refused(resolver: ClientResolver, client_id: str):
    with pytest.raises(UnknownClient) as info:
        resolve(resolver, client_id)
    assert info.value.oauth_error == "invalid_client"


def test_metadata_url_is_refused_when_cimd_is_off(registrar: StatelessRegistrar):
    resolver = ClientResolver(registrar=registrar)
    assert not resolver.supports_metadata_documents
    with pytest.raises(UnknownClient):
        resolve(resolver, "https://client.example/client.json")


def test_registered_id_is_refused_when_registration_is_off(registrar: StatelessRegistrar):
    client_id = registrar.issue({"redirect_uris": ["https://app.example/cb"]})["client_id"]
    resolver = ClientResolver()
    assert not resolver.supports_registration
    with pytest.raises(UnknownClient):
        resolve(resolver, client_id)


def test_metadata_refusals_reach_the_caller(resolver: ClientResolver):
    with pytest.raises(ClientMetadataError) as info:
        resolve(resolver, "https://10.0.0.1/client.json")
    assert info.value.code == "cimd_address_refused"


def test_configured_client_under_another_id_is_a_config_error():
    with pytest.raises(ConfigError):
        ClientResolver(clients={"other": FILE_CLIENT})
