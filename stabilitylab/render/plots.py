"""Figures for the report (matplotlib, Agg backend), returned as PNG bytes.

Each figure function takes ``render`` (default :func:`png`); tests pass
``lambda fig: fig`` to inspect the figure's layout instead of its pixels.
PNG metadata is stripped (no 'Software' key, no timestamps), so two runs on the
same machine give identical files.

Every figure is :data:`WIDTH` inches wide at :data:`DPI` (800 px: GitHub shows it at about its own
size, so a point of text is about 1.4 px) with text of at least :data:`SMALLEST_FONT` points; an
error axis is per format, in bits lost out of the format's precision p (0..p: 11 for float16, 53 for
float64), never one axis shared by formats of different precision.
"""

from __future__ import annotations

import io
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from ..numerics.policies import format_or_policy  # noqa: E402

__all__ = ["png", "likelihood_figure", "family_figure", "magnitude_figure", "training_figure", "FAILED", "DPI",
           "WIDTH", "SMALLEST_FONT", "bits_lost", "large_vocabulary_figure"]

FAILED = "failed (inf / NaN)"
DPI = 100
WIDTH = 8.0  # inches: 800 px
SMALLEST_FONT = 8.5  # points
FONTS = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9.5,
         "ytick.labelsize": 9.5, "legend.fontsize": 9.5, "figure.titlesize": 11.5}
plt.rcParams.update(FONTS)
COLORS = {"float16": "#1f77b4", "bfloat16": "#ff7f0e", "float32": "#2ca02c", "float64": "#d62728",
          "float8_e4m3fn": "#9467bd", "float8_e5m2": "#8c564b"}
STYLES = ["-", "--", "-.", ":"]


LAID_OUT = "_stabilitylab_laid_out"  # set on a figure by :func:`_legend_below`: its layout is final


def png(fig, software: str | None = None) -> bytes:
    """PNG bytes of ``fig`` (closed); ``software``: the constant ``Software`` text chunk (a marker), else none.

    A figure laid out by :func:`_legend_below` (every figure of this module) is saved as it is: one draw.
    Any other is cropped to its tight bounding box (which costs a second full draw)."""
    buf = io.BytesIO()
    _renderer(fig)  # (the renderer savefig draws with, if the figure keeps its size: the shared mathtext parser)
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": software},
                bbox_inches=None if getattr(fig, LAID_OUT, False) else "tight")
    plt.close(fig)
    return buf.getvalue()


_MATHTEXT: list = []  # [the process's mathtext parser], set by the first figure's renderer (see _renderer)


def _renderer(fig):
    """The Agg renderer of ``fig`` at its present size (``canvas.get_renderer()``, which makes a new one
    whenever the size changes), parsing mathtext with one parser for the whole process.

    Each renderer comes with its own parser, and matplotlib's cache of parsed mathtext (50 entries) is keyed
    by the parser: every figure, and each size a figure is laid out at, parsed every tick label of a log or
    symlog axis (``$10^{2}$``) again, ~7 ms each.  A parse is a function of the text, dpi, font and
    antialiasing only (the key's other fields), so one parser gives the same boxes and glyphs: the same
    pixels, without the repeated parses."""
    renderer = fig.canvas.get_renderer()
    if hasattr(renderer, "mathtext_parser"):
        if not _MATHTEXT:
            _MATHTEXT.append(renderer.mathtext_parser)
        renderer.mathtext_parser = _MATHTEXT[0]
        _share_text_metrics(renderer)
    return renderer


_METRICS: list = []  # [a 1 x 1 Agg renderer at DPI, its text-metrics function] (see _share_text_metrics)


def _share_text_metrics(renderer) -> None:
    """Give the Agg ``renderer`` the process's one text-metrics cache (at :data:`DPI`).

    matplotlib caches each text's (width, height, descent) per renderer (``text._get_text_metrics_function``:
    a weak dictionary of renderers, each with an lru_cache keyed by the text, font properties, math flag and
    dpi), and a figure gets a new renderer whenever its size changes: every figure measured its tick labels,
    titles and legend entries again, twice (laid out at one size, drawn at another).  An Agg renderer's
    metrics are a function of that key and of its mathtext parser only (``RendererAgg.
    get_text_width_height_descent``: FreeType's layout of the text in the font at the dpi; the parser is the
    shared one, :func:`_renderer`), never of the canvas size: a 1 x 1 renderer at the same dpi, kept for the
    process, answers for all of them -- the same boxes, the same pixels.  A renderer at another dpi, or a
    matplotlib without that cache, keeps its own."""
    from matplotlib import text as mtext
    from matplotlib.backends.backend_agg import RendererAgg

    function = getattr(mtext, "_get_text_metrics_function", None)
    defaults = getattr(function, "__defaults__", None)
    cache = defaults[0] if defaults else None
    if not hasattr(cache, "__setitem__") or type(renderer) is not RendererAgg or renderer.dpi != DPI:
        return
    if not _METRICS:
        measuring = RendererAgg(1, 1, DPI)
        measuring.mathtext_parser = _MATHTEXT[0]
        _METRICS.extend((measuring, function(measuring)))  # (the renderer kept alive: the function calls it)
    cache[renderer] = _METRICS[1]


