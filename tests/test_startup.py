"""Start-up: the everyday commands import only what they need, and Format's declared constants equal finfo's."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import ml_dtypes
import numpy as np
import pytest

from stabilitylab.numerics.formats import FORMATS

HEAVY = ("ml_dtypes", "matplotlib", "rich.progress", "scipy", "torch", "jax")


def _imported_after(*argv: str) -> set[str]:
    code = ("import sys, json\nfrom stabilitylab.cli import main\nstatus = main(sys.argv[1:])\n"
            "print(json.dumps(sorted(m for m in sys.modules)))\nsys.exit(status)")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("argv", [("compare", "-o", "{tmp}/c.txt"), ("compare", "-e", "softmax_ce", "-d", "bf16",
                                                                      "-d", "e4m3", "--format", "json", "-o",
                                                                      "{tmp}/c.json")])
def test_compare_imports_no_heavy_module(argv, tmp_path):
    modules = _imported_after(*(a.format(tmp=tmp_path) for a in argv))
    assert "stabilitylab.analysis.engine" in modules  # (the probe itself works)
    assert not [m for m in HEAVY if m in modules]


def test_compare_on_a_float32_file_does_not_import_ml_dtypes(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(1).normal(0, 3, (1000, 10)).astype(np.float32))
    modules = _imported_after("compare", "--logits", str(path), "-d", "fp32", "-d", "bf16", "--format", "json",
                              "-o", f"{tmp_path}/c.json")
    assert "stabilitylab.analysis.streaming" in modules and "ml_dtypes" not in modules


def test_thresholds_imports_ml_dtypes_only_when_it_needs_a_dtype(tmp_path):
    assert "ml_dtypes" not in _imported_after("thresholds", "-e", "likelihood", "-d", "fp32", "-o", f"{tmp_path}/t")


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=str)
def test_declared_constants_equal_finfo(fmt):
    info = np.finfo(fmt.dtype) if fmt.native else ml_dtypes.finfo(fmt.dtype)
    assert fmt.max == float(info.max)
    assert fmt.tiny == float(info.smallest_normal)
    assert fmt.smallest_subnormal == float(info.smallest_subnormal)
    assert fmt.eps == float(info.eps)
    assert fmt.precision == info.nmant + 1
    assert fmt.bits == info.bits
    with np.errstate(all="ignore"):
        assert fmt.has_inf == bool(np.isinf(np.array(np.inf).astype(fmt.dtype)))


def _all_values(fmt) -> np.ndarray:
    uint = {1: np.uint8, 2: np.uint16}[fmt.dtype.itemsize]
    return np.arange(2 ** (8 * fmt.dtype.itemsize), dtype=np.uint64).astype(uint).view(fmt.dtype)


@pytest.mark.parametrize("fmt", [f for f in FORMATS.values() if f.bits <= 16], ids=str)
def test_text_equals_the_dtype_str_on_every_value_and_between(fmt):
    with np.errstate(invalid="ignore"):  # (NaN patterns)
        values = _all_values(fmt).astype(np.float64)
    rng = np.random.default_rng(7)
    finite = values[np.isfinite(values)]
    between = rng.uniform(-1, 1, 4000) * 10.0 ** rng.uniform(-45, 39, 4000)  # not in the format: rounded first
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # ml_dtypes' cast of inf / out-of-range to bfloat16
        for v in [*values.tolist(), *between.tolist(), *(finite * (1 + 2.0**-9)).tolist()[:3000], np.inf, -np.inf]:
            ref = v if ":saturate" not in fmt.name else min(max(v, -fmt.max), fmt.max)  # (the variant saturates;
            want = str(fmt.dtype.type(ref))                                             # ml_dtypes' cast gives NaN)
            assert fmt.text(v) == want, (fmt.name, v)
