"""The issuer's log lines: the date and time formatted once a second, as the stdlib would."""

from __future__ import annotations

import logging

import pytest

from jwtmcp.issuer import _LogFormatter

FORMAT = "%(asctime)s %(name)s %(message)s"
T0 = 1_790_000_000.0
"""An instant in 2026, epoch seconds."""


def _record(created: float) -> logging.LogRecord:
    record = logging.LogRecord("jwtmcp.issuer", logging.INFO, "f", 1, "token_issued", (), None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    return record


@pytest.mark.parametrize(
    "instants",
    [
        (T0, T0 + 0.25, T0 + 0.999),  # within one second: the remembered text
        (T0 + 0.5, T0 + 1.0, T0 + 61.5, T0 + 3600.0),  # each a new second: formatted anew
        (T0 + 5.0, T0 + 2.0),  # a clock stepped back
    ],
)
def test_log_lines_carry_the_time_the_stdlib_formatter_writes(
    instants: tuple[float, ...],
) -> None:
    ours, stdlib = _LogFormatter(), logging.Formatter(FORMAT)
    for created in instants:
        assert ours.format(_record(created)) == stdlib.format(_record(created))
