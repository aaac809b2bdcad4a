"""The state store: single-use codes, refresh families, replay windows, counters, buckets.

The behavioural tests run twice, against both backends, so both are proven equal: a real
SQLite file in a temporary directory and a real redis-server on loopback (each test under its
own key prefix). The races run in real separate processes. ``make_store`` is the one place
that knows the backend; tests of one backend's own properties say so in their names.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import sqlite3
import stat
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jwtmcp.errors import ConfigError, JwtMcpError, StoreError, StoreUnavailable
from jwtmcp.store import (
    MAX_CODE_TTL,
    Store,
    default_store_path,
    digest,
    new_opaque_token,
    open_store,
)
from jwtmcp.store.redis import RedisStore
from jwtmcp.store.sqlite import SqliteStore
from tests.redis_support import RedisServer, redis_server
from tests.support import FakeClock

MakeStore = Callable[..., Store]

GRANT = {
    "client_id": "https://app.example/client.json",
    "redirect_uri": "http://127.0.0.1:5000/cb",
    "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
    "resource": ["http://127.0.0.1:8001/mcp"],
    "scope": ["tool:add"],
    "sub": "alice",
}


BACKENDS = ["sqlite", "redis"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def location(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """Where this test's store lives: the SQLite file, or the Redis URL with a fresh prefix."""
    if backend == "sqlite":
        return str(tmp_path / "state.db")
    server: RedisServer = request.getfixturevalue("shared_redis")
    return f"{server.url}?prefix=t{uuid.uuid4().hex[:12]}:"


def open_location(location: str, clock: Any, **kwargs: Any) -> Store:
    if location.startswith("redis://"):
        return RedisStore(location, clock=clock, **kwargs)
    return SqliteStore(location, clock=clock, **kwargs)


@pytest.fixture
def make_store(location: str, clock: FakeClock) -> Iterator[MakeStore]:
    opened: list[Store] = []

    def make(**kwargs: Any) -> Store:
        store = open_location(location, kwargs.pop("clock", clock), **kwargs)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def make_sqlite(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., SqliteStore]]:
    opened: list[SqliteStore] = []

    def make(**kwargs: Any) -> SqliteStore:
        store = SqliteStore(tmp_path / "state.db", clock=kwargs.pop("clock", clock), **kwargs)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def stored_bytes(store: Store, tmp_path: Path) -> bytes:
    """Everything the backend holds on disk or in memory: the SQLite files (WAL included),
    or every key and value under the Redis store's prefix."""
    if isinstance(store, RedisStore):
        client = store._redis
        out = []
        for key in store.key_names():
            out.append(key.encode())
            kind = client.type(key)
            if kind == b"hash":
                out.extend(b"%s=%s" % kv for kv in client.hgetall(key).items())
            elif kind == b"zset":
                out.extend(client.zrange(key, 0, -1))
            else:
                out.append(client.get(key) or b"")
        return b"\n".join(out)
    files = [p for p in tmp_path.iterdir() if p.name.startswith("state.db")]
    assert b"-wal" in b"".join(p.name.encode() for p in files)  # the WAL was read too
    return b"".join(p.read_bytes() for p in files)


@pytest.fixture
def store(make_store: MakeStore) -> Store:
    return make_store()


def _family_from_code(store: Store, code: str, refresh: str) -> str:
    store.put_code(code, GRANT, ttl=60)
    taken = store.take_code(code)
    assert taken is not None and not taken.reused
    family = store.start_family(
        taken.family_id,
        refresh,
        client_id="app",
        subject="alice",
        grant=taken.grant,
        idle_ttl=3600,
        absolute_ttl=86400,
    )
    assert family is not None
    return family.family_id


# --- authorization codes -----------------------------------------------------------------


def test_take_code_returns_the_grant_once_then_reports_reuse(store: Store) -> None:
    code = new_opaque_token()
    store.put_code(code, GRANT, ttl=60)
    first = store.take_code(code)
    second = store.take_code(code)
    assert first is not None and not first.reused and dict(first.grant) == GRANT
    assert second is not None and second.reused and second.family_id == first.family_id


def test_unknown_code_is_none(store: Store) -> None:
    assert store.take_code(new_opaque_token()) is None


def test_code_expires_after_its_ttl(store: Store, clock: FakeClock) -> None:
    code = new_opaque_token()
    store.put_code(code, GRANT, ttl=30)
    clock.advance(30)
    assert store.take_code(code) is None


