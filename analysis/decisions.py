"""A decision per budget (docs/design.md#decisions): what to buy, what the choice can cost, what is
ruled out.

A regime name answers "which of three categories is strictly best", which three seeds can rarely
settle at margins of 0.01-0.03. A user splitting a budget needs something else, and the same
paired resamples (:mod:`analysis.resample`: seeds and test examples drawn jointly) give it:

* **what to buy**: the configuration with the highest mean accuracy among those measured at the
  budget (ties to the cheaper), with its central 90% band;
* **what that can cost**: a one-sided 90% upper bound on its *regret*, how far its true accuracy
  can lie below the best configuration measured at that budget. Multiple comparisons with the
  best (Hsu 1984): with ``T_ij = ((B_j - A_j) - (B_i - A_i)) / se_ij`` the studentised centred
  resampled differences and ``q`` the ``level`` quantile of ``max_{j != i} T_ij``, the bounds
  ``mu_i - mu_j <= A_i - A_j + q se_ij`` hold for every ``j`` at once when ``i`` is the truly
  best cell (a one-sided Dunnett comparison against it), and since the regret of ``c`` is
  ``mu_i - mu_c`` for that ``i``, ``regret <= max(0, max_j (A_j - A_c + q se_cj))`` holds at
  ``level`` for every ``c`` at once, the one picked from the data included. Which cell is truly
  best is unknown; ``q`` is computed with the chosen one standing in for it (the usual bootstrap
  plug-in). Taking the largest ``q`` over all ``i`` instead widened the bounds by 0.005-0.01 on
  the default sweep for no gain in coverage: on realistic synthetic surfaces
  (:func:`analysis.calibration.run_decisions`) the plug-in covers the true regret at 95-97% of
  budgets, and at 86-93% of those where the chosen configuration is not the truly best.
  Studentising keeps a noisy competitor from setting the bar for all the others;
* **what is ruled out**: configuration ``j`` when its regret's lower bound is above 0,
  ``max_i (A_i - A_j - q2 se_ij) > 0``, with ``q2`` the ``level`` quantile of the maximum of
  ``|T_ij|`` over all pairs (simultaneous over all pairs, so the whole ruled-out list holds at
  ``level`` together). A category (:data:`analysis.regimes.REGIMES`) is ruled out when every one
  of its measured configurations is; a category not measured at a budget (infeasible or never
  planned) is never ruled out but listed as not measured.

``se_ij`` is a robust scale of the resampled difference (half its 15.9-84.1% range): the seed part
of a resample is Student-t on few degrees of freedom, whose variance may not exist.

:func:`decision_table` gives the decisions at each sweep's own prices and budgets (budget
membership as in :func:`analysis.regimes.regime_table`), per method variant and across all
(``all``); ``python -m analysis.recommend`` re-prices for any budget and price pair.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis.aggregate import Surface
from analysis.fits import percentile_band
from analysis.regimes import REGIMES, budget_points, category
from analysis.resample import robust_scale
from analysis.tables import best_affordable

LEVEL = 0.9
DECISION_COLUMNS = ["model", "weak_labeler", "tasks", "weak_price", "oracle_price", "budget",
                    "method", "variant", "n_weak", "n_oracle", "cost", "accuracy", "accuracy_lo",
                    "accuracy_hi", "regret_upper", "ruled_out_categories",
                    "ruled_out_configurations", "n_ruled_out", "n_candidates",
                    "not_measured_categories", "n_seeds"]


@dataclasses.dataclass
class Decision:
    """Outcome of :func:`decide` over ``n`` candidate cells.

    Attributes:
      chosen: index of the configuration to buy.
      accuracy_band: central ``level`` band of its resampled mean accuracy.
      regret_upper: one-sided simultaneous upper bound on its regret (0 when nothing can beat it).
      regret_lower: [n] simultaneous lower bound on each candidate's regret (>= 0).
      ruled_out: [n] whether a candidate's regret is bounded away from 0.
      q_best, q_pairs: the studentised critical values behind the two.
    """

    chosen: int
    accuracy_band: tuple[float, float]
    regret_upper: float
    regret_lower: np.ndarray
    ruled_out: np.ndarray
    q_best: float
    q_pairs: float


def pair_statistics(acc, boot, chosen: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(se, t_chosen, t_all)`` of the studentised centred resampled differences
    ``T[i, j, b] = ((B_j - A_j) - (B_i - A_i)) / se[i, j]`` (0 where ``se`` is 0):
    ``se`` [n, n]; ``t_chosen`` [n_boot] the max over ``j != chosen`` of ``T[chosen, j]``;
    ``t_all`` [n_boot] the max over all ordered pairs. One row ``i`` at a time, so memory stays
    [n, n_boot] however many configurations compete."""
    acc = np.asarray(acc, dtype=np.float64)
    centred = (np.asarray(boot, dtype=np.float64) - acc[:, None]).astype(np.float32)
    n, n_boot = centred.shape
    se = np.zeros((n, n))
    t_chosen, t_all = np.full(n_boot, -np.inf), np.full(n_boot, -np.inf)
    for i in range(n):
        diff = centred - centred[i]                                        # [n, B]: j - i
        se[i] = robust_scale(diff, axis=1)
        t = np.divide(diff, se[i][:, None].astype(np.float32), out=np.zeros_like(diff),
                      where=se[i][:, None] > 0)
        t[i] = -np.inf
        top = t.max(axis=0)
        t_all = np.maximum(t_all, top)
        if i == chosen:
            t_chosen = top
    return se, t_chosen, t_all


