"""Ring keys inside a PKCS#11 token: hardware HSMs, cloud HSMs, SoftHSM2 (``python-pkcs11``).

Keys are generated inside the token (``C_GenerateKeyPair``) as token objects with
``CKA_SENSITIVE`` true, ``CKA_EXTRACTABLE`` false and ``CKA_SIGN`` true, so the private
half never leaves it; tokens are signed with ``CKM_SHA256_RSA_PKCS``. A key's handle is the
hex of its random ``CKA_ID`` (16 bytes); both halves also carry the label
``jwtmcp <handle>``. The public key (``CKA_MODULUS``, ``CKA_PUBLIC_EXPONENT``) is read from
the token.

Settings (the ring's ``backends.pkcs11`` object): ``module`` (path of the PKCS#11 library),
``token`` (the token label), and where the user PIN is: ``pin_file`` (a file readable by its
owner only) or ``pin_env`` (an environment variable's name, default ``JWTMCP_PKCS11_PIN``).
The PIN itself is never stored, logged or taken on a command line.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..errors import KeyRingError, SignerUnavailable
from . import PKCS11_DEFAULT_PIN_ENV, HandleSigner

try:
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
    from pkcs11.exceptions import PKCS11Error
except ImportError:  # pragma: no cover - the error names the extra to install
    pkcs11 = None  # type: ignore[assignment]

NAME = "pkcs11"
DEFAULT_PIN_ENV = PKCS11_DEFAULT_PIN_ENV
LABEL_PREFIX = "jwtmcp "
RETRY_AFTER = 5
"""Seconds a client is told to wait when the token cannot sign."""

T = TypeVar("T")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _need_library() -> None:
    if pkcs11 is None:
        raise KeyRingError(
            "the pkcs11 key backend needs python-pkcs11: pip install 'jwtmcp[pkcs11]'"
        )


def _text(settings: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    value = settings.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise KeyRingError(f"the pkcs11 key backend needs a non-empty {name!r} setting")
    return value


def read_pin_file(path: Path) -> str:
    """The PIN in ``path`` (one line). Raises :class:`KeyRingError` when the file is missing,
    unreadable, or readable by group or others (with the ``chmod`` that fixes it)."""
    try:
        st = path.stat()
        if st.st_mode & 0o077:
            raise KeyRingError(
                f"the PKCS#11 PIN file {path} is readable by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); fix it with: chmod 600 {path}"
            )
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyRingError(f"cannot read the PKCS#11 PIN file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise KeyRingError(f"the PKCS#11 PIN file {path} is not UTF-8 text") from None
    pin = text.rstrip("\r\n")
    if not pin:
        raise KeyRingError(f"the PKCS#11 PIN file {path} is empty")
    return pin


class Pkcs11Backend:
    """The ``pkcs11`` :class:`~jwtmcp.signers.KeyBackend`: one logged-in session per process,
    reopened after a session or device error."""

    name = NAME

    def __init__(self, settings: Mapping[str, Any]) -> None:
        _need_library()
        self.module = _text(settings, "module", required=True) or ""
        self.token_label = _text(settings, "token", required=True) or ""
        self.pin_file = _text(settings, "pin_file", required=False)
        self.pin_env = _text(settings, "pin_env", required=False)
        for name in ("module", "pin_file"):
            value = getattr(self, name)
            if value is not None and any(not c.isprintable() for c in value):
                raise KeyRingError(
                    f"the pkcs11 key backend's {name!r} must be a path without control "
                    f"characters: got {value!r}"
                )
        if self.pin_env is not None and not _ENV_NAME.fullmatch(self.pin_env):
            raise KeyRingError(
                "the pkcs11 key backend's 'pin_env' must be an environment variable name "
                f"(letters, digits, '_', not starting with a digit): got {self.pin_env!r}"
            )
        if self.pin_file is None and self.pin_env is None:
            self.pin_env = DEFAULT_PIN_ENV
        self._lock = threading.RLock()
        self._session: Any = None
        self._private: dict[str, Any] = {}

    def settings(self) -> dict[str, Any]:
        out: dict[str, Any] = {"module": self.module, "token": self.token_label}
        if self.pin_file is not None:
            out["pin_file"] = self.pin_file
        if self.pin_env is not None:
            out["pin_env"] = self.pin_env
        return out

    # -- the session ----------------------------------------------------------------------

    def _pin(self) -> str:
        if self.pin_file is not None:
            return read_pin_file(Path(self.pin_file))
        name = self.pin_env or DEFAULT_PIN_ENV
        pin = os.environ.get(name)
        if not pin:
            raise KeyRingError(
                f"the PKCS#11 user PIN is not set: put it in the environment variable {name} "
                "(or give the ring a PIN file, mode 0600)"
            )
        return pin

    def _open(self) -> Any:
        if self._session is not None:
            return self._session
        if not Path(self.module).is_file():
            raise KeyRingError(f"the PKCS#11 module {self.module} does not exist")
        pin = self._pin()
        try:
            library = pkcs11.lib(self.module)
            token = library.get_token(token_label=self.token_label)
        except pkcs11.NoSuchToken:
            raise KeyRingError(
                f"no PKCS#11 token labelled {self.token_label!r} in {self.module}"
            ) from None
        except PKCS11Error as exc:
            raise SignerUnavailable(
                f"the PKCS#11 module {self.module} failed: {type(exc).__name__}",
                retry_after=RETRY_AFTER,
            ) from None
        try:
            try:
                self._session = token.open(rw=True, user_pin=pin)
            except pkcs11.UserAlreadyLoggedIn:
                # PKCS#11 logs an application in once per token: another session of this
                # process did, and every new session shares that login.
                self._session = token.open(rw=True)
        except (pkcs11.PinIncorrect, pkcs11.PinInvalid, pkcs11.PinLenRange, pkcs11.PinLocked):
            raise KeyRingError(
                f"the PKCS#11 token {self.token_label!r} refused the user PIN"
            ) from None
        except PKCS11Error as exc:
            raise SignerUnavailable(
                f"cannot open a session on the PKCS#11 token {self.token_label!r}: "
                f"{type(exc).__name__}",
                retry_after=RETRY_AFTER,
            ) from None
        return self._session

    def _reset(self) -> None:
        session, self._session = self._session, None
        self._private.clear()
        if session is not None:
            with contextlib.suppress(PKCS11Error):  # the session may be gone already
                session.close()

    def _run(self, what: str, action: Callable[[Any], T]) -> T:
        """``action(session)`` under the lock; after a PKCS#11 failure, once more on a new
        session (the token may have been reset), then :class:`SignerUnavailable`."""
        with self._lock:
            for attempt in (1, 2):
                session = self._open()
                try:
                    return action(session)
                except KeyRingError:
                    raise
                except PKCS11Error as exc:
                    self._reset()
                    if attempt == 2:
                        raise SignerUnavailable(
                            f"the PKCS#11 token {self.token_label!r} could not {what}: "
                            f"{type(exc).__name__}",
                            retry_after=RETRY_AFTER,
                        ) from None
        raise AssertionError("unreachable")

    @staticmethod
    def _id(handle: str) -> bytes:
        try:
            raw = bytes.fromhex(handle)
        except ValueError:
            raw = b""
        if len(raw) != 16:
            raise KeyRingError(f"invalid PKCS#11 key handle {handle!r} (32 hex digits)")
        return raw

    def _find(self, session: Any, handle: str, object_class: Any) -> Any:
        try:
            return session.get_key(
                object_class=object_class, key_type=KeyType.RSA, id=self._id(handle)
            )
        except pkcs11.NoSuchKey:
            kind = "private" if object_class == ObjectClass.PRIVATE_KEY else "public"
            raise KeyRingError(
                f"the PKCS#11 token {self.token_label!r} holds no {kind} key {handle}"
            ) from None

    # -- the KeyBackend protocol ----------------------------------------------------------

    def create_key(self, bits: int) -> tuple[str, rsa.RSAPublicKey]:
        handle = secrets.token_hex(16)
        key_id = bytes.fromhex(handle)
        label = LABEL_PREFIX + handle

        def generate(session: Any) -> rsa.RSAPublicKey:
            public, _private = session.generate_keypair(
                KeyType.RSA,
                bits,
                id=key_id,
                label=label,
                store=True,
                public_template={
                    Attribute.TOKEN: True,
                    Attribute.VERIFY: True,
                    Attribute.ENCRYPT: False,
                    Attribute.WRAP: False,
                },
                private_template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.SIGN: True,
                    Attribute.DECRYPT: False,
                    Attribute.UNWRAP: False,
                    Attribute.DERIVE: False,
                },
            )
            return _public_key(public)

        return handle, self._run("generate a key", generate)

    def public_key(self, handle: str) -> rsa.RSAPublicKey:
        """The public half of ``handle``, after checking that its private half can never
        leave the token and is that public key's (a probe signature verifies): a ring.json
        pointed at another object (imported, extractable, or a mismatched pair) refuses to
        load instead of signing with it."""

        def read(session: Any) -> rsa.RSAPublicKey:
            public = _public_key(self._find(session, handle, ObjectClass.PUBLIC_KEY))
            private = self._find(session, handle, ObjectClass.PRIVATE_KEY)
            _check_custody(self.token_label, handle, private, public)
            return public

        return self._run("read a public key", read)

    def signer(self, handle: str) -> Pkcs11Signer:
        self._id(handle)
        return Pkcs11Signer(self, handle)

    def destroy_key(self, handle: str) -> None:
        def destroy(session: Any) -> None:
            for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                with contextlib.suppress(KeyRingError):  # already gone
                    self._find(session, handle, object_class).destroy()
            self._private.pop(handle, None)

        self._run("destroy a key", destroy)

    def sign(self, handle: str, data: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 SHA-256 (``CKM_SHA256_RSA_PKCS``) of ``data`` by key ``handle``."""

        def sign(session: Any) -> bytes:
            private = self._private.get(handle)
            if private is None:
                private = self._private[handle] = self._find(
                    session, handle, ObjectClass.PRIVATE_KEY
                )
            signature: bytes = private.sign(data, mechanism=Mechanism.SHA256_RSA_PKCS)
            return signature

        return self._run("sign", sign)


