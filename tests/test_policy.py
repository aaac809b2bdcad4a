"""The policy file: verified identity -> tools, audiences, lifetime; deny by default;
strict parsing; live reload; ``jwtmcp policy check``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from jwtmcp.errors import ConfigError
from jwtmcp.policy import Policy, PolicyError, PolicyGrant, PolicyWatcher, load_policy
from tests.support import FakeClock
from tests.test_cli import cli

AUD = "http://127.0.0.1:9000/mcp"
OTHER_AUD = "http://127.0.0.1:9001/mcp/"
SRC = "oidc:corp"


def _rule(match: dict[str, Any], **grant: Any) -> dict[str, Any]:
    return {"match": match, "grant": {"tools": ["add"], "audiences": [AUD], **grant}}


def _write(path: Path, rules: dict[str, Any], **top: Any) -> Path:
    path.write_text(json.dumps({"version": 1, "rules": rules, **top}))
    return path


def _policy(tmp_path: Path, rules: dict[str, Any]) -> Policy:
    return load_policy(_write(tmp_path / "policy.json", rules))


ALICE = {
    "sub": "u-1",
    "email": "alice@example.com",
    "email_verified": True,
    "groups": ["eng", "staff"],
}


# --- matching ------------------------------------------------------------------------------


def test_no_rule_matching_means_deny(tmp_path: Path) -> None:
    policy = _policy(tmp_path, {"admins": _rule({"source": SRC, "group": "admins"})})
    assert policy.evaluate(ALICE, source=SRC) is None


def test_an_empty_policy_denies_everyone(tmp_path: Path) -> None:
    assert _policy(tmp_path, {}).evaluate(ALICE, source=SRC) is None


def test_a_group_rule_grants_its_tools_and_canonical_audiences(tmp_path: Path) -> None:
    policy = _policy(
        tmp_path,
        {
            "eng": _rule(
                {"source": SRC, "group": "eng"}, tools=["add", "read_*"], audiences=[OTHER_AUD]
            )
        },
    )
    grant = policy.evaluate(ALICE, source=SRC)
    assert grant == PolicyGrant(
        tools=("add", "read_*"),
        audiences=("http://127.0.0.1:9001/mcp",),
        max_ttl=None,
        rules=("eng",),
    )


def test_a_rule_for_another_source_does_not_match(tmp_path: Path) -> None:
    policy = _policy(tmp_path, {"eng": _rule({"source": "oidc:other", "group": "eng"})})
    assert policy.evaluate(ALICE, source=SRC) is None


def test_a_source_pattern_ending_in_star_matches_by_prefix(tmp_path: Path) -> None:
    policy = _policy(tmp_path, {"any-oidc": _rule({"source": "oidc:*", "group": "eng"})})
    assert policy.evaluate(ALICE, source=SRC) is not None
    assert policy.evaluate(ALICE, source="issuer:https://ci.example") is None


def test_all_conditions_of_a_rule_must_hold(tmp_path: Path) -> None:
    policy = _policy(
        tmp_path, {"eng-admins": _rule({"source": SRC, "group": "eng", "sub": "someone-else"})}
    )
    assert policy.evaluate(ALICE, source=SRC) is None


def test_a_list_of_values_matches_any_of_them(tmp_path: Path) -> None:
    policy = _policy(
        tmp_path, {"r": _rule({"source": SRC, "group": ["ops", "staff"], "sub": ["u-9", "u-1"]})}
    )
    assert policy.evaluate(ALICE, source=SRC) is not None


def test_matched_rules_union_tools_and_audiences_and_take_the_smallest_cap(
    tmp_path: Path,
) -> None:
    policy = _policy(
        tmp_path,
        {
            "eng": _rule({"source": SRC, "group": "eng"}, tools=["add"], max_ttl=900),
            "staff": _rule(
                {"source": SRC, "group": "staff"},
                tools=["sub", "add"],
                audiences=[OTHER_AUD],
                max_ttl=300,
            ),
            "uncapped": _rule({"source": SRC, "sub": "u-1"}, tools=["mul"]),
            "other": _rule({"source": SRC, "group": "ops"}, tools=["rm"], max_ttl=10),
        },
    )
    grant = policy.evaluate(ALICE, source=SRC)
    assert grant is not None
    assert grant.tools == ("add", "sub", "mul")
    assert grant.audiences == (AUD, "http://127.0.0.1:9001/mcp")
    assert grant.max_ttl == 300
    assert grant.rules == ("eng", "staff", "uncapped")


def test_email_domain_matches_a_verified_email_case_insensitively(tmp_path: Path) -> None:
    policy = _policy(tmp_path, {"corp": _rule({"source": SRC, "email_domain": "Example.COM"})})
    claims = {**ALICE, "email": "Alice@EXAMPLE.com"}
    assert policy.evaluate(claims, source=SRC) is not None


@pytest.mark.parametrize("verified", [False, "true", 1, None])
def test_email_domain_does_not_match_an_unverified_email(tmp_path: Path, verified: Any) -> None:
    policy = _policy(tmp_path, {"corp": _rule({"source": SRC, "email_domain": "example.com"})})
    claims = {**ALICE, "email_verified": verified}
    if verified is None:
        del claims["email_verified"]
    assert policy.evaluate(claims, source=SRC) is None


def test_email_domain_is_the_whole_domain_not_a_suffix(tmp_path: Path) -> None:
    policy = _policy(tmp_path, {"corp": _rule({"source": SRC, "email_domain": "example.com"})})
    for email in ("alice@evilexample.com", "alice@example.com.evil", "example.com"):
        assert policy.evaluate({**ALICE, "email": email}, source=SRC) is None, email


def test_email_needs_a_verified_email_too(tmp_path: Path) -> None:
    policy = _policy(tmp_path, {"alice": _rule({"source": SRC, "email": "alice@example.com"})})
    assert policy.evaluate(ALICE, source=SRC) is not None
    assert policy.evaluate({**ALICE, "email_verified": False}, source=SRC) is None


def test_a_groups_claim_that_is_not_a_list_of_strings_matches_no_group(tmp_path: Path) -> None:
    policy = _policy(tmp_path, {"eng": _rule({"source": SRC, "group": "eng"})})
    for groups in ("eng", {"eng": True}, [["eng"]], None):
        assert policy.evaluate({**ALICE, "groups": groups}, source=SRC) is None, groups


def test_a_claims_condition_matches_exact_values_or_a_list_member(tmp_path: Path) -> None:
    policy = _policy(
        tmp_path,
        {
            "ci": _rule(
                {
                    "source": SRC,
                    "claims": {"repository": ["acme/app", "acme/lib"], "ref": "refs/heads/main"},
                }
            )
        },
    )
    ok = {"sub": "x", "repository": "acme/app", "ref": "refs/heads/main"}
    assert policy.evaluate(ok, source=SRC) is not None
    assert policy.evaluate({**ok, "ref": "refs/heads/dev"}, source=SRC) is None
    assert policy.evaluate({**ok, "ref": ["refs/heads/main"]}, source=SRC) is not None
    assert policy.evaluate({k: v for k, v in ok.items() if k != "ref"}, source=SRC) is None


def test_a_claims_condition_does_not_confuse_true_with_one(tmp_path: Path) -> None:
    policy = _policy(tmp_path, {"r": _rule({"source": SRC, "claims": {"admin": True}})})
    assert policy.evaluate({"sub": "x", "admin": 1}, source=SRC) is None
    assert policy.evaluate({"sub": "x", "admin": True}, source=SRC) is not None


def test_explain_names_the_matching_rule_and_why_others_failed(tmp_path: Path) -> None:
    policy = _policy(
        tmp_path,
        {
            "eng": _rule({"source": SRC, "group": "eng"}),
            "ops": _rule({"source": SRC, "group": "ops"}),
            "corp": _rule({"source": SRC, "email_domain": "example.com"}),
        },
    )
    lines = policy.explain({**ALICE, "email_verified": False}, source=SRC)
    text = "\n".join(lines)
    assert "rule 'eng': matched" in text
    assert "rule 'ops': no match" in text and "'ops'" in text
    assert "rule 'corp': no match" in text and "email_verified" in text


def test_explain_says_deny_by_default_when_nothing_matches(tmp_path: Path) -> None:
    policy = _policy(tmp_path, {"ops": _rule({"source": SRC, "group": "ops"})})
    assert "no rule matched" in policy.explain(ALICE, source=SRC)[-1]


# --- strict parsing ----------------------------------------------------------------------------


def _load_error(tmp_path: Path, doc: Any) -> str:
    path = tmp_path / "policy.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return info.value.message


def test_policy_error_is_a_config_error() -> None:
    assert issubclass(PolicyError, ConfigError)


def test_a_missing_policy_file_says_how_to_write_one(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"no policy file at .*policy\.md"):
        load_policy(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ("{not json", "not valid JSON"),
        ('{"version": 1, "rules": {}, "rules": {}}', "not valid JSON"),
        ({"version": 2, "rules": {}}, "version 1"),
        ({"version": 1}, "'rules' must be an object"),
        ({"version": 1, "rules": {}, "extra": 1}, "unknown member 'extra'"),
    ],
)
def test_a_malformed_document_is_refused(tmp_path: Path, doc: Any, says: str) -> None:
    assert says in _load_error(tmp_path, doc)


@pytest.mark.parametrize(
    ("rule", "field", "says"),
    [
        ({"match": {"source": SRC}}, "grant", "is required"),
        ({"grant": {"tools": ["a"], "audiences": [AUD]}}, "match", "is required"),
        ({**_rule({"source": SRC}), "color": "red"}, "color", "unknown field"),
        (_rule({"group": "eng"}), "match.source", "is required"),
        (_rule({"source": SRC, "grup": "eng"}), "match.grup", "unknown condition"),
        (_rule({"source": SRC, "group": 3}), "match.group", "a string or a list of strings"),
        (_rule({"source": SRC, "group": []}), "match.group", "empty"),
        (_rule({"source": SRC, "email_domain": "@example.com"}), "match.email_domain", "a domain"),
        (_rule({"source": SRC, "email": "alice"}), "match.email", "an email address"),
        (_rule({"source": "oi*dc"}), "match.source", "'*' may only end"),
        (
            _rule({"source": SRC, "claims": {"a": {"b": 1}}}),
            "match.claims.a",
            "string, number or boolean",
        ),
        (_rule({"source": SRC, "claims": {"sub": "x"}}), "match.claims.sub", "use 'sub'"),
        (_rule({"source": SRC, "claims": {}}), "match.claims", "empty"),
        (_rule({"source": SRC}, tools=[]), "grant.tools", "at least one"),
        (_rule({"source": SRC}, tools=["tool:add"]), "grant.tools", "without the 'tool:'"),
        (_rule({"source": SRC}, audiences=[]), "grant.audiences", "at least one"),
        (_rule({"source": SRC}, audiences=["ftp://x"]), "grant.audiences", "ftp://x"),
        (_rule({"source": SRC}, max_ttl=0), "grant.max_ttl", "positive"),
        (_rule({"source": SRC}, max_ttl=True), "grant.max_ttl", "positive"),
        (_rule({"source": SRC}, scope="x"), "grant.scope", "unknown field"),
    ],
)
def test_a_bad_rule_is_refused_naming_the_rule_and_field(
    tmp_path: Path, rule: dict[str, Any], field: str, says: str
) -> None:
    message = _load_error(tmp_path, {"version": 1, "rules": {"eng": rule}})
    assert f"rule 'eng', field '{field}'" in message
    assert says in message
    assert message.count("\n") == 0


def test_a_bad_rule_name_is_refused(tmp_path: Path) -> None:
    message = _load_error(tmp_path, {"version": 1, "rules": {"a b": _rule({"source": SRC})}})
    assert "rule 'a b'" in message and "name" in message


# --- watching --------------------------------------------------------------------------------


def test_the_watcher_serves_a_new_policy_after_an_edit(tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    path = _write(tmp_path / "policy.json", {"ops": _rule({"source": SRC, "group": "ops"})})
    watcher = PolicyWatcher(path, interval=1.0, monotonic=clock)
    assert watcher.current().evaluate(ALICE, source=SRC) is None
    _write(path, {"eng": _rule({"source": SRC, "group": "eng"})})
    clock.advance(2)
    assert watcher.current().evaluate(ALICE, source=SRC) is not None


def test_the_watcher_keeps_the_last_good_policy_on_a_bad_edit(tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    errors: list[str] = []
    path = _write(tmp_path / "policy.json", {"eng": _rule({"source": SRC, "group": "eng"})})
    watcher = PolicyWatcher(path, interval=1.0, monotonic=clock, on_error=errors.append)
    path.write_text('{"version": 1, "rules": {"eng": {"match": {}}}}')
    clock.advance(2)
    assert watcher.current().evaluate(ALICE, source=SRC) is not None
    assert watcher.last_error is not None and "rule 'eng'" in watcher.last_error
    assert errors == [watcher.last_error]


# --- jwtmcp policy check -----------------------------------------------------------------------


def _claims_file(tmp_path: Path, claims: dict[str, Any]) -> str:
    path = tmp_path / "claims.json"
    path.write_text(json.dumps(claims))
    return str(path)


def test_policy_check_prints_the_grant_and_the_rule_and_exits_0(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "policy.json", {"eng": _rule({"source": SRC, "group": "eng"}, max_ttl=600)}
    )
    result = cli(
        "policy",
        "check",
        "--claims",
        _claims_file(tmp_path, ALICE),
        "--source",
        SRC,
        "--policy",
        str(path),
    )
    assert result.code == 0, result.err
    assert "granted" in result.out and "rule 'eng': matched" in result.out
    assert "tool:add" in result.out and AUD in result.out and "600" in result.out


def test_policy_check_exits_1_and_says_why_when_denied(tmp_path: Path) -> None:
    path = _write(tmp_path / "policy.json", {"ops": _rule({"source": SRC, "group": "ops"})})
    result = cli(
        "policy",
        "check",
        "--claims",
        _claims_file(tmp_path, ALICE),
        "--source",
        SRC,
        "--policy",
        str(path),
    )
    assert result.code == 1
    assert "denied" in result.out and "no rule matched" in result.out
    assert "rule 'ops': no match" in result.out


def test_policy_check_exits_2_on_a_bad_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text('{"version": 1, "rules": {"eng": {}}}')
    result = cli(
        "policy",
        "check",
        "--claims",
        _claims_file(tmp_path, ALICE),
        "--source",
        SRC,
        "--policy",
        str(path),
    )
    assert result.code == 2
    assert "rule 'eng'" in result.err and "Traceback" not in result.err


def test_policy_check_exits_2_on_a_bad_claims_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "policy.json", {})
    claims = tmp_path / "claims.json"
    claims.write_text("[1, 2]")
    result = cli("policy", "check", "--claims", str(claims), "--source", SRC, "--policy", str(path))
    assert result.code == 2 and "claims" in result.err


def test_policy_check_defaults_to_the_policy_beside_the_clients_file_and_the_iss_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _write(
        tmp_path / "policy.json",
        {"ci": _rule({"source": "issuer:https://ci.example", "sub": "repo:acme/app"})},
    )
    claims = _claims_file(tmp_path, {"iss": "https://ci.example", "sub": "repo:acme/app"})
    result = cli("policy", "check", "--claims", claims)
    assert result.code == 0, result.out + result.err
    assert "issuer:https://ci.example" in result.out


def test_policy_check_reads_the_policy_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path / "p.json", {"eng": _rule({"source": SRC, "group": "eng"})})
    monkeypatch.setenv("JWTMCP_POLICY", os.fspath(path))
    result = cli("policy", "check", "--claims", _claims_file(tmp_path, ALICE), "--source", SRC)
    assert result.code == 0, result.err
