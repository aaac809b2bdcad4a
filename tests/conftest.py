from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from jwtmcp.keys import KeyRing, init_ring, load_ring
from tests.browser import Browser, open_browser
from tests.redis_support import RedisServer, redis_server
from tests.support import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ring_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture(scope="module")
def _template_ring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real ring per module (made at the default FakeClock time), copied into each test."""
    directory = tmp_path_factory.mktemp("template") / "keys"
    init_ring(directory, clock=FakeClock())
    return directory


@pytest.fixture
def ring(_template_ring: Path, ring_dir: Path) -> KeyRing:
    """A fresh copy of a real ring (files, modes and all): key generation is paid once."""
    shutil.copytree(_template_ring, ring_dir)  # copies the 0600 / 0700 modes as well
    return load_ring(ring_dir)


@pytest.fixture
def browser() -> Iterator[Browser]:
    """A real headless Chromium (Debian's, through Selenium), stopped by PID at teardown."""
    with open_browser() as running:
        yield running


@pytest.fixture
def screenshot_dir(tmp_path: Path) -> Path:
    """Where tests save screenshots: ``$JWTMCP_SCREENSHOT_DIR`` if set (to keep them, e.g.
    for the docs), else a temporary directory."""
    configured = os.environ.get("JWTMCP_SCREENSHOT_DIR")
    directory = Path(configured) if configured else tmp_path / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session (tests keep apart by key prefix), stopped by PID."""
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server
