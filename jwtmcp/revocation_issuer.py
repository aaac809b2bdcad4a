"""The issuer's side of revocation: the signed list it publishes and the admin endpoint.

- ``GET /.well-known/jwtmcp-revocations`` — the revocation list (format in
  :mod:`jwtmcp.revocation`), signed by the ring's active key with ``typ``
  ``jwtmcp-revocations+jwt``, built from the revocations file
  (:mod:`jwtmcp.revocations_file`) and re-signed when the file or the active key changes,
  or after ``max_age`` seconds. ``Cache-Control: public, max-age=<revocation_max_age>``
  (60 s by default: the propagation bound), an ``ETag`` (``If-None-Match`` gives 304).
- ``POST /admin/revoke`` — revoke over HTTP, for tools that cannot run ``jwtmcp revoke``
  beside the issuer. A form (``application/x-www-form-urlencoded``) with exactly one of
  ``sub``, ``client`` (a client id) or ``jti`` (with an optional ``until``, the token's
  ``exp`` in epoch seconds), and an optional ``reason``. The caller authenticates as a
  client of the clients file (:meth:`~jwtmcp.issuer.IssuerService.authenticate_client`:
  ``client_secret_basic`` or ``client_secret_post``) whose scopes include
  ``jwtmcp:revoke`` (:data:`ADMIN_SCOPE`; ``jwtmcp clients add ops --scope jwtmcp:revoke
  ...``). Answers 200 with the entry and the new sequence; 401 ``invalid_client`` (with
  ``WWW-Authenticate: Basic``) for failed authentication; 403 ``insufficient_scope`` for
  a client without the scope; 400 ``invalid_request`` for a bad form; 429 ``slow_down``
  past the client's rate limit; 503 ``temporarily_unavailable`` + ``Retry-After`` when
  the file cannot be written. RFC 6749 5.2 JSON bodies throughout.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .errors import JwtMcpError, RevocationError
from .keys import KeyRing
from .logfields import short_client_id
from .numeric import parse_whole_number
from .revocation import (
    LIST_TYPE,
    MAX_LIST_BYTES,
    WELL_KNOWN_PATH,
    RevocationList,
    list_claims,
)
from .revocations_file import (
    Kind,
    RevocationState,
    RevocationsWatcher,
    check_reason,
    check_value,
    revocations_file_beside,
    revoke,
)
from .tokens import VerifiedClaims, sign_async

if TYPE_CHECKING:
    from .issuer import IssuerService

log = logging.getLogger("jwtmcp.issuer")

ADMIN_PATH = "/admin/revoke"
ADMIN_SCOPE = "jwtmcp:revoke"
"""The scope a client of the clients file needs to use ``POST /admin/revoke``."""
LIST_MEDIA_TYPE = "application/" + LIST_TYPE
_FORM_NAMES: dict[str, Kind] = {"sub": "sub", "client": "client_id", "jti": "jti"}


def long_lived_horizon(ring: KeyRing, state: RevocationState, now: float) -> int:
    """Seconds a revocation made at ``now`` must be listed: the longest lifetime a token of
    this issuer may still have (the ring's maximum, or the long-lived maximum when larger,
    including tokens minted under a maximum since withdrawn or lowered) plus the ring's
    leeway."""
    return max(ring.max_lifetime, state.longest_lifetime(now)) + ring.leeway


@dataclass(frozen=True)
class _Signed:
    state: RevocationState
    kid: str
    signed_at: float
    body: bytes
    etag: str


class RevocationEndpoints:
    """The list and the admin endpoint of one :class:`~jwtmcp.issuer.IssuerService`."""

    def __init__(self, service: IssuerService) -> None:
        settings = service.settings
        self.service = service
        self.max_age = settings.revocation_max_age
        if isinstance(self.max_age, bool) or not isinstance(self.max_age, int) or self.max_age < 0:
            raise RevocationError("the revocation list's max-age must be whole seconds, 0 or more")
        path = settings.revocations_file or revocations_file_beside(settings.clients_file)
        self.watcher = RevocationsWatcher(
            path,
            interval=settings.reload_interval,
            on_error=lambda reason: log.warning(
                json.dumps({"event": "reload_failed", "file": "revocations file", "reason": reason})
            ),
        )
        self._signed: _Signed | None = None

    def routes(self) -> list[Route]:
        return [
            Route(WELL_KNOWN_PATH, self.published, methods=["GET"]),
            Route(ADMIN_PATH, self.admin_revoke, methods=["POST"]),
        ]

    # -- the list -----------------------------------------------------------------------

    async def document(self) -> tuple[bytes, str]:
        """The signed list and its ETag, signed again only when the revocations file or
        the active key changed, or the last signature is ``max_age`` seconds old."""
        service = self.service
        state = self.watcher.current()
        ring = service.rings.current()
        kid = ring.active.kid
        now = service.clock()
        signed = self._signed
        if (
            signed is not None
            and signed.state is state
            and signed.kid == kid
            and signed.signed_at <= now < signed.signed_at + max(1, self.max_age)
        ):
            return signed.body, signed.etag
        jtis, subjects, clients = state.published(now)
        claims = list_claims(
            issuer=service.issuer,
            sequence=state.published_sequence(now),
            now=now,
            jtis=jtis,
            subjects=subjects,
            clients=clients,
        )
        made = await sign_async(claims, service.rings, typ=LIST_TYPE, max_bytes=MAX_LIST_BYTES)
        raw = made.token.encode("ascii")
        etag = '"' + hashlib.sha256(raw).hexdigest()[:32] + '"'
        self._signed = _Signed(state, made.kid, now, raw, etag)
        return raw, etag

    def covers(self, claims: VerifiedClaims) -> bool:
        """True when the issuer's own revocations file revokes ``claims`` now (the same rule
        verifiers apply to the published list, :meth:`RevocationList.covers`).

        For grants that take one of this issuer's tokens as input (RFC 8693 token
        exchange): a revoked token must not be traded for a new one, which a ``sub`` or
        ``client_id`` entry (tokens issued *before* a time) would no longer cover."""
        state = self.watcher.current()
        now = self.service.clock()
        jtis, subjects, clients = state.published(now)
        jti_map: dict[str | None, int] = {k: v for k, v in jtis.items()}
        client_map: dict[str | None, int] = {k: v for k, v in clients.items()}
        listed = RevocationList(
            issuer=self.service.issuer,
            sequence=state.published_sequence(now),
            issued_at=int(now),
            expires_at=int(now),
            jtis=jti_map,
            subjects=subjects,
            clients=client_map,
        )
        return listed.covers(claims)

    async def published(self, request: Request) -> Response:
        try:
            body, etag = await self.document()
        except JwtMcpError as exc:
            log.error(json.dumps({"event": "revocation_list_error", "error": exc.message}))
            return _oauth_error(
                "temporarily_unavailable",
                "the revocation list cannot be signed now",
                503,
                {"Retry-After": "5"},
            )
        headers = {"Cache-Control": f"public, max-age={self.max_age}", "ETag": etag}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(body, headers=headers, media_type=LIST_MEDIA_TYPE)

    # -- the admin endpoint -------------------------------------------------------------

    async def admin_revoke(self, request: Request) -> Response:
        from .issuer import FORM_TYPE, OAuthError, _form_pairs, parse_form

        service = self.service
        who: str | None = None  # the authenticated client, for the refusal's log line
        try:
            _refuse_cross_origin(request, service.issuer)
            content_type = request.headers.get("content-type", "")
            if content_type.partition(";")[0].strip().lower() != FORM_TYPE:
                raise OAuthError("invalid_request", f"the request must be a {FORM_TYPE} form")
            body = await _read_limited(request, service.settings.max_body_bytes)
            form = parse_form(body)
            authorizations = [
                value for name, value in request.headers.raw if name == b"authorization"
            ]
            client = await service.authenticate_client(form.params, authorizations)
            who = client.client_id
            if ADMIN_SCOPE not in client.scopes:
                refused = OAuthError(
                    "insufficient_scope",
                    f"this client may not revoke tokens (it needs the scope {ADMIN_SCOPE})",
                    403,
                )
                refused.client_id = client.client_id
                raise refused
            service.throttle(client.client_id, "requests")
            names = [n for n, _ in _form_pairs(body.decode("utf-8")) if n in _FORM_NAMES]
            if len(names) != 1:
                raise OAuthError(
                    "invalid_request", "give exactly one of sub, client or jti to revoke"
                )
            kind = _FORM_NAMES[names[0]]
            value = form.params.get(names[0], "")
            until: int | None = None
            if "until" in form.params:
                if kind != "jti":
                    raise OAuthError("invalid_request", "until is for a jti only")
                try:
                    until = parse_whole_number(form.params["until"])
                except ValueError:
                    raise OAuthError(
                        "invalid_request", "until must be a time in epoch seconds"
                    ) from None
            try:
                check_value(kind, value)
                reason = check_reason(form.params.get("reason", ""))
            except RevocationError as exc:
                raise OAuthError("invalid_request", exc.message) from None
            horizon = long_lived_horizon(
                service.rings.current(), self.watcher.current(), service.clock()
            )
            try:
                entry, state = await run_in_threadpool(
                    revoke,
                    self.watcher.path,
                    kind,
                    value,
                    horizon=horizon,
                    reason=reason,
                    until=until,
                    clock=service.clock,
                )
            except RevocationError as exc:
                if "expired already" in exc.message:
                    raise OAuthError("invalid_request", exc.message) from None
                log.error(json.dumps({"event": "revoke_failed", "error": exc.message}))
                raise OAuthError(
                    "temporarily_unavailable",
                    "the revocation cannot be recorded now",
                    503,
                    {"Retry-After": "5"},
                ) from None
        except OAuthError as exc:
            refused_id = exc.client_id or who
            log.info(
                json.dumps(
                    {
                        "event": "revoke_refused",
                        "error": exc.error,
                        "client_id": short_client_id(refused_id) if refused_id else None,
                    }
                )
            )
            return exc.response()
        log.warning(
            json.dumps(
                {
                    "event": "revoked",
                    "by": short_client_id(client.client_id),
                    "kind": kind,
                    "value": value,
                    "before": entry.before,
                    "until": entry.until,
                    "sequence": state.sequence,
                    "reason": reason,
                }
            )
        )
        answer = {
            "revoked": {"kind": kind, "value": value, "before": entry.before, "until": entry.until},
            "sequence": state.sequence,
        }
        return Response(
            json.dumps(answer).encode(),
            headers={"Cache-Control": "no-store"},
            media_type="application/json",
        )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _refuse_cross_origin(request: Request, issuer: str) -> None:
    """Refuse a request a browser marks as coming from another origin (``Origin``, or
    ``Sec-Fetch-Site``). A plain cross-site form POST needs no CORS preflight and carries
    Basic credentials the browser has cached (the 401 asks for them): without this, any web
    page an administrator visits could revoke anything (CSRF). Revocation tools (curl,
    scripts) send neither header."""
    from .issuer import OAuthError

    site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    if (site is not None and site.strip().lower() not in ("same-origin", "none")) or (
        origin is not None and origin.strip().lower() != _origin(issuer)
    ):
        raise OAuthError("invalid_request", "cross-origin requests may not revoke tokens", 403)


async def _read_limited(request: Request, limit: int) -> bytes:
    from .issuer import _invalid_request, _too_large

    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = parse_whole_number(declared)
        except ValueError:
            raise _invalid_request("invalid Content-Length") from None
        if size > limit:
            raise _too_large(limit)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return body


def _oauth_error(error: str, description: str, status: int, headers: dict[str, str]) -> Response:
    from .issuer import OAuthError

    return OAuthError(error, description, status, headers).response()


def install_revocation(service: IssuerService) -> RevocationEndpoints:
    """The revocation endpoints of ``service`` (called once, from its ``__init__``)."""
    return RevocationEndpoints(service)
