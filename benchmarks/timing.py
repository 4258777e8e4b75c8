"""Best-of-N timing for the in-process benchmark scripts (crmath_speed.py); run.py times whole processes itself."""

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
