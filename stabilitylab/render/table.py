"""Rich terminal rendering of the document model.

Tables are fitted to the console here rather than left to rich, whose narrowing
folds cells anywhere (``p=0.999,n=1`` / ``000000000``).  Each column gets at
least the width of its longest unbreakable piece: a word of a value cell, or a
piece of a label cut after a comma, slash or space.  When even those widths do
not fit, the format columns are split over several tables, each repeating the
label columns.  So no number and no name is ever broken.
"""

from __future__ import annotations

import re

from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from .model import Cell, Section, Table

__all__ = ["STYLE", "print_sections", "print_table", "layout"]

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


def _rich_tables(table: Table, width: int) -> list[RichTable]:
    tagged = any(c.tagged for row in table.rows for c in row)
    black = any(c.status in ("inf", "error") for row in table.rows for c in row)
    caption = " · ".join(x for x in (table.caption, LEGEND if tagged else "", BLACK_BOX_LEGEND if tagged and black
                                     else "") if x)
    compact, parts = layout(table, width)
    out = []
    for number, (columns, widths) in enumerate(parts):
        title = table.title if number == 0 else f"{table.title} (continued)"
        last = number == len(parts) - 1
        t = RichTable(title=escape(title), caption=(escape(caption) or None) if last else None,
                      title_justify="left", caption_justify="left", padding=(0, 0) if compact else (0, 1))
        for i, w in zip(columns, widths):
            t.add_column(escape(table.headers[i]), width=w, no_wrap=i in table.labels)
        for r, row in enumerate(table.rows):
            group_ends = r + 1 < len(table.rows) and table.rows[r + 1][0].text != ""
            t.add_row(*(_cell(row[i], w if i in table.labels else None) for i, w in zip(columns, widths)),
                      end_section=group_ends and tagged)
        out.append(t)
    return out


def print_table(console: Console, table: Table) -> None:
    for t in _rich_tables(table, console.width):
        console.print(t)


def print_sections(console: Console, sections: list[Section]) -> None:
    for s in sections:
        console.rule(f"[bold]{escape(s.heading)}")
        for p in s.paragraphs:
            console.print(escape(p))
        for t in s.tables:
            print_table(console, t)
        for b in s.bullets:
            console.print(f"  • {escape(b)}")
        console.print()
