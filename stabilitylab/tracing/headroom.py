"""Headroom without a shadow (``stabilitylab trace --headroom``): does every module's output fit a format?

One float32 forward of the model with a forward hook on every module; no float64 twin, no re-execution.  For
each module output (every floating tensor it returns, widened to float32 exactly if it is bfloat16 / float16;
all calls of a module pooled) and each format, from the values x:

* ``amax`` = max |x| over the finite values; ``margin`` = log2(max / amax) in binades (octaves), ``max`` the
  format's largest finite value: > 0 is room to spare, < 0 means values above the range.  A precision policy
  (``bf16@float32`` ...) is judged by its *storage* format, the one values are held in.
* ``overflow``: count of |x| that round past the largest finite value (to inf, to NaN, or saturated to
  +-max in a format without infinity): |x| >= max + ulp(max)/2, the tie included exactly when max's last
  significand bit is 1 (round to nearest even then goes up, as in every IEEE format).
* ``below_normal`` = #{0 < |x| < tiny} / #{x != 0}: nonzero values below the smallest normal (they keep
  fewer significant bits); ``flushed`` = #{0 < |x| <= smallest_subnormal / 2} / #{x != 0}: nonzero values
  that round to 0 (at exactly half the smallest subnormal the tie goes to the even neighbour, 0).
* block-scaled formats (mxfp8, mxfp6, mxfp4, nvfp4: ``numerics/blockscale.py``): ``block_flushed`` =
  flushed / nonzero counted by the project's quantizer (:func:`~stabilitylab.numerics.blockscale.quantize`,
  blocks along the output's last axis, nvfp4's per-tensor scale from the whole output's amax).  The
  quantizer is numpy code, so outputs with more than ``block_sample`` values are counted on a sample:
  every s-th row of the last axis, s = ceil(rows / floor(block_sample / row length)); ``block_sampled``
  records how many values were quantized.  The range margin of an MX format is against
  ``element max * 2^127``; nvfp4's per-tensor scale follows amax, so it has no margin.

Non-finite values (already inf / NaN in float32) are counted apart (``nonfinite``) and left out of the rest.

Cost: the output is read once as float32 bit patterns with the sign cleared (an int32 array whose order is
the order of |x|); one pass selects the values at or below the largest underflow threshold (zeros
included), and each threshold is a comparison pass over those (numpy ``count_nonzero(small < t)``: tiny and
half the smallest subnormal per format); the overflow point is counted over all values, only when amax
reaches it.  The
thresholds are powers of two or midpoints between representable numbers, all float32 numbers, or outside
float32's range (then no float32 value crosses them and the count is 0).  Block formats add the quantizer
on the sample.  A parent module that returns its child's output tensor reuses the child's counts.  A verdict
per format: "fits", "overflows in N modules", "underflows X% ...".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..io import schemas
from ..numerics.blockscale import BlockFormat, quantize
from ..numerics.formats import Format
from ..numerics.policies import block_of, chosen
from ..render.model import Cell, Section, Table

__all__ = ["DEFAULT_FORMATS", "BLOCK_SAMPLE", "FormatStats", "ModuleHeadroom", "Headroom", "measure",
           "resolve_formats", "call_model"]

DEFAULT_FORMATS = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "mxfp8", "mxfp4", "nvfp4")
BLOCK_SAMPLE = 1 << 14  # values per module output quantized per block format (whole rows; see the docstring)
_F32_MIN_SUB = math.ldexp(1.0, -149)
_F32_MAX = float(np.finfo(np.float32).max)
ROOT_NAME = "(model)"


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("stabilitylab trace --headroom needs PyTorch: pip install 'stabilitylab[torch]'") from None
    return torch


def resolve_formats(specs) -> tuple[Format, ...]:
    """The formats / policies named by ``specs`` (any ``-d`` spelling, ``all``, ``every``), in order, once each.
    KeyError / ValueError with one line for a bad name (the CLI turns it into exit 2)."""
    out: dict[str, Format] = {}
    for spec in ([specs] if isinstance(specs, (str, Format)) else specs):
        for fmt in ((spec,) if isinstance(spec, Format) else chosen(spec)):
            out.setdefault(fmt.name, fmt)
    return tuple(out.values())


def call_model(model, inputs):
    """``model(*inputs)`` for a tuple / list, ``model(**inputs)`` for a dict, else ``model(inputs)``."""
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(inputs)


_ABS = np.int32(0x7FFFFFFF)
_INF_BITS = 0x7F800000  # |x| bit patterns at or above this are inf / NaN


def _bits(v: float) -> int:
    """The bit pattern of the float32 number v (ValueError if v is not one)."""
    f = np.float32(v)
    if float(f) != v:
        raise ValueError(f"{v!r} is not a float32 number")
    return int(f.view(np.int32))


@dataclass(frozen=True)
class _Thresholds:
    """One elementwise format's thresholds as float32 bit patterns of |x| (|x| <-> its bits is monotonic).

    below normal: |x| < tiny; flushed: |x| <= half (half = smallest subnormal / 2); overflow: |x| >= over
    (``over_tie``) or |x| > over.  None: no float32 value qualifies (tiny / half below 2^-149, over above the
    float32 maximum)."""

    tiny: int | None
    half: int | None
    over: int | None
    over_tie: bool

    @classmethod
    def of(cls, fmt: Format) -> "_Thresholds":
        half = fmt.smallest_subnormal / 2
        ulp = math.ldexp(1.0, fmt.max_exponent - fmt.fraction_bits)
        over = fmt.max + ulp / 2  # round to nearest: |x| past this midpoint leaves the finite range
        tie = round(fmt.max / ulp) % 2 == 1  # at the midpoint the even neighbour is the one past max
        return cls(None if fmt.tiny < _F32_MIN_SUB else _bits(fmt.tiny),
                   None if half < _F32_MIN_SUB else _bits(half),
                   None if over > _F32_MAX else _bits(over), tie)


@dataclass
class FormatStats:
    """One module's output against one format (fractions of the nonzero finite values; None: not applicable)."""

    margin: float | None  # log2(max / amax), binades; None: nvfp4 (its tensor scale follows amax), or amax == 0
    overflow: int | None  # values that round past the largest finite value (None for block formats)
    below_normal: float | None
    flushed: float | None
    block_flushed: float | None = None
    block_sampled: int | None = None  # values the block quantizer saw


