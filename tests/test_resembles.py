"""audit's *resembles* (issue #19, item 2): shares on the case rows decide, below MATCH_SHARE no formula.

Every share the tool reports is recounted here from the per-row values the API exposes
(``Resemblance.rows``), with a deliberately plain check of "within 1 ulp" (the format's values
enumerated by ml_dtypes / numpy and compared by position), not with stabilitylab.numerics.agreement.
"""

from __future__ import annotations

import json
import textwrap

import ml_dtypes
import numpy as np
import pytest

import stabilitylab
from stabilitylab.auditing.core import MATCH_SHARE, WIDE_ROWS, candidates
from stabilitylab.cli import cli
from stabilitylab.experiments.softmax_ce import SOFTMAX_CE
from stabilitylab.numerics.formats import FORMATS
from stabilitylab.report.build import _resembles_cell

LOSSES = textwrap.dedent('''
    import numpy as np


    def clipped(logits, labels):
        """-log(clip(softmax(x)[y], 1e-7, 1)) in float64."""
        x = np.asarray(logits, dtype=np.float64)
        e = np.exp(x - x.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        return -np.log(np.clip(p[np.arange(len(x)), labels], 1e-7, 1.0))


    def sequential(logits, labels):
        """log-sum-exp with a sequential sum in the logits' format."""
        dt = logits.dtype
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z.astype(np.float32)).astype(dt)
        s = np.zeros(len(z), dtype=dt)
        for j in range(z.shape[1]):
            s = (s + e[:, j]).astype(dt)
        return (np.log(s.astype(np.float32)).astype(dt) - z[np.arange(len(z)), labels]).astype(dt)


    def faithful(logits, labels):
        """log-sum-exp in float64, rounded once to the logits' format."""
        x = np.asarray(logits, dtype=np.float64)
        m = x.max(axis=1, keepdims=True)
        lse = np.log(np.exp(x - m).sum(axis=1)) + m[:, 0]
        return (lse - x[np.arange(len(x)), labels]).astype(logits.dtype)
''')


@pytest.fixture(scope="module")
def losses(tmp_path_factory):
    path = tmp_path_factory.mktemp("losses") / "losses.py"
    path.write_text(LOSSES)
    return path


DTYPE = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}


def positions(values: np.ndarray, dtype) -> np.ndarray:
    """Each finite value's index in the sorted list of the format's finite values, -0 and +0 one value:
    enumerated from the bit patterns (16-bit formats: all 65536; float32: by the sign-magnitude order of
    its bits, which is the order of its values)."""
    v = values.astype(dtype)
    if np.dtype(dtype).itemsize == 2:
        with np.errstate(invalid="ignore"):  # the NaN patterns
            every = np.arange(65536, dtype=np.uint16).view(dtype).astype(np.float64)
        finite = np.unique(every[np.isfinite(every)])  # -0 == +0: one entry
        return np.searchsorted(finite, v.astype(np.float64)).astype(np.int64)
    bits = v.view(np.uint32).astype(np.int64)
    magnitude = bits & 0x7FFFFFFF
    return np.where(bits >> 31, -magnitude, magnitude)


def recount(values: dict[str, np.ndarray], label: str, dtype: str):
    """(identical, within 1 ulp) counts of a candidate against the target, plainly."""
    t, c = values["target"], values[label]
    both_nan = np.isnan(t) & np.isnan(c)
    same = (t == c) | both_nan
    finite = np.isfinite(t) & np.isfinite(c)
    near = same.copy()
    near[finite] |= np.abs(positions(t[finite], DTYPE[dtype]) - positions(c[finite], DTYPE[dtype])) <= 1
    return int(same.sum()), int(near.sum())


def check_recounted(result) -> None:
    for r in result.resembles:
        assert len(r.rows["target"]) == r.points
        for c in r.candidates:
            same, near = recount(r.rows, c.label, r.dtype)
            assert (c.cases.identical, c.cases.within_ulp) == (same, near), (r.dtype, c.label)
            wide = r.rows["width"] >= WIDE_ROWS
            assert c.wide.points == int(wide.sum())


