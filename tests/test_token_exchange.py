"""RFC 8693 token exchange at ``POST /token``: a real issuer app on loopback, a fake clock.

Server A (client ``server-a``) exchanges its caller's token for one for server B; server B
can do the same for server C, and C for D (the chain limit). Subject tokens are minted from
the issuer's own ring with the same fake clock the issuer uses.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from jwtmcp.clients import add_client, load_clients, rotate_secret
from jwtmcp.errors import ClientsError
from jwtmcp.issuer import create_app
from jwtmcp.keys import KeyRing, init_ring, load_ring, revoke_key, rotate_ring
from jwtmcp.revocations_file import revoke
from jwtmcp.token_exchange import ACCESS_TOKEN_TYPE, GRANT_TYPE, act_claim, intersect_scopes
from jwtmcp.tokens import Actor, SigningKey, VerifiedClaims, build_claims, mint, sign
from jwtmcp.users import add_user
from jwtmcp.verifier import Verifier
from tests.support import FakeClock, serve_app

ISSUER = "https://issuer.example.com"
A = "http://127.0.0.1:9101/mcp"
B = "http://127.0.0.1:9102/mcp"
C = "http://127.0.0.1:9103/mcp"
D = "http://127.0.0.1:9104/mcp"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def ring_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("exchange-ring") / "keys"
    init_ring(directory, clock=FakeClock())
    return directory


@pytest.fixture(scope="module")
def users_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Argon2id hashing is slow: the users are made once for the module.
    path = tmp_path_factory.mktemp("exchange-users") / "users.json"
    add_user(
        path, "alice", password=PASSWORD, tools=["search", "read_file", "whoami"],
        audiences=[A, B, C, D],
    )  # fmt: skip
    add_user(path, "bob", password=PASSWORD, tools=["search"], audiences=[A])
    return path


@dataclass
class World:
    http: httpx2.Client
    clock: FakeClock
    ring: KeyRing
    clients_file: Path
    secrets: dict[str, str]

    def subject(
        self,
        subject: str = "alice",
        *,
        audience: str = A,
        client_id: str = "https://app.example.com/client.json",
        tools: tuple[str, ...] = ("search",),
        lifetime: int = 300,
        issuer: str = ISSUER,
    ) -> str:
        """A caller's token for ``audience``, as the issuer would have minted it."""
        return mint(
            self.ring,
            issuer=issuer,
            subject=subject,
            audience=audience,
            client_id=client_id,
            tools=tools,
            lifetime=lifetime,
            clock=self.clock,
        )

    def exchange(self, client: str, subject_token: str | None, **form: str) -> httpx2.Response:
        data = {"grant_type": GRANT_TYPE, "subject_token_type": ACCESS_TOKEN_TYPE, **form}
        if subject_token is not None:
            data["subject_token"] = subject_token
        return self.http.post("/token", data=data, auth=(client, self.secrets[client]))

    def exchanged(self, client: str, subject_token: str, **form: str) -> dict[str, Any]:
        answer = self.exchange(client, subject_token, **form)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def verify(self, token: str, audience: str) -> VerifiedClaims:
        jwks = self.http.get("/.well-known/jwks.json").json()
        path = self.clients_file.parent / "jwks.json"
        path.write_text(json.dumps(jwks))
        with Verifier(
            issuer=ISSUER, audience=audience, jwks_file=str(path), clock=self.clock
        ) as verifier:
            return verifier.verify(token)


@pytest.fixture
def world(tmp_path: Path, ring_dir: Path, users_file: Path) -> Iterator[World]:
    clock = FakeClock()
    clients_file = tmp_path / "clients.json"
    secrets: dict[str, str] = {}

    def client(name: str, **options: Any) -> None:
        options.setdefault("tools", [])
        options.setdefault("audiences", [B])
        _, secrets[name] = add_client(clients_file, name, **options)

    client("server-a", resource=A, delegate={B: ["search", "read_*"]})
    client("server-b", resource=B, delegate={C: ["*"]})
    client("server-c", resource=C, delegate={D: ["*"]})
    client("deep-c", resource=C, delegate={D: ["*"]}, max_delegation_depth=3)
    client("plain", tools=["search"], audiences=[A])
    client("robot", tools=["search", "whoami"], audiences=[A, B])
    app = create_app(
        issuer_url=ISSUER,
        keys_dir=ring_dir,
        clients_file=clients_file,
        users_file=users_file,
        store=tmp_path / "state.db",
        clock=clock,
        rate_limit=0,
        reload_interval=0,  # a revocation written by a test is seen at the next request
    )
    with serve_app(app) as url, httpx2.Client(base_url=url, timeout=10) as http:
        yield World(http, clock, load_ring(ring_dir), clients_file, secrets)


