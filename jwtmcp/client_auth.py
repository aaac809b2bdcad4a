"""``private_key_jwt`` client authentication at ``/token`` (RFC 7523 §2.2 and §3, RFC 7521
§4.2, OpenID Connect Core §9).

A client registered with its public keys (``jwks`` inline, or a ``jwks_uri``; see
:mod:`jwtmcp.clients`) holds no secret. It authenticates each token request with
``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`` and a
``client_assertion``: a JWT it signed with its private key, where

- ``iss`` and ``sub`` are its ``client_id`` (and a ``client_id`` parameter, if sent, too);
- ``aud`` is this issuer's identifier as the sole value (draft-ietf-oauth-rfc7523bis §4,
  which the MCP SDK's ``PrivateKeyJWTOAuthProvider`` follows: it sends the ``issuer`` of the
  RFC 8414 metadata; the token endpoint URL is not accepted, so an assertion made for
  another server's token endpoint cannot be replayed here). A root issuer matches with or
  without its trailing ``/`` (the SDK's pydantic URL adds one);
- ``exp`` is at most :data:`MAX_CLIENT_ASSERTION_LIFETIME` (5 minutes) ahead;
- ``jti`` is new: it is recorded in the store until the assertion expires, and a second
  use is refused (RFC 7523 §3 item 7);
- the header, key and signature rules of :mod:`jwtmcp.assertions` hold (RS256/PS256 only;
  the key only from the client's registered set).

Every refusal is ``invalid_client`` (401, RFC 7521 §4.2.1) with a description naming the
failed check. When the client's ``jwks_uri`` or the store cannot be reached the answer is
503 ``temporarily_unavailable`` with ``Retry-After``.

A ``jwks_uri`` is fetched through jwtmcp's key cache (:class:`jwtmcp.jwks.JwksCache`:
cached per HTTP caching rules, refetched for an unknown kid at most every 30 s, kept through
outages). It must be https; plain http on a loopback host is used only when the issuer runs
with ``allow_loopback_http_jwks`` (development), as CIMD does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from jwt.algorithms import RSAAlgorithm

from .assertions import (
    ASSERTION_ALGORITHMS,
    LEEWAY,
    MAX_CLIENT_KEYS,
    AssertionRefused,
    RemoteKeySets,
    audience_matches,
    read_unverified,
    replay_key,
    verify_assertion,
)
from .clients import Client
from .errors import ClientsError, ConfigError, KeysUnavailable
from .issuer import OAuthError
from .jwks import JwksError, KeySource, StaticKeys, load_pem_public_key, parse_jwks
from .strict_json import loads_document

if TYPE_CHECKING:
    from .issuer import IssuerService

log = logging.getLogger("jwtmcp.issuer")

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
"""RFC 7523 §2.2: the ``client_assertion_type`` of a JWT client assertion."""

MAX_CLIENT_ASSERTION_LIFETIME = 300
"""Seconds a client assertion may still be valid for when it arrives (its ``exp`` ahead)."""

CLIENT_TYPES = frozenset({None, "jwt", "client-authentication+jwt"})
"""``typ`` headers a client assertion may carry: none, ``JWT``, or the explicit type of
draft-ietf-oauth-rfc7523bis. Anything else (an ID-JAG, an access token) is another kind of
JWT and is refused here."""


def read_jwks_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JWK set in ``path`` for ``jwtmcp clients add --jwks-file``: a JWKS document, or
    one PEM RSA public key (made a one-key set whose ``kid`` is its RFC 7638 thumbprint).

    Raises :class:`~jwtmcp.errors.ClientsError` naming the file and what is wrong.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ClientsError(f"cannot read the JWKS file {path}: {exc.strerror}") from None
    if raw.lstrip().startswith(b"-----BEGIN"):
        try:
            public = load_pem_public_key(raw)
        except ConfigError as exc:
            raise ClientsError(f"{path}: {exc.message}") from None
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(public.key))
        members = {"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}
        canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
        thumbprint = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest())
        jwk.update(kid=thumbprint.rstrip(b"=").decode(), use="sig")
        return {"keys": [jwk]}
    try:
        doc = loads_document(raw)
    except ValueError:
        raise ClientsError(f"the JWKS file {path} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ClientsError(f"the JWKS file {path} is not a JWK set")
    return doc


def issuer_identifiers(issuer: str) -> tuple[str, ...]:
    """The spellings of ``issuer`` an assertion's ``aud`` may use: the identifier itself and,
    for a root issuer (no path), the same with a trailing ``/`` (RFC 8414 §3.3 compares
    simply; a root URL with and without its ``/`` name the same resource)."""
    if urlsplit(issuer).path in ("", "/"):
        return (issuer.rstrip("/"), issuer.rstrip("/") + "/")
    return (issuer,)


def _refused(description: str) -> OAuthError:
    return OAuthError("invalid_client", description, 401)


def _unavailable(description: str, retry_after: int = 5) -> OAuthError:
    return OAuthError(
        "temporarily_unavailable", description, 503, {"Retry-After": str(retry_after)}
    )


class ClientKeys:
    """The key source of each ``private_key_jwt`` client: a :class:`StaticKeys` for an
    inline JWKS, the shared :class:`~jwtmcp.assertions.RemoteKeySets` cache of its
    ``jwks_uri``. Thread-safe."""

    def __init__(self, *, allow_loopback_http: bool = False) -> None:
        self.remote = RemoteKeySets(allow_loopback_http=allow_loopback_http)
        self._lock = threading.Lock()
        self._static: dict[int, tuple[Client, StaticKeys]] = {}

    def for_client(self, client: Client) -> KeySource:
        """The keys ``client`` signs with. Raises :class:`ConfigError` when its registration
        cannot be used here (plain http without the development switch)."""
        if client.jwks is not None:
            cached = self._static.get(id(client))
            if cached is not None and cached[0] is client:
                return cached[1]
            try:
                keys = StaticKeys(
                    parse_jwks(
                        client.jwks,
                        algorithms=ASSERTION_ALGORITHMS,
                        max_keys=MAX_CLIENT_KEYS,
                        where=f"the JWKS of client {client.client_id}",
                    )
                )
            except JwksError as exc:
                raise ConfigError(str(exc)) from None
            with self._lock:
                if len(self._static) > 4096:
                    self._static.clear()
                self._static[id(client)] = (client, keys)
            return keys
        if client.jwks_uri is None:
            raise ConfigError(f"client {client.client_id} has no registered keys")
        return self.remote.get(client.jwks_uri, max_keys=MAX_CLIENT_KEYS)

    def forget_others(self, urls: set[str]) -> None:
        """Close the caches of URLs no client names any more."""
        self.remote.keep_only(urls)

    def close(self) -> None:
        self.remote.close()


class PrivateKeyJwtAuthenticator:
    """Authenticates token requests carrying a ``client_assertion`` for ``service``."""

    def __init__(self, service: IssuerService, *, allow_loopback_http: bool = False) -> None:
        self.service = service
        self.keys = ClientKeys(allow_loopback_http=allow_loopback_http)
        self._audiences = issuer_identifiers(service.issuer)
        self._table: object = None

    async def authenticate(
        self, params: Mapping[str, str], authorizations: Sequence[bytes]
    ) -> Client:
        """The client whose ``client_assertion`` in ``params`` verifies (module docstring).

        Raises :class:`~jwtmcp.issuer.OAuthError`: ``invalid_request`` when a second
        authentication method is sent or a parameter is missing, ``invalid_client`` (401)
        for every failed check, 503 ``temporarily_unavailable`` for a key set or store
        outage.
        """
        if authorizations or "client_secret" in params:
            raise OAuthError("invalid_request", "use one client authentication method, not two")
        assertion_type = params.get("client_assertion_type")
        token = params.get("client_assertion")
        if assertion_type is None or token is None:
            raise OAuthError(
                "invalid_request",
                "client_assertion and client_assertion_type must be sent together",
            )
        if assertion_type != CLIENT_ASSERTION_TYPE:
            raise _refused(
                f"unsupported client_assertion_type; this issuer accepts {CLIENT_ASSERTION_TYPE}"
            )
        try:
            return await self._authenticate(token, params.get("client_id"))
        except AssertionRefused as exc:
            raise _refused(exc.message) from None
        except KeysUnavailable:
            raise _unavailable(
                "the client's registered keys cannot be fetched; retry shortly"
            ) from None

    async def _authenticate(self, token: str, client_id: str | None) -> Client:
        _, unverified = read_unverified(token)
        iss, sub = unverified.get("iss"), unverified.get("sub")
        if not isinstance(iss, str) or iss != sub:
            raise AssertionRefused("the client assertion's iss and sub must both be the client_id")
        if client_id is not None and client_id != iss:
            raise AssertionRefused("the client_id parameter is not the client assertion's iss")
        table = self.service.clients.current()
        if table is not self._table:
            self._table = table
            self.keys.forget_others({c.jwks_uri for c in table if c.jwks_uri is not None})
        client = table.get(iss)
        if client is None or not client.has_keys:
            # The same answer for an unknown id and a secret client: ids are not disclosed.
            raise AssertionRefused("no client registered for private_key_jwt has this client_id")
        try:
            keys = self.keys.for_client(client)
        except ConfigError as exc:
            log.error(json.dumps({"event": "client_keys_unusable", "error": exc.message}))
            raise AssertionRefused("the client's registered keys cannot be used") from None
        now = self.service.clock()
        assertion = await verify_assertion(
            token, keys, now=now, max_lifetime=MAX_CLIENT_ASSERTION_LIFETIME
        )
        claims = assertion.claims
        if claims.get("iss") != client.client_id or claims.get("sub") != client.client_id:
            raise AssertionRefused("the client assertion's iss and sub must both be the client_id")
        if assertion.typ not in CLIENT_TYPES:
            raise AssertionRefused("the client assertion's typ is not a client assertion type")
        if not audience_matches(claims, self._audiences):
            raise AssertionRefused(
                "the client assertion's aud must be this issuer's identifier "
                f"({self.service.issuer}) as its only value"
            )
        key = replay_key("client_assertion", client.client_id, assertion.jti)
        until = assertion.exp + LEEWAY + 1  # accepted until exp + LEEWAY
        first = await self.service.grants.call_store(lambda s: s.remember_once(key, until))
        if not first:
            raise AssertionRefused("the client assertion was used before (its jti is spent)")
        return client

    def close(self) -> None:
        self.keys.close()
