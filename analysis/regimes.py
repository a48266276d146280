"""Regimes of a budget (SPEC section 9) and the budget boundaries between them.

At the sweep's own prices and budgets, the best run of a budget is quantity-dominant if it bought
no oracle labels, quality-dominant if it bought no weak labels and mixed otherwise. The category is
reported only when its best run beats the best run of the other categories in at least ``level``
(default 90%) of bootstrap resamples over seeds; else ``undetermined``. Six interior fractions
against two endpoints favour "mixed" by chance; the resampling is what guards against that.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis import pricing
from analysis.aggregate import Surface
from analysis.fits import fit_fraction_curve
from analysis.tables import ALL, methods_of

QUANTITY, MIXED, QUALITY, UNDETERMINED = ("quantity-dominant", "mixed", "quality-dominant",
                                          "undetermined")
REGIMES = (QUANTITY, MIXED, QUALITY)


def category(n_weak: int, n_oracle: int) -> str | None:
    """Regime category of the labels a run bought (None when it bought none)."""
    if n_oracle == 0 and n_weak > 0:
        return QUANTITY
    if n_weak == 0 and n_oracle > 0:
        return QUALITY
    if n_weak > 0 and n_oracle > 0:
        return MIXED
    return None


@dataclasses.dataclass
class Classification:
    """Outcome of :func:`classify`: ``best`` indexes the point-estimate best cell."""

    regime: str
    category: str | None
    confidence: float
    margin: float
    best: int


def classify(acc, boot, categories, level: float = 0.9, min_margin: float = 0.0) -> Classification:
    """Regime of one budget from its cells.

    Args:
      acc: [n] mean accuracy of each cell; boot: [n, n_boot] bootstrap means over seeds.
      categories: [n] category of each cell (see :func:`category`).
      level: share of resamples in which the winning category must beat the others.
      min_margin: the accuracy margin it must beat them by in a resample.
    """
    acc = np.asarray(acc, dtype=float)
    boot = np.asarray(boot, dtype=float)
    cats = np.asarray([c if c is not None else "" for c in categories], dtype=object)
    valid = cats != ""
    if not valid.any():
        raise ValueError("no cell with bought labels to classify")
    idx = np.flatnonzero(valid)
    best = int(idx[np.argmax(acc[idx])])
    winner = cats[best]
    mine, others = valid & (cats == winner), valid & (cats != winner)
    if not others.any():
        # One category only (e.g. a sweep without endpoints): nothing to beat, nothing shown.
        return Classification(UNDETERMINED, winner, float("nan"), float("nan"), best)
    margin = float(acc[mine].max() - acc[others].max())
    wins = boot[mine].max(axis=0) - boot[others].max(axis=0) > min_margin
    confidence = float(wins.mean())
    regime = winner if confidence >= level else UNDETERMINED
    return Classification(regime, winner, confidence, margin, best)


def _cell_index(surface: Surface) -> dict[tuple, int]:
    keys = zip(surface.cells["variant"], surface.cells["n_weak"], surface.cells["n_oracle"])
    return {(v, int(w), int(o)): i for i, (v, w, o) in enumerate(keys)}


def regime_table(surface: Surface, level: float = 0.9, min_margin: float = 0.0) -> pd.DataFrame:
    """Regime of every budget of every sweep (at its own prices), per method and ``all``.

    Columns: model, weak_labeler, tasks, weak_price, oracle_price, method, budget, regime,
    category (point-estimate winner), confidence, margin, best_variant, best_n_weak,
    best_n_oracle, best_oracle_fraction (share of the spend on oracle labels, from the counts),
    accuracy, fitted_best_fraction (argmax of the per-budget smooth fit; NaN without grid
    fractions).
    """
    index = _cell_index(surface)
    members = surface.members.dropna(subset=["budget"])
    model, labeler = surface.scope
    rows = []
    for (po, pw, budget), mem in members.groupby(
            ["sweep_oracle_price", "sweep_weak_price", "budget"], sort=True):
        for method in methods_of(surface):
            mm = mem if method == ALL else mem[mem["variant"] == method]
            if mm.empty:
                continue
            idx = sorted({index[(v, int(w), int(o))] for v, w, o in
                          zip(mm["variant"], mm["n_weak"], mm["n_oracle"])})
            cells = surface.cells.iloc[idx]
            cats = [category(w, o) for w, o in zip(cells["n_weak"], cells["n_oracle"])]
            if all(c is None for c in cats):
                continue
            cl = classify(cells["accuracy"], surface.boot[idx], cats, level, min_margin)
            best = cells.iloc[cl.best]
            rows.append({
                "model": model, "weak_labeler": labeler, "tasks": best["tasks"],
                "weak_price": pw, "oracle_price": po, "method": method, "budget": budget,
                "regime": cl.regime, "category": cl.category, "confidence": cl.confidence,
                "margin": cl.margin, "best_variant": best["variant"],
                "best_n_weak": int(best["n_weak"]), "best_n_oracle": int(best["n_oracle"]),
                "best_oracle_fraction": pricing.oracle_spend_fraction(
                    best["n_weak"], best["n_oracle"], po, pw),
                "accuracy": best["accuracy"],
                "fitted_best_fraction": _fitted_best_fraction(surface, mm, index, method)})
    return pd.DataFrame(rows)


def _fitted_best_fraction(surface: Surface, members: pd.DataFrame, index, method) -> float:
    """Argmax over the oracle fraction of the per-budget smooth fit (one variant only)."""
    if method == ALL:
        return float("nan")
    mm = members.dropna(subset=["oracle_fraction"])
    if mm["oracle_fraction"].nunique() < 3:
        return float("nan")
    idx = [index[(v, int(w), int(o))] for v, w, o in
           zip(mm["variant"], mm["n_weak"], mm["n_oracle"])]
    curve = fit_fraction_curve(mm["oracle_fraction"], surface.cells["accuracy"].to_numpy()[idx])
    grid = np.linspace(mm["oracle_fraction"].min(), mm["oracle_fraction"].max(), 101)
    return float(grid[np.argmax(curve(grid))])


def boundaries(regimes: pd.DataFrame) -> pd.DataFrame:
    """Budget boundaries between regimes: where consecutive determined budgets change regime.

    Columns: model, weak_labeler, weak_price, method, from_regime, to_regime, budget_below,
    budget_above, boundary (geometric mean of the two budgets). Undetermined budgets are skipped,
    so a boundary may span them.
    """
    rows = []
    if regimes.empty:
        return pd.DataFrame(columns=["model", "weak_labeler", "weak_price", "method", "from_regime",
                                     "to_regime", "budget_below", "budget_above", "boundary"])
    for (model, labeler, wp, method), t in regimes.groupby(
            ["model", "weak_labeler", "weak_price", "method"], sort=True):
        det = t[t["regime"] != UNDETERMINED].sort_values("budget")
        for a, b in zip(det.iloc[:-1].itertuples(), det.iloc[1:].itertuples()):
            if a.regime != b.regime:
                rows.append({"model": model, "weak_labeler": labeler, "weak_price": wp,
                             "method": method, "from_regime": a.regime, "to_regime": b.regime,
                             "budget_below": a.budget, "budget_above": b.budget,
                             "boundary": float(np.sqrt(a.budget * b.budget))})
    return pd.DataFrame(rows, columns=["model", "weak_labeler", "weak_price", "method",
                                       "from_regime", "to_regime", "budget_below", "budget_above",
                                       "boundary"])
