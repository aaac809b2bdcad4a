from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from jwtmcp.keys import KeyRing, init_ring, load_ring
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
