"""``stabilitylab thresholds``: options -> :func:`stabilitylab.api.thresholds` -> tables or JSON."""

from __future__ import annotations

from .base import (
    call_api,
    check_output,
    check_tolerance,
    chosen_formats,
    cli,
    dtype_option,
    emit,
    experiment_option,
    family_option,
    format_option,
    ftz_option,
    output_option,
    p_option,
    render,
    settings_of,
    tolerance_option,
)


@cli.command("thresholds")
@experiment_option
@family_option
@dtype_option()
@p_option
@ftz_option
@tolerance_option
@format_option
@output_option
def thresholds_command(experiments, families, dtypes, p, ftz, tolerance, fmt, output) -> None:
    """Find the exact input at which each formulation first fails, beside the analytic prediction."""
    from .. import api

    check_output(output)
    check_tolerance(tolerance)
    settings = settings_of(p, ftz)
    result = call_api(api.thresholds, list(experiments) or None, chosen_formats(dtypes),
                      families=list(families) or None, p=settings.p, ftz=ftz, tolerance=tolerance)
    if fmt == "json":
        emit(result.to_json(), output)
    else:
        render(result.sections(), output, fmt)
