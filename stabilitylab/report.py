"""The markdown report: tables, figures and sentences, all computed in the run.

``build(...)`` returns ``{relative path: bytes}`` without touching the disk;
``write(folder, files)`` then writes each file atomically.  Nothing is typed
in: every number comes from the engine, the threshold search or finfo.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from . import atomic
from .engine import compare, evaluate
from .environment import fingerprint, package_version
from .experiments import EXPERIMENTS
from .experiments.base import Settings, shortest
from .experiments.likelihood import LIKELIHOOD, iid
from .findings import threshold_findings
from .formats import Format
from .render import plots
from .render.markdown import sections_md, table_md
from .render.model import Cell, Table, compare_sections, formats_table, thresholds_table
from .thresholds import thresholds

__all__ = ["build", "write", "STEPS"]

INDEX = "README.md"
N_GRID = np.unique(np.round(np.logspace(0, 6, 181)).astype(np.int64))
D_GRID = np.unique(np.concatenate([np.linspace(0, 1, 11), np.logspace(0, np.log10(800), 240)]))
INTEGER_FIGURE_UPPER = 2**32
STEPS = 8
TRAIN_FORMATS = ("float16", "bfloat16", "float32")  # drawn; float64 is the reference of every run
REPORT_TARGETS = ("scipy.log_softmax", "scipy.logsumexp", "jax.log_softmax", "torch.cross_entropy")


def _likelihood_figure(formats, settings, rows):
    curves, max_ulps = {}, {}
    exact = N_GRID * -np.log(settings.p)
    for fmt in formats:
        out = evaluate(LIKELIHOOD, fmt, iid(settings.p, N_GRID))
        for method, o in out.items():
            curves[(method, fmt.name)] = (o.value, o.error_bits)
            finite = np.isfinite(o.value)
            max_ulps[(method, fmt.name)] = float(o.ulps[finite].max()) if finite.any() else None
    iid_rows = {(r.method, r.dtype): r for r in rows if r.experiment == "likelihood" and r.family == "iid"}
    failures = {key: r.first_failure for key, r in iid_rows.items()}
    figure = plots.likelihood_figure(curves, exact, N_GRID, failures)
    sentences = []
    for fmt in formats:
        fail = failures.get(("product", fmt.name))
        worst = max_ulps.get(("sum_log", fmt.name))
        sum_row = iid_rows.get(("sum_log", fmt.name))
        sum_fail = None if sum_row is None else sum_row.first_failure
        text = f"In {fmt.name} the product of {shortest(settings.p)} first underflows at n = {fail}" if fail else (
            f"In {fmt.name} the product of {shortest(settings.p)} does not underflow for n <= 2**62")
        if sum_fail is not None and sum_fail <= N_GRID[-1]:
            at = f"n = {sum_fail}" if sum_row.exact_failure else f"n <= {sum_fail}"
            text += (f"; from {at} the loss itself passes the format's max (the sum of logs is inf, correctly)"
                     if sum_row.failure == "range" else
                     f"; the sum of logs overflows at {at}, where the loss still fits the format but the "
                     "rounding of the partial sums carries it past the max")
        elif worst is not None:
            text += f"; the sum of logs stays within {worst:.2g} ulp up to n = 10^6 (at {len(N_GRID)} values of n)"
        sentences.append(text + ".")
    return figure, sentences


def _family_figure(experiment, family, formats, settings, rows):
    if family.integer:
        top = min(family.upper or INTEGER_FIGURE_UPPER, INTEGER_FIGURE_UPPER)
        grid = np.unique(np.round(np.logspace(0, np.log10(top), 161)).astype(np.int64))
    else:
        grid = D_GRID
    panels = {}
    for fmt in formats:
        out = evaluate(experiment, fmt, family.cases(grid, settings), fast_reference=True)  # a figure
        if family.figure == "magnitude":
            panels[fmt.name] = {m: o.value for m, o in out.items()}
        else:
            panels[fmt.name] = {m: (o.error_bits, np.isfinite(o.value)) for m, o in out.items()}
    if family.figure == "magnitude":
        title = f"{experiment.name}/{family.name}: {family.description}: |value| vs {family.parameter}"
        return plots.magnitude_figure(title, panels, grid, family.parameter)
    failures = {(r.method, r.dtype): r.first_failure for r in rows
                if r.experiment == experiment.name and r.family == family.name}
    title = (f"{experiment.name}/{family.name}: {family.description}: "
             f"error in bits vs {family.parameter}")
    return plots.family_figure(title, panels, grid, failures, family.parameter, family.integer)


def build(formats: Sequence[Format], settings: Settings = Settings(),
          progress: Callable[[str], None] = lambda step: None) -> dict[str, bytes]:
    """All files of the report, in memory."""
    experiments = list(EXPERIMENTS.values())
    progress("comparing formulations")
    comparison = compare(experiments, formats)
    progress("searching thresholds")
    rows = thresholds(experiments, formats, settings)
    files: dict[str, bytes] = {}
    progress("drawing the likelihood figure")
    files["figures/likelihood_nll.png"], curve_sentences = _likelihood_figure(formats, settings, rows)
    progress("drawing the family figures")
    family_figures = {}
    for experiment in experiments:
        for family in experiment.families:
            name = f"figures/{experiment.name}_{family.name}.png"
            files[name] = _family_figure(experiment, family, formats, settings, rows)
            family_figures.setdefault(experiment.name, []).append((family, name))
    progress("searching thresholds with flush-to-zero")
    ftz_rows = thresholds(experiments, formats, Settings(p=settings.p, ftz=True))
    progress("training small models")
    training_lines = training_section(files)
    progress("auditing the installed framework kernels")
    audit_lines, audit_figure = _audit_section(formats)
    if audit_figure is not None:
        files[AUDIT_FIGURE] = audit_figure
    progress("writing markdown")
    files[INDEX] = _markdown(comparison, rows, ftz_rows, formats, curve_sentences, family_figures,
                             training_lines, audit_lines).encode("utf-8")
    return files


AUDIT_FIGURE = "figures/audit_softmax_ce_confident.png"


def _audit_section(formats) -> tuple[list[str], bytes | None]:
    """Audit every installed softmax_ce framework kernel of REPORT_TARGETS: resembles, the confident
    family's thresholds, the cases they lose that the log1p form keeps, and a figure of error bits vs d."""
    from dataclasses import replace

    from . import adapters
    from .api import audit
    from .auditing import resolve, target_method
    from .experiments.softmax_ce import SOFTMAX_CE

    installed = [name for name in REPORT_TARGETS if adapters.ADAPTERS[name].installed]
    missing = [name for name in REPORT_TARGETS if name not in installed]
    lines = ["## Auditing the installed framework kernels", "",
             "`stabilitylab audit` runs a real kernel through the same cases (the defaults and inputs from public "
             "bug reports), exact references, status rule and threshold search as the simulated formulas. A black "
             "box shows no IEEE events: its status is read from its value (inf, nan, inaccurate, error), never a "
             "claimed cause. *Resembles* names the simulated formula equal to the kernel bit for bit on the most "
             "points run."]
    if missing:
        lines += ["", f"Not installed here, so not audited: {', '.join(missing)}."]
    if not installed:
        return lines + [""], None
    results = {}
    for name in installed:
        chosen = [f for f in formats if f.name in adapters.ADAPTERS[name].formats]
        if chosen:
            results[name] = audit(name, dtypes=chosen, families=["confident"])
    names = list(results)
    header = ["target", "version", *(f.name for f in formats)]
    res_rows, thr_rows = [], []
    for name in names:
        a = results[name]
        version = ", ".join(f"{k} {v}" for k, v in a.target.environment.items() if k != "device")
        by_dtype = {r.dtype: r for r in a.resembles}
        res_rows.append([Cell(name), Cell(version)] + [
            Cell(f"{by_dtype[f.name].method} {by_dtype[f.name].share:.1%}" if f.name in by_dtype else "—")
            for f in formats])
        by_t = {t.dtype: t for t in a.thresholds}
        cells = []
        for f in formats:
            t = by_t.get(f.name)
            if t is None:
                cells.append(Cell("—"))
                continue
            value = "never" if t.first_inaccurate is None else repr(t.first_inaccurate)
            cells.append(Cell(value if t.exact_inaccurate else f"≤ {value}" if t.first_inaccurate is not None
                              else "none found", "inaccurate" if t.first_inaccurate is not None else "ok"))
        thr_rows.append([Cell(name), Cell(version)] + cells)
    simulated = thresholds([SOFTMAX_CE], formats, Settings(), families={"softmax_ce/confident"})
    for method in ("log_softmax", "log_softmax_log1p"):
        cells = []
        for f in formats:
            t = next(r for r in simulated if r.method == method and r.dtype == f.name)
            value = "never" if t.first_inaccurate is None else repr(t.first_inaccurate)
            cells.append(Cell(value if t.exact_inaccurate else f"≤ {value}"))
        thr_rows.append([Cell(f"(simulated) {method}"), Cell("stabilitylab")] + cells)
    lines += ["", table_md(Table("Resembles: the simulated formula equal to the kernel on the most points",
                                 header, res_rows), 3),
              table_md(Table("confident family ([0, -d], label 0): first d at which the loss is inaccurate "
                             "(≤ x: a bound; black boxes in float32 / float64 are scanned by points)",
                             header, thr_rows), 3)]
    said = []
    for name in names:
        for v in results[name].versus:
            if v.method == "log_softmax_log1p" and v.target_only:
                said.append(f"- {name}, {v.dtype}: {v.target_only} of the audited cases are inaccurate or worse "
                            f"where log_softmax_log1p is ok (first: {', '.join(v.examples[:3])}).")
    lines += said + [""]
    family = SOFTMAX_CE.family("confident")
    log1p = SOFTMAX_CE.method("log_softmax_log1p")
    panels = {}
    for fmt in formats:
        methods = [target_method(resolve(name)) for name in names if fmt.name in adapters.ADAPTERS[name].formats]
        experiment = replace(SOFTMAX_CE, methods=(*methods, log1p))
        out = evaluate(experiment, fmt, family.cases(D_GRID, Settings()), fast_reference=True)
        panels[fmt.name] = {m: (o.error_bits, np.isfinite(o.value)) for m, o in out.items()}
    figure = plots.family_figure("softmax_ce/confident: logits [0, -d], label 0: error in bits vs d, installed "
                                 "kernels beside the log1p form", panels, D_GRID, {}, "d")
    lines += [f"![installed kernels vs log1p form]({AUDIT_FIGURE})", ""]
    return lines, figure


