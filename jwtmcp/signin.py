"""Interactive sign-in assembled for the issuer: store, clients, users, endpoints, metadata.

:func:`build_sign_in` puts together what ``/authorize`` (:mod:`jwtmcp.authorize`),
``/register`` (:mod:`jwtmcp.registration`) and the token endpoint's interactive grants need:

- the state store (:func:`jwtmcp.store.open_store`; by default the SQLite file
  ``jwtmcp-state.db`` beside the key ring directory);
- one :class:`~jwtmcp.resolver.ClientResolver` (Client ID Metadata Documents and stateless
  RFC 7591 registrations keyed by ``registration.key`` in the key ring directory);
- the identity source (:class:`~jwtmcp.identity.UsersFileSource` over the users file, by
  default ``users.json`` beside the clients file; while that file does not exist, sign-in
  answers 503 and everything else works);
- the RFC 8414 metadata members that advertise all of it.

Client credentials stay stateless: nothing here is on the ``client_credentials`` path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.routing import BaseRoute, Route

from .authorize import Authorizer, LoginLimits
from .cimd import ClientMetadataFetcher
from .errors import UsersError
from .identity import Identity, PasswordSource, UsersFileSource
from .oidc import Federation
from .registration import StatelessRegistrar, load_or_create_registration_key
from .resolver import ClientResolver
from .store import Store, default_store_path, open_store
from .tokens import Clock
from .users import users_file_beside


class UsersFileOnDemand:
    """:class:`~jwtmcp.identity.UsersFileSource` that waits for its file to exist.

    Until ``path`` exists every call raises :class:`~jwtmcp.errors.UsersError` (the login
    page answers 503 with the reason); from then on it is the users file source.
    """

    source_id = UsersFileSource.source_id
    display_name = UsersFileSource.display_name

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._source: UsersFileSource | None = None

    def _current(self) -> UsersFileSource:
        if self._source is None:
            if not self.path.exists():
                raise UsersError(
                    f"no users file at {self.path}; add a user with: jwtmcp users add NAME "
                    f"--tools ... --aud URL --users {self.path}"
                )
            self._source = UsersFileSource(self.path)
        return self._source

    def authenticate(self, username: str, password: str) -> Identity | None:
        return self._current().authenticate(username, password)

    def lookup(self, subject: str) -> Identity | None:
        return self._current().lookup(subject)


@dataclass
class SignIn:
    """The parts of interactive sign-in, shared by the issuer's endpoints."""

    resolver: ClientResolver
    registrar: StatelessRegistrar
    identity: PasswordSource
    authorizer: Authorizer
    extra_routes: list[BaseRoute] = field(default_factory=list)

    def routes(self) -> list[BaseRoute]:
        """``/authorize*``, the pages' CSS and ``POST /register``."""
        return [
            *self.authorizer.routes(),
            Route("/register", self.registrar.register, methods=["POST"]),
            *self.extra_routes,
        ]

    def metadata(self, issuer: str) -> dict[str, Any]:
        """The RFC 8414 members sign-in adds (the caller merges grant types and methods)."""
        document: dict[str, Any] = {
            "authorization_endpoint": f"{issuer}/authorize",
            "response_types_supported": ["code"],
            "code_challenge_methods_supported": ["S256"],
            "authorization_response_iss_parameter_supported": True,
            "client_id_metadata_document_supported": self.resolver.supports_metadata_documents,
        }
        if self.resolver.supports_registration:
            document["registration_endpoint"] = f"{issuer}/register"
        return document


def build_sign_in(
    *,
    issuer: str,
    keys_dir: str | os.PathLike[str],
    clients_file: str | os.PathLike[str],
    users_file: str | os.PathLike[str] | None = None,
    store: Store | str | os.PathLike[str] | None = None,
    metadata_fetcher: ClientMetadataFetcher | None = None,
    identity_source: PasswordSource | None = None,
    login_limits: LoginLimits | None = None,
    clock: Clock = time.time,
    configured_clients: Mapping[str, Any] | None = None,
    resolver: ClientResolver | None = None,
    store_busy_timeout: float | None = None,
    federation: Federation | None = None,
) -> SignIn:
    """Everything interactive sign-in needs, from the issuer's settings.

    ``store`` is a :class:`~jwtmcp.store.Store` or a location for
    :func:`~jwtmcp.store.open_store` (default: beside ``keys_dir``); ``users_file`` defaults
    to ``users.json`` beside ``clients_file``; ``metadata_fetcher`` defaults to a
    :class:`~jwtmcp.cimd.ClientMetadataFetcher` that refuses private and loopback hosts;
    ``resolver`` replaces the client resolver built from those; ``store_busy_timeout``
    (seconds, None: the store's default) is how long a request waits for another writer.
    ``federation`` (:mod:`jwtmcp.oidc`) adds upstream OpenID providers to the login page.
    Raises :class:`~jwtmcp.errors.ConfigError` for an unusable key directory and
    :class:`~jwtmcp.errors.StoreUnavailable` from the sign-in steps (not here) while the
    store cannot be opened.
    """
    key = load_or_create_registration_key(keys_dir)
    if store is None:
        store = default_store_path(keys_dir)
    location = store

    def open_the_store() -> Store:
        # Opened on the first sign-in step, not here: an issuer whose store cannot be opened
        # still starts and serves client_credentials; sign-in answers 503 until it opens.
        if not isinstance(location, (str, os.PathLike)):
            return location
        return open_store(location, clock=clock, busy_timeout=store_busy_timeout)

    registrar = StatelessRegistrar(key, clock=clock)
    resolver = resolver or ClientResolver(
        metadata_documents=metadata_fetcher or ClientMetadataFetcher(clock=clock),
        registrar=registrar,
        clients=configured_clients,
    )
    source = identity_source or UsersFileOnDemand(users_file or users_file_beside(clients_file))
    authorizer = Authorizer(
        issuer=issuer,
        resolver=resolver,
        identity_source=source,
        open_store=open_the_store,
        key=key,
        clock=clock,
        login_limits=login_limits,
        federation=federation,
    )
    return SignIn(
        resolver=resolver,
        registrar=registrar,
        identity=source,
        authorizer=authorizer,
    )
