"""A rule's ``source`` names the kind of source it trusts: ``oidc:…`` or ``issuer:…``.

docs/policy.md requires ``source`` so that no rule lets *any* trusted source grant through
it: a ``groups: ["admins"]`` claim from a CI issuer must not count like the company
directory's. ``"source": "*"`` (or ``"o*"``, ``"i*"``, a typo like ``"odic:corp"``) slipped
past that: ``*`` matched every source, the others nothing. Each value must start with
``oidc:`` or ``issuer:``. The real ``jwtmcp policy check`` in a subprocess (the issuer
loads the policy with the same parser).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def rule(source: str) -> dict[str, object]:
    return {
        "version": 1,
        "rules": {
            "admins": {
                "match": {"source": source, "group": "admins"},
                "grant": {"tools": ["*"], "audiences": ["https://mcp.example.com/mcp"]},
            }
        },
    }


def policy_check(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "policy.json").write_text(json.dumps(rule(source)))
    claims = {"iss": "https://token.actions.githubusercontent.com", "groups": ["admins"]}
    (tmp_path / "claims.json").write_text(json.dumps(claims))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWTMCP_")}
    return subprocess.run(
        [sys.executable, "-m", "jwtmcp", "policy", "check", "--claims", "claims.json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("source", ["*", "o*", "i*", "odic:corp", "corp", "issuer*", "oidc*"])
def test_a_source_that_names_no_kind_of_source_is_refused(tmp_path: Path, source: str) -> None:
    proc = policy_check(tmp_path, source)
    assert proc.returncode == 2, proc.stdout
    assert "match.source" in proc.stderr and "oidc:" in proc.stderr


@pytest.mark.parametrize(
    "source", ["issuer:https://token.actions.githubusercontent.com", "issuer:*", "oidc:*"]
)
def test_sources_of_a_kind_still_parse(tmp_path: Path, source: str) -> None:
    proc = policy_check(tmp_path, source)
    assert proc.returncode in (0, 1), proc.stderr
