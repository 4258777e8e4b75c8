"""Command-line interface: parse and validate, call the core, render.  No numerics here."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import click
from rich.console import Console

from .analysis.engine import compare as run_compare
from .errors import InputError
from .experiments import EXPERIMENTS
from .experiments.base import Settings
from .experiments.likelihood import iid
from .io import atomic, output, schemas
from .numerics.formats import ALL_FORMATS, DEFAULT_FORMATS, Format, get_format
from .render import jsonout
from .render.markdown import sections_md, table_md
from .render.model import (
    Cell,
    Section,
    Table,
    audit_sections,
    check_table,
    compare_sections,
    formats_table,
    formulas_section,
    thresholds_table,
    train_sections,
)
from .render.table import print_sections, print_table, stdout_console
from .status import ExitStatus

__all__ = ["main", "cli", "run"]

OUTPUT_FORMATS = ("table", "markdown", "json")
MAX_N = 2**63 - 1
MAX_CASES, MAX_FINDINGS = 60, 40  # per experiment, on standard output (files get everything)


class FormatType(click.ParamType):
    """A format name or alias (fp16, half, bf16, single, double, e4m3, ...) or 'all'."""

    name = "format"

    def convert(self, value, param, ctx) -> tuple[Format, ...]:
        if isinstance(value, tuple):
            return value
        if str(value).strip().lower() == "all":
            return ALL_FORMATS
        try:
            return (get_format(str(value)),)
        except KeyError as exc:
            self.fail(exc.args[0], param, ctx)


class CheckExit(click.ClickException):
    """A one-line error with its own exit status."""

    def __init__(self, message: str, status: ExitStatus):
        super().__init__(message)
        self.exit_code = int(status)


# ------------------------------------------------------------------ helpers
def _formats(chosen: Sequence[tuple[Format, ...]]) -> tuple[Format, ...]:
    flat = [f for group in chosen for f in group] or list(DEFAULT_FORMATS)
    return tuple(dict.fromkeys(flat))


def _experiments(names: Sequence[str]):
    return [EXPERIMENTS[name] for name in dict.fromkeys(names)] or list(EXPERIMENTS.values())


def _settings(p: float | None, ftz: bool) -> Settings:
    if p is not None and not (0 < p <= 1):
        raise click.BadParameter(f"p = {p} is outside (0, 1]", param_hint="'--p'")
    return Settings(p=0.1 if p is None else p, ftz=ftz)


def _check_tolerance(tolerance: float | None) -> None:
    if tolerance is not None and not (0 < tolerance < float("inf")):
        raise click.BadParameter(f"tolerance = {tolerance}; it must be a finite number > 0",
                                 param_hint="'--tolerance'")


def _check_output(path: str | None, hint: str = "'-o' / '--output'") -> None:
    """Refuse a target that cannot be written (an empty name, a folder, a device, a pipe) before any work."""
    if path is not None:
        problem = atomic.check_writable(path)
        if problem:
            raise click.BadParameter(problem, param_hint=hint)


def _families(names: Sequence[str], experiments) -> set[str] | None:
    known = {f"{e.name}/{f.name}" for e in experiments for f in e.families}
    short = {k.split("/")[1] for k in known}
    for name in names:
        if name not in known and name not in short:
            raise click.BadParameter(f"no family {name!r} in the chosen experiments; valid: "
                                     f"{', '.join(sorted(known))}", param_hint="'--family'")
    return set(names) or None


def run_thresholds(*args, **kwargs):
    """:func:`stabilitylab.analysis.thresholds.thresholds`, imported when a command needs it (not by compare)."""
    from .analysis.thresholds import thresholds

    return thresholds(*args, **kwargs)


def _print_version(ctx: click.Context, param, value: bool) -> None:
    """--version (click's version_option would read the package metadata at every start)."""
    if value and not ctx.resilient_parsing:
        from .io.environment import package_version

        click.echo(f"stabilitylab, version {package_version()}", color=ctx.color)
        ctx.exit()


def _console(path: str | None) -> Console:
    """The terminal; for -o, or a pipe without COLUMNS, a console 160 wide."""
    if path is not None:
        return Console(record=True, width=160, file=io.StringIO(), color_system=None)
    return stdout_console()  # COLUMNS of 0, < 0, text or > 10000: unset


def _emit(text: str, path: str | None) -> None:
    """Write ``text`` to ``path`` atomically, or to standard output (see output.py for how that fails)."""
    if path is not None:
        atomic.write_text(path, text)
    else:
        click.echo(text, nl=False)


def _render(sections: list[Section], path: str | None, fmt: str) -> None:
    if fmt == "markdown":
        _emit(sections_md(sections), path)
        return
    console = _console(path)
    print_sections(console, sections)
    if path is not None:
        _emit(console.export_text(), path)


# ------------------------------------------------------------------ options
output_option = click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
                             help="Write to this file (atomically) instead of standard output.")
