"""Access tokens: the claims of the RFC 9068 profile, tool scopes, and minting.

Minting is a pure function of (claims, key, clock): no files, no network.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

import orjson
import pybase64
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from .errors import ConfigError, SignerUnavailable
from .identifiers import canonical_issuer, canonical_resources
from .signers import FileSigner, Signer

Clock = Callable[[], float]
"""Seconds since the epoch. Injected everywhere time matters, so tests never sleep."""

TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type, not a secret
ALGORITHM = "RS256"
TOOL_SCOPE_PREFIX = "tool:"
DEFAULT_LIFETIME = 300
DEFAULT_MAX_LIFETIME = 3600
SHORT_LIVED_MAX = DEFAULT_MAX_LIFETIME
"""The longest lifetime (seconds) a token may have without the revocation list: a key
ring's maximum never goes above it, and a verifier accepting longer-lived tokens must check
the list (longer ones come only from ``jwtmcp mint --ttl`` after ``jwtmcp revoke enable``;
docs/revocation.md)."""
MAX_TOKEN_BYTES = 8192
"""The longest token a :class:`~jwtmcp.Verifier` accepts by default; mint signs none longer."""
MAX_NUMERIC_DATE = 2**53 - 1
"""The largest NumericDate (epoch seconds) minted or accepted; the smallest is its opposite.

RFC 7493 2.2 (I-JSON): integers outside +-(2**53 - 1) are not interoperable; inside, a
number converts to a float exactly, so time arithmetic never overflows or rounds."""
MAX_CLAIM_DEPTH = 32
"""How deeply arrays and objects may nest inside an extra claim's value."""

REGISTERED_CLAIMS = frozenset(
    {"iss", "sub", "aud", "client_id", "iat", "nbf", "exp", "jti", "scope"}
)
"""Claims minted by jwtmcp itself; extra claims can never override them."""

RESERVED_CLAIMS = REGISTERED_CLAIMS | {"cnf", "act", "may_act", "auth_time", "acr", "amr"}


# --- tool scopes -------------------------------------------------------------------------

_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 3.3 scope-token


