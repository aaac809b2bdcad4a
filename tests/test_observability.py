"""What an operator sees (issue 13, part 3): Prometheus metrics, the audit log, OpenTelemetry.

Real servers on loopback: an issuer app under uvicorn (sign-in grants included, on a fake
clock), ``jwtmcp serve`` as a process, and a protected MCP server called through the
official SDK client. ``/metrics`` is scraped over HTTP and read with prometheus-client's own
parser; every counter is checked against the traffic the test sent.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from jwtmcp.clients import add_client
from jwtmcp.issuer import create_app
from jwtmcp.keys import init_ring, load_ring
from jwtmcp.mcp import protected_server
from tests.mcp_support import post_mcp, run, serve_protected
from tests.support import free_port, issuer_process, run_cli, serve_app
from tests.test_grants import running_issuer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, parsed by prometheus-client."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def scrape(url: str) -> tuple[Samples, str]:
    answer = httpx2.get(url, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=")
    return parse(answer.text), answer.text


@pytest.fixture(scope="module")
def ring_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ring") / "keys"
    init_ring(directory)
    return directory


# --- the issuer -----------------------------------------------------------------------------


def test_issuer_metrics_count_exactly_the_tokens_issued_and_refused_by_grant_client_and_code(
    ring_dir: Path, tmp_path: Path
) -> None:
    with running_issuer(ring_dir, tmp_path, metrics=True) as world:
        for _ in range(2):
            assert world.client_credentials().status_code == 200
        signed = world.signed_in()  # authorization_code, a registered (public) client
        assert world.refresh(signed["refresh_token"]).status_code == 200
        wrong = world.http.post(
            "/token", data={"grant_type": "client_credentials"}, auth=("machine", "wrong")
        )
        assert wrong.status_code == 401
        assert world.exchange("no-such-code").status_code == 400
        assert world.http.get("/.well-known/jwks.json").status_code == 200
        assert world.http.get("/.well-known/oauth-authorization-server").status_code == 200
        samples, text = scrape(str(world.http.base_url) + "/metrics")

    issued = "jwtmcp_issuer_tokens_issued_total"
    assert value(samples, issued, grant_type="client_credentials", client="machine") == 2
    assert value(samples, issued, grant_type="authorization_code", client="public") == 1
    assert value(samples, issued, grant_type="refresh_token", client="public") == 1
    assert total(samples, issued) == 4
    refusals = "jwtmcp_issuer_token_refusals_total"
    assert value(samples, refusals, error="invalid_client") == 1
    assert value(samples, refusals, error="invalid_grant") == 1
    assert total(samples, refusals) == 2
    requests = "jwtmcp_issuer_requests_total"
    assert value(samples, requests, endpoint="token", status="200") == 4
    assert value(samples, requests, endpoint="token", status="401") == 1
    assert value(samples, requests, endpoint="token", status="400") == 1
    assert value(samples, requests, endpoint="jwks", status="200") == 1
    assert value(samples, requests, endpoint="metadata", status="200") == 1
    assert total(samples, requests) == 8
    latency = "jwtmcp_issuer_request_duration_seconds_count"
    assert value(samples, latency, endpoint="token") == 6
    assert value(samples, latency, endpoint="jwks") == 1
    active = load_ring(ring_dir).active
    assert value(samples, "jwtmcp_issuer_key_age_seconds", role="active") == pytest.approx(
        world.clock.now - (active.activated_at or active.created_at)
    )
    # No secret, token or registered client id reaches a label.
    assert world.machine_secret not in text
    assert world.public_id not in text
    assert "eyJ" not in text


def test_two_issuers_in_one_process_count_apart(ring_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        running_issuer(ring_dir, tmp_path / "a", metrics=True) as a,
        running_issuer(ring_dir, tmp_path / "b", metrics=True) as b,
    ):
        assert a.client_credentials().status_code == 200
        for _ in range(3):
            assert b.client_credentials().status_code == 200
        seen_a, _ = scrape(str(a.http.base_url) + "/metrics")
        seen_b, _ = scrape(str(b.http.base_url) + "/metrics")
    assert total(seen_a, "jwtmcp_issuer_tokens_issued_total") == 1
    assert total(seen_b, "jwtmcp_issuer_tokens_issued_total") == 3


def test_issuer_without_metrics_serves_no_metrics_path(ring_dir: Path, tmp_path: Path) -> None:
    with running_issuer(ring_dir, tmp_path) as world:
        assert world.http.get("/metrics").status_code == 404


def test_serve_metrics_port_serves_metrics_on_its_own_loopback_listener_not_the_issuer_port(
    tmp_path: Path,
) -> None:
    metrics_port = free_port()
    with issuer_process(tmp_path, args=["--metrics", str(metrics_port)]) as issuer:
        assert issuer.client_id is not None and issuer.client_secret is not None
        answer = httpx2.post(
            issuer.token_url,
            data={"grant_type": "client_credentials"},
            auth=(issuer.client_id, issuer.client_secret),
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        samples, _ = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert httpx2.get(issuer.base_url + "/metrics", timeout=10).status_code == 404
    assert (
        value(
            samples,
            "jwtmcp_issuer_tokens_issued_total",
            grant_type="client_credentials",
            client=issuer.client_id,
        )
        == 1
    )


def test_serve_audit_log_gets_one_json_line_per_issued_token_without_the_token(
    tmp_path: Path,
) -> None:
    audit_file = tmp_path / "audit.jsonl"
    with issuer_process(tmp_path, args=["--audit-log", str(audit_file)]) as issuer:
        assert issuer.client_id is not None and issuer.client_secret is not None
        answer = httpx2.post(
            issuer.token_url,
            data={"grant_type": "client_credentials"},
            auth=(issuer.client_id, issuer.client_secret),
            timeout=10,
        )
        token = answer.json()["access_token"]
    text = audit_file.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    assert [(r["event"], r["grant_type"], r["client_id"]) for r in records] == [
        ("token_issued", "client_credentials", issuer.client_id)
    ]
    assert token not in text and issuer.client_secret not in text


def test_serve_without_audit_log_writes_no_audit_line(tmp_path: Path) -> None:
    with issuer_process(tmp_path) as issuer:
        assert issuer.client_id is not None and issuer.client_secret is not None
        answer = httpx2.post(
            issuer.token_url,
            data={"grant_type": "client_credentials"},
            auth=(issuer.client_id, issuer.client_secret),
            timeout=10,
        )
        assert answer.status_code == 200
        stderr = issuer.stderr()
    assert '"event": "token_issued"' in stderr  # the service's own line
    assert '"event":"token_issued"' not in stderr  # no audit line beside it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics", "on", "--workers", "2"], "--metrics needs --workers 1"),
        (["--metrics", "everywhere"], "--metrics must be off, on, PORT or HOST:PORT"),
        (["--metrics", "70000"], "--metrics must be off, on, PORT or HOST:PORT"),
        (["--audit-log", "/nonexistent-dir/audit.log"], "cannot open the audit log"),
    ],
)
def test_serve_refuses_an_observability_setting_it_cannot_honour_in_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    code, _, err = run_cli(
        "serve", "--port", str(free_port()), "--keys", str(tmp_path / "keys"), *args
    )
    lines = err.strip().splitlines()
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("jwtmcp: error: ")
    assert message in lines[0]
    assert not (tmp_path / "keys").exists()


# --- a protected MCP server -----------------------------------------------------------------


@dataclass
class Protected:
    url: str  # the MCP endpoint (the token audience)
    metrics_url: str
    token_url: str
    secret: str
    calls: Tally[str]

    def token(self, client: str = "adder") -> str:
        answer = httpx2.post(
            self.token_url,
            data={"grant_type": "client_credentials", "resource": self.url},
            auth=(client, self.secret),
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["access_token"])


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Protected]:
    directory = tmp_path_factory.mktemp("protected")
    init_ring(directory / "keys")
    issuer_port, mcp_port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{issuer_port}"
    resource = f"http://127.0.0.1:{mcp_port}/mcp"
    _, secret = add_client(
        directory / "clients.json", "adder", tools=["add"], audiences=[resource]
    )
    app = create_app(
        issuer_url=issuer,
        keys_dir=directory / "keys",
        clients_file=directory / "clients.json",
        rate_limit=0,
        store=directory / "state.db",
    )
    with serve_app(app, port=issuer_port):  # first: see serve_protected
        server = protected_server("math", issuer=issuer, resource=resource, metrics=True)
        calls: Tally[str] = Tally()

        @server.tool()
        def add(a: float, b: float) -> float:
            calls["add"] += 1
            return a + b

        @server.tool()
        def subtract(a: float, b: float) -> float:
            calls["subtract"] += 1
            return a - b

        with serve_protected(server, port=mcp_port):
            yield Protected(
                url=resource,
                metrics_url=f"http://127.0.0.1:{mcp_port}/metrics",
                token_url=f"{issuer}/token",
                secret=secret,
                calls=calls,
            )


def tampered(token: str) -> str:
    """``token`` with one character of its signature changed: refused as bad_signature."""
    i = len(token) - 10
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]


async def call_add_then_subtract(url: str, token: str, sent: list[str]) -> str:
    """Through the SDK client: ``add`` (granted), then ``subtract`` (not granted). Every
    HTTP request the client makes is recorded in ``sent``. Returns the refusal's message."""

    async def record(request: httpx2.Request) -> None:
        sent.append(request.method)

    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
        event_hooks={"request": [record]},
    )
    async with Client(streamable_http_client(url, http_client=http), read_timeout_seconds=10) as c:
        result = await c.call_tool("add", {"a": 2, "b": 3})
        assert not result.is_error
        try:
            await c.call_tool("subtract", {"a": 2, "b": 3})
        except MCPError as exc:
            return exc.message
    raise AssertionError("subtract was not refused")


