"""The key cache against a real JWKS server on loopback (uvicorn), time from a FakeClock.

Fetches are counted on the server. Time never passes by sleeping: the clock is moved by
hand, and a test waits only for a background fetch to finish (``wait_idle``).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import os
import select
import signal
import stat
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from jwtmcp.errors import ConfigError, TokenError
from jwtmcp.jwks import JwksError, JwksPolicy, parse_jwks, parse_max_age
from jwtmcp.keys import KeyRing, generate_key, load_ring, revoke_key, rotate_ring
from jwtmcp.tokens import SigningKey, mint
from jwtmcp.verifier import Verifier
from tests.jwks_support import AUDIENCE, ISSUER, JwksServer, claims, header, jws, weak_jwk
from tests.support import FakeClock, free_port

MAX_AGE = 300


@pytest.fixture
def server(ring: KeyRing) -> Iterator[JwksServer]:
    srv = JwksServer(ring.jwks(), cache_control=f"public, max-age={MAX_AGE}")
    with srv.running():
        yield srv


def make_verifier(url: str, clock: FakeClock, **options: Any) -> Verifier:
    options.setdefault("fetch_timeout", 2.0)
    # One fake clock for both: the tests below move time by hand, and real time moves the
    # wall clock and the monotonic clock alike (the clock-step test gives its own).
    options.setdefault("monotonic", clock)
    verifier = Verifier(issuer=ISSUER, audience=AUDIENCE, jwks_url=url, clock=clock, **options)
    assert verifier.keys.wait_idle(10)  # type: ignore[attr-defined]
    return verifier


def token(key: SigningKey, clock: FakeClock, *, lifetime: int = 300, sub: str = "alice") -> str:
    return mint(key, issuer=ISSUER, subject=sub, audience=AUDIENCE, lifetime=lifetime, clock=clock)


def code_of(verifier: Verifier, tok: str) -> str:
    with pytest.raises(TokenError) as info:
        verifier.verify(tok)
    return info.value.code


# --- freshness ------------------------------------------------------------------------------


def test_known_kids_verify_with_one_fetch(ring: KeyRing, server: JwksServer, clock: FakeClock):
    with make_verifier(server.url, clock) as v:
        for i in range(20):
            assert v.verify(token(ring.active.signing_key, clock, sub=f"u{i}")).subject == f"u{i}"
        assert server.fetches == 1


def test_refresh_ahead_starts_after_80_percent_of_max_age_in_background(
    ring: KeyRing, server: JwksServer, clock: FakeClock
):
    with make_verifier(server.url, clock) as v:
        clock.advance(MAX_AGE * 0.79)
        v.verify(token(ring.active.signing_key, clock))
        assert v.keys.wait_idle(5) and server.fetches == 1  # type: ignore[attr-defined]
        clock.advance(MAX_AGE * 0.02)
        server.delay = 0.5  # the refresh is slow; the request must not wait for it
        started = time.monotonic()
        assert v.verify(token(ring.active.signing_key, clock)).subject == "alice"
        assert time.monotonic() - started < 0.4
        assert v.keys.wait_idle(5) and server.fetches == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("header_value", "seconds"),
    [
        (None, 300),
        ("max-age=600", 600),
        ("public, max-age=120, must-revalidate", 120),
        ("max-age=0", 60),
        ("max-age=5", 60),
        ("no-store", 60),
        ("no-cache, max-age=900", 60),
        ("max-age=999999999", 86400),
        ("max-age=99999999999999999999999999", 86400),
        ("private", 300),
        ('max-age="120"', 120),  # RFC 9111 5.2: accept the quoted-string form too
        ("MAX-AGE=600", 600),  # directive names are case-insensitive
        ("s-maxage=30, max-age=600", 600),  # s-maxage is for shared caches only
        ('no-cache="set-cookie", max-age=600', 600),  # qualified no-cache: fields only
        ('private, no-cache="a, b", max-age=600', 600),  # a comma inside a quoted argument
        # RFC 9111 4.2.1: invalid or conflicting freshness information means stale
        ("max-age=abc", 60),
        ("max-age=-5", 60),
        ("max-age=+600", 60),
        ("max-age=6e2", 60),
        ("max-age=\u0666\u0660\u0660", 60),  # Arabic-Indic digits are not delta-seconds
        ("max-age=600, max-age=900", 60),
        ('max-age="600', 60),  # an unterminated quoted-string
        ("max-age=600, no-store", 60),
    ],
)
def test_max_age_is_clamped(header_value: str | None, seconds: float) -> None:
    assert parse_max_age(header_value, JwksPolicy()) == seconds


def _http_date(epoch: float) -> str:
    return email.utils.formatdate(epoch, usegmt=True)


# (extra header lines, the freshness RFC 9111 4.2 gives them); "D" stands for the verifier's
# clock when the response arrives.
FRESHNESS_CASES: list[tuple[str, list[tuple[str, str]], float]] = [
    ("age-subtracted", [("Cache-Control", "max-age=300"), ("Age", "290")], 10),
    ("age-over-max-age", [("Cache-Control", "max-age=300"), ("Age", "400")], 1),
    ("age-invalid-ignored", [("Cache-Control", "max-age=300"), ("Age", "abc")], 300),
    ("age-negative-ignored", [("Cache-Control", "max-age=300"), ("Age", "-5")], 300),
    ("age-non-ascii-ignored", [("Cache-Control", "max-age=300"), ("Age", "\u0662\u0669\u0660")],
     300),
    ("age-list-first-member", [("Cache-Control", "max-age=300"), ("Age", "100, 200")], 200),
    ("age-two-lines-first", [("Cache-Control", "max-age=300"), ("Age", "100"), ("Age", "200")],
     200),
    ("date-in-the-past", [("Cache-Control", "max-age=300"), ("Date", "D-100")], 200),
    ("date-in-the-future", [("Cache-Control", "max-age=300"), ("Date", "D+100")], 300),
    ("date-and-age-larger-wins",
     [("Cache-Control", "max-age=300"), ("Date", "D-100"), ("Age", "50")], 200),
    ("date-invalid", [("Cache-Control", "max-age=300"), ("Date", "yesterday")], 300),
    ("expires-minus-date", [("Expires", "D+600"), ("Date", "D")], 600),
    ("expires-without-date", [("Expires", "D+600")], 600),
    ("expires-with-old-date", [("Expires", "D+400"), ("Date", "D-100")], 400),
    ("expires-zero-is-past", [("Expires", "0")], 1),
    ("expires-twice-is-stale", [("Expires", "D+600"), ("Expires", "D+900")], 1),
    ("max-age-beats-expires", [("Cache-Control", "max-age=300"), ("Expires", "D+10")], 300),
    ("s-maxage-ignored", [("Cache-Control", "s-maxage=30, max-age=300")], 300),
    ("no-cache", [("Cache-Control", "no-cache")], 1),
    ("two-cache-control-lines", [("Cache-Control", "public"), ("Cache-Control", "max-age=120")],
     120),
]


@pytest.mark.parametrize(
    ("lines", "seconds"),
    [(c[1], c[2]) for c in FRESHNESS_CASES],
    ids=[c[0] for c in FRESHNESS_CASES],
)
def test_freshness_follows_rfc_9111_age_date_and_expires(
    ring: KeyRing, clock: FakeClock, lines: list[tuple[str, str]], seconds: float
) -> None:
    """A floor of 1 s and refresh at 100 % expose the exact freshness: no fetch half a second
    before it ends, a fetch half a second after."""

    def value(text: str) -> str:
        if not text.startswith("D"):
            return text
        return _http_date(clock.now + float(text[1:] or 0))

    srv = JwksServer(ring.jwks(), cache_control=None)
    srv.extra_headers = [(name, value(text)) for name, text in lines]
    policy = JwksPolicy(fetch_timeout=2.0, min_max_age=1.0, refresh_ahead=1.0, refetch_cooldown=0)
    key = ring.active.signing_key
    with srv.running(), make_verifier(srv.url, clock, jwks_policy=policy) as v:
        clock.advance(seconds - 0.5)
        v.verify(token(key, clock))
        assert v.keys.wait_idle(5) and srv.fetches == 1  # type: ignore[attr-defined]
        clock.advance(1.0)
        v.verify(token(key, clock))
        assert v.keys.wait_idle(5) and srv.fetches == 2  # type: ignore[attr-defined]


def test_an_age_of_290_of_max_age_300_leaves_the_60_second_floor(
    ring: KeyRing, clock: FakeClock
) -> None:
    srv = JwksServer(ring.jwks(), cache_control="max-age=300")
    srv.extra_headers = [("Age", "290")]
    with srv.running(), make_verifier(srv.url, clock) as v:
        clock.advance(47)  # before 80 % of the 60 s floor: no refresh yet
        v.verify(token(ring.active.signing_key, clock))
        assert v.keys.wait_idle(5) and srv.fetches == 1  # type: ignore[attr-defined]
        clock.advance(2)  # 49 s > 48 s: refresh ahead (it would be 241 s if Age were ignored)
        v.verify(token(ring.active.signing_key, clock))
        assert v.keys.wait_idle(5) and srv.fetches == 2  # type: ignore[attr-defined]


def test_a_tiny_max_age_is_raised_to_the_minimum(ring: KeyRing, clock: FakeClock) -> None:
    srv = JwksServer(ring.jwks(), cache_control="max-age=5")
    with srv.running(), make_verifier(srv.url, clock) as v:
        clock.advance(47)  # past max-age=5 and the cooldown, before 80 % of the 60 s floor
        v.verify(token(ring.active.signing_key, clock))
        assert v.keys.wait_idle(5) and srv.fetches == 1  # type: ignore[attr-defined]
        clock.advance(2)  # 49 s > 48 s: refresh ahead
        v.verify(token(ring.active.signing_key, clock))
        assert v.keys.wait_idle(5) and srv.fetches == 2  # type: ignore[attr-defined]


# --- clocks: key-set age runs on the monotonic clock ------------------------------------------


def test_a_key_set_fetched_while_the_wall_clock_was_a_day_fast_expires_after_max_age(
    ring: KeyRing, server: JwksServer, clock: FakeClock
):
    mono = FakeClock(1000.0)  # the monotonic clock: only differences matter

    def elapse(seconds: float) -> None:  # real time passes: both clocks move
        clock.advance(seconds)
        mono.advance(seconds)

    with make_verifier(server.url, clock, monotonic=mono) as v:
        doomed = ring.active.signing_key
        clock.advance(86400)  # the wall clock steps a day ahead (a bad NTP source) ...
        elapse(31)
        new_key = _publish_new_key(ring, server, clock)
        assert v.verify(token(new_key, clock)).subject == "alice"  # ... during this fetch
        assert server.fetches == 2
        server.doc = {"keys": [server.doc["keys"][-1]]}  # the issuer revokes the old key
        clock.advance(-86400)  # the wall clock is corrected
        elapse(MAX_AGE + 1)  # one max-age of real time later, the old key must be gone
        assert code_of(v, token(doomed, clock)) == "unknown_kid"
        assert server.fetches == 3


# --- fork safety ------------------------------------------------------------------------------


def in_forked_child(
    work: Callable[[], object],
    *,
    in_parent: Callable[[], None] = lambda: None,
    timeout: float = 30.0,
) -> object:
    """Run ``work()`` in a child made by a real ``os.fork()`` and return what it returned
    (JSON over a pipe); a child that raised re-raises here as AssertionError. ``in_parent``
    runs in the parent right after the fork. The child always ends with ``os._exit``; one
    that does not answer within ``timeout`` s is killed by its PID."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads running
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 1
        try:
            os.close(read_fd)
            try:
                answer: dict[str, object] = {"result": work()}
            except BaseException as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write_fd, json.dumps(answer).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    data = b""
    try:
        in_parent()
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"the forked child did not answer within {timeout} s")
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_fd)
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    answer = json.loads(data)
    if "error" in answer:
        raise AssertionError(f"in the forked child: {answer['error']}")
    return answer["result"]


