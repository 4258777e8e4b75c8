"""Standard output and error for every command: the one place that knows how writing them fails.

:func:`guarded_streams` wraps ``sys.stdout`` and ``sys.stderr`` while a command
runs, so click, rich and our own writes all behave the same way:

* the reader stops early (``stabilitylab compare | head``): EPIPE.  The rest of
  the output is dropped quietly and the command ends with its own status (0, or
  1 if a threshold regressed), as ``cat`` and ``grep`` do.
* standard output is closed (``>&-``) or cannot be written (``> /dev/full``:
  ENOSPC): :class:`OutputError`, one line on stderr and exit 2: the output
  would otherwise be lost without a word.
* a short write: with ``PYTHONUNBUFFERED=1`` (or ``python -u``) the text stream
  writes straight to the unbuffered file, whose ``write`` may take only part of
  the bytes (a nearly full disk) and the text layer drops the rest without a
  word.  Here every byte is written, retrying the rest, so the disk's own error
  (ENOSPC) is seen; a write that takes nothing is an :class:`OutputError` too.
* the stream's encoding cannot hold a character (``PYTHONIOENCODING=ascii``):
  ASCII stand-ins (``·`` -> ``-``, ``✓`` -> ``ok``), ``?`` for anything else.

Problems writing standard error itself are ignored: there is nowhere left to report them.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import select
import sys
from collections.abc import Iterator

from ..errors import OutputError

__all__ = ["OutputError", "GuardedStream", "guarded_streams", "ascii_fallback"]

FALLBACKS = {"·": "-", "•": "*", "✓": "ok", "✗": "x", "—": "-", "–": "-", "…": "...", "×": "x",
             "≤": "<=", "≥": ">=", "±": "+-", "→": "->", "−": "-", "↑": "^"}


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
            raw = self._raw()
            if raw is None:
                self.inner.write(ascii_fallback(text, self.encoding))
            else:
                self.inner.flush()  # what the text layer still holds goes first
                if os.linesep != "\n":
                    text = text.replace("\n", os.linesep)
                _write_all(raw, ascii_fallback(text, self.encoding).encode(
                    self.encoding, getattr(self.inner, "errors", None) or "strict"))
        except OSError as exc:
            self._failed(exc)
        return len(text)

    def _raw(self):
        """The unbuffered binary file under the text stream (``PYTHONUNBUFFERED=1``, ``python -u``), whose
        short writes the text layer would ignore; None for a buffered one (which retries them itself)."""
        buffer = getattr(self.inner, "buffer", None)
        return buffer if isinstance(buffer, io.RawIOBase) else None

    def flush(self) -> None:
        if self.broken or self.inner is None:
            return
        try:
            self.inner.flush()
        except OSError as exc:
            self._failed(exc)


def _write_all(raw, data: bytes) -> None:
    """Every byte of ``data`` to the unbuffered file ``raw``: a short write is followed by one of the rest,
    which then fails with the reason (ENOSPC, EFBIG); a write that takes nothing raises OSError."""
    view = memoryview(data)
    while view:
        n = raw.write(view)
        if n is None:  # a non-blocking descriptor that is full: wait until it takes more
            try:
                select.select([], [raw.fileno()], [])
            except (OSError, ValueError, AttributeError):
                raise OSError(errno.EAGAIN, "standard output is non-blocking and full") from None
            continue
        if n <= 0:
            raise OSError(errno.EIO, f"a write of {len(data):,} bytes stopped after {len(data) - len(view):,} "
                                     "(a short write: the output would be cut off)")
        view = view[n:]


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
