"""Signers: where a ring key's private half lives and how it signs.

A :class:`Signer` is one RSA private key that makes RS256 signatures (RSASSA-PKCS1-v1_5
with SHA-256, RFC 7518 3.3) and tells its public key. :func:`jwtmcp.tokens.sign` calls
``signer.sign(signing_input)`` once per token, whatever holds the key. The issuer signs
through :func:`jwtmcp.tokens.sign_async`: a :class:`FileSigner` in place, any other signer
in a worker thread (several at once), never on the event loop:

- files (the default): :class:`FileSigner` over a PEM the ring loaded; no I/O per token;
- a PKCS#11 token (an HSM, a cloud HSM, SoftHSM2): :mod:`jwtmcp.signers.pkcs11`;
- AWS KMS: :mod:`jwtmcp.signers.kms`.

A :class:`KeyBackend` makes keys inside its custody and finds them again by a *handle*
(the string the ring's state file stores instead of a PEM file). Backends are chosen by
name through :func:`open_backend`; a backend from another package plugs in through the
``jwtmcp.key_backends`` entry point group (docs/key-custody.md).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any, Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..errors import KeyRingError, SignerUnavailable

__all__ = [
    "BUILTIN_BACKENDS",
    "FileSigner",
    "HandleSigner",
    "KeyBackend",
    "Signer",
    "SignerUnavailable",
    "backend_names",
    "open_backend",
]

FILE_BACKEND = "file"
"""The backend of keys kept as PEM files in the ring directory (no entry in the state)."""

BUILTIN_BACKENDS: Mapping[str, str] = {
    "pkcs11": "jwtmcp.signers.pkcs11:Pkcs11Backend",
    "kms": "jwtmcp.signers.kms:KmsBackend",
}
"""Backends jwtmcp ships, by name: ``module:factory``, imported only when a ring uses them."""

PKCS11_DEFAULT_PIN_ENV = "JWTMCP_PKCS11_PIN"
"""The environment variable the ``pkcs11`` backend reads the user PIN from by default."""

ENTRY_POINT_GROUP = "jwtmcp.key_backends"
"""Other packages register ``name = "module:Factory"`` in this entry point group."""


@runtime_checkable
class Signer(Protocol):
    """One RSA private key that signs RS256.

    ``sign(data)`` returns the RSASSA-PKCS1-v1_5 SHA-256 signature (RFC 8017 8.2) of
    ``data`` (bytes: the JWS signing input, RFC 7515 5.1), as many bytes as the modulus.
    It raises :class:`~jwtmcp.errors.SignerUnavailable` when the key's custody cannot be
    reached or refuses for a reason that may pass (the issuer answers 503 + Retry-After),
    never another exception. It must be safe to call from several threads.
    ``public_key()`` returns the RSA public key (the JWKS and the kid, RFC 7638, come from
    it).
    """

    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> rsa.RSAPublicKey: ...


_PKCS1V15 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


class FileSigner:
    """A :class:`Signer` over an RSA private key in memory (a ring's PEM file)."""

    __slots__ = ("_key",)

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        self._key = private_key

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, _PKCS1V15, _SHA256)

    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key()


class _SignsByHandle(Protocol):
    """What :class:`HandleSigner` needs from its backend."""

    def sign(self, handle: str, data: bytes) -> bytes: ...

    def public_key(self, handle: str) -> rsa.RSAPublicKey: ...


class HandleSigner:
    """A :class:`Signer` for one key a remote backend (an HSM, a KMS) holds by ``handle``.

    ``sign`` goes to the backend each time; any :class:`~jwtmcp.errors.KeyRingError` it
    raises (a PIN gone, a key disabled or deleted) becomes
    :class:`~jwtmcp.errors.SignerUnavailable` with ``retry_after`` seconds, so ``/token``
    answers 503 + Retry-After and never 500. Every signature is verified against the key's
    public key (RSASSA-PKCS1-v1_5, RFC 8017 8.2.2) before it is returned: one that is not
    as long as the modulus or does not verify (another key signed: a wrong alias, a key
    replaced in the HSM; or the answer was altered) is :class:`SignerUnavailable` too, so
    no token ever fails the issuer's own JWKS. The public key is read once, then kept."""

    __slots__ = ("_backend", "_public", "handle", "retry_after")

    def __init__(self, backend: _SignsByHandle, handle: str, *, retry_after: int) -> None:
        self._backend = backend
        self.handle = handle
        self.retry_after = retry_after
        self._public: rsa.RSAPublicKey | None = None

    def sign(self, data: bytes) -> bytes:
        try:
            signature = self._backend.sign(self.handle, data)
            public = self.public_key()
        except SignerUnavailable:
            raise
        except KeyRingError as exc:
            raise SignerUnavailable(exc.message, retry_after=self.retry_after) from None
        size = (public.key_size + 7) // 8
        if not isinstance(signature, bytes) or len(signature) != size:
            raise SignerUnavailable(
                f"key {self.handle} gave a malformed signature (not {size} bytes, RFC 8017 8.2.1)",
                retry_after=self.retry_after,
            )
        try:  # ~20 us against a network round trip; a token must verify against its kid
            public.verify(signature, data, _PKCS1V15, _SHA256)
        except InvalidSignature:
            raise SignerUnavailable(
                f"key {self.handle} gave a signature that does not verify against its public "
                "key (another key signed, or the answer was altered)",
                retry_after=self.retry_after,
            ) from None
        return signature

    def public_key(self) -> rsa.RSAPublicKey:
        if self._public is None:
            self._public = self._backend.public_key(self.handle)
        return self._public

    def use_public_key(self, public: rsa.RSAPublicKey) -> None:
        """Check signatures against ``public``, the key the ring already read and matched to
        its kid, instead of asking the backend for it at the first signature (a KMS
        ``GetPublicKey`` that is slow or down must not hold a token the ring can sign)."""
        self._public = public


