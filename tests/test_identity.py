"""Identity sources: the users file as a password source, and the Identity value."""

from __future__ import annotations

from pathlib import Path

import pytest

from jwtmcp.errors import ConfigError
from jwtmcp.identity import Identity, IdentitySource, PasswordSource, UsersFileSource
from jwtmcp.users import UsersWatcher, add_user, remove_user
from tests.support import FakeClock

AUD = "http://127.0.0.1:9000/mcp"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users.json"
    add_user(
        path,
        "alice",
        password=PASSWORD,
        tools=["add", "read_*"],
        audiences=[AUD],
        max_ttl=600,
        display_name="Alice Example",
        email="alice@example.com",
    )
    add_user(path, "bob", password=PASSWORD, tools=["*"], audiences=[AUD])
    return path


def test_users_file_source_is_a_password_source(users: Path) -> None:
    source = UsersFileSource(users)
    assert isinstance(source, PasswordSource) and isinstance(source, IdentitySource)
    assert source.source_id == "users"


def test_the_right_password_gives_the_users_identity(users: Path) -> None:
    identity = UsersFileSource(users).authenticate("alice", PASSWORD)
    assert identity == Identity(
        subject="alice",
        tools=("add", "read_*"),
        audiences=(AUD,),
        max_lifetime=600,
        claims={"name": "Alice Example", "email": "alice@example.com"},
        source_id="users",
    )
    assert identity.allowed_scopes == ("tool:add", "tool:read_*")


def test_a_user_without_name_or_email_gets_no_such_claims(users: Path) -> None:
    identity = UsersFileSource(users).authenticate("bob", PASSWORD)
    assert identity is not None and dict(identity.claims) == {}


@pytest.mark.parametrize(("name", "password"), [("alice", "wrong password!"), ("carol", PASSWORD)])
def test_a_wrong_password_and_an_unknown_user_give_nothing(
    users: Path, name: str, password: str
) -> None:
    assert UsersFileSource(users).authenticate(name, password) is None


def test_lookup_follows_the_file_for_refresh(users: Path) -> None:
    tick = FakeClock(0.0)
    source = UsersFileSource(UsersWatcher(users, interval=0.25, monotonic=tick))
    found = source.lookup("alice")
    assert found is not None and found.subject == "alice"
    remove_user(users, "alice")
    tick.advance(0.3)
    assert source.lookup("alice") is None
    assert source.authenticate("alice", PASSWORD) is None


@pytest.mark.parametrize("claim", ["sub", "aud", "scope", "client_id", "exp", "amr"])
def test_an_identity_cannot_carry_a_registered_or_reserved_claim(claim: str) -> None:
    with pytest.raises(ConfigError, match=claim):
        Identity(subject="alice", tools=(), audiences=(AUD,), claims={claim: "x"})


def test_an_identity_needs_a_subject() -> None:
    with pytest.raises(ConfigError):
        Identity(subject="", tools=(), audiences=(AUD,))


def test_an_identitys_claims_cannot_be_changed_afterwards() -> None:
    claims = {"name": "Alice"}
    identity = Identity(subject="alice", tools=(), audiences=(AUD,), claims=claims)
    claims["name"] = "Mallory"
    assert identity.claims["name"] == "Alice"
    with pytest.raises(TypeError):
        identity.claims["name"] = "Mallory"  # type: ignore[index]
