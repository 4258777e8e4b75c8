"""Read a user's logits and labels; every problem becomes one :class:`InputError` line."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..experiments.binary_ce import Binary
from ..experiments.softmax_ce import Logits

__all__ = ["InputError", "MAX_ELEMENTS", "read_array", "user_logits", "user_binary", "logits_cases",
           "binary_cases", "user_source", "UserLogits", "is_path"]

MAX_ELEMENTS = 1_000_000  # rows * classes: float64 references take ~30 s at this size
READ_ARRAY_SUFFIXES = (".npy", ".npz", ".csv", ".txt")


def read_array(path: str | os.PathLike, what: str) -> np.ndarray:
    """A numeric array from .npy, .npz (exactly one array), or .csv / .txt (comma or blank separated).

    Binary files are checked from their header (shape and type) before any data is
    read or decompressed, so an oversized or compressed-bomb array costs nothing.
    The readers are :mod:`stabilitylab.io.sources`'; this adds the in-memory size limit.
    """
    option = f"--{what}" if what in ("logits", "labels") else None
    from .sources import open_tensor  # (sources imports ml_dtypes: only when a file is read)

    return open_tensor(path, what, None, option=option, key_option=None, default_key=None,
                       suffixes=READ_ARRAY_SUFFIXES, max_elements=MAX_ELEMENTS).read_all()


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
    """A user's logits opened for streaming: the source, labels (None: each row's
    argmax), the rows to evaluate (labels != ``ignore_index``) and notes for the output."""

    source: object  # sources.LogitsSource
    labels: np.ndarray | None
    keep: np.ndarray
    notes: list[str]

    @property
    def text(self) -> str:
        s = self.source
        key = f"[{s.key}]" if s.key else ""
        return f"{s.path.name}{key} ({'x'.join(map(str, s.shape))} {s.dtype})"


_CONTAINERS = (".npz", ".safetensors", ".pt", ".pth")


def is_path(value) -> bool:
    """A file name (str or os.PathLike), as opposed to an array."""
    return isinstance(value, (str, os.PathLike))


def _array(value, what: str) -> np.ndarray:
    """Anything ``numpy.asarray`` takes, as an array of numbers (one InputError line otherwise)."""
    option = f"--{what}"
    try:
        x = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - ragged lists, objects numpy cannot read
        raise InputError(f"{what} could not be read as an array ({type(exc).__name__}: {exc}); allowed: a file "
                         "name or a numeric array (numpy, or anything numpy.asarray takes)", option) from None
    if x.dtype.kind == "O":
        try:
            x = x.astype(np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{what} hold Python objects that are not numbers; a numeric array is required",
                             option) from None
    if x.ndim == 0:
        shape = "(rows, classes) or (..., classes)" if what == "logits" else "(rows,)"
        raise InputError(f"{what} is a single number ({x.item()!r}); an array of shape {shape} is required", option)
    return x


def user_source(logits, *, key: str | None = None, labels=None, labels_key: str | None = None,
                ignore_index: int | None = -100) -> UserLogits:
    """Open logits of any size, their labels and the rows to keep (see :mod:`sources`).

    ``logits``: a file name (.npy, .npz, .safetensors, .pt / .pth, .csv, .txt), read in
    chunks, or an array (anything ``numpy.asarray`` takes), wrapped as the same kind of
    source; shape (rows, classes) or (..., classes).  ``labels``: a file name, an array of
    shape ``logits.shape[:-1]`` or (rows,), or None: then ``labels_key`` or the ``labels``
    tensor of the logits file when it is a container holding one, else each row's argmax.
    Rows whose label is ``ignore_index`` are skipped (counted in a note).
    """
    from . import sources

    if is_path(logits):
        source = sources.open_logits(logits, key)
    else:
        if key is not None:
            raise InputError(f"--key {key!r} picks a tensor in a logits file; the logits given are an array",
                             "--key")
        source = sources.logits_from_array(_array(logits, "logits"))
    notes = list(source.notes)
    y = None
    if labels is not None and not is_path(labels):
        if labels_key is not None:
            raise InputError(f"--labels-key {labels_key!r} picks a tensor in a file; the labels given are an array",
                             "--labels-key")
        y = sources.labels_from_array(_array(labels, "labels"), source)
    elif labels is not None or labels_key is not None:
        if labels is None and not is_path(logits):
            raise InputError(f"--labels-key {labels_key!r} picks a tensor in a file; the logits given are an array",
                             "--labels-key")
        y = sources.read_labels(labels if labels is not None else logits, labels_key, source, notes)
    elif is_path(logits) and Path(logits).suffix.lower() in _CONTAINERS:
        try:
            y = sources.read_labels(logits, "labels", source, notes)
            notes.append(f"labels: the 'labels' tensor of {Path(logits).name}")
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
