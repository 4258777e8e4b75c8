"""``stabilitylab check``: recompute a baseline's thresholds and compare (exit 1 on a regression)."""

from __future__ import annotations

import shlex
from pathlib import Path

import click
from click.core import ParameterSource

from ..experiments import EXPERIMENTS
from ..experiments.base import Settings
from ..io import atomic, schemas
from ..numerics.formats import DEFAULT_FORMATS, FORMATS
from ..render.markdown import table_md
from ..render.model import check_table
from ..render.table import print_table
from ..status import ExitStatus
from .base import (
    CheckExit,
    check_output,
    chosen_formats,
    cli,
    console_for,
    dtype_option,
)


def run_thresholds(*args, **kwargs):
    """:func:`stabilitylab.analysis.thresholds.thresholds`, imported when a command needs it (not by compare)."""
    from ..analysis.thresholds import thresholds

    return thresholds(*args, **kwargs)


@cli.command()
@click.option("--baseline", "baseline_path", type=click.Path(dir_okay=False), required=True,
              help=f"Baseline JSON file (schema {schemas.BASELINE}).")
@click.option("--update", is_flag=True,
              help="Recompute and write the baseline (atomically); its settings and the entries outside the "
                   "selection are kept. A file that is not a valid baseline is refused, not overwritten.")
@click.option("--ulps", type=click.IntRange(min=0, max=2**53), default=0, show_default=True,
              help="Float thresholds may move by this many ulps of their format; integers must match exactly.")
@dtype_option("the formats in the baseline; with --update float16, bfloat16, float32, float64")
@click.option("-e", "--experiment", "experiments", type=click.Choice(list(EXPERIMENTS)), multiple=True,
              help="Experiment to recompute (repeatable). Default: the default experiments and those the baseline "
                   "names (linear_ce runs only when named here or in the baseline).")
@click.option("--all", "show_all", is_flag=True, help="List every compared metric, not only the differences.")
@click.option("--format", "fmt", type=click.Choice(("table", "markdown")), default="table", show_default=True,
              help="Rich table, or markdown (for a CI step summary).")
@click.option("--allow-target", "allow", multiple=True, metavar="PATTERN",
              help="Run the user targets (module:function, file.py:function) of audit entries matching this "
                   "fnmatch pattern (repeatable); without it a baseline never runs user code. Built-in adapters "
                   "always run.")
@click.option("--strict", is_flag=True,
              help="Any change fails (exit 1), an improvement too (a threshold that moved to larger inputs, or "
                   "never fails now); without it an improvement passes with a note saying how to record it.")
@click.pass_context
def check(ctx, baseline_path, update, ulps, dtypes, experiments, show_all, fmt, allow, strict) -> None:
    """Recompute thresholds and compare them with a baseline (exit 1 on a regression; an improvement passes
    with a note, or fails with --strict)."""
    from ..guard import baseline

    if update:
        _refuse_with_update(ctx)
        _update_baseline(baseline_path, dtypes, allow, experiments)
        return
    try:
        doc = baseline.load(baseline_path)
    except baseline.BaselineError as exc:
        raise CheckExit(str(exc), ExitStatus.INCOMPARABLE if exc.missing else ExitStatus.USAGE) from None
    settings, tolerance = baseline.settings_of(doc)
    named = {key.split("/")[-1] for key in doc["entries"]}
    policies = tuple(f for f in map(baseline.entry_format, sorted(named)) if f is not None and f.is_policy)
    formats_ = (chosen_formats(dtypes) if dtypes
                else tuple(f for f in FORMATS.values() if f.name in named) + policies or DEFAULT_FORMATS)
    simulated = [key for key in doc["entries"] if baseline.audit_key(key) is None]
    # a baseline of audit entries only (a user's CI guarding a framework kernel) does not ask for the simulations
    recompute = simulated or experiments or not doc["entries"]
    rows = run_thresholds(_experiments_of(simulated, experiments), formats_, settings, tolerance) if recompute else []
    audit_rows, problems = _audit_rows(doc["entries"], tolerance, formats_, baseline_path, allow)
    for key, why in sorted(problems.items()):
        click.echo(f"stabilitylab: warning: {key}: {why}", err=True)
    result = baseline.compare(doc, rows + audit_rows, ulps, problems)
    for warning in result.warnings:
        click.echo(f"stabilitylab: warning: {warning}", err=True)
    regressions, missing, unknown = result.count(baseline.REGRESSION), result.count("+"), result.count("x")
    improved = result.improved()
    summary = (f"{result.compared} entries compared: {regressions} regressed, {len(improved)} improved, "
               f"{missing} not in baseline, {unknown} not comparable")
    notes = _improvement_notes(result, improved, baseline_path, strict)
    table = check_table(result, show_all)
    if fmt == "markdown":
        click.echo((table_md(table) + "\n" if table.rows else "") + summary
                   + ("\n\n" + "\n".join(f"* {note}" for note in notes) if notes else ""))
    else:
        console = console_for(None)
        if table.rows:
            print_table(console, table)
        console.print(summary, highlight=False)
        for note in notes:
            console.print(note, markup=False, highlight=False, soft_wrap=True)  # one line: copyable
    if regressions or (strict and improved):
        raise click.exceptions.Exit(ExitStatus.REGRESSION)
    if missing or unknown:
        raise click.exceptions.Exit(ExitStatus.INCOMPARABLE)


