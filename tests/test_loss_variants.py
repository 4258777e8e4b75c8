"""Loss options (softmax_ce_variants), the correctly rounded tanh they use, and issue #20's corpus rows.

Values are checked against tests/independent/loss_reference.py (plain mpmath probabilities, loops,
integer rounding), never against stabilitylab's own reference; the rows issue #20 names are asserted
from the tool's JSON output.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import ml_dtypes
import mpmath
import numpy as np
import pytest
from clihelp import one_line_error, run

from stabilitylab.analysis.engine import evaluate
from stabilitylab.experiments import EXPERIMENTS, corpus
from stabilitylab.experiments.loss_options import LossOptions, concat, loss_case, with_options
from stabilitylab.experiments.softmax_ce_variants import default_cases
from stabilitylab.numerics import crmath
from stabilitylab.numerics.formats import FORMATS

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("loss_reference", ROOT / "tests" / "independent" / "loss_reference.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

VARIANTS = EXPERIMENTS["softmax_ce_variants"]
F64 = FORMATS["float64"]

# the plain checker's format parameters: precision, smallest normal exponent, largest finite value
PLAIN = {name: (ml_dtypes.finfo(dt).nmant + 1, int(ml_dtypes.finfo(dt).minexp), float(ml_dtypes.finfo(dt).max))
         for name, dt in (("bfloat16", ml_dtypes.bfloat16), ("float16", np.float16))}


# ------------------------------------------------------------------ tanh
@pytest.mark.parametrize("name", sorted(PLAIN))
def test_tanh_is_correctly_rounded_on_every_16_bit_value(name):
    """Every finite bit pattern of bfloat16 / float16: crmath.tanh against mpmath rounded by the plain checker."""
    fmt = FORMATS[name]
    p, emin, largest = PLAIN[name]
    with np.errstate(invalid="ignore"):  # (casting the NaN patterns)
        x = np.arange(2**16, dtype=np.uint16).view(fmt.dtype)
        x = x[np.isfinite(x.astype(np.float64))]
    got = crmath.tanh(fmt, x.astype(np.float32)).astype(np.float64)
    mp = mpmath.MPContext()
    mp.prec = 3 * p + 80  # tanh of a subnormal differs from it by x**3 / 3: far below this for every input
    bad = []
    for v, g in zip(x.astype(np.float64).tolist(), got.tolist()):
        want = v if v == 0 else round_plain(mp.tanh(mp.mpf(v)), p, emin, largest)
        if not (g == want and math.copysign(1, g) == math.copysign(1, want)):
            bad.append((v, g, want))
    assert not bad, f"{len(bad)} of {x.size} wrong, first {bad[:3]}"


def round_plain(value, p, emin, largest):
    return ref.round_to(mpmath.mpf(value), p, emin, largest)


def test_tanh_special_values_and_events():
    for name in ("bfloat16", "float32", "float64"):
        fmt = FORMATS[name]
        x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan]).astype(np.float32 if fmt.precision <= 11 else fmt.dtype)
        y = crmath.tanh(fmt, x).astype(np.float64)
        assert y[:4].tolist() == [0.0, -0.0, 1.0, -1.0] and math.copysign(1, y[1]) == -1 and np.isnan(y[4])


# ------------------------------------------------------------------ values against the plain checker
OPTION_SETS = [
    LossOptions(),
    LossOptions("sum"),
    LossOptions("mean", -100),
    LossOptions("mean", -100, label_smoothing=0.2),
    LossOptions("sum", -100, label_smoothing=0.1, z_loss=1e-3),
    LossOptions("mean", softcap=5.0),
    LossOptions("sum", temperature=0.7),
    LossOptions("mean", -100, label_smoothing=0.05, z_loss=1e-4, softcap=30.0, temperature=2.0),
]
ROWS = [[3.0, -1.5, 0.25, 7.0], [0.0, 0.0, 0.0, 0.0], [-20.0, 4.0, 9.5, -3.0]]
LABELS = [3, -100, 1]


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: o.label())
def test_float64_kernel_and_reference_agree_with_the_plain_checker(options):
    """Each option's value in float64 (the stable kernel) and the tool's exact value against the plain loss."""
    if options.reduction == "none":
        cases = concat([loss_case(f"r{i}", ROWS[i], [LABELS[i] if LABELS[i] >= 0 else 0], options)
                        for i in range(len(ROWS))])
        want = [ref.loss([ROWS[i]], [LABELS[i] if LABELS[i] >= 0 else 0], **vars(options)) for i in range(len(ROWS))]
    else:
        labels = [y if y >= 0 or options.ignore_index is not None else 0 for y in LABELS]
        cases = loss_case("batch", ROWS, labels, options)
        want = [ref.loss(ROWS, labels, **vars(options))]
    out = evaluate(VARIANTS, F64, cases)["log_softmax"]
    for got, exact, w in zip(out.value.tolist(), out.reference.tolist(), want):
        w = float(w)
        assert exact == pytest.approx(w, rel=1e-15, abs=0)
        assert got == pytest.approx(w, rel=1e-13, abs=0)


def test_label_smoothing_with_an_ignored_row_counts_it_only_in_the_broken_form():
    """pytorch#73205: the smoothing term of an ignored row added (the old kernel) against the plain loss
    of the rows kept, and against the plain loss plus that row's term."""
    options = LossOptions("mean", -100, label_smoothing=0.1)
    out = evaluate(VARIANTS, F64, loss_case("t", ROWS, LABELS, options))
    kept = float(ref.loss(ROWS, LABELS, **vars(options)))
    ignored_row_term = float(ref.loss([ROWS[1]], [0], "sum", label_smoothing=0.1) - ref.loss([ROWS[1]], [0], "sum")
                             * (1 - mpmath.mpf(0.1)))
    assert out["log_softmax"].value[0] == pytest.approx(kept, rel=1e-13)
    assert out["smoothing_counts_ignored"].value[0] == pytest.approx(kept + ignored_row_term / 2, rel=1e-13)
    assert out["smoothing_counts_ignored"].status[0] == "inaccurate"


