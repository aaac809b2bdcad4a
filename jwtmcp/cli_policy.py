"""``jwtmcp policy ...``: check what a verified identity would get from the policy file.

Built next to its handler (one module per command group); ``cli.build_parser`` adds it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .cli import PROG, _add_clients_flag, _Formatter, _Parser, clients_file, print_grants
from .errors import JwtMcpError
from .tokens import Clock

ENV_POLICY = "JWTMCP_POLICY"
ENV_PROVIDERS = "JWTMCP_PROVIDERS"

EXIT_GRANTED = 0
EXIT_DENIED = 1
EXIT_BAD_FILE = 2


def policy_file(args: argparse.Namespace) -> Path:
    """``--policy``, else ``$JWTMCP_POLICY``, else ``policy.json`` beside the clients file."""
    from .policy import policy_file_beside

    flag = getattr(args, "policy", None) or os.environ.get(ENV_POLICY)
    return Path(flag) if flag else policy_file_beside(clients_file(args))


def _provider_view(
    args: argparse.Namespace, claims: dict[str, Any], source: str
) -> tuple[dict[str, Any], list[str], str | None]:
    """The claims as sign-in gives them to the policy for ``source`` ``oidc:ID``: through
    the provider's entry (``groups_claim``, the token's own claims dropped), with the lines
    to print and why ``allowed_email_domains`` refuses them (None: it does not). Other
    sources, and no providers file: the claims as they are.

    Raises :class:`~jwtmcp.errors.JwtMcpError` for an invalid providers file or one that
    names no such provider."""
    from .oidc import FederatedSource, load_providers, providers_file_beside, upstream_claims
    from .policy import Policy

    if not source.startswith("oidc:"):
        return claims, [], None
    flag = getattr(args, "providers", None) or os.environ.get(ENV_PROVIDERS)
    path = Path(flag) if flag else providers_file_beside(clients_file(args))
    if not flag and not path.exists():
        return claims, [f"(no providers file at {path}: the claims are read as they are)"], None
    provider_id = source.removeprefix("oidc:")
    provider = load_providers(path, secrets=False).providers.get(provider_id)
    if provider is None:
        raise JwtMcpError(f"the providers file {path} names no provider {provider_id!r}")
    seen = upstream_claims(provider, claims)
    lines = [f"provider {provider_id} in {path}"]
    if provider.groups_claim != "groups":
        lines.append(f"  groups   from its claim {provider.groups_claim!r}")
    refusal = FederatedSource(provider, lambda: Policy(())).refusal(seen)
    if refusal is not None:
        domains = ", ".join(provider.allowed_email_domains)
        lines.append(f"  refused by its allowed_email_domains ({domains}): {refusal}")
    return seen, lines, refusal


def _read_claims(path: str) -> dict[str, Any]:
    from .strict_json import STRICT_DECODER

    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise JwtMcpError(f"cannot read the claims file {path}: {exc.strerror}") from None
    try:
        claims = STRICT_DECODER.decode(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise JwtMcpError(f"the claims file {path} is not valid JSON") from None
    if not isinstance(claims, dict):
        raise JwtMcpError(f"the claims file {path} must hold a JSON object of claims")
    return claims


def cmd_policy_check(args: argparse.Namespace, clock: Clock) -> int:
    from .policy import load_policy

    try:
        claims = _read_claims(args.claims)
        policy = load_policy(policy_file(args))
    except JwtMcpError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_FILE
    source = args.source
    if source is None:
        iss = claims.get("iss")
        if not isinstance(iss, str) or not iss:
            print(
                f"{PROG}: error: the claims hold no 'iss'; give --source (e.g. --source oidc:corp)",
                file=sys.stderr,
            )
            return EXIT_BAD_FILE
        source = f"issuer:{iss}"
    try:
        claims, provider_lines, refusal = _provider_view(args, claims, source)
    except JwtMcpError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)
        return EXIT_BAD_FILE
    print(f"policy   {policy.path}")
    print(f"source   {source}")
    for line in provider_lines:
        print(line)
    if refusal is not None:
        print("denied: sign-in refuses before any rule is asked; no token would be issued")
        return EXIT_DENIED
    for line in policy.explain(claims, source=source):
        print(f"  {line}")
    grant = policy.evaluate(claims, source=source)
    if grant is None:
        print("denied: no token would be issued")
        return EXIT_DENIED
    from .tokens import tool_scopes

    print(f"granted by {', '.join(repr(r) for r in grant.rules)}:")
    print_grants(tool_scopes(grant.tools), grant.audiences, grant.max_ttl)
    return EXIT_GRANTED


def add_policy_commands(commands: Any) -> None:
    """Add ``policy check`` to the ``jwtmcp`` subcommands."""
    policy = commands.add_parser(
        "policy",
        help="check the policy that maps verified identities to tools (check)",
        description="The policy file maps identities verified elsewhere (upstream OpenID "
        "sign-in, workload assertions) to tools, audiences and a lifetime cap; deny by "
        "default. See docs/policy.md.",
        epilog=f"example:\n  {PROG} policy check --claims alice.json --source oidc:corp\n",
        formatter_class=_Formatter,
    )
    cmds = policy.add_subparsers(dest="policy_command", metavar="ACTION", parser_class=_Parser)
    p = cmds.add_parser(
        "check",
        help="show what an identity's claims would get, and which rules matched and why",
        description="Evaluate the policy for the claims in FILE (a JSON object, as an "
        "upstream ID token or assertion would carry them; '-' reads stdin) and print every "
        "rule with why it matched or not, then the grant. Exit status: 0 granted, 1 denied, "
        "2 when the policy or the claims file is invalid.",
        epilog=f"""\
examples:
  {PROG} policy check --claims alice.json --source oidc:corp
  {PROG} policy check --claims ci-job.json   # source issuer:<the claims' iss>
""",
        formatter_class=_Formatter,
    )
    p.add_argument("--claims", required=True, metavar="FILE", help="JSON object of claims")
    p.add_argument(
        "--source",
        metavar="SOURCE",
        help="where the claims come from: oidc:<provider id> or issuer:<issuer URL> "
        "(default: issuer:<the claims' iss>)",
    )
    p.add_argument(
        "--policy",
        metavar="FILE",
        help=f"policy file (default: ${ENV_POLICY}, else 'policy.json' beside the clients file)",
    )
    p.add_argument(
        "--providers",
        metavar="FILE",
        help=f"providers file, read for an oidc:<provider id> source as sign-in reads it "
        f"(groups_claim, allowed_email_domains; no secret needed) (default: ${ENV_PROVIDERS}, "
        "else 'providers.json' beside the clients file, if it exists)",
    )
    _add_clients_flag(p)
    p.set_defaults(func=cmd_policy_check)
