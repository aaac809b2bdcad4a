"""The verifier MCP servers embed: offline checks of RFC 9068 access tokens.

:class:`Verifier` checks a token against keys from one source (a JWKS URL, a JWKS file or
a PEM public key, see :mod:`jwtmcp.jwks`) and returns :class:`~jwtmcp.tokens.VerifiedClaims`,
or raises a :class:`~jwtmcp.errors.TokenError` subclass whose ``code`` says why and whose
message is safe to return to the client. Nothing else escapes.

Why the JWS work is done here rather than by PyJWT's ``decode``: a JWS is three base64url
segments and one RSA operation, and the glue around that operation is what costs —
PyJWT's generic path reaches about a third of raw RSA verify speed. Doing it as thin glue
over ``base64``, ``json`` and ``cryptography`` keeps every check explicit in one place and
the overhead small: each distinct header segment is parsed and checked once (a small
bounded cache), public keys stay parsed (kid -> key object), and a bounded LRU of verified
tokens lets a client that reuses its token pay for the signature once.

Order of checks (the cheap, unauthenticated ones first; nothing from the payload is
trusted before the signature is): size cap -> three canonical base64url segments ->
header (JSON object without duplicate names, ``alg`` in the allow-list, ``typ``, no
``crit``) -> key by ``kid`` (never from ``jwk``/``jku``/``x5u``/``x5c``, which are ignored)
-> the key's own ``alg`` matches -> signature -> payload (JSON object without duplicate
names) -> ``iss``, ``aud``, ``exp``, ``nbf``, ``iat``, lifetime, ``sub``, ``client_id``,
``jti``, ``scope``. A registered claim that is present must have its JSON type (``null`` is
not "absent"), else the token is ``malformed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
import pybase64
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from .errors import (
    BadSignature,
    ConfigError,
    LifetimeTooLong,
    MalformedToken,
    MissingClaim,
    TokenError,
    TokenExpired,
    TokenNotYetValid,
    TokenRevoked,
    UnsupportedAlgorithm,
    WrongAudience,
    WrongIssuer,
    WrongType,
)
from .identifiers import canonical_issuer, canonical_or_none, canonical_resources
from .jwks import (
    MAX_KID_LENGTH,
    SIGNATURE_SCHEMES,
    JwksCache,
    JwksPolicy,
    KeySource,
    PublicKey,
    StaticKeys,
)
from .strict_json import STRICT_DECODER, DuplicateMember
from .tokens import (
    DEFAULT_MAX_LIFETIME,
    MAX_NUMERIC_DATE,
    MAX_TOKEN_BYTES,
    SHORT_LIVED_MAX,
    TOKEN_TYPE,
    Clock,
    ToolGrants,
    VerifiedClaims,
    split_scope,
)

if TYPE_CHECKING:
    from .revocation import RevocationCache

__all__ = ["Verifier"]

log = logging.getLogger("jwtmcp.verifier")

DEFAULT_LEEWAY = 30
DEFAULT_MAX_TOKEN_BYTES = MAX_TOKEN_BYTES  # what mint() signs at most
DEFAULT_VERIFIED_CACHE_SIZE = 10_000
MAX_LEEWAY = 300
_HEADER_CACHE_SIZE = 256
_GRANTS_CACHE_SIZE = 1024

# base64url -> the standard alphabet; "+" and "/" become "*", which the decoder refuses.
_URLSAFE_TO_STD = bytes.maketrans(b"-_+/", b"+/**")
# The padding that makes a segment of length 2 or 3 (mod 4) a whole base64 quantum.
_PADDING = (b"", b"", b"==", b"=")
_EQUALS = 61  # b"="


class _Header(NamedTuple):
    alg: str
    kid: str | None
    scheme: tuple[padding.AsymmetricPadding, hashes.HashAlgorithm]


class _Entry(NamedTuple):
    """A verified token: what a reuse must re-check (time, and that its key is still there)."""

    claims: VerifiedClaims
    key: PublicKey
    kid: str | None
    not_before: float  # the claims' own numbers (no new objects per entry); the leeway
    expires_at: float  # applies at each use


_JSON = STRICT_DECODER
_orjson_loads = orjson.loads
_orjson_dumps = orjson.dumps
_pybase64_decode = pybase64.b64decode
_pybase64_encode = pybase64.b64encode


def _b64decode(segment: bytes, what: str) -> bytes:
    """Strict, canonical base64url without padding (RFC 7515 2).

    The segment is moved to the standard alphabet (``+`` and ``/`` become ``*``, which no
    alphabet has) and padded; ``pybase64`` (SIMD) decodes it, refusing any byte outside the
    alphabet, and encoding the result again must give back exactly those bytes. That one
    comparison refuses every other spelling of the same bytes: ``+`` or ``/``, a last
    character with unused bits set (RFC 4648 3.5), and — with the check that a segment
    never ends in ``=`` — padding. So one token has exactly one spelling.
    """
    if segment and segment[-1] == _EQUALS:
        raise MalformedToken(f"the token's {what} is not valid base64url")
    rest = len(segment) & 3
    # rest == 1 is never a whole quantum, padded or not: the decoder refuses it.
    std = segment.translate(_URLSAFE_TO_STD) + _PADDING[rest]
    try:
        data = _pybase64_decode(std, None, True)
    except ValueError:  # binascii.Error
        raise MalformedToken(f"the token's {what} is not valid base64url") from None
    if _pybase64_encode(data) != std:
        raise MalformedToken(f"the token's {what} is not valid base64url")
    return data


def _json_object(segment: bytes, what: str) -> dict[str, Any]:
    raw = _b64decode(segment, what)
    # Fast path (orjson is ~5x faster than the stdlib decoder with its duplicate check),
    # taken only when ``raw`` is byte for byte what orjson writes for the value it read —
    # the compact form jwtmcp's own tokens use. Why that is as strict as the stdlib path:
    # - no duplicate member names, at any depth: ``raw`` then *is* the serialization of a
    #   tree of Python dicts, whose keys are distinct strings, and a string's JSON form
    #   decodes back to it, so distinct keys are written distinctly. A duplicate that
    #   orjson collapsed (last one wins) would be missing from the re-serialization, which
    #   would therefore differ (e.g. ``{"a":1,"a":2}`` -> ``{"a":2}``), sending the input
    #   to the strict path, which refuses it.
    # - the same value as the stdlib decoder: orjson refuses NaN/Infinity, invalid UTF-8,
    #   lone surrogates and floats that overflow (errors -> strict path), reads an integer
    #   past 64 bits as a float (re-written differently -> strict path), and writes a float
    #   as its shortest round-trip repr, which ``float()`` reads back to the same double.
    # Anything else — other spacing, escapes, number spellings, nesting deeper than orjson
    # writes, any orjson error — takes the strict path, so those inputs are treated exactly
    # as before (tests/test_verifier.py compares both paths).
    try:
        value = _orjson_loads(raw)
        if type(value) is dict and _orjson_dumps(value) == raw:
            return value
    except Exception:  # noqa: S110 - any doubt: the strict path decides
        pass
    return _strict_json_object(raw, what)


def _strict_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """The stdlib decoder, refusing duplicate member names and NaN/Infinity."""
    try:
        text = raw.decode("utf-8")
        # raw_decode skips decode()'s two whitespace regex passes (JWT issuers emit none;
        # surrounding whitespace is still accepted, as RFC 8259 allows).
        if text[:1].isspace():
            text = text.lstrip()
        value, end = _JSON.raw_decode(text)
        if end != len(text) and not text[end:].isspace():
            raise ValueError("trailing data")
    except DuplicateMember:
        raise MalformedToken(f"the token's {what} repeats a JSON member name") from None
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedToken(f"the token's {what} is not valid JSON") from None
    if type(value) is not dict:
        raise MalformedToken(f"the token's {what} is not a JSON object")
    return value


_OPTIONAL_STRINGS = ("client_id", "jti", "scope")


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """The slow path for ``iat``, ``nbf``, ``exp``: None when the claim is absent.

    A present claim must be a JSON number within +-``MAX_NUMERIC_DATE``: ``null``, a
    boolean, a string, an array, an object or a non-finite value is malformed.
    """
    if name not in claims:
        return None
    value = claims[name]
    # Comparisons are False for NaN, so NaN and the infinities both fail the range check.
    if (type(value) is int or type(value) is float) and (
        -MAX_NUMERIC_DATE <= value <= MAX_NUMERIC_DATE
    ):
        return value
    raise MalformedToken(f"claim {name!r} is not a number (NumericDate)")


def _optional_strings(claims: dict[str, Any]) -> list[str | None]:
    """The slow path for ``client_id``, ``jti``, ``scope``: None for each absent one.

    A present ``client_id`` or ``jti`` must be a non-empty string, a present ``scope`` a
    string (empty: no scopes); ``null`` is not "absent".
    """
    out: list[str | None] = []
    for name in _OPTIONAL_STRINGS:
        if name not in claims:
            out.append(None)
            continue
        value = claims[name]
        if type(value) is not str:
            raise MalformedToken(f"claim {name!r} is not a string")
        if not value and name != "scope":
            raise MalformedToken(f"claim {name!r} is an empty string")
        out.append(value)
    return out


def _verified_claims_fields() -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(VerifiedClaims))


_VERIFIED_FIELDS = _verified_claims_fields()
# The fields _new_verified_claims fills in, checked once here against the dataclass.
_FILLED_FIELDS = frozenset(
    {
        "subject",
        "client_id",
        "issuer",
        "audience",
        "scopes",
        "tools",
        "issued_at",
        "expires_at",
        "jti",
        "kid",
        "claims",
    }
)
_FAST_CONSTRUCTION = (
    "__slots__" not in VerifiedClaims.__dict__
    and not hasattr(VerifiedClaims, "__post_init__")
    and VerifiedClaims.__init__.__qualname__ == "VerifiedClaims.__init__"  # dataclass-made
    and _VERIFIED_FIELDS == _FILLED_FIELDS
)
_object_new = object.__new__


def _new_verified_claims(
    subject: str,
    client_id: str | None,
    issuer: str,
    audience: tuple[str, ...],
    scopes: tuple[str, ...],
    tools: ToolGrants,
    issued_at: int,
    expires_at: int,
    jti: str | None,
    kid: str | None,
    claims: MappingProxyType[str, Any],
) -> VerifiedClaims:
    """Build the frozen value. A frozen dataclass's ``__init__`` pays an
    ``object.__setattr__`` per field (about 2 us of a ~35 us verify); filling ``__dict__``
    directly gives the identical object. The dataclass path is the fallback whenever the
    class is not a plain frozen dataclass (slots, ``__post_init__``, other fields)."""
    if _FAST_CONSTRUCTION:
        obj = _object_new(VerifiedClaims)
        obj.__dict__.update(
            {
                "subject": subject,
                "client_id": client_id,
                "issuer": issuer,
                "audience": audience,
                "scopes": scopes,
                "tools": tools,
                "issued_at": issued_at,
                "expires_at": expires_at,
                "jti": jti,
                "kid": kid,
                "claims": claims,
            }
        )
        return obj
    return VerifiedClaims(
        subject=subject,
        client_id=client_id,
        issuer=issuer,
        audience=audience,
        scopes=scopes,
        tools=tools,
        issued_at=issued_at,
        expires_at=expires_at,
        jti=jti,
        kid=kid,
        claims=claims,
    )


def _safe(value: object) -> str:
    """A claim or kid for a log line: repr (escapes control characters), truncated."""
    return repr(value)[:80]


_LIVE_VERIFIERS: weakref.WeakSet[Verifier] = weakref.WeakSet()
"""Every verifier, so a forked child gets a verified-token cache lock nobody holds."""


def _after_fork_in_child() -> None:
    # A thread of the parent may have held the lock at the fork; that thread does not exist
    # in the child, so its copy of the lock would never be released (gunicorn --preload).
    for verifier in list(_LIVE_VERIFIERS):
        verifier._verified_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Verifier:
    """Checks access tokens offline against cached public keys. Thread-safe.

    Exactly one key source: ``jwks_url`` (fetched and cached in the background, see
    :mod:`jwtmcp.jwks`), ``jwks_file`` (read once at start) or ``public_key_pem`` (one key;
    any ``kid`` in the token is accepted and the signature decides). Every option has a
    safe default; docs/verifier.md gives each one and why. All are keyword-only:

    - ``issuer`` (str): the expected ``iss``. It is kept in canonical form
      (:mod:`jwtmcp.identifiers`), and a token's ``iss`` is compared in that form too, so
      any spelling of the same identifier matches.
    - ``audience`` (str or sequence of str): this server's resource URL(s), canonical too;
      the token's ``aud`` must contain one of them (RFC 8707, RFC 9068 §4).
    - ``jwks_url`` (str), ``jwks_file`` (path), ``public_key_pem`` (str or bytes): the key
      source, exactly one. A plain ``http://`` URL must be loopback unless
      ``allow_insecure_jwks_url`` (bool) is true. Or ``key_source``: a ready
      :class:`~jwtmcp.jwks.KeySource` (the issuer's own ring, for token exchange).
    - ``clock`` (() -> float): epoch seconds, for the token time checks; default
      :func:`time.time`.
    - ``monotonic`` (() -> float): seconds from any origin, measuring how old the fetched keys
      are, so a wall clock that steps cannot keep a revoked key; default :func:`time.monotonic`.
    - ``algorithms`` (iterable of str): the allow-list, default ``("RS256",)``; only RSA
      ``RS*``/``PS*`` algorithms exist (RFC 8725 §3.1).
    - ``leeway`` (seconds, 0-300, default 30): clock skew allowed on ``exp``, ``nbf``, ``iat``.
    - ``max_lifetime`` (seconds, default 3600): ``exp - iat`` above it is refused; above
      3600 only with ``revocations`` (long-lived tokens are safe only with the list).
    - ``required_type`` (str, default ``"at+jwt"``): the ``typ`` header, as a media type.
    - ``max_token_bytes`` (int, at least 256, default 8192): refused before decoding.
    - ``verified_cache_size`` (int, default 10000 tokens; 0 disables the cache).
    - ``fetch_timeout`` (seconds, default 5), ``stale_window`` (seconds, default 86400),
      ``refetch_cooldown`` (seconds, default 30), or a whole ``jwks_policy``
      (:class:`~jwtmcp.jwks.JwksPolicy`, which then replaces those three).
    - ``cache_file`` (path or None): where the last good JWKS is kept across restarts.
    - ``revocations`` (bool, default False): check the issuer's signed revocation list at
      ``<issuer>/.well-known/jwtmcp-revocations``, or at ``revocation_url`` (str; giving it
      turns the check on). Fetched and cached like the JWKS (its max-age, 60 s by default,
      bounds how long a revoked token is still accepted); a revoked token, even one in the
      verified-token cache, raises :class:`~jwtmcp.errors.TokenRevoked`; no list fresh
      enough raises :class:`~jwtmcp.errors.RevocationsUnavailable` (an outage).
      ``revocation_cache_file`` (path or None) keeps the last good list across restarts.
      See docs/revocation.md.

    Raises :class:`~jwtmcp.errors.ConfigError` for a bad option (an issuer or audience that
    is not an http(s) identifier, not exactly one key source, an algorithm outside the RSA
    set, a value out of range, an unreadable ``jwks_file`` or ``public_key_pem``, an insecure
    ``jwks_url``).
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str | Sequence[str],
        jwks_url: str | None = None,
        jwks_file: str | Any | None = None,
        public_key_pem: str | bytes | None = None,
        key_source: KeySource | None = None,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        algorithms: Iterable[str] = ("RS256",),
        leeway: float = DEFAULT_LEEWAY,
        max_lifetime: float = DEFAULT_MAX_LIFETIME,
        required_type: str = TOKEN_TYPE,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        verified_cache_size: int = DEFAULT_VERIFIED_CACHE_SIZE,
        fetch_timeout: float = 5.0,
        cache_file: str | Any | None = None,
        stale_window: float = 86400.0,
        refetch_cooldown: float = 30.0,
        jwks_policy: JwksPolicy | None = None,
        allow_insecure_jwks_url: bool = False,
        revocations: bool = False,
        revocation_url: str | None = None,
        revocation_cache_file: str | Any | None = None,
    ) -> None:
        issuer = canonical_issuer(issuer)
        audiences = canonical_resources(audience)
        if not audiences:
            raise ConfigError("the verifier needs this server's audience (resource URL)")
        algs = tuple(dict.fromkeys(algorithms if not isinstance(algorithms, str) else [algorithms]))
        bad = [a for a in algs if a not in SIGNATURE_SCHEMES]
        if not algs or bad:
            raise ConfigError(
                f"unsupported algorithm(s) {', '.join(map(repr, bad)) or '(none given)'}: "
                f"choose among {', '.join(SIGNATURE_SCHEMES)} ('none' and HMAC are never allowed)"
            )
        for name, value, top in (
            ("leeway", leeway, MAX_LEEWAY),
            ("max_lifetime", max_lifetime, math.inf),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value <= top
            ):
                raise ConfigError(f"{name} must be between 0 and {top} seconds, not {value!r}")
        if max_lifetime <= 0:
            raise ConfigError("max_lifetime must be positive")
        if max_lifetime > SHORT_LIVED_MAX and not (revocations or revocation_url is not None):
            raise ConfigError(
                f"max_lifetime {max_lifetime:g} s is above {SHORT_LIVED_MAX} s: accept tokens "
                "that long only while checking the issuer's revocation list "
                "(revocations=True; see docs/revocation.md)"
            )
        if not isinstance(required_type, str) or not required_type.strip():
            raise ConfigError("required_type must name the token type, e.g. 'at+jwt'")
        for name, ivalue, low in (
            ("max_token_bytes", max_token_bytes, 256),
            ("verified_cache_size", verified_cache_size, 0),
        ):
            if isinstance(ivalue, bool) or not isinstance(ivalue, int) or ivalue < low:
                raise ConfigError(f"{name} must be an integer of at least {low}, not {ivalue!r}")
        sources = [s for s in (jwks_url, jwks_file, public_key_pem, key_source) if s is not None]
        if len(sources) != 1:
            raise ConfigError(
                "give exactly one key source: jwks_url, jwks_file, public_key_pem or key_source"
            )

        self.issuer = issuer
        self.audiences: tuple[str, ...] = audiences
        self.algorithms: tuple[str, ...] = algs
        self.leeway = float(leeway)
        self.max_lifetime = float(max_lifetime)
        self.required_type = required_type
        self.max_token_bytes = max_token_bytes
        self._clock = clock
        self._audience_set = frozenset(self.audiences)
        typ = required_type.strip().lower()
        typ = typ.removeprefix("application/")
        # RFC 7515 4.1.9: "typ" values are media types, compared case-insensitively, and the
        # "application/" prefix may be omitted (RFC 9068 2.1 names "at+jwt").
        self._types = frozenset({typ, "application/" + typ})
        self._headers: dict[str, _Header] = {}
        self._grants: dict[str | None, tuple[tuple[str, ...], ToolGrants]] = {}
        self._verified: OrderedDict[str, _Entry] = OrderedDict()
        self._verified_size = verified_cache_size
        self._verified_lock = threading.Lock()
        _LIVE_VERIFIERS.add(self)

        policy = jwks_policy or JwksPolicy(
            fetch_timeout=fetch_timeout,
            stale_window=stale_window,
            refetch_cooldown=refetch_cooldown,
        )
        self._wait_timeout = policy.fetch_timeout + 1.0
        self.keys: KeySource
        if jwks_url is not None:
            self.keys = JwksCache(
                jwks_url,
                algorithms=algs,
                policy=policy,
                clock=clock,
                monotonic=monotonic,
                cache_file=cache_file,
                allow_insecure_http=allow_insecure_jwks_url,
            )
        elif jwks_file is not None:
            self.keys = StaticKeys.from_file(jwks_file, algorithms=algs, max_keys=policy.max_keys)
        elif key_source is not None:
            self.keys = key_source
        else:
            assert public_key_pem is not None
            self.keys = StaticKeys.from_pem(public_key_pem)
        self.revocations: RevocationCache | None = None
        """The revocation list's cache, when the verifier checks it (else None)."""
        if revocations or revocation_url is not None:
            from .revocation import WELL_KNOWN_PATH, RevocationCache

            self.revocations = RevocationCache(
                revocation_url or issuer + WELL_KNOWN_PATH,
                issuer=issuer,
                keys=self.keys,
                algorithms=algs,
                leeway=self.leeway,
                policy=policy,
                clock=clock,
                monotonic=monotonic,
                cache_file=revocation_cache_file,
                allow_insecure_http=allow_insecure_jwks_url,
            )
        elif revocation_cache_file is not None:
            raise ConfigError("revocation_cache_file needs revocations=True or a revocation_url")

    def _reused(self, token: str, now: float) -> VerifiedClaims | None:
        """The claims of ``token`` when it was verified before and still holds at ``now``.

        The hit path of :meth:`verify` and :meth:`verify_async`: one lookup, the time window,
        and the key lookup every token pays (so a revoked or replaced key drops its tokens).
        None sends the token through the full check.
        """
        hit = self._verified.get(token) if type(token) is str else None
        if (
            hit is not None
            and now < hit.expires_at + self.leeway
            and hit.not_before <= now + self.leeway
            and self.keys.find(hit.kid, now) is hit.key
        ):
            # self._touch(token), inlined: a second call would cost the hit path ~10%.
            try:  # noqa: SIM105
                self._verified.move_to_end(token)
            except KeyError:  # evicted meanwhile by another thread
                pass
            return hit.claims
        return None

    # -- public API -----------------------------------------------------------------

    def verify(self, token: str) -> VerifiedClaims:
        """Check ``token`` (a compact JWS, str); return its :class:`VerifiedClaims`.

        Never does network I/O for a known, fresh key. May wait (at most about
        ``fetch_timeout`` + 1 seconds) for a key fetch the token needs: an unknown kid, or a
        key set past its max-age.

        Raises a :class:`~jwtmcp.errors.TokenError` subclass and nothing else; its ``code``
        names the reason (``malformed``, ``unsupported_alg``, ``unknown_kid``,
        ``bad_signature``, ``expired``, ``not_yet_valid``, ``wrong_issuer``,
        ``wrong_audience``, ``wrong_type``, ``lifetime_too_long``, ``missing_claim``,
        ``keys_unavailable``; with revocation on, ``token_revoked`` and
        ``revocations_unavailable``) and its message is safe to return to the client.
        """
        try:
            now = self._clock()
            claims = self._reused(token, now)
            if claims is None:
                entry, found = self._start(token, now)
                if type(found) is not PublicKey:
                    with contextlib.suppress(FutureTimeout):
                        found.result(self._wait_timeout)  # type: ignore[union-attr]
                    now, found = self._after_fetch(entry)
                claims = self._finish(token, entry, found, now)
            revocations = self.revocations
            if revocations is not None:
                revoked = revocations.revoked(claims)
                if revoked is not False:
                    if revoked is not True:  # no list at hand: wait for the fetch
                        with contextlib.suppress(FutureTimeout):
                            revoked.result(self._wait_timeout)
                        current = revocations.current(may_wait=False)
                        revoked = current.covers(claims)  # type: ignore[union-attr]
                    if revoked:
                        raise TokenRevoked("the token has been revoked")
            return claims
        except TokenError as exc:
            self._refused(exc, token)
            raise
        except Exception:
            raise self._unexpected() from None

    async def verify_async(self, token: str) -> VerifiedClaims:
        """Like :meth:`verify`, for event loops: waiting for a key fetch never blocks it.

        Returns :class:`VerifiedClaims`; raises the same :class:`~jwtmcp.errors.TokenError`
        subclasses. Cancelling the caller never cancels a key fetch other requests share.
        """
        try:
            now = self._clock()
            claims = self._reused(token, now)
            if claims is None:
                entry, found = self._start(token, now)
                if type(found) is not PublicKey:
                    await self._wait_async(found)  # type: ignore[arg-type]
                    now, found = self._after_fetch(entry)
                claims = self._finish(token, entry, found, now)
            revocations = self.revocations
            if revocations is not None:
                revoked = revocations.revoked(claims)
                if revoked is not False:
                    if revoked is not True:  # no list at hand: wait for the fetch
                        await self._wait_async(revoked)
                        current = revocations.current(may_wait=False)
                        revoked = current.covers(claims)  # type: ignore[union-attr]
                    if revoked:
                        raise TokenRevoked("the token has been revoked")
            return claims
        except TokenError as exc:
            self._refused(exc, token)
            raise
        except Exception:
            raise self._unexpected() from None

    async def _wait_async(self, fetch: Future[bool]) -> None:
        """Wait for a fetch without blocking the event loop, at most the wait timeout."""
        with contextlib.suppress(TimeoutError):
            # shield: a cancelled request must not cancel the fetch others share.
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fetch)), self._wait_timeout)

    def close(self) -> None:
        """Stop the key fetcher and the revocation list's (if any). The verifier must not be
        used afterwards."""
        self.keys.close()
        if self.revocations is not None:
            self.revocations.close()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- steps ----------------------------------------------------------------------

    # verify() and verify_async() differ only in how they wait for a key fetch; everything
    # before and after the wait lives in these steps, but for the cache hit, which both
    # inline (a method call is a sizeable part of it). A hit whose key lookup did not give
    # its key (replaced, revoked, or a fetch to wait for) takes the full path below, which
    # looks the key up again: JwksCache.find returns the fetch already in flight.

    def _start(self, token: str, now: float) -> tuple[_Entry | _Header, PublicKey | Future[bool]]:
        """The cache entry or checked header, and the key or a fetch to wait for."""
        entry = self._cached(token, now)
        return entry, self.keys.find(entry.kid, now)

    def _after_fetch(self, entry: _Entry | _Header) -> tuple[float, PublicKey]:
        """Look the key up again once the fetch is done (or timed out); never waits again."""
        now = self._clock()
        return now, self.keys.find(entry.kid, now, may_wait=False)  # type: ignore[return-value]

    def _touch(self, token: str) -> None:
        """Mark a cache entry as just used (the cache evicts the least recently used)."""
        # Not contextlib.suppress: its object and calls cost a third of a cache hit.
        try:  # noqa: SIM105
            self._verified.move_to_end(token)
        except KeyError:  # evicted meanwhile by another thread
            pass

    @staticmethod
    def _unexpected() -> MalformedToken:
        log.exception("unexpected error while verifying a token")
        return MalformedToken("the token could not be verified")

    def _cached(self, token: str, now: float) -> _Entry | _Header:
        """A still-valid cache entry for ``token``, else its checked header."""
        if type(token) is not str:
            raise MalformedToken("the token must be a string")
        entry = self._verified.get(token)
        if entry is not None:
            if now >= entry.expires_at + self.leeway:
                raise TokenExpired("the token has expired")
            if entry.not_before > now + self.leeway:
                raise TokenNotYetValid("the token is not valid yet")
            return entry
        if len(token) > self.max_token_bytes:
            raise MalformedToken(f"the token is longer than {self.max_token_bytes} bytes")
        dot = token.find(".")
        segment = token[:dot] if dot > 0 else token
        header = self._headers.get(segment)
        if header is None:
            header = self._parse_header(segment)
            if len(self._headers) >= _HEADER_CACHE_SIZE:
                self._headers.clear()
            self._headers[segment] = header
        return header

    def _parse_header(self, segment: str) -> _Header:
        if not segment or not segment.isascii():
            raise MalformedToken("the token is not a JWS in compact form")
        header = _json_object(segment.encode("ascii"), "header")
        alg = header.get("alg")
        if type(alg) is not str:
            raise MalformedToken("the token's header has no algorithm (alg)")
        if alg not in self.algorithms:
            raise UnsupportedAlgorithm(f"algorithm {alg[:20]!r} is not accepted")
        if "crit" in header:
            # RFC 7515 4.1.11: a recipient must refuse extensions it does not understand;
            # jwtmcp understands none.
            raise MalformedToken("the token's header names critical extensions (crit)")
        typ = header.get("typ")
        if type(typ) is not str:
            raise WrongType("the token has no type (typ); an at+jwt access token is required")
        if typ.lower() not in self._types:
            raise WrongType(f"the token type is not {self.required_type}")
        kid = header.get("kid")
        if kid is not None and (type(kid) is not str or len(kid) > MAX_KID_LENGTH):
            raise MalformedToken("the token's key id (kid) is not a short string")
        # "jwk", "jku", "x5u", "x5c" are deliberately never read: a key named by the token
        # itself proves nothing (RFC 8725 3.10).
        return _Header(alg, kid, SIGNATURE_SCHEMES[alg])

    def _finish(
        self, token: str, entry: _Entry | _Header, key: PublicKey, now: float
    ) -> VerifiedClaims:
        if type(entry) is _Entry:
            if entry.key is key:
                self._touch(token)
                return entry.claims
            # The kid now names another key: forget the entry and check the token afresh.
            self._verified.pop(token, None)
            dot = token.find(".")
            return self._finish(token, self._cached(token[:dot], now), key, now)
        header: _Header = entry  # type: ignore[assignment]
        if key.alg is not None and key.alg != header.alg:
            raise UnsupportedAlgorithm("the token's algorithm does not match its key")
        try:
            raw = token.encode("ascii")
        except UnicodeEncodeError:
            raise MalformedToken("the token is not a JWS in compact form") from None
        first = raw.find(b".")
        last = raw.rfind(b".")
        if first == last or raw.find(b".", first + 1, last) != -1:
            raise MalformedToken("the token is not a JWS in compact form (three segments)")
        signature = _b64decode(raw[last + 1 :], "signature")
        pad, digest = header.scheme
        try:
            key.key.verify(signature, raw[:last], pad, digest)
        except InvalidSignature:
            raise BadSignature("the token's signature is invalid") from None
        claims = _json_object(raw[first + 1 : last], "payload")
        verified, expires_at, not_before = self._check_claims(claims, header, now)
        if self._verified_size:
            with self._verified_lock:
                self._verified[token] = _Entry(verified, key, header.kid, not_before, expires_at)
                if len(self._verified) > self._verified_size:
                    self._verified.popitem(last=False)
        return verified

    def _check_claims(
        self, claims: dict[str, Any], header: _Header, now: float
    ) -> tuple[VerifiedClaims, float, float]:
        """The claim checks, in order; returns the claims, ``exp`` and the not-before time.

        Types (RFC 7519 4.1, RFC 9068 2.2): ``iss``, ``sub``, ``client_id``, ``jti`` are
        non-empty strings, ``scope`` a string, ``aud`` a string or a non-empty list of
        strings, ``iat``/``nbf``/``exp`` numbers within +-``MAX_NUMERIC_DATE``. A claim
        that is present with another JSON type (``null`` included) is ``malformed``; an
        absent required one (``iss``, ``sub``, ``aud``, ``iat``, ``exp``) is
        ``missing_claim``.
        """
        leeway = self.leeway
        top = MAX_NUMERIC_DATE
        get = claims.get
        # Each check has a fast path for the expected type and falls back to a slow path
        # that tells an absent claim (missing_claim, or None when optional) from a present
        # one of the wrong JSON type (malformed): "null" is never "absent".
        iss = get("iss")
        if iss != self.issuer:
            if type(iss) is str:
                # Both sides compare in canonical form: another spelling of our issuer (an
                # issuer that writes "https://auth.example.com/") is our issuer.
                if canonical_or_none(iss, "issuer") != self.issuer:
                    raise WrongIssuer("the token was issued by another issuer")
            elif "iss" not in claims:
                raise MissingClaim("the token has no issuer (iss)")
            else:
                raise MalformedToken("claim 'iss' is not a string")
        aud = get("aud")
        if type(aud) is str:
            audience: tuple[str, ...] = (aud,)
        elif type(aud) is list and aud and all(type(a) is str for a in aud):
            audience = tuple(aud)
        elif "aud" not in claims:
            raise MissingClaim("the token has no audience (aud)")
        else:
            raise MalformedToken("claim 'aud' is not a string or a non-empty list of strings")
        if self._audience_set.isdisjoint(audience) and not any(
            canonical_or_none(a, "resource") in self._audience_set for a in audience
        ):
            raise WrongAudience("the token is not meant for this server (aud)")
        exp = get("exp")
        if type(exp) is not int or not -top <= exp <= top:
            exp = _numeric_date(claims, "exp")
            if exp is None:
                raise MissingClaim("the token has no expiry (exp)")
        if now >= exp + leeway:
            raise TokenExpired("the token has expired")
        iat = get("iat")
        if type(iat) is not int or not -top <= iat <= top:
            iat = _numeric_date(claims, "iat")
            if iat is None:
                raise MissingClaim("the token has no issue time (iat)")
        nbf = get("nbf")
        if type(nbf) is not int or not -top <= nbf <= top:
            nbf = _numeric_date(claims, "nbf")
        not_before = iat if nbf is None or nbf < iat else nbf
        if not_before > now + leeway:
            raise TokenNotYetValid("the token is not valid yet (nbf/iat in the future)")
        if exp - iat > self.max_lifetime:
            # Both times come from the issuer's clock, so no leeway applies here.
            raise LifetimeTooLong(
                f"the token's lifetime is longer than the maximum of {self.max_lifetime:.0f} s"
            )
        sub = get("sub")
        if type(sub) is not str or not sub:
            if "sub" not in claims:
                raise MissingClaim("the token has no subject (sub)")
            raise MalformedToken("claim 'sub' is not a non-empty string")
        client_id = get("client_id")
        jti = get("jti")
        scope = get("scope")
        if (
            type(client_id) is not str
            or type(jti) is not str
            or type(scope) is not str
            or not client_id
            or not jti
        ):
            client_id, jti, scope = _optional_strings(claims)
        grants = self._grants.get(scope)
        if grants is None:
            scopes = split_scope(scope)
            grants = (scopes, ToolGrants.from_scopes(scopes))
            if len(self._grants) >= _GRANTS_CACHE_SIZE:
                self._grants.clear()
            self._grants[scope] = grants
        verified = _new_verified_claims(
            sub,
            client_id,
            iss,
            audience,
            grants[0],
            grants[1],
            int(iat),
            int(exp),
            jti,
            header.kid,
            MappingProxyType(claims),
        )
        return verified, exp, not_before

    def _refused(self, exc: TokenError, token: object) -> None:
        """Log a refusal with the kid, sub and jti the token claims — never the token."""
        if not log.isEnabledFor(logging.DEBUG):
            return
        kid = sub = jti = None
        if type(token) is str and len(token) <= self.max_token_bytes:
            parts = token.split(".")
            if len(parts) == 3 and token.isascii():
                try:
                    kid = _json_object(parts[0].encode(), "header").get("kid")
                    payload = _json_object(parts[1].encode(), "payload")
                    sub, jti = payload.get("sub"), payload.get("jti")
                except TokenError:
                    pass
        # Unverified values (the signature may be what failed): labelled as claimed.
        log.debug(
            "token refused (%s): claimed kid=%s sub=%s jti=%s",
            exc.code,
            _safe(kid),
            _safe(sub),
            _safe(jti),
        )

    # -- introspection --------------------------------------------------------------

    @property
    def verified_cache_len(self) -> int:
        """How many verified tokens the LRU holds now."""
        return len(self._verified)