def refused(answer: httpx2.Response, status: int, error: str) -> str:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error"] == error, body
    assert answer.headers["cache-control"] == "no-store"
    return str(body["error_description"])


# --- the exchange -----------------------------------------------------------------------


def test_the_answer_has_the_rfc8693_members(world: World) -> None:
    answer = world.exchanged("server-a", world.subject(), resource=B)
    assert set(answer) == {"access_token", "issued_token_type", "token_type", "expires_in", "scope"}
    assert answer["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] == 300


def test_the_new_token_is_for_the_resource_names_the_user_and_the_acting_server(
    world: World,
) -> None:
    answer = world.exchanged("server-a", world.subject(), resource=B)
    claims = world.verify(answer["access_token"], B)
    assert claims.audience == (B,)
    assert claims.subject == "alice"
    assert claims.client_id == "server-a"
    assert claims.claims["act"] == {"sub": "server-a"}
    assert claims.actor == Actor("server-a")


def test_audience_names_the_target_like_resource(world: World) -> None:
    answer = world.exchanged("server-a", world.subject(), audience=B)
    assert world.verify(answer["access_token"], B).audience == (B,)


def test_without_scope_the_token_gets_what_both_the_user_and_the_delegation_allow(
    world: World,
) -> None:
    # alice: search, read_file, whoami; server-a may delegate search and read_* to B.
    answer = world.exchanged("server-a", world.subject(), resource=B)
    assert answer["scope"] == "tool:search tool:read_file"


def test_a_requested_scope_inside_both_allowances_is_granted_as_asked(world: World) -> None:
    answer = world.exchanged("server-a", world.subject(), resource=B, scope="tool:read_file")
    assert answer["scope"] == "tool:read_file"


def test_the_lifetime_is_capped_by_the_subject_tokens_remaining_life(world: World) -> None:
    token = world.subject(lifetime=300)
    world.clock.advance(250)
    answer = world.exchanged("server-a", token, resource=B)
    assert answer["expires_in"] == 50
    claims = world.verify(answer["access_token"], B)
    assert claims.expires_at == world.verify(token, A).expires_at


def test_a_client_credentials_subject_is_narrowed_by_its_own_client_entry(world: World) -> None:
    # robot may have search and whoami; server-a delegates search and read_* to B.
    token = world.subject("robot", client_id="robot", tools=("search",))
    answer = world.exchanged("server-a", token, resource=B)
    assert answer["scope"] == "tool:search"
    assert world.verify(answer["access_token"], B).subject == "robot"


def test_the_grant_type_is_advertised_in_the_metadata(world: World) -> None:
    metadata = world.http.get("/.well-known/oauth-authorization-server").json()
    assert GRANT_TYPE in metadata["grant_types_supported"]


# --- chains -------------------------------------------------------------------------------


def test_a_second_exchange_nests_the_earlier_actor_inside_act(world: World) -> None:
    for_b = world.exchanged("server-a", world.subject(), resource=B)["access_token"]
    for_c = world.exchanged("server-b", for_b, resource=C)["access_token"]
    claims = world.verify(for_c, C)
    assert claims.subject == "alice"
    assert claims.claims["act"] == {"sub": "server-b", "act": {"sub": "server-a"}}
    assert claims.actor is not None
    assert claims.actor.chain == ("server-b", "server-a")


def test_a_chain_over_the_depth_limit_is_invalid_request(world: World) -> None:
    for_b = world.exchanged("server-a", world.subject(), resource=B)["access_token"]
    for_c = world.exchanged("server-b", for_b, resource=C)["access_token"]
    description = refused(world.exchange("server-c", for_c, resource=D), 400, "invalid_request")
    assert "limit of 2" in description


def test_a_client_with_a_higher_depth_limit_may_extend_the_chain(world: World) -> None:
    for_b = world.exchanged("server-a", world.subject(), resource=B)["access_token"]
    for_c = world.exchanged("server-b", for_b, resource=C)["access_token"]
    for_d = world.exchanged("deep-c", for_c, resource=D)["access_token"]
    actor = world.verify(for_d, D).actor
    assert actor is not None
    assert actor.chain == ("deep-c", "server-b", "server-a")


# --- refusals: the subject token ----------------------------------------------------------


def test_a_subject_token_for_another_audience_is_invalid_grant(world: World) -> None:
    token = world.subject(audience=B)  # for B, presented by server A
    description = refused(world.exchange("server-a", token, resource=B), 400, "invalid_grant")
    assert "wrong_audience" in description


def test_an_expired_subject_token_is_invalid_grant(world: World) -> None:
    token = world.subject(lifetime=60)
    world.clock.advance(61)
    description = refused(world.exchange("server-a", token, resource=B), 400, "invalid_grant")
    assert "token_expired" in description


def test_a_subject_token_from_another_issuer_is_invalid_grant(world: World) -> None:
    token = world.subject(issuer="https://elsewhere.example.com")
    description = refused(world.exchange("server-a", token, resource=B), 400, "invalid_grant")
    assert "wrong_issuer" in description


@pytest.mark.parametrize("kind", ["sub", "client_id", "jti"])
def test_a_revoked_subject_token_is_invalid_grant(world: World, kind: str) -> None:
    # Revocation must not be escaped by trading the revoked token for a fresh one (issued
    # after the revocation, so a sub or client_id entry would not cover it downstream).
    token = world.subject()
    claims = world.verify(token, A)
    value = {"sub": claims.subject, "client_id": claims.client_id, "jti": claims.jti}[kind]
    assert value is not None
    world.clock.advance(1)
    revoke(
        world.clients_file.parent / "revocations.json",
        kind,  # type: ignore[arg-type]
        value,
        horizon=world.ring.max_lifetime + world.ring.leeway,
        clock=world.clock,
    )
    description = refused(world.exchange("server-a", token, resource=B), 400, "invalid_grant")
    assert "token_revoked" in description
    # A token issued after a sub/client revocation is not covered and still exchanges.
    if kind != "jti":
        world.clock.advance(1)
        assert world.exchange("server-a", world.subject(), resource=B).status_code == 200


def test_a_subject_token_with_a_bad_signature_is_invalid_grant(world: World) -> None:
    claims = build_claims(
        issuer=ISSUER, subject="alice", audience=A, tools=["search"], now=world.clock()
    )
    forged_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = sign(claims, SigningKey(world.ring.active.kid, forged_key))
    description = refused(world.exchange("server-a", token, resource=B), 400, "invalid_grant")
    assert "bad_signature" in description


def test_a_subject_token_of_an_unknown_subject_is_invalid_grant(world: World) -> None:
    token = world.subject("mallory")
    refused(world.exchange("server-a", token, resource=B), 400, "invalid_grant")


# --- refusals: target and scope -----------------------------------------------------------


def test_a_resource_the_acting_server_may_not_delegate_to_is_invalid_target(
    world: World,
) -> None:
    description = refused(
        world.exchange("server-a", world.subject(), resource=C), 400, "invalid_target"
    )
    assert "delegate" in description


def test_a_resource_the_user_may_not_use_is_invalid_target(world: World) -> None:
    token = world.subject("bob")  # bob may use A only
    description = refused(world.exchange("server-a", token, resource=B), 400, "invalid_target")
    assert "subject may not use" in description


def test_two_resources_for_one_token_are_invalid_target(world: World) -> None:
    answer = world.exchange("server-a", world.subject(), resource=B, audience=C)
    refused(answer, 400, "invalid_target")


def test_a_scope_the_delegation_does_not_allow_is_invalid_scope(world: World) -> None:
    # alice may call whoami, but server-a may not delegate it to B.
    answer = world.exchange("server-a", world.subject(), resource=B, scope="tool:whoami")
    assert "tool:whoami" in refused(answer, 400, "invalid_scope")


def test_a_scope_wider_than_the_users_is_invalid_scope(world: World) -> None:
    # server-a may delegate read_* to B, but alice may not call read_env.
    answer = world.exchange(
        "server-a", world.subject(), resource=B, scope="tool:read_file tool:read_env"
    )
    description = refused(answer, 400, "invalid_scope")
    assert "tool:read_env" in description
    assert "tool:read_file" not in description


def test_a_wildcard_scope_wider_than_the_delegation_is_invalid_scope(world: World) -> None:
    answer = world.exchange("server-a", world.subject(), resource=B, scope="tool:*")
    refused(answer, 400, "invalid_scope")


# --- refusals: the request ----------------------------------------------------------------


@pytest.mark.parametrize(
    "token_type",
    ["urn:ietf:params:oauth:token-type:id_token", "urn:ietf:params:oauth:token-type:jwt"],
)
def test_an_unsupported_subject_token_type_is_invalid_request(
    world: World, token_type: str
) -> None:
    answer = world.exchange("server-a", world.subject(), resource=B, subject_token_type=token_type)
    assert "subject_token_type" in refused(answer, 400, "invalid_request")


def test_an_unsupported_requested_token_type_is_invalid_request(world: World) -> None:
    answer = world.exchange(
        "server-a",
        world.subject(),
        resource=B,
        requested_token_type="urn:ietf:params:oauth:token-type:refresh_token",
    )
    assert "requested_token_type" in refused(answer, 400, "invalid_request")


def test_a_missing_subject_token_is_invalid_request(world: World) -> None:
    answer = world.exchange("server-a", None, resource=B)
    assert "subject_token" in refused(answer, 400, "invalid_request")


def test_an_actor_token_is_invalid_request(world: World) -> None:
    answer = world.exchange(
        "server-a",
        world.subject(),
        resource=B,
        actor_token=world.subject(),
        actor_token_type=ACCESS_TOKEN_TYPE,
    )
    assert "actor_token" in refused(answer, 400, "invalid_request")


def test_a_missing_target_is_invalid_request(world: World) -> None:
    answer = world.exchange("server-a", world.subject())
    assert "resource" in refused(answer, 400, "invalid_request")


def test_a_repeated_subject_token_is_invalid_request(world: World) -> None:
    token = world.subject()
    answer = world.http.post(
        "/token",
        content=(
            f"grant_type={GRANT_TYPE}&subject_token_type={ACCESS_TOKEN_TYPE}"
            f"&subject_token={token}&subject_token={token}&resource={B}"
        ),
        headers={"content-type": "application/x-www-form-urlencoded"},
        auth=("server-a", world.secrets["server-a"]),
    )
    assert "more than once" in refused(answer, 400, "invalid_request")


def test_a_client_without_a_resource_of_its_own_is_unauthorized_client(world: World) -> None:
    answer = world.exchange("plain", world.subject(), resource=B)
    refused(answer, 400, "unauthorized_client")


def test_a_wrong_client_secret_is_invalid_client(world: World) -> None:
    world.secrets["server-a"] = "not-the-secret"
    refused(world.exchange("server-a", world.subject(), resource=B), 401, "invalid_client")


def test_an_exchange_never_logs_the_tokens(world: World, caplog: pytest.LogCaptureFixture) -> None:
    token = world.subject()
    with caplog.at_level("INFO", logger="jwtmcp.issuer"):
        issued = world.exchanged("server-a", token, resource=B)["access_token"]
        world.exchange("server-a", token, resource=C)
    assert caplog.records
    text = caplog.text
    assert token not in text
    assert issued not in text
    assert token.rsplit(".", 1)[1] not in text


# --- the pieces ---------------------------------------------------------------------------


def test_act_claim_nests_the_earlier_chain_least_recent_deepest() -> None:
    assert act_claim("c", Actor("b", Actor("a"))) == {
        "sub": "c",
        "act": {"sub": "b", "act": {"sub": "a"}},
    }


@pytest.mark.parametrize(
    ("left", "right", "both"),
    [
        (["tool:*"], ["tool:read_*"], ("tool:read_*",)),
        (["tool:read_*"], ["tool:read_file", "tool:add"], ("tool:read_file",)),
        (["tool:a_*"], ["tool:b_*"], ()),
        (["tool:add", "tool:sub"], ["tool:add"], ("tool:add",)),
    ],
)
def test_intersect_scopes_keeps_the_narrower_of_each_pair(
    left: list[str], right: list[str], both: tuple[str, ...]
) -> None:
    assert intersect_scopes(left, right) == both


@pytest.mark.parametrize(
    ("act", "chain"),
    [
        ({"sub": "a"}, ("a",)),
        ({"sub": "b", "act": {"sub": "a"}}, ("b", "a")),
        ({"sub": ""}, None),
        ({"sub": "b", "act": "a"}, None),
        ("a", None),
        (None, None),
    ],
)
def test_verified_claims_actor_reads_the_act_chain(act: Any, chain: tuple[str, ...] | None) -> None:
    claims: dict[str, Any] = {"iss": ISSUER, "sub": "alice", "aud": A, "exp": 2_000_000_000}
    if act is not None:
        claims["act"] = act
    actor = VerifiedClaims.from_claims(claims).actor
    assert (actor.chain if actor is not None else None) == chain


def test_delegation_members_survive_a_secret_rotation(tmp_path: Path) -> None:
    path = tmp_path / "clients.json"
    add_client(
        path, "srv", tools=[], audiences=[B], resource=A + "/", delegate={B: ["search"]},
        max_delegation_depth=3,
    )  # fmt: skip
    rotate_secret(path, "srv")
    client = load_clients(path).get("srv")
    assert client is not None
    assert (client.resource, client.delegate, client.max_delegation_depth) == (
        A,
        ((B, ("search",)),),
        3,
    )


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("resource", "not a url"),
        ("delegate", ["http://127.0.0.1:9102/mcp"]),
        ("delegate", {"http://127.0.0.1:9102/mcp": "search"}),
        ("delegate", {"http://127.0.0.1:9102/mcp": ["bad name"]}),
        ("max_delegation_depth", 0),
        ("max_delegation_depth", 6),
    ],
)
def test_a_bad_delegation_member_makes_the_clients_file_invalid(
    tmp_path: Path, member: str, value: Any
) -> None:
    path = tmp_path / "clients.json"
    add_client(path, "srv", tools=[], audiences=[B])
    document = json.loads(path.read_text())
    document["clients"]["srv"][member] = value
    path.write_text(json.dumps(document))
    with pytest.raises(ClientsError, match=member):
        load_clients(path)


