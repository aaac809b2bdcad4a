"""Redirect URIs: registration rules and request matching (OAuth 2.1 7.5.3, RFC 8252 7)."""

from __future__ import annotations

import pytest

from jwtmcp.errors import OAuthRequestError
from jwtmcp.redirect_uris import check_redirect_uri, redirect_uri_matches


@pytest.mark.parametrize(
    "uri",
    [
        "https://app.example/callback",
        "https://app.example:8443/cb?x=1",
        "http://127.0.0.1/callback",
        "http://127.0.0.1:33418/",
        "http://[::1]:5000/cb",
        "http://localhost:6274/oauth/callback",
        "cursor://anysphere.cursor-retrieval/oauth/callback",
        "vscode://vscode.github-authentication/did-authenticate",
        "com.example.app:/oauth2redirect",
        "http://127.0.0.2:8000/cb",  # all of 127.0.0.0/8 is loopback
    ],
)
def test_a_client_may_register(uri: str) -> None:
    assert check_redirect_uri(uri) == uri


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("https://app.example/cb#frag", "fragment"),
        ("https://app.example/cb#", "fragment"),
        ("http://app.example/cb", "loopback"),
        ("http://127.0.0.1.nip.io/cb", "loopback"),
        ("https://user:pw@app.example/cb", "user information"),
        ("http://evil@127.0.0.1/cb", "user information"),
        ("javascript:alert(1)", "javascript"),
        ("JavaScript://%0Aalert(1)", "javascript"),
        ("data:text/html,hi", "data"),
        ("file:///etc/passwd", "file"),
        ("/relative/cb", "absolute"),
        ("https:///no-host", "host"),
        ("https://app.example/c b", "spaces"),
        ("https://app.example/cb\r\nX: y", "control"),
        ("https://app.\u00e9xample/cb", "non-ASCII"),
        ("http://127.0.0.1:99999/cb", "valid URI"),
        ("http://127.0.0.1:0/cb", "port 0"),
        ("cursor:", "destination"),
        ("", "empty"),
        ("https://app.example/" + "a" * 1100, "longer"),
        ("https://app.example/c<b>", "cannot hold"),
        ('https://app.example/"cb"', "cannot hold"),
    ],
)
def test_a_client_may_not_register(uri: str, why: str) -> None:
    with pytest.raises(OAuthRequestError, match=why) as caught:
        check_redirect_uri(uri)
    assert caught.value.code == "invalid_redirect_uri"


REGISTERED = [
    "https://app.example/callback",
    "http://127.0.0.1/cb",
    "http://[::1]:9000/cb?x=1",
    "http://localhost:6274/oauth/callback",
    "cursor://anysphere.cursor-retrieval/oauth/callback",
]


@pytest.mark.parametrize(
    "requested",
    [
        "https://app.example/callback",
        "http://127.0.0.1/cb",
        "http://127.0.0.1:51234/cb",  # any port on loopback (RFC 8252 7.3)
        "http://[::1]:1/cb?x=1",
        "http://localhost:40000/oauth/callback",
        "cursor://anysphere.cursor-retrieval/oauth/callback",
    ],
)
def test_requested_uri_matches(requested: str) -> None:
    assert redirect_uri_matches(requested, REGISTERED)


@pytest.mark.parametrize(
    "requested",
    [
        "https://app.example/callback/",  # exact comparison: no normalisation
        "https://APP.example/callback",
        "https://app.example:443/callback",
        "https://app.example/callback?extra=1",
        "https://app.example:8443/callback",  # the any-port rule is for loopback only
        "https://app.example/callback#x",
        "http://127.0.0.1:51234/cb#x",  # never a fragment
        "http://127.0.0.1:51234/cb/",  # another path on loopback
        "http://127.0.0.1:51234/cb?x=1",  # another query on loopback
        "http://[::1]:9000/cb",
        "http://127.0.0.2:51234/cb",  # another loopback address was not registered
        "http://[::1]:9000/cb?x=1&y=2",
        "https://127.0.0.1/cb",  # another scheme
        "http://u@127.0.0.1:5000/cb",
        "cursor://anysphere.cursor-retrieval/oauth/other",  # custom schemes: exact only
        "vscode://vscode.github-authentication/did-authenticate",  # not registered
        "javascript:alert(1)",
    ],
)
def test_requested_uri_does_not_match(requested: str) -> None:
    assert not redirect_uri_matches(requested, REGISTERED)


def test_a_registered_uri_that_is_invalid_never_matches() -> None:
    # e.g. a metadata document listing a fragment URI: neither exactly nor on any port.
    registered = ["http://127.0.0.1/cb#x", "javascript:alert(1)"]
    assert not redirect_uri_matches("http://127.0.0.1/cb#x", registered)
    assert not redirect_uri_matches("http://127.0.0.1:5000/cb#x", registered)
    assert not redirect_uri_matches("javascript:alert(1)", registered)


def test_nothing_matches_an_empty_registration() -> None:
    assert not redirect_uri_matches("http://127.0.0.1:5000/cb", [])


def test_registration_and_metadata_documents_share_these_rules() -> None:
    # One module decides; RFC 7591 registration and CIMD documents raise through it.
    from jwtmcp.redirect_uris import check_redirect_uris

    def fail(code: str, message: str) -> Exception:
        return OAuthRequestError(message, code=code)

    with pytest.raises(OAuthRequestError, match="destination"):
        check_redirect_uris(["cursor:"], 5, fail)
    with pytest.raises(OAuthRequestError, match="twice"):
        check_redirect_uris(["cursor://a/cb", "cursor://a/cb"], 5, fail)
    assert check_redirect_uris(["cursor://a/cb"], 5, fail) == ("cursor://a/cb",)
