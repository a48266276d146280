"""Exact cost arithmetic (docs/design.md#cost-model): cost is a function of the label counts.

Prices and budgets arrive as floats or strings; they are read as the decimal they print as
(``0.1`` is 1/10, not the nearest binary float), so ``0.3 / 0.1`` is exactly 3, by the sweep's
own reader (``to_fraction`` is :func:`scalable_elicitation.budget.exact`). Floats come out.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from scalable_elicitation.budget import Prices, labels_for
from scalable_elicitation.budget import exact as to_fraction  # read 0.1 as 1/10, exactly


def exact_cost(n_weak: int, n_oracle: int, oracle_price, weak_price) -> Fraction:
    """Exact cost of buying ``n_weak`` weak and ``n_oracle`` oracle labels."""
    return int(n_oracle) * to_fraction(oracle_price) + int(n_weak) * to_fraction(weak_price)


def cost(n_weak: int, n_oracle: int, oracle_price, weak_price) -> float:
    """Cost as a float, computed exactly and rounded once."""
    return float(exact_cost(n_weak, n_oracle, oracle_price, weak_price))


def costs(n_weak, n_oracle, oracle_price, weak_price) -> np.ndarray:
    """Vectorised :func:`cost` over arrays of counts (one price pair)."""
    po, pw = to_fraction(oracle_price), to_fraction(weak_price)
    return np.array([float(int(o) * po + int(w) * pw) for w, o in zip(n_weak, n_oracle)],
                    dtype=float)


def affordable(n_weak, n_oracle, oracle_price, weak_price, budget) -> np.ndarray:
    """Boolean mask: which (n_weak, n_oracle) pairs cost at most ``budget``, compared exactly."""
    po, pw, b = to_fraction(oracle_price), to_fraction(weak_price), to_fraction(budget)
    return np.array([int(o) * po + int(w) * pw <= b for w, o in zip(n_weak, n_oracle)], dtype=bool)


def oracle_spend_fraction(n_weak: int, n_oracle: int, oracle_price, weak_price) -> float:
    """Share of the money spent on oracle labels (NaN when nothing was bought)."""
    total = exact_cost(n_weak, n_oracle, oracle_price, weak_price)
    if total == 0:
        return float("nan")
    return float(int(n_oracle) * to_fraction(oracle_price) / total)


def grid_counts(budget, oracle_fraction, oracle_price, weak_price) -> tuple[int, int]:
    """Labels a grid point buys (docs/design.md#cost-model), as ``(n_weak, n_oracle)``: the
    sweep's own rule, :func:`scalable_elicitation.budget.labels_for`."""
    point = labels_for(budget, oracle_fraction, Prices.of(oracle_price, weak_price))
    return point.n_weak, point.n_oracle
