"""compare -e linear_ce --problem: the bulk path's fused dot-product model against the small engine (bit for
bit where the two must agree), its input checks, and the chunk-buffer finding from the tool's JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import mpmath
import numpy as np
import pytest
from click.testing import CliRunner

from stabilitylab import api
from stabilitylab.analysis import linear_bulk
from stabilitylab.analysis.outcome import STATUSES
from stabilitylab.cli import cli
from stabilitylab.errors import InputError
from stabilitylab.experiments import linear_ce
from stabilitylab.io.problem import open_problem
from stabilitylab.numerics.arith import Arith
from stabilitylab.numerics.policies import format_or_policy


def _save(folder, hidden, weight, labels):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "hidden.npy", np.asarray(hidden))
    np.save(folder / "weight.npy", np.asarray(weight))
    np.save(folder / "labels.npy", np.asarray(labels))
    return folder


def _small_engine(fmt, hidden, weight, labels, chunks, vocab_chunk, weight_entry, hidden_entry):
    cases = linear_ce.problem(hidden, weight, labels, "x", chunks=chunks, vocab_chunk=vocab_chunk,
                              weight_entry=weight_entry, hidden_entry=hidden_entry)
    out = {}
    for method in linear_ce.LINEAR_CE.methods:
        a = Arith(fmt, 1)
        out[method.name] = float(a.deliver(method.kernel(a, linear_ce.load(a, cases)))[0])
    return out


PAIRS = {"materialized_log_softmax": "fused:materialized_log_softmax", "materialized_naive": "fused:materialized_naive",
         "vocab_chunks_online": "fused:vocab_chunks_online", "grad_logit_true": "fused:grad_logit_true",
         "grad_logit_true_storage": "fused:grad_logit_true_storage", "grad_weight": "fused:grad_weight",
         "grad_weight_chunks_storage": "fused:grad_weight_chunks_storage",
         "grad_weight_chunks_fp32": "fused:grad_weight_chunks_fp32", "grad_hidden": "fused:grad_hidden"}


@pytest.mark.parametrize("dtype", ["bf16", "bf16@fp32", "float32", "fp16"])
@pytest.mark.parametrize("seed", range(2))
def test_fused_model_equals_the_small_engine_where_the_dots_are_exact(tmp_path, dtype, seed):
    """D = 1 and N = 1: every logit is one product (exact in float64, rounded once both ways); V = 2 with
    weights +-2**k, so that the two products of dL/dH are exact and their sum rounds once both ways."""
    rng = np.random.default_rng(seed)
    fmt = format_or_policy(dtype)
    for v, block in ((37, 8), (2, 2)):
        weight = rng.normal(0, 3, (v, 1)) if v > 2 else np.ldexp(rng.choice([-1.0, 1.0], (v, 1)),
                                                                   rng.integers(-2, 3, (v, 1)))
        hidden = rng.normal(0, 2, (1, 1))
        labels = rng.integers(0, v, 1)
        folder = _save(tmp_path / f"p{v}", fmt.storage_format.round(hidden, np.float64),
                       fmt.storage_format.round(weight, np.float64), labels)
        bulk = linear_bulk.run(open_problem(folder), (fmt,), chunks=1, vocab_chunk=block, keep=True)
        for col in range(v):
            small = _small_engine(fmt, hidden, weight, labels, 1, block, (col, 0), (0, 0))
            for name, fused in PAIRS.items():
                if name == "grad_hidden" and v > 2:
                    continue
                entries = bulk.cells[fmt.name, fused].entries["value"]
                got = entries[col, 0] if name.startswith("grad_weight") else entries[0, 0]
                assert np.array_equal(got, small[name], equal_nan=True), (name, col, got, small[name])


def test_problem_checks_are_one_line(tmp_path):
    ok = _save(tmp_path / "ok", np.ones((3, 4), np.float32), np.ones((5, 4), np.float32), [0, 1, 4])
    assert open_problem(ok).vocabulary == 5
    cases = [
        (_save(tmp_path / "d", np.ones((3, 4)), np.ones((5, 3)), [0, 1, 2]), "their D must match"),
        (_save(tmp_path / "y", np.ones((3, 4)), np.ones((5, 4)), [0, 1, 5]), "out of range; allowed 0..4"),
        (_save(tmp_path / "n", np.ones((3, 4)), np.ones((5, 4)), [0, 1]), "one label per token"),
        (_save(tmp_path / "i", np.ones((3, 4), np.int32), np.ones((5, 4)), [0, 1, 2]), "floating-point values"),
        (_save(tmp_path / "f", np.ones((3, 4)), np.ones((5, 4)), [0.5, 1, 2]), "labels must be integers"),
    ]
    (tmp_path / "m").mkdir()
    np.save(tmp_path / "m" / "hidden.npy", np.ones((3, 4)))
    cases.append((tmp_path / "m", "has no weight.npy"))
    np.save(tmp_path / "o" / "x.npy" if False else tmp_path / "obj.npy", np.array([object()], dtype=object))
    pk = _save(tmp_path / "pk", np.ones((3, 4)), np.ones((5, 4)), [0, 1, 2])
    np.save(pk / "weight.npy", np.array([[object()]], dtype=object), allow_pickle=True)
    cases.append((pk, "numbers are required"))
    for folder, message in cases:
        with pytest.raises(InputError, match=message) as info:
            open_problem(folder)
        assert "\n" not in str(info.value)
    r = CliRunner().invoke(cli, ["compare", "-e", "linear_ce", "--problem", str(tmp_path / "y"), "-d", "bf16"])
    assert r.exit_code == 2 and "out of range" in r.output and "Traceback" not in r.output


def _grad_weight_bits(folder, chunks):
    r = CliRunner().invoke(cli, ["compare", "-e", "linear_ce", "--problem", str(folder), "-d", "bf16@fp32",
                                 "--chunks", str(chunks), "--format", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)["linear_ce_problem"]
    cells = {c["method"]: c for c in doc["cells"]}
    return (cells["fused:grad_weight_chunks_storage"]["median_error_bits"],
            cells["fused:grad_weight_chunks_fp32"]["median_error_bits"],
            cells["fused:grad_weight_chunks_storage"]["counts"]["inaccurate"])


def test_storage_chunk_buffer_error_grows_with_chunks_and_float32_removes_it(tmp_path):
    """Liger-Kernel #512 from the tool's JSON: a bfloat16 grad_weight buffer loses more bits as the token
    chunks grow; a float32 buffer does not."""
    rng = np.random.default_rng(5)
    n, d, v = 256, 8, 40
    folder = _save(tmp_path / "c", rng.normal(0, 1, (n, d)).astype(np.float32),
                   rng.normal(0, 1 / np.sqrt(d), (v, d)).astype(np.float32), rng.integers(0, v, n))
    runs = {k: _grad_weight_bits(folder, k) for k in (1, 16, 256)}
    storage = [runs[k][0] for k in (1, 16, 256)]
    fp32 = [runs[k][1] for k in (1, 16, 256)]
    assert storage[0] < storage[1] < storage[2], storage
    assert fp32[0] == fp32[1] == fp32[2] == storage[0], (fp32, storage)
    assert storage[2] >= fp32[2] + 1, (fp32, storage)
    assert runs[256][2] > runs[1][2]


_spec = importlib.util.spec_from_file_location(
    "linear_bulk_check", Path(__file__).parent / "independent" / "linear_bulk_check.py")
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)

KIND = {"materialized_log_softmax": "loss", "materialized_naive": "loss", "vocab_chunks_online": "loss",
        "grad_logit_true": "p_y - 1", "grad_logit_true_storage": "p_y - 1", "grad_hidden": "grad_hidden",
        "grad_weight": "grad_weight", "grad_weight_chunks_storage": "grad_weight",
        "grad_weight_chunks_fp32": "grad_weight"}


@pytest.mark.parametrize("v", [pytest.param(300, marks=pytest.mark.slow), 120])
def test_every_entry_against_the_independent_checker(tmp_path, v):
    """N=8, D=16, V=300 (slow; V=120 by default) in bf16 and bf16@fp32: every value equals the plain
    fused-model simulation, every reference is within its stated bound of the exact value (mpmath /
    Fraction), and every status and error bits follow from the exact value by the plain rule."""
    rng = np.random.default_rng(11)
    n, d, k, block = 8, 16, 4, 64
    # bfloat16 values of 4 significant bits and exponents in [-3, 2]: every float64 dot product is exact
    hidden = rng.integers(8, 16, (n, d)) * np.ldexp(1.0, rng.integers(-6, -1, (n, d))) * rng.choice([-1, 1], (n, d))
    weight = rng.integers(8, 16, (v, d)) * np.ldexp(1.0, rng.integers(-8, -3, (v, d))) * rng.choice([-1, 1], (v, d))
    labels = rng.integers(0, v, n)
    folder = _save(tmp_path / "p", hidden.astype(np.float32), weight.astype(np.float32), labels)
    result = api.compare("linear_ce", ["bf16", "bf16@fp32"], problem=folder, chunks=k, vocab_chunk=block,
                         keep_entries=True)
    truth = check.exact(hidden.tolist(), weight.tolist(), labels.tolist())
    for fmt, (ps, pc, pa) in ((format_or_policy("bf16"), (8, 8, 8)), (format_or_policy("bf16@fp32"), (8, 24, 24))):
        sim = check.fused(hidden.tolist(), weight.tolist(), labels.tolist(), ps, pc, pa, k, block)
        for name, kind in KIND.items():
            e = result.linear.cells[fmt.name, "fused:" + name].entries
            exact = truth[kind]
            exact = [[x] for x in exact] if kind in ("loss", "p_y - 1") else exact
            values = sim[name]
            values = [[x] for x in values] if kind in ("loss", "p_y - 1") else values
            assert e["value"].shape == (len(exact), len(exact[0]))
            flagged = 0
            for i, row in enumerate(exact):
                for j, x in enumerate(row):
                    got = float(e["value"][i, j])
                    assert got == float(values[i][j]), (fmt.name, name, i, j, got, values[i][j])
                    ref, bound = float(e["reference"][i, j]), float(e["bound"][i, j])
                    assert abs(mpmath.mpf(ref) - x) <= bound, (fmt.name, name, i, j, ref, x, bound)
                    status = STATUSES[int(e["status"][i, j])]
                    assert status == check.status(got, x, ps), (fmt.name, name, i, j, got, x, status)
                    if abs(bound) < 2.0**-20 * abs(float(x)):
                        want = check.error_bits(got, x, ps)
                        assert abs(float(e["error_bits"][i, j]) - want) <= 1e-3 * max(1.0, want), (name, i, j)
                    else:
                        flagged += 1
            assert flagged <= e["value"].size // 10, (fmt.name, name, flagged)


def test_problem_options_are_refused_where_they_do_not_apply(tmp_path):
    folder = _save(tmp_path / "p", np.ones((4, 2), np.float32), np.ones((3, 2), np.float32), [0, 1, 2, 0])
    runner = CliRunner()
    for args, message in ((["--chunks", "2"], "--chunks needs --problem"),
                          (["-e", "softmax_ce", "--problem", str(folder)], "choose -e linear_ce alone"),
                          (["-e", "linear_ce", "--problem", str(folder), "--chunks", "9"], "more than the 4 tokens"),
                          (["-e", "linear_ce", "--problem", str(folder), "--chunks", "0"], "a positive integer"),
                          (["-e", "linear_ce", "--problem", str(folder), "-d", "mxfp4"], "block-scaled"),
                          (["-e", "linear_ce", "--problem", str(tmp_path / "nothing")], "does not exist")):
        r = runner.invoke(cli, ["compare", *args])
        assert r.exit_code == 2 and message in r.output, (args, r.output)
        assert "Traceback" not in r.output


def test_problem_json_and_table(tmp_path):
    rng = np.random.default_rng(2)
    folder = _save(tmp_path / "p", rng.normal(0, 1, (16, 8)).astype(np.float32),
                   rng.normal(0, 0.4, (50, 8)).astype(np.float32), rng.integers(0, 50, 16))
    r = CliRunner().invoke(cli, ["compare", "-e", "linear_ce", "--problem", str(folder), "--format", "json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)["linear_ce_problem"]
    assert (doc["tokens"], doc["hidden_size"], doc["vocabulary"], doc["chunks"]) == (16, 8, 50, 8)
    cells = {(c["dtype"], c["method"]): c for c in doc["cells"]}
    assert len(cells) == 2 * len(linear_bulk.METHODS)
    gw = cells["bfloat16", "fused:grad_weight_chunks_storage"]
    assert gw["entries"] == 50 * 8 == sum(gw["counts"].values())
    assert gw["witnesses"] and gw["witnesses"][0]["error_bits"] == gw["worst_error_bits"]
    assert len(doc["token_rows"]["bfloat16"]["fused:materialized_log_softmax"]) == 16
    assert set(doc["reference_bounds"]) == {"loss (relative)", "p_y - 1 (relative)", "grad_weight (absolute)",
                                            "grad_hidden (absolute)"}
    text = CliRunner().invoke(cli, ["compare", "-e", "linear_ce", "--problem", str(folder)]).output
    assert "fused:grad_weight_chunks_storage" in text and "fused dot product (a model)" in text


@pytest.mark.parametrize("extra", [("--ignore-index", "-100"), ("--reduction", "sum"), ("--labels", "y.npy"),
                                   ("--rows", "all"), ("--p", "0.5")])
def test_problem_refuses_options_of_other_inputs(tmp_path, extra):
    folder = _save(tmp_path / "p", np.ones((4, 2), np.float32), np.ones((3, 2), np.float32), [0, 1, 2, 0])
    r = CliRunner().invoke(cli, ["compare", "-e", "linear_ce", "--problem", str(folder), *extra])
    assert r.exit_code == 2 and f"{extra[0]} does not apply to --problem" in r.output, r.output


def test_problem_from_safetensors(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(3)
    h, w, y = (rng.normal(0, 1, (6, 4)).astype(np.float32), rng.normal(0, 1, (9, 4)).astype(np.float32),
               rng.integers(0, 9, 6))
    st.save_file({"hidden": h, "weight": w, "labels": y}, str(tmp_path / "p.safetensors"))
    folder = _save(tmp_path / "same", h, w, y)
    a = api.compare("linear_ce", ["bf16"], problem=tmp_path / "p.safetensors", chunks=2).to_dict()
    b = api.compare("linear_ce", ["bf16"], problem=folder, chunks=2).to_dict()
    assert a["linear_ce_problem"]["cells"] == b["linear_ce_problem"]["cells"]
    st.save_file({"hidden": h, "weights": w, "labels": y}, str(tmp_path / "q.safetensors"))
    with pytest.raises(InputError, match="weight") as info:
        open_problem(tmp_path / "q.safetensors")
    assert "\n" not in str(info.value)
