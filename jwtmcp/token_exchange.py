"""RFC 8693 token exchange at ``/token``: a protected server calls another one for its caller.

A protected MCP server (server A) that is also a registered client of the clients file
presents the token its caller sent it as ``subject_token`` and gets a token for another
server (B) that still names the caller as ``sub``, with an ``act`` claim naming A::

    POST /token
    grant_type=urn:ietf:params:oauth:grant-type:token-exchange
    &subject_token=<the caller's token for A>
    &subject_token_type=urn:ietf:params:oauth:token-type:access_token
    &resource=<B's resource URL>          (RFC 8707; or audience=<the same URL>)
    &scope=tool:search tool:fetch          (optional: what to ask for, else all allowed)

Server A authenticates as its client (:meth:`IssuerService.authenticate_client`). Its
clients-file entry must name its own ``resource`` (the subject token's audience) and list
under ``delegate`` the resources and tools it may reach on a caller's behalf; anything not
listed is refused (deny by default). See docs/token-exchange.md.

The subject token is checked offline, with the issuer's own key ring and jwtmcp's
:class:`~jwtmcp.verifier.Verifier`: this issuer, A's resource as audience, not expired, a
good signature. The new token gets:

- ``aud``: the requested resource; ``sub``: the subject token's ``sub``;
  ``client_id``: A; ``act``: ``{"sub": A}`` with the subject token's own ``act`` nested
  inside (RFC 8693 §4.1), at most ``max_delegation_depth`` actors deep;
- ``scope``: the ``tool:`` scopes both the subject may have at the resource (a user of the
  identity source, or the machine client of a client-credentials token) and A's
  ``delegate`` list for it allow; a requested scope outside either is ``invalid_scope``;
- a lifetime no longer than the subject token's remaining life, the issuer's default, A's
  and the subject's ``max_ttl`` and the ring's maximum.

Error codes (RFC 6749 §5.2, RFC 8693 §2.2.2): ``invalid_grant`` for a subject token that is
not valid here (wrong audience or issuer, expired, bad signature, unknown subject);
``invalid_target`` for a resource A may not delegate to or the subject may not use;
``invalid_scope`` for a scope wider than allowed; ``invalid_request`` for a missing or
unsupported parameter or token type and for a chain longer than the limit (a valid subject
token the policy refuses to extend: RFC 8693 §2.2.2); ``unauthorized_client`` for a client
with no ``resource`` of its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from .clients import DEFAULT_MAX_DELEGATION_DEPTH, Client
from .errors import JwtMcpError, SignerUnavailable, TokenError, UnknownKid
from .exchange_client import ACCESS_TOKEN_TYPE, GRANT_TYPE
from .identifiers import canonical_or_none
from .issuer import (
    _NO_STORE_RAW,
    IssuerService,
    OAuthError,
    TokenRequest,
    _Encoded,
    _json_headers,
    _scope_tokens,
    signer_unavailable,
)
from .jwks import JwksError, PublicKey, parse_jwks
from .keys import KeyRing, RingWatcher
from .logfields import short_client_id
from .tokens import (
    Actor,
    VerifiedClaims,
    build_claims,
    scope_grants_scope,
    sign_async,
    split_scope,
    tool_scope,
)
from .verifier import Verifier

log = logging.getLogger("jwtmcp.issuer")


_VERIFIER_CACHE_SIZE = 64
SUBJECT_TOKEN_REFUSED = "invalid_grant"  # noqa: S105 - an OAuth error code
"""The error for a subject token that is not valid here. The subject token is this grant's
grant, and RFC 6749 §5.2 names ``invalid_grant`` for a grant that is "invalid, expired,
revoked ... or was issued to another client"; RFC 8693 §2.2.2 asks for ``invalid_request``
instead. jwtmcp keeps ``invalid_grant`` so a caller can tell "this token will never work"
from "this request is malformed"; the description names the verifier's code either way."""


def install_token_exchange(service: IssuerService) -> None:
    """Register the token-exchange grant in ``service.token_grants``."""
    service.token_grants[GRANT_TYPE] = TokenExchangeGrant(service)


