"""The signed revocation list: its format, and how verifiers fetch and apply it.

Revocation keeps verification offline. The issuer publishes one signed document at
``<issuer>/.well-known/jwtmcp-revocations`` (:data:`WELL_KNOWN_PATH`); every verifier that
opts in fetches it in the background with the same cache machinery as the JWKS
(:class:`jwtmcp.jwks.CachedDocument`: ``Cache-Control: max-age``, refresh ahead, the stale
window, the cache file, one fetch at a time) and answers each verification with a dict
lookup or three.

The document is a JWS in compact form, signed RS256 by the ring's active key, so a
verifier checks it with the JWKS it already has. Its header is ``{"alg": "RS256", "kid":
..., "typ": "jwtmcp-revocations+jwt"}`` (:data:`LIST_TYPE`: an access-token verifier,
which requires ``at+jwt``, can never take it for a token, nor the other way round). Its
payload::

    {"iss": "https://auth.example.com",   # the issuer, checked in canonical form
     "iat": 1796001464, "exp": 1796087864, # epoch seconds; a fetched list past exp is refused
     "sequence": 42,                       # grows with every change; never goes back
     "jti": {"<jti>": <exp>, ...},         # tokens revoked one by one, until their expiry
     "sub": {"alice": <before>, ...},      # every token of this sub issued at or before
     "client_id": {"ci-bot": <before>, ...}}  # every token of this client issued at or before

A token is refused with :class:`~jwtmcp.errors.TokenRevoked` (``token_revoked``) when its
``jti`` is listed, or its ``sub`` (``client_id``) is listed with a time at or after its
``iat``. A fetched list is used only if its signature verifies with a key of the JWKS,
its ``typ``, ``iss``, ``iat`` and ``exp`` hold, and its ``sequence`` is not older than the
list held (an older one is a failed fetch: the newer list keeps serving). No list fresh
enough (none yet, or the last good one past its stale window) raises
:class:`~jwtmcp.errors.RevocationsUnavailable`, an outage (503 at MCP servers).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import jwt

from .errors import RevocationsUnavailable, TokenError
from .identifiers import canonical_or_none
from .jwks import SIGNATURE_SCHEMES, CachedDocument, JwksError, JwksPolicy, KeySource, PublicKey
from .strict_json import STRICT_DECODER, DuplicateMember
from .tokens import Clock, VerifiedClaims

__all__ = [
    "DEFAULT_LIST_LIFETIME",
    "DEFAULT_MAX_AGE",
    "LIST_TYPE",
    "WELL_KNOWN_PATH",
    "RevocationCache",
    "RevocationList",
    "list_claims",
    "parse_list",
]

WELL_KNOWN_PATH = "/.well-known/jwtmcp-revocations"
LIST_TYPE = "jwtmcp-revocations+jwt"
"""The list's ``typ`` header (RFC 7515 4.1.9; media type ``application/jwtmcp-revocations+jwt``)."""
DEFAULT_MAX_AGE = 60
"""Seconds the issuer lets verifiers cache the list (``Cache-Control: max-age``): the bound
from a revocation to its refusal on every server that checks the list."""
DEFAULT_LIST_LIFETIME = 86400
"""Seconds from a list's ``iat`` to its ``exp``: a fetched list older than this is refused."""
MAX_LIST_BYTES = 8 * 1024 * 1024
"""Bytes of a list response read at most (100,000 entries fit)."""
MIN_MAX_AGE = 5.0
"""The lower clamp of the list's freshness (the JWKS uses 60 s): an issuer may ask for a
shorter propagation bound than a minute, never for a fetch per request."""
MAX_MAX_AGE = 3600.0
"""The upper clamp: a revocation reaches every server within an hour whatever the issuer says."""


@dataclass(frozen=True, eq=False)
class RevocationList:
    """A verified revocation list (see the module docstring). Times are epoch seconds."""

    issuer: str
    sequence: int
    issued_at: int
    expires_at: int
    # Plain dicts (a read-only view costs each lookup ~20%), never changed once built.
    jtis: dict[str | None, int]
    """Revoked ``jti`` -> the time until which it is listed (the token's ``exp``)."""
    subjects: dict[str, int]
    """Revoked ``sub`` -> tokens issued at or before this time are refused."""
    clients: dict[str | None, int]
    """Revoked ``client_id`` -> tokens issued at or before this time are refused."""

    def covers(self, claims: VerifiedClaims) -> bool:
        """True when ``claims`` (a verified token) is revoked by this list: one dict lookup
        per kind of entry (the hot path of every verification that checks the list)."""
        if claims.jti in self.jtis:
            return True
        # No iat (never from jwtmcp's verifier, which requires it): the issue time is
        # unknown, so a listed sub or client_id refuses it.
        before = self.subjects.get(claims.subject)
        if before is not None and (claims.issued_at or 0) <= before:
            return True
        before = self.clients.get(claims.client_id)  # None (absent) is never listed
        return before is not None and (claims.issued_at or 0) <= before

    def __len__(self) -> int:
        return len(self.jtis) + len(self.subjects) + len(self.clients)


