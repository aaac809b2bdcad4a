"""Minting: the claims and header of an access token, tool scopes, and what is refused."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import event, given, settings
from hypothesis import strategies as st

from jwtmcp.clients import add_client
from jwtmcp.errors import ClientsError, ConfigError
from jwtmcp.keys import KeyRing, init_ring, load_ring, rotate_ring
from jwtmcp.tokens import (
    REGISTERED_CLAIMS,
    RESERVED_CLAIMS,
    SigningKey,
    ToolGrants,
    VerifiedClaims,
    build_claims,
    mint,
    scope_grants_scope,
    sign,
    split_scope,
    tool_scopes,
)
from jwtmcp.verifier import Verifier
from tests.support import FakeClock

ISS = "https://auth.example.com"
AUD = "https://mcp.example.com/mcp"


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    """Minting only reads the ring: one per module."""
    return init_ring(tmp_path_factory.mktemp("ring") / "keys", clock=FakeClock())


def _decode(token: str, ring: KeyRing, audience: str = AUD) -> dict[str, Any]:
    public = ring.active.private_key.public_key()
    claims: dict[str, Any] = jwt.decode(
        token,
        public,
        algorithms=["RS256"],
        audience=audience,
        issuer=ISS,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    return claims


def _mint(ring: KeyRing, clock: FakeClock, **kwargs: Any) -> str:
    args: dict[str, Any] = {"issuer": ISS, "subject": "alice", "audience": AUD, "clock": clock}
    args.update(kwargs)
    return mint(ring.active.signing_key, **args)


def test_header_is_rs256_at_jwt_with_the_active_kid(ring: KeyRing, clock: FakeClock) -> None:
    header = jwt.get_unverified_header(_mint(ring, clock))
    assert header == {"alg": "RS256", "typ": "at+jwt", "kid": ring.active.kid}


def test_claims_of_a_minted_token(ring: KeyRing, clock: FakeClock) -> None:
    token = _mint(ring, clock, tools=["add", "subtract"], lifetime=120)
    claims = _decode(token, ring)
    now = int(clock())
    assert claims["iss"] == ISS
    assert claims["sub"] == "alice"
    assert claims["aud"] == AUD
    assert claims["client_id"] == "alice"  # defaults to the subject
    assert claims["iat"] == claims["nbf"] == now
    assert claims["exp"] - claims["iat"] == 120
    assert claims["scope"] == "tool:add tool:subtract"
    assert set(claims) == REGISTERED_CLAIMS


def test_default_lifetime_is_300_seconds(ring: KeyRing, clock: FakeClock) -> None:
    claims = _decode(_mint(ring, clock), ring)
    assert claims["exp"] - claims["iat"] == 300


def test_fractional_clock_is_floored_consistently(ring: KeyRing, clock: FakeClock) -> None:
    clock.advance(0.9)
    claims = _decode(_mint(ring, clock, lifetime=60), ring)
    assert claims["iat"] == int(clock()) and claims["exp"] == int(clock()) + 60


def test_jti_has_at_least_128_random_bits_and_is_unique(ring: KeyRing, clock: FakeClock) -> None:
    jtis = [_decode(_mint(ring, clock), ring)["jti"] for _ in range(20)]
    assert len(set(jtis)) == len(jtis)
    for jti in jtis:
        raw = base64.urlsafe_b64decode(jti + "=" * (-len(jti) % 4))
        assert len(raw) * 8 >= 128


def test_several_audiences_become_a_list(ring: KeyRing, clock: FakeClock) -> None:
    other = "https://other.example.com/mcp"
    token = _mint(ring, clock, audience=[AUD, other, AUD])
    assert _decode(token, ring, audience=other)["aud"] == [AUD, other]


def test_explicit_client_id_and_other_scopes_pass_through(ring: KeyRing, clock: FakeClock) -> None:
    token = _mint(
        ring, clock, client_id="ci-bot", tools=["read_*"], scopes=["openid", "profile", "openid"]
    )
    claims = _decode(token, ring)
    assert claims["client_id"] == "ci-bot"
    assert claims["scope"] == "tool:read_* openid profile"


def test_tools_and_scopes_given_as_plain_strings(ring: KeyRing, clock: FakeClock) -> None:
    claims = _decode(_mint(ring, clock, tools="add,subtract", scopes="a b"), ring)
    assert claims["scope"] == "tool:add tool:subtract a b"


def test_extra_claims_are_added(ring: KeyRing, clock: FakeClock) -> None:
    extra = {"email": "alice@example.com", "tenant": "acme", "groups": ["ops"]}
    claims = _decode(_mint(ring, clock, extra_claims=extra), ring)
    for name, value in extra.items():
        assert claims[name] == value


@pytest.mark.parametrize("name", sorted(RESERVED_CLAIMS))
def test_extra_claims_never_override_registered_ones(
    ring: KeyRing, clock: FakeClock, name: str
) -> None:
    with pytest.raises(ConfigError, match=f"registered claim.*{name}"):
        _mint(ring, clock, extra_claims={name: "evil"})


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(sorted(REGISTERED_CLAIMS)) | st.text(min_size=1, max_size=8),
        st.text(max_size=8),
        max_size=4,
    )
)
def test_no_extra_claims_can_change_a_registered_claim(extra: dict[str, str]) -> None:
    try:
        claims = build_claims(
            issuer=ISS, subject="alice", audience=AUD, extra_claims=extra, now=1000.0, jti="j"
        )
    except ConfigError:
        assert set(extra) & RESERVED_CLAIMS
        return
    assert (claims["iss"], claims["sub"], claims["aud"], claims["exp"]) == (
        ISS,
        "alice",
        AUD,
        1300,
    )
    assert (claims["jti"], claims["client_id"], claims["scope"]) == ("j", "alice", "")


def test_extra_claims_must_be_json(ring: KeyRing, clock: FakeClock) -> None:
    with pytest.raises(ConfigError, match="plain JSON"):
        _mint(ring, clock, extra_claims={"when": object()})
    with pytest.raises(ConfigError, match="plain JSON"):
        _mint(ring, clock, extra_claims={"x": float("nan")})


def test_lifetime_at_the_maximum_is_allowed(ring: KeyRing, clock: FakeClock) -> None:
    claims = _decode(_mint(ring, clock, lifetime=600, max_lifetime=600), ring)
    assert claims["exp"] - claims["iat"] == 600


@pytest.mark.parametrize("lifetime", [3601, 10**6])
def test_lifetime_above_the_maximum_is_refused(
    ring: KeyRing, clock: FakeClock, lifetime: int
) -> None:
    with pytest.raises(ConfigError, match="above the maximum of 3600"):
        _mint(ring, clock, lifetime=lifetime)


@pytest.fixture(scope="module")
def short_ring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    """A ring whose tokens live at most 900 s ('jwtmcp keys init --max-lifetime 900')."""
    return init_ring(tmp_path_factory.mktemp("short") / "keys", max_lifetime=900,
                     clock=FakeClock())


@pytest.mark.parametrize("explicit_maximum", [None, 3600], ids=["default", "explicit-3600"])
def test_mint_refuses_a_lifetime_above_the_rings_maximum(
    short_ring: KeyRing, clock: FakeClock, explicit_maximum: int | None
) -> None:
    more: dict[str, Any] = {} if explicit_maximum is None else {"max_lifetime": explicit_maximum}
    with pytest.raises(ConfigError, match="above the maximum of 900 s"):
        _mint(short_ring, clock, lifetime=1800, **more)


def test_mint_with_the_ring_itself_refuses_a_lifetime_above_its_maximum(
    short_ring: KeyRing, clock: FakeClock
) -> None:
    with pytest.raises(ConfigError, match="above the maximum of 900 s"):
        mint(short_ring, issuer=ISS, subject="alice", audience=AUD, lifetime=901, clock=clock)


def test_a_lifetime_at_the_rings_maximum_is_signed(short_ring: KeyRing, clock: FakeClock) -> None:
    claims = _decode(_mint(short_ring, clock, lifetime=900), short_ring)
    assert claims["exp"] - claims["iat"] == 900


def test_a_smaller_explicit_maximum_still_applies(short_ring: KeyRing, clock: FakeClock) -> None:
    with pytest.raises(ConfigError, match="above the maximum of 600 s"):
        _mint(short_ring, clock, lifetime=700, max_lifetime=600)


def test_signing_keys_carry_their_rings_maximum_through_load_and_rotate(tmp_path: Path) -> None:
    created = init_ring(tmp_path / "keys", max_lifetime=900, clock=FakeClock())
    assert created.active.signing_key.max_lifetime == 900
    assert load_ring(tmp_path / "keys").active.signing_key.max_lifetime == 900
    rotated = rotate_ring(tmp_path / "keys", clock=FakeClock())
    assert {k.signing_key.max_lifetime for k in rotated.keys} == {900}


@pytest.mark.parametrize("lifetime", [0, -1, True, 1.5, "300"])
def test_lifetime_must_be_a_positive_whole_number(
    ring: KeyRing, clock: FakeClock, lifetime: object
) -> None:
    with pytest.raises(ConfigError, match="positive number of seconds"):
        _mint(ring, clock, lifetime=lifetime)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("issuer", "", "issuer"),
        ("subject", "", "subject"),
        ("audience", "", "audience"),
        ("audience", [], "audience"),
    ],
)
def test_required_claims_must_be_given(
    ring: KeyRing, clock: FakeClock, field: str, value: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _mint(ring, clock, **{field: value})


# --- mint refuses what the verifier would refuse ---------------------------------------------
#
# Every argument of mint(), swept: a value that would give a token jwtmcp's own Verifier
# refuses (or one whose claims differ from what was asked) is a ConfigError at mint time,
# never a token, and never another exception.


def _nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = {"n": value}
    return value


_NOT_NON_EMPTY_STRINGS: list[object] = [1234, 0, True, False, 1.5, b"alice", ["alice"], {}, ""]
_MINT_REFUSALS: list[tuple[str, str, object]] = (
    [("subject", repr(v), v) for v in [*_NOT_NON_EMPTY_STRINGS, None]]
    + [("client_id", repr(v), v) for v in _NOT_NON_EMPTY_STRINGS]
    + [("issuer", repr(v), v) for v in [*_NOT_NON_EMPTY_STRINGS, None]]
    + [
        ("audience", repr(v), v)
        for v in [42, True, None, b"https://mcp.example.com", [AUD, None], [AUD, 1], [AUD, ""],
                  [[AUD]], {AUD: 1}.values()]
    ]
    + [
        ("tools", repr(v), v)
        for v in [5, True, [1], [None], [b"add"], [["add"]], ["add", 7]]
    ]
    + [
        ("scopes", repr(v), v)
        for v in [5, [1], [None], [""], ["two words"], ["a\tb"], ["line\nbreak"], [b"openid"]]
    ]
    + [("lifetime", repr(v), v) for v in [None, 10**400, float("inf"), float("nan")]]
    + [
        ("max_lifetime", repr(v), v)
        for v in ["3600", 0, -1, True, 1.5, float("inf"), float("nan")]
    ]
    + [
        ("extra_claims", name, v)
        for name, v in [
            ("not-a-mapping", 5),
            ("pairs-list", [("email", "a@example.com")]),
            ("integer-key", {1: "x"}),
            ("colliding-keys", {1: "a", "1": "b"}),
            ("nested-integer-key", {"ctx": {2: "x"}}),
            ("none-key", {None: "x"}),
            ("bool-key-in-list", {"l": [{True: 1}]}),
            ("infinity", {"x": float("inf")}),
            ("nan-in-list", {"x": [float("nan")]}),
            ("bytes", {"x": b"raw"}),
            ("set", {"x": {1, 2}}),
            ("object", {"x": object()}),
            ("integer-past-json-limits", {"x": 10**5000}),
            ("nested-too-deep", {"x": _nested(100)}),
            ("larger-than-verifiers-accept", {"pad": "x" * 9000}),
        ]
    ]
)


@pytest.mark.parametrize(
    ("argument", "value"),
    [(a, v) for a, _, v in _MINT_REFUSALS],
    ids=[f"{a}-{label}" for a, label, _ in _MINT_REFUSALS],
)
def test_mint_refuses_what_the_verifier_would_refuse(
    ring: KeyRing, clock: FakeClock, argument: str, value: object
) -> None:
    with pytest.raises(ConfigError):
        _mint(ring, clock, **{argument: value})


@pytest.mark.parametrize("scope", ['quo"te', "back\\slash", "nul\x00", "caf\u00e9", "del\x7f"])
def test_scopes_are_rfc_6749_scope_tokens_as_for_clients(
    ring: KeyRing, clock: FakeClock, tmp_path: Path, scope: str
) -> None:
    with pytest.raises(ConfigError, match="invalid scope"):
        _mint(ring, clock, scopes=[scope])
    with pytest.raises(ClientsError, match="invalid scope"):
        add_client(tmp_path / "clients.json", "bot", tools=["add"], audiences=[AUD],
                   scopes=[scope])


@pytest.mark.parametrize(
    "now", [float("nan"), float("inf"), "1800000000", None, float(2**53)], ids=repr
)
def test_mint_refuses_a_clock_that_gives_no_usable_time(ring: KeyRing, now: object) -> None:
    with pytest.raises(ConfigError, match="clock"):
        _mint(ring, lambda: now)  # type: ignore[arg-type]


def test_mint_refuses_an_expiry_past_the_numeric_date_range(ring: KeyRing) -> None:
    key = SigningKey(ring.active.kid, ring.active.private_key, max_lifetime=2**60)
    with pytest.raises(ConfigError, match="expiry"):
        mint(key, issuer=ISS, subject="alice", audience=AUD, lifetime=2**53, clock=FakeClock())


def test_a_nested_extra_claim_within_the_depth_limit_is_signed(
    ring: KeyRing, clock: FakeClock
) -> None:
    claims = _decode(_mint(ring, clock, extra_claims={"x": _nested(30)}), ring)
    assert claims["x"] == _nested(30)


def test_client_id_defaults_to_the_subject_only_when_not_given(
    ring: KeyRing, clock: FakeClock
) -> None:
    assert _decode(_mint(ring, clock, client_id=None), ring)["client_id"] == "alice"


@pytest.mark.parametrize(
    "tool",
    ["", " ", "two words", "a*b", 'quo"te', "tool:add", "tool:*", "caf\u00e9", "nul\x00",
     "del\x7f"],
)
def test_invalid_tool_names_are_refused(ring: KeyRing, clock: FakeClock, tool: str) -> None:
    with pytest.raises(ConfigError, match="invalid tool name"):
        _mint(ring, clock, tools=[tool])


def test_build_claims_and_sign_are_pure(ring: KeyRing) -> None:
    args: dict[str, Any] = {
        "issuer": ISS,
        "subject": "alice",
        "audience": AUD,
        "tools": ["add"],
        "now": 1_800_000_000.0,
        "jti": "fixed",
    }
    first, second = build_claims(**args), build_claims(**args)
    assert first == second
    # RS256 (PKCS#1 v1.5) is deterministic: same claims and key, same token.
    assert sign(first, ring.active.signing_key) == sign(second, ring.active.signing_key)


# --- scopes and grants ----------------------------------------------------------------------


def test_tool_scopes_keep_order_and_drop_duplicates() -> None:
    assert tool_scopes(["b", "a", "b", " c "]) == ("tool:b", "tool:a", "tool:c")


def test_split_scope() -> None:
    assert split_scope("a  b a") == ("a", "b")
    assert split_scope(["x", "", "x"]) == ("x",)
    assert split_scope(None) == ()


@pytest.mark.parametrize(
    ("scopes", "tool", "allowed"),
    [
        (["tool:add"], "add", True),
        (["tool:add"], "subtract", False),
        (["tool:add"], "addition", False),
        (["tool:*"], "anything", True),
        (["tool:read_*"], "read_file", True),
        (["tool:read_*"], "write_file", False),
        (["add"], "add", False),  # no tool: prefix, no tool
        ([], "add", False),
    ],
)
def test_tool_grants(scopes: list[str], tool: str, allowed: bool) -> None:
    assert ToolGrants.from_scopes(scopes).allows(tool) is allowed


@pytest.mark.parametrize(
    ("granted", "requested", "covered"),
    [
        ("tool:*", "tool:add", True),
        ("tool:*", "tool:read_*", True),
        ("tool:read_*", "tool:read_file", True),
        ("tool:read_*", "tool:write", False),
        ("tool:add", "tool:add", True),
        ("tool:add", "tool:*", False),
        ("openid", "openid", True),
        ("openid", "tool:add", False),
    ],
)
def test_scope_grants_scope(granted: str, requested: str, covered: bool) -> None:
    assert scope_grants_scope(granted, requested) is covered


def test_verified_claims_from_a_minted_token(ring: KeyRing, clock: FakeClock) -> None:
    token = _mint(ring, clock, tools=["add", "read_*"], client_id="bot")
    claims = _decode(token, ring)
    verified = VerifiedClaims.from_claims(claims, kid=ring.active.kid)
    assert verified.subject == "alice" and verified.client_id == "bot"
    assert verified.audience == (AUD,)
    assert verified.scopes == ("tool:add", "tool:read_*")
    assert verified.may_call("add") and verified.may_call("read_x")
    assert not verified.may_call("subtract")
    assert verified.expires_at - (verified.issued_at or 0) == 300
    with pytest.raises(TypeError):
        verified.claims["sub"] = "mallory"  # type: ignore[index]


# --- property: mint signs exactly what the default Verifier accepts --------------------------

_SPECIAL = st.sampled_from(["\ud800", "\x00", "\u2028", " ", "\x1c", "\t", "*", ",", '"', "é"])
_TEXT = st.text(st.characters() | _SPECIAL, max_size=8)
_WORD = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E) | _SPECIAL, max_size=8)
_SCOPE = st.from_regex(r"[\x21\x23-\x5b\x5d-\x7e]{1,8}", fullmatch=True)
_TOOL = st.from_regex(r"[A-Za-z0-9_.-]{1,8}\*?|\*", fullmatch=True)
_OTHER = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.binary(max_size=4)
    | st.lists(st.integers(), max_size=2) | st.dictionaries(st.text(max_size=2), st.none())
)
_URLS = st.sampled_from([ISS, AUD, "http://127.0.0.1:8000", "https://a.example/mcp/x"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner)
    | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
_NOT_JSON = st.recursive(
    _OTHER | st.floats(allow_nan=True, allow_infinity=True) | st.sets(st.integers(), max_size=1),
    lambda inner: st.lists(inner, max_size=2)
    | st.dictionaries(st.integers() | st.none() | st.booleans() | _TEXT, inner, max_size=2),
    max_leaves=4,
)
# Each argument is drawn from a mostly valid strategy, or (one time in eight) from one of
# values mint must refuse; so about a third of the examples reach the verifier.
_ARGUMENTS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "issuer": (_URLS | st.text(min_size=1, max_size=8), _OTHER | st.just("")),
    "subject": (st.text(min_size=1, max_size=8) | _WORD, _OTHER),
    "client_id": (st.none() | st.text(min_size=1, max_size=8) | _WORD, _OTHER),
    "audience": (
        _URLS | st.lists(_URLS | st.text(min_size=1, max_size=8), min_size=1, max_size=3),
        _OTHER | st.lists(_URLS | _TEXT | _OTHER, max_size=3),
    ),
    "tools": (
        st.lists(_TOOL, max_size=3) | _TOOL,
        st.lists(_WORD | _OTHER, min_size=1, max_size=3) | _WORD | _OTHER,
    ),
    "scopes": (
        st.lists(_SCOPE, max_size=3) | _SCOPE,
        st.lists(_WORD | _OTHER, min_size=1, max_size=3) | _WORD | _OTHER,
    ),
    "lifetime": (st.integers(1, 3600), st.integers(-2, 0) | st.integers(3601, 10**6) | _OTHER),
    "extra_claims": (
        st.none() | st.dictionaries(_TEXT, _JSON, max_size=3),
        _OTHER | st.dictionaries(_TEXT | st.integers(), _NOT_JSON, min_size=1, max_size=2),
    ),
}


_ONE_IN_EIGHT = st.sampled_from([False] * 7 + [True])


def _as_list(value: object) -> list[Any]:
    return [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mint_raises_config_error_or_signs_what_the_verifier_accepts(
    ring: KeyRing, data: st.DataObject
) -> None:
    args = {
        name: data.draw(wrong if data.draw(_ONE_IN_EIGHT, label="wrong?") else valid, label=name)
        for name, (valid, wrong) in _ARGUMENTS.items()
    }
    clock = FakeClock()
    try:
        token = mint(ring.active.signing_key, clock=clock, **args)
    except ConfigError:
        event("refused")
        return
    event("minted")
    subject, client_id, extra = args["subject"], args["client_id"], args["extra_claims"]
    pem = ring.active.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    audiences = list(dict.fromkeys(_as_list(args["audience"])))
    with Verifier(issuer=args["issuer"], audience=audiences, public_key_pem=pem,
                  clock=clock) as v:
        got = v.verify(token)
    assert got.issuer == v.issuer and got.audience == tuple(audiences) == v.audiences
    assert got.subject == subject
    assert got.client_id == (subject if client_id is None else client_id)
    assert got.expires_at - got.issued_at == args["lifetime"]  # type: ignore[operator]
    tools, scopes = args["tools"], args["scopes"]
    tool_list = [t for t in tools.split(",") if t.strip()] if isinstance(tools, str) else tools
    scope_list = scopes.split() if isinstance(scopes, str) else scopes
    wanted = ["tool:" + t.strip() for t in tool_list] + list(scope_list)
    assert got.scopes == tuple(dict.fromkeys(wanted))
    for name, value in (extra or {}).items():
        assert got.claims[name] == json.loads(json.dumps(value))
    assert set(got.claims) == REGISTERED_CLAIMS | set(extra or {})


# --- byte for byte what PyJWT writes --------------------------------------------------------

_json_leaf = (
    st.none() | st.booleans() | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)
)
_json_value = st.recursive(
    _json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    subject=st.text(min_size=1, max_size=12),
    audiences=st.lists(st.sampled_from([AUD, "https://a.example/mcp/x", "http://h:1/a%20b"]),
                       min_size=1, max_size=3),
    extra=st.dictionaries(st.text(min_size=1, max_size=6).filter(
        lambda k: k not in RESERVED_CLAIMS), _json_value, max_size=3),
)
def test_sign_writes_the_token_pyjwt_writes(
    ring: KeyRing, subject: str, audiences: list[str], extra: dict[str, Any]
) -> None:
    """RS256 (PKCS#1 v1.5) is deterministic, so the whole token can be compared: same header
    bytes (sorted keys), same payload bytes (compact, ASCII-escaped), same signature. Subjects
    are any text (non-ASCII, DEL, quotes); extra claims any JSON value mint accepts."""
    claims = build_claims(issuer=ISS, subject=subject, audience=audiences, tools=["add"],
                          extra_claims=extra, now=1_800_000_000, jti="j")
    key = ring.active.signing_key
    expected = jwt.encode(claims, key.private_key, algorithm="RS256",
                          headers={"typ": "at+jwt", "kid": key.kid})
    assert sign(claims, key) == expected
