"""``python -m stabilitylab`` and the ``stabilitylab`` console script.

Deliberately light: the CLI (numpy, rich, click, ...) is imported inside the
``try``, so a Ctrl-C during those imports (the first ~0.3 s) is the same one
line and exit 130 as a Ctrl-C later, not a traceback.
"""

import sys


def run() -> None:
    try:
        from .cli import main

        status = main()
    except KeyboardInterrupt:
        try:
            sys.stderr.write("stabilitylab: interrupted\n")
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):  # stderr closed or gone
            pass
        status = 130  # ExitStatus.INTERRUPTED, not imported: the import may be what was interrupted
    sys.exit(status)


if __name__ == "__main__":
    run()
