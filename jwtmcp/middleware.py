"""Plain ASGI middleware: bearer-JWT authentication and per-tool authorisation for MCP over HTTP.

``JwtAuthMiddleware`` sits in front of any ASGI app that serves MCP over HTTP - the SDK's own
Streamable HTTP and SSE apps, or a hand-built Starlette app with ``Route("/sse")`` and
``Mount("/messages/")`` around ``SseServerTransport``. For every protected request it:

- refuses a token in the URL (``?access_token=``, RFC 6750 §2.3) with 400 ``invalid_request``;
- answers 401 with ``WWW-Authenticate: Bearer scope="tool:...", resource_metadata="..."`` when
  no bearer token was sent, and 401 ``error="invalid_token"`` when one was sent but failed
  verification (RFC 6750 §3.1); ``scope`` is what a first token should ask for;
- answers 503 ``temporarily_unavailable`` with ``Retry-After`` when the issuer's keys cannot be
  had (issuer down and no usable cached keys): an outage is not a bad token;
- reads the JSON-RPC body of a POST (bounded, replayed downstream untouched) and refuses a
  ``tools/call`` of a tool the token does not grant with 403
  ``error="insufficient_scope", scope="tool:<a> tool:<b>"`` naming every missing scope - the
  tool never runs; a name that cannot be a scope token (RFC 6749 §3.3) gets 400
  ``invalid_request`` instead of being echoed into a header;
- hands the verified caller downstream: ``scope["user"]`` / ``scope["auth"]`` as the SDK's
  transports expect (so sessions stay bound to the principal that opened them), the SDK's
  ``get_access_token()``, and :func:`current_caller` for tools.

It also serves the RFC 9728 protected-resource metadata document that the challenges point to.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.authentication import AuthCredentials
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import audit
from .errors import KeysUnavailable, TokenError
from .exchange_client import Caller, TokenExchangeClient
from .identifiers import canonical_issuer, canonical_resource
from .metrics import OTHER_TOOL, ServerMetrics, ToolLabels
from .strict_json import unique_members
from .tokens import TOOL_SCOPE_PREFIX, VerifiedClaims
from .tracing import (
    CLIENT_ID,
    DECISION,
    ENDUSER_ID,
    REASON,
    TOOL,
    TOOL_CALL_SPAN,
    VERIFY_SPAN,
    tracer,
    tracing_on,
)

logger = logging.getLogger("jwtmcp.middleware")

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest JSON-RPC POST body inspected (the SDK's own default request-body limit)."""

CALLER_SCOPE_KEY = "jwtmcp.caller"
"""ASGI scope key holding the :class:`VerifiedClaims` of an authenticated request."""

WELL_KNOWN_RESOURCE = "/.well-known/oauth-protected-resource"

KEYS_UNAVAILABLE_RETRY_AFTER = 5
"""``Retry-After`` (seconds) of the 503 answered while the issuer's keys cannot be had."""

ToolNames = Iterable[str] | Callable[[], Awaitable[Iterable[str]]]
"""Tool names for ``scopes_supported``: a fixed list, or an async callable asked per request."""

ANY_TOOL_SCOPE = TOOL_SCOPE_PREFIX + "*"
"""What a server that keeps its tool names private advertises: "ask for every tool"."""


class ClaimsVerifier(Protocol):
    """What the middleware needs from :class:`jwtmcp.verifier.Verifier`."""

    async def verify_async(self, token: str) -> VerifiedClaims: ...


# --- the caller, for tools --------------------------------------------------------------

_Bound = tuple[VerifiedClaims, str | None, TokenExchangeClient | None]
# The caller, its raw bearer token (for token exchange only, Caller.exchange; never logged)
# and the server's token-exchange credentials (protected_server(token_exchange=...)). One
# variable, so binding a caller costs one set and one reset per request.
_caller: ContextVar[_Bound | None] = ContextVar("jwtmcp_caller", default=None)

# The SDK's bearer backend runs inside this middleware and asks the token verifier again;
# this remembers the answer already computed for the current request (same task), so the
# signature is never checked twice. Holds (token, AccessToken).
_pending: ContextVar[tuple[str, AccessToken] | None] = ContextVar("jwtmcp_pending", default=None)


