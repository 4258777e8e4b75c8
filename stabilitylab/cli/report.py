"""``stabilitylab report``: the markdown report with figures."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from ..io import atomic
from .base import (
    chosen_formats,
    cli,
    dtype_option,
    force_option,
    p_option,
    refuse_unsafe_outputs,
    settings_of,
)


@cli.command("report")
@click.option("-o", "--output", "folder", type=click.Path(file_okay=False), default="reports", show_default=True,
              help="Folder for the markdown report (README.md) and its figures/.")
@force_option
@dtype_option()
@p_option
def report_command(folder, dtypes, p) -> None:
    """Write a markdown report with tables, figures and findings, all computed in the run."""
    from ..report import build as report  # matplotlib is imported only for reports

    problem = atomic.check_folder(folder)
    if problem:  # checked before the build; nothing is created until every file is ready
        raise click.BadParameter(problem, param_hint="'-o' / '--output'")
    refuse_unsafe_outputs()
    target = Path(folder)
    settings = settings_of(p, False)
    console = Console(stderr=True)
    if console.is_terminal:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), console=console,
                      transient=True) as bar:
            task = bar.add_task("report", total=report.STEPS)
            files = report.build(chosen_formats(dtypes), settings,
                                 lambda step: bar.update(task, advance=1, description=step))
    else:
        files = report.build(chosen_formats(dtypes), settings)
    written = report.write(target, files)
    atomic.after_commit(click.echo, f"wrote {len(written)} files to {target}/ (open {target / report.INDEX})")
