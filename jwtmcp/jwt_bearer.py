"""The jwt-bearer grant (RFC 7523 §2.1) for workload identity, and SEP-990 identity
assertions (ID-JAG) through the same grant.

``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` with ``assertion``: a JWT signed
by an issuer this jwtmcp trusts — a Kubernetes cluster's service-account issuer, GitHub
Actions' OIDC issuer, an enterprise identity provider issuing ID-JAGs. The trusted issuers
live in ``trusted-issuers.json`` beside the clients file (watched like it)::

    {
      "version": 1,
      "issuers": {
        "https://token.actions.githubusercontent.com": {
          "jwks_uri": "https://token.actions.githubusercontent.com/.well-known/jwks",
          "audience": "https://jwtmcp.example.com",
          "algorithms": ["RS256"],
          "max_assertion_lifetime": 3600
        },
        "https://kubernetes.default.svc.cluster.local": {"jwks_file": "cluster-jwks.json"}
      }
    }

Each issuer (its exact ``iss``, an https URL) has one key source, ``jwks_uri`` (fetched
through jwtmcp's key cache, https only) or ``jwks_file`` (a path, relative to this file's
directory); optionally the ``audience`` its assertions must name as their only ``aud``
(default: this issuer's identifier), the ``algorithms`` it signs with (a subset of
RS256/PS256; default RS256) and ``max_assertion_lifetime`` (seconds an assertion may still
be valid for when it arrives, default 3600: a Kubernetes projected token lives an hour)
and the ``assertions`` it presents (:data:`ASSERTION_KINDS`): ``["workload"]`` by default,
``["id-jag"]`` for an identity provider issuing SEP-990 identity assertions.

**The assertion** is checked as :mod:`jwtmcp.assertions` says (signature by the issuer's
registered keys only, ``exp`` required, ``jti`` required and accepted once, RFC 7523 §3),
its ``iss`` must be a trusted issuer and its ``sub`` a string. Then **the policy**
(:mod:`jwtmcp.policy`, source ``issuer:<iss>``) decides from its claims which tools,
audiences and lifetime it gets: e.g. a rule on ``sub`` ``system:serviceaccount:NS:NAME``, or
on the ``repository`` and ``ref`` claims of a GitHub Actions token. No rule: ``invalid_grant``.

**The token's subject** is ``issuer:<iss>#<sub>``: an issuer identifier has no fragment
(RFC 8414 §2), so the first ``#`` ends it and two issuers can never mint the same subject;
it cannot collide with a client, a user (names without ``:``) or an upstream login
(``oidc:<provider>:<sub>``) either.

**Client authentication** is optional: a workload holding only its identity token sends no
client credentials (the token's ``client_id`` is then its subject). When the request carries
client credentials (a secret, a ``client_assertion`` or a ``client_id``) the client must
authenticate (:meth:`~jwtmcp.issuer.IssuerService.authenticate_client`), and the token gets
no more than both the client (its tools and audiences) and the policy allow.

**ID-JAG** (SEP-990, draft-ietf-oauth-identity-assertion-authz-grant): an assertion with the
``typ`` header ``oauth-id-jag+jwt``, from an issuer whose entry lists ``"id-jag"`` in
``assertions`` (an issuer listing only that presents nothing else: a plain JWT it signed is
not a workload assertion). The client must authenticate and the assertion's
``client_id`` claim must be that client; its ``aud`` must be this issuer's identifier
(whatever ``audience`` the issuer entry names); its ``resource`` claim, when present, is the
token's audience (a ``resource`` parameter must then name the same); its ``scope`` claim,
when present, narrows the scopes. Other ``typ`` values than none, ``JWT`` and that one are
refused, so an access token or a client assertion cannot be replayed as a grant.

Refusals are RFC 6749 §5.2 errors: ``invalid_grant`` for the assertion and the policy
(naming the failed check, never a secret), ``invalid_client`` (401) for client
authentication, ``invalid_target``/``invalid_scope`` for the resource and scope. An
unreachable JWKS or store: 503 ``temporarily_unavailable`` with ``Retry-After``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .assertions import (
    ASSERTION_ALGORITHMS,
    LEEWAY,
    Assertion,
    AssertionRefused,
    RemoteKeySets,
    audience_matches,
    read_unverified,
    replay_key,
    verify_assertion,
)
from .client_auth import issuer_identifiers
from .clients import Client
from .errors import ConfigError, KeysUnavailable
from .files import WatchedFile, read_file, versioned_entries
from .grants import IssuedTokens
from .identifiers import canonical_or_none
from .issuer import OAuthError, TokenRequest, _Encoded, _scope_tokens, narrow_scopes
from .jwks import KeySource, StaticKeys
from .policy import Policy, PolicyError, PolicyGrant, PolicyWatcher, policy_file_beside
from .tokens import split_scope, tool_scope

if TYPE_CHECKING:
    from .issuer import IssuerService

log = logging.getLogger("jwtmcp.issuer")

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
"""RFC 7523 §2.1: the grant type URI."""

ID_JAG_TYPE = "oauth-id-jag+jwt"
"""SEP-990 / draft-ietf-oauth-identity-assertion-authz-grant: the ID-JAG ``typ`` header."""

WORKLOAD_TYPES = frozenset({None, "jwt"})
"""``typ`` headers of a plain jwt-bearer assertion (a Kubernetes token has none, GitHub's
says ``JWT``)."""

TRUSTED_ISSUERS_FILE = "trusted-issuers.json"
FORMAT_VERSION = 1
DEFAULT_MAX_ASSERTION_LIFETIME = 3600
_ENTRY_FIELDS = frozenset(
    {"jwks_uri", "jwks_file", "audience", "algorithms", "max_assertion_lifetime", "assertions"}
)
ASSERTION_KINDS = ("workload", "id-jag")
"""What a trusted issuer may present (its entry's ``assertions``): ``workload`` tokens
(``typ`` none or ``JWT``: Kubernetes, GitHub Actions) and/or ``id-jag`` identity assertions
(``typ`` ``oauth-id-jag+jwt``). Default ``["workload"]``: an identity provider signs plenty
of other JWTs (ID tokens, access tokens for audiences its administrators choose), and one of
them naming jwtmcp must not pass as a workload assertion, which needs no client."""
_CLIENT_PARAMS = ("client_id", "client_secret", "client_assertion", "client_assertion_type")


class TrustedIssuersError(ConfigError):
    """The trusted issuers file is missing, unreadable or invalid (one line naming the
    issuer and the field)."""

    code = "trusted_issuers"


@dataclass(frozen=True)
class TrustedIssuer:
    """One issuer whose assertions the jwt-bearer grant accepts."""

    issuer: str
    jwks_uri: str | None = None
    keys: StaticKeys | None = field(default=None, repr=False, compare=False)
    """The keys of a ``jwks_file``, read when the file was loaded."""
    audience: str | None = None
    """The only ``aud`` its workload assertions may carry; None: this issuer's identifier."""
    algorithms: tuple[str, ...] = ("RS256",)
    max_assertion_lifetime: int = DEFAULT_MAX_ASSERTION_LIFETIME
    assertions: tuple[str, ...] = ("workload",)
    """The kinds of assertion it presents (:data:`ASSERTION_KINDS`)."""

    @property
    def source(self) -> str:
        """The policy source of its identities: ``issuer:<iss>``."""
        return f"issuer:{self.issuer}"

    def subject(self, sub: str) -> str:
        """The access token ``sub`` for its identity ``sub`` (module docstring)."""
        return f"issuer:{self.issuer}#{sub}"


@dataclass(frozen=True)
class TrustedIssuers:
    """An immutable snapshot of the trusted issuers file, by exact ``iss``."""

    path: Path
    issuers: Mapping[str, TrustedIssuer]


def trusted_issuers_beside(clients_file: str | os.PathLike[str]) -> Path:
    """The default trusted issuers file: ``trusted-issuers.json`` beside the clients file."""
    return Path(clients_file).parent / TRUSTED_ISSUERS_FILE


def _parse_entry(iss: str, entry: object, base: Path) -> TrustedIssuer:
    if not isinstance(entry, dict):
        raise ValueError("must be an object")
    unknown = sorted(set(entry) - _ENTRY_FIELDS)
    if unknown:
        raise ValueError(f"unknown member {unknown[0]!r}")
    parts = urlsplit(iss)
    if parts.scheme != "https" or not parts.hostname or "?" in iss or "#" in iss:
        raise ValueError("the issuer must be an https URL without query or fragment")
    algorithms = entry.get("algorithms", ["RS256"])
    if (
        not isinstance(algorithms, list)
        or not algorithms
        or any(a not in ASSERTION_ALGORITHMS for a in algorithms)
    ):
        raise ValueError(
            f"algorithms must be a non-empty list of {', '.join(ASSERTION_ALGORITHMS)}"
        )
    lifetime = entry.get("max_assertion_lifetime", DEFAULT_MAX_ASSERTION_LIFETIME)
    if isinstance(lifetime, bool) or not isinstance(lifetime, int) or not 0 < lifetime <= 86400:
        raise ValueError("max_assertion_lifetime must be a whole number of seconds (1-86400)")
    kinds = entry.get("assertions", ["workload"])
    if not isinstance(kinds, list) or not kinds or any(k not in ASSERTION_KINDS for k in kinds):
        raise ValueError(
            "assertions must be a non-empty list of 'workload' and 'id-jag' (what this "
            "issuer presents: workload tokens, or SEP-990 identity assertions)"
        )
    audience = entry.get("audience")
    if audience is not None and (not isinstance(audience, str) or not audience):
        raise ValueError("audience must be a string")
    jwks_uri, jwks_file = entry.get("jwks_uri"), entry.get("jwks_file")
    if (jwks_uri is None) == (jwks_file is None):
        raise ValueError("give exactly one of jwks_uri and jwks_file")
    keys = None
    if jwks_uri is not None:
        uri = urlsplit(jwks_uri) if isinstance(jwks_uri, str) else None
        if uri is None or uri.scheme not in ("http", "https") or not uri.hostname:
            raise ValueError("jwks_uri must be an https URL")
    else:
        if not isinstance(jwks_file, str) or not jwks_file:
            raise ValueError("jwks_file must be a path")
        try:
            keys = StaticKeys.from_file(
                base / jwks_file, algorithms=tuple(algorithms), max_keys=100
            )
        except ConfigError as exc:
            raise ValueError(exc.message) from None
    return TrustedIssuer(
        issuer=iss,
        jwks_uri=jwks_uri,
        keys=keys,
        audience=audience,
        algorithms=tuple(dict.fromkeys(algorithms)),
        max_assertion_lifetime=lifetime,
        assertions=tuple(dict.fromkeys(kinds)),
    )


def load_trusted_issuers(path: str | os.PathLike[str]) -> TrustedIssuers:
    """Read the trusted issuers file (module docstring). Raises
    :class:`TrustedIssuersError` with one line naming the issuer and the fault."""
    where = Path(path)
    raw = read_file(
        where,
        what="trusted issuers file",
        error=TrustedIssuersError,
        missing=f"no trusted issuers file at {where}",
    )

    def bad(what: str) -> TrustedIssuersError:
        return TrustedIssuersError(f"the trusted issuers file {where} is invalid: {what}")

    entries = versioned_entries(raw, section="issuers", version=FORMAT_VERSION, bad=bad)
    issuers: dict[str, TrustedIssuer] = {}
    for iss, entry in entries.items():
        try:
            issuers[iss] = _parse_entry(iss, entry, where.parent)
        except ValueError as exc:
            raise bad(f"issuer {iss!r}: {exc}") from None
    return TrustedIssuers(where, MappingProxyType(issuers))


class TrustedIssuersWatcher(WatchedFile[TrustedIssuers]):
    """Serves the current trusted issuers, re-reading the file when it changes; an invalid
    edit keeps the last good set (``last_error`` says why), as for the clients file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        interval: float = 0.25,
        monotonic: Callable[[], float] = time.monotonic,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(
            path,
            load_trusted_issuers,
            TrustedIssuersError,
            what="the trusted issuers file",
            interval=interval,
            monotonic=monotonic,
            on_error=on_error,
        )


# --- the grant -------------------------------------------------------------------------------


def _invalid_grant(description: str) -> OAuthError:
    return OAuthError("invalid_grant", description)


def _unavailable(description: str) -> OAuthError:
    return OAuthError("temporarily_unavailable", description, 503, {"Retry-After": "5"})


@dataclass(frozen=True)
class _Decision:
    subject: str
    client_id: str
    audience: str
    scopes: tuple[str, ...]
    max_ttl: int | None
    rules: tuple[str, ...]


class JwtBearerGrant:
    """``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` (module docstring)."""

    def __init__(
        self,
        service: IssuerService,
        issuers: TrustedIssuersWatcher,
        policy: Callable[[], Policy],
        *,
        allow_loopback_http: bool = False,
    ) -> None:
        self.service = service
        self.issuers = issuers
        self.policy = policy
        self.remote = RemoteKeySets(allow_loopback_http=allow_loopback_http)
        self._audiences = issuer_identifiers(service.issuer)
        self._snapshot: TrustedIssuers | None = None

    async def __call__(self, form: TokenRequest, authorizations: Sequence[bytes]) -> _Encoded:
        """Answer one jwt-bearer token request (RFC 6749 §5.1 / §5.2)."""
        params = form.params
        token = params.get("assertion")
        if token is None:
            raise OAuthError("invalid_request", "the assertion parameter is missing")
        client: Client | None = None
        if authorizations or any(name in params for name in _CLIENT_PARAMS):
            client = await self.service.authenticate_client(params, authorizations)
        try:
            assertion, trusted = await self._verify(token)
            decision = self._decide(assertion, trusted, client, form)
            self._rate_limit(decision.client_id)  # before the jti is spent
            key = replay_key("jwt_bearer", trusted.issuer, assertion.jti)
            until = assertion.exp + LEEWAY + 1
            first = await self.service.grants.call_store(lambda s: s.remember_once(key, until))
            if not first:
                raise _invalid_grant("the assertion was used before (its jti is spent)")
            kind = "id_jag" if _is_id_jag(assertion) else "workload"
            return await self._issue(decision, kind=kind)
        except OAuthError as exc:
            if client is not None:
                exc.client_id = client.client_id
            raise

    async def _verify(self, token: str) -> tuple[Assertion, TrustedIssuer]:
        try:
            _, unverified = read_unverified(token)
            iss = unverified.get("iss")
            table = self.issuers.current()
            if table is not self._snapshot:
                self._snapshot = table
                self.remote.keep_only(
                    t.jwks_uri for t in table.issuers.values() if t.jwks_uri is not None
                )
            trusted = table.issuers.get(iss) if isinstance(iss, str) else None
            if trusted is None:
                raise AssertionRefused("the assertion's issuer (iss) is not a trusted issuer")
            keys: KeySource
            if trusted.keys is not None:
                keys = trusted.keys
            else:
                assert trusted.jwks_uri is not None
                try:
                    keys = self.remote.get(trusted.jwks_uri)
                except ConfigError as exc:
                    log.error(
                        json.dumps({"event": "trusted_issuer_unusable", "error": exc.message})
                    )
                    raise AssertionRefused("the issuer's keys cannot be used") from None
            assertion = await verify_assertion(
                token,
                keys,
                now=self.service.clock(),
                max_lifetime=trusted.max_assertion_lifetime,
                algorithms=trusted.algorithms,
            )
        except AssertionRefused as exc:
            raise _invalid_grant(exc.message) from None
        except KeysUnavailable:
            raise _unavailable(
                "the assertion issuer's keys cannot be fetched; retry shortly"
            ) from None
        return assertion, trusted

    def _decide(
        self,
        assertion: Assertion,
        trusted: TrustedIssuer,
        client: Client | None,
        form: TokenRequest,
    ) -> _Decision:
        claims = assertion.claims
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise _invalid_grant("the assertion has no sub (the identity it asserts)")
        id_jag = _is_id_jag(assertion)
        if ("id-jag" if id_jag else "workload") not in trusted.assertions:
            if id_jag:
                raise _invalid_grant(
                    "this issuer is not trusted for identity assertions (ID-JAG): its entry "
                    "in the trusted issuers file does not list 'id-jag' in 'assertions'"
                )
            raise _invalid_grant(
                f"this issuer is trusted for identity assertions (ID-JAG, typ {ID_JAG_TYPE}) "
                "only, not for workload tokens"
            )
        if id_jag:
            if client is None:
                raise OAuthError(
                    "invalid_client",
                    "an identity assertion (ID-JAG) needs client authentication",
                    401,
                )
            if claims.get("client_id") != client.client_id:
                raise _invalid_grant(
                    "the identity assertion was issued to another client (client_id)"
                )
            accepted = self._audiences
        elif assertion.typ in WORKLOAD_TYPES:
            accepted = (trusted.audience,) if trusted.audience else self._audiences
        else:
            raise _invalid_grant("the assertion's typ is not one this grant accepts")
        if not audience_matches(claims, accepted):
            raise _invalid_grant(
                "the assertion's aud must be "
                + (accepted[0] if accepted else "?")
                + " as its only value"
            )
        grant = self.policy().evaluate(claims, source=trusted.source)
        if grant is None:
            raise _invalid_grant("no policy rule grants anything to this identity")
        audiences = grant.audiences
        if client is not None:
            audiences = tuple(a for a in audiences if a in client.audiences)
        audience = self._audience(audiences, claims.get("resource") if id_jag else None, form)
        scopes = self._scopes(grant, client, claims.get("scope") if id_jag else None, form)
        caps = [c for c in (grant.max_ttl, client.max_ttl if client else None) if c is not None]
        subject = trusted.subject(sub)
        return _Decision(
            subject=subject,
            client_id=client.client_id if client is not None else subject,
            audience=audience,
            scopes=scopes,
            max_ttl=min(caps) if caps else None,
            rules=grant.rules,
        )

    @staticmethod
    def _audience(allowed: Sequence[str], bound: object, form: TokenRequest) -> str:
        """RFC 8707 §2 over what the identity (and client) may have; an ID-JAG's ``resource``
        claim binds it."""
        wanted: set[str | None] = {canonical_or_none(r, "resource") for r in form.resources}
        if bound is not None:
            claimed = canonical_or_none(bound, "resource") if isinstance(bound, str) else None
            if claimed is None or (wanted and wanted != {claimed}):
                raise OAuthError(
                    "invalid_target",
                    "the resource parameter is not the identity assertion's resource",
                )
            wanted = {claimed}
        if not wanted:
            if len(allowed) == 1:
                return allowed[0]
            raise OAuthError(
                "invalid_target",
                "this identity may get tokens for "
                + (
                    "no resource"
                    if not allowed
                    else "several resources; ask for one with the "
                    "resource parameter (RFC 8707): " + ", ".join(allowed)
                ),
            )
        if len(wanted) > 1:
            raise OAuthError("invalid_target", "ask for one resource per token")
        resource = next(iter(wanted))
        if resource is None or resource not in allowed:
            raise OAuthError(
                "invalid_target",
                "the requested resource is not one this identity may get tokens for",
            )
        return resource

    @staticmethod
    def _scopes(
        grant: PolicyGrant, client: Client | None, claimed: object, form: TokenRequest
    ) -> tuple[str, ...]:
        allowed = split_scope([tool_scope(t) for t in grant.tools])
        if client is not None:
            allowed = narrow_scopes(client.allowed_scopes, allowed)
        if claimed is not None:
            if not isinstance(claimed, str):
                raise _invalid_grant("the identity assertion's scope is not a string")
            allowed = narrow_scopes(allowed, split_scope(claimed))
        requested = form.params.get("scope")
        if requested is not None:
            allowed = narrow_scopes(allowed, _scope_tokens(requested))
        if not allowed:
            raise OAuthError(
                "invalid_scope", "none of the requested scopes is granted to this identity"
            )
        return allowed

    def _rate_limit(self, client_id: str) -> None:
        self.service.throttle(client_id, "token requests for this identity")

    async def _issue(self, decision: _Decision, *, kind: str) -> _Encoded:
        """Mint the access token: the one place this grant issues (for audit and metrics)."""
        if log.isEnabledFor(logging.INFO):
            log.info(
                json.dumps(
                    {
                        "event": "assertion_accepted",
                        "kind": kind,
                        "sub": decision.subject,
                        "rules": list(decision.rules),
                    }
                )
            )
        issued = IssuedTokens(
            subject=decision.subject,
            client_id=decision.client_id,
            audience=decision.audience,
            scopes=decision.scopes,
            claims={},
            max_lifetime=decision.max_ttl,
            refresh_token=None,
        )
        return await self.service.grants.respond(issued, JWT_BEARER)

    def close(self) -> None:
        self.remote.close()


def _is_id_jag(assertion: Assertion) -> bool:
    return assertion.typ == ID_JAG_TYPE


def install_jwt_bearer(service: IssuerService) -> JwtBearerGrant | None:
    """Register the jwt-bearer grant on ``service`` when a trusted issuers file exists
    (``trusted-issuers.json`` beside the clients file); its rules come from the policy
    file (the federation's, else ``policy.json`` beside the clients file, which must then
    exist). Returns the grant, or None when no trusted issuers are configured.

    Raises :class:`TrustedIssuersError` or :class:`~jwtmcp.policy.PolicyError` for an
    unusable file, at start.
    """
    settings = service.settings
    path = trusted_issuers_beside(settings.clients_file)
    if not path.exists():
        return None

    def reload_failed(what: str) -> Callable[[str], None]:
        def failed(reason: str) -> None:
            log.error(json.dumps({"event": "reload_failed", "file": what, "error": reason}))

        return failed

    issuers = TrustedIssuersWatcher(
        path, interval=settings.reload_interval, on_error=reload_failed("trusted issuers")
    )
    federation = service.federation
    if federation is not None:
        policy: Callable[[], Policy] = federation.current_policy
    else:
        policy_path = (
            Path(settings.policy_file)
            if settings.policy_file
            else policy_file_beside(Path(settings.clients_file))
        )
        try:
            watcher = PolicyWatcher(
                policy_path, interval=settings.reload_interval, on_error=reload_failed("policy")
            )
        except PolicyError as exc:
            raise PolicyError(
                f"{path.name} names trusted issuers; their rules belong in the policy file: "
                + exc.message
            ) from None
        policy = watcher.current
    grant = JwtBearerGrant(
        service, issuers, policy, allow_loopback_http=settings.allow_loopback_http_jwks
    )
    service.token_grants[JWT_BEARER] = grant
    return grant


__all__ = [
    "ASSERTION_KINDS",
    "ID_JAG_TYPE",
    "JWT_BEARER",
    "JwtBearerGrant",
    "TrustedIssuer",
    "TrustedIssuers",
    "TrustedIssuersError",
    "TrustedIssuersWatcher",
    "install_jwt_bearer",
    "load_trusted_issuers",
    "trusted_issuers_beside",
]
