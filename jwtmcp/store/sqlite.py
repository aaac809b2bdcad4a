"""The default store: one SQLite file, safe for several processes on one machine.

Why SQLite: no server to run, and its locking already gives what ``jwtmcp serve --workers N``
needs. The file is in WAL mode (readers never wait for the writer) and every change runs in
a ``BEGIN IMMEDIATE`` transaction, which takes the database's single write lock before it
reads, so a read-check-write (take a code, rotate a refresh token) is atomic across
processes: of several processes racing to take one code, exactly one sees it untaken.
``synchronous=NORMAL``: a commit survives a crash of the process; a power cut may lose the
last few commits (a client then signs in again), never corrupts the file.

Only SHA-256 digests of codes, refresh tokens, ``jti`` values and counter keys are stored.
Expired rows are deleted on the way, at most once per ``purge_interval`` seconds of the
injected clock, inside a write the caller makes anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError, StoreError, StoreUnavailable
from ..tokens import Clock
from . import (
    DEFAULT_CODE_TOMBSTONE_TTL,
    MAX_CODE_TTL,
    ROTATED_TOKENS_KEPT,
    CodeRedemption,
    RefreshFamily,
    Rotation,
    RotationStatus,
    canonical_grant_json,
    digest,
    new_opaque_token,
    positive_seconds,
)

SCHEMA_VERSION = 2
"""2 added the ``buckets`` table (token buckets); a version-1 file is upgraded in place."""
DEFAULT_BUSY_TIMEOUT = 5.0
"""Seconds a call waits for another process's write lock before :class:`StoreUnavailable`."""
DEFAULT_PURGE_INTERVAL = 60.0
MMAP_SIZE = 256 * 1024 * 1024
"""Bytes of the database file each connection reads through a memory map (address space,
not memory): a page that is not in the connection's cache costs no ``pread`` copy."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS codes (
    code_hash   TEXT PRIMARY KEY,
    grant_json  TEXT NOT NULL,
    family_id   TEXT NOT NULL,
    expires_at  REAL NOT NULL,   -- an untaken code works until then
    taken_at    REAL,            -- set by the first take
    forget_at   REAL NOT NULL    -- the row is deleted after this
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS families (
    family_id           TEXT PRIMARY KEY,
    client_id           TEXT NOT NULL,
    subject             TEXT NOT NULL,
    grant_json          TEXT NOT NULL,
    created_at          REAL NOT NULL,
    last_used_at        REAL NOT NULL,
    idle_ttl            REAL NOT NULL,
    absolute_expires_at REAL NOT NULL,
    generation          INTEGER NOT NULL,
    current_hash        TEXT,
    revoked_at          REAL,
    revoked_reason      TEXT,
    forget_at           REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS families_by_subject ON families (subject);
CREATE INDEX IF NOT EXISTS families_by_client ON families (client_id);
CREATE INDEX IF NOT EXISTS families_by_forget ON families (forget_at);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    family_id   TEXT NOT NULL,
    generation  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refresh_tokens_by_family ON refresh_tokens (family_id);
CREATE TABLE IF NOT EXISTS replay (
    key_hash    TEXT PRIMARY KEY,
    expires_at  REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    key_hash    TEXT PRIMARY KEY,
    value       INTEGER NOT NULL,
    expires_at  REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS buckets (
    key_hash    TEXT PRIMARY KEY,
    tokens      REAL NOT NULL,
    updated_at  REAL NOT NULL,
    expires_at  REAL NOT NULL    -- full again by then: forgetting it changes nothing
) WITHOUT ROWID;
"""

_FAMILY_COLUMNS = (
    "family_id, client_id, subject, grant_json, created_at, last_used_at, idle_ttl, "
    "absolute_expires_at, generation, revoked_at, revoked_reason"
)
_ACTIVE = "revoked_at IS NULL AND min(absolute_expires_at, last_used_at + idle_ttl) > ?"


def _from_json(text: str) -> Mapping[str, Any]:
    value = json.loads(text)
    return MappingProxyType(value if isinstance(value, dict) else {})


def _family(row: sqlite3.Row | tuple[Any, ...]) -> RefreshFamily:
    return RefreshFamily(
        family_id=row[0],
        client_id=row[1],
        subject=row[2],
        grant=_from_json(row[3]),
        created_at=row[4],
        last_used_at=row[5],
        idle_ttl=row[6],
        absolute_expires_at=row[7],
        generation=row[8],
        revoked_at=row[9],
        revoked_reason=row[10],
    )


