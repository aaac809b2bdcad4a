"""The policy file: which verified identities get which tools, audiences and lifetime.

Identities that jwtmcp did not create itself - people signed in at an upstream OpenID
provider, workloads presenting a signed assertion - are mapped to grants here. Deny by
default: an identity no rule matches gets nothing. One JSON document::

    {
      "version": 1,
      "rules": {
        "engineers": {
          "match": {"source": "oidc:corp", "group": "eng"},
          "grant": {"tools": ["add", "read_*"],
                    "audiences": ["https://mcp.example.com/mcp"],
                    "max_ttl": 900}
        }
      }
    }

A rule's ``match`` holds conditions; *all* of them must hold, and a condition given a list
holds when any one value does:

- ``source`` (required): where the claims come from, ``oidc:<provider id>`` for upstream
  login, ``issuer:<issuer URL>`` for jwt-bearer / identity assertions. A value ending in
  ``*`` matches by prefix (``oidc:*``).
- ``sub``: the upstream ``sub`` claim, exactly.
- ``email``: the ``email`` claim (compared case-insensitively in ASCII), only when
  ``email_verified`` is the JSON ``true``.
- ``email_domain``: the part of ``email`` after its last ``@`` equals the domain (ASCII case
  insensitive, the whole domain, not a suffix), only when ``email_verified`` is ``true``.
- ``group``: a member of the ``groups`` claim (a list of strings).
- ``claims``: ``{name: value | [values]}``, each upstream claim equal to one of the values
  (strings, numbers, booleans; ``true`` is not ``1``), or a list claim containing one.

``grant`` holds ``tools`` (``*`` and ``prefix*`` allowed), ``audiences`` (resource URLs,
kept in their canonical form, :mod:`jwtmcp.identifiers`) and optionally ``max_ttl``
(seconds). An identity matched by several rules gets the union of their tools and
audiences and the smallest of their ``max_ttl`` caps.

Parsing is strict: an unknown member, a wrong type or an empty condition is refused with
one line naming the rule and the field (:class:`PolicyError`). A running issuer watches the
file (:class:`PolicyWatcher`) and keeps the last good policy when an edit is invalid.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .files import WatchedFile, read_file
from .identifiers import canonical_resource
from .strict_json import STRICT_DECODER
from .tokens import tool_scope

__all__ = [
    "FORMAT_VERSION",
    "Policy",
    "PolicyError",
    "PolicyGrant",
    "PolicyRule",
    "PolicyWatcher",
    "ascii_fold",
    "load_policy",
    "policy_file_beside",
]

FORMAT_VERSION = 1
DEFAULT_POLICY_FILE = "policy.json"

_RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*")
_CONDITIONS = ("source", "sub", "email", "email_domain", "group", "claims")
_RULE_FIELDS = ("match", "grant")
_GRANT_FIELDS = ("tools", "audiences", "max_ttl")
# Claims that have a condition of their own, or that only the issuer itself vouches for.
_NOT_IN_CLAIMS = {"sub": "sub", "email": "email", "groups": "group", "email_verified": "email"}

_TIME_CLAIMS = frozenset({"iat", "nbf", "exp", "jti", "auth_time"})
_SOURCE_KINDS = ("oidc:", "issuer:")
"""A source names its kind first, so that no pattern (``*``) spans upstream sign-in and
assertions, and a typo fails at load instead of matching nothing."""

Scalar = str | int | float | bool


class PolicyError(ConfigError):
    """The policy file is missing, unreadable or invalid (the message names rule and field)."""

    code = "policy"


@dataclass(frozen=True)
class PolicyGrant:
    """What a verified identity gets.

    ``tools``: tool names (``*`` and ``prefix*`` allowed), the union of the matched rules'.
    ``audiences``: canonical resource identifiers, the union of the matched rules'.
    ``max_ttl``: seconds, the smallest cap of the matched rules (None: none of them caps).
    ``rules``: the names of the matched rules, in file order (for logs and ``policy check``).
    """

    tools: tuple[str, ...]
    audiences: tuple[str, ...]
    max_ttl: int | None
    rules: tuple[str, ...]


@dataclass(frozen=True)
class PolicyRule:
    """One parsed rule. Each condition is a tuple of accepted values; empty = no condition."""

    name: str
    sources: tuple[str, ...]
    subs: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    email_domains: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    claims: tuple[tuple[str, tuple[Scalar, ...]], ...] = ()
    tools: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    max_ttl: int | None = None

    def failures(self, claims: Mapping[str, Any], source: str) -> list[str]:
        """Why this rule does not match (empty: it matches); one reason per failed condition."""
        out: list[str] = []
        if not any(_source_matches(p, source) for p in self.sources):
            out.append(f"source {source!r} is not {_any(self.sources)}")
        if self.subs and claims.get("sub") not in self.subs:
            out.append(f"sub {_shown(claims.get('sub'))} is not {_any(self.subs)}")
        verified = claims.get("email_verified") is True
        email = claims.get("email")
        if self.emails or self.email_domains:
            if not isinstance(email, str):
                out.append("the claims hold no email")
            elif not verified:
                out.append(
                    f"email {email!r} is not verified (email_verified is "
                    f"{_shown(claims.get('email_verified'))}, not true)"
                )
            else:
                if self.emails and ascii_fold(email) not in self.emails:
                    out.append(f"email {email!r} is not {_any(self.emails)}")
                domain = ascii_fold(email.rpartition("@")[2]) if "@" in email else ""
                if self.email_domains and domain not in self.email_domains:
                    out.append(f"email domain {domain!r} is not {_any(self.email_domains)}")
        if self.groups:
            groups = _groups(claims)
            if not set(self.groups) & set(groups):
                out.append(f"groups {list(groups)!r} hold none of {list(self.groups)!r}")
        for name, values in self.claims:
            if not _claim_matches(claims.get(name, _MISSING), values):
                shown = "missing" if name not in claims else _shown(claims[name])
                out.append(f"claim {name!r} ({shown}) is not {_any(values)}")
        return out

    def reasons(self, source: str) -> list[str]:
        """What held, for a matched rule (``policy check``)."""
        out = [f"source {source!r}"]
        out += [f"sub in {list(self.subs)!r}"] if self.subs else []
        out += [f"verified email in {list(self.emails)!r}"] if self.emails else []
        if self.email_domains:
            out.append(f"verified email domain in {list(self.email_domains)!r}")
        out += [f"member of a group in {list(self.groups)!r}"] if self.groups else []
        out += [f"claim {name!r} in {list(values)!r}" for name, values in self.claims]
        return out


_MISSING = object()

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_fold(text: str) -> str:
    """``text`` with ASCII letters lower-cased and every other character left as it is.

    Emails and domains compare case-insensitively in ASCII only: Unicode case folding
    (``str.casefold``, ``str.lower``) maps distinct characters onto ASCII letters (``ß`` to
    ``ss``, the Kelvin sign U+212A to ``k``, the long s U+017F to ``s``), so a mailbox or
    domain a provider verified would match another one a rule names.
    """
    return text.translate(_ASCII_LOWER)


def _shown(value: Any) -> str:
    # JSON spelling (true, null), as in the file and the token; never longer than a line.
    text = json.dumps(value, ensure_ascii=True, default=repr)
    return text if len(text) <= 80 else text[:77] + "..."


def _any(values: Sequence[Any]) -> str:
    return repr(values[0]) if len(values) == 1 else f"any of {list(values)!r}"


def _source_matches(pattern: str, source: str) -> bool:
    if pattern.endswith("*"):
        return source.startswith(pattern[:-1])
    return source == pattern


def _groups(claims: Mapping[str, Any]) -> tuple[str, ...]:
    groups = claims.get("groups")
    if isinstance(groups, list) and all(isinstance(g, str) for g in groups):
        return tuple(groups)
    return ()


def _same(a: Any, b: Scalar) -> bool:
    # JSON true is not 1, and 1 is not "1": compare type and value.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def _claim_matches(value: Any, accepted: tuple[Scalar, ...]) -> bool:
    if value is _MISSING:
        return False
    candidates = value if isinstance(value, list) else [value]
    return any(_same(c, a) for c in candidates for a in accepted)


class Policy:
    """A parsed policy file: :meth:`evaluate` maps verified claims to a :class:`PolicyGrant`."""

    def __init__(self, rules: Sequence[PolicyRule], *, path: Path | None = None) -> None:
        self.rules = tuple(rules)
        self.path = path

    def evaluate(self, claims: Mapping[str, Any], *, source: str) -> PolicyGrant | None:
        """The grant for verified ``claims`` from ``source``; None when no rule matches.

        ``claims`` must already be verified (signature, issuer, audience, expiry): the policy
        only decides what a known identity gets. ``source`` is ``oidc:<provider id>`` or
        ``issuer:<issuer URL>``.
        """
        matched = [r for r in self.rules if not r.failures(claims, source)]
        if not matched:
            return None
        caps = [r.max_ttl for r in matched if r.max_ttl is not None]
        return PolicyGrant(
            tools=tuple(dict.fromkeys(t for r in matched for t in r.tools)),
            audiences=tuple(dict.fromkeys(a for r in matched for a in r.audiences)),
            max_ttl=min(caps) if caps else None,
            rules=tuple(r.name for r in matched),
        )

    def explain(self, claims: Mapping[str, Any], *, source: str) -> list[str]:
        """Human lines: for each rule whether it matched and why (not), then the verdict."""
        lines: list[str] = []
        for rule in self.rules:
            failures = rule.failures(claims, source)
            if failures:
                lines.append(f"rule {rule.name!r}: no match: {'; '.join(failures)}")
            else:
                lines.append(f"rule {rule.name!r}: matched ({'; '.join(rule.reasons(source))})")
        if self.evaluate(claims, source=source) is None:
            lines.append(
                f"no rule matched, so nothing is granted (deny by default; {len(self.rules)} "
                f"rule{'s' if len(self.rules) != 1 else ''} checked)"
            )
        return lines


# --- parsing -------------------------------------------------------------------------------


class _Bad(Exception):
    def __init__(self, field: str, why: str) -> None:
        super().__init__(field, why)
        self.field, self.why = field, why


def _strings(value: Any, field: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise _Bad(field, "must be a string or a list of strings")
    if not values or not all(v.strip() for v in values):
        raise _Bad(field, "must not be empty")
    return tuple(dict.fromkeys(values))


def _parse_sources(value: Any) -> tuple[str, ...]:
    sources = _strings(value, "match.source")
    for source in sources:
        if "*" in source[:-1]:
            raise _Bad("match.source", f"{source!r}: '*' may only end a source pattern")
        if not source.startswith(_SOURCE_KINDS):
            raise _Bad(
                "match.source",
                f"{source[:80]!r} names no kind of source: start it with 'oidc:' (upstream "
                "sign-in) or 'issuer:' (assertions), e.g. 'oidc:corp' or 'oidc:*'",
            )
    return sources


def _parse_emails(value: Any) -> tuple[str, ...]:
    emails = _strings(value, "match.email")
    for email in emails:
        local, at, domain = email.rpartition("@")
        if not at or not local or not _DOMAIN.fullmatch(domain):
            raise _Bad("match.email", f"{email!r} is not an email address")
    return tuple(ascii_fold(e) for e in emails)


def _parse_domains(value: Any) -> tuple[str, ...]:
    domains = _strings(value, "match.email_domain")
    for domain in domains:
        if not _DOMAIN.fullmatch(domain):
            raise _Bad("match.email_domain", f"{domain!r} is not a domain (e.g. example.com)")
    return tuple(ascii_fold(d) for d in domains)


def _parse_claims(value: Any) -> tuple[tuple[str, tuple[Scalar, ...]], ...]:
    if not isinstance(value, dict):
        raise _Bad("match.claims", "must be an object {claim name: value or [values]}")
    if not value:
        raise _Bad("match.claims", "must not be empty")
    out = []
    for name, accepted in value.items():
        field = f"match.claims.{name}"
        if name in _NOT_IN_CLAIMS:
            raise _Bad(field, f"use '{_NOT_IN_CLAIMS[name]}' in 'match' for this claim")
        if name in _TIME_CLAIMS:
            raise _Bad(field, "a time or token id claim cannot be matched")
        values = accepted if isinstance(accepted, list) else [accepted]
        if not values or not all(
            isinstance(v, str | bool) or (isinstance(v, int | float) and v == v) for v in values
        ):
            raise _Bad(field, "must be a string, number or boolean, or a non-empty list of them")
        out.append((name, tuple(values)))
    return tuple(out)


def _parse_tools(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad("grant.tools", "must be a list of tool names")
    if not value:
        raise _Bad("grant.tools", "must name at least one tool ('*' for all)")
    for tool in value:
        try:
            tool_scope(tool)
        except ConfigError as exc:
            raise _Bad("grant.tools", exc.message) from None
    return tuple(dict.fromkeys(t.strip() for t in value))


def _parse_audiences(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad("grant.audiences", "must be a list of resource URLs")
    if not value:
        raise _Bad("grant.audiences", "must name at least one resource URL")
    try:
        return tuple(dict.fromkeys(canonical_resource(v) for v in value))
    except ConfigError as exc:
        raise _Bad("grant.audiences", exc.message) from None


def _parse_max_ttl(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _Bad("grant.max_ttl", f"must be a positive whole number of seconds, not {value!r}")
    return value


def _object(value: Any, field: str, allowed: Sequence[str], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(field, "must be an object")
    for key in value:
        if key not in allowed:
            where = f"{field}.{key}" if field else key
            raise _Bad(where, f"unknown {what} (expected one of: {', '.join(allowed)})")
    return value


def _parse_rule(name: str, entry: Any) -> PolicyRule:
    rule = _object(entry, "", _RULE_FIELDS, "field")
    for required in _RULE_FIELDS:
        if required not in rule:
            raise _Bad(required, "is required")
    match = _object(rule["match"], "match", _CONDITIONS, "condition")
    grant = _object(rule["grant"], "grant", _GRANT_FIELDS, "field")
    if "source" not in match:
        raise _Bad(
            "match.source",
            "is required: name where the claims come from (e.g. 'oidc:corp', "
            "'issuer:https://token.actions.githubusercontent.com', or 'oidc:*')",
        )
    for required in ("tools", "audiences"):
        if required not in grant:
            raise _Bad(f"grant.{required}", "is required")
    return PolicyRule(
        name=name,
        sources=_parse_sources(match["source"]),
        subs=_strings(match["sub"], "match.sub") if "sub" in match else (),
        emails=_parse_emails(match["email"]) if "email" in match else (),
        email_domains=_parse_domains(match["email_domain"]) if "email_domain" in match else (),
        groups=_strings(match["group"], "match.group") if "group" in match else (),
        claims=_parse_claims(match["claims"]) if "claims" in match else (),
        tools=_parse_tools(grant["tools"]),
        audiences=_parse_audiences(grant["audiences"]),
        max_ttl=_parse_max_ttl(grant.get("max_ttl")),
    )


def parse_policy(raw: bytes, *, path: Path) -> Policy:
    """Parse the bytes of a policy file. Raises :class:`PolicyError` (one line) when invalid."""

    def bad(what: str) -> PolicyError:
        return PolicyError(f"the policy file {path} is invalid: {what}")

    try:
        doc = STRICT_DECODER.decode(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise bad("not valid JSON (or a member name repeated)") from None
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise bad(f"unknown format (expected version {FORMAT_VERSION})")
    for key in doc:
        if key not in ("version", "rules"):
            raise bad(f"unknown member {key!r} (expected 'version' and 'rules')")
    entries = doc.get("rules")
    if not isinstance(entries, dict):
        raise bad("'rules' must be an object {rule name: rule}")
    rules = []
    for name, entry in entries.items():
        if not _RULE_NAME.fullmatch(name):
            raise bad(
                f"rule {name!r}: invalid rule name: use 1-64 letters, digits, '.', '_' or "
                "'-', starting with a letter or digit"
            )
        try:
            rules.append(_parse_rule(name, entry))
        except _Bad as exc:
            raise bad(f"rule {name!r}, field {exc.field!r}: {exc.why}") from None
    return Policy(rules, path=path)


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and parse the policy file at ``path``.

    Raises :class:`PolicyError` with one line naming the file, the rule and the field at
    fault, or saying how to write a missing file.
    """
    where = Path(path)
    raw = read_file(
        where,
        what="policy file",
        error=PolicyError,
        missing=f"no policy file at {where}; write one (see docs/policy.md: rules mapping "
        "verified identities to tools and audiences)",
    )
    return parse_policy(raw, path=where)


def policy_file_beside(clients_file: Path) -> Path:
    """The default policy file: ``policy.json`` in the clients file's directory."""
    return clients_file.parent / DEFAULT_POLICY_FILE


class PolicyWatcher(WatchedFile[Policy]):
    """Serves the current policy to a long-running process, like the clients watcher.

    ``current()`` costs one ``stat`` at most every ``interval`` seconds and re-reads the file
    when it changed. When a reload fails (an edit left it invalid, or it was removed) the
    last good policy keeps serving, ``last_error`` says why and ``on_error`` hears each new
    reason once. The first load's :class:`PolicyError` propagates.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        interval: float = 0.25,
        monotonic: Callable[[], float] = time.monotonic,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(
            path,
            load_policy,
            PolicyError,
            what="the policy file",
            interval=interval,
            monotonic=monotonic,
            on_error=on_error,
        )
