"""Block-scaled storage formats: OCP MX (MXFP8, MXFP6, MXFP4) and NVIDIA NVFP4.

A block-scaled tensor stores, for every block of ``k`` consecutive values along the last axis, one shared
scale ``X`` and ``k`` narrow elements ``P_i``; the value of element i is ``X * P_i``.  This module quantizes a
float32 / float64 array to such a format and returns the dequantized values (``X * P_i``, exactly) with the
events the quantization caused.  It is a *storage* step: what is computed on the values afterwards is the
precision policy's business, not this module's.

Sources
-------
* **OCP Microscaling Formats (MX) Specification v1.0** (Open Compute Project, Sept. 2023,
  https://www.opencompute.org/documents/ocp-microscaling-formats-mx-v1-0-spec-final-pdf):
  block size k = 32; scale E8M0 (8 exponent bits, bias 127, values 2^-127 .. 2^127, 0xFF = NaN, no zero,
  no infinity); elements FP8 E4M3 / E5M2, FP6 E2M3 / E3M2, FP4 E2M1.  Section 6.3 (conversion from
  scalar floats): ``shared_exp = floor(log2(max_i |V_i|)) - emax_elem``, ``X = 2^shared_exp``,
  ``P_i = quantize_to_element_format(V_i / X)`` rounding to nearest even and clamping (saturating) normal
  numbers to the element's largest magnitude.  Section 5: if X is NaN every value of the block is NaN.
* **NVIDIA NVFP4** (NVIDIA technical blog "Introducing NVFP4 for efficient and accurate low-precision
  inference", 2025; Transformer Engine ``common/cast/nvfp4/core_nvfp4.cuh``; torchao
  ``prototype/mx_formats/nvfp4_tensor.py``): blocks of 16 FP4 E2M1 elements, an FP8 E4M3 (float8_e4m3fn)
  block scale, and one float32 per-tensor scale ``s_t = amax_tensor / (6 * 448)``.  The block scale is
  ``s_b = e4m3(amax_block / (6 * s_t))`` and ``P_i = e2m1(V_i / (s_t * s_b))``, so the value is
  ``P_i * s_b * s_t``.

Scale rule implemented (MX): **the spec's floor**, ``E = floor(log2(amax))`` exactly (``frexp``, also for
subnormal amax), ``shared_exp = E - emax_elem``.  Variants in use elsewhere, *not* implemented here: torchao's
``ScaleCalculationMode.CEIL`` (E rounded up when amax is not a power of two), ``EVEN`` (amax first rounded to
the element's mantissa width) and ``RCEIL`` (NVIDIA's cuBLAS / Blackwell rule: ``X = 2^ceil(log2(amax /
max_elem))``, ``cvt.rp.ue8m0``), which trade the floor's element saturation (amax / X can reach
``2^(emax+1) > max_elem``, so the largest elements clamp) for a larger scale that flushes more small
elements.  torchao's FLOOR reads the float32 exponent field, so a subnormal amax gives E = -127 there.

Conventions (the spec is silent on some; each says where it comes from)
-------------------------------------------------------------------------
* Blocks run along the **last axis**; when its length is not a multiple of k, the last block of each row is
  **short** (the remaining elements; as if padded with zeros, which does not change amax).
* **Rounding**: every rounding is to nearest, ties to even, of the exact real quotient (V_i / X, and for
  NVFP4 also amax / (6 s_t) and amax_tensor / 2688), with saturation to the largest finite magnitude.
* **All-zero block** (amax = 0): MX scale 2^-127 (E8M0's smallest; log2(0) is undefined; the spec authors'
  emulation ``microsoft/microxcaling`` and torchao both give 2^-127); NVFP4 block scale 0 (Transformer
  Engine's result: e4m3(0) = 0).  Elements are zero; ``all_zero`` marks the block.
* **Inf or NaN in a block**: the block's scale is NaN (E8M0 0xFF, e4m3fn 0x7F) and every value of the
  block is NaN (spec section 5: a NaN scale makes the whole block NaN; microxcaling and torchao set the
  scale to NaN for a non-finite amax).  Finite elements of such a block are neither flushed nor saturated.
* **Scale out of range (MX)**: shared_exp < -127 (amax < 2^(emax_elem - 127), only from tiny inputs) is
  clamped to -127 (microxcaling's rule); shared_exp > 127 (amax >= 2^(128 + emax_elem): float64 inputs
  only) makes the scale NaN (microxcaling: "overflow to NaN").  Both set ``scale_saturated``.
* **Scale out of range (NVFP4)**: amax / (6 s_t) > 448 (a caller's tensor amax below the block's) gives
  s_b = 448 and the elements saturate; a quotient that rounds to 0 (below 2^-10, amax_block below about
  2.2e-6 amax_tensor) gives s_b = 0 and the whole block decodes to 0 (Transformer Engine's result; torchao
  instead clamps s_b to 2^-6).  Both set ``scale_saturated``.
* **Tensor scale (NVFP4)**: "tensor" is what the caller passes: ``tensor_amax`` if given (the amax of the
  whole tensor, from a first pass over it), else the largest finite |x| of ``x``.
  ``s_t = float32(amax_tensor / 2688)``; amax_tensor = 0 gives s_t = 1 (Transformer Engine); a quotient
  outside float32's range is clamped to [2^-149, float32 max] and sets ``tensor_scale_saturated``.
* **flushed**: a finite non-zero input whose dequantized value is 0.  **saturated**: an element whose
  scaled magnitude |V_i| / X exceeds the element's largest value, so it was stored as +-max.
* **Values dtype**: MX values are exact in the input's dtype (float32 for float16/float32 inputs, since
  X * P_i has at most 4 significant bits and lies in [2^-143, 2^128)); NVFP4 values ``P_i * s_b * s_t``
  carry up to 2 + 4 + 24 significant bits, so they are float64.

Exactness
---------
Rounding the float64 quotient q = fl64(num / den) to a narrow grid equals rounding the exact num / den (no
double rounding) for every quotient here (NVFP4's V_i / (s_t s_b), amax / (6 s_t), amax_tensor / 2688; MX's
V_i / 2^k is exact anyway), for float32 and float64 inputs alike: the grid's midpoints mid and its largest
value have at most 6 significant bits and den at most 28, so y = mid * den is a float64 number.  If num != y,
both being float64 numbers, |num - y| >= 2^-52 * 2^floor(log2 y) (half that when y is a power of two and num
is below it), hence |num / den - mid| >= 2^-53 mid > ulp(mid) / 2 (a midpoint is not a power of two), so q is
not mid: q lies on the same side of every midpoint (and of the largest value) as num / den, and equals mid
only when num / den does.  The same holds for float32's midpoints (25 bits) against 2688 (5 bits).
The values X * P_i are then exact products.

Cost: columnar numpy over tiles of about ``_TILE`` elements (no Python loop over blocks); besides the
outputs, the temporaries are a few tiles.  Memory = input + values + two boolean masks + per-block arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

__all__ = ["ElementFormat", "BlockFormat", "Quantized", "BLOCK_FORMATS", "ELEMENT_FORMATS", "get_block_format",
           "block_format_names", "quantize", "flush_threshold", "first_failing_spread", "flushed_fraction",
           "error_summary", "facts_table", "nvfp4_tensor_scale"]

_TILE = 1 << 17  # elements per tile: the temporaries of one tile stay in the L2/L3 cache


@dataclass(frozen=True)
class ElementFormat:
    """A narrow floating-point element format, defined by its bits.

    ``exponent_bits`` e, ``mantissa_bits`` m, bias ``2^(e-1) - 1``, and ``specials``: ``"ieee"`` (the top
    exponent holds only inf / NaN: float8_e5m2), ``"fn"`` (finite; the all-ones pattern is NaN:
    float8_e4m3fn), ``"none"`` (every pattern is finite: the FP6 / FP4 formats).
    Derived: ``emax`` = largest normal exponent (``2^e - 2 - bias`` for ieee, ``2^e - 1 - bias`` otherwise),
    ``emin = 1 - bias``, ``max = (2 - 2^-m) * 2^emax`` (``(2 - 2^(1-m)) * 2^emax`` for fn, whose top
    mantissa is NaN), ``min_normal = 2^emin``, ``min_subnormal = 2^(emin - m)``.
    """

    name: str  # the ml_dtypes dtype name
    exponent_bits: int
    mantissa_bits: int
    specials: str

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1

    @property
    def emax(self) -> int:
        top = 2 ** self.exponent_bits - (2 if self.specials == "ieee" else 1)
        return top - self.bias

    @property
    def emin(self) -> int:
        return 1 - self.bias

    @property
    def max(self) -> float:
        lost = 1 - self.mantissa_bits if self.specials == "fn" else -self.mantissa_bits
        return math.ldexp(2.0 - math.ldexp(1.0, lost), self.emax)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        return math.ldexp(1.0, self.emin - self.mantissa_bits)

    @cached_property
    def dtype(self) -> np.dtype:
        """ml_dtypes' dtype for the element (imported here, on first use)."""
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, self.name))


