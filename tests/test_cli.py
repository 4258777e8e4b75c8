"""End-to-end tests of the command line, run in-process through ``stabilitylab.cli.main``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import mpmath
import numpy as np
import pytest
from clihelp import run

from stabilitylab.experiments import DEFAULT_EXPERIMENTS
from stabilitylab.io import atomic
from stabilitylab.numerics.formats import FORMATS

REPO = Path(__file__).resolve().parents[1]
ALL_SIX = ("float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2")
DEFAULT_FOUR = ("float16", "bfloat16", "float32", "float64")
RESULT_KEYS = ["experiment", "case", "method", "dtype", "value", "reference", "exact", "status", "rel_error", "ulps",
               "error_bits", "events"]
SUMMARY_KEYS = ["experiment", "method", "dtype", "cases", "ok", "range", "overflow", "underflow", "nan", "inaccurate"]
STATUS_KEYS = ["ok", "range", "overflow", "underflow", "nan", "inaccurate"]
NUMBER_KEYS = ["value", "reference", "rel_error", "ulps", "error_bits"]




def _reject_constant(name):
    raise AssertionError(f"non-standard JSON constant {name} in output")


def run_json(capsys, *args) -> dict:
    code, out, err = run(capsys, *args, "--format", "json")
    assert code == 0, err
    assert err == ""
    return json.loads(out, parse_constant=_reject_constant)


def assert_usage_error(code: int, out: str, err: str, *fragments: str) -> None:
    """Exit 2, nothing on stdout, exactly one 'stabilitylab: error:' line on stderr."""
    assert code == 2, (code, out, err)
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("stabilitylab: error:"), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def results_of(doc, experiment=None, case=None, method=None, dtype=None) -> list[dict]:
    return [r for r in doc["results"]
            if (experiment is None or r["experiment"] == experiment) and (case is None or r["case"] == case)
            and (method is None or r["method"] == method) and (dtype is None or r["dtype"] == dtype)]


def one_result(doc, **keys) -> dict:
    found = results_of(doc, **keys)
    assert len(found) == 1, (keys, found)
    return found[0]


def exact_ce(row, label) -> mpmath.mpf:
    """-log softmax(row)[label] for the float64 logits, to 50 digits."""
    with mpmath.workdps(50):
        x = [mpmath.mpf(float(v)) for v in row]
        return -(x[label] - mpmath.log(mpmath.fsum(mpmath.exp(v) for v in x)))


def rel_diff(value: float, exact) -> float:
    with mpmath.workdps(50):
        return float(abs(mpmath.mpf(value) - exact) / abs(exact))


LOGITS = np.array([[0.5, 1.25, -3.0],
                   [2.0, 2.5, 1.0],
                   [-7.0, 0.0, 3.5],
                   [10.0, 9.9, 9.9]])


def save_logits(path: Path, x: np.ndarray) -> Path:
    if path.suffix == ".npy":
        np.save(path, x)
    elif path.suffix == ".npz":
        np.savez(path, logits=x)
    else:
        np.savetxt(path, x, delimiter="," if path.suffix == ".csv" else " ", fmt="%.17g")
    return path


# ---------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def bad_files(tmp_path) -> Path:
    np.save(tmp_path / "x.npy", np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]))
    (tmp_path / "x.json").write_text("[[1, 2, 3]]\n")
    (tmp_path / "bad.csv").write_text("1,2,abc\n3,4,5\n")
    (tmp_path / "empty.npy").write_bytes(b"")
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2)))
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 3)), b=np.zeros(2))
    np.save(tmp_path / "labels3.npy", np.array([0, 1, 2]))
    np.save(tmp_path / "labels_frac.npy", np.array([0.0, 1.5]))
    np.save(tmp_path / "labels_range.npy", np.array([0, 3]))
    return tmp_path


BAD_INPUT = [
    pytest.param(["--dtype", "fp99"], ["fp99", "float16", "bfloat16"], id="unknown-dtype"),
    pytest.param(["--p", "0"], ["--p"], id="p-zero"),
    pytest.param(["--p", "1.5"], ["--p"], id="p-above-one"),
    pytest.param(["--p", "nan"], ["--p"], id="p-nan"),
    pytest.param(["--n", "0"], ["--n"], id="n-zero"),
    pytest.param(["--tolerance", "0"], ["--tolerance"], id="tolerance-zero"),
    pytest.param(["--tolerance", "-1e-3"], ["--tolerance"], id="tolerance-negative"),
    pytest.param(["--labels", "{d}/labels3.npy"], ["--logits"], id="labels-without-logits"),
    pytest.param(["--logits", "{d}/missing.npy"], ["missing.npy"], id="missing-logits"),
    pytest.param(["--logits", "{d}/x.npy", "--labels", "{d}/missing.npy"], ["missing.npy"], id="missing-labels"),
    pytest.param(["--logits", "{d}"], ["not a file"], id="logits-is-directory"),
    pytest.param(["--logits", "{d}/x.json"], [".json", ".npy"], id="bad-suffix"),
    pytest.param(["--logits", "{d}/bad.csv"], ["bad.csv"], id="malformed-csv"),
    pytest.param(["--logits", "{d}/empty.npy"], ["empty.npy"], id="empty-npy"),
    pytest.param(["--logits", "{d}/two.npz"], ["2 arrays"], id="npz-two-arrays"),
    pytest.param(["--logits", "{d}/x.npy", "--labels", "{d}/labels3.npy"], ["3", "2 rows"], id="labels-count"),
    pytest.param(["--logits", "{d}/x.npy", "--labels", "{d}/labels_frac.npy"], ["1.5", "integer"],
                 id="labels-non-integer"),
    pytest.param(["--logits", "{d}/x.npy", "--labels", "{d}/labels_range.npy"], ["out of range", "0..2"],
                 id="label-out-of-range"),
    pytest.param(["-e", "nope"], ["nope"], id="unknown-experiment"),
    pytest.param(["--format", "xml"], ["xml"], id="unknown-output-format"),
    pytest.param(["--n", "1.5"], ["--n"], id="n-not-integer"),
    pytest.param(["--bogus"], ["--bogus"], id="unknown-option"),
]


@pytest.mark.parametrize(("args", "fragments"), BAD_INPUT)
def test_compare_bad_input_is_one_line_exit_2(capsys, bad_files, args, fragments):
    argv = [a.format(d=bad_files) for a in args]
    assert_usage_error(*run(capsys, "compare", *argv), *fragments)


def test_unknown_option_on_group_is_one_line_exit_2(capsys):
    assert_usage_error(*run(capsys, "--bogus"), "--bogus")


def test_unknown_command_is_one_line_exit_2(capsys):
    assert_usage_error(*run(capsys, "frobnicate"), "frobnicate")


def test_formats_unknown_dtype_is_one_line_exit_2(capsys):
    assert_usage_error(*run(capsys, "formats", "-d", "fp7"), "fp7", "float16", "bfloat16")


def test_empty_csv_logits_is_one_line_exit_2(capsys, tmp_path):
    (tmp_path / "empty.csv").write_text("")
    assert_usage_error(*run(capsys, "compare", "--logits", tmp_path / "empty.csv"), "empty.csv")


def test_n_too_large_for_int64_is_one_line_exit_2(capsys):
    assert_usage_error(*run(capsys, "compare", "-e", "likelihood", "-d", "fp64", "--n", str(10**20)), "--n")


def test_output_into_missing_folder_is_refused_and_writes_nothing(capsys, tmp_path):
    target = tmp_path / "nodir" / "out.json"
    assert_usage_error(*run(capsys, "compare", "--format", "json", "-o", target), "-o", "nodir")
    assert not target.parent.exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", ["compare", "formats"])
def test_output_to_existing_directory_is_refused_and_writes_nothing(capsys, tmp_path, command):
    folder = tmp_path / "d"
    folder.mkdir()
    assert_usage_error(*run(capsys, command, "-o", folder), "-o")
    assert folder.is_dir()
    assert os.listdir(folder) == []
    assert os.listdir(tmp_path) == ["d"]


# ---------------------------------------------------------------------------------------------- good paths


def test_default_compare_table(capsys):
    code, out, err = run(capsys, "compare")
    assert code == 0, err
    assert err == ""
    for text in ("p=0.1,n=100", "product", "sum_log", "log_softmax_log1p", "naive_softmax_log", *DEFAULT_FOUR):
        assert text in out
    assert "float8_e4m3fn" not in out


def test_markdown_has_a_table(capsys):
    code, out, err = run(capsys, "compare", "--format", "markdown")
    assert code == 0, err
    assert err == ""
    table_lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert table_lines
    assert any("product" in line for line in table_lines)
    assert any(line.startswith("|---") for line in out.splitlines())


def test_json_document_structure(capsys):
    doc = run_json(capsys, "compare")
    keys = list(doc)
    assert keys[:3] == ["schema", "version", "environment"]
    assert {"results", "summary"} <= set(keys)
    assert doc["schema"] == "stabilitylab.compare/1"
    assert doc["results"]
    for r in doc["results"]:
        assert list(r) == RESULT_KEYS
        assert isinstance(r["events"], list)
        for key in NUMBER_KEYS:
            v = r[key]
            assert (isinstance(v, float) and np.isfinite(v)) or isinstance(v, int) or v in ("inf", "-inf", "nan"), \
                (key, v)
    assert {r["experiment"] for r in doc["results"]} == {e.name for e in DEFAULT_EXPERIMENTS}
    assert {r["dtype"] for r in doc["results"]} == set(DEFAULT_FOUR)
    assert doc["settings"]["formats"] == list(DEFAULT_FOUR)


def test_json_non_finite_numbers_are_strings(capsys):
    doc = run_json(capsys, "compare")
    strings = {r[k] for r in doc["results"] for k in NUMBER_KEYS if isinstance(r[k], str)}
    assert "inf" in strings and "nan" in strings
    assert strings <= {"inf", "-inf", "nan"}


def test_json_product_float16_underflows(capsys):
    doc = run_json(capsys, "compare")
    r = one_result(doc, experiment="likelihood", case="p=0.1,n=100", method="product", dtype="float16")
    assert r["value"] == "inf"
    assert r["status"] == "underflow"
    assert "underflow" in r["events"]


def test_json_product_float64_is_exact_enough(capsys):
    doc = run_json(capsys, "compare")
    r = one_result(doc, experiment="likelihood", case="p=0.1,n=100", method="product", dtype="float64")
    assert r["status"] == "ok"
    with mpmath.workdps(50):
        exact = -100 * mpmath.log(mpmath.mpf(0.1))
    assert isinstance(r["value"], float)
    assert rel_diff(r["value"], exact) <= 1e-12
    assert rel_diff(r["reference"], exact) <= 1e-15


def test_json_summary_agrees_with_results(capsys):
    doc = run_json(capsys, "compare", "-d", "all")
    assert doc["summary"]
    seen = set()
    for s in doc["summary"]:
        assert list(s) == SUMMARY_KEYS
        assert sum(s[k] for k in STATUS_KEYS) == s["cases"]
        rows = results_of(doc, experiment=s["experiment"], method=s["method"], dtype=s["dtype"])
        assert len(rows) == s["cases"]
        for k in STATUS_KEYS:
            assert s[k] == sum(r["status"] == k for r in rows), (s, k)
        seen.add((s["experiment"], s["method"], s["dtype"]))
    assert seen == {(r["experiment"], r["method"], r["dtype"]) for r in doc["results"]}
    assert len(seen) == len(doc["summary"])


def test_output_file_json(capsys, tmp_path):
    target = tmp_path / "out.json"
    code, out, err = run(capsys, "compare", "--format", "json", "-o", target)
    assert code == 0, err
    assert out == "" and err == ""
    doc = json.loads(target.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    assert doc["schema"] == "stabilitylab.compare/1"
    assert doc["results"]
    assert os.listdir(tmp_path) == ["out.json"]
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_output_file_table_replaces_existing_file(capsys, tmp_path):
    """A file stabilitylab wrote (its last line is the marker) is replaced; any other needs --force."""
    target = tmp_path / "out.txt"
    target.write_text("old content\n\n(generated by stabilitylab)\n")
    code, out, err = run(capsys, "compare", "-e", "likelihood", "-o", target)
    assert code == 0, err
    assert out == "" and err == ""
    text = target.read_text(encoding="utf-8")
    assert "old content" not in text and text.endswith("\n(generated by stabilitylab)\n")
    assert "p=0.1,n=100" in text and "sum_log" in text
    assert os.listdir(tmp_path) == ["out.txt"]


def test_formats_output_file(capsys, tmp_path):
    target = tmp_path / "formats.json"
    code, out, err = run(capsys, "formats", "--format", "json", "-o", target)
    assert code == 0, err
    assert out == "" and err == ""
    assert [f["name"] for f in json.loads(target.read_text())["formats"]] == list(FORMATS)  # every one, scales too
    assert os.listdir(tmp_path) == ["formats.json"]


@pytest.mark.parametrize("step,message", [("replace", "simulated failure"), ("fsync", "disk full")])
def test_atomic_write_keeps_old_file_when_a_step_fails(tmp_path, monkeypatch, step, message):
    """A failing rename or a failing write (fsync) leaves the old file whole and no temporary file."""
    target = tmp_path / "keep.txt"
    target.write_text("original\n", encoding="utf-8")

    def fail(*args, **kwargs):
        raise OSError(message)

    monkeypatch.setattr(atomic.os, step, fail)
    with pytest.raises(OSError, match=message):
        atomic.write_text(target, "new content\n")
    assert target.read_text(encoding="utf-8") == "original\n"
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_atomic_write_replaces_content(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("original\n", encoding="utf-8")
    atomic.write_text(target, "new \u00e9 content\n")
    assert target.read_text(encoding="utf-8") == "new \u00e9 content\n"
    assert os.listdir(tmp_path) == ["f.txt"]


# ---------------------------------------------------------------------------------------------- selection


def test_dtype_aliases(capsys):
    doc = run_json(capsys, "compare", "-d", "fp16", "-d", "bf16")
    assert {r["dtype"] for r in doc["results"]} == {"float16", "bfloat16"}
    assert {s["dtype"] for s in doc["summary"]} == {"float16", "bfloat16"}
    assert doc["settings"]["formats"] == ["float16", "bfloat16"]


def test_dtype_aliases_softmax_ce(capsys):
    # the same selection on an experiment whose exact losses fit in float16 (see test_dtype_aliases)
    doc = run_json(capsys, "compare", "-e", "softmax_ce", "-d", "fp16", "-d", "bf16")
    assert {r["dtype"] for r in doc["results"]} == {"float16", "bfloat16"}
    assert {s["dtype"] for s in doc["summary"]} == {"float16", "bfloat16"}
    assert doc["settings"]["formats"] == ["float16", "bfloat16"]


def _markdown_exact_cells(text: str) -> dict[tuple[str, str], str]:
    """{(case, format): text of the 'exact' cell} from the first markdown results table."""
    cells, headers = {}, None
    for line in text.splitlines():
        if not line.startswith("| "):
            continue
        parts = [c.strip() for c in line.strip().strip("|").split("|")]
        if parts[:2] == ["case", "method"]:
            headers = parts
        elif headers and len(parts) == len(headers) and parts[1] == "exact":
            for fmt, cell in zip(headers[2:], parts[2:]):
                cells[(parts[0], fmt)] = cell
    return cells


@pytest.mark.parametrize("dtypes", [
    pytest.param(("e4m3", "fp64"), id="with-float64"),
    pytest.param(("bf16", "fp32"), id="with-float32"),
    pytest.param(("e4m3",), id="e4m3-only"),
    pytest.param(("fp16",), id="fp16-only"),
])
def test_exact_column_shows_the_reference(capsys, dtypes):
    args = ["compare", "-e", "likelihood", *(a for d in dtypes for a in ("-d", d))]
    doc = run_json(capsys, *args)
    code, out, err = run(capsys, *args, "--format", "markdown")
    assert code == 0, err
    assert err == ""
    cells = _markdown_exact_cells(out)
    refs = {(r["case"], r["dtype"]): r["reference"] for r in results_of(doc, method="product")}
    assert set(cells) == set(refs)
    for key, ref in refs.items():
        assert isinstance(ref, float)
        shown = float(cells[key])
        assert abs(shown - ref) <= 1e-7 * abs(ref), (key, cells[key], ref)


@pytest.mark.parametrize("alias", ["double", "FP64", "f64"])
def test_dtype_alias_variants(capsys, alias):
    doc = run_json(capsys, "compare", "-e", "likelihood", "-d", alias)
    assert {r["dtype"] for r in doc["results"]} == {"float64"}


def test_dtype_all(capsys):
    doc = run_json(capsys, "compare", "-d", "all")
    assert {r["dtype"] for r in doc["results"]} == set(ALL_SIX)
    assert doc["settings"]["formats"] == list(ALL_SIX)


def test_dtype_repeated_is_deduplicated(capsys):
    doc = run_json(capsys, "compare", "-e", "softmax_ce", "-d", "fp16", "-d", "half", "-d", "float16")
    assert doc["settings"]["formats"] == ["float16"]
    assert len(results_of(doc, case="moderate:[12,0,-12],y=0", method="log_softmax")) == 1


def test_experiment_selection(capsys):
    doc = run_json(capsys, "compare", "-e", "likelihood")
    assert {r["experiment"] for r in doc["results"]} == {"likelihood"}
    assert {s["experiment"] for s in doc["summary"]} == {"likelihood"}
    assert {r["method"] for r in doc["results"]} == {"product", "sum_log"}


def test_custom_likelihood_case(capsys):
    doc = run_json(capsys, "compare", "--p", "0.5", "--n", "2000")
    assert {r["case"] for r in results_of(doc, experiment="likelihood")} == {"p=0.5,n=2000"}
    # softmax_ce keeps its default cases
    assert len({r["case"] for r in results_of(doc, experiment="softmax_ce")}) > 1
    r = one_result(doc, experiment="likelihood", case="p=0.5,n=2000", method="sum_log", dtype="float64")
    with mpmath.workdps(50):
        exact = -2000 * mpmath.log(mpmath.mpf(0.5))
    assert rel_diff(r["reference"], exact) <= 1e-15


@pytest.mark.parametrize(("args", "case"), [(["--p", "0.5"], "p=0.5,n=100"), (["--n", "7"], "p=0.1,n=7")])
def test_custom_likelihood_case_defaults(capsys, args, case):
    doc = run_json(capsys, "compare", "-e", "likelihood", *args)
    assert {r["case"] for r in doc["results"]} == {case}


# ---------------------------------------------------------------------------------------------- --logits


def run_rows(capsys, *args) -> tuple[list[dict], dict]:
    """compare --rows all: (row records, the summary document of the last line)."""
    code, out, err = run(capsys, "compare", *args, "--rows", "all")
    assert code == 0, err
    assert err == ""
    lines = [json.loads(line, parse_constant=_reject_constant) for line in out.splitlines()]
    assert "summary" in lines[-1]
    return lines[:-1], lines[-1]["summary"]


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv", ".txt"])
def test_logits_file_rows_all_as_json_lines(capsys, tmp_path, suffix):
    path = save_logits(tmp_path / f"logits{suffix}", LOGITS)
    records, summary = run_rows(capsys, "--logits", path)
    methods = ["naive_softmax_log", "shifted_softmax_log", "log_softmax", "log_softmax_log1p"]
    assert len(records) == len(LOGITS) * 4 * 4  # rows x methods x the four default formats
    assert summary["rows"] == len(LOGITS) and summary["classes"] == 3
    for dtype in ("float16", "bfloat16", "float32", "float64"):
        for method in methods:
            rows = [r for r in records if r["dtype"] == dtype and r["method"] == method]
            assert [r["row"] for r in rows] == list(range(len(LOGITS)))  # in row order
    # the stream itself is row by row: every (format, method) of a row before the next row
    assert [r["row"] for r in records] == [i for i in range(len(LOGITS)) for _ in range(16)]
    assert [(r["dtype"], r["method"]) for r in records[:16]] == [(d, m) for d in ("float16", "bfloat16", "float32",
                                                                               "float64") for m in methods]
    for i, row in enumerate(LOGITS):
        r = next(r for r in records if r["row"] == i and r["dtype"] == "float64" and r["method"] == "log_softmax_log1p")
        exact = exact_ce(row, int(np.argmax(row)))
        assert r["label"] == int(np.argmax(row))
        assert r["status"] == "ok"
        assert rel_diff(r["value"], exact) <= 1e-15, (i, r["value"], exact)
        assert rel_diff(float(r["exact"]), exact) <= 1e-9


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_logits_file_summary_counts_every_row(capsys, tmp_path, suffix):
    path = save_logits(tmp_path / f"logits{suffix}", LOGITS)
    doc = run_json(capsys, "compare", "--logits", path)
    assert doc["results"] == []  # --logits alone runs softmax_ce on the file only
    cells = doc["user_logits"]["cells"]
    assert len(cells) == 16
    for cell in cells:
        assert sum(cell["counts"].values()) == len(LOGITS)
        assert sum(cell["error_bits_histogram"]["rows"]) + cell["error_bits_histogram"]["inf"] + \
            cell["error_bits_histogram"]["nan"] == len(LOGITS)
        assert len(cell["worst"]) == len(LOGITS)
    code, out, err = run(capsys, "compare", "--logits", path)
    assert code == 0 and err == ""
    assert "softmax_ce: your logits" in out and "worst rows" in out


def test_logits_with_labels_file(capsys, tmp_path):
    logits = save_logits(tmp_path / "logits.npy", LOGITS)
    labels = [2, 0, 0, 1]
    assert labels != list(np.argmax(LOGITS, axis=1))
    np.savetxt(tmp_path / "labels.csv", np.array(labels), fmt="%d")
    records, _ = run_rows(capsys, "-e", "softmax_ce", "-d", "fp64", "--logits", logits, "--labels",
                          tmp_path / "labels.csv")
    for i, (row, label) in enumerate(zip(LOGITS, labels)):
        r = next(r for r in records if r["row"] == i and r["method"] == "log_softmax_log1p")
        assert r["label"] == label
        exact = exact_ce(row, label)
        assert rel_diff(r["value"], exact) <= 1e-15, (i, r["value"], exact)


def test_labels_ignore_index_skips_rows(capsys, tmp_path):
    logits = save_logits(tmp_path / "logits.npy", LOGITS)
    np.save(tmp_path / "labels.npy", np.array([2, -100, 0, -100]))
    records, summary = run_rows(capsys, "-d", "fp32", "--logits", logits, "--labels", tmp_path / "labels.npy")
    assert sorted({r["row"] for r in records}) == [0, 2]
    assert summary["rows"] == 2
    assert any("2 rows with label -100 skipped" in n for n in summary["notes"])
    code, out, err = run(capsys, "compare", "--logits", logits, "--labels", tmp_path / "labels.npy",
                         "--ignore-index", "-1")
    assert code == 2 and "label -100 in row 1 is out of range" in err


def test_single_row_logits(capsys, tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("1.5, -2, 0.25\n")
    records, summary = run_rows(capsys, "-e", "softmax_ce", "-d", "fp64", "--logits", path)
    assert summary["rows"] == 1
    r = next(r for r in records if r["method"] == "log_softmax_log1p")
    assert rel_diff(r["value"], exact_ce([1.5, -2, 0.25], 0)) <= 1e-15


def test_logits_of_any_rank_are_flattened_to_rows(capsys, tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    np.save(tmp_path / "cube.npy", x)
    records, summary = run_rows(capsys, "-d", "fp32", "--logits", tmp_path / "cube.npy")
    assert summary["rows"] == 6 and summary["classes"] == 4
    assert sorted({r["row"] for r in records}) == list(range(6))


def test_logits_with_non_finite_rows_are_allowed_and_noted(capsys, tmp_path):
    path = save_logits(tmp_path / "odd.npy", np.array([[0.0, 1.0, 2.0], [1.0, np.inf, 2.0], [np.nan, 1.0, 2.0]]))
    code, out, err = run(capsys, "compare", "--logits", path)
    assert code == 0, err
    assert err == ""
    assert "non-finite" in out
    doc = run_json(capsys, "compare", "--logits", path)
    notes = [n for n in doc["user_logits"]["notes"] if "non-finite" in n]
    assert len(notes) == 1
    assert "row=1" in notes[0] and "row=2" in notes[0] and "row=0" not in notes[0]


def test_finite_logits_have_no_note(capsys, tmp_path):
    path = save_logits(tmp_path / "fine.npy", LOGITS)
    doc = run_json(capsys, "compare", "--logits", path)
    assert not [n for n in doc["user_logits"]["notes"] if "non-finite" in n]


# ---------------------------------------------------------------------------------------------- formats


def test_formats_table(capsys):
    code, out, err = run(capsys, "formats")
    assert code == 0, err
    assert err == ""
    for name in ALL_SIX:
        assert name in out


NUMPY_NATIVE = ("float16", "float32", "float64")


def _finfo(name: str):
    """(dtype, finfo) from numpy for the IEEE formats, from ml_dtypes for the others."""
    if name in NUMPY_NATIVE:
        dtype = np.dtype(getattr(np, name))
        return dtype, np.finfo(dtype)
    dtype = np.dtype(getattr(ml_dtypes, name))
    return dtype, ml_dtypes.finfo(dtype)


def test_formats_json_matches_finfo(capsys):
    doc = run_json(capsys, "formats")
    assert doc["schema"] == "stabilitylab.formats/1"
    formats = doc["formats"]
    assert [f["name"] for f in formats] == list(FORMATS)
    for f in formats:
        dtype, fi = _finfo(f["name"].split(":")[0])  # (a :saturate variant: its format's dtype)
        assert f["max"] == float(fi.max), f["name"]
        assert f["smallest_normal"] == float(fi.smallest_normal), f["name"]
        assert f["smallest_subnormal"] == float(fi.smallest_subnormal), f["name"]
        assert f["eps"] == float(fi.eps), f["name"]
        assert f["precision"] == int(fi.nmant) + 1, f["name"]
        assert f["unit_roundoff"] == float(fi.eps) / 2, f["name"]
        with np.errstate(all="ignore"):
            really_has_inf = bool(np.isinf(np.array(np.inf).astype(dtype)))
        assert f["has_inf"] is really_has_inf, f["name"]
        assert f["has_inf"] is (f["nan"] == "ieee")
        saturating = ":saturate" in f["name"] or f["name"].startswith(("float6_", "float4_"))
        assert (f["overflow"] == "saturate") is saturating


def test_formats_dtype_selection(capsys):
    doc = run_json(capsys, "formats", "-d", "e5m2", "-d", "bf16")
    assert [f["name"] for f in doc["formats"]] == ["float8_e5m2", "bfloat16"]


def test_formats_markdown(capsys):
    code, out, err = run(capsys, "formats", "--format", "markdown")
    assert code == 0, err
    assert any(line.startswith("| ") and "float8_e4m3fn" in line for line in out.splitlines())


# ---------------------------------------------------------------------------------------------- help


def test_compare_help_in_process(capsys):
    code, out, err = run(capsys, "compare", "--help")
    assert code == 0, err
    assert "--logits" in out and "--dtype" in out


def test_python_dash_m_help():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "stabilitylab", "--help"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "compare" in proc.stdout and "formats" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_every_format_runs_and_a_scale_format_is_one_line(capsys):
    """-d every: every format experiments can use, each with results; -d e8m0 (a scale): exit 2, one line."""
    doc = run_json(capsys, "compare", "-e", "likelihood", "-d", "every")
    assert sorted({r["dtype"] for r in doc["results"]}) == sorted(f.name for f in FORMATS.values() if f.signed)
    code, out, err = run(capsys, "thresholds", "-e", "likelihood", "-d", "e8m0")
    assert_usage_error(code, out, err, "float8_e8m0fnu is an unsigned scale format")
    doc = run_json(capsys, "compare", "-e", "softmax_ce", "-d", "e4m3fn:sat", "-d", "e4m3")
    assert {r["dtype"] for r in doc["results"]} == {"float8_e4m3fn:saturate", "float8_e4m3fn"}