def run_cli(capsys, *args):
    try:
        cli.main(list(args), standalone_mode=False)
    except SystemExit as exc:
        assert not exc.code
    return capsys.readouterr().out


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_an_epsilon_clipped_loss_matches_no_simulated_formula(losses, dtype, capsys):
    doc = json.loads(run_cli(capsys, "audit", f"{losses}:clipped", "-e", "softmax_ce", "-d", dtype,
                             "--no-thresholds", "--format", "json"))
    [r] = doc["resembles"]
    assert r["method"] is None and r["matches"] is False and r["best"]
    assert r["rule"]["within_1_ulp_share_of_case_rows"] == MATCH_SHARE
    best = r["candidates"][0]
    assert best["score"] < MATCH_SHARE and not any(c["matches"] for c in r["candidates"])
    table = run_cli(capsys, "audit", f"{losses}:clipped", "-e", "softmax_ce", "-d", dtype, "--no-thresholds")
    assert "no simulated formula matches" in table
    result = stabilitylab.audit(f"{losses}:clipped", "softmax_ce", [dtype], search=False)
    check_recounted(result)
    [res] = result.resembles
    assert "no simulated formula matches" in result.to_markdown()
    assert _resembles_cell(res).text.startswith(f"no formula matches (best {res.best}: ")  # the report's cell
    # the clip shows on the wide realistic rows, whose true class is often below 1e-7
    wide = res.rows["width"] >= WIDE_ROWS
    t, c = res.rows["target"][wide], res.rows[res.best][wide]
    tol = FORMATS[dtype].default_tolerance
    assert np.mean(np.abs(t - c) <= tol * np.maximum(abs(t), abs(c))) < MATCH_SHARE


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_sequential_low_precision_sum_does_not_resemble_log_softmax(losses, dtype):
    result = stabilitylab.audit(f"{losses}:sequential", "softmax_ce", [dtype], search=False)
    check_recounted(result)
    [r] = result.resembles
    assert r.method is None  # no formula: not "log_softmax"
    by = {c.method: c for c in r.candidates}
    # on the narrow rows alone it would pass for log_softmax: the wide rows decide
    assert by["log_softmax"].cases.within_ulp_share >= MATCH_SHARE
    wide = r.rows["width"] >= WIDE_ROWS
    t, c = r.rows["target"][wide], r.rows["log_softmax"][wide]
    with np.errstate(invalid="ignore"):  # inf - inf on an overflowing row
        rel = np.abs(t - c) / np.abs(c)
    assert np.mean(rel <= FORMATS[dtype].default_tolerance) < MATCH_SHARE
    assert np.nanmax(rel) > 0.05  # the stalled sum is off by more than 5 %


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_a_faithful_log_softmax_resembles_a_log_sum_exp_form(losses, dtype):
    result = stabilitylab.audit(f"{losses}:faithful", "softmax_ce", [dtype], search=False)
    check_recounted(result)
    [r] = result.resembles
    name, _, policy = r.method.partition(" in ")
    # a log-sum-exp form, or any formula computed wider and rounded once (which it is: float64, then rounded;
    # on realistic float32 rows every float64 formula rounds alike)
    assert name in ("log_softmax", "log_softmax_log1p") or policy == f"{dtype}@float64", r.method
    assert r.share >= 0.99


def test_torch_cross_entropy_bfloat16_resembles_the_float32_policy():
    """Issue #19: torch's CPU cross_entropy on bfloat16 inputs is log_softmax computed in float32 and rounded
    once to bfloat16 on most rows (the rest differ by the order of its float32 sum); the pure-bfloat16
    formulas are bit-identical far less often."""
    pytest.importorskip("torch")
    result = stabilitylab.audit("torch.cross_entropy", "softmax_ce", ["bfloat16"], search=False)
    check_recounted(result)
    [r] = result.resembles
    assert r.method == "log_softmax in bfloat16@float32"
    by = {c.label: c for c in r.candidates}
    assert by["log_softmax in bfloat16@float32"].cases.identical_share > 0.9
    assert by["log_softmax"].cases.identical_share < 0.85


def test_torch_cross_entropy_float32_resembles_a_formula_within_one_ulp():
    pytest.importorskip("torch")
    result = stabilitylab.audit("torch.cross_entropy", dtypes=["float32"], search=False)
    check_recounted(result)
    [r] = result.resembles
    assert r.method is not None and r.share >= 0.98
    assert r.candidates[0].wide.within_tolerance == r.candidates[0].wide.points