ELEMENT_FORMATS: dict[str, ElementFormat] = {e.name: e for e in (
    ElementFormat("float8_e4m3fn", 4, 3, "fn"),
    ElementFormat("float8_e5m2", 5, 2, "ieee"),
    ElementFormat("float6_e2m3fn", 2, 3, "none"),
    ElementFormat("float6_e3m2fn", 3, 2, "none"),
    ElementFormat("float4_e2m1fn", 2, 1, "none"),
)}

_E8M0_MIN_EXP, _E8M0_MAX_EXP, _E8M0_BIAS, _E8M0_NAN = -127, 127, 127, 0xFF
_E4M3 = ELEMENT_FORMATS["float8_e4m3fn"]
_E4M3_NAN = 0x7F
_TENSOR_DIVISOR = 6 * 448  # NVFP4: element max * block-scale max


@dataclass(frozen=True)
class BlockFormat:
    """A block-scaled format: ``block_size`` elements of format ``element`` share one scale of format
    ``scale`` (``"e8m0"``: a power of two 2^-127..2^127; ``"e4m3"``: a float8_e4m3fn value), and, when
    ``tensor_scale``, a float32 per-tensor scale multiplies every block scale (NVFP4)."""

    name: str
    element: str
    block_size: int
    scale: str
    tensor_scale: bool = False
    aliases: tuple[str, ...] = field(default=())

    @property
    def element_format(self) -> ElementFormat:
        return ELEMENT_FORMATS[self.element]

    @property
    def element_max(self) -> float:
        return self.element_format.max

    @property
    def element_min_subnormal(self) -> float:
        return self.element_format.min_subnormal

    @property
    def scale_max(self) -> float:
        """Largest block scale: 2^127 (E8M0) or 448 (e4m3; NVFP4 multiplies it by s_t)."""
        return math.ldexp(1.0, _E8M0_MAX_EXP) if self.scale == "e8m0" else _E4M3.max

    @property
    def scale_min(self) -> float:
        """Smallest positive block scale: 2^-127 (E8M0) or 2^-9 (e4m3's smallest subnormal; times s_t)."""
        return math.ldexp(1.0, _E8M0_MIN_EXP) if self.scale == "e8m0" else _E4M3.min_subnormal

    @property
    def largest_value(self) -> float:
        """element max * scale max (for NVFP4 in units of s_t: 6 * 448 = 2688)."""
        return self.element_max * self.scale_max

    @property
    def smallest_value(self) -> float:
        """Smallest positive value: element min subnormal * scale min (for NVFP4 in units of s_t)."""
        return self.element_min_subnormal * self.scale_min

    @property
    def bits_per_value(self) -> float:
        """Storage per value: element bits + 8 scale bits / block size (the per-tensor scale not counted)."""
        return self.element_format.bits + 8 / self.block_size

    @property
    def flush_ratio(self) -> float:
        """amax / |x| at or above which an element flushes to zero, for a block whose scale is exact:
        MX with amax a power of two, ``2^(emax - emin + m + 1)`` (the smallest over amax; in general
        ``amax / 2^floor(log2 amax)`` times this); NVFP4 with amax / (6 s_t) an e4m3 value, ``6 / (0.5 / 2)
        = 24`` (in general 24 * (amax / (6 s_t)) / s_b, see :func:`first_failing_spread`)."""
        e = self.element_format
        if self.scale == "e8m0":
            return math.ldexp(1.0, e.emax - e.emin + e.mantissa_bits + 1)
        return e.max / (e.min_subnormal / 2)


