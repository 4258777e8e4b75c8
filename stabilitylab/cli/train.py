"""``stabilitylab train``: options -> :func:`stabilitylab.api.train` -> tables or JSON."""

from __future__ import annotations

import click

from .base import (
    call_api,
    check_output,
    chosen_formats,
    cli,
    dtype_option,
    emit,
    format_option,
    output_option,
    render,
)


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
    from .. import api

    check_output(output)
    result = call_api(api.train, list(scenarios) or None, chosen_formats(dtypes), steps=steps, lr=lr, seed=seed)
    if fmt == "json":
        emit(result.to_json(), output)
    else:
        render(result.sections(), output, fmt)
