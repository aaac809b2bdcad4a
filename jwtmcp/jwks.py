"""The key cache: RSA public keys from a JWKS URL, a JWKS file or a PEM, parsed once.

A verifier asks one question of its key source, on every request: *which public key does
this kid name?* :meth:`KeySource.find` answers it with a dict lookup and one time compare
while the key set is fresh. Everything else — fetching, refreshing, surviving outages —
happens around that lookup:

* **Fetching** runs on one background worker thread with a synchronous ``httpx2`` client.
  At most one fetch is in flight; every request that must wait for it (sync or async)
  waits on the same :class:`concurrent.futures.Future` (sync code with ``.result(timeout)``,
  async code with ``asyncio.wrap_future``), so the event loop is never blocked.
* **Freshness** follows HTTP caching (RFC 9111 4.2, as a private cache): ``max-age``, else
  ``Expires`` minus ``Date``, else ``default_max_age``, less the response's age on arrival
  (``Age`` plus the request's round trip, or ``Date``'s apparent age), then clamped to
  ``[min_max_age, max_max_age]`` (see :func:`fresh_for`). A lookup after ``refresh_ahead``
  (80 %) of that time starts a refresh in the background and answers at once; no timers,
  all time comes from the injected clocks.
* **Clocks**: the age of a key set is measured on a monotonic clock (``monotonic``,
  default :func:`time.monotonic`), so a wall clock that steps (a bad NTP source, a VM
  resumed) neither keeps a revoked key past its max-age nor expires a good set early. The
  wall clock (``clock``) is used only where an absolute time is needed: the response's
  ``Date`` (RFC 9111's apparent age, which a fast clock can only shorten) and the cache file.
* **Unknown kids** cause a refetch, at most one fetch per ``refetch_cooldown`` seconds
  (all fetches share this budget, so a flood of random kids costs one fetch per cooldown;
  the budget is never longer than the held document's refresh-ahead point, 80 % of its
  max-age, so a revocation list with a short max-age is refreshed within it);
  a kid still missing after a fetch is remembered for ``unknown_kid_ttl`` seconds.
* **Outages**: a failed fetch never drops keys. The last good set keeps serving for
  ``stale_window`` seconds past its max-age, with retries in the background; after that,
  lookups fail closed with :class:`~jwtmcp.errors.KeysUnavailable`. After a failed fetch
  the next one may start ``retry_backoff`` (1 s) later, doubling with each failure in a
  row up to ``refetch_cooldown``, so an issuer that comes up late is used within seconds
  while one that stays down costs one fetch per cooldown. Still one fetch at a time.
* **Forks**: a cache built before ``os.fork()`` (gunicorn ``--preload``, multiprocessing)
  fetches in the child: an at-fork hook gives it a new worker, lock and HTTP client, and
  forgets a fetch that was in flight in the parent.
* **Restarts**: with ``cache_file`` the last good JWKS is written atomically (temp file and
  rename, mode 0600) after each successful fetch, and read back at start, so a server
  restarting while the issuer is down still verifies. As OpenSSH treats ``authorized_keys``,
  the file is refused (with an error in the log) unless only this user or root could have
  written it: the file and its directory owned by this user or root and not writable by
  group or others (a sticky directory such as /tmp is fine), and a regular file.
* **Other documents**: the machinery above is :class:`CachedDocument`; :class:`JwksCache`
  is the key set on top of it, and :class:`jwtmcp.revocation.RevocationCache` the issuer's
  signed revocation list (the same freshness, refresh, stale window, backoff and cache file).
* **Hostile input**: the response body is read streaming and abandoned past
  ``max_body_bytes``; sets with more than ``max_keys`` keys are refused; keys jwtmcp cannot
  use (not RSA, ``use`` other than ``sig``, under 2048 or over 8192 bits, no kid, an
  ``alg`` outside the allow-list, duplicate kids) are skipped without failing the set. A set
  left with no usable key counts as a failed fetch, so a broken issuer cannot wipe the cache.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import ipaddress
import json
import logging
import math
import os
import re
import stat
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm as _CryptoUnsupported
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .errors import ConfigError, KeysUnavailable, TokenError, UnknownKid
from .files import atomic_write
from .numeric import parse_whole_number
from .strict_json import DuplicateMember, unique_members
from .tokens import Clock

if TYPE_CHECKING:
    import httpx2

log = logging.getLogger("jwtmcp.jwks")

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
"""Larger keys are refused: verifying with a 16384-bit key costs ~60x a 2048-bit one."""
MAX_KID_LENGTH = 256
CACHE_FILE_VERSION = 1
T = TypeVar("T")
V = TypeVar("V")

# --- algorithms --------------------------------------------------------------------------


def _hash(bits: str) -> hashes.HashAlgorithm:
    if bits == "256":
        return hashes.SHA256()
    return hashes.SHA384() if bits == "384" else hashes.SHA512()


def _signature_scheme(alg: str) -> tuple[padding.AsymmetricPadding, hashes.HashAlgorithm]:
    digest = _hash(alg[2:])
    if alg.startswith("RS"):
        return padding.PKCS1v15(), digest
    # RFC 7518 3.5: MGF1 with the same hash, salt as long as the hash output.
    return padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size), digest


SIGNATURE_SCHEMES: Mapping[str, tuple[padding.AsymmetricPadding, hashes.HashAlgorithm]] = {
    alg: _signature_scheme(alg) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
}
"""Every JWS algorithm the verifier can be configured with: RSA only, so the key type is
bound to the algorithm family by construction (``none`` and ``HS*`` can never be enabled)."""


# --- parsed keys -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PublicKey:
    """One usable verification key. Identity matters: the same key keeps the same object
    across refreshes, so a cached verified token can check its key is still published."""

    kid: str | None
    key: rsa.RSAPublicKey = field(repr=False)
    alg: str | None = None
    """The JWK's ``alg`` member: when set, tokens must use exactly this algorithm."""
    fingerprint: tuple[str, str, str | None] = field(default=("", "", None), repr=False)


