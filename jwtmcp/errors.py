"""One small error tree. Every error has a stable, machine-readable ``code``.

Messages are written to be safe to show to a client or print on a terminal: they
never contain a token, a secret or key material.
"""

from __future__ import annotations


class JwtMcpError(Exception):
    """Base of every error jwtmcp raises on purpose."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


# --- configuration, key ring, clients file -------------------------------------------


class ConfigError(JwtMcpError):
    """A setting or argument is invalid (a lifetime above the maximum, a reserved claim...)."""

    code = "invalid_config"


class KeyRingError(JwtMcpError):
    """The key ring is missing, unreadable, inconsistent or insecure."""

    code = "key_ring"


class ClientsError(JwtMcpError):
    """The clients file is missing, unreadable or a client name is unknown."""

    code = "clients"


class ListenError(JwtMcpError):
    """A server cannot listen on its address (the port is in use, or not allowed).

    ``jwtmcp serve`` exits with status 69 (``EX_UNAVAILABLE``) for it.
    """

    code = "cannot_listen"


# --- token verification ----------------------------------------------------------------


class TokenError(JwtMcpError):
    """A token was refused. ``code`` says why; the message is safe to return to a client."""

    code = "invalid_token"


class MalformedToken(TokenError):
    code = "malformed"


class UnsupportedAlgorithm(TokenError):
    code = "unsupported_alg"


class UnknownKid(TokenError):
    code = "unknown_kid"


class BadSignature(TokenError):
    code = "bad_signature"


class TokenExpired(TokenError):
    code = "expired"


class TokenNotYetValid(TokenError):
    code = "not_yet_valid"


class WrongIssuer(TokenError):
    code = "wrong_issuer"


class WrongAudience(TokenError):
    code = "wrong_audience"


class WrongType(TokenError):
    code = "wrong_type"


class LifetimeTooLong(TokenError):
    code = "lifetime_too_long"


class MissingClaim(TokenError):
    code = "missing_claim"


class KeysUnavailable(TokenError):
    """No usable keys: the key source failed and the last good keys are too old (or absent)."""

    code = "keys_unavailable"
