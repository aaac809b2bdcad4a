"""Client ID Metadata Documents: a ``client_id`` that is an https URL names its own metadata.

draft-ietf-oauth-client-id-metadata-document, as the MCP authorization spec (2025-11-25)
prefers it over dynamic registration: the authorization server fetches the ``client_id`` URL
and reads the client's ``redirect_uris`` and ``client_name`` from the JSON found there.
Fetching a URL that anyone may type is a server-side request forgery risk (draft §8.6), so
:class:`ClientMetadataFetcher` is strict:

* **The URL** (:func:`check_client_id_url`): ``https`` only, a host, a path other than ``/``,
  no ``.``/``..`` segments, no fragment, no user info, only RFC 3986 characters, at most
  :data:`MAX_CLIENT_ID_URL_LENGTH` characters.
* **The address**: the host is resolved *before* anything connects, and every address it
  resolves to must be public (:func:`address_refusal`: private, loopback, link-local, CGNAT,
  multicast, reserved, unspecified, documentation, and the IPv4 hidden in IPv4-mapped, 6to4,
  Teredo and NAT64 IPv6 addresses are refused). The request then goes to the vetted IP
  itself, with the original ``Host`` header and TLS SNI and certificate check against the
  host name, so a DNS answer that changes between the check and the connection (DNS
  rebinding) cannot redirect it. When an address refuses the connection, the next vetted
  address is tried. No proxy from the environment is used.
* **The answer**: no redirects at all (a 3xx is refused, same host or not: the draft asks for a
  ``200``), only ``200``, a JSON media type, at most ``max_body_bytes`` (checked against
  ``Content-Length`` and while streaming), all within ``timeout`` seconds in total (DNS,
  connect, TLS, headers and body together, so a server trickling bytes cannot hold it open).
* **The document** (:func:`client_from_document`): a JSON object whose ``client_id`` equals the
  URL exactly (no normalisation), with valid ``redirect_uris``; ``token_endpoint_auth_method``
  ``none`` (the default) or ``private_key_jwt`` with ``jwks`` or ``jwks_uri``; never a shared
  secret (``client_secret_*`` methods or a ``client_secret`` member are refused).
* **Caching**: good documents only (the draft forbids caching errors), for the response's
  ``Cache-Control: max-age`` clamped to ``[min_cache_seconds, max_cache_seconds]``
  (``default_cache_seconds`` without one), at most ``max_cached_documents`` entries (least
  recently used go first). Concurrent lookups of one URL share one fetch, and at most
  ``max_concurrent_fetches`` URLs are fetched at once (more are refused as ``cimd_busy``).
  Time comes from the injected clock.

For development, ``allow_loopback_for_development=True`` lets loopback addresses (and plain
``http`` on loopback hosts) through; private and link-local addresses stay refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import re
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .client_metadata import (
    MAX_CLIENT_NAME_LENGTH,
    MAX_URI_LENGTH,
    PUBLIC_AUTH_METHOD,
    SHARED_SECRET_AUTH_METHODS,
    OAuthClient,
    frozen_jwks,
    scope_problem,
    string_list_problem,
    text_problem,
)
from .errors import ClientMetadataError, ClientMetadataUnavailable, ConfigError
from .numeric import parse_whole_number
from .redirect_uris import check_redirect_uris, is_loopback_host
from .strict_json import DuplicateMember, loads_document
from .tokens import Clock

log = logging.getLogger("jwtmcp.cimd")

MAX_CLIENT_ID_URL_LENGTH = 2048
"""Longest ``client_id`` URL accepted, in characters."""
MAX_CIMD_REDIRECT_URIS = 10
"""Most ``redirect_uris`` a metadata document may list."""

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``async resolve(host, port) -> [ip, ...]``: the addresses a host name resolves to."""

_URL_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_JSON_TYPE = re.compile(r"application/(?:[a-z0-9.+\-]+\+)?json", re.IGNORECASE)


# --- the client_id URL -------------------------------------------------------------------


