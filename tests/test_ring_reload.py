"""A running issuer's ring reloads with keys in KMS (a background-mode RingWatcher).

A change made by another process (``jwtmcp keys rotate/revoke``) must take effect at the
next check even while the new ``next`` key's public key is still being read from KMS (slow,
failing); only a new key that signs waits for its public key. Real servers on loopback
only: moto's KMS server behind a misbehaving proxy, the issuer on uvicorn, ``jwtmcp keys``
as another process. Time between retries comes from an injected clock; every wait is
bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from jwtmcp.keys import KeyRing, RingWatcher, init_ring
from tests.custody_support import AWS_TEST_ENV
from tests.support import FakeClock
from tests.test_attack_custody import MisbehavingKmsProxy
from tests.test_remote_signing import GET_PUBLIC_KEY_TARGET, WAIT, _issuer, kms_behind

_DENIED = (
    400,
    {"Content-Type": "application/x-amz-json-1.1"},
    b'{"__type": "AccessDeniedException", "message": "not now"}',
)


@pytest.fixture(scope="module")
def kms_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MisbehavingKmsProxy]:
    with kms_behind(MisbehavingKmsProxy, tmp_path_factory.mktemp("moto-reload")) as proxy:
        yield proxy


def _keys_cli(ring: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jwtmcp", "keys", *args, "--keys", str(ring)],
        env={**os.environ, **AWS_TEST_ENV}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def _states(ring: Path) -> dict[str, str]:
    state = json.loads((ring / "ring.json").read_text())
    return {k["kid"]: k["state"] for k in state["keys"]}


def _kid_in(states: dict[str, str], wanted: str) -> str:
    (kid,) = [k for k, s in states.items() if s == wanted]
    return kid


@pytest.mark.parametrize("change", ["rotate", "revoke-next"])
def test_a_rotation_or_revocation_applies_at_once_while_the_new_next_key_is_read_from_kms(
    kms_proxy: MisbehavingKmsProxy, tmp_path: Path, change: str
) -> None:
    """Another process rotates (the known next key must sign at once) or revokes the next
    key (it must leave the JWKS at once); either makes a new next key whose public key the
    issuer reads while KMS holds GetPublicKey. Once KMS answers, the new key joins."""
    with _issuer(tmp_path, kms_proxy, reload_interval=0) as world:
        before = world.http.get("/healthz").json()
        old_active, old_next = before["active_kid"], before["next_kid"]
        if change == "rotate":
            _keys_cli(world.ring_dir, "rotate")
            expected_active, gone = old_next, None
        else:
            _keys_cli(world.ring_dir, "revoke", old_next)
            expected_active, gone = old_active, old_next
        new_next = _kid_in(_states(world.ring_dir), "next")
        with kms_proxy.holding(GET_PUBLIC_KEY_TARGET) as hold:
            world.http.get("/healthz")  # notices the change; the new next key is read
            assert hold.arrived.wait(WAIT), "the reload never asked KMS for the public key"
            kids = [k["kid"] for k in world.http.get("/.well-known/jwks.json").json()["keys"]]
            active = world.http.get("/healthz").json()["active_kid"]
            answer = world.http.post(
                "/token",
                data={"grant_type": "client_credentials"},
                auth=("machine", world.machine_secret),
            )
        signed_by = (
            jwt.get_unverified_header(answer.json()["access_token"])["kid"]
            if answer.status_code == 200
            else f"{answer.status_code} {answer.text[:80]}"
        )
        deadline = time.monotonic() + WAIT
        while world.http.get("/healthz").json()["next_kid"] != new_next:
            assert time.monotonic() < deadline, "the new next key never joined the ring"
        joined = [k["kid"] for k in world.http.get("/.well-known/jwks.json").json()["keys"]]
    assert (active, signed_by) == (expected_active, expected_active), kids
    assert gone not in kids, f"revoked {gone} still published while KMS was held: {kids}"
    if change == "rotate":
        assert old_active in kids  # retired, still published for the tokens it signed
    assert new_next not in kids and new_next in joined


def test_a_new_next_key_kms_cannot_read_is_retried_every_5_seconds_and_joins_later(
    kms_proxy: MisbehavingKmsProxy, tmp_path: Path
) -> None:
    """While KMS refuses GetPublicKey the revocation is served at once, /healthz is stale
    with one logged reason, KMS is not asked again before 5 s (injected clock) have passed,
    and once it answers the new next key joins the ring."""
    ring_dir = tmp_path / "keys"
    init_ring(ring_dir, backend="kms", backend_settings={
        "endpoint_url": kms_proxy.url, "region": "us-east-1", "timeout": 120})  # fmt: skip
    clock = FakeClock(0.0)
    errors: list[str] = []
    watcher = RingWatcher(
        ring_dir, interval=0, monotonic=clock, on_error=errors.append, background=True
    )
    revoked = watcher.current().active.kid
    _keys_cli(ring_dir, "revoke", revoked)
    states = _states(ring_dir)
    promoted, new_next = _kid_in(states, "active"), _kid_in(states, "next")
    asked = {"n": 0}

    def refuse(target: str, body: bytes) -> Any:
        if target != GET_PUBLIC_KEY_TARGET:
            return None
        asked["n"] += 1
        return _DENIED

    def wait_for(what: str, ready: Any) -> KeyRing:
        deadline = time.monotonic() + WAIT
        while True:
            ring = watcher.current()
            if ready(ring):
                return ring
            assert time.monotonic() < deadline, what

    with kms_proxy.answering(refuse):
        served = watcher.current()
        wait_for("the failed read was never reported", lambda _: watcher.last_error is not None)
        clock.advance(4.9)
        for _ in range(20):
            watcher.current()
        asked_before_5s = asked["n"]
    assert (served.active.kid, served.get(revoked), served.next) == (promoted, None, None)
    assert len(errors) == 1 and "AccessDeniedException" in errors[0], errors
    assert asked_before_5s == 1, f"KMS asked {asked_before_5s} times within 5 s"
    clock.advance(0.2)
    ring = wait_for("the new next key never joined", lambda r: r.next is not None)
    assert ring.next is not None and ring.next.kid == new_next
    assert (ring.active.kid, ring.get(revoked), watcher.last_error) == (promoted, None, None)


def test_a_new_active_key_not_read_yet_keeps_the_last_ring_until_kms_answers(
    kms_proxy: MisbehavingKmsProxy, tmp_path: Path
) -> None:
    """Two rotations by another process make an active key the issuer has never read: it
    must not sign (nor be published) before its public key is read, so the last ring keeps
    serving meanwhile, then the new one is served whole. (Holds before the fix too: the
    other side of the rule.)"""
    with _issuer(tmp_path, kms_proxy, reload_interval=0) as world:
        before = world.http.get("/healthz").json()
        _keys_cli(world.ring_dir, "rotate")
        _keys_cli(world.ring_dir, "rotate")
        states = _states(world.ring_dir)
        with kms_proxy.holding(GET_PUBLIC_KEY_TARGET) as hold:
            world.http.get("/healthz")
            assert hold.arrived.wait(WAIT), "the reload never asked KMS for the public key"
            while_held = world.http.get("/healthz").json()
        deadline = time.monotonic() + WAIT
        while world.http.get("/healthz").json()["active_kid"] != _kid_in(states, "active"):
            assert time.monotonic() < deadline, "the new ring was never served"
        kids = {k["kid"] for k in world.http.get("/.well-known/jwks.json").json()["keys"]}
    assert (while_held["active_kid"], while_held["next_kid"]) == (
        before["active_kid"],
        before["next_kid"],
    )
    assert kids == set(states)


@pytest.mark.parametrize("edit", ["swap-handles", "next-names-the-active-key"])
def test_a_ring_json_naming_a_known_kms_key_under_another_kid_is_refused_by_this_process(
    kms_proxy: MisbehavingKmsProxy, tmp_path: Path, edit: str
) -> None:
    """The process that made the keys (or read them once) must check every kid against its
    public key as a fresh process does: load_ring refuses a ring.json whose handles were
    swapped, or whose next key names the active key's handle, and a watcher (reloading in
    place) keeps its last good ring and says why."""
    from jwtmcp.errors import KeyRingError
    from jwtmcp.keys import load_ring

    ring_dir = tmp_path / "keys"
    made = init_ring(ring_dir, backend="kms", backend_settings={
        "endpoint_url": kms_proxy.url, "region": "us-east-1", "timeout": 120})  # fmt: skip
    clock = FakeClock(0.0)
    watcher = RingWatcher(ring_dir, interval=0, monotonic=clock)
    path = ring_dir / "ring.json"
    state = json.loads(path.read_text())
    by_state = {k["state"]: k for k in state["keys"]}
    active, nxt = by_state["active"], by_state["next"]
    if edit == "swap-handles":
        active["handle"], nxt["handle"] = nxt["handle"], active["handle"]
    else:
        nxt["handle"] = active["handle"]
    state["revision"] += 1
    path.write_text(json.dumps(state))
    with pytest.raises(KeyRingError, match="does not match its kid"):
        load_ring(ring_dir)
    served = watcher.current()
    assert served.jwks() == made.jwks()
    assert watcher.last_error is not None and "does not match its kid" in watcher.last_error


# --- a reload that fails with something other than a KeyRingError ---------------------------


class BrokenPublicKeyBackend:
    """A plugged-in key backend (entry point ``jwtmcp.key_backends``) with a bug: reading a
    public key raises a ``RuntimeError`` whose text spans two lines."""

    name = "broken-public"
    calls = 0

    def __init__(self, settings: Any) -> None:
        self._settings = dict(settings)

    def settings(self) -> dict[str, Any]:
        return self._settings

    def create_key(self, bits: int) -> Any:
        raise RuntimeError("not used")

    def public_key(self, handle: str) -> Any:
        BrokenPublicKeyBackend.calls += 1
        raise RuntimeError('plugin bug\n{"event": "forged"}')

    def signer(self, handle: str) -> Any:
        raise RuntimeError("not used")

    def destroy_key(self, handle: str) -> None:
        raise RuntimeError("not used")


def broken_open(settings: Any) -> Any:
    """A plugged-in backend whose factory rejects its settings with a ``ValueError``: it
    runs in the reload's in-place part (every ring load opens the keys' backends)."""
    raise ValueError("bad setting\nsecond line")


@pytest.mark.parametrize(
    ("backend", "kind"),
    [("broken-public", "RuntimeError"), ("broken-open", "ValueError")],
    ids=["reading-a-public-key-raises", "opening-the-backend-raises"],
)
def test_a_reload_failing_with_any_exception_keeps_the_last_ring_and_says_why_in_one_line(
    kms_proxy: MisbehavingKmsProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
    kind: str,
) -> None:
    """A ring.json moved to a plugged-in backend that fails with an exception that is not a
    KeyRingError: current() never raises, the last good ring keeps serving, on_error hears
    one line naming the exception (control characters escaped), and the background read
    is retried no more than every 5 s (injected clock)."""
    site = tmp_path / "site"
    dist = site / "broken_backends-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-backends\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[jwtmcp.key_backends]\n"
        "broken-public = tests.test_ring_reload:BrokenPublicKeyBackend\n"
        "broken-open = tests.test_ring_reload:broken_open\n"
    )
    monkeypatch.syspath_prepend(str(site))
    BrokenPublicKeyBackend.calls = 0
    ring_dir = tmp_path / "keys"
    made = init_ring(ring_dir, backend="kms", backend_settings={
        "endpoint_url": kms_proxy.url, "region": "us-east-1", "timeout": 120})  # fmt: skip
    clock = FakeClock(0.0)
    errors: list[str] = []
    watcher = RingWatcher(
        ring_dir, interval=0, monotonic=clock, on_error=errors.append, background=True
    )
    path = ring_dir / "ring.json"
    state = json.loads(path.read_text())
    for key in state["keys"]:
        key["backend"] = backend
    state["backend"], state["backends"] = backend, {backend: {"anything": 1}}
    state["revision"] += 1
    path.write_text(json.dumps(state))
    deadline = time.monotonic() + WAIT
    while watcher.last_error is None:
        served = watcher.current()
        assert time.monotonic() < deadline, "the failed reload was never reported"
    for _ in range(20):
        served = watcher.current()  # within 5 s: no new thread, no new line
    reads_within_5s = BrokenPublicKeyBackend.calls
    clock.advance(5.1)
    watcher.current()  # may retry now; the same reason is not logged again
    assert served.jwks() == made.jwks()
    assert len(errors) == 1, errors
    assert kind in errors[0] and "\n" not in errors[0], errors
    assert "did not finish" not in errors[0]
    # one read of the first key, then nothing until 5 s have passed
    assert reads_within_5s == (1 if backend == "broken-public" else 0)