def test_a_verifier_built_before_fork_fetches_in_the_child(
    ring: KeyRing, server: JwksServer, clock: FakeClock
):
    old_key = ring.active.signing_key
    with make_verifier(server.url, clock) as v:
        new_key = _publish_new_key(ring, server, clock)

        def child() -> object:
            clock.advance(31)  # past the cooldown: a new kid may fetch
            first = v.verify(token(new_key, clock)).subject
            clock.advance(MAX_AGE + 1)  # past max-age: the set must be fetched again
            second = v.verify(token(old_key, clock, sub="bob")).subject
            return [first, second]

        assert in_forked_child(child) == ["alice", "bob"]
        assert server.fetches == 3  # the parent's first fetch, then the child's two
        assert v.verify(token(old_key, clock)).subject == "alice"  # the parent is unharmed
        assert server.fetches == 3


def test_a_fork_while_the_first_fetch_is_in_flight_fetches_again_in_the_child(
    ring: KeyRing, server: JwksServer, clock: FakeClock
):
    key = ring.active.signing_key
    server.gate.clear()  # the parent's first fetch stays in flight across the fork
    with Verifier(
        issuer=ISSUER, audience=AUDIENCE, jwks_url=server.url, clock=clock, monotonic=clock,
        fetch_timeout=2.0,
    ) as v:
        result = in_forked_child(
            lambda: v.verify(token(key, clock)).subject, in_parent=server.gate.set
        )
        assert result == "alice"
        assert v.keys.wait_idle(10)  # type: ignore[attr-defined]
        assert v.verify(token(key, clock)).subject == "alice"
        assert server.fetches == 2