def _shown(value: object) -> str:
    """A value for an error message: its repr (control characters escaped), truncated."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_scope(scope: str) -> str:
    """``scope`` when it is one RFC 6749 3.3 scope-token, else :class:`ConfigError`.

    A scope-token is printable ASCII without spaces, ``"`` or ``\\``. The clients file and
    :func:`mint` both check scopes here.
    """
    if not isinstance(scope, str) or not _SCOPE_TOKEN.fullmatch(scope):
        raise ConfigError(
            f"invalid scope {_shown(scope)}: a scope is printable ASCII without spaces, "
            "'\"' or '\\' (RFC 6749 3.3)"
        )
    return scope


def tool_scope(tool: str) -> str:
    """The scope that grants ``tool``: ``tool:<name>`` (``*`` and ``prefix*`` allowed).

    Raises :class:`ConfigError` for a name that is not a string, is empty, has characters
    outside RFC 6749 3.3 scope-tokens (printable ASCII without spaces, ``"`` or ``\\``;
    MCP tool names are ASCII letters, digits, ``_``, ``-`` and ``.``), starts with the
    ``tool:`` prefix itself, or has a ``*`` before its end. The clients file and
    :func:`mint` both check tool names here.
    """
    if not isinstance(tool, str):
        raise ConfigError(f"invalid tool name {_shown(tool)}: a tool name is a string")
    return _tool_scope(tool)


@functools.lru_cache(maxsize=1024)  # the same few tool names are minted again and again
def _tool_scope(tool: str) -> str:
    name = tool.strip()
    if not _SCOPE_TOKEN.fullmatch(name):
        raise ConfigError(
            f"invalid tool name {_shown(tool)}: names are printable ASCII without spaces, "
            "'\"' or '\\' (RFC 6749 3.3 scope characters)"
        )
    if name.startswith(TOOL_SCOPE_PREFIX):
        raise ConfigError(
            f"invalid tool name {_shown(tool)}: give it without the 'tool:' prefix "
            f"({name[len(TOOL_SCOPE_PREFIX) :]!r}), which jwtmcp adds"
        )
    if "*" in name[:-1]:
        raise ConfigError(f"invalid tool name {tool!r}: '*' may only end a name")
    return TOOL_SCOPE_PREFIX + name


def tool_scopes(tools: Iterable[str]) -> tuple[str, ...]:
    """``tool:`` scopes for ``tools``, in order, without duplicates."""
    return tuple(dict.fromkeys(tool_scope(t) for t in tools))


def split_scope(scope: str | Iterable[str] | None) -> tuple[str, ...]:
    """A space-separated ``scope`` string (or an iterable of scopes) as a tuple, deduplicated."""
    if scope is None:
        return ()
    parts = scope.split() if isinstance(scope, str) else [s for s in scope if s]
    return tuple(dict.fromkeys(parts))


@dataclass(frozen=True)
class ToolGrants:
    """Which tools a set of scopes grants (SPEC §1).

    ``tool:*`` grants every tool; ``tool:read_*`` every tool whose name starts with
    ``read_``; ``tool:add`` exactly ``add``. Scopes without the ``tool:`` prefix grant no tool.
    """

    names: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    everything: bool = False

    @classmethod
    def from_scopes(cls, scopes: Iterable[str]) -> ToolGrants:
        names: set[str] = set()
        prefixes: list[str] = []
        everything = False
        for scope in scopes:
            if not scope.startswith(TOOL_SCOPE_PREFIX):
                continue
            name = scope[len(TOOL_SCOPE_PREFIX) :]
            if name == "*":
                everything = True
            elif name.endswith("*"):
                prefixes.append(name[:-1])
            elif name:
                names.add(name)
        return cls(frozenset(names), tuple(dict.fromkeys(prefixes)), everything)

    def allows(self, tool: str) -> bool:
        """True when a token with these grants may call ``tool``."""
        if self.everything or tool in self.names:
            return True
        return any(tool.startswith(p) for p in self.prefixes)

    def __bool__(self) -> bool:
        return self.everything or bool(self.names) or bool(self.prefixes)


def scope_grants_scope(granted: str, requested: str) -> bool:
    """True when holding scope ``granted`` covers the requested scope ``requested``.

    Used to narrow a client's allowance: ``tool:*`` covers ``tool:add`` and ``tool:read_*``;
    ``tool:read_*`` covers ``tool:read_file`` and ``tool:read_x*``; other scopes only cover
    themselves.
    """
    if granted == requested:
        return True
    if not (granted.startswith(TOOL_SCOPE_PREFIX) and requested.startswith(TOOL_SCOPE_PREFIX)):
        return False
    g = granted[len(TOOL_SCOPE_PREFIX) :]
    r = requested[len(TOOL_SCOPE_PREFIX) :]
    if not g.endswith("*"):
        return False
    return r.startswith(g[:-1])


# --- verified claims ---------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    """Who acts for a token's subject: one level of the ``act`` claim (RFC 8693 §4.1).

    ``subject`` is the acting party's ``sub`` (for jwtmcp, the client id of the protected
    server that exchanged its caller's token); ``actor`` the party that acted before it
    (the nested ``act``), None at the end of the chain.
    """

    subject: str
    actor: Actor | None = None

    @property
    def chain(self) -> tuple[str, ...]:
        """Every actor's subject, the most recent first (this one, then the nested ones)."""
        out: list[str] = []
        level: Actor | None = self
        while level is not None:
            out.append(level.subject)
            level = level.actor
        return tuple(out)

    @classmethod
    def from_claim(cls, act: object) -> Actor | None:
        """The chain an ``act`` claim value describes, or None when it is not an object
        with a non-empty string ``sub`` at every level (a nesting deeper than
        :data:`MAX_CLAIM_DEPTH` is cut there)."""
        levels: list[str] = []
        while isinstance(act, Mapping) and len(levels) < MAX_CLAIM_DEPTH:
            sub = act.get("sub")
            if not isinstance(sub, str) or not sub:
                return None
            levels.append(sub)
            act = act.get("act")
        if not levels or (act is not None and len(levels) < MAX_CLAIM_DEPTH):
            return None
        actor: Actor | None = None
        for sub in reversed(levels):
            actor = cls(sub, actor)
        return actor


