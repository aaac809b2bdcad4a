"""The ``jwtmcp`` command line: manage the key ring, mint and verify tokens, run the issuer.

Every command is a small function ``cmd_*(args, clock) -> int``. Errors jwtmcp raises on
purpose (:class:`~jwtmcp.errors.JwtMcpError`) become one line ``jwtmcp: error: <message>``
on stderr and exit status 1; usage mistakes (unknown flag, missing argument) are one line
too, with exit status 2. ``serve``, ``clients`` and ``verify`` import their module lazily,
so ``jwtmcp keys ...`` and ``jwtmcp mint`` stay fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from .errors import (
    ConfigError,
    JwtMcpError,
    KeysUnavailable,
    ListenError,
    RevocationsUnavailable,
    TokenError,
)
from .keys import (
    DEFAULT_BITS,
    DEFAULT_LEEWAY,
    KeyRing,
    init_ring,
    load_ring,
    prune_ring,
    revoke_key,
    rotate_ring,
)
from .numeric import parse_decimal_number, parse_whole_number
from .tokens import (
    DEFAULT_LIFETIME,
    DEFAULT_MAX_LIFETIME,
    SHORT_LIVED_MAX,
    Clock,
    mint,
    tool_scope,
)

PROG = "jwtmcp"
DEFAULT_KEYS_DIR = "keys"
DEFAULT_CLIENTS_FILE = "clients.json"
DEFAULT_ISSUER = "http://127.0.0.1:8000"  # = issuer.TOUR_DEFAULT_ISSUER
ENV_KEYS = "JWTMCP_KEYS"
ENV_CLIENTS = "JWTMCP_CLIENTS"
ENV_ISSUER = "JWTMCP_ISSUER"
ENV_DEBUG = "JWTMCP_DEBUG"
EXIT_CANNOT_LISTEN = 69
"""``serve`` could not listen on its address (port in use): sysexits.h ``EX_UNAVAILABLE``."""

Command = Callable[[argparse.Namespace, Clock], int]


class CliError(JwtMcpError):
    """A command-line argument is invalid in a way argparse cannot see (e.g. ``--claim x``)."""

    code = "usage"


# --- settings from flags or environment -----------------------------------------------------


def keys_dir(args: argparse.Namespace) -> Path:
    """``--keys``, else ``$JWTMCP_KEYS``, else ``keys``."""
    return Path(getattr(args, "keys", None) or os.environ.get(ENV_KEYS) or DEFAULT_KEYS_DIR)


def clients_file(args: argparse.Namespace) -> Path:
    """``--clients``, else ``$JWTMCP_CLIENTS``, else ``clients.json``."""
    flag = getattr(args, "clients", None)
    return Path(flag or os.environ.get(ENV_CLIENTS) or DEFAULT_CLIENTS_FILE)


def issuer_url(args: argparse.Namespace) -> str:
    """``--issuer``, else ``$JWTMCP_ISSUER``, else ``http://127.0.0.1:8000``."""
    return str(getattr(args, "issuer", None) or os.environ.get(ENV_ISSUER) or DEFAULT_ISSUER)


def _split_list(values: Sequence[str] | None) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (comma-separated and repeatable flags)."""
    out: list[str] = []
    for value in values or ():
        out.extend(part.strip() for part in value.split(",") if part.strip())
    return list(dict.fromkeys(out))


def tool_names(values: Sequence[str] | None) -> list[str]:
    """``--tools`` of ``mint`` and ``clients add``: comma-separated, repeatable tool names.

    Each name is checked as a ``tool:<name>`` scope (:func:`~jwtmcp.tokens.tool_scope`);
    a ``--tools`` that names no tool at all is refused, so no token or client grants
    nothing by accident.
    """
    names = _split_list(values)
    if not names:
        raise CliError("--tools names no tool; give tool names, e.g. --tools add,subtract or '*'")
    for name in names:
        tool_scope(name)
    return names


def audience_urls(values: Sequence[str]) -> list[str]:
    """``--audience`` of ``mint``, ``clients add``, ``users add``: canonical resource URLs."""
    from .clients import check_audience

    return list(dict.fromkeys(check_audience(url) for url in values))


def parse_claims(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``--claim k=v`` (a string) and ``--claim k:=JSON`` (any JSON value) as a dict."""
    claims: dict[str, Any] = {}
    for pair in pairs or ():
        eq = pair.find("=")
        if eq <= 0:
            raise CliError(f"--claim wants NAME=VALUE or NAME:=JSON, not {pair!r}")
        name, value = pair[:eq], pair[eq + 1 :]
        if name.endswith(":"):
            name = name[:-1]
            try:
                parsed: Any = json.loads(value)
            except ValueError:
                raise CliError(f"--claim {name}:= wants a JSON value, not {value!r}") from None
        else:
            parsed = value
        if not name or any(c.isspace() for c in name):
            raise CliError(f"--claim wants a claim name without spaces, not {name!r}")
        if name in claims:
            raise CliError(f"--claim {name} is given twice")
        claims[name] = parsed
    return claims


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _duration(seconds: float) -> str:
    s = max(0, int(seconds + 0.999))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} days"


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


# --- keys -----------------------------------------------------------------------------------


def _ring_summary(ring: KeyRing) -> str:
    nxt = ring.next
    return f"active {ring.active.kid}" + (f", next {nxt.kid}" if nxt else "")


def cmd_keys_init(args: argparse.Namespace, clock: Clock) -> int:
    from .cli_custody import backend_options

    directory = keys_dir(args)
    backend, settings = backend_options(args)
    ring = init_ring(
        directory,
        bits=args.bits,
        max_lifetime=args.max_lifetime,
        leeway=args.leeway,
        clock=clock,
        backend=backend or "file",
        backend_settings=settings,
    )
    where = "" if ring.backend == "file" else f", keys in {ring.backend}"
    print(
        f"created a key ring in {directory} (RSA {ring.active.bits}, "
        f"tokens live at most {ring.max_lifetime} s{where})"
    )
    print(f"  active  {ring.active.kid}")
    if ring.next:
        print(f"  next    {ring.next.kid}")
    return 0


