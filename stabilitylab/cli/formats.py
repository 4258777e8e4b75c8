"""``stabilitylab formats``: each format's facts."""

from __future__ import annotations

from ..numerics.formats import FORMATS
from ..render import jsonout
from ..render.model import Section, encodings_table, formats_table
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
@dtype_option("every format, the scale formats too", scales=True)
@format_option
@output_option
def formats(dtypes, fmt, output) -> None:
    """Print each format's facts (max, smallest normal/subnormal, eps, u, ln thresholds) and its encoding."""
    check_output(output)
    chosen = chosen_formats(dtypes) if dtypes else tuple(FORMATS.values())
    if fmt == "json":
        emit(jsonout.dumps(jsonout.formats_document(chosen)), output)
    else:
        render([Section("Formats", tables=[formats_table(list(chosen)), encodings_table(list(chosen))])], output, fmt)