format_option = click.option("--format", "fmt", type=click.Choice(OUTPUT_FORMATS), default="table",
                             show_default=True, help="Rich table, GitHub markdown, or JSON.")


def dtype_option(default: str = "float16, bfloat16, float32, float64"):
    return click.option("-d", "--dtype", "dtypes", type=FormatType(), multiple=True,
                        help="Format (repeatable): float16/fp16/half, bfloat16/bf16, float32/fp32/single, "
                             f"float64/fp64/double, float8_e4m3fn/e4m3, float8_e5m2/e5m2, or all. Default: {default}.")


experiment_option = click.option("-e", "--experiment", "experiments", type=click.Choice(list(EXPERIMENTS)),
                                 multiple=True, help="Experiment (repeatable). Default: all.")
family_option = click.option("--family", "families", multiple=True,
                             help="Family to search (repeatable), e.g. iid or softmax_ce/underflow. Default: all.")
p_option = click.option("--p", "p", type=float, default=None,
                        help="likelihood: the true-class probability p in (0, 1] (default 0.1).")
ftz_option = click.option("--ftz", is_flag=True,
                          help="Flush subnormal inputs and results to zero (FTZ/DAZ hardware modes).")
tolerance_option = click.option("--tolerance", type=float, default=None,
                                help="Relative error above which a finite loss is 'inaccurate' "
                                     "(default sqrt(u) of each format).")


class _Interrupted(Exception):
    """Ctrl-C inside a command (click would print a blank line for a KeyboardInterrupt)."""


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _Interrupted() from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and exit.")
def cli() -> None:
    """Show, measure and guard numerical (in)stability of ML loss computations."""


# ----------------------------------------------------------------- commands
@cli.command()
@experiment_option
@dtype_option()
@p_option
@click.option("--n", "n", type=int, default=None,
              help="likelihood: custom case of n >= 1 samples (default 100 with --p); replaces the default cases.")
@click.option("--logits", type=click.Path(), default=None,
              help="softmax_ce: logits file (.npy, .npz, .safetensors, .pt, .csv, .txt) of shape (rows, classes) or "
                   "(..., classes), any size (read in chunks). Alone, it runs softmax_ce only.")
@click.option("--key", default=None, help="The logits tensor in a file holding several (default: 'logits', or the only "
                                          "one).")
@click.option("--labels", type=click.Path(), default=None,
              help="softmax_ce: labels file, one integer per row (default: the logits file's 'labels' tensor, else "
                   "each row's argmax).")
@click.option("--labels-key", default=None, help="The labels tensor in --labels (or in the --logits file).")
@click.option("--ignore-index", type=int, default=-100, show_default=True,
              help="Skip rows whose label is this value (PyTorch's padding label).")
@click.option("--rows", "rows_mode", type=click.Choice(("summary", "all")), default="summary", show_default=True,
              help="With --logits: a summary (counts, error-bits histogram, worst and failing rows), or every row as "
                   "JSON Lines (streamed; the summary is the last line).")
