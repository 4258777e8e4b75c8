"""The plain-text table drawing (consoles without colours) prints exactly what rich prints."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from stabilitylab.analysis.engine import compare
from stabilitylab.experiments import EXPERIMENTS
from stabilitylab.numerics.formats import ALL_FORMATS, DEFAULT_FORMATS
from stabilitylab.render import table as render_table
from stabilitylab.render.model import Cell, Table, compare_sections, formats_table


@pytest.fixture(scope="module")
def tables() -> list[Table]:
    comparison = compare(list(EXPERIMENTS.values()), DEFAULT_FORMATS)
    odd = Table("odd: cells rich would transform or wrap :smile: [bold]x[/]",
                ["case", "method", "float16"],
                [[Cell("emoji :thumbs_up: here"), Cell("a"), Cell("1 ok", "ok", tagged=True)],
                 [Cell("wide 数字 cells"), Cell("b"), Cell("[red]not markup[/]", "inaccurate", tagged=True)],
                 [Cell(""), Cell("tab\there"), Cell("a very long value cell that has to wrap somewhere")]],
                "a caption [with] brackets", labels=(0, 1))
    return [t for s in compare_sections(comparison) for t in s.tables] + [formats_table(list(ALL_FORMATS)), odd]


def _printed(width: int, tables: list[Table], fast: bool) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None)
    for t in tables:
        if fast:
            render_table.print_table(console, t)
        else:
            for part in render_table._parts(t, console.width):
                console.print(render_table._rich_table(part))
    return console.file.getvalue()


@pytest.mark.parametrize("width", [24, 40, 60, 80, 100, 160, 240])
def test_plain_tables_are_what_rich_prints(width, tables):
    assert _printed(width, tables, fast=True) == _printed(width, tables, fast=False)


def test_plain_tables_are_drawn_without_rich_for_the_default_compare(tables):
    console = Console(width=160, file=io.StringIO(), color_system=None)
    drawn = [render_table._plain_text(console, part) for t in tables[:-2] for part in render_table._parts(t, 160)]
    assert all(text is not None for text in drawn)  # the compare tables: their cells fit on one line
    assert render_table._plain_text(console, render_table._parts(tables[-1], 160)[0]) is None  # left to rich


def test_a_console_with_colours_is_left_to_rich(tables):
    console = Console(width=160, file=io.StringIO(), color_system="truecolor", force_terminal=True)
    assert render_table._plain_text(console, render_table._parts(tables[0], 160)[0]) is None