def _ftz_table(rows, ftz_rows) -> Table:
    """The thresholds that flush-to-zero moves: without and with FTZ."""
    before = {r.key: r for r in rows}
    table_rows = []
    for r in ftz_rows:
        b = before.get(r.key)
        if b is None or (b.first_inaccurate, b.first_failure) == (r.first_inaccurate, r.first_failure):
            continue
        table_rows.append([Cell(r.key), Cell(r.parameter),
                           Cell(f"{_text(b.first_inaccurate)} / {_text(b.first_failure)}"),
                           Cell(f"{_text(r.first_inaccurate)} / {_text(r.first_failure)}")])
    return Table("Thresholds that flush-to-zero moves (first inaccurate / first failure)",
                 ["entry", "parameter", "IEEE (gradual underflow)", "flush-to-zero"], table_rows)


def _text(x) -> str:
    return "—" if x is None else repr(x)


def training_section(files: dict[str, bytes]) -> list[str]:
    """The "Training" section: the default scenarios in float16 / bfloat16 / float32 (float64 as the
    reference), a table, the generated sentences and one figure per scenario (added to ``files``)."""
    from . import train
    from .formats import FORMATS
    from .render.model import train_sections

    formats = [FORMATS[name] for name in (*TRAIN_FORMATS, "float64")]
    chosen = {name: train.SCENARIOS[name] for name in train.DEFAULT_SCENARIOS}
    runs = [r for s in chosen.values() for r in train.run_scenario(s, formats)]
    said = train.findings(runs)
    lines = ["## Training", "",
             "`stabilitylab train`: softmax regression (Iris, 3 species) and logistic regression (Iris, two "
             "classes) trained by mini-batch SGD, every operation of the forward and backward pass and of the "
             "update correctly rounded to the format. Each step's loss is classified against the float64 run of "
             "the same scenario and method at the same step (the reference trajectory). In the figures an x "
             "and a dotted line mark the first step whose loss is inf / NaN.", ""]
    for section in train_sections(runs, chosen, said):
        name = section.heading.split(":")[0].split("/")[1]
        path = f"figures/train_{name}.png"
        mine = {(r.method, r.dtype): r for r in runs if r.scenario == name}
        files[path] = plots.training_figure(f"train/{name}: {chosen[name].description}", mine, list(TRAIN_FORMATS))
        lines += [sections_md([section], 3), f"![train/{name}]({path})", ""]
    return lines


