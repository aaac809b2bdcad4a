"""Attacks on keys in custody: signing in worker threads and background ring reloads.

Real servers on loopback only: moto's KMS server behind a small misbehaving proxy, the
issuer on uvicorn, ``jwtmcp keys`` as another process. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest

from jwtmcp.keys import jwk_thumbprint
from tests.custody_support import AWS_TEST_ENV
from tests.test_remote_signing import (
    GET_PUBLIC_KEY_TARGET,
    SIGN_TARGET,
    WAIT,
    HoldingKmsProxy,
    _issuer,
    kms_behind,
)

_HOP_BY_HOP = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}

# What a misbehaving proxy answers instead of forwarding: (status, headers, body) or None.
Answer = Callable[[str, bytes], Any]


class MisbehavingKmsProxy(HoldingKmsProxy):
    """A :class:`HoldingKmsProxy` whose ``answer`` hook may replace KMS's answer to a call
    (by its ``X-Amz-Target``) with anything."""

    def __init__(self, upstream: str) -> None:
        self.answer: Answer | None = None
        super().__init__(upstream)
        proxy = self
        inner = self.server.RequestHandlerClass

        class Handler(inner):  # type: ignore[misc, valid-type]
            def do_POST(self) -> None:
                hook = proxy.answer
                target = self.headers.get("X-Amz-Target", "")
                if hook is not None:
                    length = int(self.headers.get("Content-Length", "0"))
                    body = self.rfile.read(length)
                    replaced = hook(target, body)
                    if replaced == "drop":  # close the connection without an answer
                        self.close_connection = True
                        return
                    if replaced is not None:
                        status, headers, content = replaced
                        self.send_response(status)
                        for name, value in headers.items():
                            self.send_header(name, value)
                        self.send_header("Content-Length", str(len(content)))
                        self.end_headers()
                        self.wfile.write(content)
                        return
                    # forward what was read
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP
                    }
                    upstream = httpx2.post(
                        proxy.upstream + self.path, content=body, headers=headers, timeout=WAIT
                    )
                    self.send_response(upstream.status_code)
                    for name, value in upstream.headers.items():
                        if name.lower() not in _HOP_BY_HOP and name.lower() != "content-encoding":
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(upstream.content)))
                    self.end_headers()
                    self.wfile.write(upstream.content)
                    return
                super().do_POST()

        self.server.RequestHandlerClass = Handler

    @contextlib.contextmanager
    def answering(self, hook: Answer) -> Iterator[None]:
        self.answer = hook
        try:
            yield
        finally:
            self.answer = None


@pytest.fixture(scope="module")
def kms_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MisbehavingKmsProxy]:
    with kms_behind(MisbehavingKmsProxy, tmp_path_factory.mktemp("moto-attack")) as proxy:
        yield proxy


def _keys_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jwtmcp", "keys", *args],
        env={**os.environ, **AWS_TEST_ENV},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _kids(jwks: dict[str, Any]) -> list[str]:
    return [str(k["kid"]) for k in jwks["keys"]]


def _token(world: Any) -> httpx2.Response:
    return world.http.post(
        "/token",
        data={"grant_type": "client_credentials"},
        auth=("machine", world.machine_secret),
    )


def _token_requests(world: Any, count: int) -> tuple[list[Any], list[threading.Thread]]:
    """``count`` client_credentials requests, each on its own connection in its own thread
    (not started): ``answers[i]`` becomes request i's response, or the exception it raised."""
    answers: list[Any] = [None] * count

    def run(i: int) -> None:
        try:
            with httpx2.Client(base_url=str(world.http.base_url), timeout=5 * WAIT) as c:
                answers[i] = c.post(
                    "/token",
                    data={"grant_type": "client_credentials"},
                    auth=("machine", world.machine_secret),
                )
        except BaseException as exc:
            answers[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    return answers, threads


# --- a revoked key keeps being published (and used) while a reload waits on KMS ----------


def test_revoked_active_key_leaves_jwks_while_new_next_key_is_read_from_kms(
    kms_proxy: MisbehavingKmsProxy, tmp_path: Path
) -> None:
    """docs/keys.md: ``keys revoke KID`` "takes a key out of the ring and the JWKS at once";
    a running issuer "picks up ... a revocation within a second". With keys in KMS, revoking
    the active key makes a new ``next`` key whose public key the issuer has not read; while
    that read waits on KMS (slow, throttled, failing), the issuer keeps the last ring: the
    revoked key stays in the JWKS and keeps signing."""
    with _issuer(tmp_path, kms_proxy, reload_interval=0) as world:
        revoked = world.http.get("/healthz").json()["active_kid"]
        revoke = _keys_cli("revoke", revoked, "--keys", str(world.ring_dir))
        assert revoke.returncode == 0, revoke.stderr
        state = json.loads((world.ring_dir / "ring.json").read_text())
        (promoted,) = [k["kid"] for k in state["keys"] if k["state"] == "active"]
        with kms_proxy.holding(GET_PUBLIC_KEY_TARGET) as hold:
            world.http.get("/healthz")  # notices the change; the reload asks KMS
            assert hold.arrived.wait(WAIT), "the reload never asked KMS for the public key"
            # KMS answers everything else; only the new next key's public key is slow.
            seen: dict[str, Any] = {}
            for _ in range(3):  # a second or more after the revocation, several checks
                seen["jwks"] = _kids(world.http.get("/.well-known/jwks.json").json())
                seen["active_kid"] = world.http.get("/healthz").json()["active_kid"]
                answer = _token(world)
                seen["token"] = (
                    jwt.get_unverified_header(answer.json()["access_token"])["kid"]
                    if answer.status_code == 200
                    else f"{answer.status_code} {answer.text[:80]}"
                )
        assert revoked != promoted
        assert revoked not in seen["jwks"], f"revoked {revoked} still published: {seen}"
        assert seen["active_kid"] == promoted, seen
        assert seen["token"] == promoted, seen


# --- a KMS answering Sign with nonsense --------------------------------------------------


def test_kms_sign_answering_200_without_a_signature_is_503_not_500(
    kms_proxy: MisbehavingKmsProxy, tmp_path: Path
) -> None:
    """docs/key-custody.md: when KMS is "failing", /token answers 503 with Retry-After,
    "never a 500". A KMS (or a proxy on the way: a VPC endpoint, an egress gateway) that
    answers Sign with 200 and an empty JSON object is failing."""

    def empty_sign(target: str, body: bytes) -> tuple[int, dict[str, str], bytes] | None:
        if target != SIGN_TARGET:
            return None
        return 200, {"Content-Type": "application/x-amz-json-1.1"}, b"{}"

    with _issuer(tmp_path, kms_proxy) as world, kms_proxy.answering(empty_sign):
        answer = _token(world)
        healthz = world.http.get("/healthz").status_code
    assert (answer.status_code, answer.headers.get("retry-after")) == (503, "5"), (
        answer.status_code,
        answer.text[:200],
    )
    assert healthz == 200


# --- many token requests held inside KMS Sign at once ------------------------------------


def test_more_token_requests_than_signing_threads_held_in_kms_leave_the_issuer_answering(
    kms_proxy: MisbehavingKmsProxy, tmp_path: Path
) -> None:
    """docs/key-custody.md: at most 16 signatures at once per process; more requests wait
    for a free thread without blocking anything else; /healthz, the JWKS and the metadata
    keep answering."""
    from tests.test_remote_signing import ALWAYS_ANSWERING, _signed_by_jwks, _status_within_wait

    requests = 24
    inside = threading.Semaphore(0)
    count = {"in_sign": 0, "most": 0}
    lock = threading.Lock()
    released = threading.Event()

    def hold_sign(target: str, body: bytes) -> tuple[int, dict[str, str], bytes] | None:
        if target == SIGN_TARGET:
            with lock:
                count["in_sign"] += 1
                count["most"] = max(count["most"], count["in_sign"])
            inside.release()
            released.wait(5 * WAIT)
            with lock:
                count["in_sign"] -= 1
        return None

    with _issuer(tmp_path, kms_proxy) as world:
        answers, workers = _token_requests(world, requests)
        with kms_proxy.answering(hold_sign):
            try:
                for w in workers:
                    w.start()
                for _ in range(16):
                    assert inside.acquire(timeout=WAIT), f"fewer than 16 in Sign: {count}"
                while_held = {p: _status_within_wait(world.http, p) for p in ALWAYS_ANSWERING}
                most_while_held = count["most"]
            finally:
                released.set()
            for w in workers:
                w.join(5 * WAIT)
        jwks = world.http.get("/.well-known/jwks.json").json()
    assert while_held == dict.fromkeys(ALWAYS_ANSWERING, 200), while_held
    assert most_while_held == 16, count
    statuses = [a.status_code if isinstance(a, httpx2.Response) else repr(a) for a in answers]
    assert statuses == [200] * requests, statuses
    for answer in answers:
        _signed_by_jwks(answer.json()["access_token"], jwks)


# --- a running issuer must refuse a ring whose kid does not match its KMS key --------------


def test_ring_json_swapping_kms_handles_is_refused_by_a_running_issuer(
    kms_proxy: MisbehavingKmsProxy, tmp_path: Path
) -> None:
    """docs/key-custody.md: the public key from GetPublicKey gives the JWK; "its thumbprint
    must equal the kid in ring.json, or the ring refuses to load". A running issuer that
    already read both keys must refuse a ring.json whose handles were swapped (a bad edit,
    a wrong merge) as a fresh process does, not publish kids that are not thumbprints."""
    with _issuer(tmp_path, kms_proxy, reload_interval=0) as world:
        before = world.http.get("/.well-known/jwks.json").json()
        path = world.ring_dir / "ring.json"
        state = json.loads(path.read_text())
        first, second = state["keys"][0], state["keys"][1]
        first["handle"], second["handle"] = second["handle"], first["handle"]
        state["revision"] += 1
        path.write_text(json.dumps(state))
        fresh = _keys_cli("list", "--keys", str(world.ring_dir))
        health = world.http.get("/healthz").json()
        after = world.http.get("/.well-known/jwks.json").json()
    assert fresh.returncode != 0, "a fresh process accepted the swapped ring"
    wrong = [k["kid"] for k in after["keys"] if jwk_thumbprint(k) != k["kid"]]
    assert (health["ring"], wrong) == ("stale", []), (health, wrong, fresh.stderr.strip())
    assert after == before


# --- a request queued for a signing thread signs with a key revoked meanwhile --------------


@pytest.mark.parametrize(
    ("held", "queued"),
    [(1, 0), (16, 1)],
    ids=["revoked-while-kms-signs", "revoked-while-queued-for-a-signing-thread"],
)
def test_a_key_revoked_while_a_token_waits_for_its_signature_never_signs_a_token_handed_out(
    kms_proxy: MisbehavingKmsProxy, tmp_path: Path, held: int, queued: int
) -> None:
    """``held`` /token requests are inside a slow KMS ``Sign`` and ``queued`` more wait for
    a free signing thread (16 per process) when the active key is revoked and the issuer
    switches to the new ring. Every token handed out afterwards must be signed by a key the
    JWKS still publishes (or the answer is 503), never by the revoked one: neither a key
    picked before the request queued nor a signature KMS made while the key was revoked.
    With file keys neither can happen (they sign in place on the event loop)."""
    inside = threading.Semaphore(0)
    released = threading.Event()
    count = {"n": 0}
    lock = threading.Lock()

    def hold_the_first(target: str, body: bytes) -> tuple[int, dict[str, str], bytes] | None:
        if target == SIGN_TARGET:
            with lock:
                count["n"] += 1
                hold = count["n"] <= held
            if hold:
                inside.release()
                released.wait(5 * WAIT)
        return None

    with _issuer(tmp_path, kms_proxy, reload_interval=0) as world:
        revoked = world.http.get("/healthz").json()["active_kid"]
        answers, threads = _token_requests(world, held + queued)
        with kms_proxy.answering(hold_the_first):
            try:
                for thread in threads[:held]:
                    thread.start()
                for _ in range(held):
                    assert inside.acquire(timeout=WAIT), f"fewer than {held} requests in Sign"
                for thread in threads[held:]:
                    thread.start()  # waits for a signing thread
                # A request on another connection after them: the queued ones are (in
                # practice) in the issuer by then. Should one arrive after the reload, it
                # picks the new key: this race can only hide the fault, never fake it.
                assert world.http.get("/healthz").status_code == 200
                revoke = _keys_cli("revoke", revoked, "--keys", str(world.ring_dir))
                assert revoke.returncode == 0, revoke.stderr
                deadline = time.monotonic() + WAIT
                while world.http.get("/healthz").json()["active_kid"] == revoked:
                    assert time.monotonic() < deadline, "the revocation was never applied"
                jwks_after_revoke = _kids(world.http.get("/.well-known/jwks.json").json())
                assert revoked not in jwks_after_revoke
            finally:
                released.set()
            for thread in threads:
                thread.join(5 * WAIT)
    for i, answer in enumerate(answers):
        assert isinstance(answer, httpx2.Response), repr(answer)
        if answer.status_code != 200:
            assert answer.status_code == 503, answer.text
            continue
        kid = jwt.get_unverified_header(answer.json()["access_token"])["kid"]
        assert kid in jwks_after_revoke, (
            f"request {i}: token signed by {kid}, revoked before it was handed out, "
            f"not in the JWKS {jwks_after_revoke}"
        )


# --- a misconfigured KMS endpoint -----------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["not a url", "http://127.0.0.1:99999"])
def test_a_malformed_kms_endpoint_is_a_clear_one_line_error(tmp_path: Path, endpoint: str) -> None:
    """A misconfigured backend must be a clear one-line error (as a bad region or timeout
    is: "the kms key backend's 'timeout' must be ..."), never jwtmcp's catch-all
    "unexpected <Exception>" for a bug."""
    result = subprocess.run(
        [sys.executable, "-m", "jwtmcp", "keys", "init", "--keys", str(tmp_path / "keys"),
         "--backend", "kms", "--kms-endpoint-url", endpoint],
        env={**os.environ, **AWS_TEST_ENV}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1 and "unexpected" not in lines[0], lines


@pytest.mark.parametrize(
    "endpoint",
    [
        "ftp://127.0.0.1:4566",
        "http://",
        "http://127.0.0.1:0",
        "http://127.0.0.1:abc",
        "http://[::1",
        "127.0.0.1:4566",
        "http://user:secret@127.0.0.1:4566",
        "http://127.0.0.1:4566/?x=1",
        "http://127.0.0.1:4566\n",
    ],
    ids=["ftp", "no-host", "port-0", "port-not-a-number", "bad-ipv6", "no-scheme",
         "credentials", "query", "newline"],
)  # fmt: skip
def test_every_malformed_kms_endpoint_is_refused_naming_the_setting(
    tmp_path: Path, endpoint: str
) -> None:
    """The rest of the malformed-endpoint kind, from the command line and from a ring.json
    (the same settings): a scheme other than http/https, no host, a port outside 1-65535
    or not a number, no scheme, a user or password (credentials never come from the ring),
    a query, a control character. Each is one line naming ``endpoint_url``, before any
    KMS call, and never echoes the password."""
    from jwtmcp.errors import KeyRingError
    from jwtmcp.signers import open_backend

    with pytest.raises(KeyRingError) as raised:
        open_backend("kms", {"endpoint_url": endpoint, "region": "us-east-1"})
    assert "endpoint_url" in raised.value.message and "secret" not in raised.value.message
    assert "\n" not in raised.value.message
    result = _keys_cli("init", "--keys", str(tmp_path / "keys"), "--backend", "kms",
                       "--kms-endpoint-url", endpoint)  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1 and "endpoint" in lines[0] and "secret" not in lines[0], lines


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("pin_file", "/tmp/pin\0file"),
        ("pin_file", "/tmp/pin\nfile"),
        ("module", "/usr/lib/softhsm/libsofthsm2.so\0.so"),
        ("pin_env", "PIN=X"),
        ("pin_env", "PIN\0X"),
    ],
    ids=["pin-file-nul", "pin-file-newline", "module-nul", "pin-env-equals", "pin-env-nul"],
)
def test_a_malformed_pkcs11_path_or_variable_name_is_refused_naming_the_setting(
    setting: str, value: str
) -> None:
    """The PKCS#11 equivalent of a malformed endpoint: a path with a NUL or a control
    character (a NUL made ``keys`` fail with "unexpected ValueError: embedded null byte")
    or an environment variable name no environment can hold is refused when the backend is
    built from the ring's settings, with one line naming the setting."""
    from jwtmcp.errors import KeyRingError
    from jwtmcp.signers import open_backend

    settings = {"module": "/usr/lib/softhsm/libsofthsm2.so", "token": "jwtmcp", setting: value}
    with pytest.raises(KeyRingError) as raised:
        open_backend("pkcs11", settings)
    message = raised.value.message
    assert setting in message and "\n" not in message and "\0" not in message, message


