"""A user's ``linear_ce`` problem: ``hidden`` (N, D), ``weight`` (V, D), ``labels`` (N,), opened for reading
block by block (``compare -e linear_ce --problem PATH``).

``PATH`` is a directory holding ``hidden.npy``, ``weight.npy`` and ``labels.npy``, or a ``.safetensors``
file holding tensors named ``hidden``, ``weight`` and ``labels``.  Both are read by
:mod:`stabilitylab.io.sources` (the readers of ``--logits``): the ``.npy`` header is parsed without
unpickling anything (an object array is refused), the safetensors header is parsed as JSON by
stabilitylab itself (no safetensors library is needed), and the data are read a block of rows at a
time from the file (no memory map whose pages would stay resident).  Every problem with the input is
one :class:`~stabilitylab.errors.InputError` line naming ``--problem``: a missing file or tensor,
shapes that do not fit together, non-float hidden / weight, non-integer or out-of-range labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, shown

__all__ = ["Problem", "open_problem", "NAMES"]

NAMES = ("hidden", "weight", "labels")
OPTION = "--problem"


@dataclass
class Problem:
    """The opened tensors (readers of :mod:`.sources`), the labels (read whole: 8 bytes per token) and the
    sizes N, D, V."""

    hidden: object
    weight: object
    labels: np.ndarray
    tokens: int
    hidden_size: int
    vocabulary: int
    text: str  # what was read, for the output

    def rows(self, which: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of ``hidden`` or ``weight`` as stored (a new array, shape (stop - start, D))."""
        tensor = self.hidden if which == "hidden" else self.weight
        d = self.hidden_size
        with tensor.reading(in_order=False) as read:
            return np.asarray(read(start * d, (stop - start) * d)).reshape(stop - start, d)


def _open(path: Path, name: str):
    from .sources import open_tensor  # (sources imports ml_dtypes' names lazily; only when a file is read)

    if path.is_dir():
        file = path / f"{name}.npy"
        if not file.is_file():
            raise InputError(f"problem folder {shown(path)} has no {name}.npy; it needs hidden.npy (N, D), "
                             "weight.npy (V, D) and labels.npy (N,)", OPTION)
        return open_tensor(file, name, None, option=OPTION, key_option=None, default_key=None,
                           suffixes=(".npy",))
    return open_tensor(path, name, name, option=OPTION, key_option=OPTION, default_key=None,
                       suffixes=(".safetensors",))


def open_problem(path: str | os.PathLike) -> Problem:
    """Open and check a problem (see the module docstring); the labels are read and checked whole."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"problem {shown(p)} does not exist: give a folder with hidden.npy, weight.npy and "
                         "labels.npy, or a .safetensors file with tensors hidden, weight and labels", OPTION)
    if p.is_file() and p.suffix.lower() != ".safetensors":
        raise InputError(f"problem {shown(p)} is a {shown(p.suffix or '(no suffix)', True)} file; give a folder with "
                         "hidden.npy, weight.npy and labels.npy, or a .safetensors file", OPTION)
    hidden, weight, labels = (_open(p, name) for name in NAMES)
    for name, t in (("hidden", hidden), ("weight", weight)):
        if len(t.shape) != 2 or 0 in t.shape:
            raise InputError(f"{name} must have shape ({'N' if name == 'hidden' else 'V'}, D) with both >= 1; got "
                             f"{tuple(t.shape)}", OPTION)
        if np.dtype(t.dtype).kind in "biu":
            raise InputError(f"{name} holds {np.dtype(t.dtype).name} values; floating-point values are required",
                             OPTION)
    n, d = hidden.shape
    v, dw = weight.shape
    if dw != d:
        raise InputError(f"hidden is (N, D) = {tuple(hidden.shape)} and weight (V, D) = {tuple(weight.shape)}: "
                         "their D must match", OPTION)
    if tuple(labels.shape) not in ((n,), (n, 1), (1, n)):
        raise InputError(f"labels has shape {tuple(labels.shape)}; one label per token, shape ({n},), is required",
                         OPTION)
    y = np.asarray(labels.read_all()).reshape(-1)
    if y.dtype.kind not in "iu":
        y64 = y.astype(np.float64)
        bad = ~np.isfinite(y64) | (y64 != np.round(y64))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"label of token {i} is {float(y64[i])!r}; labels must be integers", OPTION)
        y = y64
    out = (y < 0) | (y >= v)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise InputError(f"label {int(y[i])} of token {i} is out of range; allowed 0..{v - 1} (V = {v})", OPTION)
    text = f"{shown(p)} (N={n:,} tokens, D={d:,}, V={v:,})"
    return Problem(hidden, weight, y.astype(np.int64), n, d, v, text)