def test_candidates_are_every_simulated_method_in_the_audit_format_and_under_policies():
    methods = [m.name for m in SOFTMAX_CE.methods]
    assert [(m.name, f.name) for m, f in candidates(SOFTMAX_CE, FORMATS["bfloat16"])] == [
        (m, f) for f in ("bfloat16", "bfloat16@float32", "bfloat16+float32") for m in methods]
    assert [(m.name, f.name) for m, f in candidates(SOFTMAX_CE, FORMATS["float32"])] == [
        (m, f) for f in ("float32", "float32@float64") for m in methods]
    assert [f.name for _, f in candidates(SOFTMAX_CE, FORMATS["float64"])] == ["float64"] * len(methods)


def test_the_plain_position_check_rejects_two_steps():
    one = np.array([1.0]), np.array([1.0 + 2.0**-7])
    two = np.array([1.0]), np.array([1.0 + 2.0**-6])
    assert recount({"target": one[0], "x": one[1]}, "x", "bfloat16") == (0, 1)
    assert recount({"target": two[0], "x": two[1]}, "x", "bfloat16") == (0, 0)
    across_zero = {"target": np.array([2.0**-133]), "x": np.array([-(2.0**-133)])}
    assert recount(across_zero, "x", "bfloat16") == (0, 0)  # -s, 0, s: two steps


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_within_one_ulp_is_adjacency_over_every_value_of_the_format(dtype):
    """numerics.agreement against the plain positions: every finite value beside the values 0, 1 and 2
    steps above it (and infinities, NaN, -0)."""
    from stabilitylab.numerics.agreement import identical, within_one_ulp

    with np.errstate(invalid="ignore"):
        every = np.arange(65536, dtype=np.uint16).view(DTYPE[dtype]).astype(np.float64)
    finite = np.unique(every[np.isfinite(every)])
    fmt = FORMATS[dtype]
    for step in (0, 1, 2):
        a, b = finite[: len(finite) - step], finite[step:]
        got = within_one_ulp(fmt, a, b)
        assert got.all() if step <= 1 else not got.any(), step
        assert (within_one_ulp(fmt, b, a) == got).all()
    inf, nan = np.inf, np.nan
    a = np.array([inf, -inf, inf, nan, nan, -0.0, fmt.max, inf])
    b = np.array([inf, -inf, -inf, nan, 1.0, 0.0, inf, fmt.max])
    assert within_one_ulp(fmt, a, b).tolist() == [True, True, False, True, False, True, False, False]
    assert identical(a, b).tolist() == [True, True, False, True, False, True, False, False]


def test_a_candidate_in_another_format_is_rounded_once_and_named(losses, monkeypatch):
    """The seam for precision policies: a candidate computed in float32 on bfloat16 inputs is rounded once to
    bfloat16, named 'log_softmax in float32', and matches a float64-then-round loss more often bit for bit
    than the pure-bfloat16 formulas."""
    from stabilitylab.auditing import core

    plain = core.candidates
    monkeypatch.setattr(core, "candidates", lambda experiment, fmt: plain(experiment, fmt) + [
        (experiment.method("log_softmax"), FORMATS["float32"])])
    result = stabilitylab.audit(f"{losses}:faithful", "softmax_ce", ["bfloat16"], search=False)
    check_recounted(result)
    [r] = result.resembles
    by = {c.label: c for c in r.candidates}
    upcast = by["log_softmax in float32"]
    assert upcast.format == "float32" and upcast.method == "log_softmax"
    values = r.rows["log_softmax in float32"]
    rounded = values.astype(ml_dtypes.bfloat16).astype(np.float64)
    assert ((rounded == values) | np.isnan(values)).all()  # bfloat16 values
    assert upcast.cases.identical_share > by["log_softmax"].cases.identical_share
    assert upcast.cases.identical_share > 0.99
    # the bfloat16@float32 policy is that same arithmetic (float32 throughout, rounded once): the same values
    assert np.array_equal(r.rows["log_softmax in bfloat16@float32"], values, equal_nan=True)
    assert r.best in ("log_softmax in float32", "log_softmax in bfloat16@float32")
    doc = json.loads(result.to_json())
    assert "log_softmax in float32" in [c["label"] for c in doc["resembles"][0]["candidates"]]
