"""Figures for the report (matplotlib, Agg backend), returned as PNG bytes.

PNG metadata is stripped (no 'Software' key, no timestamps), so two runs on the
same machine give identical files.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["png", "likelihood_figure", "family_figure", "magnitude_figure", "FAILED"]

FAILED = "failed (inf / NaN)"
COLORS = {"float16": "#1f77b4", "bfloat16": "#ff7f0e", "float32": "#2ca02c", "float64": "#d62728",
          "float8_e4m3fn": "#9467bd", "float8_e5m2": "#8c564b"}
STYLES = ["-", "--", "-.", ":"]


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def likelihood_figure(curves: dict, exact: np.ndarray, n: np.ndarray, failures: dict) -> bytes:
    """NLL vs n (top) and its error in bits (bottom), per format and method.

    ``curves[(method, dtype)] = (values, error_bits)``; ``failures[(method, dtype)]``
    is the first n whose NLL is not finite (marked with an x on the exact curve).
    """
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8.5, 8), sharex=True)
    top.loglog(n, exact, color="black", lw=3, alpha=0.25, label="exact -n ln p")
    methods = sorted({m for m, _ in curves})
    for (method, dtype), (values, bits) in curves.items():
        style = STYLES[methods.index(method) % len(STYLES)]
        finite = np.isfinite(values)
        top.loglog(n[finite], values[finite], style, color=COLORS.get(dtype), label=f"{method}, {dtype}")
        bottom.semilogx(n[finite], np.minimum(bits[finite], 64), style, color=COLORS.get(dtype))
        first = failures.get((method, dtype))
        if first is not None and first <= n[-1]:
            y = float(np.interp(first, n, exact))
            top.plot([first], [y], "x", color=COLORS.get(dtype), ms=10, mew=2.5)
            top.annotate(f"{dtype} {method}: inf at n={first}", (first, y), textcoords="offset points",
                         xytext=(6, -12 - 10 * list(COLORS).index(dtype)), fontsize=7, color=COLORS.get(dtype))
    top.set_ylabel("NLL (loss)")
    top.set_title("Negative log-likelihood of n samples of p = 0.1: product vs sum of logs")
    top.legend(fontsize=7, ncol=2, loc="upper left")
    bottom.set_ylabel("error in bits, log2(ulps + 1)")
    bottom.set_xlabel("n (samples)")
    bottom.set_ylim(bottom=0)
    for ax in (top, bottom):
        ax.grid(True, which="major", alpha=0.3)
    return png(fig)


def _panel_grid(formats: list[str]):
    """One panel per format, side by side, sharing the y axis."""
    return plt.subplots(1, len(formats), figsize=(4.2 * len(formats), 3.6), sharey=True, squeeze=False)


def _finish_panels(fig, axes, formats, title: str, parameter: str, ylabel: str, integer: bool,
                   d: np.ndarray) -> bytes:
    for ax, dtype in zip(axes[0], formats):
        if integer:
            ax.set_xscale("log")
        else:
            ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(d[0], d[-1])
        ax.set_title(dtype, fontsize=10)
        ax.set_xlabel(parameter)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=7, loc="center right")
    fig.suptitle(title, fontsize=11)
    return png(fig)


def family_figure(title: str, panels: dict, d: np.ndarray, failures: dict, parameter: str = "d",
                  integer: bool = False) -> bytes:
    """Error in bits vs the family's parameter, one panel per format, one line per method.

    ``panels[dtype][method] = (error_bits, finite)``; non-finite results are drawn
    on a 'failed' band above the finite ones; ``failures[(method, dtype)]`` is
    marked with a dotted vertical line.
    """
    formats = list(panels)
    fig, axes = _panel_grid(formats)
    top = 72
    for ax, dtype in zip(axes[0], formats):
        for i, (method, (bits, finite)) in enumerate(panels[dtype].items()):
            color = f"C{i}"
            y = np.where(finite, np.minimum(bits, 64), top)
            ax.plot(d, y, STYLES[i % len(STYLES)], color=color, lw=1.6, label=method)
            first = failures.get((method, dtype))
            if first is not None:
                ax.axvline(first, color=color, ls=":", lw=1)
        ax.axhspan(66, 76, color="0.9")
        ax.text(max(d[0], 0.1), 73.5, FAILED, fontsize=7, va="center")
        ax.set_ylim(-1, 76)
    return _finish_panels(fig, axes, formats, title, parameter, "error in bits (capped at 64)", integer, d)


def magnitude_figure(title: str, panels: dict, d: np.ndarray, parameter: str = "d") -> bytes:
    """|value| vs the parameter (log scale), one panel per format, one line per method;
    values that became exactly 0 are drawn on a 'vanished' band at the bottom.

    ``panels[dtype][method] = values``.
    """
    formats = list(panels)
    fig, axes = _panel_grid(formats)
    floor = 1e-300  # stands for 0: below every value the formats here can hold but float64 subnormals
    for ax, dtype in zip(axes[0], formats):
        for i, (method, values) in enumerate(panels[dtype].items()):
            magnitude = np.abs(values)
            y = np.where(magnitude > floor * 1e10, magnitude, np.where(magnitude > 0, floor * 1e10, floor))
            ax.plot(d, np.where(np.isfinite(y), y, np.nan), STYLES[i % len(STYLES)], color=f"C{i}", lw=1.6,
                    label=method)
        ax.axhspan(floor / 1e10, floor * 1e10, color="0.9")
        ax.text(max(d[0], 0.1), floor, "0 (vanished)", fontsize=7, va="center")
        ax.set_yscale("log")
    return _finish_panels(fig, axes, formats, title, parameter, "|value| computed in the format", False, d)
