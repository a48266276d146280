"""Regimes of a budget (docs/design.md#regimes) and the budget boundaries between them.

At the sweep's own prices and budgets, the best cell of a budget is quantity-dominant if it
bought no oracle labels, quality-dominant if it bought no weak labels and mixed otherwise. That
category ``C`` is named only when its lead survives the selection of the best of several
configurations and the noise of seeds and of the finite test set; else ``undetermined``.

The test (:func:`classify`). The lead is ``T = max_{k in C} A_k - max_{j not in C} A_j`` over
the cells' mean accuracies. Its null distribution comes from the resamples of
:mod:`analysis.resample` (seeds and test examples resampled jointly), centred
(``D = boot - A``), under the least favourable way for ``C`` not to be best: every cell of ``C``
that is within ``KAPPA`` standard errors of ``C``'s best tied with it (farther ones stay at their
observed distance, as in Hansen's SPA test), and the best of the other categories tied too, so

    p = max_{j not in C} P*( max_{k in C} (D_k + mu_k) - D_j >= T ),

the max over ``j`` because which other cell is truly best is unknown. The maximum over ``C``'s
cells is taken inside every resample, so picking the best of six interior fractions is paid for;
tying the rest of the other categories in too (the "all equal" null) would let their maximum
absorb noise and is not least favourable. ``confidence = 1 - p``; ``C`` is named when
``confidence >= level``. Standard errors are robust scales of the resampled differences (half
their 15.9-84.1% range), since the seed part of a resample is Student-t on few degrees of
freedom. Measured on null surfaces and known surfaces (``analysis/calibration.py``,
``tests/test_analysis_calibration.py``, ``tests/test_analysis_decisions.py``).

A regime name answers "which category is strictly best", which a few seeds rarely settle; what
to buy at a budget, how much that can cost and what is ruled out is :mod:`analysis.decisions`,
from the same resamples and the same budget membership (:func:`budget_points`).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis import pricing
from analysis.aggregate import Surface
from analysis.fits import fit_fraction_curve
from analysis.resample import robust_scale
from analysis.tables import ALL, methods_of

QUANTITY, MIXED, QUALITY, UNDETERMINED = ("quantity-dominant", "mixed", "quality-dominant",
                                          "undetermined")
REGIMES = (QUANTITY, MIXED, QUALITY)
# Cells of the winning category more than KAPPA standard errors below its best are not tied
# with it in the null (Hansen 2005's threshold sqrt(2 log log n) is about 2 for n ~ 1000).
KAPPA = 2.0
REGIME_COLUMNS = ["model", "weak_labeler", "tasks", "weak_price", "oracle_price", "method",
                  "budget", "regime", "category", "confidence", "margin", "compared_categories",
                  "infeasible_categories", "failed_categories", "best_variant", "best_n_weak",
                  "best_n_oracle", "best_oracle_fraction", "accuracy", "fitted_best_fraction"]
CONFIDENCE_MEANING = (
    "A category's confidence c is one minus a p-value: had the category not been strictly the "
    "best (its best configuration no better than the best of the others), a lead as large as "
    "the one observed would have arisen by chance, from seed variation, the finite test set "
    "and picking the best of several configurations, in at most a share 1 - c of repetitions. "
    "\"confidence 0.9\" means at most 10% of such repetitions; it is not a 90% probability "
    "that the category is the best.")


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
    """Outcome of :func:`classify`: ``best`` indexes the point-estimate best cell;
    ``confidence`` is ``1 - p`` (NaN when only one category was measured)."""

    regime: str
    category: str | None
    confidence: float
    margin: float
    best: int


def lead_p_value(acc, boot, mine, others, kappa: float = KAPPA) -> float:
    """p-value of the lead of the cells ``mine`` over the cells ``others`` (boolean masks), from
    centred resamples under the least favourable null (see the module docstring)."""
    acc = np.asarray(acc, dtype=float)
    boot = np.asarray(boot, dtype=float)
    im, io = np.flatnonzero(mine), np.flatnonzero(others)
    lead = acc[im].max() - acc[io].max()
    centred = boot - acc[:, None]                           # [n, B]
    top = im[np.argmax(acc[im])]
    se = robust_scale(boot[im] - boot[top], axis=1)  # the seed part is heavy-tailed (few df)
    gap = acc[top] - acc[im]
    shift = np.where(gap > kappa * se + 1e-12, -gap, 0.0)   # far below C's best: stays below
    best_mine = (centred[im] + shift[:, None]).max(axis=0)  # [B]
    n_boot = boot.shape[1]
    hits = ((best_mine[None, :] - centred[io]) >= lead - 1e-12).sum(axis=1)
    return float((1 + hits.max()) / (1 + n_boot))


def classify(acc, boot, categories, level: float = 0.9, min_margin: float = 0.0) -> Classification:
    """Regime of one budget from its cells.

    Args:
      acc: [n] mean accuracy of each cell; boot: [n, n_boot] resampled means
        (:mod:`analysis.resample`).
      categories: [n] category of each cell (see :func:`category`).
      level: the confidence a category needs to be named (see :data:`CONFIDENCE_MEANING`).
      min_margin: a lead it must also exceed in accuracy.
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
    confidence = 1.0 - lead_p_value(acc, boot, mine, others) if margin > 0 else 0.0
    named = confidence >= level - 1e-12 and margin > min_margin
    return Classification(winner if named else UNDETERMINED, winner, confidence, margin, best)


