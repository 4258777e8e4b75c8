"""One schema table (io/schemas.py): every schema string is spelled there and only there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from stabilitylab.io import schemas
from stabilitylab.numerics.formats import ALL_FORMATS
from stabilitylab.render import jsonout

PACKAGE = Path(__file__).resolve().parents[1] / "stabilitylab"
SCHEMA = re.compile(r"stabilitylab\.[a-z_]+/[0-9]+")


def test_the_table():
    assert len(set(schemas.SCHEMAS)) == len(schemas.SCHEMAS)
    assert all(SCHEMA.fullmatch(s) for s in schemas.SCHEMAS)
    assert {name for name in schemas.__all__ if name != "SCHEMAS"} == {
        name for name, value in vars(schemas).items() if value in schemas.SCHEMAS}


def test_no_other_module_spells_a_schema():
    spelled = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "schemas.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SCHEMA.fullmatch(node.value):
                spelled.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert spelled == []


def test_writers_use_the_table():
    assert jsonout.formats_document(ALL_FORMATS)["schema"] == schemas.FORMATS