def get_caller() -> Caller | None:
    """The verified claims of the token behind the current MCP request, or ``None``.

    Returns a :class:`~jwtmcp.exchange_client.Caller` (a
    :class:`~jwtmcp.tokens.VerifiedClaims` with :meth:`~jwtmcp.exchange_client.Caller.exchange`),
    or ``None`` outside a request authenticated by jwtmcp (for example on stdio). Never raises.
    """
    bound = _caller.get()
    if bound is None:
        return None
    return Caller.of(*bound)


def current_caller() -> Caller:
    """The verified claims of the token behind the current MCP request.

    Works in sync and async tools, over Streamable HTTP and SSE. Returns a
    :class:`~jwtmcp.exchange_client.Caller`, a :class:`~jwtmcp.tokens.VerifiedClaims`:
    ``.subject``, ``.client_id``, ``.scopes``, ``.tools``, ``.expires_at`` (epoch seconds),
    ``.actor`` (RFC 8693 ``act``) and the raw ``.claims``; plus ``await .exchange(resource=...,
    tools=[...])``, a token for a downstream server on the caller's behalf (RFC 8693, see
    docs/token-exchange.md). Raises ``LookupError`` outside an authenticated request (use
    :func:`get_caller` for ``None``).
    """
    caller = get_caller()
    if caller is None:
        raise LookupError(
            "no authenticated caller: current_caller() works inside a tool served over HTTP "
            "by a jwtmcp-protected server"
        )
    return caller


def set_caller(
    caller: VerifiedClaims | None,
    *,
    token: str | None = None,
    exchange: TokenExchangeClient | None = None,
) -> Any:
    """Bind ``caller`` for the current context, with its raw bearer ``token`` and the
    server's ``exchange`` client (for :meth:`~jwtmcp.exchange_client.Caller.exchange`);
    returns what :func:`reset_caller` takes."""
    return _caller.set(None if caller is None else (caller, token, exchange))


def reset_caller(token: Any) -> None:
    _caller.reset(token)


def token_from_scope(scope: Scope) -> str | None:
    """The raw bearer token of an authenticated HTTP request (the SDK's authenticated
    user holds it), or None."""
    user = scope.get("user")
    if isinstance(user, AuthenticatedUser):
        return user.access_token.token
    return None


def pending_access_token(token: str) -> AccessToken | None:
    """The AccessToken this middleware already built for ``token`` in this request, if any."""
    pending = _pending.get()
    if pending is not None and pending[0] == token.strip():
        return pending[1]
    return None


# --- helpers shared with jwtmcp.mcp ----------------------------------------------------


def resource_metadata_url(resource: str) -> str:
    """RFC 9728 §3.1 metadata URL of ``resource``: the well-known path inserted before its path.

    ``resource`` is put in canonical form first (:mod:`jwtmcp.identifiers`); a query stays
    at the end, as §3.1 says. Raises :class:`ConfigError` for a URL that is not a resource
    identifier.
    """
    parts = urlsplit(canonical_resource(resource))
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{parts.netloc}{WELL_KNOWN_RESOURCE}{parts.path}{query}"


def access_token_for(
    claims: VerifiedClaims, token: str, resource: str, leeway: float = 0.0
) -> AccessToken:
    """The SDK's view of a verified token.

    ``client_id``, ``subject`` and ``claims["iss"]`` are what the SDK binds sessions to;
    ``resource`` is this server (the verifier already checked that ``aud`` contains it).
    ``expires_at`` (epoch seconds) is ``exp`` plus the verifier's ``leeway`` (seconds): the
    moment this server stops accepting the token. The SDK's bearer layer compares it with the
    wall clock and no leeway, so with plain ``exp`` it would refuse a token jwtmcp still
    accepts; with the leeway added, jwtmcp's own check is the one that decides.
    """
    # model_construct: every value is already checked; skip pydantic validation on the hot path.
    return AccessToken.model_construct(
        token=token,
        client_id=claims.client_id or claims.subject,
        scopes=list(claims.scopes),
        expires_at=int(claims.expires_at + leeway),
        resource=resource,
        subject=claims.subject,
        claims=dict(claims.claims),
    )


def verifier_leeway(verifier: object) -> float:
    """The clock leeway (seconds) of ``verifier``; 0 for one that does not say."""
    leeway = getattr(verifier, "leeway", 0.0)
    return float(leeway) if isinstance(leeway, int | float) else 0.0


