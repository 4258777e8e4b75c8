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

__all__ = ["EXPERIMENTS", "Experiment", "Family", "Method"]

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (LIKELIHOOD, SOFTMAX_CE, BINARY_CE, EPSILON_CLIP, ACCUMULATION,
                                                       GRADIENT, LINEAR_CE)}
