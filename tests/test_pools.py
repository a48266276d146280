"""Property tests of the weak and oracle pools."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalable_elicitation.data import PoolExhaustedError, Split, make_pools


def make_split(n_pos: int, n_neg: int) -> Split:
    texts = [f"pos {i}" for i in range(n_pos)] + [f"neg {i}" for i in range(n_neg)]
    return Split.from_texts(texts, [1] * n_pos + [0] * n_neg)


splits = st.builds(make_split, st.integers(2, 60), st.integers(2, 60))
seeds = st.integers(0, 2**31 - 1)
shares = st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0])


@settings(max_examples=60, deadline=None)
@given(splits, seeds, shares, st.data())
def test_pools_disjoint_balanced_unique(train, seed, share, data):
    exclude = data.draw(st.lists(st.sampled_from(list(train["id"])), max_size=5))
    pools = make_pools(train, seed=seed, exclude_ids=exclude, oracle_share=share)
    weak, oracle = set(pools.weak["id"]), set(pools.oracle["id"])
    assert not weak & oracle
    assert not (weak | oracle) & set(exclude)
    assert len(weak) == len(pools.weak) and len(oracle) == len(pools.oracle)  # ids unique
    for pool in (pools.weak, pools.oracle):
        assert abs(int(np.sum(pool["label"] == 1)) - int(np.sum(pool["label"] == 0))) <= 1
    # nothing usable is wasted beyond undersampling the larger class
    remaining = train.take(~np.isin(train["id"], exclude))
    m = min(np.sum(remaining["label"] == 0), np.sum(remaining["label"] == 1))
    assert len(pools.weak) + len(pools.oracle) == 2 * m


@settings(max_examples=40, deadline=None)
@given(splits, seeds)
def test_pools_deterministic_for_a_seed(train, seed):
    a, b = make_pools(train, seed=seed), make_pools(train, seed=seed)
    assert list(a.weak["id"]) == list(b.weak["id"])
    assert list(a.oracle["id"]) == list(b.oracle["id"])


@settings(max_examples=40, deadline=None)
@given(st.builds(make_split, st.integers(20, 60), st.integers(20, 60)), seeds)
def test_pools_differ_across_seeds(train, seed):
    a, b = make_pools(train, seed=seed), make_pools(train, seed=seed + 1)
    assert list(a.weak["id"]) != list(b.weak["id"])


def test_take_prefix_and_exhaustion():
    pools = make_pools(make_split(10, 10), seed=0)
    assert pools.size("weak") == pools.size("oracle") == 10
    small, big = pools.take("weak", 3), pools.take("weak", 7)
    assert list(big["id"][:3]) == list(small["id"])  # a bigger budget's labels contain a smaller's
    with pytest.raises(PoolExhaustedError, match="oracle pool holds 10 examples; 11 requested") as e:
        pools.take("oracle", 11)
    assert (e.value.source, e.value.requested, e.value.available) == ("oracle", 11, 10)
    with pytest.raises(ValueError, match="unknown label source 'crowd'"):
        pools.take("crowd", 1)
    with pytest.raises(ValueError, match="oracle_share must be in"):
        make_pools(make_split(2, 2), seed=0, oracle_share=1.5)