def test_a_fork_while_another_thread_holds_the_verified_cache_lock_verifies_in_the_child(
    ring: KeyRing, server: JwksServer, clock: FakeClock
):
    # A thread of the parent is inside the verified-token cache when another thread forks:
    # the child's copy of that lock is held by a thread that does not exist there.
    key = ring.active.signing_key
    with make_verifier(server.url, clock) as v:
        v.verify(token(key, clock))
        lock = v._verified_lock
        lock.acquire()
        try:
            result = in_forked_child(lambda: v.verify(token(key, clock, sub="bob")).subject,
                                     timeout=10)
        finally:
            lock.release()
        assert result == "bob"


# --- acceptance 3: a misbehaving JWKS server -------------------------------------------------


@pytest.mark.parametrize("mode", ["500", "hang", "garbage", "huge", "weak"])
def test_known_kids_survive_a_misbehaving_server_through_the_stale_window(
    ring: KeyRing, server: JwksServer, clock: FakeClock, mode: str
):
    key = ring.active.signing_key
    with make_verifier(server.url, clock, fetch_timeout=0.5) as v:
        assert v.verify(token(key, clock)).subject == "alice"
        server.mode = mode
        # Refresh ahead fails in the background; the known kid keeps verifying.
        clock.advance(250)
        assert v.verify(token(key, clock)).subject == "alice"
        assert v.keys.wait_idle(5)  # type: ignore[attr-defined]
        assert v.keys.last_error  # type: ignore[attr-defined]
        failed_fetches = server.fetches
        # Past max-age, through the whole default stale window (24 h): still verifying,
        # with background retries at most once per cooldown.
        for step in (100, 3600, 40000, 42000, 749):
            clock.advance(step)
            assert v.verify(token(key, clock)).subject == "alice"
            v.keys.wait_idle(5)  # type: ignore[attr-defined]
        assert clock.now - 1_800_000_000.0 == 86699  # stale_until = 300 + 86400
        assert server.fetches <= failed_fetches + 5
        # After the stale window: a clean keys_unavailable, for sync and async callers.
        clock.advance(2)
        assert code_of(v, token(key, clock)) == "keys_unavailable"
        with pytest.raises(TokenError) as info:
            asyncio.run(v.verify_async(token(key, clock)))
        assert info.value.code == "keys_unavailable"
        # The server recovers: the next allowed fetch brings the keys back.
        server.mode = "ok"
        clock.advance(31)
        assert v.verify(token(key, clock)).subject == "alice"