class JwksError(Exception):
    """A JWKS document (or its download) cannot be used as a whole. Internal."""


def _reject_constant(name: str) -> Any:
    raise JwksError(f"invalid JSON number {name}")


def _b64url_uint(value: object, name: str) -> int:
    if not isinstance(value, str) or not value or len(value) > 2048:
        raise ValueError(f"member {name} is not a base64url string")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise ValueError(f"member {name} is not valid base64url") from None
    return int.from_bytes(raw, "big")


def _load_jwk(jwk: object, algorithms: frozenset[str]) -> PublicKey:
    """One JWK as a usable key, or ValueError saying why it is skipped."""
    if not isinstance(jwk, dict):
        raise ValueError("not a JSON object")
    if jwk.get("kty") != "RSA":
        raise ValueError(f"key type {jwk.get('kty')!r} is not RSA")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
        raise ValueError("no usable kid")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise ValueError(f"use {use!r} is not 'sig'")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise ValueError("key_ops does not allow 'verify'")
    alg = jwk.get("alg")
    if alg is not None and alg not in algorithms:
        raise ValueError(f"alg {alg!r} is not allowed")
    if "d" in jwk or "p" in jwk:
        # A private key in a public document is an issuer bug; refuse to touch it.
        raise ValueError("holds private key material")
    n_text, e_text = jwk.get("n"), jwk.get("e")
    n = _b64url_uint(n_text, "n")
    e = _b64url_uint(e_text, "e")
    bits = n.bit_length()
    if bits < MIN_RSA_BITS:
        raise ValueError(f"RSA key of {bits} bits is under {MIN_RSA_BITS}")
    if bits > MAX_RSA_BITS:
        raise ValueError(f"RSA key of {bits} bits is over {MAX_RSA_BITS}")
    if e < 3 or e % 2 == 0 or e.bit_length() > 64:
        raise ValueError("invalid RSA public exponent")
    try:
        key = rsa.RSAPublicNumbers(e, n).public_key()
    except (ValueError, _CryptoUnsupported) as exc:
        raise ValueError(f"invalid RSA key ({exc})") from None
    assert isinstance(n_text, str) and isinstance(e_text, str)
    return PublicKey(kid=kid, key=key, alg=alg, fingerprint=(n_text, e_text, alg))


def parse_jwks(
    data: bytes | str | Mapping[str, Any],
    *,
    algorithms: Iterable[str] = ("RS256",),
    max_keys: int = 100,
    previous: Mapping[str, PublicKey] | None = None,
    where: str = "JWKS",
) -> dict[str, PublicKey]:
    """The usable keys of a JWKS document, by kid.

    Raises :class:`JwksError` when the document as a whole is unusable (not JSON, not a
    JWKS, duplicate member names, more than ``max_keys`` keys). Individual keys jwtmcp
    cannot use are skipped and logged. Keys unchanged from ``previous`` keep their object.
    """
    allowed = frozenset(algorithms)
    if isinstance(data, bytes | str):
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
            doc = json.loads(
                text, object_pairs_hook=unique_members, parse_constant=_reject_constant
            )
        except DuplicateMember as exc:
            raise JwksError(str(exc)) from None
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise JwksError(f"{where} is not valid JSON ({exc})") from None
    else:
        doc = data
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise JwksError(f"{where} is not a JWK set (no 'keys' list)")
    entries = doc["keys"]
    if len(entries) > max_keys:
        raise JwksError(f"{where} has {len(entries)} keys, more than the limit of {max_keys}")
    keys: dict[str, PublicKey] = {}
    ambiguous: set[str] = set()
    for index, jwk in enumerate(entries):
        try:
            loaded = _load_jwk(jwk, allowed)
        except ValueError as exc:
            log.info("skipping key #%d of %s: %s", index, where, exc)
            continue
        kid = loaded.kid
        assert kid is not None
        if kid in keys or kid in ambiguous:
            # Two keys under one kid: a token naming it cannot be attributed. Use neither.
            log.warning("skipping kid %r of %s: it names more than one key", kid[:64], where)
            keys.pop(kid, None)
            ambiguous.add(kid)
            continue
        old = (previous or {}).get(kid)
        keys[kid] = old if old is not None and old.fingerprint == loaded.fingerprint else loaded
    return keys