def looks_like_metadata_url(client_id: str) -> bool:
    """True when ``client_id`` is meant as a metadata document URL (starts with http(s)://)."""
    lowered = client_id[:8].lower()
    return lowered.startswith(("https://", "http://"))


def check_client_id_url(client_id: str, *, allow_loopback_http: bool = False) -> None:
    """Refuse a ``client_id`` that is not a valid Client ID Metadata Document URL.

    Rules (draft-ietf-oauth-client-id-metadata-document §3): ``https``; a host; a path other
    than ``/`` without ``.`` or ``..`` segments; no fragment; no user name or password. A query
    is allowed. ``allow_loopback_http`` also accepts ``http`` on a loopback host (development).
    Raises :class:`~jwtmcp.errors.ClientMetadataError` with code ``cimd_invalid_url`` and
    ``oauth_error`` ``invalid_request``.
    """

    def bad(reason: str) -> ClientMetadataError:
        return ClientMetadataError(
            f"client_id is not a valid metadata document URL: {reason}",
            code="cimd_invalid_url",
            oauth_error="invalid_request",
        )

    if len(client_id) > MAX_CLIENT_ID_URL_LENGTH:
        raise bad(f"longer than {MAX_CLIENT_ID_URL_LENGTH} characters")
    if not _URL_CHARS.fullmatch(client_id):
        raise bad("it holds characters a URL cannot hold")
    if "#" in client_id:
        raise bad("it must not hold a fragment")
    try:
        parts = urlsplit(client_id)
        port = parts.port  # raises ValueError for a malformed port
    except ValueError:
        raise bad("it does not parse") from None
    if port == 0:
        raise bad("port 0 is no server's port")
    if parts.scheme != "https":
        loopback = bool(parts.hostname) and is_loopback_host(parts.hostname or "")
        if not (parts.scheme == "http" and allow_loopback_http and loopback):
            raise bad("the scheme must be https")
    if "@" in parts.netloc:
        raise bad("it must not hold a user name or password")
    if not parts.hostname:
        raise bad("it must name a host")
    problem = host_problem(parts.netloc.rpartition("@")[2])
    if problem is not None:
        raise bad(problem)
    if parts.path in ("", "/"):
        raise bad("it must have a path")
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        raise bad("its path must not hold . or .. segments")


_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


def host_problem(hostport: str) -> str | None:
    """Why the host of ``hostport`` (a URL's authority without userinfo) can never be fetched,
    or None when it is an IP literal or a DNS name.

    A host is an IPv6 literal in brackets without a zone (RFC 3986 §3.2.2, RFC 6874 zones are
    refused), an IPv4 address in any form the system resolver reads as one (``127.1``,
    ``0x7f.1``; the address is judged later), or a DNS name (RFC 1123 §2.1, RFC 1035 §2.3.4):
    letters, digits and ``-`` in labels of 1-63 characters that neither start nor end with
    ``-``, at most 253 characters, an optional final ``.``, a last label that is not a number.
    Anything else (a percent-escape, ``_``, an empty label) no lookup can ever find, so it is
    refused for good rather than reported as a DNS outage.
    """
    if hostport.startswith("["):
        literal = hostport[1:].partition("]")[0]
        if "%" in literal:
            return "its IPv6 host must not hold a zone"
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return "its bracketed host is not an IPv6 address"
        return None
    host = hostport.partition(":")[0].lower()
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # The WHATWG URL and the system resolver read such a host as an IPv4 address.
        try:
            socket.inet_aton(name)
        except OSError:
            return "its host ends in a number but is not an IPv4 address"
        return None
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        return "its host is not a DNS name (letters, digits and '-' in dot-separated labels)"
    return None


# --- addresses ---------------------------------------------------------------------------