@tolerance_option
@ftz_option
@format_option
@output_option
@click.pass_context
def compare(ctx, experiments, dtypes, p, n, logits, key, labels, labels_key, ignore_index, rows_mode, tolerance, ftz,
            fmt, output) -> None:
    """Run naive and stable formulations side by side in several formats."""
    _check_output(output)
    _settings(p, ftz)
    if n is not None and not 1 <= n <= MAX_N:
        raise click.BadParameter(f"n = {n}; n must be an integer from 1 to 2**63 - 1", param_hint="'--n'")
    _check_tolerance(tolerance)
    for used, option in ((labels, "--labels"), (key, "--key"), (labels_key, "--labels-key"),
                         (rows_mode != "summary", "--rows")):
        if used and not logits:
            raise click.BadParameter(f"{option} needs --logits", param_hint=f"'{option}'")
    chosen = _experiments(experiments or (("softmax_ce",) if logits else ()))
    names = {e.name for e in chosen}
    for used, option, needs in ((p is not None or n is not None, "--p / --n", "likelihood"),
                                (bool(logits), "--logits", "softmax_ce")):
        if used and needs not in names:
            raise click.BadParameter(f"{option} sets {needs} cases, but {needs} is not among the experiments "
                                     f"chosen with -e", param_hint=f"'{option}'")
    if rows_mode == "all" and names != {"softmax_ce"}:
        raise click.BadParameter("--rows all writes the rows of softmax_ce on your logits only; choose -e softmax_ce "
                                 "alone", param_hint="'--rows'")
    if rows_mode == "all" and ctx.get_parameter_source("fmt") != click.core.ParameterSource.DEFAULT and fmt != "json":
        raise click.BadParameter("--rows all writes JSON Lines; leave out --format or use --format json",
                                 param_hint="'--format'")
    cases = {}
    if p is not None or n is not None:
        cases["likelihood"] = iid(0.1 if p is None else p, 100 if n is None else n)
    formats = _formats(dtypes)
    bulk = None
    if logits:
        bulk = _open_user_logits(logits, key, labels, labels_key, ignore_index)
        if not dtypes and bulk.source.format:
            formats = (get_format(bulk.source.format),)
            bulk.notes.append(f"-d {bulk.source.format}: the format the logits are stored in (choose others with -d)")
        chosen = [e for e in chosen if e.name != "softmax_ce"]
    comparison = run_compare(chosen, formats, cases, tolerance=tolerance, ftz=ftz) if chosen else None
    summary = None
    if bulk is not None:  # (the user-data modules are imported only for user data)
        from .analysis import streaming
        from .io.userdata import InputError

        try:  # a file that turns out truncated or corrupt while it is read
            if rows_mode == "all":
                _stream_rows(bulk, formats, tolerance, ftz, output)
                return
            summary = streaming.summarize(bulk.source, bulk.labels, bulk.keep, formats, tolerance=tolerance, ftz=ftz)
            summary.notes.extend(bulk.notes)
        except InputError as exc:
            raise click.BadParameter(str(exc), param_hint=f"'{exc.option or '--logits'}'") from None
        except MemoryError:  # the whole-file arrays, a block, or a worker's results
            raise click.BadParameter(str(bulk.source.out_of_memory("compute the losses of")),
                                     param_hint="'--logits'") from None
    _render_compare(comparison, summary, bulk, fmt, output)


def _render_compare(comparison, summary, bulk, fmt: str, output: str | None) -> None:
    if summary is not None:
        from .render import bulk as bulk_render
    if fmt == "json":
        doc = jsonout.compare_document(comparison) if comparison is not None else jsonout.empty_compare_document(
            summary.formats, summary.tolerance, summary.ftz)
        if summary is not None:
            doc["user_logits"] = bulk_render.bulk_document(summary, bulk.text)
        _emit(jsonout.dumps(doc), output)
        return
    sections = []
    if comparison is not None:
        sections = compare_sections(comparison, *((MAX_CASES, MAX_FINDINGS) if output is None else (None, None)))
    if summary is not None:
        sections.append(bulk_render.bulk_section(summary, bulk.text, *((1, 3) if output is None else (None, None))))
    _render(sections, output, fmt)


def _open_user_logits(logits, key, labels, labels_key, ignore_index):
    from .io.userdata import InputError, user_source

    try:
        return user_source(logits, key=key, labels=labels, labels_key=labels_key, ignore_index=ignore_index)
    except InputError as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{exc.option or '--logits'}'") from None


def _stream_rows(bulk, formats, tolerance, ftz: bool, output: str | None) -> None:
    """Every row as JSON Lines, chunk by chunk (atomically into -o), then the summary line."""
    from .analysis import streaming
    from .render import bulk as bulk_render

    def run(stream) -> None:
        summary = streaming.summarize(bulk.source, bulk.labels, bulk.keep, formats, tolerance=tolerance, ftz=ftz,
                                      on_rows=lambda columns: stream.write(bulk_render.jsonl_lines(columns)))
        summary.notes.extend(bulk.notes)
        stream.write(jsonout.dumps_line({"summary": bulk_render.bulk_document(summary, bulk.text)}))

    if output is None:
        run(sys.stdout)
    else:
        with atomic.streamed_text(output) as stream:
            run(stream)


