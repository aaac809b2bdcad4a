"""Official MCP SDK (2.x) integration: protect an ``MCPServer`` in one call.

::

    mcp = protected_server("math", issuer="http://127.0.0.1:8000",
                           resource="http://127.0.0.1:8001/mcp")

    @mcp.tool()
    def add(a: float, b: float) -> float:
        return a + b

    mcp.run("streamable-http", port=8001)

The server checks every request's bearer token offline with the jwtmcp verifier, shows each
caller only the tools its ``tool:`` scopes grant, refuses any other ``tools/call`` with HTTP 403
``insufficient_scope`` before the tool runs, serves RFC 9728 metadata pointing at the issuer,
and hands the caller to tools through :func:`current_caller`.

Layers, outermost first: :class:`jwtmcp.middleware.JwtAuthMiddleware` (HTTP: 401/403, the
caller, metadata), the SDK's own bearer stack fed by :class:`JwtTokenVerifier` (session
binding, ``get_access_token()``), and :class:`ToolScopeGuard` inside the MCP server
(``tools/list`` filtering, and a clear MCP error for a denied call on any transport that
reached the handler without the HTTP layer).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.lowlevel.server import LifespanResultT
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, INVALID_REQUEST, ListToolsResult
from starlette.applications import Starlette
from starlette.routing import Route

from .errors import ConfigError, KeysUnavailable, TokenError
from .exchange_client import TokenExchangeClient
from .identifiers import canonical_issuer, canonical_resource
from .metrics import MetricsEndpoint, ServerMetrics
from .middleware import (
    DEFAULT_MAX_BODY_BYTES,
    TOOL_NAME_RULE,
    ClaimsVerifier,
    JwtAuthMiddleware,
    access_token_for,
    caller_from_scope,
    current_caller,
    get_caller,
    is_scope_tool_name,
    pending_access_token,
    reset_caller,
    resource_metadata_url,
    set_caller,
    token_from_scope,
    verifier_leeway,
)
from .server import ServerLimits, serve_async
from .tokens import TOOL_SCOPE_PREFIX, Clock, VerifiedClaims
from .verifier import Verifier

logger = logging.getLogger("jwtmcp.mcp")

__all__ = [
    "JwtTokenVerifier",
    "ProtectedMCPServer",
    "TokenExchangeClient",
    "ToolScopeGuard",
    "current_caller",
    "get_caller",
    "protected_server",
]


class JwtTokenVerifier:
    """The SDK's ``TokenVerifier`` protocol over a jwtmcp verifier.

    Fills ``AccessToken.subject``, ``client_id``, ``scopes``, ``expires_at``, ``resource`` (this
    server) and ``claims`` (with ``iss``), so the SDK binds each session to the principal
    (client id, issuer, subject) that opened it.

    The SDK's protocol can only answer "no token" (``None``, which the SDK turns into 401), so
    on its own this cannot tell a client that the issuer's keys are unavailable; servers built
    by :func:`protected_server` (or with :class:`jwtmcp.middleware.JwtAuthMiddleware` in
    front) answer 503 with ``Retry-After`` before this is asked.
    """

    def __init__(self, verifier: ClaimsVerifier, resource: str) -> None:
        self.verifier = verifier
        self.resource = resource
        self._leeway = verifier_leeway(verifier)

    async def verify_token(self, token: str) -> AccessToken | None:
        # Inside JwtAuthMiddleware the token was verified a moment ago in this very request.
        already = pending_access_token(token)
        if already is not None:
            return already
        try:
            claims = await self.verifier.verify_async(token.strip())
        except KeysUnavailable as exc:
            logger.warning("a token could not be checked, answering 401: %s", exc.message)
            return None
        except TokenError:
            return None
        return access_token_for(claims, token.strip(), self.resource, self._leeway)


def _denied(name: str) -> MCPError:
    if not is_scope_tool_name(name):
        # No scope can grant it; an MCP client may print or log the message, so no raw echo.
        return MCPError(
            code=INVALID_PARAMS,
            message=f"invalid tool name {ascii(name)[:80]}: {TOOL_NAME_RULE}",
            data={"error": "invalid_request"},
        )
    scope = TOOL_SCOPE_PREFIX + name
    return MCPError(
        code=INVALID_PARAMS,
        message=f"forbidden: calling {name} needs scope {scope}, which this token does not grant",
        data={"error": "insufficient_scope", "scope": scope},
    )


class ToolScopeGuard:
    """Server middleware (``MCPServer(middleware=[...])``) enforcing ``tool:`` scopes.

    For a message that came over HTTP it binds the caller for :func:`current_caller`, filters
    ``tools/list`` to the tools the token grants, and refuses any other ``tools/call`` with an
    MCP error naming the missing scope. Messages with no HTTP request behind them (stdio,
    in-memory) are local and pass untouched, as the SDK does for authentication.
    ``token_exchange`` (a :class:`~jwtmcp.exchange_client.TokenExchangeClient`) is what
    ``current_caller().exchange(...)`` uses in the tools.
    """

    def __init__(self, token_exchange: TokenExchangeClient | None = None) -> None:
        self.token_exchange = token_exchange

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        scope = getattr(ctx.request, "scope", None)
        if not isinstance(scope, dict):
            return await call_next(ctx)
        caller = caller_from_scope(scope)
        bound = set_caller(caller, token=token_from_scope(scope), exchange=self.token_exchange)
        try:
            method = ctx.method
            if method == "tools/call":
                name = (ctx.params or {}).get("name")
                if caller is None:
                    raise MCPError(code=INVALID_REQUEST, message="not authenticated")
                if isinstance(name, str) and not caller.may_call(name):
                    raise _denied(name)
                return await call_next(ctx)
            result = await call_next(ctx)
            if method == "tools/list":
                return _filter_tools(result, caller)
            return result
        finally:
            reset_caller(bound)


def _filter_tools(result: HandlerResult, caller: VerifiedClaims | None) -> HandlerResult:
    def allowed(name: object) -> bool:
        return caller is not None and isinstance(name, str) and caller.may_call(name)

    if isinstance(result, ListToolsResult):
        return result.model_copy(update={"tools": [t for t in result.tools if allowed(t.name)]})
    if isinstance(result, dict) and isinstance(result.get("tools"), list):
        tools = [t for t in result["tools"] if isinstance(t, dict) and allowed(t.get("name"))]
        return {**result, "tools": tools}
    return result


class ProtectedMCPServer(MCPServer[LifespanResultT]):
    """An ``MCPServer`` whose HTTP apps (Streamable HTTP and SSE) require jwtmcp tokens.

    Build it with :func:`protected_server`. It is a plain ``MCPServer`` otherwise: tools,
    resources, prompts, ``run()``, ``streamable_http_app()`` and ``sse_app()`` work as usual.
    ``run("streamable-http")`` and ``run("sse")`` serve with jwtmcp's connection limits
    (``server_limits=`` a :class:`jwtmcp.server.ServerLimits`, default from ``JWTMCP_*``
    variables) and raise :class:`jwtmcp.errors.ListenError` when the port is taken.

    ``metrics`` is its :class:`jwtmcp.metrics.ServerMetrics` (None when off); its apps serve
    them at ``metrics_path`` when that is set.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        verifier: ClaimsVerifier,
        issuer: str,
        resource: str,
        advertise_tools: bool = True,
        metrics: bool = False,
        metrics_path: str | None = "/metrics",
        token_exchange: TokenExchangeClient | None = None,
        **server_options: Any,
    ) -> None:
        if "auth" in server_options or "token_verifier" in server_options:
            raise ConfigError(
                "a protected server gets its auth from jwtmcp: drop auth= and token_verifier="
            )
        issuer, resource = canonical_issuer(issuer), canonical_resource(resource)
        self.jwt_verifier = verifier
        self.issuer_url = issuer
        self.resource_url = resource
        self.resource_metadata_url = resource_metadata_url(resource)
        self.advertise_tools = advertise_tools
        self.metrics = ServerMetrics(verifier) if metrics else None
        self.metrics_path = metrics_path
        self.token_exchange = token_exchange
        self.server_limits: ServerLimits | None = server_options.pop("server_limits", None)
        middleware: Sequence[Any] = server_options.pop("middleware", None) or ()
        super().__init__(
            name,
            token_verifier=JwtTokenVerifier(verifier, resource),
            auth=AuthSettings(
                issuer_url=issuer,  # type: ignore[arg-type]  # pydantic parses the str
                resource_server_url=resource,  # type: ignore[arg-type]
                validate_token_resource=True,
            ),
            middleware=[ToolScopeGuard(token_exchange), *middleware],
            **server_options,
        )

    async def run_streamable_http_async(self, **options: Any) -> None:
        """``run("streamable-http", ...)``: the SDK's server, with jwtmcp's connection limits
        (:class:`jwtmcp.server.ServerLimits`; ``server_limits=`` or ``JWTMCP_*`` variables)."""
        await self._serve(self.streamable_http_app(**_app_options(options)), options)

    async def run_sse_async(self, **options: Any) -> None:
        """``run("sse", ...)``: the SDK's server, with jwtmcp's connection limits."""
        await self._serve(self.sse_app(**_app_options(options)), options)

    async def _serve(self, app: Starlette, options: Mapping[str, Any]) -> None:
        await serve_async(
            app,
            host=options.get("host", "127.0.0.1"),
            port=options.get("port", 8000),
            limits=self.server_limits,
            log_level=self.settings.log_level.lower(),
        )

    async def tool_names(self) -> list[str]:
        """Names of every registered tool (what ``scopes_supported`` advertises)."""
        return [tool.name for tool in await self.list_tools()]

    def _protect(self, app: Starlette, paths: Sequence[str], max_body_bytes: int) -> Starlette:
        app.add_middleware(
            JwtAuthMiddleware,
            verifier=self.jwt_verifier,
            resource=self.resource_url,
            issuer=self.issuer_url,
            tools=self.tool_names,
            paths=paths,
            max_body_bytes=max_body_bytes,
            resource_name=self.name,
            advertise_tools=self.advertise_tools,
            metrics=self.metrics,
            token_exchange=self.token_exchange,
        )
        if self.metrics is not None and self.metrics_path:
            app.router.routes.append(
                Route(self.metrics_path, MetricsEndpoint(self.metrics.registry))
            )
        return app

    def streamable_http_app(self, **options: Any) -> Starlette:
        """The SDK's Streamable HTTP app behind jwtmcp (same options as ``MCPServer``)."""
        app = super().streamable_http_app(**options)
        path = options.get("streamable_http_path", "/mcp")
        limit = options.get("max_request_body_size", DEFAULT_MAX_BODY_BYTES)
        return self._protect(app, [path], limit)

    def sse_app(self, **options: Any) -> Starlette:
        """The SDK's legacy SSE app behind jwtmcp: the stream and the message endpoint."""
        app = super().sse_app(**options)
        paths = [options.get("sse_path", "/sse"), options.get("message_path", "/messages/")]
        limit = options.get("max_request_body_size", DEFAULT_MAX_BODY_BYTES)
        return self._protect(app, paths, limit)


