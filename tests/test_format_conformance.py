"""One conformance class every Format passes (like ml_dtypes' tests: capabilities as data).

Adding a format is one entry in ``FORMAT_DATA`` (its reference dtype, its width, whether it
has an infinity and whether it saturates) plus this class turning green.  Only the public attributes of ``Format`` are
used (``name, dtype, max, tiny, smallest_subnormal, eps, precision, unit_roundoff, has_inf,
round, round32, ulp``): how a Format gets its constants is its own business.

The references are independent of stabilitylab: ``ml_dtypes.finfo`` (numpy's finfo for numpy's
types), numpy's / ml_dtypes' conversions from float32 (correctly rounded, ties to even) and
mpmath.  ml_dtypes converts float64 through float32, a double rounding, so float64 inputs are
referred to float32 values that round the same way: a format value and a midpoint between two
neighbours are exact in float32 (p + 1 <= 12 bits), and a float64 a hair off a midpoint rounds
like the float32 a hair off on the same side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import mpmath
import numpy as np
import pytest

from stabilitylab.numerics import crmath
from stabilitylab.numerics.formats import FORMATS


@dataclass(frozen=True)
class FormatData:
    """What a format is, from outside stabilitylab: its dtype and width (in bits: fp6 and fp4 are stored in
    a byte), whether it has infinities, whether overflow saturates (to +-max: the ``:saturate`` variants,
    whose reference is ml_dtypes' conversion of the value clipped to +-max, and fp6 / fp4, whose
    ml_dtypes conversion does it), and whether it is a scale format (unsigned: no crmath)."""

    dtype: type
    bits: int
    has_inf: bool = True
    saturate: bool = False
    scale: bool = False


def _no_inf(dtype, bits=8, saturate=False, scale=False):
    return FormatData(dtype, bits, has_inf=False, saturate=saturate, scale=scale)


FORMAT_DATA = {
    "float16": FormatData(np.float16, 16),
    "bfloat16": FormatData(ml_dtypes.bfloat16, 16),
    "float32": FormatData(np.float32, 32),
    "float64": FormatData(np.float64, 64),
    "float8_e4m3fn": _no_inf(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": FormatData(ml_dtypes.float8_e5m2, 8),
    "float8_e4m3fnuz": _no_inf(ml_dtypes.float8_e4m3fnuz),
    "float8_e5m2fnuz": _no_inf(ml_dtypes.float8_e5m2fnuz),
    "float8_e4m3b11fnuz": _no_inf(ml_dtypes.float8_e4m3b11fnuz),
    "float8_e4m3": FormatData(ml_dtypes.float8_e4m3, 8),
    "float8_e3m4": FormatData(ml_dtypes.float8_e3m4, 8),
    "float6_e2m3fn": _no_inf(ml_dtypes.float6_e2m3fn, 6, saturate=True),
    "float6_e3m2fn": _no_inf(ml_dtypes.float6_e3m2fn, 6, saturate=True),
    "float4_e2m1fn": _no_inf(ml_dtypes.float4_e2m1fn, 4, saturate=True),
    "float8_e8m0fnu": _no_inf(ml_dtypes.float8_e8m0fnu, scale=True),
    "float8_e5m3fnu": _no_inf(ml_dtypes.float8_e5m3fnu, scale=True),
    "float8_e4m3fn:saturate": _no_inf(ml_dtypes.float8_e4m3fn, saturate=True),
    "float8_e4m3fnuz:saturate": _no_inf(ml_dtypes.float8_e4m3fnuz, saturate=True),
    "float8_e5m2fnuz:saturate": _no_inf(ml_dtypes.float8_e5m2fnuz, saturate=True),
    "float8_e4m3b11fnuz:saturate": _no_inf(ml_dtypes.float8_e4m3b11fnuz, saturate=True),
}
FORMATS_WITH_NO_INFINITY = [n for n, d in FORMAT_DATA.items() if not d.has_inf]
ENUMERABLE = [n for n, d in FORMAT_DATA.items() if d.bits <= 16]  # every bit pattern is checked
FUNCS = ("exp", "log", "log1p", "tanh")


def test_every_format_has_conformance_data():
    assert sorted(FORMATS) == sorted(FORMAT_DATA)


def test_every_ml_dtypes_float_format_is_declared():
    """ml_dtypes' float types (0.7: bfloat16 and eleven float8/6/4 ones) are all Formats, by the same name."""
    names = [n for n in dir(ml_dtypes) if n.startswith(("float", "bfloat")) and isinstance(getattr(ml_dtypes, n), type)
             and n != "finfo"]
    assert names and set(names) <= set(FORMATS)


