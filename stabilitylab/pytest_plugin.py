"""pytest plugin (entry point ``pytest11``): the ``stability_baseline`` fixture.

Options: ``--stability-update`` rewrites the checked entries; the ini value
``stability_baseline`` names the file (default ``stability-baseline.json`` in
the rootdir); ``stability_allow_targets`` (patterns, one a line) the user targets of audit entries that
may run.  See :mod:`stabilitylab.testing` for the tolerance rule.
"""

from __future__ import annotations

import pytest

from .testing import StabilityBaseline


def pytest_addoption(parser):
    group = parser.getgroup("stabilitylab")
    group.addoption("--stability-update", action="store_true", default=False,
                    help="Recompute the stability thresholds that tests check and write them to the baseline.")
    parser.addini("stability_baseline", default="stability-baseline.json",
                  help="Baseline file for the stability_baseline fixture (relative to the rootdir).")
    parser.addini("stability_allow_targets", type="linelist", default=[],
                  help="fnmatch patterns of the user targets (module:function, file.py:function) whose audit "
                       "entries may run; without them a baseline never runs user code.")


@pytest.fixture(scope="session")
def _stability_session(request):
    config = request.config
    store = StabilityBaseline(config.rootpath / config.getini("stability_baseline"),
                              update=config.getoption("stability_update"),
                              allow_targets=config.getini("stability_allow_targets"))
    yield store
    store.save()


@pytest.fixture
def stability_baseline(_stability_session) -> StabilityBaseline:
    """Check thresholds against the baseline: ``stability_baseline.check("likelihood/iid/product/float32")``."""
    return _stability_session
