"""A neutral document model (sections of text, tables and bullets) that every renderer draws.

Building the content once here keeps the rich table and the markdown output
identical in substance; renderers only decide how a cell or a heading looks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mpmath
import numpy as np

from ..analysis.engine import Comparison
from ..analysis.findings import VERB, findings
from ..analysis.outcome import METHOD_FAILURES, SEVERITY, WHITE_BOX_STATUSES, worst_status
from ..numerics.formats import Format

__all__ = ["Cell", "Table", "Section", "value_text", "summary_section", "verdicts", "compare_sections", "formats_table",
           "encodings_table",
           "thresholds_table", "formulas_section", "check_table", "audit_sections"]


@dataclass(frozen=True)
class Cell:
    """``status`` colours the cell; with ``tagged`` the renderer also prints the status."""

    text: str
    status: str | None = None  # ok, inaccurate, overflow, underflow, nan
    tagged: bool = False


@dataclass
class Table:
    """``labels``: the columns that name a row (kept in every part when a narrow terminal
    splits the table; broken only after a comma, slash or space, never inside a number)."""

    title: str
    headers: list[str]
    rows: list[list[Cell]]
    caption: str = ""
    labels: tuple[int, ...] = (0,)


@dataclass
class Section:
    heading: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    footer: list[str] = field(default_factory=list)  # paragraphs after the tables and bullets


def value_text(value: float, fmt: Format) -> str:
    """The shortest text that round-trips in the format (numpy / ml_dtypes repr),
    cut to 8 significant digits for tables (JSON keeps every bit)."""
    text = fmt.text(value)
    return text if len(text) <= 10 else f"{value:.8g}"


def exact_text(text: str, digits: int = 8) -> str:
    """An exact value's text (see :meth:`Exact.text`) cut to ``digits`` significant digits."""
    try:
        x = float(text)
    except ValueError:
        return text
    if math.isinf(x) and "inf" not in text:  # a finite value beyond float64's range (2e+308): as it is
        return mpmath.nstr(mpmath.mpf(text), digits)
    return text if x == 0 and text not in ("0", "-0", "0.0") else f"{x:.{digits}g}"


def number_text(x: float, digits: int = 10) -> str:
    return f"{x:.{digits}g}"


MORE = "-o FILE or --format json has them all"
INPUT_ROW = "exact, your input ⚠"
INPUT_CAPTION = ("⚠ input rounded: rounding the inputs to the format changes the exact loss itself (or an input "
                 "overflows or underflows), so ok / range there is measured against another problem; the "
                 f"'{INPUT_ROW}' row has the exact loss of your own inputs (float64, unrounded) and why")
WHITE_BOX_COUNTS = ("overflow", "underflow", "nan", "inaccurate", "range")
BLACK_BOX_COUNTS = ("inf", "nan", "inaccurate", "error", "range")
STORAGE_COUNTS = ("overflow", "underflow", "nan", "inaccurate")  # (a cast: no range; black boxes add error)
COUNT_NAMES = {"overflow": "overflow", "underflow": "underflow", "nan": "NaN", "inaccurate": "inaccurate",
               "range": "out-of-range", "inf": "inf", "error": "error"}


SUMMARY_HEADING = "Summary: which methods fail, in which formats, on how many cases"
SUMMARY_INTRO = ("Fails: the loss overflows, underflows, is NaN or inaccurate (against the exact loss); (k/n): on k "
                 "of the experiment's n cases.")


def _groups(formats: list[str], counts: dict[str, int], cases: int) -> str:
    """``float16, bfloat16 (3/10), float32 (2/10)``: formats with equal counts together."""
    parts, run = [], []
    for i, name in enumerate(formats):
        run.append(name)
        if i + 1 == len(formats) or counts[formats[i + 1]] != counts[name]:
            parts.append(f"{', '.join(run)} ({counts[name]:,}/{cases:,})")
            run = []
    return ", ".join(parts)