def list_claims(
    *,
    issuer: str,
    sequence: int,
    now: float,
    jtis: Mapping[str, int],
    subjects: Mapping[str, int],
    clients: Mapping[str, int],
    lifetime: int = DEFAULT_LIST_LIFETIME,
) -> dict[str, Any]:
    """The payload of a revocation list issued at ``now`` (epoch seconds)."""
    iat = int(now)
    return {
        "iss": issuer,
        "iat": iat,
        "exp": iat + lifetime,
        "sequence": sequence,
        "jti": dict(jtis),
        "sub": dict(subjects),
        "client_id": dict(clients),
    }


def _times(value: object, name: str) -> dict[Any, int]:
    if not isinstance(value, dict):
        raise JwksError(f"the revocation list's {name!r} is not an object")
    for key, when in value.items():
        if not key or type(when) is not int:
            raise JwksError(f"the revocation list's {name!r} holds an invalid entry")
    return value


def parse_list(
    token: str | bytes,
    *,
    issuer: str,
    keys: KeySource,
    algorithms: Iterable[str] = ("RS256",),
    now: float,
    leeway: float = 30.0,
    check_times: bool = True,
    wait_timeout: float = 6.0,
) -> RevocationList:
    """Verify a revocation list (the compact JWS the issuer publishes) and return it.

    ``issuer`` is the expected ``iss`` (canonical form); ``keys`` the verifier's key source,
    whose key named by the list's ``kid`` must verify its signature (a key fetch may be
    waited for, at most ``wait_timeout`` seconds); ``algorithms`` the allow-list. With
    ``check_times`` the list must not be expired (``exp``) nor issued in the future
    (``iat``), ``leeway`` seconds of clock skew allowed. Raises
    :class:`~jwtmcp.jwks.JwksError` saying why the list is refused.
    """
    text = token.decode("ascii", "replace") if isinstance(token, bytes) else token
    text = text.strip()
    allowed = tuple(a for a in algorithms if a in SIGNATURE_SCHEMES)
    try:
        header = jwt.get_unverified_header(text)
    except jwt.PyJWTError:
        raise JwksError("the revocation list is not a JWS in compact form") from None
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower().removeprefix("application/") != LIST_TYPE:
        raise JwksError(f"the revocation list's type (typ) is not {LIST_TYPE}")
    alg = header.get("alg")
    if alg not in allowed:
        raise JwksError("the revocation list's algorithm is not accepted")
    if "crit" in header:
        raise JwksError("the revocation list names critical extensions (crit)")
    kid = header.get("kid")
    key = _key_for(keys, kid if isinstance(kid, str) else None, now, wait_timeout)
    if key.alg is not None and key.alg != alg:
        raise JwksError("the revocation list's algorithm does not match its key")
    try:
        decoded = jwt.PyJWS().decode_complete(text, key=key.key, algorithms=[alg])
    except jwt.InvalidSignatureError:
        raise JwksError("the revocation list's signature is invalid") from None
    except jwt.PyJWTError as exc:
        raise JwksError(f"the revocation list cannot be read ({exc})") from None
    try:
        payload = STRICT_DECODER.decode(decoded["payload"].decode("utf-8"))
    except DuplicateMember:
        raise JwksError("the revocation list repeats a JSON member name") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise JwksError("the revocation list's payload is not JSON") from None
    if not isinstance(payload, dict):
        raise JwksError("the revocation list's payload is not a JSON object")
    iss = payload.get("iss")
    if not isinstance(iss, str) or canonical_or_none(iss, "issuer") != issuer:
        raise JwksError("the revocation list was issued by another issuer")
    sequence, iat, exp = payload.get("sequence"), payload.get("iat"), payload.get("exp")
    if type(sequence) is not int or sequence < 0:
        raise JwksError("the revocation list has no valid sequence")
    if type(iat) is not int or type(exp) is not int:
        raise JwksError("the revocation list has no valid iat and exp")
    if check_times:
        if now >= exp + leeway:
            raise JwksError("the revocation list has expired (exp)")
        if iat > now + leeway:
            raise JwksError("the revocation list is issued in the future (iat)")
    return RevocationList(
        issuer=issuer,
        sequence=sequence,
        issued_at=iat,
        expires_at=exp,
        jtis=_times(payload.get("jti", {}), "jti"),
        subjects=_times(payload.get("sub", {}), "sub"),
        clients=_times(payload.get("client_id", {}), "client_id"),
    )


def _key_for(keys: KeySource, kid: str | None, now: float, wait_timeout: float) -> PublicKey:
    try:
        found = keys.find(kid, now)
        if not isinstance(found, PublicKey):
            with contextlib.suppress(FutureTimeout):
                found.result(wait_timeout)
            found = keys.find(kid, now, may_wait=False)
    except TokenError as exc:
        raise JwksError(f"the revocation list's signing key: {exc.message}") from None
    assert isinstance(found, PublicKey)
    return found


