"""Emails and domains compare case-insensitively in ASCII only, never by Unicode case folding.

``str.casefold`` maps distinct characters to the same letters: ``ß`` to ``ss``, the Kelvin
sign ``K`` (U+212A) to ``k``, the long s (U+017F) to ``s``, the ligature ``ﬀ`` to ``ff``. An
identity provider that verifies ``straße@example.com`` has verified *that* mailbox, not
``strasse@example.com``; a policy rule naming one must not grant the other, and a domain
spelled with a Kelvin sign is not the ASCII domain an ``email_domain`` rule or a provider's
``allowed_email_domains`` names. Real issuer and provider on loopback (tests/test_oidc.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.test_oidc import (
    _rule,
    consent_and_code,
    http_client,
    oidc_world,
    redeem,
    upstream_sign_in,
    verify,
)

POLICY = {
    "version": 1,
    "rules": {
        "strasse": _rule(
            {"source": "oidc:corp", "email": "strasse@example.com"}, ["add"], max_ttl=600
        ),
        "kelp-staff": _rule({"source": "oidc:corp", "email_domain": "kelp.example"}, ["multiply"]),
    },
}


def _sign_in(tmp_path: Path, account: dict[str, Any], **providers: Any) -> Any:
    with oidc_world(tmp_path, providers=providers or None) as world, http_client() as http:
        world.policy_file.write_text(json.dumps(POLICY))
        world.provider.account = {"sub": "00u-x", "email_verified": True, **account}
        client_id = world.register()
        answer = upstream_sign_in(world, http, client_id)
        if answer.status_code != 303:
            return answer.status_code, answer.text
        tokens = redeem(world, client_id, consent_and_code(world, http, answer))
        return 200, verify(world, tokens["access_token"])


def test_an_sharp_s_mailbox_is_not_the_ss_mailbox_a_rule_names(tmp_path: Path) -> None:
    status, page = _sign_in(tmp_path, {"email": "straße@example.com"})
    assert status == 403 and "No access" in page


def test_a_ligature_or_long_s_does_not_spell_the_rule_s_letters(tmp_path: Path) -> None:
    status, page = _sign_in(tmp_path, {"email": "\u017ftra\u017f\u017fe@example.com"})
    assert status == 403 and "No access" in page


def test_a_kelvin_sign_domain_is_not_the_ascii_domain_of_an_email_domain_rule(
    tmp_path: Path,
) -> None:
    status, page = _sign_in(tmp_path, {"email": "mallory@\u212aelp.example"})
    assert status == 403 and "No access" in page


def test_a_kelvin_sign_domain_is_not_an_allowed_email_domain(tmp_path: Path) -> None:
    corp = {"allowed_email_domains": ["kelp.example"]}
    status, page = _sign_in(tmp_path, {"email": "mallory@\u212aelp.example"}, corp=corp)
    assert status == 403 and "not in a domain allowed" in page


def test_ascii_case_still_does_not_matter(tmp_path: Path) -> None:
    corp = {"allowed_email_domains": ["KELP.example"]}
    status, claims = _sign_in(tmp_path, {"email": "Someone@Kelp.EXAMPLE"}, corp=corp)
    assert status == 200, claims
    assert claims.scopes == ("tool:multiply",)
