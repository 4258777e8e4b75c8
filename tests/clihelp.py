"""Helpers shared by the command-line tests: run the CLI in-process, and check its one-line errors."""

from __future__ import annotations

import contextlib
import sys

from stabilitylab.cli import main


def run(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit code, stdout, stderr)."""
    capsys.readouterr()  # drop anything printed before
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, out, err, *fragments):
    assert code == 2, (code, out, err)
    assert out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("stabilitylab: error:"), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def one_error_line(err: str, *fragments: str) -> str:
    """stderr is exactly one 'stabilitylab: error:' line holding every fragment."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("stabilitylab: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@contextlib.contextmanager
def stdout_replaced(stream):
    """sys.stdout replaced for the block (capsys keeps capturing stderr)."""
    saved = sys.stdout
    sys.stdout = stream
    try:
        yield
    finally:
        sys.stdout = saved