def decide(acc, boot, cells: pd.DataFrame | None = None, level: float = LEVEL) -> Decision:
    """The decision among ``n`` candidate cells (module docstring).

    Args:
      acc: [n] mean accuracies; boot: [n, n_boot] their paired resamples.
      cells: the candidates' rows (``accuracy``, ``cost``, ``variant``) to break ties to the
        cheaper; without it the first of the most accurate.
      level: the one-sided level of the regret bound and of the ruled-out list.
    """
    acc = np.asarray(acc, dtype=float)
    boot = np.asarray(boot).reshape(len(acc), -1)
    if len(acc) == 0:
        raise ValueError("decide needs at least one candidate cell, got none")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    c = best_affordable(cells.reset_index(drop=True), np.ones(len(acc), bool)) \
        if cells is not None else int(np.argmax(acc))
    lo, hi = percentile_band(boot[c][:, None].astype(float), level)
    band = (float(lo[0]), float(hi[0]))
    if len(acc) == 1:
        return Decision(c, band, 0.0, np.zeros(1), np.zeros(1, bool), np.nan, np.nan)
    se, t_chosen, t_all = pair_statistics(acc, boot, c)
    q_best = float(np.quantile(t_chosen, level))   # the chosen one stands in for the truly best
    q_pairs = float(np.quantile(t_all, level))
    gap = acc[None, :] - acc[:, None]                                        # [i, j]: A_j - A_i
    others = np.arange(len(acc)) != c
    regret_upper = max(0.0, float((gap[c] + q_best * se[c])[others].max()))
    lower = gap - q_pairs * se                # [i, j]: lower bound on mu_j - mu_i <= regret_i
    np.fill_diagonal(lower, 0.0)
    regret_lower = np.maximum(0.0, lower.max(axis=1))
    return Decision(c, band, regret_upper, regret_lower, regret_lower > 0, q_best, q_pairs)


def ruled_out_categories(categories, ruled_out) -> list[str]:
    """Categories every measured configuration of which is ruled out (in :data:`REGIMES`
    order); a category with no measured configuration is never among them."""
    cats = np.asarray([c if c is not None else "" for c in categories], dtype=object)
    ruled_out = np.asarray(ruled_out, dtype=bool)
    return [c for c in REGIMES if (cats == c).any() and ruled_out[cats == c].all()]


def configuration_name(n_weak: int, n_oracle: int, variant: str, many_variants: bool) -> str:
    """``"64 weak + 8 oracle"`` (with ``" (variant)"`` when several variants compete)."""
    return f"{int(n_weak)} weak + {int(n_oracle)} oracle" + \
        (f" ({variant})" if many_variants else "")


