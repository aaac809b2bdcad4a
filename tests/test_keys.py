"""The key ring: life cycle with an injected clock, files on disk, crashes and concurrency."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import select
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from jwtmcp import keys as keys_module
from jwtmcp.errors import KeyRingError
from jwtmcp.keys import (
    STATE_FILE,
    KeyRing,
    RingWatcher,
    ensure_ring,
    init_ring,
    jwk_thumbprint,
    load_ring,
    prune_ring,
    revoke_key,
    rotate_ring,
    rsa_kid,
)
from tests.support import FakeClock, rewrite_keeping_stat

REPO = Path(__file__).resolve().parent.parent
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}

# RFC 7638 section 3.1: the example RSA key and its SHA-256 thumbprint.
RFC7638_JWK = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
    "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FD"
    "W2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4v"
    "MQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def _b64_int(value: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _states(ring: KeyRing) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"active": [], "next": [], "retired": []}
    for key in ring.keys:
        out[key.state].append(key.kid)
    return out


def _assert_consistent(directory: Path) -> KeyRing:
    """The ring loads, has exactly one active and one next key, and every listed PEM exists."""
    ring = load_ring(directory)
    states = _states(ring)
    assert len(states["active"]) == 1
    assert len(states["next"]) == 1
    for key in ring.keys:
        assert (directory / key.file_name).is_file()
    return ring


# --- thumbprints -------------------------------------------------------------------------


def test_thumbprint_matches_rfc7638_example() -> None:
    assert jwk_thumbprint(RFC7638_JWK) == RFC7638_THUMBPRINT


def test_rsa_kid_of_the_rfc7638_key_is_its_thumbprint() -> None:
    public = rsa.RSAPublicNumbers(
        _b64_int(RFC7638_JWK["e"]), _b64_int(RFC7638_JWK["n"])
    ).public_key()
    assert rsa_kid(public) == RFC7638_THUMBPRINT


def test_thumbprint_refuses_unknown_key_type() -> None:
    with pytest.raises(KeyRingError):
        jwk_thumbprint({"kty": "OKP", "x": "abc"})


# --- init ----------------------------------------------------------------------------------


def test_init_makes_one_active_and_one_next_key(ring: KeyRing, clock: FakeClock) -> None:
    states = _states(ring)
    assert len(states["active"]) == 1 and len(states["next"]) == 1 and not states["retired"]
    assert ring.active.created_at == clock() and ring.active.activated_at == clock()
    assert ring.active.bits == 2048
    assert ring.max_lifetime == 3600 and ring.leeway == 60


def test_init_writes_0600_key_files_in_a_0700_directory(ring: KeyRing, ring_dir: Path) -> None:
    assert _mode(ring_dir) == 0o700
    pems = sorted(p.name for p in ring_dir.glob("*.pem"))
    assert pems == sorted(k.file_name for k in ring.keys)
    for name in pems:
        assert _mode(ring_dir / name) == 0o600
        assert (ring_dir / name).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert _mode(ring_dir / STATE_FILE) == 0o600


def test_kids_are_thumbprints_of_the_public_keys(ring: KeyRing) -> None:
    for key in ring.keys:
        jwk = key.public_jwk()
        assert key.kid == jwk["kid"] == jwk_thumbprint(jwk)


def test_init_refuses_to_overwrite_a_ring(ring: KeyRing, ring_dir: Path) -> None:
    with pytest.raises(KeyRingError, match="already exists"):
        init_ring(ring_dir)
    assert load_ring(ring_dir).active.kid == ring.active.kid


@pytest.mark.parametrize("bits", [512, 1024, 2047, 3000, 8192])
def test_init_refuses_key_sizes_other_than_2048_3072_4096(tmp_path: Path, bits: int) -> None:
    with pytest.raises(KeyRingError, match=str(bits)):
        init_ring(tmp_path / "k", bits=bits)
    assert not (tmp_path / "k" / STATE_FILE).exists()


def test_init_with_3072_bits(tmp_path: Path) -> None:
    ring = init_ring(tmp_path / "k", bits=3072)
    assert {k.bits for k in ring.keys} == {3072}
    assert rotate_ring(tmp_path / "k").next is not None
    assert {k.bits for k in load_ring(tmp_path / "k").keys} == {3072}


@pytest.mark.parametrize("value", [0, -5])
def test_init_refuses_a_non_positive_max_lifetime(tmp_path: Path, value: int) -> None:
    with pytest.raises(KeyRingError, match="max lifetime"):
        init_ring(tmp_path / "k", max_lifetime=value)


def test_init_refuses_a_negative_leeway(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match="leeway"):
        init_ring(tmp_path / "k", leeway=-1)


def test_ensure_ring_creates_once_then_loads(ring_dir: Path, clock: FakeClock) -> None:
    first, created = ensure_ring(ring_dir, clock=clock)
    again, created_again = ensure_ring(ring_dir, clock=clock)
    assert created and not created_again
    assert again.active.kid == first.active.kid


# --- the state machine ----------------------------------------------------------------------


def test_rotate_promotes_next_retires_active_and_makes_a_new_next(
    ring: KeyRing, ring_dir: Path, clock: FakeClock
) -> None:
    clock.advance(100)
    rotated = rotate_ring(ring_dir, clock=clock)
    assert rotated.active.kid == ring.next.kid if ring.next else False
    assert rotated.active.activated_at == clock()
    old = rotated.get(ring.active.kid)
    assert old is not None and old.state == "retired" and old.retired_at == clock()
    assert rotated.next is not None and rotated.next.kid not in {k.kid for k in ring.keys}
    assert rotated.next.created_at == clock()
    assert rotated.revision == ring.revision + 1
    assert load_ring(ring_dir).keys == rotated.keys


def test_jwks_holds_next_active_retired_public_parts_only(
    ring: KeyRing, ring_dir: Path, clock: FakeClock
) -> None:
    assert len(ring.jwks()["keys"]) == 2
    rotated = rotate_ring(ring_dir, clock=clock)
    jwks = rotated.jwks()["keys"]
    assert len(jwks) == 3
    assert jwks[0]["kid"] == rotated.active.kid  # active first
    for jwk in jwks:
        assert set(jwk) == {"kty", "n", "e", "kid", "use", "alg"}
        assert not set(jwk) & PRIVATE_MEMBERS
        assert (jwk["kty"], jwk["alg"], jwk["use"]) == ("RSA", "RS256", "sig")
        assert jwk["kid"] == jwk_thumbprint(jwk)


def test_prune_waits_exactly_until_retired_at_plus_max_lifetime_plus_leeway(
    ring: KeyRing, ring_dir: Path, clock: FakeClock
) -> None:
    rotate_ring(ring_dir, clock=clock)
    retired_at = clock()
    boundary = retired_at + ring.max_lifetime + ring.leeway
    old_kid = ring.active.kid

    clock.now = boundary - 1
    assert load_ring(ring_dir).prunable(clock()) == ()
    after, removed = prune_ring(ring_dir, clock=clock)
    assert removed == () and after.get(old_kid) is not None
    assert (ring_dir / f"{old_kid}.pem").exists()

    clock.now = boundary
    assert [k.kid for k in load_ring(ring_dir).prunable(clock())] == [old_kid]
    after, removed = prune_ring(ring_dir, clock=clock)
    assert removed == (old_kid,)
    assert after.get(old_kid) is None
    assert not (ring_dir / f"{old_kid}.pem").exists()
    assert len(_assert_consistent(ring_dir).keys) == 2


def test_prune_uses_the_rings_own_max_lifetime_and_leeway(ring_dir: Path, clock: FakeClock) -> None:
    init_ring(ring_dir, max_lifetime=600, leeway=5, clock=clock)
    rotate_ring(ring_dir, clock=clock)
    clock.advance(604)
    assert prune_ring(ring_dir, clock=clock)[1] == ()
    clock.advance(1)
    assert len(prune_ring(ring_dir, clock=clock)[1]) == 1


def test_prune_removes_only_keys_whose_grace_has_passed(
    ring: KeyRing, ring_dir: Path, clock: FakeClock
) -> None:
    first_retired = ring.active.kid
    rotate_ring(ring_dir, clock=clock)
    clock.advance(1000)
    second_retired = load_ring(ring_dir).active.kid
    rotate_ring(ring_dir, clock=clock)
    clock.advance(ring.max_lifetime + ring.leeway - 1000)
    _, removed = prune_ring(ring_dir, clock=clock)
    assert removed == (first_retired,)
    assert _states(load_ring(ring_dir))["retired"] == [second_retired]


def test_prune_never_touches_active_or_next(
    ring: KeyRing, ring_dir: Path, clock: FakeClock
) -> None:
    clock.advance(10**9)
    _, removed = prune_ring(ring_dir, clock=clock)
    assert removed == ()
    assert {k.kid for k in load_ring(ring_dir).keys} == {k.kid for k in ring.keys}


def test_revoke_active_promotes_next_and_makes_a_new_next(
    ring: KeyRing, ring_dir: Path, clock: FakeClock
) -> None:
    assert ring.next is not None
    after = revoke_key(ring_dir, ring.active.kid, clock=clock)
    assert after.get(ring.active.kid) is None
    assert after.active.kid == ring.next.kid
    assert after.next is not None and after.next.kid not in {k.kid for k in ring.keys}
    assert not (ring_dir / ring.active.file_name).exists()
    _assert_consistent(ring_dir)


def test_revoke_next_makes_a_new_next(ring: KeyRing, ring_dir: Path, clock: FakeClock) -> None:
    assert ring.next is not None
    after = revoke_key(ring_dir, ring.next.kid, clock=clock)
    assert after.active.kid == ring.active.kid
    assert after.get(ring.next.kid) is None
    assert after.next is not None and after.next.kid != ring.next.kid
    assert not (ring_dir / ring.next.file_name).exists()
    _assert_consistent(ring_dir)


def test_revoke_retired_removes_it_from_the_jwks_at_once(
    ring: KeyRing, ring_dir: Path, clock: FakeClock
) -> None:
    rotated = rotate_ring(ring_dir, clock=clock)
    old = ring.active.kid
    assert old in {k["kid"] for k in rotated.jwks()["keys"]}
    after = revoke_key(ring_dir, old, clock=clock)
    assert old not in {k["kid"] for k in after.jwks()["keys"]}
    assert (after.active.kid, after.next) == (rotated.active.kid, rotated.next)
    assert not (ring_dir / f"{old}.pem").exists()


def test_revoke_unknown_kid_is_an_error(ring: KeyRing, ring_dir: Path) -> None:
    with pytest.raises(KeyRingError, match="no key with kid"):
        revoke_key(ring_dir, "A" * 43)
    assert load_ring(ring_dir).revision == ring.revision


# --- loading refuses broken or insecure rings ----------------------------------------------


def test_missing_directory_says_how_to_create_a_ring(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match="jwtmcp keys init"):
        load_ring(tmp_path / "nowhere")


def test_directory_without_state_file_is_not_a_ring(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match=r"ring\.json is missing"):
        load_ring(tmp_path)


def test_corrupted_state_file_is_refused(ring: KeyRing, ring_dir: Path) -> None:
    (ring_dir / STATE_FILE).write_bytes(b"\x00\xffnot json at all")
    with pytest.raises(KeyRingError, match="corrupted"):
        load_ring(ring_dir)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.99])
def test_truncated_state_file_is_refused(ring: KeyRing, ring_dir: Path, fraction: float) -> None:
    state = ring_dir / STATE_FILE
    raw = state.read_bytes().rstrip()
    state.write_bytes(raw[: int(len(raw) * fraction)])
    with pytest.raises(KeyRingError, match="corrupted"):
        load_ring(ring_dir)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(version=2), "unknown format"),
        (lambda d: d.update(keys="x"), "lists no keys"),
        (lambda d: d["keys"][0].update(state="weird"), "invalid key entry"),
        (lambda d: d["keys"][0].update(kid="../../etc/passwd"), "invalid key entry"),
        (lambda d: d["keys"][0].update(created_at="yesterday"), "invalid key entry"),
        (lambda d: d["keys"][0].update(state="retired"), "invalid key entry"),  # no retired_at
        (lambda d: [k.update(state="next") for k in d["keys"]], "0 active keys"),
        (lambda d: [k.update(state="active") for k in d["keys"]], "2 active keys"),
        (lambda d: d["keys"].append(dict(d["keys"][0])), "twice"),
        (lambda d: d.update(max_lifetime=-1), "invalid max_lifetime"),
    ],
)
def test_inconsistent_state_file_is_refused(
    ring: KeyRing, ring_dir: Path, change: object, message: str
) -> None:
    state = ring_dir / STATE_FILE
    doc = json.loads(state.read_text())
    change(doc)  # type: ignore[operator]
    state.write_text(json.dumps(doc))
    with pytest.raises(KeyRingError, match=message):
        load_ring(ring_dir)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_readable_by_others_is_refused_with_the_fix(
    ring: KeyRing, ring_dir: Path, mode: int
) -> None:
    pem = ring_dir / ring.active.file_name
    pem.chmod(mode)
    with pytest.raises(KeyRingError, match=f"readable by group or others.*chmod 600 {pem}"):
        load_ring(ring_dir)
    pem.chmod(0o600)
    load_ring(ring_dir)


def test_stray_files_in_the_ring_are_ignored_and_kept(
    ring: KeyRing, ring_dir: Path, clock: FakeClock
) -> None:
    strays = {
        "README.md": b"my notes",
        "backup.pem": b"not a key of this ring",
        ".DS_Store": b"\x00\x01",
        "notes.txt": b"",
    }
    for name, data in strays.items():
        (ring_dir / name).write_bytes(data)
        (ring_dir / name).chmod(0o644)
    (ring_dir / "old").mkdir()
    assert load_ring(ring_dir).active.kid == ring.active.kid
    rotate_ring(ring_dir, clock=clock)
    prune_ring(ring_dir, clock=clock)
    for name, data in strays.items():
        assert (ring_dir / name).read_bytes() == data
    assert (ring_dir / "old").is_dir()


def test_missing_key_file_is_refused_with_one_clear_reason(ring: KeyRing, ring_dir: Path) -> None:
    (ring_dir / ring.active.file_name).unlink()
    with pytest.raises(KeyRingError, match="is missing"):
        load_ring(ring_dir)


def test_key_file_that_does_not_match_its_kid_is_refused(ring: KeyRing, ring_dir: Path) -> None:
    assert ring.next is not None
    data = (ring_dir / ring.next.file_name).read_bytes()
    target = ring_dir / ring.active.file_name
    target.write_bytes(data)
    target.chmod(0o600)
    with pytest.raises(KeyRingError, match="does not match its kid"):
        load_ring(tmp_copy(ring_dir))


def tmp_copy(ring_dir: Path) -> Path:
    """A copy of the ring under a new path, so the in-process key cache cannot hide a change."""
    copy = ring_dir.parent / f"{ring_dir.name}-copy"
    copy.mkdir(mode=0o700)
    for entry in ring_dir.iterdir():
        if entry.is_file():
            (copy / entry.name).write_bytes(entry.read_bytes())
            (copy / entry.name).chmod(0o600)
    return copy


@pytest.mark.parametrize("data", [b"", b"-----BEGIN PRIVATE KEY-----\nMIIE", b"garbage"])
def test_truncated_or_garbage_key_file_is_refused(
    ring: KeyRing, ring_dir: Path, data: bytes
) -> None:
    copy = tmp_copy(ring_dir)
    (copy / ring.active.file_name).write_bytes(data)
    with pytest.raises(KeyRingError, match="not a valid unencrypted PEM"):
        load_ring(copy)


def test_orphan_key_from_a_crash_is_removed_by_the_next_change(
    ring: KeyRing, ring_dir: Path, clock: FakeClock
) -> None:
    # What a crash between writing a new PEM and writing the state file leaves behind.
    other = init_ring(ring_dir.parent / "other", clock=clock)
    orphan = ring_dir / other.active.file_name
    orphan.write_bytes((other.directory / other.active.file_name).read_bytes())
    orphan.chmod(0o600)
    (ring_dir / ".ring.json.abc.tmp").write_bytes(b"{")
    assert load_ring(ring_dir).get(other.active.kid) is None
    rotate_ring(ring_dir, clock=clock)
    assert not orphan.exists()
    assert not (ring_dir / ".ring.json.abc.tmp").exists()


# --- watcher --------------------------------------------------------------------------------


def test_watcher_notices_a_rotation_by_another_writer(
    ring: KeyRing, ring_dir: Path, clock: FakeClock
) -> None:
    mono = FakeClock(0)
    watcher = RingWatcher(ring_dir, interval=0.25, monotonic=mono)
    assert watcher.current().active.kid == ring.active.kid
    rotated = rotate_ring(ring_dir, clock=clock)
    mono.advance(0.1)
    assert watcher.current().active.kid == ring.active.kid  # not checked yet
    mono.advance(0.2)
    assert watcher.current().active.kid == rotated.active.kid


def test_watcher_keeps_the_last_good_ring_when_the_state_breaks(
    ring: KeyRing, ring_dir: Path
) -> None:
    mono = FakeClock(0)
    watcher = RingWatcher(ring_dir, interval=0.25, monotonic=mono)
    (ring_dir / STATE_FILE).write_text("{broken")
    mono.advance(1)
    assert watcher.current().active.kid == ring.active.kid
    assert watcher.last_error is not None and "corrupted" in watcher.last_error


def test_watcher_sees_a_revoke_that_lands_between_its_first_load_and_stat(
    ring: KeyRing, ring_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The interleaving, made deterministic: the real load_ring runs, then a `keys revoke`
    # lands before the watcher takes the state file's stat signature.
    real_load = keys_module.load_ring
    revoked: list[str] = []

    def load_then_revoke(directory: str | os.PathLike[str]) -> KeyRing:
        loaded = real_load(directory)
        if not revoked:
            revoked.append(ring.active.kid)
            revoke_key(ring_dir, ring.active.kid)
        return loaded

    monkeypatch.setattr(keys_module, "load_ring", load_then_revoke)
    mono = FakeClock(0)
    watcher = RingWatcher(ring_dir, interval=0.25, monotonic=mono)
    mono.advance(1)
    assert watcher.current().get(revoked[0]) is None


def test_watcher_sees_an_in_place_rewrite_that_keeps_inode_size_and_mtime(
    ring: KeyRing, ring_dir: Path
) -> None:
    # An in-place write (editor, `rsync --inplace -t`, a restore with `cp -p`) of a state file
    # of the same size whose mtime is put back: only ctime or the content tells.
    state = ring_dir / STATE_FILE
    mono = FakeClock(0)
    watcher = RingWatcher(ring_dir, interval=0.25, monotonic=mono)
    assert watcher.current().max_lifetime == 3600
    rewrite_keeping_stat(state, '"max_lifetime": 3600', '"max_lifetime": 1800')
    mono.advance(1)
    assert watcher.current().max_lifetime == 1800


# --- concurrency and crashes (real processes) ----------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_concurrent_rotations_in_separate_processes_never_corrupt_the_ring(
    ring: KeyRing, ring_dir: Path
) -> None:
    count = 5
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jwtmcp", "keys", "rotate", "--keys", str(ring_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
        )
        for _ in range(count)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()
        assert b"Traceback" not in err
    after = _assert_consistent(ring_dir)
    states = _states(after)
    assert len(states["retired"]) == count
    assert after.revision == ring.revision + count
    assert ring.active.kid in states["retired"]
    pems = {p.name for p in ring_dir.glob("*.pem")}
    assert pems == {k.file_name for k in after.keys}  # no orphans left behind


_ROTATE_LOOP = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwtmcp.cli import main
    from jwtmcp.keys import load_ring, rsa_kid

    ring_dir = Path(sys.argv[1])
    # Real, pre-generated RSA keys stand in for key generation (~0.1 s each), so the loop
    # spends its time in jwtmcp's file writes, where a kill can do damage.
    pool = [
        serialization.load_pem_private_key(Path(p).read_bytes(), None) for p in sys.argv[2:]
    ]

    def generate_private_key(public_exponent, key_size):
        kids = {e["kid"] for e in json.loads((ring_dir / "ring.json").read_text())["keys"]}
        return next(k for k in pool if rsa_kid(k.public_key()) not in kids)

    rsa.generate_private_key = generate_private_key
    print("ready", flush=True)
    while True:
        if main(["keys", "rotate", "--keys", str(ring_dir)]) != 0:
            sys.exit(3)
        for key in load_ring(ring_dir).keys:
            if key.state == "retired":
                if main(["keys", "revoke", key.kid, "--keys", str(ring_dir)]) != 0:
                    sys.exit(4)
    """
)