def _app_options(run_options: Mapping[str, Any]) -> dict[str, Any]:
    # The SDK's run_*_async pass host on to the app (DNS-rebinding protection), not port.
    return {k: v for k, v in run_options.items() if k != "port"}


def protected_server(
    name: str | None = None,
    *,
    issuer: str,
    resource: str,
    jwks_url: str | None = None,
    jwks_file: str | None = None,
    public_key_pem: str | bytes | None = None,
    jwks_cache_file: str | None = None,
    verifier: ClaimsVerifier | None = None,
    clock: Clock | None = None,
    verifier_options: Mapping[str, Any] | None = None,
    advertise_tools: bool = True,
    metrics: bool = False,
    metrics_path: str | None = "/metrics",
    token_exchange: TokenExchangeClient | None = None,
    revocations: bool = False,
    revocation_url: str | None = None,
    revocation_cache_file: str | None = None,
    **server_options: Any,
) -> ProtectedMCPServer[Any]:
    """An ``MCPServer`` protected by jwtmcp tokens, in one call.

    ``issuer`` is the jwtmcp issuer URL (the token ``iss``); ``resource`` this server's MCP URL,
    which is the token audience (``aud``), e.g. ``http://127.0.0.1:8001/mcp``. Keys come from
    ``jwks_url`` (default: the issuer's ``/.well-known/jwks.json``), ``jwks_file`` or
    ``public_key_pem``; ``jwks_cache_file`` keeps the last good JWKS on disk so a restart
    while the issuer is down still verifies. Or pass a ready ``verifier``
    (:class:`jwtmcp.verifier.Verifier`). ``verifier_options`` are more keyword arguments
    for the :class:`~jwtmcp.verifier.Verifier` built here (e.g. ``{"leeway": 10}``, in
    seconds); ``clock`` returns epoch seconds for the token time checks. Other keyword
    arguments go to ``MCPServer``. All URLs are str. ``token_exchange`` (a
    :class:`~jwtmcp.exchange_client.TokenExchangeClient` with this server's client
    credentials) lets tools call ``await current_caller().exchange(resource=..., tools=...)``
    for a downstream token on the caller's behalf (RFC 8693, docs/token-exchange.md).

    ``revocations=True`` checks the issuer's signed revocation list
    (``<issuer>/.well-known/jwtmcp-revocations``, or ``revocation_url``, which turns the
    check on too): a revoked token gets 401 ``invalid_token`` within the list's max-age
    (60 s by default), and while no list fresh enough can be had the server answers 503
    with ``Retry-After``. ``revocation_cache_file`` keeps the last good list on disk, so a
    server restarted while the issuer is down still refuses revoked tokens (with
    ``jwks_cache_file`` for the keys that check it). See docs/revocation.md.

    ``issuer`` and ``resource`` may be spelled any way that names the same identifier
    (a trailing ``/``, upper-case host, explicit default port); they are used and published
    (RFC 9728 ``resource``, ``authorization_servers``) in canonical form, see
    :mod:`jwtmcp.identifiers`.

    Returns a :class:`ProtectedMCPServer`. Raises :class:`~jwtmcp.errors.ConfigError` for a
    URL that is not an identifier, a bad verifier option, for ``verifier`` together with
    key-source options, or for ``auth=`` or ``token_verifier=`` (the server's auth is jwtmcp's).

    The public metadata (``scopes_supported``, RFC 9728) and every 401 challenge (``scope``)
    list ``tool:<name>`` for each tool, so an OAuth client asks for them all and the issuer
    grants the part it allows. ``advertise_tools=False`` lists only ``tool:*`` instead: nobody
    learns the tool names without a token, and a jwtmcp issuer still narrows ``tool:*`` to the
    client's allowance; but an authorization server that grants ``tool:*`` literally would
    give a token for every tool, and clients can no longer ask for less by reading the names.

    ``metrics=True`` counts token checks, verified-cache hits, JWKS fetches and ``tools/call``
    decisions (:class:`jwtmcp.metrics.ServerMetrics`, ``server.metrics.registry``) and serves
    them, unauthenticated, at ``metrics_path`` (default ``/metrics``) of the server's apps;
    ``metrics_path=None`` serves them nowhere (expose ``server.metrics.registry`` yourself,
    e.g. on a loopback port). Audit lines (:mod:`jwtmcp.audit`) and OpenTelemetry spans
    (:mod:`jwtmcp.tracing`) need no option: they cost nothing until logging or an SDK is
    configured. See docs/observability.md.
    """
    issuer, resource = canonical_issuer(issuer), canonical_resource(resource)
    if verifier is None:
        if jwks_url is None and jwks_file is None and public_key_pem is None:
            jwks_url = issuer + "/.well-known/jwks.json"
        options: dict[str, Any] = dict(verifier_options or {})
        if clock is not None:
            options["clock"] = clock
        if jwks_cache_file is not None:
            options["cache_file"] = jwks_cache_file
        if revocations:
            options["revocations"] = True
        if revocation_url is not None:
            options["revocation_url"] = revocation_url
        if revocation_cache_file is not None:
            options["revocation_cache_file"] = revocation_cache_file
        verifier = Verifier(
            issuer=issuer,
            audience=resource,
            jwks_url=jwks_url,
            jwks_file=jwks_file,
            public_key_pem=public_key_pem,
            **options,
        )
    elif (
        jwks_url
        or jwks_file
        or public_key_pem
        or jwks_cache_file
        or clock
        or verifier_options
        or revocations
        or revocation_url
        or revocation_cache_file
    ):
        raise ConfigError("pass either a verifier or key-source options, not both")
    return ProtectedMCPServer(
        name,
        verifier=verifier,
        issuer=issuer,
        resource=resource,
        advertise_tools=advertise_tools,
        metrics=metrics,
        metrics_path=metrics_path,
        token_exchange=token_exchange,
        **server_options,
    )
