"""The state store: the little state OAuth 2.1 needs, behind one narrow interface.

Client credentials, minting and verification stay stateless. Interactive sign-in needs four
kinds of short-lived state, and only these live here, every record with a time to live:

- **authorization codes**, single use (OAuth 2.1 4.1.3): :meth:`Store.put_code`,
  :meth:`Store.take_code`;
- **refresh-token families**, rotated on every use with reuse detection (OAuth 2.1 4.3.1,
  RFC 9700 4.14.2): :meth:`Store.start_family`, :meth:`Store.rotate_refresh`,
  :meth:`Store.list_families`, :meth:`Store.revoke_families`;
- **replay windows** for ``jti`` values: :meth:`Store.remember_once`;
- **counters** in fixed windows (failed logins, for rate limiting): :meth:`Store.count`,
  :meth:`Store.peek_count`, :meth:`Store.reset_count`, :meth:`Store.uncount`;
- **token buckets** shared by issuer replicas (``/token`` rate limits): :meth:`Store.take_token`.

Codes and refresh tokens are stored only as SHA-256 digests, never as given: whoever reads
the database learns nothing that can be redeemed. Every time comes from an injected clock.

Backends: :class:`~jwtmcp.store.sqlite.SqliteStore` (an embedded SQLite file, safe for
several processes on one machine) is the default; :class:`~jwtmcp.store.redis.RedisStore`
(Redis or Valkey, for replicas on several machines) implements the same :class:`Store`
protocol. :func:`open_store` picks one from a location string. A backend that cannot be
reached raises :class:`~jwtmcp.errors.StoreUnavailable` from any method; the issuer answers
503 with ``Retry-After`` then.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from ..errors import ConfigError, StoreError
from ..tokens import Clock

MAX_CODE_TTL = 60
"""An authorization code lives at most 60 s (issue 10; OAuth 2.1 4.1.2 says "short")."""

DEFAULT_CODE_TOMBSTONE_TTL = 24 * 3600
"""How long a redeemed code is remembered, so a late second use still revokes its tokens."""

ROTATED_TOKENS_KEPT = 32
"""Rotated-away refresh tokens a family remembers (its most recent ones): presenting one of
them is reuse and revokes the family; an older one is just unknown. Without a bound, a
client rotating in a loop would keep one record per rotation for the family's whole life."""

DEFAULT_REFRESH_IDLE_TTL = 14 * 24 * 3600
"""A refresh family unused for 14 days stops working (seconds): long enough for someone who
opens their MCP client every week or two to stay signed in, short enough that a token left
on an abandoned machine dies on its own."""

DEFAULT_REFRESH_MAX_TTL = 90 * 24 * 3600
"""Every refresh family ends 90 days after its sign-in (seconds), however often it is used:
the user signs in again (and passes the login and consent checks again) once a quarter."""

DEFAULT_STORE_FILE = "jwtmcp-state.db"
"""The SQLite file's name; by default it sits beside the key ring directory."""

TOKEN_BYTES = 32
"""256 random bits per code and refresh token."""


def new_opaque_token() -> str:
    """A new authorization code or refresh token: 256 random bits, base64url (43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def positive_seconds(name: str, value: float) -> float:
    """``value`` as float seconds; raises :class:`~jwtmcp.errors.ConfigError` naming
    ``name`` unless it is a finite number above zero (NaN, infinities and booleans refused).
    Every backend checks its lifetimes, windows and rates with this one rule."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number of seconds, not {value!r}")
    return float(value)


def canonical_grant_json(grant: Mapping[str, Any]) -> str:
    """``grant`` as the canonical JSON every backend stores (sorted keys, no spaces, no
    NaN); raises :class:`~jwtmcp.errors.StoreError` when it is not JSON-serialisable."""
    try:
        return json.dumps(dict(grant), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"a grant must be JSON-serialisable: {exc}") from None


