"""The markdown report: tables, figures and sentences, all computed in the run.

``build(...)`` returns ``{relative path: bytes}`` without touching the disk;
``write(folder, files)`` then writes each file atomically.  Nothing is typed
in: every number comes from the engine, the threshold search or finfo.

The report is made of independent tasks (a threshold search per family and format,
a training scenario, an audited framework kernel, a figure's curves), run on forked
processes (:func:`~stabilitylab.analysis.parallel.worker_count`), longest first; a figure is drawn as soon as the
results it shows are in.  The result does not depend on the number of processes.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..analysis.engine import compare, evaluate
from ..analysis.findings import VERB, threshold_findings
from ..analysis.parallel import fork_pool, worker_count
from ..analysis.thresholds import family_thresholds
from ..auditing.core import MATCH_SHARE, WIDE_ROWS
from ..experiments import DEFAULT_EXPERIMENTS, EXPERIMENTS
from ..experiments.base import Settings, shortest
from ..experiments.likelihood import LIKELIHOOD, iid
from ..io import atomic, markers
from ..io.environment import fingerprint, package_version
from ..numerics.formats import Format
from ..numerics.policies import format_or_policy
from ..render import plots
from ..render.markdown import sections_md, table_md
from ..render.model import Cell, Table, compare_sections, formats_table, thresholds_table
from . import large_vocab

__all__ = ["build", "write", "STEPS"]

INDEX = "README.md"
N_GRID = np.unique(np.round(np.logspace(0, 6, 181)).astype(np.int64))
D_GRID = np.unique(np.concatenate([np.linspace(0, 1, 11), np.logspace(0, np.log10(800), 240)]))
INTEGER_FIGURE_UPPER = 2**32
TRAIN_FORMATS = ("float16", "bfloat16", "float32")  # drawn; float64 is the reference of every run
REPORT_TARGETS = ("scipy.log_softmax", "scipy.logsumexp", "jax.log_softmax", "torch.cross_entropy")
# the audits handed to the workers longest first (jax: import and ~40 XLA compilations; torch: its import), so
# that the longest task of the report starts first; the report lists them in REPORT_TARGETS' order
AUDIT_ORDER = ("jax.log_softmax", "torch.cross_entropy", "scipy.log_softmax", "scipy.logsumexp")


# ----------------------------------------------------------------- the likelihood figure
def _likelihood_curves(formats, settings):
    """NLL and its error in bits along N_GRID per (method, format), and each curve's largest finite ulps."""
    curves, max_ulps = {}, {}
    for fmt in formats:
        out = evaluate(LIKELIHOOD, fmt, iid(settings.p, N_GRID))
        for method, o in out.items():
            curves[(method, fmt.name)] = (o.value, o.error_bits)
            finite = np.isfinite(o.value)
            max_ulps[(method, fmt.name)] = float(o.ulps[finite].max()) if finite.any() else None
    return curves, max_ulps


def _likelihood_figure(formats, settings, rows, curves=None):
    """(figure, sentences); ``curves``: :func:`_likelihood_curves` (computed here if not given)."""
    curves, max_ulps = _likelihood_curves(formats, settings) if curves is None else curves
    iid_rows = {(r.method, r.dtype): r for r in rows if r.experiment == "likelihood" and r.family == "iid"}
    failures = {key: r.first_failure for key, r in iid_rows.items()}
    figure = plots.likelihood_figure(curves, N_GRID * -np.log(settings.p), N_GRID, failures)
    sentences = []
    for fmt in formats:
        fail = failures.get(("product", fmt.name))
        worst = max_ulps.get(("sum_log", fmt.name))
        sum_row = iid_rows.get(("sum_log", fmt.name))
        sum_fail = None if sum_row is None else sum_row.first_failure
        status = iid_rows[("product", fmt.name)].failure if fail else None
        text = (f"In {fmt.name} the product of {shortest(settings.p)} first {VERB.get(status, status)} at n = {fail}"
                if fail else f"In {fmt.name} the product of {shortest(settings.p)} does not fail for n <= 2**62")
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


# ----------------------------------------------------------------- the family figures
def _family_grid(family) -> np.ndarray:
    if family.integer:
        top = min(family.upper or INTEGER_FIGURE_UPPER, INTEGER_FIGURE_UPPER)
        return np.unique(np.round(np.logspace(0, np.log10(top), 161)).astype(np.int64))
    return D_GRID


