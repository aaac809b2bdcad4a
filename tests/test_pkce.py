"""PKCE S256 (RFC 7636): the challenge check at /authorize and the verifier check at /token."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jwtmcp.errors import OAuthRequestError
from jwtmcp.pkce import (
    check_code_challenge,
    is_valid_verifier,
    s256_challenge,
    verify_code_verifier,
)

# RFC 7636 Appendix B.
RFC_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
RFC_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"

def _challenge_of(verifier: str) -> str:
    """What a client would send for ``verifier``, whatever its form (UTF-8 bytes hashed)."""
    raw = hashlib.sha256(verifier.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"


def test_s256_challenge_matches_rfc_7636_appendix_b() -> None:
    assert s256_challenge(RFC_VERIFIER) == RFC_CHALLENGE


def test_the_right_verifier_is_accepted() -> None:
    assert verify_code_verifier(RFC_VERIFIER, RFC_CHALLENGE) is True


def test_a_wrong_verifier_is_refused() -> None:
    assert verify_code_verifier(RFC_VERIFIER[:-1] + "Y", RFC_CHALLENGE) is False


def test_the_challenge_itself_is_not_a_verifier_for_it() -> None:
    # What 'plain' would accept: presenting the challenge as the verifier.
    assert verify_code_verifier(RFC_CHALLENGE, RFC_CHALLENGE) is False


def test_a_missing_verifier_is_refused() -> None:
    assert verify_code_verifier(None, RFC_CHALLENGE) is False


@pytest.mark.parametrize(
    "verifier",
    [
        "a" * 42,  # too short
        "a" * 129,  # too long
        "a" * 42 + "+",  # outside the unreserved set
        "a" * 42 + "=",
        "a" * 42 + " ",
        "a" * 42 + "\u00e9",
        "a" * 43 + "\n",
    ],
)
def test_a_verifier_of_the_wrong_form_is_refused_even_when_it_hashes_right(
    verifier: str,
) -> None:
    assert not is_valid_verifier(verifier)
    assert verify_code_verifier(verifier, _challenge_of(verifier)) is False


@given(st.text(alphabet=UNRESERVED, min_size=43, max_size=128))
def test_every_well_formed_verifier_verifies_against_its_own_challenge(verifier: str) -> None:
    assert verify_code_verifier(verifier, s256_challenge(verifier))


def test_check_code_challenge_accepts_s256() -> None:
    assert check_code_challenge(RFC_CHALLENGE, "S256") == RFC_CHALLENGE


@pytest.mark.parametrize("method", [None, "", "plain", "s256", "S512"])
def test_check_code_challenge_refuses_every_method_but_s256(method: str | None) -> None:
    with pytest.raises(OAuthRequestError) as caught:
        check_code_challenge(RFC_CHALLENGE, method)
    assert caught.value.code == "invalid_request"
    assert "S256" in caught.value.message


@pytest.mark.parametrize("challenge", [None, ""])
def test_check_code_challenge_refuses_a_missing_challenge(challenge: str | None) -> None:
    with pytest.raises(OAuthRequestError, match="required"):
        check_code_challenge(challenge, "S256")


@pytest.mark.parametrize(
    "challenge",
    [
        RFC_CHALLENGE[:-1],  # 42 characters
        RFC_CHALLENGE + "A",  # 44
        RFC_CHALLENGE[:-1] + "=",  # padding
        RFC_CHALLENGE[:-1] + "+",  # standard, not url-safe, base64
        RFC_CHALLENGE[:-1] + "N",  # same bytes as ...M, but with the unused bits set
    ],
)
def test_check_code_challenge_refuses_what_cannot_be_an_s256_digest(challenge: str) -> None:
    with pytest.raises(OAuthRequestError):
        check_code_challenge(challenge, "S256")
