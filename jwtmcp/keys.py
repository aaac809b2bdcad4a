"""The key ring: RSA signing keys on disk, their life cycle, and the public JWKS.

Layout of a ring directory (mode 0700)::

    ring.json        state: every key's kid, state and timestamps (written atomically)
    <kid>.pem        one PKCS#8 PEM private key per key (mode 0600, written atomically)
    .lock            advisory lock taken by every change, so two rotations never interleave

Keys may also live in an HSM (PKCS#11) or a cloud KMS instead of PEM files
(:mod:`jwtmcp.signers`, docs/key-custody.md): then ``ring.json`` names the backend and the
key's handle inside it, ``backends`` holds the backends' settings (no secrets), and
``backend`` the one that makes new keys. The life cycle is the same for every backend.

Life cycle: ``next`` (published, not signing) -> ``active`` (signs; exactly one) ->
``retired`` (published, no longer signs) -> removed by ``prune`` once every token it can
have signed has expired (``retired_at + max_lifetime + leeway``). ``revoke`` removes a key
at once. Every change writes the new PEM first and the state file last, each by temp file
plus rename, so a crash at any point leaves the previous ring intact (an orphan PEM at
worst, which the next change removes).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .errors import KeyRingError
from .files import (
    FileSignature,
    acquire_lock,
    atomic_write,
    file_signature,
    release_lock,
    signature_is_settled,
)
from .signers import FILE_BACKEND, HandleSigner, KeyBackend, Signer, open_backend
from .tokens import DEFAULT_MAX_LIFETIME, SHORT_LIVED_MAX, Clock, SigningKey

log = logging.getLogger("jwtmcp.keys")

KeyState = Literal["next", "active", "retired"]
STATES: tuple[KeyState, ...] = ("next", "active", "retired")
STATE_FILE = "ring.json"
LOCK_FILE = ".lock"
FORMAT_VERSION = 1
DEFAULT_BITS = 2048
ALLOWED_BITS = (2048, 3072, 4096)
MIN_BITS = 2048
DEFAULT_LEEWAY = 60
"""Seconds added to a retired key's grace period, matching verifiers' clock-skew leeway."""


# --- JWK helpers -------------------------------------------------------------------------


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def rsa_public_jwk_members(public_key: rsa.RSAPublicKey) -> dict[str, str]:
    """The required members of an RSA public JWK: ``kty``, ``n``, ``e``."""
    numbers = public_key.public_numbers()
    return {"kty": "RSA", "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a JWK (RSA or EC or oct), base64url without padding."""
    kty = jwk.get("kty")
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "oct": ("k", "kty")}
    if kty not in required:
        raise KeyRingError(f"cannot take the thumbprint of a key of type {kty!r}")
    members = {name: jwk[name] for name in required[str(kty)]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def rsa_kid(public_key: rsa.RSAPublicKey) -> str:
    """The kid jwtmcp gives an RSA key: its RFC 7638 thumbprint."""
    return jwk_thumbprint(rsa_public_jwk_members(public_key))


# --- the ring value ----------------------------------------------------------------------


@dataclass(frozen=True)
class RingKey:
    """One key of the ring: a file key with its private key loaded, or a key inside a
    backend (``backend`` names it, ``handle`` is the key's name there, ``signer`` signs)."""

    kid: str
    state: KeyState
    created_at: float
    bits: int
    activated_at: float | None = None
    retired_at: float | None = None
    private_key: rsa.RSAPrivateKey = field(repr=False, compare=False, default=None)  # type: ignore[assignment]
    max_lifetime: int = DEFAULT_MAX_LIFETIME
    """The ring's maximum token lifetime (seconds); :class:`KeyRing` sets it on its keys."""
    backend: str = FILE_BACKEND
    """Where the private key lives: ``file`` (a PEM in the ring), ``pkcs11``, ``kms``..."""
    handle: str | None = None
    """The key's name inside its backend (None for a file key)."""
    signer: Signer | None = field(repr=False, compare=False, default=None)
    """What signs with a backend key (None for a file key: its private key signs)."""
    public: rsa.RSAPublicKey | None = field(repr=False, compare=False, default=None)
    """A backend key's public key, read from the backend."""

    @property
    def file_name(self) -> str:
        return f"{self.kid}.pem"

    @functools.cached_property
    def signing_key(self) -> SigningKey:
        """This key for :func:`~jwtmcp.mint`, carrying the ring's maximum lifetime (made once
        per ring snapshot, so minting costs no allocation here)."""
        return SigningKey(self.kid, self.private_key, self.max_lifetime, signer=self.signer)  # type: ignore[arg-type]

    def public_key(self) -> rsa.RSAPublicKey:
        """The RSA public key (from the private key of a file key, else from its backend)."""
        if self.public is not None:
            return self.public
        return self.private_key.public_key()

    def public_jwk(self) -> dict[str, str]:
        """The public JWK (``kty``, ``n``, ``e``, ``kid``, ``use``, ``alg``), no private part."""
        jwk = rsa_public_jwk_members(self.public_key())
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        return jwk

    def removable_at(self, max_lifetime: int, leeway: int) -> float | None:
        """When a retired key may be pruned: no token it signed can still be valid then."""
        if self.state != "retired" or self.retired_at is None:
            return None
        return self.retired_at + max_lifetime + leeway

    def _state_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "kid": self.kid,
            "state": self.state,
            "bits": self.bits,
            "created_at": self.created_at,
            "activated_at": self.activated_at,
            "retired_at": self.retired_at,
        }
        if self.backend != FILE_BACKEND:
            entry.update(backend=self.backend, handle=self.handle)
        return entry


