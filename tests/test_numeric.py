"""Numbers from untrusted text are read one way everywhere (issue 9 §5 "numeric form fields").

``str.isdigit()`` and ``int()``/``float()`` accept digits of every script (``"١٢٠"``) and
``isdigit()`` also superscripts (``"²"``, which ``int()`` then refuses with a ValueError). The
sweep below finds the whole kind in the package's source; the cases after it show the places
that sweep found answering the way :mod:`jwtmcp.numeric` does.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from jwtmcp.cimd import CimdPolicy
from jwtmcp.clients import ClientsError
from jwtmcp.numeric import parse_decimal_number, parse_whole_number
from jwtmcp.users import UsersError, load_users

PACKAGE = Path(__file__).resolve().parent.parent / "jwtmcp"
UNICODE_DIGIT_TESTS = {"isdigit", "isdecimal", "isnumeric"}


def test_no_module_tests_digits_with_the_unicode_aware_str_methods() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in UNICODE_DIGIT_TESTS
            ):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not found, f"use jwtmcp.numeric instead of str.isdigit() and int(): {found}"


@pytest.mark.parametrize(
    "text", ["١٢٠", "²", "\uff11\uff12\uff10", "+120", " 120", "1_20", "1e2", "inf"]
)
def test_the_shared_parsers_refuse_anything_but_ascii_digits(text: str) -> None:
    with pytest.raises(ValueError):
        parse_whole_number(text)
    with pytest.raises(ValueError):
        parse_decimal_number(text)


@pytest.mark.parametrize("max_age", ["١٢٠٠", "²", "\uff11\uff12\uff10\uff10"])
def test_a_metadata_document_max_age_in_other_digits_is_no_max_age(max_age: str) -> None:
    policy = CimdPolicy()
    assert policy.cache_seconds(f"max-age={max_age}") == policy.cache_seconds(None)


def test_a_metadata_document_max_age_in_ascii_digits_is_used() -> None:
    policy = CimdPolicy(min_cache_seconds=0, max_cache_seconds=10_000)
    assert policy.cache_seconds("max-age=1200") == 1200


@pytest.mark.parametrize("created_at", ["١٢٣", "123", True, float("inf"), -1])
def test_a_users_file_created_at_must_be_a_json_number(
    tmp_path: Path, created_at: object
) -> None:
    import json

    from jwtmcp.users import add_user

    path = tmp_path / "users.json"
    add_user(path, "alice", password="correct horse battery", tools=["add"],
             audiences=["http://127.0.0.1:8001/mcp"])
    data = json.loads(path.read_text())
    data["users"]["alice"]["created_at"] = created_at
    path.write_text(json.dumps(data))
    with pytest.raises((UsersError, ClientsError), match="created_at"):
        load_users(path)
