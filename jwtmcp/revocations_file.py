"""The issuer's revocation state: ``revocations.json`` beside the clients file.

What is revoked lives in one small JSON file, written atomically (temp file and rename,
mode 0600) under ``.revocations.json.lock``, like the clients file; the issuer watches it
(:class:`RevocationsWatcher`, one ``stat`` per reload interval), so every replica sharing
the directory publishes the same list, and ``jwtmcp revoke`` works with the issuer running
or not. Format (version 1)::

    {"version": 1,
     "sequence": 1796001464,               # grows at every change; published in the list
     "long_lived_max_lifetime": 2592000,   # seconds; set by 'jwtmcp revoke enable', or null
     "long_lived_valid_until": null,       # after a disable/lower: when the last token
                                           # minted under the former maximum expires
     "entries": [
       {"kind": "sub", "value": "alice", "before": 1796001464,
        "until": 1796005124, "at": 1796001464.2, "reason": "laptop stolen"},
       {"kind": "jti", "value": "iXSg...", "until": 1796001764, "at": ..., "reason": ""}]}

``kind`` is ``jti``, ``sub`` or ``client_id``. A ``sub``/``client_id`` entry refuses that
subject's (client's) tokens issued at or before ``before``; a ``jti`` entry that token.
``until`` (epoch seconds) is when no token the entry covers can still be valid — the
revocation time plus the longest lifetime a token may have (the ring's maximum, or the
long-lived maximum when larger) plus the ring's leeway; a ``jti`` entry given the token's
``exp`` uses that — and past it the entry is dropped, so the file and the published list
stay small.

The sequence becomes ``max(sequence + 1, now)`` (epoch seconds) at every change, and a
missing file is published with the current time as its sequence: verifiers never accept an
older sequence than the one they hold, so removing the file (to clear it) must not send the
sequence back to 0, which they would refuse until their stale window ran out.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from .errors import RevocationError
from .files import WatchedFile, atomic_write, locked, read_file
from .tokens import Clock

Kind = Literal["jti", "sub", "client_id"]

FILE_NAME = "revocations.json"
FORMAT_VERSION = 1
KINDS: tuple[Kind, ...] = ("jti", "sub", "client_id")
MAX_VALUE_LENGTH = 1024
MAX_REASON_LENGTH = 500


def revocations_file_beside(clients_file: str | os.PathLike[str]) -> Path:
    """``revocations.json`` in the clients file's directory."""
    return Path(clients_file).parent / FILE_NAME


@dataclass(frozen=True)
class Revocation:
    """One entry. Times are epoch seconds."""

    kind: Kind
    value: str
    until: int
    """When the entry is dropped: no token it covers can be valid after it."""
    at: float
    """When it was revoked."""
    before: int | None = None
    """``sub``/``client_id``: tokens issued at or before this are refused; None for ``jti``."""
    reason: str = ""

    def _entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"kind": self.kind, "value": self.value}
        if self.before is not None:
            entry["before"] = self.before
        entry.update(until=self.until, at=self.at, reason=self.reason)
        return entry


@dataclass(frozen=True)
class RevocationState:
    """An immutable snapshot of the revocations file."""

    path: Path
    sequence: int = 0
    long_lived_max_lifetime: int | None = None
    entries: tuple[Revocation, ...] = ()
    long_lived_valid_until: int | None = None
    """When long-lived tokens were disabled (or their maximum lowered): the time until
    which a token minted under the former maximum may still be valid (epoch seconds)."""
    present: bool = True
    """False when there is no file (nothing revoked)."""

    def published_sequence(self, now: float) -> int:
        """The sequence the list carries at ``now``: the file's, else the current time."""
        return self.sequence if self.present else int(now)

    def longest_lifetime(self, now: float) -> int:
        """Seconds a token of this issuer minted above the ring's maximum may still live at
        ``now``: the long-lived maximum, or, after ``revoke disable`` (or a lower
        ``--max-ttl``), what is left of the tokens minted under the former one (0: none)."""
        left = (self.long_lived_valid_until or 0) - int(now)
        return max(self.long_lived_max_lifetime or 0, left, 0)

    def next_sequence(self, now: float) -> int:
        """The sequence of the next change made at ``now``."""
        return max(self.sequence + 1, int(now))

    def live(self, now: float) -> tuple[Revocation, ...]:
        """The entries that may still cover a valid token at ``now``."""
        return tuple(e for e in self.entries if e.until > now)

    def published(self, now: float) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """The list's ``jti``, ``sub`` and ``client_id`` maps at ``now``."""
        maps: dict[str, dict[str, int]] = {kind: {} for kind in KINDS}
        for entry in self.live(now):
            target = maps[entry.kind]
            when = entry.until if entry.kind == "jti" else entry.before
            assert when is not None
            target[entry.value] = max(when, target.get(entry.value, when))
        return maps["jti"], maps["sub"], maps["client_id"]

    def _document(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "sequence": self.sequence,
            "long_lived_max_lifetime": self.long_lived_max_lifetime,
            "long_lived_valid_until": self.long_lived_valid_until,
            "entries": [e._entry() for e in self.entries],
        }


