"""The front channel of interactive sign-in: ``/authorize``, login and consent pages.

OAuth 2.1 §4.1.1 with PKCE (RFC 7636, S256 only), resource indicators (RFC 8707) and the
authorization response ``iss`` (RFC 9207). The steps, all under ``/authorize``:

1. ``GET /authorize?response_type=code&client_id=…&redirect_uri=…&code_challenge=…``
   ``&code_challenge_method=S256&state=…&scope=…&resource=…``. The client is identified by
   :class:`~jwtmcp.resolver.ClientResolver` (CIMD URL, ``dcr1.`` registration, or a
   configured client) and ``redirect_uri`` must be one it registered
   (:func:`jwtmcp.redirect_uris.redirect_uri_matches`). While either is in doubt the answer
   is an HTML error page (400) and never a redirect: an unchecked redirect would be an open
   redirector (OAuth 2.1 §4.1.2.1). Every later error goes back to the client as
   ``redirect_uri?error=…&error_description=…&state=…&iss=…`` with a 303.
2. The login page (``POST /authorize/login``) asks the :class:`~jwtmcp.identity.PasswordSource`
   (the users file by default; any source behind the same protocol fits). With upstream
   OpenID providers configured (:mod:`jwtmcp.oidc`), the page also links
   ``GET /authorize/upstream?provider=ID&request=…``, which sends the browser to the
   provider; its answer comes back to ``GET /authorize/callback/ID``, where the ID token is
   checked and the policy (:mod:`jwtmcp.policy`) decides, before consent.
3. The consent page (``GET /authorize/consent``, ``POST /authorize/consent``) names the
   client, the host it redirects to and the MCP server (the resource), with one checkbox per
   tool scope both requested and allowed to the user. Approving stores a single-use code
   (:meth:`jwtmcp.store.Store.put_code`, 60 s) holding exactly the scopes ticked, then
   redirects with ``code``, ``state`` and ``iss``.

**Where the pending request lives.** Nowhere on the server: the checked authorization request
travels between the steps as the hidden ``request`` field, a short-lived blob (10 minutes)
MAC'd with HMAC-SHA256 under a key derived (HKDF) from the registration key in the key ring
directory (``registration.key``, 0600). It holds nothing secret (the client, redirect URI,
PKCE challenge, state, resource, scope, a random request id) and cannot be changed without
the MAC failing; a forged or altered one is "invalid", a valid one past its time "expired".
Every page carries the expiry set at ``/authorize``. The request is answered once: Allow or
Deny marks it in the store's replay window (:meth:`jwtmcp.store.Store.remember_once`, keyed
by a digest of the request, until it expires), so posting a consent form again gives an
error page (400) and no second code. Replaying the login form needs the password and gives
only a session; the request it carries is still answered once.

**Parameters are never echoed altered.** The query is decoded strictly: a parameter that is
not UTF-8 or holds control characters, or a ``state`` outside VSCHAR (``%x20-7E``, RFC 6749
Appendix A.5) or over 2048 characters, is an error page (400), never a redirect.

**The session** is a signed cookie (``jwtmcp_session``, ``Path=/authorize``, ``HttpOnly``,
``SameSite=Lax``, ``Secure`` when the issuer is https, 15 minutes) holding a random session
id and, once signed in, the subject, its identity source and the login time. A new session
id is issued at login (no session fixation). The CSRF token of every form is an HMAC of the
session id, checked in constant time on every POST, login included (login CSRF); a POST
without it is refused with 403.

**Failed logins** are counted in the store per user name and per client address
(:meth:`jwtmcp.store.Store.count`); past the limit the answer is 429 with ``Retry-After``
without checking the password. An unknown user and a wrong password get the same page after
the same work, and the same log event (``login_failed``, warning, with the user name, the
client address and the client; ``login_rate_limited`` with the limit that tripped); never
the password. Log lines name the client through :func:`jwtmcp.logfields.client_fields`.
When the store cannot be reached the answer is 503 with ``Retry-After``.

Every page sends ``Content-Security-Policy`` (no scripts, styles from the issuer only,
``frame-ancestors 'none'``, ``form-action`` limited to the issuer and the validated redirect
target, since browsers apply ``form-action`` to the redirect after a form POST),
``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer`` and ``Cache-Control: no-store``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac as std_hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import anyio.to_thread
import jinja2
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .client_metadata import OAuthClient
from .errors import (
    ClientMetadataError,
    ClientMetadataUnavailable,
    JwtMcpError,
    OAuthRequestError,
    StoreUnavailable,
    UnknownClient,
)
from .identifiers import canonical_or_none
from .identity import Identity, PasswordSource
from .logfields import client_fields
from .numeric import declared_length
from .oidc import (
    Federation,
    ProviderUnavailable,
    Transaction,
    UpstreamRefused,
    upstream_claims,
)
from .pkce import check_code_challenge
from .redirect_uris import redirect_uri_matches
from .resolver import ClientResolver
from .store import MAX_CODE_TTL, Store, new_opaque_token
from .tokens import TOOL_SCOPE_PREFIX, Clock, scope_grants_scope

log = logging.getLogger("jwtmcp.authorize")

SESSION_COOKIE = "jwtmcp_session"
COOKIE_PATH = "/authorize"
SESSION_TTL = 900
"""Seconds a sign-in session (the cookie) lasts."""
REQUEST_TTL = 600
"""Seconds a pending authorization request (the hidden ``request`` field) stays usable."""
CODE_TTL = MAX_CODE_TTL
"""Seconds an authorization code lives (60, OAuth 2.1 §4.1.2)."""
MAX_FORM_BYTES = 8192
MAX_PARAM_LENGTH = 4096
MAX_STATE_LENGTH = 2048
"""Characters of ``state`` accepted; it comes back unchanged in the redirect."""
STATIC_PATH = "/authorize/static"
UPSTREAM_COOKIE = "jwtmcp_upstream"
UPSTREAM_TTL = 600
"""Seconds a browser has to sign in at the upstream provider and come back."""
UPSTREAM_RETRY_AFTER = 30
MAX_UPSTREAM_SESSION_BYTES = 3000
"""The session cookie of an upstream sign-in carries its claims; browsers keep ~4 KB."""

_HERE = Path(__file__).resolve().parent
_SINGLE = (
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "scope",
    "code_challenge",
    "code_challenge_method",
)
_KNOWN = (*_SINGLE, "resource")
_B64 = re.compile(r"[A-Za-z0-9_-]+")
_VSCHAR = re.compile(r"[\x20-\x7e]*")  # RFC 6749 Appendix A.5 (the state parameter)
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # bytes kept by errors="surrogateescape"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A form-action source for a redirect target: scheme://host[:port] or a bare scheme.
_CSP_ORIGIN = re.compile(r"(?:https?://[A-Za-z0-9.\-]+|http://\[[0-9a-fA-F:.]+\])(?::\d{1,5})?")
_CSP_SCHEME = re.compile(r"[a-z][a-z0-9+.\-]*:")


@dataclass(frozen=True)
class LoginLimits:
    """Failed logins allowed per ``window`` seconds: ``per_user`` for one user name (any
    address) and ``per_address`` for one client address (any name)."""

    per_user: int = 5
    per_address: int = 20
    window: int = 900


# --- signed blobs ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not _B64.fullmatch(text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


class Signer:
    """Short-lived signed JSON values (HMAC-SHA256), one derived key per ``purpose``.

    ``master`` is 32 secret bytes (the registration key); HKDF-SHA256 derives a separate key
    for each purpose, so a session cookie can never pass as a pending request or a CSRF
    token. Times are epoch seconds from ``clock``.
    """

    def __init__(self, master: bytes, purpose: str, clock: Clock) -> None:
        self._key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"jwtmcp authorize " + purpose.encode(),
        ).derive(master)
        self._clock = clock

    def mac(self, data: bytes) -> bytes:
        h = hmac.HMAC(self._key, hashes.SHA256())
        h.update(data)
        return h.finalize()

    def dumps(self, value: Mapping[str, Any], ttl: int) -> str:
        """``value`` with an ``exp`` ``ttl`` seconds ahead, as ``payload.mac`` (base64url)."""
        return self.dumps_until(value, int(self._clock()) + ttl)

    def dumps_until(self, value: Mapping[str, Any], exp: int) -> str:
        """``value`` with the ``exp`` given (epoch seconds), as ``payload.mac`` (base64url)."""
        body = dict(value)
        body["exp"] = exp
        payload = _b64(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
        return f"{payload}.{_b64(self.mac(payload.encode()))}"

    def loads(self, text: str | None) -> dict[str, Any] | None:
        """The value of a blob made by :meth:`dumps`, or None when forged, altered or expired."""
        value, _ = self.read(text)
        return value

    def read(self, text: str | None) -> tuple[dict[str, Any] | None, str]:
        """``(value, "ok")`` for a valid blob, else ``(None, why)``: ``"missing"``,
        ``"invalid"`` (forged, altered, not a blob) or ``"expired"`` (valid but past its
        ``exp``). Only a blob whose MAC verifies can be called expired."""
        if not text:
            return None, "missing"
        if len(text) > MAX_PARAM_LENGTH * 2:
            return None, "invalid"
        payload, _, mac_text = text.partition(".")
        try:
            mac = _unb64(mac_text)
            if not std_hmac.compare_digest(mac, self.mac(payload.encode("ascii"))):
                return None, "invalid"
            value = json.loads(_unb64(payload))
        except (ValueError, UnicodeEncodeError):
            return None, "invalid"
        if not isinstance(value, dict) or not isinstance(value.get("exp"), int):
            return None, "invalid"
        if value["exp"] <= self._clock():
            return None, "expired"
        return value, "ok"


# --- the pending request ---------------------------------------------------------------------


@dataclass(frozen=True)
class PendingRequest:
    """A checked authorization request: the client and redirect URI are known to be valid."""

    client_id: str
    redirect_uri: str
    state: str | None
    code_challenge: str
    resource: str | None
    """Canonical resource, or None when the request named none."""
    scope: tuple[str, ...] | None
    """Requested scopes, or None when the request had no ``scope``."""
    client_name: str = ""
    """The client's display name (from its metadata), for the pages."""
    request_id: str = ""
    """A random id given at ``/authorize``: the request is answered (Allow or Deny) once."""
    expires_at: int = 0
    """Epoch seconds after which the request is refused (``REQUEST_TTL`` after
    ``/authorize``; every later page carries the same expiry)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "rid": self.request_id,
            "cid": self.client_id,
            "ru": self.redirect_uri,
            "st": self.state,
            "cc": self.code_challenge,
            "res": self.resource,
            "sc": None if self.scope is None else list(self.scope),
            "cn": self.client_name,
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> PendingRequest:
        scope = value.get("sc")
        return cls(
            client_id=str(value["cid"]),
            redirect_uri=str(value["ru"]),
            state=None if value.get("st") is None else str(value["st"]),
            code_challenge=str(value["cc"]),
            resource=None if value.get("res") is None else str(value["res"]),
            scope=None if scope is None else tuple(str(s) for s in scope),
            client_name=str(value.get("cn") or value["cid"]),
            request_id=str(value["rid"]),
            expires_at=int(value["exp"]),
        )

    def once_key(self) -> str:
        """The replay-window key of this request: a SHA-256 digest of all it holds."""
        body = json.dumps(
            {**self.as_dict(), "exp": self.expires_at}, separators=(",", ":"), sort_keys=True
        )
        return "authorize-request:" + hashlib.sha256(body.encode()).hexdigest()


class _PageError(Exception):
    """Answer with an HTML error page (no redirect)."""

    def __init__(
        self, status: int, title: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        self.headers = dict(headers or {})


class _RedirectError(Exception):
    """Answer with an error redirect to the (validated) redirect URI (RFC 6749 §4.1.2.1)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def offered_scopes(identity: Identity, requested: Sequence[str] | None) -> tuple[str, ...]:
    """The tool scopes the consent page offers: requested ∩ what ``identity`` may have.

    ``requested`` None (no ``scope`` parameter) offers everything the user may have. A
    requested scope the user holds is offered as asked (``tool:add`` under ``tool:*``); a
    requested scope broader than the user's (``tool:*`` for a user allowed ``tool:add``)
    offers the allowed scopes it covers. Scopes that name no tool (``openid``,
    ``offline_access`` …) are not offered: a jwtmcp token carries tool scopes only.
    """
    allowed = identity.allowed_scopes
    if requested is None:
        return tuple(allowed)
    out: list[str] = []
    for scope in requested:
        if not scope.startswith(TOOL_SCOPE_PREFIX):
            continue
        if any(scope_grants_scope(a, scope) for a in allowed):
            out.append(scope)
        else:
            out.extend(a for a in allowed if scope_grants_scope(scope, a))
    return tuple(dict.fromkeys(out))


