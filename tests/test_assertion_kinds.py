"""Which kind of assertion a trusted issuer may present: workload tokens, or ID-JAGs.

An enterprise identity provider trusted for SEP-990 identity assertions (ID-JAG, ``typ``
``oauth-id-jag+jwt``) signs many other JWTs too: ID tokens, access tokens, tokens for any
audience an administrator (or, at some providers, any user registering an app) configures.
Such a JWT, typed ``JWT`` or untyped and naming jwtmcp as its audience, must not pass as a
*workload* assertion: that path needs no client authentication, no ``client_id`` claim and
no ``resource`` binding, so the policy rules written for the provider's people would grant
through it. And a cluster or CI issuer trusted for workload tokens never issues ID-JAGs.

Each ``trusted-issuers.json`` entry therefore says which kinds it presents: ``assertions``,
``["workload"]`` by default, ``["id-jag"]`` for an identity provider. Real issuer on
loopback, hand-signed assertions.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import jwt

from jwtmcp.clients import add_client
from jwtmcp.issuer import create_app
from jwtmcp.jwt_bearer import JWT_BEARER, TrustedIssuersError, load_trusted_issuers
from jwtmcp.keys import init_ring
from tests.support import FakeClock, free_port, serve_app
from tests.test_jwt_bearer import kid, new_key, pem, public_jwks

IDP = "https://idp.example.com"
CLUSTER = "https://kubernetes.default.svc.cluster.local"
RESOURCE = "https://mcp.example.com/mcp"
KEYS = {IDP: new_key(), CLUSTER: new_key()}


@contextlib.contextmanager
def issuer_with(tmp_path: Path, idp_entry: dict[str, Any]) -> Iterator[tuple[str, str]]:
    init_ring(tmp_path / "keys")
    clients = tmp_path / "clients.json"
    _, secret = add_client(clients, "agent", tools=["add"], audiences=[RESOURCE])
    for iss, name in ((IDP, "idp"), (CLUSTER, "cluster")):
        (tmp_path / f"{name}-jwks.json").write_text(json.dumps(public_jwks(KEYS[iss])))
    trusted = {
        "version": 1,
        "issuers": {
            IDP: {"jwks_file": "idp-jwks.json", **idp_entry},
            CLUSTER: {"jwks_file": "cluster-jwks.json"},
        },
    }
    (tmp_path / "trusted-issuers.json").write_text(json.dumps(trusted))
    grant = {"tools": ["add"], "audiences": [RESOURCE]}
    people = {"source": f"issuer:{IDP}", "email_domain": "example.com"}
    workload = {"source": f"issuer:{CLUSTER}", "sub": "system:serviceaccount:a:b"}
    policy = {
        "version": 1,
        "rules": {
            "people": {"match": people, "grant": grant},
            "cluster": {"match": workload, "grant": grant},
        },
    }
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    app = create_app(
        issuer_url=issuer,
        keys_dir=tmp_path / "keys",
        clients_file=clients,
        store=tmp_path / "state.db",
        clock=FakeClock(time.time()),
    )
    with serve_app(app, port=port):
        yield issuer, secret


def sign(iss: str, claims: dict[str, Any], typ: str | None) -> str:
    headers: dict[str, Any] = {"kid": kid(KEYS[iss])}
    if typ is not None:
        headers["typ"] = typ
    now = int(time.time())
    full = {"iss": iss, "jti": str(uuid.uuid4()), "iat": now, "exp": now + 120, **claims}
    return jwt.encode(full, pem(KEYS[iss]), algorithm="RS256", headers=headers)


def person(issuer: str) -> dict[str, Any]:
    return {"sub": "00u1alice", "aud": issuer, "email": "alice@example.com", "email_verified": True}


def post(issuer: str, assertion: str, auth: tuple[str, str] | None = None) -> httpx2.Response:
    form = {"grant_type": JWT_BEARER, "assertion": assertion, "resource": RESOURCE}
    return httpx2.post(f"{issuer}/token", data=form, auth=auth, timeout=10, trust_env=False)


def test_a_plain_jwt_from_an_id_jag_provider_is_not_a_workload_assertion(tmp_path: Path) -> None:
    with issuer_with(tmp_path, {"assertions": ["id-jag"]}) as (issuer, _):
        for typ in ("JWT", None):
            answer = post(issuer, sign(IDP, person(issuer), typ))
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"] == "invalid_grant"
            assert "ID-JAG" in answer.json()["error_description"]


def test_an_id_jag_provider_still_grants_its_id_jags(tmp_path: Path) -> None:
    with issuer_with(tmp_path, {"assertions": ["id-jag"]}) as (issuer, secret):
        claims = {**person(issuer), "client_id": "agent", "resource": RESOURCE}
        answer = post(issuer, sign(IDP, claims, "oauth-id-jag+jwt"), auth=("agent", secret))
        assert answer.status_code == 200, answer.text


def test_an_issuer_entry_presents_workload_tokens_only_by_default(tmp_path: Path) -> None:
    with issuer_with(tmp_path, {}) as (issuer, secret):
        claims = {**person(issuer), "client_id": "agent", "resource": RESOURCE}
        answer = post(issuer, sign(IDP, claims, "oauth-id-jag+jwt"), auth=("agent", secret))
        assert answer.status_code == 400, answer.text
        assert "ID-JAG" in answer.json()["error_description"]
        workload = {"sub": "system:serviceaccount:a:b", "aud": issuer}
        assert post(issuer, sign(CLUSTER, workload, None)).status_code == 200


def test_an_unknown_assertion_kind_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "jwks.json").write_text(json.dumps(public_jwks(KEYS[IDP])))
    for bad in (["id_jag"], [], "id-jag", ["workload", 1]):
        entry = {"jwks_file": "jwks.json", "assertions": bad}
        (tmp_path / "t.json").write_text(json.dumps({"version": 1, "issuers": {IDP: entry}}))
        try:
            load_trusted_issuers(tmp_path / "t.json")
        except TrustedIssuersError as exc:
            assert "assertions" in exc.message
        else:
            raise AssertionError(f"{bad!r} was accepted")