def _markdown(comparison, rows, ftz_rows, formats, curve_sentences, family_figures, training_lines=(),
              audit_lines=()) -> str:
    env = fingerprint()
    lines = [
        "# stabilitylab report",
        "",
        f"Generated by `stabilitylab report` (stabilitylab {package_version()}). Every number, table, figure "
        "and sentence below is computed by that run; nothing is typed in. Arithmetic: every operation, exp, "
        "log and log1p included, correctly rounded to the format. Statuses: **ok**; **range** (the value is "
        "the exact loss correctly rounded, but that loss is outside the format's range); **inaccurate** "
        "(relative error above sqrt(u), half the format's bits); **overflow** / **underflow** (the loss is "
        "lost: inf, NaN, or 0 where the exact loss is representable, and that IEEE event came first); "
        "**nan**. Thresholds are exact unless shown as a bound (≤ x).",
        "",
        table_md(Table("Environment", ["item", "value"], [[Cell(k), Cell(v)] for k, v in env.items()]), 2),
        table_md(formats_table(list(formats)), 2),
    ]
    sections = compare_sections(comparison)
    said = threshold_findings(rows)
    for section, experiment in zip(sections, comparison.experiments):
        body = sections_md([section])
        lines.append(body)
        mine = [r for r in rows if r.experiment == experiment.name]
        if mine:
            lines.append(table_md(thresholds_table(mine, list(formats)), 3))
            formulas = dict.fromkeys(f"- `{r.family}/{r.method}`: {r.formula}" for r in mine if r.formula)
            if formulas:
                lines += ["Predictions:", "", *formulas, ""]
            lines += [f"- {text}" for name, text in said if name == experiment.name] + [""]
        if experiment.name == "likelihood":
            lines += ["![NLL and its error vs n](figures/likelihood_nll.png)", "",
                      *[f"- {s}" for s in curve_sentences], ""]
        for family, path in family_figures.get(experiment.name, []):
            lines += [f"![{experiment.name}/{family.name}]({path})", ""]
    lines += ["## Flush-to-zero", "",
              "GPUs and CPUs in flush-to-zero / denormals-are-zero modes replace subnormal inputs and results by 0 "
              "(`--ftz`). Every threshold that moves:", "", table_md(_ftz_table(rows, ftz_rows), 3), *training_lines]
    lines += list(audit_lines)
    return "\n".join(lines).rstrip() + "\n"


def write(folder: str | os.PathLike, files: dict[str, bytes]) -> list[Path]:
    """Write every file below ``folder``: all of them or none (see :func:`atomic.write_tree`)."""
    return atomic.write_tree(folder, files)