def bits_lost(bits: np.ndarray, dtype: str) -> np.ndarray:
    """Error bits (log2(ulps + 1)) as bits lost out of the format's precision p: at most p (every
    significand bit wrong)."""
    return np.minimum(bits, format_or_policy(dtype).precision)


def likelihood_figure(curves: dict, exact: np.ndarray, n: np.ndarray, failures: dict, render=png):
    """NLL vs n (top) and its error in bits (bottom), per format and method.

    ``curves[(method, dtype)] = (values, error_bits)``; ``failures[(method, dtype)]``
    is the first n whose NLL is not finite: marked with an x on the exact curve and
    stated in that curve's legend entry (labels beside the marks overlapped where
    failures are close, as float32's n = 46 and bfloat16's n = 41).
    """
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(WIDTH, 8), sharex=True)
    top.loglog(n, exact, color="black", lw=3, alpha=0.25, label="exact -n ln p")
    methods = sorted({m for m, _ in curves})
    for (method, dtype), (values, bits) in curves.items():
        style = STYLES[methods.index(method) % len(STYLES)]
        finite = np.isfinite(values)
        first = failures.get((method, dtype))
        fails = first is not None and first <= n[-1]
        label = f"{method}, {dtype}" + (f": inf at n = {first}" if fails else "")
        top.loglog(n[finite], values[finite], style, color=COLORS.get(dtype), label=label)
        bottom.semilogx(n[finite], 100 * bits_lost(bits[finite], dtype) / format_or_policy(dtype).precision, style,
                        color=COLORS.get(dtype))
        if fails:
            top.plot([first], [float(np.interp(first, n, exact))], "x", color=COLORS.get(dtype), ms=10, mew=2.5)
    top.set_ylabel("NLL (loss)")
    top.set_title("Negative log-likelihood of n samples of p = 0.1: product vs sum of logs")
    bottom.set_ylabel("bits lost, % of the format's p")
    bottom.set_xlabel("n (samples)")
    bottom.set_ylim(-2, 102)
    bottom.set_yticks([0, 25, 50, 75, 100])
    for ax in (top, bottom):
        ax.grid(True, which="major", alpha=0.3)
    _legend_below(fig, *top.get_legend_handles_labels(), columns=2)
    return render(fig)


def _wrapped(title: str) -> str:
    """A title in lines that fit the figure's width."""
    return "\n".join(textwrap.wrap(title, 95))


LEGEND_GAP = 0.12  # inches: above and below the legend, and between a title and the figure's side (half of it
# between the suptitle and the panels below it)


def _legend_below(fig, handles, labels, columns: int) -> None:
    """Lay the figure out, with one legend for the whole figure under the panels: it can never cover a curve.

    ``tight_layout`` places the panels and the suptitle in the figure as it is (height H inches, one
    layout pass: with ``rect`` it would make two); the figure then grows at the bottom by a band of the
    legend's height h (the legend alone laid out, inches) plus 2 * LEGEND_GAP, the panels keeping their
    size and place from the top (a subplot parameter y becomes (y H + band) / (H + band); the spaces
    between panels are fractions of a panel's size, unchanged), and the legend sits in the band, its
    top LEGEND_GAP below the band's top; the panels' top comes down where they would reach the suptitle
    (:func:`_below_suptitle`).  :func:`png` saves the figure as it is: no tight bounding box, which drew the
    whole figure once more."""
    _renderer(fig)  # (what tight_layout measures with)
    fig.tight_layout()
    _titles_inside(fig)
    legend = fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), columns), frameon=False)
    width, height = fig.get_size_inches()
    band = legend.get_window_extent(_renderer(fig)).height / fig.dpi + 2 * LEGEND_GAP
    total = height + band
    fig.set_size_inches(width, total)
    params = fig.subplotpars
    fig.subplots_adjust(bottom=(params.bottom * height + band) / total, top=(params.top * height + band) / total)
    legend.set_bbox_to_anchor((0.5, (band - LEGEND_GAP) / total), transform=fig.transFigure)
    _below_suptitle(fig)
    # tight_layout leaves a placeholder layout engine, for which savefig draws the figure once more (without
    # rendering) before its draw: the layout is final, so no engine
    fig.set_layout_engine(None)
    setattr(fig, LAID_OUT, True)


