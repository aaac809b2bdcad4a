"""Redirect URIs: which ones a client may register, and which requests match them.

OAuth 2.1 (4.1.1, 7.5.3) compares redirect URIs as exact strings, with one exception from
RFC 8252 7.3: a native app's loopback redirect (``http://127.0.0.1:PORT/...``,
``http://[::1]:PORT/...``) may use any port at request time, because the app gets a free
port from the operating system when it starts. ``localhost`` counts as loopback here too:
RFC 8252 8.3 prefers the IP literals, but widely used MCP clients (the MCP Inspector, CLI
agents) register ``http://localhost:PORT/callback``, and browsers resolve ``localhost`` to
the loopback interface without asking DNS.

Custom schemes (``cursor://...``, ``vscode://...``, RFC 8252 7.1) match only exactly, and
only when the client registered them. A URI with a fragment is never valid (RFC 6749 3.1.2).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import SplitResult, urlsplit

from .errors import OAuthRequestError

MAX_LENGTH = 2000
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")  # RFC 3986 3.1, lower-cased by urlsplit
# Schemes a browser would run or read locally instead of handing to an app.
_REFUSED_SCHEMES = frozenset(
    {"javascript", "data", "vbscript", "file", "about", "blob", "filesystem", "view-source"}
)


def _invalid(uri: object, why: str) -> OAuthRequestError:
    shown = repr(uri)[:80] if isinstance(uri, str) else type(uri).__name__
    return OAuthRequestError(
        f"redirect URI {shown} is not allowed: {why}", code="invalid_redirect_uri"
    )


def _parse(uri: str) -> SplitResult:
    """Split a redirect URI after checking everything but the scheme's own rules."""
    if not isinstance(uri, str) or not uri:
        raise _invalid(uri, "it is empty")
    if len(uri) > MAX_LENGTH:
        raise _invalid(uri, f"it is longer than {MAX_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in uri) or not uri.isascii():
        raise _invalid(uri, "it holds spaces, control or non-ASCII characters")
    if "#" in uri:
        raise _invalid(uri, "it has a fragment (RFC 6749 3.1.2)")
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        raise _invalid(uri, "it is not a valid URI") from None
    if not _SCHEME.fullmatch(parts.scheme):
        raise _invalid(uri, "it is not an absolute URI")
    if port == 0:
        raise _invalid(uri, "port 0 is not a port")
    return parts


def _is_loopback(parts: SplitResult) -> bool:
    return parts.scheme == "http" and (parts.hostname or "") in LOOPBACK_HOSTS


def check_redirect_uri(uri: str) -> str:
    """``uri`` when a client may register it; raises otherwise.

    Allowed: ``https`` URIs with a host; ``http`` only on a loopback host (127.0.0.1, [::1],
    localhost; RFC 8252 7.3); a private-use scheme (``cursor://...``,
    ``com.example.app:/cb``; RFC 8252 7.1) other than those a browser handles itself
    (``javascript``, ``data``, ``file`` ...). Never a fragment, user information, spaces or
    control characters. Raises :class:`~jwtmcp.errors.OAuthRequestError` with code
    ``invalid_redirect_uri`` (RFC 7591 3.2.2).
    """
    parts = _parse(uri)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise _invalid(uri, "it has no host")
        if "@" in parts.netloc:
            raise _invalid(uri, "it carries user information")
        if parts.scheme == "http" and not _is_loopback(parts):
            raise _invalid(uri, "plain http is allowed only on loopback (127.0.0.1, [::1])")
        return uri
    if parts.scheme in _REFUSED_SCHEMES:
        raise _invalid(uri, f"the {parts.scheme!r} scheme is not handed to an application")
    if not (parts.netloc or parts.path):
        raise _invalid(uri, "it names no destination after the scheme")
    return uri


def redirect_uri_matches(requested: str, registered: Iterable[str]) -> bool:
    """True when the authorization request's ``requested`` URI is one of ``registered``.

    Exact string comparison (OAuth 2.1 7.5.3), except that a loopback ``http`` URI matches a
    registered one with the same host, path and query on any port (RFC 8252 7.3). A
    requested URI that could not be registered (a fragment, user information, a refused
    scheme) never matches, whatever was registered.
    """
    try:
        check_redirect_uri(requested)
    except OAuthRequestError:
        return False
    candidates = [r for r in registered if isinstance(r, str)]
    if requested in candidates:
        return True
    parts = urlsplit(requested)
    if not _is_loopback(parts):
        return False
    for candidate in candidates:
        try:
            other = _parse(candidate)
        except OAuthRequestError:
            continue
        if (
            _is_loopback(other)
            and "@" not in other.netloc
            and other.hostname == parts.hostname
            and other.path == parts.path
            and other.query == parts.query
        ):
            return True
    return False