def refusal_reason(exc: TokenError) -> str:
    """How a refused token is described: the words ``jwtmcp verify`` prints for it, too."""
    return f"token refused ({exc.code}): {exc.message}"


def caller_from_scope(scope: Scope) -> VerifiedClaims | None:
    """The caller of an HTTP request: set by this middleware, else the SDK's authenticated user."""
    caller = scope.get(CALLER_SCOPE_KEY)
    if isinstance(caller, VerifiedClaims):
        return caller
    user = scope.get("user")
    if isinstance(user, AuthenticatedUser) and user.access_token.claims:
        try:
            return VerifiedClaims.from_claims(user.access_token.claims)
        except (KeyError, TypeError, ValueError):
            return None
    return None


# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


TOOL_NAME_RULE = "a tool name must be printable ASCII without spaces, quotes or backslashes"


def is_scope_tool_name(name: str) -> bool:
    """Whether ``tool:<name>`` is a scope token (RFC 6749 §3.3), so it can be granted and named.

    Such a name is printable ASCII with no space, quote or backslash: safe inside a quoted
    string of a ``WWW-Authenticate`` challenge (RFC 9110 §5.6.4) as it is.
    """
    return _SCOPE_TOKEN.fullmatch(name) is not None


def for_log(value: object) -> str:
    """An untrusted value for a log line: ASCII-escaped (no CR/LF/control/non-ASCII), bounded."""
    text = ascii(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _quoted(value: str) -> str:
    # RFC 9110 §5.6.4 quoted-string: escape '"' and '\'; drop what a header cannot carry
    # (controls, and non-ASCII, which this module never sends).
    kept = "".join(c for c in value if 0x20 <= ord(c) <= 0x7E)
    return '"' + kept.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _challenge_value(
    metadata_url: str,
    *,
    error: str | None = None,
    description: str | None = None,
    scope: str | None = None,
) -> bytes:
    parts: list[str] = []
    if error is not None:
        parts.append(f"error={_quoted(error)}")
    if scope is not None:
        parts.append(f"scope={_quoted(scope)}")
    if description is not None:
        parts.append(f'error_description="{_safe_description(description)}"')
    parts.append(f"resource_metadata={_quoted(metadata_url)}")
    return ("Bearer " + ", ".join(parts)).encode("ascii", "replace")


def _safe_description(text: str) -> str:
    # RFC 6750 §3: error_description is %x20-21 / %x23-5B / %x5D-7E (no quote, no backslash).
    # '=' is dropped too: the SDK client finds parameters with a loose regex.
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\=' else " " for c in text)[:200]


async def _send_json(
    send: Send, status: int, body: Any, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class _BodyTooLarge(Exception):
    pass


# Two "method" or "name" keys could make this parser and the SDK's disagree on which tool is
# called; a body like that is refused instead of guessed at. One decoder for every body:
# json.loads(..., object_pairs_hook=...) builds a new one per call.
_BODY_JSON = json.JSONDecoder(object_pairs_hook=unique_members)


def called_tools(body: bytes) -> list[tuple[Any, str]] | None:
    """``(id, tool name)`` of every ``tools/call`` in a JSON-RPC body (single or batch).

    Returns ``None`` when the body is not JSON this module can read with certainty while it
    might still name ``tools/call``; the caller refuses such a body. A body that cannot contain
    a ``tools/call`` at all is not parsed (the common case stays cheap).
    """
    # A tools/call must spell "tools/call" literally unless it uses JSON escapes or another
    # encoding (UTF-16/32 JSON always holds NUL bytes); only then may parsing be skipped.
    if b"tools/call" not in body and b"\\" not in body and b"\x00" not in body:
        return []
    try:
        # Same decoding as json.loads(bytes): UTF-8/16/32 detected from the first bytes.
        message = _BODY_JSON.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    messages = message if isinstance(message, list) else [message]
    calls: list[tuple[Any, str]] = []
    for item in messages:
        if not isinstance(item, dict) or item.get("method") != "tools/call":
            continue
        params = item.get("params")
        name = params.get("name") if isinstance(params, dict) else None
        if not isinstance(name, str):
            return None
        calls.append((item.get("id"), name))
    return calls


# CORS for browser-based MCP clients. Any origin and never credentials: a bearer token is
# no ambient credential, so another origin's page can only use a token it already holds.
_PREFLIGHT = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"GET, POST, DELETE, OPTIONS"),
    (
        b"access-control-allow-headers",
        b"Authorization, Content-Type, Accept, mcp-protocol-version, mcp-session-id, "
        b"last-event-id",
    ),
    (b"access-control-max-age", b"600"),
]
_EXPOSE = (b"access-control-expose-headers", b"WWW-Authenticate, mcp-session-id")


