"""The package's shape, checked: the floors contract (import-linter), no import cycle, a small public surface."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import stabilitylab

ROOT = Path(__file__).resolve().parent.parent
grimp = pytest.importorskip("grimp", reason="the architecture checks need import-linter (the test extra)")


def _lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(package_parent))
    linter = Path(sys.executable).with_name("lint-imports")
    command = [str(linter)] if linter.exists() else [sys.executable, "-m", "importlinter.cli"]
    return subprocess.run([*command, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=package_parent,
                          env=env, capture_output=True, text=True, timeout=300)


def test_floors_contract_is_kept():
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_floors_contract_fails_on_an_upward_import(tmp_path):
    copy = tmp_path / "stabilitylab"
    shutil.copytree(ROOT / "stabilitylab", copy, ignore=shutil.ignore_patterns("__pycache__"))
    formats = copy / "numerics" / "formats.py"
    upward = "\n\ndef _upward():\n    from ..cli import main  # a function-level import counts\n"
    formats.write_text(formats.read_text() + upward)
    done = _lint_imports(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "stabilitylab.numerics is not allowed to import stabilitylab.cli" in done.stdout
    assert "stabilitylab.numerics.formats -> stabilitylab.cli" in done.stdout


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
    return out


def test_no_import_cycle_between_modules():
    """Every import counts (module level and inside functions), except a package's ``__init__`` naming its own
    children, which is how a package lists what it holds."""
    graph = grimp.build_graph("stabilitylab", cache_dir=None)
    for module in list(graph.modules):
        for child in graph.find_children(module):
            if graph.direct_import_exists(importer=module, imported=child):
                graph.remove_import(importer=module, imported=child)
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for name in ("a", "b", "c", "d"):
        graph.add_module(name)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    graph.add_import(importer="c", imported="a")
    graph.add_import(importer="c", imported="d")
    assert _cycles(graph) == [["a", "b", "c"]]


def test_public_surface():
    assert stabilitylab.__version__ == "0.1.0"
    assert set(stabilitylab.__all__) >= {"audit", "compare", "thresholds", "AuditError", "InputError"}
    for name in stabilitylab.__all__:
        assert getattr(stabilitylab, name) is not None
    with pytest.raises(AttributeError):
        stabilitylab.no_such_name  # noqa: B018