# ------------------------------------------------------------------ the rows of issue #20, from the tool's output
@pytest.fixture(scope="module")
def rows():
    import contextlib
    import io

    from stabilitylab.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["compare", "-e", "softmax_ce_variants", "-d", "bf16", "-d", "bf16@fp32", "-d", "fp16",
                     "--format", "json"])
    assert code == 0
    doc = json.loads(buffer.getvalue())
    return doc["results"]


def _row(rows, prefix, method, dtype):
    hits = [r for r in rows if r["case"].startswith(prefix) and r["method"] == method and r["dtype"] == dtype]
    assert len(hits) == 1, (prefix, method, dtype, hits)
    return hits[0]


def _bf16(v) -> float:
    return float(ml_dtypes.bfloat16(v))


@pytest.mark.parametrize("dtype", ["bfloat16", "bfloat16@float32", "float16"])
def test_all_ignored_mean_is_nan_against_the_convention_zero(rows, dtype):
    """torchtune#2341 / OpenRLHF#583: a kernel's mean over 0 tokens is 0/0 = NaN and training dies; the exact
    value follows the convention the fixes return, sum / max(n, 1) = 0, so the row says plainly: status nan,
    with the 0/0 shown as an invalid event, and the case's name says which convention the exact value follows."""
    for method in VARIANTS.method_names:
        r = _row(rows, "all ignored, mean", method, dtype)
        assert r["value"] == "nan" and r["exact"] == "0" and r["status"] == "nan" and "invalid" in r["events"]
        assert "sum/max(n,1) = 0" in r["case"]
    assert float(ref.loss([[1.0, 2.0]], [-100], "mean", -100)) == 0.0
    assert float(ref.loss([[1.0, 2.0], [0.5, 0.0]], [-100, 1], "mean", -100)) > 0


@pytest.mark.parametrize("dtype", ["bfloat16", "bfloat16@float32", "float16"])
def test_label_smoothing_with_ignored_rows(rows, dtype):
    ok = _row(rows, "label smoothing 0.1, 1 of 3 rows ignored", "log_softmax", dtype)
    broken = _row(rows, "label smoothing 0.1, 1 of 3 rows ignored", "smoothing_counts_ignored", dtype)
    spread = [[2.0, 0.5, -1.0, -3.0], [6.0, -6.0, -6.0, -6.0], [0.0, 1.0, -2.0, 4.0]]
    want = float(ref.loss(spread, [0, -100, 3], "mean", -100, label_smoothing=0.1))
    assert ok["reference"] == pytest.approx(want, rel=1e-15)
    assert ok["status"] == "ok" and broken["status"] == "inaccurate"
    assert float(broken["value"]) > 1.5 * float(ok["value"])  # the ignored row's spread logits dominate