def test_code_works_until_just_before_its_ttl(store: Store, clock: FakeClock) -> None:
    code = new_opaque_token()
    store.put_code(code, GRANT, ttl=30)
    clock.advance(29.9)
    taken = store.take_code(code)
    assert taken is not None and not taken.reused


@pytest.mark.parametrize("ttl", [MAX_CODE_TTL + 1, 0, -5])
def test_code_ttl_must_be_within_60_seconds(store: Store, ttl: float) -> None:
    with pytest.raises(ConfigError):
        store.put_code(new_opaque_token(), GRANT, ttl=ttl)


def test_the_same_code_cannot_be_put_twice(store: Store) -> None:
    code = new_opaque_token()
    store.put_code(code, GRANT, ttl=60)
    with pytest.raises(StoreError):
        store.put_code(code, {"other": 1}, ttl=60)


def test_grant_must_be_json(store: Store) -> None:
    with pytest.raises(StoreError, match="JSON"):
        store.put_code(new_opaque_token(), {"when": object()}, ttl=60)


def test_code_reuse_revokes_the_family_started_from_its_first_use(store: Store) -> None:
    code, refresh = new_opaque_token(), new_opaque_token()
    family_id = _family_from_code(store, code, refresh)
    again = store.take_code(code)
    assert again is not None and again.reused
    assert store.list_families(subject="alice") == ()
    rotation = store.rotate_refresh(refresh, new_opaque_token(), client_id="app")
    assert rotation is not None and rotation.status == "revoked"
    assert rotation.family.family_id == family_id
    assert rotation.family.revoked_reason == "authorization code reused"


def test_code_reuse_before_the_family_starts_stops_it_from_starting(store: Store) -> None:
    code = new_opaque_token()
    store.put_code(code, GRANT, ttl=60)
    first = store.take_code(code)
    assert first is not None
    assert store.take_code(code) is not None  # the replay, while the first is still minting
    started = store.start_family(
        first.family_id,
        new_opaque_token(),
        client_id="app",
        subject="alice",
        grant=first.grant,
        idle_ttl=60,
        absolute_ttl=600,
    )
    assert started is None


def test_code_reuse_is_recognised_long_after_the_code_expired(
    store: Store, clock: FakeClock
) -> None:
    code, refresh = new_opaque_token(), new_opaque_token()
    _family_from_code(store, code, refresh)
    clock.advance(3600)
    again = store.take_code(code)
    assert again is not None and again.reused


def test_codes_and_refresh_tokens_are_stored_only_as_digests(
    store: Store, tmp_path: Path
) -> None:
    code, refresh, rotated = new_opaque_token(), new_opaque_token(), new_opaque_token()
    _family_from_code(store, code, refresh)
    store.rotate_refresh(refresh, rotated, client_id="app")
    raw = stored_bytes(store, tmp_path)
    for secret in (code, refresh, rotated):
        assert secret.encode() not in raw
    assert digest(code).encode() in raw


# --- refresh-token families --------------------------------------------------------------


def test_rotation_exchanges_the_current_token_for_a_new_one(store: Store) -> None:
    old, new = new_opaque_token(), new_opaque_token()
    _family_from_code(store, new_opaque_token(), old)
    rotation = store.rotate_refresh(old, new, client_id="app")
    assert rotation is not None and rotation.ok and rotation.family.generation == 1
    assert dict(rotation.family.grant) == GRANT
    again = store.rotate_refresh(new, new_opaque_token(), client_id="app")
    assert again is not None and again.ok and again.family.generation == 2


def test_presenting_a_rotated_token_revokes_the_whole_family(store: Store) -> None:
    old, new = new_opaque_token(), new_opaque_token()
    _family_from_code(store, new_opaque_token(), old)
    store.rotate_refresh(old, new, client_id="app")
    replay = store.rotate_refresh(old, new_opaque_token(), client_id="app")
    assert replay is not None and replay.status == "reused"
    assert replay.family.revoked_at is not None
    current = store.rotate_refresh(new, new_opaque_token(), client_id="app")
    assert current is not None and current.status == "revoked"


def test_a_refresh_token_presented_by_another_client_revokes_its_family(store: Store) -> None:
    old, new = new_opaque_token(), new_opaque_token()
    _family_from_code(store, new_opaque_token(), old)  # issued to client "app"
    stolen = store.rotate_refresh(old, new, client_id="attacker")
    assert stolen is not None and stolen.status == "wrong_client" and not stolen.ok
    owner = store.rotate_refresh(old, new_opaque_token(), client_id="app")
    assert owner is not None and owner.status == "revoked"
    assert store.rotate_refresh(new, new_opaque_token(), client_id="app") is None  # never issued


