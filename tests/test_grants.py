"""The back channel of sign-in: ``authorization_code`` and ``refresh_token`` at ``POST /token``.

A real issuer app on a loopback uvicorn server, a real SQLite store on a fake clock, a real
users file. The front channel (``/authorize``) is another module: codes are made here the
way it makes them, by :meth:`Store.put_code` with a record that follows the sign-in contract.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from jwtmcp.client_metadata import OAuthClient
from jwtmcp.clients import add_client
from jwtmcp.identity import UsersFileSource
from jwtmcp.issuer import create_app
from jwtmcp.keys import init_ring, load_ring
from jwtmcp.pkce import s256_challenge
from jwtmcp.registration import KEY_BYTES, StatelessRegistrar
from jwtmcp.resolver import ClientResolver
from jwtmcp.store import DEFAULT_REFRESH_IDLE_TTL, new_opaque_token
from jwtmcp.store.sqlite import SqliteStore
from jwtmcp.tokens import VerifiedClaims
from jwtmcp.users import UsersWatcher, add_user, remove_user
from jwtmcp.verifier import Verifier
from tests.support import FakeClock, issuer_process, serve_app

ISSUER = "https://issuer.example.com"
AUD = "http://127.0.0.1:9000/mcp"
OTHER_AUD = "https://files.example.com/mcp"
REDIRECT = "http://127.0.0.1:33418/callback"
VERIFIER = "v" * 20 + "-._~" + "0123456789abcdefghijklmnopqrstuvwxyz"
PASSWORD = "correct horse battery staple"
CODE_ONLY_CLIENT = "https://app.example.com/oauth/client.json"


@pytest.fixture(scope="module")
def ring_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ring for every test (RSA key generation is the slow part)."""
    directory = tmp_path_factory.mktemp("ring") / "keys"
    init_ring(directory)
    return directory


@dataclass
class World:
    """A running issuer with its store, users file and clients."""

    http: httpx2.Client
    store: SqliteStore
    store_path: Path
    clock: FakeClock
    users_file: Path
    jwks_file: Path
    public_id: str
    other_id: str
    machine_secret: str

    def code(
        self,
        client_id: str | None = None,
        *,
        scope: str = "tool:add tool:subtract",
        ttl: float = 60,
        **changes: Any,
    ) -> str:
        """A code as /authorize makes it after alice approved ``scope`` (sign-in contract)."""
        record: dict[str, Any] = {
            "client_id": client_id or self.public_id,
            "redirect_uri": REDIRECT,
            "code_challenge": s256_challenge(VERIFIER),
            "resource": AUD,
            "scope": scope,
            "subject": "alice",
            "source_id": "users",
            "auth_time": int(self.clock()),
            "claims": {"name": "Alice Example", "email": "alice@example.com"},
            "max_lifetime": None,
        }
        record.update(changes)
        code = new_opaque_token()
        self.store.put_code(code, record, ttl=ttl)
        return code

    def exchange(self, code: str, client_id: str | None = None, **form: Any) -> httpx2.Response:
        data: dict[str, Any] = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": VERIFIER,
            "client_id": client_id or self.public_id,
        }
        data.update(form)
        return self.http.post("/token", data={k: v for k, v in data.items() if v is not None})

    def refresh(self, token: str, client_id: str | None = None, **form: Any) -> httpx2.Response:
        data = {
            "grant_type": "refresh_token",
            "refresh_token": token,
            "client_id": client_id or self.public_id,
            **form,
        }
        return self.http.post("/token", data=data)

    def signed_in(self, **code_changes: Any) -> dict[str, Any]:
        """The answer of a successful code exchange."""
        answer = self.exchange(self.code(**code_changes))
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def verify(self, token: str, audience: str = AUD) -> VerifiedClaims:
        with Verifier(
            issuer=ISSUER, audience=audience, jwks_file=str(self.jwks_file), clock=self.clock
        ) as verifier:
            return verifier.verify(token)

    def client_credentials(self) -> httpx2.Response:
        return self.http.post(
            "/token",
            data={"grant_type": "client_credentials"},
            auth=("machine", self.machine_secret),
        )


