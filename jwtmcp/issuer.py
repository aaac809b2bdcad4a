"""The issuer HTTP service: OAuth 2.0 client_credentials tokens, JWKS and RFC 8414 metadata.

Endpoints (all relative to the issuer URL):

- ``POST /token`` — the client_credentials grant (RFC 6749 4.4) with ``client_secret_basic``
  or ``client_secret_post``; ``scope`` narrows the client's allowance (RFC 6749 3.3);
  ``resource`` names the token's one audience (RFC 8707; compared in canonical form, see
  :mod:`jwtmcp.identifiers`; required when the client may use several servers). Errors
  are RFC 6749 5.2 JSON.
- ``GET /.well-known/jwks.json`` — the ring's public keys, cacheable.
- ``GET /.well-known/oauth-authorization-server`` — RFC 8414 metadata.
- ``GET /healthz`` — liveness, the active kid and the state of the ring and clients file.
- ``GET /.well-known/jwtmcp-revocations`` — the signed revocation list, and
  ``POST /admin/revoke`` (:mod:`jwtmcp.revocation_issuer`, docs/revocation.md).
- ``GET /authorize``, ``/authorize/login``, ``/authorize/consent`` — interactive sign-in
  (authorization code + PKCE; :mod:`jwtmcp.authorize`), ``POST /register`` — RFC 7591
  registration (:mod:`jwtmcp.registration`); assembled by :mod:`jwtmcp.signin`.

The client_credentials path holds no state besides two files it watches (the key ring and
the clients file): a ``stat`` at most every ``reload_interval`` seconds notices a rotation or
a client change, so the request path never reads a file. Replicas sharing both files answer
alike. Interactive sign-in keeps its codes, refresh families and failed-login counters in the
store (:mod:`jwtmcp.store`); client_credentials never touches it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import ipaddress
import json
import logging
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .assertions import ASSERTION_ALGORITHMS
from .audit import IssuerEvents, audit_log
from .authorize import LoginLimits
from .cimd import ClientMetadataFetcher
from .clients import Client, ClientsWatcher, ClientTable, ensure_clients
from .errors import ConfigError, JwtMcpError, SignerUnavailable
from .identifiers import canonical_issuer, canonical_or_none
from .keys import KeyRing, RingWatcher, ensure_ring
from .logfields import client_fields, short_client_id
from .metrics import IssuerMetrics, IssuerMetricsMiddleware, MetricsEndpoint
from .numeric import parse_whole_number
from .ratelimit import Limiter, shared_limiter
from .server import ServerLimits, bind_socket
from .server import run as run_server
from .store import (
    DEFAULT_REFRESH_IDLE_TTL,
    DEFAULT_REFRESH_MAX_TTL,
    is_networked_location,
    open_store,
)
from .tokens import DEFAULT_LIFETIME, Clock, build_claims, scope_grants_scope, sign_async
from .users import ensure_users, users_file_beside

if TYPE_CHECKING:
    from .grants import InteractiveGrants
    from .identity import PasswordSource
    from .resolver import ClientResolver
    from .store import Store

log = logging.getLogger("jwtmcp.issuer")

DEFAULT_JWKS_MAX_AGE = 300
DEFAULT_REVOCATION_MAX_AGE = 60
"""Seconds verifiers may cache the revocation list: the bound from revocation to refusal."""
DEFAULT_RATE_LIMIT = 10.0
"""Token requests per second and per client, sustained."""
DEFAULT_RATE_BURST = 20
DEFAULT_MAX_BODY_BYTES = 8192
DEFAULT_RELOAD_INTERVAL = 0.25
DEMO_CLIENT = "demo"
DEMO_USER = "demo"
DEMO_TOOLS = ("add", "subtract", "multiply")
DEMO_AUDIENCE = "http://127.0.0.1:8001/mcp"
ENV_SETTINGS = "JWTMCP_ISSUER_SETTINGS"
"""How ``serve --workers N`` hands its settings to the worker processes' app factory."""

FORM_TYPE = "application/x-www-form-urlencoded"
FORM_TYPE_BYTES = FORM_TYPE.encode()
JSON_TYPE = "application/json"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_NO_STORE_RAW = [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]

_Encoded = tuple[bytes, int, list[tuple[bytes, bytes]]]
"""A ready response: body, status, raw headers."""


_ALLOW_ANY_ORIGIN = (b"access-control-allow-origin", b"*")


