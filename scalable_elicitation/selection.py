"""Which oracle labels to buy (docs/design.md#entropy-selection): the pool's first ones (`random`:
the pools are in seeded random order) or, with `oracle_selection: entropy`, those the weak-trained
model is least sure of (uncertainty sampling). NumPy only; the runner scores the pool."""
from __future__ import annotations

import numpy as np

from scalable_elicitation.data import Split

KINDS = ("random", "entropy")


def identity(config) -> dict:
    """The selection's config values that identify a run (part of the run id)."""
    out = {"oracle_selection": config.oracle_selection}
    if config.oracle_selection == "entropy":
        out["selection_temperature"] = config.selection_temperature
    return out


def candidates(pool: Split, exclude) -> Split:
    """The oracle pool without the examples in `exclude` (the run's shots)."""
    return pool.take(~np.isin(pool["id"], np.asarray(list(exclude), dtype=pool["id"].dtype)))


def binary_entropy(scores: np.ndarray) -> np.ndarray:
    """Predictive entropy H(p) (nats) of p = sigmoid(score), score = logit difference."""
    p = 1.0 / (1.0 + np.exp(-np.asarray(scores, np.float64)))
    return -(p * np.log(np.clip(p, 1e-300, 1)) + (1 - p) * np.log(np.clip(1 - p, 1e-300, 1)))


def entropy_select(scores, n: int, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of n examples: the highest entropy (temperature 0, ties by position), or a
    sample without replacement with probability proportional to H^(1/T) (Gumbel top-k)."""
    h = binary_entropy(scores)
    if temperature == 0:
        return np.argsort(-h, kind="stable")[:n]
    gumbel = -np.log(-np.log(rng.random(len(h))))
    keys = np.log(np.maximum(h, 1e-300)) / temperature + gumbel
    return np.argsort(-keys, kind="stable")[:n]
