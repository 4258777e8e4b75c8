"""``python -m stabilitylab`` and the ``stabilitylab`` console script.

Deliberately light: the CLI (numpy, rich, click, ...) is imported inside the
``try``, so a Ctrl-C during those imports (the first ~0.3 s) is the same one
line and exit 130 as a Ctrl-C later, not a traceback.

SIGTERM and SIGHUP (unless ignored, as ``nohup`` does) kill the worker processes
(:func:`stabilitylab.analysis.parallel.kill_workers`), then unwind as
:class:`~stabilitylab.errors.Terminated`: one line and exit 128 + the signal's
number (143 for SIGTERM, 129 for SIGHUP).  A second such signal takes the default
action at once.
"""

import signal
import sys

from .errors import Terminated


def _terminate(signum, frame) -> None:
    for name in _SIGNALS:  # a second signal: the default action (the workers die with this process)
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    parallel = sys.modules.get("stabilitylab.analysis.parallel")  # (imported only if a pool may exist)
    if parallel is not None:
        parallel.kill_workers()
    atomic = sys.modules.get("stabilitylab.io.atomic")  # temporaries of files being written, where tracked
    if atomic is not None and hasattr(atomic, "remove_temporaries"):
        atomic.remove_temporaries()
    raise Terminated(signum, signal.Signals(signum).name)


_SIGNALS = tuple(name for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _handle_signals() -> None:
    for name in _SIGNALS:
        try:
            if signal.getsignal(getattr(signal, name)) is signal.SIG_DFL:
                signal.signal(getattr(signal, name), _terminate)
        except ValueError:  # not the main thread
            pass


def _say(line: str) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):  # stderr closed or gone
        pass


def run() -> None:
    _handle_signals()
    try:
        from .cli import main

        status = main()
    except KeyboardInterrupt:
        _say("stabilitylab: interrupted")
        status = 130  # ExitStatus.INTERRUPTED, not imported: the import may be what was interrupted
    except Terminated as exc:
        _say(f"stabilitylab: {exc}; the worker processes were stopped")
        status = 128 + exc.signum  # ExitStatus.TERMINATED (143) or HANGUP (129)
    sys.exit(status)


if __name__ == "__main__":
    run()