# ------------------------------------------------------------------ references
def udtype(bits: int) -> np.dtype:
    return np.dtype(f"u{max(bits, 8) // 8}")


def every_pattern(data: FormatData) -> np.ndarray:
    """Every bit pattern of a <= 16-bit format, as an array of its dtype."""
    return np.arange(2**data.bits, dtype=np.uint32).astype(udtype(data.bits)).view(data.dtype)


def as64(x) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # (signalling NaN patterns)
        return np.asarray(x).astype(np.float64)


def cast32(data: FormatData, y) -> np.ndarray:
    """numpy's / ml_dtypes' conversion of float32 values to the format, as float64 (a saturating variant:
    of the values clipped to +-max first, NaN kept)."""
    with np.errstate(all="ignore"):
        y = np.asarray(y, dtype=np.float32)
        if data.saturate and data.dtype not in SATURATING_DTYPES:
            top = np.float32(ml_dtypes.finfo(data.dtype).max)
            y = np.where(np.isnan(y), y, np.clip(y, -top, top))
        return y.astype(data.dtype).astype(np.float64)


SATURATING_DTYPES = (ml_dtypes.float6_e2m3fn, ml_dtypes.float6_e3m2fn, ml_dtypes.float4_e2m1fn)  # by ml_dtypes


def same(got, want) -> np.ndarray:
    """Equal values with equal signs (zeros included); any NaN equals any NaN."""
    got, want = as64(got), as64(want)
    return ((got == want) & (np.signbit(got) == np.signbit(want))) | (np.isnan(got) & np.isnan(want))


def assert_same(what: str, x, got, want) -> None:
    ok = same(got, want)
    if not ok.all():
        bad = np.flatnonzero(~ok.ravel())
        rows = [f"  {as64(x).ravel()[i]!r}: got {as64(got).ravel()[i]!r}, want {as64(want).ravel()[i]!r}"
                for i in bad[:8]]
        raise AssertionError(f"{what}: {bad.size} of {ok.size} differ\n" + "\n".join(rows))


def finite_values(data: FormatData) -> np.ndarray:
    """Every finite value >= +0 of a <= 16-bit format, increasing, from its bit patterns."""
    v = as64(every_pattern(data))
    v = v[np.isfinite(v) & ~np.signbit(v)]
    assert (np.diff(v) > 0).all()
    return v


def neighbourhoods(data: FormatData) -> tuple[np.ndarray, np.ndarray]:
    """(x, mids), float32: x = the format values, the midpoints between neighbours (and the one above
    max) and the float32 values 1..3 float32 ulps either side of each midpoint, both signs; mids =
    the midpoints, both signs."""
    v = finite_values(data)
    top = v[-1] + (v[-1] - v[-2])  # what max's next pattern would hold with an unbounded exponent
    mids = ((np.append(v, top)[1:] + v) / 2).astype(np.float32)  # exact in float32
    near = [v.astype(np.float32), mids]
    for k in range(1, 4):
        up, down = mids, mids
        for _ in range(k):
            up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        near += [up, down]
    x = np.concatenate(near)
    return np.concatenate([x, -x]), np.concatenate([mids, -mids])


MP = mpmath.MPContext()
MP.prec = 300


def mp_round(fmt, value) -> float:
    """An mpf correctly rounded to the format (nearest, ties to even), from precision, tiny and max alone:
    the value's binade (but not below tiny's) fixes the spacing 2**q; beyond max: +-inf (the caller
    converts it with the format's own conversion)."""
    if value == 0:
        return 0.0
    a = abs(value)
    p, emin = fmt.precision, math.frexp(fmt.tiny)[1] - 1
    e = int(MP.frexp(a)[1]) - 1  # 2**e <= a < 2**(e + 1)
    q = max(e, emin) - (p - 1)
    scaled = MP.ldexp(a, -q)
    r = int(MP.floor(scaled))
    frac = scaled - r
    assert abs(frac - MP.mpf(0.5)) > MP.mpf(2) ** -200, "too close to a midpoint to decide"
    if frac > 0.5 or (frac == 0.5 and r % 2):
        r += 1
    out = math.ldexp(r, q) if r.bit_length() + q <= 1024 else math.inf
    if out > fmt.max:
        out = math.inf
    return -out if value < 0 else out