def verdicts(comparison: Comparison) -> list[tuple[str, str]]:
    """One sentence per experiment, computed from the counts: ``(experiment, sentence)``.

    Example: "softmax_ce (10 cases): naive_softmax_log overflows in float16, bfloat16 (3/10) and is
    inaccurate in float32 (1/10) and no failure in float64; log_softmax ok everywhere."
    Per method, each failing status (most severe first) with the formats it occurs in and on how
    many cases; then the formats with no failure at all.  "ok everywhere": no failure in any format
    (a loss outside the format's range, correctly rounded, is not a failure).
    """
    counts = {(c.experiment, c.method, c.dtype): c for c in comparison.summary}
    names = [f.name for f in comparison.formats]
    out = []
    for experiment in comparison.experiments:
        phrases, cases = [], 0
        for method in experiment.methods:
            per = {f: counts[(experiment.name, method.name, f)] for f in names}
            cases = max((c.cases for c in per.values()), default=0)
            clauses = []
            for status in (s for s in SEVERITY if s in METHOD_FAILURES):
                where = [f for f in names if getattr(per[f], status)]
                if where:
                    clauses.append(f"{VERB[status]} in "
                                   f"{_groups(where, {f: getattr(per[f], status) for f in where}, cases)}")
            clean = [f for f in names if not any(getattr(per[f], s) for s in METHOD_FAILURES)]
            if not clauses:
                text = f"{method.name} ok everywhere"
            else:
                text = f"{method.name} " + " and ".join(clauses)
                if clean:
                    text += f" and no failure in {', '.join(clean)}"
            phrases.append(text)
        out.append((experiment.name, f"{experiment.name} ({cases:,} cases): " + "; ".join(phrases) + "."))
    return out


def summary_section(comparison: Comparison) -> Section:
    """The verdicts (:func:`verdicts`) first, then where to look for more."""
    names = ", ".join(e.name for e in comparison.experiments)
    bullets = [text for _, text in verdicts(comparison)]
    changed: dict[tuple[str, str], list[str]] = {}
    for r in comparison.results:
        if r.input_change and r.dtype not in changed.setdefault((r.experiment, r.case), []):
            changed[(r.experiment, r.case)].append(r.dtype)
    if changed:
        bullets.append("⚠ Rounding the inputs to the format changes the problem itself (see the "
                       f"'{INPUT_ROW}' rows): " + "; ".join(f"{e} {c} in {', '.join(d)}"
                                                            for (e, c), d in changed.items()) + ".")
    return Section(SUMMARY_HEADING, paragraphs=[SUMMARY_INTRO], bullets=bullets,
                   footer=[f"Below: a section per experiment ({names}): every case's loss, counts, findings. "
                           "`-e EXP` narrows to one; `--format json` has every row."])


