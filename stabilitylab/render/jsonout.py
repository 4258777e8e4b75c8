"""JSON documents: stable key order, non-finite numbers as the strings "inf", "-inf", "nan"."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from ..analysis.engine import Comparison
from ..analysis.findings import findings
from ..io import schemas
from ..io.environment import fingerprint, package_version

__all__ = ["number", "dumps", "compare_document"]

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


def dumps_line(doc: Any) -> str:
    """One JSON Lines record."""
    return json.dumps(doc, allow_nan=False) + "\n"


def _results(comparison: Comparison, black_box: bool) -> list[dict]:
    results = []
    for r in comparison.results:
        row = {
            "experiment": r.experiment, "case": r.case, "method": r.method, "dtype": r.dtype,
            "value": number(r.value), "reference": number(r.reference), "exact": r.exact, "status": r.status,
            "rel_error": number(r.rel_error), "ulps": number(r.ulps), "error_bits": number(r.error_bits),
            "events": list(r.events),
        }
        if black_box:
            row["error"] = r.error or None
        results.append(row)
    return results


def _summary(comparison: Comparison, black_box: bool) -> list[dict]:
    """Counts per method and format; ``inf`` and ``error`` (black-box statuses) only where a black box ran."""
    out = []
    for c in comparison.summary:
        d = asdict(c)
        if not black_box:
            del d["inf"], d["error"]
        out.append(d)
    return out


def _has_black_box(comparison: Comparison) -> bool:
    return any(m.black_box for e in comparison.experiments for m in e.methods)


def compare_document(comparison: Comparison) -> dict:
    black_box = _has_black_box(comparison)
    results = _results(comparison, black_box)
    return {
        "schema": schemas.COMPARE,
        "version": package_version(),
        "environment": fingerprint(),
        "settings": {"tolerance": comparison.tolerance, "ftz": comparison.ftz,
                     "formats": [f.name for f in comparison.formats]},
        "results": results,
        "summary": _summary(comparison, black_box),
        "findings": [{"experiment": e, "text": t} for e, t in findings(comparison)],
        "notes": list(comparison.notes),
    }


def empty_compare_document(formats, tolerance: float | None, ftz: bool) -> dict:
    """The compare document when only the user's logits ran (``user_logits`` is added)."""
    return {"schema": schemas.COMPARE, "version": package_version(), "environment": fingerprint(),
            "settings": {"tolerance": tolerance, "ftz": ftz, "formats": [f.name for f in formats]},
            "results": [], "summary": [], "findings": [], "notes": []}


def _param(x):
    """Thresholds: integers stay integers, floats are exact (repr round-trips), None is null."""
    return x if x is None or isinstance(x, int) else number(x)


def thresholds_document(rows, settings, tolerance) -> dict:
    return {
        "schema": schemas.THRESHOLDS,
        "version": package_version(),
        "environment": fingerprint(),
        "settings": {"p": settings.p, "ftz": settings.ftz, "tolerance": tolerance},
        "thresholds": threshold_records(rows),
    }


def threshold_records(rows) -> list[dict]:
    return [_with_window(r, {
            "experiment": r.experiment, "family": r.family, "method": r.method, "dtype": r.dtype,
            "parameter": r.parameter, "first_inaccurate": _param(r.first_inaccurate),
            "first_failure": _param(r.first_failure), "failure": r.failure, "predicted": _param(r.predicted),
            "formula": r.formula, "search_range": [_param(x) for x in r.search_range],
            "inaccurate_status": r.inaccurate_status, "predicted_for": r.predicted_for, "agrees": r.agrees,
            "exact": r.exact,
            "verified_below": {"first_inaccurate": _param(r.verified_inaccurate),
                               "first_failure": _param(r.verified_failure)},
        }) for r in rows]


def _with_window(r, record: dict) -> dict:
    """A black box's row whose bound has a window scanned below it: ``verified_from``, the
    parameter from which every input up to the bound was evaluated ok (rows without one have
    no such key)."""
    if r.window_inaccurate is not None or r.window_failure is not None:
        record["verified_from"] = {"first_inaccurate": _param(r.window_inaccurate),
                                   "first_failure": _param(r.window_failure)}
    return record


