"""Rich terminal rendering of the document model.

Tables are fitted to the console here rather than left to rich, whose narrowing
folds cells anywhere (``p=0.999,n=1`` / ``000000000``).  Each column gets at
least the width of its longest unbreakable piece: a word of a value cell, or a
piece of a label cut after a comma, slash or space.  When even those widths do
not fit, the format columns are split over several tables, each repeating the
label columns.  So no number and no name is ever broken.

:func:`stdout_console` is the console every table command prints to: the terminal's width, or
``COLUMNS`` when it is a usable width, or 160 for a pipe.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from rich.box import HEAVY_HEAD
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.segment import Segment, Segments

from .model import Cell, Section, Table

__all__ = ["STYLE", "print_sections", "print_table", "layout", "stdout_console", "columns", "MAX_COLUMNS",
           "PIPE_WIDTH"]

STYLE = {"ok": "green", "range": "cyan", "inaccurate": "yellow", "overflow": "red", "underflow": "magenta",
         "nan": "bold red", "inf": "red", "error": "bold magenta"}
TAG = {"ok": "ok", "range": "range", "inaccurate": "inacc", "overflow": "OVF", "underflow": "UNF", "nan": "NaN",
       "inf": "INF", "error": "ERR"}
LEGEND = ("ok · range = correctly rounded, but the exact loss is outside the format's range · "
          "inacc = inaccurate (relative error > tolerance) · OVF = overflow · UNF = underflow · NaN")
BLACK_BOX_LEGEND = ("black box (no IEEE event observed): INF = an infinite loss where the exact one is finite · "
                    "NaN · ERR = the call raised")
_LABEL_PIECES = re.compile(r"[^\s,/]*[,/]+\s*|[^\s,/]+\s*|\s+")  # a label breaks after , / or a space
_WORDS = re.compile(r"\S+\s*|\s+")  # a value cell breaks only at spaces (rich's own wrapping)


MAX_COLUMNS = 10_000  # a wider COLUMNS is a mistake, not a terminal (rich would draw every rule that wide)
PIPE_WIDTH = 160  # standard output that is not a terminal, without a usable COLUMNS
_DIGITS = re.compile(r"[0-9]+")


def columns(environ=None) -> int | None:
    """``COLUMNS`` when it is a usable width (decimal digits, 1 to ``MAX_COLUMNS``), else None.

    0, a negative number, text and absurd widths are treated as unset: rich would take 0 (every
    table, rule and line printed as nothing) or 99999999 (100 MB per rule) at its word.
    """
    value = (os.environ if environ is None else environ).get("COLUMNS", "").strip()
    if not _DIGITS.fullmatch(value):
        return None
    width = int(value)
    return width if 1 <= width <= MAX_COLUMNS else None


def stdout_console() -> Console:
    """The console for standard output: ``COLUMNS`` when usable (see :func:`columns`), else the terminal's
    width, or ``PIPE_WIDTH`` for a pipe or file.  rich itself never sees an unusable COLUMNS."""
    environ = dict(os.environ)
    environ.pop("COLUMNS", None)
    width = columns()
    console = Console(width=width, _environ=environ)
    return console if console.is_terminal or width is not None else Console(width=PIPE_WIDTH, _environ=environ)


def _plain(c: Cell) -> str:
    return c.text + (f" {TAG[c.status]}" if c.tagged else "")


def _pieces(text: str, label: bool) -> list[str]:
    return (_LABEL_PIECES if label else _WORDS).findall(text) or [""]


def _break(text: str, width: int) -> str:
    """``text`` as lines of at most ``width`` cells, broken only between label pieces."""
    lines, line = [], ""
    for piece in _pieces(text, label=True):
        if line and cell_len((line + piece).rstrip()) > width:
            lines.append(line.rstrip())
            line = piece.lstrip()
        else:
            line += piece
    lines.append(line.rstrip())
    return "\n".join(lines)


def _measure(table: Table) -> tuple[list[int], list[int]]:
    """Per column: the narrowest width that breaks no piece, and the width it would like."""
    narrowest, natural = [], []
    for i, header in enumerate(table.headers):
        label = i in table.labels
        texts = [header] + [_plain(row[i]) for row in table.rows]
        low = max(cell_len(p.strip()) for text in texts for p in _pieces(text, label))
        high = max(cell_len(text) for text in texts)
        narrowest.append(low)
        natural.append(high)
    return narrowest, natural


def _overhead(columns: int, compact: bool) -> int:
    """Rich's box: a border between and around columns, and (unless compact) one space of padding each side."""
    return (1 if compact else 3) * columns + 1


