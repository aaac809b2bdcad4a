"""PKCE (RFC 7636) with the S256 method only, as OAuth 2.1 4.1.1 asks of new servers.

Two checks, one per endpoint:

- at ``/authorize``, :func:`check_code_challenge` refuses a missing challenge, the ``plain``
  method (and a missing method, which RFC 7636 4.3 defines as ``plain``) and a challenge that
  cannot be a base64url SHA-256 digest;
- at ``/token``, :func:`verify_code_verifier` recomputes ``BASE64URL(SHA256(verifier))``
  (RFC 7636 4.6) and compares it with the stored challenge in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from .errors import OAuthRequestError

S256 = "S256"
VERIFIER_MIN_LENGTH = 43
VERIFIER_MAX_LENGTH = 128

# RFC 7636 4.1: code-verifier = 43*128unreserved; unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
# An S256 challenge is the unpadded base64url form of 32 bytes: 43 characters.
_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")


def s256_challenge(verifier: str) -> str:
    """``BASE64URL(SHA256(ASCII(verifier)))`` without padding (RFC 7636 4.2)."""
    raw = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def is_valid_verifier(verifier: str) -> bool:
    """True when ``verifier`` has RFC 7636 4.1's form: 43-128 unreserved characters."""
    return isinstance(verifier, str) and _VERIFIER.fullmatch(verifier) is not None


def check_code_challenge(challenge: str | None, method: str | None) -> str:
    """The authorization request's ``code_challenge``, once it is a usable S256 challenge.

    Raises :class:`~jwtmcp.errors.OAuthRequestError` (``invalid_request``, RFC 7636 4.4.1)
    when the challenge is missing, the method is missing or not ``S256`` (``plain`` is
    refused: it protects nothing once the request is seen), or the challenge is not the
    43-character base64url form of a SHA-256 digest.
    """
    if not challenge:
        raise OAuthRequestError("code_challenge is required (PKCE with S256, RFC 7636)")
    if method != S256:
        shown = "missing (which means plain)" if not method else repr(method)[:40]
        raise OAuthRequestError(f"code_challenge_method must be S256, not {shown}")
    if not isinstance(challenge, str) or not _CHALLENGE.fullmatch(challenge):
        raise OAuthRequestError(
            "code_challenge must be BASE64URL(SHA256(code_verifier)): 43 characters"
        )
    # 32 bytes leave two unused bits in the last character; only the canonical form counts.
    raw = base64.urlsafe_b64decode(challenge + "=")
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != challenge:
        raise OAuthRequestError("code_challenge is not canonical base64url")
    return challenge


def verify_code_verifier(verifier: str | None, challenge: str) -> bool:
    """True when ``verifier`` is the secret behind the S256 ``challenge`` (RFC 7636 4.6).

    A missing verifier or one outside RFC 7636 4.1's form is False without hashing. The
    comparison is constant-time. The token endpoint answers False with ``invalid_grant``.
    """
    if verifier is None or not is_valid_verifier(verifier):
        return False
    computed = s256_challenge(verifier).encode("ascii")
    return hmac.compare_digest(computed, challenge.encode("utf-8", "surrogatepass"))