@pytest.mark.parametrize("dtype", ["bfloat16", "bfloat16@float32", "float16"])
def test_softcap_zero_collapses_every_logit(rows, dtype):
    """A cap of 0 applied as c * tanh(x / c): x / 0 = +-inf, 0 * tanh(+-inf) = 0 for every logit, so the loss
    is ln K whatever the logits (K = 4 here); the exact value reads 0 as no cap."""
    r = _row(rows, "softcap 0", "log_softmax", dtype)
    assert r["status"] == "inaccurate" and "divide_by_zero" in r["events"]
    fmt_round = _bf16 if dtype.startswith("bfloat16") else (lambda v: float(np.float16(v)))
    assert float(r["value"]) == fmt_round(math.log(4))
    assert r["reference"] == pytest.approx(float(ref.loss([[2.0, 0.5, -1.0, -3.0]], [0])), rel=1e-15)


def test_z_loss_in_bfloat16_and_float16(rows):
    """z-loss 1e-4 on logits near 300: lse**2 ~ 9e4 overflows float16 (max 65504) but not bfloat16; in
    bfloat16 the loss is within its tolerance of the exact value."""
    with np.errstate(over="ignore"):
        assert float(np.float16(301.0**2)) == math.inf and _bf16(301.0**2) < math.inf
    small = [r for r in rows if "[30,28,25]" in r["case"] and r["method"] == "log_softmax"]
    assert len(small) == 3 and all(r["status"] == "ok" for r in small)
    big = [r for r in rows if "[300,298,295]" in r["case"] and r["method"] == "log_softmax"]
    assert {r["dtype"]: r["status"] for r in big} == {"bfloat16": "ok", "bfloat16@float32": "ok",
                                                     "float16": "overflow"}
    bf = next(r for r in big if r["dtype"] == "bfloat16")
    x = [_bf16(v) for v in (300.0, 298.0, 295.0)]
    assert bf["reference"] == pytest.approx(float(ref.loss([x], [1], z_loss=1e-4)), rel=1e-15)


def test_a_bfloat16_count_of_257_is_256(rows):
    """The mean over 257 tokens divides by the count held in bfloat16 (256): the bfloat16 mean is the bfloat16
    sum over 256; with a float32 compute format (bf16@fp32) it is the correctly rounded mean."""
    assert _bf16(257) == 256
    total = float(_row(rows, "sum over 257 tokens", "log_softmax", "bfloat16")["value"])
    mean = _row(rows, "mean over 257 tokens", "log_softmax", "bfloat16")
    assert float(mean["value"]) == _bf16(total / 256)
    policy = _row(rows, "mean over 257 tokens", "log_softmax", "bfloat16@float32")
    exact = float(ref.loss([[1.0, -1.0]] * 257, [1] * 257, "mean"))
    assert float(policy["value"]) == round_plain(exact, *PLAIN["bfloat16"])


def test_logsumexp_minus_logit_loses_the_loss_of_1e8_1e8(rows):
    for dtype in ("bfloat16", "bfloat16@float32"):
        lost = _row(rows, "no shift in the loss", "logsumexp_minus_logit", dtype)
        kept = _row(rows, "no shift in the loss", "log_softmax", dtype)
        assert float(lost["value"]) == 0 and lost["status"] == "inaccurate"
        assert kept["status"] == "ok" and float(kept["value"]) == _bf16(math.log(2))