def mp_function(fmt, name: str, x: float) -> float:
    """name(x) correctly rounded to the format with an unbounded exponent, IEEE 754 special values (the
    caller converts +-inf and NaN with the format's own conversion)."""
    inf = math.inf
    if math.isnan(x):
        return math.nan
    if name == "tanh" and (x == 0 or math.isinf(x)):
        return x if x == 0 else math.copysign(1.0, x)  # tanh(+-0) = +-0, tanh(+-inf) = +-1
    if name == "log" and x <= 0 or name == "log1p" and x <= -1:
        return math.nan if x < (0 if name == "log" else -1) else -inf
    if x == math.inf:
        return inf
    if name == "exp" and x == -math.inf:
        return 0.0
    if name == "log1p" and x == 0:
        return x  # +-0
    return mp_round(fmt, getattr(MP, name)(MP.mpf(x)))


# ------------------------------------------------------------------ the class
@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=str)
class TestFormatConformance:
    def test_dtype_and_finfo_constants(self, fmt):
        data = FORMAT_DATA[fmt.name]
        info = ml_dtypes.finfo(data.dtype)
        assert fmt.dtype == np.dtype(data.dtype) and fmt.bits == data.bits == info.bits
        assert fmt.min_exponent == info.minexp and fmt.max_exponent == info.maxexp - 1
        assert fmt.max == float(info.max)
        assert fmt.tiny == float(info.smallest_normal)
        assert fmt.smallest_subnormal == float(info.smallest_subnormal)
        assert fmt.eps == float(info.eps)
        assert fmt.precision == info.nmant + 1
        assert fmt.unit_roundoff == fmt.eps / 2 == 2.0**-fmt.precision
        assert fmt.smallest_subnormal == fmt.tiny * fmt.eps  # p - 1 fraction bits below tiny
        assert fmt.has_inf == data.has_inf == (fmt.name not in FORMATS_WITH_NO_INFINITY)
        assert fmt.saturates == data.saturate and fmt.scale_only == data.scale

    def test_bit_patterns_without_ml_dtypes(self, fmt):
        """Format.value_of / pattern (numpy only: the threshold grids and predictions of bfloat16 and float8)
        give ml_dtypes' value of every bit pattern of a signed format with a zero, and back."""
        data = FORMAT_DATA[fmt.name]
        if data.bits > 16 or not (fmt.signed and fmt.has_zero):
            with pytest.raises(ValueError):
                fmt.magnitudes  # noqa: B018
            return
        reference = as64(every_pattern(data))
        ours = fmt.value_of(np.arange(2**data.bits))
        finite = np.isfinite(reference)
        assert np.array_equal(ours[finite], reference[finite])
        assert np.array_equal(np.signbit(ours[finite]), np.signbit(reference[finite]))  # (-0 is the sign pattern)
        assert np.isnan(ours[~finite]).all()
        assert np.array_equal(fmt.pattern(reference[finite]), np.flatnonzero(finite))

    def test_constants_are_the_enumerated_values(self, fmt):
        """max, tiny, smallest subnormal and 1 + eps found among the bit patterns themselves."""
        data = FORMAT_DATA[fmt.name]
        if data.bits > 16:
            values = as64(np.array([fmt.max, fmt.tiny, fmt.smallest_subnormal, 1 + fmt.eps]).astype(data.dtype))
            assert values.tolist() == [fmt.max, fmt.tiny, fmt.smallest_subnormal, 1 + fmt.eps]
            assert np.nextafter(data.dtype(1), data.dtype(2)) == 1 + fmt.eps
            with np.errstate(over="ignore"):
                assert np.nextafter(data.dtype(fmt.max), data.dtype(np.inf)) == np.inf
            return
        v = finite_values(data)
        if fmt.has_zero:
            assert v[0] == 0 and v[1] == fmt.smallest_subnormal and v[-1] == fmt.max
            assert v[v >= fmt.tiny][0] == fmt.tiny and v[v < fmt.tiny][-1] < fmt.tiny
        else:  # exponent only (float8_e8m0fnu): no zero, no subnormals
            assert v[0] == fmt.smallest_subnormal == fmt.tiny and v[-1] == fmt.max
        assert v[v > 1][0] == 1 + fmt.eps
        patterns = as64(every_pattern(data))
        assert np.isinf(patterns).any() == fmt.has_inf
        assert np.isnan(patterns).sum() == {"ieee": 2 * (2**fmt.fraction_bits - 1), "fn": 2 if fmt.signed else 1,
                                            "fnuz": 1, "none": 0}[fmt.nan]
        assert (np.signbit(patterns) & (patterns == 0)).any() == fmt.signed_zero

    def test_round_every_value_midpoint_and_near_midpoint(self, fmt):
        """Format.round of float64 inputs against the dtype conversion of float32 inputs that round the same
        way: every value (exact), every midpoint (ties to even, also max + ulp/2: overflow), the
        float32 values 1-3 ulps off them and the float64 values 1 ulp off them."""
        data = FORMAT_DATA[fmt.name]
        if data.bits > 16:
            pytest.skip("not enumerable: see test_round_sampled")
        x32, mids = neighbourhoods(data)
        want = cast32(data, x32)
        assert_same("round", x32, fmt.round(x32.astype(np.float64)), want)
        assert_same("round (own dtype)", x32, as64(fmt.round(x32.astype(np.float64), fmt.dtype)), want)
        # the float64 values next to each of them round like the next float32 on that side, unless that
        # one is a midpoint (then like the float32 itself: nothing lies strictly between the two)
        for direction in (np.inf, -np.inf):
            off = np.nextafter(x32.astype(np.float64), direction)
            nxt = np.nextafter(x32, np.float32(direction))
            ref = np.where(np.isin(nxt, mids), x32, nxt)
            assert_same("round (float64 a hair off)", off, fmt.round(off), cast32(data, ref))

    def test_round_every_bit_pattern(self, fmt):
        """Each bit pattern, as float64 (NaN, +-inf, +-0 included), rounds to itself."""
        data = FORMAT_DATA[fmt.name]
        if data.bits > 16:
            pytest.skip("not enumerable: see test_round_sampled")
        x = as64(every_pattern(data))
        assert_same("round", x, fmt.round(x), x)
        with np.errstate(invalid="ignore"):  # (signalling NaN patterns)
            x32 = x.astype(np.float32)
        assert_same("round32", x, fmt.round32(x32), x)

    def test_round32_near_every_value(self, fmt):
        """Format.round32 of float32 against the dtype conversion: values, midpoints, 1-3 float32 ulps off."""
        data = FORMAT_DATA[fmt.name]
        if data.bits > 16:
            if fmt.precision == 24:  # float32: nothing to round
                x = np.random.default_rng(1).integers(0, 2**32, 10_000, dtype=np.uint64).astype(np.uint32)
                x = x.view(np.float32)
                assert_same("round32", x, fmt.round32(x), x)
            return
        x32 = neighbourhoods(data)[0]
        got = fmt.round32(x32)
        assert got.dtype == np.float32
        assert_same("round32", x32, got, cast32(data, x32))

    def test_round_sampled(self, fmt):
        """Random float64 at every magnitude (every format: a double rounding would show here) and random
        float32 bit patterns, plus the edges: +-0, the smallest subnormal and half of it, max and the
        overflow threshold, +-inf, NaN."""
        data = FORMAT_DATA[fmt.name]
        rng = np.random.default_rng(7)
        n = 200_000
        with np.errstate(all="ignore"):
            x = rng.standard_normal(n) * 10.0 ** rng.integers(-330, 310, n)
            x = np.concatenate([x, rng.integers(0, 2**64, n, dtype=np.uint64).view(np.float64),
                                rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)])
        s, m = fmt.smallest_subnormal, fmt.max
        with np.errstate(over="ignore"):
            edges = np.array([0.0, -0.0, s, s / 2, s / 2 * (1 + 2.0**-40), s * 1.5, m, m * (1 + fmt.eps / 4),
                              m * (1 + fmt.eps / 2), np.inf, np.nan])
        x = np.concatenate([x, edges, -edges])
        got = fmt.round(x)
        if fmt.precision == 53:
            want = x
        elif data.dtype in (np.float16, np.float32):
            with np.errstate(all="ignore"):
                want = x.astype(data.dtype)  # numpy converts float64 correctly
        else:  # to float32 rounding to odd (p + 2 <= 24 bits: the final rounding is then correct), then cast
            with np.errstate(all="ignore"):
                y = x.astype(np.float32)
                inexact = (y.astype(np.float64) != x) & np.isfinite(y) & ((y.view(np.uint32) & 1) == 0)
                y[inexact] = np.nextafter(y, np.where(x > y, np.inf, -np.inf).astype(np.float32))[inexact]
            want = cast32(data, y)
        assert_same("round", x, got, want)

    @pytest.mark.slow
    def test_round32_random_patterns(self, fmt):
        """round32 against the dtype conversion on 2**26 random float32 bit patterns."""
        data = FORMAT_DATA[fmt.name]
        if data.bits > 16:
            pytest.skip("round32 rounds float32 to a format of <= 16 bits")
        rng = np.random.default_rng(11)
        for _ in range(16):
            y = rng.integers(0, 2**32, 2**22, dtype=np.uint64).astype(np.uint32).view(np.float32)
            assert_same("round32", y, fmt.round32(y), cast32(data, y))

    def test_signed_zero(self, fmt):
        """-0 stays -0; a negative value that underflows gives -0; 0 - 0 and x - x are +0 in the dtype."""
        if not fmt.has_zero:
            pytest.skip("no zero (exponent only)")
        s = fmt.smallest_subnormal
        x = np.array([-0.0, -s / 2, -s / 4, -s * 0.49, 0.0, s / 2])
        z = -0.0 if fmt.signed_zero else 0.0  # fnuz: no -0
        neg = z if fmt.signed else np.nan  # unsigned: a negative value is NaN, even one that underflows
        want = np.array([z, neg, neg, neg, 0.0, 0.0])
        assert_same("round", x, fmt.round(x), want)
        if fmt.precision <= 24:
            assert_same("round32", x, fmt.round32(x.astype(np.float32)), want)
        zero = np.array([0.0, -0.0]).astype(fmt.dtype)
        assert np.signbit(as64(zero)).tolist() == [False, fmt.signed_zero]
        if fmt.signed:
            assert np.signbit(as64(-zero)).tolist() == [fmt.signed_zero, False]

    def test_overflow_encoding(self, fmt):
        """Beyond max + ulp(max)/2 (ties to even: for IEEE formats the tie overflows too; e4m3fn's max has
        an even pattern, so its tie stays max), and +-inf inputs: +-inf, or NaN without infinities."""
        with np.errstate(over="ignore"):
            big = fmt.max * 2.0 ** np.arange(1, 8)
            top = fmt.max + fmt.ulp(fmt.max) / 2  # exactly representable in float64 (float64: inf)
        data = FORMAT_DATA[fmt.name]
        sign = 1.0 if fmt.signed else np.nan  # unsigned: a negative value is NaN
        over = np.concatenate([big, -big, [np.inf, -np.inf]])
        got = as64(fmt.round(over))
        if fmt.has_inf:
            assert np.isinf(got).all() and (np.signbit(got) == np.signbit(over)).all()
        elif data.saturate:
            assert_same("saturate", over, got, np.copysign(fmt.max, over))
        else:
            assert np.isnan(got).all()
        beyond = np.array([np.inf, -np.inf]) if fmt.has_inf else np.array([np.nan, np.nan]) if not data.saturate \
            else np.array([fmt.max, -fmt.max])
        tie = as64(fmt.round(np.array([top, -top])))
        max_pattern = int(np.array(fmt.max).astype(fmt.dtype).view(udtype(data.bits)))
        if max_pattern % 2 or fmt.fraction_bits == 0:  # ties to even: the next pattern, beyond max; ml_dtypes
            assert_same("tie", tie, tie, beyond * [1, sign])  # rounds ties of the exponent-only format up
        else:
            assert_same("tie", tie, tie, np.array([fmt.max, -fmt.max * sign]))
        below = as64(fmt.round(np.nextafter(np.array([top, -top]), 0)))
        assert_same("below", below, below, np.array([fmt.max, -fmt.max * sign]))

    def test_ulp(self, fmt):
        """ulp(v) is the spacing to the next value up, for every value (<= 16 bits) or samples; the same for
        -v and for every point of [v, next(v)); ulp(0) is the smallest subnormal."""
        data = FORMAT_DATA[fmt.name]
        if data.bits <= 16:
            v = finite_values(data)
            spacing = np.diff(v)
            v, nxt = v[:-1], v[1:]
        else:
            rng = np.random.default_rng(3)
            v = np.abs(rng.integers(0, 2 ** (data.bits - 1), 100_000, dtype=np.uint64)
                       .astype(udtype(data.bits)).view(data.dtype))
            v = np.concatenate([v, np.array([0, fmt.smallest_subnormal, fmt.tiny, 1, 2], dtype=data.dtype)])
            v = v[np.isfinite(v) & (v < fmt.max)]
            nxt = np.nextafter(v, data.dtype(np.inf))
            spacing = (nxt - v).astype(np.float64)
            v, nxt = v.astype(np.float64), nxt.astype(np.float64)
        assert (fmt.ulp(v) == spacing).all()
        assert (fmt.ulp(-v) == spacing).all()
        mids = v + spacing / 2
        assert (fmt.ulp(mids) == spacing).all()
        assert fmt.ulp(0.0) == fmt.smallest_subnormal and fmt.ulp(1.0) == fmt.eps
        below_max = fmt.max - float(np.nextafter(data.dtype(fmt.max), data.dtype(1)))
        assert fmt.ulp(fmt.max) == (below_max if fmt.fraction_bits else 2 * below_max)  # (exponent only: max's
        # predecessor is in the binade below)

    @pytest.mark.parametrize("name", FUNCS)
    def test_crmath_against_mpmath(self, fmt, name):
        """crmath's exp, log, log1p, tanh against mpmath rounded here (from precision, tiny and max, then the
        format's own conversion of +-inf and NaN) on sampled bit patterns and the edges (+-0, +-1, tiny,
        the smallest subnormal, max, +-inf)."""
        data = FORMAT_DATA[fmt.name]
        if data.scale:
            pytest.skip("a scale format: nothing is computed in it")
        rng = np.random.default_rng(sum(map(ord, fmt.name + name)))
        x = rng.integers(0, 2**data.bits, 300, dtype=np.uint64).astype(udtype(data.bits)).view(data.dtype)
        x = x[~np.isnan(as64(x))]
        if name == "exp":  # around the range where the results are neither 0 nor beyond max
            moderate = fmt.round(rng.uniform(math.log(fmt.smallest_subnormal) - 1, math.log(fmt.max) + 1, 200))
        elif name == "tanh":  # from tiny arguments (tanh x ~ x) to where tanh rounds to +-1
            moderate = fmt.round(np.sign(rng.uniform(-1, 1, 200)) * np.exp(rng.uniform(-30, 3.5, 200)))
        else:
            moderate = fmt.round(np.exp(rng.uniform(-30, 30, 200)) - (1 if name == "log1p" else 0))
        s = fmt.smallest_subnormal
        edges = [0.0, -0.0, 1.0, -1.0, 0.5, fmt.tiny, s, fmt.max, -fmt.max, -s]
        with np.errstate(all="ignore"):
            special = np.array(edges + ([np.inf, -np.inf] if fmt.has_inf else [])).astype(data.dtype)
        x = np.concatenate([x, moderate.astype(data.dtype), special])
        got = getattr(crmath, name)(fmt, x)
        want = [mp_function(fmt, name, v) for v in as64(x).tolist()]  # format values, +-inf, NaN
        want = np.array(want) if data.bits == 64 else cast32(data, want)  # (exact in float32)
        assert_same(f"crmath.{name}", x, got, want)