@cli.command()
@dtype_option("all six formats")
@format_option
@output_option
def formats(dtypes, fmt, output) -> None:
    """Print each format's facts (from finfo): max, smallest normal/subnormal, eps, u, ln thresholds."""
    _check_output(output)
    chosen = _formats(dtypes) if dtypes else ALL_FORMATS
    if fmt == "json":
        _emit(jsonout.dumps(jsonout.formats_document(chosen)), output)
    else:
        _render([Section("Formats", tables=[formats_table(list(chosen))])], output, fmt)


@cli.command("thresholds")
@experiment_option
@family_option
@dtype_option()
@p_option
@ftz_option
@tolerance_option
@format_option
@output_option
def thresholds_command(experiments, families, dtypes, p, ftz, tolerance, fmt, output) -> None:
    """Find the exact input at which each formulation first fails, beside the analytic prediction."""
    _check_output(output)
    _check_tolerance(tolerance)
    settings = _settings(p, ftz)
    formats_ = _formats(dtypes)
    chosen = _experiments(experiments)
    rows = run_thresholds(chosen, formats_, settings, tolerance, _families(families, chosen))
    if fmt == "json":
        _emit(jsonout.dumps(jsonout.thresholds_document(rows, settings, tolerance)), output)
    else:
        _render([Section("Thresholds", tables=[thresholds_table(rows, list(formats_))]), formulas_section(rows)],
                output, fmt)


@cli.command("audit")
@click.argument("target", required=False)
@click.option("--list", "list_targets", is_flag=True, help="List the built-in targets, installed or not, and exit.")
@click.option("-e", "--experiment", type=click.Choice(("softmax_ce", "binary_ce")), default=None,
              help="The protocol of a user function: softmax_ce f(logits (rows, K), labels (rows,) int64) -> (rows,); "
                   "binary_ce f(logits (rows, K), labels (rows, K)) -> (rows,) summed over K. Adapters know theirs.")
@dtype_option("float16, bfloat16, float32, float64, as the target supports them")
@click.option("--logits", type=click.Path(), default=None,
              help="Logits file (.npy, .npz, .csv, .txt), shape (rows, K): its rows replace the default cases "
                   "and the bug-report corpus.")
@click.option("--labels", type=click.Path(), default=None,
              help="Labels file: softmax_ce one integer per row (default: argmax); binary_ce 0/1, shape (rows, K).")
@click.option("--family", "families", multiple=True,
              help="Threshold family to search (repeatable), e.g. confident. Default: every family of the experiment.")
@click.option("--no-thresholds", is_flag=True, help="Run the cases only, no threshold search.")
@click.option("--grad", is_flag=True,
              help="Audit the gradient with respect to the logits (torch, jax and optax targets) against the exact "
                   "softmax(x) - onehot(y) / sigmoid(z) - y.")
@tolerance_option
@format_option
@output_option
@click.option("--emit-pytest", "emit_pytest", type=click.Path(dir_okay=False), default=None,
              help="Write a standalone pytest module (atomically) with one test per witness: the target's status "
                   "there must stay no worse than now.")
@click.option("--save-baseline", "save_baseline", type=click.Path(dir_okay=False), default=None,
              help="Add this audit's thresholds to a baseline file (created if missing, other entries kept), "
                   "for stabilitylab check.")
