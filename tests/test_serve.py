"""``jwtmcp serve`` as a real process: first run, live reload, replicas, warnings, errors."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest

from jwtmcp.verifier import Verifier
from tests.support import RunningIssuer, free_port, issuer_process

DEMO_AUD = "http://127.0.0.1:8001/mcp"


def jwtmcp(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWTMCP_")}
    return subprocess.run(
        [sys.executable, "-m", "jwtmcp", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def token_response(iss: RunningIssuer, client_id: str, secret: str, **form: str) -> dict[str, Any]:
    auth = (client_id, secret)
    data = {"grant_type": "client_credentials", **form}
    r = httpx2.post(iss.token_url, data=data, auth=auth, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def demo_token(iss: RunningIssuer) -> str:
    assert iss.client_id and iss.client_secret
    return str(token_response(iss, iss.client_id, iss.client_secret)["access_token"])


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def jwks_of(iss: RunningIssuer) -> bytes:
    return httpx2.get(iss.jwks_url, timeout=10).content


def wait_for(condition: Callable[[], bool], seconds: float = 1.0) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > seconds:
            pytest.fail(f"condition not met within {seconds} s")
        time.sleep(0.02)
    return time.monotonic() - start


# --- acceptance 1: first run in an empty directory ------------------------------------------


def test_first_run_needs_nothing_and_its_printed_commands_work(tmp_path: Path) -> None:
    workdir = tmp_path / "empty"
    with issuer_process(workdir) as iss:
        out = iss.stdout()
        assert iss.client_id == "demo" and iss.client_secret
        assert "created a key ring in keys" in out
        assert stat_mode(iss.clients_file) == 0o600
        assert stat_mode(iss.keys_dir) == 0o700
        assert iss.client_secret not in iss.clients_file.read_text()
        lines = out.splitlines()
        curl = next(line.strip() for line in lines if line.strip().startswith("curl "))
        fetched = subprocess.run(
            ["bash", "-c", curl], capture_output=True, text=True, timeout=30, check=True
        )
        assert json.loads(fetched.stdout)["token_type"] == "Bearer"
        start = lines.index("Check it:")
        check = "\n".join(line.strip() for line in lines[start + 1 : start + 3])
        # As a new user's shell runs it: the venv is not activated, so no PATH entry holds
        # a jwtmcp command; from the directory serve ran in.
        path = os.pathsep.join(
            d for d in os.environ["PATH"].split(os.pathsep) if d and not Path(d, "jwtmcp").exists()
        )
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env["PATH"] = path
        verified = subprocess.run(
            ["bash", "-c", check], capture_output=True, text=True, timeout=30, env=env, cwd=workdir
        )
        assert verified.returncode == 0, verified.stderr
        claims = json.loads(verified.stdout)
        assert claims["sub"] == "demo" and claims["aud"] == DEMO_AUD
        assert claims["scope"] == "tool:add tool:subtract tool:multiply"
        assert claims["iss"] == iss.base_url
        # The sign-in banner's "add people" line runs as printed, in the documented spelling.
        add = next(line.strip() for line in lines if " users add NAME " in line)
        assert " --aud " not in add and " --audience " in add, add
        added = subprocess.run(
            ["bash", "-c", add.replace(" NAME ", " carol ")],
            capture_output=True, text=True, timeout=60, env=env, cwd=workdir,
        )
        assert added.returncode == 0, added.stderr
        assert "carol" in (workdir / "users.json").read_text()


def _shell_of_a_new_user() -> dict[str, str]:
    """The environment of a new user's shell: no venv activated, no JWTMCP_* variables set."""
    path = os.pathsep.join(
        d for d in os.environ["PATH"].split(os.pathsep) if d and not Path(d, "jwtmcp").exists()
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH") and not k.startswith("JWTMCP_")
    }
    env["PATH"] = path
    return env


@pytest.mark.parametrize("explicit_issuer", [False, True], ids=["port-only", "with-issuer"])
def test_banner_on_a_non_default_port_points_the_tours_mint_at_the_served_issuer(
    tmp_path: Path, explicit_issuer: bool
) -> None:
    # `serve --port N` (not 8000): the banner's lines, run as printed, then the tour's next
    # step (`jwtmcp mint`, which defaults to http://127.0.0.1:8000) must mint for this issuer.
    workdir = tmp_path / "tour"
    port = free_port()
    issuer = f"http://localhost:{port}/" if explicit_issuer else None
    with issuer_process(workdir, port=port, issuer=issuer) as iss:
        exports = [
            line.strip() for line in iss.stdout().splitlines() if line.strip().startswith("export ")
        ]
        assert exports, "the banner does not say how to point the other commands at the issuer"
        jwtmcp_cmd = f"{sys.executable} -m jwtmcp"
        script = "\n".join(
            [*exports, f"{jwtmcp_cmd} mint --subject alice --tools add --audience {DEMO_AUD}"]
        )
        env = _shell_of_a_new_user()
        env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
        minted = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, timeout=30, env=env, cwd=workdir
        )
        assert minted.returncode == 0, minted.stderr
        token = minted.stdout.strip()
        verifier = Verifier(issuer=iss.issuer, audience=DEMO_AUD, jwks_url=iss.jwks_url)
        try:
            assert verifier.verify(token).subject == "alice"
        finally:
            verifier.close()


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_second_start_reuses_ring_and_clients_and_prints_no_secret(tmp_path: Path) -> None:
    with issuer_process(tmp_path) as first:
        kid = kid_of(demo_token(first))
        secret = first.client_secret
    with issuer_process(tmp_path) as second:
        assert second.client_secret is None
        assert "created" not in second.stdout()
        assert "client secret" not in second.stdout()
        second.client_id, second.client_secret = "demo", secret
        assert kid_of(demo_token(second)) == kid