def _json_headers(length: int, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Headers of a token endpoint answer (success or error): JSON, and readable by a
    browser-based client of any origin (CORS, without credentials)."""
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(length).encode()),
        _ALLOW_ANY_ORIGIN,
        *extra,
    ]


TokenGrant = Callable[["TokenRequest", Sequence[bytes]], Awaitable[_Encoded]]
"""A grant of ``/token``: ``(form, authorization header values) -> (body, status, headers)``."""


class _Disconnected(Exception):
    """The client went away before its request body arrived."""


_SINGLE_PARAMS = frozenset(
    {
        "grant_type",
        "scope",
        "client_id",
        "client_secret",
        "expires_in",
        "code",
        "redirect_uri",
        "code_verifier",
        "refresh_token",
        "client_assertion",
        "client_assertion_type",
        "assertion",
    }
)
"""Parameters that may appear once (RFC 6749 3.2); ``resource`` may repeat (RFC 8707 2)."""
_SINGLE_PARAMS |= {  # RFC 8693 2.1: one subject, one actor, one audience per exchanged token
    "subject_token", "subject_token_type", "actor_token", "actor_token_type",
    "requested_token_type", "audience",
}  # fmt: skip
_MAX_FIELDS = 64
INTERACTIVE_GRANT_TYPES = frozenset({"authorization_code", "refresh_token"})
"""Grants answered by :mod:`jwtmcp.grants` (they need the state store)."""


# --- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuerSettings:
    """Everything the service needs; ``create_app`` takes these as keyword arguments."""

    issuer_url: str
    keys_dir: str = "keys"
    clients_file: str = "clients.json"
    jwks_max_age: int = DEFAULT_JWKS_MAX_AGE
    default_ttl: int = DEFAULT_LIFETIME
    rate_limit: float = DEFAULT_RATE_LIMIT
    rate_burst: int = DEFAULT_RATE_BURST
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    reload_interval: float = DEFAULT_RELOAD_INTERVAL
    users_file: str = ""
    """The users file; empty: ``users.json`` beside the clients file."""
    store: str = ""
    """The state store's location (:func:`jwtmcp.store.open_store`); empty: beside the ring."""
    refresh_idle_ttl: int = DEFAULT_REFRESH_IDLE_TTL
    """Seconds a refresh token may go unused before its family expires."""
    refresh_max_ttl: int = DEFAULT_REFRESH_MAX_TTL
    """Seconds after sign-in after which a refresh family expires, used or not."""
    store_busy_timeout: float | None = None
    """Seconds a sign-in request waits for another writer's lock; None: the store's default."""
    allow_loopback_http_jwks: bool = False
    """Development only: fetch ``private_key_jwt`` clients' and trusted issuers' JWKS over
    plain http on loopback hosts (otherwise https only)."""
    providers_file: str = ""
    """Upstream OpenID providers (:mod:`jwtmcp.oidc`); empty: ``providers.json`` beside the
    clients file when it exists (else no upstream login)."""
    policy_file: str = ""
    """The policy for upstream identities; empty: ``policy.json`` beside the clients file."""
    metrics: bool = False
    """Collect Prometheus metrics (:mod:`jwtmcp.metrics`)."""
    metrics_path: str = ""
    """Serve them at this path of the issuer's own port; empty: not there."""
    audit_log: str = ""
    """``serve --audit-log``: where ``jwtmcp.audit`` lines go (a file, ``-`` for stderr)."""
    revocations_file: str = ""
    """The revocations file (:mod:`jwtmcp.revocations_file`); empty: beside the clients file."""
    revocation_max_age: int = DEFAULT_REVOCATION_MAX_AGE
    """``Cache-Control: max-age`` of the revocation list, seconds."""


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def issuer_url_warning(url: str) -> str | None:
    """A warning when ``url`` is plain http on a non-loopback host, else None."""
    parts = urlsplit(url)
    if parts.scheme == "https" or _is_loopback(parts.hostname or ""):
        return None
    return (
        f"the issuer URL {url} is not https and not loopback: client secrets and tokens "
        "would cross the network in clear text; put a TLS reverse proxy in front and pass "
        "--issuer https://..."
    )


# --- rate limiting -------------------------------------------------------------------------


class RateLimiter:
    """A token bucket per key: ``burst`` requests at once, then ``rate`` per second.

    ``rate <= 0`` disables limiting. ``monotonic`` is injectable so tests move time by hand.
    Buckets are kept for authenticated client ids only, so their number is bounded by the
    clients file.
    """

    def __init__(self, rate: float, burst: int, *, monotonic: Clock = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self._monotonic = monotonic
        self._buckets: dict[str, tuple[float, float]] = {}

    def acquire(self, key: str) -> float:
        """Take one request from ``key``'s bucket: 0.0 if allowed, else seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = self._monotonic()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


def _log_reload_failure(what: str, reason: str) -> None:
    # json.dumps escapes control characters, so a crafted file name cannot forge log lines.
    event = {"event": "reload_failed", "file": what, "error": reason, "serving": "last good"}
    log.error(json.dumps(event))


# --- OAuth errors --------------------------------------------------------------------------


class OAuthError(Exception):
    """An RFC 6749 5.2 error answer."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers = dict(headers or {})
        self.client_id: str | None = None  # for the log, once the caller is known
        self.client_name: str | None = None  # likewise, when the client has a name

    def encoded(self) -> _Encoded:
        body = json.dumps({"error": self.error, "error_description": self.description}).encode()
        extra = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()
        ]
        return body, self.status, _json_headers(len(body), _NO_STORE_RAW + extra)

    def response(self) -> Response:
        body, status, headers = self.encoded()
        response = Response(body, status)
        response.raw_headers = headers
        return response


def signer_unavailable(exc: SignerUnavailable) -> OAuthError:
    """The answer when the active key's backend cannot sign now (an HSM session error, KMS
    unreachable): 503 ``temporarily_unavailable`` with ``Retry-After`` (RFC 6749 4.1.2.1),
    never a 500. The reason (backend and failure, no secret) goes to the log only."""
    log.error(json.dumps({"event": "signer_unavailable", "error": exc.message}))
    return OAuthError(
        "temporarily_unavailable",
        "the signing key's backend is unavailable; retry shortly",
        503,
        {"Retry-After": str(max(1, exc.retry_after))},
    )


_INVALID_CLIENT_HEADERS = {"WWW-Authenticate": 'Basic realm="jwtmcp", charset="UTF-8"'}


def _invalid_client() -> OAuthError:
    # One answer for every authentication failure: unknown client, wrong secret, none sent.
    return OAuthError(
        "invalid_client", "client authentication failed", 401, _INVALID_CLIENT_HEADERS
    )


def _invalid_request(description: str) -> OAuthError:
    return OAuthError("invalid_request", description)


def _too_large(limit: int) -> OAuthError:
    return OAuthError("invalid_request", f"the request body is larger than {limit} bytes", 413)


# --- request parsing -----------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRequest:
    params: dict[str, str]
    resources: tuple[str, ...]


def parse_form(body: bytes) -> TokenRequest:
    """The form parameters of a token request, refusing what RFC 6749 forbids.

    Empty values count as absent (RFC 6749 3.1); a parameter other than ``resource`` given
    twice is an ``invalid_request`` (RFC 6749 3.2).
    """
    try:
        pairs = _form_pairs(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise _invalid_request("the request body is not valid UTF-8") from None
    except ValueError:
        raise _invalid_request(f"the request body is not a valid {FORM_TYPE} form") from None
    params: dict[str, str] = {}
    resources: list[str] = []
    seen: set[str] = set()
    for name, value in pairs:
        if name == "resource":
            if value:
                resources.append(value)
            continue
        if name in seen and name in _SINGLE_PARAMS:
            raise _invalid_request(f"the parameter {name!r} is given more than once")
        seen.add(name)
        if value:
            params[name] = value
    return TokenRequest(params, tuple(dict.fromkeys(resources)))


def _form_pairs(text: str) -> list[tuple[str, str]]:
    """``parse_qsl(text, keep_blank_values=True, strict_parsing=True, errors="strict",
    max_num_fields=_MAX_FIELDS)``, step for step, without its generic work per field.

    Split on ``&`` (at most ``_MAX_FIELDS`` fields, else ValueError), each field once on
    ``=`` (a field without one, the empty field included: ValueError), ``+`` is a space,
    and only parts holding ``%`` are percent-decoded as UTF-8 (invalid: UnicodeDecodeError).
    tests/test_issuer.py compares it with parse_qsl on arbitrary bodies.
    """
    fields = text.split("&") if text else []
    if len(fields) > _MAX_FIELDS:
        raise ValueError("Max number of fields exceeded")
    pairs = []
    for field in fields:
        name, sep, value = field.partition("=")
        if not sep:
            raise ValueError("bad query field")
        if "+" in field:
            name = name.replace("+", " ")
            value = value.replace("+", " ")
        if "%" in name:
            name = unquote(name, errors="strict")
        if "%" in value:
            value = unquote(value, errors="strict")
        pairs.append((name, value))
    return pairs


def parse_basic(header: str) -> tuple[str, str] | None:
    """(client_id, secret) from an ``Authorization: Basic`` header, or None if malformed.

    Both parts are form-urlencoded before base64 (RFC 6749 2.3.1), so they are decoded.
    """
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        return None
    try:
        return (
            unquote(client_id.replace("+", " "), errors="strict"),
            unquote(secret.replace("+", " "), errors="strict"),
        )
    except UnicodeDecodeError:
        return None


def client_credentials(
    params: Mapping[str, str], authorizations: Sequence[bytes]
) -> tuple[str, str | None]:
    """The client id and secret a token request presents (RFC 6749 §2.3.1): HTTP Basic or
    ``client_id``/``client_secret`` in the form, one method only. The secret is None when a
    public client sends only its ``client_id``. Raises :class:`OAuthError`:
    ``invalid_request`` for two methods, two ``Authorization`` headers or a ``client_id``
    that contradicts the header; ``invalid_client`` for a malformed header or no client id.
    """
    if len(authorizations) > 1:
        raise _invalid_request("more than one Authorization header")
    if authorizations:
        if "client_secret" in params:
            raise _invalid_request("use one client authentication method, not two")
        basic = parse_basic(authorizations[0].decode("latin-1"))
        if basic is None:
            raise _invalid_client()
        client_id, secret = basic
        if params.get("client_id", client_id) != client_id:
            raise _invalid_request("client_id does not match the Authorization header")
        return client_id, secret
    client_id = params.get("client_id", "")
    if not client_id:
        raise _invalid_client()
    return client_id, params.get("client_secret")


def narrow_scopes(allowed: Sequence[str], requested: Sequence[str]) -> tuple[str, ...]:
    """The part of ``requested`` that ``allowed`` covers (RFC 6749 3.3 partial grant).

    A requested scope the client holds (``tool:add`` under ``tool:*``) is granted as asked;
    a requested scope broader than the client's allowance (``tool:*`` for a client allowed
    ``tool:add``) is granted as the allowed scopes it covers. Anything else is dropped.
    """
    out: list[str] = []
    for scope in requested:
        if any(scope_grants_scope(a, scope) for a in allowed):
            out.append(scope)
        else:
            out.extend(a for a in allowed if scope_grants_scope(scope, a))
    return tuple(dict.fromkeys(out))


def pick_audience(client: Client, resources: Sequence[str]) -> str:
    """The one audience a token gets: the requested ``resource`` (RFC 8707 2), canonical.

    Resources compare in canonical form (:mod:`jwtmcp.identifiers`), so ``.../mcp/`` asks
    for ``.../mcp``. Without ``resource`` a client with one audience gets it; a client with
    several must choose. A token is never issued for several servers: each of them could
    replay it to the others. Raises :class:`OAuthError` ``invalid_target`` otherwise.
    """
    if not resources:
        if len(client.audiences) == 1:
            return client.audiences[0]
        raise OAuthError(
            "invalid_target",
            "this client may get tokens for several resources; ask for one with the "
            "resource parameter (RFC 8707): " + ", ".join(client.audiences),
        )
    wanted: dict[str, None] = {}
    for resource in resources:
        canonical = canonical_or_none(resource, "resource")
        if canonical is None or canonical not in client.audiences:
            raise OAuthError(
                "invalid_target",
                "the requested resource is not one this client may get tokens for",
            )
        wanted[canonical] = None
    if len(wanted) > 1:
        raise OAuthError(
            "invalid_target",
            "ask for one resource per token: a token for several servers would let each "
            "of them replay it to the others",
        )
    return next(iter(wanted))


def _scope_tokens(scope: str) -> list[str]:
    parts = scope.split(" ")
    for part in parts:
        if part and not all(0x21 <= ord(c) <= 0x7E and c not in '"\\' for c in part):
            raise _invalid_request("the scope parameter holds invalid characters")
    return [p for p in parts if p]


# --- the service ---------------------------------------------------------------------------


class IssuerService:
    """The request handlers over one ring watcher and one clients watcher."""

    def __init__(
        self,
        settings: IssuerSettings,
        *,
        clock: Clock = time.time,
        rate_limit_clock: Clock = time.monotonic,
        sign_in: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.issuer = canonical_issuer(settings.issuer_url)
        if settings.default_ttl <= 0 or settings.jwks_max_age < 0:
            raise ConfigError("the default token lifetime and the JWKS max age must be positive")
        self.clock = clock
        self.rings = RingWatcher(
            settings.keys_dir,
            interval=settings.reload_interval,
            on_error=lambda reason: _log_reload_failure("key ring", reason),
            background=True,  # a key in custody: its public key is read off the event loop
        )
        self.clients = ClientsWatcher(
            settings.clients_file,
            interval=settings.reload_interval,
            on_error=lambda reason: _log_reload_failure("clients file", reason),
        )
        local_limiter = RateLimiter(
            settings.rate_limit, settings.rate_burst, monotonic=rate_limit_clock
        )
        self.limiter: Limiter = local_limiter
        self.token_grants: dict[str, TokenGrant] = {}
        """More grants of ``/token`` by ``grant_type`` URI (RFC 7523, RFC 8693...): each is
        called with the parsed form and the ``Authorization`` header values, authenticates
        its client (:meth:`authenticate_client`) and returns the encoded answer or raises
        :class:`OAuthError`."""
        self.metrics = IssuerMetrics(self.rings, clock) if settings.metrics else None
        self.events = IssuerEvents(self.clients, self.metrics, clock)
        """Where every grant reports the tokens it issues (audit line, metrics)."""
        self._jwks_cache: tuple[KeyRing, bytes, str] | None = None
        from .revocation_issuer import install_revocation

        self.revocation = install_revocation(self)  # the revocation list and /admin/revoke
        self._metadata_cache: tuple[ClientTable, bytes] | None = None
        from .grants import grants_for_issuer  # it imports this module
        from .signin import build_sign_in

        # One set of sign-in parts: /authorize and the token endpoint's grants share the
        # client resolver, the identity source and the store file.
        options: dict[str, Any] = {
            "users_file": settings.users_file or None,
            "store": settings.store or None,
            "store_busy_timeout": settings.store_busy_timeout,
            "clock": clock,
        }
        options.update(sign_in or {})
        from .oidc import federation_for_issuer

        self.federation = federation_for_issuer(
            issuer=self.issuer,
            clients_file=settings.clients_file,
            providers_file=settings.providers_file or None,
            policy_file=settings.policy_file or None,
            clock=clock,
            reload_interval=settings.reload_interval,
        )
        options["federation"] = self.federation
        self.sign_in = build_sign_in(
            issuer=self.issuer,
            keys_dir=settings.keys_dir,
            clients_file=settings.clients_file,
            **options,
        )
        given_store = options.get("store")
        identity = self.sign_in.identity
        self.grants: InteractiveGrants = grants_for_issuer(
            issuer=self.issuer,
            rings=self.rings,
            clients=self.clients,
            keys_dir=settings.keys_dir,
            clients_file=settings.clients_file,
            store_file=settings.store,
            users_file=settings.users_file,
            default_ttl=settings.default_ttl,
            refresh_idle_ttl=settings.refresh_idle_ttl,
            refresh_max_ttl=settings.refresh_max_ttl,
            clock=clock,
            # A Store object is shared as it is; a location is opened by the grants too (a
            # second connection to one file, plus the no-wait one they try first).
            store=given_store if not isinstance(given_store, str | os.PathLike | None) else None,
            resolver=self.sign_in.resolver,
            identity_sources={
                identity.source_id: identity,
                **(self.federation.sources if self.federation is not None else {}),
            },
            store_busy_timeout=settings.store_busy_timeout,
        )
        self.grants.events = self.events
        self.grants.throttle = self.throttle
        from .client_auth import PrivateKeyJwtAuthenticator

        self.private_key_jwt = PrivateKeyJwtAuthenticator(
            self, allow_loopback_http=settings.allow_loopback_http_jwks
        )
        from .jwt_bearer import install_jwt_bearer
        from .token_exchange import install_token_exchange  # they import this module

        install_jwt_bearer(self)  # RFC 7523 jwt-bearer, SEP-990 identity assertions
        install_token_exchange(self)  # RFC 8693 token exchange
        # Replicas sharing a networked store (Redis) share each client's bucket there too.
        self.limiter = shared_limiter(local_limiter, settings.store, given_store, self.grants.store)

    # -- documents ----------------------------------------------------------------------

    def jwks_document(self) -> tuple[bytes, str]:
        """The JWKS body and its ETag, rebuilt only when the ring changed."""
        ring = self.rings.current()
        cached = self._jwks_cache
        if cached is None or cached[0] is not ring:
            body = json.dumps(ring.jwks(), separators=(",", ":")).encode()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            cached = self._jwks_cache = (ring, body, etag)
        return cached[1], cached[2]

    def metadata(self) -> dict[str, Any]:
        """The RFC 8414 authorization server metadata document."""
        base = self.issuer
        return {
            "issuer": base,
            "token_endpoint": f"{base}/token",
            "jwks_uri": f"{base}/.well-known/jwks.json",
            **self.sign_in.metadata(base),
            "grant_types_supported": self.grant_types_supported(),
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
                "private_key_jwt",
                "none",
            ],
            "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
            "scopes_supported": list(self.clients.current().all_scopes()),
        }

    def metadata_document(self) -> bytes:
        table = self.clients.current()
        cached = self._metadata_cache
        if cached is None or cached[0] is not table:
            cached = self._metadata_cache = (table, json.dumps(self.metadata()).encode())
        return cached[1]

    # -- handlers -----------------------------------------------------------------------

    async def jwks(self, request: Request) -> Response:
        body, etag = self.jwks_document()
        headers = {
            "Cache-Control": f"public, max-age={self.settings.jwks_max_age}",
            "ETag": etag,
            "Access-Control-Allow-Origin": "*",
        }
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(body, headers=headers, media_type=JSON_TYPE)

    async def oauth_metadata(self, request: Request) -> Response:
        headers = {"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*"}
        return Response(self.metadata_document(), headers=headers, media_type=JSON_TYPE)

    async def healthz(self, request: Request) -> Response:
        """Liveness for anyone: states only. Why a file failed to reload goes to the log
        (paths and client names are not for unauthenticated callers)."""
        ring = self.rings.current()
        table = self.clients.current()
        ring_state = "stale" if self.rings.last_error else "ok"
        clients_state = "stale" if self.clients.last_error else "ok"
        nxt = ring.next
        body = {
            "status": "ok" if ring_state == clients_state == "ok" else "degraded",
            "issuer": self.issuer,
            "ring": ring_state,
            "clients": clients_state,
            "active_kid": ring.active.kid,
            "next_kid": nxt.kid if nxt else None,
            "published_keys": len(ring.keys),
            "ring_revision": ring.revision,
            "client_count": len(table),
        }
        return Response(json.dumps(body).encode(), headers=_NO_STORE, media_type=JSON_TYPE)

    async def token(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /token`` as a plain ASGI app: the hot path skips routing and Request objects."""
        try:
            body, status, headers = await self._token(scope, receive)
        except OAuthError as exc:
            self.events.token_refused(exc.error)
            if log.isEnabledFor(logging.INFO):
                log.info(
                    json.dumps(
                        {
                            "event": "token_refused",
                            "error": exc.error,
                            **client_fields(exc.client_id, exc.client_name),
                        }
                    )
                )
            body, status, headers = exc.encoded()
        except SignerUnavailable as exc:  # any grant: the key's HSM or KMS is down
            body, status, headers = signer_unavailable(exc).encoded()
        except _Disconnected:
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _read_body(self, receive: Receive, content_length: bytes | None) -> bytes:
        limit = self.settings.max_body_bytes
        if content_length is not None:
            try:
                declared = parse_whole_number(content_length)
            except ValueError:
                raise _invalid_request("invalid Content-Length") from None
            if declared > limit:
                raise _too_large(limit)
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk: bytes = message.get("body", b"")
            body += chunk
            if len(body) > limit:
                raise _too_large(limit)
            if not message.get("more_body", False):
                return body

    async def _token(self, scope: Scope, receive: Receive) -> _Encoded:
        content_type = b""
        content_length: bytes | None = None
        authorizations: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                content_length = value
            elif name == b"authorization":
                authorizations.append(value)
        if content_type.partition(b";")[0].strip().lower() != FORM_TYPE_BYTES:
            raise _invalid_request(f"the token request must be a {FORM_TYPE} form")
        form = parse_form(await self._read_body(receive, content_length))
        params = form.params
        # The grant type before the client (RFC 6749 5.2): a request no grant can answer is
        # invalid_request / unsupported_grant_type whoever sends it, and says nothing of the
        # credentials, so a wrong secret and an unknown client still look the same.
        grant_type = params.get("grant_type")
        if grant_type is None:
            raise _invalid_request("the grant_type parameter is missing")
        if grant_type in INTERACTIVE_GRANT_TYPES:
            # Sign-in grants: public clients, the state store (jwtmcp.grants).
            return await self.grants.token(form, authorizations)
        extra = self.token_grants.get(grant_type)
        if extra is not None:
            return await extra(form, authorizations)
        if grant_type != "client_credentials":
            raise OAuthError(
                "unsupported_grant_type",
                "supported grants: " + ", ".join(self.grant_types_supported()),
            )

        client = await self.authenticate_client(params, authorizations)
        try:
            return await self._grant(client, form)
        except OAuthError as exc:
            exc.client_id = client.client_id
            raise

    async def authenticate_client(
        self, params: Mapping[str, str], authorizations: Sequence[bytes]
    ) -> Client:
        """The confidential client of the clients file that sent a token request
        (RFC 6749 2.3.1: ``client_secret_basic`` or ``client_secret_post``; RFC 7523 §2.2:
        ``private_key_jwt``, see :mod:`jwtmcp.client_auth`).

        Every grant that needs a registered, authenticated client (``client_credentials``
        and the grants in :attr:`token_grants`) authenticates through here, so a new client
        authentication method is added in one place. Async: a client's ``jwks_uri`` and the
        ``jti`` replay store may be consulted. Raises :class:`OAuthError`
        ``invalid_client`` (401) for an unknown client, a wrong or missing secret or a
        refused client assertion, ``invalid_request`` as :func:`client_credentials` does,
        and 503 ``temporarily_unavailable`` when a key set or the store is unreachable.
        """
        if "client_assertion" in params or "client_assertion_type" in params:
            return await self.private_key_jwt.authenticate(params, authorizations)
        client_id, secret = client_credentials(params, authorizations)
        if not secret:
            raise _invalid_client()
        table = self.clients.current()
        client = table.authenticate(client_id, secret)
        if client is None:
            refused = _invalid_client()
            # Log the id only when it names a real client: a caller who swapped id and
            # secret must not get its secret written to the log.
            if table.get(client_id) is not None:
                refused.client_id = client_id
            raise refused
        return client

    def throttle(self, key: str, what: str = "token requests for this client") -> None:
        """Take one request from ``key``'s bucket (a client id, or a workload's subject):
        the ``--rate-limit``/``--rate-burst`` limit every grant and ``/admin/revoke`` share,
        across replicas when the store is networked. Raises :class:`OAuthError`
        ``slow_down`` (429, RFC 8628 3.5's code) with ``Retry-After`` in whole seconds when
        the bucket is empty."""
        wait = self.limiter.acquire(key)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise OAuthError(
                "slow_down",
                f"too many {what}; retry in {retry} s",
                429,
                {"Retry-After": str(retry)},
            )

    def grant_types_supported(self) -> list[str]:
        """The ``grant_type`` values ``/token`` answers (RFC 8414 ``grant_types_supported``)."""
        return ["client_credentials", "authorization_code", "refresh_token", *self.token_grants]

    async def _grant(self, client: Client, form: TokenRequest) -> _Encoded:
        """Everything after authentication: rate limit, scope, audience, mint."""
        params = form.params
        self.throttle(client.client_id)

        # The resource first: a client asking for a server it may not use gets that reason,
        # not invalid_scope for the other server's tool scopes it was told to ask for.
        audience = pick_audience(client, form.resources)

        allowed = client.allowed_scopes
        requested = params.get("scope")
        if requested is None:
            granted = allowed
        else:
            granted = narrow_scopes(allowed, _scope_tokens(requested))
            if not granted:
                raise OAuthError(
                    "invalid_scope", "none of the requested scopes is allowed for this client"
                )

        ring = self.rings.current()
        lifetime = self.settings.default_ttl
        requested_ttl = params.get("expires_in")
        if requested_ttl is not None:
            try:
                lifetime = parse_whole_number(requested_ttl)
            except ValueError:
                lifetime = 0
            if not 0 < lifetime < 10**9:
                raise _invalid_request("expires_in must be a positive number of seconds")
        if client.max_ttl is not None:
            lifetime = min(lifetime, client.max_ttl)
        lifetime = min(lifetime, ring.max_lifetime)

        try:
            claims = build_claims(
                issuer=self.issuer,
                subject=client.subject,
                audience=audience,
                client_id=client.client_id,
                scopes=granted,
                lifetime=lifetime,
                max_lifetime=ring.max_lifetime,
                now=self.clock(),
            )
            signed = await sign_async(claims, self.rings)
            token = signed.token
        except SignerUnavailable as exc:
            raise signer_unavailable(exc) from None
        except JwtMcpError as exc:  # a misconfiguration, not the caller's fault
            log.error(json.dumps({"event": "token_error", "error": exc.message}))
            raise OAuthError("server_error", "the token could not be issued", 500) from None
        self.events.token_issued(claims, grant_type="client_credentials", kid=signed.kid)
        granted_scope = claims["scope"]
        if log.isEnabledFor(logging.INFO):
            log.info(
                json.dumps(
                    {
                        "event": "token_issued",
                        "client_id": short_client_id(client.client_id),
                        "sub": client.subject,
                        "scope": granted_scope,
                        "aud": claims["aud"],
                        "kid": signed.kid,
                        "jti": claims["jti"],
                        "expires_in": lifetime,
                    }
                )
            )
        body = (
            '{"access_token":"'
            + token
            + '","token_type":"Bearer","expires_in":'
            + str(lifetime)
            + ',"scope":'
            + json.dumps(granted_scope)
            + "}"
        ).encode()
        return body, 200, _json_headers(len(body), _NO_STORE_RAW)


def create_app(
    *,
    issuer_url: str,
    keys_dir: str | os.PathLike[str] = "keys",
    clients_file: str | os.PathLike[str] = "clients.json",
    jwks_max_age: int = DEFAULT_JWKS_MAX_AGE,
    default_ttl: int = DEFAULT_LIFETIME,
    rate_limit: float = DEFAULT_RATE_LIMIT,
    rate_burst: int = DEFAULT_RATE_BURST,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    reload_interval: float = DEFAULT_RELOAD_INTERVAL,
    clock: Clock = time.time,
    rate_limit_clock: Clock = time.monotonic,
    users_file: str | os.PathLike[str] | None = None,
    store: Store | str | os.PathLike[str] | None = None,
    metadata_fetcher: ClientMetadataFetcher | None = None,
    login_limits: LoginLimits | None = None,
    refresh_idle_ttl: int = DEFAULT_REFRESH_IDLE_TTL,
    refresh_max_ttl: int = DEFAULT_REFRESH_MAX_TTL,
    store_busy_timeout: float | None = None,
    client_resolver: ClientResolver | None = None,
    identity_source: PasswordSource | None = None,
    allow_loopback_http_jwks: bool = False,
    providers_file: str | os.PathLike[str] | None = None,
    policy_file: str | os.PathLike[str] | None = None,
    metrics: bool = False,
    metrics_path: str = "/metrics",
    revocations_file: str | os.PathLike[str] | None = None,
    revocation_max_age: int = DEFAULT_REVOCATION_MAX_AGE,
) -> Starlette:
    """The issuer as a Starlette app over an existing key ring and clients file.

    ``rate_limit`` is token requests per second per client (``0`` turns limiting off) with
    bursts of ``rate_burst``; ``clock`` stamps tokens; ``rate_limit_clock`` drives the
    buckets. Raises :class:`KeyRingError` or :class:`ClientsError` if a file is unusable.

    Interactive sign-in (:mod:`jwtmcp.signin`, :mod:`jwtmcp.grants`): ``users_file``
    (default ``users.json`` beside ``clients_file``), ``store`` (a
    :class:`~jwtmcp.store.Store` or its location; default ``jwtmcp-state.db`` beside
    ``keys_dir``), ``metadata_fetcher`` (Client ID Metadata Documents; the default refuses
    private and loopback hosts), ``login_limits`` (failed logins per user and per address),
    the refresh-token lifetimes (seconds) and ``store_busy_timeout`` (seconds a request waits
    for another writer). ``client_resolver`` and ``identity_source`` replace the ones built
    from those files. ``providers_file`` and ``policy_file`` configure upstream OpenID login
    (:mod:`jwtmcp.oidc`, :mod:`jwtmcp.policy`). ``allow_loopback_http_jwks`` (development
    only) lets ``private_key_jwt`` clients and trusted issuers publish their keys over plain
    http on loopback. The store is opened on first use: while it cannot be, sign-in and the
    code and refresh grants answer 503 with ``Retry-After`` and ``client_credentials`` works.

    ``metrics=True`` collects Prometheus metrics (:mod:`jwtmcp.metrics`, in the service's own
    registry ``app.state.issuer.metrics.registry``) and serves them, unauthenticated, at
    ``metrics_path`` (empty: nowhere). See docs/observability.md.

    Revocation (:mod:`jwtmcp.revocation_issuer`): ``revocations_file`` (default
    ``revocations.json`` beside ``clients_file``) and ``revocation_max_age`` (seconds the
    signed list at ``/.well-known/jwtmcp-revocations`` may be cached, default 60).
    """
    sign_in: dict[str, Any] = {}
    if store is not None and not isinstance(store, (str, os.PathLike)):
        sign_in["store"] = store
        store = None
    if metadata_fetcher is not None:
        sign_in["metadata_fetcher"] = metadata_fetcher
    if login_limits is not None:
        sign_in["login_limits"] = login_limits
    if client_resolver is not None:
        sign_in["resolver"] = client_resolver
    if identity_source is not None:
        sign_in["identity_source"] = identity_source
    settings = IssuerSettings(
        issuer_url=issuer_url,
        keys_dir=os.fspath(keys_dir),
        clients_file=os.fspath(clients_file),
        jwks_max_age=jwks_max_age,
        default_ttl=default_ttl,
        rate_limit=rate_limit,
        rate_burst=rate_burst,
        max_body_bytes=max_body_bytes,
        reload_interval=reload_interval,
        users_file=os.fspath(users_file) if users_file is not None else "",
        store=os.fspath(store) if store is not None else "",
        refresh_idle_ttl=refresh_idle_ttl,
        refresh_max_ttl=refresh_max_ttl,
        store_busy_timeout=store_busy_timeout,
        allow_loopback_http_jwks=allow_loopback_http_jwks,
        providers_file=os.fspath(providers_file) if providers_file is not None else "",
        policy_file=os.fspath(policy_file) if policy_file is not None else "",
        metrics=metrics,
        metrics_path=metrics_path if metrics else "",
        revocations_file=os.fspath(revocations_file) if revocations_file is not None else "",
        revocation_max_age=revocation_max_age,
    )
    service = IssuerService(
        settings, clock=clock, rate_limit_clock=rate_limit_clock, sign_in=sign_in
    )
    return _build_app(service)


def _build_app(service: IssuerService) -> Starlette:
    metadata_paths = ["/.well-known/oauth-authorization-server"]
    issuer_path = urlsplit(service.issuer).path
    if issuer_path:
        # RFC 8414 3: an issuer with a path has its metadata at the well-known URI plus
        # that path (useful behind a proxy that forwards the whole well-known tree).
        metadata_paths.append(f"/.well-known/oauth-authorization-server{issuer_path}")
    # CORS (as the MCP SDK's own authorization server does) for what a browser-based client
    # calls: any origin, never credentials. Not /authorize: its pages are same-origin.
    cors = {
        "/token": _preflight_headers(b"POST, OPTIONS"),
        "/register": _preflight_headers(b"POST, OPTIONS"),
        **{p: _preflight_headers(b"GET, HEAD, OPTIONS") for p in metadata_paths},
        "/.well-known/jwks.json": _preflight_headers(b"GET, HEAD, OPTIONS"),
    }
    routes = [
        Route("/token", _token_method_not_allowed, methods=["GET", "PUT", "PATCH", "DELETE"]),
        Route("/.well-known/jwks.json", service.jwks, methods=["GET"]),
        *(Route(p, service.oauth_metadata, methods=["GET"]) for p in metadata_paths),
        Route("/healthz", service.healthz, methods=["GET"]),
        *service.revocation.routes(),
        *service.sign_in.routes(),
    ]
    middleware = [Middleware(_TokenEndpoint, service=service, cors=cors)]
    if service.metrics is not None:
        metrics_path = service.settings.metrics_path
        if metrics_path:
            routes.append(Route(metrics_path, MetricsEndpoint(service.metrics.registry)))
        endpoints = {
            "/token": "token",
            "/.well-known/jwks.json": "jwks",
            "/register": "register",
            "/healthz": "healthz",
            **{p: "metadata" for p in metadata_paths},
            **({metrics_path: "metrics"} if metrics_path else {}),
        }
        # Outermost: it times the whole answer, /token's hot path included.
        middleware.insert(
            0, Middleware(IssuerMetricsMiddleware, metrics=service.metrics, endpoints=endpoints)
        )
    app = Starlette(routes=routes, middleware=middleware)
    app.state.issuer = service
    return app


async def _token_method_not_allowed(request: Request) -> Response:
    return Response("Method Not Allowed", 405, headers={"Allow": "POST, OPTIONS"})


_RawHeaders = list[tuple[bytes, bytes]]

CORS_ALLOW_HEADERS = b"Authorization, Content-Type, mcp-protocol-version"
"""Request headers a browser-based client may send cross-origin (the Fetch standard also
allows the CORS-safelisted ones)."""
CORS_MAX_AGE = 600
"""Seconds a browser may cache a preflight answer (as Starlette's CORSMiddleware)."""


def _preflight_headers(methods: bytes) -> _RawHeaders:
    """The answer to ``OPTIONS`` on a CORS endpoint (Fetch standard, CORS protocol): any
    origin, ``methods``, the headers MCP clients send, and no ``-Allow-Credentials``."""
    return [
        (b"allow", methods),
        _ALLOW_ANY_ORIGIN,
        (b"access-control-allow-methods", methods),
        (b"access-control-allow-headers", CORS_ALLOW_HEADERS),
        (b"access-control-max-age", str(CORS_MAX_AGE).encode()),
    ]


def _allowing_any_origin(send: Send) -> Send:
    """``send`` adding ``Access-Control-Allow-Origin: *`` to an answer that lacks it."""

    async def send_with_cors(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if not any(name.lower() == _ALLOW_ANY_ORIGIN[0] for name, _ in headers):
                headers.append(_ALLOW_ANY_ORIGIN)
                message = {**message, "headers": headers}
        await send(message)

    return send_with_cors


class _TokenEndpoint:
    """Sends ``POST /token`` straight to the issuer, ahead of routing (the hot path), and does
    CORS for the ``cors`` paths: ``OPTIONS`` is 204 with their preflight headers, every other
    answer (the routes' own, 405, 413...) gets ``Access-Control-Allow-Origin: *``."""

    def __init__(
        self, app: ASGIApp, service: IssuerService, cors: Mapping[str, _RawHeaders]
    ) -> None:
        self.app = app
        self.service = service
        self.cors = dict(cors)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path == "/token" and scope["method"] == "POST":
                await self.service.token(scope, receive, send)
                return
            preflight = self.cors.get(path)
            if preflight is not None:
                if scope["method"] == "OPTIONS":
                    await send({"type": "http.response.start", "status": 204, "headers": preflight})
                    await send({"type": "http.response.body", "body": b""})
                else:
                    await self.app(scope, receive, _allowing_any_origin(send))
                return
        await self.app(scope, receive, send)


# --- serve ---------------------------------------------------------------------------------


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming the wildcard, not binding it
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


class _LogFormatter(logging.Formatter):
    """``%(asctime)s %(name)s %(message)s``, the date and time formatted once a second
    (:meth:`logging.Formatter.formatTime` calls ``localtime`` and ``strftime`` per line)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(name)s %(message)s")
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if self._second[0] != second:
            text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = (second, text)
        return "%s,%03d" % (self._second[1], record.msecs)  # noqa: UP031 - the stdlib's own


def _configure_logging(level: int = logging.INFO) -> None:
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LogFormatter())
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    # This process is the issuer's own and no format it logs with shows the caller's file
    # and line, the thread or the process: not collecting them takes about a quarter off
    # every log line, e.g. each token_issued (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def _configure_audit_log(where: str) -> None:
    """``serve --audit-log``: the ``jwtmcp.audit`` lines, bare JSON, appended to the file
    ``where`` (``-``: stderr). Off by default: the service's own log already has a
    ``token_issued`` line per token, and a second line costs ~6% of ``/token``'s CPU."""
    if not where or audit_log.handlers:
        return
    handler: logging.Handler
    if where == "-":
        handler = logging.StreamHandler(sys.stderr)
    else:
        try:
            handler = logging.FileHandler(where, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot open the audit log {where}: {exc.strerror}") from None
    handler.setFormatter(logging.Formatter("%(message)s"))
    audit_log.addHandler(handler)
    audit_log.setLevel(logging.INFO)
    audit_log.propagate = False


METRICS_OFF = "off"
METRICS_SAME_PORT = "on"


def metrics_listener(value: str) -> tuple[str, int] | None:
    """``serve --metrics``: ``off`` (None), ``on`` (``("", 0)``: ``/metrics`` on the issuer's
    own port), or ``[HOST:]PORT`` (a separate listener; HOST defaults to 127.0.0.1).
    Raises :class:`ConfigError` for anything else."""
    if value == METRICS_OFF:
        return None
    if value == METRICS_SAME_PORT:
        return ("", 0)
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = parse_whole_number(port_text)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ConfigError(
            f"--metrics must be off, on, PORT or HOST:PORT, not {ascii(value)[:60]}"
        )
    return host, port


def app_from_environment() -> Starlette:
    """App factory for ``uvicorn --factory`` and ``serve --workers N``: settings from env."""
    raw = os.environ.get(ENV_SETTINGS)
    if not raw:
        raise ConfigError(f"${ENV_SETTINGS} is not set; start the issuer with 'jwtmcp serve'")
    _configure_logging()
    settings = IssuerSettings(**json.loads(raw))
    _configure_audit_log(settings.audit_log)
    return _build_app(IssuerService(settings))


def jwtmcp_command() -> str:
    """How a shell runs this jwtmcp as printed: ``jwtmcp`` when PATH finds this very
    installation's command, else that command's absolute path (a venv that is not
    activated, e.g. ``scripts/serve``'s ``.venv``), else ``<this python> -m jwtmcp``."""
    script = Path(sys.executable).parent / "jwtmcp"
    on_path = shutil.which("jwtmcp")
    if script.is_file() and os.access(script, os.X_OK):
        if on_path is not None and Path(on_path).resolve() == script.resolve():
            return "jwtmcp"
        return shlex.quote(str(script.absolute()))
    return f"{shlex.quote(sys.executable)} -m jwtmcp"


TOUR_DEFAULT_ISSUER = "http://127.0.0.1:8000"
"""The issuer ``jwtmcp mint``/``verify`` and ``scripts/*.py`` assume without ``$JWTMCP_ISSUER``
(``jwtmcp.cli.DEFAULT_ISSUER``)."""


def first_run_banner(
    *,
    base_url: str,
    issuer: str,
    client_id: str,
    secret: str,
    audience: str,
) -> str:
    """The text ``serve`` prints once when it created the demo client.

    When ``issuer`` is not the default every other command assumes
    (:data:`TOUR_DEFAULT_ISSUER`: ``jwtmcp mint``/``verify``, ``scripts/*.py``), the text
    starts with the ``export JWTMCP_ISSUER=...`` line that points them at this issuer.
    """
    curl = f"curl -s -u '{client_id}:{secret}' -d grant_type=client_credentials {base_url}/token"
    extract = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])'"
    point = ""
    if issuer != TOUR_DEFAULT_ISSUER:
        point = (
            f"This issuer is not {TOUR_DEFAULT_ISSUER}, which jwtmcp mint/verify and\n"
            "scripts/*.py assume; in each shell you run them from, first:\n"
            f"  export JWTMCP_ISSUER={shlex.quote(issuer)}\n"
        )
    return (
        f"jwtmcp: created a demo client (tools: {', '.join(DEMO_TOOLS)}; audience: {audience})\n"
        f"  client id:     {client_id}\n"
        f"  client secret: {secret}\n"
        "  (the secret is shown only now; only its hash is stored)\n"
        "\n"
        f"{point}"
        "Fetch a token:\n"
        f"  {curl}\n"
        "Check it:\n"
        f"  TOKEN=$({curl} | {extract})\n"
        f'  {jwtmcp_command()} verify "$TOKEN" --jwks {base_url}/.well-known/jwks.json '
        f"--issuer {issuer} --audience {audience}\n"
    )


def first_run_user_banner(
    *, base_url: str, users_file: str, name: str, password: str, audience: str
) -> str:
    """The text ``serve`` prints once when it created the demo user."""
    return (
        f"jwtmcp: created the users file {users_file} with a demo user for the sign-in page\n"
        f"  user name:     {name}\n"
        f"  user password: {password}\n"
        f"  (tools: {', '.join(DEMO_TOOLS)}; audience: {audience}; the password is shown only "
        "now; only its Argon2 hash is stored)\n"
        f"  Interactive MCP clients sign in at {base_url}/authorize; add people with\n"
        f"  {jwtmcp_command()} users add NAME --tools add,subtract --audience {audience}\n"
    )


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    issuer_url: str | None = None,
    keys_dir: str = "keys",
    clients_file: str = "clients.json",
    users_file: str | None = None,
    store: str | None = None,
    workers: int = 1,
    jwks_max_age: int = DEFAULT_JWKS_MAX_AGE,
    default_ttl: int = DEFAULT_LIFETIME,
    rate_limit: float = DEFAULT_RATE_LIMIT,
    rate_burst: int = DEFAULT_RATE_BURST,
    refresh_idle_ttl: int = DEFAULT_REFRESH_IDLE_TTL,
    refresh_max_ttl: int = DEFAULT_REFRESH_MAX_TTL,
    metrics: str = METRICS_OFF,
    audit_log: str | None = None,
    out: IO[str] | None = None,
    providers_file: str | None = None,
    policy_file: str | None = None,
    revocation_max_age: int = DEFAULT_REVOCATION_MAX_AGE,
) -> None:
    """Set up on first run (ring, clients file with a demo client, users file with a demo
    user), print how to use it, serve.

    ``issuer_url`` defaults to ``http://HOST:PORT``; ``users_file`` to ``users.json`` beside
    ``clients_file``; ``store`` to ``jwtmcp-state.db`` beside ``keys_dir``; refresh lifetimes
    are seconds; ``providers_file`` and ``policy_file`` configure upstream OpenID login
    (default: ``providers.json`` and ``policy.json`` beside ``clients_file``). ``metrics`` is
    ``off``, ``on`` (``GET /metrics`` on this port) or ``[HOST:]PORT`` (a separate listener,
    loopback by default): see :func:`metrics_listener`. ``audit_log`` is a file the
    ``jwtmcp.audit`` JSON lines are appended to (``-``: stderr; None: none). Blocks until the
    server stops.
    """
    out = out or sys.stdout
    if not 0 < port < 65536:
        raise ConfigError(f"not a TCP port: {port}")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, not {workers}")
    metrics_at = metrics_listener(metrics)
    if metrics_at is not None and workers > 1:
        raise ConfigError(
            "--metrics needs --workers 1: each worker process counts on its own, so a "
            "scrape would see one worker at random"
        )
    audit_target = audit_log or ""
    if audit_target not in ("", "-"):
        audit_target = str(Path(audit_target).resolve())  # workers may start elsewhere
    _configure_audit_log(audit_target)  # a file that cannot be opened fails now, not later
    limits = ServerLimits.from_environment()
    if store and is_networked_location(store):
        # A malformed Redis URL (or redis-py missing) fails now, in one line; it connects later.
        open_store(store).close()
    base_url = f"http://{_url_host(host)}:{port}"
    issuer = canonical_issuer(issuer_url or base_url)
    warning = issuer_url_warning(issuer)
    if warning:
        print(f"jwtmcp: warning: {warning}", file=sys.stderr)
    if issuer_url is None and host in ("0.0.0.0", "::"):  # noqa: S104
        print(
            f"jwtmcp: warning: listening on all interfaces, but tokens will say iss={issuer}; "
            "pass --issuer with the URL clients use",
            file=sys.stderr,
        )
    sock = bind_socket(host, port)  # a taken port fails now, before any set-up or banner
    ring, ring_created = ensure_ring(keys_dir)
    if ring_created:
        print(f"jwtmcp: created a key ring in {keys_dir} (active {ring.active.kid})", file=out)
    table, demo = ensure_clients(
        clients_file,
        demo_name=DEMO_CLIENT,
        demo_tools=DEMO_TOOLS,
        demo_audiences=(DEMO_AUDIENCE,),
    )
    if demo is not None:
        client, secret = demo
        print(f"jwtmcp: created the clients file {clients_file}", file=out)
        print(
            first_run_banner(
                base_url=base_url,
                issuer=issuer,
                client_id=client.client_id,
                secret=secret,
                audience=client.audiences[0],
            ),
            file=out,
        )
    users_path = Path(users_file) if users_file else users_file_beside(clients_file)
    users, demo_user = ensure_users(
        users_path,
        demo_name=DEMO_USER,
        demo_tools=DEMO_TOOLS,
        demo_audiences=(DEMO_AUDIENCE,),
    )
    if demo_user is not None:
        user, password = demo_user
        print(
            first_run_user_banner(
                base_url=base_url,
                users_file=str(users_path),
                name=user.name,
                password=password,
                audience=user.audiences[0],
            ),
            file=out,
        )
    print(
        f"jwtmcp: issuer {issuer} on {base_url} ({len(table)} client(s), {len(users)} user(s), "
        f"active kid {ring.active.kid}, {workers} worker(s))",
        file=out,
        flush=True,
    )
    from .oidc import federation_for_issuer

    # A bad providers or policy file stops the start here, in one line, before any worker.
    federation = federation_for_issuer(
        issuer=issuer,
        clients_file=clients_file,
        providers_file=providers_file,
        policy_file=policy_file,
    )
    if federation is not None:
        names = ", ".join(p.display_name for p in federation.providers())
        print(f"jwtmcp: upstream sign-in with {names or 'no provider'}", file=out)
        federation.close()
    settings = IssuerSettings(
        issuer_url=issuer,
        keys_dir=str(Path(keys_dir).resolve()),
        clients_file=str(Path(clients_file).resolve()),
        jwks_max_age=jwks_max_age,
        default_ttl=default_ttl,
        rate_limit=rate_limit,
        rate_burst=rate_burst,
        users_file=str(users_path.resolve()),
        # A URL (sqlite:///ABS, redis://...) is kept as given; only a bare path is resolved.
        store=(store if "://" in store else str(Path(store).resolve())) if store else "",
        refresh_idle_ttl=refresh_idle_ttl,
        refresh_max_ttl=refresh_max_ttl,
        providers_file=str(Path(providers_file).resolve()) if providers_file else "",
        policy_file=str(Path(policy_file).resolve()) if policy_file else "",
        metrics=metrics_at is not None,
        metrics_path="/metrics" if metrics_at == ("", 0) else "",
        audit_log=audit_target,
        revocation_max_age=revocation_max_age,
    )
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "limits": limits,
        "sock": sock,
        "access_log": False,  # the structured jwtmcp.issuer lines replace it
        "server_header": False,
        "log_level": "info",
        "timeout_graceful_shutdown": 5,
    }
    if workers == 1:
        _configure_logging()
        service = IssuerService(settings)
        app = _build_app(service)
        if metrics_at is not None and metrics_at[1] and service.metrics is not None:
            from prometheus_client import start_http_server

            start_http_server(metrics_at[1], metrics_at[0], registry=service.metrics.registry)
            where = f"http://{_url_host(metrics_at[0])}:{metrics_at[1]}/metrics"
            print(f"jwtmcp: metrics on {where}", file=out, flush=True)
        run_server(app, **common)
        return
    os.environ[ENV_SETTINGS] = json.dumps(asdict(settings))
    with contextlib.suppress(KeyboardInterrupt):
        run_server("jwtmcp.issuer:app_from_environment", factory=True, workers=workers, **common)