def compare_sections(comparison: Comparison, max_cases: int | None = None,
                     max_findings: int | None = None) -> list[Section]:
    """One section per experiment: results (methods x formats), counts, findings.

    ``max_cases`` / ``max_findings`` cap what a terminal shows per experiment; a
    caption or a last bullet then says how many were left out and where they are.
    """
    formats = comparison.formats
    results = {(r.experiment, r.case, r.method, r.dtype): r for r in comparison.results}
    said = findings(comparison)
    sections = []
    for experiment in comparison.experiments:
        cases = list(dict.fromkeys(r.case for r in comparison.results if r.experiment == experiment.name))
        shown = cases[:max_cases] if max_cases is not None else cases
        rows = []
        changed = False
        for case in shown:
            shared = next(m for m in experiment.methods if m.truth is None)
            label = Cell(case)
            for method in experiment.methods:
                if method is shared or method.truth is not None:
                    name = "exact" if method is shared else f"exact ({method.name})"
                    rows.append([label, Cell(name)] + [Cell(exact_text(
                        results[(experiment.name, case, method.name, f.name)].exact)) for f in formats])
                    label = Cell("")
                    mine = [results[(experiment.name, case, method.name, f.name)] for f in formats]
                    if any(r.input_change for r in mine):
                        changed = True
                        rows.append([label, Cell(f"{INPUT_ROW} ({method.name})" if method.truth is not None
                                                 else INPUT_ROW)]
                                    + [Cell(f"{exact_text(r.input_exact)} ({r.input_change})" if r.input_change
                                            else "", "inaccurate" if r.input_change else None) for r in mine])
                cells = [Cell(""), Cell(method.name)]
                for fmt in formats:
                    r = results[(experiment.name, case, method.name, fmt.name)]
                    cells.append(Cell(value_text(r.value, fmt), r.status, tagged=True))
                rows.append(cells)
        caption = "" if len(cases) == len(shown) else f"first {len(shown)} of {len(cases):,} cases; {MORE}"
        if changed:
            caption = "; ".join(c for c in (INPUT_CAPTION, caption) if c)
        exact_is = ("the input itself" if experiment.truth.storage
                    else "the true loss of the inputs as rounded to each format")
        results_table = Table(f"{experiment.name}: {'value' if experiment.truth.storage else 'loss'} per method "
                              f"and format (exact: {exact_is})",
                              ["case", "method", *(f.name for f in formats)], rows, caption, labels=(0, 1))
        counts = {(c.method, c.dtype): c for c in comparison.summary if c.experiment == experiment.name}
        black = any(m.black_box for m in experiment.methods)
        shown_counts = BLACK_BOX_COUNTS if black else WHITE_BOX_COUNTS
        if experiment.truth.storage:
            shown_counts = STORAGE_COUNTS + (("error",) if black else ())
        count_rows = []
        for method in experiment.methods:
            cells = [Cell(method.name)]
            for fmt in formats:
                c = counts[(method.name, fmt.name)]
                bad = worst_status(s for s in METHOD_FAILURES if getattr(c, s))
                cells.append(Cell(" / ".join(str(getattr(c, s)) for s in shown_counts) + f" of {c.cases}", bad))
            count_rows.append(cells)
        counts_table = Table(f"{experiment.name}: {' / '.join(COUNT_NAMES[s] for s in shown_counts)} counts",
                             ["method", *(f.name for f in formats)], count_rows)
        formulas = [f"`{m.name}`: {m.formula}" for m in experiment.methods]
        extra = []
        if experiment.facts is not None:
            headers, fact_rows = experiment.facts(list(formats))
            extra.append(Table(f"{experiment.name}: facts per format", headers,
                               [[Cell(c) for c in row] for row in fact_rows]))
        bullets = [text for name, text in said if name == experiment.name]
        if max_findings is not None and len(bullets) > max_findings:
            hidden = len(bullets) - max_findings
            bullets = bullets[:max_findings] + [f"... and {hidden:,} more findings; {MORE}"]
        sections.append(Section(
            heading=f"{experiment.name}: {experiment.title}",
            paragraphs=[experiment.question, "Methods: " + "; ".join(formulas) + "."],
            tables=[*extra, results_table, counts_table],
            bullets=bullets,
        ))
    if comparison.notes:
        sections.append(Section("Notes", bullets=list(comparison.notes)))
    return sections


def formats_table(formats: list[Format]) -> Table:
    """Format facts, all from finfo: max, smallest normal / subnormal, eps, u, ln thresholds."""
    headers = ["format", "bits p", "max", "smallest normal", "smallest subnormal", "eps", "u = eps/2",
               "ln(max)", "ln(smallest subnormal)", "has inf"]
    rows = []
    for f in formats:
        rows.append([Cell(f.name), Cell(str(f.precision)), Cell(number_text(f.max, 8)), Cell(number_text(f.tiny, 8)),
                     Cell(number_text(f.smallest_subnormal, 8)), Cell(number_text(f.eps, 8)),
                     Cell(number_text(f.unit_roundoff, 8)), Cell(number_text(f.ln_max, 10)),
                     Cell(number_text(f.ln_smallest_subnormal, 10)),
                     Cell("yes" if f.has_inf else f"no (overflow is {'±max' if f.saturates else 'NaN'})")])
    return Table("Formats (from numpy.finfo / ml_dtypes.finfo)", headers, rows)


_NAN_TEXT = {"ieee": "IEEE (top exponent, fraction ≠ 0)", "fn": "one: all ones", "fnuz": "one: 0x80 (-0)",
             "none": "none"}


def encodings_table(formats: list[Format]) -> Table:
    """How each format encodes its values (the declared fields of Format): widths, bias, inf, NaN, -0,
    what overflow gives, and the names -d accepts."""
    headers = ["format", "bits", "exponent bits", "fraction bits", "bias", "inf", "NaN", "-0", "overflow", "aliases"]
    rows = []
    for f in formats:
        over = {"inf": "±inf", "nan": "NaN", "saturate": "±max"}[f.overflow]
        sign = "" if f.signed else " (unsigned)"
        rows.append([Cell(f.name), Cell(f"{f.bits}{sign}"), Cell(str(f.exponent_bits)), Cell(str(f.fraction_bits)),
                     Cell(str(f.bias)), Cell("yes" if f.has_inf else "no"), Cell(_NAN_TEXT[f.nan]),
                     Cell("yes" if f.signed_zero else "no" if f.has_zero else "no (no zero)"), Cell(over),
                     Cell(", ".join(a for a in f.aliases if ":" not in a) or "any alias + :sat")])
    return Table("Encodings (declared; the constants above follow from them)", headers, rows)


