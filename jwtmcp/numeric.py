"""Numbers read from untrusted text: ASCII digits only, one way, everywhere.

Python's ``int()`` and ``float()`` accept far more than a protocol or a config file means by
a number: digits of every script (``int("١٢٣") == 123``), signs, surrounding spaces, ``_``
separators, exponents, ``inf`` and ``nan``, and they raise on strings ``str.isdigit()``
calls digits (``"²"``) or on more than 4300 digits. Every number jwtmcp reads from a form
field, a header, an environment variable, a flag or a file goes through here instead.
"""

from __future__ import annotations

import re

MAX_DIGITS = 18
"""Longest whole number accepted (below 2**63): longer input is refused, never converted."""

_WHOLE = re.compile(rb"[0-9]{1,%d}" % MAX_DIGITS)
_DECIMAL = re.compile(rb"[0-9]{1,%d}(?:\.[0-9]{1,%d})?" % (MAX_DIGITS, MAX_DIGITS))


def _ascii(text: str | bytes) -> bytes | None:
    if isinstance(text, bytes):
        return text
    try:
        return text.encode("ascii")
    except UnicodeEncodeError:
        return None


def parse_whole_number(text: str | bytes) -> int:
    """``text`` as a whole number >= 0 written only in ASCII digits ``0``-``9``.

    At most :data:`MAX_DIGITS` digits; no sign, space, ``_``, exponent or other script's
    digits. Raises ``ValueError`` for anything else.
    """
    raw = _ascii(text)
    if raw is None or _WHOLE.fullmatch(raw) is None:
        raise ValueError(f"not a whole number written in ASCII digits: {text!r:.40}")
    return int(raw)


def declared_length(text: str | bytes) -> int:
    """A ``Content-Length`` value for a size check: the number it states, or ``2**63`` when
    it is not ASCII digits (a length nobody can read is refused like an oversize one)."""
    try:
        return parse_whole_number(text)
    except ValueError:
        return 2**63


def parse_decimal_number(text: str | bytes) -> float:
    """``text`` as a finite number >= 0: ASCII digits with an optional ``.`` and fraction.

    No sign, space, ``_``, exponent, ``inf``/``nan`` or other script's digits. Raises
    ``ValueError`` for anything else.
    """
    raw = _ascii(text)
    if raw is None or _DECIMAL.fullmatch(raw) is None:
        raise ValueError(f"not a number written in ASCII digits: {text!r:.40}")
    return float(raw)
