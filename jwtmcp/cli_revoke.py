"""``jwtmcp revoke ...``: cut off a token, a subject or a client now (docs/revocation.md).

Built next to its handlers (one module per command group); ``cli.build_parser`` adds it.
Revocations are written to the revocations file beside the clients file, which a running
issuer watches and publishes as its signed revocation list (:mod:`jwtmcp.revocation`);
servers that check the list refuse the revoked tokens within its max-age (60 s by default).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .cli import (
    PROG,
    CliError,
    _add_clients_flag,
    _add_keys_flag,
    _Formatter,
    _Parser,
    clients_file,
    keys_dir,
)
from .keys import KeyRing, load_ring
from .tokens import Clock, SigningKey

ENV_REVOCATIONS = "JWTMCP_REVOCATIONS"
_DURATION = re.compile(r"([0-9]{1,9})([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds in ``text``: a whole number, optionally followed by ``s``, ``m``, ``h`` or
    ``d`` (``300``, ``90s``, ``15m``, ``12h``, ``30d``); argparse type. Raises
    ``argparse.ArgumentTypeError`` for anything else or for zero."""
    match = _DURATION.fullmatch(text.strip())
    seconds = int(match.group(1)) * _UNITS[match.group(2)] if match else 0
    if seconds <= 0:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r:.40}: use positive whole seconds, or a number with "
            "s, m, h or d (e.g. 300, 15m, 12h, 30d)"
        )
    return seconds


