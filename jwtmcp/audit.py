"""The audit log: one JSON line per issued token and per ``tools/call`` decision.

Lines go to the standard :mod:`logging` logger ``jwtmcp.audit`` at INFO, so an application
routes them anywhere (a file, syslog, a log shipper) with ordinary logging configuration,
once it turns the logger on (it is off, at WARNING, until then; ``jwtmcp serve
--audit-log`` turns it on). Nothing is formatted while the logger is disabled.
Each line is one JSON object (``json.dumps`` with ASCII output):
every untrusted value (a tool name, a subject) is escaped, so a control character, a quote
or a line break can never start a forged line. No line holds a token, a secret or a code;
``jti`` names a token instead. docs/observability.md lists the fields.

Events (``event``): ``token_issued`` (issuer), ``tool_call`` and ``token_refused``
(protected servers). The issuer reports issued tokens through ONE call,
:meth:`IssuerEvents.token_issued`, from every grant; it also counts them in the issuer's
metrics (:mod:`jwtmcp.metrics`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from .clients import ClientsWatcher
from .logfields import client_fields, short_client_id
from .metrics import PUBLIC_CLIENT, IssuerMetrics
from .tokens import Actor, VerifiedClaims

audit_log = logging.getLogger("jwtmcp.audit")
"""The audit logger: INFO lines, one JSON object each. Off (WARNING) until enabled with
``logging.getLogger("jwtmcp.audit").setLevel(logging.INFO)`` (``jwtmcp serve --audit-log``
does that): the MCP SDK's servers set the root logger to INFO, and an audit line per
``tools/call`` that nobody asked for would cost every protected server ~0.1 ms a call."""
if audit_log.level == logging.NOTSET:  # an application's own setting, made before, stays
    audit_log.setLevel(logging.WARNING)

MAX_AUDITED_TEXT = 200
"""Characters of an untrusted value (a tool name) kept in an audit line."""

ALLOWED = "allowed"
REFUSED = "refused"


def _emit(fields: Mapping[str, Any]) -> None:
    audit_log.info(json.dumps(fields, ensure_ascii=True, separators=(",", ":")))


def _bounded(value: object) -> object:
    if isinstance(value, str) and len(value) > MAX_AUDITED_TEXT:
        return value[: MAX_AUDITED_TEXT - 3] + "..."
    return value


class IssuerEvents:
    """What the issuer reports about tokens: audit lines and metrics, one method per event.

    ``clients`` tells clients-file clients (labelled by id) from public ones (CIMD, DCR:
    labelled ``public``); ``metrics`` is None when the issuer collects none; ``clock``
    returns epoch seconds (the ``time`` of each line).
    """

    def __init__(
        self,
        clients: ClientsWatcher,
        metrics: IssuerMetrics | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clients = clients
        self.metrics = metrics
        self.clock = clock

    def client_label(self, client_id: str | None) -> str:
        """The ``client`` metric label of ``client_id``: its id when it is a client of the
        clients file, else ``public``."""
        if client_id and self.clients.current().get(client_id) is not None:
            return client_id
        return PUBLIC_CLIENT

    def token_issued(
        self,
        claims: Mapping[str, Any],
        *,
        grant_type: str,
        kid: str,
        client_name: str | None = None,
    ) -> None:
        """Report one access token just signed: ``claims`` are its claims (RFC 9068),
        ``grant_type`` the grant that issued it (RFC 6749 value or URI), ``kid`` its key,
        ``client_name`` the client's display name when it has one (logged beside the id, as
        in the service log). Never raises for a claim that is missing."""
        client_id = claims.get("client_id")
        if self.metrics is not None:
            self.metrics.tokens_issued.labels(grant_type, self.client_label(client_id)).inc()
        if audit_log.isEnabledFor(logging.INFO):
            fields: dict[str, Any] = {
                "event": "token_issued",
                "time": round(self.clock(), 3),
                "grant_type": grant_type,
                "sub": claims.get("sub"),
                **client_fields(client_id, client_name),
                "jti": claims.get("jti"),
                "aud": claims.get("aud"),
                "scope": claims.get("scope"),
                "kid": kid,
                "exp": claims.get("exp"),
            }
            if "act" in claims:
                # Who acts for ``sub`` (RFC 8693 §4.1), most recent first: the point of an
                # exchanged token, which client_id (the last actor only) does not tell.
                actor = Actor.from_claim(claims["act"])
                fields["act"] = list(actor.chain) if actor is not None else None
            _emit(fields)

    def token_refused(self, error: str) -> None:
        """Count one refused token request by its OAuth error code (RFC 6749 5.2)."""
        if self.metrics is not None:
            self.metrics.token_refusals.labels(error).inc()


def tool_call(
    caller: VerifiedClaims, tool: str | None, decision: str, reason: str | None = None
) -> None:
    """Audit one ``tools/call`` decision of a protected server: ``decision`` is ``allowed``
    or ``refused``, ``reason`` the refusal code (``insufficient_scope``, ``invalid_request``).
    ``tool`` is None for a request whose body could not be read (refused, no name known)."""
    if audit_log.isEnabledFor(logging.INFO):
        client_id = caller.client_id
        _emit(
            {
                "event": "tool_call",
                "time": round(time.time(), 3),
                "sub": _bounded(caller.subject),
                "client_id": None if client_id is None else short_client_id(client_id),
                "tool": _bounded(tool),
                "decision": decision,
                "reason": reason,
                "jti": _bounded(caller.claims.get("jti")),
            }
        )


def token_refused(reason: str) -> None:
    """Audit one request a protected server refused for its bearer token: ``reason`` is the
    verifier's code (``token_expired``, ``bad_signature``...). The token's claims are not
    trusted, so none is written."""
    if audit_log.isEnabledFor(logging.INFO):
        _emit({"event": "token_refused", "time": round(time.time(), 3), "reason": reason})
