"""linear_ce (issue #20 item 1): loss and gradient entries of hidden @ weight.T cross-entropy, checked
against the plain code of tests/independent/linear_ce_check.py, and the issue's Done-means-1 read from
the tool's own JSON output."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import ml_dtypes
import mpmath
import numpy as np
import pytest
from clihelp import run

from stabilitylab.analysis.engine import evaluate
from stabilitylab.experiments import EXPERIMENTS
from stabilitylab.experiments.linear_ce import LINEAR_CE, LinearCEBatch, concat, problem
from stabilitylab.numerics import reference
from stabilitylab.numerics.arith import Arith
from stabilitylab.numerics.policies import format_or_policy

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("linear_ce_check", ROOT / "tests" / "independent" / "linear_ce_check.py")
ic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ic)


def _small(seed: int, n: int = 8, v: int = 5, d: int = 3, chunks: int = 1) -> LinearCEBatch:
    rng = np.random.default_rng(seed)
    hidden = rng.normal(0, 2, (n, d))
    weight = rng.normal(0, 2, (v, d))
    labels = rng.integers(0, v, n)
    return problem(hidden, weight, labels, f"seed={seed}", chunks=chunks, weight_entry=(int(labels[1]), d - 1),
                   hidden_entry=(n - 1, 1))


def test_registered():
    assert EXPERIMENTS["linear_ce"] is LINEAR_CE


def _bf16_valued(case: LinearCEBatch) -> LinearCEBatch:
    def r(a):
        return a.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)
    return replace(case, hidden=tuple(map(r, case.hidden)), weight=tuple(map(r, case.weight)))


@pytest.mark.parametrize("narrow", [False, True])
def test_exact_references_match_independent_fractions_and_mpmath(narrow):
    """In float64 the inputs are used as given: the four exact values of each problem equal the plain
    Fraction + mpmath ones to 1e-25 relative and their float64 reference to 2**-52 (both sides are far more
    precise).  ``narrow``: inputs of 8 bits (the reference's float64 hi + lo dot products), else of 53 bits
    (mpmath sums the products)."""
    cases = concat([_small(s, d=(40 if narrow else 3)) for s in range(4)])
    if narrow:
        cases = _bf16_valued(cases)
    f64 = format_or_policy("float64")
    out = evaluate(LINEAR_CE, f64, cases, fast_reference=False)
    inputs = LINEAR_CE.load(Arith(f64, len(cases)), cases)
    exacts = {m: reference.exact(LINEAR_CE.truth_of(LINEAR_CE.method(m)), inputs)
              for m in ("materialized_log_softmax", "grad_weight", "grad_hidden", "grad_logit_true")}
    for i in range(len(cases)):
        h, w, y = cases.hidden[i].tolist(), cases.weight[i].tolist(), cases.labels[i].tolist()
        loss, dW, dH, true = ic.exact(h, w, y)
        (v, j), (n, k) = cases.weight_entry[i].tolist(), cases.hidden_entry[i].tolist()
        wanted = {"materialized_log_softmax": loss, "grad_weight": dW[v][j], "grad_hidden": dH[n][k],
                  "grad_logit_true": true[n]}
        for method, value in wanted.items():
            e = exacts[method]
            with mpmath.workdps(60):
                got = (mpmath.mpf(float(e.hi[i])) + mpmath.mpf(float(e.lo[i]))) * mpmath.mpf(2) ** int(e.scale[i])
                assert abs(got - value) <= abs(value) * 1e-25, (method, got, value)
            ref = out[method].reference[i]
            assert abs(ref - float(value)) <= abs(float(value)) * 2.0**-52, (method, ref, value)


@pytest.mark.parametrize("policy, bits", [("bfloat16", (8, 8, 8)), ("bfloat16@float32", (8, 24, 24)),
                                          ("float16", (11, 11, 11)), ("bfloat16+float32", (8, 8, 24))])
@pytest.mark.parametrize("seed, chunks", [(1, 4), (2, 3), (3, 8)])
def test_simulated_kernels_match_the_plain_model(policy, bits, seed, chunks):
    """Bit for bit: the chunked weight-gradient buffers (storage, float32), p_y - 1 in storage and in the
    compute format, and the materialized loss, against tests/independent/linear_ce_check.simulate."""
    case = _small(seed, chunks=chunks)
    out = evaluate(LINEAR_CE, format_or_policy(policy), case, fast_reference=False)
    h, w, y = case.hidden[0].tolist(), case.weight[0].tolist(), case.labels[0].tolist()
    wanted = ic.simulate(h, w, y, *bits, chunks, tuple(case.weight_entry[0].tolist()), int(case.hidden_entry[0, 0]))
    names = ("grad_weight_chunks_storage", "grad_weight_chunks_fp32", "grad_logit_true_storage", "grad_logit_true",
             "materialized_log_softmax")
    for name, value in zip(names, wanted):
        assert out[name].value[0] == float(value), (name, out[name].value[0], float(value))


@pytest.fixture(scope="module")
def compare_json(tmp_path_factory):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "stabilitylab", "compare", "-e", "linear_ce", "-d", "bf16",
                           "-d", "bf16@fp32", "--format", "json"], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _rows(doc, method, dtype, prefix):
    return [r for r in doc["results"] if r["method"] == method and r["dtype"] == dtype and r["case"].startswith(prefix)]


@pytest.mark.parametrize("dtype", ["bfloat16", "bfloat16@float32"])
def test_done_means_1_chunk_accumulation(compare_json, dtype):
    """The storage-format weight-gradient buffer's error grows with the number of token chunks (never
    shrinks along 1, 4, ..., 1024; at 1024 chunks over 5 bits more than at 1 and inaccurate); the float32
    buffer stays within one bit of error and ok at every chunk count."""
    storage = _rows(compare_json, "grad_weight_chunks_storage", dtype, "chunks=")
    fp32 = _rows(compare_json, "grad_weight_chunks_fp32", dtype, "chunks=")
    chunks = [int(r["case"].split()[0].split("=")[1]) for r in storage]
    assert chunks == [1, 4, 16, 64, 256, 1024]
    bits = [r["error_bits"] for r in storage]
    assert all(b <= c for b, c in zip(bits, bits[1:])), bits
    assert bits[-1] > bits[0] + 5 and storage[-1]["status"] == "inaccurate", bits
    assert all(r["status"] == "ok" and r["error_bits"] < 1 for r in fp32), [r["error_bits"] for r in fp32]
    assert {r["exact"] for r in storage} == {r["exact"] for r in fp32} and len({r["exact"] for r in fp32}) == 1


def test_done_means_1_true_class_gradient(compare_json):
    """p_y - 1 written to bfloat16 first: inaccurate at p_y = 0.99 and 0.999 (0 at 0.999: 100 % error) even
    when computing in float32; formed in float32 (bf16@fp32) it is ok at all three."""
    storage = _rows(compare_json, "grad_logit_true_storage", "bfloat16@float32", "confident:")
    compute = _rows(compare_json, "grad_logit_true", "bfloat16@float32", "confident:")
    assert [r["status"] for r in storage] == ["ok", "inaccurate", "inaccurate"]
    assert storage[2]["value"] == 0 and storage[2]["rel_error"] == 1
    assert [r["status"] for r in compute] == ["ok", "ok", "ok"]
    assert [r["status"] for r in _rows(compare_json, "grad_logit_true", "bfloat16", "confident:")] == \
        ["ok", "inaccurate", "inaccurate"]


def test_thresholds_chunks_and_confident(capsys):
    """thresholds -e linear_ce: the storage buffer first fails at 2**9 = 512 chunks (bf16 and bf16@fp32,
    exact); the float32 buffer never; p_y - 1 in storage fails at a smaller n (p_y nearer 0.5) than in
    the compute format under bf16@fp32."""
    code, out, _ = run(capsys, "thresholds", "-e", "linear_ce", "--family", "linear_ce/chunks", "--family",
                       "linear_ce/confident", "-d", "bf16", "-d", "bf16@fp32", "--format", "json")
    assert code == 0
    rows = {(r["family"], r["method"], r["dtype"]): r for r in json.loads(out)["thresholds"]}
    for dtype in ("bfloat16", "bfloat16@float32"):
        r = rows[("chunks", "grad_weight_chunks_storage", dtype)]
        assert r["first_inaccurate"] == 9 and r["exact"]["first_inaccurate"]
        assert rows[("chunks", "grad_weight_chunks_fp32", dtype)]["first_inaccurate"] is None
    storage = rows[("confident", "grad_logit_true_storage", "bfloat16@float32")]["first_inaccurate"]
    compute = rows[("confident", "grad_logit_true", "bfloat16@float32")]["first_inaccurate"]
    assert storage is not None and compute is not None and storage < compute