def test_a_body_over_the_cap_is_abandoned(ring: KeyRing, server: JwksServer, clock: FakeClock):
    server.mode = "huge"
    with make_verifier(server.url, clock) as v:
        assert "limit" in (v.keys.last_error or "")  # type: ignore[attr-defined]
        assert code_of(v, token(ring.active.signing_key, clock)) == "keys_unavailable"


def test_a_set_of_only_weak_keys_is_a_failed_fetch(
    ring: KeyRing, server: JwksServer, clock: FakeClock
):
    server.mode = "weak"
    with make_verifier(server.url, clock) as v:
        assert "no usable" in (v.keys.last_error or "")  # type: ignore[attr-defined]


# --- recovery after failed fetches ----------------------------------------------------------


def test_a_down_issuer_is_retried_with_backoff_doubling_from_1_s_to_the_cooldown(
    ring: KeyRing, clock: FakeClock
) -> None:
    url = f"http://127.0.0.1:{free_port()}/jwks"  # nothing listens: connection refused
    key = ring.active.signing_key
    with make_verifier(url, clock) as v:
        cache = v.keys
        assert cache.last_error and cache.fetch_count == 1  # type: ignore[attr-defined]
        for attempt, delay in enumerate([1, 2, 4, 8, 16, 30, 30], start=2):
            clock.advance(delay - 0.2)
            assert code_of(v, token(key, clock)) == "keys_unavailable"
            assert cache.fetch_count == attempt - 1, delay  # type: ignore[attr-defined]
            clock.advance(0.3)
            assert code_of(v, token(key, clock)) == "keys_unavailable"
            assert cache.fetch_count == attempt, delay  # type: ignore[attr-defined]