def _shrink(natural: list[int], narrowest: list[int], available: int) -> list[int]:
    """Narrow the widest columns first, never below their narrowest width."""
    widths = list(natural)
    excess = sum(widths) - available
    while excess > 0:
        candidates = [k for k in range(len(widths)) if widths[k] > narrowest[k]]
        if not candidates:
            break
        widest = max(candidates, key=lambda k: widths[k])
        widths[widest] -= 1
        excess -= 1
    return widths


def layout(table: Table, width: int) -> tuple[bool, list[tuple[list[int], list[int]]]]:
    """How ``table`` fits ``width`` cells: (compact, parts), each part (column indices, column widths).

    Compact (no cell padding) only when the labels and one value column do not fit otherwise.
    """
    narrowest, natural = _measure(table)
    n = len(table.headers)
    labels = [i for i in range(n) if i in table.labels]
    data = [i for i in range(n) if i not in table.labels]

    def cost(columns: list[int], compact: bool) -> int:
        return sum(narrowest[i] for i in columns) + _overhead(len(columns), compact)

    compact = any(cost(labels + [i], False) > width for i in data)
    parts: list[list[int]] = []
    current: list[int] = []
    for i in data:
        if current and cost(labels + current + [i], compact) > width:
            parts.append(current)
            current = []
        current.append(i)
    parts.append(current)
    out = []
    for part in parts:
        columns = sorted(labels + part)
        out.append((columns, _shrink([natural[i] for i in columns], [narrowest[i] for i in columns],
                                     width - _overhead(len(columns), compact))))
    return compact, out


def _cell(c: Cell, label_width: int | None) -> str:
    text = _plain(c) if label_width is None else _break(_plain(c), label_width)
    return f"[{STYLE[c.status]}]{escape(text)}[/]" if c.status else escape(text)


@dataclass
class _Part:
    """One rich table of a (possibly split) :class:`Table`: its columns, their widths, its cells."""

    title: str
    caption: str | None
    compact: bool
    headers: list[str]
    widths: list[int]
    labels: list[bool]
    rows: list[list[Cell]]
    section_ends: list[bool]

    def text(self, r: int, k: int) -> str:
        c = self.rows[r][k]
        return _plain(c) if not self.labels[k] else _break(_plain(c), self.widths[k])


def _parts(table: Table, width: int) -> list[_Part]:
    tagged = any(c.tagged for row in table.rows for c in row)
    black = any(c.status in ("inf", "error") for row in table.rows for c in row)
    caption = " · ".join(x for x in (table.caption, LEGEND if tagged else "", BLACK_BOX_LEGEND if tagged and black
                                     else "") if x)
    compact, parts = layout(table, width)
    ends = [tagged and r + 1 < len(table.rows) and table.rows[r + 1][0].text != "" for r in range(len(table.rows))]
    return [_Part(table.title if number == 0 else f"{table.title} (continued)",
                  (caption or None) if number == len(parts) - 1 else None, compact,
                  [table.headers[i] for i in columns], widths, [i in table.labels for i in columns],
                  [[row[i] for i in columns] for row in table.rows], ends)
            for number, (columns, widths) in enumerate(parts)]


