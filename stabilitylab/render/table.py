"""Rich terminal rendering of the document model."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable

from .model import Section, Table

__all__ = ["STYLE", "print_sections", "print_table"]

STYLE = {"ok": "green", "inaccurate": "yellow", "overflow": "red", "underflow": "magenta", "nan": "bold red"}
TAG = {"ok": "ok", "inaccurate": "inacc", "overflow": "OVF", "underflow": "UNF", "nan": "NaN"}
LEGEND = "ok · inacc = inaccurate (relative error > tolerance) · OVF = overflow · UNF = underflow · NaN"


def _cell(c) -> str:
    text = escape(c.text) + (f" {TAG[c.status]}" if c.tagged else "")
    return f"[{STYLE[c.status]}]{text}[/]" if c.status else text


def _rich_table(table: Table) -> RichTable:
    tagged = any(c.tagged for row in table.rows for c in row)
    caption = " · ".join(x for x in (table.caption, LEGEND if tagged else "") if x)
    t = RichTable(title=escape(table.title), caption=escape(caption) or None, title_justify="left",
                  caption_justify="left")
    for i, h in enumerate(table.headers):
        t.add_column(escape(h), overflow="fold", max_width=28 if i == 0 else None)
    for i, row in enumerate(table.rows):
        group_ends = i + 1 < len(table.rows) and table.rows[i + 1][0].text != ""
        t.add_row(*(_cell(c) for c in row), end_section=group_ends and tagged)
    return t


def print_table(console: Console, table: Table) -> None:
    console.print(_rich_table(table))


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