def _below_suptitle(fig) -> None:
    """Lower the panels' top until every axes (its title, tick labels) is LEGEND_GAP / 2 below the suptitle.

    ``tight_layout`` leaves the suptitle at its own y, 0.98 of the figure's height, and on a tall figure
    (``report -d all -d bf16@fp32 ...``: 5 rows of panels, 17 inches) the room it leaves above the first
    row is less than that 2% of the height: the suptitle crossed the first row's titles (found by review5;
    so since before issue #22's work).  The first row's top moves with the subplots' top, its title with
    it: one adjustment; figures whose panels are clear of the suptitle are left as they are.

    Only the first row is measured (the axes whose box reaches highest: ``get_position``, no layout): the
    rows below it sit under its panels, and each axes measured lays out all its ticks again (a third of a
    9-panel figure's time went to measuring all nine)."""
    title = fig._suptitle
    if title is None or not title.get_text() or not fig.axes:
        return
    renderer = _renderer(fig)
    bottom = title.get_window_extent(renderer).y0
    highest = max(ax.get_position().y1 for ax in fig.axes)
    top = max(ax.get_tightbbox(renderer).y1 for ax in fig.axes if ax.get_position().y1 >= highest - 1e-9)
    over = top - (bottom - LEGEND_GAP / 2 * fig.dpi)
    if over > 0:
        fig.subplots_adjust(top=fig.subplotpars.top - over / fig.bbox.height)


def _titles_inside(fig, rounds: int = 4) -> None:
    """Narrow the panels until every axes title is inside the figure, LEGEND_GAP from its sides.

    ``tight_layout`` counts a title only vertically: a title wider than its panel (the training figure's
    "grad terms underflowed (%)") may cross the figure's edge, which the tight bounding box used to
    rescue by widening the image.  Each round moves the subplots' left / right edges in by the overhang
    (the titles' text is laid out already: measuring them again is cheap); a centred title moves by
    less than its panel's edge, hence a few rounds."""
    renderer = _renderer(fig)
    titled = [ax for ax in fig.axes if ax.title.get_text()]
    pad = LEGEND_GAP * fig.dpi
    for _ in range(rounds):
        boxes = [ax.title.get_window_extent(renderer) for ax in titled]
        if not boxes:
            return
        left = max(0.0, pad - min(b.x0 for b in boxes))
        right = max(0.0, max(b.x1 for b in boxes) - (fig.bbox.width - pad))
        if left < 0.5 and right < 0.5:  # (pixels)
            return
        params = fig.subplotpars
        fig.subplots_adjust(left=params.left + left / fig.bbox.width, right=params.right - right / fig.bbox.width)


PANEL_COLUMNS = 2  # two panels across: readable at the 800 px a figure is drawn in