def load_pem_public_key(pem: bytes | str) -> PublicKey:
    """A PEM RSA public key (SubjectPublicKeyInfo or PKCS#1) as a key. ConfigError if not."""
    raw = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError, _CryptoUnsupported):
        raise ConfigError("public_key_pem is not a valid PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError("public_key_pem must hold an RSA public key")
    if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
        raise ConfigError(
            f"public_key_pem holds a {key.key_size}-bit key; "
            f"{MIN_RSA_BITS} to {MAX_RSA_BITS} bits are accepted"
        )
    return PublicKey(kid=None, key=key)


# --- key sources -------------------------------------------------------------------------


class KeySource(Protocol):
    """Where a verifier gets its keys. ``find`` is called on every request."""

    def find(
        self, kid: str | None, now: float, *, may_wait: bool = True
    ) -> PublicKey | Future[bool]:
        """The key ``kid`` names, or a future to wait on before asking again (with
        ``may_wait=False``). ``now`` is the request's wall-clock time (epoch seconds);
        a source that ages its keys measures that age on its own monotonic clock.
        Raises UnknownKid or KeysUnavailable."""
        ...

    def close(self) -> None: ...


class StaticKeys:
    """Keys fixed at start: a PEM public key (any kid) or a JWKS file (kid required)."""

    def __init__(self, keys: Mapping[str, PublicKey] | PublicKey) -> None:
        self._single = keys if isinstance(keys, PublicKey) else None
        self._keys: Mapping[str, PublicKey] = {} if isinstance(keys, PublicKey) else dict(keys)

    @classmethod
    def from_pem(cls, pem: bytes | str) -> StaticKeys:
        return cls(load_pem_public_key(pem))

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, algorithms: Iterable[str], max_keys: int
    ) -> StaticKeys:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the JWKS file {path}: {exc.strerror}") from None
        try:
            keys = parse_jwks(data, algorithms=algorithms, max_keys=max_keys, where=str(path))
        except JwksError as exc:
            raise ConfigError(str(exc)) from None
        if not keys:
            raise ConfigError(f"the JWKS file {path} holds no usable RSA signing key")
        return cls(keys)

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def find(self, kid: str | None, now: float, *, may_wait: bool = True) -> PublicKey:
        if self._single is not None:
            # One configured key: the signature decides, whatever kid the token names.
            return self._single
        key = self._keys.get(kid) if kid is not None else None
        if key is None:
            raise UnknownKid("the token's signing key (kid) is not known")
        return key

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class JwksPolicy:
    """How a :class:`JwksCache` fetches, trusts and keeps keys. Defaults are the safe choice.

    Times are in seconds. Raises :class:`ConfigError` for a negative time, a non-positive
    ``fetch_timeout``, ``min_max_age`` above ``max_max_age``, ``refresh_ahead`` outside
    (0, 1], or a limit that is not a positive int.
    """

    fetch_timeout: float = 5.0
    """Seconds for connecting and for the whole download: a hanging issuer costs at most this."""
    default_max_age: float = 300.0
    """Freshness when the response has neither ``Cache-Control: max-age`` nor ``Expires``
    (as PyJWT, jose)."""
    min_max_age: float = 60.0
    """Lower clamp: a ``max-age=0`` issuer must not turn every request into a fetch."""
    max_max_age: float = 86400.0
    """Upper clamp: a revoked key is dropped within a day even if the issuer says a year."""
    refresh_ahead: float = 0.8
    """Fraction of the max-age after which a lookup starts a background refresh."""
    refetch_cooldown: float = 30.0
    """At least this long between two fetches started by requests (unknown kids, retries)."""
    retry_backoff: float = 1.0
    """After a failed fetch, the wait before the next one may start; it doubles with each
    failure in a row, up to ``refetch_cooldown``, and a success resets it."""
    unknown_kid_ttl: float = 60.0
    """How long a kid missing from a fresh fetch is refused without another fetch: longer
    than the cooldown, so replaying one bogus kid never costs a fetch, short enough that an
    issuer signing with a key before publishing it recovers within a minute."""
    stale_window: float = 86400.0
    """How long past its max-age the last good set keeps serving while fetches fail."""
    max_body_bytes: int = 256 * 1024
    """Bytes of a JWKS response read at most; a larger body is a failed fetch."""
    max_keys: int = 100
    """Keys a JWKS may hold at most; a larger set is a failed fetch (a file: a ConfigError)."""
    max_unknown_kids: int = 1024
    """How many unknown kids are remembered at once (each for ``unknown_kid_ttl``)."""

    def __post_init__(self) -> None:
        _check_policy(self)


