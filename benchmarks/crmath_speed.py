"""crmath speed and undecided rates (not a test).

For each format and function: time per element of crmath on 10**6 values
against plain numpy on the same format-dtype array, and how many of the 10**6
elements were undecided (recomputed with mpmath).  Two input sets:
``range``: values spread over the interesting range of the function
(exp: uniform in [ln(smallest subnormal) - 1, ln(max) + 1]; log: 2**uniform in
[log2(smallest subnormal), log2(max)]; log1p: half uniform in (-1, 1), half as
for log), rounded to the format; ``bits``: uniformly random bit patterns (NaN, inf, huge, tiny included).

    PYTHONPATH=. python benchmarks/crmath_speed.py [n]   (from the repository root)
"""

from __future__ import annotations

import sys

import numpy as np
from timing import best

from stabilitylab.numerics import crmath
from stabilitylab.numerics.formats import FORMATS

FUNCS = ("exp", "log", "log1p")




def inputs(fmt, name: str, kind: str, n: int, rng) -> np.ndarray:
    if kind == "bits":
        udt = np.dtype(f"u{fmt.dtype.itemsize}")
        return rng.integers(0, np.iinfo(udt).max, n, dtype=udt, endpoint=True).view(fmt.dtype)
    if name == "exp":
        x = rng.uniform(fmt.ln_smallest_subnormal - 1, fmt.ln_max + 1, n)
    else:  # 2**u, not e**u: log(fl(e**u)) would lie next to the float u, far from rounding boundaries
        lo, hi = np.log2(fmt.smallest_subnormal), np.log2(fmt.max)
        x = np.exp2(rng.uniform(lo, hi, n))
        if name == "log1p":
            x[: n // 2] = rng.uniform(-1, 1, n // 2)
    with np.errstate(all="ignore"):
        return fmt.round(x)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10**6
    rng = np.random.default_rng(0)
    print(f"n = {n}, longdouble significand bits: {np.finfo(np.longdouble).nmant + 1}")
    print(f"{'format':14} {'func':6} {'input':6} {'crmath ns/el':>12} {'numpy ns/el':>12} {'undecided':>10} "
          f"{'per 1e6':>8} {'max mp bits':>11}")
    for fname in ("float8_e4m3fn", "float8_e5m2", "float16", "bfloat16", "float32", "float64"):
        fmt = FORMATS[fname]
        for name in FUNCS:
            for kind in ("range", "bits"):
                x = inputs(fmt, name, kind, n, rng)
                stats = {}
                getattr(crmath, name)(fmt, x, stats=stats)
                t_cr = best(lambda: getattr(crmath, name)(fmt, x))
                with np.errstate(all="ignore"):
                    t_np = best(lambda: getattr(np, name)(x))
                und = stats["undecided"]
                print(f"{fname:14} {name:6} {kind:6} {t_cr / n * 1e9:12.1f} {t_np / n * 1e9:12.1f} {und:10d} "
                      f"{und / n * 1e6:8.1f} {stats.get('max_prec', 0):11d}")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