@dataclass(frozen=True)
class KeyRing:
    """An immutable snapshot of a ring directory. Changes go through the module functions."""

    directory: Path
    keys: tuple[RingKey, ...]
    max_lifetime: int = DEFAULT_MAX_LIFETIME
    leeway: int = DEFAULT_LEEWAY
    revision: int = 0
    backends: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Settings of each key backend the ring uses besides files, by name (no secrets)."""
    backend: str = FILE_BACKEND
    """The backend new keys are made in (``keys init/rotate --backend``)."""

    def __post_init__(self) -> None:
        # Every key carries the ring's maximum, so a token minted with
        # ``ring.active.signing_key`` can never outlive what the ring's verifiers accept.
        if any(k.max_lifetime != self.max_lifetime for k in self.keys):
            keys = tuple(replace(k, max_lifetime=self.max_lifetime) for k in self.keys)
            object.__setattr__(self, "keys", keys)

    @property
    def signing_key(self) -> SigningKey:
        """The active key for :func:`~jwtmcp.mint`, carrying the ring's maximum lifetime."""
        return self.active.signing_key

    @property
    def active(self) -> RingKey:
        """The one key in state ``active``, the key that signs new tokens.

        Its ``signing_key`` is what :func:`jwtmcp.mint` takes. Raises :class:`KeyRingError`
        if the ring has no active key (a ring loaded by :func:`load_ring` always has one).
        """
        for key in self.keys:
            if key.state == "active":
                return key
        raise KeyRingError(f"the key ring in {self.directory} has no active key")

    @property
    def next(self) -> RingKey | None:
        return next((k for k in self.keys if k.state == "next"), None)

    def get(self, kid: str) -> RingKey | None:
        return next((k for k in self.keys if k.kid == kid), None)

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public JWKS: every published key (next, active, retired), public parts only."""
        order = {"active": 0, "next": 1, "retired": 2}
        keys = sorted(self.keys, key=lambda k: (order[k.state], -k.created_at))
        return {"keys": [k.public_jwk() for k in keys]}

    def prunable(self, now: float) -> tuple[RingKey, ...]:
        """Retired keys whose grace period (retired_at + max_lifetime + leeway) has passed."""
        out = []
        for key in self.keys:
            until = key.removable_at(self.max_lifetime, self.leeway)
            if until is not None and now >= until:
                out.append(key)
        return tuple(out)

    def _state_document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "version": FORMAT_VERSION,
            "revision": self.revision,
            "max_lifetime": self.max_lifetime,
            "leeway": self.leeway,
        }
        # A ring of files only writes exactly what it always wrote.
        if self.backend != FILE_BACKEND:
            doc["backend"] = self.backend
        if self.backends:
            doc["backends"] = {name: dict(v) for name, v in self.backends.items()}
        doc["keys"] = [k._state_entry() for k in self.keys]
        return doc


# --- files -------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(directory: Path, timeout: float = 30.0) -> Iterator[None]:
    """Hold the ring's exclusive lock so concurrent changes run one after another."""
    try:
        fd = acquire_lock(directory / LOCK_FILE, timeout=timeout)
    except (FileNotFoundError, NotADirectoryError):
        raise KeyRingError(
            f"no key ring at {directory}; create one with: jwtmcp keys init --keys {directory}"
        ) from None
    except TimeoutError:
        raise KeyRingError(f"the key ring in {directory} is locked by another change") from None
    except OSError as exc:
        raise KeyRingError(f"cannot lock the key ring in {directory}: {exc.strerror}") from None
    try:
        yield
    finally:
        release_lock(fd)