def _family_panels(experiment, family, formats, settings) -> dict:
    """What a family's figure shows, per format: |value| per method, or (error bits, finite) per method."""
    grid = _family_grid(family)
    panels = {}
    for fmt in formats:
        out = evaluate(experiment, fmt, family.cases(grid, settings), fast_reference=True)  # a figure
        if family.figure == "magnitude":
            panels[fmt.name] = {m: o.value for m, o in out.items()}
        else:
            panels[fmt.name] = {m: (o.error_bits, np.isfinite(o.value)) for m, o in out.items()}
    return panels


def _family_figure(experiment, family, formats, settings, rows, panels=None) -> bytes:
    panels = _family_panels(experiment, family, formats, settings) if panels is None else panels
    grid = _family_grid(family)
    if family.figure == "magnitude":
        title = f"{experiment.name}/{family.name}: {family.description}: |value| vs {family.parameter}"
        return plots.magnitude_figure(title, panels, grid, family.parameter)
    failures = {(r.method, r.dtype): r.first_failure for r in rows
                if r.experiment == experiment.name and r.family == family.name}
    title = (f"{experiment.name}/{family.name}: {family.description}: "
             f"bits lost (of the format's p) vs {family.parameter}")
    return plots.family_figure(title, panels, grid, failures, family.parameter, family.integer)


# ----------------------------------------------------------------- tasks (run in worker processes)
# Arguments and results cross processes: names, settings, arrays and result dataclasses, never callables.
def _search_task(experiment: str, family: str, fmt: str, settings: Settings):
    e = EXPERIMENTS[experiment]
    return family_thresholds(e, e.family(family), format_or_policy(fmt), settings)


def _panels_task(experiment: str, family: str, formats: tuple[str, ...], settings: Settings):
    e = EXPERIMENTS[experiment]
    return _family_panels(e, e.family(family), [format_or_policy(f) for f in formats], settings)


def _family_figure_task(experiment: str, family: str, formats: tuple[str, ...], settings: Settings, rows, panels):
    e = EXPERIMENTS[experiment]
    return _family_figure(e, e.family(family), [format_or_policy(f) for f in formats], settings, rows, panels)


def _large_vocab_task(settings: Settings):
    """The large-vocabulary curves of every policy (in one process: the bfloat16 policies store the same
    inputs, whose exact references ``linear_ce`` computes once a process) and their figure."""
    curves = [c for policy in large_vocab.POLICIES for c in large_vocab.curves(policy, settings)]
    return curves, plots.large_vocabulary_figure(curves)


def _curves_task(formats: tuple[str, ...], settings: Settings):
    return _likelihood_curves([format_or_policy(f) for f in formats], settings)


def _likelihood_figure_task(formats: tuple[str, ...], settings: Settings, rows, curves):
    return _likelihood_figure([format_or_policy(f) for f in formats], settings, rows, curves)


def _training_task(scenario: str):
    """The runs of one default scenario (its float64 runs too) and its figure."""
    from ..training import train

    s = train.SCENARIOS[scenario]
    runs = train.run_scenario(s, [format_or_policy(name) for name in (*TRAIN_FORMATS, "float64")])
    mine = {(r.method, r.dtype): r for r in runs}
    return runs, plots.training_figure(f"train/{scenario}: {s.description}", mine, list(TRAIN_FORMATS))


def _audit_task(name: str, formats: tuple[str, ...], worker: bool = False):
    """One installed framework kernel: its audit on the confident family (what the report shows of
    it: resembles, thresholds and versus, as ``stabilitylab audit NAME --family confident`` finds them;
    no witnesses, which the report does not show) and its figure panels, error bits and finiteness
    along D_GRID per format it supports (only those: the figure plots what the table reports).

    ``worker``: this is a worker process of the report, running one task on one core beside the
    others: the framework's OpenMP threads are limited to one (``OMP_NUM_THREADS=1``, set before the
    framework is imported).  Its extra threads only spun on the core the other worker uses (torch:
    ~1.4 s of CPU); the kernels work row by row, and the audit's results are the same."""
    if worker:
        os.environ["OMP_NUM_THREADS"] = "1"
    from ..auditing.core import resolve, run, target_method
    from ..experiments.softmax_ce import SOFTMAX_CE

    target = resolve(name)
    a = run(target, [format_or_policy(f) for f in formats], families=["confident"], witnesses=False)
    family = SOFTMAX_CE.family("confident")
    method = target_method(target)
    panels = {}
    supported = {r.dtype for r in a.resembles}  # the formats the audit ran (the table shows '—' for the others)
    for fmt in (f for f in formats if f in supported):
        out = evaluate(replace(SOFTMAX_CE, methods=(method,)), format_or_policy(fmt), family.cases(D_GRID, Settings()),
                       fast_reference=True)
        panels[fmt] = (out[method.name].error_bits, np.isfinite(out[method.name].value))
    return dict(environment=a.target.environment, resembles=a.resembles, thresholds=a.thresholds,
                versus=a.versus, method=method.name, panels=panels)


