"""Exit statuses of the command-line tool (documented in docs/reference/exit-codes.md)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ExitStatus"]


class ExitStatus(IntEnum):
    """0 ok; 1 a regression against the baseline; 2 usage error or bad input;
    3 baseline entries missing or not comparable; 70 internal error (a bug in
    stabilitylab, never a regression); 71 a worker process ended abruptly (killed from outside,
    or out of memory); 129 hung up (SIGHUP); 130 interrupted (Ctrl-C); 143 terminated
    (SIGTERM): 128 + the signal's number, the worker processes killed."""

    OK = 0
    REGRESSION = 1
    USAGE = 2
    INCOMPARABLE = 3
    INTERNAL = 70  # EX_SOFTWARE (sysexits.h)
    WORKER_LOST = 71  # EX_OSERR (sysexits.h): a worker process was killed (SIGKILL, the OOM killer)
    HANGUP = 129  # 128 + SIGHUP
    INTERRUPTED = 130
    TERMINATED = 143  # 128 + SIGTERM
