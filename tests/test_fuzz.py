"""Hypothesis fuzz: 10,600+ mutated, random and hostile-but-signed tokens.

The only outcomes allowed are a ``TokenError`` or, for the untouched valid tokens, success:
a mutated token that still verified would mean two spellings of one token, or a forgery.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jwtmcp.errors import TokenError
from jwtmcp.keys import KeyRing, init_ring
from jwtmcp.tokens import mint
from jwtmcp.verifier import Verifier
from tests.jwks_support import AUDIENCE, ISSUER, claims, header, jws
from tests.support import FakeClock

NOW = 1_800_000_000.0
SETTINGS = {
    "deadline": None,
    "database": None,
    "derandomize": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
NASTY = B64URL + ".=+/ \t\n\x00é{}\"\\"


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    return init_ring(tmp_path_factory.mktemp("fuzz") / "keys", clock=FakeClock(NOW))


@pytest.fixture(scope="module")
def verifier(ring: KeyRing, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Verifier]:
    path = tmp_path_factory.mktemp("fuzz-jwks") / "jwks.json"
    path.write_text(json.dumps(ring.jwks()))
    with Verifier(issuer=ISSUER, audience=AUDIENCE, jwks_file=path, clock=FakeClock(NOW)) as v:
        yield v


@pytest.fixture(scope="module")
def valid_tokens(ring: KeyRing) -> list[str]:
    tokens = [
        mint(ring.active.signing_key, issuer=ISSUER, subject=f"user{i}", audience=AUDIENCE,
             tools=["add", "read_*"], clock=FakeClock(NOW))
        for i in range(4)
    ]
    assert ring.next is not None
    tokens.append(jws(header(ring.next.kid), claims(NOW), ring.next.private_key))
    return tokens


def _outcome(verifier: Verifier, token: Any) -> bool:
    """True when the token verified; False for a TokenError; anything else fails the test."""
    try:
        verifier.verify(token)
    except TokenError as exc:
        assert exc.code in {
            "malformed", "unsupported_alg", "unknown_kid", "bad_signature", "token_expired",
            "not_yet_valid", "wrong_issuer", "wrong_audience", "wrong_type",
            "lifetime_too_long", "missing_claim", "keys_unavailable",
        }
        return False
    return True


OPS = ["replace", "insert", "delete", "swap", "truncate", "duplicate", "flip-bits"]


def _mutate(token: str, seed: int) -> str:
    """1 to 4 mutations chosen by ``seed`` (a cheap draw keeps 7,500 examples fast)."""
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 4)):
        op, pos, char = rng.choice(OPS), rng.randrange(2000), rng.choice(NASTY)
        if op == "flip-bits":
            # Same alphabet, different value: the hardest case for the signature check.
            pos %= max(len(token), 1)
            if token and token[pos] in B64URL:
                char = B64URL[(B64URL.index(token[pos]) + rng.randint(1, 63)) % 64]
            op = "replace"
        if not token:
            token = char
            continue
        i = pos % len(token)
        if op == "replace":
            token = token[:i] + char + token[i + 1 :]
        elif op == "insert":
            token = token[:i] + char + token[i:]
        elif op == "delete":
            token = token[:i] + token[i + 1 :]
        elif op == "swap":
            j = (i * 7 + 3) % len(token)
            chars = list(token)
            chars[i], chars[j] = chars[j], chars[i]
            token = "".join(chars)
        elif op == "truncate":
            token = token[:i]
        else:
            parts = token.split(".")
            token = ".".join(parts + parts[i % len(parts) :])
    return token


def test_mutated_tokens_only_raise_verifier_errors(
    verifier: Verifier, valid_tokens: list[str]
) -> None:
    calls = 0
    valid = set(valid_tokens)

    @settings(max_examples=7500, **SETTINGS)  # type: ignore[arg-type]
    @given(st.sampled_from(valid_tokens), st.integers(min_value=0, max_value=2**64))
    def run(base: str, seed: int) -> None:
        nonlocal calls
        calls += 1
        token = _mutate(base, seed)
        if _outcome(verifier, token):
            assert token in valid  # a changed token never verifies

    run()
    assert calls >= 7500


def test_segment_swaps_between_valid_tokens_never_verify(
    verifier: Verifier, valid_tokens: list[str]
) -> None:
    calls = 0
    parts = [t.split(".") for t in valid_tokens]

    @settings(max_examples=500, **SETTINGS)  # type: ignore[arg-type]
    @given(st.tuples(*[st.integers(0, len(parts) - 1)] * 3))
    def run(pick: tuple[int, int, int]) -> None:
        nonlocal calls
        calls += 1
        token = ".".join(parts[pick[i]][i] for i in range(3))
        if _outcome(verifier, token):
            assert pick[0] == pick[1] == pick[2] or token in valid_tokens

    run()
    assert calls >= 100  # the space has only 125 points; hypothesis may stop when exhausted


def test_random_text_only_raises_verifier_errors(verifier: Verifier) -> None:
    calls = 0
    segments = st.text(alphabet=NASTY, max_size=60)

    @settings(max_examples=2000, **SETTINGS)  # type: ignore[arg-type]
    @given(
        st.one_of(
            st.text(max_size=300),
            st.builds(lambda a, b, c: f"{a}.{b}.{c}", segments, segments, segments),
            st.binary(max_size=100),
            st.integers(),
            st.none(),
        )
    )
    def run(token: Any) -> None:
        nonlocal calls
        calls += 1
        assert not _outcome(verifier, token)

    run()
    assert calls >= 2000


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=6,
)
claim_values = {
    "iss": st.sampled_from([ISSUER, ISSUER + "/", ""]) | json_values,
    "aud": st.sampled_from([AUDIENCE, [AUDIENCE], ["x", AUDIENCE], []]) | json_values,
    "sub": st.sampled_from(["alice", ""]) | json_values,
    "exp": st.sampled_from([int(NOW) + 300, int(NOW) - 300, int(NOW) + 10**6]) | json_values,
    "iat": st.sampled_from([int(NOW), int(NOW) + 600, 0]) | json_values,
    "nbf": st.sampled_from([int(NOW), int(NOW) + 600]) | json_values,
    "scope": st.sampled_from(["tool:*", "tool:a tool:b*"]) | json_values,
    "client_id": json_values,
    "jti": json_values,
}


def test_signed_hostile_claims_and_headers_only_raise_verifier_errors(
    verifier: Verifier, ring: KeyRing
) -> None:
    """Payloads signed with the real key, so every claims check is reached and fuzzed."""
    calls = 0
    key = ring.active.private_key

    @settings(max_examples=1000, **SETTINGS)  # type: ignore[arg-type]
    @given(
        st.fixed_dictionaries({}, optional=claim_values),
        st.fixed_dictionaries(
            {},
            optional={
                "alg": st.sampled_from(["RS256", "none", "HS256"]) | json_values,
                "typ": st.sampled_from(["at+jwt", "AT+JWT", "JWT"]) | json_values,
                "kid": st.sampled_from([ring.active.kid, "other"]) | json_values,
                "crit": json_values,
                "jwk": json_values,
            },
        ),
    )
    def run(payload: dict[str, Any], head: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        token = jws(head, payload, key)
        if _outcome(verifier, token):
            # Success only for a token that really passes every check.
            assert head.get("alg") == "RS256" and head.get("kid") == ring.active.kid
            assert str(head.get("typ")).lower() == "at+jwt" and "crit" not in head
            assert payload["iss"] == ISSUER and payload["sub"]
            aud = payload["aud"]
            assert AUDIENCE in ([aud] if isinstance(aud, str) else aud)
            assert payload["exp"] - payload["iat"] <= 3600

    run()
    assert calls >= 1000