def audit_command(target, list_targets, experiment, dtypes, logits, labels, families, no_thresholds, grad, tolerance,
                  fmt, output, emit_pytest, save_baseline) -> None:
    """Audit real loss code: a framework kernel (LIBRARY.NAME) or your function (module:function,
    path/to/file.py:function) in every format, against exact references."""
    from . import api
    from .auditing.core import AuditError
    from .guard import baseline
    from .io.userdata import InputError

    _check_output(output)
    _check_output(emit_pytest, "'--emit-pytest'")
    _check_output(save_baseline, "'--save-baseline'")
    _check_tolerance(tolerance)
    if list_targets:
        if target:
            raise click.BadParameter("--list takes no target", param_hint="'--list'")
        _list_targets(api.adapters_table(), fmt, output)
        return
    if not target:
        raise click.BadParameter("give a target: LIBRARY.NAME (see --list), module:function or "
                                 "path/to/file.py:function", param_hint="'TARGET'")
    if labels and not logits:
        raise click.BadParameter("--labels needs --logits", param_hint="'--labels'")
    chosen = _formats(dtypes) if dtypes else None
    console = Console(stderr=True)
    try:
        if console.is_terminal:
            from rich.progress import Progress, SpinnerColumn, TextColumn

            with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True) as bar:
                task = bar.add_task("audit")
                result = api.audit(target, experiment, chosen, logits=logits, labels=labels, families=families or None,
                                   tolerance=tolerance, grad=grad, search=not no_thresholds,
                                   progress=lambda step: bar.update(task, description=step))
        else:
            result = api.audit(target, experiment, chosen, logits=logits, labels=labels, families=families or None,
                               tolerance=tolerance, grad=grad, search=not no_thresholds)
    except InputError as exc:
        raise click.BadParameter(str(exc), param_hint=f"'{exc.option or '--logits'}'") from None
    except AuditError as exc:
        raise click.ClickException(str(exc)) from None
    if emit_pytest:
        try:
            count = result.to_pytest(emit_pytest)
        except AuditError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"wrote {count} tests to {emit_pytest}", err=True)
    if save_baseline:
        try:
            count = result.save_baseline(save_baseline)
        except (AuditError, baseline.BaselineError) as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"wrote {count} entries to {save_baseline}", err=True)
    if fmt == "json":
        _emit(result.to_json(), output)
    elif output is None:
        _render(audit_sections(result.audit, MAX_CASES, MAX_FINDINGS), output, fmt)
    else:
        _render(audit_sections(result.audit), output, fmt)


def _list_targets(rows, fmt: str, output: str | None) -> None:
    if fmt == "json":
        _emit(jsonout.dumps({"schema": schemas.TARGETS, "targets": rows}), output)
        return
    table_rows = []
    for r in rows:
        versions = ", ".join(f"{k} {v}" for k, v in r["versions"].items() if v)
        state = (f"installed ({versions})" if r["installed"]
                 else f'not installed: pip install "stabilitylab[{r["extra"]}]"')
        table_rows.append([Cell(r["target"]), Cell(r["experiment"]), Cell(", ".join(r["formats"])),
                           Cell("yes" if r["gradient"] else "no"),
                           Cell(state, "ok" if r["installed"] else "inaccurate"), Cell(r["computes"])])
    table = Table("Built-in audit targets", ["target", "experiment", "formats", "--grad", "installed", "computes"],
                  table_rows,
                  "user functions: module:function or path/to/file.py:function with -e softmax_ce|binary_ce")
    _render([Section("Targets", tables=[table])], output, fmt)


@cli.command()
@click.option("--baseline", "baseline_path", type=click.Path(dir_okay=False), required=True,
              help=f"Baseline JSON file (schema {schemas.BASELINE}).")
@click.option("--update", is_flag=True,
              help="Recompute and write the baseline (atomically); its settings and the entries outside the "
                   "selection are kept. A file that is not a valid baseline is refused, not overwritten.")
@click.option("--ulps", type=click.IntRange(min=0, max=2**53), default=0, show_default=True,
              help="Float thresholds may move by this many ulps of their format; integers must match exactly.")
@dtype_option("the formats in the baseline; with --update float16, bfloat16, float32, float64")
@click.option("--all", "show_all", is_flag=True, help="List every compared metric, not only the differences.")
@click.option("--format", "fmt", type=click.Choice(("table", "markdown")), default="table", show_default=True,
              help="Rich table, or markdown (for a CI step summary).")
@click.option("--allow-target", "allow", multiple=True, metavar="PATTERN",
              help="Run the user targets (module:function, file.py:function) of audit entries matching this "
                   "fnmatch pattern (repeatable); without it a baseline never runs user code. Built-in adapters "
                   "always run.")