@dataclass
class ModuleHeadroom:
    module: str
    type: str
    values: int  # every value of every floating output of every call
    nonzero: int  # finite nonzero values
    nonfinite: int  # inf / NaN already in float32
    amax: float  # max |x| over the finite values (0.0 when none)
    formats: dict[str, FormatStats] = field(default_factory=dict)


@dataclass
class Headroom:
    """What :func:`measure` found: one :class:`ModuleHeadroom` per module that returned a floating tensor,
    in the order their outputs were first produced (a parent after its children)."""

    formats: tuple[Format, ...]
    modules: list[ModuleHeadroom]
    block_sample: int | None
    seconds: float  # wall time of the hooked forward (not in the JSON: it is not reproducible)

    def storage(self, fmt: Format) -> Format | BlockFormat:
        block = block_of(fmt)
        return block if block is not None else fmt.storage_format

    def verdict(self, fmt: Format) -> str:
        """One line: ``fits (margin >= k binades ...)``, ``overflows in N modules (...)`` or ``underflows ...``."""
        rows = [(m, m.formats[fmt.name]) for m in self.modules]
        if not rows:
            return "no floating module output was seen"
        over = [(m, s) for m, s in rows if (s.overflow or 0) > 0]
        if over:
            worst = min(over, key=lambda r: r[1].margin)
            return (f"overflows in {len(over)} module{'s' * (len(over) != 1)} (worst {worst[0].module}: "
                    f"amax {worst[0].amax:.6g}, {-worst[1].margin:.2f} binades above max)")
        lost = [(m, s, s.block_flushed if s.block_flushed is not None else s.flushed) for m, s in rows]
        lost = [r for r in lost if r[2]]
        margins = [s.margin for _, s in rows if s.margin is not None]
        room = f"margin >= {min(margins):.2f} binades" if margins else "no range limit: per-tensor scale"
        if lost:
            m, s, frac = max(lost, key=lambda r: r[2])
            sampled = " (block sample)" if s.block_sampled is not None and s.block_sampled < m.values else ""
            many = len(lost) != 1
            return (f"underflows {_pct(frac)} of the nonzero values to 0 in {m.module}{sampled}; "
                    f"{len(lost)} module{'s' * many} lose{'s' * (not many)} values to 0; {room}")
        sub = [(m, s) for m, s in rows if s.below_normal]
        if sub:
            m, s = max(sub, key=lambda r: r[1].below_normal)
            return f"fits ({room}; {_pct(s.below_normal)} of {m.module} subnormal)"
        return f"fits ({room})"

    def to_json(self) -> dict:
        from ..render.jsonout import number

        def opt(v):
            return None if v is None else number(v)

        formats = []
        for fmt in self.formats:
            st = self.storage(fmt)
            rec = {"name": fmt.name, "verdict": self.verdict(fmt)}
            if isinstance(st, BlockFormat):
                rec.update(block=st.name, largest_value=None if st.tensor_scale else number(st.largest_value))
            else:
                rec.update(storage=st.name, max=number(st.max), tiny=number(st.tiny),
                           smallest_subnormal=number(st.smallest_subnormal))
            formats.append(rec)
        modules = [{"module": m.module, "type": m.type, "values": m.values, "nonzero": m.nonzero,
                    "nonfinite": m.nonfinite, "amax": number(m.amax),
                    "formats": {name: {"margin_binades": opt(s.margin), "overflow": s.overflow,
                                       "below_normal_fraction": opt(s.below_normal),
                                       "flushed_fraction": opt(s.flushed),
                                       "block_flushed_fraction": opt(s.block_flushed),
                                       "block_sampled": s.block_sampled}
                                for name, s in m.formats.items()}}
                   for m in self.modules]
        return {"schema": schemas.HEADROOM, "formats": formats, "block_sample": self.block_sample,
                "modules": modules}

    def sections(self) -> list[Section]:
        """The document model: verdicts, then one table per format (the table and markdown renderers draw it)."""
        verdicts = Section("Headroom: one float32 forward, every module's output against each format",
                           paragraphs=["margin = log2(format max / amax) in binades; below normal / flushed = "
                                       "fraction of the nonzero values below the smallest normal / rounding to 0."],
                           bullets=[f"{f.name}: {self.verdict(f)}" for f in self.formats])
        already = [f"{m.module} ({m.nonfinite})" for m in self.modules if m.nonfinite]
        if already:
            verdicts.footer.append("inf / NaN already in the float32 forward, counted apart (an intended -inf, "
                                   f"such as an attention mask, shows here too): {', '.join(already)}")
        sections = [verdicts]
        for fmt in self.formats:
            block = block_of(fmt) is not None
            headers = ["module", "type", "amax", "margin (binades)"]
            headers += ["flushed by block scale", "quantized"] if block else ["overflow", "below normal", "flushed"]
            rows = []
            for m in self.modules:
                s = m.formats[fmt.name]
                status = "overflow" if (s.overflow or 0) > 0 else \
                    "underflow" if (s.block_flushed or s.flushed) else "ok"
                cells = [Cell(m.module), Cell(m.type), Cell(f"{m.amax:.4g}"),
                         Cell("—" if s.margin is None else f"{s.margin:.2f}", status)]
                if block:
                    cells += [Cell(_pct(s.block_flushed), status), Cell(str(s.block_sampled))]
                else:
                    cells += [Cell(str(s.overflow), status), Cell(_pct(s.below_normal)), Cell(_pct(s.flushed), status)]
                rows.append(cells)
            caption = ""
            if block:
                caption = (f"block flush counted on at most {self.block_sample} values per output (whole rows)"
                           if self.block_sample else "block flush counted on every value")
            sections.append(Section(fmt.name, tables=[Table(f"{fmt.name}: {self.verdict(fmt)}", headers, rows,
                                                            caption=caption)]))
        return sections

    def to_markdown(self) -> str:
        from ..render.markdown import sections_md

        return sections_md(self.sections())

    def print(self, console=None) -> None:
        from ..render.table import print_sections, stdout_console

        print_sections(console or stdout_console(), self.sections())


