"""The jwt-bearer grant (RFC 7523 §2.1) and SEP-990 identity assertions (ID-JAG).

A real issuer (uvicorn on loopback) trusting three issuers through ``trusted-issuers.json``
and deciding through ``policy.json`` — exactly the miniature setups of
docs/workload-kubernetes.md and docs/workload-github-actions.md — and a real protected MCP
server called with the SDK's client. The SDK's ``IdentityAssertionOAuthProvider`` runs
unchanged. Refusals are hand-made assertions POSTed to /token.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import Client
from mcp.client.auth.extensions.identity_assertion import IdentityAssertionOAuthProvider
from mcp.client.streamable_http import streamable_http_client

from jwtmcp.clients import add_client
from jwtmcp.issuer import create_app
from jwtmcp.jwt_bearer import JWT_BEARER, TrustedIssuersError, load_trusted_issuers
from jwtmcp.keys import init_ring, rsa_kid, rsa_public_jwk_members
from jwtmcp.mcp import current_caller, protected_server
from jwtmcp.policy import PolicyError
from tests.jwks_support import JwksServer, b64url, hs256, segment
from tests.mcp_support import MemoryStorage, run, serve_protected
from tests.support import FakeClock, free_port, serve_app

K8S = "https://kubernetes.default.svc.cluster.local"
GITHUB = "https://token.actions.githubusercontent.com"
IDP = "https://idp.example.com"
DOWN = "https://down.example.com"
SERVICE_ACCOUNT = "system:serviceaccount:tools:reporter"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_jwks(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    public = key.public_key()
    jwk: dict[str, Any] = rsa_public_jwk_members(public)
    jwk.update(kid=rsa_kid(public), use="sig", alg="RS256")
    return {"keys": [jwk]}


def kid(key: rsa.RSAPrivateKey) -> str:
    return rsa_kid(key.public_key())


@dataclass
class World:
    issuer: str
    resource: str
    clock: FakeClock
    keys: dict[str, rsa.RSAPrivateKey]
    agent_secret: str
    narrow_secret: str
    directory: Path

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"

    def sign(
        self,
        claims: dict[str, Any],
        issuer: str,
        *,
        key: rsa.RSAPrivateKey | None = None,
        headers: dict[str, Any] | None = None,
    ) -> str:
        signing = key or self.keys[issuer]
        all_headers = {"kid": kid(self.keys[issuer]), **(headers or {})}
        return jwt.encode(claims, pem(signing), algorithm="RS256", headers=all_headers)

    def k8s_token(self, **overrides: Any) -> str:
        """A projected service-account token as the kubelet writes it (audience: us)."""
        now = int(self.clock())
        claims: dict[str, Any] = {
            "aud": [self.issuer],
            "exp": now + 3600,
            "iat": now,
            "nbf": now,
            "iss": K8S,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": "tools",
                "pod": {"name": "reporter-7d9f8", "uid": str(uuid.uuid4())},
                "serviceaccount": {"name": "reporter", "uid": str(uuid.uuid4())},
            },
            "sub": SERVICE_ACCOUNT,
        }
        return self.sign(_apply(claims, overrides), K8S)

    def github_token(self, ref: str = "refs/heads/main", **overrides: Any) -> str:
        """A GitHub Actions OIDC token requested with audience = our issuer."""
        now = int(self.clock())
        claims: dict[str, Any] = {
            "jti": str(uuid.uuid4()),
            "sub": f"repo:octo-org/app:ref:{ref}",
            "aud": self.issuer,
            "ref": ref,
            "sha": "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
            "repository": "octo-org/app",
            "repository_owner": "octo-org",
            "run_id": "1234567890",
            "workflow": "deploy",
            "event_name": "push",
            "ref_type": "branch",
            "iss": GITHUB,
            "nbf": now - 5,
            "exp": now + 300,
            "iat": now,
        }
        return self.sign(_apply(claims, overrides), GITHUB, headers={"typ": "JWT", "x5t": "x"})

    def id_jag(self, client_id: str = "agent", **overrides: Any) -> str:
        """An ID-JAG as an enterprise IdP issues it for client ``client_id``."""
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": IDP,
            "sub": "00u1alice",
            "aud": self.issuer,
            "client_id": client_id,
            "resource": self.resource,
            "email": "alice@example.com",
            "email_verified": True,
            "jti": str(uuid.uuid4()),
            "iat": now,
            "exp": now + 300,
        }
        return self.sign(_apply(claims, overrides), IDP, headers={"typ": "oauth-id-jag+jwt"})

    def post(
        self,
        assertion: str,
        *,
        auth: tuple[str, str] | None = None,
        **extra: str,
    ) -> httpx2.Response:
        form = {"grant_type": JWT_BEARER, "assertion": assertion, **extra}
        return httpx2.post(self.token_url, data=form, auth=auth, timeout=10)


def _apply(claims: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("jwt-bearer")
    init_ring(directory / "keys")
    port, mcp_port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{port}"
    resource = f"http://127.0.0.1:{mcp_port}/mcp"
    keys = {K8S: new_key(), GITHUB: new_key(), IDP: new_key(), DOWN: new_key()}
    clients = directory / "clients.json"
    _, agent_secret = add_client(clients, "agent", tools=["add", "whoami"], audiences=[resource])
    _, narrow_secret = add_client(clients, "narrow", tools=["add"], audiences=[resource])
    # The cluster's keys as `kubectl get --raw /openid/v1/jwks` prints them; the IdP's too.
    (directory / "cluster-jwks.json").write_text(json.dumps(public_jwks(keys[K8S])))
    (directory / "idp-jwks.json").write_text(json.dumps(public_jwks(keys[IDP])))
    github_jwks = JwksServer(public_jwks(keys[GITHUB]))
    down_jwks = JwksServer(public_jwks(keys[DOWN]))
    down_jwks.mode = "500"
    policy = {
        "version": 1,
        "rules": {
            "reporter": {
                "match": {"source": f"issuer:{K8S}", "sub": SERVICE_ACCOUNT},
                "grant": {"tools": ["add", "whoami"], "audiences": [resource], "max_ttl": 600},
            },
            "deploy-from-main": {
                "match": {
                    "source": f"issuer:{GITHUB}",
                    "claims": {"repository": "octo-org/app", "ref": "refs/heads/main"},
                },
                "grant": {"tools": ["add"], "audiences": [resource]},
            },
            "example-people": {
                "match": {"source": f"issuer:{IDP}", "email_domain": "example.com"},
                "grant": {"tools": ["add", "whoami"], "audiences": [resource]},
            },
            "down": {
                "match": {"source": f"issuer:{DOWN}"},
                "grant": {"tools": ["add"], "audiences": [resource]},
            },
        },
    }
    (directory / "policy.json").write_text(json.dumps(policy))
    clock = FakeClock(time.time())
    with github_jwks.running() as github_url, down_jwks.running() as down_url:
        trusted = {
            "version": 1,
            "issuers": {
                K8S: {"jwks_file": "cluster-jwks.json"},
                GITHUB: {"jwks_uri": github_url, "max_assertion_lifetime": 600},
                IDP: {
                    "jwks_file": "idp-jwks.json",
                    "max_assertion_lifetime": 300,
                    "assertions": ["id-jag"],
                },
                DOWN: {"jwks_uri": down_url},
            },
        }
        (directory / "trusted-issuers.json").write_text(json.dumps(trusted))
        app = create_app(
            issuer_url=issuer,
            keys_dir=directory / "keys",
            clients_file=clients,
            store=directory / "state.db",
            clock=clock,
            allow_loopback_http_jwks=True,
        )
        with serve_app(app, port=port):  # first: see serve_protected
            server = protected_server("math", issuer=issuer, resource=resource)

            @server.tool()
            def add(a: float, b: float) -> float:
                return a + b

            @server.tool()
            def whoami() -> str:
                caller = current_caller()
                return json.dumps({"sub": caller.subject, "client_id": caller.client_id})

            with serve_protected(server, port=mcp_port):
                yield World(issuer, resource, clock, keys, agent_secret, narrow_secret, directory)


@pytest.fixture(autouse=True)
def now(world: World) -> None:
    # The MCP server checks our tokens against the real clock: issue them at real time.
    world.clock.now = time.time()


def refused(answer: httpx2.Response, error: str = "invalid_grant", status: int = 400) -> str:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error"] == error, body
    return str(body["error_description"])


def token_of(answer: httpx2.Response) -> str:
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


async def call_tool(url: str, token: str, tool: str, arguments: dict[str, Any]) -> Any:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=10)
    async with Client(
        streamable_http_client(url, http_client=http), read_timeout_seconds=10
    ) as client:
        result = await client.call_tool(tool, arguments)
        assert not result.is_error, result
        return result.structured_content["result"]  # type: ignore[index]


# --- Kubernetes: a service account's projected token --------------------------------------


def test_a_kubernetes_service_account_token_gets_a_token_that_calls_add(world: World) -> None:
    token = token_of(world.post(world.k8s_token()))
    assert run(lambda: call_tool(world.resource, token, "add", {"a": 2, "b": 3})) == 5


def test_the_token_subject_names_the_issuer_and_the_service_account(world: World) -> None:
    token = token_of(world.post(world.k8s_token()))
    seen = json.loads(run(lambda: call_tool(world.resource, token, "whoami", {})))
    expected = f"issuer:{K8S}#{SERVICE_ACCOUNT}"
    assert seen == {"sub": expected, "client_id": expected}
    claims = claims_of(token)
    assert claims["scope"] == "tool:add tool:whoami"
    assert claims["aud"] == world.resource


def test_another_service_account_of_the_cluster_is_refused_by_the_policy(world: World) -> None:
    answer = world.post(world.k8s_token(sub="system:serviceaccount:tools:intruder"))
    assert refused(answer) == "no policy rule grants anything to this identity"


def test_a_client_authenticating_with_the_grant_gets_only_what_both_allow(world: World) -> None:
    answer = world.post(world.k8s_token(), auth=("narrow", world.narrow_secret))
    claims = claims_of(token_of(answer))
    assert claims["scope"] == "tool:add"
    assert claims["client_id"] == "narrow"


def test_a_wrong_client_secret_with_the_grant_is_invalid_client(world: World) -> None:
    answer = world.post(world.k8s_token(), auth=("narrow", "wrong"))
    refused(answer, "invalid_client", 401)


# --- GitHub Actions: a job's OIDC token ----------------------------------------------------


def test_a_github_actions_token_from_main_gets_a_token_that_calls_add(world: World) -> None:
    answer = world.post(world.github_token(), resource=world.resource, scope="tool:add")
    token = token_of(answer)
    assert claims_of(token)["sub"] == f"issuer:{GITHUB}#repo:octo-org/app:ref:refs/heads/main"
    assert run(lambda: call_tool(world.resource, token, "add", {"a": 40, "b": 2})) == 42


def test_a_github_actions_token_from_another_branch_is_refused_by_the_policy(
    world: World,
) -> None:
    answer = world.post(world.github_token(ref="refs/heads/feature"))
    assert refused(answer) == "no policy rule grants anything to this identity"


def test_a_github_actions_token_for_the_default_owner_audience_is_refused(world: World) -> None:
    answer = world.post(world.github_token(aud="https://github.com/octo-org"))
    assert "aud must be" in refused(answer)


# --- refusals of the assertion ---------------------------------------------------------------


def test_a_replayed_assertion_is_refused_by_its_jti(world: World) -> None:
    assertion = world.k8s_token()
    token_of(world.post(assertion))
    assert "used before" in refused(world.post(assertion))


def test_an_expired_assertion_is_refused(world: World) -> None:
    now = int(world.clock())
    assert "expired" in refused(world.post(world.k8s_token(iat=now - 4000, exp=now - 60)))


def test_an_assertion_living_longer_than_its_issuer_allows_is_refused(world: World) -> None:
    answer = world.post(world.github_token(exp=int(world.clock()) + 3600))
    assert "more than 600 s" in refused(answer)


def test_an_assertion_without_jti_is_refused(world: World) -> None:
    assert "no jti" in refused(world.post(world.k8s_token(jti=None)))


def test_an_unsigned_alg_none_assertion_is_refused(world: World) -> None:
    now = int(world.clock())
    body = {"iss": K8S, "sub": SERVICE_ACCOUNT, "aud": world.issuer, "exp": now + 60, "jti": "n"}
    assertion = f"{segment({'alg': 'none'})}.{segment(body)}.{b64url(b'sig')}"
    assert "'none' is not accepted" in refused(world.post(assertion))


def test_an_hs256_assertion_keyed_with_the_issuers_public_key_is_refused(world: World) -> None:
    now = int(world.clock())
    body = {"iss": K8S, "sub": SERVICE_ACCOUNT, "aud": world.issuer, "exp": now + 60, "jti": "h"}
    public_pem = (
        world.keys[K8S]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assertion = hs256(public_pem, {"alg": "HS256", "kid": kid(world.keys[K8S])}, body)
    assert "'HS256' is not accepted" in refused(world.post(assertion))


def test_an_assertion_signed_by_an_unknown_key_is_refused(world: World) -> None:
    intruder = new_key()
    now = int(world.clock())
    claims = {
        "iss": K8S,
        "sub": SERVICE_ACCOUNT,
        "aud": [world.issuer],
        "exp": now + 60,
        "jti": str(uuid.uuid4()),
    }
    same_kid = world.sign(claims, K8S, key=intruder)
    assert "signature does not verify" in refused(world.post(same_kid))
    own_kid = jwt.encode(claims, pem(intruder), algorithm="RS256", headers={"kid": kid(intruder)})
    assert "not one registered" in refused(world.post(own_kid))


def test_an_assertion_for_another_audience_is_refused(world: World) -> None:
    answer = world.post(world.k8s_token(aud=["https://vault.example.com"]))
    assert "aud must be" in refused(answer)


def test_an_assertion_from_an_untrusted_issuer_is_refused(world: World) -> None:
    intruder = new_key()
    now = int(world.clock())
    claims = {
        "iss": "https://evil.example",
        "sub": SERVICE_ACCOUNT,
        "aud": world.issuer,
        "exp": now + 60,
        "jti": str(uuid.uuid4()),
    }
    assertion = jwt.encode(claims, pem(intruder), algorithm="RS256")
    assert "not a trusted issuer" in refused(world.post(assertion))


def test_an_assertion_whose_jku_header_points_elsewhere_is_refused(world: World) -> None:
    intruder = new_key()
    now = int(world.clock())
    claims = {
        "iss": K8S,
        "sub": SERVICE_ACCOUNT,
        "aud": world.issuer,
        "exp": now + 60,
        "jti": str(uuid.uuid4()),
    }
    jku = jwt.encode(
        claims,
        pem(intruder),
        algorithm="RS256",
        headers={"kid": kid(intruder), "jku": "https://evil.example/jwks"},
    )
    assert "names a key (jku)" in refused(world.post(jku))
    jwk = jwt.encode(
        claims,
        pem(intruder),
        algorithm="RS256",
        headers={"jwk": rsa_public_jwk_members(intruder.public_key())},
    )
    assert "names a key (jwk)" in refused(world.post(jwk))


def test_an_access_token_typed_assertion_is_refused(world: World) -> None:
    now = int(world.clock())
    claims = {
        "iss": K8S,
        "sub": SERVICE_ACCOUNT,
        "aud": world.issuer,
        "exp": now + 60,
        "jti": str(uuid.uuid4()),
    }
    assertion = world.sign(claims, K8S, headers={"typ": "at+jwt"})
    assert "typ" in refused(world.post(assertion))


def test_an_issuer_whose_keys_cannot_be_fetched_gets_503_with_retry_after(world: World) -> None:
    now = int(world.clock())
    claims = {
        "iss": DOWN,
        "sub": "svc",
        "aud": world.issuer,
        "exp": now + 60,
        "jti": str(uuid.uuid4()),
    }
    answer = world.post(world.sign(claims, DOWN))
    refused(answer, "temporarily_unavailable", 503)
    assert int(answer.headers["retry-after"]) >= 1


# --- SEP-990 identity assertions (ID-JAG) ------------------------------------------------------


def test_sdk_identity_assertion_provider_gets_a_token_and_calls_add(world: World) -> None:
    seen: list[tuple[str, str]] = []

    async def fetch_id_jag(audience: str, resource: str) -> str:
        seen.append((audience, resource))
        return world.id_jag(aud=audience, resource=resource)

    storage = MemoryStorage()
    provider = IdentityAssertionOAuthProvider(
        server_url=world.resource,
        storage=storage,
        client_id="agent",
        client_secret=world.agent_secret,
        issuer=world.issuer,
        assertion_provider=fetch_id_jag,
    )

    async def go() -> Any:
        http = httpx2.AsyncClient(auth=provider, timeout=10)
        async with Client(
            streamable_http_client(world.resource, http_client=http), read_timeout_seconds=10
        ) as client:
            added = await client.call_tool("add", {"a": 20, "b": 22})
            who = await client.call_tool("whoami", {})
            return added.structured_content, who.structured_content

    added, who = run(go)
    assert added == {"result": 42}
    assert json.loads(who["result"]) == {"sub": f"issuer:{IDP}#00u1alice", "client_id": "agent"}
    assert seen == [(world.issuer, world.resource)]


def test_an_id_jag_scope_claim_narrows_the_token(world: World) -> None:
    answer = world.post(
        world.id_jag(scope="tool:add"), client_id="agent", client_secret=world.agent_secret
    )
    assert claims_of(token_of(answer))["scope"] == "tool:add"


def test_an_id_jag_issued_to_another_client_is_refused(world: World) -> None:
    answer = world.post(
        world.id_jag(client_id="narrow"), client_id="agent", client_secret=world.agent_secret
    )
    assert "another client" in refused(answer)


def test_an_id_jag_without_client_authentication_is_invalid_client(world: World) -> None:
    assert "client authentication" in refused(world.post(world.id_jag()), "invalid_client", 401)


def test_an_id_jag_for_the_token_endpoint_audience_is_refused(world: World) -> None:
    answer = world.post(
        world.id_jag(aud=world.token_url), client_id="agent", client_secret=world.agent_secret
    )
    assert "aud must be" in refused(answer)


def test_an_id_jag_resource_claim_binds_the_audience(world: World) -> None:
    answer = world.post(
        world.id_jag(),
        client_id="agent",
        client_secret=world.agent_secret,
        resource="http://127.0.0.1:1/other",
    )
    assert "assertion's resource" in refused(answer, "invalid_target")


def test_an_id_jag_for_an_unverified_email_matches_no_rule(world: World) -> None:
    answer = world.post(
        world.id_jag(email_verified=False), client_id="agent", client_secret=world.agent_secret
    )
    assert refused(answer) == "no policy rule grants anything to this identity"


# --- metadata and configuration ------------------------------------------------------------


def test_metadata_lists_the_jwt_bearer_grant(world: World) -> None:
    doc = httpx2.get(f"{world.issuer}/.well-known/oauth-authorization-server", timeout=10).json()
    assert JWT_BEARER in doc["grant_types_supported"]


def test_a_trusted_issuer_over_plain_http_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "trusted-issuers.json"
    doc = {"version": 1, "issuers": {"http://k8s.internal": {"jwks_uri": "https://k/jwks"}}}
    path.write_text(json.dumps(doc))
    with pytest.raises(
        TrustedIssuersError, match=re.escape("'http://k8s.internal': the issuer must be")
    ):
        load_trusted_issuers(path)


def test_a_trusted_issuer_allowing_hs256_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "trusted-issuers.json"
    entry = {"jwks_uri": "https://k.example/jwks", "algorithms": ["HS256"]}
    path.write_text(json.dumps({"version": 1, "issuers": {K8S: entry}}))
    with pytest.raises(TrustedIssuersError, match="algorithms must be"):
        load_trusted_issuers(path)


def test_a_private_key_jwt_client_authenticates_for_the_grant(world: World) -> None:
    key = new_key()
    add_client(
        world.directory / "clients.json",
        "keyed",
        tools=["add"],
        audiences=[world.resource],
        jwks=public_jwks(key),
    )
    now = int(world.clock())
    client_assertion = jwt.encode(
        {
            "iss": "keyed",
            "sub": "keyed",
            "aud": world.issuer,
            "exp": now + 60,
            "jti": str(uuid.uuid4()),
        },
        pem(key),
        algorithm="RS256",
    )
    form = {
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": client_assertion,
    }
    deadline = time.monotonic() + 10
    while True:  # until the issuer has read the clients file again (reload interval)
        answer = world.post(world.k8s_token(), **form)
        if answer.status_code != 401 or time.monotonic() > deadline:
            break
    claims = claims_of(token_of(answer))
    assert claims["client_id"] == "keyed" and claims["scope"] == "tool:add"


def test_an_issuer_removed_from_the_trusted_issuers_file_is_refused_without_a_restart(
    tmp_path: Path,
) -> None:
    init_ring(tmp_path / "keys")
    cluster = new_key()
    add_client(
        tmp_path / "clients.json", "unused", tools=["add"], audiences=["https://a.example/mcp"]
    )
    (tmp_path / "cluster-jwks.json").write_text(json.dumps(public_jwks(cluster)))
    trusted = tmp_path / "trusted-issuers.json"
    trusted.write_text(
        json.dumps({"version": 1, "issuers": {K8S: {"jwks_file": "cluster-jwks.json"}}})
    )
    rule = {
        "match": {"source": f"issuer:{K8S}"},
        "grant": {"tools": ["add"], "audiences": ["https://a.example/mcp"]},
    }
    (tmp_path / "policy.json").write_text(json.dumps({"version": 1, "rules": {"all": rule}}))
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    app = create_app(
        issuer_url=issuer,
        keys_dir=tmp_path / "keys",
        clients_file=tmp_path / "clients.json",
        store=tmp_path / "state.db",
        reload_interval=0,
    )

    def exchange() -> httpx2.Response:
        now = int(time.time())
        claims = {
            "iss": K8S,
            "sub": "system:serviceaccount:a:b",
            "aud": issuer,
            "exp": now + 60,
            "jti": str(uuid.uuid4()),
        }
        assertion = jwt.encode(
            claims, pem(cluster), algorithm="RS256", headers={"kid": kid(cluster)}
        )
        form = {"grant_type": JWT_BEARER, "assertion": assertion}
        return httpx2.post(f"{issuer}/token", data=form, timeout=10)

    with serve_app(app, port=port):
        assert exchange().status_code == 200
        trusted.write_text(json.dumps({"version": 1, "issuers": {}}))
        assert "not a trusted issuer" in refused(exchange())


def test_trusted_issuers_without_a_policy_file_fail_at_start_saying_why(tmp_path: Path) -> None:
    init_ring(tmp_path / "keys")
    add_client(tmp_path / "clients.json", "c", tools=["add"], audiences=["https://a.example/mcp"])
    doc = {"version": 1, "issuers": {K8S: {"jwks_uri": "https://k.example/jwks"}}}
    (tmp_path / "trusted-issuers.json").write_text(json.dumps(doc))
    with pytest.raises(PolicyError, match=r"trusted-issuers\.json names trusted issuers") as raised:
        create_app(
            issuer_url="http://127.0.0.1:1",
            keys_dir=tmp_path / "keys",
            clients_file=tmp_path / "clients.json",
        )
    assert "no policy file at" in raised.value.message
