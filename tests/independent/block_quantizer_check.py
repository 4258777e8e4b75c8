"""Independent block quantizer for MX (OCP Microscaling v1.0) and NVFP4: a deliberately plain checker.

Nothing here imports or reuses stabilitylab: it is written from the specifications alone, one element at a
time, in exact rational arithmetic (fractions.Fraction), so that tests can compare the vectorised quantizer
(stabilitylab.numerics.blockscale) with it.

ELEMENT FORMATS are decoded by enumerating every bit pattern (sign, exponent field, mantissa field) with the
rules of the OCP FP8 / MX specifications: bias = 2^(E-1) - 1; exponent field 0 is subnormal
(0.mantissa * 2^(1 - bias)), otherwise 1.mantissa * 2^(field - bias).  Specials:
  e5m2 ("ieee"): exponent field all ones is inf (mantissa 0) or NaN, not a number here;
  e4m3 ("fn"):   only exponent and mantissa all ones (S.1111.111) is NaN;
  e2m3 / e3m2 / e2m1: no specials, every pattern is a number.
ROUNDING is by brute force over that list of values: the nearest one; on a tie, the one whose pattern has
mantissa LSB 0 (even); a magnitude above the largest value saturates to it (the MX spec's clamping).

MX (spec section 6.3): amax = max |V_i|; if any V_i is inf or NaN, the scale is NaN and the whole block is
NaN.  amax = 0: scale 2^-127.  Otherwise shared = floor(log2 amax) - emax_elem (floor from math.frexp),
shared < -127 -> -127, shared > 127 -> NaN block; X = 2^shared; P_i = round(V_i / X); value P_i * X.
NVFP4: s_t = amax_tensor / 2688 rounded to float32 (nearest even; computed here from float32's rules:
24-bit significand, smallest exponent -126, subnormals), 1 if amax_tensor = 0; s_b = round_e4m3(amax /
(6 s_t)) (the same brute-force list rounding with saturation at 448); s_b = 0 -> the block is all 0;
P_i = round_e2m1(V_i / (s_t s_b)); value P_i * s_b * s_t.  A block with inf/NaN: all NaN.
flushed: finite V_i != 0 whose value is 0; saturated: |V_i| / X > the element max (finite scale > 0).
"""

from __future__ import annotations

import math
from fractions import Fraction

NAN = float("nan")

ELEMENTS = {  # name: (exponent bits, mantissa bits, specials)
    "float8_e4m3fn": (4, 3, "fn"),
    "float8_e5m2": (5, 2, "ieee"),
    "float6_e2m3fn": (2, 3, "none"),
    "float6_e3m2fn": (3, 2, "none"),
    "float4_e2m1fn": (2, 1, "none"),
}

FORMATS = {  # name: (element, block size, MX or NVFP4)
    "mxfp8_e4m3": ("float8_e4m3fn", 32, "mx"),
    "mxfp8_e5m2": ("float8_e5m2", 32, "mx"),
    "mxfp6_e2m3": ("float6_e2m3fn", 32, "mx"),
    "mxfp6_e3m2": ("float6_e3m2fn", 32, "mx"),
    "mxfp4": ("float4_e2m1fn", 32, "mx"),
    "nvfp4": ("float4_e2m1fn", 16, "nv"),
}


def decode_all(ebits: int, mbits: int, specials: str) -> list[tuple[Fraction, bool]]:
    """Every non-negative finite value of the format, with whether its mantissa LSB is 0 (even)."""
    bias = 2 ** (ebits - 1) - 1
    out = []
    for field in range(2 ** ebits):
        for mant in range(2 ** mbits):
            if specials == "ieee" and field == 2 ** ebits - 1:
                continue  # inf / NaN
            if specials == "fn" and field == 2 ** ebits - 1 and mant == 2 ** mbits - 1:
                continue  # NaN
            if field == 0:
                value = Fraction(mant, 2 ** mbits) * Fraction(2) ** (1 - bias)
            else:
                value = (1 + Fraction(mant, 2 ** mbits)) * Fraction(2) ** (field - bias)
            out.append((value, mant % 2 == 0))
    return out


_TABLES: dict[str, list[tuple[Fraction, bool]]] = {}


def table(name: str) -> list[tuple[Fraction, bool]]:
    if name not in _TABLES:
        _TABLES[name] = decode_all(*ELEMENTS[name])
    return _TABLES[name]


def largest(name: str) -> Fraction:
    return max(v for v, _ in table(name))