def _param_text(value, fmt: Format) -> str:
    """A parameter as the format prints it; one that is not a value of the format (a cast family's
    float32 inputs, ``Family.grid``) as float32, else float64, prints it."""
    if value is None:
        return "—"
    if isinstance(value, float) and np.isfinite(value):
        with np.errstate(all="ignore"):
            held = float(fmt.round(value, np.float64)) == value
        if not held:
            text = str(np.float32(value)) if float(np.float32(value)) == value else repr(value)
            return text[:-2] if text.endswith(".0") else text
    if isinstance(value, int):
        if abs(value) < 10**12:
            return str(value)
        digits = str(abs(value))
        return f"{'-' if value < 0 else ''}{digits[0]}.{digits[1:4]}e+{len(digits) - 1}"
    return fmt.text(value)


THRESHOLD_LEGEND = ("each cell: first inaccurate / first failure (status at failure); exact values unless marked: "
                    "≤ x = a bound (the smallest failing value a search found; not every value below it was verified), "
                    "—? = none found, not verified over the whole range; pred = analytic prediction "
                    "(✓ agrees, ✗ differs, ≈ too rough to compare); — = never in the search range")


def _threshold_text(value, exact: bool, fmt: Format) -> str:
    text = _param_text(value, fmt)
    if exact:
        return text
    return "—?" if value is None else f"≤ {text}"


def thresholds_table(rows, formats: list[Format]) -> Table:
    """family x method rows, one column per format."""
    by_key = {(r.experiment, r.family, r.method, r.dtype): r for r in rows}
    groups = list(dict.fromkeys((r.experiment, r.family, r.parameter) for r in rows))
    methods: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        family_methods = methods.setdefault((r.experiment, r.family), [])
        if r.method not in family_methods:
            family_methods.append(r.method)
    table_rows = []
    for experiment, family, parameter in groups:
        for i, method in enumerate(methods[(experiment, family)]):
            cells = [Cell(f"{experiment}/{family} ({parameter})" if i == 0 else ""), Cell(method)]
            for fmt in formats:
                r = by_key.get((experiment, family, method, fmt.name))
                if r is None:
                    cells.append(Cell(""))
                    continue
                text = (f"{_threshold_text(r.first_inaccurate, r.exact_inaccurate, fmt)} / "
                        f"{_threshold_text(r.first_failure, r.exact_failure, fmt)}")
                if r.failure:
                    text += f" {r.failure}"
                if r.predicted_for == "first_flush":  # block storage: where the quantization alone flushes
                    text += f" (input flushes at {_param_text(r.predicted, fmt)})"
                elif r.predicted is not None:
                    if not r.search_range[0] <= r.predicted <= r.search_range[1]:
                        text += f" (pred {_param_text(r.predicted, fmt)}: beyond the range)"
                    else:
                        mark = "≈" if r.agrees is None else ("✓" if r.agrees else "✗")
                        text += f" (pred {_param_text(r.predicted, fmt)} {mark})"
                status = r.failure or ("inaccurate" if r.first_inaccurate is not None else "ok")
                cells.append(Cell(text, status))
            table_rows.append(cells)
    return Table("Thresholds: first failing parameter per method and format",
                 ["family (parameter)", "method", *(f.name for f in formats)], table_rows, THRESHOLD_LEGEND,
                 labels=(0, 1))


def formulas_section(rows) -> Section:
    """The analytic predictions' formulas, once per family and method."""
    seen = {}
    for r in rows:
        if r.formula:
            seen.setdefault(f"{r.experiment}/{r.family}/{r.method}", r.formula)
    return Section("Predictions", bullets=[f"`{k}`: {v}" for k, v in seen.items()])


