"""Real key custody engines on loopback for the tests: a SoftHSM2 token and moto's KMS server.

SoftHSM2 is Debian's ``softhsm2`` (scripts/test-deps installs it); moto comes with the
``dev`` extra. Outside scripts/test a missing engine skips with a reason naming the package;
under CI (``CI=true``) it fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from tests.support import free_port, stop_process

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
TOKEN_LABEL = "jwtmcp-test"
OUTAGE_TOKEN_LABEL = "jwtmcp-outage"
USER_PIN = "4711-test-pin"
SO_PIN = "0815-so-pin"
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def require_engine(available: bool, what: str) -> None:
    """Skip (outside CI) or fail (``CI=true``) when a test engine is missing."""
    if available:
        return
    reason = f"needs {what} (scripts/test installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass(frozen=True)
class SoftHsm:
    """A SoftHSM2 installation in a temporary directory with two initialised tokens."""

    conf: Path
    module: str = SOFTHSM_MODULE
    label: str = TOKEN_LABEL
    pin: str = USER_PIN

    @property
    def env(self) -> dict[str, str]:
        """What a child process needs to reach the tokens (the PIN by its variable)."""
        return {"SOFTHSM2_CONF": str(self.conf), "JWTMCP_PKCS11_PIN": self.pin}

    def cli_flags(self, label: str | None = None) -> list[str]:
        return [
            "--backend", "pkcs11",
            "--pkcs11-module", self.module,
            "--pkcs11-token", label or self.label,
        ]

    def settings(self, label: str | None = None) -> dict[str, str]:
        return {"module": self.module, "token": label or self.label, "pin_env": "JWTMCP_PKCS11_PIN"}

    def delete_token(self, label: str) -> None:
        subprocess.run(
            ["softhsm2-util", "--delete-token", "--token", label],
            env={**os.environ, "SOFTHSM2_CONF": str(self.conf)},
            capture_output=True,
            check=True,
            timeout=30,
        )


def make_softhsm(directory: Path) -> SoftHsm:
    """A SOFTHSM2_CONF and token directory in ``directory``, with the tokens initialised by
    ``softhsm2-util --init-token --free`` (user PIN :data:`USER_PIN`)."""
    require_engine(
        shutil.which("softhsm2-util") is not None and Path(SOFTHSM_MODULE).exists(),
        "the Debian package softhsm2",
    )
    tokens = directory / "tokens"
    tokens.mkdir(parents=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    for label in (TOKEN_LABEL, OUTAGE_TOKEN_LABEL):
        subprocess.run(
            [
                "softhsm2-util", "--init-token", "--free", "--label", label,
                "--pin", USER_PIN, "--so-pin", SO_PIN,
            ],
            env=env,
            capture_output=True,
            check=True,
            timeout=60,
        )
    return SoftHsm(conf=conf)


@contextlib.contextmanager
def moto_server(log: Path, timeout: float = 60.0) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``python -m moto.server`` on 127.0.0.1 as a child process; yields (endpoint URL,
    process) once it answers, and stops it by its PID."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        require_engine(False, "moto[server] (pip install -e '.[dev]')")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(f"{endpoint}/moto-api/", timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto server did not start:\n" + log.read_text())
            time.sleep(0.05)
        yield endpoint, process
    finally:
        stop_process(process)


def kms_client(endpoint: str) -> object:
    """A boto3 KMS client of the emulator (the tests' own view of the keys)."""
    import boto3

    return boto3.client("kms", endpoint_url=endpoint, region_name="us-east-1")