def _refused(answer: httpx2.Response, error: str, status: int = 400) -> str:
    """Assert an RFC 6749 5.2 refusal with nothing issued; return its description."""
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["error"] == error, body
    assert "access_token" not in body and "refresh_token" not in body
    assert answer.headers["cache-control"] == "no-store"
    return str(body["error_description"])


@contextlib.contextmanager
def running_issuer(
    ring_dir: Path,
    tmp_path: Path,
    *,
    store_path: Path | None = None,
    **options: Any,
) -> Iterator[World]:
    """The issuer opens its store as ``jwtmcp serve`` does; the test writes codes into it
    through its own handle on the same file and the same clock, as /authorize would."""
    clock = FakeClock()
    store_path = store_path or tmp_path / "state.db"
    store = SqliteStore(tmp_path / "state.db", clock=clock)
    users_file = tmp_path / "users.json"
    add_user(
        users_file,
        "alice",
        password=PASSWORD,
        tools=["add", "subtract"],
        audiences=[AUD, OTHER_AUD],
        display_name="Alice Example",
        email="alice@example.com",
    )
    clients_file = tmp_path / "clients.json"
    _, machine_secret = add_client(clients_file, "machine", tools=["add"], audiences=[AUD])
    registrar = StatelessRegistrar(b"k" * KEY_BYTES, clock=clock)
    public_id = registrar.issue({"redirect_uris": [REDIRECT], "client_name": "Public"})
    other_id = registrar.issue({"redirect_uris": [REDIRECT], "client_name": "Other"})
    code_only = OAuthClient(
        client_id=CODE_ONLY_CLIENT,
        redirect_uris=(REDIRECT,),
        source="cimd",
        grant_types=("authorization_code",),
    )
    resolver = ClientResolver(registrar=registrar, clients={CODE_ONLY_CLIENT: code_only})
    source = UsersFileSource(UsersWatcher(users_file, interval=0))
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(load_ring(ring_dir).jwks()))
    app = create_app(
        issuer_url=ISSUER,
        keys_dir=ring_dir,
        clients_file=clients_file,
        clock=clock,
        store=store_path,
        client_resolver=resolver,
        identity_source=source,
        **{"rate_limit": 0, **options},
    )
    with serve_app(app) as url, httpx2.Client(base_url=url, timeout=10) as http:
        yield World(
            http=http,
            store=store,
            store_path=store_path,
            clock=clock,
            users_file=users_file,
            jwks_file=jwks_file,
            public_id=str(public_id["client_id"]),
            other_id=str(other_id["client_id"]),
            machine_secret=machine_secret,
        )
    store.close()


@pytest.fixture
def world(ring_dir: Path, tmp_path: Path) -> Iterator[World]:
    with running_issuer(ring_dir, tmp_path) as running:
        yield running


# --- authorization_code (OAuth 2.1 4.1.3, RFC 7636 4.6) ---------------------------------


def test_a_code_with_its_pkce_verifier_gives_an_rfc9068_token_for_the_user_and_client(
    world: World,
) -> None:
    answer = world.exchange(world.code())
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "tool:add tool:subtract"
    claims = world.verify(body["access_token"])
    assert claims.subject == "alice"
    assert claims.client_id == world.public_id
    assert claims.audience == (AUD,)
    assert claims.scopes == ("tool:add", "tool:subtract")
    assert claims.claims["name"] == "Alice Example"
    assert claims.claims["email"] == "alice@example.com"
    assert claims.expires_at - claims.claims["iat"] == 300


def test_a_client_registered_with_refresh_token_gets_a_refresh_token(world: World) -> None:
    body = world.signed_in()
    assert isinstance(body["refresh_token"], str) and len(body["refresh_token"]) >= 43


