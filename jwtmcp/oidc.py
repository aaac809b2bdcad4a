"""Upstream OpenID Connect login: people sign in at the company's identity provider.

The providers file (``providers.json`` beside the clients file, or ``--providers``)::

    {
      "version": 1,
      "password_login": true,
      "providers": {
        "corp": {
          "display_name": "Corp SSO",
          "issuer": "https://corp.okta.com/oauth2/default",
          "client_id": "0oa1example",
          "client_secret_env": "CORP_OIDC_SECRET",
          "scopes": ["openid", "email", "profile", "groups"],
          "allowed_email_domains": ["example.com"]
        }
      }
    }

A provider's secret is given once, as ``client_secret`` (in the file), ``client_secret_env``
(an environment variable's name) or ``client_secret_file`` (a file holding it, trailing
newline dropped). ``token_endpoint_auth_method`` is ``client_secret_basic`` (default) or
``client_secret_post``; ``groups_claim`` names the provider's group claim when it is not
``groups``; ``password_login: false`` hides jwtmcp's own password form.

The flow (OpenID Connect Core 1.0 §3.1, authorization code flow):

1. The login page links ``/authorize/upstream?provider=ID&request=…`` for each provider. It
   fetches the provider's discovery document (``/.well-known/openid-configuration``, kept
   for an hour, OpenID Connect Discovery 1.0 §4), makes a ``state``, a ``nonce`` and a
   PKCE S256 verifier (RFC 7636), and sends the browser to the provider's
   ``authorization_endpoint``. The three values, the provider and the pending jwtmcp
   request ride in a signed cookie (``jwtmcp_upstream``, ``HttpOnly``, ``Path=/authorize``,
   10 minutes), never in the URL.
2. The provider redirects to ``{issuer}/authorize/callback/ID`` (the redirect URI to
   register there: one per provider, so a response from one provider is never taken for
   another's). The callback checks the cookie, that ``state`` is the one sent, and that the
   ``state`` is answered once (the store's replay window), then exchanges the code at the
   provider's ``token_endpoint`` (``client_secret_basic`` or ``client_secret_post``, with
   the PKCE verifier).
3. The ID token is checked (§3.1.3.7) with jwtmcp's key cache (:class:`jwtmcp.jwks.JwksCache`
   over the provider's ``jwks_uri`` only): ``alg`` in :data:`ID_TOKEN_ALGORITHMS` (never
   ``none`` or ``HS*``), the signature with the key its ``kid`` names, ``iss`` exactly the
   provider's issuer, ``aud`` holding our client id (and ``azp``, when present or when there
   are several audiences, equal to it), ``exp`` in the future, ``iat`` not in the future and
   at most :data:`MAX_ID_TOKEN_AGE` seconds old, ``nonce`` the one sent.
4. The verified claims go to the policy (:mod:`jwtmcp.policy`) with source ``oidc:ID``. No
   matching rule, or an email outside ``allowed_email_domains`` or not verified when the
   provider restricts domains: a refusal page (403), no code. Otherwise the jwtmcp subject
   is :func:`federated_subject` ``oidc:ID:<upstream sub>`` and consent follows.

A refresh re-evaluates the *current* policy against the upstream claims kept from the
sign-in (:meth:`FederatedSource.lookup_grant`): a policy edit takes effect at the next
refresh; a change at the provider (a user removed from a group) at the next sign-in.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from .errors import (
    BadSignature,
    ConfigError,
    JwtMcpError,
    KeysUnavailable,
    MalformedToken,
    MissingClaim,
    TokenError,
    TokenExpired,
    TokenNotYetValid,
    UnsupportedAlgorithm,
    WrongAudience,
    WrongIssuer,
)
from .files import read_file
from .identifiers import canonical_issuer
from .identity import Identity
from .jwks import SIGNATURE_SCHEMES, JwksCache, JwksPolicy, PublicKey, is_loopback_url
from .policy import Policy, PolicyWatcher, ascii_fold
from .strict_json import STRICT_DECODER
from .tokens import Clock

log = logging.getLogger("jwtmcp.oidc")

FORMAT_VERSION = 1
DEFAULT_PROVIDERS_FILE = "providers.json"
ID_TOKEN_ALGORITHMS = ("RS256", "PS256")
"""Accepted ID token signature algorithms. ``none`` and ``HS*`` are never accepted; the
key cache handles RSA keys only, so ``ES256`` is refused too (no provider documented here
needs it: Okta, Entra ID, Google and Keycloak sign ID tokens with RS256 by default)."""
MAX_ID_TOKEN_AGE = 600
"""Seconds: an ID token issued longer ago than this is refused (it was just minted)."""
LEEWAY = 30
"""Seconds of clock skew allowed on ``exp`` and ``iat``."""
DISCOVERY_TTL = 3600
"""Seconds a discovery document is used before it is fetched again."""
HTTP_TIMEOUT = 5.0
"""Seconds for a discovery or token request to the provider."""
MAX_RESPONSE_BYTES = 256 * 1024
DEFAULT_SCOPES = ("openid", "email", "profile")
RETRY_AFTER = 30
"""Seconds a browser is told to wait when the provider cannot be reached."""

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_PROVIDER_FIELDS = (
    "display_name",
    "issuer",
    "client_id",
    "client_secret",
    "client_secret_env",
    "client_secret_file",
    "scopes",
    "allowed_email_domains",
    "token_endpoint_auth_method",
    "groups_claim",
)
_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
# Claims of the ID token that describe the token, not the person: not kept for the policy.
_PROTOCOL_CLAIMS = frozenset(
    {"iss", "aud", "exp", "iat", "nbf", "nonce", "azp", "at_hash", "c_hash", "s_hash",
     "auth_time", "jti", "sid", "acr", "amr", "uti", "rh", "tid_hint"}
)  # fmt: skip


class ProvidersError(ConfigError):
    """The providers file is missing, unreadable or invalid (the message names the field)."""

    code = "providers"


class ProviderUnavailable(JwtMcpError):
    """The provider cannot be reached, or answered with something unusable for a moment
    (discovery, token endpoint, keys). The login page answers 503 with ``Retry-After``."""

    code = "provider_unavailable"


class UpstreamRefused(JwtMcpError):
    """The provider answered, but the answer is refused (a token endpoint error, an ID token
    that fails a check). ``code`` names the check (``wrong_nonce``, ``wrong_audience`` ...)."""

    code = "upstream_refused"


class WrongNonce(TokenError):
    code = "wrong_nonce"


# --- the providers file ---------------------------------------------------------------------


@dataclass(frozen=True)
class Provider:
    """One configured upstream OpenID provider. ``client_secret`` is never shown in repr."""

    provider_id: str
    display_name: str
    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    allowed_email_domains: tuple[str, ...] = ()
    token_endpoint_auth_method: str = "client_secret_basic"  # noqa: S105 - a method's name
    groups_claim: str = "groups"

    @property
    def source(self) -> str:
        """The policy source of identities from this provider: ``oidc:<provider id>``."""
        return f"oidc:{self.provider_id}"


@dataclass(frozen=True)
class ProvidersConfig:
    """The parsed providers file."""

    providers: Mapping[str, Provider]
    password_login: bool = True


def _secure_url(url: str, what: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback_url(url)):
        return url
    raise ConfigError(f"{what} must be an https URL (http only on loopback), not {url!r}")


def _secret(pid: str, entry: Mapping[str, Any], base: Path) -> str:
    given = [k for k in ("client_secret", "client_secret_env", "client_secret_file") if k in entry]
    if len(given) != 1:
        raise ConfigError(
            "give exactly one of client_secret, client_secret_env or client_secret_file"
        )
    kind = given[0]
    value = entry[kind]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{kind} must be a non-empty string")
    if kind == "client_secret":
        return value
    if kind == "client_secret_env":
        secret = os.environ.get(value)
        if not secret:
            raise ConfigError(f"the environment variable {value} (client_secret_env) is not set")
        return secret
    path = Path(value) if os.path.isabs(value) else base / value
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read client_secret_file {path}: {exc}") from None
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise ConfigError(f"client_secret_file {path} is empty")
    return secret


def _string_list(entry: Mapping[str, Any], name: str, default: Sequence[str]) -> tuple[str, ...]:
    value = entry.get(name, list(default))
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{name} must be a list of non-empty strings")
    return tuple(dict.fromkeys(value))


def _parse_provider(pid: str, entry: Any, base: Path, *, secrets: bool = True) -> Provider:
    if not isinstance(entry, dict):
        raise ConfigError("must be an object")
    for key in entry:
        if key not in _PROVIDER_FIELDS:
            raise ConfigError(f"unknown field {key!r} (expected: {', '.join(_PROVIDER_FIELDS)})")
    for key in ("issuer", "client_id"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ConfigError(f"{key} is required (a non-empty string)")
    issuer = _secure_url(canonical_issuer(entry["issuer"]), "issuer")
    scopes = _string_list(entry, "scopes", DEFAULT_SCOPES)
    if "openid" not in scopes:
        raise ConfigError("scopes must include 'openid'")
    domains = tuple(ascii_fold(d) for d in _string_list(entry, "allowed_email_domains", ()))
    method = entry.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in _AUTH_METHODS:
        raise ConfigError(f"token_endpoint_auth_method must be one of {', '.join(_AUTH_METHODS)}")
    groups_claim = entry.get("groups_claim", "groups")
    if not isinstance(groups_claim, str) or not groups_claim:
        raise ConfigError("groups_claim must be a claim name")
    name = entry.get("display_name", pid)
    if not isinstance(name, str) or not name.strip() or len(name) > 80:
        raise ConfigError("display_name must be a short non-empty string")
    return Provider(
        provider_id=pid,
        display_name=name.strip(),
        issuer=issuer,
        client_id=entry["client_id"],
        client_secret=_secret(pid, entry, base) if secrets else "",
        scopes=scopes,
        allowed_email_domains=domains,
        token_endpoint_auth_method=method,
        groups_claim=groups_claim,
    )


def load_providers(path: str | os.PathLike[str], *, secrets: bool = True) -> ProvidersConfig:
    """Read the providers file. Raises :class:`ProvidersError` naming the provider and field.

    ``secrets=False`` leaves each provider's ``client_secret`` empty instead of reading it
    (its environment variable or file): for ``jwtmcp policy check``, which never talks to a
    provider."""
    where = Path(path)
    raw = read_file(
        where,
        what="providers file",
        error=ProvidersError,
        missing=f"no providers file at {where} (see docs/oidc.md)",
    )

    def bad(what: str) -> ProvidersError:
        return ProvidersError(f"the providers file {where} is invalid: {what}")

    try:
        doc = STRICT_DECODER.decode(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise bad("not valid JSON (or a member name repeated)") from None
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise bad(f"unknown format (expected version {FORMAT_VERSION})")
    for key in doc:
        if key not in ("version", "providers", "password_login"):
            raise bad(f"unknown member {key!r}")
    password_login = doc.get("password_login", True)
    if not isinstance(password_login, bool):
        raise bad("password_login must be true or false")
    entries = doc.get("providers")
    if not isinstance(entries, dict):
        raise bad("'providers' must be an object {provider id: provider}")
    providers: dict[str, Provider] = {}
    for pid, entry in entries.items():
        if not _ID.fullmatch(pid):
            raise bad(
                f"provider {pid!r}: an id is 1-32 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        try:
            providers[pid] = _parse_provider(pid, entry, where.parent, secrets=secrets)
        except ConfigError as exc:
            raise bad(f"provider {pid!r}: {exc.message}") from None
    return ProvidersConfig(MappingProxyType(providers), password_login)


def providers_file_beside(clients_file: Path) -> Path:
    """The default providers file: ``providers.json`` in the clients file's directory."""
    return clients_file.parent / DEFAULT_PROVIDERS_FILE


