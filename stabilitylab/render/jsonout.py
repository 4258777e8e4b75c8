"""JSON documents: stable key order, non-finite numbers as the strings "inf", "-inf", "nan"."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from ..engine import Comparison
from ..environment import fingerprint, package_version
from ..findings import findings

__all__ = ["number", "dumps", "compare_document"]

COMPARE_SCHEMA = "stabilitylab.compare/1"


def number(x: float) -> float | str:
    """A float for JSON: finite as is (repr round-trips), else "inf" / "-inf" / "nan"."""
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def dumps(doc: Any) -> str:
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def compare_document(comparison: Comparison) -> dict:
    results = []
    for r in comparison.results:
        results.append({
            "experiment": r.experiment, "case": r.case, "method": r.method, "dtype": r.dtype,
            "value": number(r.value), "reference": number(r.reference), "exact": r.exact, "status": r.status,
            "rel_error": number(r.rel_error), "ulps": number(r.ulps), "error_bits": number(r.error_bits),
            "events": list(r.events),
        })
    return {
        "schema": COMPARE_SCHEMA,
        "version": package_version(),
        "environment": fingerprint(),
        "settings": {"tolerance": comparison.tolerance, "ftz": comparison.ftz,
                     "formats": [f.name for f in comparison.formats]},
        "results": results,
        "summary": [asdict(c) for c in comparison.summary],
        "findings": [{"experiment": e, "text": t} for e, t in findings(comparison)],
        "notes": list(comparison.notes),
    }


THRESHOLDS_SCHEMA = "stabilitylab.thresholds/1"


def _param(x):
    """Thresholds: integers stay integers, floats are exact (repr round-trips), None is null."""
    return x if x is None or isinstance(x, int) else number(x)


def thresholds_document(rows, settings, tolerance) -> dict:
    return {
        "schema": THRESHOLDS_SCHEMA,
        "version": package_version(),
        "environment": fingerprint(),
        "settings": {"p": settings.p, "ftz": settings.ftz, "tolerance": tolerance},
        "thresholds": [{
            "experiment": r.experiment, "family": r.family, "method": r.method, "dtype": r.dtype,
            "parameter": r.parameter, "first_inaccurate": _param(r.first_inaccurate),
            "first_failure": _param(r.first_failure), "failure": r.failure, "predicted": _param(r.predicted),
            "formula": r.formula, "search_range": [_param(x) for x in r.search_range],
            "inaccurate_status": r.inaccurate_status, "predicted_for": r.predicted_for, "agrees": r.agrees,
            "exact": r.exact,
            "verified_below": {"first_inaccurate": _param(r.verified_inaccurate),
                               "first_failure": _param(r.verified_failure)},
        } for r in rows],
    }


def formats_document(formats) -> dict:
    return {"schema": "stabilitylab.formats/1", "formats": [
        {"name": f.name, "aliases": list(f.aliases), "precision": f.precision, "max": f.max,
         "smallest_normal": f.tiny, "smallest_subnormal": f.smallest_subnormal, "eps": f.eps,
         "unit_roundoff": f.unit_roundoff, "ln_max": f.ln_max, "ln_smallest_subnormal": f.ln_smallest_subnormal,
         "has_inf": f.has_inf} for f in formats]}


TRAIN_SCHEMA = "stabilitylab.train/1"


def train_document(runs, scenarios, said) -> dict:
    """Per run: the issue's fields, then every per-step column."""
    def column(values):
        return [number(v) for v in values.tolist()]

    return {
        "schema": TRAIN_SCHEMA,
        "version": package_version(),
        "environment": fingerprint(),
        "scenarios": {name: {"description": s.description, "claim": s.claim, "model": s.model, "task": s.task,
                             "methods": list(s.methods), "steps": s.steps, "lr": s.lr, "batch": s.batch,
                             "seed": s.seed, "scaling": s.scaling, "scale": s.scale,
                             "growth_interval": s.growth_interval, "chance": s.chance}
                      for name, s in scenarios.items()},
        "runs": [{
            "scenario": r.scenario, "model": r.model, "method": r.method, "dtype": r.dtype, "steps": r.steps,
            "lr": r.lr, "seed": r.seed, "steps_per_epoch": r.steps_per_epoch,
            "first_nonfinite_step": r.first_nonfinite_step, "final_accuracy": r.final_accuracy,
            "epochs_at_chance": r.epochs_at_chance(),
            "loss": column(r.loss), "status": r.status.tolist(), "reference_loss": column(r.reference),
            "grad_norm": column(r.grad_norm), "zero_grad_fraction": column(r.zero_grad),
            "grad_underflow_fraction": column(r.grad_underflow), "loss_scale": column(r.scale),
            "skipped": r.skipped.tolist(), "accuracy": column(r.accuracy),
        } for r in runs],
        "findings": [{"scenario": s, "text": t} for s, t in said],
    }
