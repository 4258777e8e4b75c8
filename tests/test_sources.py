"""Tests of stabilitylab.io.sources: logits and labels opened from their header, read in blocks.

Files are written by independent writers (numpy.save / savez / savez_compressed, the
safetensors package, torch.save) or, for corrupt and hand-made safetensors, byte by
byte from the documented layout.  Blocks are compared bit for bit with the in-memory
array converted by numpy / ml_dtypes (or torch, for files torch wrote).
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from stabilitylab.io import sources, userdata
from stabilitylab.io.sources import (
    InputError,
    LogitsSource,
    check_labels,
    default_rows_per_chunk,
    logits_from_array,
    open_logits,
    read_labels,
)

ROOT = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(20240611)
X = RNG.standard_normal((3, 4, 5)).astype(np.float32) * 8
X[0, 0, :3] = [np.inf, -np.inf, np.nan]  # special values must survive bit for bit
X[1, 2, 4] = -0.0
Y = RNG.integers(0, 5, size=(3, 4))


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and bits, except that NaN payloads may differ (torch keeps float8 NaN mantissas)."""
    if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
        return False
    return np.array_equal(_bits(a)[~np.isnan(a)], _bits(b)[~np.isnan(b)])


def _all_chunks(src: LogitsSource, rows_per_chunk: int) -> np.ndarray:
    """Every block, checked to be in order, C-contiguous and of the block dtype; concatenated."""
    blocks, expected_first = [], 0
    for first, block in src.chunks(rows_per_chunk):
        assert first == expected_first
        assert block.ndim == 2 and block.shape[1] == src.classes
        assert 1 <= block.shape[0] <= rows_per_chunk
        assert block.flags.c_contiguous and block.dtype == src.block_dtype
        blocks.append(block)
        expected_first += block.shape[0]
    assert expected_first == src.rows
    return np.concatenate(blocks)


