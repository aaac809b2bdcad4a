"""A trusted issuer's identifier holds no ``#`` and no ``?``, not even an empty one.

The jwt-bearer token's subject is ``issuer:<iss>#<sub>``: the first ``#`` must end the
issuer. ``urlsplit`` reports an empty fragment for ``https://k8s.example#``, so that issuer
was accepted, and its ``sub`` ``x`` then made the same subject,
``issuer:https://k8s.example##x``, as the ``sub`` ``#x`` of ``https://k8s.example``. Real
issuer: the start refuses the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jwtmcp.issuer import create_app
from jwtmcp.jwt_bearer import TrustedIssuersError
from jwtmcp.keys import init_ring
from tests.support import free_port, serve_app
from tests.test_jwt_bearer import new_key, public_jwks


@pytest.mark.parametrize(
    "iss",
    [
        "https://k8s.example#",
        "https://k8s.example?",
        "https://k8s.example/a?#",
        "https://k8s.example/#x",
    ],
)
def test_an_issuer_with_an_empty_or_any_fragment_or_query_is_refused_at_start(
    tmp_path: Path, iss: str
) -> None:
    init_ring(tmp_path / "keys")
    (tmp_path / "clients.json").write_text(json.dumps({"version": 1, "clients": {}}))
    (tmp_path / "jwks.json").write_text(json.dumps(public_jwks(new_key())))
    (tmp_path / "policy.json").write_text(json.dumps({"version": 1, "rules": {}}))
    issuers = {"https://k8s.example": {"jwks_file": "jwks.json"}, iss: {"jwks_file": "jwks.json"}}
    (tmp_path / "trusted-issuers.json").write_text(json.dumps({"version": 1, "issuers": issuers}))
    port = free_port()
    with pytest.raises(TrustedIssuersError, match="without query or fragment"):
        app = create_app(
            issuer_url=f"http://127.0.0.1:{port}",
            keys_dir=tmp_path / "keys",
            clients_file=tmp_path / "clients.json",
            store=tmp_path / "state.db",
        )
        with serve_app(app, port=port):
            pass
