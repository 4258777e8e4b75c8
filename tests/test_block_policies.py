"""Block-scaled formats (MXFP8 / MXFP6 / MXFP4 / NVFP4) as the storage of a precision policy (issue #19 item 5):
parsing and refusals, a simulated case that flushes in mxfp4 but not in mxfp8, the bulk path's flushed counts
against a plain recount (blockscale.quantize) and against the independent checker
(tests/independent/block_quantizer_check.py), NVFP4's file-wide tensor scale independent of chunks and workers,
and the block_spread family's first flush against a plain computation from the formats' constants."""

from __future__ import annotations

import importlib.util
import json
import math
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from clihelp import one_line_error, run

from stabilitylab.analysis import engine, streaming
from stabilitylab.analysis.findings import block_findings, threshold_findings
from stabilitylab.analysis.thresholds import family_thresholds
from stabilitylab.experiments.base import ParamNames, Settings
from stabilitylab.experiments.softmax_ce import SOFTMAX_CE, Logits, first_flush
from stabilitylab.numerics import blockscale
from stabilitylab.numerics.arith import BLOCK_COUNTS, Arith
from stabilitylab.numerics.formats import FORMATS
from stabilitylab.numerics.policies import format_or_policy

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("block_quantizer_check",
                                               ROOT / "tests" / "independent" / "block_quantizer_check.py")
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)

BLOCKS = ("mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "nvfp4")


# ------------------------------------------------------------------------------------------------ parsing

@pytest.mark.parametrize("spelling,name,compute,accumulate", [
    ("mxfp8", "mxfp8_e4m3", "float32", "float32"),
    ("MXFP8_E4M3", "mxfp8_e4m3", "float32", "float32"),
    ("mxfp8_e5m2", "mxfp8_e5m2", "float32", "float32"),
    ("mxfp6", "mxfp6_e2m3", "float32", "float32"),
    ("mxfp6_e3m2@fp32", "mxfp6_e3m2", "float32", "float32"),
    ("mxfp4_e2m1", "mxfp4", "float32", "float32"),
    ("mxfp4@bf16", "mxfp4@bfloat16", "bfloat16", "bfloat16"),
    ("mxfp4@bf16+fp32", "mxfp4@bfloat16+float32", "bfloat16", "float32"),
    ("nvfp4+fp64", "nvfp4+float64", "float32", "float64"),
    ("nvfp4@fp64", "nvfp4@float64", "float64", "float64"),
])
def test_block_policies_parse_to_one_canonical_policy(spelling, name, compute, accumulate):
    p = format_or_policy(spelling)
    assert p.name == name and p.is_policy and p.block == name.split("@")[0].split("+")[0]
    assert p.compute_format.name == compute and p.accumulate_format.name == accumulate
    # the quantized values are held in the compute format, and the result is delivered there
    assert p.storage_format.name == compute and p.output_format.name == compute
    assert format_or_policy(name) is p  # the canonical name names the same object


def test_element_formats_stay_what_they_are():
    assert format_or_policy("e4m3") is FORMATS["float8_e4m3fn"] and FORMATS["float8_e4m3fn"].block is None


@pytest.mark.parametrize("spelling,fragment", [
    ("bf16@mxfp4", "mxfp4 is a block-scaled format; it can only be the storage format"),
    ("fp32+nvfp4", "nvfp4 is a block-scaled format"),
    ("mxfp4@autocast", "the autocast preset is for float16 and bfloat16 storage"),
    ("mxfp4@fp32+bf16", "accumulating in bfloat16 loses values of the compute format float32"),
    ("mxfp9", "block formats: mxfp8_e4m3 (mxfp8)"),
    ("mxfp4@", "the compute format is missing"),
])
def test_bad_block_policies_exit_2_with_one_line(capsys, spelling, fragment):
    one_line_error(*run(capsys, "compare", "-e", "softmax_ce", "-d", spelling), fragment)


def test_thresholds_refuses_an_unknown_block_family_member_with_one_line(capsys):
    one_line_error(*run(capsys, "thresholds", "-e", "softmax_ce", "-d", "mxfp4", "--family", "block_spreadd"),
                   "no family 'block_spreadd'")


# ------------------------------------------------------------------------------------------------ storage

def test_load_quantizes_per_block_along_the_last_axis_and_counts():
    x = np.array([[20.0, 1.0, 0.25, -3.0], [1.0, 2.0, 3.0, 5.0]])
    a = Arith(format_or_policy("mxfp4"), 2)
    y = a.load(x)
    q = blockscale.quantize(blockscale.BLOCK_FORMATS["mxfp4"], x)
    assert np.array_equal(y, q.values.astype(np.float32))
    assert a.block_counts[BLOCK_COUNTS.index("flushed")].tolist() == [2, 0]  # 1 and 0.25 flush beside 20
    assert a.input_lost.tolist() == [True, False] and a.events()[0] == ("underflow",)


def test_a_one_value_per_case_input_is_its_own_block():
    x = np.array([7.5, 1e-30, 0.3])
    a = Arith(format_or_policy("mxfp4"), 3)
    y = a.load(x)
    want = [float(check.quantize_block("mxfp4", [v])[0][0]) for v in x]
    assert y.tolist() == want  # nothing flushes alone; 7.5 saturates to 6 (floor scale 1)
    assert a.block_counts[BLOCK_COUNTS.index("flushed")].tolist() == [0, 0, 0]


def test_wide_rows_load_in_whole_blocks():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2**20 + 77)) * np.exp(rng.uniform(-8, 8, (2, 2**20 + 77)))
    for name in ("mxfp4", "nvfp4"):
        a = Arith(format_or_policy(name), 2)
        y = a.load(x)
        amax = np.abs(x).max(axis=1) if name == "nvfp4" else None
        q = blockscale.quantize(blockscale.BLOCK_FORMATS[name], x, amax)
        assert np.array_equal(y, q.values.astype(np.float32)), name
        assert a.block_counts[1].tolist() == q.flushed.sum(axis=1).tolist()