def _check_policy(policy: JwksPolicy) -> None:
    for name in (
        "fetch_timeout",
        "default_max_age",
        "min_max_age",
        "max_max_age",
        "refetch_cooldown",
        "retry_backoff",
        "unknown_kid_ttl",
        "stale_window",
    ):
        value = getattr(policy, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ConfigError(f"{name} must be a non-negative number of seconds, not {value!r}")
    if policy.fetch_timeout <= 0:
        raise ConfigError("fetch_timeout must be positive")
    if not policy.min_max_age <= policy.max_max_age:
        raise ConfigError("min_max_age must not exceed max_max_age")
    if not 0 < policy.refresh_ahead <= 1:
        raise ConfigError("refresh_ahead must be a fraction in (0, 1]")
    for name in ("max_body_bytes", "max_keys", "max_unknown_kids"):
        value = getattr(policy, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, not {value!r}")


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_DELTA_SECONDS = re.compile(r"[0-9]+")
"""RFC 9111 1.2.2 ``delta-seconds``: ASCII digits only (``int()`` would also take ``+5``,
`` 5`` or Arabic-Indic digits)."""
_DELTA_SECONDS_MAX = 2**31
"""RFC 9111 1.2.2: a larger delta-seconds value is taken as 2^31."""
_CACHE_DIRECTIVE = re.compile(
    r"""\s*([^\s=,"]+)\s*(?:=\s*(?:"((?:[^"\\]|\\.)*)"|([^,]*)))?\s*(?:,|$)"""
)
"""One Cache-Control directive: name, then a quoted-string argument or a token one."""


def _delta_seconds(text: str) -> int | None:
    text = text.strip()
    if not _DELTA_SECONDS.fullmatch(text):
        return None
    return min(int(text), _DELTA_SECONDS_MAX)


def _http_date(text: str) -> float | None:
    """An HTTP-date (RFC 9110 5.6.7, all three formats) as epoch seconds, None if invalid."""
    parsed = email.utils.parsedate_tz(text)
    if parsed is None:
        return None
    try:
        return float(email.utils.mktime_tz(parsed))
    except (OverflowError, ValueError):
        return None


def _cache_directives(lines: Iterable[str]) -> dict[str, list[str | None]]:
    """Cache-Control directives of all field lines: lowercased name -> its arguments."""
    directives: dict[str, list[str | None]] = {}
    for line in lines:
        for match in _CACHE_DIRECTIVE.finditer(line):
            name, quoted, token = match.groups()
            argument = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else token
            directives.setdefault(name.lower(), []).append(argument)
    return directives


def _freshness_lifetime(
    fields: Mapping[str, list[str]], response_time: float, policy: JwksPolicy
) -> float:
    """RFC 9111 4.2.1 for a private cache; invalid or conflicting information is stale (0)."""
    directives = _cache_directives(fields.get("cache-control", ()))
    if "no-store" in directives or None in directives.get("no-cache", ()):
        # Keys must still serve this request: 0 means "as short as the policy allows".
        # (A qualified no-cache="field" only restricts those fields, RFC 9111 5.2.2.4.)
        return 0.0
    max_age = directives.get("max-age")
    if max_age is not None:  # s-maxage is for shared caches only, RFC 9111 5.2.2.10
        if len(set(max_age)) != 1 or max_age[0] is None:
            return 0.0
        seconds = _delta_seconds(max_age[0])
        return 0.0 if seconds is None else float(seconds)
    expires = fields.get("expires")
    if expires is not None:
        expires_at = _http_date(expires[0]) if len(expires) == 1 else None
        if expires_at is None:  # RFC 9111 5.3: invalid (e.g. "0") means already expired
            return 0.0
        return expires_at - _date_value(fields, response_time)
    return policy.default_max_age  # no explicit freshness: our heuristic (RFC 9111 4.2.2)


def _date_value(fields: Mapping[str, list[str]], response_time: float) -> float:
    """The response's Date; without a valid one, the time it arrived (RFC 9110 6.6.1)."""
    dates = fields.get("date", ())
    date = _http_date(dates[0]) if len(dates) == 1 else None
    return response_time if date is None else date


def _initial_age(
    fields: Mapping[str, list[str]], response_time: float, response_delay: float
) -> float:
    """RFC 9111 4.2.3 ``corrected_initial_age``: how old the response already was on arrival."""
    age_value = 0
    ages = fields.get("age")
    if ages:
        # RFC 9111 5.1: use the first member of a list; ignore an invalid value.
        age_value = _delta_seconds(ages[0].split(",")[0]) or 0
    apparent_age = max(0.0, response_time - _date_value(fields, response_time))
    corrected_age_value = age_value + max(0.0, response_delay)
    return max(apparent_age, corrected_age_value)


def fresh_for(
    headers: Iterable[tuple[str, str]],
    policy: JwksPolicy,
    *,
    response_time: float,
    response_delay: float = 0.0,
) -> float:
    """Seconds a JWKS response stays fresh from its arrival, per RFC 9111 4.2.

    ``headers`` are the response's header field lines as (name, value) pairs (any case,
    repeats kept); ``response_time`` is the wall-clock time it arrived (epoch seconds, only
    compared with its ``Date``); ``response_delay`` the seconds between sending the request
    and receiving the response. The result is the freshness lifetime (``max-age``, else
    ``Expires`` minus ``Date``, else ``policy.default_max_age``) minus the response's age
    on arrival (``Age`` corrected by the delay, or ``Date``'s apparent age, whichever is
    larger), clamped to ``[policy.min_max_age, policy.max_max_age]``. ``no-store`` and
    unqualified ``no-cache`` count as 0 s; invalid or conflicting ``max-age``/``Expires``
    as stale (RFC 9111 4.2.1); invalid ``Age`` and ``Date`` are ignored. Never raises.
    """
    fields: dict[str, list[str]] = {}
    for name, value in headers:
        fields.setdefault(name.lower(), []).append(value)
    left = _freshness_lifetime(fields, response_time, policy) - _initial_age(
        fields, response_time, response_delay
    )
    return min(max(left, policy.min_max_age), policy.max_max_age)


def parse_max_age(cache_control: str | None, policy: JwksPolicy) -> float:
    """Seconds a response with only this ``Cache-Control`` value stays fresh (see
    :func:`fresh_for`)."""
    lines = [("cache-control", cache_control)] if cache_control else []
    return fresh_for(lines, policy, response_time=0.0)


@dataclass(frozen=True)
class _Snapshot(Generic[T]):
    """One good document (a key set, a revocation list) and the times that govern it:
    ``fetched_wall`` is epoch seconds (for the cache file), every other time is on the
    cache's monotonic clock."""

    value: T
    fetched_wall: float
    fetched_at: float
    max_age: float
    refresh_at: float
    expires_at: float
    stale_until: float


class _UntrustedFile(Exception):
    """A local file someone other than this user (or root) could have written."""


def _read_trusted_file(path: Path, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of ``path``, if only this process's user or root could
    have written it, as OpenSSH's StrictModes demands of ``authorized_keys``: the file
    and its directory owned by this user or root, neither writable by group or others
    (a sticky directory, like /tmp, may be). The file's own checks are made on the open
    descriptor, so a file swapped in between cannot slip through. Raises
    :class:`_UntrustedFile` saying why, or OSError (FileNotFoundError when absent)."""
    uid = os.getuid()
    # O_NONBLOCK: opening a FIFO planted in its place must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _UntrustedFile("it is not a regular file")
        _check_owner_and_mode(info, "it", uid, sticky_ok=False)
        directory = Path(os.path.realpath(path)).parent
        _check_owner_and_mode(os.stat(directory), f"its directory {directory}", uid, True)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _check_owner_and_mode(info: os.stat_result, what: str, uid: int, sticky_ok: bool) -> None:
    if info.st_uid not in (uid, 0):
        raise _UntrustedFile(
            f"{what} is owned by uid {info.st_uid}, not by this user (uid {uid}) or root"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022 and not (sticky_ok and mode & stat.S_ISVTX):
        raise _UntrustedFile(
            f"{what} is writable by group or others (mode {mode:04o}); "
            "only its owner may write it (chmod go-w)"
        )


_LIVE_CACHES: weakref.WeakSet[CachedDocument[Any]] = weakref.WeakSet()
"""Every open cache, so a forked child can give each one fresh fetch machinery."""


def _after_fork_in_child() -> None:
    for cache in list(_LIVE_CACHES):
        if not cache._closed:
            cache._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class CachedDocument(Generic[T]):
    """A document from a URL, cached and refreshed as the module docstring describes: the
    machinery every cached document shares (freshness, refresh ahead, the stale window,
    one fetch at a time with backoff, the cache file, forks). A subclass says how its
    document is parsed (:meth:`_parse`, :meth:`_from_file`) and how it is looked up;
    :class:`JwksCache` is the key set, :class:`jwtmcp.revocation.RevocationCache` the
    signed revocation list.

    ``clock`` is the wall clock (epoch seconds, compared with the response's ``Date`` and
    written to the cache file); ``monotonic`` measures the age of documents, cooldowns and
    every other duration (seconds from any origin). Both are injectable for tests.
    """

    what = "document"
    """What the document is called in log lines and errors ("JWKS")."""
    _thread_name = "jwtmcp-document"
    file_member = "document"
    """The member of the cache file that holds the document."""
    accept = "application/json"
    url_option = "url"
    """The option that named the URL, for configuration errors (``jwks_url``)."""

    def __init__(
        self,
        url: str,
        *,
        policy: JwksPolicy | None = None,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        cache_file: str | os.PathLike[str] | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        parts = urlsplit(url)
        option = self.url_option
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{option} must be an http(s) URL, not {url!r}")
        if parts.scheme == "http" and not allow_insecure_http and not is_loopback_url(url):
            raise ConfigError(
                f"{option} must use https (plain http lets anyone on the path swap the "
                f"{self.what}); http is accepted for loopback hosts, or with "
                "allow_insecure_jwks_url=True"
            )
        self.url = url
        self.policy = policy or JwksPolicy()
        self._clock = clock
        self._monotonic = monotonic
        self._cache_file = Path(cache_file) if cache_file is not None else None
        self._lock = threading.Lock()
        self._snapshot: _Snapshot[T] | None = None
        self._inflight: Future[bool] | None = None
        self._last_attempt: float | None = None
        self._last_ok = False
        self._failures = 0
        """Failed fetches in a row: sets the backoff before the next attempt."""
        self._closed = False
        self.fetch_count = 0
        """Fetches started so far (for monitoring and tests)."""
        self.last_error: str | None = None
        """Why the last fetch failed, or None after a success."""
        self.failed_fetch_count = 0
        """Fetches that failed so far (for monitoring: jwtmcp.metrics)."""
        self._persisted_body: bytes | None = None
        self._client: httpx2.Client | None = None  # made by the worker, at its first fetch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._thread_name)
        _LIVE_CACHES.add(self)
        self._load_cache_file()
        with self._lock:
            self._start_fetch(self._monotonic())

    # -- serving ----------------------------------------------------------------------

    def _unavailable(self) -> TokenError:
        """The error a lookup raises when no document is usable (none yet, or too old)."""
        return KeysUnavailable(f"the issuer's {self.what} is unavailable; try again later")

    def _usable_snapshot(self, now: float, may_wait: bool) -> _Snapshot[T] | Future[bool]:
        """The snapshot still within its stale window, else a fetch to wait for (caller
        holds the lock). Raises :meth:`_unavailable` when there is neither."""
        snap = self._snapshot
        if snap is not None and now >= snap.stale_until:
            snap = None  # too old to trust, even during an outage
        if snap is None:
            fut = self._inflight or self._start_fetch_if_allowed(now)
            if fut is not None and may_wait:
                return fut
            raise self._unavailable()
        return snap

    def _serve(self, found: V, snap: _Snapshot[T], now: float, may_wait: bool) -> V | Future[bool]:
        """``found`` (read from ``snap``) under the freshness rules (caller holds the lock):
        fresh, it is served and a refresh starts in the background past ``refresh_ahead``;
        past its max-age, a fetch is waited for when the issuer answered last time (what it
        says must not outlive its max-age), else it keeps serving within the stale window
        while fetches retry in the background."""
        if now < snap.expires_at:
            if self._inflight is None:
                self._start_fetch_if_allowed(now)  # refresh ahead, in the background
            return found
        if self._last_ok and may_wait:
            fut = self._inflight or self._start_fetch_if_allowed(now)
            if fut is not None:
                return fut
        elif self._inflight is None:
            self._start_fetch_if_allowed(now)  # outage: retry in the background
        return found  # within the stale window

    # -- fetching ---------------------------------------------------------------------

    def _start_fetch_if_allowed(self, now: float) -> Future[bool] | None:
        last = self._last_attempt
        if last is not None and now - last < self._retry_delay():
            return None
        return self._start_fetch(now)

    def _retry_delay(self) -> float:
        """Seconds from one fetch attempt to the next (caller holds the lock)."""
        policy = self.policy
        if self._failures == 0:
            # Never hold a refresh past the held document's own refresh-ahead point: a
            # revocation list may ask for max-age 5 s, below the cooldown, and serving it
            # until the cooldown ran out would break the propagation bound it promises.
            snap = self._snapshot
            if snap is not None:
                return min(policy.refetch_cooldown, snap.max_age * policy.refresh_ahead)
            return policy.refetch_cooldown
        backoff = policy.retry_backoff * 2.0 ** min(self._failures - 1, 60)
        return min(backoff, policy.refetch_cooldown)

    def _start_fetch(self, now: float) -> Future[bool]:
        """Start a fetch (caller holds the lock). The future resolves to True on success."""
        if self._inflight is not None:
            return self._inflight
        fut: Future[bool] = Future()
        # A running future cannot be cancelled, so one waiter giving up (an asyncio task
        # cancelled, a timeout) never cancels the fetch the others wait for.
        fut.set_running_or_notify_cancel()
        self._inflight = fut
        self._last_attempt = now
        self.fetch_count += 1
        try:
            self._executor.submit(self._run_fetch, fut)
        except RuntimeError:  # executor shut down by close()
            self._inflight = None
            fut.set_result(False)
        return fut

    def _run_fetch(self, fut: Future[bool]) -> None:
        ok = False
        try:
            ok = self._fetch()
        except BaseException as exc:  # never let the worker die with waiters hanging
            self.last_error = f"unexpected error: {type(exc).__name__}"
            log.exception("%s fetch from %s failed unexpectedly", self.what, self.url)
        finally:
            with self._lock:
                if self._inflight is fut:
                    self._inflight = None
                self._last_ok = ok
                self._failures = 0 if ok else self._failures + 1
                if not ok:
                    self.failed_fetch_count += 1
            with contextlib.suppress(InvalidStateError):  # close() may have resolved it
                fut.set_result(ok)

    def _fetch(self) -> bool:
        try:
            body, headers, received, response_time, response_delay = self._download()
            previous = self._snapshot.value if self._snapshot is not None else None
            value = self._parse(body, previous)
        except JwksError as exc:
            self.last_error = str(exc)
            if not self._closed:  # nobody is left to care once the verifier is closed
                kept = self._kept_note(self._snapshot is not None)
                log.warning("%s fetch from %s failed: %s; %s", self.what, self.url, exc, kept)
            return False
        max_age = fresh_for(
            headers, self.policy, response_time=response_time, response_delay=response_delay
        )
        snap = self._make_snapshot(value, received, max_age, response_time)
        with self._lock:
            self._snapshot = snap
        self.last_error = None
        log.debug("fetched %s from %s, max-age %.0f s", self._describe(value), self.url, max_age)
        self._persist(body, snap)
        return True

    # -- what a subclass says about its document ----------------------------------------

    def _parse(self, body: bytes, previous: T | None) -> T:
        """The document in a response ``body``; raises :class:`JwksError` when it is
        unusable, which counts as a failed fetch (the last good one keeps serving).
        ``previous`` is the document held now, if any."""
        raise NotImplementedError

    def _file_form(self, body: bytes) -> object:
        """What the cache file keeps of a response body (a JSON value)."""
        raise NotImplementedError

    def _from_file(self, stored: object, where: str) -> T:
        """The document the cache file kept (:meth:`_file_form`); raises JwksError."""
        raise NotImplementedError

    def _describe(self, value: T) -> str:
        return f"the {self.what}"

    def _kept_note(self, kept: bool) -> str:
        return f"keeping the last good {self.what}" if kept else f"no {self.what} yet"

    def _download(self) -> tuple[bytes, list[tuple[str, str]], float, float, float]:
        """The body, the header lines, when they arrived (monotonic clock, then wall clock)
        and the round trip until they did (seconds)."""
        import httpx2

        policy = self.policy
        deadline = time.monotonic() + policy.fetch_timeout
        sent = self._monotonic()
        try:
            with self._http_client().stream("GET", self.url) as response:
                received = self._monotonic()
                response_time = self._clock()
                if response.status_code != 200:
                    raise JwksError(f"HTTP status {response.status_code}")
                encoding = response.headers.get("content-encoding", "identity").lower()
                if encoding not in ("identity", ""):
                    raise JwksError(f"unexpected content encoding {encoding!r}")
                length = response.headers.get("content-length")
                with contextlib.suppress(ValueError):  # no or a bad length: the cap below holds
                    declared = parse_whole_number(length or "")
                    if declared > policy.max_body_bytes:
                        raise JwksError(f"response of {declared} bytes is over the limit")
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_raw():
                    size += len(chunk)
                    if size > policy.max_body_bytes:
                        raise JwksError(
                            f"response is over the limit of {policy.max_body_bytes} bytes"
                        )
                    if time.monotonic() > deadline:
                        raise JwksError(f"download took longer than {policy.fetch_timeout} s")
                    chunks.append(chunk)
                headers = response.headers.multi_items()
                return b"".join(chunks), headers, received, response_time, received - sent
        except httpx2.TimeoutException:
            raise JwksError(f"no answer within {policy.fetch_timeout} s") from None
        except httpx2.ConnectError as exc:
            raise JwksError(f"cannot connect ({exc})") from None
        except httpx2.HTTPError as exc:
            raise JwksError(f"{type(exc).__name__}: {exc}") from None

    def _http_client(self) -> httpx2.Client:
        """The HTTP client, made on first use (only the worker thread calls this)."""
        client = self._client
        if client is None:
            import httpx2  # the MCP SDK's HTTP library; imported here so PEM/file users skip it

            if self._closed:
                raise JwksError("the verifier is closed")
            client = self._client = httpx2.Client(
                timeout=httpx2.Timeout(self.policy.fetch_timeout),
                follow_redirects=False,
                headers={
                    "Accept": self.accept,
                    "Accept-Encoding": "identity",
                    "User-Agent": "jwtmcp-verifier",
                },
            )
        return client

    def _make_snapshot(
        self, value: T, fetched_at: float, max_age: float, wall: float
    ) -> _Snapshot[T]:
        expires = fetched_at + max_age
        return _Snapshot(
            value=value,
            fetched_wall=wall,
            fetched_at=fetched_at,
            max_age=max_age,
            refresh_at=fetched_at + max_age * self.policy.refresh_ahead,
            expires_at=expires,
            stale_until=expires + self.policy.stale_window,
        )

    # -- the cache file ---------------------------------------------------------------

    def _persist(self, body: bytes, snap: _Snapshot[T]) -> None:
        if self._cache_file is None:
            return
        doc = {
            "version": CACHE_FILE_VERSION,
            "url": self.url,
            "fetched_at": snap.fetched_wall,
            "max_age": snap.max_age,
            self.file_member: self._file_form(body),
        }
        data = json.dumps(doc, separators=(",", ":")).encode()
        try:
            atomic_write(self._cache_file, data)
        except OSError as exc:
            log.warning("cannot write the %s cache file %s: %s", self.what, self._cache_file, exc)

    def _load_cache_file(self) -> None:
        path = self._cache_file
        if path is None:
            return
        limit = self.policy.max_body_bytes * 2
        try:
            raw = _read_trusted_file(path, limit)
        except FileNotFoundError:
            return
        except _UntrustedFile as exc:
            log.error("refusing the %s cache file %s: %s", self.what, path, exc)
            return
        except OSError as exc:
            log.warning(
                "cannot read the %s cache file %s: %s", self.what, path, exc.strerror or exc
            )
            return
        try:
            if len(raw) > limit:
                raise JwksError("the file is too large")
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("version") != CACHE_FILE_VERSION:
                raise JwksError("unknown format")
            if doc.get("url") != self.url:
                raise JwksError(f"it was written for another {self.what} URL")
            fetched_at, max_age = doc.get("fetched_at"), doc.get("max_age")
            if not (
                isinstance(fetched_at, int | float)
                and isinstance(max_age, int | float)
                and math.isfinite(fetched_at)
                and math.isfinite(max_age)
            ):
                raise JwksError("invalid timestamps")
            value = self._from_file(doc.get(self.file_member), f"the {self.what} cache file {path}")
        except (JwksError, ValueError, RecursionError) as exc:
            log.warning("ignoring the %s cache file %s: %s", self.what, path, exc)
            return
        wall = self._clock()
        fetched_wall = min(float(fetched_at), wall)  # a time in the future: as if just now
        now = self._monotonic()
        max_age = min(max(float(max_age), self.policy.min_max_age), self.policy.max_max_age)
        snap = self._make_snapshot(value, now - (wall - fetched_wall), max_age, fetched_wall)
        if now >= snap.stale_until:
            log.warning(
                "ignoring the %s cache file %s: older than the stale window", self.what, path
            )
            return
        self._snapshot = snap
        # Freshness unknown: serve this document at once, never wait on the network for it.
        self._last_ok = False
        log.info("loaded %s from the %s cache file %s", self._describe(value), self.what, path)

    # -- waiting and closing ----------------------------------------------------------

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait for the fetch in flight, if any. True when none is left running."""
        fut = self._inflight
        if fut is None:
            return True
        with contextlib.suppress(TimeoutError):
            fut.result(timeout)
        return fut.done()

    def seconds_since_good_fetch(self) -> float | None:
        """Seconds since the keys in use were fetched (also across a restart, through the
        cache file), or None before any good key set; for monitoring (jwtmcp.metrics)."""
        snap = self._snapshot
        return None if snap is None else self._monotonic() - snap.fetched_at

    def _reset_after_fork(self) -> None:
        """In a child made by ``os.fork()``: the worker thread did not survive, a lock may
        be held by a thread that no longer exists and the HTTP connections are shared with
        the parent. Start over with new ones (the keys and their times stay valid: the
        monotonic clock runs on across a fork). The parent's connections are dropped, never
        closed, so nothing is sent on sockets the parent still uses."""
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._thread_name)
        self._client = None
        if self._inflight is not None:
            # That fetch ran in the parent's worker: the child never learns its result, so
            # it must not wait for it, nor wait out a cooldown counted from its start.
            self._inflight = None
            self._last_attempt = None

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            fut, self._inflight = self._inflight, None
        client, self._client = self._client, None
        if client is not None:
            client.close()
        if fut is not None and not fut.done():
            with contextlib.suppress(Exception):
                fut.set_result(False)


class JwksCache(CachedDocument[Mapping[str, PublicKey]]):
    """Keys from a JWKS URL, cached and refreshed as the module docstring describes.

    ``clock`` is the wall clock (epoch seconds, compared with the response's ``Date`` and
    written to the cache file); ``monotonic`` measures the age of key sets, cooldowns and
    every other duration (seconds from any origin). Both are injectable for tests.
    """

    what = "JWKS"
    file_member = "jwks"
    accept = "application/jwk-set+json, application/json"
    url_option = "jwks_url"
    _thread_name = "jwtmcp-jwks"

    def __init__(
        self,
        url: str,
        *,
        algorithms: Iterable[str] = ("RS256",),
        policy: JwksPolicy | None = None,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        cache_file: str | os.PathLike[str] | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        self._algorithms = frozenset(algorithms)
        self._unknown: dict[str, float] = {}
        super().__init__(
            url,
            policy=policy,
            clock=clock,
            monotonic=monotonic,
            cache_file=cache_file,
            allow_insecure_http=allow_insecure_http,
        )

    # -- the hot path -----------------------------------------------------------------

    def find(
        self, kid: str | None, now: float, *, may_wait: bool = True
    ) -> PublicKey | Future[bool]:
        snap = self._snapshot
        if snap is not None and kid is not None and self._monotonic() < snap.refresh_at:
            key = snap.value.get(kid)
            if key is not None:
                return key
        return self._find_slow(kid, may_wait)

    def only_key(self, *, may_wait: bool = True) -> PublicKey | Future[bool]:
        """The key set's one key, for a token that names no ``kid``: OpenID Connect Core
        10.1 lets a provider that publishes a single key leave ``kid`` out. A future to
        wait on before asking again (``may_wait=False``) while the set is being fetched.
        Raises :class:`UnknownKid` when the set holds several keys (the token must name
        one) or none, and :class:`KeysUnavailable` as :meth:`find` does."""
        if self._closed:
            raise KeysUnavailable("the verifier is closed")
        now = self._monotonic()
        with self._lock:
            snap = self._usable_snapshot(now, may_wait)
            if not isinstance(snap, _Snapshot):
                return snap  # a fetch to wait for
            keys = list(snap.value.values())
            if len(keys) != 1:
                raise UnknownKid("the token names no signing key (kid) and the set has several")
            return self._serve(keys[0], snap, now, may_wait)

    def _find_slow(self, kid: str | None, may_wait: bool) -> PublicKey | Future[bool]:
        now = self._monotonic()
        if kid is None:
            raise UnknownKid("the token names no signing key (kid)")
        if self._closed:
            raise KeysUnavailable("the verifier is closed")
        with self._lock:
            snap = self._usable_snapshot(now, may_wait)
            if not isinstance(snap, _Snapshot):
                return snap  # a fetch to wait for
            key = snap.value.get(kid)
            if key is not None:
                # Past max-age, fresh keys are waited for (a revoked key must not outlive
                # its max-age); see _serve.
                return self._serve(key, snap, now, may_wait)
            # An unknown kid: perhaps a key published since our last fetch.
            if len(kid) > MAX_KID_LENGTH:
                raise UnknownKid("the token's signing key (kid) is not known")
            until = self._unknown.get(kid)
            if until is not None and now < until:
                raise UnknownKid("the token's signing key (kid) is not known")
            if may_wait:
                fut = self._inflight or self._start_fetch_if_allowed(now)
                if fut is not None:
                    return fut
            elif self._inflight is None:
                # Missing from the set just fetched for it (not a wait that timed out).
                self._remember_unknown(kid, now)
            raise UnknownKid("the token's signing key (kid) is not known")

    def _remember_unknown(self, kid: str, now: float) -> None:
        if len(self._unknown) >= self.policy.max_unknown_kids:
            for old in [k for k, until in self._unknown.items() if until <= now]:
                del self._unknown[old]
            while len(self._unknown) >= self.policy.max_unknown_kids:
                del self._unknown[next(iter(self._unknown))]
        self._unknown[kid] = now + self.policy.unknown_kid_ttl

    def _parse(
        self, body: bytes, previous: Mapping[str, PublicKey] | None
    ) -> Mapping[str, PublicKey]:
        keys = parse_jwks(
            body,
            algorithms=self._algorithms,
            max_keys=self.policy.max_keys,
            previous=previous,
            where="the JWKS",  # last_error and the log line name the URL
        )
        if not keys:
            raise JwksError("the JWKS holds no usable RSA signing key")
        return keys

    def _file_form(self, body: bytes) -> object:
        return json.loads(body)

    def _from_file(self, stored: object, where: str) -> Mapping[str, PublicKey]:
        keys = parse_jwks(
            stored if isinstance(stored, dict) else {},
            algorithms=self._algorithms,
            max_keys=self.policy.max_keys,
            where=where,
        )
        if not keys:
            raise JwksError("no usable key")
        return keys

    def _describe(self, value: Mapping[str, PublicKey]) -> str:
        return f"{len(value)} key(s)"

    def _kept_note(self, kept: bool) -> str:
        return "keeping the last good keys" if kept else "no keys yet"

    def _unavailable(self) -> TokenError:
        return KeysUnavailable("the issuer's signing keys are unavailable; try again later")

    @property
    def kids(self) -> tuple[str, ...]:
        """Kids of the current key set (empty before the first good fetch)."""
        snap = self._snapshot
        return tuple(snap.value) if snap is not None else ()