def test_a_client_registered_for_authorization_code_only_gets_no_refresh_token(
    world: World,
) -> None:
    answer = world.exchange(world.code(CODE_ONLY_CLIENT), CODE_ONLY_CLIENT)
    assert answer.status_code == 200, answer.text
    assert "refresh_token" not in answer.json()


def test_the_users_max_lifetime_caps_the_access_token(world: World) -> None:
    body = world.signed_in(max_lifetime=120)
    assert body["expires_in"] == 120
    claims = world.verify(body["access_token"])
    assert claims.expires_at - claims.claims["iat"] == 120


@pytest.mark.parametrize(
    "verifier",
    [
        pytest.param("w" * 64, id="wrong"),
        pytest.param(None, id="missing"),
        pytest.param("short", id="malformed"),
    ],
)
def test_a_code_without_its_pkce_verifier_is_invalid_grant(
    world: World, verifier: str | None
) -> None:
    answer = world.exchange(world.code(), code_verifier=verifier)
    assert "code_verifier" in _refused(answer, "invalid_grant")


def test_a_reused_code_is_refused_and_the_refresh_token_of_its_first_use_is_revoked(
    world: World,
) -> None:
    code = world.code()
    first = world.exchange(code)
    assert first.status_code == 200, first.text
    assert "used already" in _refused(world.exchange(code), "invalid_grant")
    _refused(world.refresh(first.json()["refresh_token"]), "invalid_grant")


@pytest.mark.parametrize("refresh", [True, False], ids=["with-refresh", "code-only"])
def test_a_code_reused_after_a_refused_exchange_says_it_is_used_up_and_nothing_was_issued(
    world: World, refresh: bool
) -> None:
    client_id = world.public_id if refresh else CODE_ONLY_CLIENT
    code = world.code(client_id)
    first = _refused(world.exchange(code, client_id, code_verifier="w" * 64), "invalid_grant")
    again = _refused(world.exchange(code, client_id), "invalid_grant")
    assert "used up" in first and "start the sign-in again" in first
    assert "no tokens were issued" in again and "start the sign-in again" in again
    assert "revoked" not in again


def test_a_code_reused_after_tokens_were_issued_says_they_are_revoked(world: World) -> None:
    code = world.code()
    assert world.exchange(code).status_code == 200
    first_reuse = _refused(world.exchange(code), "invalid_grant")
    second_reuse = _refused(world.exchange(code), "invalid_grant")
    assert "revoked" in first_reuse and "start the sign-in again" in first_reuse
    assert second_reuse == first_reuse


def test_a_refused_code_exchange_leaves_no_refresh_family(world: World) -> None:
    _refused(world.exchange(world.code(), code_verifier="w" * 64), "invalid_grant")
    assert world.store.list_families(subject="alice") == ()


def test_a_code_redeemed_by_another_client_is_invalid_grant(world: World) -> None:
    answer = world.exchange(world.code(), world.other_id)
    assert "another client" in _refused(answer, "invalid_grant")


def test_a_code_with_another_redirect_uri_is_invalid_grant(world: World) -> None:
    answer = world.exchange(world.code(), redirect_uri="http://127.0.0.1:33418/other")
    assert "redirect_uri" in _refused(answer, "invalid_grant")


def test_a_code_older_than_its_lifetime_is_invalid_grant(world: World) -> None:
    code = world.code(ttl=60)
    world.clock.advance(60)
    _refused(world.exchange(code), "invalid_grant")


def test_a_code_exchanged_for_another_resource_is_invalid_target(world: World) -> None:
    answer = world.exchange(world.code(), resource=OTHER_AUD)
    _refused(answer, "invalid_target")


def test_a_code_exchanged_with_its_own_resource_spelled_differently_works(world: World) -> None:
    answer = world.exchange(world.code(), resource=AUD + "/")
    assert answer.status_code == 200, answer.text


def test_an_unknown_code_is_invalid_grant(world: World) -> None:
    _refused(world.exchange(new_opaque_token()), "invalid_grant")