def _is_cors_preflight(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """``Origin`` and ``Access-Control-Request-Method`` present, ``Authorization`` absent."""
    names = {name.lower() for name, _ in headers}
    return (
        b"origin" in names
        and b"access-control-request-method" in names
        and b"authorization" not in names
    )


def _readable_cross_origin(send: Send) -> Send:
    """``send`` adding ``Access-Control-Allow-Origin: *`` and exposing ``WWW-Authenticate``
    and ``mcp-session-id`` unless the answer already has CORS headers (an app's own, e.g.
    Starlette's ``CORSMiddleware`` with an origin list, is kept as it is)."""

    async def send_readable(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            if not any(name.lower() == _PREFLIGHT[0][0] for name, _ in headers):
                message = {**message, "headers": [*headers, _PREFLIGHT[0], _EXPOSE]}
        await send(message)

    return send_readable


class JwtAuthMiddleware:
    """Protect an ASGI app serving MCP over HTTP with jwtmcp bearer tokens.

    ``verifier`` checks tokens (a :class:`jwtmcp.verifier.Verifier` whose audience is
    ``resource``); ``resource`` is this server's URL (the token audience, RFC 8707) and
    ``issuer`` the authorization server the metadata points clients to, both kept and
    published in canonical form (:mod:`jwtmcp.identifiers`). ``tools`` (names, or an
    async callable returning them) fills ``scopes_supported`` and the ``scope`` of every 401
    challenge: what a first token should ask for (MCP authorization, 2025-11-25).
    ``advertise_tools=False`` puts only ``tool:*`` there, so the public metadata and challenges
    name no tool; see :func:`jwtmcp.mcp.protected_server` for the trade-off. ``paths`` limits
    protection to those path prefixes (default: every path but the metadata document).
    ``max_body_bytes`` bounds the POST bodies read for authorisation; larger ones get 413.
    ``metrics`` (a :class:`jwtmcp.metrics.ServerMetrics`) counts token checks and
    ``tools/call`` decisions; every decision is also an audit line (:mod:`jwtmcp.audit`)
    and checks and calls are OpenTelemetry spans (:mod:`jwtmcp.tracing`).
    ``token_exchange`` (a :class:`~jwtmcp.exchange_client.TokenExchangeClient`) lets tools
    call ``await current_caller().exchange(...)`` (RFC 8693).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: ClaimsVerifier,
        resource: str,
        issuer: str,
        tools: ToolNames | None = None,
        paths: Iterable[str] | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        resource_name: str | None = None,
        advertise_tools: bool = True,
        metrics: ServerMetrics | None = None,
        token_exchange: TokenExchangeClient | None = None,
    ) -> None:
        self.app = app
        self.token_exchange = token_exchange
        self.verifier = verifier
        self._leeway = verifier_leeway(verifier)
        self.resource = canonical_resource(resource)
        self.issuer = canonical_issuer(issuer)
        self.metadata_url = resource_metadata_url(self.resource)
        self.metadata_path = urlsplit(self.metadata_url).path
        self._tools = tools
        self._paths = tuple(paths) if paths is not None else None
        self.max_body_bytes = max_body_bytes
        self.resource_name = resource_name
        self.advertise_tools = advertise_tools
        self._metadata_cache: tuple[tuple[str, ...], bytes] | None = None
        self.metrics = metrics
        self._tool_labels = ToolLabels(self.tool_names)
        # The verifier's verified-token cache, read (never changed) to count hits and misses.
        self._verified_tokens: Any = getattr(verifier, "_verified", None)

    # --- dispatch -----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        if kind == "http" and path == self.metadata_path:
            await self._serve_metadata(scope, send)
            return
        if not self._protects(path):
            await self.app(scope, receive, send)
            return
        if kind != "http":
            # No bearer-token handshake for websockets here: refuse rather than pass through.
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["method"] == "OPTIONS" and _is_cors_preflight(scope["headers"]):
            # A browser sends a CORS preflight without credentials (Fetch standard, CORS
            # protocol), so it cannot be authenticated; answered here, it never reaches the
            # app (the SDK's own RequireAuthMiddleware would refuse it with 401 too).
            await send({"type": "http.response.start", "status": 204, "headers": _PREFLIGHT})
            await send({"type": "http.response.body", "body": b""})
            return
        await self._protected(scope, receive, _readable_cross_origin(send))

    def _protects(self, path: str) -> bool:
        if self._paths is None:
            return True
        return any(
            path == p or path.startswith(p if p.endswith("/") else p + "/") for p in self._paths
        )

    async def _protected(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("query_string") and _token_in_query(scope["query_string"]):
            await self._refuse(
                send,
                400,
                "invalid_request",
                "access tokens in the URL are refused; send Authorization: Bearer <token>",
            )
            return
        credentials = [v for k, v in scope["headers"] if k == b"authorization"]
        if not credentials:
            await self._unauthenticated(send)
            return
        if len(credentials) > 1:
            await self._refuse(send, 400, "invalid_request", "more than one Authorization header")
            return
        scheme, _, raw = credentials[0].decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer":
            # Another scheme (Basic...) is no bearer token at all: same answer as none.
            await self._unauthenticated(send)
            return
        token = raw.strip()
        if not token:
            scope_needed = await self._scope()
            await self._refuse(send, 401, "invalid_token", "empty bearer token", scope_needed)
            return
        try:
            claims = await self._verify(token)
        except KeysUnavailable as exc:
            # An outage, not a bad token: a 401 would make an OAuth client throw away a good
            # token and run its flow against an issuer that is down (RFC 9110 §15.6.4).
            logger.warning("answered 503: %s", exc.message)
            await _send_json(
                send,
                503,
                {"error": "temporarily_unavailable", "error_description": exc.message},
                [(b"retry-after", str(KEYS_UNAVAILABLE_RETRY_AFTER).encode())],
            )
            return
        except TokenError as exc:
            logger.info("refused a bearer token: %s", exc.code)
            await self._refuse(
                send, 401, "invalid_token", refusal_reason(exc), await self._scope()
            )
            return

        calls: list[tuple[Any, str]] | None = None
        if scope["method"] == "POST":
            try:
                body = await _read_body(receive, self.max_body_bytes)
            except _BodyTooLarge:
                await self._unreadable(claims)
                await _send_json(send, 413, {"error": "request body too large"})
                return
            calls = called_tools(body)
            if calls is None:
                await self._unreadable(claims)
                await _send_json(
                    send,
                    400,
                    {
                        "jsonrpc": "2.0",
                        "id": None,
                        "error": {"code": -32700, "message": "unreadable JSON-RPC body"},
                    },
                )
                return
            denied = [(rid, name) for rid, name in calls if not claims.may_call(name)]
            unnamable = [(rid, name) for rid, name in denied if not is_scope_tool_name(name)]
            if unnamable:
                await self._decided(claims, calls, "invalid_request")
                await self._invalid_tool_name(send, claims, unnamable)
                return
            if denied:
                await self._decided(claims, calls, "insufficient_scope")
                await self._forbidden(send, claims, denied)
                return
            if calls:
                await self._decided(claims, calls, None)
            receive = _replay(body, receive)

        access = access_token_for(claims, token, self.resource, self._leeway)
        user = AuthenticatedUser(access)
        scope[CALLER_SCOPE_KEY] = claims
        scope["user"] = user
        scope["auth"] = AuthCredentials(access.scopes)
        caller_token = set_caller(claims, token=token, exchange=self.token_exchange)
        pending_token = _pending.set((token, access))
        sdk_token = auth_context_var.set(user)
        try:
            with self._tool_span(claims, calls, None) if calls else contextlib.nullcontext():
                await self.app(scope, receive, send)
        finally:
            auth_context_var.reset(sdk_token)
            _pending.reset(pending_token)
            reset_caller(caller_token)

    # --- what an operator sees: metrics, audit, spans -------------------------------------

    async def _verify(self, token: str) -> VerifiedClaims:
        """The verifier's answer for ``token``, counted, spanned, and audited when refused."""
        metrics = self.metrics
        if metrics is None and not tracing_on():  # nothing to count or span: the plain check
            try:
                return await self.verifier.verify_async(token)
            except TokenError as exc:
                audit.token_refused(exc.code)
                raise
        cache = self._verified_tokens
        cached = metrics is not None and cache is not None and token in cache
        with tracer.start_as_current_span(
            VERIFY_SPAN, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                claims = await self.verifier.verify_async(token)
            except TokenError as exc:
                if metrics is not None:
                    metrics.verified(exc.code, cached=cached)
                audit.token_refused(exc.code)
                if span.is_recording():
                    span.set_attributes({DECISION: "refused", REASON: exc.code})
                raise
            if metrics is not None:
                metrics.verified("ok", cached=cached)
            if span.is_recording():
                span.set_attributes(
                    {
                        ENDUSER_ID: claims.subject,
                        CLIENT_ID: claims.client_id or "",
                        DECISION: "ok",
                    }
                )
            return claims

    async def _decided(
        self, claims: VerifiedClaims, calls: list[tuple[Any, str]], refusal: str | None
    ) -> None:
        """Count and audit every ``tools/call`` of a request; ``refusal`` is the code the
        whole request is refused with (None: allowed). A refused request gets its span here;
        an allowed one around the app (:meth:`_tool_span`)."""
        decision = audit.ALLOWED if refusal is None else audit.REFUSED
        for _, name in calls:
            reason = refusal
            if refusal is not None and not claims.may_call(name):
                reason = "insufficient_scope" if is_scope_tool_name(name) else "invalid_request"
            audit.tool_call(claims, name, decision, reason)
            if self.metrics is not None:
                label = await self._tool_labels.label(name, granted=claims.may_call(name))
                self.metrics.tool_calls.labels(label, decision).inc()
        if refusal is not None:
            with self._tool_span(claims, calls, refusal):
                pass

    async def _unreadable(self, claims: VerifiedClaims) -> None:
        """Count and audit a request refused because its body cannot be read while it may
        name ``tools/call`` (a name that is no string, JSON cut short, a body over
        ``max_body_bytes``): a refused call like
        any other, with no tool name (``tool`` null in the audit line, ``other`` in the
        metric), so a verified caller's probing never goes unseen."""
        reason = "invalid_request"
        audit.tool_call(claims, None, audit.REFUSED, reason)
        if self.metrics is not None:
            self.metrics.tool_calls.labels(OTHER_TOOL, audit.REFUSED).inc()
        with self._tool_span(claims, [], reason):
            pass

    def _tool_span(
        self, claims: VerifiedClaims, calls: list[tuple[Any, str]], refusal: str | None
    ) -> contextlib.AbstractContextManager[Any]:
        if not tracing_on():
            return contextlib.nullcontext()
        attributes = {
            ENDUSER_ID: claims.subject,
            CLIENT_ID: claims.client_id or "",
            TOOL: ",".join(name for _, name in calls)[: audit.MAX_AUDITED_TEXT],
            DECISION: audit.ALLOWED if refusal is None else audit.REFUSED,
        }
        if refusal is not None:
            attributes[REASON] = refusal
        return tracer.start_as_current_span(TOOL_CALL_SPAN, attributes=attributes)

    # --- answers ------------------------------------------------------------------------

    async def _unauthenticated(self, send: Send) -> None:
        # RFC 6750 §3.1: no error code when the request carried no authentication.
        challenge = _challenge_value(self.metadata_url, scope=await self._scope())
        await _send_json(
            send,
            401,
            {"error_description": "a bearer token is required"},
            [(b"www-authenticate", challenge)],
        )

    async def _scope(self) -> str | None:
        # The challenge's scope: what a first token should ask for (the advertised scopes).
        scopes = await self.advertised_scopes()
        if not scopes:
            return None
        return " ".join(s for s in scopes if is_scope_tool_name(s)) or None

    async def _refuse(
        self, send: Send, status: int, error: str, description: str, scope: str | None = None
    ) -> None:
        challenge = _challenge_value(
            self.metadata_url, error=error, description=description, scope=scope
        )
        await _send_json(
            send,
            status,
            {"error": error, "error_description": description},
            [(b"www-authenticate", challenge)],
        )

    async def _forbidden(
        self, send: Send, claims: VerifiedClaims, denied: list[tuple[Any, str]]
    ) -> None:
        names = list(dict.fromkeys(name for _, name in denied))
        needed = " ".join(TOOL_SCOPE_PREFIX + name for name in names)
        description = f"this token does not grant {needed}"
        logger.info(
            "refused tools/call of %s for sub %s", for_log(",".join(names)), for_log(claims.subject)
        )
        challenge = _challenge_value(
            self.metadata_url, error="insufficient_scope", description=description, scope=needed
        )
        # The body is a JSON-RPC error, so a client holding a static token gets a clear
        # MCP error naming the missing scope; the header is for OAuth clients (step-up).
        request_id = denied[0][0] if len(denied) == 1 else None
        body = {
            "jsonrpc": "2.0",
            "id": request_id,
            "error": {
                "code": -32602,
                "message": f"forbidden: calling {', '.join(names)} needs scope {needed}, "
                "which this token does not grant",
                "data": {"error": "insufficient_scope", "scope": needed},
            },
        }
        await _send_json(send, 403, body, [(b"www-authenticate", challenge)])

    async def _invalid_tool_name(
        self, send: Send, claims: VerifiedClaims, calls: list[tuple[Any, str]]
    ) -> None:
        # No scope can grant such a name, and echoing it would break the challenge (CR/LF,
        # quotes) or change its meaning (a space splits scopes): refuse the request instead.
        logger.info(
            "refused tools/call of an invalid tool name %s for sub %s",
            for_log(calls[0][1]),
            for_log(claims.subject),
        )
        description = TOOL_NAME_RULE
        challenge = _challenge_value(
            self.metadata_url, error="invalid_request", description=description
        )
        body = {
            "jsonrpc": "2.0",
            "id": calls[0][0] if len(calls) == 1 else None,
            "error": {
                "code": -32602,
                "message": f"invalid tool name {ascii(calls[0][1])[:80]}: {description}",
                "data": {"error": "invalid_request"},
            },
        }
        await _send_json(send, 400, body, [(b"www-authenticate", challenge)])

    # --- RFC 9728 metadata ----------------------------------------------------------------

    async def _serve_metadata(self, scope: Scope, send: Send) -> None:
        cors = [
            (b"access-control-allow-origin", b"*"),
            (b"access-control-allow-methods", b"GET, OPTIONS"),
        ]
        method = scope["method"]
        if method == "OPTIONS":
            await send({"type": "http.response.start", "status": 204, "headers": cors})
            await send({"type": "http.response.body", "body": b""})
            return
        if method not in ("GET", "HEAD"):
            await send(
                {
                    "type": "http.response.start",
                    "status": 405,
                    "headers": [(b"allow", b"GET, OPTIONS"), (b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        data = await self.metadata_document()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                    (b"cache-control", b"public, max-age=300"),
                    *cors,
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else data})

    async def tool_names(self) -> tuple[str, ...] | None:
        """The tool names advertised in ``scopes_supported``, or ``None`` when not configured."""
        if self._tools is None:
            return None
        if callable(self._tools):
            names = await self._tools()
        else:
            names = self._tools
        return tuple(dict.fromkeys(names))

    async def advertised_scopes(self) -> tuple[str, ...] | None:
        """The scopes of ``scopes_supported`` and of the 401 ``scope``; ``None`` for none.

        ``tool:<name>`` for every tool, or only ``tool:*`` when ``advertise_tools`` is off.
        """
        if not self.advertise_tools:
            return (ANY_TOOL_SCOPE,)
        names = await self.tool_names()
        if names is None:
            return None
        return tuple(TOOL_SCOPE_PREFIX + n for n in names)

    async def metadata_document(self) -> bytes:
        """The RFC 9728 protected-resource metadata of this server, as JSON bytes."""
        scopes = await self.advertised_scopes()
        key = scopes if scopes is not None else ("\x00none",)
        cached = self._metadata_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        document: dict[str, Any] = {
            "resource": self.resource,
            "authorization_servers": [self.issuer],
            "bearer_methods_supported": ["header"],
        }
        if scopes is not None:
            # What the SDK's OAuth client asks the issuer for: every tool of this server.
            # The issuer grants the part this client is allowed, so one token covers it all.
            document["scopes_supported"] = list(scopes)
        if self.resource_name:
            document["resource_name"] = self.resource_name
        data = json.dumps(document, separators=(",", ":")).encode()
        self._metadata_cache = (key, data)
        return data


def _route_path(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def _token_in_query(query_string: bytes) -> bool:
    if b"access_token" not in query_string:
        return False
    try:
        text = query_string.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return True
    return any(key == "access_token" for key, _ in parse_qsl(text, keep_blank_values=True))


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
