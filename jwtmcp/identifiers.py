"""Issuer and resource identifiers: one canonical form, compared one way everywhere.

An *issuer* URL names the authorization server (RFC 8414 §2; a token's ``iss``); a
*resource* URL names an MCP server (RFC 8707 §2, RFC 9728 §1.2; a token's ``aud``). Both
enter jwtmcp in many places: ``jwtmcp serve --issuer``, ``mint``, ``verify``,
``clients add --audience``, ``$JWTMCP_ISSUER``, the clients file, :func:`jwtmcp.mint`,
:class:`jwtmcp.Verifier`, :func:`jwtmcp.protected_server`, ``/token``'s ``resource``. Each
of them passes the URL through :func:`canonical_issuer` or :func:`canonical_resource`, so
tokens, RFC 8414 metadata, RFC 9728 metadata and every comparison see one string.

The canonical form (RFC 3986 §6.2.2 and §6.2.3 normalization, plus the trailing slash):

- the scheme, ``http`` or ``https``, in lower case;
- the host in lower case (an IPv6 literal compressed, in brackets);
- no port when it is the scheme's default (80, 443), else the port in plain decimal:
  a port is one or more ASCII digits (RFC 3986 §3.2.3), its leading zeros do not change
  it (``:08001`` and ``:018800`` are ``:8001`` and ``:18800``, as in WHATWG URL parsing),
  and an empty port is no port (§6.2.3);
- percent-encodings with upper-case hex digits, those of unreserved characters
  (letters, digits, ``-._~``) decoded;
- no trailing ``/``: exactly one trailing ``/`` is dropped, ``https://a.example/`` is
  ``https://a.example`` and ``https://m.example/mcp/`` is ``https://m.example/mcp``.
  RFC 8414 §3.1 and RFC 9728 §3.1 drop a terminating ``/`` before inserting the
  well-known path, so both spellings already share one metadata document; the MCP
  authorization spec asks for the form without the slash; and the MCP SDK's URL type
  writes an empty path as ``/``;
- a resource keeps its query, if any (RFC 8707 §2 discourages one but allows it); an
  issuer has none (RFC 8414 §2).

Refused, with a :class:`~jwtmcp.errors.ConfigError` that quotes the URL and says why:
another scheme, no host, userinfo (``user:password@``), a fragment (even an empty ``#``),
a space, control or non-ASCII character (percent-encode it), a malformed
percent-encoding, a ``.`` or ``..`` path segment, a path ending in ``//`` (an empty last
segment: another path, not a spelling of the one without it, and dropping slashes until
none is left would make ``/mcp//`` and ``/mcp`` one identifier), a port that is not
ASCII digits or is outside 1-65535, and for an issuer any query (even an empty ``?``).
Issuers and resources follow the same rules, except for the query.

Plain ``http`` is accepted here: whether clear text is acceptable is decided where a URL
is fetched (a JWKS URL must be https unless loopback) or served (``serve`` warns).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from typing import Literal
from urllib.parse import urlsplit

from .errors import ConfigError

__all__ = [
    "MAX_URL_LENGTH",
    "canonical_issuer",
    "canonical_or_none",
    "canonical_resource",
    "canonical_resources",
]

Kind = Literal["issuer", "resource"]

MAX_URL_LENGTH = 2048
"""Longer identifiers are refused (a clients file or a form field is no place for more)."""

_EXAMPLES = {"issuer": "https://auth.example.com", "resource": "https://mcp.example.com/mcp"}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REG_NAME = re.compile(r"[a-z0-9\-._~!$&'()*+,;=]+")
_PORT = re.compile(r"[0-9]+")
_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_QUERY = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


class _Invalid(Exception):
    """Why a URL is not an identifier (turned into a ConfigError naming the URL)."""


def _normalize_escapes(text: str) -> str:
    """RFC 3986 §6.2.2.1-2: upper-case hex, unreserved characters decoded."""
    if _BAD_ESCAPE.search(text):
        raise _Invalid("a '%' that does not start a %XX escape")

    def one(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _ESCAPE.sub(one, text)


def _host(netloc: str) -> tuple[str, str]:
    """(host, port) of ``netloc``, host canonical, port as written (maybe empty)."""
    if "@" in netloc:
        raise _Invalid("it holds a user name or password (user:password@); drop them")
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise _Invalid("an unclosed '[' in the host")
        literal, rest = netloc[1:end], netloc[end + 1 :]
        try:
            host = f"[{ipaddress.IPv6Address(literal).compressed}]"
        except ValueError:
            raise _Invalid("the bracketed host is not an IPv6 address") from None
        if rest and not rest.startswith(":"):
            raise _Invalid("characters after the IPv6 host")
        return host, rest[1:]
    host, _, port = netloc.partition(":")
    host = host.lower()
    if not host:
        raise _Invalid("it has no host")
    if not _REG_NAME.fullmatch(host):
        raise _Invalid("the host holds characters a host name cannot")
    return host, port


@functools.lru_cache(maxsize=1024)
def _canonical(url: str, kind: Kind) -> str:
    if len(url) > MAX_URL_LENGTH:
        raise _Invalid(f"longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        raise _Invalid("it holds a space, a control or a non-ASCII character; percent-encode it")
    if "#" in url:
        raise _Invalid("it has a fragment ('#'); an identifier has none (RFC 8707 §2)")
    if kind == "issuer" and "?" in url:
        raise _Invalid("it has a query ('?'); an issuer has none (RFC 8414 §2)")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _Invalid("not a URL") from None
    scheme = parts.scheme
    if scheme not in _DEFAULT_PORTS or not url[: len(scheme) + 3].lower().endswith("://"):
        raise _Invalid("use an absolute http:// or https:// URL")
    host, port = _host(parts.netloc)
    if port:
        digits = port.lstrip("0")
        if not _PORT.fullmatch(port) or len(digits) > 5 or not 0 < int(digits or "0") < 65536:
            raise _Invalid("the port is not a number from 1 to 65535")
        port = "" if int(port) == _DEFAULT_PORTS[scheme] else f":{int(port)}"
    if not _PATH.fullmatch(parts.path):
        raise _Invalid("the path holds characters a URL cannot; percent-encode them")
    path = _normalize_escapes(parts.path)
    if any(segment in (".", "..") for segment in path.split("/")):
        raise _Invalid("the path has a '.' or '..' segment; write the path it stands for")
    if path.endswith("//"):
        raise _Invalid(
            "the path ends in '//' (an empty last segment, another path than the one "
            "without it); end it with at most one '/'"
        )
    path = path.removesuffix("/")
    query = ""
    if parts.query:
        if not _QUERY.fullmatch(parts.query):
            raise _Invalid("the query holds characters a URL cannot; percent-encode them")
        query = "?" + _normalize_escapes(parts.query)
    return f"{scheme}://{host}{port}{path}{query}"


@functools.lru_cache(maxsize=1024)
def _canonical_cached(url: str, kind: Kind) -> str:
    """:func:`_canonical`, remembered: a token's issuer and audience are the same few URLs
    on every request. Bounded: 1024 URLs of at most 2048 characters (the longest accepted),
    least recently used first out; a URL that is not an identifier raises every time
    (exceptions are not cached)."""
    return _canonical(url, kind)


def _canonical_or_raise(url: object, kind: Kind) -> str:
    if not isinstance(url, str) or not url:
        what = "an issuer URL" if kind == "issuer" else "an audience (an MCP server's URL)"
        raise ConfigError(f"{what} is required, e.g. {_EXAMPLES[kind]}; got {url!r}")
    try:
        return _canonical_cached(url, kind)
    except _Invalid as why:
        shown = repr(url) if len(url) <= 200 else repr(url[:200]) + "..."
        raise ConfigError(f"invalid {kind} URL {shown}: {why}; e.g. {_EXAMPLES[kind]}") from None


def canonical_issuer(url: str) -> str:
    """``url`` as a canonical issuer identifier (RFC 8414 §2: no query, no fragment).

    Raises :class:`~jwtmcp.errors.ConfigError` naming the URL and what is wrong with it.
    """
    return _canonical_or_raise(url, "issuer")


def canonical_resource(url: str) -> str:
    """``url`` as a canonical resource identifier (RFC 8707 §2, RFC 9728 §1.2).

    Raises :class:`~jwtmcp.errors.ConfigError` naming the URL and what is wrong with it.
    """
    return _canonical_or_raise(url, "resource")


def canonical_resources(urls: str | Iterable[str]) -> tuple[str, ...]:
    """Each of ``urls`` (one string counts as one URL) canonical, in order, without repeats.

    Raises :class:`~jwtmcp.errors.ConfigError` for the first URL that is not an identifier.
    """
    try:
        items = [urls] if isinstance(urls, str) else list(urls)
    except TypeError:
        raise ConfigError(
            f"resource URLs must be a string or a list of strings, not {urls!r}"
        ) from None
    return tuple(dict.fromkeys(canonical_resource(u) for u in items))


@functools.lru_cache(maxsize=1024)
def _or_none(value: str, kind: Kind) -> str | None:
    try:
        return _canonical(value, kind)
    except _Invalid:
        return None


def canonical_or_none(value: object, kind: Kind) -> str | None:
    """The canonical form of an untrusted ``value`` (a claim, a form field), or None.

    Never raises: a value that is not a string or not an identifier gives None, which
    equals no canonical identifier.
    """
    if type(value) is not str or not value:
        return None
    return _or_none(value, kind)