def test_an_issuer_that_comes_up_late_is_used_within_seconds_by_one_shared_fetch(
    ring: KeyRing, clock: FakeClock
) -> None:
    port = free_port()
    key = ring.active.signing_key
    with make_verifier(f"http://127.0.0.1:{port}/jwks", clock) as v:
        assert v.keys.last_error  # type: ignore[attr-defined]  # the issuer is not up yet
        srv = JwksServer(ring.jwks(), cache_control=f"max-age={MAX_AGE}")
        with srv.running(port=port):
            srv.delay = 0.3  # every request below arrives while the one fetch is in flight
            clock.advance(1.1)  # a second after the failure, not the 30 s cooldown
            with ThreadPoolExecutor(20) as pool:
                subjects = list(
                    pool.map(lambda i: v.verify(token(key, clock, sub=f"u{i}")).subject, range(20))
                )
            assert subjects == [f"u{i}" for i in range(20)]
            assert srv.fetches == 1
            # Once the issuer answers, flood protection is back to the full cooldown.
            bogus = jws(header("bogus"), claims(clock.now), ring.active.private_key)
            clock.advance(1.1)
            assert code_of(v, bogus) == "unknown_kid"
            assert srv.fetches == 1


# --- acceptance 4: floods and concurrency ------------------------------------------------------


def test_a_burst_of_random_kids_costs_at_most_two_fetches(
    ring: KeyRing, server: JwksServer, clock: FakeClock
):
    key = ring.active.private_key
    with make_verifier(server.url, clock) as v:
        clock.advance(31)  # the cooldown after the first fetch has passed
        tokens = [jws(header(f"random-{i}"), claims(clock.now), key) for i in range(300)]

        async def burst() -> list[Any]:
            return await asyncio.gather(
                *(v.verify_async(t) for t in tokens), return_exceptions=True
            )

        results = asyncio.run(burst())
        assert all(isinstance(r, TokenError) and r.code == "unknown_kid" for r in results)
        with ThreadPoolExecutor(8) as pool:
            thread_results = list(pool.map(lambda t: code_of(v, t), tokens))
        assert set(thread_results) == {"unknown_kid"}
        assert server.fetches <= 2
        assert v.verify(token(ring.active.signing_key, clock)).subject == "alice"


def _publish_new_key(ring: KeyRing, server: JwksServer, clock: FakeClock) -> SigningKey:
    new = generate_key("next", clock.now)
    server.doc = {"keys": [*server.doc["keys"], new.public_jwk()]}
    return new.signing_key


def test_fifty_concurrent_async_requests_for_a_new_kid_cause_exactly_one_fetch(
    ring: KeyRing, server: JwksServer, clock: FakeClock
):
    with make_verifier(server.url, clock) as v:
        new_key = _publish_new_key(ring, server, clock)
        clock.advance(31)
        server.delay = 0.3  # every request arrives while the one fetch is in flight
        before = server.fetches
        tokens = [token(new_key, clock, sub=f"u{i}") for i in range(50)]

        async def gather() -> list[Any]:
            return await asyncio.gather(*(v.verify_async(t) for t in tokens))

        results = asyncio.run(gather())
        assert [r.subject for r in results] == [f"u{i}" for i in range(50)]
        assert server.fetches - before == 1


def test_fifty_concurrent_threads_for_a_new_kid_cause_exactly_one_fetch(
    ring: KeyRing, server: JwksServer, clock: FakeClock
):
    with make_verifier(server.url, clock) as v:
        new_key = _publish_new_key(ring, server, clock)
        clock.advance(31)
        server.delay = 0.3
        before = server.fetches
        tokens = [token(new_key, clock, sub=f"u{i}") for i in range(50)]
        barrier = threading.Barrier(50)

        def call(t: str) -> str:
            barrier.wait(10)
            return v.verify(t).subject

        with ThreadPoolExecutor(50) as pool:
            subjects = list(pool.map(call, tokens))
        assert subjects == [f"u{i}" for i in range(50)]
        assert server.fetches - before == 1


