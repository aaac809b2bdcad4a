"""A client's ``subject`` never takes the form of an upstream person's or a workload's.

docs/oidc.md promises that ``oidc:<provider id>:<sub>`` cannot collide with anything else,
and docs/workload-kubernetes.md the same of ``issuer:<iss>#<sub>``: MCP servers key data by
``sub``. A client's ``subject`` (``clients add --subject``, or the clients file) was free
text, so a client could be given ``oidc:corp:00u1alice`` and its client_credentials tokens
were Alice's to every server. The ``oidc:`` and ``issuer:`` prefixes are reserved: the
command refuses them, and so does the issuer reading a clients file that holds one. The
real command in a subprocess; the real issuer (create_app) for the file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jwtmcp.clients import add_client
from jwtmcp.errors import ClientsError
from jwtmcp.issuer import create_app
from jwtmcp.keys import init_ring

SUBJECTS = [
    "oidc:corp:00u1alice",
    "issuer:https://kubernetes.default.svc.cluster.local#system:serviceaccount:tools:reporter",
    "OIDC:corp:00u1alice",
]


@pytest.mark.parametrize("subject", SUBJECTS)
def test_clients_add_refuses_a_reserved_subject(tmp_path: Path, subject: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWTMCP_")}
    proc = subprocess.run(
        [sys.executable, "-m", "jwtmcp", "clients", "add", "evil", "--tools", "add",
         "--audience", "https://mcp.example.com/mcp", "--subject", subject],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stdout
    assert "reserved" in proc.stderr
    assert (
        not (tmp_path / "clients.json").exists()
        or "evil" not in (tmp_path / "clients.json").read_text()
    )


@pytest.mark.parametrize("subject", SUBJECTS)
def test_the_issuer_refuses_a_clients_file_holding_a_reserved_subject(
    tmp_path: Path, subject: str
) -> None:
    init_ring(tmp_path / "keys")
    clients = tmp_path / "clients.json"
    add_client(clients, "evil", tools=["add"], audiences=["https://mcp.example.com/mcp"])
    doc = json.loads(clients.read_text())
    doc["clients"]["evil"]["subject"] = subject
    clients.write_text(json.dumps(doc))
    with pytest.raises(ClientsError, match="reserved"):
        create_app(
            issuer_url="http://127.0.0.1:9",
            keys_dir=tmp_path / "keys",
            clients_file=clients,
            store=tmp_path / "state.db",
        )


def test_an_ordinary_subject_still_works(tmp_path: Path) -> None:
    add_client(
        tmp_path / "clients.json",
        "svc",
        tools=["add"],
        audiences=["https://mcp.example.com/mcp"],
        subject="svc-reporting",
    )
