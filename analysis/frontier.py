"""Cost-accuracy frontiers (docs/design.md#frontier).

Two selections over points ``(cost, accuracy)``:

* :func:`pareto_mask`: the points not dominated by any cheaper-or-equal point with higher accuracy.
  Ties, as docs/design.md#frontier words it: a point is dominated only by a *strictly* more accurate
  point at cost <= its own. So two points with equal cost and equal accuracy are both kept, a point
  at equal cost but lower accuracy is dropped, and a costlier point with exactly equal accuracy is
  kept (nothing beats it strictly). ``strict=True`` also drops that last kind: a point whose
  accuracy is matched by a strictly cheaper one.
* :func:`tolerance_mask`: the study's variant. Walk up in cost (ties: more accurate first, then
  input order); keep a point when it beats the best kept so far by more than ``acc_tol`` and no
  other point within ``rel_cost`` relative cost (``|c_j - c_i| <= rel_cost * c_i``) is at least as
  accurate. Among exactly equal accuracies within that window the first in walk order wins, so a
  tie does not knock out both points.
"""
from __future__ import annotations

import numpy as np

# Float slack for "more than 0.002": 0.702 - 0.700 is 0.00199999... in binary.
_EPS = 1e-12


def _check(cost, acc) -> tuple[np.ndarray, np.ndarray]:
    cost = np.asarray(cost, dtype=float)
    acc = np.asarray(acc, dtype=float)
    if cost.shape != acc.shape or cost.ndim != 1:
        raise ValueError(f"cost and accuracy must be 1-D of one length, got {cost.shape} and {acc.shape}")
    if not (np.all(np.isfinite(cost)) and np.all(np.isfinite(acc))):
        raise ValueError("cost and accuracy must be finite")
    return cost, acc


def pareto_mask(cost, acc, strict: bool = False) -> np.ndarray:
    """Boolean mask of the non-dominated points (see the module docstring for ties)."""
    cost, acc = _check(cost, acc)
    cheaper_eq = cost[None, :] <= cost[:, None]            # [i, j]: c_j <= c_i
    better = acc[None, :] > acc[:, None]                   # a_j > a_i
    dominated = (cheaper_eq & better).any(axis=1)
    if strict:
        cheaper = cost[None, :] < cost[:, None]
        matched = acc[None, :] >= acc[:, None]
        dominated |= (cheaper & matched).any(axis=1)
    return ~dominated


def pareto_mask_batch(cost, acc_boot) -> np.ndarray:
    """:func:`pareto_mask` for each column of ``acc_boot`` [n_points, n_boot] -> bool, same shape."""
    cost = np.asarray(cost, dtype=float)
    acc_boot = np.asarray(acc_boot, dtype=float)
    cheaper_eq = cost[None, :] <= cost[:, None]            # [i, j]
    better = acc_boot[None, :, :] > acc_boot[:, None, :]   # [i, j, b]
    return ~(cheaper_eq[:, :, None] & better).any(axis=1)


def tolerance_mask(cost, acc, acc_tol: float = 0.002, rel_cost: float = 0.05) -> np.ndarray:
    """Boolean mask of the study's tolerance frontier (see the module docstring)."""
    cost, acc = _check(cost, acc)
    if acc_tol < 0 or rel_cost < 0:
        raise ValueError(f"acc_tol and rel_cost must be >= 0, got {acc_tol}, {rel_cost}")
    order = np.lexsort((np.arange(len(cost)), -acc, cost))  # by cost, then accuracy desc
    rank = np.empty(len(cost), dtype=int)
    rank[order] = np.arange(len(cost))
    keep = np.zeros(len(cost), dtype=bool)
    best = -np.inf
    for i in order:
        if not acc[i] - best > acc_tol + _EPS:
            continue
        near = np.abs(cost - cost[i]) <= rel_cost * cost[i] + _EPS
        near[i] = False
        rival = near & ((acc > acc[i]) | ((acc == acc[i]) & (rank < rank[i])))
        if rival.any():
            continue
        keep[i] = True
        best = acc[i]
    return keep
