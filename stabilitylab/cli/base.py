"""What every command shares: the group, option declarations, validation helpers, rendering and writing."""

from __future__ import annotations

import io
from collections.abc import Sequence

import click
from rich.console import Console

from ..experiments import DEFAULT_EXPERIMENTS, EXPERIMENTS
from ..experiments.base import Settings
from ..io import atomic, markers, plan
from ..numerics.formats import DEFAULT_FORMATS, Format
from ..numerics.policies import chosen
from ..render.markdown import sections_md
from ..render.model import (
    Section,
)
from ..render.table import print_sections, stdout_console
from ..status import ExitStatus

__all__ = ["cli", "CheckExit", "Interrupted", "call_api", "check_output", "check_tolerance", "refuse_unsafe_outputs",
           "chosen_experiments", "chosen_formats", "console_for", "emit", "render", "settings_of", "dtype_option",
           "experiment_option", "family_option", "force_option", "format_option", "ftz_option", "output_option",
           "p_option", "tolerance_option", "key_option", "labels_key_option", "ignore_index_option",
           "FormatType", "OUTPUT_FORMATS", "MAX_N", "given", "refuse_given"]

OUTPUT_FORMATS = ("table", "markdown", "json")
MAX_N = 2**63 - 1


class FormatType(click.ParamType):
    """A format name or alias (fp16, half, bf16, single, double, e4m3, e4m3fn:sat, ...), 'all' or 'every';
    ``scales``: the unsigned scale formats (float8_e8m0fnu, float8_e5m3fnu) are accepted too."""

    name = "format"

    def __init__(self, scales: bool = False):
        self.scales = scales

    def convert(self, value, param, ctx) -> tuple[Format, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return chosen(str(value), scales=self.scales)
        except (KeyError, ValueError) as exc:
            self.fail(exc.args[0], param, ctx)


class CheckExit(click.ClickException):
    """A one-line error with its own exit status."""

    def __init__(self, message: str, status: ExitStatus):
        super().__init__(message)
        self.exit_code = int(status)


# ------------------------------------------------------------------ helpers
def chosen_formats(chosen: Sequence[tuple[Format, ...]]) -> tuple[Format, ...]:
    flat = [f for group in chosen for f in group] or list(DEFAULT_FORMATS)
    return tuple(dict.fromkeys(flat))


def chosen_experiments(names: Sequence[str]):
    return [EXPERIMENTS[name] for name in dict.fromkeys(names)] or list(DEFAULT_EXPERIMENTS)


def settings_of(p: float | None, ftz: bool) -> Settings:
    if p is not None and not (0 < p <= 1):
        raise click.BadParameter(f"p = {p} is outside (0, 1]", param_hint="'--p'")
    return Settings(p=0.1 if p is None else p, ftz=ftz)


def given(ctx: click.Context, name: str) -> bool:
    """Whether the parameter ``name`` was given on the command line (or by an environment variable), not left
    at its default: click passes a default and an explicit equal value alike."""
    source = ctx.get_parameter_source(name)
    return source is not None and source not in (click.core.ParameterSource.DEFAULT,
                                                 click.core.ParameterSource.DEFAULT_MAP)


def refuse_given(ctx: click.Context, names, why: str) -> None:
    """A usage error (exit 2, one line) naming the first of the parameters ``names`` that was given, followed by
    ``why`` (e.g. "does nothing with --list (...)")."""
    for name in names:
        if given(ctx, name):
            param = next(p for p in ctx.command.params if p.name == name)
            option = max(param.opts, key=len) if param.opts else name.upper()
            if not option.startswith("-"):
                option = name.upper()
            raise click.BadParameter(f"{option} {why}; leave it out", param_hint=f"'{option}'")


def check_tolerance(tolerance: float | None) -> None:
    if tolerance is not None and not (0 < tolerance < float("inf")):
        raise click.BadParameter(f"tolerance = {tolerance}; it must be a finite number > 0",
                                 param_hint="'--tolerance'")


def check_output(path: str | None, hint: str = "'-o' / '--output'") -> None:
    """Refuse a target that cannot be written (an empty name, a folder, a device, a pipe) before any work,
    and every output of the command that would lose a file (see :func:`refuse_unsafe_outputs`)."""
    if path is not None:
        refuse_unsafe_outputs()
        problem = atomic.check_writable(path)
        if problem:
            raise click.BadParameter(problem, param_hint=hint)


def refuse_unsafe_outputs() -> None:
    """Before any work: refuse the command's outputs that would replace a file stabilitylab did not write
    (unless --force), an input, another output or a read-only file (atomic.check_outputs; exit 2)."""
    ctx = click.get_current_context()
    if ctx.meta.get("stabilitylab.outputs_checked"):
        return
    ctx.meta["stabilitylab.outputs_checked"] = True
    plan.check_params(ctx.params, force=bool(ctx.meta.get("stabilitylab.force")))


def _print_version(ctx: click.Context, param, value: bool) -> None:
    """--version (click's version_option would read the package metadata at every start)."""
    if value and not ctx.resilient_parsing:
        from ..io.environment import package_version
        from ..numerics import kernel

        click.echo(f"stabilitylab, version {package_version()}\n{kernel.status()}", color=ctx.color)
        ctx.exit()


def console_for(path: str | None) -> Console:
    """The terminal; for -o, or a pipe without COLUMNS, a console 160 wide."""
    if path is not None:
        return Console(record=True, width=160, file=io.StringIO(), color_system=None)
    return stdout_console()  # COLUMNS of 0, < 0, text or > 10000: unset


def emit(text: str, path: str | None, kind: str = "json") -> None:
    """Write ``text`` to ``path`` atomically (with the marker of ``kind``: markdown, text; see io/markers.py),
    or to standard output (see output.py for how that fails)."""
    if path is not None:
        atomic.write_text(path, markers.marked(text, kind))
    else:
        click.echo(text, nl=False)


def render(sections: list[Section], path: str | None, fmt: str) -> None:
    if fmt == "markdown":
        emit(sections_md(sections), path, "markdown")
        return
    console = console_for(path)
    print_sections(console, sections)
    if path is not None:
        emit(console.export_text(), path, "text")


# ------------------------------------------------------------------ options
def _set_force(ctx: click.Context, param, value: bool) -> None:
    ctx.meta["stabilitylab.force"] = value


force_option = click.option("--force", is_flag=True, expose_value=False, is_eager=True, callback=_set_force,
                            help="Replace existing output files that stabilitylab did not write (never an input).")


def output_option(function):
    """-o / --output, and --force."""
    return click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
                        help="Write to this file (atomically) instead of standard output; an existing file is "
                             "replaced only if stabilitylab wrote it (or with --force).")(force_option(function))