class Pkcs11Signer(HandleSigner):
    """A :class:`~jwtmcp.signers.Signer` for one key inside a PKCS#11 token."""

    __slots__ = ()

    def __init__(self, backend: Pkcs11Backend, handle: str) -> None:
        super().__init__(backend, handle, retry_after=RETRY_AFTER)


_PROBE = b"jwtmcp: does this private key belong to its public key?"


def _check_custody(label: str, handle: str, private: Any, public: rsa.RSAPublicKey) -> None:
    """Raise :class:`KeyRingError` unless ``private`` is sensitive, never extractable, and
    signs what ``public`` verifies."""
    where = f"the PKCS#11 token {label!r}: private key {handle}"
    try:
        flags = {
            name: private[attribute]
            for name, attribute in (
                ("CKA_SENSITIVE", Attribute.SENSITIVE),
                ("CKA_ALWAYS_SENSITIVE", Attribute.ALWAYS_SENSITIVE),
                ("CKA_NEVER_EXTRACTABLE", Attribute.NEVER_EXTRACTABLE),
            )
        }
        flags["not CKA_EXTRACTABLE"] = not private[Attribute.EXTRACTABLE]
    except (PKCS11Error, KeyError):
        raise KeyRingError(f"{where} does not say whether it can be extracted") from None
    missing = [name for name, value in flags.items() if value is not True]
    if missing:
        raise KeyRingError(
            f"{where} could be extracted from the token ({', '.join(missing)} false): "
            "jwtmcp signs only with keys generated inside the token (jwtmcp keys rotate)"
        )
    signature = private.sign(_PROBE, mechanism=Mechanism.SHA256_RSA_PKCS)
    try:
        public.verify(signature, _PROBE, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise KeyRingError(f"{where} does not match the public key of the same id") from None


def _public_key(public: Any) -> rsa.RSAPublicKey:
    modulus = int.from_bytes(public[Attribute.MODULUS], "big")
    exponent = int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big")
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()
