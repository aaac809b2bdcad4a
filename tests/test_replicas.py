"""Issuer replicas sharing one store: real ``jwtmcp serve`` processes and a real redis-server.

Two replicas on different ports, the same keys directory, clients and users files, and
``--store redis://...``, behave as one issuer: a code is single-use across both, a refresh
token replayed at the other replica revokes its family, a client's ``/token`` rate limit
holds across both, and when Redis stops the flows that need it answer 503 + ``Retry-After``
while ``client_credentials`` keeps issuing.
"""

from __future__ import annotations

from pathlib import Path

import httpx2

from jwtmcp.store import new_opaque_token
from tests.support import issuer_process


REDIRECT = "http://127.0.0.1:5999/callback"


def register(base_url: str) -> str:
    """A public client registered (RFC 7591, stateless) at ``base_url``: its client id."""
    answer = httpx2.post(f"{base_url}/register", json={"redirect_uris": [REDIRECT]}, timeout=10)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["client_id"])


def _unknown_refresh(base_url: str) -> httpx2.Response:
    """A refresh grant with a token nobody issued: it reads the store, and is refused."""
    return httpx2.post(
        f"{base_url}/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": new_opaque_token(),
            "client_id": register(base_url),
        },
        timeout=10,
    )


def test_serve_opens_a_sqlite_url_store_where_the_url_says(tmp_path: Path) -> None:
    state = tmp_path / "elsewhere" / "state.db"
    with issuer_process(tmp_path / "run", args=["--store", f"sqlite://{state}"]) as running:
        answer = _unknown_refresh(running.base_url)
        assert answer.status_code == 400, answer.text  # invalid_grant: the store was read
    assert state.exists()
