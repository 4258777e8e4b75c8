"""Unit tests of reading user logits and labels (stabilitylab.io.userdata)."""

from __future__ import annotations

import gc
import tracemalloc
import warnings

import numpy as np
import pytest

from stabilitylab.io import userdata
from stabilitylab.io.userdata import InputError, read_array, user_logits

X = np.array([[0.5, 1.25, -3.0],
              [2.0, 2.5, 1.0],
              [-7.0, 0.0, 3.5]])


def test_npy_roundtrip(tmp_path):
    np.save(tmp_path / "x.npy", X)
    arr = read_array(tmp_path / "x.npy", "logits")
    assert arr.shape == X.shape
    assert np.array_equal(arr, X)
    assert not isinstance(arr, np.memmap)  # a real copy, not a view of the file


def test_npz_with_one_array(tmp_path):
    np.savez(tmp_path / "x.npz", anything=X)
    assert np.array_equal(read_array(tmp_path / "x.npz", "logits"), X)


def test_csv(tmp_path):
    (tmp_path / "x.csv").write_text("# logits\n0.5,1.25,-3\n2,2.5,1\n-7,0,3.5\n")
    assert np.array_equal(read_array(tmp_path / "x.csv", "logits"), X)


def test_txt_whitespace_separated(tmp_path):
    (tmp_path / "x.txt").write_text("0.5  1.25\t-3\n2 2.5 1\n-7 0 3.5\n")
    arr = read_array(tmp_path / "x.txt", "logits")
    assert arr.dtype == np.float64
    assert np.array_equal(arr, X)


def test_txt_comma_separated(tmp_path):
    (tmp_path / "x.txt").write_text("0.5,1.25,-3\n2,2.5,1\n-7,0,3.5\n")
    assert np.array_equal(read_array(tmp_path / "x.txt", "logits"), X)


def test_suffix_is_case_insensitive(tmp_path):
    np.save(tmp_path / "x.npy", X)
    (tmp_path / "x.npy").rename(tmp_path / "X.NPY")
    assert np.array_equal(read_array(tmp_path / "X.NPY", "logits"), X)


def test_one_dimensional_logits_become_one_row(tmp_path):
    np.save(tmp_path / "row.npy", np.array([0.5, 4.0, -1.0, 2.0]))
    batch, notes = user_logits(tmp_path / "row.npy")
    assert batch.logits.shape == (1, 4)
    assert batch.names == ("row=0",)
    assert batch.labels.tolist() == [1]
    assert batch.widths.tolist() == [4]
    assert notes == []


def test_default_labels_are_argmax(tmp_path):
    np.save(tmp_path / "x.npy", X)
    batch, notes = user_logits(tmp_path / "x.npy")
    assert batch.names == ("row=0", "row=1", "row=2")
    assert batch.labels.tolist() == np.argmax(X, axis=1).tolist()
    assert batch.logits.dtype == np.float64
    assert np.array_equal(batch.logits, X)
    assert batch.widths.tolist() == [3, 3, 3]
    assert notes == []


def test_integer_logits_are_converted_to_float64(tmp_path):
    np.save(tmp_path / "x.npy", np.array([[1, 5, 2]], dtype=np.int32))
    batch, _ = user_logits(tmp_path / "x.npy")
    assert batch.logits.dtype == np.float64
    assert batch.logits.tolist() == [[1.0, 5.0, 2.0]]
    assert batch.labels.tolist() == [1]


def test_argmax_ignores_nan(tmp_path):
    np.save(tmp_path / "x.npy", np.array([[np.nan, 1.0, 3.0], [1.0, np.nan, 0.0]]))
    batch, notes = user_logits(tmp_path / "x.npy")
    assert batch.labels.tolist() == [2, 0]
    assert len(notes) == 1


