"""``--emit-pytest DIR``: the first op that lost a value by its own fault, replayed as a standalone test.

Two files in DIR: ``trace_replay_inputs.pt`` (the op's low-precision inputs and its float64 local reference,
``torch.save``; the test reads it with ``torch.load(weights_only=True)``) and ``test_trace_replay.py``.  The
test calls ``op(*args, **kwargs)``, the op exactly as the model ran it, and asserts by the finding's cause:

* ``overflow`` / ``nan``: no element is +-inf or NaN where the reference is finite;
* ``underflow``: no element is 0 where the reference is not;
* ``inaccurate``: every finite element is within the tolerance (sqrt(u) of the format) of the reference.

It fails while the op still loses the value and passes once ``op`` computes it another way (the catalogue's
rewrite: in float32, max-shifted, from logits ...).  Only a ``local`` finding is replayed: an ``exposed`` one
lost a value an earlier rounding made fragile, and its inputs alone cannot show the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from ..io import atomic
from ..io.markers import PYTEST_MARKER
from .result import TraceResult
from .shadow import torch_module

__all__ = ["emit_pytest", "replay_of", "TEST_NAME", "INPUTS_NAME"]

TEST_NAME = "test_trace_replay.py"
INPUTS_NAME = "trace_replay_inputs.pt"

_PLACEMENT = frozenset({"memory_format", "layout", "device", "pin_memory", "non_blocking"})

_CHECKS = {
    "overflow": ("lost = torch.isfinite(want) & ~torch.isfinite(got)",
                 "value(s) became inf or NaN where the float64 reference is finite"),
    "nan": ("lost = torch.isfinite(want) & ~torch.isfinite(got)",
            "value(s) became inf or NaN where the float64 reference is finite"),
    "underflow": ("lost = (want != 0) & torch.isfinite(want) & (got == 0)",
                  "value(s) became 0 where the float64 reference is not"),
    "inaccurate": ("both = torch.isfinite(want) & torch.isfinite(got) & (want != 0)\n"
                   "    lost = ~torch.isfinite(got) & torch.isfinite(want)\n"
                   "    lost[both] = ((got[both] - want[both]).abs() / want[both].abs()) > TOLERANCE",
                   "value(s) lost more than half their bits (relative error above TOLERANCE)"),
}


def replay_of(result: TraceResult):
    """(run, record) of the first local finding (of any format, runs in order) that has a replay, or None."""
    for run in result.runs:
        for rec in run.records:
            if rec.replay is not None:
                return run, rec
    return None


def emit_pytest(result: TraceResult, folder: str | os.PathLike) -> Path:
    """Write the replay test of the first local finding (of any format) into ``folder``; its path.
    InputError if no op lost a value by its own fault."""
    torch = torch_module()
    chosen = replay_of(result)
    if chosen is None:
        raise InputError("--emit-pytest: no op lost a value by its own fault (nothing to replay)", "--emit-pytest")
    run, rec = chosen
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    args, kwargs = rec.replay["args"]
    # placement arguments do not change a value and torch.load(weights_only=True) cannot hold them all
    # (torch.memory_format does not pickle): the replay runs on the CPU with the defaults
    kwargs = {k: v for k, v in kwargs.items() if k not in _PLACEMENT}
    data = {"args": list(args), "kwargs": kwargs, "reference": rec.replay["reference"]}
    import io

    buffer = io.BytesIO()
    torch.save(data, buffer)
    _, name, overload = rec.op.split(".")
    finding = next(f for f in run.findings if f.index == rec.index) if any(
        f.index == rec.index for f in run.findings) else None
    advice = finding.entry.rewrite if finding else "compute this op in float32"
    check, message = _CHECKS[rec.cause]
    where = f"{rec.module or '(no module)'}" + (f" at {rec.source}" if rec.source else "")
    text = f'''{PYTEST_MARKER} (trace --emit-pytest): apply the rewrite in op() below.
"""Replay of the first op that lost a value in {run.format.name}: {rec.op} ({rec.phase}, {where}),
cause {rec.cause}, written by stabilitylab trace --emit-pytest.

It fails while the op still loses the value; apply the rewrite in op() and it passes.
Rewrite: {advice}
"""

import pathlib

import torch

INPUTS = pathlib.Path(__file__).with_name({INPUTS_NAME!r})
TOLERANCE = {run.format.compute_format.default_tolerance!r}  # sqrt(u) of {run.format.name}


def op(*args, **kwargs):
    """The operation as the model ran it (edit: the rewrite goes here)."""
    return torch.ops.aten.{name}.{overload}(*args, **kwargs)


def test_{name.strip("_")}_keeps_its_values():
    data = torch.load(INPUTS, weights_only=True)
    got = op(*data["args"], **data["kwargs"])
    got = (got[0] if isinstance(got, (tuple, list)) else got).detach().double()
    want = data["reference"]
    {check}
    assert not lost.any(), f"{{int(lost.sum())}} of {{lost.numel()}} {message}"
'''
    with atomic.transaction():  # both files or neither
        atomic.write_bytes(folder / INPUTS_NAME, buffer.getvalue())
        atomic.write_text(folder / TEST_NAME, text)
    return folder / TEST_NAME