def federated_subject(provider_id: str, upstream_sub: str) -> str:
    """The jwtmcp ``sub`` of a person signed in at ``provider_id``: ``oidc:<id>:<sub>``.

    Stable (the provider's ``sub`` never changes for a person, OpenID Connect Core §2) and
    collision-free: provider ids hold no ``:``, so the first two ``:`` split it back, and
    users-file names hold no ``:`` at all.
    """
    return f"oidc:{provider_id}:{upstream_sub}"


# --- HTTP to the provider -------------------------------------------------------------------


@dataclass(frozen=True)
class Discovery:
    """The members of a provider's discovery document that jwtmcp uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


async def _get_json(
    method: str,
    url: str,
    *,
    what: str,
    headers: Mapping[str, str] | None = None,
    data: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """``(status, JSON object)`` of one request; :class:`ProviderUnavailable` when the
    provider cannot be reached, times out, answers 5xx or with something that is not JSON."""
    import httpx2  # the MCP SDK's HTTP library, as jwks.py and cimd.py use it

    try:
        async with httpx2.AsyncClient(
            timeout=httpx2.Timeout(HTTP_TIMEOUT), follow_redirects=False
        ) as client:
            request = client.build_request(
                method, url, headers={"Accept": "application/json", **(headers or {})}, data=data
            )
            response = await client.send(request, stream=True)
            try:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_RESPONSE_BYTES:  # read no further than the cap
                        raise ProviderUnavailable(
                            f"{what}: the answer is over {MAX_RESPONSE_BYTES} bytes"
                        )
                    chunks.append(chunk)
                body = b"".join(chunks)
            finally:
                await response.aclose()
    except httpx2.TimeoutException:
        raise ProviderUnavailable(f"{what}: no answer within {HTTP_TIMEOUT:.0f} s") from None
    except httpx2.HTTPError as exc:
        raise ProviderUnavailable(f"{what}: cannot connect ({type(exc).__name__})") from None
    if response.status_code >= 500:
        raise ProviderUnavailable(f"{what}: HTTP status {response.status_code}")
    try:
        value = STRICT_DECODER.decode(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ProviderUnavailable(f"{what}: the answer is not JSON") from None
    if not isinstance(value, dict):
        raise ProviderUnavailable(f"{what}: the answer is not a JSON object")
    return response.status_code, value


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# --- ID token checks --------------------------------------------------------------------------


def _segment_json(segment: str, what: str) -> dict[str, Any]:
    from .verifier import _json_object  # the verifier's strict base64url + JSON decoding

    return _json_object(segment.encode("ascii"), what)


def id_token_header(id_token: str) -> tuple[str, str | None]:
    """``(alg, kid)`` of an ID token; refuses ``none``, ``HS*`` and anything not allowed."""
    if not isinstance(id_token, str) or not id_token.isascii() or id_token.count(".") != 2:
        raise MalformedToken("the ID token is not a JWS in compact form")
    header = _segment_json(id_token.split(".", 1)[0], "header")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise MalformedToken("the ID token's header has no algorithm (alg)")
    if alg not in ID_TOKEN_ALGORITHMS:
        raise UnsupportedAlgorithm(
            f"the ID token's algorithm {alg[:20]!r} is not accepted "
            f"(only {', '.join(ID_TOKEN_ALGORITHMS)})"
        )
    if "crit" in header:
        raise MalformedToken("the ID token's header names critical extensions (crit)")
    typ = header.get("typ")
    if typ is not None and (
        not isinstance(typ, str) or typ.lower() not in ("jwt", "application/jwt")
    ):
        raise MalformedToken("the ID token's type (typ) is not JWT")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
        raise MalformedToken("the ID token's key id (kid) is not a short string")
    return alg, kid


def _numeric(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise MissingClaim(f"the ID token has no {name} (a number of epoch seconds)")
    return float(value)


def check_id_token(
    id_token: str,
    key: PublicKey,
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    now: float,
) -> dict[str, Any]:
    """The claims of ``id_token`` once every check of OpenID Connect Core §3.1.3.7 holds.

    ``key`` is the provider's key its ``kid`` names (from the ``jwks_uri`` only); ``now``
    epoch seconds. Raises a :class:`~jwtmcp.errors.TokenError` whose ``code`` names the
    failed check: ``unsupported_alg``, ``bad_signature``, ``wrong_issuer``,
    ``wrong_audience``, ``wrong_nonce``, ``token_expired``, ``not_yet_valid``,
    ``missing_claim``, ``malformed``.
    """
    from cryptography.exceptions import InvalidSignature

    from .verifier import _b64decode

    alg, _ = id_token_header(id_token)
    if key.alg is not None and key.alg != alg:
        raise UnsupportedAlgorithm("the ID token's algorithm does not match its key")
    signing_input, _, signature = id_token.rpartition(".")
    pad, digest = SIGNATURE_SCHEMES[alg]
    try:
        key.key.verify(_b64decode(signature.encode("ascii"), "signature"),
                       signing_input.encode("ascii"), pad, digest)  # fmt: skip
    except InvalidSignature:
        raise BadSignature("the ID token's signature is invalid") from None
    claims = _segment_json(signing_input.split(".")[1], "payload")
    if claims.get("iss") != issuer:
        raise WrongIssuer("the ID token was issued by another issuer (iss)")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise MissingClaim("the ID token has no audience (aud)")
    if client_id not in audiences:
        raise WrongAudience("the ID token is not meant for this client (aud)")
    azp = claims.get("azp")
    if (azp is not None or len(audiences) > 1) and azp != client_id:
        raise WrongAudience("the ID token's authorized party (azp) is not this client")
    exp, iat = _numeric(claims, "exp"), _numeric(claims, "iat")
    if now >= exp + LEEWAY:
        raise TokenExpired("the ID token has expired")
    if iat > now + LEEWAY:
        raise TokenNotYetValid("the ID token was issued in the future (iat)")
    if iat < now - MAX_ID_TOKEN_AGE:
        raise TokenExpired(f"the ID token was issued more than {MAX_ID_TOKEN_AGE} s ago (iat)")
    sent = claims.get("nonce")
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), nonce.encode()):
        raise WrongNonce("the ID token's nonce is not the one sent with this sign-in")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 255:
        raise MissingClaim("the ID token has no subject (sub), or one over 255 characters")
    return claims


# --- one provider at run time -----------------------------------------------------------------


@dataclass(frozen=True)
class Transaction:
    """What the callback needs from the start of an upstream login (kept in a signed cookie)."""

    provider_id: str
    state: str
    nonce: str
    code_verifier: str
    request: str
    """The pending jwtmcp authorization request, as its signed blob."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "p": self.provider_id,
            "st": self.state,
            "n": self.nonce,
            "cv": self.code_verifier,
            "rq": self.request,
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Transaction:
        return cls(
            provider_id=str(value["p"]),
            state=str(value["st"]),
            nonce=str(value["n"]),
            code_verifier=str(value["cv"]),
            request=str(value["rq"]),
        )