def test_waiting_for_a_fetch_never_blocks_the_event_loop(
    ring: KeyRing, server: JwksServer, clock: FakeClock
):
    with make_verifier(server.url, clock) as v:
        new_key = _publish_new_key(ring, server, clock)
        clock.advance(31)
        server.delay = 0.5
        ticks = 0

        async def ticker(stop: asyncio.Event) -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        async def main() -> str:
            stop = asyncio.Event()
            task = asyncio.create_task(ticker(stop))
            claims = await v.verify_async(token(new_key, clock))
            stop.set()
            await task
            return claims.subject

        assert asyncio.run(main()) == "alice"
        assert ticks >= 10  # the loop kept running while the fetch took 0.5 s


def test_an_unknown_kid_is_remembered_and_refetches_respect_the_cooldown(
    ring: KeyRing, server: JwksServer, clock: FakeClock
):
    key = ring.active.private_key
    with make_verifier(server.url, clock) as v:
        bogus = jws(header("bogus"), claims(clock.now), key)
        assert code_of(v, bogus) == "unknown_kid"  # within the cooldown: no fetch
        assert server.fetches == 1
        clock.advance(31)
        assert code_of(v, bogus) == "unknown_kid"  # one refetch, still unknown
        assert server.fetches == 2
        clock.advance(31)  # cooldown over, but "bogus" is remembered for 60 s
        assert code_of(v, jws(header("bogus"), claims(clock.now), key)) == "unknown_kid"
        assert server.fetches == 2
        assert code_of(v, jws(header("other"), claims(clock.now), key)) == "unknown_kid"
        assert server.fetches == 3


# --- acceptance 5: rotation and revocation ---------------------------------------------------


def test_rotation_next_key_needs_no_fetch_and_a_new_kid_one_refetch(
    ring: KeyRing, ring_dir: Path, server: JwksServer, clock: FakeClock
):
    with make_verifier(server.url, clock) as v:
        assert ring.next is not None
        assert v.verify(token(ring.next.signing_key, clock)).subject == "alice"
        assert server.fetches == 1  # the pre-published next key: no fetch at all
        clock.advance(60)
        rotated = rotate_ring(ring_dir, clock=clock)
        server.doc = rotated.jwks()
        assert rotated.active.kid == ring.next.kid
        assert v.verify(token(rotated.active.signing_key, clock)).subject == "alice"
        assert server.fetches == 1
        # A kid never seen before (the new next key): exactly one refetch, then it verifies.
        assert rotated.next is not None
        assert v.verify(token(rotated.next.signing_key, clock)).subject == "alice"
        assert server.fetches == 2
        assert v.verify(token(rotated.next.signing_key, clock, sub="bob")).subject == "bob"
        assert server.fetches == 2


def test_a_revoked_kid_stops_verifying_within_one_max_age_cached_tokens_included(
    ring: KeyRing, ring_dir: Path, server: JwksServer, clock: FakeClock
):
    with make_verifier(server.url, clock) as v:
        doomed = ring.active.kid
        reused = token(ring.active.signing_key, clock, lifetime=3600)
        assert v.verify(reused).subject == "alice"
        assert v.verify(reused).subject == "alice"  # now served from the verified cache
        server.doc = revoke_key(ring_dir, doomed, clock=clock).jwks()
        # No request until the key set is past its max-age: the first request waits for
        # the refresh, so the revoked key is refused at once.
        clock.advance(MAX_AGE + 1)
        assert code_of(v, reused) == "unknown_kid"
        assert server.fetches == 2
        survivor = load_ring(ring_dir).active.signing_key
        assert v.verify(token(survivor, clock)).subject == "alice"


def test_a_revoked_kid_drops_out_at_the_refresh_ahead(
    ring: KeyRing, ring_dir: Path, server: JwksServer, clock: FakeClock
):
    with make_verifier(server.url, clock) as v:
        reused = token(ring.active.signing_key, clock, lifetime=3600)
        assert v.verify(reused).subject == "alice"
        server.doc = revoke_key(ring_dir, ring.active.kid, clock=clock).jwks()
        clock.advance(MAX_AGE * 0.85)
        v.verify(reused)  # answered from the current set; the refresh runs meanwhile
        assert v.keys.wait_idle(5)  # type: ignore[attr-defined]
        assert code_of(v, reused) == "unknown_kid"
        assert server.fetches == 2


def test_a_key_replaced_under_the_same_kid_invalidates_cached_tokens(
    ring: KeyRing, server: JwksServer, clock: FakeClock
):
    with make_verifier(server.url, clock) as v:
        reused = token(ring.active.signing_key, clock, lifetime=3600)
        v.verify(reused)
        other = generate_key("next", clock.now).public_jwk()
        other["kid"] = ring.active.kid  # an issuer reusing a kid for another key
        server.doc = {"keys": [other]}
        clock.advance(MAX_AGE + 1)
        assert code_of(v, reused) == "bad_signature"