def check(baseline_path, update, ulps, dtypes, show_all, fmt, allow) -> None:
    """Recompute thresholds and compare them with a baseline (exit 1 on a regression)."""
    from .guard import baseline

    if update:
        _update_baseline(baseline_path, dtypes, allow)
        return
    try:
        doc = baseline.load(baseline_path)
    except baseline.BaselineError as exc:
        raise CheckExit(str(exc), ExitStatus.INCOMPARABLE if exc.missing else ExitStatus.USAGE) from None
    settings, tolerance = baseline.settings_of(doc)
    named = {key.split("/")[-1] for key in doc["entries"]}
    formats_ = _formats(dtypes) if dtypes else (tuple(f for f in ALL_FORMATS if f.name in named) or DEFAULT_FORMATS)
    simulated = [key for key in doc["entries"] if baseline.audit_key(key) is None]
    # a baseline of audit entries only (a user's CI guarding a framework kernel) does not ask for the simulations
    rows = run_thresholds(list(EXPERIMENTS.values()), formats_, settings, tolerance) if simulated or not doc[
        "entries"] else []
    audit_rows, problems = _audit_rows(doc["entries"], tolerance, formats_, baseline_path, allow)
    for key, why in sorted(problems.items()):
        click.echo(f"stabilitylab: warning: {key}: {why}", err=True)
    result = baseline.compare(doc, rows + audit_rows, ulps, problems)
    for warning in result.warnings:
        click.echo(f"stabilitylab: warning: {warning}", err=True)
    regressions, missing, unknown = result.count("!"), result.count("+"), result.count("x")
    summary = (f"{result.compared} entries compared: {regressions} regressed, {missing} not in baseline, "
               f"{unknown} not comparable")
    table = check_table(result, show_all)
    if fmt == "markdown":
        click.echo((table_md(table) + "\n" if table.rows else "") + summary)
    else:
        console = _console(None)
        if table.rows:
            print_table(console, table)
        console.print(summary)
    if regressions:
        raise click.exceptions.Exit(ExitStatus.REGRESSION)
    if missing or unknown:
        raise click.exceptions.Exit(ExitStatus.INCOMPARABLE)


def _audit_rows(entries, tolerance, formats_, path, allow):
    """Recompute the audit entries of a baseline (only if it has any: no framework is imported otherwise)."""
    from .guard import baseline

    if not any(baseline.audit_key(key) for key in entries):
        return [], {}
    rows, problems, notes = baseline.audit_rows(path, entries, tolerance, {f.name for f in formats_}, allow)
    for note in notes:
        click.echo(f"stabilitylab: note: {note}", err=True)
    return rows, problems


def _update_baseline(path: str, dtypes, allow=()) -> None:
    """Recompute the selected formats; keep the file's settings and every other entry.

    An existing file must be a valid baseline: rewriting anything else would lose
    it (a typo'd path) or drop the entries that could not be read.
    """
    from .guard import baseline

    _check_output(path, "'--baseline'")
    previous, settings, tolerance = {}, Settings(), None
    if Path(path).exists():
        try:
            old = baseline.load(path)
        except baseline.BaselineError as exc:
            raise click.BadParameter(f"{exc}; --update rewrites only a valid baseline (it keeps the entries it "
                                     "does not recompute), so the file was left unchanged",
                                     param_hint="'--baseline'") from None
        previous, (settings, tolerance) = old["entries"], baseline.settings_of(old)
    audit_only = bool(previous) and all(baseline.audit_key(key) for key in previous)
    rows = [] if audit_only else run_thresholds(list(EXPERIMENTS.values()), _formats(dtypes), settings, tolerance)
    audit_rows, problems = _audit_rows(previous, tolerance, _formats(dtypes), path, allow)
    for key, why in sorted(problems.items()):
        click.echo(f"stabilitylab: warning: kept {key} as it was: {why}", err=True)
    rows += audit_rows
    doc = baseline.document(rows, settings, tolerance, previous)
    baseline.write(path, doc)
    kept = len(doc["entries"]) - len(rows)
    click.echo(f"wrote {len(rows)} recomputed entries to {path}" + (f"; kept {kept} others" if kept else ""))


@cli.command("train")
@click.option("--scenario", "scenarios", multiple=True,
              help="Scenario (repeatable): overflow, saturated, loss_scale_none, loss_scale_static, "
                   "loss_scale_dynamic, or all. Default: overflow, saturated, loss_scale_none, loss_scale_static.")
@dtype_option()
@click.option("--steps", type=int, default=None, help="SGD steps (default: the scenario's).")
@click.option("--lr", type=float, default=None, help="Learning rate (default: the scenario's).")
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=None,
              help="Seed of the mini-batch order (default: the scenario's, 0).")