# ------------------------------------------------------------------------------------------------ a case

def _pair(d: float) -> Logits:
    return Logits(ParamNames("case", np.array([d])), np.array([[d, 1.0]]), np.array([1]), np.array([2]))


def test_a_simulated_case_flushes_in_mxfp4_not_in_mxfp8():
    """[20, 1], label 1: in mxfp4 the block scale is 2^(4 - 2) = 4 and 1 / 4 = 0.25 is half of e2m1's
    smallest subnormal 0.5: a tie, to the even 0 (flushed); in mxfp8 1 / 2^(4 - 8) = 16 is an e4m3 value."""
    fmts = [format_or_policy("mxfp4"), format_or_policy("mxfp8"), FORMATS["float32"]]
    cmp = engine.compare([SOFTMAX_CE], fmts, {"softmax_ce": _pair(20.0)})
    by = {(r.dtype, r.method): r for r in cmp.results}
    for method in SOFTMAX_CE.method_names:
        r4, r8 = by["mxfp4", method], by["mxfp8_e4m3", method]
        assert "underflow" in r4.events and r4.input_change == "an input underflows to 0"
        assert r8.events == () and r8.status == "ok"
    assert by["mxfp4", "log_softmax"].status == "range"  # correctly rounded loss of the quantized logits
    assert cmp.blocks["softmax_ce", "mxfp4"][:, 0].tolist() == [2, 1, 0, 0]
    assert cmp.blocks["softmax_ce", "mxfp8_e4m3"][:, 0].tolist() == [2, 0, 0, 0]
    lines = dict((fmt, text) for _, text in block_findings(cmp) for fmt in ("mxfp4", "mxfp8_e4m3")
                 if text.startswith(fmt + " "))
    assert "1 of 2 non-zero inputs (50 %) flushed to zero by their block's scale" in lines["mxfp4"]
    assert "Quantization alone changes the exact value in 1 of 1 cases" in lines["mxfp4"]
    assert "0 of 2 non-zero inputs (0 %) flushed" in lines["mxfp8_e4m3"]
    assert "spread amax/|x| of 16 to 32" in lines["mxfp4"]
    assert "2.621e+05 to 5.243e+05" in lines["mxfp8_e4m3"]