# --- acceptance 6: the cache file -----------------------------------------------------------


def test_a_restart_with_the_issuer_down_verifies_from_the_cache_file(
    ring: KeyRing, clock: FakeClock, tmp_path: Path
):
    (tmp_path / "cache").mkdir(mode=0o700)
    cache = tmp_path / "cache" / "jwks-cache.json"
    srv = JwksServer(ring.jwks())
    with srv.running() as url, make_verifier(url, clock, cache_file=cache) as first:
        first.verify(token(ring.active.signing_key, clock))
    assert json.loads(cache.read_text())["jwks"] == ring.jwks()
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temp files left
    clock.advance(600)  # the cached set is past its max-age: stale but usable
    # The server is gone (connection refused); a fresh verifier verifies at once.
    with Verifier(
        issuer=ISSUER, audience=AUDIENCE, jwks_url=url, clock=clock, cache_file=cache
    ) as second:
        assert second.verify(token(ring.active.signing_key, clock)).subject == "alice"
        assert second.keys.wait_idle(10)  # type: ignore[attr-defined]
        assert second.keys.last_error  # the background refresh failed...  # type: ignore
        assert second.verify(token(ring.active.signing_key, clock)).subject == "alice"


def test_a_cache_file_is_ignored_when_foreign_corrupt_or_too_old(
    ring: KeyRing, clock: FakeClock, tmp_path: Path
):
    cache = tmp_path / "c.json"
    srv = JwksServer(ring.jwks())
    with srv.running() as url, make_verifier(url, clock, cache_file=cache):
        pass
    good = cache.read_text()

    def fresh_code() -> str:
        with Verifier(
            issuer=ISSUER, audience=AUDIENCE, jwks_url=url, clock=clock, cache_file=cache,
            fetch_timeout=1.0,
        ) as v:
            return code_of(v, token(ring.active.signing_key, clock))

    cache.write_text(good.replace(url, url + "?other"))
    assert fresh_code() == "keys_unavailable"
    cache.write_text(good[:50])
    assert fresh_code() == "keys_unavailable"
    cache.write_text(good)
    clock.advance(MAX_AGE + 86400 + 1)
    assert fresh_code() == "keys_unavailable"


# --- trust in the cache file (as SSH trusts authorized_keys) -----------------------------------

OTHER_UID = 65534  # "nobody"


def _written_cache_file(ring: KeyRing, clock: FakeClock, tmp_path: Path) -> tuple[Path, str]:
    """A cache file written by a verifier, and the URL of its JWKS server, now stopped."""
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    cache = directory / "jwks-cache.json"
    srv = JwksServer(ring.jwks())
    with srv.running() as url, make_verifier(url, clock, cache_file=cache):
        pass
    return cache, url


def _code_with_the_issuer_down(ring: KeyRing, clock: FakeClock, url: str, cache: Path) -> str:
    with Verifier(
        issuer=ISSUER, audience=AUDIENCE, jwks_url=url, clock=clock, cache_file=cache,
        fetch_timeout=1.0,
    ) as v:
        try:
            return v.verify(token(ring.active.signing_key, clock)).subject
        except TokenError as exc:
            return exc.code


def _refusals_with_the_issuer_down(
    ring: KeyRing, clock: FakeClock, url: str, cache: Path, caplog: pytest.LogCaptureFixture
) -> tuple[str, list[str]]:
    """:func:`_code_with_the_issuer_down` and the "refusing" log lines it caused."""
    with caplog.at_level("WARNING", logger="jwtmcp.jwks"):
        code = _code_with_the_issuer_down(ring, clock, url, cache)
    return code, [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]


def test_the_cache_file_is_written_0600(ring: KeyRing, clock: FakeClock, tmp_path: Path) -> None:
    cache, _url = _written_cache_file(ring, clock, tmp_path)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert cache.stat().st_uid == os.getuid()


@pytest.mark.parametrize(
    ("mode", "trusted"),
    [(0o600, True), (0o644, True), (0o620, False), (0o602, False), (0o666, False)],
    ids=["0600", "0644", "0620", "0602", "0666"],
)
def test_a_group_or_world_writable_cache_file_is_refused_with_a_log_line(
    ring: KeyRing, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    mode: int, trusted: bool,
) -> None:
    cache, url = _written_cache_file(ring, clock, tmp_path)
    cache.chmod(mode)
    code, refusals = _refusals_with_the_issuer_down(ring, clock, url, cache, caplog)
    if trusted:
        assert (code, refusals) == ("alice", [])
    else:
        assert code == "keys_unavailable"
        assert len(refusals) == 1 and str(cache) in refusals[0], refusals
        assert "writable by group or others" in refusals[0]
        assert f"{mode:04o}" in refusals[0]