# --- PKCS#11: token requests racing rotations and a revocation from another process -------


def test_pkcs11_tokens_racing_rotations_and_revocation_all_verify_and_ring_never_goes_back(
    tmp_path: Path,
) -> None:
    """`jwtmcp serve` with keys in SoftHSM2; 8 clients ask for tokens while another process
    rotates three times and revokes a `next` key. Every answer must be 200, every token
    must verify against the JWKS (no revoked key ever signed: only `next` keys are revoked
    here), healthz's ring_revision never goes back, and the log holds no traceback."""
    from jwtmcp.clients import add_client
    from tests.custody_support import make_softhsm
    from tests.support import issuer_process
    from tests.test_remote_signing import AUD, _signed_by_jwks

    hsm = make_softhsm(tmp_path / "hsm")
    env = {**os.environ, **hsm.env}
    ring = tmp_path / "issuer" / "keys"
    init = subprocess.run(
        [sys.executable, "-m", "jwtmcp", "keys", "init", "--keys", str(ring), *hsm.cli_flags()],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    _, secret = add_client(tmp_path / "issuer" / "clients.json", "machine", tools=["add"],
                           audiences=[AUD])  # fmt: skip

    def cli(*args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "jwtmcp", "keys", *args, "--keys", str(ring)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    with issuer_process(tmp_path / "issuer", env=hsm.env, args=["--rate-limit", "0"]) as running:
        stop = threading.Event()
        tokens: list[str] = []
        failures: list[str] = []
        revisions: list[int] = []

        def ask() -> None:
            with httpx2.Client(base_url=running.base_url, timeout=WAIT) as c:
                for _ in range(300):  # bounded; they stop once the key changes are done
                    if stop.is_set():
                        return
                    try:
                        answer = c.post("/token", data={"grant_type": "client_credentials"},
                                        auth=("machine", secret))  # fmt: skip
                    except httpx2.HTTPError as exc:
                        failures.append(repr(exc))
                        continue
                    if answer.status_code == 200:
                        tokens.append(answer.json()["access_token"])
                    else:
                        failures.append(f"{answer.status_code} {answer.text[:120]}")

        def watch() -> None:
            with httpx2.Client(base_url=running.base_url, timeout=WAIT) as c:
                while not stop.is_set():
                    try:
                        revisions.append(int(c.get("/healthz").json()["ring_revision"]))
                    except httpx2.HTTPError as exc:
                        failures.append("healthz " + repr(exc))

        askers = [threading.Thread(target=ask, daemon=True) for _ in range(8)]
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        for a in askers:
            a.start()
        try:
            for _ in range(3):
                cli("rotate")
            state = json.loads((ring / "ring.json").read_text())
            (nxt,) = [k["kid"] for k in state["keys"] if k["state"] == "next"]
            cli("revoke", nxt)
        finally:
            stop.set()
            for a in askers:
                a.join(6 * WAIT)
            watcher.join(WAIT)
        final = json.loads((ring / "ring.json").read_text())["revision"]
        deadline = time.monotonic() + WAIT
        with httpx2.Client(base_url=running.base_url, timeout=WAIT) as c:
            while c.get("/healthz").json()["ring_revision"] != final:
                assert time.monotonic() < deadline, "the final ring was never served"
            jwks = c.get("/.well-known/jwks.json").json()
        stderr = running.stderr()
    assert failures == [], failures[:5]
    assert all(b >= a for a, b in itertools.pairwise(revisions)), revisions
    unverified = []
    for token in tokens:
        try:
            _signed_by_jwks(token, jwks)
        except Exception as exc:
            unverified.append(f"{jwt.get_unverified_header(token)['kid']}: {exc!r}")
    assert unverified == [], unverified[:5]
    signed_by = {jwt.get_unverified_header(t)["kid"] for t in tokens}
    assert len(signed_by) >= 2, f"the requests did not overlap a rotation: {signed_by}"
    assert "Traceback" not in stderr, stderr[-2000:]


# --- a ring.json edited to a malformed KMS endpoint, picked up by a running issuer ----------


def test_running_issuer_reports_a_malformed_kms_endpoint_in_one_line_without_tracebacks(
    kms_proxy: MisbehavingKmsProxy, tmp_path: Path
) -> None:
    """docs/key-custody.md: if a reload fails "the running issuer keeps its last good ring
    and /healthz says "ring": "stale"", and the log says why. A ring.json whose KMS
    endpoint is malformed (a bad edit of the ConfigMap) must give that, with a reason,
    not a Python traceback from the background reload thread at every check."""
    from jwtmcp.keys import init_ring
    from tests.support import issuer_process

    directory = tmp_path / "issuer"
    ring = directory / "keys"
    init_ring(ring, backend="kms",
              backend_settings={"endpoint_url": kms_proxy.url, "region": "us-east-1"})  # fmt: skip
    with issuer_process(directory, env=AWS_TEST_ENV) as running:
        state = json.loads((ring / "ring.json").read_text())
        state["backends"]["kms"]["endpoint_url"] = "http://127.0.0.1:99999"
        state["revision"] += 1
        (ring / "ring.json").write_text(json.dumps(state))
        deadline = time.monotonic() + WAIT
        with httpx2.Client(base_url=running.base_url, timeout=WAIT) as c:
            while c.get("/healthz").json()["ring"] != "stale":
                assert time.monotonic() < deadline, "the bad ring was never reported"
            jwks = c.get("/.well-known/jwks.json").status_code
        stderr = running.stderr()
    assert jwks == 200
    assert "Traceback" not in stderr, stderr[-1500:]
    assert "did not finish" not in stderr, stderr[-1500:]


# --- a KMS answering Sign with another key's signature ---------------------------------------

_MOTO_AUTH = (
    "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/kms/aws4_request, "
    "SignedHeaders=host, Signature=x"
)


def _signing_with_another_key(
    kms_proxy: MisbehavingKmsProxy, given: list[str] | None = None
) -> Answer:
    """An ``answering`` hook that has every ``Sign`` made by a new, different KMS key
    (appending each signature KMS gave to ``given``); other calls go to KMS unchanged."""
    from tests.custody_support import kms_client

    other = kms_client(kms_proxy.upstream).create_key(  # type: ignore[attr-defined]
        KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY"
    )["KeyMetadata"]["KeyId"]

    def other_key(target: str, body: bytes) -> Any:
        if target != SIGN_TARGET:
            return None
        request = json.loads(body)
        request["KeyId"] = other
        answer = httpx2.post(
            kms_proxy.upstream + "/",
            content=json.dumps(request).encode(),
            headers={"X-Amz-Target": SIGN_TARGET, "Content-Type": "application/x-amz-json-1.1",
                     "Authorization": _MOTO_AUTH},
            timeout=WAIT,
        )  # fmt: skip
        if given is not None:
            given.append(str(answer.json()["Signature"]))
        return answer.status_code, {"Content-Type": "application/x-amz-json-1.1"}, answer.content

    return other_key


def test_kms_sign_by_another_key_never_gives_a_token_that_fails_its_own_jwks(
    kms_proxy: MisbehavingKmsProxy, tmp_path: Path
) -> None:
    """A token's kid must match its signature. A KMS (or a proxy, or an alias gone wrong)
    that signs with another key than the handle named gives a token no verifier accepts;
    the issuer should notice (the public key is in memory) and answer 503, not hand out a
    token that fails against its own JWKS."""
    from tests.test_remote_signing import _signed_by_jwks

    other_key = _signing_with_another_key(kms_proxy)

    with _issuer(tmp_path, kms_proxy) as world:
        jwks = world.http.get("/.well-known/jwks.json").json()
        with kms_proxy.answering(other_key):
            answer = _token(world)
    if answer.status_code == 200:
        token = answer.json()["access_token"]
        try:
            _signed_by_jwks(token, jwks)
        except jwt.InvalidTokenError as exc:
            pytest.fail(f"200 with a token whose signature fails the issuer's JWKS: {exc!r}")
    else:
        assert answer.status_code == 503, answer.text


def test_kms_sign_by_another_key_is_one_error_log_line_without_the_signature(
    kms_proxy: MisbehavingKmsProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The mismatch is told once, at ERROR, naming the key; the log never holds the
    signature KMS gave (nor a token): a signature is as good as a token for its input."""

    given: list[str] = []
    other_key = _signing_with_another_key(kms_proxy, given)

    with _issuer(tmp_path, kms_proxy) as world:
        with kms_proxy.answering(other_key), caplog.at_level("INFO"):
            caplog.clear()
            answer = _token(world)
        records = [r for r in caplog.records if r.levelname == "ERROR"]
    assert answer.status_code == 503, answer.text
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert given and all(g not in text and g.rstrip("=") not in text for g in given)
    assert "eyJ" not in text, text
    assert len(records) == 1 and "does not verify" in records[0].getMessage(), [
        r.getMessage() for r in records
    ]


class _SignsWithAnotherKey:
    """A key backend (as another package would plug in) whose ``sign`` answers with the
    signature of another key, or with ``garbage`` as long as a real one."""

    def __init__(self, *, garbage: bool) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.mine = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.garbage = garbage

    def sign(self, handle: str, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        if self.garbage:
            return os.urandom(256)
        return self.other.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def public_key(self, handle: str) -> Any:
        return self.mine.public_key()


@pytest.mark.parametrize("garbage", [False, True], ids=["another-key", "random-256-bytes"])
def test_any_backend_signing_with_another_key_is_signer_unavailable(garbage: bool) -> None:
    """Not only KMS: a signature from any backend (PKCS#11, a plugged-in one) that does not
    verify against the key's public key is SignerUnavailable (503), never returned."""
    from jwtmcp.errors import SignerUnavailable
    from jwtmcp.signers import HandleSigner

    signer = HandleSigner(_SignsWithAnotherKey(garbage=garbage), "h1", retry_after=7)
    with pytest.raises(SignerUnavailable) as raised:
        signer.sign(b"eyJhbGciOiJSUzI1NiJ9.e30")
    assert raised.value.retry_after == 7
    assert "does not verify" in raised.value.message


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"Signature": 5}', b'{"Signature": "!!!"}', b'{"Signature": "AAAA"}'],
    ids=["not-json", "signature-a-number", "signature-not-base64", "signature-3-bytes"],
)
def test_kms_sign_answering_200_with_a_malformed_body_is_503(
    kms_proxy: MisbehavingKmsProxy, tmp_path: Path, body: bytes
) -> None:
    """A failing KMS (or a proxy on the way) answering Sign with 200 and a body that holds
    no usable signature: /token must answer 503 + Retry-After ("never a 500"), never a
    token whose signature is garbage."""

    def malformed(target: str, request: bytes) -> Any:
        if target != SIGN_TARGET:
            return None
        return 200, {"Content-Type": "application/x-amz-json-1.1"}, body

    with _issuer(tmp_path, kms_proxy) as world, kms_proxy.answering(malformed):
        answer = _token(world)
    assert (answer.status_code, answer.headers.get("retry-after")) == (503, "5"), (
        answer.status_code,
        answer.text[:120],
    )


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("TrentService.CreateKey", b"{}"),
        ("TrentService.CreateKey", b'{"KeyMetadata": {"KeyId": 5}}'),
        ("TrentService.CreateKey", b"[1]"),
        (GET_PUBLIC_KEY_TARGET, b'{"SigningAlgorithms": ["RSASSA_PKCS1_V1_5_SHA_256"]}'),
        (GET_PUBLIC_KEY_TARGET, b'{"PublicKey": 5, "SigningAlgorithms": 7}'),
    ],
    ids=["create-empty", "create-keyid-a-number", "create-a-list", "public-key-missing",
         "public-key-a-number"],
)  # fmt: skip
def test_kms_create_key_or_get_public_key_answering_200_with_a_malformed_body_is_one_line(
    kms_proxy: MisbehavingKmsProxy, tmp_path: Path, target: str, body: bytes
) -> None:
    """The rest of the malformed-answer kind: ``keys init`` against a KMS answering
    CreateKey or GetPublicKey with 200 and a body of the wrong shape must fail with one
    clear line naming a malformed KMS answer, never jwtmcp's "unexpected <Exception>"."""

    def malformed(seen: str, request: bytes) -> Any:
        if seen != target:
            return None
        return 200, {"Content-Type": "application/x-amz-json-1.1"}, body

    with kms_proxy.answering(malformed):
        result = _keys_cli("init", "--keys", str(tmp_path / "keys"), "--backend", "kms",
                           "--kms-endpoint-url", kms_proxy.url)  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1 and "malformed answer" in lines[0], lines


