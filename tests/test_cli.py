"""The ``jwtmcp`` command line, run for real: ``python -m jwtmcp`` in a subprocess, or
``jwtmcp.cli.main(argv)`` in-process when a test needs the injected clock."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jwtmcp.cli import build_parser, main
from jwtmcp.keys import STATE_FILE, KeyRing, jwk_thumbprint, load_ring, rotate_ring
from tests.jwks_support import JwksServer
from tests.support import FakeClock, free_port, run_cli, serve_app

REPO = Path(__file__).resolve().parent.parent
ISS = "http://127.0.0.1:8000"
AUD = "http://127.0.0.1:9000/mcp"
OTHER_AUD = "http://127.0.0.1:9001/mcp"
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth"}


@dataclass
class Result:
    code: int
    out: str
    err: str

    def one_line_error(self, code: int = 1) -> str:
        """Assert a clean failure: the exit code, one stderr line, no traceback, no stdout."""
        assert self.code == code, (self.code, self.out, self.err)
        assert "Traceback" not in self.err
        assert self.err.startswith("jwtmcp"), self.err
        assert self.err.endswith("\n") and self.err.count("\n") == 1, self.err
        assert self.out == ""
        return self.err


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWTMCP_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run(*args: str, cwd: Path | None = None, stdin: str | None = None, **env: str) -> Result:
    """``python -m jwtmcp ARGS`` in a real process."""
    proc = subprocess.run(
        [sys.executable, "-m", "jwtmcp", *args],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=cwd,
        env=_env(**env),
        timeout=60,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def cli(*args: str, clock: FakeClock | None = None) -> Result:
    """``jwtmcp.cli.main(ARGS)`` in this process, output captured (fast; same code path)."""
    return Result(*run_cli(*args, clock=clock))


@pytest.fixture(autouse=True)
def _no_jwtmcp_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("JWTMCP_"):
            monkeypatch.delenv(name)


def call(capsys: pytest.CaptureFixture[str], *args: str, clock: FakeClock | None = None) -> Result:
    """``jwtmcp.cli.main(ARGS)`` in this process (for the injected clock)."""
    try:
        code = main(list(args), clock=clock) if clock else main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    return header, claims


@pytest.fixture
def keys(ring: KeyRing, ring_dir: Path) -> str:
    return str(ring_dir)


def _mint(keys: str, *extra: str, aud: str = AUD) -> str:
    result = run("mint", "--keys", keys, "--sub", "alice", "--tools", "add", "--aud", aud, *extra)
    assert result.code == 0, result.err
    return result.out.strip()


def _jwks_file(keys: str, path: Path) -> str:
    result = run("jwks", "--keys", keys)
    assert result.code == 0, result.err
    path.write_text(result.out)
    return str(path)


# --- help -----------------------------------------------------------------------------------

COMMANDS: list[tuple[list[str], list[str]]] = [
    ([], ["keys", "mint", "jwks", "verify", "clients", "serve", "JWTMCP_KEYS", "JWTMCP_ISSUER"]),
    (["keys"], ["init", "rotate", "list", "prune", "revoke"]),
    (["keys", "init"], ["--keys", "--bits", "--max-lifetime", "--leeway"]),
    (["keys", "rotate"], ["--keys", "--bits"]),
    (["keys", "list"], ["--keys", "--json", "retired"]),
    (["keys", "prune"], ["--keys", "max lifetime"]),
    (["keys", "revoke"], ["KID", "--keys"]),
    (
        ["mint"],
        ["--sub", "--tools", "--no-tools", "--scope", "--aud", "--ttl", "--claim", "--client-id",
         "--issuer"],
    ),
    (["jwks"], ["--keys"]),
    (["verify"], ["TOKEN", "--jwks", "--iss", "--aud"]),
    (["clients"], ["add", "list", "remove", "rotate-secret"]),
    (["clients", "add"], ["--tools", "--aud", "--max-ttl", "--subject", "--clients"]),
    (["clients", "list"], ["--clients"]),
    (["clients", "remove"], ["NAME", "--clients"]),
    (["clients", "rotate-secret"], ["NAME", "--clients"]),
    (["serve"], ["--host", "--port", "--issuer", "--keys", "--clients", "--workers"]),
]


@pytest.mark.parametrize(("path", "words"), COMMANDS, ids=lambda v: " ".join(v) or "jwtmcp")
def test_help_explains_every_flag_with_examples(
    capsys: pytest.CaptureFixture[str], path: list[str], words: list[str]
) -> None:
    result = call(capsys, *path, "--help")
    assert result.code == 0
    assert "usage: jwtmcp" in result.out
    assert "example" in result.out
    for word in words:
        assert word in result.out, word


# One spelling per flag: --issuer, --audience, --subject are documented; the claim names
# --iss, --aud, --sub are accepted everywhere too.
SPELLINGS = [
    (
        ["mint", "--tools", "add", "--sub", "a", "--aud", AUD, "--iss", ISS],
        ["mint", "--tools", "add", "--subject", "a", "--audience", AUD, "--issuer", ISS],
    ),
    (
        ["verify", "t", "--jwks", "j.json", "--iss", ISS, "--aud", AUD, "--aud", OTHER_AUD],
        ["verify", "t", "--jwks", "j.json", "--issuer", ISS, "--audience", AUD, "--aud", OTHER_AUD],
    ),
    (
        ["clients", "add", "bot", "--tools", "add", "--aud", AUD, "--sub", "s"],
        ["clients", "add", "bot", "--tools", "add", "--audience", AUD, "--subject", "s"],
    ),
    (["serve", "--iss", ISS], ["serve", "--issuer", ISS]),
]


@pytest.mark.parametrize(
    ("short", "long"), SPELLINGS, ids=["mint", "verify", "clients add", "serve"]
)
def test_claim_name_and_word_spellings_of_a_flag_mean_the_same(
    short: list[str], long: list[str]
) -> None:
    parser = build_parser()
    assert vars(parser.parse_args(short)) == vars(parser.parse_args(long))


@pytest.mark.parametrize(
    "path", [["mint"], ["verify"], ["clients", "add"], ["serve"], []], ids=" ".join
)
def test_help_documents_one_spelling_per_flag(
    capsys: pytest.CaptureFixture[str], path: list[str]
) -> None:
    out = call(capsys, *path, "--help").out
    assert not re.search(r"--(aud|iss|sub)\b", out), out


def test_mint_and_verify_take_the_word_spellings(keys: str, tmp_path: Path) -> None:
    minted = cli(
        "mint", "--keys", keys, "--subject", "alice", "--tools", "add", "--audience", AUD,
        "--issuer", ISS,
    )  # fmt: skip
    assert minted.code == 0, minted.err
    jwks = tmp_path / "jwks.json"
    jwks.write_text(cli("jwks", "--keys", keys).out)
    checked = cli(
        "verify", minted.out.strip(), "--jwks", str(jwks), "--issuer", ISS, "--audience", AUD
    )
    assert checked.code == 0, checked.err
    assert json.loads(checked.out)["sub"] == "alice"


def test_help_runs_as_a_module_and_as_the_console_script() -> None:
    result = run("--help")
    assert result.code == 0 and "five-minute tour" in result.out
    script = Path(sys.executable).parent / "jwtmcp"
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("jwtmcp ")


def test_no_command_shows_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    result = call(capsys)
    assert result.code == 2 and "COMMAND" in result.err
    result = call(capsys, "keys")
    assert result.code == 2 and "init" in result.err


# --- keys init / jwks -----------------------------------------------------------------------


def test_init_then_jwks_prints_two_public_keys(tmp_path: Path) -> None:
    keys = str(tmp_path / "ring")
    init = run("keys", "init", "--keys", keys)
    assert init.code == 0, init.err
    ring = load_ring(keys)
    assert ring.active.kid in init.out and ring.next is not None and ring.next.kid in init.out
    result = run("jwks", "--keys", keys)
    assert result.code == 0 and result.err == ""
    jwks = json.loads(result.out)
    assert len(jwks["keys"]) == 2
    for jwk in jwks["keys"]:
        assert not set(jwk) & PRIVATE_MEMBERS
        assert (jwk["alg"], jwk["use"], jwk["kty"]) == ("RS256", "sig", "RSA")
        assert jwk["kid"] == jwk_thumbprint(jwk)
    assert {k["kid"] for k in jwks["keys"]} == {k.kid for k in ring.keys}


def test_init_options_reach_the_ring(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = str(tmp_path / "ring")
    result = call(capsys, "keys", "init", "--keys", keys, "--max-lifetime", "900", "--leeway", "5")
    assert result.code == 0, result.err
    ring = load_ring(keys)
    assert (ring.max_lifetime, ring.leeway) == (900, 5)
    assert "900 s" in result.out


def test_keys_dir_from_environment(tmp_path: Path) -> None:
    assert run("keys", "init", JWTMCP_KEYS=str(tmp_path / "env-ring")).code == 0
    assert (tmp_path / "env-ring" / STATE_FILE).exists()
    assert run("keys", "init", cwd=tmp_path).code == 0  # default: ./keys
    assert (tmp_path / "keys" / STATE_FILE).exists()


# --- mint -----------------------------------------------------------------------------------


def test_mint_prints_only_the_token(ring: KeyRing, keys: str) -> None:
    result = run(
        "mint", "--keys", keys, "--sub", "alice", "--tools", "add,subtract",
        "--aud", AUD, "--ttl", "120",
    )  # fmt: skip
    assert result.code == 0 and result.err == ""
    assert result.out.count("\n") == 1 and result.out.endswith("\n")
    token = result.out.strip()
    assert token.count(".") == 2
    header, claims = _parts(token)
    assert header == {"alg": "RS256", "typ": "at+jwt", "kid": ring.active.kid}
    assert claims["exp"] - claims["iat"] == 120
    assert claims["scope"] == "tool:add tool:subtract"
    assert (claims["sub"], claims["aud"], claims["iss"]) == ("alice", AUD, ISS)
    assert claims["client_id"] == "alice" and claims["nbf"] == claims["iat"]
    assert len(claims["jti"]) >= 22


def test_mint_with_every_flag(keys: str) -> None:
    token = _mint(
        keys,
        "--tools", "read_*", "--scope", "openid profile", "--aud", OTHER_AUD,
        "--ttl", "60", "--claim", "email=a@example.com", "--claim", 'groups:=["ops", "dev"]',
        "--claim", "level:=3", "--client-id", "ci-bot", "--issuer", "https://auth.example.com",
    )  # fmt: skip
    _, claims = _parts(token)
    assert claims["aud"] == [AUD, OTHER_AUD]
    assert claims["scope"] == "tool:add tool:read_* openid profile"
    assert claims["exp"] - claims["iat"] == 60
    assert claims["email"] == "a@example.com"
    assert claims["groups"] == ["ops", "dev"] and claims["level"] == 3
    assert claims["client_id"] == "ci-bot"
    assert claims["iss"] == "https://auth.example.com"


def test_mint_issuer_from_environment(keys: str) -> None:
    result = run(
        "mint", "--keys", keys, "--sub", "a", "--tools", "add", "--aud", AUD,
        JWTMCP_ISSUER="https://env.example",
    )
    assert _parts(result.out.strip())[1]["iss"] == "https://env.example"


def test_mint_lifetime_at_the_rings_maximum(keys: str) -> None:
    _, claims = _parts(_mint(keys, "--ttl", "3600"))
    assert claims["exp"] - claims["iat"] == 3600


# --- keys list / rotate / prune / revoke with the injected clock ----------------------------


def test_keys_list_shows_kid_state_created_and_when_retired_keys_may_go(
    ring: KeyRing, keys: str, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    result = call(capsys, "keys", "list", "--keys", keys, clock=clock)
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0].split() == ["KID", "STATE", "BITS", "CREATED", "REMOVABLE"]
    assert lines[1].split()[:2] == [ring.active.kid, "active"]
    assert ring.next is not None and lines[2].split()[:2] == [ring.next.kid, "next"]
    assert "2027-01-15 08:00:00Z" in lines[1]  # FakeClock's start, in UTC

    clock.advance(50)
    rotated = call(capsys, "keys", "rotate", "--keys", keys, clock=clock)
    assert rotated.code == 0 and ring.active.kid in rotated.out
    clock.advance(10)
    listing = call(capsys, "keys", "list", "--keys", keys, clock=clock).out
    retired_line = next(line for line in listing.splitlines() if "retired" in line)
    assert retired_line.startswith(ring.active.kid)
    # retired at 08:00:50 + 3600 s max lifetime + 60 s leeway
    assert "after 2027-01-15 09:01:50Z (in 60 min)" in retired_line

    as_json = json.loads(call(capsys, "keys", "list", "--keys", keys, "--json", clock=clock).out)
    retired = [k for k in as_json["keys"] if k["state"] == "retired"]
    assert retired[0]["removable_at"] == clock() - 10 + 3600 + 60
    assert retired[0]["removable_now"] is False
    assert as_json["max_lifetime"] == 3600 and len(as_json["keys"]) == 3


def test_keys_prune_at_the_grace_boundary(
    ring: KeyRing, keys: str, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    assert call(capsys, "keys", "rotate", "--keys", keys, clock=clock).code == 0
    boundary = clock() + 3600 + 60
    clock.now = boundary - 1
    early = call(capsys, "keys", "prune", "--keys", keys, clock=clock)
    assert early.code == 0 and "nothing to prune yet" in early.out
    assert "now" not in call(capsys, "keys", "list", "--keys", keys, clock=clock).out
    clock.now = boundary
    assert (
        "now (run 'jwtmcp keys prune')"
        in call(capsys, "keys", "list", "--keys", keys, clock=clock).out
    )
    done = call(capsys, "keys", "prune", "--keys", keys, clock=clock)
    assert done.code == 0 and done.out == f"removed {ring.active.kid}\n"
    assert load_ring(keys).get(ring.active.kid) is None


@pytest.mark.parametrize("which", ["active", "next", "retired"])
def test_keys_revoke(
    ring: KeyRing, keys: str, clock: FakeClock, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    rotated = rotate_ring(keys, clock=clock)
    kid = {
        "active": rotated.active.kid,
        "next": rotated.next.kid if rotated.next else "",
        "retired": ring.active.kid,
    }[which]
    result = call(capsys, "keys", "revoke", kid, "--keys", keys, clock=clock)
    assert result.code == 0, result.err
    assert f"revoked {kid} (was {which})" in result.out
    after = load_ring(keys)
    assert after.get(kid) is None
    assert sum(k.state == "active" for k in after.keys) == 1 and after.next is not None
    jwks = json.loads(call(capsys, "jwks", "--keys", keys).out)
    assert kid not in {k["kid"] for k in jwks["keys"]}


# --- bad input: one line, non-zero exit, never a traceback ---------------------------------


@pytest.mark.parametrize(
    "args",
    [["keys", "list"], ["keys", "rotate"], ["keys", "prune"], ["jwks"], ["mint", "--sub", "a"]],
    ids=lambda a: " ".join(a),
)
def test_missing_ring(tmp_path: Path, args: list[str]) -> None:
    missing = str(tmp_path / "nope")
    err = cli(
        *args, "--keys", missing, *(["--tools", "add", "--aud", AUD] if args[0] == "mint" else [])
    ).one_line_error()
    assert f"no key ring at {missing}" in err and "jwtmcp keys init" in err


def test_ring_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert "not a directory" in run("jwks", "--keys", str(tmp_path / "file")).one_line_error()


def test_empty_directory_is_not_a_ring(tmp_path: Path) -> None:
    assert "ring.json is missing" in run("jwks", "--keys", str(tmp_path)).one_line_error()


@pytest.mark.parametrize("content", [b'{"version": 1, "keys": [', b"", b"\x89PNG garbage"])
def test_corrupted_or_truncated_state_file(keys: str, content: bytes) -> None:
    (Path(keys) / STATE_FILE).write_bytes(content)
    for args in (["keys", "list"], ["keys", "rotate"], ["jwks"]):
        assert "corrupted" in cli(*args, "--keys", keys).one_line_error()
    assert "corrupted" in run("keys", "list", "--keys", keys).one_line_error()


def test_world_readable_key_file(ring: KeyRing, keys: str) -> None:
    pem = Path(keys) / ring.active.file_name
    pem.chmod(0o644)
    err = run("mint", "--keys", keys, "--sub", "a", "--tools", "add", "--aud", AUD).one_line_error()
    assert "readable by group or others" in err and f"chmod 600 {pem}" in err


def test_stray_non_key_files_are_ignored(ring: KeyRing, keys: str) -> None:
    for name in ("README.md", "notes.pem", "id_rsa"):
        (Path(keys) / name).write_text("not a key")
        (Path(keys) / name).chmod(0o644)
    (Path(keys) / "sub").mkdir()
    assert run("keys", "list", "--keys", keys).code == 0
    assert len(json.loads(run("jwks", "--keys", keys).out)["keys"]) == 2
    assert _parts(_mint(keys))[0]["kid"] == ring.active.kid
    assert run("keys", "rotate", "--keys", keys).code == 0
    assert (Path(keys) / "notes.pem").read_text() == "not a key"


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["frobnicate"],
        ["keys", "rotate", "--nope"],
        ["keys", "explode"],
        ["mint", "--sub", "a", "--aud", AUD, "--tools-typo", "x"],
        ["mint", "--tools", "add", "--aud", AUD],  # --sub missing
        ["mint", "--tools", "add", "--sub", "a"],  # --aud missing
        ["mint", "--sub", "a", "--aud", AUD],  # --tools (or --no-tools) missing
        ["mint", "--sub", "a", "--aud", AUD, "--tools", "add", "--no-tools"],
        ["mint", "--sub", "a", "--tools", "add", "--aud", AUD, "--ttl", "abc"],
        ["mint", "--sub", "a", "--tools", "add", "--aud", AUD, "--ttl", "0"],
        ["mint", "--sub", "a", "--tools", "add", "--aud", AUD, "--ttl", "-5"],
        ["keys", "revoke"],  # KID missing
        ["verify", "tok", "--aud", AUD],  # --jwks missing
        ["serve", "--port", "70000"],
        ["keys", "init", "--bits", "big"],
        ["mint", "--sub", "a", "--aud", AUD, "--tool", "add"],  # no abbreviations
        ["clients", "add", "bot", "--tools", "add"],  # --audience missing
        ["keys", "init", "--max", "60"],
    ],
    ids=lambda a: " ".join(a),
)
def test_usage_errors_are_one_line_with_exit_2(args: list[str]) -> None:
    err = cli(*args).one_line_error(code=2)
    assert "error:" in err and "--help" in err


# Digits of other scripts, signs, spaces, underscores, exponents, non-finite values and more
# digits than int() converts: a number on the command line or in the environment is ASCII.
NOT_ASCII_NUMBERS = [
    "\u00b2",
    "\u0661\u0662\u0663",
    "\uff11\uff12\uff13",
    "+60",
    " 60",
    "1_000",
    "6e1",
    "inf",
    "nan",
    "9" * 5000,
]


@pytest.mark.parametrize("value", NOT_ASCII_NUMBERS, ids=lambda v: ascii(v)[:24])
@pytest.mark.parametrize(
    "args",
    [
        ["mint", "--sub", "a", "--aud", AUD, "--ttl"],
        ["keys", "init", "--max-lifetime"],
        ["keys", "init", "--leeway"],
        ["keys", "init", "--bits"],
        ["keys", "rotate", "--bits"],
        ["clients", "add", "x", "--tools", "add", "--aud", AUD, "--max-ttl"],
        ["serve", "--port"],
        ["serve", "--rate-limit"],
        ["serve", "--rate-burst"],
    ],
    ids=lambda a: " ".join(a),
)
def test_numbers_on_the_command_line_are_ascii_digits_only(
    args: list[str], value: str, tmp_path: Path
) -> None:
    # Were the value accepted, the command would fail on the next flag instead (serve must
    # not start listening): exit status 1, not the usage error's 2.
    where = ["--clients", str(tmp_path / "c")] if args[0] == "clients" else []
    where += ["--keys", str(tmp_path / "k")] if args[0] != "clients" else []
    where += ["--issuer", "ftp://x"] if args[0] == "serve" else []
    err = cli(*args, value, *where).one_line_error(code=2)
    assert err.startswith(f"jwtmcp {args[0]}")


@pytest.mark.parametrize("value", NOT_ASCII_NUMBERS, ids=lambda v: ascii(v)[:24])
@pytest.mark.parametrize(
    "name", ["JWTMCP_DEFAULT_TTL", "JWTMCP_RATE_LIMIT", "JWTMCP_RATE_BURST", "JWTMCP_JWKS_MAX_AGE"]
)
def test_numbers_in_the_environment_are_ascii_digits_only(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(name, value)
    keys = str(tmp_path / "k")
    err = cli("serve", "--port", "1", "--keys", keys, "--issuer", "ftp://x").one_line_error()
    assert err.startswith(f"jwtmcp: error: ${name} must be a number written in ASCII digits")
    assert not (tmp_path / "k").exists()


def test_unknown_flag_in_a_real_process() -> None:
    err = run(
        "mint", "--sub", "a", "--tools", "add", "--aud", AUD, "--frobnicate"
    ).one_line_error(code=2)
    assert err == (
        "jwtmcp mint: error: unrecognized arguments: --frobnicate (see 'jwtmcp mint --help')\n"
    )


def test_missing_ring_in_a_real_process(tmp_path: Path) -> None:
    err = run("keys", "list", "--keys", str(tmp_path / "nope")).one_line_error()
    assert err.startswith("jwtmcp: error: no key ring at ")


def test_lifetime_above_the_maximum(keys: str) -> None:
    err = run(
        "mint", "--keys", keys, "--sub", "a", "--tools", "add", "--aud", AUD, "--ttl", "3601"
    ).one_line_error()
    assert "above the maximum token lifetime" in err and "3600 s" in err


def test_lifetime_above_a_custom_maximum(tmp_path: Path) -> None:
    keys = str(tmp_path / "k")
    assert run("keys", "init", "--keys", keys, "--max-lifetime", "600").code == 0
    err = run(
        "mint", "--keys", keys, "--sub", "a", "--tools", "add", "--aud", AUD, "--ttl", "601"
    ).one_line_error()
    assert "600 s" in err


@pytest.mark.parametrize("claim", ["sub=mallory", "exp:=9999999999", "scope=tool:*", "aud=x"])
def test_claim_cannot_override_a_registered_claim(keys: str, claim: str) -> None:
    err = run(
        "mint", "--keys", keys, "--sub", "a", "--tools", "add", "--aud", AUD, "--claim", claim
    ).one_line_error()
    assert "registered claim" in err and claim.split("=")[0].rstrip(":") in err


@pytest.mark.parametrize(
    ("claim", "message"),
    [
        ("novalue", "NAME=VALUE"),
        ("=value", "NAME=VALUE"),
        ("x:={not json", "JSON value"),
        ("my name=x", "without spaces"),
    ],
)
def test_malformed_claim(keys: str, claim: str, message: str) -> None:
    err = run(
        "mint", "--keys", keys, "--sub", "a", "--tools", "add", "--aud", AUD, "--claim", claim
    ).one_line_error()
    assert message in err


@pytest.mark.parametrize("tools", ["two words", "a*b"])
def test_invalid_tool_name(keys: str, tools: str) -> None:
    err = cli("mint", "--keys", keys, "--sub", "a", "--aud", AUD, "--tools", tools).one_line_error()
    assert "invalid tool name" in err


# mint validates --tools and --aud exactly as 'clients add' does (the same code), and a
# token that grants no tool must be asked for.


def _clients_add_error(tmp_path: Path, *args: str) -> str:
    err = cli(
        "clients", "add", "bot", *args, "--clients", str(tmp_path / "clients.json")
    ).one_line_error()
    return err.split("error: ", 1)[1]


def _mint_error(keys: str, *args: str) -> str:
    return cli("mint", "--keys", keys, "--sub", "a", *args).one_line_error().split("error: ", 1)[1]


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ("tool:add", "without the 'tool:' prefix"),
        ("add,tool:read_*", "without the 'tool:' prefix"),
        ("caf\u00e9", "invalid tool name"),
        ("nul\x7f", "invalid tool name"),
        ("", "names no tool"),
        (" , ", "names no tool"),
    ],
)
def test_mint_refuses_tools_as_clients_add_does(
    keys: str, tmp_path: Path, tools: str, message: str
) -> None:
    from_mint = _mint_error(keys, "--tools", tools, "--aud", AUD)
    assert message in from_mint
    assert from_mint == _clients_add_error(tmp_path, "--tools", tools, "--aud", AUD)


@pytest.mark.parametrize(
    "aud", ["add", "127.0.0.1:9000/mcp", "ftp://mcp.example.com/mcp", "http://", f"{AUD}#x"]
)
def test_mint_refuses_an_audience_that_is_not_a_url_as_clients_add_does(
    keys: str, tmp_path: Path, aud: str
) -> None:
    from_mint = _mint_error(keys, "--tools", "add", "--aud", aud)
    assert "invalid resource URL" in from_mint
    assert from_mint == _clients_add_error(tmp_path, "--tools", "add", "--aud", aud)


def test_mint_without_tools_is_a_usage_error_naming_both_flags(keys: str) -> None:
    err = run("mint", "--keys", keys, "--sub", "a", "--aud", AUD).one_line_error(code=2)
    assert "--tools" in err and "--no-tools" in err


def test_mint_no_tools_gives_a_token_without_tool_scopes(keys: str) -> None:
    result = cli("mint", "--keys", keys, "--sub", "a", "--aud", AUD, "--no-tools")
    assert result.code == 0, result.err
    assert _parts(result.out.strip())[1]["scope"] == ""
    result = cli(
        "mint", "--keys", keys, "--sub", "a", "--aud", AUD, "--no-tools", "--scope", "openid"
    )
    assert _parts(result.out.strip())[1]["scope"] == "openid"


@pytest.mark.parametrize("bits", ["1024", "2047", "3000"])
def test_init_refuses_weak_or_odd_key_sizes(tmp_path: Path, bits: str) -> None:
    err = cli("keys", "init", "--keys", str(tmp_path / "k"), "--bits", bits).one_line_error()
    assert bits in err
    assert not (tmp_path / "k" / STATE_FILE).exists()


@pytest.mark.parametrize("bits", ["1024", "5000"])
def test_rotate_refuses_weak_or_odd_key_sizes(ring: KeyRing, keys: str, bits: str) -> None:
    assert bits in cli("keys", "rotate", "--keys", keys, "--bits", bits).one_line_error()
    assert load_ring(keys).revision == ring.revision


def test_init_refuses_an_existing_ring(keys: str) -> None:
    assert "already exists" in run("keys", "init", "--keys", keys).one_line_error()


def test_revoke_unknown_kid(keys: str) -> None:
    assert "no key with kid" in cli("keys", "revoke", "nope", "--keys", keys).one_line_error()


def test_parser_builds_without_side_effects() -> None:
    parser = build_parser()
    args = parser.parse_args(["mint", "--sub", "a", "--aud", AUD, "--tools", "x,y", "--tools", "z"])
    assert args.tools == ["x,y", "z"] and args.ttl == 300 and args.keys is None


# --- verify (needs jwtmcp.verifier, issue 4) -------------------------------------------------


def test_verify_accepts_a_fresh_token_and_prints_its_claims(
    ring: KeyRing, keys: str, tmp_path: Path
) -> None:
    jwks = _jwks_file(keys, tmp_path / "jwks.json")
    token = _mint(keys, "--tools", "subtract", "--ttl", "120")
    result = run("verify", token, "--jwks", jwks, "--iss", ISS, "--aud", AUD)
    assert result.code == 0, result.err
    claims = json.loads(result.out)
    assert claims == _parts(token)[1]
    assert claims["scope"] == "tool:add tool:subtract"
    assert token not in result.out + result.err  # never echo the token


def test_verify_reads_the_token_from_stdin_and_defaults_the_issuer(
    keys: str, tmp_path: Path
) -> None:
    jwks = _jwks_file(keys, tmp_path / "jwks.json")
    token = _mint(keys)
    result = run("verify", "-", "--jwks", jwks, "--aud", AUD, stdin=token + "\n")
    assert result.code == 0, result.err
    assert json.loads(result.out)["sub"] == "alice"


def test_verify_refuses_another_audience_in_one_line(keys: str, tmp_path: Path) -> None:
    jwks = _jwks_file(keys, tmp_path / "jwks.json")
    token = _mint(keys)
    err = run("verify", token, "--jwks", jwks, "--iss", ISS, "--aud", OTHER_AUD).one_line_error()
    assert "token refused (wrong_audience)" in err
    assert token not in err


def test_verify_refuses_another_issuer(keys: str, tmp_path: Path) -> None:
    jwks = _jwks_file(keys, tmp_path / "jwks.json")
    token = _mint(keys)
    err = run(
        "verify", token, "--jwks", jwks, "--iss", "https://evil.example", "--aud", AUD
    ).one_line_error()
    assert "wrong_issuer" in err


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "-"])
def test_verify_refuses_garbage_in_one_line(keys: str, tmp_path: Path, token: str) -> None:
    jwks = _jwks_file(keys, tmp_path / "jwks.json")
    err = run("verify", token, "--jwks", jwks, "--aud", AUD, stdin="").one_line_error()
    assert "token" in err


def test_verify_with_a_missing_jwks_file(keys: str, tmp_path: Path) -> None:
    token = _mint(keys)
    run("verify", token, "--jwks", str(tmp_path / "absent.json"), "--aud", AUD).one_line_error()


def test_verify_max_lifetime_above_an_hour_checks_the_revocation_list(tmp_path: Path) -> None:
    keys = str(tmp_path / "ring")
    refused = cli("keys", "init", "--keys", keys, "--max-lifetime", "7200").one_line_error()
    assert "revoke enable" in refused  # a long-lived ring would skip the revocation gate
    assert cli("keys", "init", "--keys", keys).code == 0
    listed = ("--revocations", str(tmp_path / "revocations.json"))
    assert cli("revoke", "enable", "--max-ttl", "2h", *listed).code == 0
    jwks = _jwks_file(keys, tmp_path / "jwks.json")
    issuer = f"http://127.0.0.1:{free_port()}"  # nothing listens: no list to be had
    minted = cli("mint", "--keys", keys, "--sub", "a", "--tools", "add", "--aud", AUD,
                 "--iss", issuer, "--ttl", "7000", *listed)  # fmt: skip
    token = minted.out.strip()
    err = cli("verify", token, "--jwks", jwks, "--aud", AUD, "--iss", issuer).one_line_error()
    assert "lifetime_too_long" in err
    err = cli(
        "verify", token, "--jwks", jwks, "--aud", AUD, "--iss", issuer, "--max-lifetime", "7200"
    ).one_line_error()
    assert "cannot fetch the revocation list" in err


def test_rotate_then_revoke_end_to_end(ring: KeyRing, keys: str, tmp_path: Path) -> None:
    assert ring.next is not None
    old_token = _mint(keys)
    assert _parts(old_token)[0]["kid"] == ring.active.kid

    assert run("keys", "rotate", "--keys", keys).code == 0
    new_token = _mint(keys)
    assert _parts(new_token)[0]["kid"] == ring.next.kid  # the former next key signs now
    jwks = _jwks_file(keys, tmp_path / "jwks-rotated.json")
    assert len(json.loads(Path(jwks).read_text())["keys"]) == 3
    for token in (old_token, new_token):
        result = run("verify", token, "--jwks", jwks, "--aud", AUD)
        assert result.code == 0, result.err

    revoked = run("keys", "revoke", ring.active.kid, "--keys", keys)
    assert revoked.code == 0 and "was retired" in revoked.out
    jwks = _jwks_file(keys, tmp_path / "jwks-revoked.json")
    kids = {k["kid"] for k in json.loads(Path(jwks).read_text())["keys"]}
    assert ring.active.kid not in kids and len(kids) == 2
    err = run("verify", old_token, "--jwks", jwks, "--aud", AUD).one_line_error()
    assert "token refused (unknown_kid)" in err
    assert run("verify", new_token, "--jwks", jwks, "--aud", AUD).code == 0


@pytest.fixture
def jwks_server(keys: str) -> Iterator[str]:
    async def jwks(request: Request) -> Response:
        body = json.dumps(load_ring(keys).jwks())
        return Response(body, media_type="application/json")

    app = Starlette(routes=[Route("/.well-known/jwks.json", jwks)])
    with serve_app(app) as base:
        yield f"{base}/.well-known/jwks.json"


def test_verify_against_a_jwks_url(keys: str, jwks_server: str) -> None:
    token = _mint(keys)
    result = run("verify", token, "--jwks", jwks_server, "--aud", AUD)
    assert result.code == 0, result.err
    assert json.loads(result.out)["sub"] == "alice"


def _unreachable_jwks_error(result: Result, url: str) -> str:
    """One line, exit 1, naming the URL; nothing about keys a one-shot run never had."""
    err = result.one_line_error()
    assert url in err, err
    assert "last good" not in err and "try again later" not in err, err
    return err


def test_verify_says_a_jwks_url_on_a_closed_port_could_not_be_reached(keys: str) -> None:
    url = f"http://127.0.0.1:{free_port()}/.well-known/jwks.json"  # nothing listens there
    err = _unreachable_jwks_error(run("verify", _mint(keys), "--jwks", url, "--aud", AUD), url)
    assert "cannot fetch the JWKS from" in err and "connection refused" in err.lower(), err


def test_verify_with_a_plain_http_jwks_url_names_the_command_line_way_out(keys: str) -> None:
    # Not a Python keyword argument a command-line user cannot pass.
    url = "http://auth.example.com/.well-known/jwks.json"
    err = run("verify", _mint(keys), "--jwks", url, "--aud", AUD).one_line_error()
    assert "https" in err and "allow_insecure" not in err, err
    assert "--jwks FILE" in err, err


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("500", "HTTP status 500"),
        ("garbage", "not valid JSON"),
        ("weak", "no usable RSA signing key"),
        ("hang", "no answer within 5"),  # the default fetch timeout, 5 s
    ],
)
def test_verify_says_why_a_jwks_url_could_not_be_used(keys: str, mode: str, reason: str) -> None:
    server = JwksServer(load_ring(keys).jwks())
    server.mode = mode
    with server.running() as url:
        err = _unreachable_jwks_error(run("verify", _mint(keys), "--jwks", url, "--aud", AUD), url)
    assert "cannot fetch the JWKS from" in err and reason in err, err


def test_verify_with_a_bad_token_and_an_unreachable_jwks_url_prints_one_line(keys: str) -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks"
    err = run("verify", "not.a.token", "--jwks", url, "--aud", AUD).one_line_error()
    assert "token refused (malformed)" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "revoke", "-" + "a" * 42, "--keys", "K"],
        ["keys", "revoke", "--keys", "K", "-" + "a" * 42],
        ["keys", "revoke", "--keys", "K", "--", "-" + "a" * 42],
    ],
)
def test_revoke_takes_a_kid_that_starts_with_a_dash(argv: list[str]) -> None:
    from jwtmcp.cli import _protect_dash_kids

    args = build_parser().parse_args(_protect_dash_kids(argv))
    assert (args.kid, args.keys) == ("-" + "a" * 42, "K")


# --- scripts/mint_token.sh ------------------------------------------------------------------


def _script(*args: str, **env: str) -> Result:
    # The script runs the 'jwtmcp' it finds on PATH: this interpreter's.
    path = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "mint_token.sh"), *args],
        capture_output=True,
        text=True,
        env=_env(PATH=path, **env),
        timeout=60,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_mint_script_creates_the_ring_once_and_prints_only_a_token(tmp_path: Path) -> None:
    keys = str(tmp_path / "ring")
    first = _script("alice", "add,subtract", AUD, "120", JWTMCP_KEYS=keys)
    assert first.code == 0, first.err
    assert "created a key ring" in first.err
    ring = load_ring(keys)
    header, claims = _parts(first.out.strip())
    assert first.out.count("\n") == 1
    assert header["kid"] == ring.active.kid
    assert claims["scope"] == "tool:add tool:subtract" and claims["exp"] - claims["iat"] == 120
    second = _script("bob", "*", AUD, JWTMCP_KEYS=keys, JWTMCP_ISSUER="https://auth.example")
    assert second.code == 0 and second.err == ""
    _, claims = _parts(second.out.strip())
    assert (claims["sub"], claims["scope"], claims["iss"]) == (
        "bob",
        "tool:*",
        "https://auth.example",
    )
    assert claims["exp"] - claims["iat"] == 300
    assert load_ring(keys).active.kid == ring.active.kid


def test_mint_script_usage_and_errors(tmp_path: Path) -> None:
    usage = _script("alice")
    assert usage.code == 2 and usage.err.startswith("usage: ") and usage.out == ""
    too_long = _script("a", "add", AUD, "7200", JWTMCP_KEYS=str(tmp_path / "k"))
    assert too_long.code == 1 and "Traceback" not in too_long.err
    assert too_long.err.splitlines()[-1].startswith("jwtmcp: error: --ttl 7200 is above")
