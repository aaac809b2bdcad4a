"""OpenTelemetry spans of protected servers, through ``opentelemetry-api`` only.

Without an SDK configured by the application the API's tracer is a no-op, and each span
costs a few microseconds. With one, a protected server emits:

- ``jwtmcp.verify`` around each bearer-token check;
- ``jwtmcp.tool_call`` around each ``tools/call`` request (allowed: the whole call through
  the MCP app; refused: the refusal).

Both carry :data:`ENDUSER_ID` (the caller's ``sub``), :data:`CLIENT_ID`, :data:`DECISION` and,
on a refusal, :data:`REASON`; the tool span also :data:`TOOL`. No attribute holds a token.
"""

from __future__ import annotations

from opentelemetry import trace

tracer = trace.get_tracer("jwtmcp")
"""The tracer of every jwtmcp span (a proxy: it follows the provider set later)."""



def tracing_on() -> bool:
    """True once the application has set a tracer provider (an OpenTelemetry SDK): until
    then the API's spans are no-ops, and protected servers skip making them (two spans a
    ``tools/call`` cost ~25 µs even as no-ops). Checked per request, so a provider set
    after the server started is followed."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


VERIFY_SPAN = "jwtmcp.verify"
TOOL_CALL_SPAN = "jwtmcp.tool_call"

ENDUSER_ID = "enduser.id"
"""The caller's ``sub`` (OpenTelemetry semantic conventions, ``enduser.id``)."""
CLIENT_ID = "jwtmcp.client_id"
"""The OAuth client the token was issued to."""
DECISION = "jwtmcp.decision"
"""``ok``/``refused`` for a verification, ``allowed``/``refused`` for a tool call."""
REASON = "jwtmcp.reason"
"""The refusal code: a verifier code (``token_expired``...) or ``insufficient_scope``."""
TOOL = "jwtmcp.tool"
"""The called tool's name (several, comma-separated, for a JSON-RPC batch)."""
