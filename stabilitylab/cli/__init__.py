"""Command-line interface: one module per command, each a thin layer that parses and validates its
options, calls the same function the Python API exposes (:mod:`stabilitylab.api`) and renders the
result; :func:`main` turns every failure into one line and an :class:`~stabilitylab.status.ExitStatus`."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from ..errors import InputError
from ..io import atomic, output
from ..status import ExitStatus
from . import audit, check, compare, formats, report, thresholds, trace, train  # noqa: F401 - each registers its command
from .base import CheckExit, Interrupted, cli

__all__ = ["main", "cli", "run"]


# --------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; every failure is one line on stderr and an ExitStatus, never a traceback.

    Standard output and error are guarded while it runs (see :mod:`stabilitylab.io.output`):
    a reader that goes away (``| head``) ends the output quietly; a closed or full
    stdout is an error.
    """
    atomic.install_signal_cleanup()  # no temporary file survives SIGTERM / SIGHUP
    with output.guarded_streams() as stdout:
        status = _run(argv)
        try:
            stdout.flush()
        except output.OutputError as exc:
            status = _fail(str(exc), ExitStatus.USAGE)
    return status


def _fail(message: str, status: ExitStatus) -> int:
    click.echo(f"stabilitylab: error: {message}", err=True)
    return int(status)


def _worker_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is a process pool's BrokenProcessPool (one of its worker processes ended abruptly), told
    without importing concurrent.futures for commands that start no pool."""
    module = sys.modules.get("concurrent.futures.process")
    return module is not None and isinstance(exc, module.BrokenProcessPool)


def _run(argv: Sequence[str] | None) -> int:
    try:
        with atomic.transaction():  # every file the command writes is replaced at its end, or none is
            rc = cli.main(args=list(argv) if argv is not None else None, prog_name="stabilitylab",
                          standalone_mode=False)
    except click.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code if isinstance(exc, CheckExit) else ExitStatus.USAGE)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt, Interrupted):
        click.echo("stabilitylab: interrupted", err=True)
        return ExitStatus.INTERRUPTED
    except output.OutputError as exc:
        return _fail(str(exc), ExitStatus.USAGE)
    except atomic.WriteError as exc:
        return _fail(f"could not write {exc.filename}: {exc.strerror}; nothing was written or replaced",
                     ExitStatus.USAGE)
    except OSError as exc:  # any other I/O failure: one line, not a traceback
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}", ExitStatus.USAGE)
    except InputError as exc:  # bad input found below a command's own checks (STABILITYLAB_WORKERS)
        return _fail(str(exc), ExitStatus.USAGE)
    except Exception as exc:  # a bug: never exit 1, which means "a threshold regressed"
        if _worker_lost(exc):  # (not a bug: a worker killed from outside, by SIGKILL or the OOM killer)
            return _fail("a worker process ended abruptly (killed, or the system ran out of memory); nothing was "
                         "written or replaced (STABILITYLAB_WORKERS=1 runs without worker processes)",
                         ExitStatus.WORKER_LOST)
        if os.environ.get("STABILITYLAB_DEBUG"):
            raise
        first = (str(exc).splitlines() or [""])[0]
        return _fail(f"internal error: {type(exc).__name__}: {first} (a bug in stabilitylab; "
                     "STABILITYLAB_DEBUG=1 shows the traceback)", ExitStatus.INTERNAL)
    return rc if isinstance(rc, int) else ExitStatus.OK


def run() -> None:
    """Console-script entry point (kept for compatibility; see stabilitylab.__main__.run)."""
    sys.exit(main())
