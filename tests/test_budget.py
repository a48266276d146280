"""Cost model: exact arithmetic, nesting, merging of equal purchases."""
from fractions import Fraction

import pytest
from hypothesis import given, strategies as st

from scalable_elicitation import budget as B


def test_exact_reads_decimals_as_written():
    assert B.exact(0.1) == Fraction(1, 10)
    assert B.exact("0.3") / B.exact("0.1") == 3  # floats would floor 0.3 / 0.1 to 2
    with pytest.raises(ValueError, match="not a number"):
        B.exact("abc")


def test_labels_for_matches_spec_examples():
    prices = B.Prices.of(1, "0.1")
    p = B.labels_for(8, "0.05", prices)
    assert (p.n_oracle, p.n_weak) == (0, 80)  # same purchase as f=0
    p = B.labels_for(3, "0.1", B.Prices.of(1, "0.1"))
    assert (p.n_oracle, p.n_weak) == (0, 30)
    p = B.labels_for("0.3", 0, prices)
    assert p.n_weak == 3


@given(budget=st.integers(0, 10_000), f=st.fractions(0, 1),
       weak_den=st.sampled_from([2, 10, 100, 3, 7]))
def test_cost_never_exceeds_budget_and_is_tight(budget, f, weak_den):
    prices = B.Prices.of(1, Fraction(1, weak_den))
    p = B.labels_for(budget, f, prices)
    cost = prices.cost(p.n_oracle, p.n_weak)
    assert cost <= budget
    assert budget - cost < prices.weak  # nothing affordable is left unspent


def test_bad_prices_and_fractions_fail_clearly():
    with pytest.raises(ValueError, match="positive"):
        B.Prices.of(1, 0)
    with pytest.raises(ValueError, match=r"oracle fraction must be in \[0, 1\]"):
        B.labels_for(8, 2, B.Prices.of(1, "0.1"))


def test_study_seed_rule():
    rule = B.study_seeds()
    assert len(rule(80, 0)) == 3
    assert len(rule(40, 4)) == 7  # the smaller non-empty stage has <= 10 labels
    assert len(rule(0, 10)) == 7