class ProviderClient:
    """Talks to one provider: discovery (cached), the authorization URL, the code exchange
    and the ID token check with a key cache over the provider's ``jwks_uri``."""

    def __init__(
        self,
        provider: Provider,
        *,
        redirect_uri: str,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.provider = provider
        self.redirect_uri = redirect_uri
        self._clock = clock
        self._monotonic = monotonic
        self._discovery: tuple[Discovery, float] | None = None
        self._keys: JwksCache | None = None
        self._lock = asyncio.Lock()

    async def discovery(self) -> Discovery:
        """The provider's discovery document, fetched at most once per :data:`DISCOVERY_TTL`.

        Raises :class:`ProviderUnavailable` when it cannot be fetched and none is cached, and
        when it is unusable (its ``issuer`` is not the configured one, §4.3; an endpoint
        that is not https).
        """
        cached = self._discovery
        if cached is not None and self._monotonic() < cached[1]:
            return cached[0]
        async with self._lock:
            cached = self._discovery
            if cached is not None and self._monotonic() < cached[1]:
                return cached[0]
            try:
                found = await self._fetch_discovery()
            except ProviderUnavailable:
                if cached is not None:  # a brief outage: the last document still holds
                    log.warning(json.dumps({"event": "oidc_discovery_stale",
                                            "provider": self.provider.provider_id}))  # fmt: skip
                    return cached[0]
                raise
            self._discovery = (found, self._monotonic() + DISCOVERY_TTL)
            return found

    async def _fetch_discovery(self) -> Discovery:
        issuer = self.provider.issuer
        url = f"{issuer}/.well-known/openid-configuration"
        what = f"the discovery document of {self.provider.display_name}"
        status, doc = await _get_json("GET", url, what=what)
        if status != 200:
            raise ProviderUnavailable(f"{what}: HTTP status {status}")
        if doc.get("issuer") != issuer:
            raise ProviderUnavailable(f"{what}: its issuer is not {issuer} (Discovery §4.3)")
        members = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(name)
            try:
                members[name] = _secure_url(value if isinstance(value, str) else "", name)
            except ConfigError as exc:
                raise ProviderUnavailable(f"{what}: {exc.message}") from None
        if self._keys is not None and self._keys.url != members["jwks_uri"]:
            self._keys.close()
            self._keys = None
        return Discovery(issuer=issuer, **members)

    def keys(self, jwks_uri: str) -> JwksCache:
        if self._keys is None:
            self._keys = JwksCache(
                jwks_uri,
                algorithms=ID_TOKEN_ALGORITHMS,
                policy=JwksPolicy(fetch_timeout=HTTP_TIMEOUT),
                clock=self._clock,
                monotonic=self._monotonic,
            )
        return self._keys

    async def start(self, request_blob: str) -> tuple[str, Transaction]:
        """The provider's authorization URL for a new login, and the transaction to keep."""
        found = await self.discovery()
        verifier = secrets.token_urlsafe(48)  # 64 characters, RFC 7636 §4.1
        transaction = Transaction(
            provider_id=self.provider.provider_id,
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=verifier,
            request=request_blob,
        )
        params = {
            "response_type": "code",
            "client_id": self.provider.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(self.provider.scopes),
            "state": transaction.state,
            "nonce": transaction.nonce,
            "code_challenge": _b64url(hashlib.sha256(verifier.encode("ascii")).digest()),
            "code_challenge_method": "S256",
        }
        endpoint = found.authorization_endpoint
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}", transaction

    async def finish(self, code: str, transaction: Transaction) -> dict[str, Any]:
        """Exchange ``code`` and return the verified ID token claims.

        Raises :class:`ProviderUnavailable` (the provider or its keys cannot be reached) or
        :class:`UpstreamRefused` (an error answer, or an ID token failing a check; its
        ``code`` names the check).
        """
        found = await self.discovery()
        provider = self.provider
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": transaction.code_verifier,
        }
        headers: dict[str, str] = {}
        if provider.token_endpoint_auth_method == "client_secret_basic":  # noqa: S105
            # RFC 6749 §2.3.1: each part form-urlencoded before the Basic encoding.
            pair = f"{quote(provider.client_id, safe='')}:{quote(provider.client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = provider.client_id
            form["client_secret"] = provider.client_secret
        what = f"the token endpoint of {provider.display_name}"
        status, answer = await _get_json(
            "POST", found.token_endpoint, what=what, data=form, headers=headers
        )
        if status != 200:
            error = answer.get("error")
            shown = error if isinstance(error, str) and re.fullmatch(r"[\x20-\x7e]{1,64}", error) \
                else "an error"  # fmt: skip
            raise UpstreamRefused(
                f"{provider.display_name} refused the sign-in code ({shown})",
                code="token_endpoint_error",
            )
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise UpstreamRefused(
                f"{provider.display_name} sent no ID token", code="missing_id_token"
            )
        try:
            _, kid = id_token_header(id_token)
            key = await self._key(found.jwks_uri, kid)
            return check_id_token(
                id_token,
                key,
                issuer=found.issuer,
                client_id=provider.client_id,
                nonce=transaction.nonce,
                now=self._clock(),
            )
        except KeysUnavailable as exc:
            raise ProviderUnavailable(f"the signing keys of {provider.display_name}: "
                                      f"{exc.message}") from None  # fmt: skip
        except TokenError as exc:
            raise UpstreamRefused(exc.message, code=exc.code) from None

    async def _key(self, jwks_uri: str, kid: str | None) -> PublicKey:
        """The provider's key ``kid`` names from its ``jwks_uri``; with no ``kid``, its only
        key (OpenID Connect Core 10.1), never a key the token itself carries."""
        keys = self.keys(jwks_uri)

        def lookup(may_wait: bool) -> PublicKey | Future[bool]:
            if kid is None:
                return keys.only_key(may_wait=may_wait)
            return keys.find(kid, self._clock(), may_wait=may_wait)

        found = lookup(True)
        if isinstance(found, PublicKey):
            return found
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(found)), HTTP_TIMEOUT + 1)
        again = lookup(False)
        assert isinstance(again, PublicKey)
        return again

    def close(self) -> None:
        if self._keys is not None:
            self._keys.close()