def test_unknown_refresh_token_is_none(store: Store) -> None:
    assert store.rotate_refresh(new_opaque_token(), new_opaque_token(), client_id="app") is None


def test_family_expires_when_idle_too_long(store: Store, clock: FakeClock) -> None:
    old = new_opaque_token()
    _family_from_code(store, new_opaque_token(), old)  # idle 3600 s
    clock.advance(3600)
    rotation = store.rotate_refresh(old, new_opaque_token(), client_id="app")
    assert rotation is not None and rotation.status == "expired"


def test_each_rotation_restarts_the_idle_lifetime(store: Store, clock: FakeClock) -> None:
    token = new_opaque_token()
    _family_from_code(store, new_opaque_token(), token)
    for _ in range(5):  # 5 x 3000 s: past one idle lifetime in total, never idle that long
        clock.advance(3000)
        nxt = new_opaque_token()
        rotation = store.rotate_refresh(token, nxt, client_id="app")
        assert rotation is not None and rotation.ok
        token = nxt


def test_family_ends_at_its_absolute_lifetime_however_often_used(
    store: Store, clock: FakeClock
) -> None:
    token = new_opaque_token()
    _family_from_code(store, new_opaque_token(), token)  # absolute 86400 s
    statuses = []
    for _ in range(30):  # every 3000 s: never idle, 90000 s in all
        clock.advance(3000)
        nxt = new_opaque_token()
        rotation = store.rotate_refresh(token, nxt, client_id="app")
        assert rotation is not None
        statuses.append(rotation.status)
        if not rotation.ok:
            break
        token = nxt
    assert statuses == ["rotated"] * 28 + ["expired"]  # at 87000 s, the first use past 86400


def test_families_are_listed_and_revoked_by_user_and_client(
    store: Store, clock: FakeClock
) -> None:
    made = {}
    for subject, client in [("alice", "app"), ("alice", "cli"), ("bob", "app")]:
        clock.advance(1)  # "oldest first": at one instant the order would be the random ids'
        taken = _code_for(store)
        family = store.start_family(
            taken,
            new_opaque_token(),
            client_id=client,
            subject=subject,
            grant={},
            idle_ttl=60,
            absolute_ttl=600,
        )
        assert family is not None
        made[(subject, client)] = family.family_id
    assert {f.client_id for f in store.list_families(subject="alice")} == {"app", "cli"}
    assert {f.subject for f in store.list_families(client_id="app")} == {"alice", "bob"}
    assert store.revoke_families(subject="alice", client_id="app") == 1
    assert [f.family_id for f in store.list_families()] == [
        made[("alice", "cli")],
        made[("bob", "app")],
    ]
    assert store.revoke_families(family_id=made[("bob", "app")]) == 1
    assert store.revoke_families(subject="alice") == 1
    assert store.list_families() == ()


def test_revoking_families_needs_a_filter(store: Store) -> None:
    with pytest.raises(StoreError):
        store.revoke_families()


def test_expired_families_are_not_listed(store: Store, clock: FakeClock) -> None:
    family = store.start_family(
        _code_for(store),
        new_opaque_token(),
        client_id="app",
        subject="alice",
        grant={},
        idle_ttl=60,
        absolute_ttl=600,
    )
    assert family is not None and store.list_families() == (family,)
    clock.advance(60)
    assert store.list_families() == ()


def _code_for(store: Store) -> str:
    code = new_opaque_token()
    store.put_code(code, {}, ttl=60)
    taken = store.take_code(code)
    assert taken is not None
    return taken.family_id


# --- replay windows and counters ---------------------------------------------------------


def test_remember_once_refuses_a_jti_seen_before_it_expires(
    store: Store, clock: FakeClock
) -> None:
    until = clock() + 300
    assert store.remember_once("jti-1", until) is True
    assert store.remember_once("jti-1", until) is False
    assert store.remember_once("jti-2", until) is True
    clock.advance(299)
    assert store.remember_once("jti-1", until) is False


def test_remember_once_forgets_a_jti_after_its_window(store: Store, clock: FakeClock) -> None:
    assert store.remember_once("jti-1", clock() + 300) is True
    clock.advance(300)
    assert store.remember_once("jti-1", clock() + 300) is True


