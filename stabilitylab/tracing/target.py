"""What ``stabilitylab trace`` runs: a model and its batch.

The user's code (importing the file, ``build()``, the step) runs inside ``except (Exception, SystemExit)``: a
``sys.exit()`` in it is one line and exit 2, not the user's exit status.

* ``path/to/file.py:build`` or ``module:build``: ``build()`` returns ``(model, batch)`` or
  ``(model, inputs, loss_fn)``.  ``batch`` is a tensor, a tuple / list of tensors (positional arguments) or a
  dict (keyword arguments); the step is ``model(*batch)``; with ``loss_fn``, ``loss_fn(model(*inputs))``
  (``inputs`` as ``batch``).  A step whose result is a scalar that requires a gradient is the loss, and the
  backward pass runs after it (``--backward``, the default; ``--no-backward`` skips it).
* ``--model program.pt2 --inputs batch.pt``: a whole ``nn.Module`` cannot be unpickled without running code,
  so the model file holds an exported program (``torch.export.save(torch.export.export(model, args), path)``;
  loaded with ``torch.export.load``, which reads a graph and weights, not pickled code; TorchScript is
  deprecated) and ``batch.pt`` a tensor, a list / tuple or a dict of tensors read with
  ``torch.load(weights_only=True)``: reading a data file never runs code.

:func:`prepare` puts model and batch in the format: bfloat16 / float16 natively (``model.to(dtype)``,
floating batch tensors cast), every other format emulated in float32 (the shadow rounds); ``rows`` keeps the
first ``rows`` entries of the batch's first dimension of every batch tensor.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, described
from ..io.usercode import load_callable
from .shadow import torch_module

__all__ = ["Target", "load", "from_files", "prepare"]


@dataclass
class Target:
    model: Any
    inputs: Any  # a tensor, a tuple of tensors (positional) or a dict (keyword arguments)
    loss_fn: Callable | None
    name: str

    def step(self, model=None, inputs=None):
        """One forward step: ``loss_fn(model(*inputs))`` or ``model(*inputs)``."""
        model = self.model if model is None else model
        inputs = self.inputs if inputs is None else inputs
        out = model(**inputs) if isinstance(inputs, dict) else model(*inputs) if isinstance(inputs, (tuple, list)) \
            else model(inputs)
        return self.loss_fn(out) if self.loss_fn is not None else out


def load(spec: str) -> Target:
    """A target from ``file.py:build`` / ``module:build`` (one line, InputError, if it cannot be built)."""
    where, _, name = str(spec).rpartition(":")
    if not where or not name:
        raise InputError(f"target {spec!r}: expected path/to/file.py:build or module:build", "TARGET")
    build = _load_callable(where, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            made = build()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's build(): one line
        raise InputError(f"{spec} raised {described(exc)}", "TARGET") from None
    if not isinstance(made, tuple) or len(made) not in (2, 3):
        raise InputError(f"{spec} must return (model, batch) or (model, inputs, loss_fn), not "
                         f"{type(made).__name__}", "TARGET")
    model, inputs = made[0], made[1]
    loss_fn = made[2] if len(made) == 3 else None
    if not callable(model) or (loss_fn is not None and not callable(loss_fn)):
        raise InputError(f"{spec}: the model and loss_fn must be callable", "TARGET")
    return Target(model, inputs, loss_fn, spec)


def _load_callable(where: str, name: str) -> Callable:
    return load_callable(where, name, lambda message: InputError(message, "TARGET"))


def from_files(model_path: str, inputs_path: str) -> Target:
    """``--model file.pt --inputs batch.pt`` (see the module docstring)."""
    torch = torch_module()
    for path, option in ((model_path, "--model"), (inputs_path, "--inputs")):
        if not Path(path).is_file():
            raise InputError(f"{path} does not exist or is not a file", option)
    try:
        inputs = torch.load(inputs_path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - a file that is not a weights-only tensor file
        raise InputError(f"cannot read {inputs_path} with torch.load(weights_only=True): {described(exc)}",
                         "--inputs") from None
    try:
        with _quiet():
            model = torch.export.load(model_path).module()
    except Exception as exc:  # noqa: BLE001
        why = described(exc).replace(" Please check the warnings above for possible errors.", "")  # (not shown)
        raise InputError(f"cannot load {model_path} as an exported program (torch.export.save): {why}; "
                         "for a Python model give TARGET as file.py:build", "--model") from None
    if not _all_tensors(torch, inputs):
        raise InputError(f"{inputs_path} must hold a tensor, a list / tuple or a dict of tensors", "--inputs")
    if isinstance(inputs, list):
        inputs = tuple(inputs)
    return Target(model, inputs, None, f"{model_path} {inputs_path}")


@contextlib.contextmanager
def _quiet():
    """torch's own warnings and log lines (``torch.export`` logs a dozen lines before raising on a file that is
    not an exported program; copying an exported module warns of a deprecated pytree API) kept off the
    terminal: a failure is the one line of the InputError."""
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _all_tensors(torch, value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return len(value) > 0 and all(isinstance(v, torch.Tensor) for v in value)
    if isinstance(value, dict):
        return len(value) > 0 and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    return False


def prepare(target: Target, dtype, rows: int | None):
    """``(model, inputs)`` for a run in ``dtype`` (a torch dtype: native; None: float32, emulated), the batch cut
    to ``rows`` along its first dimension.  The model is copied (the caller's stays as it was)."""
    import copy

    torch = torch_module()
    if rows is not None and rows < 1:
        raise InputError(f"--rows must be >= 1, not {rows}", "--rows")
    want = dtype or torch.float32

    def cast(t):
        if not isinstance(t, torch.Tensor):
            return t
        if rows is not None and t.dim() >= 1:
            t = t[:rows]
        t = t.detach()
        return t.to(want) if t.is_floating_point() else t

    inputs = target.inputs
    if isinstance(inputs, dict):
        inputs = {k: cast(v) for k, v in inputs.items()}
    elif isinstance(inputs, (tuple, list)):
        inputs = tuple(cast(v) for v in inputs)
    else:
        inputs = cast(inputs)
    try:
        with _quiet():  # a deprecation warning while copying must not make the copy fail (tests: warnings are errors)
            model = copy.deepcopy(target.model)
    except Exception:  # noqa: BLE001 - a model that cannot be copied runs as it is (cast in place)
        model = target.model
    if hasattr(model, "to"):
        model = model.to(want)
    return model, inputs
