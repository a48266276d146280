"""Cost model (docs/design.md#cost-model), in exact arithmetic.

Prices are normalised so one oracle label costs 1. A grid point (budget B, oracle spending
fraction f) buys n_oracle = floor(f B / p_oracle) oracle labels and spends the rest on weak ones:
n_weak = floor((B - n_oracle p_oracle) / p_weak). Floats would floor 0.3 / 0.1 to 2, so every
number passes through `fractions.Fraction` from its decimal string.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from fractions import Fraction


def exact(x) -> Fraction:
    """A Fraction from an int, a Fraction, a decimal string or a float (read as its shortest
    decimal repr, so 0.1 means 1/10); NumPy scalars as their Python kind."""
    if isinstance(x, Fraction):
        return x
    if isinstance(x, bool) or type(x).__name__ == "bool_":
        raise ValueError(f"price or budget {x!r} is not a number")
    if isinstance(x, numbers.Integral):
        return Fraction(int(x))
    if isinstance(x, numbers.Rational):
        return Fraction(x.numerator, x.denominator)
    if isinstance(x, numbers.Real):
        x = float(x)
        if not math.isfinite(x):
            raise ValueError(f"price or budget {x!r} is not finite")
        return Fraction(repr(x))
    if isinstance(x, str):
        try:
            return Fraction(x.strip())
        except ValueError:
            raise ValueError(f"{x!r} is not a number (use e.g. '0.1' or '1/10')") from None
    raise ValueError(f"{x!r} of type {type(x).__name__} is not a number")


@dataclasses.dataclass(frozen=True)
class Prices:
    oracle: Fraction
    weak: Fraction

    @classmethod
    def of(cls, oracle, weak) -> "Prices":
        o, w = exact(oracle), exact(weak)
        if o <= 0 or w <= 0:
            raise ValueError(f"prices must be positive, got oracle={oracle}, weak={weak}")
        return cls(o, w)

    def cost(self, n_oracle: int, n_weak: int) -> Fraction:
        return n_oracle * self.oracle + n_weak * self.weak


@dataclasses.dataclass(frozen=True)
class GridPoint:
    budget: Fraction
    fraction: Fraction
    n_oracle: int
    n_weak: int


def labels_for(budget, fraction, prices: Prices) -> GridPoint:
    """The labels a grid point buys. Total cost never exceeds the budget."""
    b, f = exact(budget), exact(fraction)
    if b < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if not 0 <= f <= 1:
        raise ValueError(f"oracle fraction must be in [0, 1], got {fraction}")
    n_oracle = math.floor(f * b / prices.oracle)
    n_weak = math.floor((b - n_oracle * prices.oracle) / prices.weak)
    assert prices.cost(n_oracle, n_weak) <= b  # invariant of the floors above
    return GridPoint(b, f, n_oracle, n_weak)


def study_seeds(n_seeds: int = 3, n_seeds_small: int = 7, small: int = 10):
    """The study's seed rule as a `seeds_for` function."""
    def seeds_for(n_weak: int, n_oracle: int) -> range:
        sizes = [n for n in (n_weak, n_oracle) if n > 0]
        return range(n_seeds_small if sizes and min(sizes) <= small else n_seeds)
    return seeds_for