def test_counter_counts_within_its_window_then_starts_again(
    store: Store, clock: FakeClock
) -> None:
    assert [store.count("user:alice", window=60) for _ in range(3)] == [1, 2, 3]
    assert store.peek_count("user:alice") == 3
    assert store.peek_count("user:bob") == 0
    clock.advance(60)
    assert store.peek_count("user:alice") == 0
    assert store.count("user:alice", window=60) == 1


def test_counter_reset_forgets_it(store: Store) -> None:
    store.count("ip:127.0.0.1", window=60)
    store.reset_count("ip:127.0.0.1")
    assert store.peek_count("ip:127.0.0.1") == 0


def test_uncount_takes_one_back_in_the_open_window_never_below_zero(
    store: Store, clock: FakeClock
) -> None:
    assert [store.count("ip:10.0.0.1", window=60) for _ in range(2)] == [1, 2]
    store.uncount("ip:10.0.0.1")
    assert store.peek_count("ip:10.0.0.1") == 1
    store.uncount("ip:10.0.0.1")
    store.uncount("ip:10.0.0.1")
    assert store.peek_count("ip:10.0.0.1") == 0
    store.uncount("ip:never-counted")
    assert store.peek_count("ip:never-counted") == 0
    assert store.count("ip:10.0.0.1", window=60) == 1
    clock.advance(60)
    store.uncount("ip:10.0.0.1")  # the window has closed: nothing to take back
    assert store.count("ip:10.0.0.1", window=60) == 1


# --- housekeeping ------------------------------------------------------------------------


def test_sqlite_purges_expired_rows_on_the_way(
    make_sqlite: Callable[..., SqliteStore], clock: FakeClock
) -> None:
    store = make_sqlite(purge_interval=60)
    _family_from_code(store, new_opaque_token(), new_opaque_token())  # tombstone: 1 day
    store.put_code(new_opaque_token(), GRANT, ttl=60)
    store.remember_once("jti", clock() + 60)
    store.count("k", window=60)
    assert sum(store.row_counts().values()) == 6
    clock.advance(86400)  # everything has expired, the family at its absolute end
    store.remember_once("later", clock() + 60)  # any write purges (interval passed)
    assert store.row_counts() == {
        "codes": 0,
        "families": 0,
        "refresh_tokens": 0,
        "replay": 1,
        "counters": 0,
        "buckets": 0,
    }


def test_sqlite_store_file_is_private(
    make_sqlite: Callable[..., SqliteStore], tmp_path: Path
) -> None:
    make_sqlite()
    assert stat.S_IMODE((tmp_path / "state.db").stat().st_mode) == 0o600


def test_sqlite_store_is_in_wal_mode(
    make_sqlite: Callable[..., SqliteStore], tmp_path: Path
) -> None:
    make_sqlite()
    with sqlite3.connect(tmp_path / "state.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_default_store_sits_beside_the_ring(tmp_path: Path) -> None:
    assert default_store_path(tmp_path / "keys") == tmp_path / "jwtmcp-state.db"


def test_open_store_takes_a_path_or_a_sqlite_url(tmp_path: Path, clock: FakeClock) -> None:
    for location in (tmp_path / "a.db", f"sqlite://{tmp_path}/b.db"):
        opened = open_store(location, clock=clock)
        assert opened.remember_once("x", clock() + 1) is True
        opened.close()
    assert (tmp_path / "a.db").exists() and (tmp_path / "b.db").exists()


@pytest.mark.parametrize("location", ["redis2://host/0", "sqlite://relative.db"])
def test_open_store_refuses_an_unknown_location(location: str) -> None:
    with pytest.raises(ConfigError):
        open_store(location)


# --- unavailable -------------------------------------------------------------------------


def test_store_under_a_file_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    with pytest.raises(StoreUnavailable) as caught:
        SqliteStore(tmp_path / "plain" / "state.db")
    assert isinstance(caught.value, JwtMcpError)
    assert caught.value.code == "store_unavailable" and caught.value.retry_after > 0


def test_store_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(b"this is not an sqlite file" * 100)
    with pytest.raises(StoreUnavailable, match="not a database"):
        SqliteStore(tmp_path / "state.db")


def test_sqlite_store_locked_too_long_by_another_process_is_unavailable(
    make_sqlite: Callable[..., SqliteStore], tmp_path: Path
) -> None:
    store = make_sqlite(busy_timeout=0.05)
    holder = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable, match="locked") as caught:
            store.put_code(new_opaque_token(), GRANT, ttl=60)
        assert caught.value.retry_after == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.put_code(new_opaque_token(), GRANT, ttl=60)  # works again once the lock is gone