def test_the_flush_case_in_the_tools_json(tmp_path, capsys):
    f = tmp_path / "pair.npy"
    np.save(f, np.array([[20.0, 1.0], [1.0, 2.0]], dtype=np.float32))
    lab = tmp_path / "labels.npy"
    np.save(lab, np.array([1, 1]))
    code, out, err = run(capsys, "compare", "--logits", f, "--labels", lab, "-d", "mxfp4", "-d", "mxfp8",
                         "--format", "json")
    assert code == 0, err
    doc = json.loads(out)["user_logits"]
    cells = {(c["dtype"], c["method"]): c for c in doc["cells"]}
    for method in SOFTMAX_CE.method_names:
        assert cells["mxfp4", method]["counts"]["range"] == 1  # row 0: its true logit flushed
        assert cells["mxfp8_e4m3", method]["counts"]["ok"] == 2
    blocks = doc["block_storage"]
    assert blocks["mxfp4"]["flushed"] == 1 and blocks["mxfp4"]["logits_nonzero"] == 4
    assert blocks["mxfp8_e4m3"]["flushed"] == 0
    assert blocks["mxfp4"]["quantization_changed_rows"] >= 1


# ------------------------------------------------------------------------------------------------ bulk path

def _source(x):
    class Source:
        rows, classes = x.shape

        def chunks(self, n):
            for i in range(0, len(x), n):
                yield i, x[i:i + n]

    return Source()


def _adversarial(rows: int, classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, classes)) * np.exp(rng.uniform(-6, 6, (rows, 1)))).astype(np.float32)
    x[0, :40] = 0.0  # an all-zero block (and part of the next)
    x[1, 3] = 448.0 * 2.0**5  # a block max at the top of the e4m3 range after scaling
    x[2, 10] = 1e-40  # a float32 subnormal beside normal values
    x[3, ::7] *= 2.0**-20  # wide spreads: many flushes
    return x


@pytest.mark.parametrize("name", BLOCKS)
def test_streamed_flush_counts_equal_a_recount_and_the_independent_checker(name):
    x = _adversarial(6, 70, seed=4)
    y = np.argmax(x, axis=1)
    fmt = format_or_policy(name)
    s = streaming.summarize(_source(x), y, np.ones(len(x), bool), (fmt,), rows_per_chunk=2, workers=1)
    t = s.blocks[fmt.name]
    block = blockscale.BLOCK_FORMATS[name]
    amax = float(np.abs(x).max()) if block.tensor_scale else None
    q = blockscale.quantize(block, x, amax)
    assert t.count("flushed") == q.n_flushed and t.count("saturated") == q.n_saturated
    assert t.count("nonzero") == q.n_nonzero
    assert t.count("scale_saturated") == int(q.scale_saturated.sum())
    _, flushed, saturated, _ = check.quantize_rows(name, x.astype(np.float64).tolist(), amax)
    assert t.count("flushed") == sum(map(sum, flushed)) > 0
    assert t.count("saturated") == sum(map(sum, saturated))
    if block.tensor_scale:
        assert s.tensor_amax == amax


def test_nvfp4_results_do_not_depend_on_chunks_or_workers():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((80, 2**14)) * np.exp(rng.uniform(-4, 4, (80, 1)))).astype(np.float32)
    x[37, 5] = 900.0  # the file's amax, in one row only: every other row is scaled by it
    y = rng.integers(0, x.shape[1], len(x))
    fmts = (format_or_policy("nvfp4"), format_or_policy("mxfp4"))
    keep = np.ones(len(x), bool)
    one = streaming.summarize(_source(x), y, keep, fmts, rows_per_chunk=len(x), workers=1)
    many = streaming.summarize(_source(x), y, keep, fmts, rows_per_chunk=7, workers=2)
    assert one.tensor_amax == many.tensor_amax == 900.0
    for name in ("nvfp4", "mxfp4"):
        a, b = one.blocks[name], many.blocks[name]
        assert np.array_equal(a.counts, b.counts) and (a.changed, a.max_change) == (b.changed, b.max_change)
    for key, cell in one.cells.items():
        assert np.array_equal(cell.counts, many.cells[key].counts)
        assert np.array_equal(cell.bits, many.cells[key].bits)
    # the tensor is the file: a row alone would get another scale and other flushes
    q = blockscale.quantize(blockscale.BLOCK_FORMATS["nvfp4"], x, 900.0)
    assert one.blocks["nvfp4"].count("flushed") == q.n_flushed
    alone = sum(blockscale.quantize(blockscale.BLOCK_FORMATS["nvfp4"], x[i:i + 1]).n_flushed for i in range(len(x)))
    assert alone != q.n_flushed


# ------------------------------------------------------------------------------------------------ family

def _f32_next(v: float, up: bool) -> float:
    i = struct.unpack("<I", struct.pack("<f", v))[0]
    return struct.unpack("<f", struct.pack("<I", i + (1 if up else -1)))[0]