def cmd_keys_rotate(args: argparse.Namespace, clock: Clock) -> int:
    directory = keys_dir(args)
    from .cli_custody import backend_options

    before = load_ring(directory)
    backend, settings = backend_options(args)
    ring = rotate_ring(
        directory, bits=args.bits, clock=clock, backend=backend, backend_settings=settings
    )
    retired = ring.get(before.active.kid)
    print(f"rotated the key ring in {directory}")
    print(f"  active  {ring.active.kid}  (was next)")
    if ring.next:
        print(f"  next    {ring.next.kid}  (new)")
    if retired is not None:
        until = retired.removable_at(ring.max_lifetime, ring.leeway)
        when = f"; prunable after {_utc(until)}" if until is not None else ""
        print(f"  retired {retired.kid}{when}")
    return 0


def _key_rows(ring: KeyRing, now: float) -> list[dict[str, Any]]:
    rows = []
    order = {"active": 0, "next": 1, "retired": 2}
    for key in sorted(ring.keys, key=lambda k: (order[k.state], -k.created_at)):
        until = key.removable_at(ring.max_lifetime, ring.leeway)
        rows.append(
            {
                "kid": key.kid,
                "state": key.state,
                "bits": key.bits,
                "created_at": key.created_at,
                "activated_at": key.activated_at,
                "retired_at": key.retired_at,
                "removable_at": until,
                "removable_now": until is not None and now >= until,
                "backend": key.backend,
                **({"handle": key.handle} if key.handle is not None else {}),
            }
        )
    return rows


def cmd_keys_list(args: argparse.Namespace, clock: Clock) -> int:
    ring = load_ring(keys_dir(args))
    now = clock()
    rows = _key_rows(ring, now)
    if args.json:
        _print_json(
            {
                "directory": str(ring.directory),
                "max_lifetime": ring.max_lifetime,
                "leeway": ring.leeway,
                "revision": ring.revision,
                "keys": rows,
            }
        )
        return 0
    header: tuple[str, ...] = ("KID", "STATE", "BITS", "CREATED", "REMOVABLE")
    custody = any(row["backend"] != "file" for row in rows)
    if custody:  # a ring of files only lists as it always did
        header = ("KID", "STATE", "BITS", "BACKEND", "CREATED", "REMOVABLE")
    table = [header]
    for row in rows:
        until = row["removable_at"]
        if until is None:
            removable = "-"
        elif row["removable_now"]:
            removable = "now (run 'jwtmcp keys prune')"
        else:
            removable = f"after {_utc(until)} (in {_duration(until - now)})"
        where = (row["backend"],) if custody else ()
        table.append(
            (row["kid"], row["state"], str(row["bits"]), *where, _utc(row["created_at"]), removable)
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    for r in table:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)]
        print("  ".join([*cells, r[-1]]).rstrip())
    return 0


def cmd_keys_prune(args: argparse.Namespace, clock: Clock) -> int:
    directory = keys_dir(args)
    ring, removed = prune_ring(directory, clock=clock)
    for kid in removed:
        print(f"removed {kid}")
    if not removed:
        waits = [
            until
            for k in ring.keys
            if (until := k.removable_at(ring.max_lifetime, ring.leeway)) is not None
        ]
        if waits:
            print(f"nothing to prune yet; the next retired key may go after {_utc(min(waits))}")
        else:
            print("nothing to prune: no retired keys")
    return 0


def cmd_keys_revoke(args: argparse.Namespace, clock: Clock) -> int:
    directory = keys_dir(args)
    before = load_ring(directory)
    target = before.get(args.kid)
    ring = revoke_key(directory, args.kid, clock=clock)
    state = target.state if target else "unknown"
    print(f"revoked {args.kid} (was {state}); tokens it signed no longer verify")
    print(f"  {_ring_summary(ring)}")
    return 0


# --- tokens ---------------------------------------------------------------------------------


def cmd_mint(args: argparse.Namespace, clock: Clock) -> int:
    extra = parse_claims(args.claim)
    tools = [] if args.no_tools else tool_names(args.tools)
    scopes = [s for value in args.scope or () for s in value.split()]
    audiences = audience_urls(args.audience)
    ring = load_ring(keys_dir(args))
    signing_key = ring.active.signing_key
    if args.ttl > ring.max_lifetime:
        # Above the ring's maximum only with the revocation list (docs/revocation.md).
        from .cli_revoke import long_lived_signing_key

        signing_key = long_lived_signing_key(args, ring, args.ttl)
    token = mint(
        signing_key,
        issuer=issuer_url(args),
        subject=args.subject,
        audience=audiences[0] if len(audiences) == 1 else audiences,
        client_id=args.client_id,
        tools=tools,
        scopes=scopes,
        lifetime=args.ttl,
        max_lifetime=signing_key.max_lifetime,
        extra_claims=extra,
        clock=clock,
    )
    sys.stdout.write(token + "\n")
    return 0


def cmd_jwks(args: argparse.Namespace, clock: Clock) -> int:
    ring = load_ring(keys_dir(args))
    _print_json(ring.jwks())
    return 0


def _read_token(value: str) -> str:
    token = sys.stdin.read() if value == "-" else value
    token = token.strip()
    if not token:
        raise CliError("no token given (pass it as TOKEN, or '-' to read it from stdin)")
    return token


