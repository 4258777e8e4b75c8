"""One implementation per command (issue #17, item 3): the CLI and the Python API take the same inputs
(any file the readers take, or arrays; 3-D logits; ignore_index; key / labels_key; any size, streamed)
through the same function, give the same document, summarize large inputs, and refuse wrong names
with one line naming the valid ones."""

from __future__ import annotations

import json
import time

import ml_dtypes
import numpy as np
import pytest

import stabilitylab
from stabilitylab.analysis.outcome import METHOD_FAILURES
from stabilitylab.cli import main
from stabilitylab.errors import AuditError, InputError
from stabilitylab.numerics.formats import FORMATS
from stabilitylab.status import ExitStatus

SHAPE = (4, 512, 32000)
PADDED = 37  # the last rows of each sequence carry the padding label -100


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """(4, 512, 32000) bfloat16 logits and int64 labels with -100 padding, in one .safetensors file."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(17)
    logits = rng.normal(0.0, 4.0, size=SHAPE).astype(np.float32)
    logits[0, 0, :] = 0.0
    logits[1, 3, 7] = 60.0  # a confident row: the plain log-sum-exp loses its tiny loss
    labels = rng.integers(0, SHAPE[-1], size=SHAPE[:2]).astype(np.int64)
    labels[1, 3] = 7
    labels[:, -PADDED:] = -100
    path = tmp_path_factory.mktemp("big") / "batch.safetensors"
    save_file({"logits": logits.astype(ml_dtypes.bfloat16), "labels": labels}, str(path))
    return path


def _kept_rows() -> int:
    return SHAPE[0] * (SHAPE[1] - PADDED)


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _normalized(doc: dict) -> dict:
    doc = dict(doc)
    doc.pop("environment", None)
    return doc


def _check_big_audit(result, target: str, fmt: str) -> None:
    assert result.bulk is not None and result.bulk.rows == _kept_rows()
    assert result.bulk.classes == SHAPE[-1]
    assert [f.name for f in result.audit.formats] == [fmt]
    cell = result.bulk.cells[fmt, target]
    assert int(cell.counts.sum()) == _kept_rows()
    assert any(f"{SHAPE[0] * PADDED:,} rows with label -100 skipped" in n for n in result.bulk.notes)
    assert result.resembles and result.resembles[0].dtype == fmt
    doc = result.to_dict()
    assert doc["results"] == [] and doc["user_logits"]["rows"] == _kept_rows()
    assert doc["user_logits"]["source"] == "batch.safetensors[logits] (4x512x32000 bfloat16)"
    assert len(result.to_markdown().splitlines()) < 200
    rows = result.rows
    assert isinstance(rows["value"], np.ndarray) and len(rows["value"]) == _kept_rows() * 5  # target + 4 simulated
    assert rows["row"][rows["method"] == target].tolist() == [
        r for r in range(SHAPE[0] * SHAPE[1]) if r % SHAPE[1] < SHAPE[1] - PADDED]


# ------------------------------------------------------------------ a real-size batch end to end
@pytest.mark.slow  # a 6 s audit of a big file
def test_big_bfloat16_safetensors_through_the_scipy_audit_api(big_file):
    """scipy does not take bfloat16: the stored values are audited in float32, where they are exact."""
    pytest.importorskip("scipy", reason="the scipy audit needs scipy (the test extra)")
    start = time.perf_counter()
    result = stabilitylab.audit("scipy.log_softmax", logits=big_file)
    seconds = time.perf_counter() - start
    _check_big_audit(result, "scipy.log_softmax", "float32")
    assert any("stored as bfloat16" in n and "float32" in n for n in result.notes)
    assert seconds < 60, seconds


@pytest.fixture(scope="module")
def torch_cli_doc(big_file, tmp_path_factory):
    """``stabilitylab audit torch.cross_entropy --logits F`` (the whole audit: rows, then the threshold search)."""
    pytest.importorskip("torch", reason="torch.cross_entropy is audited only where torch is installed")
    out = tmp_path_factory.mktemp("torch") / "audit.json"
    start = time.perf_counter()
    code = main(["audit", "torch.cross_entropy", "--logits", str(big_file), "--format", "json", "-o", str(out)])
    assert code == ExitStatus.OK
    return json.loads(out.read_text()), time.perf_counter() - start


def test_big_bfloat16_safetensors_through_the_torch_audit_cli(torch_cli_doc):
    doc, seconds = torch_cli_doc
    assert doc["target"] == "torch.cross_entropy" and doc["settings"]["formats"] == ["bfloat16"]
    assert doc["results"] == [] and doc["user_logits"]["rows"] == _kept_rows()
    cell = next(c for c in doc["user_logits"]["cells"] if c["method"] == "torch.cross_entropy")
    assert sum(cell["counts"].values()) == _kept_rows()
    assert doc["thresholds"] and doc["resembles"][0]["dtype"] == "bfloat16"
    assert seconds < 60, seconds


def test_big_bfloat16_safetensors_through_the_torch_audit_api(torch_cli_doc, big_file):
    """The API's audit of the same file: the same summary of the rows as the command line's."""
    cli_doc, _ = torch_cli_doc
    result = stabilitylab.audit("torch.cross_entropy", logits=big_file, search=False)
    _check_big_audit(result, "torch.cross_entropy", "bfloat16")
    assert result.to_dict()["user_logits"] == cli_doc["user_logits"]
    assert result.to_dict()["versus"] == cli_doc["versus"]  # counted on the rows only


# ------------------------------------------------------------------ the CLI and the API agree
@pytest.fixture
def small_npz(tmp_path):
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 6, size=(3, 40, 9)).astype(np.float32)
    logits[0, 0] = [0.0, -40.0, -41.0, -45.0, -50.0, -60.0, -70.0, -80.0, -90.0]
    labels = rng.integers(0, 9, size=(3, 40)).astype(np.int64)
    labels[0, 0] = 0
    labels[2, 30:] = -100
    path = tmp_path / "small.npz"
    np.savez(path, logits=logits, labels=labels)
    return path, logits, labels


def test_compare_cli_and_api_give_the_same_document(small_npz, capsys, tmp_path):
    path, logits, labels = small_npz
    out = tmp_path / "compare.json"
    code, _, err = _run(capsys, "compare", "--logits", path, "-d", "fp32", "-d", "bf16", "--format", "json", "-o", out)
    assert code == ExitStatus.OK, err
    cli_doc = _normalized(json.loads(out.read_text()))
    from_file = stabilitylab.compare(dtypes=["fp32", "bf16"], logits=path)
    assert _normalized(from_file.to_dict()) == cli_doc
    # the same data as arrays: the same numbers (only the source's name differs)
    from_arrays = _normalized(stabilitylab.compare(dtypes=["fp32", "bf16"], logits=logits, labels=labels).to_dict())
    assert from_arrays["user_logits"]["cells"] == cli_doc["user_logits"]["cells"]
    assert from_arrays["user_logits"]["source"] == "<array> (3x40x9 float32)"


def test_audit_cli_and_api_give_the_same_document(small_npz, capsys, tmp_path):
    pytest.importorskip("scipy", reason="the scipy audit needs scipy (the test extra)")
    path, logits, labels = small_npz
    out = tmp_path / "audit.json"
    code, _, err = _run(capsys, "audit", "scipy.log_softmax", "--logits", path, "-d", "float32", "-d", "float16",
                        "--family", "confident", "--format", "json", "-o", out)
    assert code == ExitStatus.OK, err
    cli_doc = _normalized(json.loads(out.read_text()))
    api = stabilitylab.audit("scipy.log_softmax", dtypes=["float32", "float16"], logits=path, families=["confident"])
    assert _normalized(api.to_dict()) == cli_doc
    cells = {(c["dtype"], c["method"]): c for c in cli_doc["user_logits"]["cells"]}
    assert cells["float32", "scipy.log_softmax"]["rows"] == 3 * 40 - 10
    assert set(cells["float32", "scipy.log_softmax"]["counts"]) >= {"inf", "error"}  # black-box statuses
    assert "inf" not in cells["float32", "log_softmax"]["counts"]


# ------------------------------------------------------------------ large inputs render as summaries
def test_a_large_array_renders_a_summary_and_keeps_its_rows_as_arrays():
    result = stabilitylab.compare(logits=np.zeros((20000, 50), np.float32))
    text = result.to_markdown()
    assert len(text.splitlines()) < 200
    assert result._repr_markdown_() == text
    rows = result.rows
    assert set(rows) >= {"dtype", "method", "row", "label", "value", "status", "rel_error", "ulps", "error_bits"}
    assert all(isinstance(v, np.ndarray) for v in rows.values())
    assert len(rows["value"]) == 20000 * 4 * 4  # rows x default formats x methods
    assert set(rows["status"].tolist()) == {"ok"}
    exact = np.log(50.0)
    f64 = rows["dtype"] == "float64"
    assert np.all(np.abs(rows["value"][f64] - exact) <= 2 * np.spacing(exact))
    assert result.results == [] and result.bulk.rows == 20000


def test_rows_false_keeps_only_the_summary():
    result = stabilitylab.compare(logits=np.zeros((10, 4)), rows=False, dtypes="float32")
    assert result.rows is None and result.bulk.rows == 10


def test_simulated_cases_give_their_rows_as_arrays():
    rows = stabilitylab.compare("likelihood", ["float32"]).rows
    assert rows["value"].dtype == np.float64 and rows["status"].dtype.kind == "U"
    assert len(rows["case"]) == len(rows["value"]) > 0


# ------------------------------------------------------------------ 3-D logits, ignore_index, arrays
def test_three_d_logits_and_ignore_index_through_the_audit():
    pytest.importorskip("scipy", reason="the scipy audit needs scipy (the test extra)")
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 8, size=(2, 6, 5))
    logits[1, 2] = [0.0, -30.0, -31.0, -32.0, -33.0]
    labels = rng.integers(0, 5, size=(2, 6))
    labels[1, 2] = 0
    labels[0, 4:] = -1
    result = stabilitylab.audit("scipy.log_softmax", dtypes="float32", logits=logits, labels=labels, ignore_index=-1,
                                search=False)
    assert result.bulk.rows == 10
    assert "2 rows with label -1 skipped (--ignore-index)" in result.bulk.notes
    rows = result.rows
    target = rows["method"] == "scipy.log_softmax"
    assert rows["row"][target].tolist() == [0, 1, 2, 3, 6, 7, 8, 9, 10, 11]
    assert rows["status"][target][rows["row"][target] == 8].tolist() == ["inaccurate"]  # the confident row
    # the witnesses: per status, the first failing row (as the in-memory audit chose them) and the worst one
    witnesses = {(w.status, w.kind): w for w in result.witnesses if w.source == "cases"}
    for (status, kind), w in witnesses.items():
        mine = target & (rows["status"] == status)
        assert status in METHOD_FAILURES
        if kind == "first":
            assert w.case == f"row={rows['row'][mine][0]}"
        elif kind == "worst":
            assert w.error_bits == rows["error_bits"][mine].max()
        row = int(w.case.removeprefix("row="))
        assert w.inputs["logits"] == logits.reshape(-1, 5)[row].astype(np.float32).astype(np.float64).tolist()
        assert w.inputs["labels"] == labels.reshape(-1)[row]
    assert ("inaccurate", "first") in witnesses and ("inaccurate", "worst") in witnesses
    # without ignore_index the padding label is out of range: one line naming the allowed values
    with pytest.raises(InputError, match=r"label -1 in row 4 is out of range; allowed 0\.\.4"):
        stabilitylab.audit("scipy.log_softmax", dtypes="float32", logits=logits, labels=labels, ignore_index=None)


def test_three_d_logits_file_through_the_audit_cli(tmp_path, capsys):
    pytest.importorskip("scipy", reason="the scipy audit needs scipy (the test extra)")
    logits = np.random.default_rng(2).normal(0, 3, size=(2, 3, 4)).astype(np.float16)
    labels = np.array([[0, 1, -100], [3, -100, 2]])
    np.savez(tmp_path / "batch.npz", x=logits, y=labels)
    code, out, err = _run(capsys, "audit", "scipy.log_softmax", "--logits", tmp_path / "batch.npz", "--key", "x",
                          "--labels-key", "y", "--no-thresholds", "--format", "json")
    assert code == ExitStatus.OK, err
    doc = json.loads(out)
    assert doc["settings"]["formats"] == ["float16"]  # the storage format
    assert doc["user_logits"]["rows"] == 4 and "2 rows with label -100 skipped (--ignore-index)" in doc["notes"] + \
        doc["user_logits"]["notes"]


def test_bad_arrays_are_one_line_input_errors():
    with pytest.raises(InputError, match="labels must have shape"):
        stabilitylab.compare(logits=np.zeros((3, 4)), labels=np.zeros(5, np.int64))
    with pytest.raises(InputError, match="numbers are required"):
        stabilitylab.compare(logits=np.array([["a", "b"]]))
    with pytest.raises(InputError, match="--key"):
        stabilitylab.compare(logits=np.zeros((3, 4)), key="logits")
    with pytest.raises(InputError, match="a single number"):
        stabilitylab.compare(logits=5.0)
    with pytest.raises(InputError, match="labels must be integers"):
        stabilitylab.compare(logits=np.zeros((2, 4)), labels=[0.5, 1])


# ------------------------------------------------------------------ wrong names
API_ERRORS = [
    (lambda: stabilitylab.compare("nope"), ["nope", "softmax_ce", "likelihood"]),
    (lambda: stabilitylab.compare(dtypes=["fp99"]), ["fp99", "float16", "bfloat16"]),
    (lambda: stabilitylab.thresholds("likelihood", families=["nope"]), ["nope", "likelihood/"]),
    (lambda: stabilitylab.thresholds("nope"), ["nope", "softmax_ce"]),
    (lambda: stabilitylab.thresholds(dtypes="fp7"), ["fp7", "float32"]),
    (lambda: stabilitylab.audit("scipy.nope"), ["scipy.nope", "scipy.log_softmax"]),
    (lambda: stabilitylab.audit("scipy.log_softmax", families=["nope"]), ["nope", "confident"]),
    (lambda: stabilitylab.audit("scipy.log_softmax", dtypes=["fp99"]), ["fp99", "float16"]),
    (lambda: stabilitylab.train("nope"), ["nope", "overflow", "saturated"]),
]


@pytest.mark.parametrize(("call", "fragments"), API_ERRORS)
def test_wrong_names_in_the_api_are_value_errors_naming_the_valid_ones(call, fragments):
    with pytest.raises(ValueError) as info:
        call()
    assert isinstance(info.value, (InputError, AuditError))
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


CLI_ERRORS = [
    (["compare", "-e", "nope"], ["nope", "softmax_ce"]),
    (["compare", "-d", "fp99"], ["fp99", "float16"]),
    (["thresholds", "-e", "likelihood", "--family", "nope"], ["nope", "likelihood/"]),
    (["audit", "scipy.nope"], ["scipy.nope", "scipy.log_softmax"]),
    (["audit", "scipy.log_softmax", "--family", "nope"], ["nope", "confident"]),
    (["train", "--scenario", "nope"], ["nope", "overflow"]),
]


@pytest.mark.parametrize(("args", "fragments"), CLI_ERRORS)
def test_wrong_names_on_the_cli_are_one_line_exit_2(args, fragments, capsys):
    code, out, err = _run(capsys, *args)
    assert code == ExitStatus.USAGE
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stabilitylab: error:"), err
    for fragment in fragments:
        assert fragment in lines[0]


def test_witnesses_of_a_compressed_npz_are_read_back_in_one_pass(tmp_path):
    """The audit's witness rows are read again from the file (a compressed member: forward, once)."""
    pytest.importorskip("scipy", reason="the scipy audit needs scipy (the test extra)")
    rng = np.random.default_rng(11)
    rows = 400
    gap = rng.uniform(5.0, 40.0, rows)
    logits = np.stack([np.zeros(rows), -gap, -gap - rng.uniform(0, 3, rows)], axis=1).astype(np.float32)
    np.savez_compressed(tmp_path / "confident.npz", logits=logits, labels=np.zeros(rows, np.int64))
    result = stabilitylab.audit("scipy.log_softmax", logits=tmp_path / "confident.npz", search=False)
    assert [f.name for f in result.audit.formats] == ["float16", "float32", "float64"]
    rows_ = result.rows
    for w in (w for w in result.witnesses if w.kind == "first"):
        mine = (rows_["method"] == "scipy.log_softmax") & (rows_["dtype"] == w.dtype) & (rows_["status"] == w.status)
        first = int(rows_["row"][mine][0])
        assert w.case == f"row={first}"
        fmt = FORMATS[w.dtype]
        assert w.inputs["logits"] == fmt.round(logits[first].astype(np.float64)).astype(np.float64).tolist()
    assert {w.dtype for w in result.witnesses} >= {"float16", "float32"}
