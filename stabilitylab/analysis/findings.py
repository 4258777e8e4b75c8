"""Plain-English findings generated from results, so text never disagrees with numbers."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..numerics import blockscale
from ..numerics.arith import BLOCK_COUNTS
from ..numerics.policies import block_of
from .engine import Comparison, Result
from .outcome import METHOD_FAILURES, SEVERITY

__all__ = ["findings", "block_findings", "first_failing_spread_text", "VERB"]

VERB = {
    "range": "is correctly rounded, but the loss itself is not representable",
    "overflow": "overflows",
    "underflow": "underflows",
    "nan": "gives NaN",
    "inf": "gives an infinite loss",
    "error": "raises",
    "inaccurate": "is inaccurate",
    "ok": "is ok",
}


def _fmt_ulps(x: float) -> str:
    return f"{x:.2g}"


def _method_phrase(method: str, rows: list[Result], all_formats: list[str]) -> str:
    by_status: dict[str, list[Result]] = defaultdict(list)
    for r in rows:
        by_status[r.status].append(r)
    if set(by_status) == {"ok"}:
        worst = max(r.ulps for r in rows)
        where = "everywhere" if len(rows) == len(all_formats) else "in " + ", ".join(r.dtype for r in rows)
        return f"{method} is ok {where} (within {_fmt_ulps(worst)} ulp)"
    parts = []
    for status in SEVERITY:
        group = by_status.get(status)
        if not group:
            continue
        names = ", ".join(r.dtype for r in group)
        if status == "ok":
            parts.append(f"ok in {names}")
        elif status == "range":
            values = sorted({_short(r.value) for r in group})
            exacts = sorted({_exact(r) for r in group})
            parts.append(f"gives {'/'.join(values)} in {names}, correctly rounded: the exact value "
                         f"{'/'.join(exacts)} is not representable there")
        elif status == "error":
            messages = sorted({r.error for r in group})
            parts.append(f"{VERB[status]} in {names} ({'; '.join(messages)})")
        elif status != "inaccurate":
            values = sorted({_short(r.value) for r in group})
            # (a cast's nan: a NaN input stored as a number, or in a format without NaN)
            verb = "loses a NaN input" if status == "nan" and any(r.value == r.value for r in group) else VERB[status]
            parts.append(f"{verb} in {names} (loss {'/'.join(values)})")
        else:
            worst = max(r.rel_error for r in group)
            parts.append(f"{VERB[status]} in {names} (relative error up to {worst:.2g})")
    return f"{method} " + "; ".join(parts)


def _relative(a: float, b: float) -> float:
    if a == b or (a != a and b != b):  # equal, or both NaN (an undefined loss stays undefined)
        return 0.0
    if b == 0 or not (abs(a) < float("inf") and abs(b) < float("inf")):
        return float("inf")
    return abs(a - b) / abs(b)


def _short(v: float) -> str:
    return f"{v:.4g}"


def _exact(r: Result) -> str:
    """The exact value in 4 digits (from its text: it may be below float64's range)."""
    try:
        return f"{float(r.exact):.4g}" if r.exact not in ("0", "-0") and float(r.exact) != 0 else r.exact
    except ValueError:
        return r.exact



def findings(comparison: Comparison) -> list[tuple[str, str]]:
    """One sentence per case that some method fails: ``(experiment, sentence)``.

    Example: "p=0.1,n=100 (exact 230.2585 in float64): product underflows in
    float16, bfloat16, float32 (loss inf); ok in float64; sum_log is ok
    everywhere (within 0.43 ulp)."
    """
    formats = [f.name for f in comparison.formats]
    widest_format = max(comparison.formats, key=lambda f: (f.precision, f.block is None)).name
    grouped: dict[tuple[str, str], dict[str, list[Result]]] = defaultdict(lambda: defaultdict(list))
    for r in comparison.results:
        grouped[(r.experiment, r.case)][r.method].append(r)
    tolerance = {f.name: f.default_tolerance if comparison.tolerance is None else comparison.tolerance
                 for f in comparison.formats}
    truths = {(e.name, m.name): m.truth for e in comparison.experiments for m in e.methods}
    out = []
    for (experiment, case), methods in grouped.items():
        rows = [r for rs in methods.values() for r in rs]
        said = set()
        for method, rs in methods.items():  # once per exact quantity (a method may have its own truth)
            truth = id(truths.get((experiment, method)))
            if truth in said:
                continue
            said.add(truth)
            widest = next(r for r in rs if r.dtype == widest_format)
            moved = sorted({r.dtype: _exact(r) for r in rs
                            if _relative(r.reference, widest.reference) > tolerance[r.dtype]}.items())
            if moved:
                changes = ", ".join(f"{d} {text}" for d, text in moved)
                whose = "" if truths.get((experiment, method)) is None else f" ({method})"
                out.append((experiment, f"{case}: rounding the inputs to the format changes the exact value"
                                        f"{whose} itself ({_exact(widest)} in {widest.dtype}; {changes})."))
        if all(r.status == "ok" for r in rows):
            continue
        widest = next(r for r in rows if r.dtype == widest_format)
        phrases = [_method_phrase(m, rs, formats) for m, rs in methods.items()]
        head = f"{case} (exact {widest.exact} in {widest.dtype}): "
        out.append((experiment, head + "; ".join(phrases) + "."))
    return out + block_findings(comparison)


def first_failing_spread_text(block: blockscale.BlockFormat) -> str:
    """The spread amax / |x| at which an element first flushes (:func:`blockscale.first_failing_spread`):
    for MX a range over the significand of the block's amax in [1, 2); for NVFP4 its value for a block
    holding the tensor's amax (exact block scale)."""
    if block.tensor_scale:
        return f"{float(blockscale.first_failing_spread(block, 1.0, 1.0)):.4g} (a block holding the tensor's amax)"
    lo, hi = blockscale.first_failing_spread(block, [1.0, np.nextafter(2.0, 0.0)])
    return f"{float(lo):.4g} to {float(hi):.4g} (by the significand of the block's amax)"


def _names(names: list[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def block_findings(comparison: Comparison) -> list[tuple[str, str]]:
    """One sentence per experiment and block-scaled storage format: inputs flushed to zero by their block's
    scale (count, fraction of the finite non-zero inputs, the cases), saturated elements and block scales,
    the first failing spread, and the split of the loss error: cases whose exact value the quantization
    alone changes (beyond the tolerance, or an input lost: the "exact, your input" row) vs cases whose
    computed value the arithmetic gets wrong (a status of inaccurate or worse against the exact value of
    the quantized inputs)."""
    out = []
    for (experiment, dtype), counts in comparison.blocks.items():
        fmt = next(f for f in comparison.formats if f.name == dtype)
        block = block_of(fmt)
        rows = [r for r in comparison.results if r.experiment == experiment and r.dtype == dtype]
        cases = list(dict.fromkeys(r.case for r in rows))
        nz, fl, sat, ssat = (counts[BLOCK_COUNTS.index(k)] for k in BLOCK_COUNTS)
        total, flushed = int(nz.sum()), int(fl.sum())
        share = f"{100 * flushed / total:.3g} %" if total else "0 %"
        where = [c for c, k in zip(cases, fl.tolist()) if k]
        text = (f"{dtype} (block storage {block.name}, blocks of {block.block_size} along the last axis): "
                f"{flushed} of {total} non-zero inputs ({share}) flushed to zero by their block's scale"
                + (f" in {_names(where)}" if where else "")
                + f"; {int(sat.sum())} saturated to the element's largest value, {int(ssat.sum())} block scale(s) "
                f"saturated; an element flushes from a spread amax/|x| of {first_failing_spread_text(block)}")
        quantized = sorted({r.case for r in rows if r.input_change})
        arithmetic = sorted({r.case for r in rows if r.status in METHOD_FAILURES})
        text += (f". Quantization alone changes the exact value in {len(quantized)} of {len(cases)} cases"
                 + (f" ({_names(quantized)})" if quantized else "")
                 + f"; the arithmetic then fails (inaccurate or worse, some method) in {len(arithmetic)} cases"
                 + (f" ({_names(arithmetic)})" if arithmetic else "") + ".")
        out.append((experiment, text))
    return out


def threshold_findings(rows) -> list[tuple[str, str]]:
    """One sentence per family and format: where each method first fails.

    Example: "In float32, along iid (n): product first fails at n = 46 (underflow;
    predicted 46), inaccurate from n = 45; sum_log never fails the status rule for
    n <= 2**62."  "Never fails" is about the status rule
    only: a value that vanishes because the exact value is below the format's range is
    correctly rounded (the report says where, beside its figure).
    """
    grouped: dict[tuple[str, str, str], list] = defaultdict(list)
    for r in rows:
        grouped[(r.experiment, r.family, r.dtype)].append(r)
    out = []
    for (experiment, family, dtype), rs in grouped.items():
        parts = []
        for r in rs:
            if r.predicted_for == "first_flush" and r is rs[0]:
                parts.append(f"the true logit first flushes to 0 at {r.parameter} = {_param(r.predicted)} "
                             "(quantization alone)")
            bound_f = "" if r.exact_failure else "at most "
            bound_i = "" if r.exact_inaccurate else "at most "
            if r.first_failure is not None:
                text = f"{r.method} first fails at {r.parameter} = {bound_f}{_param(r.first_failure)} ({r.failure}"
                if r.predicted is not None and r.predicted_for == "first_failure" and r.agrees is not None:
                    text += f"; predicted {_param(r.predicted)}"
                text += ")"
                if r.first_inaccurate is not None and r.first_inaccurate < r.first_failure:
                    text += f", inaccurate from {r.parameter} = {bound_i}{_param(r.first_inaccurate)}"
                parts.append(text)
            elif r.first_inaccurate is not None:
                how = ("inaccurate" if r.inaccurate_status in (None, "inaccurate")
                       else f"{r.inaccurate_status} (a finite but lost result)")
                parts.append(f"{r.method} stays finite but is {how} from {r.parameter} = {bound_i}"
                             f"{_param(r.first_inaccurate)}")
            elif r.exact_inaccurate and r.exact_failure:
                parts.append(f"{r.method} never fails the status rule for {r.parameter} <= "
                             f"{_param(r.search_range[1])}")
            else:
                below = r.verified_inaccurate if not r.exact_inaccurate else r.verified_failure
                parts.append(f"{r.method}: no failure found (verified for {r.parameter} < {_param(below)})")
        out.append((experiment, f"In {dtype}, along {family} ({rs[0].parameter}): " + "; ".join(parts) + "."))
    return out


def _param(x) -> str:
    if isinstance(x, int):
        if x < 10**12:
            return str(x)
        if x & (x - 1) == 0:
            return f"2**{x.bit_length() - 1}"
        digits = str(x)
        return f"{digits[0]}.{digits[1:4]}e+{len(digits) - 1}"
    return repr(x)