def cmd_verify(args: argparse.Namespace, clock: Clock) -> int:
    from .jwks import JwksCache, is_loopback_url
    from .verifier import Verifier

    token = _read_token(args.token)
    source = args.jwks
    key_source: dict[str, Any]
    if source.startswith(("http://", "https://")):
        if source.startswith("http://") and not is_loopback_url(source):
            raise CliError(
                f"--jwks {source} must use https: over plain http anyone on the path can "
                "swap the keys (http is accepted for loopback hosts); or download the JWKS "
                "over a channel you trust and pass --jwks FILE"
            )
        key_source = {"jwks_url": source}
    else:
        # A file holding a PEM public key works too (one key; the signature decides).
        try:
            head = Path(source).read_bytes()[:64]
        except OSError:
            head = b""
        if head.lstrip().startswith(b"-----BEGIN"):
            key_source = {"public_key_pem": Path(source).read_bytes()}
        else:
            key_source = {"jwks_file": source}
    audience: str | list[str] = args.audience[0] if len(args.audience) == 1 else list(args.audience)
    # A one-shot run has no last good keys to keep: the key cache's outage log lines are
    # for servers. A URL that cannot be used is this command's one error line instead.
    jwks_log = logging.getLogger("jwtmcp.jwks")
    level = jwks_log.level
    jwks_log.setLevel(logging.ERROR)
    try:
        verifier = Verifier(
            issuer=issuer_url(args),
            audience=audience,
            clock=clock,
            max_lifetime=args.max_lifetime,
            # Longer-lived tokens are accepted only while checking the revocation list.
            revocations=args.max_lifetime > SHORT_LIVED_MAX,
            **key_source,
        )
        try:
            claims = verifier.verify(token)
        except RevocationsUnavailable:
            listed = verifier.revocations
            assert listed is not None
            listed.wait_idle(listed.policy.fetch_timeout + 1.0)
            why = listed.last_error or f"no answer within {listed.policy.fetch_timeout} s"
            raise RevocationsUnavailable(
                f"cannot fetch the revocation list from {listed.url}: {why}"
            ) from None
        except KeysUnavailable:
            keys = verifier.keys
            if not isinstance(keys, JwksCache):
                raise
            keys.wait_idle(keys.policy.fetch_timeout + 1.0)
            reason = keys.last_error or f"no answer within {keys.policy.fetch_timeout} s"
            raise KeysUnavailable(f"cannot fetch the JWKS from {source}: {reason}") from None
        except TokenError as exc:
            raise TokenError(f"token refused ({exc.code}): {exc.message}", code=exc.code) from None
        finally:
            verifier.close()
    finally:
        jwks_log.setLevel(level)
    _print_json(dict(claims.claims))
    return 0


# --- clients and serve (bodies owned by the issuer helper) -----------------------------------


def cmd_clients_add(args: argparse.Namespace, clock: Clock) -> int:
    from .client_auth import read_jwks_file
    from .clients import add_client

    jwks = read_jwks_file(args.jwks_file) if args.jwks_file else None
    client, secret = add_client(
        clients_file(args),
        args.name,
        tools=tool_names(args.tools),
        audiences=audience_urls(args.audience),
        max_ttl=args.max_ttl,
        subject=args.subject,
        jwks=jwks,
        jwks_uri=args.jwks_uri,
        scopes=[s for value in args.scope or () for s in value.split()],
    )
    if client.has_keys:
        print(f"added client {args.name!r}; it authenticates with private_key_jwt (no secret)")
        return 0
    print(f"added client {args.name!r}; its secret (shown once, only a hash is stored):")
    print(secret)
    return 0


def cmd_clients_list(args: argparse.Namespace, clock: Clock) -> int:
    from .clients import list_clients

    where = clients_file(args)
    clients = list_clients(where)
    if not clients:
        print(f"no clients in {where}")
        return 0
    for client in clients:
        print(client.client_id)
        print(f"  subject    {client.subject}")
        if client.jwks_uri is not None:
            print(f"  keys       private_key_jwt, {client.jwks_uri}")
        elif client.jwks is not None:
            print("  keys       private_key_jwt, registered JWKS")
        print_grants(client.allowed_scopes, client.audiences, client.max_ttl)
    return 0


def print_grants(scopes: Sequence[str], audiences: Sequence[str], max_ttl: int | None) -> None:
    """The ``scopes``, ``audiences`` and ``max ttl`` lines of ``clients list``/``users list``."""
    print(f"  scopes     {' '.join(scopes) or '-'}")
    print(f"  audiences  {' '.join(audiences)}")
    print(f"  max ttl    {f'{max_ttl} s' if max_ttl else 'issuer default'}")


def cmd_clients_remove(args: argparse.Namespace, clock: Clock) -> int:
    from .clients import remove_client

    remove_client(clients_file(args), args.name)
    print(f"removed client {args.name!r}")
    return 0


def cmd_clients_rotate_secret(args: argparse.Namespace, clock: Clock) -> int:
    from .clients import rotate_secret

    secret = rotate_secret(clients_file(args), args.name)
    print(f"new secret for client {args.name!r} (shown once; the old one no longer works):")
    print(secret)
    return 0


def _serve_setting(value: float | None, env: str, default: float, *, integer: bool) -> float:
    """A ``serve`` tuning flag, else ``$env``, else ``default``; never negative."""
    if value is not None:
        return value
    raw = os.environ.get(env)
    if raw is None or raw.strip() == "":
        return default
    try:
        return parse_whole_number(raw) if integer else parse_decimal_number(raw)
    except ValueError:
        raise ConfigError(
            f"${env} must be a number written in ASCII digits, not {raw!r:.40}"
        ) from None