def _panel_grid(formats: list[str], sharey: bool):
    """One panel per format, two per row (the last row may hold one: its spare axes are removed)."""
    rows = -(-len(formats) // PANEL_COLUMNS)
    columns = min(PANEL_COLUMNS, len(formats))
    fig, axes = plt.subplots(rows, columns, figsize=(WIDTH, 3.2 * rows + 0.6), sharey=sharey,
                             squeeze=False)
    flat = list(axes.flat)
    for ax in flat[len(formats):]:
        ax.remove()
    return fig, flat[:len(formats)]


def _finish_panels(fig, axes, formats, title: str, parameter: str, ylabel: str, integer: bool,
                   d: np.ndarray, render):
    """Axes, titles, and one legend for the figure, below the panels (never over a curve)."""
    for k, (ax, dtype) in enumerate(zip(axes, formats)):
        if integer:
            ax.set_xscale("log")
        else:
            ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(d[0], d[-1])
        ax.set_title(dtype)
        ax.set_xlabel(parameter)
        ax.grid(True, alpha=0.3)
        if k % PANEL_COLUMNS == 0:
            ax.set_ylabel(ylabel)
    fig.suptitle(_wrapped(title))
    _legend_below(fig, *axes[0].get_legend_handles_labels(), columns=4)
    return render(fig)


def family_figure(title: str, panels: dict, d: np.ndarray, failures: dict, parameter: str = "d",
                  integer: bool = False, render=png):
    """Bits lost vs the family's parameter, one panel per format, one line per method.

    ``panels[dtype][method] = (error_bits, finite)``.  Each panel's axis is its own format's
    precision: 0 (correctly rounded) to p (every bit lost, :func:`bits_lost`); non-finite results are
    drawn on a 'failed' band above p; ``failures[(method, dtype)]`` is marked with a dotted vertical
    line.
    """
    formats = list(panels)
    fig, axes = _panel_grid(formats, sharey=False)
    for ax, dtype in zip(axes, formats):
        p = format_or_policy(dtype).precision
        band = max(2.0, 0.16 * p)  # the failed band above p
        for i, (method, (bits, finite)) in enumerate(panels[dtype].items()):
            color = f"C{i}"
            y = np.where(finite, bits_lost(bits, dtype), p + 0.6 * band)
            ax.plot(d, y, STYLES[i % len(STYLES)], color=color, lw=1.6, label=method)
            first = failures.get((method, dtype))
            if first is not None:
                ax.axvline(first, color=color, ls=":", lw=1)
        ax.axhspan(p + 0.2 * band, p + band, color="0.9")
        ax.text(max(d[0], 0.1), p + 0.6 * band, FAILED, fontsize=SMALLEST_FONT, va="center")
        ax.set_ylim(-0.04 * p, p + band)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        ax.set_yticks([t for t in ax.get_yticks() if 0 <= t < p - 0.1 * p] + [p])
    return _finish_panels(fig, axes, formats, title, parameter, "bits lost (of p)", integer, d, render)


def magnitude_figure(title: str, panels: dict, d: np.ndarray, parameter: str = "d", render=png):
    """|value| vs the parameter, in decades (log10), one panel per format, one line per method.

    Each panel's y axis spans what its format can hold, from its smallest
    subnormal to the largest value drawn (not float64's 1e-308 for every format);
    values that became exactly 0 are drawn on a 'vanished' band two decades below.
    The axis is log10|value| drawn linearly, because float64's smallest subnormal
    (4.9e-324) leaves no float below it to draw that band on a log axis.
    ``panels[dtype][method] = values``.
    """
    formats = list(panels)
    fig, axes = _panel_grid(formats, sharey=False)
    for ax, dtype in zip(axes, formats):
        low = float(np.log10(format_or_policy(dtype).smallest_subnormal))
        zero = np.floor(low) - 2  # where 0 is drawn
        high = low
        count = len(panels[dtype])
        for i, (method, values) in enumerate(panels[dtype].items()):
            magnitude = np.abs(np.asarray(values, dtype=np.float64))
            with np.errstate(divide="ignore"):
                decades = np.log10(magnitude)
            decades = np.where(magnitude == 0, zero, np.where(np.isfinite(magnitude), decades, np.nan))
            if np.isfinite(decades).any():
                high = max(high, float(np.nanmax(decades)))
            # widest first, so curves that coincide stay visible as stacked bands of colour
            ax.plot(d, decades, STYLES[i % len(STYLES)], color=f"C{i}", lw=1.4 + 1.3 * (count - 1 - i),
                    label=method)
        ax.axhspan(zero - 1, zero + 1, color="0.9")
        ax.text(max(d[0], 0.1), zero, "0 (vanished)", fontsize=SMALLEST_FONT, va="center")
        ax.set_ylim(zero - 1, np.ceil(high) + 1)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"$10^{{{int(round(y))}}}$"))
    return _finish_panels(fig, axes, formats, title, parameter, "|value| computed in the format", False, d,
                          render)