def check_value(kind: str, value: object) -> str:
    """``value`` when it may name a revoked ``kind``; else RevocationError."""
    if kind not in KINDS:
        raise RevocationError(f"unknown revocation kind {kind!r}: use jti, sub or client_id")
    if not isinstance(value, str) or not value or len(value) > MAX_VALUE_LENGTH:
        raise RevocationError(f"the {kind} to revoke must be a non-empty string")
    if not value.isprintable():
        raise RevocationError(f"the {kind} to revoke holds control characters")
    return value


def check_reason(reason: object) -> str:
    if not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH:
        raise RevocationError(f"the reason must be text of at most {MAX_REASON_LENGTH} characters")
    if not reason.isprintable():
        raise RevocationError("the reason holds control characters")
    return reason


def _is_time(value: object) -> bool:
    return type(value) in (int, float) and 0 <= value < 10**12  # type: ignore[operator]


def _parse(path: Path, raw: bytes) -> RevocationState:
    def bad(what: str) -> RevocationError:
        return RevocationError(f"the revocations file {path} is invalid: {what}")

    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad("not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise bad(f"unknown format (expected version {FORMAT_VERSION})")
    sequence = doc.get("sequence", 0)
    if type(sequence) is not int or sequence < 0:
        raise bad("'sequence' must be a non-negative integer")
    long_lived = doc.get("long_lived_max_lifetime")
    if long_lived is not None and (type(long_lived) is not int or long_lived <= 0):
        raise bad("'long_lived_max_lifetime' must be a positive integer or null")
    valid_until = doc.get("long_lived_valid_until")
    if valid_until is not None and (type(valid_until) is not int or valid_until < 0):
        raise bad("'long_lived_valid_until' must be a time or null")
    raw_entries = doc.get("entries", [])
    if not isinstance(raw_entries, list):
        raise bad("'entries' must be a list")
    entries = []
    for index, item in enumerate(raw_entries):
        if not isinstance(item, dict):
            raise bad(f"entry #{index} is not an object")
        kind = item.get("kind")
        try:
            value = check_value(str(kind), item.get("value"))
            reason = check_reason(item.get("reason", ""))
        except RevocationError as exc:
            raise bad(f"entry #{index}: {exc.message}") from None
        until, at, before = item.get("until"), item.get("at"), item.get("before")
        if type(until) is not int or not isinstance(at, int | float) or not _is_time(at):
            raise bad(f"entry #{index}: 'until' and 'at' must be times")
        if kind == "jti":
            before = None
        elif type(before) is not int:
            raise bad(f"entry #{index}: 'before' must be a time")
        entries.append(
            Revocation(
                kind=kind,  # type: ignore[arg-type]  # checked by check_value
                value=value,
                until=until,
                at=float(at),
                before=before,
                reason=reason,
            )
        )
    return RevocationState(
        path, sequence, long_lived, tuple(entries), long_lived_valid_until=valid_until
    )


def load_revocations(path: str | os.PathLike[str]) -> RevocationState:
    """Read the revocations file; a file that does not exist is an empty state (nothing
    revoked, sequence 0). Raises :class:`RevocationError` with a one-line reason."""
    where = Path(path)
    if not where.exists():
        return RevocationState(where, present=False)
    raw = read_file(where, what="revocations file", error=RevocationError, missing="")
    return _parse(where, raw)


def _write(state: RevocationState) -> None:
    data = json.dumps(state._document(), indent=2).encode() + b"\n"
    try:
        atomic_write(state.path, data)
    except OSError as exc:
        raise RevocationError(f"cannot write {state.path}: {exc.strerror}") from None


def _locked(path: Path) -> contextlib.AbstractContextManager[None]:
    return locked(path, what="the revocations file", error=RevocationError)


def revoke(
    path: str | os.PathLike[str],
    kind: Kind,
    value: str,
    *,
    horizon: int,
    reason: str = "",
    until: int | None = None,
    clock: Clock = time.time,
) -> tuple[Revocation, RevocationState]:
    """Revoke ``value`` of ``kind`` now; returns the new entry and state.

    ``horizon`` (seconds) is the longest a token of this issuer can stay valid (the ring's
    maximum lifetime or the long-lived maximum, plus its leeway): a ``sub``/``client_id``
    entry, and a ``jti`` entry given no ``until`` (the token's ``exp``, epoch seconds), is
    kept that long. Expired entries are dropped and the sequence grows by one. Raises
    :class:`RevocationError` for an invalid value or reason, or an unwritable file.
    """
    check_value(kind, value)
    check_reason(reason)
    now = clock()
    if until is not None and (type(until) is not int or until <= 0):
        raise RevocationError("until must be a time in epoch seconds")
    entry = Revocation(
        kind=kind,
        value=value,
        until=until if until is not None else int(now) + horizon,
        at=now,
        before=None if kind == "jti" else int(now),
        reason=reason,
    )
    if entry.until <= now:
        raise RevocationError("that token has expired already; there is nothing to revoke")
    where = Path(path)
    with _locked(where):
        state = load_revocations(where)
        new = replace(
            state,
            sequence=state.next_sequence(now),
            entries=(*state.live(now), entry),
            present=True,
        )
        _write(new)
    return entry, new


def set_long_lived(
    path: str | os.PathLike[str], max_lifetime: int | None, *, clock: Clock = time.time
) -> RevocationState:
    """Allow tokens living up to ``max_lifetime`` seconds (None: none longer than the ring's
    maximum) for this issuer: the declaration that its servers check the revocation list,
    which ``jwtmcp mint --ttl`` above the ring's maximum requires.

    Lowering the maximum (or withdrawing it) does not shorten the tokens minted before:
    the file keeps when the last of them may expire (``long_lived_valid_until``), and
    revocations stay listed that long (:meth:`RevocationState.longest_lifetime`)."""
    if max_lifetime is not None and (type(max_lifetime) is not int or max_lifetime <= 0):
        raise RevocationError("the long-lived maximum must be a positive number of seconds")
    where = Path(path)
    now = clock()
    with _locked(where):
        state = load_revocations(where)
        valid_until = state.long_lived_valid_until
        if state.long_lived_max_lifetime and (max_lifetime or 0) < state.long_lived_max_lifetime:
            valid_until = max(valid_until or 0, int(now) + state.long_lived_max_lifetime)
        if valid_until is not None and valid_until <= now:
            valid_until = None
        new = replace(
            state,
            sequence=state.next_sequence(now),
            long_lived_max_lifetime=max_lifetime,
            long_lived_valid_until=valid_until,
            present=True,
        )
        _write(new)
    return new


class RevocationsWatcher(WatchedFile[RevocationState]):
    """Serves the current revocation state to a long-running process (see
    :class:`jwtmcp.files.WatchedFile`): one ``stat`` per ``interval`` seconds, re-read
    when the file changed; a reload that fails keeps the last good state."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        interval: float = 0.25,
        monotonic: Clock = time.monotonic,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        where = Path(path)

        def report(reason: str) -> None:
            # No file is nothing revoked, not an error worth a log line.
            if on_error is not None and where.exists():
                on_error(reason)

        super().__init__(
            where,
            self._load,
            RevocationError,
            what="the revocations file",
            interval=interval,
            monotonic=monotonic,
            on_error=report,
        )

    @staticmethod
    def _load(path: Path) -> RevocationState:
        return load_revocations(path)