def _flushes(name: str, d: float) -> bool:
    """Plainly: does the true logit 1 of [d, 1] (a tensor of its own) flush?"""
    _, flushed, _, _ = check.quantize_rows(name, [[d, 1.0]], d if name == "nvfp4" else None)
    return flushed[0][1]


def _plain_first_flush(name: str) -> float:
    element, _, kind = check.FORMATS[name]
    ebits, mbits, specials = check.ELEMENTS[element]
    bias = 2 ** (ebits - 1) - 1
    emax = 2 ** ebits - (2 if specials == "ieee" else 1) - bias
    emin = 1 - bias
    if kind == "mx":
        # X = 2^(floor(log2 d) - emax); 1 / X <= half the smallest subnormal 2^(emin - mbits - 1) (a tie goes
        # to the even 0): floor(log2 d) >= emax - emin + mbits + 1, so the first d is that power of two
        return 2.0 ** (emax - emin + mbits + 1)
    # NVFP4: X = s_t s_b ~ d / 6; 1 flushes once X * 0.5 / 2 >= 1, near d = 24: the first float32 d found by a
    # plain scan upward from below 24, the checker deciding each d
    d = 23.99
    while not _flushes(name, d):
        d = _f32_next(d, True)
    return d


@pytest.mark.parametrize("name", BLOCKS)
def test_first_flush_along_block_spread_agrees_with_a_plain_computation(name):
    d = first_flush(name)
    assert d == _plain_first_flush(name)
    assert _flushes(name, d) and not _flushes(name, _f32_next(d, False))


def test_block_spread_runs_under_block_storage_only():
    assert "block_spread" not in {f.name for f in SOFTMAX_CE.families}
    assert "block_spread" in {f.name for f in SOFTMAX_CE.families_for(format_or_policy("mxfp4"))}
    rows = family_thresholds(SOFTMAX_CE, SOFTMAX_CE.family("block_spread"), format_or_policy("mxfp4"), Settings(),
                             None)
    assert {r.predicted for r in rows} == {16.0} and {r.predicted_for for r in rows} == {"first_flush"}
    [line] = threshold_findings(rows)
    assert "the true logit first flushes to 0 at d = 16.0 (quantization alone)" in line[1]
    for r in rows:  # a float32 grid, not scanned exhaustively: values are bounds unless verified
        assert r.exact_failure is False or r.first_failure is None or r.verified_failure is None


def test_first_flush_is_the_formats_flush_ratio_for_mx():
    for name in BLOCKS[:-1]:
        assert first_flush(name) == blockscale.BLOCK_FORMATS[name].flush_ratio
    assert math.isclose(first_flush("nvfp4"), 24.0, rel_tol=2**-20)
    assert Fraction(first_flush("nvfp4")) >= 24  # s_t rounds d / 2688 to float32: at or just above 24


def test_a_baseline_keeps_block_spread_entries_comparable(tmp_path, capsys):
    base = tmp_path / "baseline.json"
    code, _, err = run(capsys, "check", "--baseline", base, "--update", "-d", "mxfp4")
    assert code == 0, err
    keys = json.loads(base.read_text())["entries"]
    assert "softmax_ce/block_spread/log_softmax/mxfp4" in keys
    code, out, err = run(capsys, "check", "--baseline", base, "--format", "markdown")
    assert code == 0, (out, err)
    assert "0 not comparable" in out and "unknown entry" not in out


def test_compare_json_findings_name_each_block_format(capsys):
    code, out, err = run(capsys, "compare", "-e", "softmax_ce", "-d", "mxfp4", "-d", "nvfp4", "-d", "fp32",
                         "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    lines = [f["text"] for f in doc["findings"] if "(block storage" in f["text"]]
    assert [t.split(" ")[0] for t in lines] == ["mxfp4", "nvfp4"]  # one per block format, none for float32
    cases = len({r["case"] for r in doc["results"]})
    cmp = engine.compare([SOFTMAX_CE], [format_or_policy("mxfp4")])
    changed = {r.case for r in cmp.results if r.input_change}
    assert 0 < len(changed) < cases
    assert f"Quantization alone changes the exact value in {len(changed)} of {cases} cases" in lines[0]
    assert "an element flushes from a spread amax/|x| of 16 to 32" in lines[0]
    assert "spread amax/|x| of 24 (a block holding the tensor's amax)" in lines[1]