class RingKeys:
    """The key ring's public keys as a :class:`~jwtmcp.jwks.KeySource`: the issuer checks
    tokens it signed itself with no HTTP round trip. Follows rotations and revocations
    (a key removed from the ring is unknown at once); a key keeps one object while it stays,
    so the verifier's cache of verified tokens works."""

    def __init__(self, rings: RingWatcher) -> None:
        self._rings = rings
        self._keys: tuple[KeyRing, dict[str, PublicKey]] | None = None

    def find(
        self, kid: str | None, now: float, *, may_wait: bool = True
    ) -> PublicKey | Future[bool]:
        ring = self._rings.current()
        cached = self._keys
        if cached is None or cached[0] is not ring:
            # The very document the issuer publishes, read as verifiers read it.
            try:
                keys = parse_jwks(
                    ring.jwks(),
                    max_keys=len(ring.keys),
                    previous=cached[1] if cached is not None else None,
                    where="the issuer's key ring",
                )
            except JwksError as exc:  # pragma: no cover - the ring writes what it reads
                raise UnknownKid(f"the issuer's key ring is unusable: {exc}") from None
            cached = self._keys = (ring, keys)
        key = cached[1].get(kid) if kid is not None else None
        if key is None:
            raise UnknownKid("the token's signing key (kid) is not in this issuer's key ring")
        return key

    def close(self) -> None:
        """Nothing to stop: the ring watcher belongs to the issuer."""


@dataclass(frozen=True)
class _Allowance:
    """What the subject may have at the target: its ``tool:`` scopes and lifetime cap."""

    scopes: tuple[str, ...]
    max_ttl: int | None


def intersect_scopes(left: Sequence[str], right: Sequence[str]) -> tuple[str, ...]:
    """The scopes both sets grant: for each pair, the narrower one when one covers the
    other (``tool:*`` and ``tool:read_*`` give ``tool:read_*``). In ``left``'s order."""
    out: list[str] = []
    for a in left:
        for b in right:
            if scope_grants_scope(b, a):
                out.append(a)
            elif scope_grants_scope(a, b):
                out.append(b)
    return tuple(dict.fromkeys(out))


def act_depth(actor: Actor | None) -> int:
    """How many actors a chain names (0 for None)."""
    return len(actor.chain) if actor is not None else 0


def act_claim(acting_client: str, previous: Actor | None) -> dict[str, Any]:
    """The ``act`` claim of a new token: the acting client, the earlier chain nested inside
    (RFC 8693 §4.1: the most deeply nested is the least recent actor). Only ``sub`` is kept
    at each level."""
    claim: dict[str, Any] = {"sub": acting_client}
    level = claim
    actor = previous
    while actor is not None:
        inner: dict[str, Any] = {"sub": actor.subject}
        level["act"] = inner
        level = inner
        actor = actor.actor
    return claim


