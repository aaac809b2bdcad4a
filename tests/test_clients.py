"""The clients file: secrets shown once and stored as salted hashes, atomic edits, watching."""

from __future__ import annotations

import json
import stat
import threading
from pathlib import Path

import pytest

from jwtmcp.cli import main
from jwtmcp.clients import (
    ClientsWatcher,
    add_client,
    ensure_clients,
    list_clients,
    load_clients,
    remove_client,
    rotate_secret,
)
from jwtmcp.errors import ClientsError
from tests.support import FakeClock, rewrite_keeping_stat

AUD = "http://127.0.0.1:9000/mcp"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "clients.json"


def test_add_returns_a_high_entropy_secret_and_stores_only_its_hash(path: Path) -> None:
    client, secret = add_client(path, "ci-bot", tools=["add", "read_*"], audiences=[AUD])
    assert len(secret) >= 43  # 256 bits, URL-safe base64
    raw = path.read_text()
    assert secret not in raw
    entry = json.loads(raw)["clients"]["ci-bot"]
    assert entry["secret_hash"].startswith("hmac-sha256$")
    assert entry["tools"] == ["add", "read_*"]
    assert client.allowed_scopes == ("tool:add", "tool:read_*")
    assert client.subject == "ci-bot"


def test_clients_file_is_written_with_mode_0600(path: Path) -> None:
    add_client(path, "a", tools=["add"], audiences=[AUD])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_two_secrets_never_repeat_and_hashes_are_salted(path: Path) -> None:
    _, s1 = add_client(path, "a", tools=["add"], audiences=[AUD])
    _, s2 = add_client(path, "b", tools=["add"], audiences=[AUD])
    assert s1 != s2
    hashes = [c["secret_hash"] for c in json.loads(path.read_text())["clients"].values()]
    assert hashes[0].split("$")[1] != hashes[1].split("$")[1]


def test_authenticate_accepts_the_secret_and_refuses_wrong_or_unknown(path: Path) -> None:
    _, secret = add_client(path, "a", tools=["add"], audiences=[AUD])
    table = load_clients(path)
    found = table.authenticate("a", secret)
    assert found is not None and found.client_id == "a"
    assert table.authenticate("a", secret + "x") is None
    assert table.authenticate("a", "") is None
    assert table.authenticate("nobody", secret) is None


def test_duplicate_name_is_refused(path: Path) -> None:
    add_client(path, "a", tools=["add"], audiences=[AUD])
    with pytest.raises(ClientsError, match="already exists"):
        add_client(path, "a", tools=["add"], audiences=[AUD])


@pytest.mark.parametrize(
    ("name", "tools", "audiences", "max_ttl", "match"),
    [
        ("bad name", ["add"], [AUD], None, "invalid client name"),
        ("a:b", ["add"], [AUD], None, "invalid client name"),
        ("a", ["has space"], [AUD], None, "invalid tool name"),
        ("a", ["re*ad"], [AUD], None, "may only end"),
        ("a", ["add"], [], None, "at least one audience"),
        ("a", ["add"], ["not a url"], None, "invalid resource URL"),
        ("a", ["add"], ["ftp://x/mcp"], None, "invalid resource URL"),
        ("a", ["add"], ["http://x/mcp#frag"], None, "invalid resource URL"),
        ("a", ["add"], [AUD], 0, "max ttl"),
    ],
)
def test_invalid_values_are_refused_with_a_clear_error(
    path: Path,
    name: str,
    tools: list[str],
    audiences: list[str],
    max_ttl: int | None,
    match: str,
) -> None:
    with pytest.raises(ClientsError, match=match):
        add_client(path, name, tools=tools, audiences=audiences, max_ttl=max_ttl)
    assert not path.exists()


def test_remove_and_list(path: Path) -> None:
    add_client(path, "b", tools=["add"], audiences=[AUD])
    add_client(path, "a", tools=["*"], audiences=[AUD], max_ttl=60, subject="svc:a")
    assert [c.client_id for c in list_clients(path)] == ["a", "b"]
    a = list_clients(path)[0]
    assert (a.max_ttl, a.subject, a.tools) == (60, "svc:a", ("*",))
    remove_client(path, "b")
    assert [c.client_id for c in list_clients(path)] == ["a"]
    with pytest.raises(ClientsError, match="no client named 'b'"):
        remove_client(path, "b")


def test_rotate_secret_replaces_the_old_one(path: Path) -> None:
    _, old = add_client(path, "a", tools=["add"], audiences=[AUD])
    new = rotate_secret(path, "a")
    table = load_clients(path)
    assert table.authenticate("a", new) is not None
    assert table.authenticate("a", old) is None
    with pytest.raises(ClientsError, match="no client named"):
        rotate_secret(path, "zz")


