"""``audit --emit-pytest FILE``: a standalone pytest module guarding the audit's witnesses.

The module imports only pytest, numpy, ml_dtypes and the target (an adapter's
source is copied in; a user function is imported by its module or file path,
relative to the test file), plus the standard library.  One test per witness
(failing inputs, and guards: inputs where a simulated formula fails and the
target does not) calls the target on that one input, classifies the result by
the black-box status rule against the exact loss embedded as hex floats, and
asserts the status is no worse than when the module was written:
ok / range < inaccurate < inf, nan, error.  It passes today and fails when the
target gets worse.

Every string that comes from outside (the target's name, a file path, case names) is written as a
``repr()`` literal, or, inside the docstring and comments, through :func:`_text` (no quotes,
backslashes, line breaks or other non-printable characters reach the module as they are): nothing
in a path can become code.  A function or module name that is not a dotted identifier is refused.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import numpy as np

from ..analysis.outcome import BLACK_BOX_STATUSES, RANK
from ..errors import shown
from ..io import atomic, markers
from ..io.environment import package_version
from .core import Audit, AuditError, Witness

__all__ = ["pytest_module", "write_pytest", "RANK"]

_HELPERS = '''
DTYPES = {
    "float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16), "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64), "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
}
RANK = @RANK@


def _floats(spec):
    """A list of hex floats, or ("fill", hex, n), or ("runs", [[hex, n], ...]): n copies of each, in order."""
    if isinstance(spec, tuple) and spec[0] == "runs":
        return [float.fromhex(h) for h, n in spec[1] for _ in range(n)]
    if isinstance(spec, tuple):
        return [float.fromhex(spec[1])] * spec[2]
    return [float.fromhex(v) for v in spec]


def _round(values, dtype):
    """float64 values correctly rounded to dtype (ml_dtypes rounds float64 via float32, twice:
    round to float32 to odd first, then to the format)."""
    x = np.asarray(values, dtype=np.float64)
    with np.errstate(all="ignore"):
        if dtype in (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)):
            return x.astype(dtype)
        y = x.astype(np.float32)
        towards = np.where(x > y, np.inf, -np.inf).astype(np.float32)
        odd = (y != x) & np.isfinite(y) & ((y.view(np.uint32) & 1) == 0)
        return np.where(odd, np.nextafter(y, towards), y).astype(dtype)


@CALL@

def _status(w):
    """The black-box status rule of stabilitylab (see its outcome.py) at one witness."""
    dtype = DTYPES[w["dtype"]]
    try:
        with np.errstate(all="ignore"):
            out = np.asarray(_call(w, dtype))
    except Exception as exc:  # the target raised: the worst status
        return "error", f"{type(exc).__name__}: {exc}"
    v = float(out) if out.dtype == dtype else float(_round(float(out), dtype))
    hi, lo, scale = float.fromhex(w["hi"]), float.fromhex(w["lo"]), w["scale"]
    rounded = float.fromhex(w["rounded"])
    shown = f"value {v!r}, exact {w['exact']}"
    if v == rounded or (math.isnan(v) and (math.isnan(rounded) or math.isnan(hi))):
        return "ok", shown
    if math.isnan(v):
        return "nan", shown
    if math.isinf(v):
        return "inf", shown
    if w["zero"]:
        return ("ok" if v == 0 else "inaccurate"), shown
    with np.errstate(all="ignore"):
        vs = float(np.ldexp(v, -scale))
        diff = abs(lo) if vs == hi else abs((vs - hi) - lo)
        rel = diff / abs(hi)
    return ("inaccurate" if not rel <= TOLERANCE[w["dtype"]] else "ok"), f"{shown}, relative error {rel:.3g}"


@pytest.mark.parametrize("w", WITNESSES, ids=[w["id"] for w in WITNESSES])
def test_no_worse_than_recorded(w):
    status, detail = _status(w)
    assert RANK[status] <= RANK[w["status"]], (
        f"{w['case']} in {w['dtype']}: now {status}, recorded {w['status']} ({detail})")
'''


_CALL_LOGITS = '''
def _call(w, dtype):
    """The target's value at one witness: its loss of the one row, or the gradient's component."""
    logits = _round(_floats(w["logits"]), dtype)[None, :]
    if BINARY:
        labels = _round(_floats(w["labels"]), dtype)[None, :]
    else:
        labels = np.array([w["labels"]], dtype=np.int64)
    out = np.asarray(TARGET(logits, labels))
    return out[0, w["component"]] if GRADIENT else out.reshape(-1)[0]
'''

_CALL_LINEAR = '''
def _call(w, dtype):
    """The target on one problem, as stabilitylab's linear_ce audit reads it: the mean of its N per-token
    losses (summed exactly, divided by N in float64), or dL/dW of the mean loss at w["entry"] (its
    d sum(loss)/d weight there, divided by N); rounded once to the format by _status."""
    hidden = _round(_floats(w["hidden"]), dtype).reshape(w["hidden_shape"])
    weight = _round(_floats(w["weight"]), dtype).reshape(w["weight_shape"])
    labels = np.array(w["labels"], dtype=np.int64)
    out = TARGET(hidden, weight, labels)
    n = hidden.shape[0]
    if GRADIENT:
        v, j = w["entry"]
        return np.float64(np.asarray(out[1])[v, j]) / n
    return np.float64(math.fsum(np.asarray(out).astype(np.float64).reshape(-1).tolist()) / n)
'''


def _text(text: object) -> str:
    """``text`` as it may appear inside the module's docstring or a comment: one line (line breaks and other
    non-printable characters as their escapes, :func:`~stabilitylab.errors.shown`), every backslash doubled
    and every double quote escaped, so that the docstring reads ``shown(text)`` and cannot end early."""
    return shown(text).replace("\\", "\\\\").replace('"', '\\"')


def _dotted(name: str) -> bool:
    """``a.b.c`` of Python identifiers (no keyword): what may be written as code."""
    import keyword

    return bool(name) and all(part.isidentifier() and not keyword.iskeyword(part) for part in name.split("."))


def _hex_list(values) -> list[str] | tuple:
    """Hex floats; a long row of one value as ("fill", hex, n), a long row of a few runs of equal values
    (the wide witnesses) as ("runs", [[hex, n], ...])."""
    hexes = [float.hex(float(v)) for v in values]
    if len(hexes) > 8 and len(set(hexes)) == 1:
        return ("fill", hexes[0], len(hexes))
    if len(hexes) > 64:
        runs: list[list] = []
        for h in hexes:
            if runs and runs[-1][0] == h:
                runs[-1][1] += 1
            else:
                runs.append([h, 1])
        if 4 * len(runs) < len(hexes):
            return ("runs", runs)
    return hexes


def _witness_literal(w: Witness, index: int, grad: bool, binary: bool) -> str:
    labels = w.inputs["labels"]
    entry: dict = {
        "id": f"{index:03d}-{w.source}-{w.dtype}-{w.kind}-{w.status}".replace(":", "-"),
        "case": w.case, "dtype": w.dtype, "status": w.status,
    }
    if "hidden" in w.inputs:  # linear_ce: one problem, arrays flattened (runs of equal values) with their shapes
        hidden, weight = np.asarray(w.inputs["hidden"]), np.asarray(w.inputs["weight"])
        entry.update({"hidden": _hex_list(hidden.reshape(-1)), "hidden_shape": list(hidden.shape),
                      "weight": _hex_list(weight.reshape(-1)), "weight_shape": list(weight.shape),
                      "labels": [int(v) for v in labels], "entry": [int(v) for v in w.inputs["weight_entry"]]})
    else:
        entry.update({"logits": _hex_list(w.inputs["logits"]),
                      "labels": _hex_list(labels) if binary else int(labels),
                      "component": int(w.inputs["component"]) if grad else None})
    entry.update({
        "hi": float.hex(w.hi), "lo": float.hex(w.lo), "scale": w.scale, "zero": w.zero,
        "rounded": float.hex(w.rounded), "exact": w.exact,
    })
    return "    " + repr(entry) + ","


def _import_block(audit: Audit, path: Path) -> str:
    target = audit.target
    if target.adapter is not None:
        module = target.adapter.module_object()
        source = inspect.getsource(module)
        function = target.adapter.grad if target.grad else target.adapter.function
        return (f"# ---- the target: {_text(target.name)} (stabilitylab's adapter, copied from "
                f"stabilitylab/adapters/{target.adapter.module}.py)\n{source}\n\nTARGET = {function}\n")
    spec = target.spec
    if spec is None:
        raise AuditError(f"{target.name} cannot be imported by name (a lambda, a local function or one defined in "
                         "__main__); pass it as module:function or path/to/file.py:function to emit tests")
    where, _, name = spec.rpartition(":")
    if not _dotted(name):
        raise AuditError(f"{shown(spec)}: {shown(name, quote=True)} is not a Python name (a.b.c); pass the "
                         "function as module:function or path/to/file.py:function to emit tests")
    getter = "".join(f".{part}" for part in name.split("."))
    if where.endswith(".py") or "/" in where or os.sep in where:
        file = Path(where).resolve()
        try:
            relative = os.path.relpath(file, path.resolve().parent)
            location = f"pathlib.Path(__file__).resolve().parent / {relative!r}"
        except ValueError:  # another drive
            location = f"pathlib.Path({str(file)!r})"
        return (f"# ---- the target: {_text(spec)}\nimport importlib.util  # noqa: E402\nimport pathlib  # noqa: E402\n"
                f"import sys  # noqa: E402\n\n_PATH = {location}\nsys.path.insert(0, str(_PATH.parent))\n"
                "_SPEC = importlib.util.spec_from_file_location('_audited_target', _PATH)\n"
                "_MODULE = importlib.util.module_from_spec(_SPEC)\n_SPEC.loader.exec_module(_MODULE)\n"
                f"TARGET = _MODULE{getter}\n")
    if not _dotted(where):
        raise AuditError(f"{shown(spec)}: {shown(where, quote=True)} is not a module name (a.b.c); pass the "
                         "function as module:function or path/to/file.py:function to emit tests")
    return (f"# ---- the target: {_text(spec)}\nimport importlib  # noqa: E402\n\n"
            f"TARGET = importlib.import_module({where!r}){getter}\n")


def pytest_module(audit: Audit, path: str | os.PathLike) -> str:
    """The text of the test module for ``audit`` (to be written at ``path``)."""
    target = audit.target
    binary = target.experiment == "binary_ce"
    witnesses = []
    seen = set()
    for w in audit.witnesses:
        key = (w.dtype, w.case)
        if key in seen:
            continue
        seen.add(key)
        witnesses.append(w)
    tolerance = {f.name: (f.default_tolerance if audit.tolerance is None else audit.tolerance) for f in audit.formats}
    lines = [
        markers.PYTEST_LINE,
        f'"""Numerical stability regression tests for {_text(target.name)}{" (gradient)" if target.grad else ""}.',
        "",
        f"Written by stabilitylab {package_version()} (`stabilitylab audit --emit-pytest`) from "
        f"{len(witnesses)} witnesses:",
        "inputs where the target failed, and guards (inputs where a textbook formula fails and the",
        "target did not). Each test calls the target on one input and asserts that its status is no",
        "worse than recorded (ok / range < inaccurate < inf, nan, error); exact losses from mpmath",
        "are embedded as (hi + lo) * 2**scale in hex floats. Regenerate after an intended change.",
        '"""',
        "",
        "import math",
        "",
        "import ml_dtypes",
        "import numpy as np",
        "import pytest",
        "",
        _import_block(audit, Path(path)),
        "",
        f"GRADIENT = {target.grad!r}",
        f"BINARY = {binary!r}",
        f"TOLERANCE = {tolerance!r}",
        "WITNESSES = [",
        *[_witness_literal(w, i, target.grad, binary) for i, w in enumerate(witnesses)],
        "]",
        _HELPERS.replace("@RANK@", json.dumps({s: RANK[s] for s in BLACK_BOX_STATUSES}))
        .replace("@CALL@", (_CALL_LINEAR if target.experiment == "linear_ce" else _CALL_LOGITS).strip() + "\n"),
    ]
    return "\n".join(lines)


CAST_REFUSED = ("--emit-pytest writes tests for loss targets (softmax_ce, binary_ce); a cast target's witnesses are "
                "in --format json, and no test module is written for them yet")


def write_pytest(audit: Audit, path: str | os.PathLike) -> int:
    """Write the module atomically; returns the number of tests.  ``path`` may not be the audited file itself
    (OutputRefused); the command line also refuses any existing file that stabilitylab did not write."""
    if audit.target.experiment == "cast":
        raise AuditError(CAST_REFUSED)
    source = audit.target.spec.rpartition(":")[0] if audit.target.spec else ""
    if source.endswith(".py") or "/" in source or os.sep in source:
        atomic.check_outputs([atomic.Output("--emit-pytest", path)], [("TARGET", source)], force=True)
    text = pytest_module(audit, path)
    atomic.write_text(path, text)
    return sum(line.startswith("    {'id': ") for line in text.splitlines())  # one line per witness