BLOCK_FORMATS: dict[str, BlockFormat] = {b.name: b for b in (
    BlockFormat("mxfp8_e4m3", "float8_e4m3fn", 32, "e8m0", aliases=("mxfp8",)),
    BlockFormat("mxfp8_e5m2", "float8_e5m2", 32, "e8m0"),
    BlockFormat("mxfp6_e2m3", "float6_e2m3fn", 32, "e8m0", aliases=("mxfp6",)),
    BlockFormat("mxfp6_e3m2", "float6_e3m2fn", 32, "e8m0"),
    BlockFormat("mxfp4", "float4_e2m1fn", 32, "e8m0", aliases=("mxfp4_e2m1",)),
    BlockFormat("nvfp4", "float4_e2m1fn", 16, "e4m3", tensor_scale=True),
)}


def block_format_names() -> list[str]:
    """``name (alias/alias)`` for every block format, the list an unknown name prints."""
    return [f"{b.name} ({'/'.join(b.aliases)})" if b.aliases else b.name for b in BLOCK_FORMATS.values()]


def get_block_format(name: str) -> BlockFormat:
    """The block format called ``name`` or one of its aliases (case-insensitive); KeyError naming the valid
    ones otherwise."""
    key = name.strip().lower()
    for b in BLOCK_FORMATS.values():
        if key == b.name or key in b.aliases:
            return b
    raise KeyError(f"unknown block format {name!r}; valid: {', '.join(block_format_names())}")


