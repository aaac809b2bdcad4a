"""Ring keys in existing key custody: a PKCS#11 token (SoftHSM2) and AWS KMS (moto's server),
each driven through ``jwtmcp keys``, ``jwtmcp mint`` and a running issuer, on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, ObjectClass

from jwtmcp.errors import ConfigError, SignerUnavailable
from jwtmcp.issuer import create_app
from jwtmcp.keys import KeyRing, load_ring, rsa_kid
from jwtmcp.tokens import SigningKey
from jwtmcp.verifier import Verifier
from tests.custody_support import (
    AWS_TEST_ENV,
    OUTAGE_TOKEN_LABEL,
    SoftHsm,
    kms_client,
    make_softhsm,
    moto_server,
)
from tests.support import FakeClock, RunningIssuer, issuer_process, run_cli, serve_app

ISSUER = "http://127.0.0.1:8000"
AUD = "http://127.0.0.1:8001/mcp"  # the demo client's audience (jwtmcp serve's first run)


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """One SoftHSM2 for this module: the library reads SOFTHSM2_CONF once per process."""
    hsm = make_softhsm(tmp_path_factory.mktemp("softhsm"))
    saved = {name: os.environ.get(name) for name in hsm.env}
    os.environ.update(hsm.env)
    yield hsm
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def aws_env() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in AWS_TEST_ENV}
    os.environ.update(AWS_TEST_ENV)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def kms(tmp_path_factory: pytest.TempPathFactory, aws_env: None) -> Iterator[str]:
    """moto's KMS server on loopback for this module; yields its endpoint URL."""
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as (endpoint, _):
        yield endpoint


def _cli(*args: str, clock: FakeClock | None = None) -> str:
    code, out, err = run_cli(*args, clock=clock)
    assert code == 0, err
    return out


def _mint(ring_dir: Path) -> str:
    return _cli(
        "mint", "--keys", str(ring_dir), "--subject", "alice", "--tools", "add",
        "--audience", AUD, "--issuer", ISSUER,
    ).strip()


def _verify(token: str, jwks_file: Path) -> str:
    """Verify ``token`` with jwtmcp's Verifier against ``jwks_file``; return its kid."""
    with Verifier(issuer=ISSUER, audience=AUD, jwks_file=str(jwks_file)) as verifier:
        claims = verifier.verify(token)
    assert claims.subject == "alice" and claims.may_call("add")
    assert claims.kid is not None
    return claims.kid


def _publish(ring_dir: Path, path: Path) -> Path:
    path.write_text(_cli("jwks", "--keys", str(ring_dir)))
    return path


def _token_session(hsm: SoftHsm, label: str | None = None) -> Any:
    """The test's own session on the token, to look at what jwtmcp left there."""
    token = pkcs11.lib(hsm.module).get_token(token_label=label or hsm.label)
    try:
        return token.open(user_pin=hsm.pin)
    except pkcs11.UserAlreadyLoggedIn:  # jwtmcp's backend in this process logged in
        return token.open()


def _token_key(session: Any, handle: str, object_class: ObjectClass) -> Any:
    key_id = bytes.fromhex(handle)
    return session.get_key(object_class=object_class, key_type=KeyType.RSA, id=key_id)


def _demo_token(iss: RunningIssuer) -> httpx2.Response:
    assert iss.client_id and iss.client_secret
    return httpx2.post(
        iss.token_url,
        data={"grant_type": "client_credentials"},
        auth=(iss.client_id, iss.client_secret),
        timeout=30,
    )


def _verify_at_issuer(iss: RunningIssuer, token: str) -> str:
    with Verifier(issuer=iss.issuer, audience=AUD, jwks_url=iss.jwks_url) as verifier:
        return str(verifier.verify(token).kid)


# --- PKCS#11 (SoftHSM2) ---------------------------------------------------------------------