@pytest.fixture(scope="module")
def key_pool(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    directory = tmp_path_factory.mktemp("pool")
    paths = []
    for n in range(8):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path = directory / f"{n}.pem"
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        paths.append(str(path))
    return paths


def test_a_kill_in_the_middle_of_a_change_leaves_a_loadable_ring(
    ring: KeyRing, ring_dir: Path, key_pool: list[str]
) -> None:
    rng = random.Random(7)
    revisions = [ring.revision]
    for _ in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-c", _ROTATE_LOOP, str(ring_dir), *key_pool],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**_env(), "PYTHONUNBUFFERED": "1"},
        )
        assert proc.stdout is not None
        # Let it complete a few changes (however loaded the machine is), then kill it a
        # random moment later: in a key write, the state write, orphan cleanup, or between.
        changes = 0
        wanted = rng.randint(1, 4)
        deadline = time.monotonic() + 30
        while changes < wanted and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                line = proc.stdout.readline()
                assert line, proc.stderr.read().decode() if proc.stderr else ""
                changes += line.startswith((b"rotated", b"revoked"))
        assert changes == wanted
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=rng.uniform(0.0, 0.04))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGKILL, err.decode()
        revisions.append(_assert_consistent(ring_dir).revision)
    assert revisions == sorted(revisions) and revisions[-1] >= revisions[0] + 8
    # and the ring still takes a normal change afterwards, which also clears crash leftovers
    rotate_ring(ring_dir)
    after = _assert_consistent(ring_dir)
    assert {p.name for p in ring_dir.glob("*.pem")} == {k.file_name for k in after.keys}
    assert not list(ring_dir.glob(".*.tmp"))
