"""``jwtmcp policy check --source oidc:ID`` answers what sign-in would: it reads the claims
through the provider's entry, as the issuer does.

At sign-in the ID token's claims reach the policy only after the provider entry has had its
say: ``groups_claim`` gives the provider's group claim to the policy as ``groups`` (and
drops a ``groups`` claim of another meaning), the token's own claims (``nonce``, ``aud``,
``amr`` …) are dropped, and ``allowed_email_domains`` refuses before any rule is asked. A
check that skipped this said "granted" for people sign-in refuses, and "denied" for people
it grants. The real ``jwtmcp`` command, in a subprocess; the provider's secret (an
environment variable) need not be set to check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

POLICY = {
    "version": 1,
    "rules": {
        "engineers": {
            "match": {"source": "oidc:corp", "group": "eng"},
            "grant": {"tools": ["add"], "audiences": ["https://mcp.example.com/mcp"]},
        }
    },
}


def check(
    tmp_path: Path, entry: dict[str, object], claims: dict[str, object], source: str = "oidc:corp"
) -> tuple[int, str]:
    corp = {
        "issuer": "https://corp.example.com",
        "client_id": "jwtmcp",
        "client_secret_env": "CORP_SECRET_NOT_SET_HERE",
        **entry,
    }
    (tmp_path / "providers.json").write_text(
        json.dumps({"version": 1, "providers": {"corp": corp}})
    )
    (tmp_path / "policy.json").write_text(json.dumps(POLICY))
    (tmp_path / "claims.json").write_text(json.dumps(claims))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWTMCP_")}
    env.pop("CORP_SECRET_NOT_SET_HERE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "jwtmcp", "policy", "check", "--claims", "claims.json",
         "--source", source],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def test_the_providers_groups_claim_is_what_the_group_rule_reads(tmp_path: Path) -> None:
    status, out = check(tmp_path, {"groups_claim": "roles"}, {"sub": "1", "roles": ["eng"]})
    assert status == 0, out
    assert "granted by 'engineers'" in out


def test_a_groups_claim_the_provider_does_not_use_for_groups_does_not_grant(
    tmp_path: Path,
) -> None:
    status, out = check(
        tmp_path, {"groups_claim": "roles"}, {"sub": "1", "groups": ["eng"], "roles": []}
    )
    assert status == 1, out


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "1", "groups": ["eng"], "email": "a@elsewhere.example", "email_verified": True},
        {"sub": "1", "groups": ["eng"], "email": "a@corp.example", "email_verified": False},
        {"sub": "1", "groups": ["eng"]},
    ],
)
def test_allowed_email_domains_refuse_before_the_rules(
    tmp_path: Path, claims: dict[str, object]
) -> None:
    status, out = check(tmp_path, {"allowed_email_domains": ["corp.example"]}, claims)
    assert status == 1, out
    assert "denied" in out and "allowed_email_domains" in out


def test_an_allowed_domain_still_reaches_the_rules(tmp_path: Path) -> None:
    claims = {"sub": "1", "groups": ["eng"], "email": "a@corp.example", "email_verified": True}
    status, out = check(tmp_path, {"allowed_email_domains": ["corp.example"]}, claims)
    assert status == 0, out


def test_a_provider_the_providers_file_does_not_name_is_an_error(tmp_path: Path) -> None:
    status, out = check(tmp_path, {}, {"sub": "1", "groups": ["eng"]}, source="oidc:other")
    assert status == 2, out
    assert "'other'" in out and "providers.json" in out