# ------------------------------------------------------------------ options on the command line
def test_options_run_the_variant_inputs(capsys):
    code, out, err = run(capsys, "compare", "--reduction", "mean", "--ignore-index", "-100", "--label-smoothing", "0.1",
                         "--z-loss", "1e-4", "--softcap", "30", "--temperature", "2", "-d", "fp32", "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert {r["experiment"] for r in doc["results"]} == {"softmax_ce_variants"}
    options = dict(reduction="mean", ignore_index=-100, label_smoothing=0.1, z_loss=1e-4, softcap=30.0,
                   temperature=2.0)
    spread = [[2.0, 0.5, -1.0, -3.0], [6.0, -6.0, -6.0, -6.0], [0.0, 1.0, -2.0, 4.0]]
    r = next(r for r in doc["results"] if r["case"].startswith("label smoothing 0.1, 1 of 3")
             and r["method"] == "log_softmax")
    assert r["case"].endswith("| mean,ignore=-100,ls=0.1,z=0.0001,T=2,cap=30")
    assert r["reference"] == pytest.approx(float(ref.loss(spread, [0, -100, 3], **options)), rel=1e-15)
    assert r["status"] == "ok"


def test_reduction_none_splits_batches_into_rows():
    cases = with_options(default_cases(), LossOptions("none"))
    assert len(cases) > len(default_cases()) and set(cases.tokens.tolist()) == {1}


@pytest.mark.parametrize("args, fragments", [
    (("--softcap", "0"), ("'--softcap'", "softcap 0.0 must be a finite number > 0")),
    (("--softcap", "inf"), ("'--softcap'", "softcap inf")),
    (("--softcap", "nan"), ("'--softcap'", "softcap nan")),
    (("--temperature", "0"), ("'--temperature'", "temperature 0.0")),
    (("--label-smoothing", "1.5"), ("'--label-smoothing'", "outside [0, 1]")),
    (("--z-loss", "-1"), ("'--z-loss'", ">= 0")),
    (("--softcap", "3", "-e", "softmax_ce"), ("'--softcap'", "softmax_ce_variants or linear_ce cases, but neither")),
    (("--ignore-index", "-100", "--z-loss", "0", "-e", "softmax_ce"), ("'--z-loss'", "or linear_ce cases")),
])
def test_bad_options_are_one_line_and_exit_2(capsys, args, fragments):
    code, out, err = run(capsys, "compare", *args)
    one_line_error(code, out, err, *fragments)


# ------------------------------------------------------------------ corpus
@pytest.mark.parametrize("experiment, case, method, dtype, status", [
    ("softmax_ce", "mlx#4188:[1e8,1e8]", "naive_softmax_log", "float32", "overflow"),
    ("softmax_ce", "mlx#4188:[1e8,1e8]", "log_softmax", "float32", "ok"),
    ("softmax_ce", "mlx#4188:[2,-1]+1e8", "log_softmax_log1p", "bfloat16", "ok"),
    ("softmax_ce", "pytorch#11752:[1e8,1e8]", "shifted_softmax_log", "float32", "ok"),
    ("softmax_ce", "pytorch#187053", "naive_softmax_log", "float16", "underflow"),
    ("softmax_ce", "pytorch#187053", "log_softmax", "float16", "ok"),
    ("softmax_ce", "modalities#464", "log_softmax", "bfloat16", "ok"),
    ("binary_ce", "gliner2#155", "sigmoid_log", "bfloat16", "underflow"),
    ("binary_ce", "gliner2#155", "sigmoid_log", "float32", "ok"),
    ("binary_ce", "gliner2#155", "logits", "bfloat16", "ok"),
])
def test_corpus_rows(experiment, case, method, dtype, status):
    cases = corpus.corpus(experiment)
    i = next(i for i, n in enumerate(cases.names) if n.startswith(case))
    out = evaluate(EXPERIMENTS[experiment], FORMATS[dtype], cases.take(np.array([i])))[method]
    assert out.status[0] == status, (case, method, dtype, out.value[0], out.reference[0])


def test_corpus_facts_checked_plainly():
    """The facts the corpus names rest on: 1 - 1e-6 is 1 in bfloat16 (the GLiNER2 clamp), sigmoid(8) too; the
    [1e8, 1e8] loss is ln 2; in float32 1e8 + ln 2 is 1e8 (the gap lost in logsumexp); a loss near 36 moves in
    steps of 0.25 in bfloat16."""
    assert _bf16(1 - 1e-6) == 1.0 and _bf16(1 / (1 + math.exp(-8))) == 1.0
    assert float(ref.loss([[1e8, 1e8]], [0])) == pytest.approx(math.log(2), rel=1e-15)
    assert float(np.float32(1e8) + np.float32(math.log(2))) == float(np.float32(1e8))
    assert _bf16(36.0) == 36.0 and np.nextafter(ml_dtypes.bfloat16(36), ml_dtypes.bfloat16(40)) == 36.25


def test_the_guide_shows_the_table_the_command_prints(capsys):
    """docs/guides/loss-options.md quotes the loss table of `compare -e softmax_ce_variants -d bf16 -d bf16@fp32
    -d fp16 --format markdown`: it must be what the command prints today."""
    code, out, err = run(capsys, "compare", "-e", "softmax_ce_variants", "-d", "bf16", "-d", "bf16@fp32", "-d", "fp16",
                         "--format", "markdown")
    assert code == 0, err
    start = out.index("| case | method |")
    table = out[start:out.index("\n\n", start)]
    assert table in (ROOT / "docs" / "guides" / "loss-options.md").read_text(encoding="utf-8")
