"""linear_ce under the loss options (issue #20 Build 2): ``compare -e linear_ce --ignore-index ...
--label-smoothing ... --z-loss ... --softcap ... --temperature ... --reduction ...`` runs its loss methods
and its exact reference under loss_options' formula, checked on the tool's JSON against the plain loss of
tests/independent/loss_reference.py (fed with logits from exact products computed plainly); the z-loss per
vocabulary block against the whole row's; the default outputs unchanged when no option is given."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import mpmath
import pytest
from clihelp import run

from stabilitylab.analysis.engine import evaluate
from stabilitylab.experiments.linear_ce import LINEAR_CE, default_cases, with_options, with_options_experiment
from stabilitylab.experiments.loss_options import LossOptions
from stabilitylab.numerics.formats import FORMATS

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("loss_reference", ROOT / "tests" / "independent" / "loss_reference.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

OPTIONS = ["--ignore-index", "-100", "--label-smoothing", "0.1", "--z-loss", "1e-4", "--softcap", "30",
           "--temperature", "2"]


def _json(capsys, *args):
    code, out, err = run(capsys, "compare", "-e", "linear_ce", *args, "--format", "json")
    assert code == 0, err
    return json.loads(out)["results"]


@pytest.fixture(scope="module")
def options_rows():
    import contextlib
    import io

    from stabilitylab.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["compare", "-e", "linear_ce", *OPTIONS, "-d", "bf16", "-d", "fp64",
                     "--format", "json"])
    assert code == 0
    return json.loads(buffer.getvalue())["results"]


def _row(rows, prefix, method, dtype):
    hits = [r for r in rows if r["case"].startswith(prefix) and r["method"] == method and r["dtype"] == dtype]
    assert len(hits) == 1, (prefix, method, dtype, len(hits))
    return hits[0]


_LOGITS: dict = {}


def _plain_logits(hidden, weight):
    """hidden @ weight.T, every entry an exact mpmath sum of exact products (plain loops; memoized)."""
    key = (hidden.tobytes(), weight.tobytes())
    if key not in _LOGITS:
        with mpmath.workdps(80):
            _LOGITS[key] = [[mpmath.fsum(mpmath.mpf(float(a)) * mpmath.mpf(float(b)) for a, b in zip(h, w))
                             for w in weight] for h in hidden]
    return _LOGITS[key]


def test_exact_and_float64_follow_the_plain_loss(options_rows):
    """Every problem under all the options: the tool's exact value and its float64 materialized loss against
    the plain loss on the plain exact logits (the problems as with_options builds them)."""
    options = LossOptions("mean", -100, 0.1, 1e-4, 30.0, 2.0)
    cases = with_options(default_cases(), options)
    for name, h, w, y in zip(cases.names, cases.hidden, cases.weight, cases.labels):
        if name.startswith("tokens:"):  # (1024 tokens: plain mpmath takes seconds; the random problems cover it)
            continue
        want = ref.loss(_plain_logits(h, w), y.tolist(), "mean", -100, 0.1, 1e-4, 30.0, 2.0)
        r = _row(options_rows, name, "materialized_log_softmax", "float64")
        assert float(r["reference"]) == pytest.approx(float(want), rel=1e-14, abs=1e-300), name
        if "no rows" not in name:  # (there the kernel's 0 / 0 is NaN: test_all_ignored_mean_...)
            assert float(r["value"]) == pytest.approx(float(want), rel=1e-12, abs=1e-300), name


@pytest.fixture(scope="module")
def z_rows():
    import contextlib
    import io

    from stabilitylab.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["compare", "-e", "linear_ce", "--z-loss", "1e-4", "-d", "bf16", "-d", "fp16", "--format",
                     "json"]) == 0
    return json.loads(buffer.getvalue())["results"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_z_loss_per_vocabulary_block_is_the_bug_and_the_final_lse_is_not(z_rows, dtype):
    """z-loss 1e-4 on the offset problem (logits [100, 99, 98, 97], y = 1, vocabulary in 2 blocks): the online
    method adds z lse**2 once from the final lse (ok); z * sum_b lse_b**2 over the blocks is inaccurate, and
    its value is near the plain per-block sum (the bug's own formula)."""
    rows = z_rows
    online = _row(rows, "offset", "vocab_chunks_online", dtype)
    per_block = _row(rows, "offset", "vocab_chunks_z_per_chunk", dtype)
    x = [100.0, 99.0, 98.0, 97.0]
    exact = ref.loss([x], [1], "mean", z_loss=1e-4)
    assert float(online["exact"]) == pytest.approx(float(exact), rel=1e-7)
    assert online["status"] == "ok" and per_block["status"] == "inaccurate"
    with mpmath.workdps(40):
        block = [mpmath.log(mpmath.exp(x[0]) + mpmath.exp(x[1])), mpmath.log(mpmath.exp(x[2]) + mpmath.exp(x[3]))]
        bug = ref.loss([x], [1], "mean") + mpmath.mpf(1e-4) * (block[0] ** 2 + block[1] ** 2)
    assert per_block["value"] == pytest.approx(float(bug), rel=2**-4)
    assert abs(per_block["value"] - float(bug)) < abs(per_block["value"] - float(exact)) / 8
    if dtype == "bfloat16":  # the guide quotes these numbers
        guide = " ".join((ROOT / "docs" / "guides" / "loss-options.md").read_text(encoding="utf-8").split())
        assert (f"it gives {per_block['value']:.3g} in bfloat16 for the exact {float(exact):.4g} (inaccurate), "
                f"where the online method gives {online['value']:.3g} (ok)") in guide


def test_all_ignored_mean_on_linear_ce_is_nan_against_zero(options_rows):
    for method in with_options_experiment().method_names:
        r = _row(options_rows, "every label -100", method, "bfloat16")
        assert r["value"] == "nan" and r["exact"] == "0" and r["status"] != "ok", r


def test_label_smoothing_with_ignored_rows_on_linear_ce(options_rows):
    """Half the tokens ignored: the exact value is the plain loss over the other half (the ignored rows'
    smoothing term excluded); every formulation is ok in bfloat16 there."""
    r = _row(options_rows, "every other label -100", "materialized_log_softmax", "bfloat16")
    assert r["status"] == "ok"
    cases = with_options(default_cases(), LossOptions("mean", -100, 0.1, 1e-4, 30.0, 2.0))
    i = [n.startswith("every other") for n in cases.names].index(True)
    logits = _plain_logits(cases.hidden[i], cases.weight[i])
    kept = [(row, y) for row, y in zip(logits, cases.labels[i].tolist()) if y != -100]
    want = ref.loss([row for row, _ in kept], [y for _, y in kept], "mean", label_smoothing=0.1, z_loss=1e-4,
                    softcap=30.0, temperature=2.0)
    exact = _row(options_rows, "every other label -100", "materialized_log_softmax", "float64")["reference"]
    assert float(exact) == pytest.approx(float(want), rel=1e-14)


def test_no_option_leaves_the_default_run_as_it_was():
    """The options path with the default options (the mean, nothing else) gives linear_ce's own loss values,
    statuses and events on the same problems, bit for bit."""
    cases = with_options(default_cases(), LossOptions("mean"))
    fmt = FORMATS["bfloat16"]
    options = evaluate(with_options_experiment(), fmt, cases)
    plain = evaluate(LINEAR_CE, fmt, cases)
    for m in ("materialized_log_softmax", "materialized_naive", "vocab_chunks_online"):
        assert options[m].value.tobytes() == plain[m].value.tobytes()
        assert options[m].status.tolist() == plain[m].status.tolist()
        assert list(options[m].events) == list(plain[m].events)
    # with z = 0 the per-block z-loss is the online method
    assert options["vocab_chunks_z_per_chunk"].value.tobytes() == options["vocab_chunks_online"].value.tobytes()


def test_default_linear_ce_has_no_option_method():
    """The per-block z-loss method exists only under the options: the default experiment's methods are as they
    were (the default run's JSON was compared byte for byte with main's when this was built)."""
    assert "vocab_chunks_z_per_chunk" not in LINEAR_CE.method_names
    assert with_options_experiment().method_names == ("materialized_log_softmax", "materialized_naive",
                                                      "vocab_chunks_online", "vocab_chunks_z_per_chunk")


@pytest.mark.parametrize("args, fragment", [
    (["--softcap", "0"], "softcap 0.0 must be a finite number > 0"),
    (["--temperature", "-1"], "temperature -1.0 must be a finite number > 0"),
])
def test_bad_options_for_linear_ce_are_one_line_and_exit_2(capsys, args, fragment):
    code, out, err = run(capsys, "compare", "-e", "linear_ce", *args, "-d", "bf16")
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
