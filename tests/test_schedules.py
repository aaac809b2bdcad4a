"""The modules that start an issuer and a protected server, run under an adverse thread
schedule (``tests/first_fetch_done.py``): each cached document finishes its first fetch in
its constructor. A fixture that makes a protected server before its issuer listens then
fails every time here, instead of once in a while on a busy CI machine (the server answers
503 for the JWKS retry backoff when its first fetch was refused).

Only the first test that uses each fixture runs (``--one-test-per-fixture``): a fixture
started in the wrong order fails its first test as surely as its last.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAKES_A_SERVER = "protected_server" + "("
MAKES_AN_ISSUER = ("create_app" + "(", "issuer_process" + "(")


def modules_with_an_issuer_and_a_server() -> list[str]:
    found = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        source = path.read_text()
        if MAKES_A_SERVER in source and any(make in source for make in MAKES_AN_ISSUER):
            found.append(str(path.relative_to(ROOT)))
    return found


def test_the_selection_finds_the_modules_that_start_both() -> None:
    modules = modules_with_an_issuer_and_a_server()
    for expected in ("tests/test_observability.py", "tests/test_token_exchange_mcp.py"):
        assert expected in modules
    assert "tests/test_schedules.py" not in modules


def test_servers_made_after_their_issuer_listens_pass_when_the_first_fetch_is_done_early() -> None:
    modules = modules_with_an_issuer_and_a_server()
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
        "-p", "tests.first_fetch_done", "--one-test-per-fixture", *modules,
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    summary = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    assert done.returncode == 0, "\n".join(summary) or done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1]
