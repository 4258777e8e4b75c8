"""Read a user's logits and labels; every problem becomes one :class:`InputError` line."""

from __future__ import annotations

import math
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .experiments.binary_ce import Binary
from .experiments.softmax_ce import Logits

__all__ = ["InputError", "MAX_ELEMENTS", "read_array", "user_logits", "user_binary", "logits_cases",
           "binary_cases", "user_source", "UserLogits"]

try:
    from lzma import LZMAError

    _LZMA_ERRORS: tuple[type[Exception], ...] = (LZMAError,)
except ImportError:  # Python built without lzma: zipfile cannot open such members either
    _LZMA_ERRORS = ()

MAX_ELEMENTS = 1_000_000  # rows * classes: float64 references take ~30 s at this size
MAX_TEXT_BYTES = 512 * 2**20


class InputError(ValueError):
    """Bad user input; the message is one line saying what was wrong and what is allowed.

    ``option`` names the command-line option whose file was at fault (``--logits`` or ``--labels``).
    """

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


NPY_MAGIC = b"\x93NUMPY"
NOT_NPY = ("it is not a NumPy .npy file (it does not start with the \\x93NUMPY header); allowed: "
           "an array saved with numpy.save (.npy) or numpy.savez (.npz), or numbers in a .csv / .txt file")


def read_array(path: str | os.PathLike, what: str) -> np.ndarray:
    """A numeric array from .npy, .npz (exactly one array), or .csv / .txt (comma or blank separated).

    Binary files are checked from their header (shape and type) before any data is
    read or decompressed, so an oversized or compressed-bomb array costs nothing.
    """
    p = Path(path)
    option = f"--{what}" if what in ("logits", "labels") else None

    def fail(message: str) -> InputError:
        return InputError(message, option)

    if not p.is_file():
        raise fail(f"{what} file {p} does not exist or is not a file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            with open(p, "rb") as fh:
                arr = _read_npy(fh, what, p)
        elif suffix == ".npz":
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
                if len(names) != 1:
                    raise fail(f"{what} file {p} holds {len(names)} arrays ({', '.join(names) or 'none'}); "
                               "an .npz must hold exactly one")
                with z.open(names[0]) as member:
                    arr = _read_npy(member, what, p)
        elif suffix in (".csv", ".txt"):
            if p.stat().st_size > MAX_TEXT_BYTES:
                raise fail(f"{what} file {p} is larger than {MAX_TEXT_BYTES >> 20} MiB; use .npy")
            text = p.read_text(encoding="utf-8-sig")  # -sig: Excel starts its UTF-8 CSV with a BOM
            delimiter = "," if ("," in text or suffix == ".csv") else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "input contained no data": checked below
                arr = np.loadtxt(text.splitlines(), delimiter=delimiter, ndmin=2, dtype=np.float64, comments="#")
            if arr.size == 0:
                raise fail(f"{what} file {p} holds no numbers")
        else:
            raise fail(f"{what} file {p} has suffix {suffix or '(none)'!r}; allowed: .npy, .npz, .csv, .txt")
    except InputError as exc:
        exc.option = option
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, UnicodeDecodeError, NotImplementedError,
            RuntimeError, zlib.error, *_LZMA_ERRORS) as exc:
        # NotImplementedError / RuntimeError: unsupported or encrypted zip members; zlib / lzma: corrupt data
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise fail(f"{what} file {p} could not be read: {detail}") from None
    _check_size(arr.shape, what, p)
    return arr


