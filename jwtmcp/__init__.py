"""jwtmcp: short-lived RS256 access tokens and per-tool authorisation for MCP servers."""

from __future__ import annotations

from .errors import (
    BadSignature,
    ClientsError,
    ConfigError,
    JwtMcpError,
    KeyRingError,
    KeysUnavailable,
    LifetimeTooLong,
    MalformedToken,
    MissingClaim,
    TokenError,
    TokenExpired,
    TokenNotYetValid,
    UnknownKid,
    UnsupportedAlgorithm,
    WrongAudience,
    WrongIssuer,
    WrongType,
)
from .keys import KeyRing, RingKey, init_ring, load_ring, prune_ring, revoke_key, rotate_ring
from .tokens import SigningKey, ToolGrants, VerifiedClaims, mint

__version__ = "0.1.0"

__all__ = [
    "BadSignature",
    "ClientsError",
    "ConfigError",
    "JwtMcpError",
    "KeyRing",
    "KeyRingError",
    "KeysUnavailable",
    "LifetimeTooLong",
    "MalformedToken",
    "MissingClaim",
    "RingKey",
    "SigningKey",
    "TokenError",
    "TokenExpired",
    "TokenNotYetValid",
    "ToolGrants",
    "UnknownKid",
    "UnsupportedAlgorithm",
    "VerifiedClaims",
    "WrongAudience",
    "WrongIssuer",
    "WrongType",
    "init_ring",
    "load_ring",
    "mint",
    "prune_ring",
    "revoke_key",
    "rotate_ring",
]
