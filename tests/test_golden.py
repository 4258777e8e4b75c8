"""Golden JSON of the everyday commands: what stabilitylab computes must not change when its code moves.

The files in ``tests/golden/`` were written by these same commands before the package was split into
sub-packages; every later change must leave them byte-identical (the ``environment`` block, which names
the installed versions, is left out).  A change that is meant to alter a number regenerates them on
purpose: ``STABILITYLAB_REGENERATE_GOLDEN=1 python -m pytest tests/test_golden.py`` and says why in its
commit message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("STABILITYLAB_REGENERATE_GOLDEN") == "1"


def golden_logits(path: Path) -> None:
    """200 rows of 50 classes (seeded PCG64, stable across numpy versions) plus rows that break things:
    a huge spread, a confident row, an all-equal row, padding (-100) rows."""
    rng = np.random.default_rng(20261207)
    logits = rng.normal(0.0, 3.0, size=(200, 50)).astype(np.float32)
    labels = rng.integers(0, 50, size=200).astype(np.int64)
    logits[0, :] = 0.0
    logits[1, 7] = 90.0
    labels[1] = 7
    logits[2, 3] = -1e4
    labels[2] = 3
    logits[3, :] = np.linspace(-300, 300, 50, dtype=np.float32)
    labels[4:8] = -100
    np.savez(path, logits=logits, labels=labels)


def _normalized(text: str) -> str:
    doc = json.loads(text)
    doc.pop("environment", None)
    return json.dumps(doc, indent=1, sort_keys=False) + "\n"


COMMANDS = {
    "compare": ["compare", "--format", "json"],
    "thresholds_float32": ["thresholds", "-d", "float32", "--format", "json"],
    "compare_logits": ["compare", "--logits", "{logits}", "-d", "bf16", "-d", "fp16", "-d", "fp32", "-d", "fp64",
                       "--format", "json"],
    "audit_scipy_log_softmax": ["audit", "scipy.log_softmax", "--format", "json"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_output_is_byte_identical_to_golden(name, tmp_path):
    if name.startswith("audit_scipy"):
        pytest.importorskip("scipy", reason="the scipy audit needs scipy (the test extra)")
    logits = tmp_path / "golden_logits.npz"
    golden_logits(logits)
    out = tmp_path / "out.json"
    args = [a.format(logits=logits) for a in COMMANDS[name]] + ["-o", str(out)]
    proc = subprocess.run([sys.executable, "-m", "stabilitylab", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = _normalized(out.read_text())
    path = GOLDEN / f"{name}.json"
    if REGENERATE:
        path.write_text(got)
    want = path.read_text()
    assert got == want, f"{name}: output differs from {path} (see the module docstring)"