format_option = click.option("--format", "fmt", type=click.Choice(OUTPUT_FORMATS), default="table",
                             show_default=True, help="Rich table, GitHub markdown, or JSON.")


def dtype_option(default: str = "float16, bfloat16, float32, float64", scales: bool = False):
    return click.option("-d", "--dtype", "dtypes", type=FormatType(scales), multiple=True,
                        help="Format (repeatable): float16/fp16/half, bfloat16/bf16, float32/fp32/single, "
                             "float64/fp64/double, float8_e4m3fn/e4m3, float8_e5m2/e5m2, any other ml_dtypes float "
                             "(float8_e4m3fnuz, float4_e2m1fn, ...; NAME:saturate for overflow to +-max), all (those "
                             "six) or every (all that experiments can use); a policy STORAGE[@COMPUTE][+ACCUMULATE] "
                             "(bf16@fp32); block-scaled storage mxfp8, mxfp8_e5m2, mxfp6, mxfp6_e3m2, mxfp4, nvfp4 "
                             f"(mxfp4@bf16 ...). Default: {default}.")


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
# user data (compare --logits, audit --logits): the same options, read by the same io.userdata.user_source
key_option = click.option("--key", default=None,
                          help="The logits tensor in a file holding several (default: 'logits', or the only one).")
labels_key_option = click.option("--labels-key", default=None,
                                 help="The labels tensor in --labels (or in the --logits file).")
ignore_index_option = click.option("--ignore-index", type=int, default=-100, show_default=True,
                                   help="Skip rows whose label is this value (PyTorch's padding label).")


class Interrupted(Exception):
    """Ctrl-C inside a command (click would print a blank line for a KeyboardInterrupt)."""


class _Group(click.Group):
    def invoke(self, ctx):
        from ..analysis.parallel import keep_freed_memory

        keep_freed_memory()  # (this process's own: the command line's; workers do it too)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted() from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and exit.")
def cli() -> None:
    """Show, measure and guard numerical (in)stability of ML loss computations."""


# ----------------------------------------------------------------- commands

def call_api(function, *args, **kwargs):
    """An API call; its InputError / AuditError becomes the one line of a usage error (exit 2)."""
    from ..errors import AuditError, InputError

    try:
        return function(*args, **kwargs)
    except InputError as exc:
        if exc.option is None or not exc.option.startswith("-"):  # (not an option: e.g. STABILITYLAB_WORKERS)
            raise click.ClickException(str(exc)) from None
        raise click.BadParameter(str(exc), param_hint=f"'{exc.option}'") from None
    except AuditError as exc:
        raise click.ClickException(str(exc)) from None