def test_non_finite_rows_are_noted(tmp_path):
    x = np.array([[0.0, 1.0], [np.inf, 0.0], [1.0, 2.0], [-np.inf, np.nan]])
    np.save(tmp_path / "x.npy", x)
    batch, notes = user_logits(tmp_path / "x.npy")
    assert len(batch.names) == 4
    assert len(notes) == 1
    assert "2 row(s)" in notes[0]
    assert "row=1" in notes[0] and "row=3" in notes[0]
    assert "row=0" not in notes[0] and "row=2" not in notes[0]


def test_labels_one_dimensional(tmp_path):
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", np.array([2, 0, 1]))
    batch, _ = user_logits(tmp_path / "x.npy", tmp_path / "y.npy")
    assert batch.labels.tolist() == [2, 0, 1]
    assert batch.labels.dtype == np.int64


@pytest.mark.parametrize("shape", [(3, 1), (1, 3)])
def test_labels_column_or_row_vector(tmp_path, shape):
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", np.array([2, 0, 1]).reshape(shape))
    batch, _ = user_logits(tmp_path / "x.npy", tmp_path / "y.npy")
    assert batch.labels.tolist() == [2, 0, 1]


def test_labels_from_text_column(tmp_path):
    np.save(tmp_path / "x.npy", X)
    (tmp_path / "y.txt").write_text("2\n0\n1\n")
    batch, _ = user_logits(tmp_path / "x.npy", tmp_path / "y.txt")
    assert batch.labels.tolist() == [2, 0, 1]


def test_labels_as_integral_floats(tmp_path):
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", np.array([2.0, 0.0, 1.0]))
    batch, _ = user_logits(tmp_path / "x.npy", tmp_path / "y.npy")
    assert batch.labels.tolist() == [2, 0, 1]


# ---------------------------------------------------------------------------------------------- errors


def _bad_inputs(d):
    """(logits path, labels path or None, text the message must contain) for each kind of bad input."""
    np.save(d / "x.npy", X)
    (d / "x.json").write_text("[[1, 2]]")
    (d / "noext").write_text("1,2\n")
    (d / "bad.csv").write_text("1,2,abc\n3,4,5\n")
    (d / "ragged.csv").write_text("1,2,3\n4,5\n")
    (d / "garbage.npy").write_bytes(b"this is not an npy file\nsecond line\n")
    (d / "latin1.csv").write_bytes(b"1,2,\xe9\n")
    (d / "empty.npy").write_bytes(b"")
    np.save(d / "cube.npy", np.zeros((2, 2, 2)))
    np.save(d / "norows.npy", np.zeros((0, 3)))
    np.save(d / "strings.npy", np.array([["a", "b"]]))
    np.save(d / "complex.npy", np.array([[1 + 2j, 0j]]))
    np.savez(d / "two.npz", a=X, b=X)
    np.savez(d / "none.npz")
    np.save(d / "y_count.npy", np.array([0, 1]))
    np.save(d / "y_frac.npy", np.array([0.0, 1.5, 2.0]))
    np.save(d / "y_nan.npy", np.array([0.0, np.nan, 2.0]))
    np.save(d / "y_high.npy", np.array([0, 3, 1]))
    np.save(d / "y_neg.npy", np.array([0, 1, -1]))
    np.save(d / "y_2d.npy", np.zeros((3, 2)))
    return [
        ("missing.npy", None, "does not exist"),
        (".", None, "not a file"),
        ("x.json", None, ".json"),
        ("noext", None, "(none)"),
        ("bad.csv", None, "could not be read"),
        ("ragged.csv", None, "could not be read"),
        ("garbage.npy", None, "could not be read"),
        ("latin1.csv", None, "could not be read"),
        ("empty.npy", None, "could not be read"),
        ("cube.npy", None, "(2, 2, 2)"),
        ("norows.npy", None, "(0, 3)"),
        ("strings.npy", None, "numbers are required"),
        ("complex.npy", None, "numbers are required"),
        ("two.npz", None, "2 arrays"),
        ("none.npz", None, "0 arrays"),
        ("x.npy", "missing.npy", "does not exist"),
        ("x.npy", "y_count.npy", "2 entries"),
        ("x.npy", "y_frac.npy", "integers"),
        ("x.npy", "y_nan.npy", "integers"),
        ("x.npy", "y_high.npy", "0..2"),
        ("x.npy", "y_neg.npy", "0..2"),
        ("x.npy", "y_2d.npy", "(3, 2)"),
    ]


