"""Property-based fuzzing of the file readers and the baseline loader (hypothesis).

Every generated input must end in a result or in one clear line: ``read_array`` /
``user_logits`` return numbers or raise InputError, ``baseline.load`` returns a
baseline that can be compared and rewritten or raises BaselineError, and the CLI
exits 0 or 2 (``check``: 0 to 3) with at most one error line, never a traceback.
Examples are bounded so that each test takes a few seconds.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from stabilitylab.analysis.thresholds import thresholds
from stabilitylab.cli import check as check_command
from stabilitylab.cli import main
from stabilitylab.experiments import EXPERIMENTS
from stabilitylab.experiments.base import Settings
from stabilitylab.guard import baseline
from stabilitylab.io import schemas, userdata
from stabilitylab.numerics.formats import FORMATS
from stabilitylab.status import ExitStatus

FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _npz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """``data`` truncated, with bytes overwritten, or with bytes inserted."""
    kind = draw(st.sampled_from(["truncate", "overwrite", "insert", "same"]))
    if kind == "same" or not data:
        return data
    at = draw(st.integers(0, len(data) - 1))
    if kind == "truncate":
        return data[:at]
    junk = draw(st.binary(min_size=1, max_size=8))
    if kind == "overwrite":
        return data[:at] + junk + data[at + len(junk):]
    return data[:at] + junk + data[at:]


ARRAYS = st.sampled_from([
    np.arange(6.0).reshape(2, 3), np.array([[1, 2], [3, 4]], dtype=np.int16), np.zeros((1, 4), np.float16),
    np.array([[np.nan, np.inf, -np.inf]]), np.array([0, 1, 2]), np.array([[True, False]]),
    np.array([["a", "b"]]), np.array([[1 + 1j]]), np.zeros((2, 2, 2)), np.zeros((0, 3)),
    np.arange(6.0).reshape(2, 3).T, np.array([[1.0, 2.0]], dtype=">f8"),
])

GOOD = arrays(st.sampled_from([np.float64, np.float32, np.float16, np.int32, np.uint8, np.bool_]),
              array_shapes(min_dims=1, max_dims=2, max_side=5))
GOOD_TEXT = arrays(np.float64, array_shapes(min_dims=2, max_dims=2, max_side=5),
                   elements=st.floats(-1e6, 1e6, allow_nan=False)).map(
    lambda a: "\n".join(",".join(repr(float(v)) for v in row) for row in a).encode())
NPY = st.one_of(GOOD.map(_npy), ARRAYS.map(_npy).flatmap(mutated))
NPZ = st.one_of(
    ARRAYS.map(lambda a: _npz({"x.npy": _npy(a)})).flatmap(mutated),
    st.dictionaries(st.sampled_from(["a.npy", "b.npy", "c.txt"]), NPY, max_size=3).map(_npz),
)
TEXT = st.lists(st.lists(st.sampled_from(["1", "-2.5", "1e308", "1e999", "nan", "inf", "", " ", "abc", "0x1p3",
                                          "#", "3"]), max_size=5), max_size=6)
CSV = st.tuples(TEXT, st.sampled_from([",", " ", "\t", ";"]), st.booleans(), st.sampled_from(["\n", "\r\n"])).map(
    lambda t: (("\ufeff" if t[2] else "") + t[3].join(t[1].join(row) for row in t[0])).encode("utf-8"))
FILES = st.one_of(
    st.tuples(st.just(".npy"), st.one_of(NPY, st.binary(max_size=300))),
    st.tuples(st.just(".npz"), st.one_of(GOOD.map(lambda a: _npz({"x.npy": _npy(a)})), NPZ, st.binary(max_size=300))),
    st.tuples(st.sampled_from([".csv", ".txt"]), st.one_of(GOOD_TEXT, CSV, st.binary(max_size=300))),
)


def _one_line(text: str) -> None:
    assert text and "\n" not in text and "\r" not in text, repr(text)


@FUZZ
@given(logits=FILES, labels=st.one_of(st.none(), st.none(), FILES))
def test_readers_return_numbers_or_one_input_error(logits, labels):
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for name, file in (("logits", logits), ("labels", labels)):
            if file is not None:
                path = Path(d) / f"{name}{file[0]}"
                path.write_bytes(file[1])
                paths.append(path)
        try:
            arr = userdata.read_array(paths[0], "logits")
        except userdata.InputError as exc:
            _one_line(str(exc))
            assert exc.option == "--logits"
        else:
            assert arr.dtype.kind in "biuf" and arr.size <= userdata.MAX_ELEMENTS
        try:
            batch, notes = userdata.user_logits(*paths)
        except userdata.InputError as exc:
            event("refused")
            _one_line(str(exc))
            assert exc.option in ("--logits", "--labels")
        else:
            event("read")
            rows, classes = batch.logits.shape
            assert batch.logits.dtype == np.float64 and rows >= 1 and classes >= 1
            assert batch.labels.shape == (rows,) and ((0 <= batch.labels) & (batch.labels < classes)).all()


@settings(FUZZ, max_examples=40)
@given(logits=FILES)
def test_compare_with_fuzzed_logits_exits_0_or_2_with_one_line(logits, capsys):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"logits{logits[0]}"
        path.write_bytes(logits[1])
        capsys.readouterr()
        code = main(["compare", "-e", "softmax_ce", "-d", "fp32", "--logits", str(path), "--format", "json"])
        out, err = capsys.readouterr()
    assert code in (ExitStatus.OK, ExitStatus.USAGE), err
    event(f"exit {code}")
    if code == ExitStatus.OK:
        assert err == "" and json.loads(out)["schema"] == "stabilitylab.compare/1"
    else:
        assert out == "" and err.count("\n") == 1 and err.startswith("stabilitylab: error:"), err


# ------------------------------------------------------------------------------------------ baselines


@pytest.fixture(scope="module")
def rows():
    return thresholds([EXPERIMENTS["likelihood"]], [FORMATS["float16"]], Settings())


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=2**60),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5))
JSON = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                    max_leaves=8)
KEYS = st.sampled_from(["likelihood/iid/product/float16", "likelihood/iid/sum_log/float16",
                        "likelihood/iid/product/float32", "nope/x/y/float16", "a/b", ""])
METRIC = st.one_of(st.none(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=3), JSON)
ENTRY = st.one_of(JSON, st.fixed_dictionaries({"first_inaccurate": METRIC, "first_failure": METRIC,
                                               "failure": st.one_of(st.none(), st.sampled_from(
                                                   ["overflow", "underflow", "nan", "inaccurate", "ok", "x"]),
                                                   JSON)}))
SETTINGS = st.one_of(JSON, st.fixed_dictionaries({}, optional={
    "p": st.one_of(st.floats(), st.integers(-2, 10**30), JSON), "ftz": st.one_of(st.booleans(), JSON),
    "tolerance": st.one_of(st.none(), st.floats(), st.integers(-2, 2**1100), JSON)}))
DOCS = st.fixed_dictionaries({"schema": st.one_of(st.just(schemas.BASELINE), JSON)}, optional={
    "settings": SETTINGS, "entries": st.one_of(st.dictionaries(KEYS, ENTRY, max_size=4), JSON),
    "environment": st.one_of(st.dictionaries(st.text(max_size=6), JSON, max_size=3), JSON), "version": JSON})


GOOD_ENTRY = st.fixed_dictionaries({
    "first_inaccurate": st.one_of(st.none(), st.integers(1, 2**63 - 1), st.floats(-1e300, 1e300)),
    "first_failure": st.one_of(st.none(), st.integers(1, 2**63 - 1), st.floats(-1e300, 1e300)),
    "failure": st.one_of(st.none(), st.sampled_from(["overflow", "underflow", "nan", "inaccurate"]))})
GOOD_DOCS = st.fixed_dictionaries({
    "schema": st.just(schemas.BASELINE),
    "settings": st.fixed_dictionaries({}, optional={"p": st.floats(1e-300, 1.0), "ftz": st.booleans(),
                                                    "tolerance": st.one_of(st.none(), st.floats(1e-300, 1e300))}),
    "entries": st.dictionaries(KEYS, GOOD_ENTRY, max_size=4)},
    optional={"environment": st.dictionaries(st.sampled_from(["numpy", "python", "x"]), JSON, max_size=2)})


@st.composite
def one_change(draw, docs) -> dict:
    """A valid document with one value somewhere replaced by arbitrary JSON."""
    doc = draw(docs)
    holders = [doc, doc["settings"], doc["entries"], *[e for e in doc["entries"].values() if isinstance(e, dict)]]
    holder = draw(st.sampled_from(holders))
    key = draw(st.one_of(st.sampled_from(sorted(holder) or ["schema"]), st.text(max_size=4)))
    holder[key] = draw(JSON)
    return doc


ALL_DOCS = st.one_of(GOOD_DOCS, one_change(GOOD_DOCS), DOCS)


def _text(doc, raw: bytes | None) -> bytes:
    if raw is not None:
        return raw
    return json.dumps(doc).encode("utf-8")  # NaN / Infinity / 1e999 become JSON's non-standard constants


@FUZZ
@given(doc=ALL_DOCS, raw=st.one_of(st.none(), st.none(), st.none(), st.binary(max_size=200),
                               st.sampled_from([b"[" * 100_000, b"1" * 5000, b"\xef\xbb\xbf{}", b"", b"{"])))
def test_baseline_load_returns_a_usable_baseline_or_one_error(doc, raw, rows):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "b.json"
        path.write_bytes(_text(doc, raw))
        try:
            loaded = baseline.load(path)
        except baseline.BaselineError as exc:
            event("refused")
            _one_line(str(exc))
            return
    event("loaded")
    settings_, tolerance = baseline.settings_of(loaded)
    assert 0 < settings_.p <= 1 and (tolerance is None or 0 < tolerance < math.inf)
    for ulps in (0, 3):
        baseline.compare(loaded, rows, ulps)  # never an OverflowError or TypeError
    json.dumps(baseline.document(rows, settings_, tolerance, loaded["entries"]), allow_nan=False)


@settings(FUZZ, max_examples=40)
@given(doc=ALL_DOCS, update=st.booleans())
def test_check_with_a_fuzzed_baseline_exits_with_a_status_and_one_line(doc, update, rows, monkeypatch, capsys):
    monkeypatch.setattr(check_command, "run_thresholds", lambda *args, **kwargs: rows)  # the search is tested elsewhere
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "b.json"
        before = _text(doc, None)
        path.write_bytes(before)
        capsys.readouterr()
        code = main(["check", "--baseline", str(path), "-d", "fp16", *(["--update"] if update else [])])
        out, err = capsys.readouterr()
        after = path.read_bytes()
    assert "Traceback" not in err
    event(f"{'update' if update else 'check'}: exit {code}")
    errors = [line for line in err.splitlines() if not line.startswith("stabilitylab: warning:")]
    if update:
        assert code in (ExitStatus.OK, ExitStatus.USAGE), err
        if code == ExitStatus.USAGE:
            assert len(errors) == 1 and after == before
        else:
            old, new = json.loads(before), json.loads(after)
            assert set(old["entries"]) <= set(new["entries"])
            assert new["settings"]["p"] == old.get("settings", {}).get("p", 0.1)
    else:
        assert code in (ExitStatus.OK, ExitStatus.REGRESSION, ExitStatus.USAGE, ExitStatus.INCOMPARABLE), err
        assert len(errors) == (1 if code == ExitStatus.USAGE else 0), err
        if code == ExitStatus.USAGE:
            assert errors[0].startswith("stabilitylab: error:") and out == ""
        assert after == before