def training_figure(title: str, runs: dict, formats: list[str], render=png):
    """Per format a row of three panels: loss (log scale) per step, accuracy after each epoch, and the
    fraction of per-sample gradient terms lost to underflow in the backward pass; one line per method.
    ``runs[(method, dtype)]`` is a :class:`stabilitylab.training.train.Run`.  The first step with a
    non-finite loss is marked with an x on the last finite value before it, and a dotted vertical
    line in all three panels."""
    methods = list(dict.fromkeys(m for m, _ in runs))
    fig, axes = plt.subplots(len(formats), 3, figsize=(WIDTH, 2.3 * len(formats) + 0.8), sharex=True,
                             squeeze=False)
    for k, dtype in enumerate(formats):
        top, bottom, lost = axes[k]
        notes = []
        for i, method in enumerate(methods):
            r = runs.get((method, dtype))
            if r is None:
                continue
            color, style = f"C{i}", STYLES[i % len(STYLES)]
            steps = np.arange(1, len(r.loss) + 1)
            loss = np.where(np.isfinite(r.loss) & (r.loss > 0), r.loss, np.nan)
            first = r.first_nonfinite_step
            top.plot(steps, loss, style, color=color, lw=1.4, label=method)
            epochs = np.arange(1, len(r.accuracy) + 1) * r.steps_per_epoch
            bottom.plot(epochs, 100 * r.accuracy, style, color=color, lw=1.4, marker=".", ms=3)
            lost.plot(steps, 100 * r.grad_underflow, style, color=color, lw=1.4)
            if first is not None:
                before = loss[:first - 1]
                if np.isfinite(before).any():
                    last = int(np.flatnonzero(np.isfinite(before))[-1])
                    top.plot([last + 1], [before[last]], "x", color=color, ms=11, mew=2.5)
                notes.append((f"{method}: inf/NaN at step {first}", color))
                for ax in (top, bottom, lost):
                    ax.axvline(first, color=color, ls=":", lw=1.2)
        for j, (note, color) in enumerate(notes):
            top.annotate(note, xy=(0.02, 0.04 + 0.13 * j), xycoords="axes fraction", fontsize=SMALLEST_FONT,
                         color=color)
        top.set_yscale("log")
        top.set_ylabel(dtype, fontsize=11, fontweight="bold")
        bottom.set_ylim(-3, 103)
        highest = max((100 * float(r.grad_underflow.max()) for (m, d), r in runs.items() if d == dtype), default=0)
        lost.set_ylim(-1, max(5.0, highest * 1.1))
        for ax in (top, bottom, lost):
            ax.grid(True, alpha=0.3)
        if k == 0:
            top.set_title("mini-batch loss (log)")
            bottom.set_title("accuracy per epoch (%)")
            lost.set_title("grad terms underflowed (%)")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.suptitle(_wrapped(title))
    handles, labels = [], []
    for ax in axes[:, 0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    _legend_below(fig, handles, labels, columns=2)
    return render(fig)


def large_vocabulary_figure(curves: list, render=png):
    """Two panels: error vs the number of token chunks (left) and vs 1 - p_y (right), one color per
    policy, one line style per method.

    ``curves``: objects with ``panel`` ("chunks" or "p_y"), ``policy``, ``method``, ``x``, ``value``,
    ``error_bits`` and ``precision`` (:class:`stabilitylab.report.large_vocab.Curve`).  The error axis is
    bits lost as a percentage of each policy's output precision p (policies of different p share it);
    non-finite values are not drawn.
    """
    fig, axes = plt.subplots(1, 2, figsize=(WIDTH, 4.2), sharey=True)
    policies = list(dict.fromkeys(c.policy for c in curves))
    for ax, panel in zip(axes, ("chunks", "p_y")):
        mine = [c for c in curves if c.panel == panel]
        methods = list(dict.fromkeys(c.method for c in mine))
        for c in mine:
            finite = np.isfinite(c.value)
            lost = 100 * np.minimum(c.error_bits, c.precision) / c.precision
            k = policies.index(c.policy)  # earlier policies drawn wider: curves that coincide stay visible
            ax.plot(c.x[finite], lost[finite], STYLES[methods.index(c.method) % len(STYLES)],
                    lw=1.2 + 0.9 * (len(policies) - 1 - k), color=f"C{k}", alpha=0.85,
                    marker="o" if panel == "chunks" else None, ms=3)
        ax.set_xscale("log", base=2 if panel == "chunks" else 10)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(-2, 102)
        ax.set_yticks([0, 25, 50, 75, 100])
    axes[0].set_xlabel("token chunks k (dL/dW[7, 0], 1024 tokens)")
    axes[0].set_ylabel("bits lost, % of the output format's p")
    axes[1].set_xlabel("1 - p_y (confident family, inputs as stored)")
    axes[1].invert_xaxis()  # p_y -> 1 to the right
    axes[0].set_title("weight gradient vs chunks")
    axes[1].set_title("loss and p_y - 1 vs p_y")
    fig.suptitle(_wrapped("linear_ce: bits lost per precision policy"))
    # one legend below (never over a curve): a color per policy, a line style per method
    from matplotlib.lines import Line2D

    methods = list(dict.fromkeys(c.method for c in curves))
    handles = [Line2D([], [], color=f"C{i}", lw=1.2 + 0.9 * (len(policies) - 1 - i)) for i in range(len(policies))]
    handles += [Line2D([], [], color="0.3", ls=STYLES[m % len(STYLES)], lw=1.6) for m in
                (list(dict.fromkeys(c.method for c in curves if c.panel == panel)).index(name)
                 for name in methods for panel in ("chunks", "p_y")
                 if name in {c.method for c in curves if c.panel == panel})]
    _legend_below(fig, handles, [*policies, *methods], columns=3)
    return render(fig)
