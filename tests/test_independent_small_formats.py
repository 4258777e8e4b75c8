"""The <= 8-bit formats against an independent decoder / brute-force rounder (tests/independent/small_formats.py):
constants from the hand-decoded bit patterns, Format.round (float64 inputs) and round32 (float32 inputs) against
the nearest decoded value (ties to even, the format's overflow and NaN rules)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from stabilitylab.numerics.formats import FORMATS

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("small_formats", ROOT / "tests" / "independent" / "small_formats.py")
plain = importlib.util.module_from_spec(_spec)
sys.modules["small_formats"] = plain
_spec.loader.exec_module(plain)

CASES = [(n, n, False) for n in plain.SPECS] + [
    (f"{n}:saturate", n, True) for n in plain.SPECS if f"{n}:saturate" in FORMATS]


def test_every_small_format_is_checked():
    small = {n for n, f in FORMATS.items() if f.bits <= 8}
    assert small == {c[0] for c in CASES}


def same(got, want) -> np.ndarray:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return ((got == want) & (np.signbit(got) == np.signbit(want))) | (np.isnan(got) & np.isnan(want))


@pytest.mark.parametrize("name, spec, saturate", CASES, ids=[c[0] for c in CASES])
def test_constants_from_the_decoded_patterns(name, spec, saturate):
    fmt, facts = FORMATS[name], plain.facts(spec)
    assert (fmt.max, fmt.tiny, fmt.smallest_subnormal, fmt.eps) == (
        facts["max"], facts["tiny"], facts["smallest_subnormal"], facts["eps"])
    assert fmt.has_inf == facts["has_inf"] and fmt.signed_zero == facts["signed_zero"]
    assert fmt.has_zero == facts["has_zero"]
    assert fmt.bits == sum(plain.SPECS[spec][:3]) and fmt.bias == plain.SPECS[spec][3]
    assert {"ieee": 2 * (2**fmt.fraction_bits - 1), "fn": 2 if fmt.signed else 1, "fnuz": 1, "none": 0}[
        fmt.nan] == facts["nan_patterns"]
    assert fmt.saturates == (saturate or plain.SPECS[spec][4] == "none")


@pytest.mark.parametrize("name, spec, saturate", CASES, ids=[c[0] for c in CASES])
def test_round_is_the_nearest_decoded_value(name, spec, saturate):
    fmt = FORMATS[name]
    x = plain.probe(spec)
    want = plain.round_to(spec, x, saturate)
    with np.errstate(over="ignore"):  # (float8_e8m0fnu's max * 1e6 is beyond float32)
        x32 = x.astype(np.float32)
    for what, got, inputs in (("round", fmt.round(x, np.float64), x),
                              ("round32", fmt.round32(x32), x32)):
        if what == "round32":  # float32 inputs: the plain rounding of the float32 value itself
            want = plain.round_to(spec, inputs.astype(np.float64), saturate)
        ok = same(got, want)
        assert ok.all(), (what, name, [(float(a), float(b), float(c)) for a, b, c in
                                       zip(inputs[~ok][:6], np.asarray(got)[~ok][:6], want[~ok][:6])])


def test_the_checker_by_hand_and_that_it_can_disagree():
    """A few patterns decoded by hand (OFP8 / MX tables), and the checker rejecting a wrong convention."""
    assert plain.decode("float8_e4m3fn")[0x7E] == 448 and np.isnan(plain.decode("float8_e4m3fn")[0x7F])
    assert plain.decode("float8_e5m2")[0x7B] == 57344 and np.isinf(plain.decode("float8_e5m2")[0x7C])
    assert np.isnan(plain.decode("float8_e4m3fnuz")[0x80]) and plain.decode("float8_e4m3fnuz")[0x7F] == 240
    assert plain.decode("float4_e2m1fn").tolist()[:8] == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert plain.decode("float8_e8m0fnu")[127] == 1 and plain.decode("float8_e8m0fnu")[0] == 2.0**-127
    x = plain.probe("float8_e4m3fn")
    wrong = plain.round_to("float8_e4m3fn", x, saturate=True)  # torch's convention, not ml_dtypes'
    assert (~same(FORMATS["float8_e4m3fn"].round(x, np.float64), wrong)).sum() == 8  # beyond max, both signs
