"""The docs: README.md is a short door with the two contractual commands, relative links point to files that
exist, the formats page holds what ``stabilitylab formats`` prints, and the mkdocs site builds with --strict."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

SETUP = "python3 -m venv .venv && . .venv/bin/activate\npython3 -m pip install . && stabilitylab compare"
TESTS = 'python3 -m pip install -c constraints.txt ".[test]" && python3 -m pytest'

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _first_section(text: str) -> str:
    """From the first ``## `` heading to the next one."""
    start = text.index("\n## ")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def _relative_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))  # links inside code blocks are not links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_readme_first_section_has_exactly_the_two_commands():
    blocks = [b.strip() for b in re.findall(r"^```sh\n(.*?)^```", _first_section(README.read_text(encoding="utf-8")),
                                             re.S | re.M)]
    assert blocks == [SETUP, TESTS]


def test_readme_is_short():
    assert len(README.read_text(encoding="utf-8").splitlines()) < 150


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(page):
    missing = [t for t in _relative_links(page) if not (page.parent / t.split("#")[0]).exists()]
    assert missing == [], f"{page.relative_to(ROOT)} links to missing files: {missing}"


def _slug(heading: str) -> str:
    """mkdocs' default anchor of a heading (Python-Markdown's toc slugify): lower case, punctuation dropped,
    spaces to hyphens."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def test_readme_anchors_exist():
    """mkdocs build --strict checks the anchors between docs pages; this checks the README's."""
    for target in _relative_links(README):
        path, _, anchor = target.partition("#")
        if anchor and path.endswith(".md"):
            text = FENCE.sub("", (README.parent / path).read_text(encoding="utf-8"))
            anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
            assert anchor in anchors, f"README links to {target}, which has no such heading"


def test_readme_links_to_every_docs_page():
    linked = {(README.parent / t.split("#")[0]).resolve() for t in _relative_links(README)}
    pages = {p.resolve() for p in DOCS.rglob("*.md")}
    assert pages - linked == set()


def test_formats_page_is_what_the_command_prints():
    out = subprocess.run([sys.executable, "-m", "stabilitylab", "formats", "--format", "markdown"], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    table = [line for line in out.splitlines() if line.startswith("|")]
    page = (DOCS / "reference" / "formats.md").read_text(encoding="utf-8")
    generated = page.split("<!-- generated: stabilitylab formats --format markdown -->\n")[1].split("\n<!--")[0]
    lines = generated.splitlines()  # the command's tables (facts, encodings), a blank line and a heading between
    assert [line for line in lines if line.startswith("|")] == table, \
        "regenerate docs/reference/formats.md from stabilitylab formats"
    assert all(line.startswith(("|", "#")) or not line for line in lines)


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs build needs mkdocs-material (pip install mkdocs-material)")
    pytest.importorskip("material", reason="the docs build needs mkdocs-material (pip install mkdocs-material)")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").exists()
