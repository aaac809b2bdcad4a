"""JWT assertions presented at the token endpoint (RFC 7521, RFC 7523): checked, never trusted.

Two kinds reach ``/token``: a client's ``client_assertion`` (``private_key_jwt``, RFC 7523
§2.2, :mod:`jwtmcp.client_auth`) and the ``assertion`` of the jwt-bearer grant (RFC 7523
§2.1, :mod:`jwtmcp.jwt_bearer`). Both are checked here the same strict way (RFC 7523 §3,
RFC 8725):

- **The header** is read as strict JSON (no duplicate members). ``alg`` must be in the
  allow-list (:data:`ASSERTION_ALGORITHMS`: RSA only, so ``none`` and ``HS*`` can never
  pass). A header that points at a key (``jku``, ``jwk``, ``x5u``, ``x5c``) is refused: the
  key comes only from the keys registered for the client or the trusted issuer, never from
  the token. ``crit`` and ``b64`` (extensions jwtmcp does not implement) are refused too.
- **The key** is the one ``kid`` names in the registered key set; an assertion without a
  ``kid`` is checked with the set's only key, and refused when the set holds several. A JWK
  with an ``alg`` member accepts that algorithm only.
- **The signature** is verified by PyJWT (:class:`jwt.PyJWS`), never by hand.
- **The claims** are strict JSON; ``exp`` is required, and must lie at most
  ``max_lifetime`` seconds ahead; ``nbf`` and ``iat``, when present, must not be in the
  future; all with :data:`LEEWAY` seconds of clock skew. ``jti`` is required (the caller
  records it once in the store: :func:`replay_key`).

The checks that differ between the two kinds (who the issuer is, the audience, the ``typ``)
are made by their modules over the :class:`Assertion` returned here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
import jwt

from .errors import ConfigError, JwtMcpError, KeysUnavailable, UnknownKid
from .jwks import JwksCache, JwksPolicy, KeySource, PublicKey, StaticKeys, is_loopback_url
from .strict_json import DuplicateMember, loads_document

ASSERTION_ALGORITHMS = ("RS256", "PS256")
"""The JWS algorithms an assertion may use (RFC 7518): RSA PKCS#1 v1.5 and PSS over SHA-256.
``none`` and the HMAC algorithms can never be enabled: a shared secret would make every
holder able to sign as the client."""

MAX_CLIENT_KEYS = 10
"""Keys a client's JWK set may hold (a client has a key or two; more is a mistake)."""

MAX_ASSERTION_BYTES = 8192
"""An assertion longer than this is refused before it is decoded."""

LEEWAY = 30
"""Seconds of clock skew allowed on ``exp``, ``nbf`` and ``iat``."""

MAX_JTI_LENGTH = 256

KEY_WAIT_TIMEOUT = 6.0
"""Seconds a request waits at most for a key set being fetched (the fetch times out at 5)."""

KEY_HEADERS = ("jku", "jwk", "x5u", "x5c")
"""Header members that name a key (RFC 7515 §4.1.2-§4.1.6): refused, never followed."""

UNSUPPORTED_HEADERS = ("crit", "b64")
"""Header members that change how the JWS is processed (RFC 7515 §4.1.11, RFC 7797)."""


class AssertionRefused(JwtMcpError):
    """An assertion failed a check. The message is safe to return to the client and names
    the check, never a secret."""

    code = "invalid_assertion"


@dataclass(frozen=True)
class Assertion:
    """A verified assertion: its header and claims, and the time checks already passed."""

    header: Mapping[str, Any]
    claims: Mapping[str, Any]

    @property
    def typ(self) -> str | None:
        """The ``typ`` header, lower-cased without an ``application/`` prefix (RFC 7515
        §4.1.9), or None."""
        typ = self.header.get("typ")
        return typ.strip().lower().removeprefix("application/") if isinstance(typ, str) else None

    @property
    def exp(self) -> float:
        return float(self.claims["exp"])

    @property
    def jti(self) -> str:
        return str(self.claims["jti"])