def address_refusal(address: Address, *, allow_loopback: bool = False) -> str | None:
    """Why a metadata document must not be fetched from ``address``, or None when it may.

    Only globally routable unicast addresses pass. IPv4 addresses embedded in IPv6 ones
    (IPv4-mapped ``::ffff:0:0/96``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo) are
    judged as the IPv4 address they reach. ``allow_loopback`` (development only) lets
    127.0.0.0/8 and ``::1`` through.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded: ipaddress.IPv4Address | None = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return address_refusal(embedded, allow_loopback=allow_loopback)
    if address.is_loopback:
        return None if allow_loopback else "a loopback address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "a shared (carrier-grade NAT) address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved address"
    return None


async def system_resolve(host: str, port: int) -> list[str]:
    """The IP addresses ``host`` resolves to, through the system resolver (getaddrinfo)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


# --- the document --------------------------------------------------------------------------


def client_from_document(document: object, client_id: str) -> OAuthClient:
    """Check a fetched metadata document and return the client it describes.

    ``document`` is the parsed JSON, ``client_id`` the URL it was fetched from. Raises
    :class:`~jwtmcp.errors.ClientMetadataError` (``oauth_error`` ``invalid_client``) with code
    ``cimd_client_id_mismatch`` when the document names another client,
    ``cimd_shared_secret`` for a secret-based client, ``invalid_redirect_uri`` for a bad
    redirect URI and ``cimd_invalid_document`` for any other bad member.
    """

    def fail(code: str, message: str) -> ClientMetadataError:
        return ClientMetadataError(f"client metadata document: {message}", code=code)

    def invalid(message: str) -> ClientMetadataError:
        return fail("cimd_invalid_document", message)

    if not isinstance(document, dict):
        raise invalid("it is not a JSON object")
    if document.get("client_id") != client_id:
        raise fail(
            "cimd_client_id_mismatch",
            "its client_id is not exactly the URL it was fetched from",
        )
    if "client_secret" in document or "client_secret_expires_at" in document:
        raise fail("cimd_shared_secret", "it must not hold a client_secret")
    method = document.get("token_endpoint_auth_method", PUBLIC_AUTH_METHOD)
    if method in SHARED_SECRET_AUTH_METHODS:
        raise fail(
            "cimd_shared_secret",
            f"token_endpoint_auth_method {method!r} needs a shared secret, which a client "
            "identified by a public URL cannot hold",
        )
    if method not in (PUBLIC_AUTH_METHOD, "private_key_jwt"):
        raise invalid("token_endpoint_auth_method must be 'none' or 'private_key_jwt'")
    redirect_uris = check_redirect_uris(document.get("redirect_uris"), MAX_CIMD_REDIRECT_URIS, fail)
    name = document.get("client_name")
    if name is not None and (problem := text_problem(name, "client_name", MAX_CLIENT_NAME_LENGTH)):
        raise invalid(problem)
    scope = document.get("scope")
    if scope is not None and (problem := scope_problem(scope)):
        raise invalid(problem)
    lists: dict[str, tuple[str, ...]] = {}
    for member, default in (
        ("grant_types", ("authorization_code",)),
        ("response_types", ("code",)),
    ):
        value = document.get(member)
        if value is not None and (problem := string_list_problem(value, member, None)):
            raise invalid(problem)
        lists[member] = tuple(value) if value is not None else default
    jwks, jwks_uri = _client_keys(document, method, invalid)
    return OAuthClient(
        client_id=client_id,
        redirect_uris=redirect_uris,
        source="cimd",
        client_name=name,
        token_endpoint_auth_method=method,
        grant_types=lists["grant_types"],
        response_types=lists["response_types"],
        scope=scope,
        jwks_uri=jwks_uri,
        jwks=frozen_jwks(jwks),
    )


def _client_keys(
    document: Mapping[str, Any], method: str, invalid: Callable[[str], ClientMetadataError]
) -> tuple[Mapping[str, Any] | None, str | None]:
    jwks = document.get("jwks")
    jwks_uri = document.get("jwks_uri")
    if jwks is not None and jwks_uri is not None:
        raise invalid("jwks and jwks_uri must not both be given (RFC 7591 §2)")
    if jwks is not None and not (isinstance(jwks, dict) and isinstance(jwks.get("keys"), list)):
        raise invalid("jwks must be a JWK Set object")
    if jwks_uri is not None and (
        not isinstance(jwks_uri, str)
        or len(jwks_uri) > MAX_URI_LENGTH
        or urlsplit(jwks_uri).scheme != "https"
    ):
        raise invalid("jwks_uri must be an https URL")
    if method == "private_key_jwt" and jwks is None and jwks_uri is None:
        raise invalid("private_key_jwt needs jwks or jwks_uri")
    return jwks, jwks_uri