def test_store_made_by_a_newer_version_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "state.db") as conn:
        conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        SqliteStore(tmp_path / "state.db")


# --- several processes at once -----------------------------------------------------------

WORKERS = 6


class _RendezvousClock(FakeClock):
    """A fixed clock whose first reading waits (at most ``patience`` s) for the other racers.

    The store reads its clock inside the transaction, after taking (or trying to take) the
    lock. Without a real lock every racer meets the others here and they all read the row
    before anyone writes it, so a non-atomic store fails these tests every time. With the
    lock only one racer is inside: it waits ``patience`` s, the barrier breaks, the rest
    pass straight through. A slow machine changes only how long the first racer waits.
    """

    def __init__(self, start: float, barrier: Any, patience: float = 1.0) -> None:
        super().__init__(start)
        self._barrier: Any = barrier
        self._patience = patience

    def __call__(self) -> float:
        if self._barrier is not None:
            barrier, self._barrier = self._barrier, None
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout=self._patience)
        return self.now


def _race(
    path: str, start: float, job: str, argument: str, ready: Any, inside: Any, results: Any
) -> None:
    clock = _RendezvousClock(start, inside)
    store = (
        RedisStore(path, clock=clock, socket_timeout=60)
        if path.startswith("redis://")
        else SqliteStore(path, clock=clock, busy_timeout=60)
    )
    ready.wait(timeout=60)
    if job == "take":
        taken = store.take_code(argument)
        results.put("none" if taken is None else "reused" if taken.reused else "won")
    elif job == "rotate":
        rotation = store.rotate_refresh(argument, new_opaque_token(), client_id="app")
        results.put("none" if rotation is None else rotation.status)
    elif job == "remember":
        results.put(store.remember_once(argument, start + 60))
    elif job == "count":
        results.put(max(store.count(argument, window=60) for _ in range(20)))
    elif job == "bucket":
        results.put(sum(store.take_token(argument, rate=0.001, burst=10) == 0 for _ in range(5)))
    store.close()


