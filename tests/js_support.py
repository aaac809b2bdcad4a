"""Running the TypeScript MCP client of tests/js/ (the SDK from npm) from a Python test.

``scripts/test`` installs ``tests/js/node_modules`` (``npm ci`` from the committed lock).
:func:`run_oauth_client` starts ``node tests/js/oauth_client.mjs`` as its own process, waits
at most ``timeout`` seconds, stops it by its PID if it overruns, and returns the one JSON line
the script prints. The password goes through the environment, never the command line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JS_DIR = Path(__file__).resolve().parent / "js"
OAUTH_CLIENT = JS_DIR / "oauth_client.mjs"
DEFAULT_REDIRECT_URI = "http://127.0.0.1:33418/callback"


@dataclass(frozen=True)
class NodeRun:
    """A finished node process: its exit status, its JSON report (the last stdout line) and
    its stderr (for failure messages)."""

    returncode: int
    report: dict[str, Any]
    stderr: str


def node_binary() -> str:
    """Path of ``node``; AssertionError with the install hint when it or the SDK is missing."""
    node = shutil.which("node")
    if node is None:
        raise AssertionError("node is not installed: run scripts/test (it installs nodejs)")
    if not (JS_DIR / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        raise AssertionError(
            "tests/js/node_modules is missing: run scripts/test or scripts/test-deps (npm ci)"
        )
    return node


def run_node(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> NodeRun:
    """Run ``node ARGS`` in tests/js/ as its own process, stopped by PID after ``timeout``
    seconds; parse the last line of its stdout as JSON. Raises AssertionError (with its
    output) when it overruns or prints no JSON line."""
    child_env = {**os.environ, **(env or {})}
    child_env.setdefault("NODE_OPTIONS", "")
    process = subprocess.Popen(
        [node_binary(), *args],
        cwd=JS_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()  # by its PID
        stdout, stderr = process.communicate()
        raise AssertionError(
            f"node {' '.join(args[:1])} overran {timeout} s; stderr:\n"
            + stderr.decode(errors="replace")[-3000:]
        ) from None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = stdout.decode(errors="replace").strip()
    last = text.splitlines()[-1] if text else ""
    try:
        report = json.loads(last)
    except ValueError:
        raise AssertionError(
            f"node printed no JSON line (exit {process.returncode}): {text[-2000:]!r}\n"
            + stderr.decode(errors="replace")[-3000:]
        ) from None
    return NodeRun(process.returncode, report, stderr.decode(errors="replace"))


def run_oauth_client(
    server_url: str,
    *,
    username: str = "demo",
    password: str = "",
    untick: Sequence[str] = (),
    deny: bool = False,
    calls: Sequence[tuple[str, Mapping[str, Any]]] = (),
    client_metadata_url: str | None = None,
    redirect_uri: str = DEFAULT_REDIRECT_URI,
    state_file: Path | None = None,
    timeout: float = 60.0,
) -> NodeRun:
    """Connect the TypeScript SDK client to ``server_url`` through its own OAuth provider.

    The script signs in as ``username`` (the browser step done over HTTP), unticks ``untick``
    (``"tool:subtract"``) on the consent page, lists the tools, calls each ``(tool, args)``
    of ``calls`` (stepping up when the server answers 403 ``insufficient_scope``) and
    reports. ``client_metadata_url`` (https) makes it register by CIMD, else by RFC 7591.
    ``state_file`` keeps its registration and tokens between runs, so a second run
    refreshes. The report: ``ok``, ``tools``, ``tools_after``, ``results``, ``result``,
    ``token_scope``, ``token_claims``, ``authorizations``, ``refreshes``, ``client_id``,
    ``callback_iss`` (or ``ok: false`` with ``stage`` and ``error``, exit status 1).
    """
    args = [str(OAUTH_CLIENT), "--server", server_url, "--username", username]
    args += ["--redirect-uri", redirect_uri, "--timeout", str(timeout)]
    for scope in untick:
        args += ["--untick", scope]
    if deny:
        args.append("--deny")
    for tool, arguments in calls:
        args += ["--call", f"{tool} {json.dumps(dict(arguments))}"]
    if client_metadata_url is not None:
        args += ["--client-metadata-url", client_metadata_url]
    if state_file is not None:
        args += ["--state", str(state_file)]
    return run_node(
        args, env={"OAUTH_CLIENT_PASSWORD": password}, timeout=timeout + 10
    )


def follow_sign_in_js(
    authorization_url: str,
    *,
    redirect_uri: str,
    username: str,
    password: str,
    untick: Sequence[str] = (),
    deny: bool = False,
    timeout: float = 30.0,
) -> NodeRun:
    """Run only the script's browser step (``followSignIn``) on ``authorization_url``; the
    report is ``{"ok": true, "params": {...redirect query...}}`` or ``ok: false, error``."""
    options = {
        "redirectUri": redirect_uri,
        "username": username,
        "password": password,
        "untick": list(untick),
        "deny": deny,
    }
    program = (
        f"import {{ followSignIn }} from {json.dumps(OAUTH_CLIENT.as_uri())};\n"
        "const [url, options] = [process.argv[1], JSON.parse(process.env.SIGN_IN_OPTIONS)];\n"
        "followSignIn(url, options).then(\n"
        "  (params) => console.log(JSON.stringify({ ok: true, params })),\n"
        "  (error) => { console.log(JSON.stringify({ ok: false, error: String(error) }));"
        " process.exitCode = 1; });\n"
    )
    return run_node(
        ["--input-type=module", "-e", program, authorization_url],
        env={"SIGN_IN_OPTIONS": json.dumps(options)},  # the password stays off the command line
        timeout=timeout,
    )
