"""Issuer replicas sharing one store: real ``jwtmcp serve`` processes and a real redis-server.

Two replicas on different ports, the same keys directory, clients and users files, and
``--store redis://...``, behave as one issuer: a code is single-use across both, a refresh
token replayed at the other replica revokes its family, a client's ``/token`` rate limit
holds across both, and when Redis stops the flows that need it answer 503 + ``Retry-After``
while ``client_credentials`` keeps issuing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx2
import pytest

from jwtmcp.issuer import RateLimiter
from jwtmcp.pkce import s256_challenge
from jwtmcp.ratelimit import SharedRateLimiter
from jwtmcp.store import new_opaque_token
from jwtmcp.store.redis import RedisStore
from tests.redis_support import RedisServer, redis_server
from tests.signin_support import follow_sign_in, parse_forms
from tests.support import FakeClock, RunningIssuer, free_port, issuer_process, run_cli

REDIRECT = "http://127.0.0.1:5999/callback"
VERIFIER = "w" * 20 + "-._~" + "0123456789abcdefghijklmnopqrstuvwxyz"
BURST = 6
RATE = 0.0001  # requests per second: one more token every 10 000 s, none during the test
REDIS_PASSWORD = "redis-pw-" + new_opaque_token()


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


# --- two replicas, one Redis ------------------------------------------------------------------


@dataclass
class Replicas:
    a: RunningIssuer
    b: RunningIssuer
    redis: RedisServer
    client_id: str  # a registered public client (sign-in)
    password: str  # the demo user's
    cookies: httpx2.Cookies  # one browser's, signed in after the first sign-in

    def authorize_url(self, base_url: str) -> str:
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": REDIRECT,
            "state": new_opaque_token(),
            "code_challenge": s256_challenge(VERIFIER),
            "code_challenge_method": "S256",
        }
        return f"{base_url}/authorize?{urlencode(query)}"

    def code_from(self, base_url: str) -> str:
        """Sign in (or, signed in, consent) at ``base_url``: the code it redirects with."""
        result = asyncio.run(
            follow_sign_in(
                self.authorize_url(base_url),
                redirect_uri=REDIRECT,
                username="demo",
                password=self.password,
                cookies=self.cookies,
            )
        )
        assert result.code, result.params
        return result.code

    def exchange(self, base_url: str, code: str) -> httpx2.Response:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": VERIFIER,
            "client_id": self.client_id,
        }
        return httpx2.post(f"{base_url}/token", data=form, timeout=10)

    def refresh(self, base_url: str, refresh_token: str) -> httpx2.Response:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": self.client_id,
        }
        return httpx2.post(f"{base_url}/token", data=form, timeout=10)

    def client_credentials(self, base_url: str) -> httpx2.Response:
        assert self.a.client_id and self.a.client_secret
        return httpx2.post(
            f"{base_url}/token",
            data={"grant_type": "client_credentials"},
            auth=(self.a.client_id, self.a.client_secret),
            timeout=10,
        )


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Replicas]:
    issuer_url = f"http://127.0.0.1:{free_port()}"  # what clients use (a load balancer)
    with redis_server(tmp_path / "redis", password=REDIS_PASSWORD) as redis:
        args = ["--store", redis.url, "--rate-limit", str(RATE), "--rate-burst", str(BURST)]
        with contextlib.ExitStack() as stack:
            a = stack.enter_context(issuer_process(tmp_path, issuer=issuer_url, args=args))
            b = stack.enter_context(issuer_process(tmp_path, issuer=issuer_url, args=args))
            password = re.search(r"^\s*user password:\s*(\S+)\s*$", a.stdout(), re.MULTILINE)
            assert password is not None and a.client_secret is not None
            yield Replicas(
                a=a,
                b=b,
                redis=redis,
                client_id=register(a.base_url),
                password=password.group(1),
                cookies=httpx2.Cookies(),
            )


def _error(answer: httpx2.Response, status: int) -> str:
    assert answer.status_code == status, (answer.status_code, answer.text)
    return str(answer.json()["error"])


def test_a_code_issued_by_one_replica_is_redeemed_once_across_both(replicas: Replicas) -> None:
    code = replicas.code_from(replicas.a.base_url)
    first = replicas.exchange(replicas.b.base_url, code)
    assert first.status_code == 200, first.text
    assert _error(replicas.exchange(replicas.a.base_url, code), 400) == "invalid_grant"
    # the reuse revoked what the first redemption started, at either replica
    refused = replicas.refresh(replicas.b.base_url, first.json()["refresh_token"])
    assert _error(refused, 400) == "invalid_grant"


def test_a_refresh_token_replayed_at_the_other_replica_revokes_its_family(
    replicas: Replicas,
) -> None:
    issued = replicas.exchange(replicas.a.base_url, replicas.code_from(replicas.a.base_url))
    assert issued.status_code == 200, issued.text
    old = issued.json()["refresh_token"]
    rotated = replicas.refresh(replicas.a.base_url, old)
    assert rotated.status_code == 200, rotated.text
    newest = rotated.json()["refresh_token"]
    assert _error(replicas.refresh(replicas.b.base_url, old), 400) == "invalid_grant"
    assert _error(replicas.refresh(replicas.a.base_url, newest), 400) == "invalid_grant"


def test_a_clients_rate_limit_holds_across_both_replicas(replicas: Replicas) -> None:
    statuses = [
        replicas.client_credentials(r.base_url).status_code
        for _ in range(BURST)
        for r in (replicas.a, replicas.b)
    ]
    # One bucket of BURST for both (no refill within the test: RATE is one per 10 000 s);
    # per-process buckets would have allowed all 2 x BURST.
    assert statuses.count(200) == BURST and statuses.count(429) == BURST
    assert statuses[: BURST] == [200] * BURST


def test_redis_stopped_gives_503_with_retry_after_and_client_credentials_still_issues(
    replicas: Replicas,
) -> None:
    issued = replicas.exchange(replicas.a.base_url, replicas.code_from(replicas.a.base_url))
    assert issued.status_code == 200, issued.text
    replicas.redis.stop()

    with httpx2.Client(cookies=replicas.cookies, timeout=10, trust_env=False) as signed_in:
        page = signed_in.get(replicas.authorize_url(replicas.a.base_url))
    assert page.status_code == 503 and int(page.headers["retry-after"]) >= 1

    with httpx2.Client(timeout=10, trust_env=False) as newcomer:
        login = newcomer.get(replicas.authorize_url(replicas.b.base_url))
        (form,) = [f for f in parse_forms(login.text) if f.input("password") is not None]
        fields = {i.name: i.value for i in form.inputs if i.type == "hidden"}
        posted = newcomer.post(
            f"{replicas.b.base_url}/authorize/login",
            data={**fields, "username": "demo", "password": "wrong"},
        )
    assert posted.status_code == 503 and int(posted.headers["retry-after"]) >= 1

    refused = replicas.refresh(replicas.b.base_url, issued.json()["refresh_token"])
    assert _error(refused, 503) == "temporarily_unavailable"
    assert int(refused.headers["retry-after"]) >= 1

    for replica in (replicas.a, replicas.b, replicas.a):
        assert replicas.client_credentials(replica.base_url).status_code == 200
    assert replicas.a.stderr().count('"rate_limit_local"') == 1  # logged once, not per request
    for output in (r.stdout() + r.stderr() for r in (replicas.a, replicas.b)):
        assert "store_unavailable" in output or "rate_limit_local" in output
        assert REDIS_PASSWORD not in output  # the URL's password is never logged


# --- choosing the Redis store: --store, $JWTMCP_STORE ------------------------------------------


def test_sessions_commands_reach_the_redis_store_named_by_jwtmcp_store(
    tmp_path: Path, shared_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    location = f"{shared_redis.url}?prefix=cli{new_opaque_token()[:8]}:"
    with RedisStore(location) as store:
        store.put_code("c", {"client_id": "app", "subject": "alice"}, ttl=60)
        taken = store.redeem_code("c", new_opaque_token(), idle_ttl=60, absolute_ttl=600)
        assert taken is not None
    monkeypatch.setenv("JWTMCP_STORE", location)
    status, out, err = run_cli("sessions", "list", "--keys", str(tmp_path / "keys"))
    assert status == 0 and taken.family_id in out, err
    status, out, err = run_cli("sessions", "revoke", "--user", "alice")
    assert status == 0, err
    status, out, _ = run_cli("sessions", "list")
    assert out.strip() == "no active sessions"


def test_serve_refuses_a_malformed_redis_url_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jwtmcp", "serve", "--port", str(free_port()),
         "--store", "redis://:hunter2@127.0.0.1:notaport/0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0 and done.stderr.count("\n") == 1, done.stderr
    assert "Redis store URL" in done.stderr and "hunter2" not in done.stderr + done.stdout


def test_a_redis_password_with_reserved_characters_never_shows_in_output(tmp_path: Path) -> None:
    """A password made by ``openssl rand -base64`` holds ``/`` and ``+``: whatever the URL
    parser makes of it (a port, a socket path), no part of it may reach stderr or a log."""
    secret = "Zm9vYmFyYmF6/cXV4cXV1eA+Ym9i/YWxpY2U"
    pieces = [p for p in re.split(r"[/+]", secret) if len(p) >= 4]
    port = free_port()  # nothing listens there
    for url in (
        f"redis://:{secret}@127.0.0.1:{port}/0",
        f"redis://jwtmcp:{secret}@127.0.0.1:{port}/0?prefix=x:",
        f"rediss://:{secret}@127.0.0.1:{port}",
        f"unix://:{secret}@{tmp_path}/redis.sock",
        f"redis://:{secret.replace('/', '#')}@127.0.0.1:{port}/0",
        f"redis://:{secret.replace('/', '?')}@127.0.0.1:{port}/0",
    ):
        code, out, err = run_cli("sessions", "list", "--store", url)
        assert code != 0, out
        done = subprocess.run(
            [sys.executable, "-m", "jwtmcp", "serve", "--port", str(free_port()),
             "--store", url],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )
        shown = out + err + done.stdout + done.stderr
        leaked = [p for p in pieces if p in shown]
        assert not leaked, (url, leaked, err, done.stderr)


# --- Redis back after an outage ----------------------------------------------------------------


def test_sign_in_works_again_once_redis_is_back_without_restarting_the_replicas(
    replicas: Replicas, tmp_path: Path
) -> None:
    replicas.redis.stop()
    assert _error(_unknown_refresh(replicas.b.base_url), 503) == "temporarily_unavailable"
    with redis_server(
        tmp_path / "redis-again", password=REDIS_PASSWORD, port=replicas.redis.port
    ):
        issued = replicas.exchange(replicas.b.base_url, replicas.code_from(replicas.a.base_url))
        assert issued.status_code == 200, issued.text


def test_the_rate_limiter_goes_local_while_redis_is_down_and_shared_again_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monotonic = FakeClock(0)
    local = RateLimiter(rate=RATE, burst=2, monotonic=monotonic)
    with redis_server(tmp_path / "redis") as first:
        store = RedisStore(first.url)
        limiter = SharedRateLimiter(local, lambda: store, retry_interval=5, monotonic=monotonic)
        assert [limiter.acquire("app") for _ in range(2)] == [0.0, 0.0]
        assert limiter.acquire("app") > 0  # the shared bucket is empty
        first.stop()
        with caplog.at_level(logging.WARNING, logger="jwtmcp.issuer"):
            # the local bucket answers (its own burst), the outage is logged once
            assert [limiter.acquire("app") for _ in range(3)][:2] == [0.0, 0.0]
            assert limiter.degraded
            with redis_server(tmp_path / "again", port=first.port):
                monotonic.advance(4.9)
                assert limiter.acquire("other") == 0.0 and limiter.degraded  # not asked yet
                monotonic.advance(0.1)
                assert limiter.acquire("other") == 0.0 and not limiter.degraded
                assert store.take_token("token-rate:other", rate=RATE, burst=2) == 0.0
                assert store.take_token("token-rate:other", rate=RATE, burst=2) > 0  # 1 + 1 taken
        store.close()
    events = [json.loads(r.getMessage())["event"] for r in caplog.records]
    assert events == ["rate_limit_local", "rate_limit_shared"]


def test_concurrent_failed_logins_at_both_replicas_get_no_more_password_checks_than_the_limit(
    replicas: Replicas,
) -> None:
    """The failed-login limit (5 per user name per window) is a brute-force budget: racing
    wrong passwords at both replicas at once must not get more of them checked than that
    (a check-then-count race would let every concurrent request through to Argon2)."""
    attempts = 16

    async def race() -> list[int]:
        async with httpx2.AsyncClient(timeout=60, follow_redirects=False, trust_env=False) as c:
            page = await c.get(replicas.authorize_url(replicas.a.base_url))
            assert page.status_code == 200, page.text
            form = next(f for f in parse_forms(page.text) if f.method == "post")
            fields = {i.name: i.value for i in form.inputs if i.name}
            fields["username"] = "demo"

            async def attempt(n: int) -> int:
                base = (replicas.a, replicas.b)[n % 2].base_url
                data = {**fields, "password": f"wrong-{n}"}
                answer = await c.post(base + form.action, data=data)
                return answer.status_code

            return list(await asyncio.gather(*(attempt(n) for n in range(attempts))))

    statuses = asyncio.run(race())
    checked = statuses.count(401)  # the password was checked and refused
    assert set(statuses) <= {401, 429}, statuses
    assert checked <= 5, f"{checked} of {attempts} concurrent guesses were checked: {statuses}"