def digest(value: str) -> str:
    """The stored form of a code or refresh token: hex SHA-256 of its UTF-8 bytes.

    A plain (unsalted, fast) hash is enough: the values are 256-bit random strings made by
    :func:`new_opaque_token`, so they cannot be guessed from their digest; what matters is
    that a copy of the database holds nothing that can be presented to the issuer.
    """
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


# --- records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeRedemption:
    """What :meth:`Store.take_code` found for a code.

    ``grant`` is the mapping given to :meth:`Store.put_code` (client, redirect URI, PKCE
    challenge, resource, scopes, subject...). ``family_id`` names the refresh-token family
    that tokens issued from this code must use (pass it to :meth:`Store.start_family`).

    ``reused`` True means the code had been taken before: refuse the request
    (``invalid_grant``). The store has then already revoked the family ``family_id``, so a
    refresh token issued from the first use stops working (OAuth 2.1 4.1.3), even one
    started after this moment.
    """

    grant: Mapping[str, Any]
    family_id: str
    reused: bool


@dataclass(frozen=True)
class RefreshFamily:
    """A chain of refresh tokens from one authorization: rotated on each use.

    Times are epoch seconds. The family stops working at ``expires_at``: the earlier of its
    absolute end (``created_at`` + absolute lifetime) and its idle end (``last_used_at`` +
    idle lifetime). ``revoked_at`` is set once it was revoked (by reuse, by a reused code or
    by an operator) and never cleared. ``generation`` counts rotations (0 for the first token).
    """

    family_id: str
    client_id: str
    subject: str
    grant: Mapping[str, Any]
    created_at: float
    last_used_at: float
    idle_ttl: float
    absolute_expires_at: float
    generation: int
    revoked_at: float | None = None
    revoked_reason: str | None = None

    @property
    def expires_at(self) -> float:
        """When the family stops working (epoch seconds), if not revoked before."""
        return min(self.absolute_expires_at, self.last_used_at + self.idle_ttl)

    def active(self, now: float) -> bool:
        """True when neither revoked nor past :attr:`expires_at` at ``now``."""
        return self.revoked_at is None and now < self.expires_at


RotationStatus = Literal["rotated", "reused", "wrong_client", "revoked", "expired"]


@dataclass(frozen=True)
class Rotation:
    """The outcome of :meth:`Store.rotate_refresh`.

    - ``rotated``: the presented token was the family's current one; the new token replaces
      it. Issue tokens for ``family.grant``.
    - ``reused``: the presented token was already rotated away. The whole family has just
      been revoked (RFC 9700 4.14.2); refuse with ``invalid_grant``.
    - ``wrong_client``: another client presented the token (RFC 6749 6 binds it to its
      client): it leaked, so the family has just been revoked; refuse with ``invalid_grant``.
    - ``revoked``: the family was revoked before; refuse.
    - ``expired``: past the idle or absolute lifetime; refuse.
    """

    status: RotationStatus
    family: RefreshFamily

    @property
    def ok(self) -> bool:
        return self.status == "rotated"


# --- the interface -------------------------------------------------------------------------