def test_protected_server_metrics_count_exactly_the_checks_cache_hits_and_tool_decisions(
    protected: Protected,
) -> None:
    before, _ = scrape(protected.metrics_url)
    token = protected.token()
    assert post_mcp(protected.url, tampered(token), {"jsonrpc": "2.0"}).status_code == 401
    sent: list[str] = []
    refusal = run(lambda: call_add_then_subtract(protected.url, token, sent))
    assert "tool:subtract" in refusal
    after, text = scrape(protected.metrics_url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Every request the SDK client sent carried the good token: one full check, then hits.
    assert moved("jwtmcp_verifications_total", result="ok") == len(sent)
    assert moved("jwtmcp_verifications_total", result="bad_signature") == 1
    assert total(after, "jwtmcp_verifications_total") - total(
        before, "jwtmcp_verifications_total"
    ) == len(sent) + 1
    assert moved("jwtmcp_verified_cache_misses_total") == 2  # the good token once, the bad one
    assert moved("jwtmcp_verified_cache_hits_total") == len(sent) - 1
    assert moved("jwtmcp_tool_calls_total", tool="add", decision="allowed") == 1
    assert moved("jwtmcp_tool_calls_total", tool="subtract", decision="refused") == 1
    assert total(after, "jwtmcp_tool_calls_total") - total(before, "jwtmcp_tool_calls_total") == 2
    assert protected.calls["subtract"] == 0
    assert token not in text


def test_protected_server_metrics_report_the_jwks_fetch_and_its_age(protected: Protected) -> None:
    assert post_mcp(protected.url, protected.token(), {"jsonrpc": "2.0"}).status_code != 401
    samples, _ = scrape(protected.metrics_url)
    assert value(samples, "jwtmcp_jwks_fetches_total") == 1
    assert value(samples, "jwtmcp_jwks_fetch_failures_total") == 0
    assert 0 <= value(samples, "jwtmcp_jwks_seconds_since_good_fetch") < 300


def test_a_called_name_that_is_no_tool_of_the_server_is_labelled_other(
    protected: Protected,
) -> None:
    token = protected.token()
    for name in ("no_such_tool_1", "no_such_tool_2"):
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": name, "arguments": {}},
        }
        assert post_mcp(protected.url, token, body).status_code == 403
    samples, text = scrape(protected.metrics_url)
    assert value(samples, "jwtmcp_tool_calls_total", tool="other", decision="refused") >= 2
    assert "no_such_tool" not in text


