"""Crash-safe file writes, advisory locks and file watching, shared by the key ring, the
clients and users files and the JWKS cache.

A write goes to a temp file in the same directory, is fsynced and renamed over the target, so
a reader sees the old file or the new one, never half of one, whatever happens mid-write.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from .errors import JwtMcpError

T = TypeVar("T")


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically; the new file has ``mode`` from the start."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def acquire_lock(path: Path, *, timeout: float = 30.0) -> int:
    """Take an exclusive ``flock`` on ``path`` (created 0600), waiting up to ``timeout`` s.

    Returns the descriptor to pass to :func:`release_lock`. Raises ``OSError`` when the lock
    file cannot be opened and ``TimeoutError`` when another process holds the lock too long.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
        if time.monotonic() > deadline:
            os.close(fd)
            raise TimeoutError(f"{path} is locked by another process")
        time.sleep(0.01)


def release_lock(fd: int) -> None:
    """Release a lock from :func:`acquire_lock` (closing the descriptor releases it)."""
    os.close(fd)



FileSignature = tuple[int, int, int, int, int]
"""What :func:`file_signature` returns: device, inode, size, mtime and ctime (ns)."""

RACY_WINDOW_NS = 2_000_000_000
"""A file changed less than this long ago (2 s) may change again within the same timestamp
tick (filesystem clocks are coarse: a jiffy on Linux, 2 s on FAT), so its stat alone cannot
prove that no later write happened (git's "racily clean" problem)."""


def file_signature(path: Path) -> FileSignature | None:
    """The stat signature of ``path``: ``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)``.

    A rename-over gives a new inode; an in-place write changes ctime even when mtime is put
    back (``touch -d``, ``cp -p``). None when ``path`` cannot be stat'ed. Take it *before*
    reading the file: a change that lands after the read then shows as a new signature.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def signature_is_settled(signature: FileSignature) -> bool:
    """True when the file last changed :data:`RACY_WINDOW_NS` or more ago (either way of now).

    A watcher that read a file under an unsettled signature reads it again at its next
    check even if the signature is unchanged: a second write in the same timestamp tick can
    leave every field equal.
    """
    changed = max(signature[3], signature[4])
    return abs(time.time_ns() - changed) >= RACY_WINDOW_NS

@contextlib.contextmanager
def locked(
    path: Path, *, what: str, error: type[JwtMcpError], timeout: float = 30.0
) -> Iterator[None]:
    """Hold ``.<name>.lock`` next to ``path`` so read-modify-write changes never interleave.

    ``what`` names the file in messages ("the clients file"); failures raise ``error``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = acquire_lock(path.parent / f".{path.name}.lock", timeout=timeout)
    except TimeoutError:
        raise error(f"{what} {path} is locked by another change") from None
    except OSError as exc:
        raise error(f"cannot lock {what} {path}: {exc.strerror}") from None
    try:
        yield
    finally:
        release_lock(fd)


def read_file(path: Path, *, what: str, error: type[JwtMcpError], missing: str) -> bytes:
    """The bytes of ``path``, the ``what`` ("clients file"); else ``error`` with one line.

    ``missing`` is the whole message for a file that does not exist (say how to make one).
    """
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(missing) from None
    except IsADirectoryError:
        raise error(f"{path} is a directory, not a {what}") from None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror}") from None


def versioned_entries(
    raw: bytes, *, section: str, version: int, bad: Callable[[str], JwtMcpError]
) -> dict[str, Any]:
    """The ``section`` object of a JSON file ``{"version": version, section: {...}}``.

    Raises ``bad(reason)`` when ``raw`` is not JSON, has another version, or ``section`` is
    not an object. The inverse of :func:`write_versioned`.
    """
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad("not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("version") != version:
        raise bad(f"unknown format (expected version {version})")
    entries = doc.get(section)
    if not isinstance(entries, dict):
        raise bad(f"'{section}' must be an object")
    return entries


def write_versioned(
    path: Path,
    *,
    section: str,
    version: int,
    entries: Mapping[str, Any],
    error: type[JwtMcpError],
) -> None:
    """Write ``{"version": version, section: entries}`` to ``path`` atomically (mode 0600).

    A write that fails raises ``error`` ("cannot write <path>: <reason>").
    """
    doc = {"version": version, section: entries}
    try:
        atomic_write(path, json.dumps(doc, indent=2).encode() + b"\n")
    except OSError as exc:
        raise error(f"cannot write {path}: {exc.strerror}") from None


class WatchedFile(Generic[T]):
    """Serves the parsed contents of a file to a long-running process.

    ``current()`` costs one ``stat`` of the file at most every ``interval`` seconds; the
    file is re-read with ``load`` only when it changed. If a reload fails (``load`` raised
    ``error``: a hand edit left it invalid, or it was removed) the last good value keeps
    serving, ``last_error`` says why and ``on_error`` (if given) hears each new reason once.
    The first load's error propagates. A file changed under :data:`RACY_WINDOW_NS` ago is
    re-read at the next check even if its signature did not change.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        load: Callable[[Path], T],
        error: type[JwtMcpError],
        *,
        what: str,
        interval: float = 0.25,
        monotonic: Callable[[], float] = time.monotonic,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self._load = load
        self._error = error
        self._what = what
        self._monotonic = monotonic
        self._on_error = on_error
        self._lock = threading.Lock()
        # The signature is taken before the read: a change landing after the read then
        # shows as a new signature at the next check instead of being recorded as seen.
        self._signature = file_signature(self.path)
        self._settled = self._signature is not None and signature_is_settled(self._signature)
        self._value = load(self.path)
        self._checked_at = monotonic()
        self.last_error: str | None = None

    def current(self) -> T:
        now = self._monotonic()
        if now - self._checked_at < self.interval:
            return self._value
        with self._lock:
            if now - self._checked_at < self.interval:
                return self._value
            self._checked_at = now
            signature = file_signature(self.path)
            if signature is None:
                self._failed(f"{self._what} {self.path} is missing")
            elif signature != self._signature or not self._settled:
                try:
                    self._value = self._load(self.path)
                    self._signature = signature
                    self._settled = signature_is_settled(signature)
                    self.last_error = None
                except self._error as exc:
                    self._failed(exc.message)
            return self._value

    def _failed(self, reason: str) -> None:
        # ``on_error`` hears each new reason once (a log line), not once per check.
        if reason != self.last_error and self._on_error is not None:
            self._on_error(reason)
        self.last_error = reason