class Store(Protocol):
    """Short-lived OAuth state with a TTL on every record. All methods are atomic.

    Every method may raise :class:`~jwtmcp.errors.StoreUnavailable` when the backend cannot
    be reached or locked in time, and :class:`~jwtmcp.errors.StoreError` (or
    :class:`~jwtmcp.errors.ConfigError`) for an invalid argument. Backends must be safe to
    use from several threads and several processes at once.
    """

    networked: bool
    """True when issuer replicas on several machines share the store (Redis): the issuer's
    ``/token`` rate limits then go through :meth:`take_token`. False for a local file."""

    def put_code(self, code: str, grant: Mapping[str, Any], *, ttl: float) -> None:
        """Remember authorization ``code`` for ``ttl`` seconds (0 < ttl <= 60).

        ``grant`` must be JSON-serialisable; it comes back from :meth:`take_code`. Raises
        :class:`~jwtmcp.errors.ConfigError` for a bad ``ttl`` and
        :class:`~jwtmcp.errors.StoreError` when the code is already known.
        """
        ...

    def take_code(self, code: str) -> CodeRedemption | None:
        """Consume ``code``: exactly one caller, across processes, gets ``reused=False``.

        Returns None for a code never issued or expired. A second take returns
        ``reused=True`` and revokes the family started from the first (OAuth 2.1 4.1.3).
        """
        ...

    def redeem_code(
        self, code: str, refresh_token: str, *, idle_ttl: float, absolute_ttl: float
    ) -> CodeRedemption | None:
        """:meth:`take_code` and :meth:`start_family` in one atomic step (one write, not two).

        When the code is taken for the first time, its family starts at once with
        ``refresh_token``, the code's ``grant`` as the family's grant and the grant's
        ``client_id`` and ``subject`` members (:class:`~jwtmcp.errors.StoreError` when they
        are missing). A caller whose checks then refuse the request revokes that family
        (:meth:`revoke_families`); its refresh token was never handed out. Returns what
        :meth:`take_code` returns; a reused code starts nothing and revokes as there.
        """
        ...

    def start_family(
        self,
        family_id: str,
        refresh_token: str,
        *,
        client_id: str,
        subject: str,
        grant: Mapping[str, Any],
        idle_ttl: float,
        absolute_ttl: float,
    ) -> RefreshFamily | None:
        """Start family ``family_id`` (from :meth:`take_code`) with its first refresh token.

        Lifetimes are seconds (idle: since the last rotation; absolute: since the start).
        Returns None, storing nothing usable, when the family was revoked already (its code
        was reused in the meantime): then do not hand out the refresh token.
        """
        ...

    def rotate_refresh(
        self, refresh_token: str, new_refresh_token: str, *, client_id: str
    ) -> Rotation | None:
        """Exchange the family's current ``refresh_token`` for ``new_refresh_token``.

        ``client_id`` is the client presenting it. Returns None for an unknown token;
        otherwise a :class:`Rotation`. Presenting a token that was already rotated, or one
        issued to another client, revokes the whole family (``reused``, ``wrong_client``).
        """
        ...

    def find_refresh(self, refresh_token: str) -> RefreshFamily | None:
        """The family ``refresh_token`` belongs to, changing nothing; None for an unknown token.

        For checks that must refuse a request *before* :meth:`rotate_refresh` consumes the
        token (a wider ``scope``, another ``resource``): the family's grant never changes, so
        what is read here still holds when the rotation runs. Says nothing about whether the
        token is the family's current one; only :meth:`rotate_refresh` decides that.
        """
        ...

    def list_families(
        self, *, subject: str | None = None, client_id: str | None = None
    ) -> Sequence[RefreshFamily]:
        """The active (unrevoked, unexpired) families, oldest first, filtered when asked."""
        ...

    def revoke_families(
        self,
        *,
        family_id: str | None = None,
        subject: str | None = None,
        client_id: str | None = None,
        reason: str = "revoked",
    ) -> int:
        """Revoke the active families matching every given filter; returns how many.

        At least one filter is required (:class:`~jwtmcp.errors.StoreError` otherwise).
        """
        ...

    def remember_once(self, key: str, until: float) -> bool:
        """True the first time ``key`` is seen before ``until`` (epoch seconds), else False.

        For ``jti`` replay windows: remember a token id until the token expires.
        """
        ...

    def count(self, key: str, *, window: float) -> int:
        """Add one to counter ``key`` and return its value in the current window.

        A window of ``window`` seconds opens at the first count and the counter starts
        again from 1 once it has passed (a fixed window, as Redis ``INCR`` + ``EXPIRE``).
        """
        ...

    def peek_count(self, key: str) -> int:
        """The value of counter ``key`` in its current window (0 when none is open)."""
        ...

    def reset_count(self, key: str) -> None:
        """Forget counter ``key`` (e.g. after a successful login)."""
        ...

    def uncount(self, key: str) -> None:
        """Take one back from counter ``key`` in its current window (never below 0; nothing
        when no window is open): an attempt counted before it was known to fail, which then
        did not, as :meth:`count` first and this after keeps a limit exact under races."""
        ...

    def take_token(self, key: str, *, rate: float, burst: int) -> float:
        """Take one request from token bucket ``key``: 0.0 if allowed, else seconds to wait.

        The bucket holds at most ``burst`` (a whole number >= 1) requests and refills at
        ``rate`` requests per second (> 0), by the store's clock; a bucket seen for the first
        time is full. A refused request takes nothing. Atomic across processes and replicas.
        Raises :class:`~jwtmcp.errors.ConfigError` for a rate or burst out of range.
        """
        ...

    def purge_expired(self) -> int:
        """Delete every expired record now; returns how many. Backends also do it by themselves."""
        ...

    def close(self) -> None:
        """Release the backend's connections; the store may not be used afterwards."""
        ...