# --- acceptance 3: live reload after the CLI changes the files -------------------------------


def test_keys_rotate_and_clients_add_take_effect_within_a_second(tmp_path: Path) -> None:
    with issuer_process(tmp_path) as iss:
        ring = json.loads((iss.keys_dir / "ring.json").read_text())
        former_next = next(k["kid"] for k in ring["keys"] if k["state"] == "next")
        assert kid_of(demo_token(iss)) != former_next
        rotated = jwtmcp("keys", "rotate", "--keys", "keys", cwd=tmp_path)
        assert rotated.returncode == 0, rotated.stderr
        took = wait_for(lambda: kid_of(demo_token(iss)) == former_next)
        assert len(json.loads(jwks_of(iss))["keys"]) == 3
        assert took < 1.0

        added = jwtmcp("clients", "add", "late", "--tools", "add", "--aud", DEMO_AUD, cwd=tmp_path)
        assert added.returncode == 0, added.stderr
        secret = added.stdout.strip().splitlines()[-1]

        def late_gets_a_token() -> bool:
            r = httpx2.post(
                iss.token_url,
                data={"grant_type": "client_credentials"},
                auth=("late", secret),
                timeout=10,
            )
            return r.status_code == 200

        assert wait_for(late_gets_a_token) < 1.0


# --- acceptance 4: replicas -------------------------------------------------------------------


def _verifies_with(token: str, other: RunningIssuer) -> bool:
    verifier = Verifier(issuer=other.issuer, audience=DEMO_AUD, jwks_url=other.jwks_url)
    try:
        return verifier.verify(token).subject == "demo"
    finally:
        verifier.close()


def test_two_replicas_on_one_ring_publish_the_same_jwks_and_accept_each_others_tokens(
    tmp_path: Path,
) -> None:
    issuer_url = f"http://127.0.0.1:{free_port()}"  # the URL clients use (a load balancer)
    with (
        issuer_process(tmp_path, issuer=issuer_url) as a,
        issuer_process(tmp_path, issuer=issuer_url) as b,
    ):
        assert a.base_url != b.base_url
        b.client_id, b.client_secret = a.client_id, a.client_secret
        assert jwks_of(a) == jwks_of(b)
        from_a, from_b = demo_token(a), demo_token(b)
        assert _verifies_with(from_a, b)
        assert _verifies_with(from_b, a)

        rotated = jwtmcp("keys", "rotate", "--keys", "keys", cwd=tmp_path)
        assert rotated.returncode == 0, rotated.stderr
        wait_for(lambda: kid_of(demo_token(a)) == kid_of(demo_token(b)) != kid_of(from_a))
        wait_for(lambda: jwks_of(a) == jwks_of(b))
        assert _verifies_with(demo_token(a), b)


def test_workers_share_one_ring(tmp_path: Path) -> None:
    with issuer_process(tmp_path, args=["--workers", "2"], timeout=60) as iss:
        jwks = {jwks_of(iss) for _ in range(10)}
        assert len(jwks) == 1
        kids = {kid_of(demo_token(iss)) for _ in range(6)}
        assert len(kids) == 1
        assert _verifies_with(demo_token(iss), iss)
        assert "2 worker(s)" in iss.stdout()


# --- warnings and errors ----------------------------------------------------------------------


def test_plain_http_non_loopback_issuer_is_warned_about(tmp_path: Path) -> None:
    with issuer_process(tmp_path, issuer="http://auth.example.com") as iss:
        assert "warning: the issuer URL http://auth.example.com is not https" in iss.stderr()
        claims = jwt.decode(demo_token(iss), options={"verify_signature": False})
        assert claims["iss"] == "http://auth.example.com"
        meta = httpx2.get(f"{iss.base_url}/.well-known/oauth-authorization-server").json()
        assert meta["token_endpoint"] == "http://auth.example.com/token"


def test_https_or_loopback_issuer_gets_no_warning(tmp_path: Path) -> None:
    with issuer_process(tmp_path, issuer="https://auth.example.com/") as iss:
        assert "warning" not in iss.stderr()
        assert iss.issuer == "https://auth.example.com"


