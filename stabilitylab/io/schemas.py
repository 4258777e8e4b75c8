"""Every ``schema`` string stabilitylab writes into a JSON document, in one table.

A document's first key names what it is and its version: ``stabilitylab.<kind>/<n>``.  The number
changes only when a reader of the old version would misread the new one (a key renamed, removed or
given another meaning); added keys keep it.  Writers (``render.jsonout``, ``guard.baseline``, the
command line) and readers (``guard.baseline.load``) take the strings from here.
"""

from __future__ import annotations

__all__ = ["COMPARE", "THRESHOLDS", "AUDIT", "TRAIN", "FORMATS", "TARGETS", "BASELINE", "TRACE", "HEADROOM",
           "SCHEMAS"]

COMPARE = "stabilitylab.compare/1"  # compare --format json (with --logits: its "user_logits" part)
THRESHOLDS = "stabilitylab.thresholds/1"  # thresholds --format json
AUDIT = "stabilitylab.audit/2"  # audit --format json (/2: "resembles" per candidate, case rows vs threshold points)
TRAIN = "stabilitylab.train/1"  # train --format json
FORMATS = "stabilitylab.formats/1"  # formats --format json
TARGETS = "stabilitylab.targets/1"  # audit --list --format json
BASELINE = "stabilitylab.baseline/1"  # the baseline file check reads and writes
TRACE = "stabilitylab.trace/1"  # trace --json
HEADROOM = "stabilitylab.headroom/1"  # trace --headroom --json (tracing/headroom.py)

SCHEMAS: tuple[str, ...] = (COMPARE, THRESHOLDS, AUDIT, TRAIN, FORMATS, TARGETS, BASELINE, TRACE, HEADROOM)
