"""Marks every test that needs torch with ``torch``, so that CI can run them in a step of their own.

The test extra leaves torch out (a CPU build is a separate install), so the default run skips these tests;
``.ci/run`` then installs the ``torch`` extra and runs ``pytest -m torch``.  A test needs torch when its source
(decorators included) calls ``pytest.importorskip("torch"...)``, a ``_torch()`` fixture helper or the
``needs_torch`` mark, or one of its fixtures does, or when its module skips itself without torch at module level.
"""

from __future__ import annotations

import inspect
import re

import pytest

_IN_TEST = re.compile(r'importorskip\(\s*"torch"|\b_torch\(\)|@needs_torch\b')
_IN_MODULE = re.compile(r'^\S.*importorskip\(\s*"torch"', re.MULTILINE)


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _fixture_sources(item) -> str:
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    return "\n".join(_source(d[-1].func) for name, d in defs.items() if d and name in item.fixturenames)


def pytest_collection_modifyitems(items):
    modules: dict[str, bool] = {}
    for item in items:
        module = getattr(item, "module", None)
        if module is None:
            continue
        if module.__name__ not in modules:
            modules[module.__name__] = bool(_IN_MODULE.search(_source(module)))
        if modules[module.__name__] or _IN_TEST.search(_source(getattr(item, "function", None))) \
                or _IN_TEST.search(_fixture_sources(item)):
            item.add_marker(pytest.mark.torch)
