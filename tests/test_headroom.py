"""trace --headroom (stabilitylab/tracing/headroom.py) and the LM of stabilitylab/tracing/models.py.

The headroom counts are checked against plain recounts that share nothing with the code under test: the
format's constants written from IEEE 754 / OFP8 by hand, the values converted to the format by torch's own
casts (bfloat16, float16) or by the independent brute-force rounder (tests/independent/small_formats.py),
and block flushes recounted with the independent block quantizer (tests/independent/block_quantizer_check.py).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from stabilitylab.io import schemas  # noqa: E402
from stabilitylab.tracing import headroom, models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "independent" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


small = _load("small_formats")
blocks = _load("block_quantizer_check")

# written by hand from the formats' definitions (not read from stabilitylab)
F16 = {"max": (2 - 2.0**-10) * 2.0**15, "tiny": 2.0**-14, "sub": 2.0**-24}
BF16 = {"max": (2 - 2.0**-7) * 2.0**127, "tiny": 2.0**-126, "sub": 2.0**-133}
E4M3 = {"max": 448.0, "tiny": 2.0**-6, "sub": 2.0**-9}


class Const(torch.nn.Module):
    """A module whose output is a fixed float32 tensor (what the test constructs)."""

    def __init__(self, values):
        super().__init__()
        self.register_buffer("values", torch.tensor(np.array(values, dtype=np.float32)))

    def forward(self, x):
        return self.values + 0 * x  # a fresh tensor, the same values


class Pair(torch.nn.Module):
    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = Const(a), Const(b)

    def forward(self, x):
        return self.a(x).sum() + self.b(x).sum()


def _values() -> np.ndarray:
    """Float32 values at and around every threshold of float16, bfloat16 and float8_e4m3fn, plus a spread."""
    f32 = np.float32
    up = lambda v: float(np.nextafter(f32(v), f32(np.inf)))  # noqa: E731
    down = lambda v: float(np.nextafter(f32(v), f32(0)))  # noqa: E731
    special = []
    for c in (F16, BF16, E4M3):
        for v in (c["tiny"], c["sub"], c["sub"] / 2):
            special += [v, up(v), down(v)]
    special += [65504.0, 65519.0, 65520.0, 65536.0, 448.0, 463.0, 464.0, 465.0, 500.0, 0.0, 0.0, 1.0,
                float(2.0**-149), float(2.0**-140)]
    rng = np.random.default_rng(7)
    spread = rng.choice([-1, 1], 400) * 2.0 ** rng.uniform(-150, 18, 400)
    return np.concatenate([special, [-v for v in special], spread]).astype(np.float32)


def _plain_counts(values: np.ndarray, consts: dict, rounded: np.ndarray) -> dict:
    """Recount by hand: below normal from the constant, flushed and overflow from the format's own cast."""
    v = [float(x) for x in values]
    nonzero = [i for i, x in enumerate(v) if x != 0]
    return {"nonzero": len(nonzero), "amax": max(abs(x) for x in v),
            "below_normal": sum(1 for i in nonzero if abs(v[i]) < consts["tiny"]) / len(nonzero),
            "flushed": sum(1 for i in nonzero if rounded[i] == 0) / len(nonzero),
            "overflow": int(sum(1 for r in rounded if not math.isfinite(r)))}


def test_margins_and_fractions_against_plain_recounts():
    values = _values()
    model = Pair(values, values[::-1][:37])
    h = headroom.measure(model, torch.zeros(()), ["float16", "bf16", "float8_e4m3fn"], block_sample=None)
    mods = {m.module: m for m in h.modules}
    assert list(mods) == ["a", "b", "(model)"]
    a = mods["a"]
    t = torch.tensor(values)
    for name, consts, rounded in (
            ("float16", F16, t.to(torch.float16).double().numpy()),
            ("bfloat16", BF16, t.to(torch.bfloat16).double().numpy()),
            ("float8_e4m3fn", E4M3, small.round_to("float8_e4m3fn", values.astype(np.float64)))):
        want = _plain_counts(values, consts, rounded)
        s = a.formats[name]
        assert a.nonzero == want["nonzero"] and a.amax == want["amax"] and a.values == values.size
        assert s.below_normal == pytest.approx(want["below_normal"], rel=0, abs=0)
        assert s.flushed == pytest.approx(want["flushed"], rel=0, abs=0), name
        assert s.overflow == want["overflow"], name
        assert s.margin == pytest.approx(math.log2(consts["max"] / want["amax"]), rel=1e-15)
    # the hand-made values do hit every case
    assert a.formats["float16"].overflow >= 4 and a.formats["float8_e4m3fn"].overflow > 4
    assert 0 < a.formats["bfloat16"].flushed < a.formats["float16"].flushed < a.formats["float8_e4m3fn"].flushed


