"""RFC 7591 dynamic client registration for public clients, without a store.

``POST /register`` (:meth:`StatelessRegistrar.register`) accepts what an MCP client sends to
register for the authorization code flow and nothing more:

* ``redirect_uris`` (required, at most ``max_redirect_uris``): https, loopback http on any
  port, or a private-use scheme (:func:`jwtmcp.redirect_uris.redirect_uri_problem`);
  anything else is ``invalid_redirect_uri`` (RFC 7591 §3.2.2).
* ``token_endpoint_auth_method``: ``none`` only. When absent, ``none`` is registered (RFC 7591
  §3.2.1 lets the server substitute values, and the response says so); a secret-based method
  asked for explicitly is refused with ``invalid_client_metadata``.
* ``grant_types`` ⊆ {``authorization_code``, ``refresh_token``} and holding
  ``authorization_code``; ``response_types`` ⊆ {``code``} (RFC 7591 §2.1 consistency).
* ``client_name`` (≤ 100 printable characters) and ``scope`` (RFC 6749 §3.3 tokens, ≤ 1000
  characters). Every other member is dropped, and the canonical metadata must fit in
  ``max_metadata_bytes``.

**Stateless**: nothing is stored. The issued ``client_id`` *is* the registration:
``dcr1.<payload>.<mac>``, where ``payload`` is the base64url of the canonical JSON of the
registered metadata and its issue time, and ``mac`` the base64url HMAC-SHA256 of
``dcr1.<payload>`` under a 256-bit key kept in the key ring's directory
(``registration.key``, mode 0600, created on first use). :meth:`StatelessRegistrar.client`
verifies the MAC (in constant time) and returns the metadata, so any change to a
``client_id`` is refused.

Why HMAC and not the ring's RSA keys: only this issuer ever checks a ``client_id``, so a
shared-key MAC is enough and keeps ids short (32 bytes of MAC instead of 256 of signature);
and the ring rotates and retires its keys, which would silently unregister every client. The
cost of statelessness: a single registration cannot be revoked; replacing ``registration.key``
revokes them all (clients then register again, as the MCP SDKs do on ``invalid_client``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from .client_metadata import (
    MAX_CLIENT_NAME_LENGTH,
    PUBLIC_AUTH_METHOD,
    SUPPORTED_GRANT_TYPES,
    SUPPORTED_RESPONSE_TYPES,
    OAuthClient,
    scope_problem,
    string_list_problem,
    text_problem,
)
from .errors import ConfigError, RegistrationError, UnknownClient
from .numeric import declared_length
from .redirect_uris import check_redirect_uris
from .strict_json import DuplicateMember, loads_document
from .tokens import Clock

log = logging.getLogger("jwtmcp.registration")

REGISTRATION_KEY_FILE = "registration.key"
"""The HMAC key's file name inside the key ring directory."""
REGISTERED_CLIENT_PREFIX = "dcr1."
"""How every stateless registration ``client_id`` starts (version 1 of the format)."""
KEY_BYTES = 32
MAX_CLIENT_ID_LENGTH = 8192
"""Longer strings are refused before any decoding."""

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass(frozen=True)
class RegistrationPolicy:
    """Limits of ``POST /register``: body size in bytes, number of redirect URIs, and the size
    in bytes of the canonical metadata carried inside each ``client_id``."""

    max_body_bytes: int = 16 * 1024
    max_redirect_uris: int = 5
    max_metadata_bytes: int = 2048

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_redirect_uris", "max_metadata_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}")


# --- the key -------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or len(text) % 4 == 1:
        raise ValueError("not base64url")
    if text.strip("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"):
        raise ValueError("not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None
    # The decoder ignores the unused low bits of the last character, so "QQ" and "QR" both
    # decode to b"A": only the canonical spelling is accepted, or one registration would have
    # several client_id strings.
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


def _read_key(path: Path) -> bytes:
    st = path.stat()  # FileNotFoundError goes to the caller
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path} is not a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(
            f"{path} is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"fix it with: chmod 600 {path}"
        )
    try:
        key = _unb64(path.read_text(encoding="ascii").strip())
    except (OSError, UnicodeDecodeError, ValueError):
        raise ConfigError(f"{path} does not hold a registration key") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{path} does not hold a {KEY_BYTES}-byte registration key")
    return key