def round_to(name: str, v: Fraction) -> Fraction:
    """v rounded to the format: nearest by brute force, ties to the even pattern, saturating."""
    mag = abs(v)
    top = largest(name)
    if mag > top:
        best = top
    else:
        best, best_even, best_d = None, False, None
        for value, even in table(name):
            d = abs(value - mag)
            if best is None or d < best_d or (d == best_d and even and not best_even):
                best, best_even, best_d = value, even, d
    return -best if v < 0 else best


def round_float32(v: Fraction) -> Fraction:
    """v >= 0 to float32, nearest even: 24-bit significand, exponents down to -126, subnormals below."""
    if v == 0:
        return Fraction(0)
    e = v.numerator.bit_length() - v.denominator.bit_length()
    while Fraction(2) ** e > v:
        e -= 1
    while Fraction(2) ** (e + 1) <= v:
        e += 1
    quantum = Fraction(2) ** (max(e, -126) - 23)
    k = v / quantum
    lo = math.floor(k)
    rest = k - lo
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and lo % 2 == 1):
        lo += 1
    return lo * quantum


def _finite(x: float) -> bool:
    return not (math.isnan(x) or math.isinf(x))


def quantize_block(fmt: str, block: list[float], s_t: Fraction | None = None):
    """One block -> (values [Fraction or NaN], flushed [bool], saturated [bool], scale Fraction or NaN)."""
    element, _, kind = FORMATS[fmt]
    n = len(block)
    if not all(_finite(v) for v in block):
        return [NAN] * n, [False] * n, [False] * n, NAN
    exact = [Fraction(v) for v in block]
    amax = max(abs(v) for v in exact)
    if kind == "mx":
        ebits, mbits, specials = ELEMENTS[element]
        bias = 2 ** (ebits - 1) - 1
        emax_elem = (2 ** ebits - (2 if specials == "ieee" else 1)) - bias
        if amax == 0:
            shared = -127
        else:
            _, e = math.frexp(float(amax))  # amax is a float: amax = f * 2^e, f in [0.5, 1)
            shared = (e - 1) - emax_elem
            if shared > 127:
                return [NAN] * n, [False] * n, [False] * n, NAN
            shared = max(shared, -127)
        scale = Fraction(2) ** shared
    else:
        s_b = round_to("float8_e4m3fn", amax / (6 * s_t))
        scale = s_t * s_b
    values, flushed, saturated = [], [], []
    for v in exact:
        if scale == 0:
            p, sat = Fraction(0), False
        else:
            p = round_to(element, v / scale)
            sat = abs(v / scale) > largest(element)
        value = p * scale
        values.append(value)
        flushed.append(v != 0 and value == 0)
        saturated.append(sat)
    return values, flushed, saturated, scale


FLOAT32_MAX = (2 - Fraction(1, 2 ** 23)) * Fraction(2) ** 127


def tensor_scale(amax_tensor: float) -> Fraction:
    """float32(amax / 2688); 1 for amax 0; clamped to [2^-149, float32 max] (stabilitylab's convention)."""
    if amax_tensor == 0:
        return Fraction(1)
    s = round_float32(Fraction(amax_tensor) / 2688)
    return min(max(s, Fraction(1, 2 ** 149)), FLOAT32_MAX)


def quantize_rows(fmt: str, rows: list[list[float]], tensor_amax: float | None = None):
    """Rows -> (values, flushed, saturated: lists of rows; scales: list of rows of block scales).
    Blocks run along each row; the last block of a row is short when the row length is not a multiple of
    the block size.  NVFP4's tensor amax is ``tensor_amax`` or the largest finite |x| of all rows."""
    _, size, kind = FORMATS[fmt]
    s_t = None
    if kind == "nv":
        if tensor_amax is None:
            finite = [abs(v) for row in rows for v in row if _finite(v)]
            tensor_amax = max(finite) if finite else 0.0
        s_t = tensor_scale(tensor_amax)
    out_v, out_f, out_s, out_sc = [], [], [], []
    for row in rows:
        rv, rf, rs, rsc = [], [], [], []
        for start in range(0, len(row), size):
            v, f, s, sc = quantize_block(fmt, row[start:start + size], s_t)
            rv += v
            rf += f
            rs += s
            rsc.append(sc)
        out_v.append(rv)
        out_f.append(rf)
        out_s.append(rs)
        out_sc.append(rsc)
    return out_v, out_f, out_s, out_sc
