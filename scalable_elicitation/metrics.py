"""Metrics of scores and soft labels against ground truth (docs/design.md#evaluation):
accuracy,
AUROC, calibration, positive rate, and the intervals a record reports. NumPy only.
"""
from __future__ import annotations

import math

import numpy as np


def accuracy(soft: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of soft labels hardened at 0.5 (ties count as 1)."""
    if len(labels) == 0:
        return float("nan")
    return float(np.mean((np.asarray(soft) >= 0.5).astype(np.int64) == np.asarray(labels)))


def positive_rate(soft: np.ndarray) -> float:
    """Share of examples called positive (soft label hardened at 0.5, ties count as 1)."""
    soft = np.asarray(soft)
    return float(np.mean(soft >= 0.5)) if len(soft) else float("nan")


def expected_calibration_error(soft: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """ECE of soft labels read as P(y=1): over `n_bins` equal-width bins of P(y=1), the
    size-weighted mean of |share of positives - mean P(y=1)| (docs/design.md#weak-labels)."""
    soft, labels = np.asarray(soft, np.float64), np.asarray(labels, np.float64)
    if len(soft) == 0:
        return float("nan")
    bins = np.minimum((soft * n_bins).astype(np.int64), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            total += inside.sum() * abs(labels[inside].mean() - soft[inside].mean())
    return float(total / len(soft))


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); NaN with a single class."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    n_pos, n_neg = int(np.sum(labels == 1)), int(np.sum(labels == 0))
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # average rank of each score over ties: (#below + #up-to-and-including + 1) / 2
    ordered = np.sort(scores)
    ranks = (np.searchsorted(ordered, scores, side="left")
             + np.searchsorted(ordered, scores, side="right") + 1) / 2.0
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_auroc(scores, labels, n_boot=200, seed=0) -> tuple[float, float]:
    """95% percentile interval of AUROC over `n_boot` resamples of the examples (resamples
    holding one class are skipped); NaNs when every resample did. All resamples at once: a
    resample is a count per example, and its AUROC the count-weighted Mann-Whitney sum over the
    sorted distinct scores (the same value `auroc` gives on the resampled arrays)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    n = len(labels)
    idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    distinct, where = np.unique(scores, return_inverse=True)
    k = len(distinct)
    cells = (where[idx] + k * np.arange(n_boot)[:, None]).ravel()

    def counts(mask):  # [n_boot, k]: resampled examples of a class at each distinct score
        return np.bincount(cells, weights=mask[idx].ravel().astype(np.float64),
                           minlength=n_boot * k).reshape(n_boot, k)

    pos, neg = counts(labels == 1), counts(labels == 0)
    below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    ok = (n_pos > 0) & (n_neg > 0)
    vals = (pos * (below + 0.5 * neg)).sum(1)[ok] / (n_pos * n_neg)[ok]
    if not len(vals):
        return (float("nan"), float("nan"))
    return (float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5)))