def test_an_unknown_client_id_is_invalid_client(world: World) -> None:
    _refused(world.exchange(world.code(), "nobody"), "invalid_client", 401)


def test_a_clients_file_client_without_its_secret_is_invalid_client(world: World) -> None:
    code = world.code("machine")
    _refused(world.exchange(code, "machine"), "invalid_client", 401)


def test_a_clients_file_client_with_its_secret_may_redeem_its_code(world: World) -> None:
    code = world.code("machine")
    answer = world.http.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": VERIFIER,
        },
        auth=("machine", world.machine_secret),
    )
    assert answer.status_code == 200, answer.text
    assert world.verify(answer.json()["access_token"]).client_id == "machine"


def test_a_code_exchange_without_redirect_uri_is_invalid_request(world: World) -> None:
    _refused(world.exchange(world.code(), redirect_uri=None), "invalid_request")


# --- refresh_token (OAuth 2.1 4.3, RFC 6749 6) --------------------------------------------


def test_a_refresh_rotates_the_refresh_token_and_gives_a_fresh_access_token(
    world: World,
) -> None:
    first = world.signed_in()
    world.clock.advance(400)  # the first access token has expired
    answer = world.refresh(first["refresh_token"])
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["refresh_token"] != first["refresh_token"]
    claims = world.verify(body["access_token"])
    assert (claims.subject, claims.client_id) == ("alice", world.public_id)
    assert claims.scopes == ("tool:add", "tool:subtract")
    assert world.refresh(body["refresh_token"]).status_code == 200


def test_a_reused_refresh_token_revokes_the_family_and_the_newest_token_fails_too(
    world: World,
) -> None:
    first = world.signed_in()["refresh_token"]
    newest = world.refresh(first).json()["refresh_token"]
    assert "used already" in _refused(world.refresh(first), "invalid_grant")
    _refused(world.refresh(newest), "invalid_grant")


def test_a_refresh_asking_for_a_wider_scope_is_invalid_scope_and_keeps_the_token(
    world: World,
) -> None:
    refresh_token = world.signed_in(scope="tool:add")["refresh_token"]
    _refused(world.refresh(refresh_token, scope="tool:add tool:subtract"), "invalid_scope")
    assert world.refresh(refresh_token).status_code == 200


def test_a_refresh_may_narrow_the_scope(world: World) -> None:
    refresh_token = world.signed_in()["refresh_token"]
    answer = world.refresh(refresh_token, scope="tool:subtract")
    assert answer.status_code == 200, answer.text
    assert world.verify(answer.json()["access_token"]).scopes == ("tool:subtract",)


def test_a_refresh_by_another_client_is_invalid_grant_and_revokes_the_family(
    world: World,
) -> None:
    refresh_token = world.signed_in()["refresh_token"]
    _refused(world.refresh(refresh_token, world.other_id), "invalid_grant")
    _refused(world.refresh(refresh_token), "invalid_grant")


def test_a_refresh_for_another_resource_is_invalid_target_and_keeps_the_token(
    world: World,
) -> None:
    refresh_token = world.signed_in()["refresh_token"]
    _refused(world.refresh(refresh_token, resource=OTHER_AUD), "invalid_target")
    assert world.refresh(refresh_token).status_code == 200


def test_a_user_who_lost_a_tool_gets_refreshed_tokens_without_it(world: World) -> None:
    refresh_token = world.signed_in()["refresh_token"]
    remove_user(world.users_file, "alice")
    add_user(world.users_file, "alice", password=PASSWORD, tools=["add"], audiences=[AUD])
    answer = world.refresh(refresh_token)
    assert answer.status_code == 200, answer.text
    assert world.verify(answer.json()["access_token"]).scopes == ("tool:add",)


def test_a_removed_user_cannot_refresh_and_the_family_is_revoked(world: World) -> None:
    refresh_token = world.signed_in()["refresh_token"]
    remove_user(world.users_file, "alice")
    _refused(world.refresh(refresh_token), "invalid_grant")
    assert world.store.list_families(subject="alice") == ()