@dataclass(frozen=True, eq=False)
class VerifiedClaims:
    """The claims of a token that passed every check. Frozen; ``claims`` is read-only.

    - ``subject`` (str): ``sub``, never empty.
    - ``client_id`` (str or None): ``client_id`` (RFC 9068 §2.2), None when absent.
    - ``issuer`` (str): ``iss``, equal to the verifier's issuer.
    - ``audience`` (tuple of str): ``aud``, always a tuple (one element for a string ``aud``).
    - ``scopes`` (tuple of str): ``scope`` split on spaces, in order, without duplicates.
    - ``tools`` (:class:`ToolGrants`): the tools the ``tool:`` scopes grant; see
      :meth:`may_call`.
    - ``issued_at`` (int or None): ``iat`` in epoch seconds (always set by the verifier).
    - ``expires_at`` (int): ``exp`` in epoch seconds.
    - ``jti`` (str or None): the token id, None when absent.
    - ``kid`` (str or None): the header's key id, None when absent (a PEM key source).
    - ``claims`` (read-only mapping): every claim of the payload, including extra ones
      such as ``tenant`` or ``email``.
    - ``actor`` (:class:`Actor` or None): who acts for the subject (``act``, RFC 8693).
    """

    subject: str
    client_id: str | None
    issuer: str
    audience: tuple[str, ...]
    scopes: tuple[str, ...]
    tools: ToolGrants
    issued_at: int | None
    expires_at: int
    jti: str | None
    kid: str | None
    claims: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any], *, kid: str | None = None) -> VerifiedClaims:
        """Build the value from an already-checked claims dict."""
        aud = claims.get("aud")
        audience = (aud,) if isinstance(aud, str) else tuple(str(a) for a in aud or ())
        scopes = split_scope(claims.get("scope") if isinstance(claims.get("scope"), str) else None)
        client_id = claims.get("client_id")
        iat = claims.get("iat")
        jti = claims.get("jti")
        return cls(
            subject=str(claims.get("sub", "")),
            client_id=client_id if isinstance(client_id, str) else None,
            issuer=str(claims.get("iss", "")),
            audience=audience,
            scopes=scopes,
            tools=ToolGrants.from_scopes(scopes),
            issued_at=int(iat) if isinstance(iat, int | float) else None,
            expires_at=int(claims["exp"]),
            jti=jti if isinstance(jti, str) else None,
            kid=kid,
            claims=MappingProxyType(dict(claims)),
        )

    def may_call(self, tool: str) -> bool:
        """True when this token's ``tool:`` scopes grant ``tool``."""
        return self.tools.allows(tool)

    @property
    def actor(self) -> Actor | None:
        """The party acting for the subject (the ``act`` claim, RFC 8693 §4.1), or None.

        Set on tokens issued by token exchange: ``actor.subject`` is the client id of the
        server that called on the subject's behalf, ``actor.actor`` the one before it, and
        ``actor.chain`` all of them, most recent first. None when the token has no ``act``
        (or one that is not an object with a string ``sub`` at each level). Read from
        ``claims`` when asked, so verification costs nothing more.
        """
        return Actor.from_claim(self.claims.get("act"))


