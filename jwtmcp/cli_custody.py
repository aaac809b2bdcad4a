"""``--backend`` and its settings for ``jwtmcp keys init`` and ``keys rotate``.

The backend named here makes the ring's new keys; its settings are written into the ring's
``ring.json`` (never a PIN or a credential), so every later ``keys``, ``mint`` and ``serve``
finds the keys by themselves. See docs/key-custody.md.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from .errors import ConfigError
from .signers import FILE_BACKEND, PKCS11_DEFAULT_PIN_ENV, backend_names

ENV_PKCS11_MODULE = "JWTMCP_PKCS11_MODULE"
ENV_PKCS11_TOKEN = "JWTMCP_PKCS11_TOKEN"  # noqa: S105 - a variable's name, not a secret
ENV_KMS_ENDPOINT = "JWTMCP_KMS_ENDPOINT_URL"


def add_backend_flags(parser: argparse.ArgumentParser, *, default: str | None) -> None:
    """The ``--backend`` option and each built-in backend's settings.

    ``default`` is ``file`` for ``keys init`` and None for ``keys rotate`` (keep the ring's).
    """
    group = parser.add_argument_group("key custody (docs/key-custody.md)")
    group.add_argument(
        "--backend",
        default=default,
        metavar="NAME",
        help="where new keys are generated and stay: file (PEM files in the ring, the "
        "default), pkcs11 (an HSM token), kms (AWS KMS)"
        + ("" if default else "; default: as the ring says"),
    )
    group.add_argument(
        "--pkcs11-module",
        metavar="PATH",
        help=f"pkcs11: the PKCS#11 library (default: ${ENV_PKCS11_MODULE})",
    )
    group.add_argument(
        "--pkcs11-token",
        metavar="LABEL",
        help=f"pkcs11: the token's label (default: ${ENV_PKCS11_TOKEN})",
    )
    group.add_argument(
        "--pkcs11-pin-env",
        metavar="VAR",
        help="pkcs11: the environment variable holding the user PIN "
        f"(default: {PKCS11_DEFAULT_PIN_ENV})",
    )
    group.add_argument(
        "--pkcs11-pin-file",
        metavar="PATH",
        help="pkcs11: a file (mode 0600) holding the user PIN, instead of a variable",
    )
    group.add_argument(
        "--kms-region",
        metavar="REGION",
        help="kms: the AWS region (default: the standard AWS settings, e.g. $AWS_REGION)",
    )
    group.add_argument(
        "--kms-endpoint-url",
        metavar="URL",
        help=f"kms: a KMS endpoint other than AWS's (an emulator; default: ${ENV_KMS_ENDPOINT})",
    )


def backend_options(args: argparse.Namespace) -> tuple[str | None, dict[str, Any] | None]:
    """(backend name, its settings) from the flags; (None, None) to keep the ring's.

    Raises :class:`ConfigError` for an unknown backend or a missing setting.
    """
    name: str | None = args.backend
    if name is None:
        return None, None
    known = (FILE_BACKEND, *backend_names())
    if name not in known:
        raise ConfigError(f"unknown key backend {name!r}; known: {', '.join(known)}")
    if name == FILE_BACKEND:
        return name, None
    if name == "pkcs11":
        module = args.pkcs11_module or os.environ.get(ENV_PKCS11_MODULE)
        token = args.pkcs11_token or os.environ.get(ENV_PKCS11_TOKEN)
        if not module or not token:
            raise ConfigError(
                "--backend pkcs11 needs --pkcs11-module PATH and --pkcs11-token LABEL "
                f"(or ${ENV_PKCS11_MODULE} and ${ENV_PKCS11_TOKEN})"
            )
        if args.pkcs11_pin_env and args.pkcs11_pin_file:
            raise ConfigError("give either --pkcs11-pin-env or --pkcs11-pin-file, not both")
        settings: dict[str, Any] = {"module": os.path.abspath(module), "token": token}
        if args.pkcs11_pin_file:
            settings["pin_file"] = os.path.abspath(args.pkcs11_pin_file)
        else:
            settings["pin_env"] = args.pkcs11_pin_env or PKCS11_DEFAULT_PIN_ENV
        return name, settings
    if name == "kms":
        settings = {}
        if args.kms_region:
            settings["region"] = args.kms_region
        endpoint = args.kms_endpoint_url or os.environ.get(ENV_KMS_ENDPOINT)
        if endpoint:
            settings["endpoint_url"] = endpoint
        return name, settings
    return name, None  # a plugged-in backend: the ring's settings of it, else its defaults
