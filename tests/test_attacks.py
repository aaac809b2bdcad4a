"""RFC 8725 threat classes against the verifier: every attack is refused with the right code.

Each case builds a hostile token against a real ring; the verifier (JWKS file with the
ring's active and next keys) must raise exactly that ``TokenError`` subclass, sync and
async, and nothing outside the error tree.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from jwtmcp.errors import ConfigError, TokenError
from jwtmcp.keys import KeyRing, init_ring, rsa_kid, rsa_public_jwk_members
from jwtmcp.tokens import mint
from jwtmcp.verifier import Verifier
from tests.jwks_support import (
    AUDIENCE,
    ISSUER,
    JwksServer,
    b64url,
    claims,
    header,
    hs256,
    jws,
    segment,
)
from tests.support import FakeClock

NOW = 1_800_000_000.0


@dataclass
class Ctx:
    ring: KeyRing
    attacker: rsa.RSAPrivateKey
    attacker_url: str

    @property
    def key(self) -> rsa.RSAPrivateKey:
        return self.ring.active.private_key

    @property
    def kid(self) -> str:
        return self.ring.active.kid

    def valid(self, **overrides: object) -> str:
        return jws(header(self.kid), claims(NOW, **overrides), self.key)


@pytest.fixture(scope="module")
def server() -> Iterator[JwksServer]:
    srv = JwksServer({"keys": []})
    with srv.running():
        yield srv


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory, server: JwksServer) -> Ctx:
    ring = init_ring(tmp_path_factory.mktemp("attack") / "keys", clock=FakeClock(NOW))
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Ctx(ring, attacker, server.url.replace("/jwks", "/attacker"))


@pytest.fixture(scope="module")
def verifier(ctx: Ctx, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Verifier]:
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps(ctx.ring.jwks()))
    with Verifier(
        issuer=ISSUER, audience=AUDIENCE, jwks_file=path, clock=FakeClock(NOW)
    ) as verifier:
        yield verifier


def _flip(token: str, index: int) -> str:
    """Change one base64url character at ``index`` of the token to another valid one."""
    c = token[index]
    return token[:index] + ("B" if c == "A" else "A") + token[index + 1 :]


def _attacker_jwk(ctx: Ctx) -> dict[str, str]:
    jwk = rsa_public_jwk_members(ctx.attacker.public_key())
    jwk.update(kid=rsa_kid(ctx.attacker.public_key()), use="sig", alg="RS256")
    return jwk


def _public_pem(ctx: Ctx) -> bytes:
    return ctx.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


Builder = Callable[[Ctx], object]

CASES: list[tuple[str, Builder, str]] = [
    # --- alg none and friends -------------------------------------------------------
    ("alg-none", lambda c: jws(header(c.kid, alg="none"), claims(NOW)), "unsupported_alg"),
    ("alg-None", lambda c: jws(header(c.kid, alg="None"), claims(NOW)), "unsupported_alg"),
    ("alg-NONE", lambda c: jws(header(c.kid, alg="NONE"), claims(NOW)), "unsupported_alg"),
    ("alg-nOnE-signed", lambda c: jws(header(c.kid, alg="nOnE"), claims(NOW), c.key),
     "unsupported_alg"),
    ("alg-empty", lambda c: jws(header(c.kid, alg=""), claims(NOW), c.key), "unsupported_alg"),
    ("alg-lowercase-rs256", lambda c: jws(header(c.kid, alg="rs256"), claims(NOW), c.key),
     "unsupported_alg"),
    ("alg-missing", lambda c: jws({"typ": "at+jwt", "kid": c.kid}, claims(NOW), c.key),
     "malformed"),
    ("alg-not-a-string", lambda c: jws(header(c.kid, alg=["RS256"]), claims(NOW), c.key),
     "malformed"),
    ("alg-ES256", lambda c: jws(header(c.kid, alg="ES256"), claims(NOW), c.key),
     "unsupported_alg"),
    ("alg-PS256-not-allowed", lambda c: jws(header(c.kid, alg="PS256"), claims(NOW), c.key),
     "unsupported_alg"),
    # --- RS/HS key confusion: the public key PEM (and JWK JSON) as an HMAC secret ---------
    ("hs256-public-pem-secret",
     lambda c: hs256(_public_pem(c), header(c.kid, alg="HS256"), claims(NOW)), "unsupported_alg"),
    ("hs256-public-jwk-secret",
     lambda c: hs256(json.dumps(c.ring.jwks()).encode(), header(c.kid, alg="HS256"), claims(NOW)),
     "unsupported_alg"),
    ("hs512-public-pem-secret",
     lambda c: hs256(_public_pem(c), header(c.kid, alg="HS512"), claims(NOW)), "unsupported_alg"),
    # --- keys embedded in or pointed to by the header are never used ----------------------
    ("embedded-jwk-attacker-kid",
     lambda c: jws(header(rsa_kid(c.attacker.public_key()), jwk=_attacker_jwk(c)), claims(NOW),
                   c.attacker), "unknown_kid"),
    ("embedded-jwk-our-kid",
     lambda c: jws(header(c.kid, jwk=_attacker_jwk(c)), claims(NOW), c.attacker),
     "bad_signature"),
    ("embedded-jwk-no-kid",
     lambda c: jws(header(None, jwk=_attacker_jwk(c)), claims(NOW), c.attacker), "unknown_kid"),
    ("jku-attacker-url",
     lambda c: jws(header(c.kid, jku=c.attacker_url), claims(NOW), c.attacker), "bad_signature"),
    ("jku-attacker-kid",
     lambda c: jws(header("attacker-1", jku=c.attacker_url), claims(NOW), c.attacker),
     "unknown_kid"),
    ("x5u-attacker-url",
     lambda c: jws(header(c.kid, x5u=c.attacker_url), claims(NOW), c.attacker), "bad_signature"),
    ("x5c-attacker-chain",
     lambda c: jws(header(c.kid, x5c=[b64url(b"\x30\x82fake-cert")]), claims(NOW), c.attacker),
     "bad_signature"),
    # --- kid tricks ------------------------------------------------------------------------
    ("kid-path-traversal",
     lambda c: jws(header("../../../../etc/passwd"), claims(NOW), c.key), "unknown_kid"),
    ("kid-sql-ish", lambda c: jws(header("' OR 1=1 --"), claims(NOW), c.key), "unknown_kid"),
    ("kid-empty", lambda c: jws(header(""), claims(NOW), c.key), "unknown_kid"),
    ("kid-missing", lambda c: jws(header(None), claims(NOW), c.key), "unknown_kid"),
    ("kid-null", lambda c: jws({**header(None), "kid": None}, claims(NOW), c.key), "unknown_kid"),
    ("kid-integer", lambda c: jws({**header(None), "kid": 123}, claims(NOW), c.key), "malformed"),
    ("kid-list", lambda c: jws({**header(None), "kid": [c.kid]}, claims(NOW), c.key), "malformed"),
    ("kid-object", lambda c: jws({**header(None), "kid": {"kid": c.kid}}, claims(NOW), c.key),
     "malformed"),
    ("kid-huge", lambda c: jws(header("k" * 300), claims(NOW), c.key), "malformed"),
    ("kid-of-next-key-signed-by-active",
     lambda c: jws(header(c.ring.next.kid), claims(NOW), c.key),  # type: ignore[union-attr]
     "bad_signature"),
    ("kid-of-active-signed-by-next",
     lambda c: jws(header(c.kid), claims(NOW), c.ring.next.private_key),  # type: ignore[union-attr]
     "bad_signature"),
    ("kid-nul-byte", lambda c: jws(header(c.kid + "\x00"), claims(NOW), c.key), "unknown_kid"),
    # --- time and lifetime -------------------------------------------------------------------
    ("expired", lambda c: c.valid(iat=int(NOW) - 400, nbf=int(NOW) - 400, exp=int(NOW) - 100),
     "token_expired"),
    ("expired-just-past-leeway", lambda c: c.valid(exp=int(NOW) - 30), "token_expired"),
    ("nbf-future", lambda c: c.valid(nbf=int(NOW) + 120), "not_yet_valid"),
    ("iat-future", lambda c: c.valid(iat=int(NOW) + 120, nbf=None, exp=int(NOW) + 400),
     "not_yet_valid"),
    ("lifetime-two-hours", lambda c: c.valid(exp=int(NOW) + 7200), "lifetime_too_long"),
    ("lifetime-one-second-over", lambda c: c.valid(exp=int(NOW) + 3601), "lifetime_too_long"),
    ("exp-missing", lambda c: c.valid(exp=None), "missing_claim"),
    ("iat-missing", lambda c: c.valid(iat=None), "missing_claim"),
    ("exp-string", lambda c: c.valid(exp=str(int(NOW) + 60)), "malformed"),
    ("exp-bool", lambda c: c.valid(exp=True), "malformed"),
    ("exp-infinite", lambda c: jws(header(c.kid), json.dumps(claims(NOW)).replace(
        f'"exp": {int(NOW) + 300}', '"exp": 1e400').encode(), c.key), "malformed"),
    ("exp-nan", lambda c: jws(header(c.kid), json.dumps(claims(NOW)).replace(
        f'"exp": {int(NOW) + 300}', '"exp": NaN').encode(), c.key), "malformed"),
    ("nbf-object", lambda c: c.valid(nbf={"t": 1}), "malformed"),
    # --- issuer, audience, type ------------------------------------------------------------
    ("wrong-issuer", lambda c: c.valid(iss="https://evil.example"), "wrong_issuer"),
    # Another spelling of the same issuer (trailing "/", upper-case host) is the same issuer
    # (tests/test_identifiers.py); a different path, port, or a userinfo/query spelling is not.
    ("issuer-other-path", lambda c: c.valid(iss=ISSUER + "/x"), "wrong_issuer"),
    ("issuer-other-port", lambda c: c.valid(iss="http://127.0.0.1:8001"), "wrong_issuer"),
    ("issuer-userinfo", lambda c: c.valid(iss="http://evil@127.0.0.1:8000"), "wrong_issuer"),
    ("issuer-query", lambda c: c.valid(iss=ISSUER + "?x=1"), "wrong_issuer"),
    ("audience-path-case", lambda c: c.valid(aud=AUDIENCE.upper()), "wrong_audience"),
    ("issuer-list", lambda c: c.valid(iss=[ISSUER]), "malformed"),
    ("issuer-missing", lambda c: c.valid(iss=None), "missing_claim"),
    ("wrong-audience", lambda c: c.valid(aud="http://127.0.0.1:9001/mcp"), "wrong_audience"),
    ("audience-prefix", lambda c: c.valid(aud=AUDIENCE + "x"), "wrong_audience"),
    ("audience-list-without-us", lambda c: c.valid(aud=["a", "b"]), "wrong_audience"),
    ("audience-empty-list", lambda c: c.valid(aud=[]), "malformed"),
    ("audience-non-string", lambda c: c.valid(aud=[AUDIENCE, 1]), "malformed"),
    ("audience-missing", lambda c: c.valid(aud=None), "missing_claim"),
    ("typ-JWT", lambda c: jws(header(c.kid, typ="JWT"), claims(NOW), c.key), "wrong_type"),
    ("typ-id-token-ish", lambda c: jws(header(c.kid, typ="application/jwt"), claims(NOW), c.key),
     "wrong_type"),
    ("typ-missing", lambda c: jws({"alg": "RS256", "kid": c.kid}, claims(NOW), c.key),
     "wrong_type"),
    ("typ-not-string", lambda c: jws(header(c.kid, typ=1), claims(NOW), c.key), "wrong_type"),
    ("sub-missing", lambda c: c.valid(sub=None), "missing_claim"),
    ("sub-empty", lambda c: c.valid(sub=""), "malformed"),
    ("sub-number", lambda c: c.valid(sub=42), "malformed"),
    ("scope-list", lambda c: c.valid(scope=["tool:*"]), "malformed"),
    ("client-id-number", lambda c: c.valid(client_id=7), "malformed"),
    # --- tampering ---------------------------------------------------------------------------
    ("tampered-payload-sub",
     lambda c: c.valid().split(".")[0] + "." + segment(claims(NOW, sub="root")) + "."
     + c.valid().split(".")[2], "bad_signature"),
    ("tampered-payload-scope",
     lambda c: c.valid().split(".")[0] + "." + segment(claims(NOW, scope="tool:*")) + "."
     + c.valid().split(".")[2], "bad_signature"),
    ("tampered-header-kid-swap",
     lambda c: segment(header(c.ring.next.kid)) + c.valid()[c.valid().index("."):],  # type: ignore[union-attr]
     "bad_signature"),
    ("tampered-signature-bit", lambda c: _flip(c.valid(), len(c.valid()) - 10), "bad_signature"),
    ("tampered-signature-first", lambda c: _flip(c.valid(), c.valid().rindex(".") + 1),
     "bad_signature"),
    ("signature-truncated", lambda c: c.valid()[:-2], "bad_signature"),
    ("signature-empty", lambda c: c.valid()[: c.valid().rindex(".") + 1], "bad_signature"),
    ("signature-from-other-token",
     lambda c: c.valid(sub="bob").rsplit(".", 1)[0] + "." + c.valid().rsplit(".", 1)[1],
     "bad_signature"),
    ("signature-non-canonical-last-char",
     lambda c: c.valid()[:-1] + chr(ord(c.valid()[-1]) + 1), "malformed"),
    ("signature-with-padding", lambda c: c.valid() + "==", "malformed"),
    ("signature-standard-b64-chars",
     lambda c: c.valid()[:-6] + "+/" + c.valid()[-4:], "malformed"),
    # --- malformed structure ---------------------------------------------------------------
    ("two-segments", lambda c: c.valid().rsplit(".", 1)[0], "malformed"),
    ("four-segments", lambda c: c.valid() + ".AAAA", "malformed"),
    ("five-segments-jwe", lambda c: "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d", "unsupported_alg"),
    ("five-segments-rs256-header", lambda c: c.valid() + ".AAAA.AAAA", "malformed"),
    ("one-segment", lambda c: c.valid().replace(".", ""), "malformed"),
    ("empty-string", lambda c: "", "malformed"),
    ("only-dots", lambda c: "..", "malformed"),
    ("bearer-prefix-kept", lambda c: "Bearer " + c.valid(), "malformed"),
    ("whitespace-inside", lambda c: c.valid()[:20] + " " + c.valid()[20:], "malformed"),
    ("trailing-newline", lambda c: c.valid() + "\n", "malformed"),
    ("non-ascii", lambda c: c.valid()[:30] + "é" + c.valid()[31:], "malformed"),
    ("header-bad-base64", lambda c: "!!!." + c.valid().split(".", 1)[1], "malformed"),
    ("header-length-1-mod-4", lambda c: "eyJhb." + c.valid().split(".", 1)[1], "malformed"),
    ("header-not-json", lambda c: jws(b"not json", claims(NOW), c.key), "malformed"),
    ("header-json-array", lambda c: jws(["RS256"], claims(NOW), c.key), "malformed"),
    ("header-json-string", lambda c: jws("RS256", claims(NOW), c.key), "malformed"),
    ("header-not-utf8", lambda c: jws(b'{"alg":"RS256","x":"\xff"}', claims(NOW), c.key),
     "malformed"),
    ("header-trailing-garbage",
     lambda c: jws(json.dumps(header(c.kid)).encode() + b"xx", claims(NOW), c.key), "malformed"),
    ("payload-not-json-signed", lambda c: jws(header(c.kid), b"hello", c.key), "malformed"),
    ("payload-json-array-signed", lambda c: jws(header(c.kid), [claims(NOW)], c.key),
     "malformed"),
    ("payload-json-number-signed", lambda c: jws(header(c.kid), 42, c.key), "malformed"),
    ("payload-not-utf8-signed", lambda c: jws(header(c.kid), b'{"sub":"\xc3"}', c.key),
     "malformed"),
    ("payload-deeply-nested-signed",
     lambda c: jws(header(c.kid), b"[" * 3000 + b"]" * 3000, c.key), "malformed"),
    ("payload-bad-base64", lambda c: c.valid().split(".")[0] + ".%%%." + c.valid().split(".")[2],
     "bad_signature"),
    ("not-a-string-bytes", lambda c: c.valid().encode(), "malformed"),
    ("not-a-string-none", lambda c: None, "malformed"),
    ("not-a-string-list", lambda c: [c.valid()], "malformed"),
    # --- size -------------------------------------------------------------------------------
    ("huge-token-100k", lambda c: c.valid(pad="x" * 100_000), "malformed"),
    ("huge-header-segment", lambda c: "A" * 9000 + "." + c.valid().split(".", 1)[1], "malformed"),
    ("huge-one-mb-garbage", lambda c: "e" * 1_000_000, "malformed"),
    # --- duplicate JSON member names -----------------------------------------------------------
    ("header-duplicate-alg",
     lambda c: jws(b'{"alg":"none","alg":"RS256","typ":"at+jwt","kid":"' + c.kid.encode() + b'"}',
                   claims(NOW), c.key), "malformed"),
    ("header-duplicate-kid",
     lambda c: jws(b'{"alg":"RS256","typ":"at+jwt","kid":"x","kid":"' + c.kid.encode() + b'"}',
                   claims(NOW), c.key), "malformed"),
    ("payload-duplicate-sub-signed",
     lambda c: jws(header(c.kid), json.dumps(claims(NOW))[:-1].encode() + b',"sub":"root"}',
                   c.key), "malformed"),
    ("payload-duplicate-aud-signed",
     lambda c: jws(header(c.kid), json.dumps(claims(NOW, aud="x"))[:-1].encode()
                   + b',"aud":"' + AUDIENCE.encode() + b'"}', c.key), "malformed"),
    # --- crit ----------------------------------------------------------------------------------
    ("crit-unknown", lambda c: jws(header(c.kid, crit=["exp"], exp=1), claims(NOW), c.key),
     "malformed"),
    ("crit-b64-false",
     lambda c: jws(header(c.kid, crit=["b64"], b64=False), claims(NOW), c.key), "malformed"),
    ("crit-empty-list", lambda c: jws(header(c.kid, crit=[]), claims(NOW), c.key), "malformed"),
    ("crit-not-list", lambda c: jws(header(c.kid, crit="x"), claims(NOW), c.key), "malformed"),
]


@pytest.mark.parametrize(("builder", "code"), [(b, c) for _, b, c in CASES],
                         ids=[n for n, _, _ in CASES])
def test_attack_is_refused_with_its_code(
    verifier: Verifier, ctx: Ctx, server: JwksServer, builder: Builder, code: str
) -> None:
    token = builder(ctx)
    with pytest.raises(TokenError) as sync_info:
        verifier.verify(token)  # type: ignore[arg-type]
    assert sync_info.value.code == code, sync_info.value.message
    with pytest.raises(TokenError) as async_info:
        asyncio.run(verifier.verify_async(token))  # type: ignore[arg-type]
    assert async_info.value.code == code
    assert type(async_info.value) is type(sync_info.value)
    if isinstance(token, str) and token:
        assert token not in sync_info.value.message
    assert server.attacker_hits == 0  # jku / x5u are never fetched


def test_the_untampered_token_verifies(verifier: Verifier, ctx: Ctx) -> None:
    """The control: the attacks above differ from a token that passes."""
    assert verifier.verify(ctx.valid()).subject == "alice"
    token = mint(ctx.ring.active.signing_key, issuer=ISSUER, subject="bob", audience=AUDIENCE,
                 clock=FakeClock(NOW))
    assert verifier.verify(token).subject == "bob"


@pytest.mark.parametrize("alg", ["none", "HS256", "HS512", "ES256", "", "RS256 "])
def test_dangerous_algorithms_cannot_be_configured(ctx: Ctx, tmp_path: Path, alg: str) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(ctx.ring.jwks()))
    with pytest.raises(ConfigError):
        Verifier(issuer=ISSUER, audience=AUDIENCE, jwks_file=path, algorithms=("RS256", alg))


def test_a_refused_token_never_leaves_a_cache_entry(verifier: Verifier, ctx: Ctx) -> None:
    before = verifier.verified_cache_len
    for _, builder, _code in CASES[:20]:
        with pytest.raises(TokenError):
            verifier.verify(builder(ctx))  # type: ignore[arg-type]
    assert verifier.verified_cache_len == before


def test_huge_token_is_refused_before_any_decoding(verifier: Verifier) -> None:
    # A 1 MB token of valid base64url characters: refused by length, cheaply.
    token = "A" * 500_000 + "." + "A" * 500_000 + ".AAAA"
    with pytest.raises(TokenError) as info:
        verifier.verify(token)
    assert info.value.code == "malformed"
    assert "longer than" in info.value.message