def _log1p_panels_task(formats: tuple[str, ...]):
    """The log1p form's panels of the audit figure (the kernels are drawn beside it)."""
    from ..experiments.softmax_ce import SOFTMAX_CE

    family, log1p = SOFTMAX_CE.family("confident"), SOFTMAX_CE.method("log_softmax_log1p")
    out = {}
    for fmt in formats:
        o = evaluate(replace(SOFTMAX_CE, methods=(log1p,)), format_or_policy(fmt), family.cases(D_GRID, Settings()),
                     fast_reference=True)[log1p.name]
        out[fmt] = (o.error_bits, np.isfinite(o.value))
    return out


def _audit_figure_task(panels):
    return plots.family_figure("softmax_ce/confident: logits [0, -d], label 0: bits lost (of p) vs d, installed "
                               "kernels beside the log1p form", panels, D_GRID, {}, "d")


class _Inline:
    """An executor that runs each task when it is submitted (one core, or no fork)."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # raised by _Tasks.run, as a worker's would be
            future.set_exception(exc)
        return future


class _Tasks:
    """Tasks on an executor; a task added with ``after`` is submitted once those tasks' results are
    in (``make(results) -> (fn, args)``).  ``done(group)`` is called when a group's last task ends."""

    def __init__(self, executor, done: Callable[[str], None]):
        self.executor, self.done = executor, done
        self.running: dict[tuple, Future] = {}
        self.waiting: list[tuple[tuple, Callable, tuple]] = []
        self.results: dict[tuple, object] = {}
        self.left: dict[str, int] = {}

    def add(self, key: tuple, fn: Callable | None = None, *args, after: tuple = (),
            make: Callable | None = None, executor=None) -> None:
        self.left[key[0]] = self.left.get(key[0], 0) + 1
        if after:
            self.waiting.append((key, make, after))
        else:
            self.running[key] = (executor or self.executor).submit(fn, *args)

    def run(self) -> dict[tuple, object]:
        try:
            while self.running or self.waiting:
                finished, _ = wait(list(self.running.values()), return_when=FIRST_COMPLETED)
                for key in [k for k, f in self.running.items() if f in finished]:
                    self.results[key] = self.running.pop(key).result()
                    self.left[key[0]] -= 1
                    if not self.left[key[0]]:
                        self.done(key[0])
                ready = [w for w in self.waiting if all(k in self.results for k in w[2])]
                if not self.running and not ready and self.waiting:
                    raise RuntimeError(f"report tasks wait for results never computed: {self.waiting}")
                for item in ready:
                    self.waiting.remove(item)
                    key, make, _ = item
                    fn, args = make(self.results)
                    self.running[key] = self.executor.submit(fn, *args)
        except BaseException:  # a failed task or Ctrl-C: the tasks not started are not run
            for future in self.running.values():
                future.cancel()
            raise
        return self.results


FORK_UNSAFE = ("jax", "torch", "tensorflow")  # cannot run in a process forked after they started threads
GC_YOUNG = 10_000  # the garbage collector's youngest-generation threshold during a build (CPython's default: 700)