@pytest.mark.parametrize(
    ("mode", "trusted"),
    [(0o700, True), (0o1777, True), (0o770, False), (0o777, False)],
    ids=["0700", "1777", "0770", "0777"],
)
def test_a_cache_file_in_a_directory_others_may_write_is_refused(
    ring: KeyRing, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    mode: int, trusted: bool,
) -> None:
    """Whoever may write the directory may replace the file: refused unless the directory
    is sticky (like /tmp, where others cannot replace a file they do not own)."""
    cache, url = _written_cache_file(ring, clock, tmp_path)
    cache.parent.chmod(mode)
    code, refusals = _refusals_with_the_issuer_down(ring, clock, url, cache, caplog)
    if trusted:
        assert (code, refusals) == ("alice", [])
    else:
        assert code == "keys_unavailable"
        assert len(refusals) == 1 and str(cache.parent) in refusals[0], refusals


@pytest.mark.skipif(os.getuid() != 0, reason="making a file another user owns needs root")
@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_cache_file_owned_by_another_user_is_refused(
    ring: KeyRing, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    what: str,
) -> None:
    cache, url = _written_cache_file(ring, clock, tmp_path)
    os.chown(cache if what == "file" else cache.parent, OTHER_UID, OTHER_UID)
    code, refusals = _refusals_with_the_issuer_down(ring, clock, url, cache, caplog)
    assert code == "keys_unavailable"
    assert len(refusals) == 1 and f"uid {OTHER_UID}" in refusals[0], refusals


def test_a_cache_file_that_is_a_fifo_is_refused_without_blocking(
    ring: KeyRing, clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache, url = _written_cache_file(ring, clock, tmp_path)
    cache.unlink()
    os.mkfifo(cache, 0o600)  # reading it would wait for a writer forever
    with caplog.at_level("WARNING", logger="jwtmcp.jwks"):
        assert _code_with_the_issuer_down(ring, clock, url, cache) == "keys_unavailable"
    assert any("not a regular file" in r.getMessage() for r in caplog.records)


# --- parsing the set --------------------------------------------------------------------------


def test_unusable_keys_are_skipped_without_failing_the_set(ring: KeyRing) -> None:
    good = ring.active.public_jwk()
    other = ring.next.public_jwk()  # type: ignore[union-attr]
    doc = {
        "keys": [
            {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "ec"},
            {**other, "use": "enc", "kid": "enc"},
            weak_jwk(),
            {k: v for k, v in other.items() if k != "kid"},
            {**other, "kid": "hmac", "alg": "HS256"},
            {**other, "kid": "ops", "key_ops": ["encrypt"]},
            {**other, "kid": "private", "d": "AAAA"},
            {**other, "kid": "twice"},
            {**good, "kid": "twice"},
            {**other, "kid": "bad-n", "n": "!!"},
            {**other, "kid": "even-e", "e": "Ag"},
            "not an object",
            good,
        ]
    }
    assert list(parse_jwks(json.dumps(doc))) == [good["kid"]]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"keys": {}}',
        b'{"keys": [], "keys": []}',
        json.dumps({"keys": [{"kty": "RSA"}] * 101}).encode(),
        b'{"keys": [' * 5000,
    ],
)
def test_an_unusable_set_is_refused_as_a_whole(body: bytes) -> None:
    with pytest.raises(JwksError):
        parse_jwks(body)


def test_plain_http_is_refused_for_non_loopback_hosts() -> None:
    with pytest.raises(ConfigError):
        Verifier(issuer=ISSUER, audience=AUDIENCE, jwks_url="http://issuer.example/jwks")
    with pytest.raises(ConfigError):
        Verifier(issuer=ISSUER, audience=AUDIENCE, jwks_url="ftp://127.0.0.1/jwks")


def test_a_closed_verifier_refuses_cleanly(ring: KeyRing, server: JwksServer, clock: FakeClock):
    v = make_verifier(server.url, clock)
    v.close()
    clock.advance(MAX_AGE + 1)
    assert code_of(v, token(ring.active.signing_key, clock)) == "keys_unavailable"
