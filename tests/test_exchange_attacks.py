"""Attacks on token exchange, its audit trail and the tools/call gate (attack13 findings).

Real issuers and protected servers on loopback; nothing of jwtmcp is mocked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from prometheus_client.exposition import generate_latest

from jwtmcp.clients import add_client
from jwtmcp.issuer import create_app
from jwtmcp.keys import init_ring
from jwtmcp.mcp import protected_server
from jwtmcp.metrics import ServerMetrics
from jwtmcp.middleware import JwtAuthMiddleware
from jwtmcp.token_exchange import ACCESS_TOKEN_TYPE, GRANT_TYPE
from jwtmcp.tokens import mint, split_scope
from jwtmcp.users import add_user
from jwtmcp.verifier import Verifier
from tests.mcp_support import serve_protected
from tests.support import free_port, serve_app

A = "http://127.0.0.1:9201/mcp"
B = "http://127.0.0.1:9202/mcp"
PASSWORD = "correct horse battery staple"


@dataclass
class Issuer:
    http: httpx2.Client
    secrets: dict[str, str]

    def client_token(self, client: str, resource: str) -> str:
        answer = self.http.post(
            "/token",
            data={"grant_type": "client_credentials", "resource": resource},
            auth=(client, self.secrets[client]),
        )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["access_token"])

    def exchange(self, client: str, subject_token: str, resource: str) -> httpx2.Response:
        return self.http.post(
            "/token",
            data={
                "grant_type": GRANT_TYPE,
                "subject_token": subject_token,
                "subject_token_type": ACCESS_TOKEN_TYPE,
                "resource": resource,
            },
            auth=(client, self.secrets[client]),
        )


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    """``ci-bot`` is both a machine client (tools: search) and, by the same name, a user
    (tools: everything), as ``demo`` is after ``jwtmcp serve``'s first start. ``server-a``
    and ``server-b`` may delegate anything to each other."""
    directory = tmp_path_factory.mktemp("exchange-attacks")
    init_ring(directory / "keys")
    clients_file = directory / "clients.json"
    users_file = directory / "users.json"
    secrets: dict[str, str] = {}
    _, secrets["ci-bot"] = add_client(clients_file, "ci-bot", tools=["search"], audiences=[A, B])
    _, secrets["server-a"] = add_client(
        clients_file, "server-a", tools=[], audiences=[B], resource=A, delegate={B: ["*"]}
    )
    _, secrets["server-b"] = add_client(
        clients_file, "server-b", tools=[], audiences=[A], resource=B, delegate={A: ["*"]}
    )
    add_user(users_file, "ci-bot", password=PASSWORD, tools=["*"], audiences=[A, B])
    # And the other way round: a wide client "kiosk" and a narrow user "kiosk".
    _, secrets["kiosk"] = add_client(clients_file, "kiosk", tools=["*"], audiences=[A, B])
    add_user(users_file, "kiosk", password=PASSWORD, tools=["search"], audiences=[A, B])
    app = create_app(
        issuer_url="http://127.0.0.1:9200",
        keys_dir=directory / "keys",
        clients_file=clients_file,
        users_file=users_file,
        store=directory / "state.db",
        rate_limit=0,
    )
    with serve_app(app) as url, httpx2.Client(base_url=url, timeout=10) as http:
        yield Issuer(http, secrets)


def test_a_chain_from_a_client_token_never_gets_the_allowance_of_a_same_named_user(
    issuer: Issuer,
) -> None:
    """A client-credentials token of ``ci-bot`` (tool:search only), exchanged once and then
    again, must not come out with the user ``ci-bot``'s ``tool:*``: the second hop cannot
    tell whether the chain began with the client or with the user, so it may not take the
    wider of the two."""
    first = issuer.exchange("server-a", issuer.client_token("ci-bot", A), B)
    assert first.status_code == 200, first.text
    assert first.json()["scope"] == "tool:search"
    second = issuer.exchange("server-b", first.json()["access_token"], A)
    assert second.status_code in (200, 400), second.text
    if second.status_code == 200:
        assert split_scope(second.json()["scope"]) == ("tool:search",), second.json()


def test_a_first_hop_token_that_may_be_a_same_named_users_gets_no_more_than_the_user(
    issuer: Issuer,
) -> None:
    """A token with ``sub`` = ``client_id`` = ``kiosk`` may be the client's own
    (client credentials) or the user ``kiosk`` signed in by that client (a clients-file
    client may run /authorize): the two look alike, so the exchange must not hand the user
    the client's ``tool:*``."""
    answer = issuer.exchange("server-a", issuer.client_token("kiosk", A), B)
    assert answer.status_code in (200, 400), answer.text
    if answer.status_code == 200:
        assert split_scope(answer.json()["scope"]) == ("tool:search",), answer.json()


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "jwtmcp.audit"]