def test_nonfinite_values_are_counted_apart():
    values = np.array([np.inf, -np.inf, np.nan, 3.0, -0.5, 0.0, 2.0**-20], dtype=np.float32)
    h = headroom.measure(Const(values), torch.zeros(()), ["float16"])
    (m,) = h.modules
    assert (m.values, m.nonfinite, m.nonzero, m.amax) == (7, 3, 3, 3.0)
    assert m.formats["float16"].below_normal == pytest.approx(1 / 3) and m.formats["float16"].flushed == 0
    assert "inf / NaN already in the float32 forward, counted apart" in h.to_markdown()
    assert ": (model) (3)" in h.to_markdown()


def test_fp16_verdict_names_the_overflowing_module():
    lin = torch.nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]))
    model = torch.nn.Sequential(torch.nn.Identity(), lin, torch.nn.ReLU())
    x = torch.tensor([[70000.0, 1.0, -2.0, 5.0], [3.0, 60000.0, 1.0, 0.0]])
    h = headroom.measure(model, x, ["float16", "bfloat16"])
    f16, bf16 = h.formats
    doc = h.to_json()
    over = [m["module"] for m in doc["modules"] if m["formats"]["float16"]["overflow"]]
    # Identity passes the input through (70000 > 65504), the Linear keeps it, ReLU too; (model) is ReLU's output
    assert over == ["0", "1", "2", "(model)"]
    assert h.verdict(f16).startswith("overflows in 4 modules (worst 0: amax 70000,")
    assert h.verdict(bf16).startswith("fits (margin >= ")
    assert doc["modules"][1]["formats"]["float16"]["margin_binades"] == pytest.approx(math.log2(65504 / 70000))


def test_block_flush_fractions_against_the_independent_quantizer():
    rng = np.random.default_rng(3)
    # rows of 70 (two full blocks of 32 and a short one; nvfp4: 4 blocks of 16 and a short one), wide spread
    values = (rng.standard_normal((3, 70)) * 2.0 ** rng.integers(-30, 5, (3, 70))).astype(np.float32)
    values[0, :5] = 0.0
    h = headroom.measure(Const(values), torch.zeros(()), ["mxfp8", "mxfp4", "nvfp4"], block_sample=None)
    (m,) = h.modules
    rows = values.astype(np.float64).tolist()
    for name, plain in (("mxfp8", "mxfp8_e4m3"), ("mxfp4", "mxfp4"), ("nvfp4", "nvfp4")):
        _, flushed, _, _ = blocks.quantize_rows(plain, rows)
        n_flushed = sum(sum(r) for r in flushed)
        nonzero = int(np.count_nonzero(values))
        s = m.formats[h.formats[[f.name for f in h.formats].index(
            "mxfp8_e4m3" if name == "mxfp8" else name)].name]
        assert s.block_flushed == n_flushed / nonzero, name
        assert s.block_sampled == values.size
    assert m.formats["mxfp4"].block_flushed > m.formats["mxfp8_e4m3"].block_flushed > 0
    assert m.formats["nvfp4"].margin is None


def test_block_sample_takes_every_sth_row():
    values = np.zeros((10, 64), dtype=np.float32)
    values[:, 0] = 1.0
    values[::3, 1] = 2.0**-40  # flushed in mxfp4 (spread 2^40): on rows 0, 3, 6, 9
    h = headroom.measure(Const(values), torch.zeros(()), ["mxfp4"], block_sample=4 * 64)
    s = h.modules[0].formats["mxfp4"]
    # 4 rows fit the sample: step ceil(10 / 4) = 3, rows 0, 3, 6, 9 -- all four tiny values and four ones
    assert s.block_sampled == 4 * 64 and s.block_flushed == 4 / 8
    assert "(block sample)" in h.verdict(h.formats[0])


