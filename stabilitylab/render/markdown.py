"""GitHub-flavoured markdown rendering of the document model."""

from __future__ import annotations

from .model import Section, Table

__all__ = ["table_md", "sections_md"]


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _cell(c) -> str:
    if c.tagged and c.status != "ok":
        return f"{_escape(c.text)} **{c.status}**"
    if c.tagged:
        return f"{_escape(c.text)} ok"
    return _escape(c.text)


def table_md(table: Table, level: int = 3) -> str:
    lines = [f"{'#' * level} {table.title}", ""]
    lines.append("| " + " | ".join(_escape(h) for h in table.headers) + " |")
    lines.append("|" + "|".join("---" for _ in table.headers) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    if table.caption:
        lines += ["", f"_{table.caption}_"]
    return "\n".join(lines) + "\n"


def sections_md(sections: list[Section], level: int = 2) -> str:
    out = []
    for s in sections:
        out.append(f"{'#' * level} {s.heading}\n")
        out += [p + "\n" for p in s.paragraphs]
        out += [table_md(t, level + 1) for t in s.tables]
        if s.bullets:
            out.append("\n".join(f"- {b}" for b in s.bullets) + "\n")
        out += [p + "\n" for p in s.footer]
    return "\n".join(out)
