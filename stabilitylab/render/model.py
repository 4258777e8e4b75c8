"""A neutral document model (sections of text, tables and bullets) that every renderer draws.

Building the content once here keeps the rich table and the markdown output
identical in substance; renderers only decide how a cell or a heading looks.
"""

from __future__ import annotations

from dataclasses import dataclass, field


from ..engine import Comparison
from ..findings import findings
from ..formats import Format

__all__ = ["Cell", "Table", "Section", "value_text", "compare_sections", "formats_table"]


@dataclass(frozen=True)
class Cell:
    """``status`` colours the cell; with ``tagged`` the renderer also prints the status."""

    text: str
    status: str | None = None  # ok, inaccurate, overflow, underflow, nan
    tagged: bool = False


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Cell]]
    caption: str = ""


@dataclass
class Section:
    heading: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)


def value_text(value: float, fmt: Format) -> str:
    """The shortest text that round-trips in the format (numpy / ml_dtypes repr),
    cut to 8 significant digits for tables (JSON keeps every bit)."""
    text = str(fmt.dtype.type(value))
    return text if len(text) <= 10 else f"{value:.8g}"


def number_text(x: float, digits: int = 10) -> str:
    return f"{x:.{digits}g}"


def compare_sections(comparison: Comparison, max_cases: int = 60) -> list[Section]:
    """One section per experiment: results (methods x formats), counts, findings."""
    formats = comparison.formats
    widest = max(formats, key=lambda f: f.precision)
    results = {(r.experiment, r.case, r.method, r.dtype): r for r in comparison.results}
    said = findings(comparison)
    sections = []
    for experiment in comparison.experiments:
        cases = list(dict.fromkeys(r.case for r in comparison.results if r.experiment == experiment.name))
        shown = cases[:max_cases]
        rows = []
        for case in shown:
            first = {f.name: results[(experiment.name, case, experiment.methods[0].name, f.name)] for f in formats}
            rows.append([Cell(case), Cell("exact")] + [Cell(number_text(first[f.name].reference, 8))
                                                      for f in formats])
            for method in experiment.methods:
                cells = [Cell(""), Cell(method.name)]
                for fmt in formats:
                    r = results[(experiment.name, case, method.name, fmt.name)]
                    cells.append(Cell(value_text(r.value, fmt), r.status, tagged=True))
                rows.append(cells)
        caption = "" if len(cases) == len(shown) else (
            f"first {len(shown)} of {len(cases)} cases; --format json lists all")
        results_table = Table(f"{experiment.name}: loss per method and format "
                              "(exact: the true loss of the inputs as rounded to each format)",
                              ["case", "method", *(f.name for f in formats)], rows, caption)
        counts = {(c.method, c.dtype): c for c in comparison.summary if c.experiment == experiment.name}
        count_rows = []
        for method in experiment.methods:
            cells = [Cell(method.name)]
            for fmt in formats:
                c = counts[(method.name, fmt.name)]
                worst = next((s for s in ("nan", "overflow", "underflow", "inaccurate") if getattr(c, s)), "ok")
                cells.append(Cell(f"{c.overflow} / {c.underflow} / {c.nan} / {c.inaccurate} of {c.cases}", worst))
            count_rows.append(cells)
        counts_table = Table(f"{experiment.name}: overflow / underflow / NaN / inaccurate counts",
                             ["method", *(f.name for f in formats)], count_rows)
        formulas = [f"`{m.name}`: {m.formula}" for m in experiment.methods]
        sections.append(Section(
            heading=f"{experiment.name}: {experiment.title}",
            paragraphs=[experiment.question, "Methods: " + "; ".join(formulas) + "."],
            tables=[results_table, counts_table],
            bullets=[text for name, text in said if name == experiment.name],
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
                     Cell(number_text(f.ln_smallest_subnormal, 10)), Cell("yes" if f.has_inf else "no (overflow is NaN)")])
    return Table("Formats (from numpy.finfo / ml_dtypes.finfo)", headers, rows)


