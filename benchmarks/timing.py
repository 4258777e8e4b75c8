"""Shared by the benchmark scripts (run them from the repository root: ``python3 benchmarks/NAME.py``)."""

from __future__ import annotations

import time


def best(fn, repeat: int = 3) -> float:
    """The shortest wall time of ``repeat`` calls of ``fn``, in seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)