# --- minting -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    """What minting needs from a key: its kid, what signs, and the longest lifetime
    (seconds) a token it signs may have — its ring's maximum, which the ring's verifiers
    enforce (``Verifier(max_lifetime=...)``).

    ``SigningKey(kid, private_key)`` signs with an RSA private key in memory (a file key);
    ``SigningKey(kid, signer=...)`` with any :class:`~jwtmcp.signers.Signer` (a key in an
    HSM or a KMS), whose ``sign`` may raise :class:`~jwtmcp.errors.SignerUnavailable`.
    Raises :class:`ConfigError` when given neither.
    """

    kid: str
    private_key: RSAPrivateKey | None = field(default=None, repr=False)
    max_lifetime: int = DEFAULT_MAX_LIFETIME
    signer: Signer = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.signer is None:
            if self.private_key is None:
                raise ConfigError("a SigningKey needs a private key or a signer")
            object.__setattr__(self, "signer", FileSigner(self.private_key))


class HasSigningKey(Protocol):
    """Anything that holds a signing key: a :class:`~jwtmcp.KeyRing` (its active key) or a
    :class:`~jwtmcp.RingKey`."""

    @property
    def signing_key(self) -> SigningKey: ...


def new_jti() -> str:
    """A token id with 256 random bits (URL-safe)."""
    return secrets.token_urlsafe(32)


def build_claims(
    *,
    issuer: str,
    subject: str,
    audience: str | Sequence[str],
    client_id: str | None = None,
    scopes: Iterable[str] = (),
    tools: Iterable[str] = (),
    lifetime: int = DEFAULT_LIFETIME,
    max_lifetime: int = DEFAULT_MAX_LIFETIME,
    extra_claims: Mapping[str, Any] | None = None,
    now: float,
    jti: str | None = None,
) -> dict[str, Any]:
    """The claims of a new access token. Pure: ``now`` and ``jti`` come from the caller.

    Refuses, with :class:`ConfigError`, every value that would give a token jwtmcp's
    :class:`~jwtmcp.Verifier` refuses or reads back differently: an issuer, subject,
    audience, ``client_id`` or ``jti`` that is not a non-empty string; an issuer or audience
    that is not an http(s) identifier (both are written in their canonical form,
    :mod:`jwtmcp.identifiers`); tools or scopes that are not valid tool names or RFC 6749
    scope-tokens; a lifetime that is not a positive whole number of seconds or is above
    ``max_lifetime``; a ``now`` that is not a time; extra claims that are not a mapping of
    names to plain JSON values (string member names, nesting up to :data:`MAX_CLAIM_DEPTH`,
    finite numbers) or that name a registered claim.
    """
    if (
        not isinstance(now, int | float)
        or isinstance(now, bool)
        or not (0 <= now <= MAX_NUMERIC_DATE)
    ):
        raise ConfigError(f"the clock gave {_shown(now)}, not a time in seconds since the epoch")
    _check_text(issuer, "the issuer (iss)")
    issuer = canonical_issuer(issuer)
    _check_text(subject, "the subject (sub)")
    auds: list[object]
    if isinstance(audience, str):
        auds = [audience]
    else:
        try:
            auds = list(dict.fromkeys(_items(audience, "the audience")))
        except TypeError:  # an unhashable member, e.g. a list in the list
            raise ConfigError(
                f"the audience must be a list of strings, not {_shown(audience)}"
            ) from None
    if not auds:
        raise ConfigError("an audience (the MCP server's resource URL) is required")
    for aud in auds:
        _check_text(aud, "each audience (aud)")
    auds = list(canonical_resources(auds))  # type: ignore[arg-type]  # checked: all str
    if client_id is not None:
        _check_text(client_id, "the client_id")
    if jti is not None:
        _check_text(jti, "the token id (jti)")
    _check_seconds(max_lifetime, "the maximum lifetime")
    _check_seconds(lifetime, "lifetime")
    if lifetime > max_lifetime:
        raise ConfigError(f"lifetime {lifetime} s is above the maximum of {max_lifetime} s")
    iat = int(now)
    if iat + lifetime > MAX_NUMERIC_DATE:
        raise ConfigError(f"the token's expiry (exp) would be past {MAX_NUMERIC_DATE}")
    if isinstance(tools, str):  # one string: "add" or "add,subtract", never its characters
        tools = [t for t in tools.split(",") if t.strip()]
    scope_list = [
        check_scope(s)  # type: ignore[arg-type]
        for s in (scopes.split() if isinstance(scopes, str) else _items(scopes, "scopes"))
    ]
    if extra_claims is None:
        extra: dict[str, Any] = {}
    elif isinstance(extra_claims, Mapping):
        extra = dict(extra_claims)
    else:
        raise ConfigError(
            f"extra claims must be a mapping of claim names to JSON values, "
            f"not {_shown(extra_claims)}"
        )
    clash = sorted(set(extra) & RESERVED_CLAIMS)
    if clash:
        raise ConfigError(f"extra claims may not set registered claim(s): {', '.join(clash)}")
    if extra:
        _check_json_members(extra, 0)
        try:
            json.dumps(extra, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"extra claims must be plain JSON values ({exc})") from None
    # Tool scopes first, then the others, in order and without duplicates.
    all_scopes = dict.fromkeys(tool_scopes(_items(tools, "tools")))  # type: ignore[arg-type]
    all_scopes.update(dict.fromkeys(scope_list))
    claims: dict[str, Any] = dict(extra)
    claims.update(
        iss=issuer,
        sub=subject,
        aud=auds[0] if len(auds) == 1 else list(auds),
        iat=iat,
        nbf=iat,
        exp=iat + lifetime,
        jti=new_jti() if jti is None else jti,
        scope=" ".join(all_scopes),
    )
    claims["client_id"] = subject if client_id is None else client_id
    return claims


def _check_text(value: object, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty string, not {_shown(value)}")


def _check_seconds(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{what} must be a positive number of seconds, not {_shown(value)}")


def _items(value: object, what: str) -> Iterable[object]:
    """``value`` as an iterable of items; a string, bytes or a mapping is no list of items."""
    if type(value) is tuple or type(value) is list:
        return value  # the usual case, without the ABC checks
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Iterable):
        raise ConfigError(f"{what} must be a list of strings, not {_shown(value)}")
    return value


def _check_json_members(value: object, depth: int) -> None:
    """Refuse what ``json`` would silently change or a verifier could not read back.

    ``json.dumps`` writes a member name that is a number, a boolean or None as a string
    (so ``{1: "a", "1": "b"}`` would become a duplicate name, which verifiers refuse), and
    decoders have nesting limits. Other types are left to ``json.dumps``, which refuses them.
    """
    if isinstance(value, dict):
        if depth > MAX_CLAIM_DEPTH:
            raise ConfigError(f"extra claims nest deeper than {MAX_CLAIM_DEPTH} levels")
        for name, member in value.items():
            if not isinstance(name, str):
                raise ConfigError(
                    f"extra claims must use strings as member names, not {_shown(name)}"
                )
            _check_json_members(member, depth + 1)
    elif isinstance(value, list | tuple):
        if depth > MAX_CLAIM_DEPTH:
            raise ConfigError(f"extra claims nest deeper than {MAX_CLAIM_DEPTH} levels")
        for member in value:
            _check_json_members(member, depth + 1)


_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_PLAIN_TYPES = frozenset({str, int})
_DEL = b"\x7f"


def _b64url(data: bytes) -> bytes:
    """base64url without padding (RFC 7515 2), by pybase64 (SIMD)."""
    return pybase64.b64encode(data, b"-_").rstrip(b"=")


def _claims_json(claims: Mapping[str, Any]) -> bytes:
    """The payload: compact JSON, the bytes ``json.dumps(separators=(",", ":"))`` writes
    (and so PyJWT).

    orjson writes those very bytes, ten times faster, when every value is an int, a string
    or a list of strings and the output is ASCII without DEL (the stdlib escapes the rest
    as ``\\uXXXX``): the claims jwtmcp mints. Anything else — extra claims with floats,
    objects or non-ASCII text, integers past 64 bits — takes the stdlib encoder.
    """
    kinds = set(map(type, claims.values()))
    if kinds <= _PLAIN_TYPES or (
        kinds - _PLAIN_TYPES == {list}
        and all(type(item) is str for v in claims.values() if type(v) is list for item in v)
    ):
        try:
            payload = orjson.dumps(claims)
        except TypeError:  # orjson.JSONEncodeError: a non-string key, an int past 64 bits
            pass
        else:
            if payload.isascii() and _DEL not in payload:
                return payload
    return _COMPACT_JSON.encode(dict(claims)).encode()


@functools.lru_cache(maxsize=64)
def _header_segment(kid: str, typ: str = TOKEN_TYPE) -> bytes:
    """The encoded protected header and its dot; the same bytes PyJWT writes (sorted keys)."""
    header = {"alg": ALGORITHM, "kid": kid, "typ": typ}
    return _b64url(json.dumps(header, separators=(",", ":"), sort_keys=True).encode()) + b"."


def sign(
    claims: Mapping[str, Any],
    key: SigningKey,
    *,
    typ: str = TOKEN_TYPE,
    max_bytes: int = MAX_TOKEN_BYTES,
) -> str:
    """Sign ``claims`` as an RS256 ``at+jwt`` JWS with ``key`` (RFC 7515 compact form).

    ``typ`` is the header's type (RFC 7515 4.1.9): ``at+jwt`` for access tokens; other
    documents the issuer signs name their own (the revocation list, :mod:`jwtmcp.revocation`)
    and may allow more than ``MAX_TOKEN_BYTES`` with ``max_bytes``.

    Written out rather than through ``jwt.encode``: an RS256 JWS is two base64url JSON
    segments and one RSA signature, and PyJWT's generic path around that signature costs
    about 10% of a mint. The header of each kid is encoded once.

    Raises :class:`ConfigError` when the token would be longer than ``max_bytes``
    (default :data:`MAX_TOKEN_BYTES`, which verifiers refuse by default), and
    :class:`~jwtmcp.errors.SignerUnavailable` when the key's HSM or KMS cannot sign now.
    """
    payload = _b64url(_claims_json(claims))
    signing_input = _header_segment(key.kid, typ) + payload
    signature = key.signer.sign(signing_input)
    token = (signing_input + b"." + _b64url(signature)).decode("ascii")
    if len(token) > max_bytes:
        raise ConfigError(
            f"the token would be {len(token)} bytes, above the {max_bytes} that "
            "verifiers accept by default; send fewer or shorter extra claims"
        )
    return token


REMOTE_SIGNING_CONCURRENCY = 16
"""How many signatures by a remote key (an HSM, a KMS) one issuer process runs at once, in
worker threads (per event loop). At 10-30 ms per KMS ``Sign`` this allows about 500-1600
tokens per second per replica, at or above AWS KMS's default request quota for RSA
signing, while a slow or hung backend ties up at most these threads; further requests wait
for a free one without blocking the event loop. A PKCS#11 token signs one at a time anyway
(:mod:`jwtmcp.signers.pkcs11` serialises its session under a lock)."""

_limiter_lock = threading.Lock()
_limiter_var: Any = None  # anyio RunVar[CapacityLimiter]: one limiter per event loop


def _remote_signing_limiter() -> Any:
    """This event loop's :class:`anyio.CapacityLimiter` of :data:`REMOTE_SIGNING_CONCURRENCY`.

    anyio is imported here, at the first remote signature, so ``jwtmcp keys``/``mint`` and
    issuers with file keys never load it for signing."""
    global _limiter_var
    from anyio import CapacityLimiter
    from anyio.lowlevel import RunVar

    if _limiter_var is None:
        with _limiter_lock:
            if _limiter_var is None:
                _limiter_var = RunVar("jwtmcp_remote_signing_limiter")
    try:
        return _limiter_var.get()
    except LookupError:
        limiter = CapacityLimiter(REMOTE_SIGNING_CONCURRENCY)
        _limiter_var.set(limiter)
        return limiter


class PublishedKeys(HasSigningKey, Protocol):
    """A key ring as :func:`sign_async` reads it (:class:`~jwtmcp.KeyRing`): the active
    signing key, and ``get(kid)``, None for a key the ring no longer publishes."""

    def get(self, kid: str) -> object | None: ...


class SigningRing(Protocol):
    """Where :func:`sign_async` reads the ring in force (:class:`~jwtmcp.keys.RingWatcher`:
    ``current()`` is the ring as of now, thread-safe)."""

    def current(self) -> PublishedKeys: ...


class Signed(NamedTuple):
    """What :func:`sign_async` made: the compact JWS and the ``kid`` of the key that
    signed it (for the audit log: it may be a newer key than the one active when the request
    came in)."""

    token: str
    kid: str


REMOTE_SIGNING_ATTEMPTS = 2
"""How many times :func:`sign_async` signs with a remote key before it answers
:class:`~jwtmcp.errors.SignerUnavailable`, when each signature came back from a key the ring
stopped publishing meanwhile (revoked while it signed)."""


async def sign_async(
    claims: Mapping[str, Any],
    rings: SigningRing,
    *,
    typ: str = TOKEN_TYPE,
    max_bytes: int = MAX_TOKEN_BYTES,
) -> Signed:
    """Sign ``claims`` with the active key of ``rings`` from code on an event loop (the
    issuer's request handlers): the one entry through which the issuer signs while
    answering a request. Returns :class:`Signed` (the token and its ``kid``).

    A key in memory (a :class:`~jwtmcp.signers.FileSigner`) signs right here: no I/O, and
    a thread hop would cost more than the signature. Any other signer (PKCS#11, AWS KMS, a
    plugged-in backend) may wait on the network or a device, so it signs in a worker thread
    (:func:`anyio.to_thread.run_sync`), at most :data:`REMOTE_SIGNING_CONCURRENCY` at once
    per event loop: the loop keeps answering ``/healthz``, the JWKS and other requests
    meanwhile. A request waiting for a free thread, or signing while the ring changes, must
    not hand out a token by a key that was revoked meanwhile: the worker reads the ring's
    active key only once it runs, and after the signature checks that the ring still
    publishes that key; if not (revoked while it signed), it signs again with the active key
    (:data:`REMOTE_SIGNING_ATTEMPTS` in all).

    Raises what :func:`sign` does (:class:`ConfigError` for a token above ``max_bytes``,
    :class:`~jwtmcp.errors.SignerUnavailable` when the HSM or KMS cannot sign now), and
    :class:`~jwtmcp.errors.SignerUnavailable` when every attempt's key was revoked while it
    signed."""
    key = rings.current().signing_key
    if isinstance(key.signer, FileSigner):
        return Signed(sign(claims, key, typ=typ, max_bytes=max_bytes), key.kid)
    from anyio.to_thread import run_sync

    def signing() -> Signed:
        for _ in range(REMOTE_SIGNING_ATTEMPTS):
            key = rings.current().signing_key  # the key in force now, not when it queued
            token = sign(claims, key, typ=typ, max_bytes=max_bytes)
            if rings.current().get(key.kid) is not None:
                return Signed(token, key.kid)
        raise SignerUnavailable(
            "the signing key was revoked while it signed; try again", retry_after=1
        )

    return await run_sync(signing, limiter=_remote_signing_limiter())


def mint(
    key: SigningKey | HasSigningKey,
    *,
    issuer: str,
    subject: str,
    audience: str | Sequence[str],
    client_id: str | None = None,
    tools: Iterable[str] = (),
    scopes: Iterable[str] = (),
    lifetime: int = DEFAULT_LIFETIME,
    max_lifetime: int | None = None,
    extra_claims: Mapping[str, Any] | None = None,
    clock: Clock = time.time,
) -> str:
    """Mint a signed access token in one call; returns the compact JWS (str).

    The token is an RFC 9068 ``at+jwt`` signed RS256 with ``key``: a :class:`SigningKey`
    (``ring.active.signing_key``) or the :class:`~jwtmcp.KeyRing` itself (its active key).
    ``issuer`` (str) becomes ``iss``; ``subject`` (str) ``sub``; ``audience`` (a resource
    URL, or a sequence of them) ``aud``; ``client_id`` (str, default the subject)
    ``client_id``. ``tools`` (names; ``*`` and ``prefix*`` allowed) become ``tool:<name>``
    scopes; ``scopes`` (RFC 6749 scope-tokens, str or iterable) pass through untouched. The
    token lives ``lifetime`` seconds (int, default 300), never more than the key's ring
    maximum (``SigningKey.max_lifetime``, 3600 by default) nor than ``max_lifetime`` seconds
    when given. ``extra_claims`` (plain JSON values) are added but never override a
    registered claim. ``clock`` returns epoch seconds; ``iat`` = ``nbf`` = ``int(clock())``.

    Raises :class:`ConfigError` for any argument that would give a token jwtmcp's
    :class:`~jwtmcp.Verifier` refuses (see :func:`build_claims`): an empty or non-string
    issuer, subject, audience or client id, a lifetime that is not a positive int or is above
    the maximum, an invalid tool name or scope, an extra claim that is reserved or not plain
    JSON, or a token longer than :data:`MAX_TOKEN_BYTES`.
    """
    signing = key if isinstance(key, SigningKey) else getattr(key, "signing_key", None)
    if not isinstance(signing, SigningKey):
        raise ConfigError(
            f"mint needs a SigningKey (ring.active.signing_key) or a KeyRing, not {_shown(key)}"
        )
    # The ring's maximum is a ceiling: an explicit max_lifetime may lower it, never raise it.
    ceiling = signing.max_lifetime
    if max_lifetime is not None:
        _check_seconds(max_lifetime, "the maximum lifetime")
        ceiling = min(ceiling, max_lifetime)
    claims = build_claims(
        issuer=issuer,
        subject=subject,
        audience=audience,
        client_id=client_id,
        scopes=scopes,
        tools=tools,
        lifetime=lifetime,
        max_lifetime=ceiling,
        extra_claims=extra_claims,
        now=clock(),
    )
    return sign(claims, signing)