def load_or_create_registration_key(keys_dir: str | os.PathLike[str]) -> bytes:
    """The registration HMAC key in ``keys_dir``, created (32 random bytes, mode 0600) if absent.

    Safe with several workers starting at once: the key is written to a temp file and linked
    into place only if no other process got there first; everyone then reads the one file.
    Raises :class:`~jwtmcp.errors.ConfigError` when ``keys_dir`` is missing, or the key file is
    not a private regular file holding a key.
    """
    directory = Path(keys_dir)
    path = directory / REGISTRATION_KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        return _read_key(path)
    if not directory.is_dir():
        raise ConfigError(f"no key directory at {directory}")
    fd, tmp = tempfile.mkstemp(prefix=f".{REGISTRATION_KEY_FILE}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(_b64(secrets.token_bytes(KEY_BYTES)) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process created it first
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return _read_key(path)


# --- the request (RFC 7591 §2) ------------------------------------------------------------


def _fail(code: str, message: str) -> RegistrationError:
    return RegistrationError(message, code=code)


def registered_metadata(body: object, policy: RegistrationPolicy) -> dict[str, Any]:
    """The metadata to register from an RFC 7591 request body (parsed JSON).

    Returns the canonical members (``redirect_uris``, ``token_endpoint_auth_method``,
    ``grant_types``, ``response_types``, and ``client_name``/``scope`` when given); unknown
    members are dropped. Raises :class:`~jwtmcp.errors.RegistrationError` with code
    ``invalid_redirect_uri`` or ``invalid_client_metadata`` (RFC 7591 §3.2.2).
    """
    if not isinstance(body, dict):
        raise _fail("invalid_client_metadata", "the registration request must be a JSON object")
    uris = check_redirect_uris(body.get("redirect_uris"), policy.max_redirect_uris, _fail)
    method = body.get("token_endpoint_auth_method")
    if method is not None and method != PUBLIC_AUTH_METHOD:
        raise _fail(
            "invalid_client_metadata",
            "only public clients may register: token_endpoint_auth_method must be 'none' "
            "(PKCE protects the code; no client secret is issued)",
        )
    grants = body.get("grant_types", ["authorization_code", "refresh_token"])
    if problem := string_list_problem(grants, "grant_types", SUPPORTED_GRANT_TYPES):
        raise _fail("invalid_client_metadata", problem)
    if "authorization_code" not in grants:
        raise _fail("invalid_client_metadata", "grant_types must include authorization_code")
    responses = body.get("response_types", ["code"])
    if problem := string_list_problem(responses, "response_types", SUPPORTED_RESPONSE_TYPES):
        raise _fail("invalid_client_metadata", problem)
    metadata: dict[str, Any] = {
        "redirect_uris": list(uris),
        "token_endpoint_auth_method": PUBLIC_AUTH_METHOD,
        "grant_types": sorted(set(grants)),
        "response_types": ["code"],
    }
    name = body.get("client_name")
    if name is not None:
        if problem := text_problem(name, "client_name", MAX_CLIENT_NAME_LENGTH):
            raise _fail("invalid_client_metadata", problem)
        metadata["client_name"] = name
    scope = body.get("scope")
    if scope is not None:
        if problem := scope_problem(scope):
            raise _fail("invalid_client_metadata", problem)
        metadata["scope"] = scope
    return metadata


# --- the registrar -------------------------------------------------------------------------


class StatelessRegistrar:
    """Issues and reads stateless registrations (see the module docstring).

    ``key`` is the 32-byte HMAC key (:func:`load_or_create_registration_key`); ``clock`` gives
    epoch seconds for ``client_id_issued_at``.
    """

    def __init__(
        self,
        key: bytes,
        *,
        policy: RegistrationPolicy | None = None,
        clock: Clock = time.time,
    ) -> None:
        if len(key) != KEY_BYTES:
            raise ConfigError(f"the registration key must be {KEY_BYTES} bytes")
        self._key = key
        self.policy = policy or RegistrationPolicy()
        self._clock = clock

    @classmethod
    def from_keys_dir(
        cls,
        keys_dir: str | os.PathLike[str],
        *,
        policy: RegistrationPolicy | None = None,
        clock: Clock = time.time,
    ) -> StatelessRegistrar:
        """A registrar whose key lives in ``keys_dir`` (created on first use)."""
        return cls(load_or_create_registration_key(keys_dir), policy=policy, clock=clock)

    def _mac(self, signed: bytes) -> bytes:
        mac = hmac.HMAC(self._key, hashes.SHA256())
        mac.update(signed)
        return mac.finalize()

    def issue(self, body: object) -> dict[str, Any]:
        """Register the client an RFC 7591 request body describes, without storing anything.

        Returns the RFC 7591 §3.2.1 response: ``client_id``, ``client_id_issued_at`` (epoch
        seconds) and the registered metadata. Raises
        :class:`~jwtmcp.errors.RegistrationError` (RFC 7591 §3.2.2) for a refused request.
        """
        metadata = registered_metadata(body, self.policy)
        issued_at = int(self._clock())
        payload = orjson.dumps({**metadata, "iat": issued_at}, option=orjson.OPT_SORT_KEYS)
        if len(payload) > self.policy.max_metadata_bytes:
            raise _fail(
                "invalid_client_metadata",
                f"the client metadata is larger than {self.policy.max_metadata_bytes} bytes",
            )
        signed = REGISTERED_CLIENT_PREFIX + _b64(payload)
        client_id = f"{signed}.{_b64(self._mac(signed.encode('ascii')))}"
        return {"client_id": client_id, "client_id_issued_at": issued_at, **metadata}

    @staticmethod
    def is_registered_id(client_id: str) -> bool:
        """True when ``client_id`` has the shape of a stateless registration (not checked)."""
        return client_id.startswith(REGISTERED_CLIENT_PREFIX)

    def client(self, client_id: str) -> OAuthClient:
        """The registered client ``client_id`` carries, once its MAC verifies.

        Raises :class:`~jwtmcp.errors.UnknownClient` for anything not issued by this registrar
        under its current key (a changed character, another key, another format).
        """
        unknown = UnknownClient("unknown client_id")
        if len(client_id) > MAX_CLIENT_ID_LENGTH or not self.is_registered_id(client_id):
            raise unknown
        signed, _, mac_text = client_id.rpartition(".")
        payload_text = signed[len(REGISTERED_CLIENT_PREFIX) :]
        try:
            mac = _unb64(mac_text)
            payload = _unb64(payload_text)
        except ValueError:
            raise unknown from None
        verifier = hmac.HMAC(self._key, hashes.SHA256())
        verifier.update(signed.encode("ascii"))
        try:
            verifier.verify(mac)
        except InvalidSignature:
            raise unknown from None
        # Past the MAC the payload is our own canonical JSON; still checked, not trusted blindly.
        try:
            data = orjson.loads(payload)
            return OAuthClient(
                client_id=client_id,
                redirect_uris=tuple(str(u) for u in data["redirect_uris"]),
                source="registered",
                client_name=data.get("client_name"),
                token_endpoint_auth_method=str(data["token_endpoint_auth_method"]),
                grant_types=tuple(str(g) for g in data["grant_types"]),
                response_types=tuple(str(r) for r in data["response_types"]),
                scope=data.get("scope"),
                issued_at=int(data["iat"]),
            )
        except (ValueError, KeyError, TypeError):
            raise unknown from None

    # -- the HTTP endpoint ---------------------------------------------------------------

    async def register(self, request: Request) -> Response:
        """``POST /register`` (RFC 7591 §3): 201 with the §3.2.1 response, or a §3.2.2 error.

        Refuses a body that is not ``application/json`` (415), larger than ``max_body_bytes``
        (413) or not valid JSON (400), all with ``invalid_client_metadata``.
        """
        media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            return _error("invalid_client_metadata", "the body must be application/json", 415)
        limit = self.policy.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared_length(declared) > limit:
            return _error("invalid_client_metadata", f"the body is larger than {limit} bytes", 413)
        body = b""
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    return _error(
                        "invalid_client_metadata", f"the body is larger than {limit} bytes", 413
                    )
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            document = loads_document(body)
        except DuplicateMember:
            return _error("invalid_client_metadata", "the body repeats a JSON member name", 400)
        except ValueError:
            return _error("invalid_client_metadata", "the body is not valid JSON", 400)
        try:
            answer = self.issue(document)
        except RegistrationError as exc:
            log.info(json.dumps({"event": "registration_refused", "error": exc.code}))
            return _error(exc.code, exc.message, 400)
        log.info(
            json.dumps(
                {
                    "event": "client_registered",
                    "client_name": answer.get("client_name"),
                    "redirect_uris": answer["redirect_uris"],
                }
            )
        )
        return JSONResponse(answer, status_code=201, headers=_NO_STORE)


def _error(code: str, description: str, status: int) -> Response:
    return JSONResponse(
        {"error": code, "error_description": description}, status_code=status, headers=_NO_STORE
    )
