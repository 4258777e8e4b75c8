"""Every exception stabilitylab raises on purpose, in one place.

Each carries a one-line message: what was wrong and what is allowed.  The command line turns
:class:`UsageError`-like ones (bad input, a target that cannot be audited, an unreadable baseline,
a file that cannot be written) into that line on stderr and exit status 2; nothing here is a
regression (exit 1), which only ``check`` reports.
"""

from __future__ import annotations

__all__ = ["StabilitylabError", "InputError", "AuditError", "TargetError", "TargetTimeout", "BaselineError",
           "WriteError", "OutputError", "OutputRefused", "MissingLibrary", "Terminated", "first_line", "described",
           "shown"]


class StabilitylabError(Exception):
    """Base class: a condition stabilitylab reports as one line (never a traceback)."""


class InputError(StabilitylabError, ValueError):
    """Bad user input; the message is one line saying what was wrong and what is allowed.

    ``option`` names the command-line option at fault (``--logits``, ``--labels``, ``--key``, ``--labels-key``).
    The message goes through :func:`shown`, so user text quoted without it cannot break the line either.
    """

    def __init__(self, message: str, option: str | None = None):
        super().__init__(shown(message))  # one line whatever user text it quotes (shown() is idempotent)
        self.option = option


class AuditError(StabilitylabError, ValueError):
    """A target that cannot be audited (one line: what is wrong and what is allowed)."""


class TargetError(StabilitylabError, ValueError):
    """An external function that cannot be audited at all (its result has the wrong
    shape or is not numeric); the message is one line."""


class TargetTimeout(StabilitylabError):
    """One call of a target (or the import of a user's module) ran longer than its time limit (``--timeout``;
    ``timeout=`` of :func:`stabilitylab.audit`) and was stopped.  Raised by the guard around user code once
    that code has unwound, so the user's own ``except Exception`` never sees it; the message is one line,
    ``took longer than 5 s (--timeout)``.  :meth:`~stabilitylab.numerics.arith.Arith.external` marks the
    rows of the batch that timed out as errors with it (without splitting the batch)."""


class BaselineError(StabilitylabError, ValueError):
    """A baseline file that cannot be read (missing: ``missing`` is True)."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(shown(message))
        self.missing = missing


class WriteError(StabilitylabError, OSError):
    """A file could not be written; ``filename`` is the target, which is unchanged."""


class OutputError(StabilitylabError):
    """An output cannot be written (standard output, or a file named by an option); the message is one line."""


class OutputRefused(OutputError):
    """An output file is refused before any work is done: it would replace a file stabilitylab did not write
    (without ``--force``), an input of the command, another output of it, or a read-only file, or it names a
    folder where a file goes.  The message is one line: the option and path, what is wrong, what is allowed."""


class MissingLibrary(StabilitylabError, ImportError):
    """The framework an adapter (or a reader) needs is not installed; the message names the extra."""


class Terminated(BaseException):
    """The command line received SIGTERM or SIGHUP (``signum``): raised by its signal handler after the worker
    processes are killed, it unwinds like Ctrl-C but is no ``Exception`` (nothing that catches a failing user
    function catches it) and no ``KeyboardInterrupt`` (click would turn it into an abort).  The exit status is
    ``128 + signum`` (143 for SIGTERM)."""

    def __init__(self, signum: int, name: str):
        super().__init__(f"terminated by {name}")
        self.signum, self.name = signum, name


def first_line(exc: BaseException) -> str:
    """The first line of ``str(exc)`` (the type's name when it is empty)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def described(exc: BaseException) -> str:
    """``Type: first line`` of a foreign exception (the type's name alone when it says nothing): how one is
    quoted inside a one-line message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def shown(text: object, quote: bool = False) -> str:
    """User-supplied text (a file name, a key, a tensor or member name) as it may be quoted in a one-line
    message: every character that is not printable (newlines, escape codes such as ``\\x1b``, other control
    and format characters, line separators) written as its escape (``\\n``, ``\\x1b``, ``\\u2028``), the rest
    unchanged.  ``quote``: inside single quotes, as ``{text!r}`` did."""
    text = str(text)
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else _ESCAPES.get(ch) or _escape(ch) for ch in text)
    return f"'{text}'" if quote else text


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