def decision_row(cells: pd.DataFrame, boot: np.ndarray, level: float = LEVEL) -> dict:
    """The decision columns (:data:`DECISION_COLUMNS` from ``variant`` on) for the candidate
    ``cells`` (rows with variant, n_weak, n_oracle, accuracy, cost, n_seeds) and their resamples."""
    cells = cells.reset_index(drop=True)
    d = decide(cells["accuracy"].to_numpy(), boot, cells, level)
    cats = [category(w, o) for w, o in zip(cells["n_weak"], cells["n_oracle"])]
    many = cells["variant"].nunique() > 1
    best = cells.iloc[d.chosen]
    out = [configuration_name(w, o, v, many) for w, o, v, r in zip(
        cells["n_weak"], cells["n_oracle"], cells["variant"], d.ruled_out) if r]
    return {"variant": best["variant"], "n_weak": int(best["n_weak"]),
            "n_oracle": int(best["n_oracle"]), "cost": float(best["cost"]),
            "accuracy": float(best["accuracy"]), "accuracy_lo": d.accuracy_band[0],
            "accuracy_hi": d.accuracy_band[1], "regret_upper": d.regret_upper,
            "ruled_out_categories": ";".join(ruled_out_categories(cats, d.ruled_out)),
            "ruled_out_configurations": ";".join(out), "n_ruled_out": len(out),
            "n_candidates": len(cells), "n_seeds": int(best["n_seeds"]),
            "not_measured_categories": ";".join(c for c in REGIMES if c not in cats)}


def decision_table(surface: Surface, level: float = LEVEL) -> pd.DataFrame:
    """The decision of every budget of every sweep at its own prices, per method variant and
    across all variants (``all``); columns :data:`DECISION_COLUMNS`. The candidates of a budget
    are the configurations measured at that grid budget (as in the regime table)."""
    model, labeler = surface.scope
    rows = []
    for point in budget_points(surface):
        if not len(point.idx):
            continue
        cells = surface.cells.iloc[point.idx].copy()
        cells["cost"] = [float(int(o) * point.oracle_price + int(w) * point.weak_price)
                         for w, o in zip(cells["n_weak"], cells["n_oracle"])]
        row = {"model": model, "weak_labeler": labeler, "tasks": surface.cells["tasks"].iloc[0],
               "weak_price": point.weak_price, "oracle_price": point.oracle_price,
               "budget": point.budget, "method": point.method}
        rows.append(row | decision_row(cells, surface.boot[point.idx], level))
    return pd.DataFrame(rows, columns=DECISION_COLUMNS)


def decision_line(row, level: float = LEVEL) -> str:
    """One printed line for a decision row (a mapping or namedtuple of :data:`DECISION_COLUMNS`)."""
    get = row.get if isinstance(row, dict) else lambda k, default=None: getattr(row, k, default)
    many = get("method") == "all"  # across variants: say which one to use
    ruled = get("ruled_out_categories") or ""
    unmeasured = get("not_measured_categories") or ""
    pct = f"{100 * level:.0f}%"
    line = (f"budget {get('budget'):g}: buy {int(get('n_weak'))} weak + {int(get('n_oracle'))} "
            f"oracle labels" + (f" with {get('variant')}" if many else "")
            + f" (accuracy {get('accuracy'):.2f}, {pct} {get('accuracy_lo'):.2f}-"
            f"{get('accuracy_hi'):.2f}); at most {get('regret_upper'):.3f} below the best "
            f"measured mix ({pct}); ruled out: "
            + (ruled.replace(";", ", ") if ruled else "no category")
            + (f" ({int(get('n_ruled_out'))} of {int(get('n_candidates'))} configurations)"
               if get("n_candidates") else ""))
    if unmeasured:
        line += f"; not measured: {unmeasured.replace(';', ', ')}"
    return line


def decision_lines(table: pd.DataFrame, method: str = "all", level: float = LEVEL) -> list[str]:
    """The printed lines of ``method``'s decisions, one per budget, grouped by scope and prices."""
    lines = []
    t = table[table["method"] == method]
    for (model, labeler, po, pw), part in t.groupby(
            ["model", "weak_labeler", "oracle_price", "weak_price"], sort=False):
        lines.append(f"{model}, weak labeller {labeler}, prices oracle {po:g}, weak {pw:g}:")
        lines += ["  " + decision_line(r, level) for r in part.sort_values("budget").itertuples()]
    return lines