def split_held(
    offered: Sequence[str], held: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``offered`` split into (scopes to ask for, scopes the client holds already).

    ``held`` are the scopes this user granted this client for this resource before (its
    active refresh families). A step-up (MCP: 403 ``insufficient_scope``, the client asks
    again for its old scopes plus the new one, SEP-2350) then asks only for what is new;
    the held scopes go into the code without asking again. When nothing offered is new,
    every offered scope is asked for, as on a first consent.
    """
    kept = tuple(s for s in offered if any(scope_grants_scope(h, s) for h in held))
    ask = tuple(s for s in offered if s not in kept)
    return (ask, kept) if ask else (tuple(offered), ())


def pick_resource(identity: Identity, resource: str | None) -> str:
    """The resource the code is for: the requested one if the user may use it (RFC 8707).

    Without ``resource`` a user with exactly one audience gets it. Raises
    :class:`_RedirectError` ``invalid_target`` otherwise.
    """
    if resource is None:
        if len(identity.audiences) == 1:
            return identity.audiences[0]
        raise _RedirectError(
            "invalid_target", "name the MCP server with the resource parameter (RFC 8707)"
        )
    if resource not in identity.audiences:
        raise _RedirectError(
            "invalid_target", "this user may not get tokens for the requested resource"
        )
    return resource


def _with_params(uri: str, params: Mapping[str, str | None]) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{uri}{'&' if '?' in uri else '?'}{query}"


def _form_action_source(redirect_uri: str) -> str | None:
    parts = urlsplit(redirect_uri)
    if parts.scheme in ("http", "https"):
        origin = f"{parts.scheme}://{parts.netloc}"
        return origin if _CSP_ORIGIN.fullmatch(origin) else None
    source = f"{parts.scheme}:"
    return source if _CSP_SCHEME.fullmatch(source) else None


def _shown_target(redirect_uri: str) -> str:
    """What the consent page shows of the redirect URI: its host, or the app's scheme."""
    parts = urlsplit(redirect_uri)
    if parts.scheme in ("http", "https"):
        return parts.netloc
    return f"{parts.scheme}:" + (f"//{parts.netloc}" if parts.netloc else "")


def _query_pairs(request: Request) -> list[tuple[str, str]]:
    """The query's parameters decoded strictly: bytes that are not UTF-8 stay visible (as
    lone surrogates) for :func:`_check_characters` to refuse, never replaced by U+FFFD."""
    raw: bytes = request.scope.get("query_string", b"")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise _PageError(
            400,
            "Invalid sign-in request",
            "The request address holds characters that are not percent-encoded.",
        ) from None
    try:
        return parse_qsl(
            text,
            keep_blank_values=True,
            encoding="utf-8",
            errors="surrogateescape",
            max_num_fields=100,
        )
    except ValueError:
        raise _PageError(400, "Invalid sign-in request", "The request is too large.") from None


def _check_characters(name: str, value: str) -> None:
    """Refuse (an error page, no redirect) a parameter that could not go back unchanged.

    Not UTF-8 or holding control characters: refused for every parameter of the request.
    ``state`` must be VSCHAR (``%x20-7E``, RFC 6749 §4.1.1, Appendix A.5) and at most
    :data:`MAX_STATE_LENGTH` characters: the client compares it to what it sent, so an
    altered one must never be sent back. Raises :class:`_PageError` (400).
    """
    if _NOT_UTF8.search(value):
        raise _PageError(
            400, "Invalid sign-in request", f"The {name} parameter is not valid UTF-8."
        )
    if name == "state" and (len(value) > MAX_STATE_LENGTH or not _VSCHAR.fullmatch(value)):
        raise _PageError(
            400,
            "Invalid sign-in request",
            "The state parameter may hold only printable ASCII characters (at most "
            f"{MAX_STATE_LENGTH}); it could not be sent back unchanged, so sign-in stops here.",
        )
    if _CONTROL.search(value):
        raise _PageError(
            400, "Invalid sign-in request", f"The {name} parameter holds control characters."
        )


# --- the endpoint ----------------------------------------------------------------------------


class Authorizer:
    """The ``/authorize`` endpoint family (see the module docstring).

    ``issuer`` is the canonical issuer URL (the ``iss`` of responses); ``key`` 32 secret
    bytes (the registration key) from which the session, CSRF and request MAC keys are
    derived; ``clock`` gives epoch seconds.
    """

    def __init__(
        self,
        *,
        issuer: str,
        resolver: ClientResolver,
        identity_source: PasswordSource,
        open_store: Callable[[], Store],
        key: bytes,
        clock: Clock = time.time,
        login_limits: LoginLimits | None = None,
        federation: Federation | None = None,
    ) -> None:
        self.issuer = issuer
        self.federation = federation
        self.resolver = resolver
        self.source = identity_source
        self._store: Store | None = None
        self._open_store = open_store
        self.clock = clock
        self.limits = login_limits or LoginLimits()
        self.secure_cookies = issuer.startswith("https://")
        self._requests = Signer(key, "request", clock)
        self._sessions = Signer(key, "session", clock)
        self._csrf = Signer(key, "csrf", clock)
        self._upstream = Signer(key, "upstream", clock)
        self._templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )

    @property
    def store(self) -> Store:
        """The state store, opened on first use: an issuer whose store cannot be opened still
        starts (and serves ``client_credentials``); each sign-in step raises
        :class:`~jwtmcp.errors.StoreUnavailable` (a 503 page) until it opens."""
        if self._store is None:
            self._store = self._open_store()
        return self._store

    def routes(self) -> list[BaseRoute]:
        """The routes to mount on the issuer app."""
        return [
            Route("/authorize", self.authorize, methods=["GET"]),
            Route("/authorize/login", self.login, methods=["POST"]),
            Route("/authorize/consent", self.consent_page, methods=["GET"]),
            Route("/authorize/consent", self.consent, methods=["POST"]),
            Route("/authorize/upstream", self.upstream_start, methods=["GET"]),
            Route("/authorize/callback/{provider}", self.upstream_callback, methods=["GET"]),
            Mount(STATIC_PATH, StaticFiles(directory=_HERE / "static"), name="static"),
        ]

    # -- rendering -------------------------------------------------------------------------

    def _headers(self, redirect_uri: str | None = None) -> dict[str, str]:
        actions = ["'self'"]
        if redirect_uri is not None:
            source = _form_action_source(redirect_uri)
            if source is not None:
                actions.append(source)
        csp = (
            "default-src 'none'; style-src 'self'; img-src 'self'; "
            f"form-action {' '.join(actions)}; frame-ancestors 'none'; base-uri 'none'"
        )
        return {
            "Content-Security-Policy": csp,
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
            "Pragma": "no-cache",
            "X-Content-Type-Options": "nosniff",
        }

    def _page(
        self,
        template: str,
        status: int = 200,
        *,
        redirect_uri: str | None = None,
        headers: Mapping[str, str] | None = None,
        **context: Any,
    ) -> Response:
        html = self._templates.get_template(template).render(
            static=f"{STATIC_PATH}/jwtmcp.css", **context
        )
        all_headers = self._headers(redirect_uri)
        all_headers.update(headers or {})
        return Response(html, status, headers=all_headers, media_type="text/html; charset=utf-8")

    def _error_page(self, error: _PageError) -> Response:
        return self._page(
            "error.html",
            error.status,
            headers=error.headers,
            title=error.title,
            message=error.message,
        )

    def _redirect(self, location: str, redirect_uri: str | None = None) -> Response:
        return Response(
            status_code=303, headers={**self._headers(redirect_uri), "Location": location}
        )

    def _error_redirect(self, pending: PendingRequest, error: _RedirectError) -> Response:
        log.info(
            json.dumps(
                {
                    "event": "authorize_refused",
                    "error": error.error,
                    **client_fields(pending.client_id, pending.client_name),
                }
            )
        )
        location = _with_params(
            pending.redirect_uri,
            {
                "error": error.error,
                "error_description": error.description,
                "state": pending.state,
                "iss": self.issuer,
            },
        )
        return self._redirect(location, pending.redirect_uri)

    # -- sessions and CSRF -------------------------------------------------------------------

    def _session(self, request: Request) -> dict[str, Any] | None:
        session = self._sessions.loads(request.cookies.get(SESSION_COOKIE))
        if session is None or not isinstance(session.get("sid"), str):
            return None
        return session

    def _set_session(self, response: Response, session: Mapping[str, Any]) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            self._sessions.dumps(session, SESSION_TTL),
            max_age=SESSION_TTL,
            path=COOKIE_PATH,
            secure=self.secure_cookies,
            httponly=True,
            samesite="lax",
        )

    def _csrf_token(self, session: Mapping[str, Any]) -> str:
        return _b64(self._csrf.mac(str(session["sid"]).encode()))

    def _check_csrf(
        self, session: dict[str, Any] | None, form: Mapping[str, list[str]]
    ) -> dict[str, Any]:
        """The session, once the form's ``csrf_token`` is the one bound to it (403 otherwise)."""
        sent = form.get("csrf_token", [""])
        if session is None or len(sent) != 1:
            raise _PageError(
                403,
                "This form has expired",
                "The sign-in form could not be verified (no session cookie or no CSRF token). "
                "Go back to the application and start signing in again.",
            )
        expected = self._csrf_token(session).encode()
        if not std_hmac.compare_digest(expected, sent[0].encode("utf-8", "surrogatepass")):
            raise _PageError(
                403,
                "This form has expired",
                "The sign-in form could not be verified (the CSRF token does not match). "
                "Go back to the application and start signing in again.",
            )
        return session

    @staticmethod
    def _new_session() -> dict[str, Any]:
        return {"sid": secrets.token_urlsafe(24)}

    # -- step 1: GET /authorize -------------------------------------------------------------

    async def authorize(self, request: Request) -> Response:
        """``GET /authorize`` (OAuth 2.1 §4.1.1): check the request, then log in or consent."""
        session = self._session(request)
        fresh = session is None
        if session is None:
            session = self._new_session()
        try:
            pending = await self._check_request(request)
            response = await self._next_step(request, pending, session)
        except _PageError as exc:
            return self._error_page(exc)
        except _Redirecting as exc:
            return exc.response
        if fresh:
            self._set_session(response, session)
        return response

    async def _check_request(self, request: Request) -> PendingRequest:
        params: dict[str, str] = {}
        resources: list[str] = []
        for name, value in _query_pairs(request):
            if name not in _KNOWN:
                continue  # unknown parameters are ignored (RFC 6749 §3.1)
            if len(value) > MAX_PARAM_LENGTH:
                raise _PageError(
                    400, "Invalid sign-in request", f"The {name} parameter is too long."
                )
            _check_characters(name, value)
            if name == "resource":
                if value:
                    resources.append(value)
                continue
            if name in params and name in _SINGLE:
                raise _PageError(
                    400, "Invalid sign-in request", f"The {name} parameter is given more than once."
                )
            if value:
                params[name] = value
        client_id = params.get("client_id")
        if not client_id:
            raise _PageError(
                400,
                "Invalid sign-in request",
                "The request names no client (client_id is missing).",
            )
        client = await self._client(client_id)
        redirect_uri = params.get("redirect_uri")
        if not redirect_uri:
            raise _PageError(
                400,
                "Invalid sign-in request",
                "The request has no redirect_uri; the application must send the one it registered.",
            )
        if not redirect_uri_matches(redirect_uri, client.redirect_uris):
            log.info(
                json.dumps(
                    {
                        "event": "authorize_refused",
                        "error": "invalid_redirect_uri",
                        **client_fields(client_id, client.client_name),
                    }
                )
            )
            raise _PageError(
                400,
                "Unregistered redirect address",
                "The application asked to send you back to an address it did not register. "
                "For your safety, sign-in stops here.",
            )
        # From here on, errors go back to the client (RFC 6749 §4.1.2.1).
        fallback = PendingRequest(
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            state=params.get("state"),
            code_challenge="",
            resource=None,
            scope=None,
            client_name=client.display_name,
            request_id=secrets.token_urlsafe(16),
            expires_at=int(self.clock()) + REQUEST_TTL,
        )
        try:
            return self._checked(params, resources, fallback)
        except _RedirectError as exc:
            raise _Redirecting(self._error_redirect(fallback, exc)) from None

    def _checked(
        self, params: Mapping[str, str], resources: Sequence[str], base: PendingRequest
    ) -> PendingRequest:
        if params.get("response_type") != "code":
            raise _RedirectError(
                "unsupported_response_type", "only response_type=code is supported"
            )
        try:
            challenge = check_code_challenge(
                params.get("code_challenge"), params.get("code_challenge_method")
            )
        except OAuthRequestError as exc:
            raise _RedirectError("invalid_request", exc.message) from None
        resource: str | None = None
        if resources:
            canonical = {canonical_or_none(r, "resource") for r in resources}
            if None in canonical:
                raise _RedirectError("invalid_target", "the resource parameter is not a valid URL")
            if len(canonical) > 1:
                raise _RedirectError(
                    "invalid_target", "ask for one resource (MCP server) per authorization"
                )
            resource = canonical.pop()
        scope: tuple[str, ...] | None = None
        if "scope" in params:
            tokens = params["scope"].split(" ")
            if any(
                t and not all(0x21 <= ord(c) <= 0x7E and c not in '"\\' for c in t) for t in tokens
            ):
                raise _RedirectError(
                    "invalid_scope", "the scope parameter holds invalid characters"
                )
            scope = tuple(dict.fromkeys(t for t in tokens if t))
        return PendingRequest(
            client_id=base.client_id,
            redirect_uri=base.redirect_uri,
            state=base.state,
            code_challenge=challenge,
            resource=resource,
            scope=scope,
            client_name=base.client_name,
            request_id=base.request_id,
            expires_at=base.expires_at,
        )

    async def _client(self, client_id: str) -> OAuthClient:
        try:
            return await self.resolver.resolve(client_id)
        except UnknownClient:
            raise _PageError(
                400,
                "Unknown application",
                "This application is not registered with this sign-in service.",
            ) from None
        except ClientMetadataUnavailable:
            raise _PageError(
                400,
                "Application details unavailable",
                "The application's metadata document could not be fetched. Try again later.",
            ) from None
        except ClientMetadataError as exc:
            log.info(
                json.dumps(
                    {"event": "authorize_refused", "error": exc.code, **client_fields(client_id)}
                )
            )
            raise _PageError(
                400,
                "Application not accepted",
                f"The application's metadata document was refused: {exc.message}",
            ) from None

    # -- the next step: login or consent ------------------------------------------------------

    async def _next_step(
        self, request: Request, pending: PendingRequest, session: Mapping[str, Any]
    ) -> Response:
        identity = self._signed_in(session)
        if identity is None:
            return self._login_page(pending, session)
        return await self._consent_or_error(pending, session, identity)

    def _signed_in(self, session: Mapping[str, Any]) -> Identity | None:
        subject = session.get("sub")
        if not isinstance(subject, str):
            return None
        if self.federation is not None and session.get("src") in self.federation.sources:
            return self._federated_identity(session)
        if session.get("src") != self.source.source_id:
            return None
        try:
            return self.source.lookup(subject)
        except JwtMcpError as exc:  # the identity source itself is unusable
            raise self._source_down(exc) from None

    @staticmethod
    def _source_down(exc: JwtMcpError) -> _PageError:
        log.error(json.dumps({"event": "identity_source_error", "error": exc.message}))
        return _PageError(
            503,
            "Sign-in is briefly unavailable",
            "The user directory cannot be read. Try again in a moment.",
            {"Retry-After": "5"},
        )

    def _login_page(
        self,
        pending: PendingRequest,
        session: Mapping[str, Any],
        *,
        status: int = 200,
        error: str | None = None,
        username: str = "",
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        request_blob = self._request_blob(pending)
        return self._page(
            "login.html",
            status,
            redirect_uri=pending.redirect_uri,
            headers=headers,
            csrf_token=self._csrf_token(session),
            request_blob=self._request_blob(pending),
            source_name=self.source.display_name,
            client_name=pending.client_name,
            error=error,
            username=username,
            password_login=self.federation is None or self.federation.password_login,
            providers=[
                {
                    "name": p.display_name,
                    "href": "/authorize/upstream?"
                    + urlencode({"provider": p.provider_id, "request": request_blob}),
                }
                for p in (self.federation.providers() if self.federation is not None else [])
            ],
        )

    async def _consent_or_error(
        self,
        pending: PendingRequest,
        session: Mapping[str, Any],
        identity: Identity,
        error: str | None = None,
    ) -> Response:
        try:
            resource = pick_resource(identity, pending.resource)
            offered = offered_scopes(identity, pending.scope)
            if not offered:
                raise _RedirectError(
                    "invalid_scope", "none of the requested scopes is allowed for this user"
                )
        except _RedirectError as exc:
            return self._error_redirect(pending, exc)
        ask, kept = split_held(offered, self._held_scopes(identity, pending, resource))
        return self._page(
            "consent.html",
            redirect_uri=pending.redirect_uri,
            csrf_token=self._csrf_token(session),
            request_blob=self._request_blob(pending),
            client_name=pending.client_name,
            client_id=pending.client_id,
            redirect_target=_shown_target(pending.redirect_uri),
            resource=resource,
            subject=identity.subject,
            scopes=[
                {
                    "value": s,
                    "name": s[len(TOOL_SCOPE_PREFIX) :],
                    "id": "scope-" + re.sub(r"[^A-Za-z0-9_-]", "-", s),
                }
                for s in ask
            ],
            kept=[s[len(TOOL_SCOPE_PREFIX) :] for s in kept],
            error=error,
        )

    def _held_scopes(
        self, identity: Identity, pending: PendingRequest, resource: str
    ) -> tuple[str, ...]:
        """The scopes this user already granted this client for ``resource``: those of its
        active refresh-token families. Raises :class:`_PageError` (503) when the store is
        down."""
        try:
            families = self.store.list_families(
                subject=identity.subject, client_id=pending.client_id
            )
        except StoreUnavailable as exc:
            raise self._store_down(exc) from None
        held: dict[str, None] = {}
        for family in families:
            if family.grant.get("resource") == resource:
                held.update(dict.fromkeys(str(family.grant.get("scope", "")).split()))
        return tuple(held)

    # -- form posts -----------------------------------------------------------------------------

    async def _form(self, request: Request) -> dict[str, list[str]]:
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/x-www-form-urlencoded":
            raise _PageError(415, "Unsupported form", "The form must be sent as a web form.")
        declared = request.headers.get("content-length")
        if declared is not None and declared_length(declared) > MAX_FORM_BYTES:
            raise _PageError(413, "Form too large", "The form is larger than this page allows.")
        body = b""
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_FORM_BYTES:
                    raise _PageError(
                        413, "Form too large", "The form is larger than this page allows."
                    )
        except ClientDisconnect:
            raise _PageError(400, "Form incomplete", "The form did not arrive whole.") from None
        try:
            pairs = parse_qsl(
                body.decode("utf-8"), keep_blank_values=True, errors="strict", max_num_fields=100
            )
        except (UnicodeDecodeError, ValueError):
            raise _PageError(400, "Invalid form", "The form could not be read.") from None
        form: dict[str, list[str]] = {}
        for name, value in pairs:
            form.setdefault(name, []).append(value)
        return form

    def _pending(self, form: Mapping[str, list[str]]) -> PendingRequest:
        blob = form.get("request", [""])
        value, why = self._requests.read(blob[0]) if len(blob) == 1 else (None, "invalid")
        if why == "expired":
            raise _PageError(
                400,
                "This sign-in has expired",
                "The sign-in request is too old. Go back to the application and "
                "start signing in again.",
            )
        if value is None:
            raise _PageError(
                400,
                "This sign-in request is invalid",
                "The sign-in request is missing, damaged or was changed. Go back to the "
                "application and start signing in again.",
            )
        try:
            return PendingRequest.from_dict(value)
        except (KeyError, TypeError, ValueError):
            raise _PageError(
                400, "This sign-in request is invalid", "The sign-in request is damaged."
            ) from None

    def _request_blob(self, pending: PendingRequest) -> str:
        """The hidden ``request`` field: signed again, with its first expiry kept."""
        return self._requests.dumps_until(pending.as_dict(), pending.expires_at)

    def _answer_once(self, pending: PendingRequest) -> None:
        """Mark ``pending`` answered (Allow or Deny); raise a 400 page if it was already.

        One authorization request gives at most one answer, so a consent form posted again
        (replayed, double-clicked, or shown again from its URL) mints no second code. The
        mark lives in the store's replay window until the request expires.
        """
        try:
            first = self.store.remember_once(pending.once_key(), until=pending.expires_at)
        except StoreUnavailable as exc:
            raise self._store_down(exc) from None
        if not first:
            log.info(
                json.dumps(
                    {
                        "event": "authorize_request_reused",
                        **client_fields(pending.client_id, pending.client_name),
                    }
                )
            )
            raise _PageError(
                400,
                "This sign-in was already answered",
                "This sign-in request has already been used. Go back to the application and "
                "start signing in again.",
            )

    def _store_down(self, exc: StoreUnavailable) -> _PageError:
        log.warning(json.dumps({"event": "store_unavailable", "error": exc.message}))
        return _PageError(
            503,
            "Sign-in is briefly unavailable",
            "The sign-in service cannot reach its state store. Try again in a moment.",
            {"Retry-After": str(exc.retry_after)},
        )

    # -- step 2: POST /authorize/login ----------------------------------------------------------

    async def login(self, request: Request) -> Response:
        """``POST /authorize/login``: check CSRF, rate limits and the password; then consent."""
        try:
            form = await self._form(request)
            session = self._check_csrf(self._session(request), form)
            pending = self._pending(form)
            if self.federation is not None and not self.federation.password_login:
                raise _PageError(
                    403, "Password sign-in is off", "Sign in with your identity provider."
                )
            username = (form.get("username") or [""])[0][:200]
            password = (form.get("password") or [""])[0]
            address = request.client.host if request.client else "unknown"
            user_key = f"login-failures:user:{username.casefold()}"
            address_key = f"login-failures:address:{address}"
            # Each attempt is counted *before* the password is checked (one atomic count
            # per key) and given back if it succeeds: of many attempts raced at once, at
            # any number of replicas, no more than the limit reach the password check.
            try:
                limited = None
                if self.store.count(user_key, window=self.limits.window) > self.limits.per_user:
                    limited = "user"
                elif (
                    self.store.count(address_key, window=self.limits.window)
                    > self.limits.per_address
                ):
                    limited = "address"
                    self.store.uncount(user_key)  # not this user's attempt: it never ran
            except StoreUnavailable as exc:
                raise self._store_down(exc) from None
            # Untrusted values (the name) are escaped by json.dumps: one line, no forgery.
            attempt = {
                "user": username,
                "address": address,
                **client_fields(pending.client_id, pending.client_name),
            }
            if limited is not None:
                log.warning(
                    json.dumps({"event": "login_rate_limited", **attempt, "limit": limited})
                )
                return self._login_page(
                    pending,
                    session,
                    status=429,
                    error="Too many failed sign-in attempts. Wait a few minutes and try again.",
                    username=username,
                    headers={"Retry-After": str(self.limits.window)},
                )
            identity = await anyio.to_thread.run_sync(self.source.authenticate, username, password)
            if identity is None:  # both counted already
                # Unknown user or wrong password: one event, told apart neither here nor
                # on the page (no user enumeration through the logs either).
                log.warning(json.dumps({"event": "login_failed", **attempt}))
                return self._login_page(
                    pending,
                    session,
                    status=401,
                    error="The user name or password is not right.",
                    username=username,
                )
            try:
                self.store.reset_count(user_key)
                self.store.uncount(address_key)  # only failures count against an address
            except StoreUnavailable as exc:
                raise self._store_down(exc) from None
        except _PageError as exc:
            return self._error_page(exc)
        except JwtMcpError as exc:  # the identity source itself is unusable
            return self._error_page(self._source_down(exc))
        log.info(
            json.dumps(
                {
                    "event": "login",
                    "sub": identity.subject,
                    **client_fields(pending.client_id, pending.client_name),
                }
            )
        )
        signed_in = {
            "sid": secrets.token_urlsafe(24),  # a new id at login: no session fixation
            "sub": identity.subject,
            "src": identity.source_id,
            "at": int(self.clock()),
        }
        location = "/authorize/consent?" + urlencode({"request": self._request_blob(pending)})
        response = self._redirect(location, pending.redirect_uri)
        self._set_session(response, signed_in)
        return response

    # -- step 3: consent -----------------------------------------------------------------------

    async def consent_page(self, request: Request) -> Response:
        """``GET /authorize/consent?request=…``: the consent page (or login when signed out)."""
        try:
            pending = self._pending({"request": request.query_params.getlist("request")})
            session = self._session(request)
            fresh = session is None
            if session is None:
                session = self._new_session()
            response = await self._next_step(request, pending, session)
        except _PageError as exc:
            return self._error_page(exc)
        if fresh:
            self._set_session(response, session)
        return response

    async def consent(self, request: Request) -> Response:
        """``POST /authorize/consent``: Allow stores a code and redirects; Deny, access_denied."""
        try:
            form = await self._form(request)
            session = self._check_csrf(self._session(request), form)
            pending = self._pending(form)
            identity = self._signed_in(session)
            if identity is None:
                return self._login_page(pending, session)
            decision = form.get("decision", [""])
            if decision == ["deny"]:
                self._answer_once(pending)
                return self._error_redirect(
                    pending, _RedirectError("access_denied", "the user denied the request")
                )
            if decision != ["approve"]:
                raise _PageError(400, "Invalid form", "Choose Allow or Deny.")
            try:
                resource = pick_resource(identity, pending.resource)
            except _RedirectError as exc:
                return self._error_redirect(pending, exc)
            offered = offered_scopes(identity, pending.scope)
            ask, kept = split_held(offered, self._held_scopes(identity, pending, resource))
            ticked = set(form.get("scope", []))
            approved = [s for s in offered if s in kept or (s in ask and s in ticked)]
            if not approved:
                return await self._consent_or_error(
                    pending, session, identity, error="Choose at least one tool, or Deny."
                )
            self._answer_once(pending)
            auth_time = session.get("at")
            grant = {
                "client_id": pending.client_id,
                "redirect_uri": pending.redirect_uri,
                "code_challenge": pending.code_challenge,
                "resource": resource,
                "scope": " ".join(approved),
                "subject": identity.subject,
                "source_id": identity.source_id,
                "auth_time": auth_time if isinstance(auth_time, int) else int(self.clock()),
                "claims": dict(identity.claims),
                "max_lifetime": identity.max_lifetime,
            }
            if identity.upstream:
                grant["upstream"] = dict(identity.upstream)  # a refresh decides on them again
            code = new_opaque_token()
            try:
                self.store.put_code(code, grant, ttl=CODE_TTL)
            except StoreUnavailable as exc:
                raise self._store_down(exc) from None
        except _PageError as exc:
            return self._error_page(exc)
        log.info(
            json.dumps(
                {
                    "event": "code_issued",
                    **client_fields(pending.client_id, pending.client_name),
                    "sub": identity.subject,
                    "scope": grant["scope"],
                    "aud": resource,
                }
            )
        )
        location = _with_params(
            pending.redirect_uri, {"code": code, "state": pending.state, "iss": self.issuer}
        )
        return self._redirect(location, pending.redirect_uri)

    # -- upstream OpenID Connect login (jwtmcp.oidc) ------------------------------------------

    def _federated_identity(self, session: Mapping[str, Any]) -> Identity | None:
        """The identity of a session signed in upstream, under the *current* policy."""
        assert self.federation is not None
        source = self.federation.sources[str(session.get("src"))]
        upstream = session.get("up")
        if not isinstance(upstream, dict):
            return None
        identity = source.identity(upstream)
        if identity is None or identity.subject != session.get("sub"):
            return None
        return identity

    def _provider_down(self, exc: ProviderUnavailable) -> _PageError:
        log.warning(json.dumps({"event": "oidc_provider_unavailable", "error": exc.message}))
        return _PageError(
            503,
            "Sign-in is briefly unavailable",
            "The identity provider cannot be reached right now. Try again in a moment.",
            {"Retry-After": str(UPSTREAM_RETRY_AFTER)},
        )

    async def upstream_start(self, request: Request) -> Response:
        """``GET /authorize/upstream?provider=ID&request=…``: off to the provider's login."""
        try:
            pairs = _query_pairs(request)
            provider_ids = [v for k, v in pairs if k == "provider"]
            pending = self._pending({"request": [v for k, v in pairs if k == "request"]})
            federation = self.federation
            if (
                federation is None
                or len(provider_ids) != 1
                or (provider_ids[0] not in federation.clients)
            ):
                raise _PageError(
                    404, "Unknown identity provider", "This sign-in option does not exist."
                )
            client = federation.clients[provider_ids[0]]
            session = self._session(request) or self._new_session()
            try:
                location, transaction = await client.start(self._request_blob(pending))
            except ProviderUnavailable as exc:
                raise self._provider_down(exc) from None
        except _PageError as exc:
            return self._error_page(exc)
        log.info(
            json.dumps(
                {
                    "event": "oidc_login_started",
                    "provider": client.provider.provider_id,
                    **client_fields(pending.client_id, pending.client_name),
                }
            )
        )
        response = self._redirect(location)
        self._set_session(response, session)
        response.set_cookie(
            UPSTREAM_COOKIE,
            self._upstream.dumps({**transaction.as_dict(), "sid": session["sid"]}, UPSTREAM_TTL),
            max_age=UPSTREAM_TTL,
            path=COOKIE_PATH,
            secure=self.secure_cookies,
            httponly=True,
            samesite="lax",
        )
        return response

    def _upstream_transaction(self, request: Request, provider_id: str) -> Transaction:
        """The transaction this browser started with ``provider_id``, or a 400 page."""
        value, why = self._upstream.read(request.cookies.get(UPSTREAM_COOKIE))
        session = self._session(request)
        if value is None or session is None or value.get("sid") != session.get("sid"):
            raise _PageError(
                400,
                "This sign-in has expired" if why == "expired" else "This sign-in is not known",
                "The answer from the identity provider does not belong to a sign-in started "
                "in this browser in the last few minutes. Go back to the application and "
                "start signing in again.",
            )
        try:
            transaction = Transaction.from_dict(value)
        except (KeyError, TypeError, ValueError):
            raise _PageError(400, "This sign-in is not known", "The sign-in is damaged.") from None
        if transaction.provider_id != provider_id:
            raise _PageError(
                400,
                "This sign-in is not known",
                "The answer came back from another identity provider than the one this "
                "sign-in went to.",
            )
        return transaction

    async def upstream_callback(self, request: Request) -> Response:
        """``GET /authorize/callback/ID``: check the provider's answer and its ID token, ask the
        policy, then consent (OpenID Connect Core 1.0 §3.1.2.5 to §3.1.3.7)."""
        provider_id = str(request.path_params.get("provider", ""))
        try:
            federation = self.federation
            if federation is None or provider_id not in federation.clients:
                raise _PageError(
                    404, "Unknown identity provider", "This sign-in option does not exist."
                )
            client = federation.clients[provider_id]
            provider = client.provider
            transaction = self._upstream_transaction(request, provider_id)
            params: dict[str, list[str]] = {}
            for name, value in _query_pairs(request):
                _check_characters(name, value)
                params.setdefault(name, []).append(value)
            state = params.get("state", [""])
            if len(state) != 1 or not std_hmac.compare_digest(
                state[0].encode(), transaction.state.encode()
            ):
                raise _PageError(
                    400,
                    "This sign-in is not known",
                    "The identity provider's answer does not carry this sign-in's state. "
                    "Go back to the application and start signing in again.",
                )
            iss = params.get("iss")
            if iss is not None and iss != [provider.issuer]:  # RFC 9207 §2.4
                raise _PageError(
                    400,
                    "This sign-in is not known",
                    "The answer names another issuer than the identity provider it went to.",
                )
            try:
                first = self.store.remember_once(
                    "upstream-state:" + hashlib.sha256(transaction.state.encode()).hexdigest(),
                    until=int(self.clock()) + UPSTREAM_TTL,
                )
            except StoreUnavailable as exc:
                raise self._store_down(exc) from None
            if not first:
                raise _PageError(
                    400,
                    "This sign-in was already answered",
                    "The identity provider's answer was used already. Go back to the "
                    "application and start signing in again.",
                )
            pending = self._pending({"request": [transaction.request]})
            error = params.get("error")
            if error is not None:
                shown = error[0] if re.fullmatch(r"[a-z_]{1,64}", error[0]) else "an error"
                refused = {"event": "oidc_login_refused", "provider": provider_id}
                log.info(json.dumps({**refused, "error": "upstream:" + shown}))
                raise _PageError(
                    403,
                    "Sign-in did not complete",
                    f"{provider.display_name} did not sign you in ({shown}). Go back to the "
                    "application and try again.",
                )
            code = params.get("code", [""])
            if len(code) != 1 or not code[0]:
                raise _PageError(
                    400, "Sign-in did not complete", "The identity provider sent no code."
                )
            try:
                claims = await client.finish(code[0], transaction)
            except ProviderUnavailable as exc:
                raise self._provider_down(exc) from None
            except UpstreamRefused as exc:
                refused = {"event": "oidc_login_refused", "provider": provider_id}
                log.warning(json.dumps({**refused, "error": exc.code, "reason": exc.message}))
                raise _PageError(
                    502,
                    "Sign-in was refused",
                    f"The answer from {provider.display_name} was refused: {exc.message} "
                    f"({exc.code}). Nothing was issued. Go back to the application and try "
                    "again; if it happens again, tell the administrator.",
                ) from None
            source = federation.sources[provider.source]
            upstream = upstream_claims(provider, claims)
            refusal = source.refusal(upstream)
            identity = source.identity(upstream) if refusal is None else None
            who = upstream.get("email") if isinstance(upstream.get("email"), str) else None
            who = who or str(upstream.get("sub"))
            if identity is None:
                denied = {
                    "event": "oidc_login_denied",
                    "provider": provider_id,
                    "upstream_sub": str(upstream.get("sub")),
                    "reason": refusal or "no policy rule matched",
                }
                log.warning(json.dumps(denied))
                raise _PageError(
                    403,
                    "No access",
                    f"You signed in at {provider.display_name} as {who}, but "
                    + (
                        f"{refusal}."
                        if refusal is not None
                        else "no rule of this service's access policy gives you any tools."
                    )
                    + " Nothing was issued. Ask your administrator for access.",
                )
            signed_in = {
                "sid": secrets.token_urlsafe(24),  # a new id at login: no session fixation
                "sub": identity.subject,
                "src": identity.source_id,
                "at": int(self.clock()),
                "up": dict(identity.upstream),
            }
            if len(json.dumps(signed_in)) > MAX_UPSTREAM_SESSION_BYTES:
                raise _PageError(
                    400,
                    "Sign-in did not complete",
                    f"{provider.display_name} sent more claims than a sign-in session can "
                    "hold (often a very long list of groups). Ask your administrator to limit "
                    "the groups in the ID token.",
                )
        except _PageError as exc:
            response = self._error_page(exc)
            response.delete_cookie(UPSTREAM_COOKIE, path=COOKIE_PATH)
            return response
        log.info(
            json.dumps(
                {
                    "event": "login",
                    "sub": identity.subject,
                    "source": identity.source_id,
                    **client_fields(pending.client_id, pending.client_name),
                }
            )
        )
        location = "/authorize/consent?" + urlencode({"request": self._request_blob(pending)})
        response = self._redirect(location, pending.redirect_uri)
        self._set_session(response, signed_in)
        response.delete_cookie(UPSTREAM_COOKIE, path=COOKIE_PATH)
        return response


class _Redirecting(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__("redirect")
        self.response = response