class KeyBackend(Protocol):
    """A place that keeps private keys and signs with them (an HSM, a KMS, a transit engine).

    Built by a factory called with the backend's settings (the JSON object the ring's state
    file keeps under ``backends.<name>``: no secrets, only where to find them), and then:

    - ``name``: the backend's name (``"pkcs11"``, ``"kms"``...).
    - ``settings()``: the JSON-ready settings to store in the state file (the same that
      rebuild this backend).
    - ``create_key(bits)``: generate a new RSA key of ``bits`` (2048, 3072 or 4096) inside
      the custody, never exported; return its handle (a string naming it in the backend,
      stored in the state file) and its public key.
    - ``public_key(handle)``: the public key of an existing key.
    - ``signer(handle)``: a :class:`Signer` for it (may connect lazily, at the first sign).
    - ``destroy_key(handle)``: delete the key (or schedule its deletion); called after the
      state file no longer names it (prune, revoke).

    Every method raises :class:`~jwtmcp.errors.KeyRingError` with a one-line reason for a
    bad setting or a missing key, and :class:`~jwtmcp.errors.SignerUnavailable` when the
    custody cannot be reached. Messages never hold a PIN, a password or a credential.
    """

    name: str

    def settings(self) -> dict[str, Any]: ...

    def create_key(self, bits: int) -> tuple[str, rsa.RSAPublicKey]: ...

    def public_key(self, handle: str) -> rsa.RSAPublicKey: ...

    def signer(self, handle: str) -> Signer: ...

    def destroy_key(self, handle: str) -> None: ...


BackendFactory = Callable[[Mapping[str, Any]], KeyBackend]

_backends: dict[str, KeyBackend] = {}
_backends_lock = threading.Lock()


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points  # only when a ring names a plugged-in backend

    return list(entry_points(group=ENTRY_POINT_GROUP))


def _factory(name: str) -> BackendFactory:
    target = BUILTIN_BACKENDS.get(name)
    if target is None:
        found = [ep for ep in _entry_points() if ep.name == name]
        if not found:
            raise KeyRingError(
                f"unknown key backend {name!r}; known: "
                + ", ".join([FILE_BACKEND, *backend_names()])
            )
        loaded: BackendFactory = found[0].load()
        return loaded
    module_name, _, attribute = target.partition(":")
    module = import_module(module_name)
    factory: BackendFactory = getattr(module, attribute)
    return factory


def backend_names() -> tuple[str, ...]:
    """The names of the key backends this installation knows (besides ``file``)."""
    names = dict.fromkeys(BUILTIN_BACKENDS)
    names.update(dict.fromkeys(ep.name for ep in _entry_points()))
    return tuple(names)


def open_backend(name: str, settings: Mapping[str, Any]) -> KeyBackend:
    """The backend ``name`` built from ``settings``, one object per process for equal
    settings (so one PKCS#11 session or one KMS client serves every key of a ring).

    Raises :class:`~jwtmcp.errors.KeyRingError` for an unknown name, a backend whose
    optional package is missing (naming the ``pip install 'jwtmcp[...]'`` that adds it), or
    invalid settings.
    """
    if not isinstance(settings, Mapping):
        raise KeyRingError(f"the settings of key backend {name!r} must be a JSON object")
    cache_key = name + "\0" + json.dumps(dict(settings), sort_keys=True, default=str)
    with _backends_lock:
        backend = _backends.get(cache_key)
        if backend is None:
            backend = _factory(name)(settings)
            _backends[cache_key] = backend
    return backend