def _run_race(path: str, clock: FakeClock, job: str, argument: str) -> list[Any]:
    ctx = multiprocessing.get_context("spawn")
    ready, inside = ctx.Barrier(WORKERS), ctx.Barrier(WORKERS)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_race, args=(path, clock(), job, argument, ready, inside, results)
        )
        for _ in range(WORKERS)
    ]
    for proc in procs:
        proc.start()
    try:
        out = [results.get(timeout=120) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join()
    assert all(proc.exitcode == 0 for proc in procs)
    return out


def test_processes_racing_to_take_one_code_exactly_one_wins(
    store: Store, location: str, clock: FakeClock
) -> None:
    code = new_opaque_token()
    store.put_code(code, GRANT, ttl=60)
    outcomes = _run_race(location, clock, "take", code)
    assert sorted(outcomes) == ["reused"] * (WORKERS - 1) + ["won"]


def test_processes_racing_to_rotate_one_refresh_token_exactly_one_rotates(
    store: Store, location: str, clock: FakeClock
) -> None:
    refresh = new_opaque_token()
    _family_from_code(store, new_opaque_token(), refresh)
    outcomes = _run_race(location, clock, "rotate", refresh)
    assert outcomes.count("rotated") == 1
    assert outcomes.count("reused") == 1  # the first loser revokes the family...
    assert outcomes.count("revoked") == WORKERS - 2  # ...and the others find it revoked
    assert store.list_families() == ()


def test_processes_racing_to_remember_one_jti_exactly_one_is_first(
    store: Store, location: str, clock: FakeClock
) -> None:
    outcomes = _run_race(location, clock, "remember", "jti-race")
    assert sorted(outcomes) == [False] * (WORKERS - 1) + [True]


def test_processes_counting_at_once_lose_no_count(
    store: Store, location: str, clock: FakeClock
) -> None:
    _run_race(location, clock, "count", "user:alice")
    assert store.peek_count("user:alice") == WORKERS * 20


# --- redeem_code: take a code and start its family in one write ---------------------------


def test_redeem_code_starts_the_family_with_the_codes_grant(store: Store) -> None:
    code, refresh_token = new_opaque_token(), new_opaque_token()
    store.put_code(code, {"client_id": "app", "subject": "alice", "scope": "tool:add"}, ttl=60)
    taken = store.redeem_code(code, refresh_token, idle_ttl=60, absolute_ttl=600)
    assert taken is not None and not taken.reused
    (family,) = store.list_families(subject="alice", client_id="app")
    assert family.family_id == taken.family_id and family.grant["scope"] == "tool:add"
    rotation = store.rotate_refresh(refresh_token, new_opaque_token(), client_id="app")
    assert rotation is not None and rotation.status == "rotated"


def test_a_code_reused_after_redeem_code_revokes_the_family_it_started(store: Store) -> None:
    code, refresh_token = new_opaque_token(), new_opaque_token()
    store.put_code(code, {"client_id": "app", "subject": "alice"}, ttl=60)
    assert store.redeem_code(code, refresh_token, idle_ttl=60, absolute_ttl=600) is not None
    again = store.redeem_code(code, new_opaque_token(), idle_ttl=60, absolute_ttl=600)
    assert again is not None and again.reused
    assert store.list_families(subject="alice") == ()
    rotation = store.rotate_refresh(refresh_token, new_opaque_token(), client_id="app")
    assert rotation is not None and rotation.status == "revoked"


# --- several connections: the issuer's two in one process, the CLI in another ---------------


def _families_seen_by_another_process(path: Path, now: float) -> int:
    """``list_families()`` as another process sees it (``jwtmcp sessions list`` does this)."""
    import subprocess
    import sys

    code = (
        "import sys; from jwtmcp.store.sqlite import SqliteStore; "
        f"s = SqliteStore(sys.argv[1], clock=lambda: {now!r}); "
        "print(len(s.list_families())); s.close()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_a_second_sqlite_connection_in_the_process_keeps_the_first_ones_locks(
    make_sqlite: Callable[..., SqliteStore], tmp_path: Path, clock: FakeClock
) -> None:
    # The issuer holds two connections to one file (sign-in pages and grants). Opening the
    # second must not drop the first one's POSIX locks (closing any descriptor of the file
    # does): another process would then think itself the last user, fold the WAL into the
    # database and delete it while the issuer still writes there.
    first = make_sqlite()
    _family_from_code(first, "code-1", "refresh-1")
    second = make_sqlite()
    second.peek_count("opens the second connection")
    assert _families_seen_by_another_process(tmp_path / "state.db", clock()) == 1
    _family_from_code(first, "code-2", "refresh-2")
    assert _families_seen_by_another_process(tmp_path / "state.db", clock()) == 2
    assert (tmp_path / "state.db-wal").exists()


# --- token buckets (the issuer's /token rate limits, shared by replicas) -------------------


def test_bucket_allows_its_burst_then_says_how_long_to_wait(
    store: Store, clock: FakeClock
) -> None:
    waits = [store.take_token("client:app", rate=2, burst=3) for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(0.5)  # one token at 2 per second
    assert store.take_token("client:other", rate=2, burst=3) == 0.0  # its own bucket


def test_bucket_refills_at_its_rate_up_to_its_burst(store: Store, clock: FakeClock) -> None:
    for _ in range(3):
        store.take_token("k", rate=1, burst=3)
    clock.advance(1.5)  # 1.5 tokens back
    assert store.take_token("k", rate=1, burst=3) == 0.0
    assert store.take_token("k", rate=1, burst=3) == pytest.approx(0.5)
    clock.advance(3600)  # full again, never fuller than the burst
    assert [store.take_token("k", rate=1, burst=3) for _ in range(4)][3] > 0


def test_a_refused_request_takes_nothing_from_the_bucket(store: Store, clock: FakeClock) -> None:
    store.take_token("k", rate=1, burst=1)
    for _ in range(5):
        assert store.take_token("k", rate=1, burst=1) > 0
    clock.advance(1)
    assert store.take_token("k", rate=1, burst=1) == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (1, 0), (1, 1.5)])
def test_bucket_needs_a_positive_rate_and_a_whole_burst(
    store: Store, rate: float, burst: Any
) -> None:
    with pytest.raises(ConfigError):
        store.take_token("k", rate=rate, burst=burst)


def test_processes_racing_on_one_bucket_take_exactly_its_burst(
    store: Store, location: str, clock: FakeClock
) -> None:
    outcomes = _run_race(location, clock, "bucket", "client:app")  # 6 x 5 tries, burst 10
    assert sum(outcomes) == 10


