"""``jwtmcp sessions ...``: the refresh-token families of signed-in users.

A *session* is one refresh-token family: the chain of rotated refresh tokens that one
sign-in (one authorization code) started. ``list`` shows the active ones, ``revoke`` ends
them at once: the next refresh fails with ``invalid_grant`` and the client must sign in
again. Access tokens already issued stay valid until they expire (minutes), as jwtmcp's
tokens are verified offline.

Built next to its handlers (one module per command group); ``cli.build_parser`` adds it.
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path
from typing import Any

from .cli import PROG, CliError, _add_keys_flag, _Formatter, _Parser, keys_dir
from .tokens import Clock

ENV_STORE = "JWTMCP_STORE"


def store_location(args: argparse.Namespace) -> str:
    """``--store``, else ``$JWTMCP_STORE``, else ``jwtmcp-state.db`` beside the key ring."""
    from .store import default_store_path

    flag = getattr(args, "store", None) or os.environ.get(ENV_STORE)
    return str(flag) if flag else str(default_store_path(keys_dir(args)))


def _open(args: argparse.Namespace, clock: Clock) -> Any:
    from .store import open_store

    location = store_location(args)
    if "://" not in location and not Path(location).exists():
        raise CliError(
            f"no state store at {location} (nobody signed in yet, or give --store / ${ENV_STORE})"
        )
    return open_store(location, clock=clock)


def _when(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def cmd_sessions_list(args: argparse.Namespace, clock: Clock) -> int:
    store = _open(args, clock)
    try:
        families = store.list_families(subject=args.user, client_id=args.client)
    finally:
        store.close()
    if not families:
        print("no active sessions")
        return 0
    for family in families:
        print(family.family_id)
        print(f"  user       {family.subject}")
        print(f"  client     {family.client_id}")
        print(f"  resource   {family.grant.get('resource', '-')}")
        print(f"  scope      {family.grant.get('scope', '') or '-'}")
        print(f"  signed in  {_when(family.created_at)}")
        print(f"  last used  {_when(family.last_used_at)} (refreshed {family.generation}x)")
        print(f"  ends       {_when(family.expires_at)}")
    return 0


def cmd_sessions_revoke(args: argparse.Namespace, clock: Clock) -> int:
    if args.user is None and args.client is None and args.family is None:
        raise CliError("say which sessions to revoke: --user, --client and/or --family")
    store = _open(args, clock)
    try:
        count = store.revoke_families(
            family_id=args.family,
            subject=args.user,
            client_id=args.client,
            reason="revoked by an operator",
        )
    finally:
        store.close()
    if count == 0:
        print("no active session matched; nothing was revoked")
    else:
        print(f"revoked {count} session(s); their refresh tokens no longer work")
    return 0


def _add_filters(parser: argparse.ArgumentParser, *, family: bool) -> None:
    parser.add_argument("--user", metavar="NAME", help="only this user's sessions (the 'sub')")
    parser.add_argument("--client", metavar="CLIENT_ID", help="only this client's sessions")
    if family:
        parser.add_argument("--family", metavar="ID", help="only this session (from 'list')")
    parser.add_argument(
        "--store",
        metavar="PATH|URL",
        help=f"the state store: a file or a redis:// URL (default: ${ENV_STORE}, else "
        "'jwtmcp-state.db' beside the key ring)",
    )
    _add_keys_flag(parser)


def add_sessions_commands(commands: Any) -> None:
    """Add ``sessions list|revoke`` to the ``jwtmcp`` subcommands."""
    sessions = commands.add_parser(
        "sessions",
        help="list or revoke signed-in sessions (refresh-token families)",
        description="List or revoke the sessions of signed-in users: one refresh-token family "
        "per sign-in, rotated on every refresh. Revoking one makes its next refresh fail; "
        "access tokens already issued stay valid until they expire.",
        epilog=f"""\
examples:
  {PROG} sessions list --user alice
  {PROG} sessions revoke --user alice
  {PROG} sessions revoke --family FAMILY_ID
""",
        formatter_class=_Formatter,
    )
    cmds = sessions.add_subparsers(
        dest="sessions_command", metavar="ACTION", parser_class=_Parser
    )

    p = cmds.add_parser(
        "list",
        help="list active sessions",
        description="List the active sessions (unrevoked, unexpired refresh-token families), "
        "oldest first: id, user, client, resource, scope and times (UTC).",
        epilog=f"example:\n  {PROG} sessions list --client https://app.example/client.json\n",
        formatter_class=_Formatter,
    )
    _add_filters(p, family=False)
    p.set_defaults(func=cmd_sessions_list)

    p = cmds.add_parser(
        "revoke",
        help="revoke sessions: their refresh tokens stop working",
        description="Revoke the active sessions matching every filter given (at least one). "
        "Their refresh tokens stop working at once; the clients must sign in again.",
        epilog=f"example:\n  {PROG} sessions revoke --user alice --client CLIENT_ID\n",
        formatter_class=_Formatter,
    )
    _add_filters(p, family=True)
    p.set_defaults(func=cmd_sessions_revoke)
