"""What a trace found: per format, the op records, the first event per cause (forward and backward), a
per-module table; rendered as JSON (``stabilitylab.trace/1``), markdown and the terminal's tables.

A **finding** is the first op (in execution order) of a phase whose cause is ``overflow``, ``underflow``,
``nan`` or ``inaccurate`` (see :mod:`.shadow`), with the catalogue's rewrite (:mod:`.catalogue`).  Its
``error_bits`` are the op's local error bits for a ``local`` finding (the op's own fault) and its normwise
drift bits for an ``exposed`` one (its inputs were within the tolerance of their float64 twins, its output
is not).  Every number here is computed by the run; none is a bound.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from ..analysis.outcome import SEVERITY
from ..io import schemas
from ..numerics.formats import Format
from ..render import jsonout
from ..render.markdown import sections_md
from ..render.model import Cell, Section, Table
from . import catalogue
from .shadow import WIDER_ON_CPU, OpRecord

__all__ = ["TraceResult", "FormatRun", "Finding", "CAUSES", "LIMITS", "float64_note"]

CAUSES: tuple[str, ...] = ("nan", "overflow", "underflow", "inaccurate")

LIMITS: tuple[str, ...] = (
    "eager mode only: torch.compile regions and GPU-only kernels are not seen",
    "CPU kernels accumulate differently from cuBLAS: bfloat16 / float16 matmuls and reductions accumulate in "
    "float32 on the CPU",
    "memory about 5x the activations (a float64 twin per tensor, a float64 local reference per op)",
)


@dataclass
class Finding:
    format: str
    phase: str
    cause: str
    kind: str  # local | exposed
    op: str
    module: str
    source: str
    node: str
    forward_op: str
    index: int  # the op's position in the run
    error_bits: float
    count: int  # offending elements of this op
    ops_with_cause: int  # ops of the phase with this cause
    samples: list
    origin: dict | None
    pattern: str
    entry: catalogue.Rewrite
    command: str | None

    def to_dict(self) -> dict:
        return {"format": self.format, "phase": self.phase, "cause": self.cause, "kind": self.kind, "op": self.op,
                "module": self.module, "source": self.source, "node": self.node, "forward_op": self.forward_op,
                "index": self.index, "error_bits": jsonout.number(self.error_bits), "count": self.count,
                "ops_with_cause": self.ops_with_cause, "samples": [_numbers(s) for s in self.samples],
                "origin": self.origin, "pattern": self.pattern, "rewrite": self.entry.key, "why": self.entry.why,
                "advice": self.entry.rewrite, "experiment": self.entry.experiment, "command": self.command}

    def __str__(self) -> str:  # print(finding): the sentence, not the dataclass's field dump
        return self.sentence()

    def sentence(self) -> str:
        where = f"{self.module or '(no module)'}" + (f" at {self.source}" if self.source else "")
        back = f" (backward of {self.forward_op}, {self.node})" if self.phase == "backward" and self.node else ""
        how = "its own rounding" if self.kind == "local" else "an earlier rounding it amplified"
        return (f"{self.format} {self.phase}: first {self.cause} in {self.op}{back}, {where}: {self.count} "
                f"element(s), {self.error_bits:.1f} bits of error, from {how}. Why: {self.entry.why}. "
                f"Fix: {self.entry.rewrite}." + (f" Reproduce: {self.command}" if self.command else ""))


def _numbers(sample: dict) -> dict:
    out = {}
    for k, v in sample.items():
        if isinstance(v, float):
            out[k] = jsonout.number(v)
        elif isinstance(v, list):
            out[k] = [jsonout.number(x) if isinstance(x, float) else x for x in v]
        else:
            out[k] = v
    return out


def float64_note(fmt: str, lost: dict | None) -> list[str]:
    """The note for a program that loses a value in float64 too (:attr:`.shadow.Shadow.lost_in_float64`): [] if
    it does not."""
    if not lost:
        return []
    where = (lost["module"] or "(no module)") + (f" at {lost['source']}" if lost["source"] else "")
    what = "NaN" if lost["nan"] == lost["elements"] else "inf / NaN"
    return [f"{fmt}: the program gives {what} in float64 too, first in {lost['op']} ({lost['phase']}, {where}): "
            f"{lost['elements']} element(s) from finite inputs; not the format's fault, no op is blamed for it"]


@dataclass
class FormatRun:
    """One format's trace."""

    format: Format
    native: bool
    records: list[OpRecord]
    twin_failures: dict[str, str] = field(default_factory=dict)

    @property
    def findings(self) -> list[Finding]:
        found, seen = [], {}
        counts = defaultdict(int)
        for r in self.records:
            if r.cause:
                counts[(r.phase, r.cause)] += 1
        for r in self.records:
            if not r.cause or (r.phase, r.cause) in seen:
                continue
            seen[(r.phase, r.cause)] = True
            short = r.op.split(".")[1] if "." in r.op else r.op
            pattern = catalogue.pattern_of(short, r.cause, r.origin, r.samples, self.format.tiny)
            entry = catalogue.lookup(short, r.cause, pattern)
            bits = r.local_bits if r.kind == "local" else r.drift_bits
            found.append(Finding(self.format.name, r.phase, r.cause, r.kind, r.op, r.module, r.source, r.node,
                                 r.forward_op, r.index, bits, r.offending, counts[(r.phase, r.cause)], r.samples,
                                 r.origin, pattern, entry, catalogue.command(entry, self.format)))
        order = {c: i for i, c in enumerate(CAUSES)}
        return sorted(found, key=lambda f: (f.phase != "forward", f.index, order[f.cause]))

    def modules(self) -> list[dict]:
        """Per (phase, module): ops judged, worst local error bits, worst drift bits, elements per status."""
        rows: dict[tuple[str, str], dict] = {}
        for r in self.records:
            row = rows.setdefault((r.phase, r.module), {"phase": r.phase, "module": r.module, "ops": 0,
                                                        "local_bits": 0.0, "drift_bits": 0.0, "counts": {},
                                                        "causes": {}})
            row["ops"] += 1
            row["local_bits"] = max(row["local_bits"], r.local_bits)
            row["drift_bits"] = max(row["drift_bits"], r.drift_bits)
            for s, n in r.counts.items():
                row["counts"][s] = row["counts"].get(s, 0) + n
            if r.cause:
                row["causes"][r.cause] = row["causes"].get(r.cause, 0) + 1
        return list(rows.values())

    def cells(self) -> list[dict]:
        """Per (module, op), forward and backward pooled: the worst local error bits and drift bits and the
        elements per status (the figure's heat map cells)."""
        cells: dict[tuple[str, str], dict] = {}
        for r in self.records:
            c = cells.setdefault((r.module, r.op), {"format": self.format.name, "module": r.module, "op": r.op,
                                                    "worst_error_bits": 0.0, "worst_drift_bits": 0.0,
                                                    "counts": {}})
            c["worst_error_bits"] = max(c["worst_error_bits"], r.local_bits)
            c["worst_drift_bits"] = max(c["worst_drift_bits"], r.drift_bits)
            for st, n in r.counts.items():
                c["counts"][st] = c["counts"].get(st, 0) + n
        return [{**c, "worst_error_bits": jsonout.number(c["worst_error_bits"]),
                 "worst_drift_bits": jsonout.number(c["worst_drift_bits"])} for c in cells.values()]

    def counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for r in self.records:
            for s, n in r.counts.items():
                total[s] = total.get(s, 0) + n
        return {s: total[s] for s in SEVERITY if s in total}

    def to_dict(self) -> dict:
        findings = self.findings
        return {"format": self.format.name, "native": self.native,
                "computes_in": "float32 internally on the CPU (see wider_on_cpu)" if self.native else
                f"float32, every floating output rounded to {self.format.name}",
                "ops": len(self.records), "counts": self.counts(),
                "failed": bool(findings),
                "first_events": [{"phase": f.phase, "cause": f.cause, "op": f.op, "module": f.module,
                                  "index": f.index} for f in findings],
                "findings": [f.to_dict() for f in findings],
                "per_module": [{**m, "local_bits": jsonout.number(m["local_bits"]),
                                "drift_bits": jsonout.number(m["drift_bits"])} for m in self.modules()],
                "twin_failures": self.twin_failures}


