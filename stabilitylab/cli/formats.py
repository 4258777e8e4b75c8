"""``stabilitylab formats``: each format's facts."""

from __future__ import annotations

from ..numerics.formats import ALL_FORMATS
from ..render import jsonout
from ..render.model import Section, formats_table
from .base import (
    check_output,
    chosen_formats,
    cli,
    dtype_option,
    emit,
    format_option,
    output_option,
    render,
)


@cli.command()
@dtype_option("all six formats")
@format_option
@output_option
def formats(dtypes, fmt, output) -> None:
    """Print each format's facts (from finfo): max, smallest normal/subnormal, eps, u, ln thresholds."""
    check_output(output)
    chosen = chosen_formats(dtypes) if dtypes else ALL_FORMATS
    if fmt == "json":
        emit(jsonout.dumps(jsonout.formats_document(chosen)), output)
    else:
        render([Section("Formats", tables=[formats_table(list(chosen))])], output, fmt)