def _rich_table(part: _Part):
    from rich.table import Table as RichTable  # not imported when every table is drawn as plain text

    t = RichTable(title=escape(part.title), caption=None if part.caption is None else escape(part.caption),
                  title_justify="left", caption_justify="left", padding=(0, 0) if part.compact else (0, 1))
    for header, w, label in zip(part.headers, part.widths, part.labels):
        t.add_column(escape(header), width=w, no_wrap=label)
    for r, row in enumerate(part.rows):
        t.add_row(*(f"[{STYLE[c.status]}]{escape(part.text(r, k))}[/]" if c.status else escape(part.text(r, k))
                    for k, c in enumerate(row)), end_section=part.section_ends[r])
    return t


def _plain_text(console: Console, part: _Part) -> str | None:
    """The characters rich prints for ``part`` on a console without colours (a pipe, a file), drawn
    here at a fraction of the cost: every cell on its own lines, no wrapping, rich's own box,
    title and caption.  None where rich might draw it otherwise (a cell that would wrap, text
    rich would transform: emoji codes, control characters), or on a console with colours."""
    if console.color_system is not None:
        return None
    pad = 0 if part.compact else 1
    widths = [w + 2 * pad for w in part.widths]
    table_width = sum(widths) + len(widths) + 1
    if table_width > console.width:
        return None
    cells = [[c.split("\n") for c in (*part.headers,)]] + [
        [part.text(r, k).split("\n") for k in range(len(part.widths))] for r in range(len(part.rows))]
    for row in cells:
        for lines, w in zip(row, part.widths):
            for line in lines:
                if cell_len(line) > w or not line.isprintable() or line.count(":") > 1:
                    return None
    if any(len(lines) > 1 for lines in cells[0]):
        return None
    box = HEAVY_HEAD.substitute(console.options, safe=console.safe_box)
    options = console.options.update(width=table_width, highlight=False, height=None, justify="left")
    out = []
    for annotation, style in ((part.title, "table.title"), (None, None), (part.caption, "table.caption")):
        if style is None:
            out.append(_plain_box(box, widths, part, cells, pad))
        elif annotation:
            text = console.render_str(escape(annotation), style=style, highlight=False)
            out.append("".join(segment.text for segment in console.render(text, options)))
    return "".join(out)


def _plain_box(box, widths: list[int], part: _Part, cells: list[list[list[str]]], pad: int) -> str:
    """The table's box and cells, as rich's Table draws them (vertical alignment top, header bottom)."""
    space = " " * pad
    lines = [box.get_top(widths)]
    for r, row in enumerate(cells):
        first, last = r == 0, r == len(cells) - 1
        left, right, divider = ((box.head_left, box.head_right, box.head_vertical) if first else
                                (box.foot_left, box.foot_right, box.foot_vertical) if last else
                                (box.mid_left, box.mid_right, box.mid_vertical))
        height = max(len(c) for c in row)
        for n in range(height):
            lines.append(left + divider.join(
                space + (c[n] if n < len(c) else "") + " " * (w - cell_len(c[n] if n < len(c) else "")) + space
                for c, w in zip(row, part.widths)) + right)
        if first:
            lines.append(box.get_row(widths, "head", edge=True))
        elif not last and part.section_ends[r - 1]:
            lines.append(box.get_row(widths, "row", edge=True))
    lines.append(box.get_bottom(widths))
    return "\n".join(lines) + "\n"


def print_table(console: Console, table: Table) -> None:
    for part in _parts(table, console.width):
        text = _plain_text(console, part)
        if text is None:
            console.print(_rich_table(part))
        else:
            console.print(Segments([Segment(text)]))  # verbatim: no markup, highlighting or wrapping to undo


def print_sections(console: Console, sections: list[Section]) -> None:
    highlight = console.color_system is not None  # rich's highlighting is colour only: skip its regexes without
    for s in sections:
        console.rule(f"[bold]{escape(s.heading)}")
        for p in s.paragraphs:
            console.print(escape(p), highlight=highlight)
        for t in s.tables:
            print_table(console, t)
        for b in s.bullets:
            console.print(f"  • {escape(b)}", highlight=highlight)
        for p in s.footer:
            console.print(escape(p), highlight=highlight)
        console.print()