@format_option
@output_option
def train_command(scenarios, dtypes, steps, lr, seed, fmt, output) -> None:
    """Train softmax / logistic regression on Iris with SGD, every operation rounded to the format."""
    from .training import train

    _check_output(output)
    problem = train.check_settings(steps, lr)
    if problem:
        raise click.BadParameter(problem, param_hint="'--steps'" if problem.startswith("steps") else "'--lr'")
    names = []
    for name in scenarios:
        if name.strip().lower() == "all":
            names += list(train.SCENARIOS)
        elif name in train.SCENARIOS:
            names.append(name)
        else:
            raise click.BadParameter(f"unknown scenario {name!r}; valid: {', '.join(train.SCENARIOS)}, all",
                                     param_hint="'--scenario'")
    chosen = {n: train.with_settings(train.SCENARIOS[n], steps, lr, seed)
              for n in dict.fromkeys(names or train.DEFAULT_SCENARIOS)}
    formats_ = list(_formats(dtypes))
    runs = [r for s in chosen.values() for r in train.run_scenario(s, formats_)]
    said = train.findings(runs)
    if fmt == "json":
        _emit(jsonout.dumps(jsonout.train_document(runs, chosen, said)), output)
    else:
        _render(train_sections(runs, chosen, said), output, fmt)


@cli.command("report")
@click.option("-o", "--output", "folder", type=click.Path(file_okay=False), default="reports", show_default=True,
              help="Folder for the markdown report (README.md) and its figures/.")
@dtype_option()
@p_option
def report_command(folder, dtypes, p) -> None:
    """Write a markdown report with tables, figures and findings, all computed in the run."""
    from .report import build as report  # matplotlib is imported only for reports

    problem = atomic.check_folder(folder)
    if problem:  # checked before the build; nothing is created until every file is ready
        raise click.BadParameter(problem, param_hint="'-o' / '--output'")
    target = Path(folder)
    settings = _settings(p, False)
    console = Console(stderr=True)
    if console.is_terminal:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), console=console,
                      transient=True) as bar:
            task = bar.add_task("report", total=report.STEPS)
            files = report.build(_formats(dtypes), settings,
                                 lambda step: bar.update(task, advance=1, description=step))
    else:
        files = report.build(_formats(dtypes), settings)
    written = report.write(target, files)
    click.echo(f"wrote {len(written)} files to {target}/ (open {target / report.INDEX})")


# --------------------------------------------------------------- entry point
def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; every failure is one line on stderr and an ExitStatus, never a traceback.

    Standard output and error are guarded while it runs (see :mod:`stabilitylab.io.output`):
    a reader that goes away (``| head``) ends the output quietly; a closed or full
    stdout is an error.
    """
    with output.guarded_streams() as stdout:
        status = _run(argv)
        try:
            stdout.flush()
        except output.OutputError as exc:
            status = _fail(str(exc), ExitStatus.USAGE)
    return status


def _fail(message: str, status: ExitStatus) -> int:
    click.echo(f"stabilitylab: error: {message}", err=True)
    return int(status)


def _run(argv: Sequence[str] | None) -> int:
    try:
        rc = cli.main(args=list(argv) if argv is not None else None, prog_name="stabilitylab", standalone_mode=False)
    except click.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code if isinstance(exc, CheckExit) else ExitStatus.USAGE)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt, _Interrupted):
        click.echo("stabilitylab: interrupted", err=True)
        return ExitStatus.INTERRUPTED
    except output.OutputError as exc:
        return _fail(str(exc), ExitStatus.USAGE)
    except atomic.WriteError as exc:
        return _fail(f"could not write {exc.filename}: {exc.strerror}; nothing was written or replaced",
                     ExitStatus.USAGE)
    except OSError as exc:  # any other I/O failure: one line, not a traceback
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}", ExitStatus.USAGE)
    except InputError as exc:  # bad input found below a command's own checks (STABILITYLAB_WORKERS)
        return _fail(str(exc), ExitStatus.USAGE)
    except Exception as exc:  # a bug: never exit 1, which means "a threshold regressed"
        if os.environ.get("STABILITYLAB_DEBUG"):
            raise
        first = (str(exc).splitlines() or [""])[0]
        return _fail(f"internal error: {type(exc).__name__}: {first} (a bug in stabilitylab; "
                     "STABILITYLAB_DEBUG=1 shows the traceback)", ExitStatus.INTERNAL)
    return rc if isinstance(rc, int) else ExitStatus.OK


def run() -> None:
    """Console-script entry point (kept for compatibility; see stabilitylab.__main__.run)."""
    sys.exit(main())
