"""Independent decoder and rounder for the <= 8-bit formats (a deliberately plain checker).

Nothing here imports stabilitylab or ml_dtypes: each format is written down from its spec as
(sign bits, exponent bits, fraction bits, bias, NaN rule), every bit pattern is decoded by hand,
and rounding is done by brute force: the nearest of all decoded values.

SPECS
    OCP 8-bit Floating Point Specification (OFP8) rev. 1.0: E4M3 (bias 7, no inf, NaN = S.1111.111) and
    E5M2 (bias 15, IEEE inf / NaN); the IEEE-like E4M3 and E3M4 (bias 7 and 3, inf and NaN in the top
    exponent, as IEEE 754); the "fnuz" formats of Graphcore / AMD (bias one higher than IEEE, 8 and 16;
    E4M3 with bias 11 for b11fnuz): no inf, no -0, the one NaN is the pattern 1.0000.000; OCP Microscaling
    (MX) v1.0: FP6 E2M3 (bias 1), FP6 E3M2 (bias 3), FP4 E2M1 (bias 1), no inf and no NaN; E8M0 (the MX
    scale: unsigned, 2**(E - 127), 0xFF is NaN, no zero); E5M3 unsigned (bias 15, NaN 0xFF, with zero
    and subnormals).

DECODING (pattern -> value)
    sign s (if the format has a sign bit), exponent field E, fraction field F (m bits):
    E > 0: (-1)**s * (1 + F / 2**m) * 2**(E - bias); E = 0: (-1)**s * F / 2**m * 2**(1 - bias);
    E8M0: 2**(E - 127) for every E.  Then the NaN / inf rule of the format overrides.

ROUNDING (x -> format), brute force
    Candidates: every finite decoded value, plus one "beyond" value: max + (max - its predecessor)
    (the next value with an unbounded exponent; E8M0: 2 max).  The nearest candidate wins; on a tie the one whose
    pattern is even (last fraction bit 0; the beyond value has the parity after max's).  E8M0 has no
    fraction bit: ml_dtypes rounds its ties up (away from zero), and so does this checker (the MX spec
    leaves that conversion to implementations).  If "beyond" wins: +-inf (IEEE), NaN (fn, fnuz and the
    unsigned), +-max (a saturating format: fp6 / fp4, or the :saturate variants).  Signs: a negative x
    rounds like -x, negated; without -0 (fnuz, unsigned) a zero result is +0; unsigned formats give NaN
    for every x < 0 (-0 is +0), E8M0 NaN for 0 too.  Specials: NaN stays NaN (fp6 / fp4: NaN has no
    pattern; ml_dtypes stores a zero with the opposite sign bit, which this checker repeats); +-inf as
    "beyond" with its sign.
"""

from __future__ import annotations

import numpy as np

# name: (sign bits, exponent bits, fraction bits, bias, nan rule)
SPECS = {
    "float8_e4m3fn": (1, 4, 3, 7, "fn"),
    "float8_e5m2": (1, 5, 2, 15, "ieee"),
    "float8_e4m3fnuz": (1, 4, 3, 8, "fnuz"),
    "float8_e5m2fnuz": (1, 5, 2, 16, "fnuz"),
    "float8_e4m3b11fnuz": (1, 4, 3, 11, "fnuz"),
    "float8_e4m3": (1, 4, 3, 7, "ieee"),
    "float8_e3m4": (1, 3, 4, 3, "ieee"),
    "float6_e2m3fn": (1, 2, 3, 1, "none"),
    "float6_e3m2fn": (1, 3, 2, 3, "none"),
    "float4_e2m1fn": (1, 2, 1, 1, "none"),
    "float8_e8m0fnu": (0, 8, 0, 127, "e8m0"),
    "float8_e5m3fnu": (0, 5, 3, 15, "fn"),
}


def decode(name: str) -> np.ndarray:
    """The value of every bit pattern 0 .. 2**bits - 1 (float64; NaN, +-inf as the spec says)."""
    s_bits, e_bits, m_bits, bias, rule = SPECS[name]
    bits = s_bits + e_bits + m_bits
    out = []
    for p in range(2**bits):
        sign = -1.0 if s_bits and p >> (e_bits + m_bits) else 1.0
        e = (p >> m_bits) & (2**e_bits - 1)
        f = p & (2**m_bits - 1)
        if rule == "e8m0":
            v = 2.0 ** (e - bias)
        elif e > 0:
            v = (1 + f / 2**m_bits) * 2.0 ** (e - bias)
        else:
            v = f / 2**m_bits * 2.0 ** (1 - bias)
        v = sign * v
        top_e = e == 2**e_bits - 1
        if rule == "ieee" and top_e:
            v = sign * float("inf") if f == 0 else float("nan")
        elif rule in ("fn", "e8m0") and top_e and f == 2**m_bits - 1:
            v = float("nan")
        elif rule == "fnuz" and p == 1 << (bits - 1):
            v = float("nan")
        out.append(v)
    return np.array(out)