def check_table(result, show_all: bool = False) -> Table:
    """asv-compare style: mark, baseline, current, change, tolerance, entry."""
    rows = []
    for r in result.rows:
        if r.mark == "" and not show_all:
            continue
        change = "—"
        if r.mark in ("!", "↑"):
            if isinstance(r.baseline, (int, float)) and isinstance(r.current, (int, float)) and r.baseline:
                change = f"{r.current / r.baseline:.6g}x"
            elif r.current is None and r.metric != "failure":
                change = "never fails"
            else:
                change = "changed"
        status = {"": "ok", "!": "nan", "↑": "ok", "+": "inaccurate", "x": "inaccurate"}[r.mark]
        rows.append([Cell(r.mark or " ", status), Cell(_plain(r.baseline)), Cell(_plain(r.current)),
                     Cell(change), Cell(r.tolerance), Cell(f"{r.entry} {r.metric}" if r.metric != "-" else r.entry)])
    return Table("Baseline check", ["mark", "baseline", "current", "change", "tolerance", "entry"], rows,
                 "! regression (fails earlier) · ↑ improvement (fails later or never; record it with --update) · "
                 "+ not in baseline · x unknown entry (not comparable)", labels=(0, 5))


def _plain(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def train_sections(runs, scenarios, said) -> list[Section]:
    """One section per training scenario: a row per method x format, then the generated sentences."""
    sections = []
    for name in dict.fromkeys(r.scenario for r in runs):
        scenario = scenarios[name]
        rows = []
        for r in (r for r in runs if r.scenario == name):
            bad = worst_status(r.status.tolist())
            counts = ", ".join(f"{s} {int((r.status == s).sum())}" for s in
                               WHITE_BOX_STATUSES if (r.status == s).any())
            first = r.first_nonfinite_step
            rows.append([Cell(r.method), Cell(r.dtype),
                         Cell("—" if first is None else str(first), "ok" if first is None else "nan"),
                         Cell(f"{number_text(r.loss[-1], 5)}" if np.isfinite(r.loss[-1]) else
                              ("nan" if np.isnan(r.loss[-1]) else "inf"), bad, tagged=True),
                         Cell(f"{100 * r.final_accuracy:.1f} %"),
                         Cell(str(r.epochs_at_chance())),
                         Cell(f"{100 * r.grad_underflow.max():.1f} %"),
                         Cell(f"{100 * r.zero_grad.max():.0f} %"),
                         Cell(str(int(r.skipped.sum()))),
                         Cell(counts)])
        caption = ("first non-finite: first step whose loss is inf / NaN; last loss: its status against the float64 "
                   "run's loss at the same step (the reference trajectory); epochs at chance: epochs before the "
                   "accuracy first exceeds chance + 10 points; backward underflow: the largest per-step fraction of "
                   "per-sample gradient terms lost to underflow in the backward pass; zero grad: the largest "
                   "per-step fraction of weight-gradient entries exactly 0")
        table = Table(f"train/{name}: {scenario.model} regression on {scenario.task}, {scenario.steps} steps, "
                      f"lr {scenario.lr:g}, batch {scenario.batch}, seed {scenario.seed}",
                      ["method", "format", "first non-finite step", "last loss", "final accuracy",
                       "epochs at chance", "backward underflow (max)", "zero grad (max)", "skipped steps",
                       "step statuses"], rows, caption, labels=(0, 1))
        sections.append(Section(f"train/{name}: {scenario.description}",
                                paragraphs=[f"Claim: {scenario.claim}."], tables=[table],
                                bullets=[text for s, text in said if s == name]))
    return sections


BLACK_BOX_RULE = ("A black box shows no IEEE events, so no cause is named: its status comes from the value it "
                  "returns (rounded to the format) and the exact loss of the same format-rounded inputs: ok / "
                  "range (correctly rounded), inaccurate (relative error above the tolerance, a lost 0 included), "
                  "inf (an infinite loss where the exact one is finite), nan, error (the call raised); a NaN "
                  "for an undefined loss (every logit -inf) is ok.")
STORAGE_RULE = ("A cast stores its input: the exact value is x itself, and a value the format cannot hold is the "
                "failure looked for (never range): overflow where |x| is beyond the format's range, whatever came "
                "back (inf, NaN or a saturated ±max), underflow where x ≠ 0 became 0, nan where x is NaN and the "
                "format has no NaN (fp6, fp4) or a number came back; else ok (correctly rounded), inaccurate "
                "(relative error above the tolerance), nan, error (the call raised).")


def _pct(share: float) -> str:
    return "—" if share != share else f"{share:.1%}"  # NaN: no such points


def match_rule(resembles) -> str:
    """The rule that names the formula a target resembles, with the constants the audit used
    (``Resemblance.match_share`` / ``wide_rows``)."""
    if not resembles:
        return ""
    share, wide = resembles[0].match_share, resembles[0].wide_rows
    return (f"Resembles is decided on the case rows (the default cases, the bug-report corpus and seeded realistic "
            f"rows, or your rows), not on the threshold points: a simulated formula matches when its output is "
            f"within 1 ulp of the target's on at least {share:.0%} of the case rows and, on the wide case "
            f"rows (at least {wide:,} classes, where the order of a long sum shows), within the tolerance "
            f"(relative) on at least {share:.0%} of them; below that: no simulated formula matches. Within "
            "1 ulp: equal, or both finite and neighbours in the output format (-0 = +0, NaN = NaN, an infinity "
            "only equals itself); bit-identical: equal.")


def resembles_sentence(name: str, r) -> str:
    """One line per format: the formula matched, or that none is, with the best candidate's shares."""
    c = r.candidates[0]
    shares = (f"within 1 ulp on {_pct(c.cases.within_ulp_share)} of {c.cases.points:,} case rows, bit-identical "
              f"on {_pct(c.cases.identical_share)}")
    if c.wide.points:
        shares += f"; within the tolerance on {_pct(c.wide.within_tolerance_share)} of {c.wide.points:,} wide rows"
    if c.thresholds.points:
        shares += (f"; threshold points: within 1 ulp {_pct(c.thresholds.within_ulp_share)}, bit-identical "
                   f"{_pct(c.thresholds.identical_share)}")
    if r.method is not None:
        return f"{name}, {r.dtype}: resembles {r.method} ({shares})"
    return f"{name}, {r.dtype}: no simulated formula matches (best: {c.label}, {shares})"


def resembles_table(resembles) -> Table:
    """Every candidate per format, best first, with its shares (a candidate computed in another format
    than the audit's is named ``method in <format>``)."""
    rows = []
    for r in resembles:
        for i, c in enumerate(r.candidates):
            verdict = ("matches" if c.matches else "best, no match") if i == 0 else ("matches" if c.matches else "")
            rows.append([Cell(r.dtype), Cell(c.label), Cell(verdict, "ok" if c.matches else
                                                            "inaccurate" if i == 0 else None),
                         Cell(_pct(c.cases.within_ulp_share)), Cell(_pct(c.cases.identical_share)),
                         Cell(f"{c.cases.points:,}"),
                         Cell(_pct(c.wide.within_tolerance_share)), Cell(_pct(c.wide.within_ulp_share)),
                         Cell(f"{c.wide.points:,}"),
                         Cell(_pct(c.thresholds.within_ulp_share)), Cell(_pct(c.thresholds.identical_share)),
                         Cell(f"{c.thresholds.points:,}")])
    return Table("Resembles: every simulated formula beside the target, best first (shares of points; ≤1 ulp: "
                 "within 1 ulp of the output format)",
                 ["format", "candidate", "verdict", "case rows ≤1 ulp", "identical", "rows", "wide rows ≤tol",
                  "≤1 ulp", "wide", "threshold points ≤1 ulp", "identical", "points"], rows, labels=(0, 1))


def audit_sections(audit, max_cases: int | None = None, max_findings: int | None = None,
                   cases: list[Section] | None = None) -> list[Section]:
    """The audit: what was run, the compare tables (or ``cases``: the sections of the user's rows),
    resembles, versus, thresholds and witnesses."""
    target = audit.target
    env = ", ".join(f"{k} {v}" for k, v in target.environment.items())
    what = ""
    if target.grad:
        what = ("gradient dL/dW (one entry per problem, of the mean loss) of " if target.experiment == "linear_ce"
                else "gradient with respect to the logits of ")
    head = Section(
        f"Audit: {target.name} ({audit.experiment.name})",
        paragraphs=[f"Target: {what}{target.name}: {target.formula}. Environment: {env}. Formats: "
                    f"{', '.join(f.name for f in audit.formats)}.",
                    STORAGE_RULE if audit.simulated.truth.storage else BLACK_BOX_RULE],
    )
    sections = [head, *(compare_sections(audit.comparison, max_cases, max_findings) if cases is None else cases)]
    formats = {f.name: f for f in audit.formats}
    resembles, bullets = resembles_table(audit.resembles), [resembles_sentence(target.name, r)
                                                            for r in audit.resembles]
    versus_rows = []
    for v in audit.versus:
        if not (v.target_only or v.method_only):
            continue
        status = "inaccurate" if v.target_only else "ok"
        versus_rows.append([Cell(v.dtype), Cell(v.method), Cell(str(v.target_only), status),
                            Cell(str(v.method_only)), Cell(", ".join(v.examples))])
    versus = Table("Cases the target fails (inaccurate or worse) that a simulated method gets right, and the reverse",
                   ["format", "simulated method", "target fails, method ok", "method fails, target ok",
                    "first cases the target fails"], versus_rows, labels=(0, 1))
    tables = [resembles] + ([versus] if versus_rows else [])
    sections.append(Section("Which formula is it?", paragraphs=[match_rule(audit.resembles)], bullets=bullets,
                            tables=tables))
    if audit.thresholds:
        how = ("The same search as `stabilitylab thresholds`, on the target: formats of at most 16 bits are scanned "
               "completely (exact); float32 / float64 are bisected and then scanned point by point within a budget "
               "(no interval proof holds for a black box), so their values are often bounds (≤ x).")
        grids = sorted({f.grid for f in audit.simulated.families if f.grid})
        if grids:
            how = (f"The same search as `stabilitylab thresholds`, on the target: the parameter runs over the "
                   f"{', '.join(grids)} values (the cast's input, in every format), too many to scan completely, so "
                   "they are bisected and then scanned point by point within a budget (no interval proof holds for "
                   "a black box): a value is a bound (≤ x) unless every input below it was evaluated; the JSON's "
                   "verified_from says from where up to it every input was.")
        sections.append(Section("Thresholds", paragraphs=[how],
            tables=[thresholds_table(audit.thresholds, list(audit.formats))]))
    if audit.gradient_entries:
        sections.append(gradient_entries_section(audit.gradient_entries, formats))
    witness_rows = []
    guards = sum(1 for w in audit.witnesses if w.kind.startswith("guard"))
    for w in audit.witnesses:
        if w.kind.startswith("guard"):
            continue
        fmt = formats[w.dtype]
        value = f"{value_text(w.value, fmt)}" + (f" ({w.error})" if w.error else "")
        error = "—" if not np.isfinite(w.error_bits) else f"{w.error_bits:.1f}"
        witness_rows.append([Cell(w.source), Cell(w.dtype), Cell(w.status, w.status), Cell(w.kind), Cell(w.case),
                             Cell(value), Cell(exact_text(w.exact)), Cell(error)])
    if witness_rows or guards:
        sections.append(Section("Witnesses", paragraphs=[
            "Per source (the cases, or a threshold family) and status: the first failing input and, for "
            "inaccurate, the worst (largest error). `--emit-pytest FILE` turns each into a test, together with "
            f"{guards} guard inputs (where a simulated formula fails and the target does not; listed in the JSON)."],
            tables=[Table("Witnesses", ["source", "format", "status", "kind", "case", "value", "exact",
                                        "error bits"], witness_rows, labels=(0, 1))]))
    if audit.notes:
        sections.append(Section("Audit notes", bullets=list(audit.notes)))
    return sections


def gradient_entries_section(entries, formats) -> Section:
    """Every entry of a linear_ce target's two gradients (:class:`~stabilitylab.auditing.core.GradientEntries`)."""
    rows = []
    for g in entries:
        counts = ", ".join(f"{status} {n:,}" for status, n in g.counts.items())
        worst = "—" if not np.isfinite(g.worst_bits) else f"{g.worst_bits:.1f}"
        w = g.witness
        witness = "—" if w is None else (f"{w['case']} [{w['entry'][0]}, {w['entry'][1]}]: "
                                         f"{value_text(w['value'], formats[g.dtype])} vs {exact_text(w['exact'])} "
                                         f"({w['status']})")
        rows.append([Cell(g.dtype), Cell(f"d sum(loss)/d {g.gradient}"), Cell(f"{g.problems}"), Cell(f"{g.entries:,}"),
                     Cell(counts, "inaccurate" if g.failing else "ok"), Cell(worst), Cell(witness)])
    return Section("Every gradient entry", paragraphs=[
        "The cases above read one dL/dW entry per problem; here every entry of both gradients the target returns "
        "(d sum(loss)/d weight, (V, D), and d sum(loss)/d hidden, (N, D)) on each distinct small problem is "
        "measured against its exact value (mpmath on the format's inputs), each with the black-box status rule. "
        "Witness: the worst failing entry, else the entry with the largest error."],
        tables=[Table("Every gradient entry", ["format", "gradient", "problems", "entries", "statuses",
                                               "worst error bits", "witness entry"], rows, labels=(0, 1))])