def revocation_policy(policy: JwksPolicy) -> JwksPolicy:
    """The verifier's JWKS policy, adapted to the list: a larger body, and freshness clamped
    to [:data:`MIN_MAX_AGE`, :data:`MAX_MAX_AGE`] with :data:`DEFAULT_MAX_AGE` by default."""
    return dataclasses.replace(
        policy,
        max_body_bytes=max(policy.max_body_bytes, MAX_LIST_BYTES),
        default_max_age=float(DEFAULT_MAX_AGE),
        min_max_age=min(policy.min_max_age, MIN_MAX_AGE),
        max_max_age=min(policy.max_max_age, MAX_MAX_AGE),
    )


class RevocationCache(CachedDocument[RevocationList]):
    """The issuer's revocation list from ``url``, cached like the JWKS.

    ``issuer`` is the expected ``iss``; ``keys`` the verifier's key source, which checks
    the list's signature; ``leeway`` (seconds) the clock skew allowed on its ``iat`` and
    ``exp``. ``policy`` is the verifier's :class:`~jwtmcp.jwks.JwksPolicy` (adapted by
    :func:`revocation_policy`); ``cache_file`` keeps the last good list across restarts
    (verified again when read back). :meth:`current` is the hot path.
    """

    what = "revocation list"
    file_member = "list"
    accept = "application/jwtmcp-revocations+jwt, application/jwt"
    url_option = "revocation_url"
    _thread_name = "jwtmcp-revocations"

    def __init__(
        self,
        url: str,
        *,
        issuer: str,
        keys: KeySource,
        algorithms: Iterable[str] = ("RS256",),
        leeway: float = 30.0,
        policy: JwksPolicy | None = None,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        cache_file: str | os.PathLike[str] | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        self.issuer = issuer
        self._keys = keys
        self._algorithms = tuple(algorithms)
        self._leeway = leeway
        base = revocation_policy(policy or JwksPolicy())
        self._wait_timeout = base.fetch_timeout + 1.0
        super().__init__(
            url,
            policy=base,
            clock=clock,
            monotonic=monotonic,
            cache_file=cache_file,
            allow_insecure_http=allow_insecure_http,
        )

    def current(self, *, may_wait: bool = True) -> RevocationList | Future[bool]:
        """The list to check tokens against, or (``may_wait``) a fetch to wait for before
        asking again with ``may_wait=False``. Raises
        :class:`~jwtmcp.errors.RevocationsUnavailable` when no list is fresh enough."""
        snap = self._snapshot
        if snap is not None and self._monotonic() < snap.refresh_at:
            return snap.value
        now = self._monotonic()
        if self._closed:
            raise RevocationsUnavailable("the verifier is closed")
        with self._lock:
            usable = self._usable_snapshot(now, may_wait)
            if isinstance(usable, Future):
                return usable
            return self._serve(usable.value, usable, now, may_wait)

    def revoked(self, claims: VerifiedClaims) -> bool | Future[bool]:
        """Whether the list held now revokes ``claims``, or (no list fresh enough at hand)
        a fetch to wait for before asking :meth:`current` with ``may_wait=False``. The hot
        path of every verification: one freshness check and the list's lookups, inlined
        (each call saved is a sizeable part of a verified-cache hit). Raises
        :class:`~jwtmcp.errors.RevocationsUnavailable` when no list can be had."""
        snap = self._snapshot
        if snap is not None and self._monotonic() < snap.refresh_at:
            found = snap.value
        else:
            current = self.current()
            if type(current) is Future:
                return current
            found = current  # type: ignore[assignment]
        if claims.jti in found.jtis:
            return True
        before = found.subjects.get(claims.subject)
        if before is not None and (claims.issued_at or 0) <= before:
            return True
        before = found.clients.get(claims.client_id)
        return before is not None and (claims.issued_at or 0) <= before

    @property
    def sequence(self) -> int | None:
        """The sequence of the list held now (None before the first good one)."""
        snap = self._snapshot
        return snap.value.sequence if snap is not None else None

    def _unavailable(self) -> TokenError:
        return RevocationsUnavailable(
            "the issuer's revocation list is unavailable; try again later"
        )

    def _parse(self, body: bytes, previous: RevocationList | None) -> RevocationList:
        found = parse_list(
            body,
            issuer=self.issuer,
            keys=self._keys,
            algorithms=self._algorithms,
            now=self._clock(),
            leeway=self._leeway,
            wait_timeout=self._wait_timeout,
        )
        if previous is not None and found.sequence < previous.sequence:
            # A replica behind the others, or an old list replayed: never go back.
            raise JwksError(
                f"its sequence {found.sequence} is older than the list held "
                f"({previous.sequence})"
            )
        return found

    def _file_form(self, body: bytes) -> object:
        return body.decode("ascii", "replace").strip()

    def _from_file(self, stored: object, where: str) -> RevocationList:
        if not isinstance(stored, str):
            raise JwksError("no list")
        # Its age is the stale window's business (the cache file records when it was
        # fetched), so its own exp is not checked here; its signature and issuer are.
        return parse_list(
            stored,
            issuer=self.issuer,
            keys=self._keys,
            algorithms=self._algorithms,
            now=self._clock(),
            check_times=False,
            wait_timeout=0.0,
        )

    def _describe(self, value: RevocationList) -> str:
        return f"revocation list #{value.sequence} ({len(value)} entries)"