def test_sqlite_store_of_schema_1_gains_the_buckets_table(tmp_path: Path) -> None:
    SqliteStore(tmp_path / "state.db").close()
    with contextlib.closing(sqlite3.connect(tmp_path / "state.db")) as db:
        db.execute("DROP TABLE buckets")  # as jwtmcp made it before the tables of version 2
        db.execute("PRAGMA user_version=1")
        db.commit()
    with SqliteStore(tmp_path / "state.db") as store:
        assert store.take_token("k", rate=1, burst=1) == 0.0
        assert store.row_counts()["buckets"] == 1


# --- Redis: its own properties ---------------------------------------------------------------


def _redis_store(server: RedisServer, clock: Any, **kwargs: Any) -> RedisStore:
    return RedisStore(f"{server.url}?prefix=t{uuid.uuid4().hex[:12]}:", clock=clock, **kwargs)


def _fill(store: Store, clock: FakeClock) -> None:
    """One record of every kind: codes (taken and not), a rotated family, a window, a
    counter, a bucket."""
    refresh = new_opaque_token()
    _family_from_code(store, new_opaque_token(), refresh)
    store.rotate_refresh(refresh, new_opaque_token(), client_id="app")
    store.put_code(new_opaque_token(), GRANT, ttl=60)
    store.remember_once("jti", clock() + 60)
    store.count("k", window=60)
    store.take_token("b", rate=1, burst=5)


def test_redis_gives_every_key_a_ttl_no_longer_than_its_record_lives(
    shared_redis: RedisServer, clock: FakeClock
) -> None:
    store = _redis_store(shared_redis, clock)
    _fill(store, clock)
    client = store._redis
    ttls = {key: client.ttl(key) for key in store.key_names()}
    assert len(ttls) == 11  # 2 codes, family, 2 tokens, 3 indexes, window, counter, bucket
    longest = {"c:": 86401, "f:": 3601, "r:": 86401, "fa": 86401, "fs": 86401, "fc": 86401}
    longest.update({"o:": 61, "n:": 61, "b:": 6})
    for key, ttl in ttls.items():
        kind = key[len(store.prefix) : len(store.prefix) + 2]
        assert 0 < ttl <= longest[kind], (key, ttl)
    store.close()


def test_redis_purge_deletes_what_expired_by_the_stores_clock(
    shared_redis: RedisServer, clock: FakeClock
) -> None:
    store = _redis_store(shared_redis, clock)
    _fill(store, clock)
    assert store.purge_expired() == 0
    clock.advance(86400)  # everything has expired, the family at its absolute end
    store.remember_once("later", clock() + 60)
    store.purge_expired()
    assert [k[len(store.prefix) :] for k in store.key_names()] == ["o:" + digest("later")]
    store.close()


def test_redis_that_is_down_is_unavailable_with_a_retry_after(
    tmp_path: Path, clock: FakeClock
) -> None:
    with redis_server(tmp_path / "redis") as server:
        store = RedisStore(server.url, clock=clock)
        store.put_code(new_opaque_token(), GRANT, ttl=60)
        server.stop()
        with pytest.raises(StoreUnavailable) as caught:
            store.put_code(new_opaque_token(), GRANT, ttl=60)
    assert caught.value.code == "store_unavailable" and caught.value.retry_after > 0
    assert "127.0.0.1" in caught.value.message


def test_redis_password_is_used_and_never_in_an_error(tmp_path: Path, clock: FakeClock) -> None:
    secret = "s3cret-" + uuid.uuid4().hex
    with redis_server(tmp_path / "redis", password=secret) as server:
        with RedisStore(server.url, clock=clock) as good:
            assert good.remember_once("jti", clock() + 60) is True
        wrong = server.url.replace(secret, secret + "x")
        with pytest.raises(StoreUnavailable) as caught, RedisStore(wrong, clock=clock) as bad:
            bad.remember_once("jti", clock() + 60)
    assert secret not in caught.value.message and ":***@" in caught.value.message


def test_redis_that_never_answers_is_unavailable_within_the_socket_timeout(
    clock: FakeClock,
) -> None:
    import socket
    import time

    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        store = RedisStore(url, clock=clock, socket_timeout=0.2)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="unavailable"):
            store.take_code(new_opaque_token())
        assert time.monotonic() - started < 5  # bounded by the timeout, not hanging
        store.close()


