"""The users file: the people who may sign in on the issuer's login page.

One JSON document beside the clients file (``users.json`` by default), kept like it: every
change is a read-modify-write under an advisory lock, written by temp file plus rename with
mode 0600, and a running issuer watches it with :class:`UsersWatcher`::

    {
      "version": 1,
      "users": {
        "alice": {
          "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$<salt>$<hash>",
          "tools": ["add", "subtract"],
          "audiences": ["http://127.0.0.1:8001/mcp"],
          "max_ttl": null,
          "name": "Alice Example",
          "email": "alice@example.com",
          "created_at": 1800000000.0
        }
      }
    }

Why Argon2id (``argon2-cffi``), unlike the clients file's fast keyed hash: passwords are
chosen by people, so a stolen file must be expensive to guess against. Argon2id with the
RFC 9106 low-memory profile (3 passes over 64 MiB, 4 lanes) is the OWASP first choice;
checking one costs tens of milliseconds of CPU, which is why failed logins are also
rate-limited. Tools and audiences follow the clients file's rules (its validators are used).
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError

from .clients import check_audiences, check_created_at, check_max_ttl, check_name, check_tools
from .errors import ClientsError, UsersError
from .files import WatchedFile, locked, read_file, versioned_entries, write_versioned
from .tokens import Clock, tool_scope

FORMAT_VERSION = 1
DEFAULT_USERS_FILE = "users.json"
MIN_PASSWORD_LENGTH = 12
"""NIST SP 800-63B 3.1.1.2 asks for at least 8; jwtmcp asks for 12."""
MAX_PASSWORD_LENGTH = 1024
"""A bound on the work one login can ask for."""
GENERATED_PASSWORD_BYTES = 18
"""144 random bits: a generated password is 24 URL-safe characters."""

_HASHER = PasswordHasher()  # argon2id, RFC 9106 low-memory profile: t=3, m=64 MiB, p=4


def new_password() -> str:
    """A strong generated password: 144 random bits, 24 URL-safe characters."""
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)


def check_new_password(password: str) -> str:
    """``password`` when it may be set: 12-1024 characters, not only spaces; else UsersError."""
    if not isinstance(password, str) or not password.strip():
        raise UsersError("the password is empty")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsersError(f"the password is too short: use {MIN_PASSWORD_LENGTH} characters or more")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UsersError(f"the password is too long: use at most {MAX_PASSWORD_LENGTH} characters")
    return password


def hash_password(password: str) -> str:
    """The stored form of ``password``: an Argon2id PHC string (``$argon2id$v=19$...``)."""
    return _HASHER.hash(check_new_password(password))


def _check_hash(stored: str) -> str:
    if extract_parameters(stored).type is not Type.ID:
        raise InvalidHashError("not argon2id")
    return stored


@functools.cache
def _dummy_hash() -> str:
    # Checked for unknown user names, so they cost the same Argon2id work as a wrong password.
    return _HASHER.hash(secrets.token_urlsafe(16))


def _verify(stored: str, password: str) -> bool:
    too_long = len(password) > MAX_PASSWORD_LENGTH
    if too_long:  # the same work as any check, and a certain "no"
        stored, password = _dummy_hash(), ""
    try:
        # libargon2 compares the digests in constant time.
        ok: bool = _HASHER.verify(stored, password.encode("utf-8", "surrogatepass"))
    except (VerificationError, InvalidHashError):
        ok = False
    return ok and not too_long


# --- the user value ------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    """A person who may sign in. ``password_hash`` never holds the password itself.

    ``tools`` and ``audiences`` bound what a token for this user may carry, as for a client;
    ``max_ttl`` caps its tokens' lifetime (seconds). ``display_name`` and ``email`` become the
    ``name`` and ``email`` claims when set.
    """

    name: str
    tools: tuple[str, ...]
    audiences: tuple[str, ...]
    max_ttl: int | None = None
    display_name: str | None = None
    email: str | None = None
    created_at: float = 0.0
    password_hash: str = field(default="", repr=False)

    @cached_property
    def allowed_scopes(self) -> tuple[str, ...]:
        """The ``tool:`` scopes this user may approve."""
        return tuple(dict.fromkeys(tool_scope(t) for t in self.tools))

    def check_password(self, password: str) -> bool:
        """True when ``password`` is this user's password (Argon2id, constant-time compare)."""
        return _verify(self.password_hash, password)

    def _entry(self) -> dict[str, Any]:
        return {
            "password_hash": self.password_hash,
            "tools": list(self.tools),
            "audiences": list(self.audiences),
            "max_ttl": self.max_ttl,
            "name": self.display_name,
            "email": self.email,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class UserTable:
    """An immutable snapshot of the users file, keyed by user name."""

    path: Path
    users: Mapping[str, User]

    def get(self, name: str) -> User | None:
        return self.users.get(name)

    def __len__(self) -> int:
        return len(self.users)

    def __iter__(self) -> Iterator[User]:
        return iter(self.users.values())

    def authenticate(self, name: str, password: str) -> User | None:
        """The user when ``password`` is right, else None.

        An unknown ``name`` costs the same Argon2id check as a wrong password, so the two
        cannot be told apart by the answer or its timing.
        """
        user = self.users.get(name) if isinstance(name, str) else None
        if user is None:
            _verify(_dummy_hash(), password)
            return None
        return user if user.check_password(password) else None


# --- validation ----------------------------------------------------------------------------


def _as_users_error(exc: ClientsError) -> UsersError:
    return UsersError(exc.message)


def _check_text(what: str, value: str | None, *, limit: int = 200) -> str | None:
    if value is None or value == "":
        return None
    if (
        not isinstance(value, str)
        or len(value) > limit
        or value != value.strip()
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    ):
        raise UsersError(f"invalid {what} {value!r}: at most {limit} characters, one line")
    return value


def _check_email(email: str | None) -> str | None:
    value = _check_text("email", email, limit=254)
    if value is not None and (value.count("@") != 1 or " " in value or value.endswith("@")):
        raise UsersError(f"invalid email {value!r}")
    return value


def _check_lists(
    tools: Iterable[str], audiences: Iterable[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        tool_list = check_tools([tools] if isinstance(tools, str) else tools)
        aud_list = check_audiences(audiences)
    except ClientsError as exc:
        raise _as_users_error(exc) from None
    if not aud_list:
        raise UsersError("a user needs at least one audience (--aud URL)")
    return tool_list, aud_list


def _check_user_name(name: str) -> str:
    try:
        return check_name(name, what="user")
    except ClientsError as exc:
        raise _as_users_error(exc) from None


# --- reading -------------------------------------------------------------------------------


def _parse(path: Path, raw: bytes) -> UserTable:
    def bad(what: str) -> UsersError:
        return UsersError(f"the users file {path} is invalid: {what}")

    entries = versioned_entries(raw, section="users", version=FORMAT_VERSION, bad=bad)
    users: dict[str, User] = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise bad(f"entry {name!r} is malformed")
        try:
            _check_user_name(name)
            tools, audiences = entry.get("tools", []), entry.get("audiences")
            password_hash = entry.get("password_hash")
            if not (
                isinstance(tools, list)
                and isinstance(audiences, list)
                and all(isinstance(x, str) for x in (*tools, *audiences))
                and isinstance(password_hash, str)
            ):
                raise UsersError("wrong field types")
            tool_list, aud_list = _check_lists(tools, audiences)
            users[name] = User(
                name=name,
                tools=tool_list,
                audiences=aud_list,
                max_ttl=check_max_ttl(entry.get("max_ttl")),
                display_name=_check_text("name", entry.get("name")),
                email=_check_email(entry.get("email")),
                created_at=check_created_at(entry.get("created_at")),
                password_hash=_check_hash(password_hash),
            )
        except (UsersError, ClientsError) as exc:
            raise bad(f"user {name!r}: {exc.message}") from None
        except (InvalidHashError, ValueError, TypeError):
            raise bad(f"user {name!r}: the password hash is not an Argon2id hash") from None
    return UserTable(path, MappingProxyType(users))


def load_users(path: str | os.PathLike[str]) -> UserTable:
    """Read the users file. Raises :class:`~jwtmcp.errors.UsersError` with a one-line reason."""
    where = Path(path)
    raw = read_file(
        where,
        what="users file",
        error=UsersError,
        missing=f"no users file at {where}; add a user with: "
        f"jwtmcp users add NAME --tools ... --aud URL --users {where}",
    )
    return _parse(where, raw)


def list_users(path: str | os.PathLike[str]) -> tuple[User, ...]:
    """Every user in the file, sorted by name."""
    return tuple(sorted(load_users(path), key=lambda u: u.name))


def users_file_beside(clients_file: str | os.PathLike[str]) -> Path:
    """The default users file: ``users.json`` in the clients file's directory."""
    return Path(clients_file).parent / DEFAULT_USERS_FILE


# --- writing -------------------------------------------------------------------------------


def _locked(path: Path) -> contextlib.AbstractContextManager[None]:
    return locked(path, what="the users file", error=UsersError)


def _write(table: UserTable) -> None:
    write_versioned(
        table.path,
        section="users",
        version=FORMAT_VERSION,
        entries={u.name: u._entry() for u in sorted(table, key=lambda u: u.name)},
        error=UsersError,
    )


def _load_or_empty(path: Path) -> UserTable:
    if not path.exists():
        return UserTable(path, MappingProxyType({}))
    return load_users(path)


def add_user(
    path: str | os.PathLike[str],
    name: str,
    *,
    password: str,
    tools: Iterable[str],
    audiences: Iterable[str],
    max_ttl: int | None = None,
    display_name: str | None = None,
    email: str | None = None,
    clock: Clock = time.time,
) -> User:
    """Add user ``name`` (creating the file if needed); only the password's hash is stored.

    ``tools`` are the tools the user may approve (``*`` and ``prefix*`` allowed),
    ``audiences`` the MCP servers' resource URLs, ``max_ttl`` a cap in seconds on their
    tokens' lifetime. Raises :class:`~jwtmcp.errors.UsersError` for a duplicate name, a
    password shorter than 12 characters or an invalid value.
    """
    _check_user_name(name)
    tool_list, aud_list = _check_lists(tools, audiences)
    try:
        ttl = check_max_ttl(max_ttl)
    except ClientsError as exc:
        raise _as_users_error(exc) from None
    user = User(
        name=name,
        tools=tool_list,
        audiences=aud_list,
        max_ttl=ttl,
        display_name=_check_text("name", display_name),
        email=_check_email(email),
        created_at=clock(),
        password_hash=hash_password(password),
    )
    where = Path(path)
    with _locked(where):
        table = _load_or_empty(where)
        if name in table.users:
            raise UsersError(
                f"a user named {name!r} already exists; use 'jwtmcp users set-password {name}'"
            )
        _write(replace(table, users={**table.users, name: user}))
    return user


def remove_user(path: str | os.PathLike[str], name: str) -> None:
    """Remove user ``name``: they cannot sign in any more (refresh families: see sessions)."""
    where = Path(path)
    with _locked(where):
        table = load_users(where)
        if name not in table.users:
            raise UsersError(f"no user named {name!r} in {where}")
        _write(replace(table, users={k: v for k, v in table.users.items() if k != name}))


def set_password(path: str | os.PathLike[str], name: str, password: str) -> None:
    """Give user ``name`` a new password; the old one stops working at once."""
    new_hash = hash_password(password)  # hashed before the lock: it takes a while
    where = Path(path)
    with _locked(where):
        table = load_users(where)
        user = table.get(name)
        if user is None:
            raise UsersError(f"no user named {name!r} in {where}")
        updated = replace(user, password_hash=new_hash)
        _write(replace(table, users={**table.users, name: updated}))


def update_user(
    path: str | os.PathLike[str],
    name: str,
    *,
    tools: Iterable[str] | None = None,
    audiences: Iterable[str] | None = None,
    max_ttl: int | None = None,
) -> User:
    """Change what user ``name`` may approve; None leaves that grant as it is.

    ``tools`` (``*`` and ``prefix*`` allowed) and ``audiences`` (resource URLs) replace the
    stored lists, ``max_ttl`` (seconds) the cap on their tokens' lifetime. The password, the
    name and email claims and the creation time stay. The issuer sees the change at once;
    refresh tokens already issued are checked against it at their next refresh (see
    :mod:`jwtmcp.grants`). Raises :class:`~jwtmcp.errors.UsersError` for an unknown user or
    an invalid value.
    """
    where = Path(path)
    with _locked(where):
        table = load_users(where)
        user = table.get(name)
        if user is None:
            raise UsersError(f"no user named {name!r} in {where}")
        tool_list, aud_list = _check_lists(
            user.tools if tools is None else tools,
            user.audiences if audiences is None else audiences,
        )
        try:
            ttl = user.max_ttl if max_ttl is None else check_max_ttl(max_ttl)
        except ClientsError as exc:
            raise _as_users_error(exc) from None
        updated = replace(user, tools=tool_list, audiences=aud_list, max_ttl=ttl)
        _write(replace(table, users={**table.users, name: updated}))
    return updated


def ensure_users(
    path: str | os.PathLike[str],
    *,
    demo_name: str,
    demo_tools: Iterable[str],
    demo_audiences: Iterable[str],
    clock: Clock = time.time,
) -> tuple[UserTable, tuple[User, str] | None]:
    """Load the users file, creating it with one demo user (generated password) if missing.

    Returns the table and, when it was just created, (demo user, its password), to be
    printed once.
    """
    where = Path(path)
    if where.exists():
        return load_users(where), None
    password = new_password()
    try:
        user = add_user(
            where,
            demo_name,
            password=password,
            tools=demo_tools,
            audiences=demo_audiences,
            clock=clock,
        )
    except UsersError:
        if not where.exists():
            raise
        return load_users(where), None  # another process created it at the same moment
    return load_users(where), (user, password)


# --- watching ------------------------------------------------------------------------------


class UsersWatcher(WatchedFile[UserTable]):
    """Serves the current users table to a long-running process (see ``WatchedFile``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        interval: float = 0.25,
        monotonic: Clock = time.monotonic,
    ) -> None:
        super().__init__(
            path,
            load_users,
            UsersError,
            what="the users file",
            interval=interval,
            monotonic=monotonic,
        )
        _dummy_hash()  # made now, so the first unknown name costs no more than later ones
