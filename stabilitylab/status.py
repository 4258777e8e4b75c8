"""Exit statuses of the command-line tool (documented in docs/reference/exit-codes.md)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitStatus"]


class ExitStatus(IntEnum):
    """0 ok; 1 a regression against the baseline; 2 usage error or bad input;
    3 baseline entries missing or not comparable; 70 internal error (a bug in
    stabilitylab, never a regression); 130 interrupted (Ctrl-C)."""

    OK = 0
    REGRESSION = 1
    USAGE = 2
    INCOMPARABLE = 3
    INTERNAL = 70  # EX_SOFTWARE (sysexits.h)
    INTERRUPTED = 130