def test_a_refresh_token_unused_past_the_idle_lifetime_is_invalid_grant(world: World) -> None:
    refresh_token = world.signed_in()["refresh_token"]
    world.clock.advance(DEFAULT_REFRESH_IDLE_TTL)
    assert "expired" in _refused(world.refresh(refresh_token), "invalid_grant")


def test_a_family_past_its_absolute_lifetime_is_invalid_grant_however_often_used(
    ring_dir: Path, tmp_path: Path
) -> None:
    with running_issuer(
        ring_dir, tmp_path, refresh_idle_ttl=1000, refresh_max_ttl=2500
    ) as world:
        refresh_token = world.signed_in()["refresh_token"]
        for _ in range(2):
            world.clock.advance(900)
            refresh_token = world.refresh(refresh_token).json()["refresh_token"]
        world.clock.advance(900)  # 2700 s after the sign-in, 900 s after the last use
        assert "expired" in _refused(world.refresh(refresh_token), "invalid_grant")


def test_code_and_refresh_grants_share_the_clients_rate_limit(
    ring_dir: Path, tmp_path: Path
) -> None:
    # A signed-in client looping on refresh_token (or on codes) is throttled per client like
    # client_credentials: 429 slow_down with Retry-After, other clients unaffected.
    still = FakeClock()  # the buckets' monotonic clock stands still: no refill in the test
    with running_issuer(
        ring_dir, tmp_path, rate_limit=0.01, rate_burst=3, rate_limit_clock=still
    ) as world:
        token = world.signed_in()["refresh_token"]  # 1 of 3
        for _ in range(2):  # 2 and 3 of 3
            answer = world.refresh(token)
            assert answer.status_code == 200, answer.text
            token = answer.json()["refresh_token"]
        answer = world.refresh(token)
        assert answer.status_code == 429, answer.text
        assert answer.json()["error"] == "slow_down"
        assert int(answer.headers["retry-after"]) >= 1
        assert world.exchange(world.code()).status_code == 429  # the code grant too
        other = world.exchange(world.code(world.other_id), world.other_id)
        assert other.status_code == 200, other.text  # another client has its own bucket
        assert world.refresh(token).status_code == 429  # the token was not spent


def test_an_unknown_refresh_token_is_invalid_grant(world: World) -> None:
    _refused(world.refresh(new_opaque_token()), "invalid_grant")


# --- the store is down -----------------------------------------------------------------