def _check_private_file(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise KeyRingError(f"cannot read key file {path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        target = path.stat()
        mode = target.st_mode
    else:
        mode = st.st_mode
    if not stat.S_ISREG(mode):
        raise KeyRingError(f"key file {path} is not a regular file")
    if mode & 0o077:
        raise KeyRingError(
            f"key file {path} is readable by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"fix it with: chmod 600 {path}"
        )


def _load_private_key(path: Path) -> rsa.RSAPrivateKey:
    _check_private_file(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyRingError(f"cannot read key file {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyRingError(f"key file {path} is not a valid unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyRingError(f"key file {path} does not hold an RSA key")
    if key.key_size < MIN_BITS:
        raise KeyRingError(f"key file {path} holds a {key.key_size}-bit key; at least 2048 needed")
    return key


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _parse_state(directory: Path, raw: bytes) -> dict[str, Any]:
    where = directory / STATE_FILE
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise KeyRingError(
            f"the key ring state file {where} is corrupted (not valid JSON); "
            "restore it from a backup or start a new ring with 'jwtmcp keys init'"
        ) from None
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise KeyRingError(f"the key ring state file {where} has an unknown format")
    keys = doc.get("keys")
    if not isinstance(keys, list):
        raise KeyRingError(f"the key ring state file {where} lists no keys")
    for entry in keys:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("kid"), str)
            or not _KID_PATTERN.fullmatch(entry["kid"])
            or entry.get("state") not in STATES
            or not _is_time(entry.get("created_at"))
            or not _is_time(entry.get("activated_at"), optional=True)
            or not _is_time(entry.get("retired_at"), optional=(entry.get("state") != "retired"))
        ):
            raise KeyRingError(f"the key ring state file {where} has an invalid key entry")
    backends = doc.get("backends", {})
    if not isinstance(backends, dict) or not all(
        isinstance(name, str) and name != FILE_BACKEND and isinstance(v, dict)
        for name, v in backends.items()
    ):
        raise KeyRingError(f"the key ring state file {where} has invalid backend settings")
    new_keys = doc.get("backend", FILE_BACKEND)
    if new_keys != FILE_BACKEND and new_keys not in backends:
        raise KeyRingError(f"the key ring state file {where} names an unknown key backend")
    for entry in keys:
        backend = entry.get("backend", FILE_BACKEND)
        if backend != FILE_BACKEND and (
            backend not in backends
            or not isinstance(entry.get("handle"), str)
            or not entry["handle"]
        ):
            raise KeyRingError(
                f"the key ring state file {where} has a key with an unknown backend or no handle"
            )
    if len({e["kid"] for e in keys}) != len(keys):
        raise KeyRingError(f"the key ring state file {where} lists a key twice")
    actives = sum(1 for e in keys if e["state"] == "active")
    if actives != 1:
        raise KeyRingError(
            f"the key ring state file {where} has {actives} active keys; exactly one is required"
        )
    if sum(1 for e in keys if e["state"] == "next") > 1:
        raise KeyRingError(f"the key ring state file {where} has more than one next key")
    for name in ("max_lifetime", "leeway", "revision"):
        value = doc.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise KeyRingError(f"the key ring state file {where} has an invalid {name}")
    return doc


_KID_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
"""A kid jwtmcp writes: an unpadded base64url SHA-256 thumbprint (also a safe file name)."""


def _is_time(value: object, *, optional: bool = False) -> bool:
    if value is None:
        return optional
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


class _KeyFileVanished(KeyRingError):
    """A key file named by the state file is missing (perhaps pruned a moment ago)."""


_key_cache: dict[tuple[str, str], rsa.RSAPrivateKey] = {}
_key_cache_lock = threading.Lock()
_public_cache: dict[tuple[int, str], tuple[rsa.RSAPublicKey, str]] = {}
"""Public keys read from backends with their kids (RFC 7638 thumbprints), by (id of the
backend object, handle): a key's public half never changes, so a reload of ``ring.json``
asks the backend only for new keys, and still checks every entry's kid against it."""


class _PublicKeyNotCached(KeyRingError):
    """Loading the ring would ask a backend for a public key (a ``cached_only`` load)."""


def _backend_key(
    backends: Mapping[str, Mapping[str, Any]], entry: Mapping[str, Any], cached_only: bool
) -> RingKey:
    """The :class:`RingKey` of a state entry whose private key lives in a backend.
    ``cached_only``: raise :class:`_PublicKeyNotCached` rather than call the backend."""
    name, handle, kid = entry["backend"], entry["handle"], entry["kid"]
    backend = open_backend(name, backends[name])
    cache_key = (id(backend), handle)
    with _key_cache_lock:
        cached = _public_cache.get(cache_key)
    if cached is None:
        if cached_only:
            raise _PublicKeyNotCached(f"the public key of {name} key {handle} is not read yet")
        public = backend.public_key(handle)
        if public.key_size < MIN_BITS:
            raise KeyRingError(f"{name} key {handle} has {public.key_size} bits; 2048 needed")
        cached = (public, rsa_kid(public))
        with _key_cache_lock:
            _public_cache[cache_key] = cached
    public, actual_kid = cached
    # Checked on every load, cached or not: a ring.json whose handles were swapped or
    # edited must be refused by a running process exactly as by a fresh one.
    if actual_kid != kid:
        raise KeyRingError(f"{name} key {handle} does not match its kid {kid}")
    return RingKey(
        kid=kid,
        state=entry["state"],
        created_at=float(entry["created_at"]),
        bits=public.key_size,
        activated_at=entry.get("activated_at"),
        retired_at=entry.get("retired_at"),
        backend=name,
        handle=handle,
        signer=_backend_signer(backend, handle, public),
        public=public,
    )


def _backend_signer(backend: KeyBackend, handle: str, public: rsa.RSAPublicKey) -> Signer:
    """``backend.signer(handle)``, told the public key this process already holds for it
    (read and matched to the kid), so its signatures are checked without another read."""
    signer = backend.signer(handle)
    if isinstance(signer, HandleSigner):
        signer.use_public_key(public)
    return signer


def _read_ring(
    directory: Path, cached_only: bool = False, left_out: list[str] | None = None
) -> KeyRing:
    state_path = directory / STATE_FILE
    try:
        raw = state_path.read_bytes()
    except FileNotFoundError:
        if not directory.exists():
            raise KeyRingError(
                f"no key ring at {directory}; create one with: jwtmcp keys init --keys {directory}"
            ) from None
        raise KeyRingError(
            f"{directory} holds no key ring ({STATE_FILE} is missing); "
            f"create one with: jwtmcp keys init --keys {directory}"
        ) from None
    except NotADirectoryError:
        raise KeyRingError(f"{directory} is not a directory") from None
    except OSError as exc:
        raise KeyRingError(f"cannot read {state_path}: {exc.strerror}") from None
    doc = _parse_state(directory, raw)
    backends = doc.get("backends", {})
    keys = []
    for entry in doc["keys"]:
        if entry.get("backend", FILE_BACKEND) != FILE_BACKEND:
            try:
                keys.append(_backend_key(backends, entry, cached_only))
            except _PublicKeyNotCached:
                # A next key never signs: the ring may be served without it for now.
                if left_out is None or entry["state"] != "next":
                    raise
                left_out.append(entry["kid"])
            continue
        kid = entry["kid"]
        path = directory / f"{kid}.pem"
        cache_key = (str(directory.resolve()), kid)
        with _key_cache_lock:
            private = _key_cache.get(cache_key)
        if private is None or not path.exists():
            try:
                private = _load_private_key(path)
            except FileNotFoundError:
                raise _KeyFileVanished(
                    f"key file {path} listed in {STATE_FILE} is missing; restore it from a "
                    f"backup, or delete its entry from {directory / STATE_FILE}"
                ) from None
            if rsa_kid(private.public_key()) != kid:
                raise KeyRingError(f"key file {path} does not match its kid")
            with _key_cache_lock:
                _key_cache[cache_key] = private
        else:
            _check_private_file(path)
        keys.append(
            RingKey(
                kid=kid,
                state=entry["state"],
                created_at=float(entry["created_at"]),
                bits=private.key_size,
                activated_at=entry.get("activated_at"),
                retired_at=entry.get("retired_at"),
                private_key=private,
            )
        )
    return KeyRing(
        directory=directory,
        keys=tuple(keys),
        max_lifetime=doc.get("max_lifetime", DEFAULT_MAX_LIFETIME) or DEFAULT_MAX_LIFETIME,
        leeway=doc.get("leeway", DEFAULT_LEEWAY),
        revision=doc.get("revision", 0),
        backends=backends,
        backend=doc.get("backend", FILE_BACKEND),
    )


def load_ring(directory: str | os.PathLike[str]) -> KeyRing:
    """Load the ring in ``directory`` (str or path); return a frozen :class:`KeyRing`.

    Raises :class:`KeyRingError` with a one-line explanation for a missing ring, a corrupt
    state file, a missing or foreign key file, or a key file readable by group or others.
    Files the state file does not name (a README, an orphan from a crash) are ignored.
    """
    return _load_ring(Path(directory))


def _load_ring(
    path: Path, cached_only: bool = False, left_out: list[str] | None = None
) -> KeyRing:
    """:func:`load_ring`; ``cached_only``: raise :class:`_PublicKeyNotCached` instead of
    asking a backend for a public key this process has not read yet, except that with a
    ``left_out`` list a ``next`` key whose public key is not read yet is left out of the
    ring and its kid appended to the list (every other ring rule still holds)."""
    for attempt in range(3):
        if left_out is not None:
            left_out.clear()
        try:
            return _read_ring(path, cached_only, left_out)
        except _KeyFileVanished:
            # A concurrent prune/revoke may have removed a key file between reading the
            # state and the PEM; the newer state no longer names it, so read again.
            if attempt == 2:
                raise
            time.sleep(0.02)
    raise AssertionError("unreachable")


def _write_ring(
    ring: KeyRing, new_keys: tuple[RingKey, ...] = (), removed: tuple[RingKey, ...] = ()
) -> KeyRing:
    """Write new PEMs, then the state file; then remove PEMs no key names any more, and
    destroy the ``removed`` keys that live in a backend (the state no longer names them)."""
    used = {k.backend for k in ring.keys} | {ring.backend}
    ring = replace(
        ring,
        revision=ring.revision + 1,
        backends={name: v for name, v in ring.backends.items() if name in used},
    )
    for key in new_keys:
        if key.backend == FILE_BACKEND:
            atomic_write(ring.directory / key.file_name, _pem(key.private_key))
    body = json.dumps(ring._state_document(), indent=2).encode() + b"\n"
    atomic_write(ring.directory / STATE_FILE, body)
    _remove_orphans(ring)
    for key in removed:
        if key.backend != FILE_BACKEND and key.handle is not None:
            try:
                open_backend(key.backend, ring.backends[key.backend]).destroy_key(key.handle)
            except KeyRingError as exc:
                # The key is out of the ring and the JWKS already; only its copy stays.
                log.warning(
                    "jwtmcp: key %s left the ring, but its %s key %s was not deleted: %s",
                    key.kid,
                    key.backend,
                    key.handle,
                    exc.message,
                )
    return ring


def _remove_orphans(ring: KeyRing) -> None:
    named = {k.file_name for k in ring.keys if k.backend == FILE_BACKEND}
    for entry in ring.directory.iterdir():
        name = entry.name
        orphan_pem = (
            name.endswith(".pem")
            and name not in named
            and _KID_PATTERN.fullmatch(name[: -len(".pem")]) is not None
        )
        stale_tmp = name.startswith(".") and name.endswith(".tmp")
        if orphan_pem or stale_tmp:
            with contextlib.suppress(OSError):
                entry.unlink()


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < MIN_BITS:
        raise KeyRingError(f"RSA keys must be at least {MIN_BITS} bits, not {bits}")
    if bits not in ALLOWED_BITS:
        raise KeyRingError(f"RSA key size must be one of 2048, 3072 or 4096, not {bits}")
    return bits


def generate_key(
    state: KeyState, now: float, bits: int = DEFAULT_BITS, backend: KeyBackend | None = None
) -> RingKey:
    """A new RSA key in ``state``, created at ``now``: in memory (a file key, written by the
    ring), or generated inside ``backend`` (never leaving it). Raises :class:`KeyRingError`
    (or :class:`SignerUnavailable`) when the backend cannot make it."""
    _check_bits(bits)
    if backend is not None:
        handle, public = backend.create_key(bits)
        with _key_cache_lock:  # this process knows the public half: no reload asks again
            _public_cache[(id(backend), handle)] = (public, rsa_kid(public))
        return RingKey(
            kid=rsa_kid(public),
            state=state,
            created_at=now,
            bits=public.key_size,
            activated_at=now if state == "active" else None,
            backend=backend.name,
            handle=handle,
            signer=_backend_signer(backend, handle, public),
            public=public,
        )
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return RingKey(
        kid=rsa_kid(private.public_key()),
        state=state,
        created_at=now,
        bits=bits,
        activated_at=now if state == "active" else None,
        private_key=private,
    )


def _ensure_directory(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise KeyRingError(f"{directory} exists and is not a directory") from None
    except OSError as exc:
        raise KeyRingError(f"cannot create {directory}: {exc.strerror}") from None
    if not directory.is_dir():
        raise KeyRingError(f"{directory} exists and is not a directory")
    with contextlib.suppress(OSError):
        os.chmod(directory, 0o700)


def init_ring(
    directory: str | os.PathLike[str],
    *,
    bits: int = DEFAULT_BITS,
    max_lifetime: int = DEFAULT_MAX_LIFETIME,
    leeway: int = DEFAULT_LEEWAY,
    clock: Clock = time.time,
    backend: str = FILE_BACKEND,
    backend_settings: Mapping[str, Any] | None = None,
) -> KeyRing:
    """Create a ring with one ``active`` and one ``next`` key in ``directory``; return it.

    ``bits`` (2048, 3072 or 4096) is the RSA key size; ``max_lifetime`` (seconds, default
    3600) caps every token minted from the ring; ``leeway`` (seconds, default 60) is added
    to a retired key's grace; ``clock`` returns epoch seconds. ``backend`` (``file``, the
    default, ``pkcs11``, ``kms`` or a plugged-in one) is where the keys are generated and
    stay, configured by ``backend_settings`` (docs/key-custody.md). Creates the directory
    (mode 0700) if needed. Raises :class:`KeyRingError` if a ring already exists there, for
    a bad size, lifetime, leeway or backend setting, or when the backend cannot make keys.
    """
    path = Path(directory)
    _check_bits(bits)
    if isinstance(max_lifetime, bool) or not isinstance(max_lifetime, int) or max_lifetime <= 0:
        raise KeyRingError(f"max lifetime must be a positive number of seconds, not {max_lifetime}")
    if max_lifetime > SHORT_LIVED_MAX:
        raise KeyRingError(
            f"max lifetime {max_lifetime} s is above {SHORT_LIVED_MAX} s: a longer-lived token "
            "is safe only with the revocation list; keep the ring short-lived and run "
            "'jwtmcp revoke enable --max-ttl' then 'jwtmcp mint --ttl' (see docs/revocation.md)"
        )
    if isinstance(leeway, bool) or not isinstance(leeway, int) or leeway < 0:
        raise KeyRingError(f"leeway must be zero or a positive number of seconds, not {leeway}")
    _ensure_directory(path)
    with _locked(path):
        if (path / STATE_FILE).exists():
            raise KeyRingError(f"a key ring already exists in {path}; use 'jwtmcp keys rotate'")
        maker, backends = _backend_for_new_keys(backend, backend_settings, {})
        now = clock()
        new = (
            generate_key("active", now, bits, maker),
            generate_key("next", now, bits, maker),
        )
        ring = KeyRing(
            path,
            new,
            max_lifetime=max_lifetime,
            leeway=leeway,
            backends=backends,
            backend=backend,
        )
        return _write_ring(ring, new)


def _backend_for_new_keys(
    name: str,
    settings: Mapping[str, Any] | None,
    backends: Mapping[str, Mapping[str, Any]],
) -> tuple[KeyBackend | None, dict[str, Mapping[str, Any]]]:
    """The backend that makes new keys (None: files) and the ring's backend settings with
    its settings in them."""
    out = dict(backends)
    if name == FILE_BACKEND:
        return None, out
    if settings is None:
        settings = backends.get(name, {})
    backend = open_backend(name, settings)
    out[name] = backend.settings()
    return backend, out


def _maker(ring: KeyRing) -> KeyBackend | None:
    if ring.backend == FILE_BACKEND:
        return None
    return open_backend(ring.backend, ring.backends[ring.backend])


def rotate_ring(
    directory: str | os.PathLike[str],
    *,
    bits: int | None = None,
    clock: Clock = time.time,
    backend: str | None = None,
    backend_settings: Mapping[str, Any] | None = None,
) -> KeyRing:
    """Promote ``next`` to ``active``, retire the old ``active``, make a new ``next``.

    Verifiers already hold the new active key (it was published as ``next``), so tokens it
    signs verify without a JWKS refetch. ``bits`` sets the new next key's size (default: the
    size of the current active key). ``backend`` (with ``backend_settings``, or the ring's
    settings of that backend) moves the making of new keys there from now on: the new
    ``next`` key is made in it and signs from the rotation after this one. Returns the new
    ring; raises :class:`KeyRingError` as :func:`load_ring` does, for a bad size, or when
    the backend cannot make a key.
    """
    path = Path(directory)
    with _locked(path):
        ring = load_ring(path)
        if backend is not None:
            _, backends = _backend_for_new_keys(backend, backend_settings, ring.backends)
            ring = replace(ring, backend=backend, backends=backends)
        maker = _maker(ring)
        now = clock()
        old_active = ring.active
        size = _check_bits(bits if bits is not None else max(old_active.bits, DEFAULT_BITS))
        promoted = ring.next or generate_key("next", now, size, maker)
        created = [] if ring.next else [promoted]
        new_next = generate_key("next", now, size, maker)
        created.append(new_next)
        keys = []
        for key in ring.keys:
            if key.kid == old_active.kid:
                keys.append(replace(key, state="retired", retired_at=now))
            elif key.kid == promoted.kid:
                continue
            else:
                keys.append(key)
        keys.insert(0, replace(promoted, state="active", activated_at=now))
        keys.append(new_next)
        return _write_ring(replace(ring, keys=tuple(keys)), tuple(created))


def revoke_key(directory: str | os.PathLike[str], kid: str, *, clock: Clock = time.time) -> KeyRing:
    """Remove ``kid`` from the ring (and so from the JWKS) at once.

    Revoking the active key promotes ``next`` to active; revoking the ``next`` key (or the
    one just promoted) makes a new ``next``, so the ring always has one of each. Returns the
    new ring; raises :class:`KeyRingError` for a kid not in the ring, or as
    :func:`load_ring` does.
    """
    path = Path(directory)
    with _locked(path):
        ring = load_ring(path)
        target = ring.get(kid)
        if target is None:
            raise KeyRingError(f"no key with kid {kid!r} in the ring at {path}")
        now = clock()
        maker = _maker(ring)
        keys = [k for k in ring.keys if k.kid != kid]
        created: list[RingKey] = []
        size = max(target.bits, DEFAULT_BITS)
        if target.state == "active":
            nxt = next((k for k in keys if k.state == "next"), None)
            if nxt is None:
                nxt = generate_key("next", now, size, maker)
                created.append(nxt)
                keys.append(nxt)
            keys = [replace(k, state="active", activated_at=now) if k is nxt else k for k in keys]
        if not any(k.state == "next" for k in keys):
            fresh = generate_key("next", now, size, maker)
            created.append(fresh)
            keys.append(fresh)
        return _write_ring(replace(ring, keys=tuple(keys)), tuple(created), (target,))


def prune_ring(
    directory: str | os.PathLike[str], *, clock: Clock = time.time
) -> tuple[KeyRing, tuple[str, ...]]:
    """Remove retired keys whose grace period has passed; return (the ring, removed kids).

    A retired key goes once ``clock()`` (epoch seconds) >= retired_at + max_lifetime +
    leeway, when no token it signed can still be valid. Raises :class:`KeyRingError` as
    :func:`load_ring` does.
    """
    path = Path(directory)
    with _locked(path):
        ring = load_ring(path)
        gone = {k.kid for k in ring.prunable(clock())}
        if not gone:
            return ring, ()
        kept = tuple(k for k in ring.keys if k.kid not in gone)
        removed = tuple(k for k in ring.keys if k.kid in gone)
        return _write_ring(replace(ring, keys=kept), (), removed), tuple(sorted(gone))


def ensure_ring(
    directory: str | os.PathLike[str], *, clock: Clock = time.time
) -> tuple[KeyRing, bool]:
    """Load the ring, creating it first if the directory holds none. Returns (ring, created)."""
    path = Path(directory)
    if not (path / STATE_FILE).exists():
        try:
            return init_ring(path, clock=clock), True
        except KeyRingError:
            if not (path / STATE_FILE).exists():
                raise
            # another process created it at the same moment
    return load_ring(path), False


def _unexpected(exc: Exception) -> str:
    """One line for an exception that is not a :class:`KeyRingError`: its type and text,
    control and non-ASCII characters escaped, at most 300 characters of text."""
    text = str(exc).encode("unicode_escape").decode("ascii")[:300]
    return f"the key ring could not be loaded: unexpected {type(exc).__name__}: {text}"


class RingWatcher:
    """Serves the current ring to a long-running process and notices changes on disk.

    ``current()`` costs one ``stat`` of the state file at most every ``interval`` seconds;
    files are re-read only when the state file changed (rotate, revoke, prune by any
    process), and at every check while its last change is under 2 s old (a second write in
    the same filesystem timestamp tick can leave the stat unchanged).
    If a reload fails the last good ring keeps serving, ``last_error`` says why, and
    ``on_error`` (if given) is called with that reason once per new reason: one line, also
    for an exception that is not a :class:`KeyRingError` (a backend's or a plugin's bug:
    its type and escaped text); ``current()`` itself never raises after construction.

    ``background=True`` (the issuer): a reload never asks a backend (an HSM, a KMS) for a
    public key on the calling thread, so ``current()`` never blocks an event loop:

    - the new ring is built in place from the public keys this process has already read;
      if only ``next`` keys (which never sign) are new, it is served at once without them,
      so a revocation, a removal or the promotion of a known key takes effect at the next
      check even while the backend is slow or failing; the left-out keys join the ring
      (and the JWKS) as soon as a daemon thread has read them;
    - if a key that signs or verifies (``active``, ``retired``) is new, the last ring keeps
      serving until the thread has read it;
    - a thread that fails sets ``last_error`` and is tried again at most every
      :data:`BACKGROUND_RETRY` seconds (sooner if ``ring.json`` changes), one at a time.

    File keys and backend keys already read always reload in place.
    """

    BACKGROUND_RETRY: float = 5.0
    """Seconds (of ``monotonic``) between two background reads after one failed."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        interval: float = 0.25,
        monotonic: Clock = time.monotonic,
        on_error: Callable[[str], None] | None = None,
        background: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self._on_error = on_error
        self.background = background
        self._reloading = False
        self._generation = 0  # bumped by every ring served, so a slow thread never goes back
        self._left_out: tuple[str, ...] = ()  # next keys the served ring still lacks
        self._retry_at = 0.0
        self._failed: FileSignature | None = None  # what the last failed thread read
        self._wanted: FileSignature | None = None  # what the running thread reads
        self.interval = interval
        self._monotonic = monotonic
        self._lock = threading.Lock()
        # The signature first, then the read: a change landing in between shows up as a new
        # signature at the next check instead of hiding behind the one taken after it.
        self._signature = self._stat()
        self._settled = self._signature is not None and signature_is_settled(self._signature)
        self._ring = load_ring(self.directory)
        self._checked_at = monotonic()
        self.last_error: str | None = None

    def _stat(self) -> FileSignature | None:
        return file_signature(self.directory / STATE_FILE)

    def current(self) -> KeyRing:
        now = self._monotonic()
        if now - self._checked_at < self.interval:
            return self._ring
        with self._lock:
            if now - self._checked_at < self.interval:
                return self._ring
            self._checked_at = now
            signature = self._stat()
            changed = signature is not None and (
                signature != self._signature or not self._settled
            )
            if changed and signature is not None:
                if not self.background:
                    self._reload(signature)
                else:
                    self._reload_from_cache(signature, now)
            elif self._left_out and self._signature is not None:
                self._start_thread(self._signature, now)  # retry the left-out keys
            return self._ring

    def _reload(self, signature: FileSignature) -> None:
        self._apply(self._load(), signature)

    def _reload_from_cache(self, signature: FileSignature, now: float) -> None:
        """Background mode, under the lock: serve what the known public keys allow now,
        and start the thread for the keys still to read."""
        if self._reloading and self._wanted == signature:
            return  # the thread is reading exactly this file
        left_out: list[str] = []
        loaded = self._load(cached_only=True, left_out=left_out)
        if isinstance(loaded, _PublicKeyNotCached):
            self._start_thread(signature, now)  # a key that signs is new: keep the last ring
            return
        self._apply(loaded, signature, tuple(left_out))
        if left_out:
            self._start_thread(signature, now)

    def _start_thread(self, signature: FileSignature, now: float) -> None:
        if self._reloading or (now < self._retry_at and signature == self._failed):
            return
        thread = threading.Thread(
            target=self._reload_in_thread,
            args=(signature, self._generation),
            name="jwtmcp-ring-reload",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError as exc:  # no thread to be had now: say so, try again later
            self._failed, self._retry_at = signature, now + self.BACKGROUND_RETRY
            self._apply(KeyRingError(_unexpected(exc)), signature)
            return
        self._reloading = True
        self._wanted = signature

    def _load(
        self, cached_only: bool = False, left_out: list[str] | None = None
    ) -> KeyRing | KeyRingError:
        try:
            return _load_ring(self.directory, cached_only, left_out)
        except KeyRingError as exc:
            return exc
        except Exception as exc:  # a backend's (or a plugin's) bug must not stop serving
            return KeyRingError(_unexpected(exc))

    def _apply(
        self,
        loaded: KeyRing | KeyRingError,
        signature: FileSignature,
        left_out: tuple[str, ...] = (),
    ) -> None:
        if isinstance(loaded, KeyRingError):
            if loaded.message != self.last_error and self._on_error is not None:
                self._on_error(loaded.message)
            self.last_error = loaded.message
            return
        self._ring = loaded
        self._signature = signature
        self._settled = signature_is_settled(signature)
        self._left_out = left_out
        self._generation += 1
        if not left_out:  # a ring still lacking keys keeps the thread's error showing
            self.last_error = None

    def _reload_in_thread(self, signature: FileSignature, generation: int) -> None:
        # _load turns every Exception into a reason; this one stands only for the rest
        # (a KeyboardInterrupt, SystemExit), which still leave the watcher retrying.
        loaded: KeyRing | KeyRingError = KeyRingError(
            "reading the key ring's public keys was interrupted"
        )
        try:
            loaded = self._load()  # outside the lock: current() keeps serving meanwhile
        finally:
            with self._lock:
                self._reloading = False
                if self._generation != generation:
                    # A newer ring was served meanwhile: never go back to this one (nor
                    # report its failure); the next check rebuilds the current file from
                    # the public keys read by now.
                    self._settled = False
                elif isinstance(loaded, KeyRingError):
                    self._failed = signature
                    self._retry_at = self._monotonic() + self.BACKGROUND_RETRY
                    self._apply(loaded, signature)
                else:
                    self._apply(loaded, signature)