BAD_IDS = ["missing", "directory", "json", "no-suffix", "non-numeric-csv", "ragged-csv", "garbage-npy",
           "non-utf8-csv", "empty-npy", "3d", "zero-rows", "strings", "complex", "npz-two",
           "npz-none", "labels-missing", "labels-count", "labels-fraction", "labels-nan", "labels-high",
           "labels-negative", "labels-2d"]


@pytest.mark.parametrize("index", range(len(BAD_IDS)), ids=BAD_IDS)
def test_bad_input_is_one_line_input_error(tmp_path, index):
    logits, labels, fragment = _bad_inputs(tmp_path)[index]
    with pytest.raises(InputError) as info:
        user_logits(tmp_path / logits, None if labels is None else tmp_path / labels)
    message = str(info.value)
    assert message
    assert "\n" not in message and "\r" not in message
    assert fragment in message, message


def test_bad_input_cases_cover_every_id(tmp_path):
    assert len(_bad_inputs(tmp_path)) == len(BAD_IDS)


def test_input_error_is_a_value_error():
    assert issubclass(InputError, ValueError)


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_text_file_is_input_error(tmp_path, text):
    (tmp_path / "empty.csv").write_text(text)
    with pytest.raises(InputError) as info:
        user_logits(tmp_path / "empty.csv")
    assert "\n" not in str(info.value)


def _read_corrupt_npz(tmp_path) -> tuple[str, list]:
    """read_array on a truncated zip with a .npz name: (InputError message, ResourceWarnings seen)."""
    path = tmp_path / "corrupt.npz"
    path.write_bytes(b"PK\x03\x04 truncated zip\n\n")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        try:
            read_array(path, "logits")
        except InputError as exc:
            message = str(exc)
        else:
            message = ""
        gc.collect()
    return message, [w for w in seen if issubclass(w.category, ResourceWarning)]


def test_corrupt_npz_is_one_line_input_error(tmp_path):
    message, _ = _read_corrupt_npz(tmp_path)  # the leaked handle is test_corrupt_npz_closes_its_file's
    assert "could not be read" in message
    assert "\n" not in message


def test_corrupt_npz_closes_its_file(tmp_path):
    message, leaks = _read_corrupt_npz(tmp_path)
    assert message
    assert leaks == []


# ---------------------------------------------------------------------------------------------- size limit


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv"])
def test_max_elements_enforced(tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(userdata, "MAX_ELEMENTS", 10)
    x = np.arange(16, dtype=np.float64).reshape(4, 4)
    path = tmp_path / f"x{suffix}"
    if suffix == ".npy":
        np.save(path, x)
    elif suffix == ".npz":
        np.savez(path, x=x)
    else:
        np.savetxt(path, x, delimiter=",")
    with pytest.raises(InputError, match="more than 10 values") as info:
        read_array(path, "logits")
    assert "(4, 4)" in str(info.value)
    assert "\n" not in str(info.value)


def test_max_elements_boundary_is_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(userdata, "MAX_ELEMENTS", 16)
    np.save(tmp_path / "x.npy", np.ones((4, 4)))
    assert read_array(tmp_path / "x.npy", "logits").shape == (4, 4)


def test_huge_npy_is_refused_without_loading(tmp_path):
    """A (sparse) .npy one element over the real limit: refused from its header, its data never read."""
    path = tmp_path / "huge.npy"
    n = userdata.MAX_ELEMENTS + 1
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(n,))
    del mm
    assert path.stat().st_size >= 8 * n
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with pytest.raises(InputError, match="more than"):
            read_array(path, "logits")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * n // 4  # loading would allocate the full 160 MB
