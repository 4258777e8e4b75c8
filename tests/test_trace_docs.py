"""The trace reference page's catalogue table is the catalogue's own (generated, not typed)."""

from pathlib import Path

from stabilitylab.io import schemas
from stabilitylab.tracing import catalogue

PAGE = Path(__file__).resolve().parent.parent / "docs" / "reference" / "trace.md"


def test_catalogue_table_is_generated_from_the_data():
    text = PAGE.read_text(encoding="utf-8")
    generated = text.split("<!-- generated: stabilitylab.tracing.catalogue.table_markdown() -->\n")[1]
    assert generated.split("<!-- end generated -->")[0] == catalogue.table_markdown()


def test_every_catalogue_entry_has_a_rewrite_and_an_honest_command():
    keys = [e.key for e in catalogue.CATALOGUE]
    assert len(set(keys)) == len(keys)
    for e in catalogue.CATALOGUE:
        assert e.rewrite and e.why
        assert (e.experiment is None) or (e.command and f"-e {e.experiment}" in e.command)


def test_the_schema_is_in_the_table():
    assert schemas.TRACE == "stabilitylab.trace/1" and schemas.TRACE in schemas.SCHEMAS
