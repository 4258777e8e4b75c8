"""Precision policies (issue #19 item 1): STORAGE[@COMPUTE][+ACCUMULATE], checked against plain code.

The checkers here share nothing with the package's arithmetic: numpy float32 operations, correctly
rounded float32 exp / log from tests/independent/policy_scan.py (numpy's float64 function, cast, with
mpmath where the double rounding could matter), ml_dtypes' float32 -> bfloat16 cast (one rounding).
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from clihelp import one_line_error, run

from stabilitylab import api
from stabilitylab.analysis.engine import evaluate
from stabilitylab.experiments.accumulation import ACCUMULATION, Terms, terms
from stabilitylab.experiments.base import ParamNames
from stabilitylab.experiments.softmax_ce import SOFTMAX_CE, Logits
from stabilitylab.numerics.arith import Arith
from stabilitylab.numerics.formats import FORMATS, format_names
from stabilitylab.numerics.policies import format_or_policy

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("policy_scan", ROOT / "tests" / "independent" / "policy_scan.py")
ps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ps)

BF16 = np.dtype(ml_dtypes.bfloat16)


# ------------------------------------------------------------------ spelling
@pytest.mark.parametrize("spelling, name, parts", [
    ("bf16@fp32", "bfloat16@float32", ("bfloat16", "float32", "float32", "bfloat16")),
    ("BFloat16 @ Single", "bfloat16@float32", ("bfloat16", "float32", "float32", "bfloat16")),
    ("bf16+fp32", "bfloat16+float32", ("bfloat16", "bfloat16", "float32", "bfloat16")),
    ("bf16@fp32+fp64", "bfloat16@float32+float64", ("bfloat16", "float32", "float64", "bfloat16")),
    ("half@f32", "float16@float32", ("float16", "float32", "float32", "float16")),
    ("fp32@bf16", "float32@bfloat16", ("float32", "bfloat16", "bfloat16", "float32")),
    ("bf16@autocast", "bfloat16@autocast", ("bfloat16", "float32", "float32", "float32")),
    ("fp16@hf-upcast", "float16@hf-upcast", ("float16", "float32", "float32", "float32")),
])
def test_spellings_and_canonical_names(spelling, name, parts):
    f = format_or_policy(spelling)
    assert f.is_policy and f.name == name
    got = (f.storage_format.name, f.compute_format.name, f.accumulate_format.name, f.output_format.name)
    assert got == parts
    assert format_or_policy(name) is f  # the canonical name parses back to the same object
    out = f.output_format
    assert (f.max, f.tiny, f.eps, f.default_tolerance) == (out.max, out.tiny, out.eps, out.default_tolerance)


@pytest.mark.parametrize("spelling, pure", [("bf16@bf16", "bfloat16"), ("fp32+fp32", "float32"),
                                            ("fp16@fp16+fp16", "float16")])
def test_a_spelling_that_reduces_to_a_pure_format_is_that_format(spelling, pure):
    assert format_or_policy(spelling) is FORMATS[pure]


def test_pure_formats_and_the_listings_are_unchanged():
    assert format_names() == [*FORMATS, "all", "every"]
    assert all(not f.is_policy and f.storage_format is f and f.output_format is f for f in FORMATS.values())


@pytest.mark.parametrize("spelling, fragment", [
    ("bf16@xx", "unknown compute format 'xx'"),
    ("yy@fp32", "unknown storage format 'yy'"),
    ("bf16@", "compute format is missing"),
    ("bf16@fp32@fp64", "at most one @"),
    ("bf16@fp32+bf16", "accumulating in bfloat16 loses values"),
    ("fp32@autocast", "preset is for float16 and bfloat16"),
    ("bf16@hf-upcast+fp64", "fixes the accumulation"),
])
def test_nonsense_is_refused_with_one_line(capsys, spelling, fragment):
    one_line_error(*run(capsys, "compare", "-e", "softmax_ce", "-d", spelling), fragment)


def test_train_refuses_policies_with_one_line(capsys):
    one_line_error(*run(capsys, "train", "-d", "bf16@fp32"), "precision policies (bfloat16@float32) are not supported",
                   "float16")


# ------------------------------------------------------------------ values against plain code
def _tree32(values: np.ndarray) -> np.ndarray:
    """Pairwise sum along the last axis in float32: neighbours level by level, an odd last one passes up."""
    level = [values[:, i] for i in range(values.shape[1])]
    while len(level) > 1:
        level = [level[i] + level[i + 1] if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
    return level[0]


def _plain_log_softmax(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """bf16@fp32 log_softmax by hand: float32 max, subtraction, exp, pairwise sum, log; one rounding to bf16."""
    x32 = x.astype(np.float32)
    z = x32 - x32.max(axis=1, keepdims=True)
    e = ps.exp32(z.reshape(-1)).reshape(z.shape)
    s = _tree32(e)
    loss = ps.log32(s) - z[np.arange(len(x)), labels]
    return loss.astype(BF16).astype(np.float64)


def test_bf16_at_fp32_log_softmax_equals_a_plain_float32_computation():
    rng = np.random.default_rng(19)
    rows, k = 3000, 37
    x = (rng.standard_normal((rows, k)) * rng.choice([1, 8, 40], (rows, 1))).astype(BF16).astype(np.float64)
    labels = rng.integers(0, k, rows)
    cases = Logits(ParamNames("row", np.arange(rows)), x, labels, np.full(rows, k))
    fmt = format_or_policy("bf16@fp32")
    tool = evaluate(SOFTMAX_CE, fmt, cases, methods=["log_softmax"])["log_softmax"].value.astype(np.float64)
    plain = _plain_log_softmax(x, labels)
    assert np.array_equal(tool, plain)
    pure = evaluate(SOFTMAX_CE, FORMATS["bfloat16"], cases, methods=["log_softmax"])["log_softmax"].value
    assert np.count_nonzero(pure.astype(np.float64) != plain) > rows // 10  # the policy is not the pure arithmetic


def test_user_logits_under_a_policy_equal_the_plain_computation(tmp_path):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((4000, 20)) * 6).astype(np.float32)
    path = tmp_path / "logits.npy"
    np.save(path, x)
    labels = np.argmax(x, axis=1)  # (no labels given: each row's argmax)
    result = api.compare(logits=str(path), dtypes=["bf16@fp32"], rows=True)
    r = result.rows
    mine = (r["dtype"] == "bfloat16@float32") & (r["method"] == "log_softmax")
    order = np.argsort(r["row"][mine])
    stored = x.astype(BF16).astype(np.float64)  # the storage step: one rounding float32 -> bfloat16
    assert np.array_equal(r["value"][mine][order].astype(np.float64), _plain_log_softmax(stored, labels))


def test_compare_shows_pure_and_policy_columns_side_by_side(capsys):
    code, out, _ = run(capsys, "compare", "-e", "softmax_ce", "-d", "bf16", "-d", "bf16@fp32", "-d", "fp16@fp32",
                       "--format", "json")
    assert code == 0
    doc = json.loads(out)
    dtypes = {r["dtype"] for r in doc["results"]}
    assert dtypes == {"bfloat16", "bfloat16@float32", "float16@float32"}
    code, out, _ = run(capsys, "compare", "-e", "softmax_ce", "-d", "bf16", "-d", "bf16@fp32", "--format", "markdown")
    assert code == 0 and "| bfloat16 | bfloat16@float32 |" in out


# ------------------------------------------------------------------ accumulation
def _plain_running_sum_f32(v: float, n: int) -> np.float32:
    s = np.float32(0)
    t = np.float32(v)
    for _ in range(n):
        s = np.float32(s + t)
    return s


def test_the_accumulation_format_matters_on_a_long_sum():
    n = 10_000
    cases = terms([("log(0.1),n=10^4", math.log(0.1), n)])
    v = float(np.float64(math.log(0.1)).astype(np.float32).astype(BF16))  # the input, stored as bfloat16
    by = {name: evaluate(ACCUMULATION, format_or_policy(name), cases, methods=["sequential", "pairwise"])
          for name in ("bf16", "bf16+fp32")}
    plain = float(np.float32(_plain_running_sum_f32(v, n)).astype(BF16))  # float32 loop, rounded once to bf16
    assert float(by["bf16+fp32"]["sequential"].value[0]) == plain
    assert float(by["bf16"]["sequential"].value[0]) != plain  # pure bf16 stalls (-1024)
    assert by["bf16+fp32"]["sequential"].status[0] == "ok" and by["bf16"]["sequential"].status[0] == "inaccurate"
    tree = _tree32(np.full((1, n), v, dtype=np.float32))[0]
    assert float(by["bf16+fp32"]["pairwise"].value[0]) == float(np.float32(tree).astype(BF16))


def test_a_sum_rounded_back_to_the_compute_format_is_judged_there():
    # fp16+fp32, n ones: float32 sums them exactly (n <= 2**24), and the finished sum is rounded to
    # float16 once: 60000 is exact there (pure float16's loop stalls at 2048); 10**8 stalls at 2**24
    # in float32 and overflows float16 in that last rounding (an overflow event; the exact sum is
    # beyond float16 too, so the status is range)
    cases = Terms(ParamNames("n", np.array([60000, 10**8])), np.ones(2), np.array([60000, 10**8]))
    o = evaluate(ACCUMULATION, format_or_policy("fp16+fp32"), cases, methods=["sequential"])["sequential"]
    pure = evaluate(ACCUMULATION, FORMATS["float16"], cases, methods=["sequential"])["sequential"]
    assert o.value[0] == 60000 and o.status[0] == "ok" and pure.value[0] == 2048
    assert np.isinf(o.value[1]) and o.status[1] == "range" and "overflow" in o.events[1]


def test_delivery_rounds_once_to_the_output_format_with_its_events():
    fmt = format_or_policy("fp16@fp32")
    a = Arith(fmt, 3)
    y = a.deliver(np.array([1e5, 1e-9, 1 + 2.0**-12], dtype=np.float32))
    assert y[0] == np.inf and y[1] == 0 and y[2] == 1  # 1 + 2**-12 is a tie: to even
    assert [e for e in a.events()] == [("overflow",), ("underflow",), ()]
    pure = Arith(FORMATS["float16"], 1)
    same = np.array([3.0], dtype=np.float32)
    assert pure.deliver(same) is same  # the identity for a pure format


# ------------------------------------------------------------------ thresholds against the independent scan
@pytest.fixture(scope="module")
def tool_thresholds():
    out = subprocess.run([sys.executable, "-m", "stabilitylab", "thresholds", "-e", "softmax_ce",
                          "--family", "overflow", "--family", "underflow", "-d", "bf16@fp32", "-d", "fp16@fp32",
                          "--format", "json"], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout)["thresholds"]


@pytest.mark.parametrize("policy", list(ps.POLICIES))
def test_policy_thresholds_agree_with_the_independent_exhaustive_scan(tool_thresholds, policy):
    theirs = ps.scan(policy)
    mine = {(r["family"], r["method"]): r for r in tool_thresholds if r["dtype"] == policy}
    assert set(theirs) <= set(mine)
    for key, (inaccurate, failure) in theirs.items():
        r = mine[key]
        assert (r["first_inaccurate"], r["first_failure"]) == (inaccurate, failure), (policy, key)
        assert r["exact"] == {"first_inaccurate": True, "first_failure": True}  # exhaustive: the 16-bit grid
    assert any(v[0] is not None for v in theirs.values())  # the scan found failures to compare


def test_a_black_box_sees_the_storage_dtype_and_its_result_is_rounded_to_the_output_format():
    a = Arith(format_or_policy("bf16@hf-upcast"), 2)
    seen = []

    def target(x):
        seen.append(x.dtype)
        return x.astype(np.float64) / 3

    x = a.load(np.array([[1.0], [2.0 + 2.0**-20]]))  # the second rounds to 2 in bfloat16
    y = a.external(target, x, shape=(1,))
    assert seen == [BF16]
    assert y[:, 0].tolist() == [float(np.float32(1 / 3)), float(np.float32(2 / 3))]  # float32: the output format


def test_baselines_key_policies_by_their_canonical_name_and_check_them(capsys, tmp_path):
    path = tmp_path / "baseline.json"
    code, _, err = run(capsys, "check", "--baseline", path, "--update", "-d", "bf16@fp32")
    assert code == 0, err
    keys = json.loads(path.read_text())["entries"]
    assert "softmax_ce/overflow/naive_softmax_log/bfloat16@float32" in keys
    assert all(k.endswith("/bfloat16@float32") for k in keys)
    code, out, err = run(capsys, "check", "--baseline", path)  # no -d: the policies the baseline names
    assert code == 0 and f"{len(keys)} entries compared: 0 regressed" in out + err, out + err


def test_a_policy_with_float32_storage_gets_bounds_never_claimed_exact():
    rows = api.thresholds("softmax_ce", ["fp32@fp64"], families=["overflow"]).rows
    assert rows and all(not r.exact_inaccurate and not r.exact_failure for r in rows)  # no interval proofs
    fmt = format_or_policy("fp32@fp64")
    found = [r for r in rows if r.first_inaccurate is not None]
    assert found
    for r in found:  # each bound is a failing input: its status, evaluated again, blames the method
        d = np.array([r.first_inaccurate])
        cases = Logits(ParamNames("d", d), np.stack([d, np.zeros(1)], axis=1), np.zeros(1, dtype=np.int64),
                       np.full(1, 2))
        o = evaluate(SOFTMAX_CE, fmt, cases, methods=[r.method])[r.method]
        assert o.status[0] in ("inaccurate", "overflow", "underflow", "nan"), (r.method, o.status[0])


def test_compute_narrower_than_storage_converts_the_inputs_once_and_says_so(capsys):
    a = Arith(format_or_policy("fp32@bf16"), 2)
    x = a.load(np.array([[3.4e38], [1 + 2.0**-10]]))  # float32 values; above bfloat16's max + ulp/2; below its ulp
    assert np.isinf(x[0, 0]) and x[1, 0] == 1
    assert a.input_lost.tolist() == [True, False] and a.events() == [("overflow",), ()]
    code, out, _ = run(capsys, "compare", "-e", "softmax_ce", "-d", "fp32@bf16", "--format", "json")
    assert code == 0
    assert any("float32@bfloat16: the compute format bfloat16 does not hold" in n for n in json.loads(out)["notes"])
