"""Client ID Metadata Documents, fetched from real servers on loopback (uvicorn).

The development switch ``allow_loopback_for_development`` lets the fetcher reach those
servers; separate tests prove loopback (and every private or special address) is refused
without it, before any connection is made. Time comes from a FakeClock.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from jwtmcp.cimd import (
    CimdPolicy,
    ClientMetadataFetcher,
    address_refusal,
    check_client_id_url,
    client_from_document,
)
from jwtmcp.errors import ClientMetadataError, ClientMetadataUnavailable
from tests.support import FakeClock, serve_app
from tests.tls_support import make_certificates, serve_tls

LIMIT = 4096
TIMEOUT = 0.5


class DocServer:
    """A loopback server of metadata documents; counts requests per path."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.base = ""
        self.max_age = "120"
        self.broken = False
        self.hosts: list[str] = []

    def doc(self, path: str, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "client_id": f"{self.base}{path}",
            "client_name": "Test Client",
            "redirect_uris": ["http://127.0.0.1:33418/callback", "cursor://test/cb"],
        }
        body.update(extra)
        return body

    def app(self) -> Starlette:
        async def count(request: Request) -> None:
            path = request.url.path
            self.hits[path] = self.hits.get(path, 0) + 1
            self.hosts.append(request.headers.get("host", ""))

        async def good(request: Request) -> Response:
            await count(request)
            if self.broken:
                return JSONResponse({"error": "down"}, status_code=503)
            return JSONResponse(
                self.doc(request.url.path),
                headers={"Cache-Control": f"public, max-age={self.max_age}"},
            )

        async def other(request: Request) -> Response:
            await count(request)
            return JSONResponse(self.doc(request.url.path, client_id=f"{self.base}/good"))

        async def big_declared(request: Request) -> Response:
            await count(request)
            padding = "x" * (LIMIT * 2)
            return JSONResponse(self.doc(request.url.path, client_name=padding))

        async def secret(request: Request) -> Response:
            await count(request)
            method = request.query_params.get("method", "client_secret_post")
            path = f"{request.url.path}?{request.url.query}"
            return JSONResponse(self.doc(path, token_endpoint_auth_method=method))

        async def text(request: Request) -> Response:
            await count(request)
            return PlainTextResponse(json.dumps(self.doc(request.url.path)))

        async def not_json(request: Request) -> Response:
            await count(request)
            return Response(b'{"client_id": ', media_type="application/json")

        async def duplicate(request: Request) -> Response:
            # Two redirect_uris members: a parser that keeps the last one sees a good document.
            await count(request)
            good = json.dumps(self.doc(request.url.path))
            body = '{"redirect_uris": ["http://evil.example/cb"], ' + good[1:]
            return Response(body.encode(), media_type="application/json")

        async def bad_redirect(request: Request) -> Response:
            await count(request)
            return JSONResponse(
                self.doc(request.url.path, redirect_uris=["http://evil.example/cb"])
            )

        async def elsewhere(request: Request) -> Response:
            await count(request)
            return RedirectResponse("https://other.example/client.json", status_code=302)

        async def same_host(request: Request) -> Response:
            await count(request)
            return RedirectResponse(f"{self.base}/good", status_code=301)

        async def missing(request: Request) -> Response:
            await count(request)
            return JSONResponse({"error": "not found"}, status_code=404)

        routes = [
            Route("/good", good),
            Route("/good2", good),
            Route("/good3", good),
            Route("/other", other),
            Route("/big-declared", big_declared),
            Route("/secret", secret),
            Route("/text", text),
            Route("/not-json", not_json),
            Route("/duplicate", duplicate),
            Route("/bad-redirect", bad_redirect),
            Route("/elsewhere", elsewhere),
            Route("/same-host", same_host),
            Route("/missing", missing),
        ]
        starlette = Starlette(routes=routes)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            path = scope.get("path", "")
            if scope["type"] == "http" and path == "/big-streamed":
                await self._streamed(scope, receive, send)
            elif scope["type"] == "http" and path == "/silent":
                await self._silent(scope, receive, send)
            elif scope["type"] == "http" and path == "/trickle":
                await self._trickle(scope, receive, send)
            else:
                await starlette(scope, receive, send)

        return app  # type: ignore[return-value]

    def _count(self, path: str) -> None:
        self.hits[path] = self.hits.get(path, 0) + 1

    async def _streamed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A chunked answer with no Content-Length that grows past the limit."""
        self._count(scope["path"])
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        chunk = b" " * 1024
        for _ in range(LIMIT * 4 // len(chunk)):  # bounded: 4x the limit at most
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    async def _silent(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Never answers; returns as soon as the client goes away."""
        self._count(scope["path"])
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _trickle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answers at once, then sends one body byte every 50 ms until the client leaves."""
        self._count(scope["path"])
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for _ in range(400):  # bounded: 20 s at most even if the disconnect went unseen
            if gone.is_set():
                break
            await send({"type": "http.response.body", "body": b" ", "more_body": True})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gone.wait(), 0.05)
        watcher.cancel()


@pytest.fixture
def docs() -> Iterator[DocServer]:
    server = DocServer()
    with serve_app(server.app()) as base:
        server.base = base
        yield server


def fetcher(clock: FakeClock, **policy: Any) -> ClientMetadataFetcher:
    policy.setdefault("max_body_bytes", LIMIT)
    policy.setdefault("timeout", TIMEOUT)
    return ClientMetadataFetcher(
        policy=CimdPolicy(**policy), clock=clock, allow_loopback_for_development=True
    )


def refusal(fetch: ClientMetadataFetcher, client_id: str) -> ClientMetadataError:
    with pytest.raises(ClientMetadataError) as info:
        asyncio.run(fetch.fetch(client_id))
    return info.value


# --- good documents ------------------------------------------------------------------------


def test_good_document_gives_its_client(docs: DocServer, clock: FakeClock):
    client = asyncio.run(fetcher(clock).fetch(f"{docs.base}/good"))
    assert client.client_id == f"{docs.base}/good"
    assert client.client_name == "Test Client"
    assert client.redirect_uris == ("http://127.0.0.1:33418/callback", "cursor://test/cb")
    assert client.source == "cimd"
    assert client.is_public


def test_request_carries_the_url_host_header(docs: DocServer, clock: FakeClock):
    asyncio.run(fetcher(clock).fetch(f"{docs.base}/good"))
    assert docs.hosts == [docs.base.removeprefix("http://")]


# --- refused answers -----------------------------------------------------------------------


def test_document_naming_another_client_id_is_refused(docs: DocServer, clock: FakeClock):
    error = refusal(fetcher(clock), f"{docs.base}/other")
    assert (error.code, error.oauth_error) == ("cimd_client_id_mismatch", "invalid_client")


def test_declared_oversize_document_is_refused(docs: DocServer, clock: FakeClock):
    assert refusal(fetcher(clock), f"{docs.base}/big-declared").code == "cimd_too_large"


def test_streamed_oversize_document_is_refused(docs: DocServer, clock: FakeClock):
    assert refusal(fetcher(clock), f"{docs.base}/big-streamed").code == "cimd_too_large"


def test_silent_server_times_out_within_the_bound(docs: DocServer, clock: FakeClock):
    started = time.monotonic()
    with pytest.raises(ClientMetadataUnavailable) as info:
        asyncio.run(fetcher(clock).fetch(f"{docs.base}/silent"))
    assert info.value.code == "cimd_timeout"
    assert info.value.oauth_error == "temporarily_unavailable"
    assert time.monotonic() - started < 10  # a generous bound: the timeout is 0.5 s


def test_trickling_body_is_cut_by_the_total_deadline(docs: DocServer, clock: FakeClock):
    # Each byte arrives well within any read timeout; only a deadline for the whole fetch
    # stops this.
    started = time.monotonic()
    with pytest.raises(ClientMetadataUnavailable) as info:
        asyncio.run(fetcher(clock).fetch(f"{docs.base}/trickle"))
    assert info.value.code == "cimd_timeout"
    assert time.monotonic() - started < 10


def test_redirect_to_another_host_is_not_followed(docs: DocServer, clock: FakeClock):
    assert refusal(fetcher(clock), f"{docs.base}/elsewhere").code == "cimd_redirect"


def test_redirect_to_the_same_host_is_not_followed(docs: DocServer, clock: FakeClock):
    assert refusal(fetcher(clock), f"{docs.base}/same-host").code == "cimd_redirect"
    assert "/good" not in docs.hits


def test_document_not_served_as_json_is_refused(docs: DocServer, clock: FakeClock):
    assert refusal(fetcher(clock), f"{docs.base}/text").code == "cimd_not_json"


def test_malformed_json_is_refused(docs: DocServer, clock: FakeClock):
    assert refusal(fetcher(clock), f"{docs.base}/not-json").code == "cimd_not_json"


def test_document_with_duplicate_members_is_refused(docs: DocServer, clock: FakeClock):
    assert refusal(fetcher(clock), f"{docs.base}/duplicate").code == "cimd_not_json"


def test_not_found_is_refused(docs: DocServer, clock: FakeClock):
    error = refusal(fetcher(clock), f"{docs.base}/missing")
    assert (error.code, error.oauth_error) == ("cimd_http_status", "invalid_client")


def test_server_error_is_unavailable(docs: DocServer, clock: FakeClock):
    docs.broken = True
    with pytest.raises(ClientMetadataUnavailable) as info:
        asyncio.run(fetcher(clock).fetch(f"{docs.base}/good"))
    assert info.value.code == "cimd_http_status"


@pytest.mark.parametrize(
    "method", ["client_secret_post", "client_secret_basic", "client_secret_jwt"]
)
def test_shared_secret_client_is_refused(docs: DocServer, clock: FakeClock, method: str):
    error = refusal(fetcher(clock), f"{docs.base}/secret?method={method}")
    assert error.code == "cimd_shared_secret"


def test_plain_http_redirect_uri_in_document_is_refused(docs: DocServer, clock: FakeClock):
    assert refusal(fetcher(clock), f"{docs.base}/bad-redirect").code == "invalid_redirect_uri"


def test_connection_refused_is_unavailable(clock: FakeClock):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ClientMetadataUnavailable) as info:
        asyncio.run(fetcher(clock).fetch(f"http://127.0.0.1:{port}/client"))
    assert info.value.code == "cimd_unreachable"


# --- the document rules (pure) --------------------------------------------------------------

URL = "https://client.example/meta.json"


def document(**members: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"client_id": URL, "redirect_uris": ["https://client.example/cb"]}
    body.update(members)
    return {k: v for k, v in body.items() if v is not None}


def document_code(doc: object) -> str:
    with pytest.raises(ClientMetadataError) as info:
        client_from_document(doc, URL)
    return info.value.code


def test_document_must_be_an_object():
    assert document_code(["not", "an", "object"]) == "cimd_invalid_document"


def test_client_id_must_match_without_normalisation():
    assert document_code(document(client_id="https://CLIENT.example/meta.json")) == (
        "cimd_client_id_mismatch"
    )


def test_document_without_redirect_uris_is_refused():
    assert document_code(document(redirect_uris=None)) == "invalid_redirect_uri"
    assert document_code(document(redirect_uris=[])) == "invalid_redirect_uri"


def test_redirect_uri_with_fragment_is_refused():
    assert document_code(document(redirect_uris=["https://client.example/cb#x"])) == (
        "invalid_redirect_uri"
    )


def test_document_with_client_secret_is_refused():
    assert document_code(document(client_secret="s3cret")) == "cimd_shared_secret"


def test_private_key_jwt_needs_keys():
    assert document_code(document(token_endpoint_auth_method="private_key_jwt")) == (
        "cimd_invalid_document"
    )


def test_private_key_jwt_with_jwks_uri_is_kept():
    client = client_from_document(
        document(
            token_endpoint_auth_method="private_key_jwt",
            jwks_uri="https://client.example/jwks.json",
        ),
        URL,
    )
    assert client.token_endpoint_auth_method == "private_key_jwt"
    assert client.jwks_uri == "https://client.example/jwks.json"
    assert not client.is_public


def test_client_name_with_control_characters_is_refused():
    assert document_code(document(client_name="Good\nEvil")) == "cimd_invalid_document"


def test_unknown_auth_method_is_refused():
    assert document_code(document(token_endpoint_auth_method="tls_client_auth")) == (
        "cimd_invalid_document"
    )


# --- the URL and the address: refused before any connection ---------------------------------


@pytest.mark.parametrize(
    "client_id",
    [
        "http://client.example/meta.json",  # not https
        "https://client.example/meta.json#frag",
        "https://user:pw@client.example/meta.json",
        "https://client.example/",
        "https://client.example",
        "https://client.example/a/../meta.json",
        "https://client.example/./meta.json",
        "ftp://client.example/meta.json",
        "https://client.example/meta json",
        "https://client.example/" + "a" * 3000,
    ],
)
def test_invalid_client_id_url_is_refused(client_id: str):
    with pytest.raises(ClientMetadataError) as info:
        check_client_id_url(client_id)
    assert (info.value.code, info.value.oauth_error) == ("cimd_invalid_url", "invalid_request")


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1%2509:18443",  # a percent-encoded TAB: no host name holds one
        "client%2eexample",
        "client_metadata.example",
        "-client.example",
        "client-.example",
        "a..b.example",
        "a" * 64 + ".example",  # a DNS label holds at most 63 characters
        ("a" * 60 + ".") * 5 + "example",  # a DNS name holds at most 253
        "999.1.1.1",  # ends in a number but is no IPv4 address
        "client.example.123",
        "[fe80::1%25eth0]",  # a zone in the literal
        "client.example:0",  # port 0 is never a server's
    ],
)
def test_a_host_that_is_no_dns_name_or_ip_literal_is_refused_for_good_before_any_lookup(
    clock: FakeClock, host: str
):
    looked_up: list[str] = []

    async def resolve(name: str, port: int) -> list[str]:
        looked_up.append(name)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    fetch = ClientMetadataFetcher(policy=CimdPolicy(timeout=TIMEOUT), clock=clock, resolve=resolve)
    error = refusal(fetch, f"https://{host}/c.json")
    assert not isinstance(error, ClientMetadataUnavailable), error.code  # not "try later"
    assert (error.code, error.oauth_error) == ("cimd_invalid_url", "invalid_request")
    assert looked_up == [] and fetch.connect_attempts == 0


@pytest.mark.parametrize(
    "host", ["client.example", "client.example.", "xn--bcher-kva.example", "a1-b.example:08443"]
)
def test_a_valid_host_name_is_looked_up(clock: FakeClock, host: str):
    looked_up: list[str] = []

    async def resolve(name: str, port: int) -> list[str]:
        looked_up.append(name)
        return ["10.0.0.1"]

    fetch = ClientMetadataFetcher(policy=CimdPolicy(timeout=TIMEOUT), clock=clock, resolve=resolve)
    assert refusal(fetch, f"https://{host}/c.json").code == "cimd_address_refused"
    assert looked_up == [host.split(":")[0]]


def test_loopback_http_url_needs_the_development_switch():
    check_client_id_url("http://127.0.0.1:8000/meta.json", allow_loopback_http=True)
    with pytest.raises(ClientMetadataError):
        check_client_id_url("http://127.0.0.1:8000/meta.json")
    with pytest.raises(ClientMetadataError):  # the switch is for loopback only
        check_client_id_url("http://client.example/meta.json", allow_loopback_http=True)


REFUSED_ADDRESSES = [
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "169.254.169.254",  # cloud instance metadata
    "127.0.0.1",
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "192.0.2.1",  # documentation
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "ff02::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:a00:1::",  # 6to4 of 10.0.0.1
    "2001:db8::1",
]


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_special_address_literal_is_refused_without_connecting(clock: FakeClock, address: str):
    fetch = ClientMetadataFetcher(policy=CimdPolicy(timeout=TIMEOUT), clock=clock)
    host = f"[{address}]" if ":" in address else address
    error = refusal(fetch, f"https://{host}/meta.json")
    assert (error.code, error.oauth_error) == ("cimd_address_refused", "invalid_client")
    assert address not in error.message  # internal addresses are not echoed to the client
    assert fetch.connect_attempts == 0


@pytest.mark.parametrize("address", ["10.0.0.1", "169.254.169.254", "fe80::1", "::ffff:10.0.0.1"])
def test_development_switch_still_refuses_private_addresses(clock: FakeClock, address: str):
    fetch = fetcher(clock)
    host = f"[{address}]" if ":" in address else address
    assert refusal(fetch, f"https://{host}/meta.json").code == "cimd_address_refused"
    assert fetch.connect_attempts == 0


@pytest.mark.parametrize(
    "answers", [["10.0.0.1"], ["93.184.216.34", "169.254.169.254"], ["2606:2800::1", "::1"]]
)
def test_host_name_resolving_to_a_private_address_is_refused(clock: FakeClock, answers: list[str]):
    async def resolve(host: str, port: int) -> list[str]:
        return answers

    fetch = ClientMetadataFetcher(policy=CimdPolicy(timeout=TIMEOUT), clock=clock, resolve=resolve)
    assert refusal(fetch, "https://client.example/meta.json").code == "cimd_address_refused"
    assert fetch.connect_attempts == 0


def test_loopback_server_is_refused_without_the_development_switch(
    docs: DocServer, clock: FakeClock
):
    fetch = ClientMetadataFetcher(policy=CimdPolicy(timeout=TIMEOUT), clock=clock)
    port = docs.base.rsplit(":", 1)[1]
    for url in (f"https://127.0.0.1:{port}/good", f"https://localhost:{port}/good"):
        assert refusal(fetch, url).code == "cimd_address_refused"
    assert fetch.connect_attempts == 0
    assert docs.hits == {}


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "127.1", "017700000001"])
def test_legacy_numeric_hosts_are_judged_by_the_address_they_reach(clock: FakeClock, host: str):
    # Not IP literals to ipaddress, but the system resolver turns each into 127.0.0.1.
    fetch = ClientMetadataFetcher(policy=CimdPolicy(timeout=TIMEOUT), clock=clock)
    assert refusal(fetch, f"https://{host}/meta.json").code == "cimd_address_refused"
    assert fetch.connect_attempts == 0


def test_next_vetted_address_is_tried_when_the_first_refuses_the_connection(
    docs: DocServer, clock: FakeClock
):
    # A dual-stack name whose first answer (::1 here, where nothing listens) is unreachable
    # must still be fetched from its other vetted address, as browsers and curl do.
    async def resolve(host: str, port: int) -> list[str]:
        return ["::1", "127.0.0.1"]

    port = docs.base.rsplit(":", 1)[1]
    fetch = ClientMetadataFetcher(
        policy=CimdPolicy(timeout=5.0),
        clock=clock,
        resolve=resolve,
        allow_loopback_for_development=True,
    )
    docs.base = f"http://localhost:{port}"
    client = asyncio.run(fetch.fetch(f"{docs.base}/good"))
    assert client.client_id == f"{docs.base}/good"
    assert fetch.connect_attempts == 2


def test_unresolvable_host_is_unavailable(clock: FakeClock):
    async def resolve(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    fetch = ClientMetadataFetcher(policy=CimdPolicy(timeout=TIMEOUT), clock=clock, resolve=resolve)
    with pytest.raises(ClientMetadataUnavailable) as info:
        asyncio.run(fetch.fetch("https://client.example/meta.json"))
    assert info.value.code == "cimd_dns"


def test_public_addresses_pass():
    for text in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:93.184.216.34"):
        assert address_refusal(ipaddress.ip_address(text)) is None


# --- caching -------------------------------------------------------------------------------


def _assert_cached_for(
    fetch: ClientMetadataFetcher, docs: DocServer, clock: FakeClock, seconds: int
) -> None:
    """/good is fetched once, served from the cache 1 s before ``seconds``, fetched again
    1 s after."""
    url = f"{docs.base}/good"

    async def run() -> None:
        await fetch.fetch(url)
        clock.advance(seconds - 1)
        await fetch.fetch(url)
        assert docs.hits["/good"] == 1
        clock.advance(2)
        await fetch.fetch(url)
        assert docs.hits["/good"] == 2

    asyncio.run(run())


def test_cache_honours_max_age(docs: DocServer, clock: FakeClock):
    _assert_cached_for(fetcher(clock), docs, clock, 120)


def test_cache_lifetime_has_a_floor(docs: DocServer, clock: FakeClock):
    docs.max_age = "0"
    _assert_cached_for(fetcher(clock, min_cache_seconds=30), docs, clock, 30)


def test_cache_lifetime_has_a_ceiling(docs: DocServer, clock: FakeClock):
    docs.max_age = "31536000"
    _assert_cached_for(fetcher(clock, max_cache_seconds=600), docs, clock, 600)


def test_cache_holds_at_most_the_configured_number(docs: DocServer, clock: FakeClock):
    fetch = fetcher(clock, max_cached_documents=2)

    async def run() -> None:
        for path in ("/good", "/good2", "/good3"):
            await fetch.fetch(f"{docs.base}{path}")
        await fetch.fetch(f"{docs.base}/good")  # the oldest entry went first
        assert docs.hits["/good"] == 2
        assert fetch.cached(f"{docs.base}/good3") is not None

    asyncio.run(run())


def test_failures_are_not_cached(docs: DocServer, clock: FakeClock):
    fetch = fetcher(clock)
    url = f"{docs.base}/good"
    docs.broken = True
    with pytest.raises(ClientMetadataUnavailable):
        asyncio.run(fetch.fetch(url))
    docs.broken = False
    assert asyncio.run(fetch.fetch(url)).client_id == url
    assert docs.hits["/good"] == 2


def test_concurrent_lookups_share_one_fetch(docs: DocServer, clock: FakeClock):
    fetch = fetcher(clock)
    url = f"{docs.base}/good"

    async def run() -> None:
        clients = await asyncio.gather(*(fetch.fetch(url) for _ in range(5)))
        assert {c.client_id for c in clients} == {url}

    asyncio.run(run())
    assert docs.hits["/good"] == 1
    assert fetch.fetch_count == 1


def test_fetches_at_once_are_bounded(docs: DocServer, clock: FakeClock):
    fetch = fetcher(clock, max_concurrent_fetches=2)
    urls = [f"{docs.base}/silent?n={n}" for n in range(3)]

    async def run() -> list[BaseException | object]:
        return await asyncio.gather(*(fetch.fetch(u) for u in urls), return_exceptions=True)

    outcomes = asyncio.run(run())
    codes = [getattr(o, "code", None) for o in outcomes]
    assert codes == ["cimd_timeout", "cimd_timeout", "cimd_busy"]
    assert docs.hits["/silent"] == 2


# --- TLS: the vetted address is pinned, SNI and the certificate name the host ---------------


@pytest.mark.parametrize("cert_host", ["client.test", "other.test"])
def test_https_goes_to_the_vetted_address_and_checks_the_host_certificate(
    tmp_path: Path, clock: FakeClock, cert_host: str
):
    ca, cert, key = make_certificates(tmp_path, cert_host)
    server = DocServer()
    resolved: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        resolved.append(host)  # client.test exists nowhere but here: only the pin reaches it
        return ["127.0.0.1"]

    with serve_tls(server.app(), cert, key) as port:
        server.base = f"https://client.test:{port}"
        fetch = ClientMetadataFetcher(
            policy=CimdPolicy(timeout=5.0),
            clock=clock,
            resolve=resolve,
            ssl_context=ssl.create_default_context(cafile=str(ca)),
            allow_loopback_for_development=True,
        )
        url = f"{server.base}/good"
        if cert_host == "client.test":
            assert asyncio.run(fetch.fetch(url)).client_id == url
            assert server.hosts == [f"client.test:{port}"]
        else:  # a certificate for another name fails the check against the URL's host
            with pytest.raises(ClientMetadataUnavailable) as info:
                asyncio.run(fetch.fetch(url))
            assert info.value.code == "cimd_unreachable"
            assert server.hits == {}
    assert resolved == ["client.test"]