@pytest.mark.parametrize(
    ("target", "environment"),
    [
        ("TrentService.CreateKey", {}),
        ("TrentService.CreateKey", {"AWS_MAX_ATTEMPTS": "5", "AWS_RETRY_MODE": "legacy"}),
        (GET_PUBLIC_KEY_TARGET, {}),
    ],
    ids=["create-key", "create-key-env-asks-5-legacy", "get-public-key"],
)
def test_every_kms_call_cut_off_is_tried_at_most_twice(
    kms_proxy: MisbehavingKmsProxy, tmp_path: Path, target: str, environment: dict[str, str]
) -> None:
    """The rest of the retry kind: not only Sign, every KMS call (``keys init``'s CreateKey
    and GetPublicKey) is made once and retried once, whatever the AWS retry settings of the
    environment say, so the documented worst case holds."""
    calls = {"n": 0}

    def cut(seen: str, body: bytes) -> Any:
        if seen != target:
            return None
        calls["n"] += 1
        return "drop"

    with kms_proxy.answering(cut):
        result = subprocess.run(
            [sys.executable, "-m", "jwtmcp", "keys", "init", "--keys", str(tmp_path / "keys"),
             "--backend", "kms", "--kms-endpoint-url", kms_proxy.url],
            env={**os.environ, **AWS_TEST_ENV, **environment}, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
    assert result.returncode != 0, result.stderr
    assert calls["n"] in (1, 2), f"keys init made {calls['n']} {target} calls"


# --- KMS cut off: 503 + Retry-After, then fail fast -----------------------------------------


def test_kms_cut_off_is_503_with_retry_after_then_fails_fast_without_calling_kms(
    kms_proxy: MisbehavingKmsProxy, tmp_path: Path
) -> None:
    """docs/key-custody.md: KMS unreachable is 503 temporarily_unavailable + Retry-After: 5;
    once it could not be reached the signer answers 503 at once for the next 5 seconds
    instead of calling KMS for every token; /healthz and the JWKS keep answering.

    Last in this file: the issuer's KMS backend is one per process for equal settings, so
    its fail-fast window would turn the next tests' Sign calls into 503s."""
    calls = {"sign": 0}

    def cut_sign(target: str, body: bytes) -> Any:
        if target == SIGN_TARGET:
            calls["sign"] += 1
            return "drop"
        return None

    with _issuer(tmp_path, kms_proxy) as world, kms_proxy.answering(cut_sign):
        first = _token(world)
        after_first = calls["sign"]
        second = _token(world)
        after_second = calls["sign"]
        other = {p: world.http.get(p).status_code for p in ("/healthz", "/.well-known/jwks.json")}
    assert (first.status_code, first.json()["error"]) == (503, "temporarily_unavailable")
    assert first.headers["retry-after"] == "5", first.headers
    assert second.status_code == 503 and 1 <= int(second.headers["retry-after"]) <= 5
    assert after_second == after_first, calls
    # "one retry": the first call and one more, never a third
    assert after_first in (1, 2), f"one /token made {after_first} KMS Sign calls"
    assert other == {"/healthz": 200, "/.well-known/jwks.json": 200}