def _pct(frac: float | None) -> str:
    if frac is None:
        return "—"
    if frac == 0:
        return "0"
    pct = 100 * frac
    return f"{pct:.3g}%" if pct >= 0.001 else f"{pct:.2e}%"


class _Collector:
    """Per module: counts accumulated over calls (python ints, one list per format)."""

    def __init__(self, torch, formats, thresholds: list[_Thresholds | None], blocks: list[BlockFormat | None],
                 block_sample: int | None):
        self.torch = torch
        self.formats = formats
        self.thresholds = thresholds
        self.blocks = blocks
        self.block_sample = block_sample
        # every tiny / half threshold is at most this one: the small values are selected once, then counted
        self.low = max([t for th in thresholds if th is not None for t in (th.tiny, th.half) if t is not None],
                       default=0)
        self.stats: dict[str, dict] = {}
        self._last: list = []  # [(tensor, counts)] of the latest outputs: a parent returning its child's output

    def hook(self, name: str, type_name: str):
        def fn(module, args, output):
            for t in _tensors(self.torch, output):
                self.add(name, type_name, t)
        return fn

    def add(self, name: str, type_name: str, t) -> None:
        counts = next((c for u, c in self._last if u is t), None)
        if counts is None:
            counts = self.count(t)
            self._last = [(t, counts), *self._last[:1]]
        rec = self.stats.get(name)
        if rec is None:
            self.stats[name] = {"type": type_name, **counts,
                                "formats": [list(c) for c in counts["formats"]]}
            return
        for key in ("values", "nonzero", "nonfinite"):
            rec[key] += counts[key]
        rec["amax"] = max(rec["amax"], counts["amax"])
        for acc, c in zip(rec["formats"], counts["formats"]):
            for i, v in enumerate(c):
                acc[i] += v

    def count(self, t) -> dict:
        """The counts of one output tensor: values, nonzero, nonfinite, amax, and per format
        [below normal, flushed, overflow] (elementwise) or [block flushed, block nonzero, quantized] (block)."""
        x = t.detach()
        if x.dtype != self.torch.float32:
            x = x.float()  # exact from bfloat16 / float16; float64 rounds to float32
        torch = self.torch
        # the whole-tensor passes run in torch (its element-wise kernels use every core), on int32 patterns
        bits = x.cpu().contiguous().reshape(-1).view(torch.int32) & int(_ABS)  # |x|'s pattern: ordered like |x|
        n = bits.numel()
        top = int(bits.max()) if n else 0
        nonfinite = 0
        if top >= _INF_BITS:
            finite = bits < _INF_BITS
            nonfinite = n - int(torch.count_nonzero(finite))
            bits = bits[finite]
            top = int(bits.max()) if bits.numel() else 0
        amax = float(np.int32(top).view(np.float32))
        # one pass selects |x| <= the largest threshold (zeros included); each threshold is then one comparison
        # pass over those few values (numpy's bincount of the exponents would cost 20x one comparison)
        small = bits[bits <= self.low].numpy()
        zeros = small.size - int(np.count_nonzero(small))
        per = []
        for th, block in zip(self.thresholds, self.blocks):
            if block is not None:
                per.append(self._block(block, x, amax))
                continue
            tiny = 0 if th.tiny is None else int(np.count_nonzero(small < th.tiny)) - zeros
            flushed = 0 if th.half is None else int(np.count_nonzero(small <= th.half)) - zeros
            over = 0
            if th.over is not None and top >= th.over:
                over = int(torch.count_nonzero(bits >= th.over if th.over_tie else bits > th.over))
            per.append((tiny, flushed, over))
        return {"values": n, "nonzero": bits.numel() - zeros, "nonfinite": nonfinite, "amax": amax, "formats": per}

    def _block(self, block: BlockFormat, x, amax: float) -> tuple[int, int, int]:
        if x.numel() == 0:
            return 0, 0, 0
        rows = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
        length = rows.shape[1]
        if self.block_sample and rows.numel() > self.block_sample:
            step = math.ceil(rows.shape[0] / max(1, self.block_sample // max(1, length)))
            rows = rows[::step]
        sample = rows.cpu().numpy()
        finite = np.isfinite(sample)
        if not finite.all():
            sample = np.where(finite, sample, np.float32(0))  # non-finite values are counted apart
        q = quantize(block, sample, tensor_amax=amax if block.tensor_scale else None)
        return q.n_flushed, q.n_nonzero, sample.size

    def result(self, block_sample, seconds) -> Headroom:
        modules = []
        for name, rec in self.stats.items():  # in the order the outputs were produced
            nonzero, amax = rec["nonzero"], rec["amax"]
            m = ModuleHeadroom(name, rec["type"], rec["values"], nonzero, rec["nonfinite"], amax)
            for fmt, block, c in zip(self.formats, self.blocks, rec["formats"]):
                if block is not None:
                    flushed, nz, sampled = c
                    margin = None if block.tensor_scale or amax == 0 else math.log2(block.largest_value / amax)
                    m.formats[fmt.name] = FormatStats(margin, None, None, None, flushed / nz if nz else 0.0, sampled)
                    continue
                tiny, flushed, over = c
                margin = math.log2(fmt.storage_format.max / amax) if amax > 0 else None
                m.formats[fmt.name] = FormatStats(margin, over, tiny / nonzero if nonzero else 0.0,
                                                  flushed / nonzero if nonzero else 0.0)
            modules.append(m)
        return Headroom(tuple(self.formats), modules, block_sample, seconds)


def _tensors(torch, output):
    """The floating tensors in a module's output (nested tuples / lists / dicts)."""
    if isinstance(output, torch.Tensor):
        if output.is_floating_point() and not output.is_complex():
            yield output
    elif isinstance(output, (tuple, list)):
        for o in output:
            yield from _tensors(torch, o)
    elif isinstance(output, dict):
        for o in output.values():
            yield from _tensors(torch, o)


def _float32(torch, model, inputs):
    """The model and inputs in float32: a float32 model as it is; a model with other floating parameters or
    buffers (bfloat16, float16, float64) as a float32 copy (``copy.deepcopy(model).float()``, exact from
    bfloat16 / float16); floating input tensors converted, other inputs as they are."""
    import copy

    def floating(t):
        return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float32

    if any(floating(t) for t in (*model.parameters(), *model.buffers())):
        model = copy.deepcopy(model).float()

    def convert(x):
        if floating(x):
            return x.float()
        if isinstance(x, (tuple, list)):
            return type(x)(convert(v) for v in x)
        if isinstance(x, dict):
            return {k: convert(v) for k, v in x.items()}
        return x

    return model, convert(inputs)


def measure(model, inputs, formats=DEFAULT_FORMATS, *, block_sample: int | None = BLOCK_SAMPLE) -> Headroom:
    """Run ``model`` once on ``inputs`` in float32 (:func:`call_model` under ``torch.no_grad``; a model or inputs
    in another floating dtype are converted first, the model as a copy: the caller's is untouched) with a
    forward hook on every module, and return every module's output statistics against ``formats`` (names or
    :class:`Format` objects; see the module docstring).  ``block_sample``: values quantized per output and
    block format (None: all).  The hooks are removed afterwards, also when the forward raises."""
    torch = _torch()
    model, inputs = _float32(torch, model, inputs)
    fmts = resolve_formats([formats] if isinstance(formats, (str, Format)) else formats)
    blocks = [block_of(f) for f in fmts]
    thresholds = [None if b is not None else _Thresholds.of(f.storage_format) for f, b in zip(fmts, blocks)]
    collector = _Collector(torch, fmts, thresholds, blocks, block_sample)
    handles = [module.register_forward_hook(collector.hook(name or ROOT_NAME, type(module).__name__))
               for name, module in model.named_modules()]
    try:
        t0 = time.perf_counter()
        with torch.no_grad():
            call_model(model, inputs)
        seconds = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
    return collector.result(block_sample, seconds)
