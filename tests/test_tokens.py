"""Minting: the claims and header of an access token, tool scopes, and what is refused."""

from __future__ import annotations

import base64
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jwtmcp.errors import ConfigError
from jwtmcp.keys import KeyRing, init_ring
from jwtmcp.tokens import (
    REGISTERED_CLAIMS,
    RESERVED_CLAIMS,
    ToolGrants,
    VerifiedClaims,
    build_claims,
    mint,
    scope_grants_scope,
    sign,
    split_scope,
    tool_scopes,
)
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


@pytest.mark.parametrize("tool", ["", " ", "two words", "a*b", 'quo"te'])
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


# --- byte for byte what PyJWT writes --------------------------------------------------------

_json_leaf = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
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
    audiences=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=3),
    extra=st.dictionaries(st.text(min_size=1, max_size=6).filter(
        lambda k: k not in RESERVED_CLAIMS), _json_value, max_size=3),
)
def test_sign_writes_the_token_pyjwt_writes(
    ring: KeyRing, subject: str, audiences: list[str], extra: dict[str, Any]
) -> None:
    """RS256 (PKCS#1 v1.5) is deterministic, so the whole token can be compared: same header
    bytes (sorted keys), same payload bytes (compact, ASCII-escaped), same signature. Subjects
    and audiences are any text (non-ASCII, DEL, quotes); extra claims any JSON value."""
    claims = build_claims(issuer=ISS, subject=subject, audience=audiences, tools=["add"],
                          extra_claims=extra, now=1_800_000_000, jti="j")
    key = ring.active.signing_key
    expected = jwt.encode(claims, key.private_key, algorithm="RS256",
                          headers={"typ": "at+jwt", "kid": key.kid})
    assert sign(claims, key) == expected
