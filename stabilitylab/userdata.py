"""Read a user's logits and labels; every problem becomes one :class:`InputError` line."""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from .experiments.softmax_ce import Logits

__all__ = ["InputError", "MAX_ELEMENTS", "read_array", "user_logits"]

MAX_ELEMENTS = 1_000_000  # rows * classes: float64 references take ~30 s at this size
MAX_TEXT_BYTES = 512 * 2**20


class InputError(ValueError):
    """Bad user input; the message is one line saying what was wrong and what is allowed."""


def read_array(path: str | os.PathLike, what: str) -> np.ndarray:
    """A numeric array from .npy, .npz (exactly one array), or .csv / .txt (comma or blank separated)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file {p} does not exist or is not a file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
            _check_size(arr.shape, what, p)
            arr = np.array(arr)
        elif suffix == ".npz":
            with open(p, "rb") as fh, np.load(fh, allow_pickle=False) as z:
                if len(z.files) != 1:
                    raise InputError(f"{what} file {p} holds {len(z.files)} arrays ({', '.join(z.files) or 'none'}); "
                                     "an .npz must hold exactly one")
                arr = z[z.files[0]]
        elif suffix in (".csv", ".txt"):
            if p.stat().st_size > MAX_TEXT_BYTES:
                raise InputError(f"{what} file {p} is larger than {MAX_TEXT_BYTES >> 20} MiB; use .npy")
            text = p.read_text(encoding="utf-8")
            delimiter = "," if ("," in text or suffix == ".csv") else None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "input contained no data": checked below
                arr = np.loadtxt(text.splitlines(), delimiter=delimiter, ndmin=2, dtype=np.float64, comments="#")
            if arr.size == 0:
                raise InputError(f"{what} file {p} holds no numbers")
        else:
            raise InputError(f"{what} file {p} has suffix {suffix or '(none)'!r}; allowed: .npy, .npz, .csv, .txt")
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{what} file {p} could not be read: {detail}") from None
    if arr.dtype.kind not in "biuf":
        raise InputError(f"{what} file {p} holds {arr.dtype} values; numbers are required")
    _check_size(arr.shape, what, p)
    return arr


def _check_size(shape, what, path) -> None:
    if int(np.prod(shape, dtype=np.int64)) > MAX_ELEMENTS:
        raise InputError(f"{what} file {path} has shape {tuple(shape)}: more than {MAX_ELEMENTS:,} values")


def user_logits(logits_path, labels_path=None) -> tuple[Logits, list[str]]:
    """Cases ``row=<i>`` from a (rows, classes) logits file and optional labels.

    Without labels, a row's label is its argmax.  Returns the batch and notes
    for the output (rows with non-finite logits are allowed and reported).
    """
    x = read_array(logits_path, "logits")
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"logits must have shape (rows, classes) with rows, classes >= 1; got {x.shape}")
    x = x.astype(np.float64)
    rows, classes = x.shape
    if labels_path is None:
        labels = np.argmax(np.where(np.isnan(x), -np.inf, x), axis=1)
    else:
        y = read_array(labels_path, "labels")
        if y.ndim == 2 and 1 in y.shape:
            y = y.ravel()
        if y.ndim != 1:
            raise InputError(f"labels must be one integer per row; got shape {y.shape}")
        if y.size != rows:
            raise InputError(f"labels has {y.size} entries but logits has {rows} rows; they must match")
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            bad = int(np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))[0])
            raise InputError(f"label in row {bad} is {float(y[bad])!r}; labels must be integers")
        out = (y < 0) | (y >= classes)
        if out.any():
            bad = int(np.flatnonzero(out)[0])
            raise InputError(f"label {float(y[bad]):g} in row {bad} is out of range; allowed 0..{classes - 1}")
        labels = y.astype(np.int64)
    notes = []
    nonfinite = np.flatnonzero(~np.all(np.isfinite(x), axis=1))
    if nonfinite.size:
        shown = ", ".join(f"row={i}" for i in nonfinite[:5]) + (" ..." if nonfinite.size > 5 else "")
        notes.append(f"{nonfinite.size} row(s) with non-finite logits ({shown}): allowed; "
                     "their exact loss is the limit where one exists, else NaN")
    names = tuple(f"row={i}" for i in range(rows))
    return Logits(names, x, labels, np.full(rows, classes, dtype=np.int64)), notes
