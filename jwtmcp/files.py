"""Crash-safe file writes and advisory locks, shared by the key ring, clients file and JWKS cache.

A write goes to a temp file in the same directory, is fsynced and renamed over the target, so
a reader sees the old file or the new one, never half of one, whatever happens mid-write.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
import time
from pathlib import Path


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