def cmd_serve(args: argparse.Namespace, clock: Clock) -> int:
    from .cli_sessions import ENV_STORE
    from .cli_users import users_file
    from .issuer import (
        DEFAULT_JWKS_MAX_AGE,
        DEFAULT_RATE_BURST,
        DEFAULT_RATE_LIMIT,
        DEFAULT_REVOCATION_MAX_AGE,
        serve,
    )
    from .store import DEFAULT_REFRESH_IDLE_TTL, DEFAULT_REFRESH_MAX_TTL

    refresh_idle = int(
        _serve_setting(
            args.refresh_idle, "JWTMCP_REFRESH_IDLE", DEFAULT_REFRESH_IDLE_TTL, integer=True
        )
    )
    refresh_max = int(
        _serve_setting(
            args.refresh_max, "JWTMCP_REFRESH_MAX", DEFAULT_REFRESH_MAX_TTL, integer=True
        )
    )
    if refresh_idle <= 0 or refresh_max <= 0:
        raise CliError("the refresh token lifetimes must be positive numbers of seconds")

    serve(
        host=args.host,
        port=args.port,
        issuer_url=args.issuer or os.environ.get(ENV_ISSUER) or None,
        keys_dir=str(keys_dir(args)),
        clients_file=str(clients_file(args)),
        users_file=str(users_file(args)),
        store=args.store or os.environ.get(ENV_STORE) or None,
        workers=args.workers,
        metrics=args.metrics,
        audit_log=args.audit_log,
        jwks_max_age=int(
            _serve_setting(
                args.jwks_max_age, "JWTMCP_JWKS_MAX_AGE", DEFAULT_JWKS_MAX_AGE, integer=True
            )
        ),
        default_ttl=int(
            _serve_setting(args.default_ttl, "JWTMCP_DEFAULT_TTL", DEFAULT_LIFETIME, integer=True)
        ),
        rate_limit=_serve_setting(
            args.rate_limit, "JWTMCP_RATE_LIMIT", DEFAULT_RATE_LIMIT, integer=False
        ),
        rate_burst=int(
            _serve_setting(args.rate_burst, "JWTMCP_RATE_BURST", DEFAULT_RATE_BURST, integer=True)
        ),
        refresh_idle_ttl=refresh_idle,
        refresh_max_ttl=refresh_max,
        providers_file=args.providers or os.environ.get("JWTMCP_PROVIDERS") or None,
        policy_file=args.policy or os.environ.get("JWTMCP_POLICY") or None,
        revocation_max_age=int(
            _serve_setting(
                args.revocation_max_age,
                "JWTMCP_REVOCATION_MAX_AGE",
                DEFAULT_REVOCATION_MAX_AGE,
                integer=True,
            )
        ),
    )
    return 0


