"""Redirect URIs: which ones a client may register, and which requests match them.

The one module for redirect-URI rules: RFC 7591 registration (:mod:`jwtmcp.registration`),
Client ID Metadata Documents (:mod:`jwtmcp.cimd`) and the authorization endpoint
(:mod:`jwtmcp.authorize`) all use it.

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

import ipaddress
import re
from collections.abc import Callable, Iterable
from urllib.parse import SplitResult, urlsplit

from .errors import OAuthRequestError

MAX_LENGTH = 1024
"""Longest redirect URI accepted, in characters (it is shown on the consent page)."""

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")  # RFC 3986 3.1, lower-cased by urlsplit
# RFC 3986 characters only: printable ASCII without space, quotes, angle brackets, braces,
# backslash, caret, backtick and pipe. Anything else is an attack or a client bug.
_URI_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
# Schemes a browser would run or read locally instead of handing to an app.
_REFUSED_SCHEMES = frozenset(
    {"javascript", "data", "vbscript", "file", "about", "blob", "filesystem", "view-source"}
)


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (127.0.0.0/8, ``::1``)."""
    host = host.lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_loopback(parts: SplitResult) -> bool:
    return parts.scheme == "http" and is_loopback_host(parts.hostname or "")


def _split(uri: str) -> tuple[SplitResult | None, str | None]:
    """The parts of ``uri``, or why it cannot be a redirect URI (before scheme rules)."""
    if not isinstance(uri, str) or not uri:
        return None, "it is empty or not a string"
    if len(uri) > MAX_LENGTH:
        return None, f"it is longer than {MAX_LENGTH} characters"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in uri) or not uri.isascii():
        return None, "it holds spaces, control or non-ASCII characters"
    if "#" in uri:
        return None, "it has a fragment (RFC 6749 3.1.2)"
    if not _URI_CHARS.fullmatch(uri):
        return None, "it holds characters a URI cannot hold"
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None, "it is not a valid URI"
    if not _SCHEME.fullmatch(parts.scheme):
        return None, "it is not an absolute URI (no scheme)"
    if port == 0:
        return None, "port 0 is not a port"
    return parts, None


def redirect_uri_problem(uri: object) -> str | None:
    """Why ``uri`` cannot be registered as a redirect URI, or None when it can.

    Accepted (RFC 8252 §7, OAuth 2.1 §2.3.1): absolute ``https`` URIs with a host and no user
    information; ``http`` only on a loopback host (127.0.0.0/8, ``[::1]``, ``localhost``), any
    port; private-use schemes (``cursor://…``, ``com.example.app:/cb``) except those a browser
    runs or reads itself (``javascript:``, ``data:``, ``file:`` …). Never a fragment
    (RFC 6749 §3.1.2), never more than :data:`MAX_LENGTH` characters, only RFC 3986
    characters, never port 0.
    """
    if not isinstance(uri, str):
        return "it is empty or not a string"
    parts, problem = _split(uri)
    if parts is None:
        return problem
    if parts.scheme in ("http", "https"):
        if "@" in parts.netloc:
            return "it carries user information"
        if not parts.hostname:
            return "it has no host"
        if parts.scheme == "http" and not _is_loopback(parts):
            return "plain http is allowed only on loopback (127.0.0.1, [::1]; RFC 8252 7.3)"
        return None
    if parts.scheme in _REFUSED_SCHEMES:
        return f"the {parts.scheme!r} scheme is not handed to an application"
    if not (parts.netloc or parts.path):
        return "it names no destination after the scheme"
    return None


def check_redirect_uri(uri: str) -> str:
    """``uri`` when a client may register it (:func:`redirect_uri_problem`); raises otherwise.

    Raises :class:`~jwtmcp.errors.OAuthRequestError` with code ``invalid_redirect_uri``
    (RFC 7591 3.2.2).
    """
    problem = redirect_uri_problem(uri)
    if problem is not None:
        shown = repr(uri)[:80] if isinstance(uri, str) else type(uri).__name__
        raise OAuthRequestError(
            f"redirect URI {shown} is not allowed: {problem}", code="invalid_redirect_uri"
        )
    return uri


def check_redirect_uris(
    value: object, max_count: int, fail: Callable[[str, str], Exception]
) -> tuple[str, ...]:
    """The ``redirect_uris`` metadata member as a tuple, or ``fail(code, message)`` raised.

    ``code`` is ``"invalid_redirect_uri"`` (RFC 7591 §3.2.2) for a missing, empty, too long or
    duplicated list and for any URI :func:`redirect_uri_problem` refuses.
    """
    if not isinstance(value, list) or not value:
        raise fail("invalid_redirect_uri", "redirect_uris must be a non-empty list of URIs")
    if len(value) > max_count:
        raise fail("invalid_redirect_uri", f"redirect_uris has more than {max_count} entries")
    for uri in value:
        problem = redirect_uri_problem(uri)
        if problem is not None:
            raise fail("invalid_redirect_uri", f"a redirect URI is not allowed: {problem}")
    if len(set(value)) != len(value):
        raise fail("invalid_redirect_uri", "redirect_uris lists a URI twice")
    return tuple(value)


def redirect_uri_matches(requested: str, registered: Iterable[str]) -> bool:
    """True when the authorization request's ``requested`` URI is one of ``registered``.

    Exact string comparison (OAuth 2.1 7.5.3), except that a loopback ``http`` URI matches a
    registered one with the same host, path and query on any port (RFC 8252 7.3). A
    requested URI that could not be registered (a fragment, user information, a refused
    scheme) never matches, whatever was registered.
    """
    if redirect_uri_problem(requested) is not None:
        return False
    candidates = [r for r in registered if isinstance(r, str)]
    if requested in candidates:
        return True
    parts = urlsplit(requested)
    if not _is_loopback(parts):
        return False
    for candidate in candidates:
        if redirect_uri_problem(candidate) is not None:
            continue
        other = urlsplit(candidate)
        if (
            _is_loopback(other)
            and other.hostname == parts.hostname
            and other.path == parts.path
            and other.query == parts.query
        ):
            return True
    return False
