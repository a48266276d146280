"""Exact cost arithmetic (SPEC section 2): cost is a function of the label counts.

Prices and budgets arrive as floats or strings; they are read as the decimal they print as
(``0.1`` is 1/10, not the nearest binary float), so ``0.3 / 0.1`` is exactly 3. Floats come out.
"""
from __future__ import annotations

import math
from fractions import Fraction
from numbers import Rational

import numpy as np


def to_fraction(x) -> Fraction:
    """Read a price, budget or fraction exactly: ``0.1`` -> ``Fraction(1, 10)``.

    Raises ValueError for non-finite or non-numeric input.
    """
    if isinstance(x, Fraction):
        return x
    if isinstance(x, (bool, np.bool_)):
        raise ValueError(f"expected a number, got the boolean {x!r}")
    if isinstance(x, (int, np.integer, Rational)):
        return Fraction(int(x)) if isinstance(x, np.integer) else Fraction(x)
    if isinstance(x, (float, np.floating)):
        if not math.isfinite(float(x)):
            raise ValueError(f"expected a finite number, got {x!r}")
        # repr() gives the shortest decimal that round-trips, i.e. what was written.
        return Fraction(repr(float(x)))
    if isinstance(x, str):
        try:
            return Fraction(x.strip())
        except (ValueError, ZeroDivisionError) as e:
            raise ValueError(f"cannot read {x!r} as a number") from e
    raise ValueError(f"expected a number, got {type(x).__name__} {x!r}")


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
    """Labels a grid point buys (SPEC section 2), as ``(n_weak, n_oracle)``.

    ``n_oracle = floor(f B / p_oracle)``, ``n_weak = floor((B - n_oracle p_oracle) / p_weak)``.
    """
    b, f = to_fraction(budget), to_fraction(oracle_fraction)
    po, pw = to_fraction(oracle_price), to_fraction(weak_price)
    if po <= 0 or pw <= 0:
        raise ValueError(f"prices must be positive, got oracle={oracle_price} weak={weak_price}")
    if not 0 <= f <= 1:
        raise ValueError(f"oracle_fraction must be in [0, 1], got {oracle_fraction}")
    n_oracle = math.floor(f * b / po)
    n_weak = math.floor((b - n_oracle * po) / pw)
    return n_weak, n_oracle