def facts(name: str) -> dict:
    """max, tiny, smallest subnormal, eps and the capabilities, read off the decoded patterns."""
    v = decode(name)
    s_bits, e_bits, m_bits, bias, rule = SPECS[name]
    finite = v[np.isfinite(v)]
    positive = np.sort(finite[finite > 0])
    patterns = np.arange(v.size)
    normal = (patterns >> m_bits) & (2**e_bits - 1)
    pos_normal = v[(normal > 0) & np.isfinite(v) & (v > 0)] if rule != "e8m0" else positive
    zeros = v[v == 0]
    return {
        "max": positive[-1],
        "tiny": pos_normal.min(),
        "smallest_subnormal": positive[0],
        "eps": positive[positive > 1][0] - 1,
        "has_inf": bool(np.isinf(v).any()),
        "nan_patterns": int(np.isnan(v).sum()),
        "signed_zero": bool(np.signbit(zeros).any()),
        "has_zero": bool(zeros.size),
    }


def round_to(name: str, x, saturate: bool = False) -> np.ndarray:
    """x (float64) rounded to the format by brute force over its decoded values (see the module doc)."""
    s_bits, e_bits, m_bits, bias, rule = SPECS[name]
    x = np.asarray(x, dtype=np.float64)
    v = decode(name)
    patterns = np.arange(v.size)
    keep = np.isfinite(v) & ~np.signbit(v)  # non-negative values and their patterns
    cand, cpat = v[keep], patterns[keep]
    order = np.argsort(cand, kind="stable")
    cand, cpat = cand[order], cpat[order]
    top = cand[-1]
    beyond = 2 * top if rule == "e8m0" else top + (top - cand[-2])  # (powers of two only: the next is 2 max)
    cand = np.append(cand, beyond)
    cpat = np.append(cpat, cpat[-1] + 1)
    saturating = saturate or rule == "none"
    a = np.abs(x)
    with np.errstate(invalid="ignore"):
        d = np.abs(a[:, None] - cand[None, :])
        best = np.nanmin(np.where(np.isnan(d), np.inf, d), axis=1)
        tied = d == best[:, None]
        if rule == "e8m0":  # ties up
            pick = tied.shape[1] - 1 - np.argmax(tied[:, ::-1], axis=1)
        else:
            even = tied & (cpat[None, :] % 2 == 0)
            pick = np.where(even.any(axis=1), np.argmax(even, axis=1), np.argmax(tied, axis=1))
    r = cand[pick]
    over = (pick == cand.size - 1) | np.isinf(a)
    if rule == "ieee":
        r = np.where(over, np.inf, r)
    elif saturating:
        r = np.where(over, top, r)
    else:
        r = np.where(over, np.nan, r)
    r = np.where(np.signbit(x), -r, r)
    if not s_bits or rule == "fnuz":
        r = np.where(r == 0, 0.0, r)  # no -0
    if not s_bits:
        r = np.where(x < 0, np.nan, r)
    if rule == "e8m0":
        r = np.where(x == 0, np.nan, r)
    nan = np.isnan(x)
    if rule == "none":
        r = np.where(nan, np.where(np.signbit(x), 0.0, -0.0), r)
    else:
        r = np.where(nan, np.nan, r)
    return r


def probe(name: str) -> np.ndarray:
    """Inputs that decide rounding: every value, every midpoint between neighbours (and the one above max),
    points just off each midpoint (relative 2**-30), far beyond max, far below the smallest value, both
    signs, +-0, +-inf, NaN."""
    v = decode(name)
    f = np.unique(v[np.isfinite(v) & (v >= 0)])
    nxt = np.append(f[1:], 2 * f[-1] if SPECS[name][4] == "e8m0" else f[-1] + (f[-1] - f[-2]))
    mids = (f + nxt) / 2
    x = np.concatenate([f, mids, mids * (1 + 2.0**-30), mids * (1 - 2.0**-30), [f[-1] * 4, f[-1] * 1e6],
                        [f[f > 0][0] / 4, f[f > 0][0] / 2 * (1 + 2.0**-30), 1e-300]])
    return np.concatenate([x, -x, [0.0, -0.0, np.inf, -np.inf, np.nan]])