# --- the identity source ------------------------------------------------------------------------


def upstream_claims(provider: Provider, claims: Mapping[str, Any]) -> dict[str, Any]:
    """The verified ID token claims kept for the policy (and refreshes): the person's claims,
    not the token's (:data:`_PROTOCOL_CLAIMS` dropped); the provider's ``groups_claim``
    is given to the policy as ``groups``."""
    kept = {k: v for k, v in claims.items() if k not in _PROTOCOL_CLAIMS}
    if provider.groups_claim != "groups":
        kept.pop("groups", None)
        if provider.groups_claim in claims:
            kept["groups"] = claims[provider.groups_claim]
    return kept


class FederatedSource:
    """The identity source of one provider: its verified claims -> :class:`Identity`.

    ``source_id`` is ``oidc:<provider id>``; what an identity may have comes from the policy
    (``policy()`` returns the current one), evaluated with that source.
    """

    def __init__(self, provider: Provider, policy: Callable[[], Policy]) -> None:
        self.provider = provider
        self.source_id = provider.source
        self.display_name = provider.display_name
        self._policy = policy

    def refusal(self, claims: Mapping[str, Any]) -> str | None:
        """Why the provider's own restriction refuses ``claims`` (None: it does not)."""
        domains = self.provider.allowed_email_domains
        if not domains:
            return None
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email:
            return "your account has no email address, and this sign-in needs one"
        if claims.get("email_verified") is not True:
            return "your email address is not verified at the identity provider"
        if ascii_fold(email.rpartition("@")[2]) not in domains:
            return "your email address is not in a domain allowed to sign in here"
        return None

    def identity(self, claims: Mapping[str, Any]) -> Identity | None:
        """The identity for upstream ``claims`` under the current policy; None when denied."""
        if self.refusal(claims) is not None:
            return None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            return None
        grant = self._policy().evaluate(claims, source=self.source_id)
        if grant is None:
            return None
        extra = {}
        if isinstance(claims.get("name"), str):
            extra["name"] = claims["name"]
        if isinstance(claims.get("email"), str) and claims.get("email_verified") is True:
            extra["email"] = claims["email"]
        return Identity(
            subject=federated_subject(self.provider.provider_id, sub),
            tools=grant.tools,
            audiences=grant.audiences,
            max_lifetime=grant.max_ttl,
            claims=extra,
            source_id=self.source_id,
            upstream=claims,
        )

    def authenticate(self, username: str, password: str) -> Identity | None:
        """Never: people of this source sign in at the provider, not with a password."""
        return None

    def lookup(self, subject: str) -> Identity | None:
        """Without the upstream claims there is nothing to check: None (sign in again)."""
        return None

    def lookup_grant(self, subject: str, grant: Mapping[str, Any]) -> Identity | None:
        """The identity at refresh: the current policy over the claims kept at sign-in."""
        claims = grant.get("upstream")
        if not isinstance(claims, dict):
            return None
        identity = self.identity(claims)
        if identity is None or identity.subject != subject:
            return None
        return identity


