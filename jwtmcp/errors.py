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


class SignerUnavailable(KeyRingError):
    """A key backend (an HSM's PKCS#11 session, a cloud KMS) cannot sign right now.

    The issuer answers 503 ``temporarily_unavailable`` with ``Retry-After: <retry_after>``
    (seconds); the JWKS keeps being served. The message names the backend and the failure,
    never a PIN or credential.
    """

    code = "signer_unavailable"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ClientsError(JwtMcpError):
    """The clients file is missing, unreadable or a client name is unknown."""

    code = "clients"


class ListenError(JwtMcpError):
    """A server cannot listen on its address (the port is in use, or not allowed).

    ``jwtmcp serve`` exits with status 69 (``EX_UNAVAILABLE``) for it.
    """

    code = "cannot_listen"


class UsersError(JwtMcpError):
    """The users file is missing, unreadable or invalid, or a user name is unknown."""

    code = "users"


# --- the state store (codes, refresh families, replay windows, counters) ------------------


class StoreError(JwtMcpError):
    """The state store refused an operation (a bad argument, or a database too new)."""

    code = "store"


class StoreUnavailable(StoreError):
    """The state store cannot be reached, opened or locked right now.

    The issuer answers 503 with ``Retry-After: <retry_after>`` (seconds) for flows that need
    the store; stateless flows (``client_credentials``) keep working.
    """

    code = "store_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# --- OAuth request checks (PKCE, redirect URIs) -----------------------------------------


class OAuthRequestError(JwtMcpError):
    """An OAuth request or registration is refused.

    ``code`` is the registered OAuth error code to answer with: ``invalid_request``
    (RFC 6749 4.1.2.1, RFC 7636 4.4.1) or ``invalid_redirect_uri`` (RFC 7591 3.2.2).
    """

    code = "invalid_request"


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
    code = "token_expired"


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


# --- OAuth clients: metadata documents, dynamic registration (issue 10) -------------------


class OAuthClientError(JwtMcpError):
    """An OAuth client could not be identified or registered.

    ``code`` is stable and specific (``cimd_address_refused``, ``invalid_redirect_uri`` ...);
    ``oauth_error`` is the OAuth error code to answer with (RFC 6749 §4.1.2.1 / §5.2,
    RFC 7591 §3.2.2). Messages are safe to show to the client.
    """

    code = "invalid_client"
    oauth_error = "invalid_client"

    def __init__(
        self, message: str, *, code: str | None = None, oauth_error: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        if oauth_error is not None:
            self.oauth_error = oauth_error


class ClientMetadataError(OAuthClientError):
    """A Client ID Metadata Document was refused: a bad URL, a refused address, a bad answer
    or an invalid document (draft-ietf-oauth-client-id-metadata-document)."""

    code = "cimd_invalid"


class ClientMetadataUnavailable(ClientMetadataError):
    """The client's metadata host did not answer usefully in time (timeout, connection
    refused, HTTP 5xx). Worth retrying later: ``oauth_error`` is ``temporarily_unavailable``."""

    code = "cimd_unavailable"
    oauth_error = "temporarily_unavailable"


class RegistrationError(OAuthClientError):
    """An RFC 7591 registration request was refused; ``code`` and ``oauth_error`` are the
    RFC 7591 §3.2.2 error (``invalid_redirect_uri`` or ``invalid_client_metadata``)."""

    code = "invalid_client_metadata"
    oauth_error = "invalid_client_metadata"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, oauth_error=code)


class UnknownClient(OAuthClientError):
    """A ``client_id`` is neither known, nor a metadata document URL, nor a registration this
    issuer signed (or its signature does not verify)."""

    code = "unknown_client"