def _one_line(exc: InputError, *fragments: str) -> str:
    message = str(exc)
    assert message and "\n" not in message and "\r" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _safetensors_bytes(entries: dict[str, tuple[str, tuple[int, ...], bytes]], metadata=None) -> bytes:
    """The documented layout by hand: u64 LE header length, JSON header padded to 8 bytes, data."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in entries.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def _torch():
    """torch, imported only by the tests that need it (it is slow to import); skipped where missing."""
    return pytest.importorskip("torch")


# ---------------------------------------------------------------------------------------------- formats

# (id, writer(path) -> expected (rows, classes) block array, suffix, storage dtype, format)


def _w_npy(dtype):
    def write(path):
        x = X.astype(dtype)
        np.save(path, x)
        return x
    return write


def _w_npz(compressed):
    def write(path):
        (np.savez_compressed if compressed else np.savez)(path, X)
        return X
    return write


def _w_fortran(path):
    x = np.asfortranarray(X.reshape(12, 5))
    np.save(path, x)
    return x


def _w_safetensors_numpy(dtype):
    def write(path):
        from safetensors.numpy import save_file

        x = X.astype(dtype)
        save_file({"logits": x}, str(path))
        return x
    return write


def _w_safetensors_torch(name):
    def write(path):
        torch = _torch()
        from safetensors.torch import save_file

        t = torch.from_numpy(X).to(getattr(torch, name))
        save_file({"logits": t}, str(path))
        return t.float().numpy()  # torch's own conversion: independent of ml_dtypes
    return write


def _w_safetensors_by_hand(path):
    x = X.astype(ml_dtypes.bfloat16)
    path.write_bytes(_safetensors_bytes({"logits": ("BF16", x.shape, x.tobytes())}, metadata={"format": "np"}))
    return x.astype(np.float32)


def _w_pt(name, container):
    def write(path):
        torch = _torch()
        t = torch.from_numpy(X).to(getattr(torch, name))
        torch.save({"logits": t} if container else t, path)
        return t.float().numpy() if t.is_floating_point() else t.double().numpy()
    return write


def _w_text(sep):
    def write(path):
        x = X.reshape(-1, 5).astype(np.float64)
        x[~np.isfinite(x)] = 1.0
        path.write_text("\ufeff# logits\n" + "\n".join(sep.join(repr(float(v)) for v in row) for row in x) + "\n",
                        encoding="utf-8")
        return x
    return write


FORMATS = [
    ("npy-float32", _w_npy(np.float32), ".npy", np.float32, None),
    ("npy-float64", _w_npy(np.float64), ".npy", np.float64, None),
    ("npy-float16", _w_npy(np.float16), ".npy", np.float16, "float16"),
    ("npy-bigendian", _w_npy(">f4"), ".npy", np.dtype(">f4"), None),
    ("npy-fortran", _w_fortran, ".npy", np.float32, None),
    ("npz-stored", _w_npz(False), ".npz", np.float32, None),
    ("npz-compressed", _w_npz(True), ".npz", np.float32, None),
    ("safetensors-F32", _w_safetensors_numpy(np.float32), ".safetensors", np.float32, None),
    ("safetensors-F64", _w_safetensors_numpy(np.float64), ".safetensors", np.float64, None),
    ("safetensors-F16", _w_safetensors_numpy(np.float16), ".safetensors", np.float16, "float16"),
    ("safetensors-BF16", _w_safetensors_torch("bfloat16"), ".safetensors", ml_dtypes.bfloat16, "bfloat16"),
    ("safetensors-F8_E4M3", _w_safetensors_torch("float8_e4m3fn"), ".safetensors", ml_dtypes.float8_e4m3fn,
     "float8_e4m3fn"),
    ("safetensors-F8_E5M2", _w_safetensors_torch("float8_e5m2"), ".safetensors", ml_dtypes.float8_e5m2,
     "float8_e5m2"),
    ("safetensors-F8_E4M3FNUZ", _w_safetensors_torch("float8_e4m3fnuz"), ".safetensors", ml_dtypes.float8_e4m3fnuz,
     "float8_e4m3fnuz"),
    ("safetensors-F8_E5M2FNUZ", _w_safetensors_torch("float8_e5m2fnuz"), ".safetensors", ml_dtypes.float8_e5m2fnuz,
     "float8_e5m2fnuz"),
    ("safetensors-BF16-by-hand", _w_safetensors_by_hand, ".safetensors", ml_dtypes.bfloat16, "bfloat16"),
    ("pt-bfloat16-dict", _w_pt("bfloat16", True), ".pt", ml_dtypes.bfloat16, "bfloat16"),
    ("pt-float8_e5m2", _w_pt("float8_e5m2", False), ".pth", ml_dtypes.float8_e5m2, "float8_e5m2"),
    ("pt-float8_e4m3fnuz", _w_pt("float8_e4m3fnuz", True), ".pt", ml_dtypes.float8_e4m3fnuz, "float8_e4m3fnuz"),
    ("pt-float32", _w_pt("float32", False), ".pt", np.float32, None),
    ("pt-int64", _w_pt("int64", True), ".pt", np.int64, None),
    ("csv", _w_text(","), ".csv", np.float64, None),
    ("txt", _w_text(" "), ".txt", np.float64, None),
]


@pytest.mark.parametrize("case", FORMATS, ids=[c[0] for c in FORMATS])
def test_chunks_and_read_are_bit_identical(tmp_path, case):
    _, write, suffix, dtype, fmt = case
    path = tmp_path / f"x{suffix}"
    x = write(path)
    classes = x.shape[-1]
    block_dtype = np.float64 if np.dtype(dtype) in (np.float64, np.int64) else np.float32
    expected = np.ascontiguousarray(x.astype(block_dtype).reshape(-1, classes))
    src = open_logits(path)
    assert src.path == path and src.shape == x.shape
    assert (src.rows, src.classes) == expected.shape
    assert src.dtype == np.dtype(dtype) and src.format == fmt
    assert src.block_dtype == block_dtype
    assert any("already in that format" in n for n in src.notes) == (fmt is not None)
    if fmt is not None:
        assert f"logits are stored as {fmt}: values are already in that format" in src.notes
    for rows_per_chunk in (1, 5, src.rows, src.rows + 7):
        assert _same_bits(_all_chunks(src, rows_per_chunk), expected)
    assert _same_bits(src.read(2, 7), expected[2:7])
    assert _same_bits(src.read(0, src.rows), expected)
    assert src.read(4, 4).shape == (0, classes)


def test_logits_from_an_in_memory_array():
    x = X.astype(ml_dtypes.bfloat16)[:, ::-1]  # not contiguous
    src = logits_from_array(x, "batch")
    assert (src.shape, src.rows, src.classes, src.format) == ((3, 4, 5), 12, 5, "bfloat16")
    assert _same_bits(_all_chunks(src, 5), x.astype(np.float32).reshape(12, 5))
    with pytest.raises(InputError) as info:
        logits_from_array(np.zeros((2, 0)), "batch")
    _one_line(info.value, "logits file batch has shape (2, 0)")
    with pytest.raises(InputError) as info:
        logits_from_array(np.array([["a"]]))
    assert info.value.option == "--logits"


def test_key_is_none_for_single_array_files_and_the_name_in_containers(tmp_path):
    np.save(tmp_path / "x.npy", X)
    np.savez(tmp_path / "x.npz", scores=X)
    assert open_logits(tmp_path / "x.npy").key is None
    assert open_logits(tmp_path / "x.npz").key == "scores"


def test_one_dimensional_logits_are_one_row(tmp_path):
    np.save(tmp_path / "x.npy", X[0, 0])
    src = open_logits(tmp_path / "x.npy")
    assert (src.shape, src.rows, src.classes) == ((5,), 1, 5)
    np.save(tmp_path / "y.npy", np.array(3))
    assert read_labels(tmp_path / "y.npy", None, src).tolist() == [3]
    np.save(tmp_path / "y1.npy", np.array([3]))
    assert read_labels(tmp_path / "y1.npy", None, src).tolist() == [3]


@pytest.mark.parametrize("labels_shape", [(3, 4), (12,), (12, 1), (1, 12)])
def test_leading_dimensions_flatten_to_rows_with_matching_labels(tmp_path, labels_shape):
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", Y.reshape(labels_shape))
    src = open_logits(tmp_path / "x.npy")
    assert (src.rows, src.classes) == (12, 5)
    labels = read_labels(tmp_path / "y.npy", None, src)
    assert labels.dtype == np.int64 and labels.shape == (12,)
    assert labels.tolist() == Y.ravel().tolist()
    assert _same_bits(src.read(4, 8), X.reshape(12, 5)[4:8])  # row r is X[r // 4, r % 4]


def test_integer_logits_become_float64_blocks(tmp_path):
    x = np.array([[1, -5, 2**40]], dtype=np.int64)
    np.save(tmp_path / "x.npy", x)
    src = open_logits(tmp_path / "x.npy")
    assert src.format is None and src.block_dtype == np.float64
    assert src.read(0, 1).tolist() == [[1.0, -5.0, 2.0**40]]


def test_float8_e4m3_from_the_safetensors_package_matches_ml_dtypes(tmp_path):
    """torch wrote the bytes; ml_dtypes's reading of them equals torch's float conversion, bit for bit."""
    torch = _torch()
    from safetensors.torch import save_file

    grid = torch.arange(-448.0, 449.0, 0.25).reshape(-1, 1)  # every finite e4m3 value, and ties between them
    save_file({"logits": grid.to(torch.float8_e4m3fn)}, str(tmp_path / "x.safetensors"))
    src = open_logits(tmp_path / "x.safetensors")
    assert _same_bits(src.read(0, src.rows), grid.to(torch.float8_e4m3fn).float().numpy())


def test_labels_in_the_same_safetensors_file(tmp_path):
    from safetensors.numpy import save_file

    save_file({"logits": X.astype(np.float16), "labels": Y.astype(np.int32)}, str(tmp_path / "b.safetensors"))
    src = open_logits(tmp_path / "b.safetensors")
    assert src.key == "logits"
    assert src.notes[0] == ("logits: tensor 'logits' of b.safetensors, which holds 2 tensors (--key picks another)")
    notes: list[str] = []
    labels = read_labels(tmp_path / "b.safetensors", None, src, notes)
    assert labels.tolist() == Y.ravel().tolist()
    assert notes == ["labels: tensor 'labels' of b.safetensors, which holds 2 tensors (--labels-key picks another)"]
    assert read_labels(tmp_path / "b.safetensors", "labels", src).tolist() == Y.ravel().tolist()


def test_labels_from_pt_npz_text_and_low_precision_floats(tmp_path):
    torch = _torch()
    np.save(tmp_path / "x.npy", X)
    src = open_logits(tmp_path / "x.npy")
    torch.save({"labels": torch.from_numpy(Y)}, tmp_path / "y.pt")
    np.savez_compressed(tmp_path / "y.npz", y=Y.astype(np.uint8))
    (tmp_path / "y.csv").write_text("\n".join(str(v) for v in Y.ravel()) + "\n")
    y_bf16 = Y.astype(ml_dtypes.bfloat16)
    (tmp_path / "y.safetensors").write_bytes(_safetensors_bytes({"t": ("BF16", Y.shape, y_bf16.tobytes())}))
    for name in ("y.pt", "y.npz", "y.csv", "y.safetensors"):
        labels = read_labels(tmp_path / name, None, src)
        assert labels.dtype == np.int64 and labels.tolist() == Y.ravel().tolist(), name


def test_labels_are_not_range_checked_when_read(tmp_path):
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", np.full(12, -100.0))
    assert read_labels(tmp_path / "y.npy", None, open_logits(tmp_path / "x.npy")).tolist() == [-100] * 12


# ---------------------------------------------------------------------------------------------- several tensors


def _containers(d: Path) -> dict[str, Path]:
    """The same three tensors (a, b, c) in an .npz, a .safetensors and a .pt file."""
    from safetensors.numpy import save_file

    torch = _torch()
    arrays = {"a": X, "b": X[1], "c": X[0, 0]}
    np.savez(d / "three.npz", **arrays)
    save_file(arrays, str(d / "three.safetensors"))
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()} | {"step": 7}, d / "three.pt")
    return {s: d / f"three.{s}" for s in ("npz", "safetensors", "pt")}


@pytest.mark.parametrize("suffix", ["npz", "safetensors", "pt"])
def test_key_picks_one_of_several_tensors(tmp_path, suffix):
    path = _containers(tmp_path)[suffix]
    src = open_logits(path, key="b")
    assert (src.key, src.shape, src.notes) == ("b", (4, 5), [])
    assert _same_bits(src.read(0, 4), X[1])


@pytest.mark.parametrize("suffix", ["npz", "safetensors", "pt"])
def test_several_tensors_without_key_name_them_and_say_to_pass_key(tmp_path, suffix):
    path = _containers(tmp_path)[suffix]
    with pytest.raises(InputError) as info:
        open_logits(path)
    _one_line(info.value, str(path), "3 ", "a", "b", "c", "pass --key NAME")
    assert info.value.option == "--logits"
    with pytest.raises(InputError) as info:
        read_labels(path, None, open_logits(path, key="a"))
    _one_line(info.value, "pass --labels-key NAME")
    assert info.value.option == "--labels"


@pytest.mark.parametrize("suffix", ["npz", "safetensors", "pt"])
def test_unknown_key_lists_the_names(tmp_path, suffix):
    path = _containers(tmp_path)[suffix]
    with pytest.raises(InputError) as info:
        open_logits(path, key="logits")
    _one_line(info.value, str(path), "'logits'", "a, b, c")
    assert info.value.option == "--key"
    with pytest.raises(InputError) as info:
        read_labels(path, "nope", open_logits(path, key="a"))
    assert info.value.option == "--labels-key"


def test_npz_key_with_or_without_npy_suffix(tmp_path):
    np.savez(tmp_path / "x.npz", logits=X, labels=Y)
    assert open_logits(tmp_path / "x.npz", key="logits.npy").key == "logits"
    assert open_logits(tmp_path / "x.npz", key="logits").key == "logits"
    src = open_logits(tmp_path / "x.npz")  # the one named logits, with a note
    assert src.key == "logits" and "which holds 2 arrays" in src.notes[0]
    assert read_labels(tmp_path / "x.npz", None, src).tolist() == Y.ravel().tolist()


@pytest.mark.parametrize("name", ["x.npy", "x.csv"])
def test_key_for_a_single_array_file_is_refused(tmp_path, name):
    np.save(tmp_path / "x.npy", X)
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(InputError) as info:
        open_logits(tmp_path / name, key="logits")
    _one_line(info.value, "holds one unnamed array")
    assert info.value.option == "--key"


def test_pt_parameter_with_grad(tmp_path):
    torch = _torch()
    torch.save({"logits": torch.nn.Parameter(torch.from_numpy(X[0].copy()))}, tmp_path / "p.pt")
    assert _same_bits(open_logits(tmp_path / "p.pt").read(0, 4), X[0])


def test_key_for_a_single_tensor_pt_is_refused(tmp_path):
    torch = _torch()
    torch.save(torch.zeros(2, 3), tmp_path / "x.pt")
    with pytest.raises(InputError) as info:
        open_logits(tmp_path / "x.pt", key="logits")
    assert info.value.option == "--key"


def test_empty_npz(tmp_path):
    np.savez(tmp_path / "none.npz")
    with pytest.raises(InputError) as info:
        open_logits(tmp_path / "none.npz")
    _one_line(info.value, "holds no arrays")


# ---------------------------------------------------------------------------------------------- labels


def test_check_labels_keeps_rows_not_ignored():
    labels = np.array([0, -100, 4, -100, 2])
    keep, notes = check_labels(labels, 5, -100)
    assert keep.tolist() == [True, False, True, False, True]
    assert notes == ["2 rows with label -100 skipped (--ignore-index)"]
    keep, notes = check_labels(labels[[0, 2]], 5, -100)
    assert keep.all() and notes == []
    keep, notes = check_labels(labels[[0, 2]], 5, None)
    assert keep.all() and notes == []


def test_check_labels_note_groups_thousands():
    labels = np.zeros(20_000, dtype=np.int64)
    labels[:12_345] = -100
    _, notes = check_labels(labels, 3, -100)
    assert notes == ["12,345 rows with label -100 skipped (--ignore-index)"]
    _, notes = check_labels(np.array([1, 7]), 3, 7)
    assert notes == ["1 row with label 7 skipped (--ignore-index)"]


@pytest.mark.parametrize("labels, ignore, fragments", [
    ([0, 1, 5, 9], -100, ["label 5 in row 2", "0..4 or the ignore index -100"]),
    ([0, -1, 2], -100, ["label -1 in row 1"]),
    ([0, -100, 2], None, ["label -100 in row 1", "allowed 0..4", "--ignore-index"]),
    ([-100, -100], -100, ["every row (2)", "-100"]),
])
def test_check_labels_errors(labels, ignore, fragments):
    with pytest.raises(InputError) as info:
        check_labels(np.array(labels, dtype=np.int64), 5, ignore)
    _one_line(info.value, *fragments)
    assert info.value.option == "--labels"


def test_check_labels_finds_the_first_bad_row_past_one_block(monkeypatch):
    monkeypatch.setattr(sources, "LABEL_BLOCK", 4)
    labels = np.zeros(11, dtype=np.int64)
    labels[9] = 3
    with pytest.raises(InputError, match="in row 9 "):
        check_labels(labels, 3, None)


@pytest.mark.parametrize("y, fragments", [
    (np.array([0.0, 1.5, 2.0] * 4), ["row 1", "1.5", "integers"]),
    (np.array([0.0, 1.0, np.nan] * 4), ["row 2", "nan", "integers"]),
    (np.array([0.0, 1e19, 2.0] * 4), ["row 1", "integers"]),
    (np.array([0, 2**63, 1] * 4, dtype=np.uint64), ["row 1", "larger than any class index"]),
    (np.ones(12, dtype=bool), ["bool", "integer class indices"]),
    (np.zeros((4, 3)), ["(4, 3)", "(3, 4) or (12,)"]),
    (np.zeros(11), ["(11,)", "12 rows"]),
])
def test_bad_labels(tmp_path, y, fragments):
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", y)
    with pytest.raises(InputError) as info:
        read_labels(tmp_path / "y.npy", None, open_logits(tmp_path / "x.npy"))
    _one_line(info.value, str(tmp_path / "y.npy"), *fragments)
    assert info.value.option == "--labels"


def test_bad_label_row_is_counted_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "LABEL_BLOCK", 5)
    np.save(tmp_path / "x.npy", X)
    y = np.zeros(12)
    y[11] = 0.5
    np.save(tmp_path / "y.npy", y)
    with pytest.raises(InputError, match="row 11 "):
        read_labels(tmp_path / "y.npy", None, open_logits(tmp_path / "x.npy"))


@pytest.mark.parametrize("classes, budget, rows", [(32_000, 2**20, 32), (3, 2**20, 349_525), (2**21, 2**20, 1),
                                                  (7, 7, 1), (1, 10, 10)])
def test_default_rows_per_chunk(classes, budget, rows):
    assert default_rows_per_chunk(classes, budget) == rows
    assert default_rows_per_chunk(classes) == max(1, 2**20 // classes)


# ---------------------------------------------------------------------------------------------- errors


def _npy_header(descr: str, shape: str, version: int = 1) -> bytes:
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<H", len(text)) + text


def _bad_files(d: Path) -> list[tuple[str, str]]:
    """(file name, text the one-line message must hold) for each kind of bad logits file."""
    np.save(d / "ok.npy", X)
    (d / "ok.npy").rename(d / "x.json")
    (d / "noext").write_text("1,2\n")
    (d / "sub").mkdir()
    (d / "garbage.npy").write_bytes(b"not an npy file\n")
    (d / "empty.npy").write_bytes(b"")
    (d / "version.npy").write_bytes(b"\x93NUMPY\x07\x00" + bytes(100))
    (d / "header.npy").write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': <f4'\n" + bytes(8))
    (d / "negative.npy").write_bytes(_npy_header("<f4", "(-3, 4)"))
    np.save(d / "short.npy", X)
    with open(d / "short.npy", "r+b") as fh:
        fh.truncate(os.path.getsize(d / "short.npy") - 4)
    np.save(d / "bool.npy", np.zeros((2, 2), dtype=bool))
    np.save(d / "complex.npy", np.zeros((2, 2), dtype=complex))
    np.save(d / "strings.npy", np.array([["a", "b"]]))
    np.save(d / "records.npy", np.zeros(3, dtype=[("a", "<f4"), ("b", "<f4")]))
    np.save(d / "raw.npy", np.zeros((2, 2), dtype=ml_dtypes.bfloat16))
    np.save(d / "norows.npy", np.zeros((0, 3)))
    np.save(d / "scalar.npy", np.array(1.5))
    (d / "notzip.npz").write_bytes(b"PK\x03\x04 truncated zip\n")
    (d / "tiny.safetensors").write_bytes(b"\x01\x00")
    (d / "length.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    (d / "json.safetensors").write_bytes(struct.pack("<Q", 8) + b"{'a': 1}")
    (d / "list.safetensors").write_bytes(struct.pack("<Q", 8) + b"[1, 2]  ")
    (d / "utf8.safetensors").write_bytes(struct.pack("<Q", 8) + b'{"\xff": 1}')
    entry = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    for name, change, data in [("entry", {"shape": "2x2"}, 16), ("beyond", {}, 8),
                               ("mismatch", {"data_offsets": [0, 12]}, 16),
                               ("backwards", {"data_offsets": [16, 0]}, 16),
                               ("c64", {"dtype": "C64", "data_offsets": [0, 32]}, 32),
                               ("boolean", {"dtype": "BOOL", "data_offsets": [0, 4]}, 4)]:
        header = json.dumps({"t": entry | change}).encode()
        (d / f"{name}.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(data))
    (d / "garbage.pt").write_bytes(b"not a torch file")
    (d / "big.txt").write_bytes(b"")
    os.truncate(d / "big.txt", sources.MAX_TEXT_BYTES + 1)  # sparse: costs no disk
    (d / "words.csv").write_text("1,2,abc\n")
    (d / "comment.csv").write_text("# nothing\n")
    return [
        ("missing.npy", "does not exist"),
        ("sub", "not a file"),
        ("x.json", "'.json'; allowed: .npy, .npz, .safetensors, .pt, .pth, .csv, .txt"),
        ("noext", "(none)"),
        ("garbage.npy", "not a NumPy .npy file"),
        ("empty.npy", "not a NumPy .npy file"),
        ("version.npy", "unknown .npy format version 7"),
        ("header.npy", "header is malformed"),
        ("negative.npy", "(-3, 4)"),
        ("short.npy", "truncated (236 of 240 data bytes)"),
        ("bool.npy", "bool values; allowed: float64, float32"),
        ("complex.npy", "real numbers are required"),
        ("strings.npy", "numbers are required"),
        ("records.npy", "records with fields (a, b)"),
        ("raw.npy", "2-byte raw values"),
        ("norows.npy", "(0, 3)"),
        ("scalar.npy", "shape ()"),
        ("notzip.npz", "could not be read"),
        ("tiny.safetensors", "2 bytes long, too short"),
        ("length.safetensors", "claims 1,000,000,000 bytes"),
        ("json.safetensors", "not valid UTF-8 JSON"),
        ("list.safetensors", "not a JSON object"),
        ("utf8.safetensors", "not valid UTF-8 JSON"),
        ("entry.safetensors", "entry 't' is malformed"),
        ("beyond.safetensors", "bytes 0..16 of a 8-byte data buffer"),
        ("mismatch.safetensors", "needs 16 bytes but its data_offsets span 12"),
        ("backwards.safetensors", "bytes 16..0"),
        ("c64.safetensors", "dtype C64; allowed: F64, F32, F16, BF16, F8_E4M3, F8_E5M2, F8_E4M3FNUZ, F8_E5M2FNUZ, I64"),
        ("boolean.safetensors", "bool values"),
        ("garbage.pt", "torch.load failed" if _HAVE_TORCH else "reading .pt files needs torch: pip install "
                       "'stabilitylab[torch]'"),
        ("big.txt", "larger than 512 MiB; use .npy"),
        ("words.csv", "could not be read"),
        ("comment.csv", "holds no numbers"),
    ]


_HAVE_TORCH = importlib.util.find_spec("torch") is not None  # with torch: its own refusal; without: the extra


def _bad_ids() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return [name for name, _ in _bad_files(Path(d))]


BAD_IDS = _bad_ids()


@pytest.mark.parametrize("index", range(len(BAD_IDS)), ids=BAD_IDS)
def test_bad_logits_file_is_one_line_naming_the_file(tmp_path, index):
    name, fragment = _bad_files(tmp_path)[index]
    with pytest.raises(InputError) as info:
        open_logits(tmp_path / name)
    _one_line(info.value, str(tmp_path / name), fragment)
    assert info.value.option == "--logits"


def test_missing_torch_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "x.pt").write_bytes(b"anything")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(InputError) as info:
        open_logits(tmp_path / "x.pt")
    _one_line(info.value, str(tmp_path / "x.pt"), "reading .pt files needs torch: pip install 'stabilitylab[torch]'")


class _NotATensor:
    pass


@pytest.mark.parametrize("obj, fragment", [
    ([1, 2], "holds a list; allowed: a tensor or a dict of tensors"),
    ({"logits": _NotATensor()}, "torch.load failed (Weights only load failed"),
])
def test_pt_that_is_not_a_tensor(tmp_path, obj, fragment):
    torch = _torch()
    torch.save(obj, tmp_path / "x.pt")
    with pytest.raises(InputError) as info:
        open_logits(tmp_path / "x.pt")
    _one_line(info.value, fragment)


def test_pt_unsupported_dtype_and_non_contiguous(tmp_path, monkeypatch):
    torch = _torch()
    torch.save(torch.zeros(2, 2, dtype=torch.complex64), tmp_path / "c.pt")
    with pytest.raises(InputError) as info:
        open_logits(tmp_path / "c.pt")
    _one_line(info.value, "complex64 tensor; allowed: float64")
    t = torch.from_numpy(X[0]).T  # a non-contiguous view: small ones are made contiguous
    torch.save(t, tmp_path / "t.pt")
    assert _same_bits(open_logits(tmp_path / "t.pt").read(0, 5), np.ascontiguousarray(X[0].T))
    monkeypatch.setattr(sources, "MAX_FORTRAN_BYTES", 16)
    with pytest.raises(InputError) as info:
        open_logits(tmp_path / "t.pt")
    _one_line(info.value, "non-contiguous", "t.contiguous()")


def test_large_fortran_order_is_refused_from_the_header(tmp_path, monkeypatch):
    np.save(tmp_path / "f.npy", np.asfortranarray(X[0]))
    monkeypatch.setattr(sources, "MAX_FORTRAN_BYTES", 16)
    with pytest.raises(InputError) as info:
        open_logits(tmp_path / "f.npy")
    _one_line(info.value, "column-major", "numpy.ascontiguousarray")
    np.save(tmp_path / "row.npy", np.asfortranarray(X[0, :1]))  # (1, 5): the same bytes in either order
    assert _same_bits(open_logits(tmp_path / "row.npy").read(0, 1), X[0, :1])


def test_file_truncated_after_opening_fails_while_reading(tmp_path):
    np.save(tmp_path / "x.npy", X)
    src = open_logits(tmp_path / "x.npy")
    os.truncate(tmp_path / "x.npy", 200)
    with pytest.raises(InputError) as info:
        _all_chunks(src, 4)
    _one_line(info.value, str(tmp_path / "x.npy"), "truncated")
    assert info.value.option == "--logits"


def test_corrupt_compressed_npz_fails_while_reading(tmp_path):
    path = tmp_path / "x.npz"
    np.savez_compressed(path, RNG.standard_normal((100, 200)).astype(np.float32))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as info:
        _all_chunks(open_logits(path), 10)
    _one_line(info.value, str(path), "could not be read")


def test_read_out_of_range_and_bad_chunk_size(tmp_path):
    np.save(tmp_path / "x.npy", X)
    src = open_logits(tmp_path / "x.npy")
    with pytest.raises(IndexError):
        src.read(5, 13)
    with pytest.raises(IndexError):
        src.read(3, 2)
    with pytest.raises(ValueError):
        next(src.chunks(0))


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_abandoned_chunks_close_their_file(tmp_path, suffix):
    path = tmp_path / f"x{suffix}"
    (np.save if suffix == ".npy" else np.savez_compressed)(path, X)
    it = open_logits(path).chunks(1)
    next(it)
    del it
    gc.collect()  # a leaked handle would be a ResourceWarning, an error in this suite


def test_read_array_keeps_its_suffixes_and_messages(tmp_path):
    from safetensors.numpy import save_file

    save_file({"logits": X}, str(tmp_path / "x.safetensors"))
    with pytest.raises(InputError) as info:
        userdata.read_array(tmp_path / "x.safetensors", "logits")
    _one_line(info.value, "'.safetensors'; allowed: .npy, .npz, .csv, .txt")
    np.savez(tmp_path / "two.npz", logits=X, labels=Y)
    with pytest.raises(InputError) as info:
        userdata.read_array(tmp_path / "two.npz", "logits")
    _one_line(info.value, "2 arrays (logits.npy, labels.npy); an .npz must hold exactly one")
    assert userdata.InputError is InputError


# ---------------------------------------------------------------------------------------------- size and memory

HUGE = (10**6, 10**6)  # 4 TB of float32


def _huge_files(d: Path) -> dict[str, Path]:
    """Tiny files whose headers claim HUGE float32 logits."""
    (d / "huge.npy").write_bytes(_npy_header("<f4", str(HUGE)) + bytes(64))
    (d / "huge.safetensors").write_bytes(_safetensors_bytes({"logits": ("F32", HUGE, bytes(64))}))
    for name, method in (("stored", zipfile.ZIP_STORED), ("deflated", zipfile.ZIP_DEFLATED)):
        with zipfile.ZipFile(d / f"huge-{name}.npz", "w", method) as z:
            z.writestr("x.npy", _npy_header("<f4", str(HUGE)) + bytes(64))
    return {p.name: p for p in d.iterdir()}


@pytest.mark.parametrize("name", ["huge.npy", "huge.safetensors", "huge-stored.npz", "huge-deflated.npz"])
def test_huge_shape_in_a_tiny_file_is_refused_from_the_header(tmp_path, name):
    path = _huge_files(tmp_path)[name]
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as info:
            open_logits(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _one_line(info.value, str(path))
    assert "truncated" in str(info.value) or "data_offsets span 64" in str(info.value)
    assert peak < 2**20, peak


def test_compressed_npz_is_streamed_in_bounded_memory(tmp_path):
    """64 MB of float32 zeros compressed to ~64 kB: opening and reading in blocks never holds it all."""
    path = tmp_path / "bomb.npz"
    rows, classes = 4096, 4096
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open("x.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": (rows, classes)})
        block = bytes(4 * classes * 256)
        for _ in range(rows // 256):
            member.write(block)
        member.write(struct.pack("<f", 2.5))  # trailing bytes after the array are ignored
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    try:
        src = open_logits(path)
        opened = tracemalloc.get_traced_memory()[1]
        total, count = 0.0, 0
        for first, chunk in src.chunks(64):
            total += float(chunk.sum())
            count += chunk.shape[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (src.rows, src.classes, count, total) == (rows, classes, rows, 0.0)
    assert opened < 2**20, opened
    assert peak < 8 * 64 * classes * 4, peak  # a few blocks (1 MiB each), not 64 MB


def test_forged_deflate_ratio_is_refused(tmp_path, monkeypatch):
    np.savez_compressed(tmp_path / "z.npz", np.zeros((256, 256), dtype=np.float32))
    monkeypatch.setattr(sources, "DEFLATE_MAX_RATIO", 0)  # as if the member claimed more than deflate can produce
    with pytest.raises(InputError) as info:
        open_logits(tmp_path / "z.npz")
    _one_line(info.value, "more than deflate can produce")


def test_chunks_of_a_400_mb_npy_keep_the_resident_set_small(tmp_path):
    """Reading 10^8 float32 values in blocks grows the peak RSS (ru_maxrss) by a few blocks, not 400 MB."""
    path = tmp_path / "big.npy"
    rows, classes = 100_000, 1000
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, classes))
    mm[::997] = 1.5  # the rest stays a hole in a sparse file: no disk is spent
    mm.flush()
    del mm
    script = (
        "import resource, sys\n"
        "import numpy as np\n"
        "from stabilitylab.io.sources import default_rows_per_chunk, open_logits\n"
        "src = open_logits(sys.argv[1])\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "total, seen = 0.0, 0\n"
        "for first, block in src.chunks(default_rows_per_chunk(src.classes)):\n"
        "    assert first == seen\n"
        "    seen += block.shape[0]\n"
        "    total += float(block.sum(dtype=np.float64))\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(seen, total, (after - before) * 1024)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script, str(path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seen, total, growth = done.stdout.split()
    assert int(seen) == rows
    assert float(total) == 1.5 * classes * len(range(0, rows, 997))
    assert int(growth) < 48 * 2**20, int(growth)  # blocks are 4 MiB; the file is 400 MB