def _cell_index(surface: Surface) -> dict[tuple, int]:
    keys = zip(surface.cells["variant"], surface.cells["n_weak"], surface.cells["n_oracle"])
    return {(v, int(w), int(o)): i for i, (v, w, o) in enumerate(keys)}


def _join(cats) -> str:
    return ";".join(c for c in REGIMES if c in set(cats))


@dataclasses.dataclass
class BudgetPoint:
    """The cells a grid budget compares at a sweep's own prices, for one method (or ``all``):
    ``idx`` into ``surface.cells`` (the cells measured at that grid budget), ``members`` (their
    grid points) and ``unmeasured`` (the grid points planned there that no ok run reached)."""

    oracle_price: float
    weak_price: float
    budget: float
    method: str
    idx: list[int]
    members: pd.DataFrame
    unmeasured: pd.DataFrame


def budget_points(surface: Surface):
    """Yield a :class:`BudgetPoint` per (sweep prices, budget, method) with anything planned;
    the one budget membership the regime table and the decisions share."""
    index = _cell_index(surface)
    members = surface.members.dropna(subset=["budget"])
    unmeasured = surface.unmeasured
    keys = ["sweep_oracle_price", "sweep_weak_price", "budget"]
    points = pd.concat([members[keys], unmeasured[keys]]).drop_duplicates()
    for po, pw, budget in sorted(map(tuple, points.to_numpy().tolist())):
        mem = members[(members["sweep_oracle_price"] == po) & (members["sweep_weak_price"] == pw)
                      & (members["budget"] == budget)]
        um = unmeasured[(unmeasured["sweep_oracle_price"] == po)
                        & (unmeasured["sweep_weak_price"] == pw) & (unmeasured["budget"] == budget)]
        for method in methods_of(surface):
            mm = mem if method == ALL else mem[mem["variant"] == method]
            uu = um if method == ALL else um[um["variant"] == method]
            if mm.empty and uu.empty:
                continue
            idx = sorted({index[(v, int(w), int(o))] for v, w, o in
                          zip(mm["variant"], mm["n_weak"], mm["n_oracle"])})
            yield BudgetPoint(po, pw, budget, method, idx, mm, uu)


