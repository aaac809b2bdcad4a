"""JSON decoding that refuses duplicate member names, shared by every parser in jwtmcp.

RFC 8259 §4 only says names SHOULD be unique, and parsers disagree on which duplicate wins
(the stdlib and orjson keep the last one, others the first). A document read one way by
jwtmcp and another way by whatever checked it before - ``{"redirect_uris": ["javascript:x"],
"redirect_uris": ["http://localhost/cb"]}``, a token with two ``sub`` claims, a JSON-RPC body
with two ``name`` members - is refused instead of guessed at.

* :func:`unique_members` is the ``object_pairs_hook`` of every stdlib decoder here (token
  parts in :mod:`jwtmcp.verifier`, JWK sets in :mod:`jwtmcp.jwks`, MCP bodies in
  :mod:`jwtmcp.middleware`); it raises :class:`DuplicateMember`.
* :data:`STRICT_DECODER` adds refusing ``NaN``/``Infinity``.
* :func:`loads_document` reads untrusted documents (``POST /register`` bodies, client
  metadata documents) as strictly as orjson does and without duplicates.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["STRICT_DECODER", "DuplicateMember", "loads_document", "unique_members"]


class DuplicateMember(ValueError):
    """A JSON object repeats a member name (at any depth)."""


def unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` building the object; raises :class:`DuplicateMember` when two
    members have the same name (after unescaping: ``"sub"`` and ``"s\\u0075b"`` are one)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise DuplicateMember("duplicate JSON member names")
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


STRICT_DECODER = json.JSONDecoder(object_pairs_hook=unique_members, parse_constant=_no_constants)
"""Refuses duplicate member names (:class:`DuplicateMember`) and ``NaN``/``Infinity``
(:class:`ValueError`). One instance: ``json.loads(..., object_pairs_hook=...)`` builds a
decoder per call."""


def loads_document(data: bytes) -> Any:
    """Parse an untrusted JSON document (bytes, UTF-8).

    Exactly as strict as orjson (RFC 8259: UTF-8 only, no ``NaN``/``Infinity``, no lone
    surrogates, no trailing data), and refusing duplicate member names at any depth.

    :raises DuplicateMember: an object repeats a member name.
    :raises ValueError: ``data`` is not valid JSON.
    """
    value = orjson.loads(data)  # validity; it would silently keep the last duplicate
    if isinstance(value, dict | list):
        # Duplicates only hide in objects; the second pass only looks for them.
        STRICT_DECODER.decode(data.decode("utf-8"))
    return value
