"""Assert stability thresholds in your own tests, against a baseline file.

>>> def test_product_threshold(stability_baseline):
...     stability_baseline.check("likelihood/iid/product/float32")

Tolerance (the same rule as ``stabilitylab check``): for an entry of format F,
a float threshold x passes iff ``|x - x_baseline| <= ulps * ulp_F(x_baseline)``
(``ulps = 0``: bit-exact); integer thresholds (n) and the failure status must
be equal; ``None`` (never fails in the search range) only equals ``None``.
With ``pytest --stability-update`` the checked entries are recomputed and
written to the baseline instead (other entries and the settings are kept; a
file that is not a valid baseline is an error, never overwritten).

An audit entry of user code (``softmax_ce/confident/losses.py:loss/float32``) runs that code only if
allowed: a pattern of ``allow_targets`` (the constructor's, the plugin's ini value
``stability_allow_targets``, or ``[tool.stabilitylab] allow_targets`` in a ``pyproject.toml`` at or above
the baseline's folder); a file's path is relative to the baseline's folder.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from .analysis.thresholds import Threshold, family_thresholds
from .experiments import EXPERIMENTS
from .experiments.base import Settings
from .guard import baseline
from .io import atomic
from .numerics.policies import format_or_policy

__all__ = ["StabilityBaseline", "threshold"]

UPDATE_FLAG = "pytest --stability-update"
ALLOW_HINT = ("the ini value stability_allow_targets, or allow_targets = [PATTERN, ...] under [tool.stabilitylab] "
              "in a pyproject.toml beside or above the baseline")


def threshold(key: str, settings: Settings = Settings(), tolerance: float | None = None,
              allow_targets: Sequence[str] = (), baseline_path: str | os.PathLike | None = None) -> Threshold:
    """The current threshold of ``experiment/family/method/dtype`` (``method``: a simulated method, or an
    audit target such as ``torch.cross_entropy``).

    A user target (``module:function``, ``file.py:function``) runs only if it matches a pattern of
    ``allow_targets`` or of ``allow_targets`` in the ``pyproject.toml`` at or above the folder of
    ``baseline_path`` (default: the current directory), to which a file's path is relative."""
    parts = baseline.split_key(key)
    if parts is None:
        raise KeyError(f"unknown threshold {key!r}; expected experiment/family/method/dtype, "
                       f"e.g. likelihood/iid/product/float32")
    experiment, family, method, dtype = parts
    if baseline.audit_key(key) is not None:  # an audited target: recomputed by the audit's search
        from .auditing.core import AuditError

        rows, problems, notes = baseline.audit_rows(Path(baseline_path or "baseline.json"), [key], tolerance,
                                                    allow=tuple(allow_targets), hint=ALLOW_HINT)
        for note in notes:
            warnings.warn(note, UserWarning, stacklevel=2)
        if problems:
            raise AuditError(problems[key])
        return rows[0]
    e = EXPERIMENTS[experiment]
    rows = family_thresholds(e, e.family(family), format_or_policy(dtype), settings, tolerance)  # memoised
    return next(r for r in rows if r.method == method)


class StabilityBaseline:
    """A baseline file and the checks made against it in one test session."""

    def __init__(self, path: str | os.PathLike, update: bool = False, ulps: int = 0,
                 allow_targets: Sequence[str] = ()):
        self.path, self.update, self.ulps = Path(path), update, ulps
        self.allow_targets = tuple(allow_targets)
        self._doc: dict | None = None
        self._recorded: list[Threshold] = []

    def _baseline(self) -> dict:
        if self._doc is None:
            self._doc = baseline.load(self.path, update_flag=UPDATE_FLAG)
        return self._doc

    def _settings(self) -> tuple[Settings, float | None]:
        """The baseline's settings; in update mode a missing file gives the defaults.

        A file that exists but is not a valid baseline is an error even when
        updating: rewriting it would drop the entries that cannot be read.
        """
        if self.update and not self.path.exists():
            return Settings(), None
        return baseline.settings_of(self._baseline())

    def check(self, key: str, ulps: int | None = None) -> Threshold:
        """Assert (or, when updating, record) the threshold ``key``; returns it."""
        settings, tolerance = self._settings()
        row = threshold(key, settings, tolerance, self.allow_targets, self.path)
        if self.update:
            self._recorded.append(row)
            return row
        doc = self._baseline()
        entry = doc["entries"].get(key)
        if entry is None:
            raise AssertionError(f"{key} is not in baseline {self.path}; run {UPDATE_FLAG}")
        k = self.ulps if ulps is None else ulps
        fmt = format_or_policy(row.dtype).storage_format
        for metric in baseline.METRICS:
            base, cur = entry[metric], getattr(row, metric)
            if not baseline.within(base, cur, fmt, k):
                raise AssertionError(f"{key} {metric}: baseline {base!r}, now {cur!r} (tolerance {k} ulp)")
        return row

    @atomic.transactional
    def save(self) -> None:
        """Write recorded entries (update mode), keeping the others."""
        if not (self.update and self._recorded):
            return
        previous = {}
        atomic.lock(self.path)  # held from this read to the rename: concurrent sessions merge
        if self.path.exists():
            previous = baseline.load(self.path, update_flag=UPDATE_FLAG)["entries"]
        settings, tolerance = self._settings()
        baseline.write(self.path, baseline.document(self._recorded, settings, tolerance, previous))