def _read_npy(fh, what: str, path) -> np.ndarray:
    """An array from an open .npy stream: magic, header, checks, and only then the data."""
    fmt = np.lib.format
    if fh.read(len(NPY_MAGIC)) != NPY_MAGIC:
        raise InputError(f"{what} file {path} could not be read: {NOT_NPY}")
    major, _ = (fh.read(2) + b"\0\0")[:2]
    if major not in (1, 2, 3):
        raise InputError(f"{what} file {path} could not be read: unknown .npy format version {major}")
    try:  # version 3 differs from 2 only in allowing a UTF-8 header
        shape, fortran_order, dtype = (fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0)(fh)
    except Exception as exc:  # noqa: BLE001 - numpy parses the header with tokenize and ast: any of their errors
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{what} file {path} could not be read: its .npy header is malformed ({detail})") from None
    if any(n < 0 for n in shape):
        raise InputError(f"{what} file {path} could not be read: its header has shape {shape}")
    _check_size(shape, what, path)
    _check_dtype(dtype, what, path)
    size = math.prod(shape) * dtype.itemsize
    data = fh.read(size)
    if len(data) != size:
        raise InputError(f"{what} file {path} could not be read: it is truncated ({len(data)} of {size} data bytes)")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C").copy()


def _check_dtype(dtype: np.dtype, what: str, path) -> None:
    if dtype.kind in "biuf":
        return
    if dtype.kind == "V" and dtype.names is None:
        raise InputError(f"{what} file {path} holds {dtype.itemsize}-byte raw values ({dtype.str}): that is how "
                         "numpy.save stores bfloat16 / float8 arrays of ml_dtypes, whose type it cannot record; "
                         "save them as float32 instead (x.astype(numpy.float32))")
    if dtype.kind == "V":
        raise InputError(f"{what} file {path} holds records with fields ({', '.join(dtype.names)}); "
                         "a plain array of numbers is required")
    if dtype.kind == "c":
        raise InputError(f"{what} file {path} holds {dtype} values; real numbers are required")
    raise InputError(f"{what} file {path} holds {dtype} values; numbers are required")


def _check_size(shape, what, path) -> None:
    if math.prod(shape) > MAX_ELEMENTS:  # Python integers: a forged header cannot overflow the product
        raise InputError(f"{what} file {path} has shape {tuple(shape)}: more than {MAX_ELEMENTS:,} values")


def user_logits(logits_path, labels_path=None) -> tuple[Logits, list[str]]:
    """Cases ``row=<i>`` from a (rows, classes) logits file and optional labels.

    Without labels, a row's label is its argmax.  Returns the batch and notes
    for the output (rows with non-finite logits are allowed and reported).
    """
    x = read_array(logits_path, "logits")
    y = None if labels_path is None else read_array(labels_path, "labels")
    return logits_cases(x, y)


