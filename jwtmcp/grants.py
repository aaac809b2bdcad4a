"""The token endpoint's interactive grants: one class per grant, each naming its RFC section.

- :class:`AuthorizationCodeGrant` — ``grant_type=authorization_code`` (OAuth 2.1 §4.1.3,
  RFC 6749 §4.1.3): redeems a code the authorization endpoint put in the store, checking the
  PKCE verifier (RFC 7636 §4.6), the client, the redirect URI and the resource (RFC 8707 §2.2).
- :class:`RefreshTokenGrant` — ``grant_type=refresh_token`` (OAuth 2.1 §4.3, RFC 6749 §6):
  rotates the refresh token on every use, with reuse detection (RFC 9700 §4.14.2).

:class:`InteractiveGrants` holds what both need (the store, the client resolver, the identity
sources, the ring) and authenticates the client first (OAuth 2.1 §2.4, RFC 6749 §2.3):

- a **public client** (a Client ID Metadata Document or an RFC 7591 registration, with
  ``token_endpoint_auth_method`` ``none``) sends ``client_id`` alone; PKCE is its proof;
- a **confidential client** of the clients file authenticates with its secret
  (``client_secret_basic`` or ``client_secret_post``), exactly as for ``client_credentials``;
  sending its ``client_id`` without the secret is ``invalid_client``. It can redeem only codes
  issued to it, i.e. when the authorization endpoint knows redirect URIs for it.
- ``private_key_jwt`` (RFC 7523, CIMD clients may declare it) is not accepted yet:
  ``invalid_client``.

Every refusal is an RFC 6749 §5.2 JSON error; every answer carries ``Cache-Control:
no-store``. When the store cannot be reached the answer is 503 ``temporarily_unavailable``
with ``Retry-After``; ``client_credentials`` never touches the store and keeps working.

The store is synchronous (SQLite). Each call is first tried on the event loop through a
second connection that never waits for a lock (one short transaction, about 0.1 ms, like
signing the token); when another writer holds the lock, the call runs again in a worker
thread (:func:`anyio.to_thread.run_sync`) on the patient connection, so waiting for another
process never stalls the event loop. Handing every call to a thread instead cost about a
third of the grant's throughput (measured with ``scripts/bench.py``). A code exchange makes
one store write (take the code and start its refresh family together,
:meth:`~jwtmcp.store.Store.redeem_code`; a refused exchange then revokes that family), a
refresh one (rotate), or a read and a write when ``scope`` or ``resource`` is sent (the
family is read first, so a refused request does not consume the refresh token).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.to_thread

from .audit import IssuerEvents
from .client_metadata import OAuthClient
from .clients import ClientsWatcher
from .errors import (
    ClientMetadataUnavailable,
    ConfigError,
    JwtMcpError,
    OAuthClientError,
    SignerUnavailable,
    StoreError,
    StoreUnavailable,
)
from .identifiers import canonical_or_none
from .identity import GrantLookupSource, Identity, PasswordSource
from .issuer import (
    _NO_STORE_RAW,
    OAuthError,
    TokenRequest,
    _Encoded,
    _invalid_client,
    _invalid_request,
    _json_headers,
    _scope_tokens,
    client_credentials,
    signer_unavailable,
)
from .keys import RingWatcher
from .logfields import client_fields
from .pkce import verify_code_verifier
from .resolver import ClientResolver
from .store import (
    DEFAULT_REFRESH_IDLE_TTL,
    DEFAULT_REFRESH_MAX_TTL,
    MAX_CODE_TTL,
    CodeRedemption,
    RefreshFamily,
    Rotation,
    Store,
    new_opaque_token,
)
from .tokens import Clock, build_claims, scope_grants_scope, sign_async

log = logging.getLogger("jwtmcp.issuer")

NOWAIT_BUSY_TIMEOUT = 0.0001
"""The no-wait handle's lock timeout: below SQLite's 1 ms resolution, so no waiting at all."""

MAX_CACHED_REGISTRATIONS = 1024
"""Checked RFC 7591 registrations kept in memory (a few hundred bytes each)."""

AUTHORIZATION_CODE = "authorization_code"
REFRESH_TOKEN = "refresh_token"  # noqa: S105 - a grant type
GRANT_TYPES = (AUTHORIZATION_CODE, REFRESH_TOKEN)

T = TypeVar("T")


_REFUSED_CODE = "code-refused:"
"""Counter key prefix (+ the code's family id) marking a code whose first use was refused."""


def _invalid_grant(description: str) -> OAuthError:
    return OAuthError("invalid_grant", description)


def _unavailable(exc: JwtMcpError, retry_after: int) -> OAuthError:
    return OAuthError(
        "temporarily_unavailable",
        "the sign-in state store is unavailable; retry shortly",
        503,
        {"Retry-After": str(max(1, retry_after))},
    )


def _requested_resource(resources: Sequence[str], bound: str) -> None:
    """RFC 8707 §2.2: a ``resource`` sent at the token endpoint must be the one granted."""
    if not resources:
        return
    wanted = {canonical_or_none(r, "resource") for r in resources}
    if wanted != {bound}:
        raise OAuthError(
            "invalid_target",
            "the requested resource is not the one this grant was approved for",
        )


def _covered(scope: str, allowed: Sequence[str]) -> bool:
    return any(scope_grants_scope(a, scope) for a in allowed)


@dataclass(frozen=True)
class TokenClient:
    """The client a token request came from, once authenticated."""

    client_id: str
    grant_types: tuple[str, ...]
    confidential: bool
    client_name: str | None = None
    """The client's ``client_name`` (for log lines), when it has one."""


@dataclass(frozen=True)
class IssuedTokens:
    """What a grant decided to issue: the access token's contents and the refresh token."""

    subject: str
    client_id: str
    audience: str
    scopes: tuple[str, ...]
    claims: Mapping[str, Any]
    max_lifetime: int | None
    refresh_token: str | None


class InteractiveGrants:
    """``authorization_code`` and ``refresh_token`` at ``POST /token``.

    ``resolver`` makes the :class:`~jwtmcp.resolver.ClientResolver` (once, on first use).
    ``open_store`` opens the :class:`~jwtmcp.store.Store`; it is called on the first request
    that needs it, and again after a failure, so an issuer whose store is down at start-up
    still serves ``client_credentials``. ``open_nowait_store`` (optional) opens a second
    handle on the same store that fails at once instead of waiting for a lock; calls are
    tried on it first, on the event loop. ``identity_sources`` returns the sources by
    ``source_id`` (each with ``lookup(subject)``); it is called once, lazily, for the same
    reason. ``default_ttl``, ``refresh_idle_ttl`` and ``refresh_max_ttl`` are seconds.
    Raises :class:`~jwtmcp.errors.ConfigError` for a refresh lifetime that is not positive.
    """

    def __init__(
        self,
        *,
        issuer: str,
        rings: RingWatcher,
        clients: ClientsWatcher,
        resolver: Callable[[], ClientResolver],
        open_store: Callable[[], Store],
        open_nowait_store: Callable[[], Store] | None = None,
        identity_sources: Callable[[], Mapping[str, PasswordSource]],
        default_ttl: int,
        refresh_idle_ttl: int = DEFAULT_REFRESH_IDLE_TTL,
        refresh_max_ttl: int = DEFAULT_REFRESH_MAX_TTL,
        clock: Clock,
    ) -> None:
        if refresh_idle_ttl <= 0 or refresh_max_ttl <= 0:
            raise ConfigError("the refresh token lifetimes must be positive numbers of seconds")
        self.issuer = issuer
        self.rings = rings
        self.clients = clients
        self._make_resolver = resolver
        self._resolver: ClientResolver | None = None
        self._open_store = open_store
        self._store: Store | None = None
        self._open_nowait_store = open_nowait_store
        self._nowait_store: Store | None = None
        self._make_sources = identity_sources
        # Stateless registrations never change (their metadata is inside the MAC'd id), so
        # their checked form is kept: decoding and checking one costs more than the store.
        self._registered: dict[str, TokenClient] = {}
        self._sources: Mapping[str, PasswordSource] | None = None
        self.default_ttl = default_ttl
        self.refresh_idle_ttl = refresh_idle_ttl
        self.refresh_max_ttl = refresh_max_ttl
        self.clock = clock
        self.events: IssuerEvents | None = None
        self.throttle: Callable[[str], None] | None = None
        """The issuer's per-client rate limit (:meth:`IssuerService.throttle`)."""
        """Where issued tokens are reported (audit line, metrics); set by the issuer."""
        self.grants: dict[str, AuthorizationCodeGrant | RefreshTokenGrant] = {
            AUTHORIZATION_CODE: AuthorizationCodeGrant(self),
            REFRESH_TOKEN: RefreshTokenGrant(self),
        }

    # -- dependencies that may be down -----------------------------------------------------

    async def call_store(self, call: Callable[[Store], T]) -> T:
        """Run ``call(store)``: one store method, so one transaction that all-or-nothing.

        Tried at once on the no-wait handle; if that fails (another writer holds the lock,
        or the store is down), run in a worker thread on the patient handle. An outage
        becomes :class:`OAuthError` 503 ``temporarily_unavailable`` + ``Retry-After``.
        """
        nowait = self._nowait()
        try:
            if nowait is not None:
                try:
                    return call(nowait)
                except StoreUnavailable:
                    pass  # a failed transaction changed nothing: wait for the lock in a thread

            def run() -> T:
                return call(self.store())

            return await anyio.to_thread.run_sync(run)
        except StoreUnavailable as exc:
            log.error(json.dumps({"event": "store_unavailable", "error": exc.message}))
            raise _unavailable(exc, exc.retry_after) from None
        except StoreError as exc:  # a refused call is a bug or a bad record, not the caller's
            log.error(json.dumps({"event": "store_error", "error": exc.message}))
            raise OAuthError(
                "server_error", "the sign-in state store refused the request", 500
            ) from None

    def _nowait(self) -> Store | None:
        if self._nowait_store is None and self._open_nowait_store is not None:
            try:
                self._nowait_store = self._open_nowait_store()
            except StoreUnavailable:
                return None
        return self._nowait_store

    def store(self) -> Store:
        """The store, opened on first use (raises :class:`StoreUnavailable` when it cannot be)."""
        if self._store is None:
            self._store = self._open_store()
        return self._store

    def resolver(self) -> ClientResolver:
        if self._resolver is None:
            self._resolver = self._make_resolver()
        return self._resolver

    def identity_sources(self) -> Mapping[str, PasswordSource]:
        if self._sources is None:
            try:
                self._sources = self._make_sources()
            except JwtMcpError as exc:
                log.error(json.dumps({"event": "identity_source_error", "error": exc.message}))
                raise _unavailable(exc, 5) from None
        return self._sources

    # -- client authentication (OAuth 2.1 §2.4, RFC 6749 §2.3) ------------------------------

    async def authenticate(
        self, params: Mapping[str, str], authorizations: Sequence[bytes]
    ) -> TokenClient:
        """The client making the request. Raises :class:`OAuthError` ``invalid_client`` (401)."""
        client_id, secret = client_credentials(params, authorizations)
        table = self.clients.current()
        if secret is not None or table.get(client_id) is not None:
            # A clients-file client is confidential: it must prove its secret here too.
            if table.authenticate(client_id, secret or "") is None:
                raise _invalid_client()
            try:
                known: OAuthClient | None = await self.resolver().resolve(client_id)
            except OAuthClientError:
                known = None
            grant_types = known.grant_types if known is not None else GRANT_TYPES
            return TokenClient(
                client_id,
                tuple(grant_types),
                confidential=True,
                client_name=None if known is None else known.client_name,
            )
        cached = self._registered.get(client_id)
        if cached is not None:
            return cached
        try:
            client = await self.resolver().resolve(client_id)
        except ClientMetadataUnavailable as exc:
            raise OAuthError(
                "temporarily_unavailable",
                "the client's metadata document could not be fetched; retry shortly",
                503,
                {"Retry-After": "5"},
            ) from exc
        except OAuthClientError:
            raise _invalid_client() from None
        if not client.is_public:
            raise OAuthError(
                "invalid_client",
                f"client authentication {client.token_endpoint_auth_method!r} is not "
                "supported by this issuer's token endpoint",
                401,
            )
        public = TokenClient(
            client.client_id,
            tuple(client.grant_types),
            confidential=False,
            client_name=client.client_name,
        )
        if client.source == "registered":
            if len(self._registered) >= MAX_CACHED_REGISTRATIONS:
                self._registered.pop(next(iter(self._registered)))  # the oldest
            self._registered[client_id] = public
        return public

    async def token(
        self, form: TokenRequest, authorizations: Sequence[bytes]
    ) -> _Encoded:
        """Answer one ``authorization_code`` or ``refresh_token`` request (RFC 6749 §5.1/§5.2)."""
        grant_type = form.params.get("grant_type", "")
        grant = self.grants[grant_type]
        client = await self.authenticate(form.params, authorizations)
        try:
            if self.throttle is not None:  # a client looping on refresh or codes: 429
                self.throttle(client.client_id)
            if grant_type not in client.grant_types:
                raise OAuthError(
                    "unauthorized_client",
                    f"this client is not registered for the {grant_type} grant",
                )
            issued = await grant.issue(client, form)
            return await self.respond(issued, grant_type, client.client_name)
        except OAuthError as exc:
            exc.client_id = client.client_id
            exc.client_name = client.client_name
            raise

    # -- the answer (RFC 6749 §5.1) ---------------------------------------------------------

    async def respond(
        self, issued: IssuedTokens, grant_type: str, client_name: str | None = None
    ) -> _Encoded:
        """Mint the RFC 9068 access token and build the §5.1 JSON answer (``client_name``
        is for the log line)."""
        ring = self.rings.current()
        lifetime = min(self.default_ttl, ring.max_lifetime)
        if issued.max_lifetime is not None:
            lifetime = min(lifetime, issued.max_lifetime)
        try:
            claims = build_claims(
                issuer=self.issuer,
                subject=issued.subject,
                audience=issued.audience,
                client_id=issued.client_id,
                scopes=issued.scopes,
                lifetime=lifetime,
                max_lifetime=ring.max_lifetime,
                extra_claims=issued.claims,
                now=self.clock(),
            )
            signed = await sign_async(claims, self.rings)
            token = signed.token
        except SignerUnavailable as exc:
            raise signer_unavailable(exc) from None
        except JwtMcpError as exc:  # a bad record or setting, not the caller's fault
            log.error(json.dumps({"event": "token_error", "error": exc.message}))
            raise OAuthError("server_error", "the token could not be issued", 500) from None
        if self.events is not None:
            self.events.token_issued(
                claims, grant_type=grant_type, kid=signed.kid, client_name=client_name
            )
        if log.isEnabledFor(logging.INFO):
            log.info(
                json.dumps(
                    {
                        "event": "token_issued",
                        "grant_type": grant_type,
                        **client_fields(issued.client_id, client_name),
                        "sub": issued.subject,
                        "scope": claims["scope"],
                        "aud": claims["aud"],
                        "kid": signed.kid,
                        "jti": claims["jti"],
                        "expires_in": lifetime,
                        "refresh_token": issued.refresh_token is not None,
                    }
                )
            )
        # Built by hand as on the client_credentials path: the token and the refresh token
        # are base64url (nothing to escape); the scope goes through json.dumps.
        refresh = (
            ""
            if issued.refresh_token is None
            else ',"refresh_token":"' + issued.refresh_token + '"'
        )
        body = (
            '{"access_token":"'
            + token
            + '","token_type":"Bearer","expires_in":'
            + str(lifetime)
            + ',"scope":'
            + json.dumps(claims["scope"])
            + refresh
            + "}"
        ).encode()
        return body, 200, _json_headers(len(body), _NO_STORE_RAW)


# --- the grants --------------------------------------------------------------------------


class AuthorizationCodeGrant:
    """``grant_type=authorization_code`` — OAuth 2.1 §4.1.3, RFC 7636 §4.6, RFC 8707 §2.2.

    The code is taken from the store exactly once, before any other check, so every attempt
    consumes it: a thief guessing verifiers gets one try, and the rightful client's later
    attempt is a *reuse*. A reused code is ``invalid_grant`` and the store revokes the refresh
    family started by its first use (OAuth 2.1 §4.1.3), so the refresh token from that
    exchange stops working; its description says whether tokens had been issued from the
    code or its first use was refused (a counter ``code-refused:<family id>`` marks that for
    120 s). Then, each refused with ``invalid_grant`` (nothing issued, the code used up): a
    code issued to another client, another ``redirect_uri`` than in the authorization
    request, a missing, malformed or wrong ``code_verifier``. A ``resource`` that is not the
    approved one is ``invalid_target``. Codes live at most 60 s (the store's limit).

    Issues the §1 access token (``sub`` = the user, ``client_id`` = the client, ``aud`` = the
    approved resource, ``scope`` = what the user approved, the identity's extra claims) and,
    when the client's ``grant_types`` include ``refresh_token``, the first refresh token of a
    new family.
    """

    grant_type = AUTHORIZATION_CODE

    def __init__(self, grants: InteractiveGrants) -> None:
        self.grants = grants

    async def issue(self, client: TokenClient, form: TokenRequest) -> IssuedTokens:
        params = form.params
        code = params.get("code")
        if code is None:
            raise _invalid_request("the code parameter is missing")
        if params.get("redirect_uri") is None:
            raise _invalid_request("the redirect_uri parameter is missing")
        # With refresh tokens, the family starts in the same write that takes the code
        # (one store transaction instead of two); a refused request revokes it below.
        refresh_token = new_opaque_token() if REFRESH_TOKEN in client.grant_types else None
        idle, absolute = self.grants.refresh_idle_ttl, self.grants.refresh_max_ttl
        redemption: CodeRedemption | None = await self.grants.call_store(
            lambda store: store.take_code(code)
            if refresh_token is None
            else store.redeem_code(code, refresh_token, idle_ttl=idle, absolute_ttl=absolute)
        )
        if redemption is None:
            raise _invalid_grant("the authorization code is unknown or expired")
        if redemption.reused:
            log.warning(
                json.dumps(
                    {
                        "event": "code_reused",
                        **client_fields(client.client_id, client.client_name),
                        "family_id": redemption.family_id,
                    }
                )
            )
            refused_key = _REFUSED_CODE + redemption.family_id
            refused_before = await self.grants.call_store(
                lambda store: store.peek_count(refused_key)
            )
            if refused_before:
                raise _invalid_grant(
                    "the authorization code was used already by a request that was refused, "
                    "so no tokens were issued from it; start the sign-in again"
                )
            raise _invalid_grant(
                "the authorization code was used already; the tokens issued from it are "
                "revoked; start the sign-in again"
            )
        try:
            grant = self._check(client, form, redemption)
        except OAuthError as exc:
            family_id = redemption.family_id

            def refuse(store: Store) -> None:
                # Marked so that a later attempt can say nothing was issued from this code.
                store.count(_REFUSED_CODE + family_id, window=2 * MAX_CODE_TTL)
                if refresh_token is not None:
                    store.revoke_families(family_id=family_id, reason="authorization code refused")

            await self.grants.call_store(refuse)
            exc.description += "; the code is used up: start the sign-in again"
            raise
        resource = str(grant.get("resource"))
        scopes = tuple(str(grant.get("scope", "")).split())
        subject = str(grant.get("subject"))
        claims = dict(grant.get("claims") or {})
        raw_max = grant.get("max_lifetime")
        max_lifetime = raw_max if type(raw_max) is int else None
        return IssuedTokens(
            subject=subject,
            client_id=client.client_id,
            audience=resource,
            scopes=scopes,
            claims=claims,
            max_lifetime=max_lifetime,
            refresh_token=refresh_token,
        )


    @staticmethod
    def _check(
        client: TokenClient, form: TokenRequest, redemption: CodeRedemption
    ) -> Mapping[str, Any]:
        """The code's grant once it binds this client, redirect URI, verifier and resource."""
        grant = redemption.grant
        params = form.params
        if grant.get("client_id") != client.client_id:
            raise _invalid_grant("the authorization code was issued to another client")
        if grant.get("redirect_uri") != params["redirect_uri"]:
            raise _invalid_grant("redirect_uri differs from the authorization request's")
        if not verify_code_verifier(params.get("code_verifier"), str(grant.get("code_challenge"))):
            raise _invalid_grant("the code_verifier is missing or does not match (PKCE)")
        _requested_resource(form.resources, str(grant.get("resource")))
        return grant


class RefreshTokenGrant:
    """``grant_type=refresh_token`` — OAuth 2.1 §4.3, RFC 6749 §6, RFC 9700 §4.14.2.

    Every use rotates: the answer holds a new refresh token and the presented one stops
    working. Presenting a token that was rotated away (a copy used twice) or presenting it
    as another client revokes the whole family: ``invalid_grant``, and the newest token of the
    family fails too. An expired (idle or absolute lifetime) or revoked family is
    ``invalid_grant``.

    ``scope`` may only narrow what was approved (a wider one is ``invalid_scope``, checked
    before the token is consumed); the refresh token keeps the approved scope (RFC 6749 §6).
    The user's *current* allowance is re-read from the identity source that signed them in:
    tools they lost are dropped from the new access token, its audience must still be theirs,
    and a removed user (or one left with nothing) is ``invalid_grant`` with the family revoked.
    """

    grant_type = REFRESH_TOKEN

    def __init__(self, grants: InteractiveGrants) -> None:
        self.grants = grants

    async def issue(self, client: TokenClient, form: TokenRequest) -> IssuedTokens:
        params = form.params
        presented = params.get("refresh_token")
        if presented is None:
            raise _invalid_request("the refresh_token parameter is missing")
        requested = _scope_tokens(params["scope"]) if "scope" in params else None
        if requested is not None or form.resources:
            # Refuse a bad request before the rotation consumes the client's token.
            known: RefreshFamily | None = await self.grants.call_store(
                lambda store: store.find_refresh(presented)
            )
            if known is not None and known.client_id == client.client_id:
                approved = tuple(str(known.grant.get("scope", "")).split())
                if requested is not None and not all(_covered(s, approved) for s in requested):
                    raise OAuthError(
                        "invalid_scope",
                        "a refresh may only narrow the approved scope, not widen it",
                    )
                _requested_resource(form.resources, str(known.grant.get("resource")))

        rotated = new_opaque_token()
        rotation: Rotation | None = await self.grants.call_store(
            lambda store: store.rotate_refresh(presented, rotated, client_id=client.client_id)
        )
        if rotation is None:
            raise _invalid_grant("the refresh token is unknown")
        family = rotation.family
        if not rotation.ok:
            if rotation.status in ("reused", "wrong_client"):
                log.warning(
                    json.dumps(
                        {
                            "event": "refresh_token_" + rotation.status,
                            **client_fields(client.client_id, client.client_name),
                            "family_id": family.family_id,
                        }
                    )
                )
            raise _invalid_grant(
                {
                    "reused": "the refresh token was used already; its whole family is revoked",
                    "wrong_client": "the refresh token was issued to another client; "
                    "its family is revoked",
                    "revoked": "the refresh token was revoked",
                    "expired": "the refresh token expired; sign in again",
                }[rotation.status]
            )

        grant = family.grant
        approved = tuple(str(grant.get("scope", "")).split())
        resource = str(grant.get("resource"))
        identity = self._current_identity(family)
        if identity is None or resource not in identity.audiences:
            await self._revoke(family, "the user may no longer sign in to this resource")
            raise _invalid_grant("the user may no longer use this grant; sign in again")
        # Approved scopes the user still holds: tool scopes re-checked, others kept.
        allowed = identity.allowed_scopes
        current = tuple(
            s for s in approved if not s.startswith("tool:") or _covered(s, allowed)
        )
        if requested is not None:
            # Narrowing; that it does not widen was checked before the rotation.
            current = tuple(
                dict.fromkeys(
                    s
                    for s in requested
                    if _covered(s, approved)
                    and (not s.startswith("tool:") or _covered(s, allowed))
                )
            )
        if not current:
            raise _invalid_grant("the user may no longer use any of the approved scopes")
        return IssuedTokens(
            subject=family.subject,
            client_id=family.client_id,
            audience=resource,
            scopes=current,
            claims=identity.claims,
            max_lifetime=identity.max_lifetime,
            refresh_token=rotated,
        )

    def _current_identity(self, family: RefreshFamily) -> Identity | None:
        sources = self.grants.identity_sources()
        source = sources.get(str(family.grant.get("source_id")))
        if source is None:
            return None
        if isinstance(source, GrantLookupSource):
            return source.lookup_grant(family.subject, family.grant)
        return source.lookup(family.subject)

    async def _revoke(self, family: RefreshFamily, reason: str) -> None:
        await self.grants.call_store(
            lambda store: store.revoke_families(family_id=family.family_id, reason=reason)
        )
        log.info(
            json.dumps(
                {
                    "event": "refresh_family_revoked",
                    "family_id": family.family_id,
                    "sub": family.subject,
                    "reason": reason,
                }
            )
        )


def grants_for_issuer(
    *,
    issuer: str,
    rings: RingWatcher,
    clients: ClientsWatcher,
    keys_dir: str,
    clients_file: str,
    store_file: str,
    users_file: str,
    default_ttl: int,
    refresh_idle_ttl: int,
    refresh_max_ttl: int,
    clock: Clock,
    store: Store | None = None,
    resolver: ClientResolver | None = None,
    identity_sources: Mapping[str, PasswordSource] | None = None,
    store_busy_timeout: float | None = None,
) -> InteractiveGrants:
    """:class:`InteractiveGrants` over the issuer's files, each part opened on first use.

    Defaults: the SQLite store at ``store_file`` (empty: ``jwtmcp-state.db`` beside the
    ring), a :class:`ClientResolver` accepting Client ID Metadata Documents and this ring's
    stateless registrations, and the users file ``users_file`` (empty: ``users.json`` beside
    the clients file) as the ``users`` identity source. ``store``, ``resolver`` and
    ``identity_sources`` replace them. ``store_busy_timeout`` (seconds; None: the store's
    default) is how long a request waits for another writer before 503.
    """
    from .store import default_store_path, is_networked_location, open_store

    location = store_file or default_store_path(keys_dir)

    def open_the_store() -> Store:
        if store is not None:
            return store
        return open_store(location, clock=clock, busy_timeout=store_busy_timeout)

    def open_nowait_store() -> Store:
        return open_store(location, clock=clock, busy_timeout=NOWAIT_BUSY_TIMEOUT)

    def make_resolver() -> ClientResolver:
        if resolver is not None:
            return resolver
        from .cimd import ClientMetadataFetcher
        from .registration import StatelessRegistrar

        return ClientResolver(
            metadata_documents=ClientMetadataFetcher(clock=clock),
            registrar=StatelessRegistrar.from_keys_dir(keys_dir, clock=clock),
        )

    def make_sources() -> Mapping[str, PasswordSource]:
        if identity_sources is not None:
            return identity_sources
        from .identity import UsersFileSource
        from .users import users_file_beside

        source = UsersFileSource(users_file or users_file_beside(clients_file))
        return {source.source_id: source}

    return InteractiveGrants(
        issuer=issuer,
        rings=rings,
        clients=clients,
        resolver=make_resolver,
        open_store=open_the_store,
        # A networked store (Redis) has no write lock to wait for: no no-wait handle.
        open_nowait_store=None
        if store is not None or is_networked_location(location)
        else open_nowait_store,
        identity_sources=make_sources,
        default_ttl=default_ttl,
        refresh_idle_ttl=refresh_idle_ttl,
        refresh_max_ttl=refresh_max_ttl,
        clock=clock,
    )
