"""``stabilitylab compare``: options -> :func:`stabilitylab.api.compare` -> tables, markdown, JSON or JSON Lines."""

from __future__ import annotations

import sys

import click

from ..io import atomic
from ..render import jsonout
from .base import (
    MAX_N,
    call_api,
    check_output,
    check_tolerance,
    chosen_experiments,
    chosen_formats,
    cli,
    dtype_option,
    emit,
    experiment_option,
    format_option,
    ftz_option,
    given,
    ignore_index_option,
    key_option,
    labels_key_option,
    output_option,
    p_option,
    render,
    settings_of,
    tolerance_option,
)


@cli.command()
@experiment_option
@dtype_option()
@p_option
@click.option("--n", "n", type=int, default=None,
              help="likelihood: custom case of n >= 1 samples (default 100 with --p); replaces the default cases.")
@click.option("--logits", type=click.Path(), default=None,
              help="softmax_ce: logits file (.npy, .npz, .safetensors, .pt, .csv, .txt) of shape (rows, classes) or "
                   "(..., classes), any size (read in chunks). Alone, it runs softmax_ce only.")
@key_option
@click.option("--labels", type=click.Path(), default=None,
              help="softmax_ce: labels file, one integer per row (default: the logits file's 'labels' tensor, else "
                   "each row's argmax).")
@labels_key_option
@ignore_index_option
@click.option("--reduction", type=click.Choice(("none", "sum", "mean")), default=None,
              help="softmax_ce_variants, linear_ce: reduce each case's rows to one loss (none: one row per case; "
                   "mean divides by the count of rows not ignored, held in the format; left out: none for "
                   "softmax_ce_variants, mean for linear_ce). Any of these options (and --ignore-index without "
                   "--logits, with another of them or with -e linear_ce / softmax_ce_variants) runs the cases' "
                   "inputs of softmax_ce_variants and of linear_ce (with -e linear_ce) under the options given; "
                   "alone, they run softmax_ce_variants only.")
@click.option("--label-smoothing", type=float, default=None,
              help="softmax_ce_variants, linear_ce: eps in [0, 1]: (1 - eps) * nll + eps / K * sum_i -log p_i "
                   "(PyTorch's).")
@click.option("--z-loss", type=float, default=None,
              help="softmax_ce_variants, linear_ce: coefficient z >= 0 of z * logsumexp(x)**2 added per row (PaLM).")
@click.option("--softcap", type=float, default=None,
              help="softmax_ce_variants, linear_ce: c > 0: logits become c * tanh(x / c) (Gemma 2); 0 and "
                   "non-finite c are refused.")
@click.option("--temperature", type=float, default=None,
              help="softmax_ce_variants, linear_ce: tau > 0: logits are divided by tau (after the softcap).")
@click.option("--problem", type=click.Path(), default=None,
              help="linear_ce: a real-size problem, a folder with hidden.npy (N, D), weight.npy (V, D), labels.npy "
                   "(N,) or a .safetensors file with those tensors: every loss and gradient entry by the fused "
                   "dot-product model, summarized per row (default -d bf16 -d bf16@fp32).")
@click.option("--chunks", type=int, default=None,
              help="With --problem: token chunks K of the chunked weight-gradient methods (default 8).")
@click.option("--vocab-chunk", "vocab_chunk", type=int, default=None,
              help="With --problem: columns per block of the online log-sum-exp (default 4096).")
@click.option("--rows", "rows_mode", type=click.Choice(("summary", "all")), default="summary", show_default=True,
              help="With --logits: a summary (counts, error-bits histogram, worst and failing rows), or every row as "
                   "JSON Lines (streamed; the summary is the last line).")