def test_an_unreachable_store_answers_503_with_retry_after_and_client_credentials_works(
    ring_dir: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's directory should be")
    with running_issuer(ring_dir, tmp_path, store_path=blocker / "state.db") as world:
        answer = world.refresh(new_opaque_token())
        _refused(answer, "temporarily_unavailable", 503)
        assert int(answer.headers["retry-after"]) >= 1
        assert world.client_credentials().status_code == 200


def test_a_locked_store_answers_503_with_retry_after_and_client_credentials_works(
    ring_dir: Path, tmp_path: Path
) -> None:
    with running_issuer(ring_dir, tmp_path, store_busy_timeout=0.2) as world:
        code = world.code()
        holder = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            answer = world.exchange(code)
            _refused(answer, "temporarily_unavailable", 503)
            assert answer.headers["retry-after"] == "1"
            assert world.client_credentials().status_code == 200
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert world.exchange(code).status_code == 200


# --- jwtmcp sessions --------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWTMCP_")}
    return subprocess.run(
        [sys.executable, "-m", "jwtmcp", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_sessions_list_shows_the_family_of_a_sign_in(world: World) -> None:
    world.signed_in()
    listed = _cli("sessions", "list", "--user", "alice", "--store", str(world.store_path))
    assert listed.returncode == 0, listed.stderr
    assert "alice" in listed.stdout
    assert world.public_id in listed.stdout
    assert "tool:add tool:subtract" in listed.stdout


def test_sessions_revoke_ends_the_users_refresh_tokens(world: World) -> None:
    refresh_token = world.signed_in()["refresh_token"]
    revoked = _cli("sessions", "revoke", "--user", "alice", "--store", str(world.store_path))
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked 1 session" in revoked.stdout
    _refused(world.refresh(refresh_token), "invalid_grant")


def test_sessions_revoke_without_a_filter_is_one_line_and_exit_1(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "state.db").close()
    revoked = _cli("sessions", "revoke", "--store", str(tmp_path / "state.db"))
    assert revoked.returncode == 1
    assert revoked.stderr.count("\n") == 1 and "--user" in revoked.stderr


def test_sessions_list_of_a_missing_store_is_one_line_and_exit_1(tmp_path: Path) -> None:
    listed = _cli("sessions", "list", "--store", str(tmp_path / "none.db"))
    assert listed.returncode == 1
    assert listed.stderr.count("\n") == 1 and "no state store" in listed.stderr


# --- a real `jwtmcp serve` ----------------------------------------------------------------


def test_jwtmcp_serve_redeems_a_code_and_rotates_its_refresh_token(tmp_path: Path) -> None:
    add_user(tmp_path / "users.json", "alice", password=PASSWORD, tools=["add"], audiences=[AUD])
    store_path = tmp_path / "sign-in.db"
    args = ["--store", str(store_path), "--refresh-idle", "600"]
    with issuer_process(tmp_path, args=args) as running:
        registrar = StatelessRegistrar.from_keys_dir(running.keys_dir)
        client_id = str(registrar.issue({"redirect_uris": [REDIRECT]})["client_id"])
        code = new_opaque_token()
        with SqliteStore(store_path) as store:
            store.put_code(
                code,
                {
                    "client_id": client_id,
                    "redirect_uri": REDIRECT,
                    "code_challenge": s256_challenge(VERIFIER),
                    "resource": AUD,
                    "scope": "tool:add",
                    "subject": "alice",
                    "source_id": "users",
                    "auth_time": 0,
                    "claims": {},
                    "max_lifetime": None,
                },
                ttl=60,
            )
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": VERIFIER,
            "client_id": client_id,
        }
        exchanged = httpx2.post(running.token_url, data=form, timeout=10)
        assert exchanged.status_code == 200, exchanged.text
        refreshed = httpx2.post(
            running.token_url,
            data={
                "grant_type": "refresh_token",
                "refresh_token": exchanged.json()["refresh_token"],
                "client_id": client_id,
            },
            timeout=10,
        )
        assert refreshed.status_code == 200, refreshed.text
        with SqliteStore(store_path) as store:
            (family,) = store.list_families(subject="alice")
        assert family.idle_ttl == 600 and family.generation == 1


def test_jwtmcp_serve_refuses_a_refresh_lifetime_of_zero(tmp_path: Path) -> None:
    refused = _cli("serve", "--refresh-idle", "0", "--keys", str(tmp_path / "keys"))
    assert refused.returncode == 2
    assert "--refresh-idle" in refused.stderr and refused.stderr.count("\n") == 1


def test_grant_log_lines_name_a_registered_client_by_a_short_stable_id_and_its_name(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jwtmcp")
    code = world.code()
    world.exchange(code)
    world.exchange(code)
    world.exchange(world.code(), code_verifier="w" * 64)
    refresh_token = world.signed_in()["refresh_token"]
    world.refresh(refresh_token)
    world.refresh(refresh_token)
    short = "dcr1:" + hashlib.sha256(world.public_id.encode()).hexdigest()[:16]
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name.startswith("jwtmcp")]
    lines = [line for line in lines if isinstance(line, dict) and "client_id" in line]
    assert {line["event"] for line in lines} >= {
        "token_issued",
        "code_reused",
        "token_refused",
        "refresh_token_reused",
    }
    assert all(line["client_id"] == short for line in lines), lines
    assert all(line["client_name"] == "Public" for line in lines), lines
    assert world.public_id not in caplog.text