# --- the audit log --------------------------------------------------------------------------


def audit_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    lines = [r.getMessage() for r in caplog.records if r.name == "jwtmcp.audit"]
    assert all("\n" not in line and "\r" not in line for line in lines)
    return [json.loads(line) for line in lines]


def test_audit_log_has_a_line_per_issued_token_and_per_allowed_and_refused_call_without_tokens(
    protected: Protected, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="jwtmcp.audit"):
        token = protected.token()
        run(lambda: call_add_then_subtract(protected.url, token, []))
    records = audit_records(caplog)
    issued = [r for r in records if r["event"] == "token_issued"]
    calls = [r for r in records if r["event"] == "tool_call"]
    assert len(issued) == 1
    assert issued[0]["grant_type"] == "client_credentials"
    assert issued[0]["client_id"] == "adder" and issued[0]["sub"] == "adder"
    jti = issued[0]["jti"]
    assert isinstance(jti, str) and jti
    assert [(c["tool"], c["decision"], c["reason"]) for c in calls] == [
        ("add", "allowed", None),
        ("subtract", "refused", "insufficient_scope"),
    ]
    for line in calls:
        assert (line["sub"], line["client_id"], line["jti"]) == ("adder", "adder", jti)
        assert isinstance(line["time"], float)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert token not in logged and protected.secret not in logged