def revocations_file(args: argparse.Namespace) -> Path:
    """``--revocations``, else ``$JWTMCP_REVOCATIONS``, else ``revocations.json`` beside the
    clients file (``--clients``/``$JWTMCP_CLIENTS``)."""
    from .revocations_file import revocations_file_beside

    flag = getattr(args, "revocations", None) or os.environ.get(ENV_REVOCATIONS)
    return Path(flag) if flag else revocations_file_beside(clients_file(args))


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _span(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def long_lived_signing_key(args: argparse.Namespace, ring: KeyRing, ttl: int) -> SigningKey:
    """The ring's active key, allowed to sign a token of ``ttl`` seconds above the ring's
    maximum lifetime: only when the revocations file allows long-lived tokens that long
    (``jwtmcp revoke enable --max-ttl``). Raises CliError in one line otherwise."""
    from .revocations_file import load_revocations

    path = revocations_file(args)
    allowed = load_revocations(path).long_lived_max_lifetime
    if allowed is None:
        raise CliError(
            f"--ttl {ttl} is above the maximum token lifetime of this ring, "
            f"{ring.max_lifetime} s; a longer-lived token is safe only with the revocation "
            f"list: run '{PROG} revoke enable --max-ttl {_span(ttl)}' (see docs/revocation.md)"
        )
    if ttl > allowed:
        raise CliError(
            f"--ttl {_span(ttl)} is above the long-lived maximum of {_span(allowed)} set in "
            f"{path} ('{PROG} revoke enable --max-ttl' raises it)"
        )
    return dataclasses.replace(ring.active.signing_key, max_lifetime=allowed)


# --- commands ------------------------------------------------------------------------------


def cmd_revoke(args: argparse.Namespace, clock: Clock) -> int:
    from .revocation_issuer import long_lived_horizon
    from .revocations_file import Kind, load_revocations, revoke

    given: tuple[tuple[Kind, str | None], ...] = (
        ("sub", args.sub),
        ("client_id", args.client),
        ("jti", args.jti),
    )
    chosen = [(kind, value) for kind, value in given if value is not None]
    if len(chosen) != 1:
        raise CliError(f"give exactly one of --sub, --client or --jti (or '{PROG} revoke list')")
    kind, value = chosen[0]
    if args.until is not None and kind != "jti":
        raise CliError("--until is for --jti only (the token's exp, in epoch seconds)")
    path = revocations_file(args)
    ring = load_ring(keys_dir(args))
    horizon = long_lived_horizon(ring, load_revocations(path), clock())
    entry, state = revoke(
        path,
        kind,
        value,
        horizon=horizon,
        reason=args.reason or "",
        until=args.until,
        clock=clock,
    )
    what = {"sub": "subject", "client_id": "client", "jti": "token (jti)"}[kind]
    print(f"revoked {what} {value!r} in {path} (list sequence {state.sequence})")
    if entry.before is not None:
        print(f"  refused: every token of this {what} issued at or before {_utc(entry.before)}")
        print(
            f"  new tokens are still issued: remove the {what} "
            f"('{PROG} clients remove' / '{PROG} users remove') to stop them too"
        )
    print(f"  listed until {_utc(entry.until)}, when no token it covers can still be valid")
    print(
        "  servers checking the revocation list refuse it within the list's max-age "
        "(60 s by default)"
    )
    return 0


def cmd_revoke_list(args: argparse.Namespace, clock: Clock) -> int:
    from .revocations_file import load_revocations

    path = revocations_file(args)
    state = load_revocations(path)
    now = clock()
    live = state.live(now)
    if args.json:
        doc: dict[str, Any] = {
            "file": str(path),
            "sequence": state.sequence,
            "long_lived_max_lifetime": state.long_lived_max_lifetime,
            "entries": [dataclasses.asdict(e) for e in live],
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return 0
    long_lived = state.long_lived_max_lifetime
    print(
        f"{path}: sequence {state.sequence}, long-lived tokens "
        + (f"allowed up to {_span(long_lived)}" if long_lived else "not allowed")
    )
    if not live:
        print("nothing revoked")
        return 0
    print(f"{'KIND':<10} {'VALUE':<44} {'ISSUED AT OR BEFORE':<21} {'LISTED UNTIL':<21} REASON")
    for e in live:
        before = _utc(e.before) if e.before is not None else "-"
        # repr: a value with odd characters stays on one line, quoted.
        print(f"{e.kind:<10} {e.value!r:<44} {before:<21} {_utc(e.until):<21} {e.reason!r}")
    return 0


def cmd_revoke_enable(args: argparse.Namespace, clock: Clock) -> int:
    from .revocations_file import set_long_lived

    path = revocations_file(args)
    set_long_lived(path, args.max_ttl, clock=clock)
    print(
        f"long-lived tokens allowed up to {_span(args.max_ttl)} in {path}: "
        f"'{PROG} mint --ttl' may now go that high"
    )
    print(
        "  every server accepting them must check the revocation list (revocations=True) "
        "and raise its max_lifetime"
    )
    return 0


def cmd_revoke_disable(args: argparse.Namespace, clock: Clock) -> int:
    from .revocations_file import set_long_lived

    path = revocations_file(args)
    set_long_lived(path, None, clock=clock)
    print(f"long-lived tokens no longer allowed in {path}; tokens minted before stay valid")
    return 0


# --- the parser ----------------------------------------------------------------------------


def _add_file_flags(parser: argparse.ArgumentParser) -> None:
    _add_clients_flag(parser)
    parser.add_argument(
        "--revocations",
        metavar="FILE",
        help=f"the revocations file (default: ${ENV_REVOCATIONS}, else revocations.json "
        "beside the clients file)",
    )


def add_revoke_commands(commands: Any) -> None:
    """Add ``revoke [--sub|--client|--jti]``, ``revoke list|enable|disable``."""
    revoke = commands.add_parser(
        "revoke",
        help="revoke a subject's, a client's or one token's access tokens now",
        description="Revoke access tokens before they expire. --sub and --client refuse "
        "every token of that subject or client issued until now; --jti one token. The "
        "issuer publishes the revocations as a signed list; MCP servers that check it "
        "(protected_server(..., revocations=True)) refuse the tokens within the list's "
        "max-age (60 s by default). Tokens issued later are not affected.",
        epilog=f"""\
examples:
  {PROG} revoke --sub alice --reason 'laptop stolen'
  {PROG} revoke --client ci-bot
  {PROG} revoke --jti iXSgvgH5rY18mGIxU_E-M-Twf9cbw6cvJPi5DlEM5wQ --until 1796001764
  {PROG} revoke list
  {PROG} revoke enable --max-ttl 30d     # allow 'mint --ttl 30d' (servers check the list)
""",
        formatter_class=_Formatter,
    )
    revoke.add_argument("--sub", metavar="SUBJECT", help="revoke every token of this subject")
    revoke.add_argument("--client", metavar="CLIENT_ID", help="revoke every token of this client")
    revoke.add_argument("--jti", metavar="ID", help="revoke the one token with this jti")
    revoke.add_argument(
        "--until",
        type=int,
        metavar="EPOCH",
        help="with --jti: the token's exp, so the entry leaves the list then (default: now "
        "plus the longest token lifetime)",
    )
    revoke.add_argument("--reason", metavar="TEXT", help="why (kept in the file, listed)")
    _add_keys_flag(revoke)
    _add_file_flags(revoke)
    revoke.set_defaults(func=cmd_revoke)
    cmds = revoke.add_subparsers(dest="revoke_command", metavar="[ACTION]", parser_class=_Parser)

    p = cmds.add_parser(
        "list",
        help="list the revocations still in force",
        description="List the revocations that can still cover a valid token: kind, value, "
        "the issue time up to which tokens are refused, until when it is listed, the reason.",
        epilog=f"example:\n  {PROG} revoke list --json\n",
        formatter_class=_Formatter,
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_file_flags(p)
    p.set_defaults(func=cmd_revoke_list)

    p = cmds.add_parser(
        "enable",
        help="allow long-lived tokens ('mint --ttl 30d'), safe only with the revocation list",
        description="Declare that the servers of this issuer check the revocation list, and "
        "allow 'jwtmcp mint --ttl' up to --max-ttl, above the ring's maximum lifetime: for "
        "clients that can only send a static Authorization header. Such a token stays valid "
        "until it expires unless it is revoked, so every server accepting it must check the "
        "list (and accept its lifetime: max_lifetime).",
        epilog=f"example:\n  {PROG} revoke enable --max-ttl 30d\n",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "--max-ttl",
        type=parse_duration,
        required=True,
        metavar="DURATION",
        help="the longest lifetime allowed: seconds, or with s, m, h, d (e.g. 30d)",
    )
    _add_file_flags(p)
    p.set_defaults(func=cmd_revoke_enable)

    p = cmds.add_parser(
        "disable",
        help="stop allowing long-lived tokens",
        description="Stop allowing 'jwtmcp mint --ttl' above the ring's maximum lifetime.",
        epilog=f"example:\n  {PROG} revoke disable\n",
        formatter_class=_Formatter,
    )
    _add_file_flags(p)
    p.set_defaults(func=cmd_revoke_disable)
