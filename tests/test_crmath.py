"""crmath: exp, log, log1p correctly rounded in every format, proven against a plain checker.

The checker shares no code with stabilitylab.numerics.crmath: it evaluates the function
with mpmath at 50 significant digits, then finds the correctly rounded format
value by walking the format's own bit patterns (non-negative finite values are
increasing in their bit pattern): the two neighbours of |r|, the nearer one,
ties to the even bit pattern, and above ``max`` a virtual next value (bit
pattern ``max + 1``) that stands for overflow.  8- and 16-bit formats are
checked on every bit pattern, float32 on dense samples and on the inputs
hardest to round, float64 on samples.
"""

from __future__ import annotations

import bisect
import functools
import math
import struct
import time
from fractions import Fraction

import mpmath
import numpy as np
import pytest

from stabilitylab.numerics import crmath
from stabilitylab.numerics.formats import FORMATS

FUNCS = ("exp", "log", "log1p")
SMALL = [FORMATS[n] for n in ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")]
COMPUTING = [f for f in FORMATS.values() if not f.scale_only]  # (nothing is computed in a scale format)
F32, F64 = FORMATS["float32"], FORMATS["float64"]
HAS_WIDE_LONGDOUBLE = np.finfo(np.longdouble).nmant >= 63

# ------------------------------------------------------------------ checker
_MP = mpmath.MPContext()


def _mp_value(name: str, x: float, dps: int):
    if _MP.dps != dps:
        _MP.dps = dps
    return getattr(_MP, name)(_MP.mpf(x))


def as_dyadic(a) -> tuple[int, int]:
    """(m, e) with a == m * 2**e exactly, for an mpf, a float or a Fraction with a power-of-two denominator."""
    if isinstance(a, (float, int)):
        a = Fraction(a)
    if isinstance(a, Fraction):
        d = a.denominator
        assert d & (d - 1) == 0
        return a.numerator, 1 - d.bit_length()
    return a.man_exp


class Checker:
    """Correct rounding of mpmath values to one format, by its bit patterns.

    Every value involved (format values, midpoints, the virtual value above max)
    is an integer multiple of g = smallest_subnormal / 2; they are held as those
    integers, so all comparisons are exact integer comparisons.
    """

    def __init__(self, fmt):
        self.fmt = fmt
        self.nbits = 8 * fmt.dtype.itemsize
        self.udt = np.dtype(f"u{fmt.dtype.itemsize}")
        self.max_bits = int(np.array(fmt.max).astype(fmt.dtype).view(self.udt))
        self.g = as_dyadic(fmt.smallest_subnormal)[1] - 1  # g = 2**self.g
        if self.nbits <= 16:
            table = np.arange(self.max_bits + 1).astype(self.udt).view(fmt.dtype).astype(np.float64)
            self.table = table.tolist()
            assert all(a < b for a, b in zip(self.table, self.table[1:]))  # increasing with the bit pattern
            assert self.table[0] == 0 and self.table[-1] == fmt.max
            self.int_table = [self.to_grid(v) for v in self.table]
        else:
            self.table = None
            self.code = {32: ("<I", "<f"), 64: ("<Q", "<d")}[self.nbits]
        # what bit pattern max_bits + 1 would hold with an unbounded exponent: max + ulp(max)
        self.virtual = 2 * self.grid(self.max_bits) - self.grid(self.max_bits - 1)

    def to_grid(self, v: float) -> int:
        m, e = as_dyadic(v)
        assert e >= self.g
        return m << (e - self.g)

    def value(self, bits: int) -> float:
        if self.table is not None:
            return self.table[bits]
        u, f = self.code
        return struct.unpack(f, struct.pack(u, bits))[0]

    def grid(self, bits: int) -> int:
        """The value of a bit pattern in units of g (max_bits + 1: the virtual value)."""
        if bits == self.max_bits + 1:
            return self.virtual
        if self.table is not None:
            return self.int_table[bits]
        return self.to_grid(self.value(bits))

    def guess(self, m: int, e: int) -> int:
        """A bit pattern near m * 2**e >= 0 (only a starting point for the walk)."""
        try:
            a = math.ldexp(m, e)
        except OverflowError:
            a = math.inf
        if self.table is not None:
            return max(bisect.bisect_right(self.table, a) - 1, 0)
        if not a < self.fmt.max:
            return self.max_bits
        u, f = self.code
        return struct.unpack(u, struct.pack(f, a))[0]

    def round_magnitude(self, a, exact: bool = False):
        """Nearest format value to a >= 0 (ties: even bit pattern); None = overflow.

        ``a`` (mpf, float or dyadic Fraction) is an approximation unless ``exact``:
        then a value within 10**-40 |a| of a midpoint is "undecidable" (recompute
        a with more digits).
        """
        m, e = as_dyadic(a)
        assert m >= 0
        # a = m * 2**e = A / 2**k * g with integers A, k >= 0 (k = 0 when a is on the grid)
        shift = e - self.g
        A, k = (m << shift, 0) if shift >= 0 else (m, -shift)
        b = self.guess(m, e)
        while b > 0 and self.grid(b) << k > A:
            b -= 1
        while b < self.max_bits and self.grid(b + 1) << k <= A:
            b += 1
        below = self.grid(b) << k  # below <= A < above
        if below == A:
            return self.value(b)
        above = self.grid(b + 1) << k
        twice_mid = below + above
        if not exact and abs(2 * A - twice_mid) * 10**40 <= 2 * A:
            return "undecidable"
        if 2 * A < twice_mid or (2 * A == twice_mid and b % 2 == 0):
            return self.value(b)
        return None if b + 1 > self.max_bits else self.value(b + 1)

    def overflow(self, negative: bool) -> float:
        if not self.fmt.has_inf:
            return math.nan  # float8_e4m3fn: no infinity
        return -math.inf if negative else math.inf

    def reference(self, name: str, x: float) -> float:
        """name(x) correctly rounded to the format, as a float64 (exact)."""
        inf = math.inf
        if math.isnan(x):
            return math.nan
        if name == "exp":
            if x > math.log(self.fmt.max) + 1:  # e**x > e * max: beyond max + ulp(max) / 2 (and x = inf)
                return self.overflow(False)
            if x < math.log(self.fmt.smallest_subnormal) - 1:  # e**x < smallest_subnormal / e (and x = -inf)
                return 0.0
        elif name == "log":
            if x < 0:
                return math.nan
            if x == 0:
                return self.overflow(True)
            if x == inf:
                return self.overflow(False)
        else:
            if x < -1:
                return math.nan
            if x == -1:
                return self.overflow(True)
            if x == inf:
                return self.overflow(False)
            if x == 0:
                return x  # keeps the sign of zero
        for dps in (50, 150, 500):
            r = _mp_value(name, x, dps)
            if r == 0:
                return 0.0
            m = self.round_magnitude(abs(r))
            if m != "undecidable":
                break
        else:  # pragma: no cover
            raise AssertionError(f"{name}({x!r}) too close to a midpoint")
        if m is None:
            return self.overflow(r < 0)
        return -m if r < 0 else m

    def expected(self, name: str, x: np.ndarray) -> np.ndarray:
        return np.array([self.reference(name, v) for v in as_float64(x).tolist()], dtype=np.float64)


@functools.lru_cache(maxsize=None)
def checker(fmt_name: str) -> Checker:
    return Checker(FORMATS[fmt_name])


def as_float64(x: np.ndarray) -> np.ndarray:
    """Exact conversion (signalling-NaN patterns would warn)."""
    with np.errstate(invalid="ignore"):
        return x.astype(np.float64)


def all_bit_patterns(fmt) -> np.ndarray:
    n = 8 * fmt.dtype.itemsize
    return np.arange(2**n, dtype=np.uint32).astype(f"u{n // 8}").view(fmt.dtype)


def random_patterns(fmt, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    udt = np.dtype(f"u{fmt.dtype.itemsize}")
    return rng.integers(0, np.iinfo(udt).max, size=n, dtype=udt, endpoint=True).view(fmt.dtype)


def assert_same(fmt, name, x, got, expected):
    """Bit-identical results, NaN == NaN (any NaN), signed zeros distinguished."""
    assert got.dtype == fmt.dtype and got.shape == x.shape
    got64 = as_float64(got).ravel()
    both_nan = np.isnan(got64) & np.isnan(expected)
    same = (got64.view(np.uint64) == expected.view(np.uint64)) | both_nan
    if not same.all():
        bad = np.flatnonzero(~same)
        xs = as_float64(x).ravel()
        rows = [f"{name}({xs[i]!r}) = {got64[i]!r}, expected {expected[i]!r}" for i in bad[:10]]
        raise AssertionError(f"{fmt}: {bad.size} of {x.size} differ:\n" + "\n".join(rows))


def check(fmt, name, x, **kwargs):
    got = getattr(crmath, name)(fmt, x, **kwargs)
    assert_same(fmt, name, x, got, checker(fmt.name).expected(name, x))
    return got


# ------------------------------------------------------- the checker itself
def test_checker_rounds_by_hand_examples():
    c16, c8, c5, c64 = (checker(n) for n in ("float16", "float8_e4m3fn", "float8_e5m2", "float64"))
    mpf = Fraction
    assert c16.round_magnitude(mpf(1) + mpf(2) ** -11, exact=True) == 1.0  # tie: 1 has the even pattern
    assert c16.round_magnitude(mpf(1) + 3 * mpf(2) ** -11, exact=True) == 1 + 2.0**-9  # tie: up to the even pattern
    assert c16.round_magnitude(mpf(2) ** -25, exact=True) == 0.0  # half the smallest subnormal: tie to 0
    assert c16.round_magnitude(mpf(2) ** -25 * (1 + mpf(2) ** -30), exact=True) == 2.0**-24
    assert c16.round_magnitude(mpf(65520), exact=True) is None  # max + ulp/2: IEEE ties to the (even) next = overflow
    assert c16.round_magnitude(mpf(65519.99), exact=True) == 65504.0
    # e4m3fn: max 448 = 0x7E has an even pattern, the virtual next (480, 0x7F) is odd
    assert c8.round_magnitude(mpf(464), exact=True) == 448.0
    assert c8.round_magnitude(mpf(464) + mpf(2) ** -20, exact=True) is None
    assert c5.round_magnitude(mpf(61440), exact=True) is None and c5.round_magnitude(mpf(61439), exact=True) == 57344.0
    assert c64.round_magnitude(mpf(2) ** -1075, exact=True) == 0.0
    assert c64.round_magnitude(mpf(2) ** -1075 * 3, exact=True) == 2.0**-1073  # 1.5 subnormal ulps: tie to even 2
    assert c64.reference("exp", 2.0**-53) == 1 + 2.0**-52  # exp(2**-53) = 1 + 2**-53 + 2**-107 + ...
    assert c64.reference("exp", -(2.0**-54)) == 1.0  # 1 - 2**-54 + 2**-109: just above the midpoint


def test_format_round_matches_checker_at_overflow_ties():
    """The overflow semantics the checker assumes are those of Format.round / ml_dtypes."""
    with np.errstate(all="ignore"):
        e4 = FORMATS["float8_e4m3fn"]
        assert e4.round(np.array([464.0]))[0] == 448
        assert np.isnan(e4.round(np.array([np.nextafter(464.0, 500.0), 1e300, np.inf]).astype(np.float64))).all()
        assert np.isposinf(FORMATS["float16"].round(np.array([65520.0]))).all()
        assert FORMATS["float16"].round(np.array([np.nextafter(65520.0, 0.0)]))[0] == 65504


# --------------------------------------------------- exhaustive small formats
@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("fmt", [f for f in SMALL if f.dtype.itemsize == 1], ids=str)
def test_exhaustive_float8(fmt, name):
    check(fmt, name, all_bit_patterns(fmt))


@pytest.mark.slow
@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("fmt", [f for f in SMALL if f.dtype.itemsize == 2], ids=str)
def test_exhaustive_16bit(fmt, name):
    check(fmt, name, all_bit_patterns(fmt))


# ------------------------------------------------------------------ float32
# The float32 inputs hardest to round: the 60 closest to a rounding boundary among
# the inputs whose float64 value is within 2**-44 of one (benchmarks/crmath_hard_cases.py
# scans all 2**32 patterns: 731 for exp, 2885 for log, 2094 for log1p; closest
# 2.4e-9, 5.7e-11 and 1.3e-13 ulp from the boundary).  exp(2**-24) = 1 + 2**-24 +
# 2**-49 + ... (0x33800000) is one: the midpoint between 1 and 1 + 2**-23 plus 2**-49.
HARD_EXP = [
    0xc16912cd, 0xbbf0edf1, 0xc2b2e798, 0x377eff81, 0xbae0e25c, 0xb3000000, 0x39c6be5b, 0x38e69cc1,
    0x383a3ef1, 0x3d1a274e, 0x40315b33, 0x4001b249, 0x39e5bb1d, 0x36fdffc1, 0x4288942b, 0x367bffe1,
    0x35f7fff1, 0x356ffff9, 0x34dffffd, 0x343fffff, 0x33800000, 0x337fffff, 0xbc2a461a, 0x3fe67199,
    0xc0781533, 0x38ad9e29, 0xbbb70ee8, 0x41cbf87b, 0xc13d6631, 0x4034d02b, 0x3c971aaa, 0x3a7bcd08,
    0x3caffe2e, 0xbcb8f40f, 0x3c608a0e, 0xbfbfa14b, 0x40dd70cb, 0x3b18f346, 0xb7f4c0ea, 0xb7c9c09f,
    0x3f5bc24c, 0xbf81eadf, 0xb2ffffff, 0x3b8c972e, 0xbf76fd92, 0xba7242a6, 0x4178966e, 0x38643e69,
    0x4283070f, 0xbdb393eb, 0x337ffffe, 0xc2b27dd9, 0xc159fa1e, 0xc0382e72, 0x3dfb09d6, 0x3d7010de,
    0xbee0e6cd, 0xb6b50020, 0xb616000b, 0xb5d4000b,
]
HARD_LOG = [
    0x65d890d3, 0x4c5d65a5, 0x4d604ebe, 0x41178feb, 0x1f116ab8, 0x66a8c860, 0x3c413d3a, 0x6f31a8ec,
    0x38dcbe38, 0x4665a9a6, 0x5ee8984e, 0x3bf86ef0, 0x79e7ec37, 0x0dc8bba4, 0x2c4c24b7, 0x111c87f8,
    0x1a8446cb, 0x464d5b2b, 0x66abbd63, 0x2e492984, 0x4e85f412, 0x29fd22f8, 0x28e3fa26, 0x29e6126b,
    0x064cb44b, 0x5d800341, 0x62b467ba, 0x07c060fa, 0x0f61ff63, 0x54af989d, 0x5f64c24a, 0x2423c085,
    0x6d1f23eb, 0x16c5ee7a, 0x145cb6d4, 0x7d98b8f4, 0x39c31348, 0x22925ad4, 0x7405dee8, 0x1b81ab52,
    0x25f12e61, 0x022ae487, 0x4b77325a, 0x25be734f, 0x2758eec4, 0x22f6d580, 0x3fd364d7, 0x6e7054f2,
    0x1aac80dc, 0x64e27fa3, 0x736cc271, 0x18b06f2a, 0x5d8b2d5b, 0x6914cb96, 0x46ca6c75, 0x14907055,
    0x1dc9e7c1, 0x158772eb, 0x4bf70db3, 0x27a51454,
]
HARD_LOG1P = [
    0x35400003, 0xb53ffffd, 0x65d890d3, 0x3efd81ad, 0x3710001b, 0xb70fffe5, 0x55185f82, 0x41078feb,
    0x66a8c860, 0xbb0ec8c4, 0x6f31a8ec, 0x3770004b, 0xb76fffb5, 0x4665a5a6, 0x5ee8984e, 0x79e7ec37,
    0x3ebe9143, 0x3ddbfec3, 0x464d572b, 0x36dedace, 0x66abbd63, 0x5d800341, 0x62b467ba, 0x5f64c24a,
    0x37c6e0e0, 0xb7c6e012, 0x6d1f23eb, 0x7d98b8f4, 0x50da4bf6, 0x7405dee8, 0xba800b50, 0x4b773259,
    0x5588e13b, 0xb619776c, 0x3f26c9ae, 0x6e7054f2, 0x64e27fa3, 0x736cc271, 0xb3b504f3, 0x5d8b2d5b,
    0x6914cb96, 0x46ca6a75, 0x4ee5f0e7, 0x542dfac1, 0x3cf58230, 0x4e599333, 0x63b134d9, 0x5b98e163,
    0x44bc2360, 0x5bf9890b, 0x3b9315c8, 0x5efbcaae, 0x74896a73, 0x6d6c9d3a, 0x52fa32c0, 0xb52953fb,
    0x6a2510d0, 0x7a854203, 0x5b042ba3, 0x4016ee45,
]
HARD = {"exp": HARD_EXP, "log": HARD_LOG, "log1p": HARD_LOG1P}


def f32_range(lo: float, hi: float) -> np.ndarray:
    """Every float32 in [lo, hi] (lo, hi of one sign: a range across 0 spans billions)."""
    a, b = np.float32(lo), np.float32(hi)
    ia, ib = (int(np.array(v).view(np.int32)) for v in (a, b))
    assert abs(ib - ia) < 100_000
    bits = np.arange(ia, ib + 1) if a >= 0 else np.arange(ib, ia + 1)  # negative: the pattern grows with |x|
    return np.sort(bits.astype(np.int32).view(np.float32))


def f32_around(centre: float, count: int) -> np.ndarray:
    """The 2 * count + 1 float32 values nearest to centre (same sign)."""
    c = np.array(centre, dtype=np.float32).view(np.int32)
    return np.arange(c - count, c + count + 1).astype(np.int32).view(np.float32)


def f32_small(limit: float, n: int, seed: int) -> np.ndarray:
    """n random float32 patterns with 0 <= |x| <= limit, both signs (every binade equally likely)."""
    rng = np.random.default_rng(seed)
    top = int(np.array(limit, dtype=np.float32).view(np.int32))
    x = rng.integers(0, top, n, endpoint=True).astype(np.int32).view(np.float32)
    return np.where(rng.integers(0, 2, n) == 1, -x, x)


def f32_patterns(first: int, last: int) -> np.ndarray:
    """Every float32 with bit pattern in [first, last]."""
    return np.arange(first, last + 1).astype(np.uint32).view(np.float32)


F32_MAX = float(np.finfo(np.float32).max)
F32_RANGES = {
    "exp": [
        f32_range(88.70, 88.75),  # overflow threshold ln(max + ulp/2) = 88.7228...
        f32_range(-87.35, -87.33),  # ln(tiny) = -87.336...: normal / subnormal boundary
        f32_range(-103.29, -103.27),  # ln(smallest subnormal) = -103.278...
        f32_range(-103.98, -103.96),  # ln(smallest subnormal / 2) = -103.972...: 0 below
        f32_around(2.0**-24, 3000), f32_around(-(2.0**-25), 3000),  # exp(x) ~ 1 + x near the midpoints
        f32_small(1e-3, 5000, seed=1),
    ],
    "log": [
        f32_range(1 - 2.0**-10, 1.0), f32_range(1.0, 1 + 2.0**-10),  # every float32 near 1
        f32_patterns(0, 3000), f32_patterns(0x7FFFFF - 3000, 0x800000 + 100),  # subnormals
        f32_range(3.4e38, F32_MAX), f32_range(0.5, 0.501), f32_range(1.998, 2.0),
    ],
    "log1p": [
        f32_small(2.0**-10, 6000, seed=2),  # near 0, both signs, every binade
        f32_patterns(0, 2000), -f32_patterns(0, 2000), -f32_patterns(0x7FFFFF - 2000, 0x800000 + 100),
        f32_range(-1.0, -1 + 2.0**-12),  # near the pole
        f32_range(3.4e38, F32_MAX), f32_around(2.0**-12, 3000), f32_around(-(2.0**-12), 3000),
    ],
}
for _ranges in F32_RANGES.values():
    for _r in _ranges:
        _r.setflags(write=False)


def test_f32_ranges_are_what_they_say():
    r = f32_range(1.0, float(np.nextafter(np.float32(1), np.float32(2))))
    assert r.tolist() == [1.0, float(np.nextafter(np.float32(1), np.float32(2)))]
    assert f32_range(-(2.0**-148), -0.0).tolist() == [-(2.0**-148), -(2.0**-149), -0.0]
    assert f32_patterns(0, 1).tolist() == [0.0, 2.0**-149]
    small = f32_small(1e-3, 1000, seed=0)
    assert (np.abs(small) <= np.float32(1e-3)).all() and (small < 0).any() and (np.abs(small) < 1e-30).any()
    assert f32_around(1.0, 1).tolist() == [float(np.nextafter(np.float32(1), np.float32(0))), 1.0,
                                           float(np.nextafter(np.float32(1), np.float32(2)))]


@pytest.mark.slow
@pytest.mark.parametrize("name", FUNCS)
def test_float32_random_patterns(name):
    check(F32, name, random_patterns(F32, 200_000, seed=32))


@pytest.mark.parametrize("name", FUNCS)
def test_float32_dense_ranges(name):
    x = np.concatenate(F32_RANGES[name])
    check(F32, name, x)


@pytest.mark.parametrize("name", FUNCS)
def test_float32_hardest_cases(name):
    x = np.array(HARD[name], dtype=np.uint32).view(np.float32)
    assert x.size >= 20
    stats = {}
    check(F32, name, x, stats=stats)
    assert stats["undecided"] == x.size  # every one of them goes through mpmath


# ------------------------------------------------------------------ float64
def f64_samples(name: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    patterns = random_patterns(F64, n, seed)
    if name == "exp":
        extra = [rng.uniform(-746, 710, n), rng.uniform(-745.2, -708, n // 4),  # subnormal results
                 rng.uniform(-1, 1, n // 4) * 2.0 ** rng.integers(-60, 0, n // 4),
                 np.array([2.0**-53, -(2.0**-54), 2.0**-54, -(2.0**-53), 1e-300, -1e-300])]
        # overflow (ln(max + ulp/2)), 0 below ln(2**-1075), ln(2**-1074), subnormal below ln(2**-1022)
        thresholds = np.array([709.782712893384, -745.1332191019411, -744.4400719213812, -708.3964185322641])
        extra += [t + np.arange(-100, 101) * np.spacing(t) for t in thresholds]
    elif name == "log":
        extra = [np.exp(rng.uniform(-744, 709, n)), 1 + rng.uniform(-1e-6, 1e-6, n // 4),
                 1 + np.arange(-200, 201) * 2.0**-53, np.arange(1, 300) * 2.0**-1074]
    else:
        extra = [np.exp(rng.uniform(-744, 709, n)), -np.exp(rng.uniform(-744, 0, n)),
                 -1 + np.arange(1, 200) * 2.0**-53, np.arange(-200, 201) * 2.0**-1074,
                 rng.uniform(-1, 1, n // 4) * 2.0 ** rng.integers(-80, 0, n // 4)]
    return np.concatenate([patterns, *extra]).astype(np.float64)


@pytest.mark.parametrize("name", FUNCS)
def test_float64_samples(name):
    x = f64_samples(name, 2000, seed=64)
    stats = {}
    check(F64, name, x, stats=stats)
    assert stats["undecided"] > 0  # the mpmath fallback was exercised


@pytest.mark.parametrize("name", FUNCS)
def test_float64_without_wide_longdouble(name, monkeypatch):
    """Where longdouble is only float64 (Windows, macOS/ARM): mpmath for every element."""
    monkeypatch.setattr(crmath, "wide_type", lambda fmt: None if fmt.precision > 24 else "float64")
    x = f64_samples(name, 150, seed=65)
    stats = {}
    check(F64, name, x, stats=stats)
    finite = np.isfinite(x) & (x != 0) & (x != 1)
    assert stats["undecided"] >= 0.5 * finite.sum()


@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("fmt", [*SMALL, F32], ids=str)
def test_everything_through_mpmath(fmt, name, monkeypatch):
    """The mpmath (Ziv) path alone is correct too: force it for every element."""
    monkeypatch.setattr(crmath, "wide_type", lambda fmt: None)
    x = random_patterns(fmt, 1500, seed=7)
    check(fmt, name, x)


@pytest.mark.parametrize("name", FUNCS)
def test_loose_wide_bound_still_correct(name, monkeypatch):
    """With a huge assumed wide error, most elements are undecided; results do not change."""
    monkeypatch.setitem(crmath.WIDE_REL_ERROR, "float64", 2.0**-6)
    fmt = FORMATS["bfloat16"]
    x = random_patterns(fmt, 3000, seed=8)
    stats = {}
    check(fmt, name, x, stats=stats)
    assert stats["undecided"] > 0.2 * x.size


def test_wide_types():
    assert {f.name: crmath.wide_type(f) for f in FORMATS.values() if f.precision <= 24} == {
        n: "float64" for n in FORMATS if n != "float64"}
    assert crmath.wide_type(F64) == ("longdouble" if HAS_WIDE_LONGDOUBLE else None)


@pytest.mark.skipif(not HAS_WIDE_LONGDOUBLE, reason="longdouble is not wider than float64")
def test_loose_longdouble_bound_still_correct(monkeypatch):
    from stabilitylab.numerics import exp64

    monkeypatch.setitem(crmath.WIDE_REL_ERROR, "longdouble", 2.0**-54)
    monkeypatch.setattr(exp64, "REL_ERROR", 2.0**-54)  # exp's float64 stage comes first on its domain
    x = f64_samples("exp", 300, seed=66)
    stats = {}
    check(F64, "exp", x, stats=stats)
    assert stats["double_double"] + stats["undecided"] > 0.2 * x.size


@pytest.mark.skipif(not HAS_WIDE_LONGDOUBLE, reason="longdouble is not wider than float64")
@pytest.mark.parametrize("name", FUNCS)
def test_float64_double_double_stage_and_its_fallback(name, monkeypatch):
    """float64: the double-double stage decides what longdouble leaves (bit for bit the checker's
    answers), and with a huge assumed double-double error, mpmath takes over: the same results."""
    from stabilitylab.numerics import doubledouble, exp64

    monkeypatch.setitem(crmath.WIDE_REL_ERROR, "longdouble", 2.0**-50)  # many elements reach the stage
    monkeypatch.setattr(exp64, "REL_ERROR", 2.0**-50)  # (exp: from its float64 stage)
    monkeypatch.setattr(crmath, "LOG64_ERROR", 2.0**-40)  # (log, log1p: from theirs)
    x = f64_samples(name, 1500, seed=67)
    stats = {}
    check(F64, name, x, stats=stats)
    assert stats["double_double"] > 0.2 * x.size
    monkeypatch.setattr(doubledouble, "REL_ERROR", 2.0**-40)
    stats = {}
    check(F64, name, x, stats=stats)
    assert stats["undecided"] > 0.2 * x.size and stats.get("double_double", 0) < 0.05 * x.size


@pytest.mark.parametrize("name", FUNCS)
def test_ziv_loop_raises_precision(name, monkeypatch):
    """With a huge assumed mpmath error the first precisions cannot decide: the loop doubles P."""
    monkeypatch.setattr(crmath, "_MP_SLACK_BITS", 70)  # P = 80 bits (float32) leaves 10 good bits
    monkeypatch.setattr(crmath, "wide_type", lambda fmt: None)
    x = np.concatenate([random_patterns(F32, 300, seed=9), np.array(HARD[name], dtype=np.uint32).view(np.float32)])
    stats = {}
    check(F32, name, x, stats=stats)
    assert stats["max_prec"] >= 160  # doubled at least once (starts at 2 * 24 + 32 = 80)


@pytest.mark.skipif(not HAS_WIDE_LONGDOUBLE, reason="longdouble is not wider than float64")
def test_longdouble_to_float64_cast_is_correctly_rounded():
    """crmath rounds longdouble to float64 with numpy's cast: ties to even, also subnormal and at overflow."""
    ld = np.longdouble
    s = ld(2) ** -1074  # smallest subnormal
    m = ld(F64.max)
    half_ulp_max = ld(2) ** 970
    cases = [
        (s / 2, 0.0), (s / 2 * (1 + ld(2) ** -62), 2.0**-1074),
        (s * ld(1.5), 2.0**-1073), (s * ld(2.5), 2.0**-1073), (s * ld(2.5) * (1 + ld(2) ** -62), 3 * 2.0**-1074),
        (s * (2**52 - ld(0.5)), 2.0**-1022), (s * (2**52 + ld(0.5)), 2.0**-1022),
        (m + half_ulp_max, math.inf), (m + half_ulp_max - ld(2) ** 960, F64.max),
        (1 + ld(2) ** -53, 1.0), (1 + 3 * ld(2) ** -53, 1 + 2.0**-51),
    ]
    with np.errstate(all="ignore"):
        got = np.array([c for c, _ in cases], dtype=ld).astype(np.float64)
    assert got.tolist() == [e for _, e in cases]


# ------------------------------------------------------ sanity and interface
@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("fmt", [*SMALL, F32], ids=str)
def test_agrees_with_format_round_of_mpmath(fmt, name):
    """In the normal range, fmt.round(mpmath value) gives the same results (a double rounding,
    harmless away from midpoints)."""
    rng = np.random.default_rng(3)
    with np.errstate(all="ignore"):
        x = fmt.round(rng.uniform({"exp": -3, "log": 0.01, "log1p": -0.9}[name], 3, 400))
    with np.errstate(all="ignore"):
        want = fmt.round(np.array([float(_mp_value(name, v, 40)) for v in x.astype(np.float64).tolist()]))
    got = getattr(crmath, name)(fmt, x)
    normal = np.abs(want.astype(np.float64)) >= fmt.tiny
    assert normal.sum() > 300
    np.testing.assert_array_equal(got[normal].astype(np.float64), want[normal].astype(np.float64))


INF, NAN = math.inf, math.nan
SPECIAL = {  # x -> result, IEEE 754 (before the format's treatment of infinity)
    "exp": [(0.0, 1.0), (-0.0, 1.0), (INF, INF), (-INF, 0.0), (NAN, NAN)],
    "log": [(1.0, 0.0), (0.0, -INF), (-0.0, -INF), (-1.0, NAN), (INF, INF), (-INF, NAN), (NAN, NAN)],
    "log1p": [(0.0, 0.0), (-0.0, -0.0), (-1.0, -INF), (-2.0, NAN), (INF, INF), (-INF, NAN), (NAN, NAN)],
}


@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("fmt", COMPUTING, ids=str)
def test_special_values(fmt, name):
    cases = [(x, r) for x, r in SPECIAL[name] if (fmt.has_inf or not math.isinf(x))  # e4m3fn: no inf input
             and (fmt.nan != "none" or not math.isnan(x))]  # fp6 / fp4: no NaN input
    with np.errstate(all="ignore"):
        x = np.array([c[0] for c in cases]).astype(fmt.dtype)
    got = getattr(crmath, name)(fmt, x).astype(np.float64)
    for (xv, want), g in zip(cases, got):
        if math.isinf(want) and not fmt.has_inf:  # float8_e4m3fn has no infinity: NaN, or saturated
            want = math.copysign(fmt.max, want) if fmt.saturates else NAN
        if math.isnan(want) and fmt.nan == "none":
            want = -0.0  # fp6 / fp4 have no NaN: ml_dtypes stores (a positive) NaN as -0
        if want == 0 and not fmt.signed_zero:
            want = 0.0  # fnuz: no -0
        if math.isnan(want):
            assert math.isnan(g), (fmt, name, xv, g)
        else:
            assert g == want and math.copysign(1, g) == math.copysign(1, want), (fmt, name, xv, g)


@pytest.mark.parametrize("fmt", COMPUTING, ids=str)
def test_overflow_gives_what_the_format_gives(fmt):
    with np.errstate(all="ignore"):
        x = np.array([fmt.ln_max + 0.5, fmt.max]).astype(fmt.dtype)
        want = fmt.round(np.array([np.inf, np.inf]))
    got = crmath.exp(fmt, x)
    assert np.array_equal(np.isnan(got.astype(np.float64)), np.isnan(want.astype(np.float64)))
    assert (got.astype(np.float64) == want.astype(np.float64)).all() or not fmt.has_inf
    assert crmath.exp(fmt, np.array([-fmt.max]).astype(fmt.dtype)).astype(np.float64).tolist() == [0.0]


@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 4), (2, 0, 3), (2, 3, 4)])
@pytest.mark.parametrize("fmt", COMPUTING, ids=str)
def test_shape_and_dtype_preserved(fmt, shape):
    rng = np.random.default_rng(1)
    with np.errstate(all="ignore"):
        x = fmt.round(rng.uniform(-2, 2, shape))
    for name in FUNCS:
        y = getattr(crmath, name)(fmt, x)
        assert isinstance(y, np.ndarray) and y.shape == x.shape and y.dtype == fmt.dtype
        if x.size:
            flat = getattr(crmath, name)(fmt, x.ravel())
            np.testing.assert_array_equal(y.ravel().astype(np.float64), flat.astype(np.float64))


def test_non_contiguous_input_and_input_untouched():
    fmt = FORMATS["bfloat16"]
    x = fmt.round(np.linspace(-3, 3, 24)).reshape(4, 6)
    before = x.copy()
    y = crmath.exp(fmt, x.T[::2])
    contiguous = crmath.exp(fmt, np.ascontiguousarray(x.T[::2]))
    np.testing.assert_array_equal(y.astype(np.float64), contiguous.astype(np.float64))
    np.testing.assert_array_equal(x.view(np.uint16), before.view(np.uint16))


def test_wrong_dtype_is_refused():
    with pytest.raises(TypeError, match="bfloat16"):
        crmath.exp(FORMATS["bfloat16"], np.array([1.0], dtype=np.float64))
    with pytest.raises(TypeError, match="float32"):
        crmath.exp(FORMATS["float32"], np.array([1.0], dtype=np.float64))


@pytest.mark.parametrize("fmt", SMALL, ids=lambda f: f.name)
@pytest.mark.parametrize("name", FUNCS)
def test_float32_storage_gives_the_same_values(fmt, name):
    """Values of a <= 16-bit format held in float32 (Arith(fast=True)): the same results, every bit pattern."""
    values = all_bit_patterns(fmt)
    with np.errstate(all="ignore"):
        own = getattr(crmath, name)(fmt, values).astype(np.float64)
        stored = getattr(crmath, name)(fmt, values.astype(np.float32))
        assert stored.dtype == np.float32
        stored = stored.astype(np.float64)  # signalling NaN patterns warn when cast
    assert np.array_equal(own, stored, equal_nan=True)
    assert np.array_equal(np.signbit(own[~np.isnan(own)]), np.signbit(stored[~np.isnan(stored)]))


def test_mpmath_global_precision_untouched():
    mpmath.mp.dps = 15
    crmath.exp(F64, np.array([2.0**-53, 0.1]))
    crmath.exp(FORMATS["float16"], np.array([1.0], dtype=np.float16))
    assert mpmath.mp.dps == 15


def test_no_warnings_from_awkward_inputs():
    """filterwarnings=error: NaN, inf, huge and tiny inputs raise no numpy warning."""
    for fmt in COMPUTING:
        with np.errstate(all="ignore"):
            x = np.array([np.nan, np.inf, -np.inf, 0, -0.0, fmt.max, -fmt.max, fmt.smallest_subnormal, -1, -2])
            x = x.astype(fmt.dtype)
        for name in FUNCS:
            getattr(crmath, name)(fmt, x)


def test_speed_is_vectorized():
    """Not a benchmark: 10**5 float32 values take well under 2 s (no per-element Python)."""
    x = random_patterns(F32, 100_000, seed=5)
    t0 = time.perf_counter()
    crmath.exp(F32, x)
    assert time.perf_counter() - t0 < 2.0


def float32_exp_worst_rel_error(first: int, last: int, chunk: int = 2**16) -> float:
    """Largest |expf(x) - exp(x)| / exp(x) (numpy's float32 exp against its float64 exp) over the
    float32 inputs with bit pattern in [first, last] whose float32 exp is normal and finite.

    Walks the patterns in chunks of ``chunk`` inputs (~26 bytes each) in preallocated buffers:
    memory stays small whatever the range (the whole float32 range at once took ~19 GB), and a
    chunk of 2**16 stays in the CPU caches between the passes (faster than large chunks)."""
    patterns = np.empty(chunk, dtype=np.uint32)
    e32 = np.empty(chunk, dtype=np.float32)
    w32 = np.empty(chunk, dtype=np.float64)
    w64 = np.empty(chunk, dtype=np.float64)
    outside = np.empty(chunk, dtype=bool)
    tiny = np.float32(2.0**-126)
    worst = 0.0
    for start in range(first, last + 1, chunk):
        n = min(chunk, last + 1 - start)
        p, e, a, b, o = patterns[:n], e32[:n], w32[:n], w64[:n], outside[:n]
        p[:] = np.arange(start, start + n, dtype=np.uint32)
        x = p.view(np.float32)
        with np.errstate(all="ignore"):  # beyond the normal range: overflow, underflow, inf - inf
            np.exp(x, out=e)
            b[:] = x  # exact
            np.exp(b, out=b)
            a[:] = e
            np.subtract(a, b, out=a)
            np.abs(a, out=a)
            np.divide(a, b, out=a)
            if not (e.min() >= tiny and e.max() < np.inf):  # (NaN: also left out)
                np.less(e, tiny, out=o)
                o |= ~np.isfinite(e)
                a[o] = 0.0  # subnormal, zero or non-finite float32 results: not covered by the bound
        worst = max(worst, float(a.max()))
    return worst


def test_float32_exp_worst_rel_error_of_a_few_inputs():
    """The chunked scan finds the same worst error as a plain loop, across chunk boundaries,
    and leaves out non-normal and infinite results."""
    x = f32_around(1.0, 50)
    first, last = (int(np.array(v).view(np.uint32)) for v in (x[0], x[-1]))
    plain = max(abs(float(np.exp(v)) - math.exp(float(v))) / math.exp(float(v)) for v in x)
    assert plain > 0
    assert float32_exp_worst_rel_error(first, last, chunk=7) == plain
    assert float32_exp_worst_rel_error(first, last) == plain
    deep = int(np.array(np.float32(-104.0)).view(np.uint32))  # exp = 0 or subnormal in float32
    assert float32_exp_worst_rel_error(deep - 1000, deep + 1000) == 0.0
    over = int(np.array(np.float32(89.0)).view(np.uint32))  # exp = inf in float32
    assert float32_exp_worst_rel_error(over, over + 1000) == 0.0


@pytest.mark.slow
def test_float32_exp_error_bound_holds_on_this_machine():
    """crmath.FLOAT32_EXP_REL_ERROR: numpy's float32 exp against float64 exp (error 2**-44 at
    most, see WIDE_REL_ERROR) on every float32 input whose exp is a normal float32: all x in
    [ln(tiny), ln(max)] = [-87.34, 88.72], bit pattern by bit pattern (~2.2 * 10**9 inputs)."""
    lo, hi = np.float32(-87.35), np.float32(88.73)  # a little beyond both ends; non-normal results are left out
    assert math.exp(lo) < 2.0**-126 and math.exp(hi) > F32_MAX
    worst = max(float32_exp_worst_rel_error(0, int(np.array(hi).view(np.uint32))),  # 0 <= x <= hi
                float32_exp_worst_rel_error(0x80000000, int(np.array(lo).view(np.uint32))))  # lo <= x <= -0
    assert 0 < worst
    assert worst + crmath.WIDE_REL_ERROR["float64"] <= crmath.FLOAT32_EXP_REL_ERROR


def _wide_values(pair: str, drops: np.ndarray, exponents: np.ndarray, seed: int, top: bool = False) -> np.ndarray:
    """Positive wide values (float64 for float32, x87 longdouble for float64) with the given dropped
    bits (the bits below the format's last) and exponents, random bits between (``top``: all ones, a
    significand just below 2)."""
    rng = np.random.default_rng(seed)
    n = len(drops)
    if pair == "float32":  # 52 stored bits, 29 dropped
        middle = np.full(n, (1 << 23) - 1, np.uint64) if top else rng.integers(0, 1 << 23, n, dtype=np.uint64)
        bits = ((exponents + 1023).astype(np.uint64) << np.uint64(52)) | (middle << np.uint64(29)) | drops
        return bits.view(np.float64)
    words = np.zeros((n, 2), dtype=np.uint64)  # 64 bits with the integer bit, 11 dropped
    middle = np.full(n, (1 << 52) - 1, np.uint64) if top else rng.integers(0, 1 << 52, n, dtype=np.uint64)
    words[:, 0] = np.uint64(1 << 63) | (middle << np.uint64(11)) | drops
    words[:, 1] = (exponents + 16383).astype(np.uint64)
    return words.reshape(-1).view(np.longdouble)


@pytest.mark.parametrize("pair", ["float32", "float64"])
def test_bits_decision_holds_at_its_slack(pair):
    """crmath._decided_by_bits (its inequality is in its docstring): wide values w whose dropped bits lie
    a few wide ulps either side of the slack around the midpoint pattern, in the lowest, a middle and the
    top binades.  Where it decides, both ends of [w - E|w|, w + E|w|] (exact dyadic rationals, E the
    wide type's assumed error) round by hand (the Checker) to w's cast; at least one element per side
    of the slack is decided / left; and a slack two smaller would be wrong: with a significand just below 2,
    E|w| is within one ulp of the slack, and the ends of w two ulps inside it round differently."""
    if pair == "float64" and not crmath._X87:
        pytest.skip("longdouble is not x87 extended precision here")
    fmt, kind, drop, ulps = (F32, "float64", 29, 2**53) if pair == "float32" else (F64, "longdouble", 11, 2**64)
    E = Fraction(crmath.WIDE_REL_ERROR[kind])
    slack = math.ceil(E * ulps) + 1
    half = 1 << (drop - 1)
    offsets = np.arange(slack - 3, slack + 4)
    drops = np.concatenate([half - offsets, half + offsets]).astype(np.uint64)
    exps = np.array([fmt.min_exponent, fmt.min_exponent + 1, 0, 5, fmt.max_exponent - 1, fmt.max_exponent])
    d, e = np.meshgrid(drops, exps)
    w = _wide_values(pair, d.ravel(), e.ravel(), seed=len(pair))
    decided = crmath._decided_by_bits(fmt, kind, w)
    distance = np.abs(d.ravel().astype(np.int64) - half)
    inside = (e.ravel() > fmt.min_exponent) & (e.ravel() < fmt.max_exponent)
    assert np.array_equal(decided, (distance > slack) & inside)
    assert decided.any() and (inside & ~decided).any()
    check = Checker(fmt)
    cast = w.astype(fmt.dtype).astype(np.float64)

    def ends_round_alike(value, err) -> bool:
        return check.round_magnitude(value - err, exact=True) == check.round_magnitude(value + err, exact=True)

    for i in np.flatnonzero(inside):
        value = Fraction(*w[i].as_integer_ratio())
        if decided[i]:
            assert ends_round_alike(value, E * value), (pair, i)
            assert check.round_magnitude(value, exact=True) == cast[i]
    near = np.array([half - (slack - 2), half + (slack - 2)], dtype=np.uint64)
    for v in _wide_values(pair, near, np.array([3, 3]), seed=1, top=True):
        value = Fraction(*v.as_integer_ratio())
        assert not ends_round_alike(value, E * value)


def test_undecided_float32_is_where_decided_by_bits_fails():
    """crmath._undecided_float32 (the float32 fast test: low words, unsigned wrap, min / max) gives the
    indices where _decided_by_bits fails, on values in the range it accepts (and None outside it): dropped
    bits at and around the slack on both sides of the half-way pattern, at 0 and all ones, exponents at
    the limits of the range; negative, zero, subnormal, out-of-range and non-finite values."""
    fmt = FORMATS["float32"]
    slack = math.ceil(crmath.WIDE_REL_ERROR["float64"] * 2.0**53) + 1
    h = 1 << 28
    lows = [0, 1, (1 << 29) - 1, h, h - slack, h + slack, h - slack - 1, h + slack + 1, h - slack + 1,
            h + slack - 1, h - 2 * slack, h + 2 * slack, 12345, (1 << 29) - 12345]
    rng = np.random.default_rng(5)
    bases = np.concatenate([rng.uniform(0.5, 100, 20), 2.0 ** np.arange(-125, 127), [2.0**127 * 0.999]])
    values = []
    for b in bases:
        high = np.array([b]).view(np.uint64)[0] & ~np.uint64((1 << 29) - 1)
        values += [np.array([high | np.uint64(low)], np.uint64).view(np.float64)[0] for low in lows]
    w = np.array(values, np.float64)
    left = crmath._undecided_float32(fmt, "float64", w)
    want = np.flatnonzero(~crmath._decided_by_bits(fmt, "float64", w))
    assert np.array_equal(left, want) and 100 < len(want) < len(w) - 100
    assert crmath._undecided_float32(fmt, "float64", np.delete(w, want)).size == 0
    assert crmath._undecided_float32(fmt, "float64", w[want]) is None  # (nothing decided: the interval path)
    for outside in (-1.5, 0.0, -0.0, 5e-324, np.inf, -np.inf, np.nan, 2.0**-126 * 1.5, 2.0**127, 2.0**128):
        assert crmath._undecided_float32(fmt, "float64", np.append(w, outside)) is None
    assert crmath._undecided_float32(FORMATS["bfloat16"], "float64", w) is None  # (float32 only)


@pytest.mark.skipif(not crmath._X87, reason="the float64 log stage is used where longdouble is x87's")
@pytest.mark.parametrize("name", ["log", "log1p"])
def test_float64_log_stage_near_midpoints(name, monkeypatch):
    """crmath's float64 stage for log / log1p (one Newton step from numpy's value with exp64) on arguments
    whose result is within 2**-9 ulp of a float64 rounding midpoint (found with longdouble), checked against
    mpmath; with its bound's absolute part 2**-75 (too small) some come out wrong: the check can fail."""
    rng = np.random.default_rng(68)
    x = np.concatenate([np.exp(rng.uniform(-30, 30, 2**20)), rng.uniform(-0.5, 4, 2**19)])
    x = x[(x >= crmath.LOG64_DOMAIN[name][0]) & (x > 0 if name == "log" else x > -0.5)]
    w = (np.log if name == "log" else np.log1p)(x.astype(np.longdouble))
    f = w.astype(np.float64)
    d = np.abs((w - f.astype(np.longdouble)) / np.spacing(np.abs(f)).astype(np.longdouble))
    x = x[np.abs(d - 0.5) < 2.0**-9]
    assert len(x) > 500
    stats = {}
    got = getattr(crmath, name)(F64, x, stats=stats)
    assert stats["float64_decided"] > 0.05 * len(x)  # the stage decides some even this near
    with mpmath.workprec(120):
        want = np.array([float(getattr(mpmath, name)(mpmath.mpf(float(v)))) for v in x])
    assert np.array_equal(got, want)
    monkeypatch.setattr(crmath, "LOG64_ERROR", 2.0**-75)  # (stats: this module's stage, not the compiled kernel's)
    assert not np.array_equal(getattr(crmath, name)(F64, x, stats={}), want)
