"""Find the float32 inputs hardest to round for exp, log and log1p (not a test; ~3 min).

Scans all 2**32 float32 bit patterns.  For each function, an input is
*undecided* when its float64 value w lies within 2**-44 |w| of a float32
rounding boundary (the interval [w(1 - 2**-44), w(1 + 2**-44)] rounds to two
different float32 values): those are the inputs stabilitylab.numerics.crmath recomputes
with mpmath.  Prints their number and the hardest ones (closest to the boundary,
measured with mpmath at 60 digits) as hex bit patterns, for tests/test_crmath.py.

    python benchmarks/crmath_hard_cases.py [how_many]
"""

from __future__ import annotations

import sys

import mpmath
import numpy as np

E = 2.0**-44
CHUNK = 1 << 22
FUNCS = {"exp": (np.exp, mpmath.exp), "log": (np.log, mpmath.log), "log1p": (np.log1p, mpmath.log1p)}


def scan(name: str) -> np.ndarray:
    func = FUNCS[name][0]
    found = []
    for start in range(0, 1 << 32, CHUNK):
        bits = np.arange(start, start + CHUNK, dtype=np.uint64).astype(np.uint32)
        with np.errstate(all="ignore"):
            x = bits.view(np.float32).astype(np.float64)
            w = func(x)
            ok = np.isfinite(w) & (w != 0)
            err = np.abs(w) * E
            lo = (w - err).astype(np.float32)
            hi = (w + err).astype(np.float32)
        found.append(bits[ok & (lo != hi)])
    return np.concatenate(found)


def hardness(name: str, bits: np.ndarray) -> list[tuple[float, int]]:
    """(distance to the boundary in ulps of float32, bit pattern), hardest first."""
    mpmath.mp.dps = 60
    out = []
    for b in bits.tolist():
        x = float(np.uint32(b).view(np.float32))
        r = FUNCS[name][1](mpmath.mpf(x))
        w = float(r)
        with np.errstate(all="ignore"):
            lo = np.float32(w * (1 - 2 * E))
            hi = np.float32(w * (1 + 2 * E))
        a, c = sorted((float(lo), float(hi)))
        if np.isinf(c):  # overflow threshold max + ulp(max) / 2
            c = float(np.finfo(np.float32).max) + 2.0**104
        mid = mpmath.mpf(a) / 2 + mpmath.mpf(c) / 2
        out.append((float(abs(r - mid) / (c - a)), b))
    return sorted(out)


def main() -> None:
    how_many = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    for name in FUNCS:
        bits = scan(name)
        ranked = hardness(name, bits)
        print(f"# {name}: {bits.size} undecided float32 inputs of 2**32; hardest distances "
              f"{ranked[0][0]:.3g} .. {ranked[min(how_many, len(ranked)) - 1][0]:.3g} ulp")
        print(f"HARD_{name.upper()} = [")
        row = [f"0x{b:08x}" for _, b in ranked[:how_many]]
        for i in range(0, len(row), 8):
            print("    " + ", ".join(row[i:i + 8]) + ",")
        print("]")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
