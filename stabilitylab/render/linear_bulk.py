"""Render a :class:`stabilitylab.analysis.linear_bulk.LinearBulk` (``compare -e linear_ce --problem``): tables
for a screen and the ``linear_ce_problem`` part of the JSON document, from the per-row columns."""

from __future__ import annotations

import numpy as np

from ..analysis.linear_bulk import BOUND_FRACTION, HIST_STEPS, KINDS, METHODS, LinearBulk
from ..analysis.outcome import METHOD_FAILURES, STATUSES, worst_status
from .jsonout import number
from .model import COUNT_NAMES, WHITE_BOX_COUNTS, Cell, Section, Table

__all__ = ["linear_section", "linear_document", "MODEL"]

MODEL = ("fused dot product (a model): each logit and each gradient entry is the float64 matmul of the "
         "storage-rounded inputs, rounded once to the policy's compute format; the rest of each method is its "
         "own sequence of rounded operations")
_KIND = {name: kind for name, kind, _ in METHODS}


def _bits(x: float) -> str:
    return "nan" if np.isnan(x) else "inf" if np.isinf(x) else f"{x:.2f}"


def linear_section(result: LinearBulk, witnesses: int | None = 1) -> Section:
    """The counts per method and format (entries per status, flagged references), the worst and median error
    bits, and the worst rows as witnesses (``witnesses`` per method and format; None: all kept)."""
    formats = result.formats
    rows = []
    for name, kind, _ in METHODS:
        cells = [Cell(name), Cell(kind)]
        for fmt in formats:
            c = result.cells[fmt.name, name]
            counts = dict(zip(STATUSES, c.counts.tolist()))
            bad = worst_status(s for s in METHOD_FAILURES if counts[s])
            text = " / ".join(f"{counts[s]:,}" for s in WHITE_BOX_COUNTS) + f" of {c.total:,}"
            cells.append(Cell(text + (f" ({c.flagged:,} bound)" if c.flagged else ""), bad))
        rows.append(cells)
    counts = Table(f"linear_ce on {result.source}: entries {' / '.join(COUNT_NAMES[s] for s in WHITE_BOX_COUNTS)}"
                   " of all entries", ["method", "entries", *(f.name for f in formats)], rows,
                   f"(N bound): N entries whose exact reference's bound is not below {BOUND_FRACTION:g} of half an "
                   "ulp: their status is measured against a value that may be off by that bound", labels=(0,))
    bit_rows = []
    for fmt in formats:
        for name, _, _ in METHODS:
            c = result.cells[fmt.name, name]
            bit_rows.append([Cell(fmt.name), Cell(name), Cell(_bits(c.worst_bits)), Cell(_bits(c.median_bits)),
                             Cell(f"{int(np.count_nonzero(c.row_counts[:, 2:].sum(axis=1))):,} of {c.rows:,} "
                                  f"{KINDS[c.kind]}s")])
    bits = Table("error bits per entry: log2(ulps + 1) against the float64 reference (worst; median, to "
                 f"1/{HIST_STEPS} bit); rows with at least one entry inaccurate or worse",
                 ["format", "method", "worst bits", "median bits", "rows failing"], bit_rows, labels=(0, 1))
    wit_rows = []
    for fmt in formats:
        for name, kind, _ in METHODS:
            c = result.cells[fmt.name, name]
            top = c.witnesses()
            for i in top if witnesses is None else top[:witnesses]:
                wit_rows.append([Cell(fmt.name), Cell(name), Cell(f"{KINDS[kind]} {int(i)}"),
                                 Cell(str(int(c.row_col[i])) if c.columns > 1 else "-"),
                                 Cell(f"{c.row_value[i]:.8g}",
                                      worst_status(s for s, k in zip(STATUSES, c.row_counts[i]) if k), tagged=True),
                                 Cell(f"{c.row_ref[i]:.10g}"), Cell(_bits(float(c.row_bits[i])))])
    wit = Table("witnesses: the rows with the largest error (the row's worst entry; the cell shows the row's worst "
                "status)", ["format", "method", "row", "column", "value", "reference", "error bits"], wit_rows,
                labels=(0, 1))
    bounds = "; ".join(f"{k}: {v:.3g}" for k, v in result.bounds.items())
    paragraphs = [f"{result.tokens:,} tokens, D = {result.hidden_size:,}, V = {result.vocabulary:,}; token chunks "
                  f"K = {result.chunks:,}; online blocks of {result.vocab_chunk:,} columns. Every loss, every "
                  "p_y - 1 and every gradient entry is judged; rows are tokens (loss, p_y - 1, grad_hidden) or "
                  "weight rows (grad_weight)."]
    bullets = [*result.notes, MODEL + " (docs/guides/large-vocabulary.md, \"Real-size problems\")",
               f"references: float64 from the same float64 logits; largest bound (a bound, not a measured error): "
               f"{bounds}"]
    return Section(heading="linear_ce: your problem", paragraphs=paragraphs, tables=[counts, bits, wit],
                   bullets=bullets)


def _witness_records(c, k: int | None = None) -> list[dict]:
    return [{"row": int(i), "column": int(c.row_col[i]), "value": number(c.row_value[i]),
             "reference": number(c.row_ref[i]), "error_bits": number(float(c.row_bits[i])),
             "status": worst_status(s for s, n in zip(STATUSES, c.row_counts[i]) if n)}
            for i in c.witnesses(*(() if k is None else (k,)))]


def linear_document(result: LinearBulk) -> dict:
    cells = []
    for fmt in result.formats:
        for name, kind, formula in METHODS:
            c = result.cells[fmt.name, name]
            failing_rows = c.row_counts[:, [STATUSES.index(s) for s in METHOD_FAILURES]].sum(axis=1) > 0
            cells.append({"dtype": fmt.name, "method": name, "kind": kind, "formula": formula,
                          "rows_are": KINDS[kind], "entries": c.total,
                          "counts": {s: int(n) for s, n in zip(STATUSES, c.counts.tolist())
                                     if s not in ("inf", "error")},
                          "bound_flagged": c.flagged, "worst_error_bits": number(c.worst_bits),
                          "median_error_bits": number(c.median_bits), "rows_failing": int(failing_rows.sum()),
                          "witnesses": _witness_records(c)})
    token_rows = {}
    for fmt in result.formats:
        per = {}
        for name, kind, _ in METHODS:
            if KINDS[kind] != "token":
                continue
            c = result.cells[fmt.name, name]
            if c.columns == 1:
                per[name] = [STATUSES[int(np.argmax(r))] for r in c.row_counts]
            else:
                per[name + " worst_error_bits"] = [number(float(b)) for b in c.row_bits]
                per[name + " counts"] = {s: c.row_counts[:, i].tolist() for i, s in enumerate(STATUSES)
                                         if c.row_counts[:, i].any()}
        token_rows[fmt.name] = per
    return {"source": result.source, "tokens": result.tokens, "hidden_size": result.hidden_size,
            "vocabulary": result.vocabulary, "chunks": result.chunks, "vocab_chunk": result.vocab_chunk,
            "model": MODEL, "reference_bounds": {k: number(v) for k, v in result.bounds.items()},
            "bound_fraction": BOUND_FRACTION, "median_resolution_bits": 1 / HIST_STEPS,
            "cells": cells, "token_rows": token_rows, "notes": list(result.notes)}
