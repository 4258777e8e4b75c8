"""The fused kernel's bfloat16 and float16 tables (softmax_bulk._cr): crmath's exp, log and log1p read from a table of
every 16-bit pattern.  Checked exhaustively against crmath called on each pattern, bit for bit (NaN
patterns included), and on arrays of every shape the kernel passes (rows x classes, transposed, one per row)."""

from __future__ import annotations

import numpy as np
import pytest

from stabilitylab.analysis import softmax_bulk
from stabilitylab.numerics import crmath
from stabilitylab.numerics.formats import FORMATS

BF16 = FORMATS["bfloat16"]
EVERY = (np.arange(2**16, dtype=np.uint32) << np.uint32(16)).view(np.float32)


F16 = FORMATS["float16"]
EVERY16 = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


@pytest.mark.parametrize("name", ["exp", "log", "log1p"])
@pytest.mark.parametrize("fmt,every", [(BF16, EVERY), (F16, EVERY16)], ids=["bfloat16", "float16"])
def test_table_is_crmath_on_every_pattern(name, fmt, every):
    with np.errstate(all="ignore"):
        direct = np.array([getattr(crmath, name)(fmt, every[i:i + 1])[0] for i in range(0, 2**16, 257)])
        table = softmax_bulk._cr(name, fmt, every.copy())
        whole = getattr(crmath, name)(fmt, every)
    assert table.dtype == np.float32
    assert np.array_equal(table.view(np.uint32), whole.view(np.uint32))
    # one pattern at a time (no batch effect in crmath), every 257th
    assert np.array_equal(table[::257].view(np.uint32), direct.view(np.uint32))


def test_table_shapes_and_fallbacks():
    rng = np.random.default_rng(0)
    x = BF16.round32((rng.standard_normal((300, 10)) * 20).astype(np.float32))
    with np.errstate(all="ignore"):
        for y in (x, np.ascontiguousarray(x.T), x[:, 3].copy()):
            assert np.array_equal(softmax_bulk._cr("exp", BF16, y), crmath.exp(BF16, y))
        strided = x[:, 3]  # not contiguous: crmath itself
        assert np.array_equal(softmax_bulk._cr("exp", BF16, strided), crmath.exp(BF16, strided))
    f32 = FORMATS["float32"]
    y = (rng.standard_normal(100) * 20).astype(np.float32)
    assert np.array_equal(softmax_bulk._cr("exp", f32, y), crmath.exp(f32, y))
    assert ("exp", "float32") not in softmax_bulk._TABLES