def test_access_log_never_holds_a_secret_or_token(tmp_path: Path) -> None:
    with issuer_process(tmp_path) as iss:
        token = demo_token(iss)
        bad = base64.b64encode(b"demo:not-the-secret").decode()
        httpx2.post(
            iss.token_url,
            content=b"grant_type=client_credentials",
            headers={
                "Authorization": f"Basic {bad}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
            timeout=10,
        )
        wait_for(lambda: "token_refused" in iss.stderr())
        log = iss.stderr()
        assert re.search(r'"event": "token_issued", "client_id": "demo"', log)
        assert iss.client_secret is not None and iss.client_secret not in log
        assert "not-the-secret" not in log and token not in log


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("corrupt-clients", [], "the clients file clients.json is invalid"),
        ("none", ["--issuer", "ftp://x"], "invalid issuer URL"),
        ("corrupt-ring", [], "key ring state file"),
    ],
)
def test_start_up_errors_are_one_line(
    tmp_path: Path, setup: str, args: list[str], message: str
) -> None:
    if setup == "corrupt-clients":
        (tmp_path / "clients.json").write_text("{nope")
    if setup == "corrupt-ring":
        (tmp_path / "keys").mkdir(mode=0o700)
        (tmp_path / "keys" / "ring.json").write_text("garbage")
    result = jwtmcp("serve", "--port", str(free_port()), *args, cwd=tmp_path, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith("jwtmcp: error: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_busy_port_is_one_line_and_exit_status_69(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = jwtmcp("serve", "--port", str(port), cwd=tmp_path, timeout=30)
    assert result.returncode == 69  # EX_UNAVAILABLE
    assert result.stderr == (
        f"jwtmcp: error: cannot listen on 127.0.0.1:{port}: the port is in use by another "
        "program; stop it or pick another port with --port\n"
    )
    assert not (tmp_path / "keys").exists()  # nothing set up, no secret printed
    assert result.stdout == ""


@pytest.mark.parametrize(
    "name", ["clients.json", ".clients.json.lock", "keys/ring.json", "keys/.lock", "keys/x.pem"]
)
def test_what_serve_creates_in_the_checkout_is_git_ignored(name: str) -> None:
    # scripts/serve runs in the checkout: its secrets, keys and lock files must never be
    # committed by a `git add -A`.
    repo = Path(__file__).resolve().parent.parent
    if not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", name], cwd=repo, check=False, timeout=30
    )
    assert ignored.returncode == 0, f"{name} is not git-ignored"


def test_banner_default_issuer_is_the_one_the_cli_assumes() -> None:
    # The banner prints `export JWTMCP_ISSUER=...` only for an issuer other than the CLI's
    # default; if the two constants drift apart, the default port's banner would omit it.
    from jwtmcp.cli import DEFAULT_ISSUER
    from jwtmcp.issuer import TOUR_DEFAULT_ISSUER

    assert TOUR_DEFAULT_ISSUER == DEFAULT_ISSUER


def _failed_logins_with_forged_addresses(running: RunningIssuer, attempts: int) -> list[int]:
    """Wrong passwords for ``attempts`` different user names, each request claiming another
    client address in ``X-Forwarded-For``: the statuses of the login posts."""
    from tests.signin_support import parse_forms

    with httpx2.Client(timeout=30, follow_redirects=False, trust_env=False) as http:
        client_id = http.post(
            f"{running.base_url}/register",
            json={"redirect_uris": ["http://127.0.0.1:5999/cb"]},
        ).json()["client_id"]
        page = http.get(
            f"{running.base_url}/authorize",
            params={
                "response_type": "code", "client_id": client_id,
                "redirect_uri": "http://127.0.0.1:5999/cb", "state": "s",
                "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSMtm-cM",
                "code_challenge_method": "S256",
            },
        )
        form = next(f for f in parse_forms(page.text) if f.method == "post")
        fields = {i.name: i.value for i in form.inputs if i.name}
        return [
            http.post(
                running.base_url + form.action,
                data={**fields, "username": f"user{n}", "password": "wrong"},
                headers={"X-Forwarded-For": f"203.0.113.{n}", "X-Forwarded-Proto": "https"},
            ).status_code
            for n in range(attempts)
        ]


def test_x_forwarded_for_is_not_believed_unless_trusted_proxies_are_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-address failed-login limit (20) must hold against a client that names another
    address in each request's X-Forwarded-For: behind a proxy that passes the header on
    (nginx's proxy_pass does), every client connects from loopback, which uvicorn trusted by
    default. Only with JWTMCP_FORWARDED_ALLOW_IPS set are the proxy's headers believed."""
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    with issuer_process(tmp_path / "plain") as running:
        statuses = _failed_logins_with_forged_addresses(running, 22)
        log = running.stderr()
    assert statuses[:20] == [401] * 20 and statuses[20:] == [429, 429], statuses
    assert "203.0.113." not in log
    with issuer_process(
        tmp_path / "proxied", env={"JWTMCP_FORWARDED_ALLOW_IPS": "127.0.0.1"}
    ) as running:
        statuses = _failed_logins_with_forged_addresses(running, 22)
        log = running.stderr()
    assert statuses == [401] * 22, statuses  # each a different (proxied) client address
    assert '"address": "203.0.113.21"' in log
