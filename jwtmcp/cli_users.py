"""``jwtmcp users ...``: the people who may sign in on the issuer's login page.

Built next to its handlers (one module per command group); ``cli.build_parser`` adds it.
The users module (and Argon2) is imported only when a ``users`` command runs.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any

from .cli import (
    PROG,
    CliError,
    _add_clients_flag,
    _add_grant_flags,
    _Formatter,
    _Parser,
    audience_urls,
    clients_file,
    print_grants,
    tool_names,
)
from .tokens import Clock

ENV_USERS = "JWTMCP_USERS"


def users_file(args: argparse.Namespace) -> Path:
    """``--users``, else ``$JWTMCP_USERS``, else ``users.json`` beside the clients file."""
    from .users import users_file_beside

    flag = getattr(args, "users", None) or os.environ.get(ENV_USERS)
    return Path(flag) if flag else users_file_beside(clients_file(args))


def _read_password_line() -> str:
    """One line from stdin, without its line ending (``printf '%s\\n' "$PW" | ...``).

    On a terminal the password is asked for twice without echo instead.
    """
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise CliError("the two passwords differ")
        return password
    line = sys.stdin.readline()
    password = line[:-1] if line.endswith("\n") else line
    password = password[:-1] if password.endswith("\r") else password
    if not password:
        raise CliError("--password-stdin read no password (give it as one line on stdin)")
    return password


def _password(args: argparse.Namespace) -> str:
    """``--password-stdin``'s line, else a new strong password (see :func:`_show_generated`)."""
    from .users import new_password

    return _read_password_line() if args.password_stdin else new_password()


def _show_generated(args: argparse.Namespace, password: str) -> None:
    """Print a generated password once; one read from stdin is never echoed."""
    if not args.password_stdin:
        print("their password (shown once, only an Argon2id hash is stored):")
        print(password)


def cmd_users_add(args: argparse.Namespace, clock: Clock) -> int:
    from .users import add_user

    password = _password(args)
    where = users_file(args)
    user = add_user(
        where,
        args.name,
        password=password,
        tools=tool_names(args.tools),
        audiences=audience_urls(args.audience),
        max_ttl=args.max_ttl,
        display_name=args.display_name,
        email=args.email,
        clock=clock,
    )
    print(f"added user {user.name!r} to {where}")
    _show_generated(args, password)
    return 0


def cmd_users_list(args: argparse.Namespace, clock: Clock) -> int:
    from .users import list_users

    where = users_file(args)
    users = list_users(where)
    if not users:
        print(f"no users in {where}")
        return 0
    for user in users:
        print(user.name)
        who = [user.display_name or "", f"<{user.email}>" if user.email else ""]
        if any(who):
            print(f"  who        {' '.join(w for w in who if w)}")
        print_grants(user.allowed_scopes, user.audiences, user.max_ttl)
    return 0


def cmd_users_remove(args: argparse.Namespace, clock: Clock) -> int:
    from .users import remove_user

    remove_user(users_file(args), args.name)
    print(f"removed user {args.name!r}; they can no longer sign in")
    return 0


def cmd_users_set_password(args: argparse.Namespace, clock: Clock) -> int:
    from .users import set_password

    password = _password(args)
    set_password(users_file(args), args.name, password)
    print(f"new password set for user {args.name!r}; the old one no longer works")
    _show_generated(args, password)
    return 0


def cmd_users_set(args: argparse.Namespace, clock: Clock) -> int:
    from .users import update_user

    if args.tools is None and args.audience is None and args.max_ttl is None:
        raise CliError("users set changes nothing; give --tools, --audience or --max-ttl")
    where = users_file(args)
    user = update_user(
        where,
        args.name,
        tools=None if args.tools is None else tool_names(args.tools),
        audiences=None if args.audience is None else audience_urls(args.audience),
        max_ttl=args.max_ttl,
    )
    print(f"updated user {user.name!r} in {where}; the password is unchanged")
    print_grants(user.allowed_scopes, user.audiences, user.max_ttl)
    print(
        "their next sign-in and the next refresh of their sessions get these grants; "
        "access tokens already issued keep theirs until they expire"
    )
    return 0


def _add_users_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--users",
        metavar="FILE",
        help=f"users file (default: ${ENV_USERS}, else 'users.json' beside the clients file)",
    )
    _add_clients_flag(parser)