class TokenExchangeGrant:
    """The ``urn:ietf:params:oauth:grant-type:token-exchange`` grant (RFC 8693 §2)."""

    def __init__(self, service: IssuerService) -> None:
        self.service = service
        self.keys = RingKeys(service.rings)
        self._verifiers: dict[tuple[str, int, int], Verifier] = {}

    async def __call__(self, form: TokenRequest, authorizations: Sequence[bytes]) -> _Encoded:
        client = await self.service.authenticate_client(form.params, authorizations)
        try:
            return await self.exchange(client, form)
        except OAuthError as exc:
            exc.client_id = client.client_id
            raise

    # -- the steps, in the order the checks run ------------------------------------------

    async def exchange(self, client: Client, form: TokenRequest) -> _Encoded:
        """Everything after client authentication; raises ``OAuthError`` to refuse."""
        self._rate_limit(client)
        params = form.params
        own_resource = client.resource
        if own_resource is None:
            raise OAuthError(
                "unauthorized_client",
                "this client names no resource of its own (resource in the clients file), "
                "so it has no callers' tokens to exchange",
            )
        subject_token = self._subject_token(params)
        target = self._target(params, form.resources)
        delegated = client.delegated_tools(target)
        if delegated is None:
            raise OAuthError(
                "invalid_target",
                "this client may not call the requested resource on a caller's behalf "
                "(no delegate entry for it)",
            )
        subject = self._verify_subject(subject_token, own_resource)
        previous = Actor.from_claim(subject.claims["act"]) if "act" in subject.claims else None
        if "act" in subject.claims and previous is None:
            raise OAuthError(SUBJECT_TOKEN_REFUSED, "the subject token's act claim is malformed")
        depth = act_depth(previous) + 1
        limit = client.max_delegation_depth or DEFAULT_MAX_DELEGATION_DEPTH
        if depth > limit:
            raise OAuthError(
                "invalid_request",
                f"the subject token already names {depth - 1} actor(s); a token for this "
                f"call would name {depth}, above this client's limit of {limit}",
            )
        allowance = self._subject_allowance(subject, previous, target)
        delegated_scopes = tuple(tool_scope(t) for t in delegated)
        granted = self._scopes(params.get("scope"), allowance.scopes, delegated_scopes)
        lifetime = self._lifetime(subject, client, allowance)
        return await self._mint(client, subject, previous, target, granted, lifetime)

    def _rate_limit(self, client: Client) -> None:
        self.service.throttle(client.client_id)

    @staticmethod
    def _subject_token(params: Mapping[str, str]) -> str:
        if "actor_token" in params or "actor_token_type" in params:
            raise OAuthError(
                "invalid_request",
                "actor_token is not supported: the authenticated client is the actor",
            )
        requested = params.get("requested_token_type", ACCESS_TOKEN_TYPE)
        if requested != ACCESS_TOKEN_TYPE:
            raise OAuthError(
                "invalid_request",
                f"requested_token_type must be {ACCESS_TOKEN_TYPE}, the only type issued",
            )
        token = params.get("subject_token")
        if token is None:
            raise OAuthError("invalid_request", "the subject_token parameter is missing")
        token_type = params.get("subject_token_type")
        if token_type is None:
            raise OAuthError("invalid_request", "the subject_token_type parameter is missing")
        if token_type != ACCESS_TOKEN_TYPE:
            raise OAuthError(
                "invalid_request",
                f"unsupported subject_token_type: only {ACCESS_TOKEN_TYPE} is accepted",
            )
        return token

    @staticmethod
    def _target(params: Mapping[str, str], resources: Sequence[str]) -> str:
        """The one resource the new token is for: ``resource`` (RFC 8707) or ``audience``
        (RFC 8693 §2.1), canonical; both may be given when they name the same one."""
        named = [*resources]
        if "audience" in params:
            named.append(params["audience"])
        if not named:
            raise OAuthError(
                "invalid_request",
                "name the server the new token is for with resource (RFC 8707) or audience",
            )
        wanted: dict[str, None] = {}
        for value in named:
            canonical = canonical_or_none(value, "resource")
            if canonical is None:
                raise OAuthError("invalid_target", "the requested resource is not a URL")
            wanted[canonical] = None
        if len(wanted) > 1:
            raise OAuthError(
                "invalid_target",
                "ask for one resource per token: a token for several servers would let each "
                "of them replay it to the others",
            )
        return next(iter(wanted))

    def _verifier(self, resource: str) -> Verifier:
        ring = self.service.rings.current()
        key = (resource, ring.max_lifetime, ring.leeway)
        verifier = self._verifiers.get(key)
        if verifier is None:
            if len(self._verifiers) >= _VERIFIER_CACHE_SIZE:
                self._verifiers.clear()
            verifier = self._verifiers[key] = Verifier(
                issuer=self.service.issuer,
                audience=resource,
                key_source=self.keys,
                clock=self.service.clock,
                leeway=ring.leeway,
                max_lifetime=ring.max_lifetime,
                verified_cache_size=1024,
            )
        return verifier

    def _verify_subject(self, token: str, own_resource: str) -> VerifiedClaims:
        """The subject token's claims: signed by this issuer's ring, ``iss`` this issuer,
        ``aud`` the acting client's own resource, not expired (no leeway on ``exp``: the
        new token may not outlive it)."""
        try:
            claims = self._verifier(own_resource).verify(token)
        except TokenError as exc:
            raise OAuthError(
                SUBJECT_TOKEN_REFUSED, f"the subject token is refused ({exc.code}): {exc.message}"
            ) from None
        if claims.expires_at <= self.service.clock():
            raise OAuthError(
                SUBJECT_TOKEN_REFUSED,
                "the subject token is refused (token_expired): it has expired",
            )
        if self.service.revocation.covers(claims):
            raise OAuthError(
                SUBJECT_TOKEN_REFUSED,
                "the subject token is refused (token_revoked): it has been revoked",
            )
        return claims

    def _subject_allowance(
        self, subject: VerifiedClaims, previous: Actor | None, target: str
    ) -> _Allowance:
        """What the subject itself may have at ``target``.

        A client-credentials token (no ``act``, its ``client_id`` a client of the clients
        file whose subject is the token's ``sub``) is that client's own allowance (narrowed
        by a user of the same name, whom that client may have signed in: the tokens look
        alike); any other first-hop subject is a user of the identity source (the users
        file), looked up by ``sub``.

        A token that already names an actor no longer says whether its chain began with a
        user or with a machine client (its ``client_id`` is the last actor). Its ``sub`` may
        name both a user and clients of the clients file (``demo`` does after the first
        start), so it gets only what ALL of them allow: never the wider of two principals
        that share a name.
        """
        table = self.service.clients.current()
        machine = table.get(subject.client_id) if subject.client_id else None
        try:
            identity = self.service.sign_in.identity.lookup(subject.subject)
        except JwtMcpError:
            identity = None
        candidates: list[tuple[Sequence[str], Sequence[str], int | None]] = []
        if identity is not None:
            candidates.append(
                (identity.allowed_scopes, identity.audiences, identity.max_lifetime)
            )
        if previous is None and machine is not None and machine.subject == subject.subject:
            # A client-credentials token, or that same client signing in the same-named
            # user (the two tokens look alike): the client, and the user if there is one.
            candidates.append((machine.allowed_scopes, machine.audiences, machine.max_ttl))
        elif previous is not None:
            # A chain that may have begun with a client-credentials token: its client(s).
            candidates += [
                (c.allowed_scopes, c.audiences, c.max_ttl)
                for c in table
                if c.subject == subject.subject
            ]
        if not candidates:
            raise OAuthError(
                SUBJECT_TOKEN_REFUSED,
                "the subject token's subject is no longer a user or client of this issuer",
            )
        return self._within(target, candidates)

    @staticmethod
    def _within(
        target: str, candidates: Sequence[tuple[Sequence[str], Sequence[str], int | None]]
    ) -> _Allowance:
        """The allowance every candidate principal grants at ``target``: the resource must be
        in all their audiences, the scopes are what all of them allow, the lifetime the
        shortest cap."""
        if not all(target in audiences for _, audiences, _ in candidates):
            raise OAuthError(
                "invalid_target", "the token's subject may not use the requested resource"
            )
        scopes: tuple[str, ...] = tuple(candidates[0][0])
        for other, _, _ in candidates[1:]:
            scopes = intersect_scopes(scopes, other)
        caps = [cap for _, _, cap in candidates if cap is not None]
        return _Allowance(scopes, min(caps) if caps else None)

    @staticmethod
    def _scopes(
        requested: str | None, subject_scopes: Sequence[str], delegated: Sequence[str]
    ) -> tuple[str, ...]:
        allowed = intersect_scopes(delegated, subject_scopes)
        if requested is None:
            if not allowed:
                raise OAuthError(
                    "invalid_scope",
                    "the subject and this client's delegation share no tool at that resource",
                )
            return allowed
        wanted = _scope_tokens(requested)
        if not wanted:
            raise OAuthError("invalid_scope", "the scope parameter names no scope")
        wider = [s for s in wanted if not any(scope_grants_scope(a, s) for a in allowed)]
        if wider:
            raise OAuthError(
                "invalid_scope",
                "not allowed for this caller through this client: " + " ".join(wider),
            )
        return split_scope(wanted)

    def _lifetime(self, subject: VerifiedClaims, client: Client, allowance: _Allowance) -> int:
        ring = self.service.rings.current()
        remaining = int(subject.expires_at - self.service.clock())
        caps = [self.service.settings.default_ttl, remaining, ring.max_lifetime]
        caps += [c for c in (client.max_ttl, allowance.max_ttl) if c is not None]
        lifetime = min(caps)
        if lifetime < 1:
            raise OAuthError(
                SUBJECT_TOKEN_REFUSED,
                "the subject token is refused (token_expired): it has expired",
            )
        return lifetime

    async def _mint(
        self,
        client: Client,
        subject: VerifiedClaims,
        previous: Actor | None,
        target: str,
        scopes: Sequence[str],
        lifetime: int,
    ) -> _Encoded:
        """Build, sign, log and encode the new token: the one place an exchanged token is
        minted (for audit and metrics hooks)."""
        ring = self.service.rings.current()
        try:
            claims = build_claims(
                issuer=self.service.issuer,
                subject=subject.subject,
                audience=target,
                client_id=client.client_id,
                scopes=scopes,
                lifetime=lifetime,
                max_lifetime=ring.max_lifetime,
                now=self.service.clock(),
            )
            claims["act"] = act_claim(client.client_id, previous)
            signed = await sign_async(claims, self.service.rings)
            token = signed.token
        except SignerUnavailable as exc:  # an HSM/KMS outage: 503 + Retry-After, not a 500
            raise signer_unavailable(exc) from None
        except JwtMcpError as exc:  # a misconfiguration, not the caller's fault
            log.error(json.dumps({"event": "token_error", "error": exc.message}))
            raise OAuthError("server_error", "the token could not be issued", 500) from None
        self.service.events.token_issued(
            claims, grant_type=GRANT_TYPE, kid=signed.kid
        )
        if log.isEnabledFor(logging.INFO):
            log.info(
                json.dumps(
                    {
                        "event": "token_issued",
                        "grant_type": "token-exchange",
                        "client_id": short_client_id(client.client_id),
                        "sub": subject.subject,
                        "act": list(Actor.from_claim(claims["act"]).chain),  # type: ignore[union-attr]
                        "scope": claims["scope"],
                        "aud": claims["aud"],
                        "kid": signed.kid,
                        "jti": claims["jti"],
                        "expires_in": lifetime,
                    }
                )
            )
        body = json.dumps(
            {
                "access_token": token,
                "issued_token_type": ACCESS_TOKEN_TYPE,
                "token_type": "Bearer",
                "expires_in": lifetime,
                "scope": claims["scope"],
            }
        ).encode()
        return body, 200, _json_headers(len(body), _NO_STORE_RAW)
