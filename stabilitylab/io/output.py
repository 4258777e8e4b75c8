"""Standard output and error for every command: the one place that knows how writing them fails.

:func:`guarded_streams` wraps ``sys.stdout`` and ``sys.stderr`` while a command
runs, so click, rich and our own writes all behave the same way:

* the reader stops early (``stabilitylab compare | head``): EPIPE.  The rest of
  the output is dropped quietly and the command ends with its own status (0, or
  1 if a threshold regressed), as ``cat`` and ``grep`` do.
* standard output is closed (``>&-``) or cannot be written (``> /dev/full``:
  ENOSPC): :class:`OutputError`, one line on stderr and exit 2: the output
  would otherwise be lost without a word.
* the stream's encoding cannot hold a character (``PYTHONIOENCODING=ascii``):
  ASCII stand-ins (``·`` -> ``-``, ``✓`` -> ``ok``), ``?`` for anything else.

Problems writing standard error itself are ignored: there is nowhere left to report them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator

from ..errors import OutputError

__all__ = ["OutputError", "GuardedStream", "guarded_streams", "ascii_fallback"]

FALLBACKS = {"·": "-", "•": "*", "✓": "ok", "✗": "x", "—": "-", "–": "-", "…": "...", "×": "x",
             "≤": "<=", "≥": ">=", "±": "+-", "→": "->", "−": "-"}


def ascii_fallback(text: str, encoding: str) -> str:
    """``text`` with every character ``encoding`` cannot hold replaced by an ASCII stand-in."""
    try:
        text.encode(encoding)
        return text
    except LookupError:
        encoding = "ascii"
    except UnicodeEncodeError:
        pass
    out = []
    for ch in text:
        try:
            ch.encode(encoding)
            out.append(ch)
        except UnicodeEncodeError:
            out.append(FALLBACKS.get(ch, "?"))
    return "".join(out)


def _silence(stream) -> None:
    """Point the stream's file descriptor at /dev/null, so that Python's final flush of
    whatever is still buffered succeeds (no "Exception ignored ... BrokenPipeError")."""
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):
        return
    try:
        os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)


class GuardedStream:
    """A text stream around ``sys.stdout`` / ``sys.stderr`` (which may be None: closed).

    ``strict``: a write error other than EPIPE raises OutputError (stdout); else it is dropped (stderr).
    """

    def __init__(self, inner, name: str, strict: bool):
        self.inner, self.name, self.strict = inner, name, strict
        self.broken = False  # the reader went away (EPIPE): drop the rest

    @property
    def encoding(self) -> str:
        return getattr(self.inner, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str:
        return "strict"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        try:
            return bool(self.inner is not None and self.inner.isatty())
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        if self.inner is None:
            raise OSError(errno.EBADF, "standard stream is closed")
        return self.inner.fileno()

    def _failed(self, exc: OSError) -> None:
        _silence(self.inner)
        self.broken = True
        if isinstance(exc, BrokenPipeError) or not self.strict:
            return
        if exc.errno == errno.EBADF:
            raise OutputError("standard output is closed, so the output would be lost; "
                              "redirect it to a file or a pipe instead") from None
        raise OutputError(f"cannot write to standard output: {exc.strerror or exc}") from None

    def close(self) -> None:
        """The wrapped stream stays open: it belongs to the interpreter."""

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if self.broken or not text:
            return len(text)
        if self.inner is None:
            self._failed(OSError(errno.EBADF, "closed"))
            return len(text)
        try:
            self.inner.write(ascii_fallback(text, self.encoding))
        except OSError as exc:
            self._failed(exc)
        return len(text)

    def flush(self) -> None:
        if self.broken or self.inner is None:
            return
        try:
            self.inner.flush()
        except OSError as exc:
            self._failed(exc)


@contextlib.contextmanager
def guarded_streams() -> Iterator[GuardedStream]:
    """Replace sys.stdout / sys.stderr by guarded streams for the duration; yields stdout's."""
    saved = sys.stdout, sys.stderr
    out = GuardedStream(saved[0], "<stdout>", strict=True)
    sys.stdout, sys.stderr = out, GuardedStream(saved[1], "<stderr>", strict=False)
    try:
        yield out
        out.flush()
    finally:
        sys.stdout, sys.stderr = saved