def _refuse_with_update(ctx: click.Context) -> None:
    """--update writes the baseline and compares nothing: the options of a comparison do nothing with it."""
    for name, option, why in (("show_all", "--all", "it lists the compared metrics"),
                              ("ulps", "--ulps", "it is the tolerance of a comparison"),
                              ("strict", "--strict", "it decides the exit status of a comparison"),
                              ("fmt", "--format", "it formats the comparison table")):
        if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT):
            raise click.BadParameter(f"{option} does nothing with --update ({why}; --update compares nothing, it "
                                     f"rewrites the baseline); leave out {option}", param_hint=f"'{option}'")


def _improvement_notes(result, improved: list[str], path: str, strict: bool) -> list[str]:
    """One note per improved entry, then the exact command that records them in the baseline."""
    if not improved:
        return []
    notes = []
    for entry in improved:
        moved = [f"{r.metric} {_text(r.baseline)} -> {_text(r.current)}" for r in result.rows
                 if r.entry == entry and r.mark == "↑"]
        notes.append(f"note: {entry} improved ({', '.join(moved)})")
    formats_ = dict.fromkeys(entry.rsplit("/", 1)[-1] for entry in improved)
    command = " ".join(["stabilitylab check --baseline", shlex.quote(path), "--update",
                        *(f"-d {name}" for name in formats_)])
    verdict = "--strict: exit 1" if strict else "not a regression: exit 0"
    one = len(improved) == 1
    notes.append(f"note: {len(improved)} {'entry' if one else 'entries'} improved ({verdict}); "
                 f"record {'it' if one else 'them'} with: {command}")
    return notes


def _text(value) -> str:
    return "never" if value is None else str(value)


def _audit_rows(entries, tolerance, formats_, path, allow):
    """Recompute the audit entries of a baseline (only if it has any: no framework is imported otherwise);
    user targets run only where ``allow`` (or the baseline's pyproject.toml) opts in."""
    from ..guard import baseline

    if not any(baseline.audit_key(key) for key in entries):
        return [], {}
    rows, problems, notes = baseline.audit_rows(path, entries, tolerance, {f.name for f in formats_}, allow)
    for note in notes:
        click.echo(f"stabilitylab: note: {note}", err=True)
    return rows, problems


def _update_baseline(path: str, dtypes, allow=(), experiments=()) -> None:
    """Recompute the selected formats; keep the file's settings and every other entry.

    An existing file must be a valid baseline: rewriting anything else would lose
    it (a typo'd path) or drop the entries that could not be read.
    """
    from ..guard import baseline

    check_output(path, "'--baseline'")
    atomic.lock(path)  # until the new baseline is renamed into place: a concurrent --update waits, then merges
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
    rows = [] if audit_only and not experiments else run_thresholds(_experiments_of(previous, experiments),
                                                                    chosen_formats(dtypes), settings, tolerance)
    audit_rows, problems = _audit_rows(previous, tolerance, chosen_formats(dtypes), path, allow)
    for key, why in sorted(problems.items()):
        click.echo(f"stabilitylab: warning: kept {key} as it was: {why}", err=True)
    rows += audit_rows
    doc = baseline.document(rows, settings, tolerance, previous)
    baseline.write(path, doc)
    kept = len(doc["entries"]) - len(rows)
    atomic.after_commit(click.echo, f"wrote {len(rows)} recomputed entries to {path}" + (
        f"; kept {kept} others" if kept else ""))


def _experiments_of(keys, chosen=()) -> list:
    """The experiments ``-e`` names (``chosen``), else those a baseline's simulated entries name
    (``experiment/family/method/dtype``) and the default ones (an empty or new baseline gets those; an
    experiment that is not run by default, linear_ce, is recomputed when the baseline holds its entries or
    ``-e`` names it)."""
    from ..guard import baseline

    if chosen:
        return [EXPERIMENTS[name] for name in dict.fromkeys(chosen)]

    named = {key.split("/")[0] for key in keys if baseline.audit_key(key) is None}
    return [e for e in EXPERIMENTS.values() if e.default or e.name in named]
