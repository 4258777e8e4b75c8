"""Floor 7, guarding numeric behaviour in CI: baseline files (format, validation, tolerance) and
their recomputation (``baseline``).  The pytest entry points are :mod:`stabilitylab.testing` and
:mod:`stabilitylab.pytest_plugin`."""
