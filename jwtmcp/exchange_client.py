"""The protected server's side of token exchange: a downstream token for the caller, in one line.

Inside a tool of a protected server::

    token = await current_caller().exchange(resource="http://127.0.0.1:8002/mcp",
                                            tools=["search"])

:class:`TokenExchangeClient` holds the server's own client credentials (it is a client of
the clients file with ``resource`` and ``delegate`` members, see docs/token-exchange.md)
and asks the issuer's ``/token`` for an RFC 8693 exchange of the caller's token. Answers
are cached per (caller's token, resource, tools) until shortly before they expire, in a
bounded cache, so a tool called in a loop costs one exchange per token lifetime.

:class:`Caller` is what :func:`jwtmcp.middleware.current_caller` returns: the caller's
:class:`~jwtmcp.tokens.VerifiedClaims` plus :meth:`Caller.exchange`.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import httpx2

from .errors import ConfigError, JwtMcpError
from .identifiers import canonical_issuer, canonical_resource
from .numeric import parse_whole_number
from .tokens import Clock, VerifiedClaims, tool_scopes

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
"""The ``grant_type`` of RFC 8693 §2.1."""
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URI
"""The one token type exchanged and issued (RFC 8693 §3)."""
DEFAULT_CACHE_SIZE = 1024
"""Exchanged tokens kept at most (least recently used dropped first)."""
DEFAULT_REFRESH_MARGIN = 30.0
"""Seconds before expiry at which a cached token is exchanged again."""
DEFAULT_TIMEOUT = 5.0
"""Seconds a request to the issuer may take."""
DEFAULT_RETRY_AFTER = 5


class TokenExchangeError(JwtMcpError):
    """The issuer refused the exchange (RFC 6749 §5.2, RFC 8693 §2.2.2).

    ``code`` (and ``error``) is the OAuth error code the issuer answered
    (``invalid_grant``, ``invalid_target``, ``invalid_scope``, ``invalid_request``,
    ``invalid_client``, ``unauthorized_client``, ``slow_down``...); ``status`` the HTTP
    status; ``retry_after`` the seconds the issuer asked to wait, or None. The message holds
    the issuer's description, cleaned of control characters.
    """

    code = "token_exchange_refused"

    def __init__(
        self, error: str, message: str, *, status: int, retry_after: int | None = None
    ) -> None:
        super().__init__(message, code=error)
        self.error = error
        self.status = status
        self.retry_after = retry_after


class TokenExchangeUnavailable(JwtMcpError):
    """The issuer could not be asked: unreachable, timed out, a 5xx, or an answer that is not
    OAuth JSON. Not a refusal of the caller's token: try again later (``retry_after``,
    seconds)."""

    code = "token_exchange_unavailable"

    def __init__(self, message: str, *, retry_after: int = DEFAULT_RETRY_AFTER) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _clean(text: object, limit: int = 200) -> str:
    """An issuer-sent string for a message: printable ASCII only, bounded."""
    value = str(text) if isinstance(text, str) else ""
    return "".join(c if 0x20 <= ord(c) <= 0x7E else " " for c in value)[:limit]


def _retry_after(response: httpx2.Response) -> int | None:
    """The ``Retry-After`` seconds (RFC 9110 §10.2.3, the delay form) when it is ASCII digits
    up to a day; None for anything else (an HTTP date, other scripts' digits, garbage)."""
    try:
        seconds = parse_whole_number(response.headers.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if seconds <= 86400 else None


class TokenExchangeClient:
    """A protected server's credentials for RFC 8693 exchanges at a jwtmcp issuer.

    ``issuer`` (str) is the issuer URL (its ``/token`` is used unless ``token_endpoint`` is
    given); ``client_id`` and ``client_secret`` (str) the server's entry in the issuer's
    clients file, sent with HTTP Basic (``client_secret_basic``). ``timeout`` (seconds)
    bounds each request; ``cache_size`` (tokens) bounds the cache; a cached token is used
    until ``refresh_margin`` seconds (or a quarter of its lifetime, if less) before its
    expiry. ``clock`` returns epoch seconds. ``http_client`` (an ``httpx2.AsyncClient``)
    replaces the client made for each request (the caller then owns it).

    Raises :class:`~jwtmcp.errors.ConfigError` for an issuer that is not a URL, an empty
    client id or secret, or a bound out of range.
    """

    def __init__(
        self,
        *,
        issuer: str,
        client_id: str,
        client_secret: str,
        token_endpoint: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        cache_size: int = DEFAULT_CACHE_SIZE,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        clock: Clock = time.time,
        http_client: httpx2.AsyncClient | None = None,
    ) -> None:
        issuer = canonical_issuer(issuer)
        if not isinstance(client_id, str) or not client_id:
            raise ConfigError("the token exchange needs this server's client_id")
        if not isinstance(client_secret, str) or not client_secret:
            raise ConfigError("the token exchange needs this server's client_secret")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ConfigError(f"cache_size must be a whole number >= 0, not {cache_size!r}")
        for name, value in (("timeout", timeout), ("refresh_margin", refresh_margin)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{name} must be a number of seconds >= 0, not {value!r}")
        self.issuer = issuer
        self.token_endpoint = token_endpoint or f"{issuer}/token"
        self.client_id = client_id
        self._secret = client_secret
        self.timeout = float(timeout)
        self.cache_size = cache_size
        self.refresh_margin = float(refresh_margin)
        self._clock = clock
        self._http = http_client
        # sha256(subject token), resource, scope -> (access token, time to exchange again)
        self._cache: OrderedDict[tuple[bytes, str, str], tuple[str, float]] = OrderedDict()

    def __repr__(self) -> str:
        return f"TokenExchangeClient(issuer={self.issuer!r}, client_id={self.client_id!r})"

    def cached_count(self) -> int:
        """How many exchanged tokens the cache holds."""
        return len(self._cache)

    async def exchange(
        self, subject_token: str, *, resource: str, tools: Iterable[str] = ()
    ) -> str:
        """An access token for ``resource`` on behalf of ``subject_token``'s subject.

        ``subject_token`` is the caller's token (str) for this server; ``resource`` the
        downstream server's resource URL (RFC 8707); ``tools`` the tool names to ask for
        (none: everything the issuer allows). Returns the new token (str), from the cache
        while it has more than the refresh margin left.

        Raises :class:`TokenExchangeError` when the issuer refuses (its OAuth error code in
        ``.error``), :class:`TokenExchangeUnavailable` when it cannot be asked, and
        :class:`~jwtmcp.errors.ConfigError` for a ``resource`` or tool name that is not valid.
        """
        target = canonical_resource(resource)
        names = [tools] if isinstance(tools, str) else list(tools)
        scope = " ".join(sorted(tool_scopes(names)))
        key = (
            hashlib.sha256(subject_token.encode("utf-8", "surrogatepass")).digest(),
            target,
            scope,
        )
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None:
            if now < cached[1]:
                self._cache.move_to_end(key)
                return cached[0]
            del self._cache[key]
        token, expires_in = await self._request(subject_token, target, scope)
        margin = min(self.refresh_margin, expires_in / 4)
        if self.cache_size:
            self._cache[key] = (token, now + expires_in - margin)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return token

    async def _request(self, subject_token: str, target: str, scope: str) -> tuple[str, float]:
        form = {
            "grant_type": GRANT_TYPE,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "requested_token_type": ACCESS_TOKEN_TYPE,
            "resource": target,
        }
        if scope:
            form["scope"] = scope
        auth = httpx2.BasicAuth(self.client_id, self._secret)
        try:
            if self._http is not None:
                response = await self._http.post(
                    self.token_endpoint, data=form, auth=auth, timeout=self.timeout
                )
            else:
                async with httpx2.AsyncClient(timeout=self.timeout) as http:
                    response = await http.post(self.token_endpoint, data=form, auth=auth)
        except httpx2.HTTPError as exc:
            raise TokenExchangeUnavailable(
                f"the issuer at {self.token_endpoint} could not be reached ({type(exc).__name__})"
            ) from None
        return self._answer(response)

    def _answer(self, response: httpx2.Response) -> tuple[str, float]:
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if response.status_code >= 500 or not isinstance(body, dict):
            raise TokenExchangeUnavailable(
                f"the issuer answered the token exchange with HTTP {response.status_code}",
                retry_after=_retry_after(response) or DEFAULT_RETRY_AFTER,
            )
        if response.status_code != 200:
            error = body.get("error")
            if not isinstance(error, str) or not error:
                raise TokenExchangeUnavailable(
                    f"the issuer answered HTTP {response.status_code} without an OAuth error"
                )
            description = _clean(body.get("error_description"))
            raise TokenExchangeError(
                _clean(error, 64),
                f"token exchange refused ({_clean(error, 64)}): {description}",
                status=response.status_code,
                retry_after=_retry_after(response),
            )
        token = body.get("access_token")
        expires_in = body.get("expires_in")
        if (
            not isinstance(token, str)
            or not token
            or body.get("issued_token_type") != ACCESS_TOKEN_TYPE
            or isinstance(expires_in, bool)
            or not isinstance(expires_in, int | float)
            or not math.isfinite(expires_in)
            or expires_in <= 0
        ):
            raise TokenExchangeUnavailable("the issuer's token exchange answer is malformed")
        return token, float(expires_in)


class Caller(VerifiedClaims):
    """The caller of the current request: its :class:`~jwtmcp.tokens.VerifiedClaims`
    (every attribute the same) and :meth:`exchange`. The raw token is kept privately, never
    shown by ``repr``."""

    _token: str | None
    _exchanger: TokenExchangeClient | None

    @classmethod
    def of(
        cls,
        claims: VerifiedClaims,
        token: str | None,
        exchanger: TokenExchangeClient | None,
    ) -> Caller:
        """``claims`` with the raw token and the server's exchange client attached."""
        caller = object.__new__(cls)
        caller.__dict__.update(claims.__dict__)
        caller.__dict__["_token"] = token
        caller.__dict__["_exchanger"] = exchanger
        return caller

    async def exchange(self, *, resource: str, tools: Iterable[str] = ()) -> str:
        """A token for ``resource`` (a downstream server's resource URL) on this caller's
        behalf, for ``tools`` (names; none: what the issuer allows): RFC 8693 token
        exchange through the server's :class:`TokenExchangeClient`, cached until near
        expiry. Returns the access token (str) to send as ``Authorization: Bearer``.

        Raises :class:`TokenExchangeError` (the issuer refused; ``.error`` is its OAuth
        code), :class:`TokenExchangeUnavailable` (the issuer could not be asked) and
        :class:`~jwtmcp.errors.ConfigError` when this server has no exchange configured
        (``protected_server(..., token_exchange=TokenExchangeClient(...))``).
        """
        exchanger: TokenExchangeClient | None = self.__dict__.get("_exchanger")
        token: str | None = self.__dict__.get("_token")
        if exchanger is None:
            raise ConfigError(
                "this server has no token exchange configured: pass "
                "token_exchange=TokenExchangeClient(issuer=..., client_id=..., "
                "client_secret=...) to protected_server()"
            )
        if not token:
            raise ConfigError("the caller's token is not available in this context")
        return await exchanger.exchange(token, resource=resource, tools=tools)