def _add_password_stdin_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password as one line from stdin (at least 12 characters) instead of "
        "generating a strong one and printing it once",
    )


def add_users_commands(commands: Any) -> None:
    """Add ``users add|list|set|remove|set-password`` to the ``jwtmcp`` subcommands."""
    users = commands.add_parser(
        "users",
        help="manage people who sign in on the login page (add, list, set, remove, "
        "set-password)",
        description="Manage the people who may sign in to the issuer's login page (the OAuth "
        "authorization code flow of interactive MCP clients). Users live in a JSON file "
        "beside the clients file; only Argon2id password hashes are stored. Each user has "
        "the tools and audiences they may approve, as a client does.",
        epilog=f"""\
examples:
  {PROG} users add alice --tools add,subtract --audience http://127.0.0.1:8001/mcp
  printf '%s\\n' "$PASSWORD" | {PROG} users add bob --tools '*' --audience URL --password-stdin
  {PROG} users list
  {PROG} users set alice --tools add --max-ttl 600
  {PROG} users set-password alice
  {PROG} users remove alice
""",
        formatter_class=_Formatter,
    )
    cmds = users.add_subparsers(dest="users_command", metavar="ACTION", parser_class=_Parser)

    p = cmds.add_parser(
        "add",
        help="add a user (a strong password is generated and printed once)",
        description="Add user NAME with the tools and audiences they may approve. Without "
        "--password-stdin a strong password is generated and printed once; only its "
        "Argon2id hash is stored.",
        epilog=f"example:\n  {PROG} users add alice --tools 'read_*' --audience "
        "https://a.example/mcp --display-name 'Alice Example' --email alice@example.com\n",
        formatter_class=_Formatter,
    )
    p.add_argument("name", metavar="NAME", help="the user name (the tokens' 'sub')")
    _add_grant_flags(p, holder="the user", verb="approve", whose="their")
    p.add_argument("--display-name", metavar="TEXT", help="the 'name' claim of their tokens")
    p.add_argument("--email", metavar="ADDRESS", help="the 'email' claim of their tokens")
    _add_password_stdin_flag(p)
    _add_users_flag(p)
    p.set_defaults(func=cmd_users_add)

    p = cmds.add_parser(
        "list",
        help="list users",
        description="List the users: name, tools, audiences and maximum token lifetime. "
        "Passwords are never shown (only their hashes are stored).",
        epilog=f"example:\n  {PROG} users list --users ./users.json\n",
        formatter_class=_Formatter,
    )
    _add_users_flag(p)
    p.set_defaults(func=cmd_users_list)

    p = cmds.add_parser(
        "set",
        help="change a user's tools, audiences or token lifetime (not their password)",
        description="Change what user NAME may approve: each of --tools, --audience and "
        "--max-ttl given replaces that grant; the others, the password and the name and "
        "email claims stay. Their next sign-in and the next refresh of their sessions get "
        "the new grants; access tokens already issued keep theirs until they expire.",
        epilog=f"example:\n  {PROG} users set alice --tools add,subtract --audience "
        "https://a.example/mcp --max-ttl 600\n",
        formatter_class=_Formatter,
    )
    p.add_argument("name", metavar="NAME", help="the user name")
    _add_grant_flags(p, holder="the user", verb="approve", whose="their", required=False)
    _add_users_flag(p)
    p.set_defaults(func=cmd_users_set)

    p = cmds.add_parser(
        "remove",
        help="remove a user",
        description="Remove user NAME: they can no longer sign in. Access tokens they hold "
        "stay valid until they expire (at most the ring's max lifetime).",
        epilog=f"example:\n  {PROG} users remove alice\n",
        formatter_class=_Formatter,
    )
    p.add_argument("name", metavar="NAME", help="the user name")
    _add_users_flag(p)
    p.set_defaults(func=cmd_users_remove)

    p = cmds.add_parser(
        "set-password",
        help="give a user a new password; the old one stops working",
        description="Give user NAME a new password: generated and printed once, or read "
        "from stdin with --password-stdin. The old password stops working at once.",
        epilog=f"example:\n  {PROG} users set-password alice\n",
        formatter_class=_Formatter,
    )
    p.add_argument("name", metavar="NAME", help="the user name")
    _add_password_stdin_flag(p)
    _add_users_flag(p)
    p.set_defaults(func=cmd_users_set_password)
