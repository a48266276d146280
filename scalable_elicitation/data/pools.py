"""Weak and oracle pools (docs/design.md#pools, common random numbers).

For each (task, seed), one seeded permutation of the training split, minus the weak labeller's
own training examples, is cut into a weak pool and a disjoint oracle pool. The cut is stratified
by class and the larger class is undersampled, so each pool is balanced as a whole; each pool is
then put in its own seeded random order, so its first n examples are a uniform random sample of
it (the class mix of a prefix is hypergeometric, close to binomial). A run takes prefixes, so a
bigger budget's labels contain a smaller one's, and all methods at one seed see the same labels.

(Keeping the permutation's order after a rank-by-class cut is not enough: the oracle pool then
starts with whichever class finishes its weak quota first, and seed 0's first 28 oracle tweets
were all positive.)
"""
from __future__ import annotations

import dataclasses

import numpy as np

from scalable_elicitation.data.split import Split

SOURCES = ("weak", "oracle")
_POOL_ORDER_SALT = 0x706F6F6C  # the pools' own order stream, apart from the cut's permutation


class PoolExhaustedError(ValueError):
    """A run asked for more examples than a pool holds; a sweep records it as `infeasible`."""

    def __init__(self, source: str, requested: int, available: int):
        self.source, self.requested, self.available = source, requested, available
        super().__init__(f"the {source} pool holds {available} examples; {requested} requested")

    def __reduce__(self):  # picklable across processes
        return type(self), (self.source, self.requested, self.available)


@dataclasses.dataclass
class Pools:
    """Disjoint weak and oracle pools of one (task, seed)."""
    weak: Split
    oracle: Split
    seed: int
    info: dict = dataclasses.field(default_factory=dict)

    def _pool(self, source: str) -> Split:
        if source not in SOURCES:
            raise ValueError(f"unknown label source {source!r}; allowed: {SOURCES}")
        return self.weak if source == "weak" else self.oracle

    def size(self, source: str) -> int:
        """Number of examples in the `source` pool."""
        return len(self._pool(source))

    def take(self, source: str, n: int) -> Split:
        """The first n examples of the `source` pool; PoolExhaustedError if it holds fewer."""
        pool = self._pool(source)
        if n < 0:
            raise ValueError(f"cannot take {n} examples from the {source} pool")
        if n > len(pool):
            raise PoolExhaustedError(source, n, len(pool))
        return pool.take(np.arange(n))


def make_pools(train: Split, *, seed: int, exclude_ids=(), oracle_share: float = 0.5) -> Pools:
    """Cuts one seeded permutation of `train` minus `exclude_ids` into weak and oracle pools.

    Each class contributes the same number of examples to a pool, `floor((1 - oracle_share) * m)`
    to the weak pool and the rest of its first `m` to the oracle pool, m the smaller class's
    count, so both pools are balanced; each pool is then shuffled (seeded), so its prefixes are
    uniform random samples of it.
    """
    if not 0.0 <= oracle_share <= 1.0:
        raise ValueError(f"oracle_share must be in [0, 1], got {oracle_share}")
    excluded = np.isin(train["id"], np.asarray(list(exclude_ids), dtype=train["id"].dtype))
    candidates = np.flatnonzero(~excluded)
    order = candidates[np.random.default_rng(seed).permutation(len(candidates))]
    labels = train["label"][order]
    m = min(int(np.sum(labels == 0)), int(np.sum(labels == 1)))
    n_weak_per_class = int(np.floor((1.0 - oracle_share) * m + 1e-9))
    rank = np.zeros(len(order), dtype=np.int64)
    for c in (0, 1):
        members = labels == c
        rank[members] = np.arange(int(members.sum()))
    order_rng = np.random.default_rng([seed, _POOL_ORDER_SALT])
    weak = order_rng.permutation(order[rank < n_weak_per_class])
    oracle = order_rng.permutation(order[(rank >= n_weak_per_class) & (rank < m)])
    info = {"n_excluded": int(excluded.sum()), "n_unused": int(len(order) - 2 * m),
            "oracle_share": oracle_share}
    return Pools(train.take(weak), train.take(oracle), seed, info)
