"""The environment fingerprint written into every JSON output and baseline."""

from __future__ import annotations

import platform
import sys

__all__ = ["package_version", "fingerprint"]


def package_version(name: str = "stabilitylab") -> str:
    from importlib.metadata import PackageNotFoundError, version  # ~25 ms: only for outputs that show it

    try:
        return version(name)
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def fingerprint() -> dict[str, str]:
    """Versions that can change numeric results: Python, numpy, ml_dtypes, mpmath, platform."""
    return {
        "python": platform.python_version(),
        "numpy": package_version("numpy"),
        "ml_dtypes": package_version("ml_dtypes"),
        "mpmath": package_version("mpmath"),
        "platform": f"{sys.platform}-{platform.machine()}",
    }