@contextlib.contextmanager
def _collector():
    """The garbage collector during a build: what exists at its start frozen (``gc.freeze``: never traversed by a
    collection, in this process or the workers forked from it), and a collection of the youngest generation
    every :data:`GC_YOUNG` net allocations of container objects instead of 700; restored on the way out.

    The workers inherit the parent's whole heap (numpy, matplotlib, the experiments): every full collection
    traversed it again, writing to each object's header and so copying its page (copy-on-write), and the
    figures and the rounded arithmetic allocate small containers (artists, tuples, closures) by the million:
    ~1,100 collections per worker, 0.8-1.2 s of CPU each; with both settings ~280 and ~0.45 s (measured with
    ``gc.callbacks``, the report's peak RSS 541 -> 566 MB).  Which objects live is unchanged, and no result
    depends on when cyclic garbage is freed.  A caller that froze objects itself (``gc.get_freeze_count()``)
    keeps its own freeze: nothing is frozen or unfrozen here then."""
    threshold = gc.get_threshold()
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    gc.set_threshold(GC_YOUNG, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        if freeze:
            gc.unfreeze()


# ----------------------------------------------------------------- the report
STEPS = 8  # progress calls: comparing, each of GROUPS as its last task ends, writing
GROUPS = {"search": "searched thresholds", "ftz": "searched thresholds with flush-to-zero",
          "likelihood": "drew the likelihood figure", "family": "drew the family figures",
          "train": "trained small models", "audit": "audited the installed framework kernels"}


def build(formats: Sequence[Format], settings: Settings = Settings(),
          progress: Callable[[str], None] = lambda step: None, jobs: int | None = None) -> dict[str, bytes]:
    """All files of the report, in memory.  ``jobs``: worker processes (default:
    :func:`~stabilitylab.analysis.parallel.worker_count`)."""
    from ..auditing import adapters
    from ..training import train

    started = time.perf_counter()
    workers = worker_count() if jobs is None else jobs  # (first: a bad STABILITYLAB_WORKERS fails at once)
    experiments = list(DEFAULT_EXPERIMENTS)
    names = tuple(f.name for f in formats)
    installed = [n for n in REPORT_TARGETS if adapters.ADAPTERS[n].installed]
    audited = {n: tuple(f for f in names if f in adapters.ADAPTERS[n].formats) for n in installed}
    audited = {n: chosen for n, chosen in audited.items() if chosen}
    searches = [(e.name, f.name, fmt) for e in experiments for f in e.families for fmt in names]
    # the simulated kernels' confident thresholds beside the audited ones, with the default settings
    simulated = [("search" if settings == Settings() else "audit", "softmax_ce", "confident", fmt) for fmt in names]
    reported: list[str] = []

    def done(group: str) -> None:
        reported.append(group)
        progress(GROUPS[group])

    # ml_dtypes (~0.6 s to import) is not imported before the fork: no task of the default report needs it but
    # the jax audit, whose jax imports it anyway (bfloat16 is held in float32, the training weights too)
    pool = fork_pool(workers)
    with _collector(), pool if pool is not None else contextlib.nullcontext():
        tasks = _Tasks(pool or _Inline(), done)
        # a framework already running here (the Python API, a test session) is audited here, after
        # the other tasks are handed to the workers: a forked copy of it can deadlock
        here = pool is not None and any(name in sys.modules for name in FORK_UNSAFE)
        # longest first: the audits (each imports a framework), then the float64 and float32 searches
        for name in sorted({} if here else audited, key=AUDIT_ORDER.index):
            tasks.add(("audit", name), _audit_task, name, audited[name], pool is not None)
        by_cost = sorted(searches, key=lambda t: -format_or_policy(t[2]).storage_format.precision)
        for group, chosen_settings in (("search", settings), ("ftz", Settings(p=settings.p, ftz=True))):
            for key in by_cost:
                tasks.add((group, *key), _search_task, *key, chosen_settings)
        for scenario in train.DEFAULT_SCENARIOS:
            tasks.add(("train", scenario), _training_task, scenario)
        tasks.add(("likelihood", "curves"), _curves_task, names, settings)
        tasks.add(("family", "large_vocab"), _large_vocab_task, settings)
        for e in experiments:
            for f in e.families:
                tasks.add(("family", e.name, f.name), _panels_task, e.name, f.name, names, settings)
        if installed:
            tasks.add(("audit", "log1p"), _log1p_panels_task, names)
            for key in simulated:
                if key[0] == "audit":
                    tasks.add(key, _search_task, *key[1:], Settings())
        # the figures, each once what it shows is in
        iid = tuple(("search", "likelihood", "iid", fmt) for fmt in names)
        tasks.add(("likelihood", "figure"), after=(("likelihood", "curves"), *iid),
                  make=lambda r: (_likelihood_figure_task, (names, settings, _joined(r, iid),
                                                             r[("likelihood", "curves")])))
        for e in experiments:
            for f in e.families:
                mine = tuple(("search", e.name, f.name, fmt) for fmt in names)
                tasks.add(("family", e.name, f.name, "figure"), after=(("family", e.name, f.name), *mine),
                          make=lambda r, e=e.name, f=f.name, mine=mine: (
                              _family_figure_task, (e, f, names, settings, _joined(r, mine), r[("family", e, f)])))
        for name, chosen in (audited if here else {}).items():
            tasks.add(("audit", name), _audit_task, name, chosen, executor=_Inline())
        if installed:
            needed = (("audit", "log1p"), *(("audit", n) for n in audited))
            tasks.add(("audit", "figure"), after=needed, make=lambda r: (_audit_figure_task, (_audit_panels(
                names, [r[("audit", n)] for n in audited], r[("audit", "log1p")]),)))
        # the comparison table here, while the workers (forked at the first task) run the tasks
        progress("comparing formulations")
        comparison = compare(experiments, formats)
        results = tasks.run()
    for group in GROUPS:
        if group not in reported:  # a group without tasks (nothing installed to audit) is still a step
            progress(GROUPS[group])

    files: dict[str, bytes] = {}
    files["figures/likelihood_nll.png"], curve_sentences = results[("likelihood", "figure")]
    family_figures = {}
    for e in experiments:
        for f in e.families:
            name = f"figures/{e.name}_{f.name}.png"
            files[name] = results[("family", e.name, f.name, "figure")]
            family_figures.setdefault(e.name, []).append((f, name))
    large_curves, files[large_vocab.FIGURE] = results[("family", "large_vocab")]
    large_lines = large_vocab.section(large_curves)
    training_lines = _training_lines({s: results[("train", s)] for s in train.DEFAULT_SCENARIOS}, files)
    audit_lines = _audit_lines(names, {n: results[("audit", n)] for n in audited},
                               _joined(results, simulated) if installed else [],
                               [n for n in REPORT_TARGETS if n not in installed])
    if installed:
        files[AUDIT_FIGURE] = results[("audit", "figure")]
    progress("writing markdown")
    rows = _joined(results, [("search", *k) for k in searches])
    figure_sentences = {(e.name, f.name): vanishing_sentences(e, f, results[("family", e.name, f.name)], rows)
                        for e in experiments for f in e.families if f.figure == "magnitude"}
    markdown = _markdown(comparison, rows, _joined(results, [("ftz", *k) for k in searches]), formats,
                         curve_sentences, family_figures, training_lines, audit_lines,
                         figure_sentences, {"softmax_ce_variants": large_lines},
                         build_line(time.perf_counter() - started, workers if pool is not None else 1))
    files[INDEX] = markdown.encode("utf-8")
    return files


def _joined(results: dict, keys) -> list:
    """The threshold rows of the search tasks ``keys``, in that order (as :func:`thresholds.thresholds`)."""
    return [row for key in keys for row in results[key]]


AUDIT_FIGURE = "figures/audit_softmax_ce_confident.png"


def _audit_panels(formats: tuple[str, ...], audits: list[dict], log1p: dict) -> dict:
    """The audit figure's panels: per format, each kernel that supports it, then the log1p form."""
    panels = {}
    for fmt in formats:
        panels[fmt] = {a["method"]: a["panels"][fmt] for a in audits if fmt in a["panels"]}
        panels[fmt]["log_softmax_log1p"] = log1p[fmt]
    return panels


def _resembles_cell(r) -> Cell:
    """A kernel's resemblance in one format: the formula matched with its shares on the case rows, or 'no
    formula matches' with the best candidate's."""
    if r is None:
        return Cell("—")
    c = r.candidates[0]
    shares = f"{c.cases.within_ulp_share:.1%} / {c.cases.identical_share:.1%}"
    if r.method is not None:
        return Cell(f"{r.method} {shares}")
    if c.cases.within_ulp_share < r.match_share:
        short = f"{c.cases.within_ulp_share:.1%} of case rows within 1 ulp"
    else:
        short = f"{c.wide.within_tolerance_share:.1%} of wide rows within tolerance"
    return Cell(f"no formula matches (best {c.label}: {short})", "inaccurate")


def _audit_lines(formats: tuple[str, ...], results: dict[str, dict], simulated, missing: list[str]) -> list[str]:
    """The audit section: every installed softmax_ce framework kernel of REPORT_TARGETS: resembles, the
    confident family's thresholds, the cases they lose that the log1p form keeps, and a figure of error
    bits vs d.  ``results``: :func:`_audit_task` per kernel; ``simulated``: the confident family's
    thresholds of the simulated kernels (default settings)."""
    lines = ["## Auditing the installed framework kernels", "",
             "`stabilitylab audit` runs a real kernel through the same cases (the defaults and inputs from public "
             "bug reports), exact references, status rule and threshold search as the simulated formulas. A black "
             "box shows no IEEE events: its status is read from its value (inf, nan, inaccurate, error), never a "
             "claimed cause. *Resembles* names the simulated formula whose output is within 1 ulp of the kernel's "
             "on the most case rows (defaults, corpus and seeded realistic rows), if it is within 1 ulp on at "
             f"least {MATCH_SHARE:.0%} of them (and within the tolerance on {MATCH_SHARE:.0%} of the wide ones, "
             f"at least {WIDE_ROWS:,} classes); otherwise the cell says no formula matches and names the best. "
             "Shares: within 1 ulp / bit-identical, on the case rows."]
    if missing:
        lines += ["", f"Not installed here, so not audited: {', '.join(missing)}."]
    if len(missing) == len(REPORT_TARGETS):
        return lines + [""]
    names = list(results)
    header = ["target", "version", *formats]
    res_rows, thr_rows = [], []
    for name in names:
        a = results[name]
        version = ", ".join(f"{k} {v}" for k, v in a["environment"].items() if k != "device")
        by_dtype = {r.dtype: r for r in a["resembles"]}
        res_rows.append([Cell(name), Cell(version)] + [_resembles_cell(by_dtype.get(f)) for f in formats])
        by_t = {t.dtype: t for t in a["thresholds"]}
        cells = []
        for f in formats:
            t = by_t.get(f)
            if t is None:
                cells.append(Cell("—"))
                continue
            value = "never" if t.first_inaccurate is None else repr(t.first_inaccurate)
            cells.append(Cell(value if t.exact_inaccurate else f"≤ {value}" if t.first_inaccurate is not None
                              else "none found", "inaccurate" if t.first_inaccurate is not None else "ok"))
        thr_rows.append([Cell(name), Cell(version)] + cells)
    for method in ("log_softmax", "log_softmax_log1p"):
        cells = []
        for f in formats:
            t = next(r for r in simulated if r.method == method and r.dtype == f)
            value = "never" if t.first_inaccurate is None else repr(t.first_inaccurate)
            cells.append(Cell(value if t.exact_inaccurate else f"≤ {value}" if t.first_inaccurate is not None
                              else "none found"))  # (not '≤ never': nothing was found, and not proven)
        thr_rows.append([Cell(f"(simulated) {method}"), Cell("stabilitylab")] + cells)
    lines += ["", table_md(Table("Resembles: the simulated formula within 1 ulp of the kernel on the most case rows "
                                 "(shares: within 1 ulp / bit-identical)",
                                 header, res_rows), 3),
              table_md(Table("confident family ([0, -d], label 0): first d at which the loss is inaccurate "
                             "(≤ x: a bound; black boxes in float32 / float64 are scanned by points)",
                             header, thr_rows), 3)]
    said = []
    for name in names:
        for v in results[name]["versus"]:
            if v.method == "log_softmax_log1p" and v.target_only:
                said.append(f"- {name}, {v.dtype}: {v.target_only} of the audited cases are inaccurate or worse "
                            f"where log_softmax_log1p is ok (first: {', '.join(v.examples[:3])}).")
    lines += said + [""]
    lines += [f"![installed kernels vs log1p form]({AUDIT_FIGURE})", ""]
    return lines


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


def _training_lines(results: dict[str, tuple], files: dict[str, bytes]) -> list[str]:
    """The "Training" section: the default scenarios in float16 / bfloat16 / float32 (float64 as the
    reference), a table, the generated sentences and one figure per scenario (added to ``files``).
    ``results``: :func:`_training_task` per scenario."""
    from ..render.model import train_sections
    from ..training import train

    chosen = {name: train.SCENARIOS[name] for name in results}
    runs = [r for name in results for r in results[name][0]]
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
        files[path] = results[name][1]
        lines += [sections_md([section], 3), f"![train/{name}]({path})", ""]
    return lines


def vanishing_sentences(experiment, family, panels: dict, rows) -> list[str]:
    """Beside a magnitude figure: per format and method whose value is 0 at some points of the figure's
    grid, how many, from where, and what the status rule (the thresholds beside it) says of them; a
    value correctly rounded to 0 (the exact value below the format's range) is not a failure there,
    though a gradient of 0 trains nothing.  ``panels[dtype][method]``: the values along the grid."""
    grid = _family_grid(family)
    found = {(r.method, r.dtype): r for r in rows if r.experiment == experiment.name and r.family == family.name}
    out = []
    for dtype, methods in panels.items():
        for method, values in methods.items():
            zero = np.flatnonzero(np.asarray(values, dtype=np.float64) == 0)
            if not len(zero):
                continue
            first = float(grid[zero[0]])
            text = (f"In {dtype}, along {family.name} ({family.parameter}): {method} is 0 at {len(zero)} of the "
                    f"figure's {len(grid)} points, from {family.parameter} = {first:.6g}"
                    + (" on" if zero[0] + len(zero) == len(grid) else "") + "; ")
            r = found.get((method, dtype))
            if r is not None and r.first_failure is None and r.first_inaccurate is None and not (
                    r.exact_failure and r.exact_inaccurate):
                below = r.verified_inaccurate if not r.exact_inaccurate else r.verified_failure
                text += (f"the threshold search found no failure (verified only for {r.parameter} < "
                         f"{_text(below)}): 0 there is the exact value below the format's range, correctly "
                         "rounded, but a gradient of 0 moves no weight")
            elif r is not None and r.first_failure is None and r.first_inaccurate is None:
                text += ("the status rule never calls it a failure (the exact value is below the format's range, "
                         "so 0 is it correctly rounded), but a gradient of 0 moves no weight")
            elif r is not None:
                early = r.first_inaccurate is not None and (r.first_failure is None
                                                             or r.first_inaccurate < r.first_failure)
                status, at, exact = ((r.inaccurate_status or "inaccurate", r.first_inaccurate, r.exact_inaccurate)
                                     if early else (r.failure, r.first_failure, r.exact_failure))
                text += (f"the status rule calls it {status} from {r.parameter} = "
                         f"{'' if exact else 'at most '}{_text(at)}")
            else:
                text += "no threshold was searched for it"
            out.append(text + ".")
    return out


BUILD_ITEM = "report build time"


def build_line(seconds: float, processes: int) -> tuple[str, str]:
    """The environment table's row stating how long this build took: wall seconds from the start of
    :func:`build` to its markdown (``time.perf_counter``), and the worker processes it ran on.  It differs
    from run to run, as the versions do from machine to machine: comparisons of reports leave it out."""
    return BUILD_ITEM, (f"{seconds:.1f} s wall, {processes} worker process{'es' if processes != 1 else ''} "
                        "(this build; it varies from run to run)")


def _markdown(comparison, rows, ftz_rows, formats, curve_sentences, family_figures, training_lines=(),
              audit_lines=(), figure_sentences=None, after_experiment=None, build=None) -> str:
    """``after_experiment[name]``: lines of a section placed after that experiment's section; ``build``:
    the environment table's build-time row (:func:`build_line`)."""
    env = fingerprint()
    if build is not None:
        env = {**env, build[0]: build[1]}
    lines = [
        markers.REPORT_MARKER,
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
            beside = (figure_sentences or {}).get((experiment.name, family.name), [])
            lines += [f"- {text}" for text in beside] + ([""] if beside else [])
        lines += list((after_experiment or {}).get(experiment.name, []))
    lines += ["## Flush-to-zero", "",
              "GPUs and CPUs in flush-to-zero / denormals-are-zero modes replace subnormal inputs and results by 0 "
              "(`--ftz`). Every threshold that moves:", "", table_md(_ftz_table(rows, ftz_rows), 3), *training_lines]
    lines += list(audit_lines)
    return "\n".join(lines).rstrip() + "\n"


def write(folder: str | os.PathLike, files: dict[str, bytes]) -> list[Path]:
    """Write every file below ``folder``: all of them or none (see :func:`atomic.write_tree`)."""
    return atomic.write_tree(folder, files)