@tolerance_option
@ftz_option
@format_option
@output_option
@click.pass_context
def compare(ctx, experiments, dtypes, p, n, logits, key, labels, labels_key, ignore_index, reduction, label_smoothing,
            z_loss, softcap, temperature, problem, chunks, vocab_chunk, rows_mode, tolerance, ftz, fmt, output) -> None:
    """Run naive and stable formulations side by side in several formats."""
    from .. import api

    check_output(output)
    variant = [name for name in ("reduction", "label_smoothing", "z_loss", "softcap", "temperature")
               if given(ctx, name)]
    for used, option in ((chunks is not None, "--chunks"), (vocab_chunk is not None, "--vocab-chunk")):
        if used and not problem:
            raise click.BadParameter(f"{option} needs --problem", param_hint=f"'{option}'")
    if problem:
        others = [o for used, o in ((logits, "--logits"), (given(ctx, "rows_mode"), "--rows"), (p is not None, "--p"),
                                    (n is not None, "--n"), (labels, "--labels"), (key, "--key"),
                                    (labels_key, "--labels-key"), (given(ctx, "ignore_index"), "--ignore-index"),
                                    *((True, "--" + v.replace("_", "-")) for v in variant)) if used]
        if others:
            raise click.BadParameter(f"{others[0]} does not apply to --problem", param_hint="'--problem'")
        check_tolerance(tolerance)
        result = call_api(api.compare, experiments=list(experiments) or None,
                          dtypes=chosen_formats(dtypes) if dtypes else None, problem=problem, chunks=chunks,
                          vocab_chunk=vocab_chunk, tolerance=tolerance, ftz=ftz)
        if fmt == "json":
            emit(result.to_json(), output)
        else:
            render(result.sections(full=output is not None), output, fmt)
        return
    takers = {"softmax_ce_variants", "linear_ce"}
    if given(ctx, "ignore_index") and not logits and (variant or takers & set(experiments or ())):
        variant.append("ignore_index")  # without --logits, with another loss option or -e naming a taker
    if variant and logits:
        raise click.BadParameter("the loss options set softmax_ce_variants cases; --logits sets softmax_ce's",
                                 param_hint=f"'--{variant[0].replace('_', '-')}'")
    options = None
    if variant:
        from ..experiments.loss_options import LossOptions

        options = LossOptions(reduction, ignore_index if given(ctx, "ignore_index") else None,
                              label_smoothing or 0.0, 0.0 if z_loss is None else z_loss, softcap,
                              1.0 if temperature is None else temperature)
        experiments = experiments or ("softmax_ce_variants",)
    settings_of(p, ftz)
    if n is not None and not 1 <= n <= MAX_N:
        raise click.BadParameter(f"n = {n}; n must be an integer from 1 to 2**63 - 1", param_hint="'--n'")
    check_tolerance(tolerance)
    for used, option in ((labels, "--labels"), (key, "--key"), (labels_key, "--labels-key"),
                         (given(ctx, "ignore_index") and not variant, "--ignore-index"),
                         (given(ctx, "rows_mode"), "--rows")):
        if used and not logits:
            raise click.BadParameter(f"{option} needs --logits", param_hint=f"'{option}'")
    names = {e.name for e in chosen_experiments(experiments or (("softmax_ce",) if logits else ()))}
    for used, option, needs in ((p is not None or n is not None, "--p / --n", ("likelihood",)),
                                (bool(logits), "--logits", ("softmax_ce",)),
                                (bool(variant), "--" + (variant or ["x"])[0].replace("_", "-"),
                                 ("softmax_ce_variants", "linear_ce"))):
        if used and not names & set(needs):
            raise click.BadParameter(f"{option} sets {' or '.join(needs)} cases, but "
                                     f"{'neither' if len(needs) > 1 else needs[0]} is among the experiments chosen "
                                     "with -e", param_hint=f"'{option}'")
    if rows_mode == "all" and names != {"softmax_ce"}:
        raise click.BadParameter("--rows all writes the rows of softmax_ce on your logits only; choose -e softmax_ce "
                                 "alone", param_hint="'--rows'")
    if rows_mode == "all" and ctx.get_parameter_source("fmt") != click.core.ParameterSource.DEFAULT and fmt != "json":
        raise click.BadParameter("--rows all writes JSON Lines; leave out --format or use --format json",
                                 param_hint="'--format'")
    inputs = dict(experiments=list(experiments) or None, dtypes=chosen_formats(dtypes) if dtypes else None,
                  logits=logits or None, labels=labels, key=key, labels_key=labels_key, ignore_index=ignore_index,
                  p=p, n=n, tolerance=tolerance, ftz=ftz, loss_options=options)
    if rows_mode == "all":
        _stream_rows(inputs, output)
        return
    result = call_api(api.compare, **inputs, rows=False)
    if fmt == "json":
        emit(result.to_json(), output)
    else:
        render(result.sections(full=output is not None), output, fmt)




def _stream_rows(inputs: dict, output: str | None) -> None:
    """Every row as JSON Lines, chunk by chunk (atomically into -o), then the summary line."""
    from .. import api
    from ..render import bulk as bulk_render

    def run(stream) -> None:
        result = call_api(api.compare, **inputs, rows=False,
                       on_rows=lambda columns: stream.write(bulk_render.jsonl_lines(columns)))
        stream.write(jsonout.dumps_line({"summary": result.bulk_document()}))

    if output is None:
        run(sys.stdout)
    else:
        with atomic.streamed_text(output) as stream:
            run(stream)
