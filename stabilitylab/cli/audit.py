"""``stabilitylab audit``: options -> :func:`stabilitylab.api.audit` -> tables or JSON, tests, baseline."""

from __future__ import annotations

import click
from rich.console import Console

from ..io import atomic, schemas
from ..render import jsonout
from ..render.model import Cell, Section, Table
from .base import (
    call_api,
    check_output,
    check_tolerance,
    chosen_formats,
    cli,
    dtype_option,
    emit,
    format_option,
    given,
    ignore_index_option,
    key_option,
    labels_key_option,
    output_option,
    refuse_given,
    render,
    tolerance_option,
)


@cli.command("audit")
@click.argument("target", required=False)
@click.option("--list", "list_targets", is_flag=True, help="List the built-in targets, installed or not, and exit.")
@click.option("-e", "--experiment", type=click.Choice(("softmax_ce", "binary_ce", "linear_ce", "cast")), default=None,
              help="The protocol of a user function: softmax_ce f(logits (rows, K), labels (rows,) int64) -> (rows,); "
                   "binary_ce f(logits (rows, K), labels (rows, K)) -> (rows,) summed over K; linear_ce "
                   "f(hidden (N, D), weight (V, D), labels (N,) int64) -> (N,); cast f(x (rows,) float32, format "
                   "name) -> x stored in the format (rows,). Adapters know theirs.")
@dtype_option("float16, bfloat16, float32, float64, as the target supports them")
@click.option("--logits", type=click.Path(), default=None,
              help="Logits file (.npy, .npz, .safetensors, .pt, .csv, .txt), shape (rows, K) or (..., K): its rows "
                   "replace the default cases and the bug-report corpus. softmax_ce: any size (read in chunks); "
                   "binary_ce and --grad: at most 10**6 values, in memory.")
@key_option
@click.option("--labels", type=click.Path(), default=None,
              help="Labels file: softmax_ce one integer per row (default: the logits file's 'labels' tensor, else "
                   "argmax); binary_ce 0/1, shape (rows, K).")
@labels_key_option
@ignore_index_option
@click.option("--family", "families", multiple=True,
              help="Threshold family to search (repeatable), e.g. confident. Default: every family of the experiment.")
@click.option("--no-thresholds", is_flag=True, help="Run the cases only, no threshold search.")
@click.option("--grad", is_flag=True,
              help="Audit the gradient with respect to the logits (torch, jax and optax targets) against the exact "
                   "softmax(x) - onehot(y) / sigmoid(z) - y; linear_ce targets (also a user function returning "
                   "(d/d hidden, d/d weight)): dL/dW of the mean loss at one entry per problem, and every entry of "
                   "both gradients on the small problems.")
@tolerance_option
@click.option("--timeout", type=float, default=None, metavar="SECONDS",
              help="Stop each call of the target (and the import of your module) after SECONDS: that call's rows "
                   "become error rows (a timed-out import or first call: one line, exit 2). Default: no limit.")
@format_option
@output_option
@click.option("--emit-pytest", "emit_pytest", type=click.Path(dir_okay=False), default=None,
              help="Write a standalone pytest module (atomically) with one test per witness: the target's status "
                   "there must stay no worse than now.")
@click.option("--save-baseline", "save_baseline", type=click.Path(dir_okay=False), default=None,
              help="Add this audit's thresholds to a baseline file (created if missing, other entries kept), "
                   "for stabilitylab check.")
@click.pass_context
def audit_command(ctx, target, list_targets, experiment, dtypes, logits, key, labels, labels_key, ignore_index,
                  families, no_thresholds, grad, tolerance, timeout, fmt, output, emit_pytest, save_baseline) -> None:
    """Audit real loss code: a framework kernel (LIBRARY.NAME) or your function (module:function,
    path/to/file.py:function) in every format, against exact references."""
    from .. import api
    from ..errors import AuditError, BaselineError

    _refuse_options_that_do_nothing(ctx, list_targets, logits, no_thresholds)

    check_output(output)
    check_output(emit_pytest, "'--emit-pytest'")
    check_output(save_baseline, "'--save-baseline'")
    check_tolerance(tolerance)
    if list_targets:
        if target:
            raise click.BadParameter("--list takes no target", param_hint="'--list'")
        _list_targets(api.adapters_table(), fmt, output)
        return
    if not target:
        raise click.BadParameter("give a target: LIBRARY.NAME (see --list), module:function or "
                                 "path/to/file.py:function", param_hint="'TARGET'")
    for used, option in ((labels, "--labels"), (key, "--key"), (labels_key, "--labels-key"),
                         (given(ctx, "ignore_index"), "--ignore-index")):
        if used and not logits:
            raise click.BadParameter(f"{option} needs --logits", param_hint=f"'{option}'")
    from ..auditing.adapters import ADAPTERS
    if emit_pytest and (experiment == "cast" or getattr(ADAPTERS.get(target), "experiment", None) == "cast"):
        from ..auditing.emit import CAST_REFUSED
        raise click.BadParameter(CAST_REFUSED, param_hint="'--emit-pytest'")
    inputs = dict(logits=logits or None, labels=labels, key=key, labels_key=labels_key, ignore_index=ignore_index,
                  families=families or None, tolerance=tolerance, grad=grad, search=not no_thresholds, rows=False,
                  timeout=timeout)
    chosen = chosen_formats(dtypes) if dtypes else None
    console = Console(stderr=True)
    if console.is_terminal:
        from rich.progress import Progress, SpinnerColumn, TextColumn

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True) as bar:
            task = bar.add_task("audit")
            result = call_api(api.audit, target, experiment, chosen, **inputs,
                           progress=lambda step: bar.update(task, description=step))
    else:
        result = call_api(api.audit, target, experiment, chosen, **inputs)
    if emit_pytest:
        try:
            count = result.to_pytest(emit_pytest)
        except AuditError as exc:
            raise click.ClickException(str(exc)) from None
        atomic.after_commit(click.echo, f"wrote {count} tests to {emit_pytest}", err=True)
    if save_baseline:
        try:
            count = result.save_baseline(save_baseline)
        except (AuditError, BaselineError) as exc:
            raise click.ClickException(str(exc)) from None
        atomic.after_commit(click.echo, f"wrote {count} entries to {save_baseline}", err=True)
    if fmt == "json":
        emit(result.to_json(), output)
    else:
        render(result.sections(full=output is not None), output, fmt)


def _refuse_options_that_do_nothing(ctx: click.Context, list_targets: bool, logits, no_thresholds: bool) -> None:
    """Exit 2, naming the option, rather than run without it: with --list only --format and -o apply;
    --no-thresholds leaves --family nothing to choose and --save-baseline nothing to save."""
    if list_targets:
        refuse_given(ctx, [p.name for p in ctx.command.params
                           if p.name not in ("list_targets", "target", "fmt", "output", "force")],
                     "does nothing with --list (it lists the built-in targets; only --format and -o apply)")
    if no_thresholds:
        refuse_given(ctx, ["save_baseline"], "with --no-thresholds would write an empty baseline (a baseline holds "
                                             "the thresholds that --no-thresholds does not search)")
        refuse_given(ctx, ["families"], "does nothing with --no-thresholds (it chooses the threshold families to "
                                        "search)")


def _list_targets(rows, fmt: str, output: str | None) -> None:
    if fmt == "json":
        emit(jsonout.dumps({"schema": schemas.TARGETS, "targets": rows}), output)
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
                  "user functions: module:function or path/to/file.py:function with -e "
                  "softmax_ce|binary_ce|linear_ce|cast")
    render([Section("Targets", tables=[table])], output, fmt)
