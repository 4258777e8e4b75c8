"""``stabilitylab trace``: options -> :func:`stabilitylab.api.trace` (the same run) -> first events, per-module
tables, JSON, markdown, a replay test."""

from __future__ import annotations

import click

from .base import (
    call_api,
    check_output,
    cli,
    dtype_option,
    emit,
    force_option,
    refuse_unsafe_outputs,
    render,
)


@cli.command("trace")
@click.argument("target", required=False)
@dtype_option("bfloat16")
@click.option("--model", "model_file", type=click.Path(), default=None,
              help="An exported program (torch.export.save), with --inputs, instead of TARGET.")
@click.option("--inputs", "inputs_file", type=click.Path(), default=None,
              help="The batch for --model: a tensor, list or dict of tensors (read with weights_only=True).")
@click.option("--rows", type=int, default=None, metavar="K",
              help="Trace only the first K entries of the batch's first dimension (faster, less memory).")
@click.option("--backward/--no-backward", default=True, show_default=True,
              help="Run the backward pass when the step returns a scalar loss.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the trace as JSON (schema stabilitylab.trace/1) to this file ('-': standard output).")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False), default=None,
              help="Write the first events and per-module tables as markdown (a report section; '-': standard "
                   "output).")
@click.option("--emit-pytest", "emit_dir", type=click.Path(file_okay=False), default=None,
              help="Write a test replaying the first op that lost a value by its own fault (and its inputs) "
                   "into this folder: it fails until the op is rewritten (none: a note, exit 0).")
@click.option("--figure", "figure_path", type=click.Path(dir_okay=False), default=None,
              help="Draw a PNG heat map: modules x ops, worst error bits, one panel per format.")
@click.option("--headroom", is_flag=True, default=False,
              help="No shadow: one float32 forward with a hook on every module, each output's amax against each "
                   "format's range (margin in binades), the share below normal / flushed to 0 and, for block "
                   "formats, flushed by the block scale (schema stabilitylab.headroom/1). Default -d: fp16, bf16, "
                   "e4m3, e5m2, mxfp8, mxfp4, nvfp4.")
@force_option
@click.pass_context
def trace_command(ctx, target, dtypes, model_file, inputs_file, rows, backward, json_path, markdown_path,
                  emit_dir, figure_path, headroom) -> None:
    """Run one step of a PyTorch model (TARGET = path/to/file.py:build or module:build returning (model, batch)
    or (model, inputs, loss_fn)) in each format with a float64 shadow: name the first op that loses a value,
    forward and backward, why, by how many bits, and the rewrite that fixes it (exit 0 either way, as compare:
    exit 1 means a regression against a baseline, which only check reports)."""
    from .. import api

    if (model_file is None) != (inputs_file is None):
        raise click.BadParameter("--model and --inputs go together", param_hint="'--model' / '--inputs'")
    if model_file is not None and target:
        raise click.BadParameter("give TARGET or --model/--inputs, not both", param_hint="'TARGET'")
    if model_file is None and not target:
        raise click.BadParameter("give a target: path/to/file.py:build, module:build, or --model/--inputs",
                                 param_hint="'TARGET'")
    if rows is not None and rows < 1:
        raise click.BadParameter(f"must be >= 1, not {rows}", param_hint="'--rows'")
    if json_path == "-" and markdown_path == "-":
        raise click.BadParameter("only one of --json and --markdown can go to standard output ('-')",
                                 param_hint="'--json' / '--markdown'")
    refuse_unsafe_outputs()  # every output, the --emit-pytest folder's files too: before any work
    if json_path not in (None, "-"):
        check_output(json_path, "'--json'")
    if markdown_path != "-":
        check_output(markdown_path, "'--markdown'")
    check_output(figure_path, "'--figure'")
    if emit_dir:
        _check_emit_folder(ctx, emit_dir)
    formats = tuple(dtypes) if dtypes else None  # one tuple per -d: formats_of leaves float64 out of a group
    if headroom:
        if emit_dir or figure_path:
            raise click.BadParameter("--emit-pytest and --figure show a trace: not with --headroom",
                                     param_hint="'--emit-pytest' / '--figure'")
        room = call_api(api.headroom, target, formats, rows=rows, model_file=model_file, inputs_file=inputs_file)
        if json_path is not None:
            from ..render.jsonout import dumps

            emit(dumps(room.to_json()), _path(json_path))
        if markdown_path is not None:
            emit(room.to_markdown(), _path(markdown_path), "markdown")
        if "-" not in (json_path, markdown_path):
            render(room.sections(), None, "table")
        return
    result = call_api(api.trace, target, formats or "bfloat16", rows=rows, backward=backward,
                      model_file=model_file, inputs_file=inputs_file)
    if json_path is not None:
        emit(result.to_json(), _path(json_path))
    if markdown_path is not None:
        emit(result.to_markdown(), _path(markdown_path), "markdown")
    if figure_path is not None:
        from ..io import atomic
        from ..tracing.figure import heatmap

        try:
            png = heatmap(result.to_dict())
        except ValueError:
            click.echo("no figure: no op was traced", err=True)
        else:
            atomic.write_bytes(figure_path, png)
    if emit_dir:  # last: a clean trace writes every other output, then says there is nothing to replay
        from ..tracing.emit import emit_pytest, replay_of

        if replay_of(result) is None:
            click.echo("no replay test written: no op lost a value by its own fault (nothing to replay)", err=True)
        else:
            click.echo(f"wrote {call_api(emit_pytest, result, emit_dir)}", err=True)
    if "-" not in (json_path, markdown_path):
        render(result.sections(), None, "table")


def _path(option: str) -> str | None:
    """An output option's file, None for '-' (standard output)."""
    return None if option == "-" else option


def _check_emit_folder(ctx, folder: str) -> None:
    """``--emit-pytest DIR`` writes DIR/test_trace_replay.py and DIR/trace_replay_inputs.pt: refuse (exit 2, before
    any work) a test file stabilitylab did not write, or an inputs file beside one (unless --force), a file that is
    an input or another output, and a DIR that is a file."""
    import os

    from ..errors import OutputRefused
    from ..io import atomic, markers, plan
    from ..tracing.emit import INPUTS_NAME, TEST_NAME

    if os.path.exists(folder) and not os.path.isdir(folder):
        raise click.BadParameter(f"{folder} exists and is not a folder", param_hint="'--emit-pytest'")
    force = bool(ctx.meta.get("stabilitylab.force"))
    test, data = os.path.join(folder, TEST_NAME), os.path.join(folder, INPUTS_NAME)
    others = [atomic.Output(o.option, o.path) for o in plan.outputs_of(ctx.params)]
    atomic.check_outputs([*others, atomic.Output("--emit-pytest", test), atomic.Output("--emit-pytest", data,
                                                                                          "validated")],
                         plan.inputs_of(ctx.params), force=force)
    if os.path.lexists(data) and not force and not (os.path.isfile(test) and markers.written_by_stabilitylab(test)):
        raise OutputRefused(f"--emit-pytest {data} exists and no {TEST_NAME} written by stabilitylab is beside it; "
                            "choose another folder or pass --force")
