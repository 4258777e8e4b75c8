"""``stabilitylab check``: recompute a baseline's thresholds and compare (exit 1 on a regression)."""

from __future__ import annotations

from pathlib import Path

import click

from ..experiments import EXPERIMENTS
from ..experiments.base import Settings
from ..io import atomic, schemas
from ..numerics.formats import ALL_FORMATS, DEFAULT_FORMATS
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
@click.option("--all", "show_all", is_flag=True, help="List every compared metric, not only the differences.")
@click.option("--format", "fmt", type=click.Choice(("table", "markdown")), default="table", show_default=True,
              help="Rich table, or markdown (for a CI step summary).")
@click.option("--allow-target", "allow", multiple=True, metavar="PATTERN",
              help="Run the user targets (module:function, file.py:function) of audit entries matching this "
                   "fnmatch pattern (repeatable); without it a baseline never runs user code. Built-in adapters "
                   "always run.")
def check(baseline_path, update, ulps, dtypes, show_all, fmt, allow) -> None:
    """Recompute thresholds and compare them with a baseline (exit 1 on a regression)."""
    from ..guard import baseline

    if update:
        _update_baseline(baseline_path, dtypes, allow)
        return
    try:
        doc = baseline.load(baseline_path)
    except baseline.BaselineError as exc:
        raise CheckExit(str(exc), ExitStatus.INCOMPARABLE if exc.missing else ExitStatus.USAGE) from None
    settings, tolerance = baseline.settings_of(doc)
    named = {key.split("/")[-1] for key in doc["entries"]}
    formats_ = (chosen_formats(dtypes) if dtypes
                else tuple(f for f in ALL_FORMATS if f.name in named) or DEFAULT_FORMATS)
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
        console = console_for(None)
        if table.rows:
            print_table(console, table)
        console.print(summary)
    if regressions:
        raise click.exceptions.Exit(ExitStatus.REGRESSION)
    if missing or unknown:
        raise click.exceptions.Exit(ExitStatus.INCOMPARABLE)


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


def _update_baseline(path: str, dtypes, allow=()) -> None:
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
    rows = [] if audit_only else run_thresholds(list(EXPERIMENTS.values()), chosen_formats(dtypes), settings, tolerance)
    audit_rows, problems = _audit_rows(previous, tolerance, chosen_formats(dtypes), path, allow)
    for key, why in sorted(problems.items()):
        click.echo(f"stabilitylab: warning: kept {key} as it was: {why}", err=True)
    rows += audit_rows
    doc = baseline.document(rows, settings, tolerance, previous)
    baseline.write(path, doc)
    kept = len(doc["entries"]) - len(rows)
    atomic.after_commit(click.echo, f"wrote {len(rows)} recomputed entries to {path}" + (
        f"; kept {kept} others" if kept else ""))
