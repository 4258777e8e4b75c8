"""Render a :class:`stabilitylab.analysis.streaming.Summary`: tables for a screen, a JSON document,
and JSON Lines of every row, all from columns (no object per row)."""

from __future__ import annotations

import json
import math

import numpy as np

from ..analysis.outcome import METHOD_FAILURES, STATUSES, worst_status
from ..analysis.streaming import BITS_BINS, Summary
from ..numerics import blockscale
from ..numerics.policies import block_of
from ..numerics.reference import Exact
from .jsonout import number
from .model import BLACK_BOX_COUNTS, COUNT_NAMES, WHITE_BOX_COUNTS, Cell, Section, Table, value_text

__all__ = ["bulk_section", "bulk_document", "jsonl_lines", "BIT_GROUPS"]

# error-bits histogram columns on a screen: [lo, hi) in bits; JSON keeps every 1-bit bin
BIT_GROUPS = ((0, 1), (1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (32, BITS_BINS))


def _exact_texts(rows: np.ndarray, digits: int = 10) -> list[str]:
    return Exact(rows["exact_hi"], rows["exact_lo"], rows["exact_scale"], rows["exact_zero"]).text(digits)


def _fmt_count(n: int) -> str:
    return f"{n:,}"


def _bound_text(bound: float) -> str:
    return f"2**{math.log2(bound):.1f}"


def bulk_section(summary: Summary, source_text: str, worst: int | None = 3, failing: int | None = 5) -> Section:
    """softmax_ce on the user's logits: counts, error-bits histogram, worst and failing rows.
    ``worst`` / ``failing``: rows shown per method and format (None: all that were kept)."""
    formats, methods = summary.formats, summary.methods
    count_rows = []
    for method in methods:
        cells = [Cell(method)]
        shown = BLACK_BOX_COUNTS if method in summary.black_box else WHITE_BOX_COUNTS
        for fmt in formats:
            c = summary.cells[fmt.name, method]
            counts = dict(zip(STATUSES, c.counts.tolist()))
            bad = worst_status(s for s in METHOD_FAILURES if counts[s])
            cells.append(Cell(" / ".join(_fmt_count(counts[s]) for s in shown), bad))
        count_rows.append(cells)
    caption = ""
    if summary.black_box:
        caption = (f"{', '.join(summary.black_box)} (a black box, no IEEE event seen): "
                   f"{' / '.join(COUNT_NAMES[s] for s in BLACK_BOX_COUNTS)}")
    counts = Table(f"softmax_ce on {source_text}: {' / '.join(COUNT_NAMES[s] for s in WHITE_BOX_COUNTS)} "
                   f"rows of {summary.rows:,}", ["method", *(f.name for f in formats)], count_rows, caption)
    headers = ["format", "method", *(f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}" if hi < BITS_BINS else f">={lo}"
                                     for lo, hi in BIT_GROUPS), "inf", "NaN"]
    hist_rows = []
    for fmt in formats:
        for method in methods:
            b = summary.cells[fmt.name, method].bits
            hist_rows.append([Cell(fmt.name), Cell(method), *(Cell(_fmt_count(int(b[lo:hi].sum()))) for lo, hi in
                                                               BIT_GROUPS),
                              Cell(_fmt_count(int(b[BITS_BINS]))), Cell(_fmt_count(int(b[BITS_BINS + 1])))])
    hist = Table("error bits per row: log2(ulps + 1), 0 = exact, 1 = one ulp (rows per bin)", headers, hist_rows,
                 labels=(0, 1))
    tables = [counts, hist]
    if summary.blocks:
        tables.append(_block_table(summary))
    for title, attr, limit in (("worst rows (largest error)", "worst", worst),
                               ("failing rows (first ones, in row order)", "failing", failing)):
        rows, total_hidden = [], 0
        for fmt in formats:
            for method in methods:
                kept = getattr(summary.cells[fmt.name, method], attr)
                shown = kept if limit is None else kept[:limit]
                total_hidden += len(kept) - len(shown)
                for r, exact in zip(shown, _exact_texts(shown)):
                    status = STATUSES[int(r["status"])]
                    rows.append([Cell(fmt.name), Cell(method), Cell(str(int(r["row"]))), Cell(str(int(r["label"]))),
                                 Cell(value_text(float(r["value"]), fmt), status, tagged=True), Cell(exact),
                                 Cell(f"{float(r['rel_error']):.3g}"), Cell(f"{float(r['error_bits']):.2f}")])
        if rows:
            caption = f"{total_hidden:,} more kept in --format json" if total_hidden else ""
            tables.append(Table(f"softmax_ce: {title}", ["format", "method", "row", "label", "value", "exact",
                                                         "rel error", "error bits"], rows, caption, labels=(0, 1)))
    paragraphs = [f"{summary.rows:,} rows of {summary.classes:,} classes, read and evaluated in chunks: the "
                  "summary below, every row with --rows all (JSON Lines)."]
    bounds = "; ".join(f"{f}: {_bound_text(summary.reference_error[f.name])}" for f in formats)
    bullets = [*summary.notes, *block_sentences(summary),
               f"exact losses come from a vectorized reference with relative error at most {bounds} (a bound); "
               "rows whose status that bound could change are re-computed with mpmath"]
    return Section(heading="softmax_ce: your logits", paragraphs=paragraphs, tables=tables, bullets=bullets)


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.3g} %" if whole else "0 %"