def test_json_markdown_and_table():
    values = np.array([1e-9, 3.0, 70000.0], dtype=np.float32)
    h = headroom.measure(Const(values), torch.zeros(()), ["fp16", "bf16@float32", "mxfp4"])
    doc = json.loads(json.dumps(h.to_json()))
    assert doc["schema"] == schemas.HEADROOM == "stabilitylab.headroom/1"
    assert [f["name"] for f in doc["formats"]] == [f.name for f in h.formats]
    assert doc["formats"][1]["storage"] == "bfloat16"  # a policy is judged by its storage format
    assert doc["formats"][2]["block"] == "mxfp4"
    md = h.to_markdown()
    assert "overflows in 1 module" in md and "| (model) | Const |" in md
    from rich.console import Console

    console = Console(record=True, width=200, color_system=None)
    h.print(console)
    assert "overflows in 1 module" in console.export_text()


def test_bad_format_is_one_line_keyerror():
    with pytest.raises(KeyError, match="unknown"):
        headroom.resolve_formats(["float17"])


def test_lm_builds_runs_in_bf16_and_is_deterministic():
    model, batch = models.build_lm()
    state = torch.random.get_rng_state()
    again, batch2 = models.build_lm()
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's random state is untouched
    assert torch.equal(batch, batch2) and batch.shape == (models.BATCH, models.SEQUENCE + 1)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    assert model.head.weight.shape == (models.VOCAB, models.D_MODEL) and models.VOCAB >= 8192
    with torch.no_grad():
        loss32 = model(batch)
    model.to(torch.bfloat16)
    loss = model(batch)
    loss.backward()
    assert loss.dtype == torch.bfloat16 and math.isfinite(float(loss.detach()))
    # an untrained model predicts about uniformly: the loss is near ln(vocabulary)
    assert abs(float(loss32) - math.log(models.VOCAB)) < 0.1
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in model.parameters())


def test_guide_outputs_are_what_the_code_prints(capsys):
    """docs/guides/trace.md: every python block that runs without the trace core (no ``stabilitylab.trace(``)
    and is followed by a text block prints exactly that text.  Among them: build_lm_nan's loss is finite in
    float32 and NaN in bfloat16, the headroom verdicts, the cancelled variance, build_lm's finite bf16 loss."""
    import re

    text = (ROOT / "docs" / "guides" / "trace.md").read_text(encoding="utf-8")
    blocks = list(re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M))
    pairs = [(a.group(2), b.group(2)) for a, b in zip(blocks, blocks[1:])
             if a.group(1) == "python" and b.group(1) == "text" and not text[a.end():b.start()].strip()]
    assert len(pairs) == 4
    assert f"most {headroom.BLOCK_SAMPLE} values per output" in text
    for code, printed in pairs:
        assert "stabilitylab.trace(" not in code
        exec(compile(code, "trace.md", "exec"), {})
        assert capsys.readouterr().out == printed


def test_a_bf16_model_is_measured_in_float32_on_a_copy():
    lin = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0]]))
    lin.to(torch.bfloat16)
    x = torch.tensor([[256.0, 1.0]], dtype=torch.bfloat16)  # 257 in float32; bfloat16 would round it to 256
    h = headroom.measure(lin, x, ["fp16"])
    assert h.modules[0].amax == 257.0
    assert lin.weight.dtype == torch.bfloat16  # the caller's model is untouched


def test_without_torch_one_line_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install 'stabilitylab\[torch\]'"):
        headroom.measure(object(), None)
    with pytest.raises(ImportError, match=r"pip install 'stabilitylab\[torch\]'"):
        models.build_lm()


def test_odd_outputs_empty_scalar_integer_transposed_nested():
    class Odd(torch.nn.Module):
        def forward(self, x):
            return (torch.empty(0), torch.tensor(-3.0), torch.arange(5), torch.ones(4, 6).t() * 2.0**-30,
                    {"a": torch.full((2, 40), 70000.0)})

    h = headroom.measure(Odd(), torch.zeros(1), ["fp16", "mxfp4"])
    (m,) = h.modules
    assert (m.values, m.nonzero, m.amax) == (0 + 1 + 24 + 80, 105, 70000.0)  # the integer output is not counted
    s = m.formats["float16"]
    assert s.overflow == 80 and s.flushed == 24 / 105 and s.below_normal == 24 / 105
    assert m.formats["mxfp4"].block_sampled == 105