# --- fetching and caching ----------------------------------------------------------------


@dataclass(frozen=True)
class CimdPolicy:
    """Limits for fetching metadata documents. Times in seconds, sizes in bytes.

    ``timeout`` bounds a whole fetch (DNS, connect, TLS, headers and body). The draft suggests
    documents stay under 5 KB; ``max_body_bytes`` leaves room above that. Cache lifetimes come
    from ``Cache-Control: max-age`` clamped to ``[min_cache_seconds, max_cache_seconds]``;
    at most ``max_cached_documents`` are kept and ``max_concurrent_fetches`` fetched at once.
    Raises :class:`~jwtmcp.errors.ConfigError` for a value out of range.
    """

    timeout: float = 5.0
    max_body_bytes: int = 16 * 1024
    default_cache_seconds: float = 300.0
    min_cache_seconds: float = 60.0
    max_cache_seconds: float = 86_400.0
    max_cached_documents: int = 1000
    max_concurrent_fetches: int = 32

    def __post_init__(self) -> None:
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigError("CIMD timeout must be a positive number of seconds")
        if not 1024 <= self.max_body_bytes <= 1024 * 1024:
            raise ConfigError("CIMD max_body_bytes must be between 1 KiB and 1 MiB")
        if not 0 <= self.min_cache_seconds <= self.max_cache_seconds:
            raise ConfigError("CIMD cache seconds must satisfy 0 <= min <= max")
        if self.max_cached_documents < 1:
            raise ConfigError("CIMD max_cached_documents must be at least 1")
        if self.max_concurrent_fetches < 1:
            raise ConfigError("CIMD max_concurrent_fetches must be at least 1")

    def cache_seconds(self, cache_control: str | None) -> float:
        """Seconds a document may be reused: its ``max-age`` (``no-store``/``no-cache``
        count as 0), or ``default_cache_seconds``, clamped to the policy's bounds."""
        age: float | None = None
        for directive in (cache_control or "").lower().split(","):
            name, _, value = directive.strip().partition("=")
            name = name.strip()
            if name in ("no-store", "no-cache"):
                age = 0.0
                break
            if name == "max-age" and age is None:
                with contextlib.suppress(ValueError):  # not delta-seconds: no max-age
                    age = float(parse_whole_number(value.strip().strip('"')))
        if age is None:
            age = self.default_cache_seconds
        return min(max(age, self.min_cache_seconds), self.max_cache_seconds)