# --- the ring as the key source -----------------------------------------------------------


def test_the_issuer_follows_its_ring_retired_keys_verify_revoked_ones_do_not(
    tmp_path: Path, ring_dir: Path, users_file: Path
) -> None:
    keys = tmp_path / "keys"
    shutil.copytree(ring_dir, keys)
    clock = FakeClock()
    _, secret = add_client(
        tmp_path / "clients.json", "server-a", tools=[], audiences=[B], resource=A,
        delegate={B: ["search"]},
    )  # fmt: skip
    app = create_app(
        issuer_url=ISSUER, keys_dir=keys, clients_file=tmp_path / "clients.json",
        users_file=users_file, store=tmp_path / "state.db", clock=clock, rate_limit=0,
        reload_interval=0,
    )  # fmt: skip
    old = load_ring(keys)
    token = mint(old, issuer=ISSUER, subject="alice", audience=A, tools=["search"], clock=clock)
    form = {
        "grant_type": GRANT_TYPE,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "subject_token": token,
        "resource": B,
    }
    with serve_app(app) as url, httpx2.Client(base_url=url, timeout=10) as http:

        def exchange() -> httpx2.Response:
            return http.post("/token", data=form, auth=("server-a", secret))

        rotate_ring(keys, clock=clock)  # the token's key is now retired, still published
        assert exchange().status_code == 200
        revoke_key(keys, old.active.kid, clock=clock)
        assert "unknown_kid" in refused(exchange(), 400, "invalid_grant")