class SqliteStore:
    """:class:`~jwtmcp.store.Store` on an SQLite file at ``path`` (created 0600 if missing).

    ``clock`` gives epoch seconds for every TTL. ``busy_timeout`` (seconds) is how long a
    call waits for another process's write lock; past it, and whenever the file cannot be
    opened, read or written, calls raise :class:`~jwtmcp.errors.StoreUnavailable`.
    ``code_tombstone_ttl`` (seconds) is how long a redeemed code is remembered so that a
    second use is recognised as reuse rather than an unknown code. One instance may be used
    from several threads; a process that forks gets its own connection in the child.
    """

    networked = False
    """One machine's file: the issuer keeps its ``/token`` rate limits in process memory."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = time.time,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        code_tombstone_ttl: float = DEFAULT_CODE_TOMBSTONE_TTL,
        purge_interval: float = DEFAULT_PURGE_INTERVAL,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._busy_timeout = positive_seconds("busy_timeout", busy_timeout)
        self._tombstone_ttl = positive_seconds("code_tombstone_ttl", code_tombstone_ttl)
        self._purge_interval = purge_interval
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._purged_at = float("-inf")
        self._closed = False
        with self._lock:
            self._connection()  # fail at start-up, not on the first sign-in

    # --- connection and transactions ---------------------------------------------------

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        text = str(exc)
        busy = "locked" in text or "busy" in text
        return StoreUnavailable(
            f"the state store {self.path} is unavailable: {text}", retry_after=1 if busy else 5
        )

    def _create_private(self) -> None:
        """Create the database file 0600 if it does not exist yet (SQLite would use 0644).

        Only a file that does not exist is opened here: closing any descriptor of the file
        drops every POSIX lock this process holds on it, including those of another open
        connection, and another process would then take itself for the last user, fold the
        WAL into the database and delete it under us. SQLite gives the -wal and -shm files
        the database file's mode.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        os.close(fd)

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("the state store was closed")
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        # A connection must not cross a fork (SQLite's rule): a child opens its own and
        # leaves the parent's alone (closing it here could disturb the parent's locks).
        self._conn = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._create_private()
            conn = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,  # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
                check_same_thread=False,
            )
        except (OSError, sqlite3.Error) as exc:
            raise self._unavailable(exc) from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA mmap_size={MMAP_SIZE}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the state store {self.path} was made by a newer jwtmcp "
                    f"(schema {version}, this one knows {SCHEMA_VERSION})"
                )
            if version < SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            conn.close()
            raise self._unavailable(exc) from None
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[tuple[sqlite3.Connection, float]]:
        """A ``BEGIN IMMEDIATE`` transaction and the time ``now`` it runs at."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from None
            now = self._clock()
            try:
                yield conn, now
                if now - self._purged_at >= self._purge_interval:
                    self._purge(conn, now)
                    self._purged_at = now
                conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
                    raise
                if isinstance(exc, sqlite3.Error):
                    raise self._unavailable(exc) from None
                raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[tuple[sqlite3.Connection, float]]:
        with self._lock:
            conn = self._connection()
            try:
                yield conn, self._clock()
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
            self._closed = True

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- authorization codes (OAuth 2.1 4.1.3) -----------------------------------------

    def put_code(self, code: str, grant: Mapping[str, Any], *, ttl: float) -> None:
        ttl = positive_seconds("a code's ttl", ttl)
        if ttl > MAX_CODE_TTL:
            raise ConfigError(f"an authorization code lives at most {MAX_CODE_TTL} s, not {ttl}")
        grant_json = canonical_grant_json(grant)
        try:
            with self._write() as (conn, now):
                conn.execute(
                    "INSERT INTO codes (code_hash, grant_json, family_id, expires_at, forget_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (digest(code), grant_json, new_opaque_token(), now + ttl, now + ttl),
                )
        except sqlite3.IntegrityError:
            raise StoreError("this authorization code was issued already") from None

    def take_code(self, code: str) -> CodeRedemption | None:
        with self._write() as (conn, now):
            taken = self._claim_code(conn, now, digest(code))
            return taken[0] if taken is not None else None

    def redeem_code(
        self, code: str, refresh_token: str, *, idle_ttl: float, absolute_ttl: float
    ) -> CodeRedemption | None:
        idle = positive_seconds("the refresh idle lifetime", idle_ttl)
        absolute = positive_seconds("the refresh absolute lifetime", absolute_ttl)
        code_hash, token_hash = digest(code), digest(refresh_token)
        with self._write() as (conn, now):
            taken = self._claim_code(conn, now, code_hash)
            if taken is None or taken[0].reused:
                return taken[0] if taken is not None else None
            redemption, grant_json = taken
            client_id = redemption.grant.get("client_id")
            subject = redemption.grant.get("subject")
            if not isinstance(client_id, str) or not isinstance(subject, str):
                # Raised inside the write: the code's claim above is rolled back.
                raise StoreError("a code redeemed with a refresh token needs client_id and subject")
            self._insert_family(
                conn,
                now,
                redemption.family_id,
                token_hash,
                client_id,
                subject,
                grant_json,
                idle,
                absolute,
                redemption.grant,
            )
            return redemption

    def _claim_code(
        self, conn: sqlite3.Connection, now: float, code_hash: str
    ) -> tuple[CodeRedemption, str] | None:
        """Inside a write: use code ``code_hash`` up (OAuth 2.1 4.1.3), with its grant JSON.

        None for an unknown or expired code; a code already used revokes the family started
        from its first use and comes back with ``reused=True``.
        """
        row = conn.execute(
            "SELECT grant_json, family_id, expires_at, taken_at FROM codes"
            " WHERE code_hash = ? AND forget_at > ?",
            (code_hash, now),
        ).fetchone()
        if row is None:
            return None
        grant_json, family_id, expires_at, taken_at = row
        if taken_at is not None:
            self._revoke_family_id(conn, now, family_id, "authorization code reused")
            return CodeRedemption(_from_json(grant_json), family_id, reused=True), grant_json
        if now >= expires_at:
            conn.execute("DELETE FROM codes WHERE code_hash = ?", (code_hash,))
            return None
        conn.execute(
            "UPDATE codes SET taken_at = ?, forget_at = ? WHERE code_hash = ?",
            (now, now + self._tombstone_ttl, code_hash),
        )
        return CodeRedemption(_from_json(grant_json), family_id, reused=False), grant_json

    def _revoke_family_id(
        self, conn: sqlite3.Connection, now: float, family_id: str, reason: str
    ) -> None:
        changed = conn.execute(
            "UPDATE families SET revoked_at = ?, revoked_reason = ?"
            " WHERE family_id = ? AND revoked_at IS NULL",
            (now, reason, family_id),
        ).rowcount
        if changed == 0:
            # Not started yet (the first redemption is still minting): leave a revoked
            # placeholder, so start_family() refuses it when it comes.
            conn.execute(
                "INSERT OR IGNORE INTO families (family_id, client_id, subject, grant_json,"
                " created_at, last_used_at, idle_ttl, absolute_expires_at, generation,"
                " current_hash, revoked_at, revoked_reason, forget_at)"
                " VALUES (?, '', '', '{}', ?, ?, 0, ?, 0, NULL, ?, ?, ?)",
                (family_id, now, now, now, now, reason, now + self._tombstone_ttl),
            )

    # --- refresh-token families (OAuth 2.1 4.3.1, RFC 9700 4.14.2) -------------------

    def start_family(
        self,
        family_id: str,
        refresh_token: str,
        *,
        client_id: str,
        subject: str,
        grant: Mapping[str, Any],
        idle_ttl: float,
        absolute_ttl: float,
    ) -> RefreshFamily | None:
        idle = positive_seconds("the refresh idle lifetime", idle_ttl)
        absolute = positive_seconds("the refresh absolute lifetime", absolute_ttl)
        if not family_id:
            raise StoreError("a refresh family needs an id (from take_code)")
        grant_json = canonical_grant_json(grant)
        with self._write() as (conn, now):
            existing = conn.execute(
                "SELECT revoked_at FROM families WHERE family_id = ?", (family_id,)
            ).fetchone()
            if existing is not None:
                if existing[0] is not None:
                    return None
                raise StoreError("this refresh family was started already")
            return self._insert_family(
                conn,
                now,
                family_id,
                digest(refresh_token),
                client_id,
                subject,
                grant_json,
                idle,
                absolute,
            )

    @staticmethod
    def _insert_family(
        conn: sqlite3.Connection,
        now: float,
        family_id: str,
        token_hash: str,
        client_id: str,
        subject: str,
        grant_json: str,
        idle: float,
        absolute: float,
        grant: Mapping[str, Any] | None = None,
    ) -> RefreshFamily:
        """Store a new family and its first refresh token (generation 0), inside a write.

        ``grant`` is ``grant_json`` already decoded, when the caller has it."""
        try:
            conn.execute(
                "INSERT INTO refresh_tokens (token_hash, family_id, generation) VALUES (?, ?, 0)",
                (token_hash, family_id),
            )
        except sqlite3.IntegrityError:
            raise StoreError("this refresh token was issued already") from None
        family = RefreshFamily(
            family_id=family_id,
            client_id=client_id,
            subject=subject,
            grant=_from_json(grant_json) if grant is None else grant,
            created_at=now,
            last_used_at=now,
            idle_ttl=idle,
            absolute_expires_at=now + absolute,
            generation=0,
        )
        conn.execute(
            "INSERT INTO families (family_id, client_id, subject, grant_json, created_at,"
            " last_used_at, idle_ttl, absolute_expires_at, generation, current_hash,"
            " forget_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
            (
                family_id,
                client_id,
                subject,
                grant_json,
                now,
                now,
                idle,
                family.absolute_expires_at,
                token_hash,
                family.expires_at,
            ),
        )
        return family

    def rotate_refresh(
        self, refresh_token: str, new_refresh_token: str, *, client_id: str
    ) -> Rotation | None:
        old_hash, new_hash = digest(refresh_token), digest(new_refresh_token)
        if old_hash == new_hash:
            raise StoreError("the new refresh token must differ from the old one")
        with self._write() as (conn, now):
            row = conn.execute(
                f"SELECT {_FAMILY_COLUMNS}, current_hash FROM families WHERE family_id ="  # noqa: S608
                " (SELECT family_id FROM refresh_tokens WHERE token_hash = ?)",
                (old_hash,),
            ).fetchone()
            if row is None:
                return None
            family, current_hash = _family(row), row[11]
            if family.revoked_at is not None:
                return Rotation("revoked", family)
            if family.client_id != client_id or current_hash != old_hash:
                status: RotationStatus = (
                    "wrong_client" if family.client_id != client_id else "reused"
                )
                reason = (
                    "refresh token presented by another client"
                    if status == "wrong_client"
                    else "refresh token reused"
                )
                self._revoke_family_id(conn, now, family.family_id, reason)
                return Rotation(status, replace(family, revoked_at=now, revoked_reason=reason))
            if now >= family.expires_at:
                return Rotation("expired", family)
            try:
                conn.execute(
                    "INSERT INTO refresh_tokens (token_hash, family_id, generation)"
                    " VALUES (?, ?, ?)",
                    (new_hash, family.family_id, family.generation + 1),
                )
            except sqlite3.IntegrityError:
                raise StoreError("the new refresh token was issued already") from None
            rotated = replace(family, last_used_at=now, generation=family.generation + 1)
            conn.execute(  # only the most recent rotated tokens are remembered
                "DELETE FROM refresh_tokens WHERE family_id = ? AND generation < ?",
                (family.family_id, rotated.generation - ROTATED_TOKENS_KEPT),
            )
            conn.execute(
                "UPDATE families SET current_hash = ?, generation = ?, last_used_at = ?,"
                " forget_at = ? WHERE family_id = ?",
                (new_hash, rotated.generation, now, rotated.expires_at, family.family_id),
            )
            return Rotation("rotated", rotated)

    def find_refresh(self, refresh_token: str) -> RefreshFamily | None:
        with self._read() as (conn, _now):
            row = conn.execute(
                f"SELECT {_FAMILY_COLUMNS} FROM families WHERE family_id ="  # noqa: S608
                " (SELECT family_id FROM refresh_tokens WHERE token_hash = ?)",
                (digest(refresh_token),),
            ).fetchone()
        return None if row is None else _family(row)

    def list_families(
        self, *, subject: str | None = None, client_id: str | None = None
    ) -> Sequence[RefreshFamily]:
        where, params = self._filters(None, subject, client_id)
        with self._read() as (conn, now):
            rows = conn.execute(
                f"SELECT {_FAMILY_COLUMNS} FROM families WHERE {_ACTIVE}{where}"  # noqa: S608
                " ORDER BY created_at, family_id",
                (now, *params),
            ).fetchall()
        return tuple(_family(row) for row in rows)

    def revoke_families(
        self,
        *,
        family_id: str | None = None,
        subject: str | None = None,
        client_id: str | None = None,
        reason: str = "revoked",
    ) -> int:
        where, params = self._filters(family_id, subject, client_id)
        if not params:
            raise StoreError("say which refresh families to revoke (a family, user or client)")
        with self._write() as (conn, now):
            return conn.execute(
                "UPDATE families SET revoked_at = ?, revoked_reason = ?"  # noqa: S608
                f" WHERE {_ACTIVE}{where}",
                (now, reason, now, *params),
            ).rowcount

    @staticmethod
    def _filters(
        family_id: str | None, subject: str | None, client_id: str | None
    ) -> tuple[str, tuple[str, ...]]:
        # Column names are fixed here; only the values come from the caller, as parameters.
        pairs = [
            (column, value)
            for column, value in (
                ("family_id", family_id),
                ("subject", subject),
                ("client_id", client_id),
            )
            if value is not None
        ]
        return "".join(f" AND {c} = ?" for c, _ in pairs), tuple(v for _, v in pairs)

    # --- replay windows and counters ------------------------------------------------

    def remember_once(self, key: str, until: float) -> bool:
        with self._write() as (conn, now):
            changed = conn.execute(
                "INSERT INTO replay (key_hash, expires_at) VALUES (?, ?)"
                " ON CONFLICT (key_hash) DO UPDATE SET expires_at = excluded.expires_at"
                " WHERE replay.expires_at <= ?",
                (digest(key), float(until), now),
            ).rowcount
            return changed == 1

    def count(self, key: str, *, window: float) -> int:
        length = positive_seconds("a counter's window", window)
        key_hash = digest(key)
        with self._write() as (conn, now):
            conn.execute(
                "INSERT INTO counters (key_hash, value, expires_at) VALUES (?, 1, ?)"
                " ON CONFLICT (key_hash) DO UPDATE SET"
                "  value = CASE WHEN counters.expires_at <= ? THEN 1 ELSE counters.value + 1 END,"
                "  expires_at = CASE WHEN counters.expires_at <= ? THEN excluded.expires_at"
                "  ELSE counters.expires_at END",
                (key_hash, now + length, now, now),
            )
            value: int = conn.execute(
                "SELECT value FROM counters WHERE key_hash = ?", (key_hash,)
            ).fetchone()[0]
            return value

    def peek_count(self, key: str) -> int:
        with self._read() as (conn, now):
            row = conn.execute(
                "SELECT value FROM counters WHERE key_hash = ? AND expires_at > ?",
                (digest(key), now),
            ).fetchone()
        return int(row[0]) if row else 0

    def reset_count(self, key: str) -> None:
        with self._write() as (conn, _now):
            conn.execute("DELETE FROM counters WHERE key_hash = ?", (digest(key),))

    def uncount(self, key: str) -> None:
        with self._write() as (conn, now):
            conn.execute(
                "UPDATE counters SET value = value - 1"
                " WHERE key_hash = ? AND expires_at > ? AND value > 0",
                (digest(key), now),
            )

    def take_token(self, key: str, *, rate: float, burst: int) -> float:
        rate = positive_seconds("a bucket's rate", rate)
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigError(f"a bucket's burst must be a whole number >= 1, not {burst!r}")
        key_hash = digest(key)
        with self._write() as (conn, now):
            row = conn.execute(
                "SELECT tokens, updated_at FROM buckets WHERE key_hash = ?", (key_hash,)
            ).fetchone()
            tokens, last = (float(burst), now) if row is None else (row[0], row[1])
            tokens = min(float(burst), tokens + max(0.0, now - last) * rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / rate
            stamp = max(now, last)
            conn.execute(
                "INSERT INTO buckets (key_hash, tokens, updated_at, expires_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (key_hash) DO UPDATE SET"
                " tokens = excluded.tokens, updated_at = excluded.updated_at,"
                " expires_at = excluded.expires_at",
                (key_hash, tokens, stamp, stamp + (burst - tokens) / rate),
            )
            return wait

    # --- housekeeping ----------------------------------------------------------------

    def purge_expired(self) -> int:
        with self._write() as (conn, now):
            removed = self._purge(conn, now)
            self._purged_at = now
            return removed

    @staticmethod
    def _purge(conn: sqlite3.Connection, now: float) -> int:
        removed = 0
        removed += conn.execute(
            "DELETE FROM refresh_tokens WHERE family_id IN"
            " (SELECT family_id FROM families WHERE forget_at <= ?)",
            (now,),
        ).rowcount
        for table, column in (
            ("families", "forget_at"),
            ("codes", "forget_at"),
            ("replay", "expires_at"),
            ("counters", "expires_at"),
            ("buckets", "expires_at"),
        ):
            removed += conn.execute(
                f"DELETE FROM {table} WHERE {column} <= ?",  # noqa: S608 - fixed names
                (now,),
            ).rowcount
        return removed

    def row_counts(self) -> dict[str, int]:
        """Rows per table, expired or not (for tests and ``jwtmcp`` diagnostics)."""
        with self._read() as (conn, _now):
            return {
                table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608
                for table in (
                    "codes", "families", "refresh_tokens", "replay", "counters", "buckets"
                )
            }
