"""The trace figure: a modules x ops heat map of the worst error bits, one panel per format.

Input: the dict of ``TraceResult.to_json()`` (schema ``stabilitylab.trace/1``); its ``"modules"`` records
``{"module", "op", "format", "worst_error_bits", "counts"}`` give one cell each: row = module, column = aten op,
colour = worst error bits of that op in that module (forward and backward pooled), as bits lost out of the
format's precision p (``render.plots.bits_lost``: 0 = exact .. p = no correct bit; each panel has its own
0..p colour scale, never one scale shared by formats of different precision).  A cell whose value is not a
number (``"inf"`` / ``"nan"`` in the JSON: an op that returned inf or NaN where the reference is finite)
is drawn at p and marked with a cross.  Cells with no record stay blank (grey).  Rows and columns keep the
order in which modules and ops first appear in the records; formats the order of ``"formats"``.

matplotlib with the Agg backend; PNG without a timestamp (``render.plots.png``) and with one constant text chunk,
``Software`` = ``stabilitylab`` (the marker that lets a later run replace it, :mod:`stabilitylab.io.markers`),
so two runs on the same machine give identical bytes.
"""

from __future__ import annotations

import math

import numpy as np

from ..render.plots import DPI, WIDTH, bits_lost, png

__all__ = ["heatmap", "grids"]


def _bits(value) -> float:
    """worst_error_bits as a float: numbers as they are, "inf" / "nan" (and None) as NaN."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return math.nan


def _precision(fmt: str, fallback: float) -> float:
    from ..numerics.policies import format_or_policy

    try:
        return float(format_or_policy(fmt).precision)
    except (KeyError, ValueError):
        return fallback


def grids(doc: dict) -> tuple[list[str], list[str], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(modules, ops, values, failed): per format a (modules x ops) float array of worst error bits (NaN: no
    record) and a bool array of the cells whose value was not a number.  Several records of one cell: the
    worst (largest; a non-number counts as the worst)."""
    records = doc.get("modules", [])
    modules = list(dict.fromkeys(r["module"] for r in records))
    ops = list(dict.fromkeys(r["op"] for r in records))
    formats = list(dict.fromkeys([*doc.get("formats", []), *(r["format"] for r in records)]))
    row = {m: i for i, m in enumerate(modules)}
    col = {o: j for j, o in enumerate(ops)}
    values = {f: np.full((len(modules), len(ops)), np.nan) for f in formats}
    failed = {f: np.zeros((len(modules), len(ops)), dtype=bool) for f in formats}
    for r in records:
        i, j, f = row[r["module"]], col[r["op"]], r["format"]
        b = _bits(r.get("worst_error_bits"))
        if math.isnan(b):
            failed[f][i, j] = True
        elif math.isnan(values[f][i, j]) or b > values[f][i, j]:
            values[f][i, j] = b
    return modules, ops, values, failed


def marked_png(fig) -> bytes:
    """PNG bytes with stabilitylab's marker (a constant ``Software`` text chunk): a second run may replace the
    file, a file stabilitylab did not write is refused (:mod:`stabilitylab.io.markers`)."""
    from ..io.markers import PNG_SOFTWARE

    return png(fig, software=PNG_SOFTWARE)


def heatmap(doc: dict, render=marked_png):
    """The figure (see the module docstring), rendered by ``render`` (default: PNG bytes; tests pass
    ``lambda fig: fig``).  ValueError if the document holds no module record."""
    import matplotlib.pyplot as plt

    modules, ops, values, failed = grids(doc)
    if not modules:
        raise ValueError("the trace document has no module records: nothing to draw")
    formats = [f for f in values if (~np.isnan(values[f])).any() or failed[f].any()] or list(values)
    cell = 0.28  # inches per row
    height = max(2.5, 1.2 + cell * len(modules)) * len(formats)
    fig, axes = plt.subplots(len(formats), 1, figsize=(WIDTH, height), dpi=DPI, squeeze=False)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    for ax, fmt in zip(axes[:, 0], formats):
        finite = values[fmt][~np.isnan(values[fmt])]
        p = _precision(fmt, float(finite.max()) if finite.size else 1.0)
        grid = bits_lost(np.where(failed[fmt], p, values[fmt]), fmt) if p else values[fmt]
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=p, aspect="auto",
                          interpolation="nearest")
        ys, xs = np.nonzero(failed[fmt])
        if ys.size:
            ax.scatter(xs, ys, marker="x", color="#d62728", s=40, linewidths=1.5, label="inf / NaN")
            ax.legend(loc="upper right", fontsize=9, framealpha=0.9)
        ax.set_xticks(range(len(ops)))
        ax.set_xticklabels([o.removeprefix("aten.") for o in ops], rotation=60, ha="right")
        ax.set_yticks(range(len(modules)))
        ax.set_yticklabels(modules)
        ax.set_title(f"{fmt}: worst error bits per module and op (0 = exact, {p:g} = no correct bit)")
        bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
        bar.set_label("error bits")
    fig.tight_layout()
    return render(fig)