@dataclass(frozen=True)
class Quantized:
    """The result of :func:`quantize`.

    Per element (the input's shape):
      ``values``     the dequantized value X * P_i, exactly (float32 for MX on float16/float32 input, else
                     float64); NaN for every element of a NaN block.
      ``flushed``    bool: finite non-zero input whose value is 0.
      ``saturated``  bool: |V_i| / X exceeded the element's max, so P_i = +-max.
    Per block (the input's shape with the last axis replaced by the number of blocks, ceil(n / k)):
      ``block_amax``       max |V_i| of the block (float64; NaN/inf if the block holds one).
      ``scale``            the block's dequantization factor X (float64): 2^shared_exp for MX, s_t * s_b for
                           NVFP4; NaN for a NaN block.
      ``scale_code``       uint8, the stored scale byte: E8M0 biased exponent (shared_exp + 127; 0xFF NaN) or
                           the float8_e4m3fn bit pattern of s_b (0x7F NaN).
      ``scale_saturated``  bool: the scale left its format's range (see the module's conventions).
      ``all_zero``         bool: every element of the block is +-0.
    Per tensor: ``tensor_scale`` (NVFP4's float32 s_t, else None), ``tensor_scale_saturated``,
    ``n_nonzero`` (finite non-zero inputs: the denominator of :func:`flushed_fraction`),
    ``short_block`` (the last block of each row holds fewer than k elements).
    """

    format: BlockFormat
    values: np.ndarray
    flushed: np.ndarray
    saturated: np.ndarray
    block_amax: np.ndarray
    scale: np.ndarray
    scale_code: np.ndarray
    scale_saturated: np.ndarray
    all_zero: np.ndarray
    tensor_scale: float | np.ndarray | None  # an array when quantize was given one tensor amax per row
    tensor_scale_saturated: bool
    n_nonzero: int
    short_block: bool

    @property
    def n_flushed(self) -> int:
        return int(np.count_nonzero(self.flushed))

    @property
    def n_saturated(self) -> int:
        return int(np.count_nonzero(self.saturated))

    @property
    def exponent(self) -> np.ndarray | None:
        """MX: the shared exponent per block (scale_code - 127, int16; 128 marks a NaN block); None for NVFP4."""
        if self.format.scale != "e8m0":
            return None
        return self.scale_code.astype(np.int16) - _E8M0_BIAS

    @property
    def nan_blocks(self) -> np.ndarray:
        """bool per block: the scale is NaN (an inf/NaN input, or an MX scale above 2^127)."""
        return np.isnan(self.scale)


# ----------------------------------------------------------------------------------------------------------
# rounding to an element grid


def _round_grid(a: np.ndarray, emin: int, m: int, work: np.ndarray) -> np.ndarray:
    """Round ``a`` (>= 0 or NaN; float32 or float64) to nearest, ties to even, on the grid of a format with
    m mantissa bits and smallest normal exponent emin, with unbounded exponent range upward (saturation is
    the caller's).  Exact: with ``K = max(2^floor(log2 a), 2^emin) * 2^(f - m)`` (f = 23 or 52 stored bits),
    ``a + K`` lies in [K, 2K), whose spacing is the grid's quantum ``max(2^floor(log2 a), 2^emin) * 2^-m``,
    so the addition rounds a to the grid (ties to even, as K is an even multiple of the quantum) and
    ``(a + K) - K`` is exact.  Rounds ``a`` in place (and returns it); ``work`` is scratch of a's shape."""
    if a.dtype == np.float32:
        uint, mask, frac = np.uint32, np.uint32(0x7F800000), 23
    else:
        uint, mask, frac = np.uint64, np.uint64(0x7FF0000000000000), 52
    np.bitwise_and(a.view(uint), mask, out=work.view(uint))  # 2^floor(log2 a) (0 below the normals; inf/NaN -> inf)
    np.maximum(work, a.dtype.type(math.ldexp(1.0, emin)), out=work)
    np.multiply(work, a.dtype.type(math.ldexp(1.0, frac - m)), out=work)
    a += work
    a -= work
    return a


def _e4m3_code(s: np.ndarray) -> np.ndarray:
    """float8_e4m3fn bit pattern of s >= 0 (an e4m3 value or NaN): exponent field E + 7 and 3 mantissa bits
    for s >= 2^-6, s / 2^-9 below; NaN -> 0x7F."""
    code = np.full(s.shape, _E4M3_NAN, dtype=np.uint8)
    ok = np.isfinite(s)
    v = s[ok]
    mant, ex = np.frexp(v)  # v = mant * 2^ex, mant in [0.5, 1)
    normal = v >= _E4M3.min_normal
    c = np.where(normal, ((ex - 1 + _E4M3.bias) << 3) + np.round((mant * 2 - 1) * 8).astype(np.int64),
                 np.round(v / _E4M3.min_subnormal).astype(np.int64))
    code[ok] = c.astype(np.uint8)
    return code


def nvfp4_tensor_scale(amax_tensor: float) -> tuple[float, bool]:
    """NVFP4's per-tensor scale ``s_t = float32(amax_tensor / (6 * 448))`` (nearest, ties to even, of the
    exact quotient) and whether it saturated: amax_tensor = 0 gives 1.0 (Transformer Engine's convention:
    every block is then zero); a quotient below float32's smallest subnormal gives 2^-149, one above the
    float32 max gives the max (both saturated)."""
    if amax_tensor == 0:
        return 1.0, False
    with np.errstate(over="ignore", under="ignore"):
        s = float(np.float32(float(amax_tensor) / _TENSOR_DIVISOR))  # one rounding: see Exactness
    if s == 0:
        return math.ldexp(1.0, -149), True
    if math.isinf(s):
        return float(np.finfo(np.float32).max), True
    return s, False


# ----------------------------------------------------------------------------------------------------------
# block scales


