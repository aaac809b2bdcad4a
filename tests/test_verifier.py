"""The verifier's contract: key sources, options and defaults, claims, the verified cache."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import given, settings
from hypothesis import strategies as st

from jwtmcp import verifier as verifier_module
from jwtmcp.cli import main as cli_main
from jwtmcp.errors import ConfigError, TokenError
from jwtmcp.keys import KeyRing, init_ring
from jwtmcp.tokens import VerifiedClaims, mint
from jwtmcp.verifier import Verifier
from tests.jwks_support import AUDIENCE, ISSUER, b64url, claims, header, jws, segment
from tests.support import FakeClock

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    return init_ring(tmp_path_factory.mktemp("v") / "keys", clock=FakeClock(NOW))


@pytest.fixture(scope="module")
def jwks_path(ring: KeyRing, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps(ring.jwks()))
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def verifier(jwks_path: Path, clock: FakeClock) -> Iterator[Verifier]:
    with Verifier(issuer=ISSUER, audience=AUDIENCE, jwks_file=jwks_path, clock=clock) as v:
        yield v


def _mint(ring: KeyRing, clock: FakeClock, **kw: Any) -> str:
    kw.setdefault("subject", "alice")
    kw.setdefault("audience", AUDIENCE)
    return mint(ring.active.signing_key, issuer=ISSUER, clock=clock, **kw)


def _code(v: Verifier, token: str) -> str:
    with pytest.raises(TokenError) as info:
        v.verify(token)
    return info.value.code


# --- the verified claims ------------------------------------------------------------------


def test_verified_claims_carry_identity_tools_and_raw_claims(
    verifier: Verifier, ring: KeyRing, clock: FakeClock
) -> None:
    token = _mint(ring, clock, client_id="ci-bot", tools=["add", "read_*"], scopes=["openid"],
                  extra_claims={"tenant": "acme"}, lifetime=120)
    got = verifier.verify(token)
    assert (got.subject, got.client_id, got.issuer) == ("alice", "ci-bot", ISSUER)
    assert got.audience == (AUDIENCE,)
    assert got.scopes == ("tool:add", "tool:read_*", "openid")
    assert got.may_call("add") and got.may_call("read_file")
    assert not got.may_call("subtract") and not got.may_call("rea")
    assert got.expires_at == int(NOW) + 120 and got.issued_at == int(NOW)
    assert got.kid == ring.active.kid and got.jti and len(got.jti) >= 22
    assert got.claims["tenant"] == "acme"
    with pytest.raises(TypeError):
        got.claims["sub"] = "mallory"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.subject = "mallory"  # type: ignore[misc]


def test_fast_construction_equals_the_dataclass(
    verifier: Verifier, ring: KeyRing, clock: FakeClock
) -> None:
    got = verifier.verify(_mint(ring, clock, tools=["*"]))
    rebuilt = VerifiedClaims(**{f.name: getattr(got, f.name) for f in dataclasses.fields(got)})
    assert type(got) is VerifiedClaims
    assert vars(got) == vars(rebuilt)
    assert got.may_call("anything")


def test_verify_async_returns_the_same_claims(
    verifier: Verifier, ring: KeyRing, clock: FakeClock
) -> None:
    token = _mint(ring, clock)
    assert asyncio.run(verifier.verify_async(token)).jti == verifier.verify(token).jti


# --- key sources ------------------------------------------------------------------------


def test_a_pem_public_key_verifies_whatever_kid_the_token_names(
    ring: KeyRing, clock: FakeClock
) -> None:
    pem = ring.active.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with Verifier(issuer=ISSUER, audience=AUDIENCE, public_key_pem=pem, clock=clock) as v:
        assert v.verify(_mint(ring, clock)).subject == "alice"
        no_kid = jws(header(None), claims(NOW), ring.active.private_key)
        assert v.verify(no_kid).kid is None
        assert ring.next is not None
        assert _code(v, jws(header(None), claims(NOW), ring.next.private_key)) == "bad_signature"


@pytest.mark.parametrize(
    "sources",
    [{}, {"jwks_file": "x", "public_key_pem": "y"}],
    ids=["none", "two"],
)
def test_exactly_one_key_source(sources: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="exactly one key source"):
        Verifier(issuer=ISSUER, audience=AUDIENCE, **sources)  # type: ignore[arg-type]


def test_bad_key_sources_are_config_errors(tmp_path: Path, ring: KeyRing) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Verifier(issuer=ISSUER, audience=AUDIENCE, jwks_file=tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Verifier(issuer=ISSUER, audience=AUDIENCE, jwks_file=tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text('{"keys": []}')
    with pytest.raises(ConfigError, match="no usable"):
        Verifier(issuer=ISSUER, audience=AUDIENCE, jwks_file=tmp_path / "empty.json")
    with pytest.raises(ConfigError, match="PEM"):
        Verifier(issuer=ISSUER, audience=AUDIENCE, public_key_pem="-----BEGIN nonsense")


@pytest.mark.parametrize(
    "options",
    [
        {"issuer": ""},
        {"audience": ""},
        {"audience": []},
        {"leeway": -1},
        {"leeway": 3600},
        {"max_lifetime": 0},
        {"required_type": ""},
        {"max_token_bytes": 10},
        {"verified_cache_size": -1},
        {"algorithms": ()},
        {"algorithms": ("HS256",)},
        {"fetch_timeout": 0},
    ],
    ids=lambda o: next(iter(o)),
)
def test_unsafe_or_invalid_options_are_refused(jwks_path: Path, options: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_file": jwks_path}
    kwargs.update(options)
    with pytest.raises(ConfigError):
        Verifier(**kwargs)


def test_defaults_are_the_safe_ones(verifier: Verifier) -> None:
    assert verifier.algorithms == ("RS256",)
    assert verifier.leeway == 30
    assert verifier.max_lifetime == 3600
    assert verifier.required_type == "at+jwt"
    assert verifier.max_token_bytes == 8192


# --- checks and their options --------------------------------------------------------------


def test_leeway_bounds_expiry_and_not_before(jwks_path: Path, ring: KeyRing) -> None:
    clock = FakeClock(NOW)
    v = Verifier(issuer=ISSUER, audience=AUDIENCE, jwks_file=jwks_path, clock=clock, leeway=30)
    key = ring.active.private_key
    assert v.verify(jws(header(ring.active.kid), claims(NOW, exp=int(NOW) - 29), key))
    assert _code(v, jws(header(ring.active.kid), claims(NOW, exp=int(NOW) - 30), key)) == (
        "token_expired"
    )
    assert v.verify(jws(header(ring.active.kid), claims(NOW, nbf=int(NOW) + 30), key))
    assert _code(v, jws(header(ring.active.kid), claims(NOW, nbf=int(NOW) + 31), key)) == (
        "not_yet_valid"
    )
    strict = Verifier(issuer=ISSUER, audience=AUDIENCE, jwks_file=jwks_path, clock=clock,
                      leeway=0)
    assert _code(strict, jws(header(ring.active.kid), claims(NOW, exp=int(NOW)), key)) == (
        "token_expired"
    )


def test_max_lifetime_is_configurable(jwks_path: Path, ring: KeyRing, clock: FakeClock) -> None:
    v = Verifier(issuer=ISSUER, audience=AUDIENCE, jwks_file=jwks_path, clock=clock,
                 max_lifetime=600)
    assert v.verify(_mint(ring, clock, lifetime=600))
    assert _code(v, _mint(ring, clock, lifetime=601)) == "lifetime_too_long"


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT"])
def test_type_is_compared_as_a_media_type(verifier: Verifier, ring: KeyRing, typ: str) -> None:
    token = jws(header(ring.active.kid, typ=typ), claims(NOW), ring.active.private_key)
    assert verifier.verify(token).subject == "alice"


def test_any_of_several_audiences_matches(jwks_path: Path, ring: KeyRing, clock: FakeClock):
    v = Verifier(issuer=ISSUER, audience=["http://a/mcp", AUDIENCE], jwks_file=jwks_path,
                 clock=clock)
    assert v.verify(_mint(ring, clock)).audience == (AUDIENCE,)
    multi = _mint(ring, clock, audience=["http://other/mcp", "http://a/mcp"])
    assert v.verify(multi).audience == ("http://other/mcp", "http://a/mcp")
    assert _code(v, _mint(ring, clock, audience="http://b/mcp")) == "wrong_audience"


def test_ps256_verifies_when_configured(ring: KeyRing, clock: FakeClock, tmp_path: Path):
    jwk = {k: v for k, v in ring.active.public_jwk().items() if k != "alg"}  # any RSA alg
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    v = Verifier(issuer=ISSUER, audience=AUDIENCE, jwks_file=path, clock=clock,
                 algorithms=["RS256", "PS256"])
    signing_input = f"{segment(header(ring.active.kid, alg='PS256'))}.{segment(claims(NOW))}"
    sig = ring.active.private_key.sign(
        signing_input.encode(),
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )
    assert v.verify(f"{signing_input}.{b64url(sig)}").subject == "alice"


def test_a_key_bound_to_one_alg_refuses_another(
    ring: KeyRing, clock: FakeClock, tmp_path: Path
) -> None:
    jwk = {**ring.active.public_jwk(), "alg": "RS384"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    v = Verifier(issuer=ISSUER, audience=AUDIENCE, jwks_file=path, clock=clock,
                 algorithms=["RS256", "RS384"])
    assert _code(v, _mint(ring, clock)) == "unsupported_alg"


# --- registered claims of the wrong JSON type ------------------------------------------------
#
# A registered claim that is present must have its JSON type: a NumericDate is a JSON number
# (not null, a boolean, a string, an array or an object) within the I-JSON range (RFC 7493
# 2.2, so it converts to a float exactly); iss, sub, client_id and jti are non-empty strings,
# scope a string; aud a string or a non-empty list of strings. ``null`` is not "absent".

_STRING_CLAIMS = ("iss", "sub", "client_id", "jti", "scope")
_NUMERIC_DATES = ("iat", "nbf", "exp")
_NOT_STRINGS: list[tuple[str, str]] = [
    ("null", "null"), ("true", "true"), ("false", "false"), ("zero", "0"), ("float", "1.5"),
    ("empty-array", "[]"), ("array", '["alice"]'), ("empty-object", "{}"),
    ("object", '{"v":"alice"}'),
]
_NOT_NUMBERS: list[tuple[str, str]] = [
    ("null", "null"), ("true", "true"), ("false", "false"), ("string", '"1800000000"'),
    ("empty-string", '""'), ("empty-array", "[]"), ("array", "[1800000000]"),
    ("object", '{"t":1800000000}'), ("infinite", "1e400"), ("minus-infinite", "-1e400"),
    ("huge-integer", "1" + "0" * 400), ("minus-huge-integer", "-1" + "0" * 400),
    ("past-2**53", str(2**53)), ("float-past-2**53", "9.1e15"),
]
_NOT_AUDIENCES: list[tuple[str, str]] = [
    ("null", "null"), ("true", "true"), ("number", "1"), ("object", "{}"),
    ("empty-array", "[]"), ("array-with-number", f'["{AUDIENCE}",1]'),
    ("array-with-null", f'["{AUDIENCE}",null]'), ("array-with-array", f'["{AUDIENCE}",[]]'),
]
_WRONG_TYPES: list[tuple[str, str, str]] = (
    [(c, label, raw) for c in _STRING_CLAIMS for label, raw in _NOT_STRINGS if
     not (c == "scope" and label == "empty-string")]
    + [("client_id", "empty-string", '""'), ("jti", "empty-string", '""')]
    + [(c, label, raw) for c in _NUMERIC_DATES for label, raw in _NOT_NUMBERS]
    + [("aud", label, raw) for label, raw in _NOT_AUDIENCES]
)


def _signed_with_raw_claim(ring: KeyRing, name: str, raw: str) -> str:
    """A token whose claim ``name`` is the JSON text ``raw`` (all other claims valid)."""
    payload = claims(NOW)
    payload[name] = "\x00placeholder"
    text = json.dumps(payload, separators=(",", ":")).replace('"\\u0000placeholder"', raw)
    return jws(header(ring.active.kid), text.encode(), ring.active.private_key)


@pytest.mark.parametrize(
    ("name", "raw"),
    [(n, r) for n, _, r in _WRONG_TYPES],
    ids=[f"{n}-{label}" for n, label, _ in _WRONG_TYPES],
)
def test_a_present_registered_claim_of_the_wrong_type_is_malformed(
    verifier: Verifier, ring: KeyRing, caplog: pytest.LogCaptureFixture, name: str, raw: str
) -> None:
    token = _signed_with_raw_claim(ring, name, raw)
    with caplog.at_level(logging.ERROR, logger="jwtmcp"):
        assert _code(verifier, token) == "malformed"
        assert asyncio.run(_async_code(verifier, token)) == "malformed"
    # Refused by a check, not by an unexpected exception (which logs a traceback).
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def _async_code(v: Verifier, token: str) -> str:
    with pytest.raises(TokenError) as info:
        await v.verify_async(token)
    return info.value.code


@pytest.mark.parametrize("name", ["nbf", "client_id", "jti", "scope"])
def test_an_absent_optional_claim_is_still_accepted(
    verifier: Verifier, ring: KeyRing, name: str
) -> None:
    token = jws(header(ring.active.kid), claims(NOW, **{name: None}), ring.active.private_key)
    assert name not in verifier.verify(token).claims


@pytest.mark.parametrize("name", ["iss", "sub", "aud", "iat", "exp"])
def test_an_absent_required_claim_is_missing_not_malformed(
    verifier: Verifier, ring: KeyRing, name: str
) -> None:
    token = jws(header(ring.active.kid), claims(NOW, **{name: None}), ring.active.private_key)
    assert _code(verifier, token) == "missing_claim"


@pytest.mark.parametrize(
    ("name", "value"),
    [("iat", float(int(NOW))), ("nbf", NOW - 0.5), ("exp", NOW + 299.5), ("exp", 2**53 - 1)],
)
def test_numeric_dates_in_range_are_accepted_as_numbers(
    jwks_path: Path, ring: KeyRing, clock: FakeClock, name: str, value: float
) -> None:
    v = Verifier(issuer=ISSUER, audience=AUDIENCE, jwks_file=jwks_path, clock=clock)
    # The numbers are under test, not the lifetime (above 3600 s the constructor asks for
    # the revocation list): lift the cap on this instance.
    v.max_lifetime = float(2**53)
    token = jws(header(ring.active.kid), claims(NOW, **{name: value}), ring.active.private_key)
    assert v.verify(token).claims[name] == value


# --- the verified-token cache --------------------------------------------------------------


def test_a_reused_token_still_expires(verifier: Verifier, ring: KeyRing, clock: FakeClock):
    token = _mint(ring, clock, lifetime=60)
    verifier.verify(token)
    assert verifier.verified_cache_len == 1
    clock.advance(60 + 29)
    assert verifier.verify(token).subject == "alice"
    clock.advance(1)
    assert _code(verifier, token) == "token_expired"


def test_a_reused_token_is_not_valid_before_its_time_if_the_clock_goes_back(
    verifier: Verifier, ring: KeyRing, clock: FakeClock
):
    token = _mint(ring, clock)
    verifier.verify(token)
    clock.advance(-120)
    assert _code(verifier, token) == "not_yet_valid"


def test_a_reused_token_keeps_its_time_window_in_verify_async(
    verifier: Verifier, ring: KeyRing, clock: FakeClock
):
    """verify_async has its own copy of the cache-hit path: the same window holds there."""
    token = _mint(ring, clock, lifetime=60)
    assert asyncio.run(verifier.verify_async(token)).subject == "alice"
    clock.advance(-31)
    with pytest.raises(TokenError) as early:
        asyncio.run(verifier.verify_async(token))
    clock.advance(31 + 60 + 29)
    assert asyncio.run(verifier.verify_async(token)).subject == "alice"
    clock.advance(1)
    with pytest.raises(TokenError) as late:
        asyncio.run(verifier.verify_async(token))
    assert (early.value.code, late.value.code) == ("not_yet_valid", "token_expired")
    assert verifier.verified_cache_len == 1


def test_the_verified_cache_is_bounded_lru(jwks_path: Path, ring: KeyRing, clock: FakeClock):
    v = Verifier(issuer=ISSUER, audience=AUDIENCE, jwks_file=jwks_path, clock=clock,
                 verified_cache_size=3)
    tokens = [_mint(ring, clock, subject=f"u{i}") for i in range(5)]
    for t in tokens:
        v.verify(t)
    assert v.verified_cache_len == 3
    off = Verifier(issuer=ISSUER, audience=AUDIENCE, jwks_file=jwks_path, clock=clock,
                   verified_cache_size=0)
    off.verify(tokens[0])
    assert off.verified_cache_len == 0


def test_threads_share_one_verifier(verifier: Verifier, ring: KeyRing, clock: FakeClock):
    tokens = [_mint(ring, clock, subject=f"u{i}") for i in range(40)]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(200):
                t = tokens[(i + offset) % len(tokens)]
                assert verifier.verify(t).subject == f"u{(i + offset) % len(tokens)}"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


# --- errors and logs ------------------------------------------------------------------------


def test_refusals_log_kid_sub_and_jti_but_never_the_token(
    verifier: Verifier, ring: KeyRing, clock: FakeClock, caplog: pytest.LogCaptureFixture
):
    token = _mint(ring, clock, subject="mallory", audience="http://elsewhere/mcp")
    with caplog.at_level(logging.DEBUG, logger="jwtmcp"):
        assert _code(verifier, token) == "wrong_audience"
        assert _code(verifier, token[:-2]) == "bad_signature"
    text = caplog.text
    assert "wrong_audience" in text and "mallory" in text and ring.active.kid in text
    payload_jti = verifier_module._json_object(token.split(".")[1].encode(), "p")["jti"]
    assert payload_jti in text
    for part in token.split("."):
        assert part not in text


def test_unexpected_internal_errors_become_token_errors(
    verifier: Verifier, ring: KeyRing, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: a bug below verify() must still surface as a TokenError."""

    def broken(*args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(verifier, "_check_claims", broken)
    assert _code(verifier, _mint(ring, clock)) == "malformed"


# --- the JSON fast path (orjson when the payload is in canonical form) ---------------------


def _decoded(raw: bytes, decode: Any) -> tuple[str, str]:
    """("ok", repr of the value) or ("error", code): repr tells 1 from 1.0 and shows inf."""
    try:
        return "ok", repr(decode(raw))
    except TokenError as exc:
        return "error", exc.code


def _both_paths(raw: bytes) -> tuple[tuple[str, str], tuple[str, str]]:
    fast = _decoded(raw, lambda r: verifier_module._json_object(b64url(r).encode(), "payload"))
    strict = _decoded(raw, lambda r: verifier_module._strict_json_object(r, "payload"))
    return fast, strict


JSON_CASES: list[tuple[str, bytes, str]] = [
    # canonical (orjson would read these without complaint, collapsing the duplicate)
    ("duplicate-top", b'{"sub":"alice","aud":"x","sub":"root"}', "malformed"),
    ("duplicate-nested", b'{"sub":"alice","ctx":{"role":"user","role":"admin"}}', "malformed"),
    ("duplicate-in-list", b'{"sub":"alice","l":[{"a":1},{"b":2,"b":2}]}', "malformed"),
    ("duplicate-same-value", b'{"sub":"alice","sub":"alice"}', "malformed"),
    ("duplicate-escaped", b'{"sub":"alice","s\\u0075b":"root"}', "malformed"),
    ("nan", b'{"sub":"alice","x":NaN}', "malformed"),
    ("infinity", b'{"sub":"alice","x":-Infinity}', "malformed"),
    ("lone-surrogate", b'{"sub":"\\ud800"}', "ok"),
    ("not-utf8", b'{"sub":"\xff"}', "malformed"),
    ("not-an-object", b'["sub","alice"]', "malformed"),
    ("trailing-data", b'{"sub":"alice"}x', "malformed"),
    ("big-int", b'{"sub":"alice","n":1180591620717411303424}', "ok"),
    ("big-negative-int", b'{"sub":"alice","n":-9223372036854775809}', "ok"),
    ("u64-max", b'{"sub":"alice","n":18446744073709551615}', "ok"),
    ("float-overflow", b'{"sub":"alice","n":1e400}', "ok"),
    ("float", b'{"sub":"alice","n":1.5,"m":1e+16,"z":-0.0}', "ok"),
    ("non-ascii-raw", '{"sub":"zoë","name":"名前"}'.encode(), "ok"),
    ("non-ascii-escaped", b'{"sub":"zo\\u00eb"}', "ok"),
    ("spaced", b'{ "sub" : "alice" }', "ok"),
    ("deep", b'{"a":' * 300 + b"1" + b"}" * 300, "ok"),
    ("too-deep", b'{"a":' * 5000 + b"1" + b"}" * 5000, "malformed"),
]


@pytest.mark.parametrize(("raw", "outcome"), [(r, o) for _, r, o in JSON_CASES],
                         ids=[n for n, _, _ in JSON_CASES])
def test_the_json_fast_path_decides_exactly_as_the_strict_decoder(raw: bytes, outcome: str):
    fast, strict = _both_paths(raw)
    assert fast == strict
    assert fast[0] == "ok" if outcome == "ok" else fast == ("error", outcome)


def test_canonical_duplicates_are_ones_orjson_would_have_accepted() -> None:
    """The cases above are real tests of the fast path: orjson alone reads them fine."""
    import orjson

    assert orjson.loads(b'{"sub":"alice","aud":"x","sub":"root"}') == {"sub": "root", "aud": "x"}
    assert orjson.loads(b'{"ctx":{"role":"user","role":"admin"}}') == {"ctx": {"role": "admin"}}


def test_a_signed_canonical_payload_with_a_duplicate_claim_is_refused(
    verifier: Verifier, ring: KeyRing, clock: FakeClock
) -> None:
    good = json.dumps(claims(NOW), separators=(",", ":")).encode()
    private = ring.active.signing_key.private_key
    for payload in (
        good[:-1] + b',"sub":"root"}',
        good[:-1] + b',"ctx":{"role":"user","role":"admin"}}',
    ):
        assert _code(verifier, jws(header(ring.active.kid), payload, private)) == "malformed"
    token = jws(header(ring.active.kid), good[:-1] + b',"n":1180591620717411303424}', private)
    assert verifier.verify(token).claims["n"] == 2**70
    token = jws(header(ring.active.kid), good[:-1] + ',"name":"名前"}'.encode(), private)
    assert verifier.verify(token).claims["name"] == "名前"


def test_jwtmcp_tokens_take_the_fast_path(ring: KeyRing, clock: FakeClock) -> None:
    """The point of the fast path: what jwtmcp mints is already in orjson's canonical form."""
    import orjson

    token = _mint(ring, clock, client_id="c", tools=["add", "read_*"], extra_claims={"t": "x/y"})
    payload = verifier_module._b64decode(token.split(".")[1].encode(), "payload")
    assert orjson.dumps(orjson.loads(payload)) == payload


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=4), json_values, max_size=5), st.data())
def test_fast_and_strict_json_agree_on_random_objects(value: dict[str, Any], data: Any) -> None:
    import orjson

    forms = [
        json.dumps(value, separators=(",", ":")).encode(),
        json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(),
    ]
    with contextlib.suppress(orjson.JSONEncodeError):  # integers past 64 bits
        forms.append(orjson.dumps(value))  # NaN/Infinity become null here
    for raw in list(forms):
        # a duplicate nested object where hypothesis picks (often breaking the JSON: both
        # paths must then agree on "malformed" too), and the first member written again
        cut = data.draw(st.integers(0, len(raw)))
        forms.append(raw[:cut] + b'{"k":1,"k":2}' + raw[cut:])
        if value:
            first = json.dumps(next(iter(value))).encode()
            forms.append(raw[:-1] + b"," + first + b":0}")
    for raw in forms:
        fast, strict = _both_paths(raw)
        assert fast == strict


