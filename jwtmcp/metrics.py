"""Prometheus metrics of the issuer and of protected MCP servers (docs/observability.md).

Each app gets its own ``prometheus_client.CollectorRegistry``: several issuers or protected
servers in one process (as in tests, or one process serving two MCP apps) never share or
collide on a counter. The registry is exposed in the Prometheus text format by
:class:`MetricsEndpoint` (``GET /metrics``) or by anything that takes a registry
(``prometheus_client.start_http_server(port, addr, registry=...)``).

Labels are bounded by construction: HTTP endpoints and statuses, OAuth error codes and
verification result codes are fixed sets of this package; a client is labelled by its id
only when it is a client of the clients file (every CIMD or dynamically registered client is
``public``); a tool only when the server has a tool of that name (others are ``other``).
No label ever holds a token, a secret or an unverified value.

Values computed at scrape time (key ages, the age of the last good JWKS fetch) are read
from the objects that hold them, so the hot paths pay only for counters.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .keys import RingWatcher

PUBLIC_CLIENT = "public"
"""The ``client`` label of every client that is not in the clients file (CIMD, DCR)."""
OTHER_TOOL = "other"
"""The ``tool`` label of a name that is no tool of the server."""
MAX_UNLISTED_TOOLS = 100
"""Tool labels kept when the server does not say which tools it has (first come)."""
MAX_UNLISTED_TOOL_NAME = 128
"""The longest unlisted name that may become a label (the MCP spec's limit for tool names)."""
_LABEL_NAME = re.compile(r"[!#-\[\]-~]{1,128}")
"""An unlisted name that may be a label: a scope token's characters (RFC 6749 §3.3)."""

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Histogram buckets (seconds) of request latencies: an RS256 signature takes ~1 ms."""


# --- exposition ---------------------------------------------------------------------------


class MetricsEndpoint:
    """A plain ASGI app answering ``GET``/``HEAD`` with ``registry`` in the Prometheus text
    format (prometheus-client's ``generate_latest``), ``Cache-Control: no-store``; 405 for
    other methods."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 405,
                    "headers": [(b"allow", b"GET, HEAD"), (b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        body = generate_latest(self.registry)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", CONTENT_TYPE_LATEST.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})


# --- the issuer ---------------------------------------------------------------------------

ISSUER_ENDPOINTS = ("token", "jwks", "metadata", "authorize", "register", "healthz", "metrics")


class IssuerMetrics:
    """The issuer's counters, histograms and scrape-time gauges, in their own registry.

    ``rings`` gives the key ring (for key ages); ``clock`` returns epoch seconds.
    """

    def __init__(self, rings: RingWatcher, clock: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.tokens_issued = Counter(
            "jwtmcp_issuer_tokens_issued",
            "Access tokens issued, by grant type and client (clients-file id, else 'public').",
            ["grant_type", "client"],
            registry=registry,
        )
        self.token_refusals = Counter(
            "jwtmcp_issuer_token_refusals",
            "Token requests refused, by OAuth error code (RFC 6749 5.2).",
            ["error"],
            registry=registry,
        )
        self.requests = Counter(
            "jwtmcp_issuer_requests",
            "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "jwtmcp_issuer_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        registry.register(_KeyAges(rings, clock))
        # Children made once: .labels() takes a lock and a dict lookup per call.
        self._latency = {name: self.latency.labels(name) for name in (*ISSUER_ENDPOINTS, "other")}

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request of ``endpoint`` (see :data:`ISSUER_ENDPOINTS`)."""
        self.requests.labels(endpoint, str(status)).inc()
        self._latency[endpoint].observe(seconds)


class _KeyAges(Collector):
    """``jwtmcp_issuer_key_age_seconds{role}``: seconds since the active key was activated
    and since the next key was created, read from the ring at scrape time."""

    def __init__(self, rings: RingWatcher, clock: Callable[[], float]) -> None:
        self.rings = rings
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "jwtmcp_issuer_key_age_seconds",
            "Seconds since the active key was activated, and since the next key was created.",
            labels=["role"],
        )

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        ring = self.rings.current()
        now = self.clock()
        active = ring.active
        family.add_metric(["active"], now - (active.activated_at or active.created_at))
        if ring.next is not None:
            family.add_metric(["next"], now - ring.next.created_at)
        yield family


class IssuerMetricsMiddleware:
    """Outermost ASGI middleware of the issuer: counts and times every HTTP request."""

    def __init__(
        self, app: ASGIApp, *, metrics: IssuerMetrics, endpoints: dict[str, str]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    def endpoint(self, path: str) -> str:
        name = self.endpoints.get(path)
        if name is not None:
            return name
        if path.startswith("/authorize"):
            return "authorize"
        return "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app fails before starting one

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            self.metrics.observe_request(
                self.endpoint(scope["path"]), status, time.perf_counter() - started
            )


# --- protected servers --------------------------------------------------------------------


class ServerMetrics:
    """A protected MCP server's counters, in their own registry.

    ``verifier`` (optional): a :class:`jwtmcp.verifier.Verifier` whose JWKS cache is read at
    scrape time (fetches, failures, seconds since the last good fetch).
    """

    def __init__(self, verifier: object | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.verifications = Counter(
            "jwtmcp_verifications",
            "Bearer tokens checked, by result: ok or the refusal code (token_expired...).",
            ["result"],
            registry=registry,
        )
        self.cache_hits = Counter(
            "jwtmcp_verified_cache_hits",
            "Token checks answered from the verified-token cache.",
            registry=registry,
        )
        self.cache_misses = Counter(
            "jwtmcp_verified_cache_misses",
            "Token checks that ran the full check (signature and claims).",
            registry=registry,
        )
        self.tool_calls = Counter(
            "jwtmcp_tool_calls",
            "tools/call requests decided, by tool and decision (allowed, refused).",
            ["tool", "decision"],
            registry=registry,
        )
        self._ok = self.verifications.labels("ok")
        keys = getattr(verifier, "keys", None)
        if keys is not None and hasattr(keys, "fetch_count"):
            registry.register(_JwksFetches(keys))

    def verified(self, result: str, *, cached: bool) -> None:
        """Count one token check: ``result`` is ``ok`` or the refusal code."""
        (self._ok if result == "ok" else self.verifications.labels(result)).inc()
        (self.cache_hits if cached else self.cache_misses).inc()


class _JwksFetches(Collector):
    """The JWKS cache's own counts, read at scrape time."""

    def __init__(self, keys: Any) -> None:
        self.keys = keys

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def _families(self) -> tuple[CounterMetricFamily, CounterMetricFamily, GaugeMetricFamily]:
        return (
            CounterMetricFamily("jwtmcp_jwks_fetches", "JWKS fetches started."),
            CounterMetricFamily("jwtmcp_jwks_fetch_failures", "JWKS fetches that failed."),
            GaugeMetricFamily(
                "jwtmcp_jwks_seconds_since_good_fetch",
                "Seconds since the last JWKS fetch that succeeded (absent before the first).",
            ),
        )

    def collect(self) -> Iterator[Metric]:
        fetches, failures, age = self._families()
        fetches.add_metric([], float(self.keys.fetch_count))
        failures.add_metric([], float(getattr(self.keys, "failed_fetch_count", 0)))
        yield fetches
        yield failures
        since = self.keys.seconds_since_good_fetch()
        if since is not None:
            age.add_metric([], since)
            yield age


class ToolLabels:
    """The ``tool`` label of a called name: the name when the server has such a tool, else
    ``other`` (a caller must not be able to grow the label set)."""

    def __init__(self, names: Callable[[], Any]) -> None:
        self._names = names
        self._known: frozenset[str] = frozenset()
        self._unlisted: set[str] = set()

    async def label(self, name: str, *, granted: bool = True) -> str:
        """The label of ``name`` (str); asks ``names()`` again only for a name not known yet.

        ``granted`` says whether the caller's token grants the name. Without a tool list,
        only a granted name of at most :data:`MAX_UNLISTED_TOOL_NAME` scope-token characters
        may take one of the :data:`MAX_UNLISTED_TOOLS` labels: a name the caller may not
        call (any string it likes) is ``other``, so it can neither grow a label without
        bound nor use up the labels of the server's real tools."""
        if name in self._known:
            return name
        names = await self._names()
        if names is None:
            # No tool list to check against: the first granted names seen, up to a bound.
            if name in self._unlisted:
                return name
            if (
                granted
                and len(self._unlisted) < MAX_UNLISTED_TOOLS
                and _LABEL_NAME.fullmatch(name) is not None
            ):
                self._unlisted.add(name)
                return name
            return OTHER_TOOL
        self._known = frozenset(names)
        return name if name in self._known else OTHER_TOOL