# --- choosing a backend --------------------------------------------------------------------


def default_store_path(keys_dir: str | os.PathLike[str]) -> Path:
    """Where the SQLite store lives by default: ``jwtmcp-state.db`` beside the ring directory."""
    return Path(keys_dir).absolute().parent / DEFAULT_STORE_FILE


def is_networked_location(location: str | os.PathLike[str]) -> bool:
    """True when ``location`` names a networked store (``redis://``, ``rediss://``,
    ``unix://``): one that replicas on several machines share."""
    text = os.fspath(location)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.lower() in ("redis", "rediss", "unix")


def redacted_location(location: str | os.PathLike[str]) -> str:
    """``location`` safe to print or log: a URL's password replaced by ``***``."""
    text = os.fspath(location)
    if "://" not in text:
        return text
    from .redis import redact_url

    return redact_url(text)


def open_store(
    location: str | os.PathLike[str],
    *,
    clock: Clock = time.time,
    busy_timeout: float | None = None,
) -> Store:
    """Open the store at ``location``: a file path, ``sqlite:///abs/path``, or a Redis (or
    Valkey) URL: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS),
    ``unix://[[user]:password@]/path/to/socket[?db=N]`` (see
    :class:`~jwtmcp.store.redis.RedisStore` for its options, e.g. ``?prefix=``).

    ``busy_timeout`` (seconds; None: the backend's default) is how long a call waits for
    another writer before :class:`~jwtmcp.errors.StoreUnavailable` (SQLite only; a Redis
    URL sets ``socket_timeout`` instead).

    Raises :class:`~jwtmcp.errors.ConfigError` for a location it does not understand (or a
    Redis URL without redis-py installed) and :class:`~jwtmcp.errors.StoreUnavailable` when
    the database cannot be opened. A Redis store connects on its first call, not here.
    """
    text = os.fspath(location)
    if is_networked_location(text):
        from .redis import RedisStore

        return RedisStore(text, clock=clock)
    if text.startswith("sqlite://"):
        text = text[len("sqlite://") :]
        if not text.startswith("/"):
            raise ConfigError(
                f"a sqlite store location is sqlite:///ABSOLUTE/PATH, not {location!r}"
            )
    elif "://" in text:
        scheme = text.split("://", 1)[0]
        raise ConfigError(
            f"unknown store {scheme!r}: give a file path, sqlite:///PATH, redis://HOST[:PORT]"
            "[/DB], rediss://... or unix:///PATH"
        )
    from .sqlite import SqliteStore

    if busy_timeout is None:
        return SqliteStore(text, clock=clock)
    return SqliteStore(text, clock=clock, busy_timeout=busy_timeout)


__all__ = [
    "DEFAULT_CODE_TOMBSTONE_TTL",
    "DEFAULT_REFRESH_IDLE_TTL",
    "DEFAULT_REFRESH_MAX_TTL",
    "DEFAULT_STORE_FILE",
    "MAX_CODE_TTL",
    "CodeRedemption",
    "RefreshFamily",
    "Rotation",
    "RotationStatus",
    "Store",
    "default_store_path",
    "digest",
    "is_networked_location",
    "new_opaque_token",
    "open_store",
    "redacted_location",
]