class Federation:
    """Every configured provider, their clients and identity sources, and the policy."""

    def __init__(
        self,
        config: ProvidersConfig,
        policy: PolicyWatcher | Policy,
        *,
        issuer: str,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.password_login = config.password_login
        self.policy = policy
        self.clients = {
            pid: ProviderClient(
                provider,
                redirect_uri=callback_uri(issuer, pid),
                clock=clock,
                monotonic=monotonic,
            )
            for pid, provider in config.providers.items()
        }
        self.sources = {
            provider.source: FederatedSource(provider, self.current_policy)
            for provider in config.providers.values()
        }

    def current_policy(self) -> Policy:
        policy = self.policy
        return policy.current() if isinstance(policy, PolicyWatcher) else policy

    def providers(self) -> list[Provider]:
        return [c.provider for c in self.clients.values()]

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


def callback_uri(issuer: str, provider_id: str) -> str:
    """The redirect URI to register at provider ``provider_id``."""
    return f"{issuer}/authorize/callback/{provider_id}"


def load_federation(
    providers_file: str | os.PathLike[str],
    policy_file: str | os.PathLike[str],
    *,
    issuer: str,
    clock: Clock = time.time,
    reload_interval: float = 0.25,
) -> Federation:
    """The federation from the providers file and the policy file (watched for changes).

    Raises :class:`ProvidersError` or :class:`~jwtmcp.policy.PolicyError`.
    """
    config = load_providers(providers_file)

    def reload_failed(reason: str) -> None:
        log.error(json.dumps({"event": "reload_failed", "file": "policy", "error": reason}))

    policy = PolicyWatcher(policy_file, interval=reload_interval, on_error=reload_failed)
    return Federation(config, policy, issuer=issuer, clock=clock)


def federation_for_issuer(
    *,
    issuer: str,
    clients_file: str | os.PathLike[str],
    providers_file: str | os.PathLike[str] | None = None,
    policy_file: str | os.PathLike[str] | None = None,
    clock: Clock = time.time,
    reload_interval: float = 0.25,
) -> Federation | None:
    """The issuer's federation, or None when no providers are configured.

    ``providers_file`` (empty/None: ``providers.json`` beside ``clients_file``, used only if
    it exists; a file named explicitly must exist); ``policy_file`` (empty/None:
    ``policy.json`` beside ``clients_file``) must exist once providers are configured.
    Raises :class:`ProvidersError` or :class:`~jwtmcp.policy.PolicyError`.
    """
    from .policy import policy_file_beside

    beside = Path(clients_file)
    providers = Path(providers_file) if providers_file else providers_file_beside(beside)
    if not providers_file and not providers.exists():
        return None
    policy = Path(policy_file) if policy_file else policy_file_beside(beside)
    return load_federation(
        providers, policy, issuer=issuer, clock=clock, reload_interval=reload_interval
    )