def regime_table(surface: Surface, level: float = 0.9, min_margin: float = 0.0,
                 fitted: bool = True) -> pd.DataFrame:
    """Regime of every budget of every sweep (at its own prices), per method and ``all``.

    Columns: model, weak_labeler, tasks, weak_price, oracle_price, method, budget, regime,
    category (point-estimate winner), confidence (see :data:`CONFIDENCE_MEANING`), margin (its
    lead in accuracy), compared_categories, infeasible_categories and failed_categories (those
    the grid planned at this budget but no run could buy or finish; ``;``-separated, the regime
    is then among the compared ones only), best_variant, best_n_weak, best_n_oracle,
    best_oracle_fraction (share of the spend on oracle labels, from the counts), accuracy,
    fitted_best_fraction (argmax of the per-budget smooth fit; NaN without grid fractions, or
    with ``fitted=False``).
    """
    index = _cell_index(surface)
    model, labeler = surface.scope
    rows = []
    for point in budget_points(surface):
        po, pw, method, idx, uu = (point.oracle_price, point.weak_price, point.method,
                                   point.idx, point.unmeasured)
        cells = surface.cells.iloc[idx]
        cats = [category(w, o) for w, o in zip(cells["n_weak"], cells["n_oracle"])]
        missing = {status: _join({category(w, o) for w, o, s in
                                  zip(uu["n_weak"], uu["n_oracle"], uu["status"])
                                  if s == status} - set(cats) - {None})
                   for status in ("infeasible", "failed")}
        row = {"model": model, "weak_labeler": labeler, "tasks": surface.cells["tasks"].iloc[0],
               "weak_price": pw, "oracle_price": po, "method": method, "budget": point.budget,
               "compared_categories": _join(cats),
               "infeasible_categories": missing["infeasible"],
               "failed_categories": missing["failed"]}
        if all(c is None for c in cats):
            if not (missing["infeasible"] or missing["failed"]):
                continue
            rows.append(row | {"regime": UNDETERMINED, "category": None,
                               "confidence": float("nan"), "margin": float("nan")})
            continue
        cl = classify(cells["accuracy"], surface.boot[idx], cats, level, min_margin)
        best = cells.iloc[cl.best]
        rows.append(row | {
            "regime": cl.regime, "category": cl.category, "confidence": cl.confidence,
            "margin": cl.margin, "best_variant": best["variant"],
            "best_n_weak": int(best["n_weak"]), "best_n_oracle": int(best["n_oracle"]),
            "best_oracle_fraction": pricing.oracle_spend_fraction(
                best["n_weak"], best["n_oracle"], po, pw),
            "accuracy": best["accuracy"],
            "fitted_best_fraction": _fitted_best_fraction(surface, point.members, index, method)
            if fitted else float("nan")})
    return pd.DataFrame(rows, columns=REGIME_COLUMNS)


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
    budget_above, boundary (geometric mean of the two budgets). Undetermined budgets, and budgets
    where a category could not be bought (infeasible or failed), are skipped, so a boundary may
    span them.
    """
    rows = []
    if regimes.empty:
        return pd.DataFrame(columns=["model", "weak_labeler", "weak_price", "method", "from_regime",
                                     "to_regime", "budget_below", "budget_above", "boundary"])
    for (model, labeler, wp, method), t in regimes.groupby(
            ["model", "weak_labeler", "weak_price", "method"], sort=True):
        complete = (t.get("infeasible_categories", pd.Series("", index=t.index)).fillna("") == "") \
            & (t.get("failed_categories", pd.Series("", index=t.index)).fillna("") == "")
        det = t[(t["regime"] != UNDETERMINED) & complete].sort_values("budget")
        for a, b in zip(det.iloc[:-1].itertuples(), det.iloc[1:].itertuples()):
            if a.regime != b.regime:
                rows.append({"model": model, "weak_labeler": labeler, "weak_price": wp,
                             "method": method, "from_regime": a.regime, "to_regime": b.regime,
                             "budget_below": a.budget, "budget_above": b.budget,
                             "boundary": float(np.sqrt(a.budget * b.budget))})
    return pd.DataFrame(rows, columns=["model", "weak_labeler", "weak_price", "method",
                                       "from_regime", "to_regime", "budget_below", "budget_above",
                                       "boundary"])
