"""Which client is this? One answer for ``/authorize`` and ``/token``, whatever the source.

:class:`ClientResolver` turns a ``client_id`` into an :class:`~jwtmcp.client_metadata.OAuthClient`:

1. a client configured by the operator (``clients``, e.g. from the clients file), by exact id;
2. an ``https`` URL: a Client ID Metadata Document, fetched and checked by
   :class:`~jwtmcp.cimd.ClientMetadataFetcher` (when one is configured);
3. a stateless registration (``dcr1.…``) issued by :class:`~jwtmcp.registration.StatelessRegistrar`,
   accepted once its MAC verifies (when one is configured).

Anything else raises :class:`~jwtmcp.errors.UnknownClient`.
"""

from __future__ import annotations

from collections.abc import Mapping

from .cimd import ClientMetadataFetcher, looks_like_metadata_url
from .client_metadata import OAuthClient
from .errors import ConfigError, UnknownClient
from .registration import MAX_CLIENT_ID_LENGTH, StatelessRegistrar


class ClientResolver:
    """The single entry point that identifies an interactive OAuth client.

    ``metadata_documents`` enables CIMD (``client_id_metadata_document_supported`` in the
    RFC 8414 metadata), ``registrar`` enables RFC 7591 registration; ``clients`` are
    operator-configured clients by ``client_id``. Each may be left out.
    """

    def __init__(
        self,
        *,
        metadata_documents: ClientMetadataFetcher | None = None,
        registrar: StatelessRegistrar | None = None,
        clients: Mapping[str, OAuthClient] | None = None,
    ) -> None:
        self._cimd = metadata_documents
        self._registrar = registrar
        self._clients = dict(clients or {})
        for client_id, client in self._clients.items():
            if client.client_id != client_id:
                raise ConfigError(f"client {client_id!r} is listed under another client_id")

    @property
    def supports_metadata_documents(self) -> bool:
        """True when https ``client_id`` URLs are accepted (advertise it in RFC 8414)."""
        return self._cimd is not None

    @property
    def supports_registration(self) -> bool:
        """True when RFC 7591 registrations are accepted (advertise ``registration_endpoint``)."""
        return self._registrar is not None

    async def resolve(self, client_id: str) -> OAuthClient:
        """The client ``client_id`` names.

        Raises :class:`~jwtmcp.errors.UnknownClient` for an id no source knows (or whose
        registration MAC fails), :class:`~jwtmcp.errors.ClientMetadataError` for a refused
        metadata document and :class:`~jwtmcp.errors.ClientMetadataUnavailable` when its host
        does not answer (``oauth_error`` says which OAuth error to answer with).
        """
        if not isinstance(client_id, str) or not client_id or len(client_id) > MAX_CLIENT_ID_LENGTH:
            raise UnknownClient("unknown client_id")
        configured = self._clients.get(client_id)
        if configured is not None:
            return configured
        if looks_like_metadata_url(client_id):
            if self._cimd is None:
                raise UnknownClient("client ID metadata documents are not accepted by this issuer")
            return await self._cimd.fetch(client_id)
        if self._registrar is not None and StatelessRegistrar.is_registered_id(client_id):
            return self._registrar.client(client_id)
        raise UnknownClient("unknown client_id")