class ClientMetadataFetcher:
    """Fetches, checks and caches Client ID Metadata Documents (see the module docstring).

    ``clock`` gives epoch seconds (cache expiry); ``resolve`` maps a host name to addresses
    (the system resolver by default); ``ssl_context`` verifies the document host's
    certificate (the system trust store by default). ``allow_loopback_for_development``
    accepts loopback addresses and ``http`` on loopback hosts: never use it in production.

    ``connect_attempts`` counts requests sent (an address refused before connecting does not
    count); ``fetch_count`` counts fetches started.
    """

    def __init__(
        self,
        *,
        policy: CimdPolicy | None = None,
        clock: Clock = time.time,
        resolve: Resolver = system_resolve,
        ssl_context: ssl.SSLContext | None = None,
        allow_loopback_for_development: bool = False,
    ) -> None:
        self.policy = policy or CimdPolicy()
        self._clock = clock
        self._resolve = resolve
        self._ssl_context = ssl_context or ssl.create_default_context()
        self.allow_loopback = allow_loopback_for_development
        if allow_loopback_for_development:
            log.warning(
                "client metadata documents may be fetched from loopback addresses and over "
                "plain http on loopback: a development setting, never for production"
            )
        self._cache: OrderedDict[str, tuple[OAuthClient, float]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[OAuthClient]] = {}
        self.connect_attempts = 0
        self.fetch_count = 0

    def cached(self, client_id: str) -> OAuthClient | None:
        """The cached client for ``client_id`` if its cache lifetime has not ended."""
        entry = self._cache.get(client_id)
        if entry is None:
            return None
        client, expires_at = entry
        if self._clock() >= expires_at:
            del self._cache[client_id]
            return None
        self._cache.move_to_end(client_id)
        return client

    async def fetch(self, client_id: str) -> OAuthClient:
        """The client whose metadata document is at ``client_id``, from the cache or fetched.

        Raises :class:`~jwtmcp.errors.ClientMetadataError` for a refused URL, address, answer
        or document, and :class:`~jwtmcp.errors.ClientMetadataUnavailable` when the host does
        not answer in time, refuses the connection or answers 5xx.
        """
        check_client_id_url(client_id, allow_loopback_http=self.allow_loopback)
        client = self.cached(client_id)
        if client is not None:
            return client
        task = self._inflight.get(client_id)
        if task is None:
            # Anyone may name any URL, so slow hosts must not pile up fetches without end.
            if len(self._inflight) >= self.policy.max_concurrent_fetches:
                raise ClientMetadataUnavailable(
                    "too many client metadata documents are being fetched; try again shortly",
                    code="cimd_busy",
                )
            task = asyncio.get_running_loop().create_task(self._fetch_and_cache(client_id))
            self._inflight[client_id] = task
            task.add_done_callback(lambda done: self._fetch_done(client_id, done))
        # shield: a caller that goes away (a closed browser tab) does not cancel the fetch
        # other callers of the same URL wait for.
        return await asyncio.shield(task)

    def _fetch_done(self, client_id: str, task: asyncio.Task[OAuthClient]) -> None:
        if self._inflight.get(client_id) is task:
            del self._inflight[client_id]
        if not task.cancelled():
            task.exception()  # retrieved, so a failure nobody still awaits is not logged

    async def _fetch_and_cache(self, client_id: str) -> OAuthClient:
        try:
            client, expires_at = await self._fetch(client_id)
        except ClientMetadataError as exc:
            # json.dumps escapes whatever the (untrusted) URL holds.
            log.info(
                json.dumps({"event": "cimd_refused", "code": exc.code, "client_id": client_id})
            )
            raise
        self._cache[client_id] = (client, expires_at)
        self._cache.move_to_end(client_id)
        while len(self._cache) > self.policy.max_cached_documents:
            self._cache.popitem(last=False)
        return client

    async def _fetch(self, client_id: str) -> tuple[OAuthClient, float]:
        self.fetch_count += 1
        started = self._clock()
        try:
            async with asyncio.timeout(self.policy.timeout):
                body, cache_control = await self._download(client_id)
        except TimeoutError:
            raise ClientMetadataUnavailable(
                f"the client metadata document did not arrive within {self.policy.timeout} s",
                code="cimd_timeout",
            ) from None
        try:
            document = loads_document(body)
        except DuplicateMember:
            raise ClientMetadataError(
                "the client metadata document repeats a JSON member name", code="cimd_not_json"
            ) from None
        except ValueError:
            raise ClientMetadataError(
                "the client metadata document is not valid JSON", code="cimd_not_json"
            ) from None
        client = client_from_document(document, client_id)
        return client, started + self.policy.cache_seconds(cache_control)

    async def _vetted_addresses(self, host: str, port: int) -> list[Address]:
        try:
            literal: Address | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            candidates: list[Address] = [literal]
        else:
            try:
                resolved = await self._resolve(host, port)
            except OSError:
                raise ClientMetadataUnavailable(
                    "the client metadata host name does not resolve", code="cimd_dns"
                ) from None
            candidates = []
            for text in resolved:
                # getaddrinfo may give scoped IPv6 ("fe80::1%eth0"): the scope is irrelevant
                # to the check (fe80::/10 is refused anyway) and ip_address() rejects it.
                candidates.append(ipaddress.ip_address(text.split("%", 1)[0]))
            if not candidates:
                raise ClientMetadataUnavailable(
                    "the client metadata host name does not resolve", code="cimd_dns"
                )
        # Every address must pass, not just the first: a name answering with one public and
        # one private address would otherwise reach the private one on a retry or a reorder.
        for address in candidates:
            reason = address_refusal(address, allow_loopback=self.allow_loopback)
            if reason is not None:
                # The address itself stays out of the message: it would map internal DNS.
                raise ClientMetadataError(
                    f"the client metadata host resolves to {reason}; refused",
                    code="cimd_address_refused",
                )
        return list(dict.fromkeys(candidates))  # in resolver order, each once

    async def _download(self, client_id: str) -> tuple[bytes, str | None]:
        import httpx2  # the MCP SDK's HTTP library (as jwks.py uses it)

        parts = urlsplit(client_id)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = await self._vetted_addresses(host, port)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {
            "Host": parts.netloc,
            "Accept": "application/json",
            "Accept-Encoding": "identity",
            "User-Agent": "jwtmcp-issuer (client metadata)",
        }
        # TLS: the connection goes to the vetted IP, but SNI and the certificate check use
        # the host name from the URL (httpcore's sni_hostname extension).
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        limit = self.policy.max_body_bytes
        async with httpx2.AsyncClient(
            verify=self._ssl_context,
            trust_env=False,  # a proxy from the environment would undo the address pinning
            follow_redirects=False,
            timeout=httpx2.Timeout(self.policy.timeout),
        ) as http:
            response = None
            # Each vetted address in turn until one connects (a dual-stack host whose IPv6
            # is down still answers on IPv4); the total deadline bounds the whole loop.
            for address in addresses:
                ip_host = f"[{address}]" if address.version == 6 else str(address)
                request = http.build_request(
                    "GET",
                    f"{parts.scheme}://{ip_host}:{port}{path}",
                    headers=headers,
                    extensions=extensions,
                )
                self.connect_attempts += 1
                try:
                    response = await http.send(request, stream=True)
                    break
                except (httpx2.ConnectError, httpx2.ConnectTimeout):
                    continue
                except httpx2.TimeoutException:
                    raise TimeoutError from None
                except httpx2.HTTPError:
                    break
            if response is None:
                raise ClientMetadataUnavailable(
                    "the client metadata host could not be reached", code="cimd_unreachable"
                )
            try:
                return await self._read(response, limit)
            except httpx2.TimeoutException:
                raise TimeoutError from None
            except httpx2.HTTPError:
                raise ClientMetadataUnavailable(
                    "the client metadata host broke off the answer", code="cimd_unreachable"
                ) from None
            finally:
                await response.aclose()

    @staticmethod
    async def _read(response: Any, limit: int) -> tuple[bytes, str | None]:
        status = int(response.status_code)
        if 300 <= status < 400:
            raise ClientMetadataError(
                "the client metadata URL answered with a redirect; redirects are not followed",
                code="cimd_redirect",
            )
        if status >= 500:
            raise ClientMetadataUnavailable(
                f"the client metadata host answered HTTP {status}", code="cimd_http_status"
            )
        if status != 200:
            raise ClientMetadataError(
                f"the client metadata URL answered HTTP {status}, not 200",
                code="cimd_http_status",
            )
        content_type = response.headers.get("content-type", "").split(";", 1)[0].strip()
        if not _JSON_TYPE.fullmatch(content_type):
            raise ClientMetadataError(
                "the client metadata document is not served as application/json",
                code="cimd_not_json",
            )
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ClientMetadataError(
                "the client metadata document came compressed, which was not asked for",
                code="cimd_invalid_document",
            )
        declared = response.headers.get("content-length", "")
        with contextlib.suppress(ValueError):  # no or a bad length: the streamed cap holds
            if parse_whole_number(declared) > limit:
                raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks), response.headers.get("cache-control")


def _too_large(limit: int) -> ClientMetadataError:
    return ClientMetadataError(
        f"the client metadata document is larger than {limit} bytes", code="cimd_too_large"
    )
