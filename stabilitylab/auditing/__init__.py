"""Floor 6, auditing real loss code: resolve a target (a built-in adapter, ``module:function``,
``file.py:function`` or a callable), run it on cases and threshold points, say which simulated formula it
resembles, and emit regression tests (``emit``).  Framework adapters live in ``adapters``."""
