"""Floor 4, analysis: running experiments and judging their results.

``outcome`` (the one status rule and severity order), ``engine`` (methods x formats x cases),
``streaming`` (the bulk path over user rows), ``findings`` (plain-English sentences) and
``thresholds`` (exact first failures, proven with interval arithmetic)."""