def _spread_text(fmt, tensor_amax: float | None) -> str:
    """The first failing spread amax / |x| of the format (:func:`blockscale.first_failing_spread`): MX over
    amax's significand in [1, 2) (a range); NVFP4 for the block holding the tensor's amax."""
    block = block_of(fmt)
    if block.tensor_scale:
        top = tensor_amax or 1.0
        return f"{float(blockscale.first_failing_spread(block, top, top)):.4g} (the block holding the file's amax)"
    lo, hi = blockscale.first_failing_spread(block, [1.0, np.nextafter(2.0, 0.0)])
    return f"{float(lo):.4g} to {float(hi):.4g} (by the significand of the block's amax)"


def _block_table(summary: Summary) -> Table:
    rows = []
    for fmt in summary.formats:
        t = summary.blocks.get(fmt.name)
        if t is None:
            continue
        nz = t.count("nonzero")
        failing = max((summary.cells[fmt.name, m].failures for m in summary.methods), default=0)
        rows.append([Cell(fmt.name), Cell(_fmt_count(nz)),
                     Cell(f"{_fmt_count(t.count('flushed'))} ({_pct(t.count('flushed'), nz)})"),
                     Cell(_fmt_count(t.count("saturated"))), Cell(_fmt_count(t.count("scale_saturated"))),
                     Cell(_spread_text(fmt, summary.tensor_amax)),
                     Cell(f"{_fmt_count(t.changed)} (max {t.max_change:.3g})"), Cell(_fmt_count(failing))])
    return Table("block-scaled storage: logits flushed to zero by their block's scale, saturated; the loss error "
                 "from the quantization alone vs from the arithmetic",
                 ["format", "non-zero logits", "flushed to 0", "saturated elements", "saturated block scales",
                  "first failing spread", "rows: quantization alone changes the loss > tol",
                  "rows: arithmetic fails (worst method)"], rows,
                 "quantization alone: exact loss of the quantized logits vs of your logits (vectorized references, "
                 "within their bounds); arithmetic: the statuses above, which judge each computed loss against the "
                 "exact loss of the quantized logits", labels=(0,))


def block_sentences(summary: Summary) -> list[str]:
    """One finding per block-scaled format: flushed logits (count and fraction), saturations, and the
    quantization-vs-arithmetic split of the loss error."""
    out = []
    if summary.tensor_amax is not None:
        s_t = blockscale.nvfp4_tensor_scale(summary.tensor_amax)[0]
        out.append(f"NVFP4's per-tensor scale: the tensor is the whole file, amax {summary.tensor_amax:.9g} (its "
                   f"largest finite |logit|, found in a first pass), s_t = {s_t:.9g}")
    for fmt in summary.formats:
        t = summary.blocks.get(fmt.name)
        if t is None:
            continue
        nz = t.count("nonzero")
        failing = {m: summary.cells[fmt.name, m].failures for m in summary.methods}
        worst = max(failing, key=failing.get) if failing else ""
        out.append(f"{fmt.name}: {_fmt_count(t.count('flushed'))} of {_fmt_count(nz)} non-zero logits "
                   f"({_pct(t.count('flushed'), nz)}) flushed to zero by their block's scale; "
                   f"{_fmt_count(t.count('saturated'))} saturated to the element's largest value, "
                   f"{_fmt_count(t.count('scale_saturated'))} block scale(s) saturated; the quantization alone "
                   f"changes the exact loss by more than the tolerance in {_fmt_count(t.changed)} of "
                   f"{_fmt_count(summary.rows)} rows (largest relative change {t.max_change:.3g}); the arithmetic "
                   "then fails (inaccurate or worse) in " + (
                       f"{_fmt_count(failing[worst])} rows ({worst}, the most)" if failing.get(worst) else
                       "no row (any method)"))
    return out