def _mx_scales(block: BlockFormat, amax: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MX: (shared_exp as int32 with NaN blocks at 128, scale_code uint8, scale_saturated) from amax
    (float64). shared_exp = floor(log2 amax) - emax_elem; amax = 0 -> -127; < -127 -> -127 (saturated);
    > 127 or non-finite amax -> NaN (code 0xFF)."""
    _, ex = np.frexp(amax)  # amax = f * 2^ex, f in [0.5, 1): floor(log2 amax) = ex - 1, exact
    shared = ex.astype(np.int32) - 1 - block.element_format.emax
    finite = np.isfinite(amax)
    zero = amax == 0
    shared[zero] = _E8M0_MIN_EXP
    low = shared < _E8M0_MIN_EXP
    high = (shared > _E8M0_MAX_EXP) & finite
    saturated = low | high
    nan = high | ~finite
    np.maximum(shared, _E8M0_MIN_EXP, out=shared)
    shared[nan] = _E8M0_MAX_EXP + 1
    code = (shared + _E8M0_BIAS).astype(np.uint8)  # 128 + 127 = 255 = NaN
    return shared, code, saturated


def _nvfp4_block_scales(amax: np.ndarray, s_t: float) -> tuple[np.ndarray, np.ndarray]:
    """NVFP4: (s_b as float64, NaN for non-finite amax; scale_saturated) from amax (float64).
    s_b = e4m3(amax / (6 s_t)) to nearest even, saturated at 448; saturated when the quotient exceeds 448 or
    a positive amax gives s_b = 0."""
    den = 6.0 * s_t  # exact: s_t has 24 bits
    with np.errstate(all="ignore"):
        c = amax / den
    over = c > _E4M3.max
    s_b = _round_grid(np.minimum(c, _E4M3.max), _E4M3.emin, _E4M3.mantissa_bits, np.empty_like(c))
    finite = np.isfinite(amax)
    saturated = (over | ((s_b == 0) & (amax > 0))) & finite
    s_b[~finite] = np.nan
    return s_b, saturated


# ----------------------------------------------------------------------------------------------------------
# quantize


def _strided(a: np.ndarray, start: int, stop: int, length: int) -> np.ndarray:
    """View of columns start:stop of the 2-D array ``a`` as (rows, (stop - start) / length, length)."""
    s0, s1 = a.strides
    sub = a[:, start:stop]
    return np.lib.stride_tricks.as_strided(sub, shape=(a.shape[0], (stop - start) // length, length),
                                           strides=(s0, length * s1, s1), writeable=a.flags.writeable)


def _tiles(rows: int, nblocks: int, length: int):
    """(row slice, block slice) tiles of about _TILE elements covering rows x nblocks blocks of ``length``."""
    per_row = nblocks * length
    if per_row >= _TILE:
        step = max(1, _TILE // length)
        for r in range(rows):
            for b in range(0, nblocks, step):
                yield slice(r, r + 1), slice(b, min(b + step, nblocks))
    else:
        step = max(1, _TILE // max(per_row, 1))
        for r in range(0, rows, step):
            yield slice(r, min(r + step, rows)), slice(0, nblocks)


_UINT = {np.dtype(np.float32): (np.uint32, np.int32), np.dtype(np.float64): (np.uint64, np.int64)}


def _abs_max(a: np.ndarray) -> np.ndarray:
    """max over the last axis of ``a`` >= 0 (or NaN), as float64: the maximum of the bit patterns read as
    signed integers, whose order is the values' order for non-negative floats (and NaN's patterns lie above
    inf's, so a NaN wins, as in a float max); half the time of numpy's float reduction over 32 elements."""
    return a.view(_UINT[a.dtype][1]).max(axis=-1).view(a.dtype).astype(np.float64)


def _with_sign(r: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """out = r (>= 0, same dtype as x) with the sign bit of x: copysign as an OR of bits (3x faster)."""
    uint = _UINT[x.dtype][0]
    sign = np.bitwise_and(x.view(uint), uint(1 << (8 * x.dtype.itemsize - 1)))
    np.bitwise_or(r.view(uint), sign, out=out.view(uint))


def _per_element(v: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The per-block v (R, K) repeated over each block's L elements, as (R, K, L): a contiguous operand
    makes the following elementwise operation 2-4x faster than broadcasting (R, K, 1) over short blocks."""
    return np.repeat(v, shape[-1], axis=-1).reshape(shape)


def _quantize_tile(block: BlockFormat, xb: np.ndarray, vb: np.ndarray, fb: np.ndarray, sb: np.ndarray,
                   amax_out: np.ndarray, s_t: float, amax: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Quantize one tile xb (R, K, L) into vb / fb / sb and the blocks' amax into amax_out (R, K) (given as
    ``amax`` when already computed).  Returns (scale float64, scale_code, scale_saturated, finite non-zero
    count)."""
    elem = block.element_format
    if block.scale == "e8m0":
        a = np.abs(xb)
        if amax is None:
            amax = _abs_max(a)
        shared, code, ssat = _mx_scales(block, amax)
        nan = code == _E8M0_NAN
        dt = xb.dtype.type
        scale = np.ldexp(1.0, shared)
        scale[nan] = np.nan
        inv = np.ldexp(1.0, -np.minimum(shared, _E8M0_MAX_EXP)).astype(xb.dtype)  # 2^-shared: exact
        inv[nan] = np.nan
        np.multiply(a, _per_element(inv, a.shape), out=a)  # |V_i| / X, exact (a power-of-two scaling)
        np.greater(a, dt(elem.max), out=sb)
        np.minimum(a, dt(elem.max), out=a)  # saturate first: max rounds to itself
        _round_grid(a, elem.emin, elem.mantissa_bits, np.empty_like(a))
        _with_sign(a, xb, a)
        np.multiply(a, _per_element(scale.astype(xb.dtype), a.shape), out=vb)
    else:
        x64 = xb.astype(np.float64)  # NVFP4 works in float64 (see Exactness)
        q = np.abs(x64)
        if amax is None:
            amax = _abs_max(q)
        s_b, ssat = _nvfp4_block_scales(amax, s_t)
        code = _e4m3_code(s_b)
        scale = s_t * s_b  # exact in float64 (24 + 4 bits); NaN for NaN blocks
        safe = np.where(scale == 0, np.inf, scale)  # s_b = 0: V_i / inf = 0, the block decodes to 0
        np.divide(q, _per_element(safe, q.shape), out=q)
        np.greater(q, elem.max, out=sb)
        np.minimum(q, elem.max, out=q)
        _round_grid(q, elem.emin, elem.mantissa_bits, np.empty_like(q))
        _with_sign(q, x64, q)
        np.multiply(q, _per_element(scale, q.shape), out=vb)
    amax_out[...] = amax
    nz = np.not_equal(xb, 0)
    n_nonzero = int(np.count_nonzero(nz))
    if not np.isfinite(amax).all():  # inf / NaN inputs (only in NaN blocks) are not finite non-zero inputs
        n_nonzero -= int(np.count_nonzero(~np.isfinite(xb)))
    np.equal(vb, 0, out=fb)  # NaN blocks: vb is NaN, never 0
    np.logical_and(fb, nz, out=fb)
    return scale, code, ssat, n_nonzero


def _block_amax(x2: np.ndarray, nfull: int, tail: int, B: int, out: np.ndarray) -> None:
    """max |x| of every block into out (rows, nblocks), float64 (NaN propagates, inf stays inf)."""
    rows = x2.shape[0]
    if nfull:
        xb = _strided(x2, 0, nfull * B, B)
        for rs, bs in _tiles(rows, nfull, B):
            out[rs, bs] = _abs_max(np.abs(xb[rs, bs]))
    if tail:
        for rs, _ in _tiles(rows, 1, tail):
            out[rs, nfull] = _abs_max(np.abs(x2[rs, nfull * B:]))


def _finite_max(x2: np.ndarray, amax: np.ndarray) -> float:
    """Largest finite |x|: the largest finite block amax, or inside a non-finite block its finite elements."""
    finite = np.isfinite(amax)
    best = float(amax[finite].max()) if finite.any() else 0.0
    if not finite.all():
        for r in np.unique(np.nonzero(~finite)[0]):
            a = np.abs(x2[r])
            a = a[np.isfinite(a)]
            if a.size:
                best = max(best, float(a.max()))
    return best


def _tensor_scales(amax_rows: np.ndarray) -> np.ndarray:
    """:func:`nvfp4_tensor_scale` of every entry of ``amax_rows`` (float64, finite, >= 0), vectorized: the same
    values (one rounding of the float64 quotient to float32, see Exactness; 0 -> 1.0; clamped to
    [2^-149, float32 max])."""
    with np.errstate(over="ignore", under="ignore"):
        s = (amax_rows / _TENSOR_DIVISOR).astype(np.float32).astype(np.float64)
    s[s == 0] = math.ldexp(1.0, -149)
    s[np.isinf(s)] = float(np.finfo(np.float32).max)
    s[amax_rows == 0] = 1.0
    return s


def quantize(block: BlockFormat, x: np.ndarray, tensor_amax: float | np.ndarray | None = None) -> Quantized:
    """Quantize ``x`` (float16 / float32 / float64, any shape) to the block format, blocks along the last
    axis (a short last block when its length is not a multiple of the block size), and return the
    dequantized values with the events (see :class:`Quantized` and the module's conventions).

    MX:    X = 2^(floor(log2 amax) - emax_elem) (E8M0, clamped), P_i = RNE_sat(V_i / X), value X * P_i.
    NVFP4: s_t = float32(amax_tensor / 2688), s_b = RNE_sat_e4m3(amax / (6 s_t)),
           P_i = RNE_sat_e2m1(V_i / (s_t s_b)), value P_i * s_b * s_t.
    ``tensor_amax`` (NVFP4 only): the whole tensor's max |x|, computed by the caller in a first pass; if
    None, the largest finite |x| of ``x``.  An array of shape ``x.shape[:-1]`` instead gives every row (every
    index of the leading axes) its own tensor scale, as if each row were quantized alone with its entry
    (``Quantized.tensor_scale`` is then that array of s_t, and ``tensor_scale_saturated`` true if any
    saturated).  ValueError for other dtypes, or a bad tensor_amax."""
    x = np.asarray(x)
    if x.dtype not in (np.float16, np.float32, np.float64):
        raise ValueError(f"quantize takes float16, float32 or float64 values, not {x.dtype}")
    if x.dtype == np.float16:
        x = x.astype(np.float32)  # exact
    per_row = tensor_amax is not None and np.ndim(tensor_amax) > 0
    if tensor_amax is not None:
        if not block.tensor_scale:
            raise ValueError(f"{block.name} has no per-tensor scale: tensor_amax applies to nvfp4 only")
        t = np.asarray(tensor_amax, dtype=np.float64)
        if per_row and t.shape != x.shape[:-1]:
            raise ValueError(f"per-row tensor_amax must have shape {x.shape[:-1]}, not {t.shape}")
        if not (np.isfinite(t).all() and (t >= 0).all()):
            raise ValueError(f"tensor_amax must be finite and >= 0, not {tensor_amax!r}")
    shape = x.shape
    n = shape[-1] if x.ndim else 1
    rows = math.prod(shape[:-1]) if x.ndim else 1
    x2 = np.ascontiguousarray(x).reshape(rows, n)
    B = block.block_size
    nfull, tail = divmod(n, B)
    nblocks = nfull + (1 if tail else 0)
    out_dtype = np.float64 if (block.tensor_scale or x.dtype == np.float64) else np.float32
    values = np.empty((rows, n), dtype=out_dtype)
    flushed = np.empty((rows, n), dtype=bool)
    saturated = np.empty((rows, n), dtype=bool)
    amax = np.empty((rows, nblocks), dtype=np.float64)
    scale = np.empty((rows, nblocks), dtype=np.float64)
    code = np.empty((rows, nblocks), dtype=np.uint8)
    ssat = np.empty((rows, nblocks), dtype=bool)
    s_t, t_sat = None, False
    have_amax = block.tensor_scale and tensor_amax is None
    if have_amax:  # a first pass: the tensor amax needs every block's
        _block_amax(x2, nfull, tail, B, amax)
    if per_row:
        rows_amax = np.asarray(tensor_amax, dtype=np.float64).reshape(rows)
        s_t = _tensor_scales(rows_amax)
        t_sat = bool(((rows_amax > 0) & ((s_t == math.ldexp(1.0, -149)) | (s_t == float(np.finfo(np.float32).max)))
                      ).any())
    elif block.tensor_scale:
        s_t, t_sat = nvfp4_tensor_scale(_finite_max(x2, amax) if tensor_amax is None else float(tensor_amax))
    n_nonzero = 0
    with np.errstate(all="ignore"):
        parts = []
        if nfull:
            parts.append((0, nfull * B, B, nfull, 0))
        if tail:
            parts.append((nfull * B, n, tail, 1, nfull))
        for start, stop, length, count, first in parts:
            xb = _strided(x2, start, stop, length)
            vb, fb, sb = (_strided(o, start, stop, length) for o in (values, flushed, saturated))
            for rs, bs in _tiles(rows, count, length):
                cols = slice(first + bs.start, first + bs.stop)
                st = s_t[rs, None] if per_row else s_t or 1.0
                sc, cd, ss, nz = _quantize_tile(block, xb[rs, bs], vb[rs, bs], fb[rs, bs], sb[rs, bs],
                                                amax[rs, cols], st,
                                                amax[rs, cols] if have_amax else None)
                scale[rs, cols], code[rs, cols], ssat[rs, cols] = sc, cd, ss
                n_nonzero += nz
    bshape = (*shape[:-1], nblocks) if x.ndim else (nblocks,)
    return Quantized(format=block, values=values.reshape(shape), flushed=flushed.reshape(shape),
                     saturated=saturated.reshape(shape), block_amax=amax.reshape(bshape),
                     scale=scale.reshape(bshape), scale_code=code.reshape(bshape),
                     scale_saturated=ssat.reshape(bshape), all_zero=(amax == 0).reshape(bshape),
                     tensor_scale=s_t.reshape(shape[:-1]) if per_row else s_t,
                     tensor_scale_saturated=t_sat, n_nonzero=n_nonzero, short_block=tail > 0)


# ----------------------------------------------------------------------------------------------------------
# findings


def flush_threshold(block: BlockFormat, amax, tensor_amax: float | None = None) -> np.ndarray:
    """The largest |x| that flushes to zero in a block of amax ``amax`` (array-like, float64): every element
    with |x| <= T is stored as 0, every larger one is not.  T = X * s_min / 2 (s_min = the element's
    smallest subnormal; at exactly half of it the tie goes to the even neighbour, 0), with X the block's
    scale as :func:`quantize` computes it (MX: 2^shared_exp; NVFP4: s_t * s_b, s_t from ``tensor_amax``,
    default: amax itself, i.e. the block holds the tensor's amax).  NaN where the scale is NaN; inf where
    NVFP4's s_b is 0 (the whole block flushes)."""
    amax = np.asarray(amax, dtype=np.float64)
    shape = amax.shape
    amax = amax.reshape(-1)
    half = block.element_min_subnormal / 2
    if block.scale == "e8m0":
        shared, code, _ = _mx_scales(block, amax)
        t = np.ldexp(half, np.minimum(shared, _E8M0_MAX_EXP))
        return np.where(code == _E8M0_NAN, np.nan, t).reshape(shape)
    amax_t = float(np.max(amax)) if tensor_amax is None else float(tensor_amax)
    s_t, _ = nvfp4_tensor_scale(amax_t)
    s_b, _ = _nvfp4_block_scales(amax, s_t)
    with np.errstate(all="ignore"):
        return np.where(s_b == 0, np.inf, s_t * s_b * half).reshape(shape)


def first_failing_spread(block: BlockFormat, amax, tensor_amax: float | None = None) -> np.ndarray:
    """The smallest spread amax / |x| at which an element of a block of amax ``amax`` flushes:
    ``amax / flush_threshold`` (exact for MX, a power-of-two ratio times amax's significand; rounded to
    float64 for NVFP4).  For MX = (amax / 2^floor(log2 amax)) * 2^(emax - emin + m + 1), so 16 .. 32 for
    MXFP4 and 2^18 .. 2^19 for MXFP8 e4m3; for NVFP4 = 24 * (amax / (6 s_t)) / s_b (24 when the block scale
    is exact).  0 where NVFP4's block scale is 0 (every element flushes)."""
    amax = np.asarray(amax, dtype=np.float64)
    with np.errstate(all="ignore"):
        return amax / flush_threshold(block, amax, tensor_amax)


def flushed_fraction(q: Quantized) -> float:
    """Flushed elements / finite non-zero inputs (0.0 when there are none)."""
    return q.n_flushed / q.n_nonzero if q.n_nonzero else 0.0


def error_summary(x: np.ndarray, q: Quantized) -> dict[str, float]:
    """The quantization error alone, over the finite inputs of non-NaN blocks: ``max_abs_error`` =
    max |value - x|, ``max_rel_error`` = max |value - x| / |x| over non-zero x (1.0 for a flushed one),
    ``rms_rel_error`` over the same (float64 arithmetic; relative errors rounded to float64)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    v = q.values.reshape(-1)
    max_abs = max_rel = sumsq = 0.0
    count = 0
    with np.errstate(all="ignore"):
        for s in range(0, x.size, _TILE):
            xs, vs = x[s:s + _TILE], v[s:s + _TILE].astype(np.float64)
            ok = np.isfinite(xs) & np.isfinite(vs)
            err = np.abs(vs[ok] - xs[ok])
            if err.size:
                max_abs = max(max_abs, float(err.max()))
            nz = xs[ok] != 0
            rel = err[nz] / np.abs(xs[ok][nz])
            if rel.size:
                max_rel = max(max_rel, float(rel.max()))
                sumsq += float(np.dot(rel, rel))
                count += rel.size
    return {"max_abs_error": max_abs, "max_rel_error": max_rel,
            "rms_rel_error": math.sqrt(sumsq / count) if count else 0.0}


def _g(v: float) -> str:
    """A number for the facts table: powers of two from 1024 up and below 1 as 2^k, other integers as
    integers, else %.6g."""
    m, e = math.frexp(v)
    if m == 0.5 and (v >= 1024 or v < 1):
        return f"2^{e - 1}"
    if v == int(v):
        return str(int(v))
    return f"{v:.6g}"


def facts_table() -> str:
    """The facts of every block format as a markdown table (docs/reference/block-formats.md holds it;
    tests/test_blockscale.py checks the page against this function)."""
    head = ("| format | aliases | block | element | scale | element max | element smallest subnormal "
            "| largest value | smallest non-zero value | bits per value | flush ratio |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in BLOCK_FORMATS.values():
        unit = " × s_t" if b.tensor_scale else ""
        scale = f"{b.scale} + float32 s_t" if b.tensor_scale else b.scale
        largest = f"{_g(b.element_max)} × {_g(b.scale_max)}{unit}"
        smallest = f"{_g(b.element_min_subnormal)} × {_g(b.scale_min)}{unit} = {_g(b.smallest_value)}{unit}"
        if not b.tensor_scale:
            largest += f" ≈ {b.largest_value:.3g}"
        lines.append(f"| {b.name} | {', '.join(b.aliases) or '-'} | {b.block_size} | {b.element} | {scale} "
                     f"| {_g(b.element_max)} | {_g(b.element_min_subnormal)} | {largest} | {smallest} "
                     f"| {b.bits_per_value:g} | {_g(b.flush_ratio)} |")
    return "\n".join(lines)
