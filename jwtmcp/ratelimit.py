"""``/token`` rate limits shared by issuer replicas, through a networked store (Redis).

With one process, or several on one machine behind SQLite, the issuer keeps a token bucket
per client in memory (:class:`jwtmcp.issuer.RateLimiter`): no I/O on the client_credentials
hot path. Replicas on several machines would then each allow the whole limit, so N replicas
allow N times it. With a networked store (:attr:`jwtmcp.store.Store.networked`) the bucket
lives in the store instead (:meth:`jwtmcp.store.Store.take_token`, one atomic script), and
all replicas together allow the limit once.

When the store cannot be reached, ``client_credentials`` must keep issuing: the limiter falls
back to the in-process bucket, logs that once (not per request), tries the store again after
``retry_interval`` seconds, and logs once more when the shared bucket is back.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .errors import JwtMcpError
from .store import is_networked_location

if TYPE_CHECKING:
    from .store import Store
    from .tokens import Clock

log = logging.getLogger("jwtmcp.issuer")

DEFAULT_RETRY_INTERVAL = 5.0
"""Seconds the limiter stays on the local bucket after the store failed, before trying again."""
BUCKET_PREFIX = "token-rate:"
"""The store key of a client's bucket is this plus its client id (stored as a digest)."""


class Limiter(Protocol):
    """A per-key request limiter: :meth:`acquire` is 0.0 if allowed, else seconds to wait."""

    def acquire(self, key: str) -> float: ...


class LocalBucket(Protocol):
    """What :class:`SharedRateLimiter` needs of the in-process limiter."""

    rate: float
    burst: int

    def acquire(self, key: str) -> float: ...


class SharedRateLimiter:
    """A token bucket per key in the store, shared by every replica; ``local`` when it is down.

    ``local`` is the in-process limiter (its ``rate`` requests per second and ``burst`` are
    used for the shared bucket too); ``open_store`` returns the store (it may raise, e.g.
    :class:`~jwtmcp.errors.StoreUnavailable`); ``retry_interval`` (seconds, by
    ``monotonic``) is how long to stay local after a failure. Never raises: any store error
    means the local bucket answers.
    """

    def __init__(
        self,
        local: LocalBucket,
        open_store: Callable[[], Store],
        *,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.local = local
        self.rate = local.rate
        self.burst = local.burst
        self._open_store = open_store
        self.retry_interval = retry_interval
        self._monotonic = monotonic
        self._local_until = float("-inf")
        self.degraded = False
        """True while the store is unreachable and the local bucket answers."""

    def acquire(self, key: str) -> float:
        """Take one request from ``key``'s bucket: 0.0 if allowed, else seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = self._monotonic()
        if now < self._local_until:
            return self.local.acquire(key)
        try:
            wait = self._open_store().take_token(
                BUCKET_PREFIX + key, rate=self.rate, burst=self.burst
            )
        except JwtMcpError as exc:
            self._local_until = now + self.retry_interval
            if not self.degraded:
                self.degraded = True
                # Once per outage, not per request; the message names no password.
                log.warning(
                    json.dumps(
                        {
                            "event": "rate_limit_local",
                            "error": exc.message,
                            "detail": "the store is unreachable: each replica limits "
                            "/token by itself until it is back",
                        }
                    )
                )
            return self.local.acquire(key)
        if self.degraded:
            self.degraded = False
            log.warning(json.dumps({"event": "rate_limit_shared", "detail": "the store is back"}))
        return wait


def shared_limiter(
    local: LocalBucket,
    location: str | os.PathLike[str] | None,
    given_store: object,
    open_store: Callable[[], Store],
) -> Limiter:
    """``local``, or a :class:`SharedRateLimiter` over it when the store is networked:
    ``given_store`` (a Store object) says so by its ``networked`` attribute, else the
    ``location`` string by its scheme (:func:`~jwtmcp.store.is_networked_location`)."""
    if given_store is not None and not isinstance(given_store, str | os.PathLike):
        networked = bool(getattr(given_store, "networked", False))
    else:
        networked = bool(location) and is_networked_location(location or "")
    if not networked or local.rate <= 0:
        return local
    return SharedRateLimiter(local, open_store)