def test_missing_file_says_how_to_create_one(path: Path) -> None:
    with pytest.raises(ClientsError, match="jwtmcp clients add"):
        load_clients(path)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"version": 2, "clients": {}}',
        '{"version": 1, "clients": []}',
        '{"version": 1, "clients": {"a": {"secret_hash": "x", "audiences": ["http://a/"]}}}',
        '{"version": 1, "clients": {"a": {"secret_hash": "hmac-sha256$AAAAAAAAAAA$AAAA",'
        ' "audiences": []}}}',
    ],
)
def test_corrupt_file_is_one_clear_error(path: Path, content: str) -> None:
    path.write_text(content)
    with pytest.raises(ClientsError, match=r"clients file .* is invalid"):
        load_clients(path)


def test_concurrent_adds_all_land(path: Path) -> None:
    errors: list[Exception] = []

    def add(i: int) -> None:
        try:
            add_client(path, f"c{i}", tools=["add"], audiences=[AUD])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list_clients(path)) == 8


def test_ensure_clients_creates_a_demo_client_once(path: Path) -> None:
    table, created = ensure_clients(
        path, demo_name="demo", demo_tools=["add"], demo_audiences=[AUD]
    )
    assert created is not None
    _client, secret = created
    assert table.authenticate("demo", secret) is not None
    again, created_again = ensure_clients(
        path, demo_name="demo", demo_tools=["add"], demo_audiences=[AUD]
    )
    assert created_again is None
    assert len(again) == 1


def test_watcher_sees_changes_after_its_interval_and_keeps_last_good(path: Path) -> None:
    add_client(path, "a", tools=["add"], audiences=[AUD])
    tick = FakeClock(0.0)
    watcher = ClientsWatcher(path, interval=0.25, monotonic=tick)
    first = watcher.current()
    add_client(path, "b", tools=["add"], audiences=[AUD])
    assert watcher.current() is first  # within the interval: no stat at all
    tick.advance(0.3)
    assert watcher.current().get("b") is not None
    good = watcher.current()
    path.write_text("{broken")
    tick.advance(0.3)
    assert watcher.current() is good
    assert watcher.last_error is not None and "invalid" in watcher.last_error
    path.unlink()
    tick.advance(0.3)
    assert watcher.current() is good
    assert watcher.last_error is not None and "missing" in watcher.last_error


def test_watcher_sees_an_in_place_rewrite_that_keeps_inode_size_and_mtime(path: Path) -> None:
    add_client(path, "a", tools=["add"], audiences=[AUD])
    tick = FakeClock(0.0)
    watcher = ClientsWatcher(path, interval=0.25, monotonic=tick)
    assert watcher.current().get("a") is not None
    rewrite_keeping_stat(path, '"a"', '"z"')  # the client is renamed "a" -> "z"
    tick.advance(1)
    assert watcher.current().get("z") is not None


@pytest.mark.parametrize("created_at", ["\u0661\u0662", "12", "abc", True, float("inf"), -1])
def test_created_at_in_the_clients_file_must_be_a_json_number(
    path: Path, created_at: object
) -> None:
    add_client(path, "a", tools=["add"], audiences=[AUD])
    doc = json.loads(path.read_text())
    doc["clients"]["a"]["created_at"] = created_at
    path.write_text(json.dumps(doc))
    expected = "client 'a': created_at must be a number of epoch seconds"
    with pytest.raises(ClientsError, match=expected):
        load_clients(path)


# --- the CLI commands -------------------------------------------------------------------


def test_cli_add_prints_the_secret_once_and_it_works(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["clients", "add", "bot", "--tools", "add,subtract", "--aud", AUD, "--clients", str(path)]
    )
    assert code == 0
    out = capsys.readouterr().out
    secret = out.strip().splitlines()[-1]
    assert load_clients(path).authenticate("bot", secret) is not None


def test_cli_list_shows_clients_without_secrets(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_client(path, "bot", tools=["add"], audiences=[AUD], max_ttl=120)
    assert main(["clients", "list", "--clients", str(path)]) == 0
    out = capsys.readouterr().out
    assert "bot" in out and "tool:add" in out and AUD in out and "120" in out
    assert "hmac" not in out


def test_cli_rotate_and_remove(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, old = add_client(path, "bot", tools=["add"], audiences=[AUD])
    assert main(["clients", "rotate-secret", "bot", "--clients", str(path)]) == 0
    new = capsys.readouterr().out.strip().splitlines()[-1]
    assert load_clients(path).authenticate("bot", new) is not None
    assert load_clients(path).authenticate("bot", old) is None
    assert main(["clients", "remove", "bot", "--clients", str(path)]) == 0
    assert list_clients(path) == ()


def test_cli_errors_are_one_line(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["clients", "remove", "ghost", "--clients", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jwtmcp: error: ") and err.count("\n") == 1
