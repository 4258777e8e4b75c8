"""The report's speed-ups keep every value: softmax_ce's exact loss on mpmath's raw values is the plain
mpf formula's, and the audit's window scan skipping guard formulas that cannot give a witness keeps the
witnesses (issue #22)."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

import stabilitylab
from stabilitylab.auditing.core import Recorder
from stabilitylab.experiments.softmax_ce import exact_cross_entropy
from stabilitylab.numerics.reference import DIGITS


def _plain(logits, label):
    """-log softmax(x)_y the obvious way, one mpf per value (the checker)."""
    xy = mpmath.mpf(logits[label])
    return mpmath.log1p(mpmath.fsum(mpmath.exp(mpmath.mpf(v) - xy) for i, v in enumerate(logits) if i != label))


def test_exact_cross_entropy_is_the_plain_mpmath_value():
    rng = np.random.default_rng(22)
    rows = [tuple(rng.normal(0, 3, 4096).astype(np.float16).astype(float).tolist())]
    rows += [tuple((rng.normal(0, 1, k) * 10.0 ** rng.integers(-6, 4)).tolist()) for k in (1, 2, 3, 10, 50)
             for _ in range(40)]
    rows += [(0.0, -d) for d in (0.0, 1e-300, 5e-324, 8.3, 88.7, 745.2, 1e308)] + [(1e308, -1e308, 0.0)]
    with mpmath.workdps(DIGITS):
        for row in rows:
            for label in {0, len(row) - 1}:
                assert exact_cross_entropy(row, label)._mpf_ == _plain(row, label)._mpf_, (row[:4], label)
        # rows with inf or nan keep their own rules
        assert mpmath.isnan(exact_cross_entropy((0.0, float("nan")), 0))
        assert exact_cross_entropy((float("-inf"), 0.0), 0) == mpmath.inf
        assert exact_cross_entropy((float("inf"), 0.0), 0) == 0


@pytest.mark.slow
def test_window_scan_keeps_the_witnesses(monkeypatch):
    """scipy.log_softmax in float32 is first inaccurate a billion float32 values up: its threshold search
    scans a window below it.  The witnesses are the same whether or not the window skips a guard formula."""
    pytest.importorskip("scipy")

    def witnesses():
        result = stabilitylab.audit("scipy.log_softmax", dtypes=["float32"], families=["confident"])
        return [(w.source, w.kind, w.status, w.case, w.parameter, w.value) for w in result.witnesses]

    pruned = witnesses()
    monkeypatch.setattr(Recorder, "_may_guard", lambda self, *args: True)
    assert witnesses() == pruned
    assert any(w[1].startswith("guard:") and w[0] == "confident" for w in pruned)


def _naive_ce(logits, labels):
    """-log(exp(x_y) / sum exp(x)) in the logits' own dtype: a kernel that fails (overflow, inaccurate)."""
    x = np.asarray(logits)
    with np.errstate(all="ignore"):
        e = np.exp(x)
        return -np.log(np.take_along_axis(e, np.asarray(labels)[:, None], axis=1)[:, 0] / e.sum(axis=1))


def test_report_audit_without_witnesses_finds_the_same():
    """The report audits without witnesses (``run(..., witnesses=False)``: the search's dense windows
    are not looked at, the simulated formulas' statuses only on the default cases): resembles (every
    candidate's tallies), thresholds and versus are those of the full audit, and no witness is kept."""
    from stabilitylab.auditing.core import resolve, run
    from stabilitylab.numerics.formats import FORMATS

    target = resolve(_naive_ce, "softmax_ce")
    formats = [FORMATS["float32"]]  # float32: the search scans dense windows (32 blocks here)
    full = run(target, formats, families=["confident"])
    lean = run(target, formats, families=["confident"], witnesses=False)
    assert full.witnesses and not lean.witnesses  # (the full audit does keep some: the flag does something)
    assert repr(lean.resembles) == repr(full.resembles)
    assert [r.__dict__ for r in lean.thresholds] == [r.__dict__ for r in full.thresholds]
    assert lean.versus == full.versus
    assert any(v.target_only or v.method_only for v in full.versus)  # versus has counts to compare