def test_open_store_takes_redis_and_unix_socket_urls(tmp_path: Path, clock: FakeClock) -> None:
    socket_path = tmp_path / "redis.sock"
    with redis_server(
        tmp_path / "redis", extra=["--unixsocket", str(socket_path), "--unixsocketperm", "700"]
    ) as server:
        for location in (
            f"redis://127.0.0.1:{server.port}/0?prefix=a:",
            f"unix://{socket_path}?db=0&prefix=b:",
        ):
            opened = open_store(location, clock=clock)
            assert isinstance(opened, RedisStore) and opened.networked
            assert opened.remember_once("x", clock() + 60) is True
            opened.close()
        assert sorted(k.decode()[:2] for k in server.client().keys("*")) == ["a:", "b:"]


@pytest.mark.parametrize(
    "location", ["redis://:pw@127.0.0.1:notaport/0", "redis://127.0.0.1/0?socket_timeout=x"]
)
def test_open_store_refuses_a_bad_redis_url_without_showing_its_password(location: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_store(location)
    assert ":pw@" not in caught.value.message


def test_remember_once_takes_a_window_ending_in_the_far_future(
    store: Store, clock: FakeClock
) -> None:
    assert store.remember_once("jti-far", 1e17) is True
    assert store.remember_once("jti-far", 1e17) is False


def test_counters_buckets_and_families_take_lifetimes_far_in_the_future(
    store: Store, clock: FakeClock
) -> None:
    assert [store.count("k", window=1e17) for _ in range(2)] == [1, 2]
    assert store.take_token("b", rate=1e-12, burst=10**6) == 0.0  # full again in 1e18 s
    code = new_opaque_token()
    store.put_code(code, {"client_id": "app", "subject": "alice"}, ttl=60)
    assert store.redeem_code(code, new_opaque_token(), idle_ttl=1e17, absolute_ttl=1e17)


def test_a_family_keeps_a_bounded_number_of_rotated_tokens(
    store: Store, location: str
) -> None:
    """Every rotation used to keep its rotated-away token (a Redis ``r:`` key of ~300 bytes,
    an SQLite row) until the family's absolute end, 90 days: one signed-in client rotating in
    a loop (the refresh grant has no rate limit) grew the store without bound until Redis
    was full and every sign-in failed. A family now remembers its recent rotated tokens only,
    and reuse of one of those still revokes it."""
    tokens = [new_opaque_token()]
    family = store.start_family(
        _code_for(store), tokens[0], client_id="app", subject="alice", grant={},
        idle_ttl=600, absolute_ttl=6000,
    )
    assert family is not None
    for _ in range(300):
        tokens.append(new_opaque_token())
        rotation = store.rotate_refresh(tokens[-2], tokens[-1], client_id="app")
        assert rotation is not None and rotation.status == "rotated"
    if isinstance(store, RedisStore):
        kept = len([k for k in store.key_names() if k.startswith(store.prefix + "r:")])
    else:
        with contextlib.closing(sqlite3.connect(location)) as conn:
            kept = conn.execute("SELECT count(*) FROM refresh_tokens").fetchone()[0]
    assert kept <= 100, f"{kept} refresh-token records kept for one family after 300 rotations"
    assert store.rotate_refresh(tokens[0], new_opaque_token(), client_id="app") is None
    reused = store.rotate_refresh(tokens[-10], new_opaque_token(), client_id="app")
    assert reused is not None and reused.status == "reused"
    assert store.find_refresh(tokens[-1]) is not None
    assert store.find_refresh(tokens[-1]).revoked_at is not None  # type: ignore[union-attr]


@pytest.mark.parametrize("seconds", [math.inf, math.nan, -math.inf])
def test_every_backend_refuses_a_lifetime_or_window_that_is_not_a_finite_positive_number(
    store: Store, seconds: float
) -> None:
    """The same rule on both backends: a refresh family's lifetimes, a counter's window and
    a bucket's rate are finite positive seconds (an infinite lifetime is a refresh token
    that never expires)."""
    store.put_code(code := new_opaque_token(), GRANT, ttl=60)
    taken = store.take_code(code)
    assert taken is not None
    for lifetimes in ({"idle_ttl": seconds, "absolute_ttl": 86400},
                      {"idle_ttl": 3600, "absolute_ttl": seconds}):  # fmt: skip
        with pytest.raises(ConfigError):
            store.start_family(
                taken.family_id, new_opaque_token(), client_id="app", subject="alice",
                grant=taken.grant, **lifetimes,
            )  # fmt: skip
    with pytest.raises(ConfigError):
        store.count("failures:alice", window=seconds)
    with pytest.raises(ConfigError):
        store.take_token("bucket:app", rate=seconds, burst=3)