def _segment(text: str, what: str) -> bytes:
    if not text or not text.isascii() or any(c in text for c in "=+/"):
        raise AssertionRefused(f"the assertion's {what} is not valid base64url")
    try:
        # validate: a byte outside the base64url alphabet is an error, never skipped.
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise AssertionRefused(f"the assertion's {what} is not valid base64url") from None


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = loads_document(raw)
    except DuplicateMember:
        raise AssertionRefused(f"the assertion's {what} repeats a JSON member name") from None
    except (ValueError, RecursionError):
        raise AssertionRefused(f"the assertion's {what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise AssertionRefused(f"the assertion's {what} is not a JSON object")
    return value


def read_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS, NOT verified: only to find which keys
    verify it. Refuses (:class:`AssertionRefused`) what is not a compact JWS of at most
    :data:`MAX_ASSERTION_BYTES`, a header that names a key or an extension, and an ``alg``
    outside :data:`ASSERTION_ALGORITHMS`."""
    if len(token) > MAX_ASSERTION_BYTES:
        raise AssertionRefused(f"the assertion is longer than {MAX_ASSERTION_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3 or not parts[2]:
        raise AssertionRefused("the assertion is not a signed JWT (compact JWS)")
    header = _json_object(_segment(parts[0], "header"), "header")
    pointing = [name for name in KEY_HEADERS if name in header]
    if pointing:
        raise AssertionRefused(
            f"the assertion's header names a key ({', '.join(pointing)}); keys are taken only "
            "from those registered with this issuer"
        )
    extensions = [name for name in UNSUPPORTED_HEADERS if name in header]
    if extensions:
        raise AssertionRefused(
            f"the assertion's header uses an unsupported extension ({', '.join(extensions)})"
        )
    alg = header.get("alg")
    if alg not in ASSERTION_ALGORITHMS:
        shown = alg if isinstance(alg, str) and alg.isprintable() and len(alg) < 20 else "?"
        raise AssertionRefused(
            f"the assertion's algorithm {shown!r} is not accepted; use one of "
            + ", ".join(ASSERTION_ALGORITHMS)
        )
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > 256):
        raise AssertionRefused("the assertion's kid is not a short string")
    claims = _json_object(_segment(parts[1], "claims"), "claims")
    return header, claims


async def find_key(keys: KeySource, kid: str | None, now: float) -> PublicKey:
    """The key of ``keys`` that ``kid`` names (the set's only key when ``kid`` is None),
    waiting without blocking the event loop for a key set being fetched.

    Raises :class:`AssertionRefused` for an unknown kid or a missing kid with several keys,
    :class:`~jwtmcp.errors.KeysUnavailable` when the key set cannot be fetched.
    """
    if kid is None:
        kids: Iterable[str] = ()
        if isinstance(keys, JwksCache):
            if not keys.kids:
                await anyio.to_thread.run_sync(keys.wait_idle, KEY_WAIT_TIMEOUT)
            kids = keys.kids
            if not kids:
                raise KeysUnavailable("the registered key set is unavailable; try again later")
        elif isinstance(keys, StaticKeys):
            kids = keys.kids
        kids = tuple(kids)
        if len(kids) != 1:
            raise AssertionRefused(
                "the assertion names no kid and the registered key set holds several keys"
            )
        kid = kids[0]
    try:
        found = keys.find(kid, now)
        if not isinstance(found, PublicKey):
            with contextlib.suppress(TimeoutError):
                # shield: a cancelled request must not cancel a fetch others share.
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(found)), KEY_WAIT_TIMEOUT)
            found = keys.find(kid, now, may_wait=False)
    except UnknownKid:
        raise AssertionRefused(
            "the assertion's signing key (kid) is not one registered with this issuer"
        ) from None
    assert isinstance(found, PublicKey)
    return found


class RemoteKeySets:
    """One :class:`~jwtmcp.jwks.JwksCache` per JWKS URL, shared by everyone naming that URL
    and closed when nobody does any more. https only; plain http on a loopback host only
    with ``allow_loopback_http`` (development). Thread-safe."""

    def __init__(self, *, allow_loopback_http: bool = False) -> None:
        self.allow_loopback_http = allow_loopback_http
        self._lock = threading.Lock()
        self._caches: dict[str, JwksCache] = {}

    def get(self, url: str, *, max_keys: int = 100) -> JwksCache:
        """The cache for ``url``. Raises :class:`~jwtmcp.errors.ConfigError` for a URL that
        is not https (unless loopback in development mode)."""
        if urlsplit(url).scheme != "https" and not (
            self.allow_loopback_http and is_loopback_url(url)
        ):
            raise ConfigError(
                f"the JWKS URL {url} is not https; plain http on loopback is used only in "
                "development mode (allow_loopback_http_jwks)"
            )
        with self._lock:
            cache = self._caches.get(url)
            if cache is None:
                cache = self._caches[url] = JwksCache(
                    url,
                    algorithms=ASSERTION_ALGORITHMS,
                    policy=JwksPolicy(max_keys=max_keys),
                    allow_insecure_http=self.allow_loopback_http,
                )
            return cache

    def keep_only(self, urls: Iterable[str]) -> None:
        """Close the caches of URLs not in ``urls``."""
        wanted = set(urls)
        with self._lock:
            gone = [self._caches.pop(u) for u in list(self._caches) if u not in wanted]
        for cache in gone:
            cache.close()

    def close(self) -> None:
        self.keep_only(())


def _numeric(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AssertionRefused(f"the assertion's {name} is not a number of epoch seconds")
    return float(value)


def check_times(claims: Mapping[str, Any], *, now: float, max_lifetime: float) -> None:
    """RFC 7523 §3 items 4-6 with :data:`LEEWAY`: ``exp`` required, in the future and at most
    ``max_lifetime`` seconds ahead; ``nbf``/``iat`` (optional) not in the future; ``jti``
    required (a string of at most :data:`MAX_JTI_LENGTH`). Raises :class:`AssertionRefused`."""
    exp = _numeric(claims, "exp")
    if exp is None:
        raise AssertionRefused("the assertion has no exp (expiry) claim")
    if now >= exp + LEEWAY:
        raise AssertionRefused("the assertion has expired")
    if exp - now > max_lifetime + LEEWAY:
        raise AssertionRefused(
            f"the assertion expires more than {int(max_lifetime)} s from now; "
            "ask for a shorter-lived one"
        )
    nbf = _numeric(claims, "nbf")
    if nbf is not None and nbf > now + LEEWAY:
        raise AssertionRefused("the assertion is not valid yet (nbf)")
    iat = _numeric(claims, "iat")
    if iat is not None and iat > now + LEEWAY:
        raise AssertionRefused("the assertion was issued in the future (iat)")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
        raise AssertionRefused(
            "the assertion has no jti (a unique id, so that it can be used only once)"
        )


async def verify_assertion(
    token: str,
    keys: KeySource,
    *,
    now: float,
    max_lifetime: float,
    algorithms: Iterable[str] = ASSERTION_ALGORITHMS,
) -> Assertion:
    """Verify ``token``'s header, signature (with a key of ``keys``) and times (see the
    module docstring); ``now`` is epoch seconds, ``max_lifetime`` seconds; ``algorithms``
    narrows :data:`ASSERTION_ALGORITHMS` (e.g. to what one trusted issuer uses).

    Returns the :class:`Assertion`. Raises :class:`AssertionRefused` naming the failed check,
    or :class:`~jwtmcp.errors.KeysUnavailable` when the key set cannot be fetched (a
    dependency outage: the caller answers 503).
    """
    header, _ = read_unverified(token)
    alg = header["alg"]
    if alg not in set(algorithms):
        raise AssertionRefused(f"the assertion's algorithm {alg} is not accepted from its issuer")
    key = await find_key(keys, header.get("kid"), now)
    if key.alg is not None and key.alg != alg:
        raise AssertionRefused(f"the assertion's key is registered for {key.alg}, not {alg}")
    try:
        decoded = jwt.PyJWS(algorithms=list(ASSERTION_ALGORITHMS)).decode_complete(
            token, key.key, algorithms=[alg]
        )
    except jwt.InvalidSignatureError:
        raise AssertionRefused("the assertion's signature does not verify") from None
    except jwt.PyJWTError:
        raise AssertionRefused("the assertion is not a valid signed JWT") from None
    payload = decoded["payload"]
    claims = _json_object(payload if isinstance(payload, bytes) else b"", "claims")
    check_times(claims, now=now, max_lifetime=max_lifetime)
    return Assertion(header=header, claims=claims)


def audience_matches(claims: Mapping[str, Any], accepted: Iterable[str]) -> bool:
    """True when the assertion's ``aud`` is one of ``accepted`` as its sole value (a string,
    or a list of one string): draft-ietf-oauth-rfc7523bis §4 asks for the authorization
    server's issuer identifier as the only audience, so an assertion made for several
    servers cannot be replayed from one to another."""
    aud = claims.get("aud")
    if isinstance(aud, list) and len(aud) == 1:
        aud = aud[0]
    return isinstance(aud, str) and aud in set(accepted)


def replay_key(kind: str, issuer: str, jti: str) -> str:
    """The store key recording that ``jti`` of ``issuer`` was used (``kind`` keeps client
    assertions and grant assertions apart). The store hashes it."""
    return f"{kind}\n{issuer}\n{jti}"


__all__ = [
    "ASSERTION_ALGORITHMS",
    "Assertion",
    "AssertionRefused",
    "RemoteKeySets",
    "audience_matches",
    "check_times",
    "find_key",
    "read_unverified",
    "replay_key",
    "verify_assertion",
]