class TraceResult:
    """The result of :func:`stabilitylab.trace`: ``summary`` (first events), ``findings``, ``to_json()``,
    ``to_markdown()``, ``sections()``; ``runs`` holds one :class:`FormatRun` per format."""

    def __init__(self, runs: list[FormatRun], target: str = "", rows: int | None = None, backward: bool = True,
                 notes: list[str] | None = None):
        self.runs = runs
        self.target = target
        self.rows = rows
        self.backward = backward
        self.notes = list(notes or [])

    @property
    def findings(self) -> list[Finding]:
        return [f for run in self.runs for f in run.findings]

    @property
    def summary(self) -> list[dict]:
        """The first event per (format, phase, cause): op, module, cause, kind, error bits, elements."""
        return [{"format": f.format, "phase": f.phase, "cause": f.cause, "kind": f.kind, "op": f.op,
                 "module": f.module, "error_bits": f.error_bits, "count": f.count, "rewrite": f.entry.key}
                for f in self.findings]

    @property
    def failed(self) -> bool:
        return bool(self.findings)

    def to_dict(self) -> dict:
        return {"schema": schemas.TRACE, "target": self.target, "rows": self.rows, "backward": self.backward,
                "formats": [r.format.name for r in self.runs], "runs": [r.to_dict() for r in self.runs],
                "modules": [c for r in self.runs for c in r.cells()],
                "wider_on_cpu": list(WIDER_ON_CPU), "limits": list(LIMITS), "notes": self.notes}

    def to_json(self) -> str:
        return jsonout.dumps(self.to_dict())

    def sections(self) -> list[Section]:
        out = []
        first = Section("First events", paragraphs=[f.sentence() for f in self.findings] or
                        [f"no op lost a value in {', '.join(r.format.name for r in self.runs)} "
                         f"({sum(len(r.records) for r in self.runs)} ops judged)"])
        out.append(first)
        for run in self.runs:
            rows = []
            for m in run.modules():
                worst = next((s for s in SEVERITY if m["counts"].get(s) and s != "ok"), "ok")
                counts = ", ".join(f"{s} {m['counts'][s]}" for s in SEVERITY if m["counts"].get(s))
                causes = ", ".join(f"{c} {n}" for c, n in m["causes"].items()) or "-"
                rows.append([Cell(m["module"] or "(none)"), Cell(m["phase"]), Cell(str(m["ops"])),
                             Cell(_bits(m["local_bits"])), Cell(_bits(m["drift_bits"])),
                             Cell(counts, worst if worst != "range" else "ok"), Cell(causes)])
            table = Table(f"Modules in {run.format.name}", ["module", "phase", "ops", "local bits", "drift bits",
                                                            "elements per status", "ops with a cause"], rows,
                          "local bits: worst error of an op against float64 on its own inputs; drift bits: normwise "
                          "error of its output against the float64 twin")
            out.append(Section(f"Trace in {run.format.name}", tables=[table]))
        out.append(Section("Limits", bullets=list(LIMITS) + self.notes))
        return out

    def to_markdown(self) -> str:
        return sections_md(self.sections())

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


def _bits(x: float) -> str:
    return "inf" if not math.isfinite(x) else f"{x:.1f}"