# --- base64url: one spelling per value (RFC 7515 2, RFC 4648 5 and 3.5) ----------------------

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _reference_b64decode(segment: bytes) -> bytes | None:
    """The definition, from the standard library: the bytes, or None when not canonical."""
    text = segment.decode("latin-1")
    if len(text) % 4 == 1 or any(c not in B64URL for c in text):
        return None
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return data if base64.urlsafe_b64encode(data).rstrip(b"=") == segment else None


def _decoded_segment(segment: bytes) -> bytes | None:
    try:
        return verifier_module._b64decode(segment, "signature")
    except TokenError as exc:
        assert exc.code == "malformed"
        return None


@settings(max_examples=1500, deadline=None)
@given(
    st.binary(max_size=40),
    st.integers(min_value=0, max_value=3),
    st.text(alphabet=B64URL + "+/=.\n é\x00", max_size=3),
)
def test_base64url_segments_decode_exactly_in_their_canonical_spelling(
    data: bytes, cut: int, noise: str
) -> None:
    """Every other spelling is refused: padding, '+' or '/', a last character with unused
    bits set, whitespace, other bytes. Spellings near the canonical one are tried too."""
    canonical = base64.urlsafe_b64encode(data).rstrip(b"=")
    assert _decoded_segment(canonical) == data
    for spelling in (
        canonical + noise.encode(),
        noise.encode() + canonical,
        canonical[: len(canonical) - cut],
        canonical[:-1] + B64URL[(B64URL.index(chr(canonical[-1])) + cut) % 64].encode()
        if canonical else noise.encode(),
        base64.b64encode(data).rstrip(b"="),
        base64.urlsafe_b64encode(data),
    ):
        assert _decoded_segment(spelling) == _reference_b64decode(spelling), spelling



def test_a_segment_spelled_with_plus_or_slash_is_refused_without_a_warning() -> None:
    """A hostile token must not make the decoder warn (a log line per request where
    warnings are shown, an error where they are errors): refused, and nothing else."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for spelling in (b"YW+/", b"ab/c", b"Y+Q", b"YW-_"):
            _decoded_segment(spelling)
    assert [str(w.message) for w in caught] == []

# --- the command line ------------------------------------------------------------------------


def test_cli_verify_prints_claims_or_one_line(
    ring: KeyRing, jwks_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = FakeClock(NOW)
    token = _mint(ring, clock)
    argv = ["verify", token, "--jwks", str(jwks_path), "--iss", ISSUER, "--aud", AUDIENCE]
    assert cli_main(argv, clock=clock) == 0
    assert json.loads(capsys.readouterr().out)["sub"] == "alice"
    clock.advance(400)
    assert cli_main(argv, clock=clock) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expired" in err and token not in err
