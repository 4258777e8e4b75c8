"""The registry of experiments; names are a public contract (JSON, baselines)."""

from __future__ import annotations

from .base import Experiment, Family, Method
from .likelihood import LIKELIHOOD
from .softmax_ce import SOFTMAX_CE

__all__ = ["EXPERIMENTS", "Experiment", "Family", "Method", "get_experiment"]

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (LIKELIHOOD, SOFTMAX_CE)}


def get_experiment(name: str) -> Experiment:
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise KeyError(f"unknown experiment {name!r}; valid: {', '.join(EXPERIMENTS)}") from None
