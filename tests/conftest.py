from __future__ import annotations

from pathlib import Path

import pytest

from jwtmcp.keys import KeyRing, init_ring
from tests.support import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ring_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def ring(ring_dir: Path, clock: FakeClock) -> KeyRing:
    return init_ring(ring_dir, clock=clock)
