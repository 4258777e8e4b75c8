"""The registry of experiments; names are a public contract (JSON, baselines)."""

from __future__ import annotations

from .accumulation import ACCUMULATION
from .base import Experiment, Family, Method
from .binary_ce import BINARY_CE
from .epsilon_clip import EPSILON_CLIP
from .gradient import GRADIENT
from .likelihood import LIKELIHOOD
from .linear_ce import LINEAR_CE
from .softmax_ce import SOFTMAX_CE
from .softmax_ce_variants import SOFTMAX_CE_VARIANTS

__all__ = ["EXPERIMENTS", "DEFAULT_EXPERIMENTS", "Experiment", "Family", "Method"]

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (LIKELIHOOD, SOFTMAX_CE, BINARY_CE, EPSILON_CLIP, ACCUMULATION,
                                                       GRADIENT, SOFTMAX_CE_VARIANTS, LINEAR_CE)}
DEFAULT_EXPERIMENTS: tuple[Experiment, ...] = tuple(e for e in EXPERIMENTS.values() if e.default)
"""What runs when no experiment is named (every experiment but those marked ``default=False``: linear_ce)."""