def test_audit_line_of_a_refused_token_names_the_reason_and_no_claim(
    protected: Protected, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tampered(protected.token())
    with caplog.at_level(logging.INFO, logger="jwtmcp.audit"):
        assert post_mcp(protected.url, bad, {"jsonrpc": "2.0"}).status_code == 401
    records = audit_records(caplog)
    assert [(r["event"], r["reason"]) for r in records] == [("token_refused", "bad_signature")]
    assert set(records[0]) == {"event", "time", "reason"}


def test_audit_line_escapes_control_characters_of_a_called_name(
    protected: Protected, caplog: pytest.LogCaptureFixture
) -> None:
    name = 'evil\r\n{"event":"tool_call","decision":"allowed"}\x1b[2J\u2028'
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name}}
    token = protected.token()
    with caplog.at_level(logging.INFO, logger="jwtmcp.audit"):
        assert post_mcp(protected.url, token, body).status_code == 400
    lines = [r.getMessage() for r in caplog.records if r.name == "jwtmcp.audit"]
    assert len(lines) == 1
    assert lines[0].isascii() and lines[0].isprintable()
    record = json.loads(lines[0])
    assert (record["tool"], record["decision"], record["reason"]) == (
        name,
        "refused",
        "invalid_request",
    )


# --- OpenTelemetry --------------------------------------------------------------------------

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The SDK's in-memory exporter behind the global tracer provider (set once per process:
    the OpenTelemetry API allows no second one)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


def test_spans_carry_the_caller_client_and_decision_of_checks_and_tool_calls(
    protected: Protected, spans: InMemorySpanExporter
) -> None:
    token = protected.token()
    assert post_mcp(protected.url, tampered(token), {"jsonrpc": "2.0"}).status_code == 401
    run(lambda: call_add_then_subtract(protected.url, token, []))

    checks = [dict(s.attributes or {}) for s in named(spans, "jwtmcp.verify")]
    assert checks[0] == {"jwtmcp.decision": "refused", "jwtmcp.reason": "bad_signature"}
    assert len(checks) > 2
    assert all(
        c == {"enduser.id": "adder", "jwtmcp.client_id": "adder", "jwtmcp.decision": "ok"}
        for c in checks[1:]
    )
    tool_calls = [dict(s.attributes or {}) for s in named(spans, "jwtmcp.tool_call")]
    assert tool_calls == [
        {
            "enduser.id": "adder",
            "jwtmcp.client_id": "adder",
            "jwtmcp.tool": "add",
            "jwtmcp.decision": "allowed",
        },
        {
            "enduser.id": "adder",
            "jwtmcp.client_id": "adder",
            "jwtmcp.tool": "subtract",
            "jwtmcp.decision": "refused",
            "jwtmcp.reason": "insufficient_scope",
        },
    ]
    assert all(token not in str(s.attributes) for s in spans.get_finished_spans())


def test_the_audit_log_stays_off_under_the_sdks_info_logging_until_its_logger_is_enabled() -> None:
    # The MCP SDK's MCPServer sets the root logger to INFO with a handler, so an audit logger
    # that inherits the root's level would format and write a line for every tools/call of
    # every protected server (about 0.1 ms each) although no one asked for an audit log.
    # A fresh interpreter: pytest's own handler on the root logger would change the outcome.
    script = (
        "import logging\n"
        "from jwtmcp.mcp import protected_server\n"
        "protected_server('x', issuer='http://127.0.0.1:9', resource='http://127.0.0.1:9/mcp',"
        " public_key_pem=PEM)\n"
        "audit = logging.getLogger('jwtmcp.audit')\n"
        "print(logging.getLogger().isEnabledFor(20), audit.isEnabledFor(20))\n"
        "audit.setLevel(logging.INFO)\n"  # the documented opt-in
        "print(audit.isEnabledFor(20))\n"
    )
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    done = subprocess.run(
        [sys.executable, "-c", f"PEM = {pem!r}\n" + script],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stdout.split() == ["True", "False", "True"], done.stdout + done.stderr
