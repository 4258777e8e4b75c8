"""Plain-English findings generated from results, so text never disagrees with numbers."""

from __future__ import annotations

from collections import defaultdict

from .engine import Comparison, Result

__all__ = ["findings", "VERB"]

VERB = {
    "overflow": "overflows",
    "underflow": "underflows",
    "nan": "gives NaN",
    "inaccurate": "is inaccurate",
    "ok": "is ok",
}
_ORDER = ("nan", "overflow", "underflow", "inaccurate", "ok")


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
    for status in _ORDER:
        group = by_status.get(status)
        if not group:
            continue
        names = ", ".join(r.dtype for r in group)
        if status == "ok":
            parts.append(f"ok in {names}")
        elif status != "inaccurate":
            values = sorted({_short(r.value) for r in group})
            parts.append(f"{VERB[status]} in {names} (loss {'/'.join(values)})")
        else:
            worst = max(r.rel_error for r in group)
            parts.append(f"{VERB[status]} in {names} (relative error up to {worst:.2g})")
    return f"{method} " + "; ".join(parts)


def _short(v: float) -> str:
    return f"{v:.4g}"


def findings(comparison: Comparison) -> list[tuple[str, str]]:
    """One sentence per case that some method fails: ``(experiment, sentence)``.

    Example: "p=0.1,n=100 (exact 230.2585 in float64): product underflows in
    float16, bfloat16, float32 (loss inf); ok in float64; sum_log is ok
    everywhere (within 0.43 ulp)."
    """
    formats = [f.name for f in comparison.formats]
    widest_format = max(comparison.formats, key=lambda f: f.precision).name
    grouped: dict[tuple[str, str], dict[str, list[Result]]] = defaultdict(lambda: defaultdict(list))
    for r in comparison.results:
        grouped[(r.experiment, r.case)][r.method].append(r)
    out = []
    for (experiment, case), methods in grouped.items():
        rows = [r for rs in methods.values() for r in rs]
        if all(r.status == "ok" for r in rows):
            continue
        widest = next(r for r in rows if r.dtype == widest_format)
        phrases = [_method_phrase(m, rs, formats) for m, rs in methods.items()]
        out.append((experiment, f"{case} (exact {widest.reference:.10g} in {widest.dtype}): " + "; ".join(phrases) + "."))
    return out
