"""The vectorised AUROC and its bootstrap give exactly what the textbook loops give."""
import numpy as np

from scalable_elicitation.metrics import auroc, bootstrap_auroc


def _auroc_pairs(scores, labels):
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def _bootstrap_loop(scores, labels, n_boot, seed):
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(labels), len(labels))
        if labels[idx].min() != labels[idx].max():
            vals.append(_auroc_pairs(scores[idx], labels[idx]))
    if not vals:
        return (np.nan, np.nan)
    return (np.percentile(vals, 2.5), np.percentile(vals, 97.5))


def test_auroc_and_bootstrap_match_the_loops_with_ties_and_rare_classes():
    rng = np.random.default_rng(0)
    for trial in range(40):
        n = int(rng.integers(2, 300))
        scores = np.round(rng.normal(size=n), trial % 3)  # 0 decimals: many ties
        labels = (rng.uniform(size=n) < rng.uniform(0.01, 0.99)).astype(int)
        if labels.min() != labels.max():
            assert auroc(scores, labels) == _auroc_pairs(scores, labels)
        else:
            assert np.isnan(auroc(scores, labels))
        got = bootstrap_auroc(scores, labels, n_boot=50, seed=trial)
        want = _bootstrap_loop(scores, labels, 50, trial)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
