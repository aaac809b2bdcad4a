"""Identity sources: how the issuer learns who is signing in (Dex's "connectors").

The authorization endpoint never reads a users file or talks to an upstream provider itself;
it asks an *identity source* and gets back an :class:`Identity`: the subject and what that
subject may be given (tools, audiences, a lifetime cap, a few claims). Consent then narrows
the identity's tools to what the user approves, never widens them.

Two shapes of source share one base:

- a :class:`PasswordSource` checks a name and password typed into jwtmcp's own login form
  (:class:`UsersFileSource`, the users file);
- a redirect source (the upstream-OIDC login of the federation issue) sends the browser to
  the provider and turns its verified callback into an :class:`Identity`. It implements
  :class:`IdentitySource` plus its own start/finish pair; the login page shows a button for
  it where a password source gets the form.

``source_id`` is stored with every grant, so a refresh goes back to the same source:
:meth:`PasswordSource.lookup` gives the subject's *current* allowances (a removed user, or
one whose tools were cut, loses them on the next refresh).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from .errors import ConfigError
from .tokens import RESERVED_CLAIMS, tool_scope
from .users import User, UsersWatcher


@dataclass(frozen=True)
class Identity:
    """Who signed in, and the most a token for them may carry.

    ``subject`` becomes the token's ``sub``. ``tools`` (``*`` and ``prefix*`` allowed) and
    ``audiences`` (resource URLs, RFC 8707) bound what consent can approve.
    ``max_lifetime`` caps the access token's lifetime in seconds (None: the issuer's own
    cap). ``claims`` are extra token claims (``name``, ``email`` ...), never a registered or
    reserved one. ``source_id`` names the :class:`IdentitySource` that vouched for it.
    """

    subject: str
    tools: tuple[str, ...]
    audiences: tuple[str, ...]
    max_lifetime: int | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, hash=False)
    source_id: str = ""
    upstream: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """For a federated identity (:mod:`jwtmcp.oidc`), the verified upstream claims the
    policy decided on; kept with the grant so a refresh can decide again."""

    def __post_init__(self) -> None:
        if not self.subject:
            raise ConfigError("an identity needs a subject")
        reserved = sorted(set(self.claims) & RESERVED_CLAIMS)
        if reserved:
            raise ConfigError(f"an identity may not set the claims {', '.join(reserved)}")
        object.__setattr__(self, "claims", MappingProxyType(dict(self.claims)))

    @cached_property
    def allowed_scopes(self) -> tuple[str, ...]:
        """The ``tool:`` scopes this identity may approve, in order."""
        return tuple(dict.fromkeys(tool_scope(t) for t in self.tools))


@runtime_checkable
class IdentitySource(Protocol):
    """Anything that can vouch for a subject. ``source_id`` is short and stable (``users``)."""

    source_id: str
    display_name: str
    """Shown on the login page ("Sign in with ...")."""


@runtime_checkable
class GrantLookupSource(IdentitySource, Protocol):
    """A source that needs the stored grant, not only the subject, to re-check an identity
    at refresh (a federated source re-evaluates the policy over the kept upstream claims)."""

    def lookup_grant(self, subject: str, grant: Mapping[str, Any]) -> Identity | None:
        """The subject's current identity from its grant; None when it may no longer have one."""
        ...


@runtime_checkable
class PasswordSource(IdentitySource, Protocol):
    """A source that checks a name and password from jwtmcp's own login form."""

    def authenticate(self, username: str, password: str) -> Identity | None:
        """The identity when the password is right; None otherwise.

        None for an unknown name and for a wrong password alike, after the same work, so
        the answer and its timing do not tell which. Raises
        :class:`~jwtmcp.errors.JwtMcpError` only when the source itself is unusable.
        """
        ...

    def lookup(self, subject: str) -> Identity | None:
        """The subject's current identity without a password (for refresh); None if gone."""
        ...


class UsersFileSource:
    """:class:`PasswordSource` over the users file (re-read when it changes on disk)."""

    source_id = "users"
    display_name = "jwtmcp account"

    def __init__(self, users: str | os.PathLike[str] | UsersWatcher) -> None:
        self._users = users if isinstance(users, UsersWatcher) else UsersWatcher(users)

    @staticmethod
    def _identity(user: User) -> Identity:
        claims = {"name": user.display_name, "email": user.email}
        return Identity(
            subject=user.name,
            tools=user.tools,
            audiences=user.audiences,
            max_lifetime=user.max_ttl,
            claims={k: v for k, v in claims.items() if v is not None},
            source_id=UsersFileSource.source_id,
        )

    def authenticate(self, username: str, password: str) -> Identity | None:
        user = self._users.current().authenticate(username, password)
        return self._identity(user) if user is not None else None

    def lookup(self, subject: str) -> Identity | None:
        user = self._users.current().get(subject)
        return self._identity(user) if user is not None else None
