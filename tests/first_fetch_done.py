"""A pytest plugin that runs tests under one adverse thread schedule: every cached document
(a verifier's JWKS, a revocation list, an OpenID provider's keys) finishes its first fetch
inside its constructor, as a fast worker thread does on a busy machine.

A fixture that makes a protected server before its issuer listens then sees that fetch
refused, and the server answers 503 for the retry backoff (1 s) — a test that passes only
when its worker thread happens to be slow. Under this plugin such a fixture fails every
time. Use it on any module that starts an issuer and a protected server::

    .venv/bin/python -m pytest -p tests.first_fetch_done tests/test_observability.py

``tests/test_schedules.py`` runs the modules that start both under it.
"""

from __future__ import annotations

from typing import Any

from jwtmcp.jwks import CachedDocument

FIRST_FETCH_TIMEOUT = 10.0
"""Seconds a constructor waits for its first fetch (it is bounded by fetch_timeout too)."""

_made = CachedDocument.__init__


def _made_and_fetched(self: CachedDocument[Any], *args: Any, **kwargs: Any) -> None:
    _made(self, *args, **kwargs)
    self.wait_idle(FIRST_FETCH_TIMEOUT)


CachedDocument.__init__ = _made_and_fetched  # type: ignore[method-assign]


def pytest_addoption(parser: Any) -> None:
    parser.addoption(
        "--one-test-per-fixture",
        action="store_true",
        help="keep only the first test that uses each fixture (a fixture that starts servers "
        "in the wrong order fails its first test as surely as its last)",
    )


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    if not config.getoption("--one-test-per-fixture"):
        return
    covered: set[tuple[str, str]] = set()
    kept, dropped = [], []
    for item in items:
        names = {(item.module.__name__, name) for name in getattr(item, "fixturenames", ())}
        if names - covered:
            covered |= names
            kept.append(item)
        else:
            dropped.append(item)
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept
