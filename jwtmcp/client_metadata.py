"""OAuth clients of the interactive flow: the :class:`OAuthClient` value and the metadata checks.

A client of ``/authorize`` is known in one of three ways (issue 10 §2): a Client ID Metadata
Document fetched from its https ``client_id`` (:mod:`jwtmcp.cimd`), a stateless RFC 7591
registration whose ``client_id`` carries its signed metadata (:mod:`jwtmcp.registration`), or
an entry of the clients file. All three end as the same frozen :class:`OAuthClient`.

This module is the pure core both sources share: the RFC 7591 §2 metadata members jwtmcp
accepts, with limits on every one. Which redirect URIs a client may register, and which
requests match them, is :mod:`jwtmcp.redirect_uris`. No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

ClientSource = Literal["cimd", "registered", "file"]

MAX_URI_LENGTH = 1024
"""Longest ``jwks_uri`` accepted, in characters."""
MAX_CLIENT_NAME_LENGTH = 100
"""Longest ``client_name``, in characters: it is shown on the consent page."""
MAX_SCOPE_LENGTH = 1000
"""Longest ``scope`` string a client may register, in characters."""
MAX_LIST_ITEMS = 5
"""Most ``grant_types``/``response_types`` entries accepted."""

PUBLIC_AUTH_METHOD = "none"
SHARED_SECRET_AUTH_METHODS = frozenset(
    {"client_secret_basic", "client_secret_post", "client_secret_jwt"}
)
SUPPORTED_GRANT_TYPES = frozenset({"authorization_code", "refresh_token"})
SUPPORTED_RESPONSE_TYPES = frozenset({"code"})

# RFC 6749 §3.3 scope-token characters, separated by single spaces.
_SCOPE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+( [\x21\x23-\x5b\x5d-\x7e]+)*")


@dataclass(frozen=True)
class OAuthClient:
    """A client allowed to use ``/authorize``, whichever way it became known.

    ``client_id`` is the identifier exactly as the client sends it. ``redirect_uris`` are the
    registered URIs (compared by the authorization endpoint, RFC 8252 §7.3 for loopback).
    ``token_endpoint_auth_method`` is ``"none"`` (a public client, PKCE only) or
    ``"private_key_jwt"`` (CIMD only; ``jwks``/``jwks_uri`` then hold its keys, RFC 7523).
    ``source`` says where the metadata came from: ``"cimd"``, ``"registered"`` (RFC 7591) or
    ``"file"``. ``issued_at`` is the registration time (epoch seconds) for registered clients.
    """

    client_id: str
    redirect_uris: tuple[str, ...]
    source: ClientSource
    client_name: str | None = None
    token_endpoint_auth_method: str = PUBLIC_AUTH_METHOD
    grant_types: tuple[str, ...] = ("authorization_code", "refresh_token")
    response_types: tuple[str, ...] = ("code",)
    scope: str | None = None
    jwks_uri: str | None = None
    jwks: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)
    issued_at: int | None = None

    @property
    def is_public(self) -> bool:
        """True when the client holds no credential (``token_endpoint_auth_method`` none)."""
        return self.token_endpoint_auth_method == PUBLIC_AUTH_METHOD

    @property
    def display_name(self) -> str:
        """``client_name`` when given, else the ``client_id`` (for the consent page)."""
        return self.client_name or self.client_id


def frozen_jwks(value: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """A read-only view of a JWKS object for :attr:`OAuthClient.jwks`."""
    return None if value is None else MappingProxyType(dict(value))


# --- other metadata members (RFC 7591 §2) -------------------------------------------------


def text_problem(value: object, name: str, max_length: int) -> str | None:
    """Why ``value`` is not a printable string of at most ``max_length`` characters."""
    if not isinstance(value, str):
        return f"{name} must be a string"
    if not value.strip():
        return f"{name} must not be empty"
    if len(value) > max_length:
        return f"{name} is longer than {max_length} characters"
    if not value.isprintable():
        return f"{name} holds control characters"
    return None


def scope_problem(value: object) -> str | None:
    """Why ``value`` is not an RFC 6749 §3.3 scope string of acceptable length."""
    if not isinstance(value, str):
        return "scope must be a string"
    if len(value) > MAX_SCOPE_LENGTH:
        return f"scope is longer than {MAX_SCOPE_LENGTH} characters"
    if not _SCOPE.fullmatch(value):
        return "scope must be scope tokens separated by single spaces (RFC 6749 §3.3)"
    return None


def string_list_problem(value: object, name: str, allowed: frozenset[str] | None) -> str | None:
    """Why ``value`` is not a short list of strings (each in ``allowed`` when given)."""
    if not isinstance(value, list) or not value:
        return f"{name} must be a non-empty list of strings"
    if len(value) > MAX_LIST_ITEMS:
        return f"{name} has more than {MAX_LIST_ITEMS} entries"
    for item in value:
        if not isinstance(item, str) or len(item) > 100:
            return f"{name} must hold short strings"
        if allowed is not None and item not in allowed:
            return f"{name} value {item[:40]!r} is not supported (allowed: {sorted(allowed)})"
    return None
