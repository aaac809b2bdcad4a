"""How log lines name a client: one helper for every sign-in and grant event.

A stateless registration's ``client_id`` (``dcr1.`` + its signed metadata, RFC 7591) is
hundreds of characters long. Log lines carry a short, stable form instead: ``dcr1:`` and the
first 16 hex digits of the id's SHA-256, the same for every line about that client and
computable by an operator from the full id (``printf %s "$ID" | sha256sum``). The client's
own ``client_name`` goes beside it. Any other id longer than :data:`MAX_LOGGED_ID` is
shortened the same way with ``sha256:``. Values are meant for ``json.dumps``, which escapes
them (the log line stays one line).
"""

from __future__ import annotations

import hashlib

from .registration import REGISTERED_CLIENT_PREFIX

MAX_LOGGED_ID = 200
"""Characters of a client id logged as given; longer ids are logged as a digest."""
MAX_LOGGED_NAME = 100
"""Characters of a client's name logged."""


def short_client_id(client_id: str) -> str:
    """The form of ``client_id`` that log lines carry (see the module docstring)."""
    if client_id.startswith(REGISTERED_CLIENT_PREFIX):
        return "dcr1:" + _digest(client_id)
    if len(client_id) > MAX_LOGGED_ID:
        return "sha256:" + _digest(client_id)
    return client_id


def client_fields(client_id: str | None, client_name: str | None = None) -> dict[str, str | None]:
    """``{"client_id": short form, "client_name": name}`` to merge into a JSON log line.

    ``client_name`` is left out when unknown, empty or only the id again (a client without a
    name is displayed by its id).
    """
    fields: dict[str, str | None] = {
        "client_id": None if client_id is None else short_client_id(client_id)
    }
    if client_name and client_name != client_id:
        fields["client_name"] = client_name[:MAX_LOGGED_NAME]
    return fields


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
