"""Curves through measured means, with bootstrap bands.

* Frontier: accuracy as a monotone increasing function of log cost through the Pareto frontier's
  cells (isotonic regression, scikit-learn, interpolated linearly in log cost; on the observed
  means the frontier is already increasing, so the curve joins its points), over the frontier's
  own cost range only.
* Per budget: accuracy as a function of the oracle spending fraction, shown as the measured means
  joined by straight lines (:func:`fraction_fit`; why not a smoother is said there). The cubic
  smoothing spline of :func:`fit_fraction_curve` remains for the regime table's
  ``fitted_best_fraction``.

Bands: the same curve through every resample of the same cells' means (:mod:`analysis.resample`),
pointwise percentiles. Neither curve can leave the range of the resampled means it is drawn
through, so no band sits above every measurement (see :func:`frontier_fit` for what was wrong).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from numpy.polynomial import Polynomial
from scipy.interpolate import make_smoothing_spline
from sklearn.isotonic import IsotonicRegression

from analysis.frontier import pareto_mask


def fit_monotone(log_cost: np.ndarray, acc: np.ndarray):
    """Accuracy as a monotone increasing function of log cost (isotonic regression, linear in log
    cost between points, flat outside them); returns a callable of log cost.

    Its values are averages of runs of consecutive points, so it never leaves their range: the
    four-parameter logistic used before could overshoot the last point, and with fewer than four
    points it fell back to this anyway, so a band mixed two curve forms.
    """
    x = np.asarray(log_cost, dtype=float)
    y = np.asarray(acc, dtype=float)
    if len(x) == 0:
        raise ValueError("cannot fit a frontier with no points")
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
    """Monotone curve of accuracy vs log cost through the Pareto frontier, with a bootstrap band.

    The frontier's cells are selected once, on the observed means, and the band comes from the
    same curve through those cells' resampled means: it is the band of the accuracy of the
    configurations the frontier says to buy. Re-selecting the frontier in every resample (as
    before) takes, at each cost, the largest of several noisy resampled means around means that
    were already the largest: the winner's curse counted twice. On the default sweep that put
    the band at cost 256 at 0.79-0.87, where no run scored above 0.83 and no cell's own band
    reached above 0.84 (now 0.76-0.83 on the same resamples). How much picking the best
    overstates is stated separately (``selection_bias`` of the best-within-budget table); how
    stable the frontier is, by ``frontier_frequency`` (which does re-select).

    Args:
      cost: [n] cost of each cell (all cells, not only the frontier).
      acc: [n] mean accuracy of each cell.
      acc_boot: [n, n_boot] resampled means of the same cells.
      n_grid: number of grid points in cost, log-spaced over the frontier's costs (beyond its
        last point the curve would be extrapolation), plus the frontier's own costs.
      max_boot: use at most this many resamples.
    """
    cost = np.asarray(cost, dtype=float)
    acc = np.asarray(acc, dtype=float)
    pos = cost > 0
    if not pos.any():
        raise ValueError("frontier fit needs points with positive cost")
    cost, acc, acc_boot = cost[pos], acc[pos], np.asarray(acc_boot, dtype=float)[pos]
    front = pareto_mask(cost, acc)
    x = np.log(cost[front])
    grid = np.union1d(np.linspace(x.min(), x.max(), n_grid), x)  # through every frontier point
    fit = fit_monotone(x, acc[front])(grid)
    n_boot = acc_boot.shape[1] if max_boot is None else min(max_boot, acc_boot.shape[1])
    samples = np.stack([fit_monotone(x, acc_boot[front, b])(grid) for b in range(n_boot)])
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


def interpolate_means(fractions, acc):
    """Piecewise-linear curve through the mean accuracy at each measured fraction; a callable.

    Repeated fractions (two cells serving one fraction) are averaged first. Outside the measured
    range the curve is held flat, but callers only evaluate it inside.
    """
    f = np.asarray(fractions, dtype=float)
    y = np.asarray(acc, dtype=float)
    if len(f) == 0:
        raise ValueError("cannot interpolate an oracle-fraction curve with no points")
    xs, inv = np.unique(f, return_inverse=True)
    ys = np.bincount(inv, weights=y) / np.bincount(inv)
    return lambda q: np.interp(np.asarray(q, dtype=float), xs, ys)


def fraction_fit(fractions, acc, acc_boot, n_grid: int = 41, level: float = 0.9) -> CurveFit:
    """Accuracy vs oracle spending fraction for one budget: the measured means joined by straight
    lines, with a band from the same interpolation of every resample.

    Not a smoother: a budget has 5-8 fractions, each a mean of a few seeds, and nothing says
    accuracy is smooth in the fraction (a small oracle stage after a weak one can undo it, a
    real dip). A cubic smoothing spline with its penalty chosen by cross-validation on so few
    points missed measured means by 0.04-0.06 on the default sweep, several band widths; joined
    means cannot miss, and between measured fractions they claim nothing beyond a line. The
    grid holds every measured fraction, so the curve passes through each mean and the band
    there is that cell's own band.

    Args:
      fractions: [n] oracle fraction of each cell.
      acc: [n] mean accuracy; acc_boot: [n, n_boot] bootstrap means.
    """
    f = np.asarray(fractions, dtype=float)
    grid = np.union1d(np.linspace(np.nanmin(f), np.nanmax(f), n_grid), f[np.isfinite(f)])
    fit = interpolate_means(f, acc)(grid)
    acc_boot = np.asarray(acc_boot, dtype=float)
    samples = np.stack([interpolate_means(f, acc_boot[:, b])(grid)
                        for b in range(acc_boot.shape[1])])
    lo, hi = percentile_band(samples, level)
    return CurveFit(grid, fit, lo, hi)
