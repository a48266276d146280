"""Smooth fits with bootstrap bands.

* Frontier: accuracy as a monotone increasing function of log cost, a four-parameter logistic
  ``lo + d / (1 + exp(-(x - m) / s))`` with ``d, s >= 0`` fitted by ``scipy.optimize.curve_fit``
  (bounded trust-region least squares); with fewer than four frontier points, or when the fit fails,
  isotonic regression (scikit-learn) interpolated linearly in log cost.
* Per budget: accuracy as a function of the oracle spending fraction, a cubic smoothing spline
  (scipy, penalty by generalised cross-validation), or a polynomial of degree <= 2 (numpy) when
  there are fewer than five distinct fractions.

Bands: refit on every resample of the cell means (seeds and test examples resampled jointly,
:mod:`analysis.resample`), re-selecting the frontier each time, and take pointwise percentiles.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from numpy.polynomial import Polynomial
from scipy.interpolate import make_smoothing_spline
from scipy.optimize import OptimizeWarning, curve_fit
from sklearn.isotonic import IsotonicRegression

from analysis.frontier import pareto_mask


def _logistic(x, lo, d, m, s):
    return lo + d / (1.0 + np.exp(-(x - m) / s))


def fit_monotone(log_cost: np.ndarray, acc: np.ndarray):
    """Fit accuracy as a monotone increasing function of log cost; returns a callable of log cost."""
    x = np.asarray(log_cost, dtype=float)
    y = np.asarray(acc, dtype=float)
    if len(x) == 0:
        raise ValueError("cannot fit a frontier with no points")
    if len(np.unique(x)) >= 4:
        span = max(x.max() - x.min(), 1e-6)
        p0 = [y.min(), max(y.max() - y.min(), 1e-3), float(np.median(x)), span / 4]
        bounds = ([0.0, 0.0, x.min() - span, 1e-3 * span], [1.0, 1.0, x.max() + span, 2 * span])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                params, _ = curve_fit(_logistic, x, y, p0=p0, bounds=bounds, maxfev=5000)
            return lambda q: np.clip(_logistic(np.asarray(q, dtype=float), *params), 0.0, 1.0)
        except (RuntimeError, ValueError):
            pass
    iso = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(x, y)
    return lambda q: iso.predict(np.asarray(q, dtype=float))


@dataclasses.dataclass
class CurveFit:
    """A fitted curve on a grid, with its pointwise bootstrap band."""

    x: np.ndarray
    fit: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def percentile_band(samples: np.ndarray, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise ``(lower, upper)`` percentiles over axis 0 for a central ``level`` band."""
    tail = 100 * (1 - level) / 2
    return (np.nanpercentile(samples, tail, axis=0), np.nanpercentile(samples, 100 - tail, axis=0))


def frontier_fit(cost, acc, acc_boot, n_grid: int = 60, level: float = 0.9,
                 max_boot: int | None = None) -> CurveFit:
    """Monotone fit of accuracy vs log cost along the Pareto frontier, with a bootstrap band.

    Args:
      cost: [n] cost of each cell (all cells, not only the frontier).
      acc: [n] mean accuracy of each cell.
      acc_boot: [n, n_boot] bootstrap means; the frontier is re-selected in each column.
      n_grid: number of grid points in cost (log-spaced over the frontier's costs).
      max_boot: use at most this many resamples (fits are the slow part).
    """
    cost = np.asarray(cost, dtype=float)
    acc = np.asarray(acc, dtype=float)
    pos = cost > 0
    if not pos.any():
        raise ValueError("frontier fit needs points with positive cost")
    cost, acc, acc_boot = cost[pos], acc[pos], np.asarray(acc_boot)[pos]
    x = np.log(cost)
    front = pareto_mask(cost, acc)
    # Over the frontier's own cost range: beyond its last point the fit would be extrapolation.
    grid = np.linspace(x[front].min(), x[front].max(), n_grid)
    fit = fit_monotone(x[front], acc[front])(grid)
    n_boot = acc_boot.shape[1] if max_boot is None else min(max_boot, acc_boot.shape[1])
    samples = np.empty((n_boot, n_grid))
    for b in range(n_boot):
        a = acc_boot[:, b]
        f = pareto_mask(cost, a)
        samples[b] = fit_monotone(x[f], a[f])(grid)
    lo, hi = percentile_band(samples, level)
    return CurveFit(np.exp(grid), fit, lo, hi)


def fit_fraction_curve(fractions, acc):
    """Smooth fit of accuracy in the oracle fraction; a callable.

    A cubic smoothing spline with its penalty chosen by generalised cross-validation
    (``scipy.interpolate.make_smoothing_spline``) when there are at least five distinct fractions,
    else a least-squares polynomial of degree ``min(2, distinct - 1)``. Repeated fractions are
    averaged first.
    """
    f = np.asarray(fractions, dtype=float)
    y = np.asarray(acc, dtype=float)
    if len(np.unique(f)) >= 5:
        xs, inv = np.unique(f, return_inverse=True)
        ys = np.bincount(inv, weights=y) / np.bincount(inv)
        try:
            return make_smoothing_spline(xs, ys)
        except (ValueError, np.linalg.LinAlgError):
            pass
    deg = min(2, len(np.unique(f)) - 1)
    if deg < 0:
        raise ValueError("cannot fit an oracle-fraction curve with no points")
    if deg == 0:
        value = float(y.mean())
        return lambda q: np.full(np.shape(q), value)
    return Polynomial.fit(f, y, deg)


def fraction_fit(fractions, acc, acc_boot, n_grid: int = 41, level: float = 0.9) -> CurveFit:
    """Accuracy vs oracle spending fraction for one budget, with a bootstrap band.

    Args:
      fractions: [n] oracle fraction of each cell.
      acc: [n] mean accuracy; acc_boot: [n, n_boot] bootstrap means.
    """
    f = np.asarray(fractions, dtype=float)
    grid = np.linspace(np.nanmin(f), np.nanmax(f), n_grid)
    fit = fit_fraction_curve(f, acc)(grid)
    acc_boot = np.asarray(acc_boot, dtype=float)
    samples = np.stack([fit_fraction_curve(f, acc_boot[:, b])(grid)
                        for b in range(acc_boot.shape[1])])
    lo, hi = percentile_band(samples, level)
    return CurveFit(grid, fit, lo, hi)
