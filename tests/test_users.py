"""The users file: Argon2id password hashes, the clients file's validation, atomic edits,
watching, and the ``jwtmcp users`` commands."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher, Type

from jwtmcp.errors import UsersError
from jwtmcp.users import (
    MAX_PASSWORD_LENGTH,
    UsersWatcher,
    _dummy_hash,
    add_user,
    ensure_users,
    list_users,
    load_users,
    remove_user,
    set_password,
    users_file_beside,
)
from tests.support import FakeClock
from tests.test_cli import REPO, _env, cli

AUD = "http://127.0.0.1:9000/mcp"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "users.json"


def _add(path: Path, name: str = "alice", password: str = PASSWORD, **kwargs: object) -> None:
    add_user(path, name, password=password, tools=["add", "read_*"], audiences=[AUD], **kwargs)  # type: ignore[arg-type]


# --- passwords -----------------------------------------------------------------------------


def test_the_right_password_signs_in(path: Path) -> None:
    _add(path)
    user = load_users(path).authenticate("alice", PASSWORD)
    assert user is not None and user.name == "alice"
    assert user.allowed_scopes == ("tool:add", "tool:read_*")


def test_a_wrong_password_does_not_sign_in(path: Path) -> None:
    _add(path)
    assert load_users(path).authenticate("alice", PASSWORD + "!") is None


def test_an_unknown_user_does_the_same_argon2_work_as_a_wrong_password(path: Path) -> None:
    _add(path)
    table = load_users(path)
    _dummy_hash()
    before = _dummy_hash.cache_info().hits
    assert table.authenticate("mallory", PASSWORD) is None
    assert _dummy_hash.cache_info().hits == before + 1  # checked against the dummy hash


def test_an_overlong_password_is_refused_after_the_same_work(path: Path) -> None:
    _add(path)
    table = load_users(path)
    before = _dummy_hash.cache_info().hits
    assert table.authenticate("alice", "x" * (MAX_PASSWORD_LENGTH + 1)) is None
    assert _dummy_hash.cache_info().hits == before + 1


def test_only_an_argon2id_hash_is_stored_in_a_private_file(path: Path) -> None:
    _add(path)
    raw = path.read_text()
    assert PASSWORD not in raw
    stored = json.loads(raw)["users"]["alice"]["password_hash"]
    assert stored.startswith("$argon2id$")
    assert PasswordHasher().verify(stored, PASSWORD)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("password", "why"), [("short", "too short"), ("   " * 5, "empty"), ("x" * 1025, "too long")]
)
def test_weak_or_odd_passwords_are_refused(path: Path, password: str, why: str) -> None:
    with pytest.raises(UsersError, match=why):
        _add(path, password=password)
    assert not path.exists()


def test_set_password_replaces_the_old_one(path: Path) -> None:
    _add(path)
    set_password(path, "alice", "a brand new passphrase")
    table = load_users(path)
    assert table.authenticate("alice", PASSWORD) is None
    assert table.authenticate("alice", "a brand new passphrase") is not None


def test_set_password_of_an_unknown_user(path: Path) -> None:
    _add(path)
    with pytest.raises(UsersError, match="no user named 'bob'"):
        set_password(path, "bob", "a brand new passphrase")


# --- entries and validation ------------------------------------------------------------------


def test_add_keeps_tools_audiences_lifetime_and_claims(path: Path, clock: FakeClock) -> None:
    _add(path, max_ttl=600, display_name="Alice Example", email="alice@example.com", clock=clock)
    (user,) = list_users(path)
    assert (user.tools, user.audiences, user.max_ttl) == (("add", "read_*"), (AUD,), 600)
    assert (user.display_name, user.email, user.created_at) == (
        "Alice Example",
        "alice@example.com",
        clock(),
    )


def test_a_duplicate_user_is_refused(path: Path) -> None:
    _add(path)
    with pytest.raises(UsersError, match="already exists"):
        _add(path)


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"name": "-alice"}, "invalid user name"),
        ({"name": "al ice"}, "invalid user name"),
        ({"tools": ["a*b"]}, "invalid tool name"),
        ({"audiences": ["ftp://x/mcp"]}, "invalid resource URL"),
        ({"audiences": []}, "at least one audience"),
        ({"max_ttl": 0}, "max ttl"),
        ({"email": "not-an-address"}, "invalid email"),
        ({"display_name": "two\nlines"}, "invalid name"),
    ],
)
def test_invalid_entries_are_refused_with_the_clients_file_rules(
    path: Path, kwargs: dict[str, object], why: str
) -> None:
    values: dict[str, object] = {"tools": ["add"], "audiences": [AUD], **kwargs}
    name = str(values.pop("name", "alice"))
    with pytest.raises(UsersError, match=why):
        add_user(path, name, password=PASSWORD, **values)  # type: ignore[arg-type]


def test_remove_user(path: Path) -> None:
    _add(path)
    _add(path, "bob")
    remove_user(path, "alice")
    assert [u.name for u in list_users(path)] == ["bob"]
    with pytest.raises(UsersError, match="no user named 'alice'"):
        remove_user(path, "alice")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{broken", "not valid JSON"),
        (b'{"version": 2, "users": {}}', "unknown format"),
        (b'{"version": 1, "users": []}', "must be an object"),
        (
            b'{"version": 1, "users": {"a": {"password_hash": "plain", "audiences": ["'
            + AUD.encode()
            + b'"]}}}',
            "not an Argon2id hash",
        ),
    ],
)
def test_an_invalid_users_file_is_one_clear_error(path: Path, content: bytes, why: str) -> None:
    path.write_bytes(content)
    with pytest.raises(UsersError, match=why):
        load_users(path)


def test_an_argon2i_hash_is_refused(path: Path) -> None:
    _add(path)
    doc = json.loads(path.read_text())
    doc["users"]["alice"]["password_hash"] = PasswordHasher(type=Type.I).hash(PASSWORD)
    path.write_text(json.dumps(doc))
    with pytest.raises(UsersError, match="not an Argon2id hash"):
        load_users(path)


def test_a_missing_users_file_says_how_to_make_one(path: Path) -> None:
    with pytest.raises(UsersError, match="jwtmcp users add"):
        load_users(path)


def test_users_file_sits_beside_the_clients_file(tmp_path: Path) -> None:
    assert users_file_beside(tmp_path / "conf" / "clients.json") == tmp_path / "conf/users.json"


def test_ensure_users_creates_a_demo_user_once(path: Path) -> None:
    table, created = ensure_users(path, demo_name="demo", demo_tools=["*"], demo_audiences=[AUD])
    assert created is not None
    user, password = created
    assert user.name == "demo" and user.tools == ("*",)
    assert len(password) >= 24
    assert table.authenticate("demo", password) is not None
    again, created_again = ensure_users(
        path, demo_name="demo", demo_tools=["*"], demo_audiences=[AUD]
    )
    assert created_again is None and len(again) == 1


def test_watcher_sees_changes_after_its_interval_and_keeps_last_good(path: Path) -> None:
    _add(path)
    tick = FakeClock(0.0)
    watcher = UsersWatcher(path, interval=0.25, monotonic=tick)
    first = watcher.current()
    remove_user(path, "alice")
    assert watcher.current() is first
    tick.advance(0.3)
    assert watcher.current().get("alice") is None
    good = watcher.current()
    path.write_text("{broken")
    tick.advance(0.3)
    assert watcher.current() is good
    assert watcher.last_error is not None and "invalid" in watcher.last_error


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_add_prints_a_generated_password_once_and_it_works(path: Path) -> None:
    result = cli(
        "users", "add", "alice", "--tools", "add,subtract", "--aud", AUD, "--users", str(path)
    )
    assert result.code == 0, result.err
    password = result.out.strip().splitlines()[-1]
    assert len(password) >= 24
    assert load_users(path).authenticate("alice", password) is not None


def test_cli_add_reads_the_password_from_stdin(tmp_path: Path) -> None:
    # A real process: stdin is a pipe, the users file the default one beside clients.json.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jwtmcp",
            "users",
            "add",
            "bob",
            "--tools",
            "*",
            "--aud",
            AUD,
            "--password-stdin",
            "--clients",
            str(tmp_path / "clients.json"),
        ],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert PASSWORD not in proc.stdout
    assert load_users(tmp_path / "users.json").authenticate("bob", PASSWORD) is not None


def test_cli_short_stdin_password_is_one_line_error(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    result = cli(
        "users",
        "add",
        "alice",
        "--tools",
        "add",
        "--aud",
        AUD,
        "--users",
        str(path),
        "--password-stdin",
    )
    assert "too short" in result.one_line_error()


def test_cli_list_shows_users_without_hashes(path: Path) -> None:
    _add(path, display_name="Alice Example", email="alice@example.com")
    result = cli("users", "list", "--users", str(path))
    assert result.code == 0
    assert "alice" in result.out and "tool:read_*" in result.out and AUD in result.out
    assert "Alice Example <alice@example.com>" in result.out
    assert "argon2" not in result.out


def test_cli_set_password_and_remove(path: Path) -> None:
    _add(path)
    result = cli("users", "set-password", "alice", "--users", str(path))
    assert result.code == 0
    new = result.out.strip().splitlines()[-1]
    assert load_users(path).authenticate("alice", new) is not None
    assert cli("users", "remove", "alice", "--users", str(path)).code == 0
    assert (
        "no user named 'alice'"
        in cli("users", "remove", "alice", "--users", str(path)).one_line_error()
    )


def test_cli_set_changes_a_users_tools_audiences_and_lifetime_but_not_their_password(
    path: Path,
) -> None:
    _add(path, max_ttl=600, display_name="Alice Example")
    before = load_users(path).get("alice")
    assert before is not None
    other = "http://127.0.0.1:9001/mcp/"
    result = cli(
        "users", "set", "alice", "--tools", "add", "--aud", other, "--max-ttl", "120",
        "--users", str(path),
    )  # fmt: skip
    assert result.code == 0, result.err
    after = load_users(path).get("alice")
    assert after is not None
    assert after.allowed_scopes == ("tool:add",)
    assert after.audiences == ("http://127.0.0.1:9001/mcp",)
    assert after.max_ttl == 120
    assert after.password_hash == before.password_hash  # the password stays as it was
    assert (after.display_name, after.created_at) == (before.display_name, before.created_at)
    assert load_users(path).authenticate("alice", PASSWORD) is not None


def test_cli_set_changes_only_the_grants_it_names(path: Path) -> None:
    _add(path, max_ttl=600)
    assert cli("users", "set", "alice", "--tools", "add", "--users", str(path)).code == 0
    user = load_users(path).get("alice")
    assert user is not None
    assert (user.allowed_scopes, user.audiences, user.max_ttl) == (("tool:add",), (AUD,), 600)


def test_cli_set_without_a_change_or_for_an_unknown_user_is_one_line_error(path: Path) -> None:
    _add(path)
    nothing = cli("users", "set", "alice", "--users", str(path))
    assert "--tools" in nothing.one_line_error()
    unknown = cli("users", "set", "bob", "--tools", "add", "--users", str(path))
    assert "no user named 'bob'" in unknown.one_line_error()
    bad = cli("users", "set", "alice", "--aud", "ftp://x.example/mcp", "--users", str(path))
    assert "invalid" in bad.one_line_error()


def test_cli_users_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWTMCP_USERS", str(tmp_path / "people.json"))
    assert cli("users", "add", "alice", "--tools", "add", "--aud", AUD).code == 0
    assert [u.name for u in list_users(tmp_path / "people.json")] == ["alice"]


@pytest.mark.parametrize(
    ("path", "words"),
    [
        (["users"], ["add", "list", "remove", "set-password", "set", "example"]),
        (["users", "set"], ["NAME", "--tools", "--aud", "--max-ttl", "--users"]),
        (["users", "add"], ["--tools", "--aud", "--max-ttl", "--password-stdin", "--users"]),
        (["users", "set-password"], ["NAME", "--password-stdin", "--users"]),
    ],
)
def test_cli_users_help(path: list[str], words: list[str]) -> None:
    result = cli(*path, "--help")
    assert result.code == 0
    for word in words:
        assert word in result.out, word


def _talk_on_a_terminal(args: list[str], answers: list[bytes]) -> tuple[int, bytes]:
    """Run ``python -m jwtmcp ARGS`` on a real pseudo-terminal, answering each prompt."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal, as in a shell
        try:
            os.execve(sys.executable, [sys.executable, "-m", "jwtmcp", *args], _env())
        finally:
            os._exit(127)  # never run the rest of the test suite in the child
    seen, answered_up_to, deadline = b"", 0, time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            # Answer each prompt once, even when it arrives in several reads.
            if answers and seen[answered_up_to:].rstrip().endswith(b":"):
                os.write(fd, answers.pop(0) + b"\n")
                answered_up_to = len(seen)
    finally:
        os.close(fd)
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen


def test_cli_password_stdin_on_a_terminal_asks_twice_without_echo(path: Path) -> None:
    args = ["users", "add", "eve", "--tools", "add", "--aud", AUD, "--users", str(path)]
    code, seen = _talk_on_a_terminal([*args, "--password-stdin"], [PASSWORD.encode()] * 2)
    assert code == 0, seen
    assert b"password:" in seen and b"again:" in seen
    assert PASSWORD.encode() not in seen  # not echoed
    assert load_users(path).authenticate("eve", PASSWORD) is not None


def test_cli_password_stdin_on_a_terminal_refuses_two_different_passwords(path: Path) -> None:
    args = ["users", "add", "eve", "--tools", "add", "--aud", AUD, "--users", str(path)]
    code, seen = _talk_on_a_terminal(
        [*args, "--password-stdin"], [PASSWORD.encode(), b"something else entirely"]
    )
    assert code == 1 and b"the two passwords differ" in seen
    assert not path.exists()