# --- the parser -----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr (and exit status 2).

    Abbreviated flags are refused: ``--tool`` must not quietly mean ``--tools``. A flag may
    have a second, hidden spelling (:func:`_add_flag`); a required one is checked here,
    since argparse's own check would demand one particular spelling.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.required_flags: list[tuple[str, str]] = []

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        missing = [flag for dest, flag in self.required_flags if getattr(parsed, dest) is None]
        if missing:
            self.error(f"the following arguments are required: {', '.join(missing)}")
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _Formatter(argparse.HelpFormatter):
    """Wraps prose paragraphs to the terminal; keeps indented blocks (examples) as written."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.strip("\n").split("\n\n"):
            if any(line.startswith(" ") for line in paragraph.splitlines()):
                paragraphs.append("\n".join(indent + line for line in paragraph.splitlines()))
            else:
                paragraphs.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(paragraphs) + "\n"


def _is_negative(text: str) -> bool:
    """``-N`` with N a plain number: worth a clearer message than 'not a number'."""
    if not text.startswith("-"):
        return False
    try:
        parse_decimal_number(text[1:])
    except ValueError:
        return False
    return True


def _positive_int(text: str) -> int:
    if _is_negative(text):
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    try:
        value = parse_whole_number(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r:.40}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    if _is_negative(text):
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    try:
        return parse_whole_number(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r:.40}") from None


def _non_negative_float(text: str) -> float:
    if _is_negative(text):
        raise argparse.ArgumentTypeError(f"must not be negative, not {text}")
    try:
        return parse_decimal_number(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r:.40}") from None


def _ttl(text: str) -> int:
    from .cli_revoke import parse_duration

    return parse_duration(text)


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


def _add_keys_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keys",
        metavar="DIR",
        help=f"key ring directory (default: ${ENV_KEYS}, else '{DEFAULT_KEYS_DIR}')",
    )


def _add_clients_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clients",
        metavar="FILE",
        help=f"clients file (default: ${ENV_CLIENTS}, else '{DEFAULT_CLIENTS_FILE}')",
    )


def _add_flag(parser: argparse.ArgumentParser, documented: str, alias: str, **options: Any) -> None:
    """A flag with two spellings: ``documented`` (the word, as in the Python API) is the one
    the help shows; ``alias`` (the JWT claim name: ``--iss``, ``--aud``, ``--sub``) works
    the same and is not listed."""
    assert isinstance(parser, _Parser)
    dest = documented.removeprefix("--")
    if options.pop("required", False):
        parser.required_flags.append((dest, documented))
    parser.add_argument(documented, dest=dest, **options)
    options["help"] = argparse.SUPPRESS
    parser.add_argument(alias, dest=dest, **options)


def _add_issuer_flag(
    parser: argparse.ArgumentParser, default_text: str, help_text: str | None = None
) -> None:
    _add_flag(
        parser,
        "--issuer",
        "--iss",
        metavar="URL",
        help=help_text or f"issuer URL, the 'iss' claim ({default_text})",
    )


def _add_grant_flags(
    parser: argparse.ArgumentParser,
    *,
    holder: str,
    verb: str,
    whose: str,
    required: bool = True,
) -> None:
    """``--tools``, ``--audience`` (``--aud``), ``--max-ttl``: what ``holder`` may be granted.

    Shared by ``clients add`` (``holder="the client"``), ``users add`` and ``users set``
    (``required=False``: each flag given replaces that grant); read them back with
    :func:`tool_names` and :func:`audience_urls`.
    """
    parser.add_argument(
        "--tools",
        action="append",
        required=required,
        metavar="A,B",
        help=f"tools {holder} may {verb}, comma-separated ('*' and 'prefix*' allowed); repeatable",
    )
    _add_flag(
        parser,
        "--audience",
        "--aud",
        action="append",
        required=required,
        metavar="URL",
        help=f"an MCP server (resource URL) {holder} may get tokens for; repeatable",
    )
    parser.add_argument(
        "--max-ttl", type=_positive_int, metavar="SECONDS", help=f"cap on {whose} tokens' lifetime"
    )


MAIN_EPILOG = f"""\
examples (a five-minute tour):
  {PROG} keys init --keys ./keys
  TOKEN=$({PROG} mint --keys ./keys --subject alice --tools add,subtract \\
      --audience http://127.0.0.1:8001/mcp)
  {PROG} jwks --keys ./keys > jwks.json
  {PROG} verify "$TOKEN" --jwks jwks.json --audience http://127.0.0.1:8001/mcp
  {PROG} keys rotate --keys ./keys && {PROG} keys list --keys ./keys

environment:
  {ENV_KEYS}     default for --keys (else '{DEFAULT_KEYS_DIR}')
  {ENV_CLIENTS}  default for --clients (else '{DEFAULT_CLIENTS_FILE}')
  {ENV_ISSUER}   default issuer URL, the 'iss' claim (else '{DEFAULT_ISSUER}')
  {ENV_DEBUG}=1  show a Python traceback for unexpected errors
  JWTMCP_DEFAULT_TTL, JWTMCP_JWKS_MAX_AGE, JWTMCP_RATE_LIMIT, JWTMCP_RATE_BURST,
  JWTMCP_REVOCATION_MAX_AGE
                  defaults for the serve flags of the same names
  JWTMCP_USERS, JWTMCP_STORE, JWTMCP_PROVIDERS, JWTMCP_POLICY, JWTMCP_REVOCATIONS
                  defaults for --users, --store, --providers, --policy, --revocations
  JWTMCP_PKCS11_MODULE, JWTMCP_PKCS11_TOKEN, JWTMCP_PKCS11_PIN, JWTMCP_KMS_ENDPOINT_URL
                  the key backend (keys init --backend pkcs11|kms; docs/key-custody.md)

Run '{PROG} COMMAND --help' for the flags of each command.
"""


def build_parser() -> argparse.ArgumentParser:
    """The whole ``jwtmcp`` argument tree."""
    from .cli_custody import add_backend_flags

    parser = _Parser(
        prog=PROG,
        description="Short-lived RS256 access tokens with per-tool scopes for MCP servers: "
        "a key ring, offline minting and verification, and the issuer service.",
        epilog=MAIN_EPILOG,
        formatter_class=_Formatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    # keys ...
    keys = commands.add_parser(
        "keys",
        help="manage the signing key ring (init, rotate, list, prune, revoke)",
        description="Manage the RSA signing key ring: a directory (mode 0700) holding one "
        "PKCS#8 PEM file per key (mode 0600) and a state file, ring.json.\n\n"
        "Key life cycle: next (published, not signing) -> active (signs tokens) -> retired "
        "(published until every token it signed has expired) -> removed by 'prune'.",
        epilog=f"""\
examples:
  {PROG} keys init --keys ./keys          # an active and a next key
  {PROG} keys list --keys ./keys
  {PROG} keys rotate --keys ./keys        # next -> active, active -> retired, new next
  {PROG} keys prune --keys ./keys         # drop retired keys whose tokens all expired
  {PROG} keys revoke KID --keys ./keys    # drop a (compromised) key at once
""",
        formatter_class=_Formatter,
    )
    keys_cmds = keys.add_subparsers(dest="keys_command", metavar="ACTION", parser_class=_Parser)

    p = keys_cmds.add_parser(
        "init",
        help="create a new ring with an active and a next key",
        description="Create a key ring with one active key (signs tokens) and one next key "
        "(published in the JWKS ahead of the next rotation). Refuses to overwrite a ring.",
        epilog=f"example:\n  {PROG} keys init --keys ./keys --bits 3072 --max-lifetime 900\n",
        formatter_class=_Formatter,
    )
    _add_keys_flag(p)
    p.add_argument(
        "--bits",
        type=_positive_int,
        default=DEFAULT_BITS,
        metavar="N",
        help=f"RSA key size: 2048, 3072 or 4096 (default: {DEFAULT_BITS})",
    )
    p.add_argument(
        "--max-lifetime",
        type=_positive_int,
        default=DEFAULT_MAX_LIFETIME,
        metavar="SECONDS",
        help="the longest lifetime a token minted from this ring may have "
        f"(default: {DEFAULT_MAX_LIFETIME})",
    )
    p.add_argument(
        "--leeway",
        type=_non_negative_int,
        default=DEFAULT_LEEWAY,
        metavar="SECONDS",
        help="clock-skew allowance added to a retired key's grace period "
        f"(default: {DEFAULT_LEEWAY})",
    )
    add_backend_flags(p, default="file")
    p.set_defaults(func=cmd_keys_init)

    p = keys_cmds.add_parser(
        "rotate",
        help="promote next to active, retire active, create a new next",
        description="Rotate the ring: the next key becomes active (verifiers already hold it), "
        "the active key is retired (its tokens keep verifying until they expire), and a new "
        "next key is created. Safe to run from several processes at once.",
        epilog=f"example:\n  {PROG} keys rotate --keys ./keys\n",
        formatter_class=_Formatter,
    )
    _add_keys_flag(p)
    p.add_argument(
        "--bits",
        type=_positive_int,
        metavar="N",
        help="size of the new next key (default: as active)",
    )
    add_backend_flags(p, default=None)
    p.set_defaults(func=cmd_keys_rotate)

    p = keys_cmds.add_parser(
        "list",
        help="show every key: kid, state, created, when a retired key may be removed",
        description="Show every key of the ring with its kid (RFC 7638 thumbprint), state, "
        "size, creation time (UTC) and, for a retired key, when 'prune' may remove it "
        "(retired at + max lifetime + leeway).",
        epilog=f"example:\n  {PROG} keys list --keys ./keys\n  {PROG} keys list --json\n",
        formatter_class=_Formatter,
    )
    _add_keys_flag(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_keys_list)

    p = keys_cmds.add_parser(
        "prune",
        help="remove retired keys whose tokens have all expired",
        description="Remove every retired key whose grace period (retired at + max lifetime "
        "+ leeway) has passed, so no token it signed can still be valid. Safe to run from cron.",
        epilog=f"example:\n  {PROG} keys prune --keys ./keys\n",
        formatter_class=_Formatter,
    )
    _add_keys_flag(p)
    p.set_defaults(func=cmd_keys_prune)

    p = keys_cmds.add_parser(
        "revoke",
        help="remove a key at once (its tokens stop verifying)",
        description="Remove the key KID from the ring and the JWKS now. Tokens it signed stop "
        "verifying as soon as verifiers refresh their keys. Revoking the active key makes the "
        "next key active; a new next key is created whenever needed.",
        epilog=f"example:\n  {PROG} keys revoke NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs\n",
        formatter_class=_Formatter,
    )
    p.add_argument("kid", metavar="KID", help="the kid to revoke (see 'keys list')")
    _add_keys_flag(p)
    p.set_defaults(func=cmd_keys_revoke)

    # mint
    p = commands.add_parser(
        "mint",
        help="mint an access token offline from the ring (prints the token only)",
        description="Mint a signed RS256 access token (RFC 9068 'at+jwt') with the ring's "
        "active key, offline. Prints only the token, so TOKEN=$(jwtmcp mint ...) works.",
        epilog=f"""\
examples:
  {PROG} mint --subject alice --tools add,subtract --audience http://127.0.0.1:8001/mcp
  {PROG} mint --subject ci --tools 'read_*' --audience https://a.example/mcp \\
      --audience https://b.example/mcp
  {PROG} mint --subject bob --tools '*' --audience URL --ttl 60 --claim email=bob@example.com \\
      --claim 'groups:=["ops"]'

Tools become 'tool:<name>' scopes ('*' grants every tool, 'read_*' every tool whose name
starts with 'read_'); give names without the 'tool:' prefix. A token names its tools
(--tools) or says it grants none (--no-tools). --tools and --audience are checked as by
'clients add'. Registered claims (iss, sub, aud, client_id, iat, nbf, exp, jti, scope)
cannot be set with --claim.
""",
        formatter_class=_Formatter,
    )
    _add_keys_flag(p)
    _add_flag(
        p, "--subject", "--sub", required=True, metavar="SUBJECT", help="who the token is for"
    )
    grants = p.add_mutually_exclusive_group(required=True)
    grants.add_argument(
        "--tools",
        action="append",
        metavar="A,B",
        help="tools the token may call, comma-separated; repeatable (required, unless --no-tools)",
    )
    grants.add_argument(
        "--no-tools",
        action="store_true",
        help="mint a token that grants no tool (only the --scope given, if any)",
    )
    p.add_argument(
        "--scope",
        action="append",
        metavar="SCOPES",
        help="other scopes, space-separated, passed through as-is; repeatable",
    )
    _add_flag(
        p,
        "--audience",
        "--aud",
        action="append",
        required=True,
        metavar="URL",
        help="the MCP server's resource URL; repeat for a token several servers accept",
    )
    p.add_argument(
        "--ttl",
        type=_ttl,
        default=DEFAULT_LIFETIME,
        metavar="DURATION",
        help=f"lifetime: seconds, or with s, m, h, d (default: {DEFAULT_LIFETIME}; at most the "
        "ring's max lifetime, or the long-lived maximum of 'revoke enable')",
    )
    p.add_argument(
        "--revocations",
        metavar="FILE",
        help="the revocations file that allows a --ttl above the ring's maximum (default: "
        "$JWTMCP_REVOCATIONS, else revocations.json beside $JWTMCP_CLIENTS/clients.json)",
    )
    p.add_argument(
        "--claim",
        action="append",
        metavar="K=V",
        help="extra claim: NAME=STRING or NAME:=JSON; repeatable",
    )
    p.add_argument("--client-id", metavar="ID", help="the client_id claim (default: the subject)")
    _add_issuer_flag(p, f"default: ${ENV_ISSUER}, else {DEFAULT_ISSUER}")
    p.set_defaults(func=cmd_mint)

    # jwks
    p = commands.add_parser(
        "jwks",
        help="print the public JWKS (next, active and retired keys)",
        description="Print the ring's public JWKS: kty, n, e, kid, use, alg of every "
        "published key. Never any private part.",
        epilog=f"example:\n  {PROG} jwks --keys ./keys > jwks.json\n",
        formatter_class=_Formatter,
    )
    _add_keys_flag(p)
    p.set_defaults(func=cmd_jwks)

    # verify
    p = commands.add_parser(
        "verify",
        help="verify a token against a JWKS file or URL; prints its claims as JSON",
        description="Verify TOKEN like an MCP server would: RS256 signature against the JWKS, "
        "typ at+jwt, issuer and audience (in canonical form), expiry. Prints the claims as "
        "JSON, or one line saying why the token was refused and exit status 1.",
        epilog=f"""\
examples:
  {PROG} verify "$TOKEN" --jwks jwks.json --audience http://127.0.0.1:8001/mcp
  {PROG} verify "$TOKEN" --jwks http://127.0.0.1:8000/.well-known/jwks.json \\
      --issuer http://127.0.0.1:8000 --audience http://127.0.0.1:8001/mcp
  echo "$TOKEN" | {PROG} verify - --jwks jwks.json --audience http://127.0.0.1:8001/mcp
""",
        formatter_class=_Formatter,
    )
    p.add_argument("token", metavar="TOKEN", help="the token, or '-' to read it from stdin")
    p.add_argument(
        "--jwks",
        required=True,
        metavar="URL|FILE",
        help="the issuer's keys: a JWKS URL (http/https), a JWKS file, or a PEM public key file",
    )
    _add_issuer_flag(
        p, "", help_text=f"expected issuer (default: ${ENV_ISSUER}, else {DEFAULT_ISSUER})"
    )
    _add_flag(
        p,
        "--audience",
        "--aud",
        action="append",
        required=True,
        metavar="URL",
        help="this server's resource URL; the token's aud must contain it",
    )
    p.add_argument(
        "--max-lifetime",
        type=_positive_int,
        default=DEFAULT_MAX_LIFETIME,
        metavar="SECONDS",
        help="refuse tokens that live longer than this (exp - iat); match the ring's "
        "'keys init --max-lifetime'; above 3600 (long-lived tokens) the issuer's revocation "
        "list is checked too",
    )
    p.set_defaults(func=cmd_verify)

    # clients ...
    clients = commands.add_parser(
        "clients",
        help="manage machine clients of the issuer (add, list, remove, rotate-secret)",
        description="Manage the machine clients that may ask the issuer for tokens with the "
        "OAuth client_credentials grant. Clients live in a JSON file; only secret hashes are "
        "stored.",
        epilog=f"""\
examples:
  {PROG} clients add ci-bot --tools add,subtract --audience http://127.0.0.1:8001/mcp
  {PROG} clients list
  {PROG} clients rotate-secret ci-bot
  {PROG} clients remove ci-bot
""",
        formatter_class=_Formatter,
    )
    clients_cmds = clients.add_subparsers(
        dest="clients_command", metavar="ACTION", parser_class=_Parser
    )
    p = clients_cmds.add_parser(
        "add",
        help="register a client and print its secret once",
        description="Register client NAME with the tools and audiences it may get tokens "
        "for. Prints its secret once; only a hash is stored.",
        epilog=f"example:\n  {PROG} clients add ci-bot --tools 'read_*' "
        "--audience https://a.example/mcp "
        "--max-ttl 600\n",
        formatter_class=_Formatter,
    )
    p.add_argument("name", metavar="NAME", help="the client id")
    _add_grant_flags(p, holder="the client", verb="get", whose="its")
    _add_flag(
        p, "--subject", "--sub", metavar="SUB", help="the 'sub' of its tokens (default: NAME)"
    )
    key_flags = p.add_mutually_exclusive_group()
    key_flags.add_argument(
        "--jwks-file",
        metavar="FILE",
        help="private_key_jwt instead of a secret: the client's public keys (a JWKS, or one "
        "PEM public key), stored in the clients file",
    )
    key_flags.add_argument(
        "--jwks-uri",
        metavar="URL",
        help="private_key_jwt instead of a secret: the https URL where the client publishes "
        "its JWKS",
    )
    p.add_argument(
        "--scope",
        action="append",
        metavar="SCOPES",
        help="other scopes it may get, space-separated; repeatable (jwtmcp:revoke lets it "
        "use POST /admin/revoke, docs/revocation.md)",
    )
    _add_clients_flag(p)
    p.set_defaults(func=cmd_clients_add)

    p = clients_cmds.add_parser(
        "list",
        help="list registered clients",
        description="List the registered clients: id, subject, tools, audiences and maximum "
        "token lifetime. Secrets are never shown (only their hashes are stored).",
        epilog=f"example:\n  {PROG} clients list --clients ./clients.json\n",
        formatter_class=_Formatter,
    )
    _add_clients_flag(p)
    p.set_defaults(func=cmd_clients_list)

    p = clients_cmds.add_parser(
        "remove",
        help="remove a client",
        description="Remove client NAME: it can get no new tokens. Tokens it already has stay "
        "valid until they expire (at most the ring's max lifetime).",
        epilog=f"example:\n  {PROG} clients remove ci-bot\n",
        formatter_class=_Formatter,
    )
    p.add_argument("name", metavar="NAME", help="the client id")
    _add_clients_flag(p)
    p.set_defaults(func=cmd_clients_remove)

    p = clients_cmds.add_parser(
        "rotate-secret",
        help="give a client a new secret (printed once); the old one stops working",
        description="Give client NAME a new secret and print it once. The old secret stops "
        "working at once; tokens already issued stay valid until they expire.",
        epilog=f"example:\n  {PROG} clients rotate-secret ci-bot\n",
        formatter_class=_Formatter,
    )
    p.add_argument("name", metavar="NAME", help="the client id")
    _add_clients_flag(p)
    p.set_defaults(func=cmd_clients_rotate_secret)

    # users ... (its own module)
    from .cli_users import add_users_commands

    add_users_commands(commands)

    # sessions ... (its own module)
    from .cli_sessions import add_sessions_commands

    add_sessions_commands(commands)

    # policy ... (its own module)
    from .cli_policy import add_policy_commands

    add_policy_commands(commands)
    # revoke ... (its own module)
    from .cli_revoke import add_revoke_commands

    add_revoke_commands(commands)

    # serve
    p = commands.add_parser(
        "serve",
        help="run the issuer service (JWKS, OAuth metadata, /token, sign-in pages)",
        description="Run the token issuer over HTTP: /.well-known/jwks.json, "
        "/.well-known/oauth-authorization-server, POST /token (client_credentials, "
        "authorization_code, refresh_token, jwt-bearer and SEP-990 identity assertions, "
        "token exchange), /authorize with its login and consent pages, POST /register, "
        "the signed revocation list /.well-known/jwtmcp-revocations, POST /admin/revoke and "
        "/healthz. On first start it creates the key ring, a demo client "
        "and a demo user and says so. "
        "Exits with status 69 when it cannot listen (the port is in use).",
        epilog=f"""\
examples:
  {PROG} serve
  {PROG} serve --host 0.0.0.0 --port 8000 --issuer https://auth.example.com --workers 4

connection limits (environment; sizes in bytes, times in seconds):
  JWTMCP_MAX_HEADER_BYTES (32768), JWTMCP_MAX_HEADERS (100): a larger request head gets 431
  JWTMCP_HEADER_TIMEOUT (10), JWTMCP_BODY_TIMEOUT (30): a slower client gets 408
  JWTMCP_MAX_CONNECTIONS_PER_CLIENT (64): more from one address get 429 (raise it behind
  a reverse proxy); JWTMCP_MAX_CONNECTIONS (1000) in all; JWTMCP_KEEP_ALIVE_TIMEOUT (5)
  JWTMCP_FORWARDED_ALLOW_IPS (unset): addresses/networks of reverse proxies whose
  X-Forwarded-For is believed (for per-address limits and logs); unset: none
""",
        formatter_class=_Formatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default: 8000)")
    _add_issuer_flag(p, f"default: ${ENV_ISSUER}, else http://HOST:PORT")
    _add_keys_flag(p)
    _add_clients_flag(p)
    p.add_argument(
        "--users",
        metavar="FILE",
        help="users who may sign in (default: $JWTMCP_USERS, else 'users.json' beside the "
        "clients file; created with a demo user on first run)",
    )
    p.add_argument(
        "--store",
        metavar="PATH|URL",
        help="state store for sign-in: codes, refresh tokens, login counters (default: "
        "$JWTMCP_STORE, else 'jwtmcp-state.db' beside the keys directory); "
        "redis://[:PASSWORD@]HOST[:PORT][/DB], rediss://... or unix:///PATH for replicas "
        "sharing a Redis or Valkey server (also their /token rate limits)",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="worker processes (default: 1)",
    )
    p.add_argument(
        "--default-ttl",
        type=_positive_int,
        metavar="SECONDS",
        help="token lifetime when a client asks for none (default: $JWTMCP_DEFAULT_TTL, "
        "else 300; capped by the client's max ttl and the ring's max lifetime)",
    )
    p.add_argument(
        "--jwks-max-age",
        type=_non_negative_int,
        metavar="SECONDS",
        help="Cache-Control max-age of the JWKS (default: $JWTMCP_JWKS_MAX_AGE, else 300)",
    )
    p.add_argument(
        "--revocation-max-age",
        type=_non_negative_int,
        metavar="SECONDS",
        help="Cache-Control max-age of the revocation list, the bound from 'jwtmcp revoke' to "
        "refusal (default: $JWTMCP_REVOCATION_MAX_AGE, else 60)",
    )
    p.add_argument(
        "--rate-limit",
        type=_non_negative_float,
        metavar="PER_SECOND",
        help="token requests per second per client, 0 = unlimited "
        "(default: $JWTMCP_RATE_LIMIT, else 10)",
    )
    p.add_argument(
        "--rate-burst",
        type=_positive_int,
        metavar="N",
        help="requests a client may make at once before the rate applies "
        "(default: $JWTMCP_RATE_BURST, else 20)",
    )
    p.add_argument(
        "--refresh-idle",
        type=_positive_int,
        metavar="SECONDS",
        help="a refresh token unused this long stops working (default: "
        "$JWTMCP_REFRESH_IDLE, else 1209600 = 14 days)",
    )
    p.add_argument(
        "--refresh-max",
        type=_positive_int,
        metavar="SECONDS",
        help="every refresh-token family ends this long after its sign-in (default: "
        "$JWTMCP_REFRESH_MAX, else 7776000 = 90 days)",
    )
    p.add_argument(
        "--providers",
        metavar="FILE",
        help="upstream OpenID providers people sign in with (default: $JWTMCP_PROVIDERS, "
        "else 'providers.json' beside the clients file, if it exists); see docs/oidc.md",
    )
    p.add_argument(
        "--policy",
        metavar="FILE",
        help="what upstream identities may get (default: $JWTMCP_POLICY, else 'policy.json' "
        "beside the clients file); see docs/policy.md",
    )
    p.add_argument(
        "--metrics",
        default="off",
        metavar="off|on|[HOST:]PORT",
        help="Prometheus metrics: off (default); on = GET /metrics on this port, "
        "unauthenticated; [HOST:]PORT = on their own listener, HOST 127.0.0.1 unless given "
        "(needs --workers 1)",
    )
    p.add_argument(
        "--audit-log",
        metavar="FILE",
        help="append the audit log (one JSON line per issued token) to FILE; '-' = stderr "
        "(default: none)",
    )
    p.set_defaults(func=cmd_serve)

    return parser


def main(argv: Sequence[str] | None = None, *, clock: Clock = time.time) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args, extras = parser.parse_known_args(
        _protect_dash_kids(list(sys.argv[1:] if argv is None else argv))
    )
    if extras:
        # Name the command the stray flag was given to, so its --help is one step away.
        _leaf_parser(parser, args).error(f"unrecognized arguments: {' '.join(extras)}")
    func: Command | None = getattr(args, "func", None)
    if func is None:
        # 'jwtmcp', 'jwtmcp keys' or 'jwtmcp clients' alone: show what can follow.
        _leaf_parser(parser, args).print_help(sys.stderr)
        return 2
    try:
        return func(args, clock)
    except ListenError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)
        return EXIT_CANNOT_LISTEN
    except JwtMcpError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (e.g. '| head'): not an error worth a message.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{PROG}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get(ENV_DEBUG):
            raise
        print(
            f"{PROG}: error: unexpected {type(exc).__name__}: {exc} "
            f"(set {ENV_DEBUG}=1 to see the traceback)",
            file=sys.stderr,
        )
        return 1


_DASH_KID = re.compile(r"-[A-Za-z0-9_-]{42}")


def _protect_dash_kids(argv: list[str]) -> list[str]:
    """Let ``keys revoke -AbC...`` work: a kid may start with '-', which argparse reads as a flag.

    A 43-character argument that looks like a kid and follows ``keys revoke`` is moved behind
    ``--``, where argparse takes it as the positional KID.
    """
    if argv[:2] != ["keys", "revoke"] or "--" in argv:
        return argv
    kids = [a for a in argv[2:] if _DASH_KID.fullmatch(a)]
    if not kids:
        return argv
    rest = [a for a in argv if a not in kids]
    return [*rest, "--", *kids]


def _leaf_parser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The parser of the (sub)command ``args`` names: ``jwtmcp keys rotate`` -> its parser."""
    path = [getattr(args, "command", None)]
    path.append(getattr(args, f"{path[0]}_command", None) if path[0] else None)
    for name in path:
        if name is None:
            break
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) and name in action.choices:
                parser = action.choices[name]
                break
    return parser