def logits_cases(x, y=None) -> tuple[Logits, list[str]]:
    """softmax_ce cases ``row=<i>`` from arrays: logits (rows, classes), labels (rows,) or None (argmax)."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        try:
            x = x.astype(np.float64)
        except (TypeError, ValueError):
            raise InputError(f"logits hold {x.dtype} values; numbers are required", "--logits") from None
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"logits must have shape (rows, classes) with rows, classes >= 1; got {x.shape}",
                         "--logits")
    x = x.astype(np.float64)
    rows, classes = x.shape
    if y is None:
        labels = np.argmax(np.where(np.isnan(x), -np.inf, x), axis=1)
    else:
        y = np.asarray(y, dtype=np.float64)
        if y.ndim == 2 and 1 in y.shape:
            y = y.ravel()
        if y.ndim != 1:
            raise InputError(f"labels must be one integer per row; got shape {y.shape}", "--labels")
        if y.size != rows:
            raise InputError(f"labels has {y.size} entries but logits has {rows} rows; they must match",
                             "--labels")
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            bad = int(np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))[0])
            raise InputError(f"label in row {bad} is {float(y[bad])!r}; labels must be integers", "--labels")
        out = (y < 0) | (y >= classes)
        if out.any():
            bad = int(np.flatnonzero(out)[0])
            raise InputError(f"label {float(y[bad]):g} in row {bad} is out of range; allowed 0..{classes - 1}",
                             "--labels")
        labels = y.astype(np.int64)
    notes = []
    nonfinite = np.flatnonzero(~np.all(np.isfinite(x), axis=1))
    if nonfinite.size:
        shown = ", ".join(f"row={i}" for i in nonfinite[:5]) + (" ..." if nonfinite.size > 5 else "")
        notes.append(f"{nonfinite.size} row(s) with non-finite logits ({shown}): allowed; "
                     "their exact loss is the limit where one exists, else NaN")
    names = tuple(f"row={i}" for i in range(rows))
    return Logits(names, x, labels, np.full(rows, classes, dtype=np.int64)), notes


def user_binary(logits_path, labels_path) -> tuple[Binary, list[str]]:
    """binary_ce cases ``row=<i>`` from (rows, K) logits and (rows, K) labels of 0 / 1."""
    if labels_path is None:
        raise InputError("binary_ce needs --labels: one 0/1 label per logit, shape (rows, K)", "--labels")
    x = read_array(logits_path, "logits")
    y = read_array(labels_path, "labels")
    return binary_cases(x, y)


def binary_cases(x, y) -> tuple[Binary, list[str]]:
    """binary_ce cases ``row=<i>`` from arrays: logits and 0/1 labels, both (rows, K)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"logits must have shape (rows, K) with rows, K >= 1; got {x.shape}", "--logits")
    if y.ndim == 1 and x.shape[1] == 1:
        y = y[:, None]
    if y.shape != x.shape:
        raise InputError(f"labels have shape {y.shape} but logits {x.shape}; binary_ce needs one label per logit",
                         "--labels")
    y = y.astype(np.float64)
    bad = ~((y == 0) | (y == 1))
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise InputError(f"label [{row}, {col}] is {float(y[row, col])!r}; binary_ce labels must be 0 or 1", "--labels")
    rows, width = x.shape
    notes = []
    nonfinite = np.flatnonzero(~np.all(np.isfinite(x), axis=1))
    if nonfinite.size:
        shown = ", ".join(f"row={i}" for i in nonfinite[:5]) + (" ..." if nonfinite.size > 5 else "")
        notes.append(f"{nonfinite.size} row(s) with non-finite logits ({shown}): allowed")
    names = tuple(f"row={i}" for i in range(rows))
    return Binary(names, x.astype(np.float64), y, np.full(rows, width, dtype=np.int64)), notes


@dataclass
class UserLogits:
    """A user's logits file opened for streaming: the source, labels (None: each row's
    argmax), the rows to evaluate (labels != --ignore-index) and notes for the output."""

    source: object  # sources.LogitsSource
    labels: np.ndarray | None
    keep: np.ndarray
    notes: list[str]

    @property
    def text(self) -> str:
        s = self.source
        key = f"[{s.key}]" if s.key else ""
        return f"{s.path.name}{key} {tuple(s.shape)} {s.dtype}"


_CONTAINERS = (".npz", ".safetensors", ".pt", ".pth")


def user_source(logits_path, *, key: str | None = None, labels: str | None = None, labels_key: str | None = None,
                ignore_index: int | None = -100) -> UserLogits:
    """Open a logits file of any size, its labels and the rows to keep (see :mod:`sources`).

    Labels come from ``labels`` (``labels_key`` picks the tensor), else from the logits
    file's ``labels_key`` or ``labels`` tensor when it is a container holding one, else
    each row's argmax is the label.
    """
    from . import sources

    source = sources.open_logits(logits_path, key)
    notes = list(source.notes)
    y = None
    if labels is not None or labels_key is not None:
        y = sources.read_labels(labels if labels is not None else logits_path, labels_key, source, notes)
    elif Path(logits_path).suffix.lower() in _CONTAINERS:
        try:
            y = sources.read_labels(logits_path, "labels", source, notes)
            notes.append(f"labels: the 'labels' tensor of {Path(logits_path).name}")
        except sources.InputError as exc:
            if exc.option != "--labels-key":  # a 'labels' tensor that cannot be used: say so
                raise
    if y is None:
        notes.append("labels: each row's argmax (no --labels)")
        keep = np.ones(source.rows, dtype=bool)
    else:
        keep, more = sources.check_labels(y, source.classes, ignore_index)
        notes.extend(more)
    return UserLogits(source, y, keep, notes)