def test_the_audit_line_of_an_exchanged_token_names_every_actor(
    issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    """Who acted is the point of an exchanged token: the audit line must say it, most
    recent first, as the ``act`` claim does (the service log already does)."""
    subject = issuer.client_token("ci-bot", A)
    with caplog.at_level(logging.INFO, logger="jwtmcp.audit"):
        first = issuer.exchange("server-a", subject, B)
        assert first.status_code == 200, first.text
        second = issuer.exchange("server-b", first.json()["access_token"], A)
        assert second.status_code == 200, second.text
    lines = [line for line in audit_lines(caplog) if line["grant_type"] == GRANT_TYPE]
    assert [line.get("act") for line in lines] == [["server-a"], ["server-b", "server-a"]]


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A protected server with metrics and a token that may call its one tool."""
    directory = tmp_path_factory.mktemp("gate")
    init_ring(directory / "keys")
    issuer_port, mcp_port = free_port(), free_port()
    issuer_url = f"http://127.0.0.1:{issuer_port}"
    resource = f"http://127.0.0.1:{mcp_port}/mcp"
    _, secret = add_client(directory / "clients.json", "adder", tools=["add"], audiences=[resource])
    app = create_app(
        issuer_url=issuer_url,
        keys_dir=directory / "keys",
        clients_file=directory / "clients.json",
        rate_limit=0,
        store=directory / "state.db",
    )
    with serve_app(app, port=issuer_port):  # first: see serve_protected
        server = protected_server("math", issuer=issuer_url, resource=resource, metrics=True)

        @server.tool()
        def add(a: float, b: float) -> float:
            return a + b

        with serve_protected(server, port=mcp_port):
            answer = httpx2.post(
                f"{issuer_url}/token",
                data={"grant_type": "client_credentials", "resource": resource},
                auth=("adder", secret),
            )
            yield resource, answer.json()["access_token"]


@pytest.mark.parametrize(
    "body",
    [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 7}},
        [{"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": ["add"]}}],
        '{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "add"',
    ],
    ids=["number-name", "list-name-in-batch", "cut-json"],
)
def test_a_tools_call_refused_as_unreadable_is_audited_and_counted(
    gate: tuple[str, str], body: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A caller with a valid token whose tools/call is refused because its body cannot be
    read still leaves a refused tool_call line and a refused count: no refusal goes unseen."""
    url, token = gate
    metrics_url = url.removesuffix("/mcp") + "/metrics"

    def refused_count() -> float:
        text = httpx2.get(metrics_url).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("jwtmcp_tool_calls_total{") and 'decision="refused"' in line
        )

    before = refused_count()
    raw = body if isinstance(body, str) else json.dumps(body)
    with caplog.at_level(logging.INFO, logger="jwtmcp.audit"):
        answer = httpx2.post(
            url,
            content=raw.encode(),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
            },
        )
    assert answer.status_code == 400, answer.text
    lines = [line for line in audit_lines(caplog) if line["event"] == "tool_call"]
    assert [(line["decision"], line["reason"]) for line in lines] == [
        ("refused", "invalid_request")
    ]
    assert lines[0]["sub"] == "adder"
    assert refused_count() == before + 1


# --- metrics labels of a server that names no tools ---------------------------------------


async def _echo(scope: Any, receive: Any, send: Any) -> None:
    """A stand-in MCP app behind the middleware: answers every request with ``{}``."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_callers_cannot_fill_the_tool_labels_of_a_server_without_a_tool_list(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A middleware built without ``tools`` labels the first names it sees. A caller whose
    token grants only ``add`` calls 120 junk names (refused: not granted), some a few KB
    long: none may become a label (bounded memory and scrape size), and ``add``, called
    afterwards, must still be counted under its own name, not ``other``."""
    directory = tmp_path_factory.mktemp("labels")
    ring = init_ring(directory / "keys")
    (directory / "jwks.json").write_text(json.dumps(ring.jwks()))
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    issuer_url = "http://127.0.0.1:9"
    verifier = Verifier(
        issuer=issuer_url, audience=resource, jwks_file=str(directory / "jwks.json")
    )
    metrics = ServerMetrics(verifier)
    app = JwtAuthMiddleware(
        _echo, verifier=verifier, resource=resource, issuer=issuer_url, metrics=metrics
    )
    token = mint(ring, issuer=issuer_url, subject="mallory", audience=resource, tools=("add",))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call(name: str) -> int:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name}}
        return httpx2.post(resource, json=body, headers=headers, timeout=10).status_code

    with serve_app(app, port=port):
        for i in range(120):
            assert call(f"junk{i}_" + "x" * (4000 if i % 10 == 0 else 10)) == 403
        assert call("add") == 200
    text = generate_latest(metrics.registry).decode()
    labels = [
        line.split('tool="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("jwtmcp_tool_calls_total{")
    ]
    assert not [label for label in labels if label.startswith("junk")], labels[:5]
    assert 'jwtmcp_tool_calls_total{decision="allowed",tool="add"} 1.0' in text
    verifier.close()


def test_a_tools_call_refused_as_too_large_is_audited(
    gate: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The same for a body over the size bound (413): a verified caller's refused request
    leaves a refused tool_call line."""
    url, token = gate
    name = "x" * (4 * 1024 * 1024)
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name}}
    with caplog.at_level(logging.INFO, logger="jwtmcp.audit"):
        answer = httpx2.post(
            url,
            content=json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
            },
            timeout=30,
        )
    assert answer.status_code == 413, answer.text
    lines = [line for line in audit_lines(caplog) if line["event"] == "tool_call"]
    assert [(line["tool"], line["decision"], line["reason"]) for line in lines] == [
        (None, "refused", "invalid_request")
    ]
