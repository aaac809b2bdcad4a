"""Access tokens: the claims of the RFC 9068 profile, tool scopes, and minting.

Minting is a pure function of (claims, key, clock): no files, no network.
"""

from __future__ import annotations

import functools
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson
import pybase64
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from .errors import ConfigError

Clock = Callable[[], float]
"""Seconds since the epoch. Injected everywhere time matters, so tests never sleep."""

TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type, not a secret
ALGORITHM = "RS256"
TOOL_SCOPE_PREFIX = "tool:"
DEFAULT_LIFETIME = 300
DEFAULT_MAX_LIFETIME = 3600

REGISTERED_CLAIMS = frozenset(
    {"iss", "sub", "aud", "client_id", "iat", "nbf", "exp", "jti", "scope"}
)
"""Claims minted by jwtmcp itself; extra claims can never override them."""

RESERVED_CLAIMS = REGISTERED_CLAIMS | {"cnf", "act", "may_act", "auth_time", "acr", "amr"}


# --- tool scopes -------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)  # the same few tool names are minted again and again
def tool_scope(tool: str) -> str:
    """The scope that grants ``tool``: ``tool:<name>`` (``*`` and ``prefix*`` allowed)."""
    name = tool.strip()
    if not name or any(c.isspace() for c in name) or '"' in name or "\\" in name:
        raise ConfigError(f"invalid tool name {tool!r}: names are non-empty, with no spaces")
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


@dataclass(frozen=True, eq=False)
class VerifiedClaims:
    """The claims of a token that passed every check. Frozen; ``claims`` is read-only."""

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


# --- minting -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    """What minting needs from a key: its kid and the RSA private key."""

    kid: str
    private_key: RSAPrivateKey = field(repr=False)


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

    Raises :class:`ConfigError` for an empty subject or audience, a lifetime that is not
    positive or is above ``max_lifetime``, or an extra claim that names a registered one.
    """
    if not issuer:
        raise ConfigError("an issuer URL is required")
    if not subject:
        raise ConfigError("a subject (sub) is required")
    auds = [audience] if isinstance(audience, str) else list(dict.fromkeys(audience))
    if not auds or not all(isinstance(a, str) and a for a in auds):
        raise ConfigError("an audience (the MCP server's resource URL) is required")
    if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0:
        raise ConfigError(f"lifetime must be a positive number of seconds, not {lifetime!r}")
    if lifetime > max_lifetime:
        raise ConfigError(
            f"lifetime {lifetime} s is above the maximum of {max_lifetime} s"
        )
    if isinstance(tools, str):  # one string: "add" or "add,subtract", never its characters
        tools = [t for t in tools.split(",") if t.strip()]
    if isinstance(scopes, str):
        scopes = scopes.split()
    extra = dict(extra_claims or {})
    clash = sorted(set(extra) & RESERVED_CLAIMS)
    if clash:
        raise ConfigError(f"extra claims may not set registered claim(s): {', '.join(clash)}")
    if extra:
        try:
            json.dumps(extra, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"extra claims must be plain JSON values ({exc})") from None
    # Tool scopes first, then the others, in order and without duplicates.
    all_scopes = dict.fromkeys(tool_scopes(tools))
    all_scopes.update(dict.fromkeys(s for s in scopes if s))
    iat = int(now)
    claims: dict[str, Any] = dict(extra)
    claims.update(
        iss=issuer,
        sub=subject,
        aud=auds[0] if len(auds) == 1 else auds,
        iat=iat,
        nbf=iat,
        exp=iat + lifetime,
        jti=jti or new_jti(),
        scope=" ".join(all_scopes),
    )
    claims["client_id"] = client_id or subject
    return claims


_PKCS1V15 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()
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
        and all(
            type(item) is str for v in claims.values() if type(v) is list for item in v
        )
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
def _header_segment(kid: str) -> bytes:
    """The encoded protected header and its dot; the same bytes PyJWT writes (sorted keys)."""
    header = {"alg": ALGORITHM, "kid": kid, "typ": TOKEN_TYPE}
    return _b64url(json.dumps(header, separators=(",", ":"), sort_keys=True).encode()) + b"."


def sign(claims: Mapping[str, Any], key: SigningKey) -> str:
    """Sign ``claims`` as an RS256 ``at+jwt`` JWS with ``key`` (RFC 7515 compact form).

    Written out rather than through ``jwt.encode``: an RS256 JWS is two base64url JSON
    segments and one RSA signature, and PyJWT's generic path around that signature costs
    about 10% of a mint. The header of each kid is encoded once.
    """
    payload = _b64url(_claims_json(claims))
    signing_input = _header_segment(key.kid) + payload
    signature = key.private_key.sign(signing_input, _PKCS1V15, _SHA256)
    return (signing_input + b"." + _b64url(signature)).decode("ascii")


def mint(
    key: SigningKey,
    *,
    issuer: str,
    subject: str,
    audience: str | Sequence[str],
    client_id: str | None = None,
    tools: Iterable[str] = (),
    scopes: Iterable[str] = (),
    lifetime: int = DEFAULT_LIFETIME,
    max_lifetime: int = DEFAULT_MAX_LIFETIME,
    extra_claims: Mapping[str, Any] | None = None,
    clock: Clock = time.time,
) -> str:
    """Mint a signed access token in one call.

    ``tools`` become ``tool:<name>`` scopes; ``scopes`` pass through untouched. The token
    lives ``lifetime`` seconds (default 300), never more than ``max_lifetime`` (default 3600).
    """
    claims = build_claims(
        issuer=issuer,
        subject=subject,
        audience=audience,
        client_id=client_id,
        scopes=scopes,
        tools=tools,
        lifetime=lifetime,
        max_lifetime=max_lifetime,
        extra_claims=extra_claims,
        now=clock(),
    )
    return sign(claims, key)