def test_pkcs11_init_and_rotate_generate_every_key_inside_the_token(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    ring_dir = tmp_path / "keys"
    _cli("keys", "init", "--keys", str(ring_dir), *softhsm.cli_flags())
    before = load_ring(ring_dir)
    _cli("keys", "rotate", "--keys", str(ring_dir))
    ring = load_ring(ring_dir)
    assert ring.active.kid == before.next.kid if before.next else False
    assert len(ring.keys) == 3 and ring.next is not None
    assert not list(ring_dir.glob("*.pem"))  # no private key on disk
    state = json.loads((ring_dir / "ring.json").read_text())
    assert {entry["backend"] for entry in state["keys"]} == {"pkcs11"}
    with _token_session(softhsm) as session:
        for key in ring.keys:
            assert key.backend == "pkcs11" and key.handle is not None
            _token_key(session, key.handle, ObjectClass.PRIVATE_KEY)  # exists in the token
            public = _token_key(session, key.handle, ObjectClass.PUBLIC_KEY)
            jwk = {
                "kty": "RSA",
                "n": jwt.utils.base64url_encode(public[Attribute.MODULUS]).decode(),
                "e": jwt.utils.base64url_encode(public[Attribute.PUBLIC_EXPONENT]).decode(),
            }
            assert key.kid == rsa_kid(key.public_key())
            assert {m: key.public_jwk()[m] for m in ("kty", "n", "e")} == jwk


def test_pkcs11_private_keys_are_sensitive_and_never_extractable(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    ring_dir = tmp_path / "keys"
    _cli("keys", "init", "--keys", str(ring_dir), "--bits", "3072", *softhsm.cli_flags())
    ring = load_ring(ring_dir)
    with _token_session(softhsm) as session:
        for key in ring.keys:
            assert key.handle is not None and key.bits == 3072
            private = _token_key(session, key.handle, ObjectClass.PRIVATE_KEY)
            assert private[Attribute.SENSITIVE] is True
            assert private[Attribute.EXTRACTABLE] is False
            assert private[Attribute.ALWAYS_SENSITIVE] is True
            assert private[Attribute.NEVER_EXTRACTABLE] is True
            assert private[Attribute.TOKEN] is True
            assert private[Attribute.SIGN] is True
            with pytest.raises(pkcs11.AttributeSensitive):
                private[Attribute.PRIVATE_EXPONENT]
            with pytest.raises(pkcs11.AttributeSensitive):
                private[Attribute.PRIME_1]
    # Nor can it leave wrapped under a key the exporter holds.
    with _token_session(softhsm) as session:
        wrapping = session.generate_key(
            KeyType.AES, 256, template={Attribute.WRAP: True, Attribute.EXTRACTABLE: True}
        )
        private = _token_key(session, ring.active.handle or "", ObjectClass.PRIVATE_KEY)
        with pytest.raises(pkcs11.KeyUnextractable):
            wrapping.wrap_key(private)


def test_pkcs11_minted_tokens_verify_against_the_published_jwks_across_a_rotation(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    ring_dir = tmp_path / "keys"
    _cli("keys", "init", "--keys", str(ring_dir), *softhsm.cli_flags())
    first = _mint(ring_dir)
    assert _verify(first, _publish(ring_dir, tmp_path / "jwks1.json")) == load_ring(
        ring_dir
    ).active.kid
    _cli("keys", "rotate", "--keys", str(ring_dir))
    second = _mint(ring_dir)
    jwks = _publish(ring_dir, tmp_path / "jwks2.json")
    assert _verify(second, jwks) == load_ring(ring_dir).active.kid
    assert _verify(first, jwks) != load_ring(ring_dir).active.kid  # the retired key's token


def test_pkcs11_issuer_token_endpoint_signs_inside_the_token(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    ring_dir = tmp_path / "keys"
    _cli("keys", "init", "--keys", str(ring_dir), *softhsm.cli_flags())
    _cli("keys", "rotate", "--keys", str(ring_dir))
    active = load_ring(ring_dir).active.kid
    with issuer_process(tmp_path, args=["--keys", str(ring_dir)], env=softhsm.env) as iss:
        answer = _demo_token(iss)
        assert answer.status_code == 200, answer.text
        assert _verify_at_issuer(iss, answer.json()["access_token"]) == active
        assert softhsm.pin not in iss.stdout() + iss.stderr()


def test_pkcs11_revoke_and_prune_destroy_the_keys_in_the_token(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    clock = FakeClock()
    ring_dir = tmp_path / "keys"
    _cli("keys", "init", "--keys", str(ring_dir), *softhsm.cli_flags(), clock=clock)
    ring = load_ring(ring_dir)
    revoked = ring.next
    assert revoked is not None and revoked.handle is not None
    _cli("keys", "revoke", revoked.kid, "--keys", str(ring_dir), clock=clock)
    retired = load_ring(ring_dir).active
    _cli("keys", "rotate", "--keys", str(ring_dir), clock=clock)
    clock.advance(3600 + 60)
    _cli("keys", "prune", "--keys", str(ring_dir), clock=clock)
    remaining = load_ring(ring_dir)
    assert retired.kid not in {k.kid for k in remaining.keys}
    with _token_session(softhsm) as session:
        for gone in (revoked, retired):
            assert gone.handle is not None
            for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                with pytest.raises(pkcs11.NoSuchKey):
                    _token_key(session, gone.handle, object_class)
        for kept in remaining.keys:
            _token_key(session, kept.handle or "", ObjectClass.PRIVATE_KEY)


def test_pkcs11_pin_comes_from_a_0600_file_or_a_variable_never_the_ring_or_command_line(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    code, _, _ = run_cli(  # no option takes the PIN itself
        "keys", "init", "--keys", str(tmp_path / "a"), *softhsm.cli_flags(),
        "--pkcs11-pin", softhsm.pin,
    )
    assert code == 2 and not (tmp_path / "a").exists()
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm.pin + "\n")
    pin_file.chmod(0o644)
    ring_dir = tmp_path / "keys"
    flags = [*softhsm.cli_flags(), "--pkcs11-pin-file", str(pin_file)]
    code, _, err = run_cli("keys", "init", "--keys", str(ring_dir), *flags)
    assert code != 0 and f"chmod 600 {pin_file}" in err and softhsm.pin not in err
    pin_file.chmod(0o600)
    saved = os.environ.pop("JWTMCP_PKCS11_PIN")
    try:
        _cli("keys", "init", "--keys", str(ring_dir), *flags)
        assert _verify(_mint(ring_dir), _publish(ring_dir, tmp_path / "jwks.json"))
    finally:
        os.environ["JWTMCP_PKCS11_PIN"] = saved
    state = (ring_dir / "ring.json").read_text()
    assert softhsm.pin not in state and str(pin_file) in state


def test_pkcs11_token_gone_answers_503_with_retry_after_and_keeps_serving_the_jwks(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    ring_dir = tmp_path / "keys"
    _cli("keys", "init", "--keys", str(ring_dir), *softhsm.cli_flags(OUTAGE_TOKEN_LABEL))
    clients_file = tmp_path / "clients.json"
    from jwtmcp.clients import add_client

    _, secret = add_client(clients_file, "bot", tools=["add"], audiences=[AUD])
    app = create_app(
        issuer_url=ISSUER, keys_dir=ring_dir, clients_file=clients_file, rate_limit=0
    )
    form = {"grant_type": "client_credentials"}
    with serve_app(app) as url, httpx2.Client(base_url=url, timeout=30) as http:
        assert http.post("/token", data=form, auth=("bot", secret)).status_code == 200
        jwks = http.get("/.well-known/jwks.json").json()
        # The HSM goes away: its token is deleted and every session of this process dropped.
        softhsm.delete_token(OUTAGE_TOKEN_LABEL)
        pkcs11.lib(softhsm.module).reinitialize()
        answer = http.post("/token", data=form, auth=("bot", secret))
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "temporarily_unavailable"
        assert int(answer.headers["retry-after"]) >= 1
        assert http.get("/.well-known/jwks.json").json() == jwks


def test_rotate_with_backend_moves_a_file_ring_into_the_token_without_breaking_tokens(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    ring_dir = tmp_path / "keys"
    _cli("keys", "init", "--keys", str(ring_dir))
    file_token = _mint(ring_dir)
    _cli("keys", "rotate", "--keys", str(ring_dir), *softhsm.cli_flags())
    ring = load_ring(ring_dir)
    assert ring.active.backend == "file" and ring.next is not None
    assert ring.next.backend == "pkcs11"  # published now, signs after the next rotation
    _cli("keys", "rotate", "--keys", str(ring_dir))
    ring = load_ring(ring_dir)
    assert (ring.active.backend, ring.next.backend if ring.next else None) == ("pkcs11", "pkcs11")
    jwks = _publish(ring_dir, tmp_path / "jwks.json")
    assert _verify(_mint(ring_dir), jwks) == ring.active.kid
    assert _verify(file_token, jwks) in {k.kid for k in ring.keys if k.backend == "file"}
    listing = _cli("keys", "list", "--keys", str(ring_dir))
    assert listing.splitlines()[0].split() == [
        "KID", "STATE", "BITS", "BACKEND", "CREATED", "REMOVABLE"
    ]
    assert {line.split()[3] for line in listing.splitlines()[1:]} == {"file", "pkcs11"}


# --- AWS KMS (moto server) ------------------------------------------------------------------


def _kms_flags(endpoint: str) -> list[str]:
    return ["--backend", "kms", "--kms-endpoint-url", endpoint, "--kms-region", "us-east-1"]


def test_kms_init_and_rotate_create_rsa_sign_verify_keys_in_kms(
    kms: str, tmp_path: Path
) -> None:
    ring_dir = tmp_path / "keys"
    _cli("keys", "init", "--keys", str(ring_dir), *_kms_flags(kms))
    before = load_ring(ring_dir)
    _cli("keys", "rotate", "--keys", str(ring_dir))
    ring = load_ring(ring_dir)
    assert before.next is not None and ring.active.kid == before.next.kid
    assert len(ring.keys) == 3 and not list(ring_dir.glob("*.pem"))
    client: Any = kms_client(kms)
    from cryptography.hazmat.primitives import serialization

    for key in ring.keys:
        assert key.backend == "kms" and key.handle is not None
        meta = client.describe_key(KeyId=key.handle)["KeyMetadata"]
        assert meta["KeyUsage"] == "SIGN_VERIFY" and meta["KeySpec"] == "RSA_2048"
        der = client.get_public_key(KeyId=key.handle)["PublicKey"]
        public = serialization.load_der_public_key(der)
        assert rsa_kid(public) == key.kid  # type: ignore[arg-type]


def test_kms_minted_tokens_verify_against_the_published_jwks_across_a_rotation(
    kms: str, tmp_path: Path
) -> None:
    ring_dir = tmp_path / "keys"
    _cli("keys", "init", "--keys", str(ring_dir), *_kms_flags(kms))
    first = _mint(ring_dir)
    assert _verify(first, _publish(ring_dir, tmp_path / "jwks1.json")) == load_ring(
        ring_dir
    ).active.kid
    _cli("keys", "rotate", "--keys", str(ring_dir))
    second = _mint(ring_dir)
    jwks = _publish(ring_dir, tmp_path / "jwks2.json")
    assert _verify(second, jwks) == load_ring(ring_dir).active.kid
    assert _verify(first, jwks) != load_ring(ring_dir).active.kid


def test_kms_issuer_token_endpoint_signs_with_the_kms_key(kms: str, tmp_path: Path) -> None:
    ring_dir = tmp_path / "keys"
    _cli("keys", "init", "--keys", str(ring_dir), *_kms_flags(kms))
    _cli("keys", "rotate", "--keys", str(ring_dir))
    active = load_ring(ring_dir).active.kid
    with issuer_process(tmp_path, args=["--keys", str(ring_dir)], env=AWS_TEST_ENV) as iss:
        answer = _demo_token(iss)
        assert answer.status_code == 200, answer.text
        assert _verify_at_issuer(iss, answer.json()["access_token"]) == active


def test_kms_unreachable_answers_503_with_retry_after_and_keeps_serving_the_jwks(
    aws_env: None, tmp_path: Path
) -> None:
    ring_dir = tmp_path / "keys"
    with moto_server(tmp_path / "moto.log") as (endpoint, emulator):
        _cli("keys", "init", "--keys", str(ring_dir), *_kms_flags(endpoint))
        with issuer_process(
            tmp_path / "issuer", args=["--keys", str(ring_dir)], env=AWS_TEST_ENV
        ) as iss:
            assert _demo_token(iss).status_code == 200
            jwks = httpx2.get(iss.jwks_url, timeout=10).json()
            emulator.terminate()
            emulator.wait(30)
            answer = _demo_token(iss)
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"] == "temporarily_unavailable"
            assert int(answer.headers["retry-after"]) >= 1
            assert httpx2.get(iss.jwks_url, timeout=10).json() == jwks
            assert "Traceback" not in iss.stderr()


def test_kms_unreachable_answers_503_to_a_token_exchange_too(aws_env: None, tmp_path: Path) -> None:
    # Every grant that signs maps a signer outage to 503 + Retry-After, not only
    # client_credentials: RFC 8693 token exchange here (a grant added after the signers).
    from jwtmcp.clients import add_client
    from jwtmcp.users import add_user

    here, there = "http://127.0.0.1:9101/mcp", "http://127.0.0.1:9102/mcp"
    ring_dir, work = tmp_path / "keys", tmp_path / "issuer"
    work.mkdir()
    _, secret = add_client(
        work / "clients.json", "server-a", tools=[], audiences=[there],
        resource=here, delegate={there: ["add"]},
    )  # fmt: skip
    add_user(work / "users.json", "alice", password="pw-" + "x" * 20, tools=["add"],
             audiences=[here, there])  # fmt: skip
    with moto_server(tmp_path / "moto.log") as (endpoint, emulator):
        _cli("keys", "init", "--keys", str(ring_dir), *_kms_flags(endpoint))
        with issuer_process(work, args=["--keys", str(ring_dir)], env=AWS_TEST_ENV) as iss:
            subject = _cli(
                "mint", "--keys", str(ring_dir), "--issuer", iss.issuer, "--audience", here,
                "--subject", "alice", "--tools", "add",
            ).strip()  # fmt: skip
            form = {
                "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                "subject_token": subject,
                "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "resource": there,
            }

            def exchange() -> httpx2.Response:
                return httpx2.post(iss.token_url, data=form, auth=("server-a", secret), timeout=30)

            assert exchange().status_code == 200
            emulator.terminate()
            emulator.wait(30)
            answer = exchange()
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"] == "temporarily_unavailable"
            assert int(answer.headers["retry-after"]) >= 1
            assert "Traceback" not in iss.stderr()


class _ClosingServer:
    """A misbehaving KMS on loopback: accepts each connection and closes it at once."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_kms_signer_fails_fast_for_retry_after_seconds_after_kms_could_not_be_reached(
    aws_env: None,
) -> None:
    from jwtmcp.signers.kms import RETRY_AFTER, KmsBackend

    server = _ClosingServer()
    try:
        backend = KmsBackend({"endpoint_url": server.url, "region": "us-east-1"})
        clock = FakeClock(1000.0)
        backend.monotonic = clock
        signer = backend.signer("a-key-id")
        with pytest.raises(SignerUnavailable) as first:
            signer.sign(b"signing input")
        assert first.value.retry_after == RETRY_AFTER
        tried = server.accepted
        assert tried >= 1
        # Within Retry-After: refused at once, KMS is not called (the worker is not held up).
        clock.advance(RETRY_AFTER - 0.5)
        with pytest.raises(SignerUnavailable):
            signer.sign(b"signing input")
        assert server.accepted == tried
        # Then KMS is tried again.
        clock.advance(1.0)
        with pytest.raises(SignerUnavailable):
            signer.sign(b"signing input")
        assert server.accepted > tried
    finally:
        server.close()


def test_kms_revoke_schedules_the_key_for_deletion(kms: str, tmp_path: Path) -> None:
    ring_dir = tmp_path / "keys"
    _cli("keys", "init", "--keys", str(ring_dir), *_kms_flags(kms))
    revoked = load_ring(ring_dir).next
    assert revoked is not None and revoked.handle is not None
    _cli("keys", "revoke", revoked.kid, "--keys", str(ring_dir))
    client: Any = kms_client(kms)
    assert client.describe_key(KeyId=revoked.handle)["KeyMetadata"]["KeyState"] == (
        "PendingDeletion"
    )
    ring: KeyRing = load_ring(ring_dir)
    for key in ring.keys:
        assert client.describe_key(KeyId=key.handle)["KeyMetadata"]["KeyState"] == "Enabled"


@pytest.mark.parametrize(
    ("package", "extra", "flags"),
    [
        ("pkcs11", "pkcs11", ["--pkcs11-module", "/nonexistent.so", "--pkcs11-token", "t"]),
        ("boto3", "kms", []),
    ],
)
def test_a_missing_backend_package_is_one_line_naming_the_extra_to_install(
    tmp_path: Path, package: str, extra: str, flags: list[str]
) -> None:
    # The package made unimportable in a fresh interpreter, as on a machine without it.
    code = (
        f"import sys; sys.modules[{package!r}] = None\n"
        "from jwtmcp.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "keys", "init", "--keys", str(tmp_path / "keys"),
         "--backend", extra, *flags],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"jwtmcp: error: the {extra} key backend needs "
        f"{'python-pkcs11' if extra == 'pkcs11' else 'boto3'}: pip install 'jwtmcp[{extra}]'"
    ]


# --- files stay as they were ---------------------------------------------------------------


def test_file_ring_state_names_no_backend_and_keeps_pem_files(tmp_path: Path) -> None:
    ring_dir = tmp_path / "keys"
    _cli("keys", "init", "--keys", str(ring_dir))
    _cli("keys", "rotate", "--keys", str(ring_dir))
    state = json.loads((ring_dir / "ring.json").read_text())
    assert set(state) == {"version", "revision", "max_lifetime", "leeway", "keys"}
    for entry in state["keys"]:
        assert set(entry) == {"kid", "state", "bits", "created_at", "activated_at", "retired_at"}
        assert (ring_dir / f"{entry['kid']}.pem").is_file()


def test_a_signing_key_needs_a_private_key_or_a_signer() -> None:
    with pytest.raises(ConfigError, match="private key or a signer"):
        SigningKey("kid")


def _edit_active_handle(ring_dir: Path, handle: str, kid: str) -> None:
    """What an edited ring.json does: point the active key at another token object."""
    state = json.loads((ring_dir / "ring.json").read_text())
    active = next(k for k in state["keys"] if k["state"] == "active")
    active["handle"], active["kid"] = handle, kid
    (ring_dir / "ring.json").write_text(json.dumps(state))


def test_pkcs11_ring_refuses_a_private_key_that_could_be_extracted_or_does_not_match(
    softhsm: SoftHsm, tmp_path: Path
) -> None:
    """A ring.json pointed at a token key pair whose private half is extractable (imported,
    or made by another application), or whose private half is not the public key's, must
    not load: jwtmcp would otherwise sign with a key that can leave the HSM, or publish a
    kid whose tokens no verifier accepts."""
    ring_dir = tmp_path / "keys"
    _cli("keys", "init", "--keys", str(ring_dir), *softhsm.cli_flags())
    soft_id, other_id, lonely_id = os.urandom(16), os.urandom(16), os.urandom(16)
    token = pkcs11.lib(softhsm.module).get_token(token_label=softhsm.label)
    try:
        rw_session = token.open(rw=True, user_pin=softhsm.pin)
    except pkcs11.UserAlreadyLoggedIn:
        rw_session = token.open(rw=True)
    with rw_session as session:
        public, _ = session.generate_keypair(
            KeyType.RSA, 2048, id=soft_id, label="not jwtmcp", store=True,
            public_template={Attribute.TOKEN: True, Attribute.VERIFY: True},
            private_template={
                Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.SIGN: True,
                Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True,
            },
        )
        soft_kid = rsa_kid(_public_of(public))
        # A pair whose private half was swapped for another pair's (same CKA_ID).
        lonely_public, lonely_private = session.generate_keypair(
            KeyType.RSA, 2048, id=lonely_id, label="lonely", store=True,
            private_template={Attribute.TOKEN: True, Attribute.SENSITIVE: True,
                              Attribute.EXTRACTABLE: False, Attribute.SIGN: True},
        )
        lonely_kid = rsa_kid(_public_of(lonely_public))
        lonely_private.destroy()
        _, other_private = session.generate_keypair(
            KeyType.RSA, 2048, id=other_id, label="other", store=True,
            private_template={Attribute.TOKEN: True, Attribute.SENSITIVE: True,
                              Attribute.EXTRACTABLE: False, Attribute.SIGN: True},
        )
        other_private[Attribute.ID] = lonely_id
    for handle, kid, why in (
        (soft_id.hex(), soft_kid, "extract"),
        (lonely_id.hex(), lonely_kid, "does not match"),
    ):
        _edit_active_handle(ring_dir, handle, kid)
        code, out, err = run_cli(
            "mint", "--keys", str(ring_dir), "--subject", "alice", "--tools", "add",
            "--audience", AUD, "--issuer", ISSUER,
        )
        assert code != 0, f"minted with the key {handle}: {out[:40]}..."
        assert why in err and handle in err and softhsm.pin not in err
        assert len(err.strip().splitlines()) == 1


def _public_of(public: Any) -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.RSAPublicNumbers(
        int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big"),
        int.from_bytes(public[Attribute.MODULUS], "big"),
    ).public_key()