def audit_document(audit) -> dict:
    """``stabilitylab audit --format json`` (schema :data:`schemas.AUDIT`); a linear_ce gradient audit also has
    ``gradient_entries`` (every entry of both gradients on the small problems, summarized per format)."""
    target = audit.target
    env = dict(fingerprint())
    env.update({f"target_{k}": v for k, v in target.environment.items()})
    doc = {
        "schema": schemas.AUDIT,
        "target": target.name,
        "experiment": audit.experiment.name,
        "version": package_version(),
        "environment": env,
        "settings": {"tolerance": audit.tolerance, "formats": [f.name for f in audit.formats],
                     "skipped_formats": list(audit.skipped), "gradient": target.grad},
        "formula": target.formula,
        "results": _results(audit.comparison, True),
        "summary": _summary(audit.comparison, True),
        "findings": [{"experiment": e, "text": t} for e, t in findings(audit.comparison)],
        "thresholds": threshold_records(audit.thresholds),
        "resembles": [resemblance_record(r) for r in audit.resembles],
        "versus": [{"dtype": v.dtype, "method": v.method, "target_fails_method_ok": v.target_only,
                    "method_fails_target_ok": v.method_only, "examples": list(v.examples)} for v in audit.versus],
        "witnesses": [witness_record(w) for w in audit.witnesses],
        "notes": list(audit.notes),
    }
    if audit.gradient_entries:
        doc["gradient_entries"] = [gradient_entries_record(g) for g in audit.gradient_entries]
    return doc


def gradient_entries_record(g) -> dict:
    """One :class:`~stabilitylab.auditing.core.GradientEntries` as JSON (``worst_error_bits`` null if none)."""
    witness = None if g.witness is None else {**g.witness, "value": number(g.witness["value"]),
                                              "error_bits": number(g.witness["error_bits"])}
    return {"dtype": g.dtype, "gradient": g.gradient, "problems": g.problems, "entries": g.entries,
            "statuses": dict(g.counts), "worst_error_bits": number(g.worst_bits), "witness": witness}


def _agreement(a) -> dict:
    return {"points": a.points, "identical": a.identical, "within_1_ulp": a.within_ulp,
            "within_tolerance": a.within_tolerance, "identical_share": number(a.identical_share),
            "within_1_ulp_share": number(a.within_ulp_share),
            "within_tolerance_share": number(a.within_tolerance_share)}


def resemblance_record(r) -> dict:
    """One format of ``resembles`` (schema ``stabilitylab.audit/2``): ``method`` is the matching formula or
    null ("no simulated formula matches"); ``best`` the best candidate either way; ``rule`` the constants
    of the decision; ``candidates`` best first, each with its agreement on the case rows, the wide case
    rows and the threshold points (counts and shares; a share is "nan" where there are no points)."""
    return {"dtype": r.dtype, "method": r.method, "matches": r.method is not None, "best": r.best,
            "share": number(r.share), "points": r.points,
            "rule": {"within_1_ulp_share_of_case_rows": r.match_share,
                     "within_tolerance_share_of_wide_case_rows": r.match_share, "wide_rows_classes": r.wide_rows},
            "candidates": [{"method": c.method, "format": c.format, "label": c.label, "matches": c.matches,
                            "score": number(c.score), "case_rows": _agreement(c.cases),
                            "wide_case_rows": _agreement(c.wide), "threshold_points": _agreement(c.thresholds)}
                           for c in r.candidates]}


def witness_record(w) -> dict:
    return {
        "source": w.source, "dtype": w.dtype, "status": w.status, "kind": w.kind, "case": w.case,
        "parameter": _param(w.parameter), "inputs": {k: _numbers(v) for k, v in w.inputs.items()},
        "value": number(w.value), "exact": w.exact, "reference": number(w.reference),
        "exact_parts": {"hi": float.hex(w.hi), "lo": float.hex(w.lo), "scale": w.scale, "zero": w.zero},
        "rounded": number(w.rounded), "rel_error": number(w.rel_error), "error_bits": number(w.error_bits),
        "error": w.error or None,
    }


def _numbers(v):
    if isinstance(v, list):
        return [_numbers(x) for x in v]
    return v if isinstance(v, int) else number(v)


def formats_document(formats) -> dict:
    return {"schema": schemas.FORMATS, "formats": [
        {"name": f.name, "aliases": list(f.aliases), "precision": f.precision, "max": f.max,
         "smallest_normal": f.tiny, "smallest_subnormal": f.smallest_subnormal, "eps": f.eps,
         "unit_roundoff": f.unit_roundoff, "ln_max": f.ln_max, "ln_smallest_subnormal": f.ln_smallest_subnormal,
         "has_inf": f.has_inf, "bits": f.bits, "exponent_bits": f.exponent_bits, "fraction_bits": f.fraction_bits,
         "bias": f.bias, "nan": f.nan, "signed": f.signed, "signed_zero": f.signed_zero, "has_zero": f.has_zero,
         "overflow": f.overflow} for f in formats]}


def train_document(runs, scenarios, said) -> dict:
    """Per run: the issue's fields, then every per-step column."""
    def column(values):
        return [number(v) for v in values.tolist()]

    return {
        "schema": schemas.TRAIN,
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