def _block_records(summary: Summary) -> dict:
    out = {}
    for fmt in summary.formats:
        t = summary.blocks.get(fmt.name)
        if t is None:
            continue
        block = block_of(fmt)
        nz = t.count("nonzero")
        out[fmt.name] = {"block_format": block.name, "logits_nonzero": nz, "flushed": t.count("flushed"),
                         "flushed_fraction": number(t.count("flushed") / nz if nz else 0.0),
                         "saturated": t.count("saturated"), "scale_saturated_blocks": t.count("scale_saturated"),
                         "quantization_changed_rows": t.changed, "quantization_max_change": number(t.max_change),
                         "arithmetic_failing_rows": {m: summary.cells[fmt.name, m].failures for m in summary.methods},
                         "tensor_amax": number(summary.tensor_amax) if block.tensor_scale else None}
    return out


def _row_records(rows: np.ndarray) -> list[dict]:
    texts = _exact_texts(rows)
    return [{"row": int(r["row"]), "label": int(r["label"]), "value": number(float(r["value"])), "exact": t,
             "status": STATUSES[int(r["status"])], "rel_error": number(float(r["rel_error"])),
             "ulps": number(float(r["ulps"])), "error_bits": number(float(r["error_bits"]))}
            for r, t in zip(rows, texts)]


def bulk_document(summary: Summary, source_text: str) -> dict:
    cells = []
    for fmt in summary.formats:
        for method in summary.methods:
            c = summary.cells[fmt.name, method]
            cells.append({
                "dtype": fmt.name, "method": method, "rows": summary.rows,
                "counts": {s: int(n) for s, n in zip(STATUSES, c.counts.tolist())
                           if s not in ("inf", "error") or method in summary.black_box},
                "error_bits_histogram": {"bins": [[b, b + 1] for b in range(BITS_BINS - 1)] + [[BITS_BINS - 1, None]],
                                         "rows": c.bits[:BITS_BINS].tolist(), "inf": int(c.bits[BITS_BINS]),
                                         "nan": int(c.bits[BITS_BINS + 1])},
                "worst": _row_records(c.worst),
                "failing": _row_records(c.failing),
                "failing_total": c.failures,
                "failing_kept": len(c.failing),
            })
    return {"source": source_text, "rows": summary.rows, "classes": summary.classes,
            "reference_error_bound": {f.name: summary.reference_error[f.name] for f in summary.formats},
            "kept": {"worst": summary.worst_kept, "failing": summary.cap},
            "cells": cells, "notes": list(summary.notes),
            **({"block_storage": _block_records(summary)} if summary.blocks else {})}


def _texts(values: np.ndarray) -> list[str]:
    """JSON texts of float64 values, by the C encoder (non-finite as strings)."""
    text = json.dumps(values.tolist(), allow_nan=True)[1:-1]
    parts = text.split(", ") if text else []
    return [p if p[0] in "-0123456789" and p not in ("-Infinity",) else
            {"NaN": '"nan"', "Infinity": '"inf"', "-Infinity": '"-inf"'}[p] for p in parts]


def jsonl_lines(columns: dict[tuple[str, str], np.ndarray]) -> str:
    """JSON Lines, one per row and (format, method), from a chunk's columns: row by row, and
    within a row in the order of ``columns`` (every column holds the chunk's kept rows)."""
    per_column = []
    for (dtype, method), rows in columns.items():
        if not len(rows):
            continue
        head = f'{{"dtype": "{dtype}", "method": "{method}", "row": '
        exact = _exact_texts(rows)
        status = np.array(STATUSES)[rows["status"]].tolist()
        fields = zip(rows["row"].tolist(), rows["label"].tolist(), _texts(rows["value"]), exact, status,
                     _texts(rows["rel_error"]), _texts(rows["ulps"]), _texts(rows["error_bits"]))
        per_column.append([f'{head}{r}, "label": {y}, "value": {v}, "exact": "{e}", "status": "{s}", '
                           f'"rel_error": {re}, "ulps": {u}, "error_bits": {b}}}\n'
                           for r, y, v, e, s, re, u, b in fields])
    if len({len(lines) for lines in per_column}) > 1:
        raise ValueError("the columns of a chunk hold different rows")
    return "".join(line for row in zip(*per_column) for line in row)

