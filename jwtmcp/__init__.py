"""jwtmcp: short-lived RS256 access tokens and per-tool authorisation for MCP servers.

Mint a token in one call (:func:`mint`), check it offline (:class:`Verifier`), and protect
an MCP server in one call (:func:`protected_server`). The MCP-facing names are imported on
first use, so the command line and the issuer do not pay for importing the ``mcp`` SDK;
``dir(jwtmcp)`` and ``help(jwtmcp)`` list them all the same.

The public API (``__all__``); the reference is in the project's ``docs/`` pages:

Tokens (docs/tokens.md)
    mint, SigningKey, VerifiedClaims, ToolGrants
Identifiers (docs/tokens.md#issuer-and-resource-identifiers)
    canonical_issuer, canonical_resource
Verifying (docs/verifier.md)
    Verifier, JwksPolicy
The key ring (docs/keys.md)
    KeyRing, RingKey, load_ring, init_ring, rotate_ring, prune_ring, revoke_key
MCP servers (docs/mcp.md; these import the ``mcp`` SDK on first use)
    protected_server, ProtectedMCPServer, current_caller, get_caller, JwtTokenVerifier,
    ToolScopeGuard, JwtAuthMiddleware
Calling other servers for the caller (docs/token-exchange.md; RFC 8693)
    TokenExchangeClient, TokenExchangeError, TokenExchangeUnavailable, Actor
Serving (docs/security.md; request-size, timeout and connection limits for uvicorn)
    ServerLimits
Errors (each with a stable ``code``; docs/verifier.md#error-codes)
    JwtMcpError, ConfigError, KeyRingError, ClientsError, TokenError, MalformedToken,
    UnsupportedAlgorithm, UnknownKid, BadSignature, TokenExpired, TokenNotYetValid,
    WrongIssuer, WrongAudience, WrongType, LifetimeTooLong, MissingClaim, KeysUnavailable,
    TokenRevoked, RevocationsUnavailable, ListenError
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    BadSignature,
    ClientsError,
    ConfigError,
    JwtMcpError,
    KeyRingError,
    KeysUnavailable,
    LifetimeTooLong,
    ListenError,
    MalformedToken,
    MissingClaim,
    RevocationsUnavailable,
    TokenError,
    TokenExpired,
    TokenNotYetValid,
    TokenRevoked,
    UnknownKid,
    UnsupportedAlgorithm,
    WrongAudience,
    WrongIssuer,
    WrongType,
)
from .identifiers import canonical_issuer, canonical_resource
from .jwks import JwksPolicy
from .keys import KeyRing, RingKey, init_ring, load_ring, prune_ring, revoke_key, rotate_ring
from .tokens import Actor, SigningKey, ToolGrants, VerifiedClaims, mint
from .verifier import Verifier

if TYPE_CHECKING:
    from .exchange_client import TokenExchangeClient, TokenExchangeError, TokenExchangeUnavailable
    from .mcp import (
        JwtTokenVerifier,
        ProtectedMCPServer,
        ToolScopeGuard,
        current_caller,
        get_caller,
        protected_server,
    )
    from .middleware import JwtAuthMiddleware
    from .server import ServerLimits

__version__ = "0.1.0"

_LAZY = {
    "JwtTokenVerifier": ".mcp",
    "ProtectedMCPServer": ".mcp",
    "ToolScopeGuard": ".mcp",
    "current_caller": ".mcp",
    "get_caller": ".mcp",
    "protected_server": ".mcp",
    "JwtAuthMiddleware": ".middleware",
    "ServerLimits": ".server",
    "TokenExchangeClient": ".exchange_client",
    "TokenExchangeError": ".exchange_client",
    "TokenExchangeUnavailable": ".exchange_client",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jwtmcp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The lazy names too, so dir() and pydoc (help(jwtmcp)) list them; listing imports nothing.
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Actor",
    "BadSignature",
    "ClientsError",
    "ConfigError",
    "JwksPolicy",
    "JwtAuthMiddleware",
    "JwtMcpError",
    "JwtTokenVerifier",
    "KeyRing",
    "KeyRingError",
    "KeysUnavailable",
    "LifetimeTooLong",
    "ListenError",
    "MalformedToken",
    "MissingClaim",
    "ProtectedMCPServer",
    "RevocationsUnavailable",
    "RingKey",
    "ServerLimits",
    "SigningKey",
    "TokenError",
    "TokenExchangeClient",
    "TokenExchangeError",
    "TokenExchangeUnavailable",
    "TokenExpired",
    "TokenNotYetValid",
    "TokenRevoked",
    "ToolGrants",
    "ToolScopeGuard",
    "UnknownKid",
    "UnsupportedAlgorithm",
    "VerifiedClaims",
    "Verifier",
    "WrongAudience",
    "WrongIssuer",
    "WrongType",
    "canonical_issuer",
    "canonical_resource",
    "current_caller",
    "get_caller",
    "init_ring",
    "load_ring",
    "mint",
    "protected_server",
    "prune_ring",
    "revoke_key",
    "rotate_ring",
]
