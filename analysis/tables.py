"""Frontier and best-within-budget tables over a :class:`~analysis.aggregate.Surface`.

Costs are re-priced from the counts at any (oracle price, weak price)
(docs/design.md#re-pricing), so one sweep serves every price ratio. Rows with
``method == "all"`` pool every method variant.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import pricing
from analysis.aggregate import Surface
from analysis.fits import percentile_band
from analysis.frontier import pareto_mask, pareto_mask_batch, tolerance_mask

ALL = "all"


def methods_of(surface: Surface) -> list[str]:
    """The method variants of a surface, sorted, followed by ``all``."""
    return sorted(surface.cells["variant"].unique()) + [ALL]


def method_mask(surface: Surface, method: str) -> np.ndarray:
    """Cells belonging to ``method`` (every cell for ``all``)."""
    if method == ALL:
        return np.ones(len(surface.cells), dtype=bool)
    return (surface.cells["variant"] == method).to_numpy()


def priced(surface: Surface, oracle_price, weak_price) -> pd.DataFrame:
    """The surface's cells with ``cost`` and ``weak_fraction`` (share of spend on weak labels)."""
    cells = surface.cells.copy()
    cells["cost"] = pricing.costs(cells["n_weak"], cells["n_oracle"], oracle_price, weak_price)
    cells["weak_fraction"] = [
        1.0 - pricing.oracle_spend_fraction(w, o, oracle_price, weak_price)
        for w, o in zip(cells["n_weak"], cells["n_oracle"])]
    return cells


def _scope_columns(surface: Surface) -> dict[str, str]:
    model, labeler = surface.scope
    return {"model": model, "weak_labeler": labeler, "tasks": surface.cells["tasks"].iloc[0]}


def frontier_table(surface: Surface, weak_prices, oracle_price=1, kind: str = "pareto",
                   level: float = 0.9) -> pd.DataFrame:
    """Frontier points per weak price and method (plus ``all``).

    ``kind`` is ``pareto`` (docs/design.md#frontier) or ``tolerance`` (the study's variant).
    Columns:
    weak_price, oracle_price, method, variant, n_weak, n_oracle, cost, accuracy, accuracy_std,
    accuracy_lo/hi (central ``level`` band of the cell mean over the resamples of
    :mod:`analysis.resample`: seeds and test examples), n_seeds, weak_fraction, and for
    ``pareto`` ``frontier_frequency``: the share of those resamples whose re-selected frontier
    keeps it.
    """
    if kind not in ("pareto", "tolerance"):
        raise ValueError(f"kind must be 'pareto' or 'tolerance', got {kind!r}")
    out = []
    for wp in weak_prices:
        cells = priced(surface, oracle_price, wp)
        for method in methods_of(surface):
            m = method_mask(surface, method)
            part = cells[m].reset_index(drop=True)
            boot = surface.boot[m]
            if kind == "pareto":
                keep = pareto_mask(part["cost"], part["accuracy"])
                freq = pareto_mask_batch(part["cost"].to_numpy(), boot).mean(axis=1)
            else:
                keep = tolerance_mask(part["cost"], part["accuracy"])
                freq = np.full(len(part), np.nan)
            lo, hi = percentile_band(boot.T, level)
            rows = part.assign(weak_price=float(wp), oracle_price=float(oracle_price),
                               method=method, accuracy_lo=lo, accuracy_hi=hi,
                               frontier_frequency=freq)[keep]
            out.append(rows)
    cols = ["model", "weak_labeler", "tasks", "weak_price", "oracle_price", "method", "variant",
            "n_weak", "n_oracle", "cost", "accuracy", "accuracy_std", "accuracy_lo", "accuracy_hi",
            "n_seeds", "weak_fraction"] + (["frontier_frequency"] if kind == "pareto" else [])
    table = pd.concat(out, ignore_index=True)
    return table.sort_values(["weak_price", "method", "cost", "accuracy"],
                             ascending=[False, True, True, False], kind="stable")[cols] \
        .reset_index(drop=True)


def best_affordable(cells: pd.DataFrame, mask: np.ndarray) -> int | None:
    """Index (into ``cells``) of the most accurate cell where ``mask`` holds; ties go to the
    cheaper cell, then to the variant name. None when the mask is empty."""
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return None
    part = cells.iloc[idx]
    order = np.lexsort((part["variant"].to_numpy().astype(str), part["cost"].to_numpy(),
                        -part["accuracy"].to_numpy()))
    return int(idx[order[0]])


def chosen_optimism(acc, boot) -> np.ndarray:
    """[n_boot] how far the cell a choose-the-most-accurate procedure picks overstates its own
    mean, once per resample: ``boot[c_b, b] - acc[c_b]`` with ``c_b = argmax_k boot[k, b]``.

    The bootstrap of the whole choose-then-report procedure (Efron & Tibshirani 1993, ch. 10;
    the winner's curse): in the resampled world the observed means are the truth, each resample
    picks afresh, and its pick's excess over its own truth is the error a report of the pick's
    mean makes. Its mean is the selection bias of the chosen cell's reported accuracy, and its
    quantiles give a band for that cell's true mean (:mod:`analysis.decisions`).

    Args:
      acc: [n] mean accuracy of the candidate cells; boot: [n, n_boot] their resampled means.
    """
    acc = np.asarray(acc, dtype=float)
    boot = np.asarray(boot, dtype=float).reshape(len(acc), -1)
    pick = np.nanargmax(boot, axis=0)
    return boot[pick, np.arange(boot.shape[1])] - acc[pick]


def selection_bias(acc, boot) -> float:
    """How far the reported accuracy of the most accurate of several cells overstates that
    cell's true mean, on average (:func:`chosen_optimism`'s mean). About 0 for one cell, and
    larger the more close cells compete and the noisier they are. NaN for none."""
    acc = np.asarray(acc, dtype=float)
    if len(acc) == 0:
        return float("nan")
    return float(np.mean(chosen_optimism(acc, boot)))


def best_within_budget(surface: Surface, weak_prices, budgets, oracle_price=1,
                       level: float = 0.9) -> pd.DataFrame:
    """For each weak price, budget and method (plus ``all``): the best configuration with
    cost <= budget (compared exactly), its accuracy, band (the same resamples as every other
    band) and weak fraction. The entry is the chosen configuration's observed mean; having been
    picked as the best of ``n_candidates`` affordable configurations it is biased up, by about
    ``selection_bias`` (:func:`selection_bias`, from the same resamples).

    A budget that buys nothing measured gives a row with NaN accuracy.
    """
    out = []
    for wp in weak_prices:
        cells = priced(surface, oracle_price, wp)
        for budget in budgets:
            afford = pricing.affordable(cells["n_weak"], cells["n_oracle"], oracle_price, wp, budget)
            for method in methods_of(surface):
                mask = afford & method_mask(surface, method)
                i = best_affordable(cells, mask)
                row = {"weak_price": float(wp), "oracle_price": float(oracle_price),
                       "budget": float(budget), "method": method,
                       "n_candidates": int(mask.sum()),
                       "selection_bias": selection_bias(cells["accuracy"].to_numpy()[mask],
                                                        surface.boot[mask])}
                if i is None:
                    row.update(variant=None, n_weak=np.nan, n_oracle=np.nan, cost=np.nan,
                               accuracy=np.nan, accuracy_std=np.nan, accuracy_lo=np.nan,
                               accuracy_hi=np.nan, n_seeds=0, weak_fraction=np.nan)
                else:
                    c = cells.iloc[i]
                    lo, hi = percentile_band(surface.boot[i][:, None], level)
                    row.update(variant=c["variant"], n_weak=int(c["n_weak"]),
                               n_oracle=int(c["n_oracle"]), cost=c["cost"],
                               accuracy=c["accuracy"], accuracy_std=c["accuracy_std"],
                               accuracy_lo=float(lo[0]), accuracy_hi=float(hi[0]),
                               n_seeds=int(c["n_seeds"]), weak_fraction=c["weak_fraction"])
                out.append(_scope_columns(surface) | row)
    return pd.DataFrame(out)


def _fmt(x, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    return format(x, spec)


def _fmt_num(x) -> str:
    return _fmt(float(x), "g")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def selection_bias_sentence(table: pd.DataFrame, method: str = ALL) -> str:
    """One sentence stating the size of the best-within-budget entries' selection bias: its range
    in accuracy points over the (weak price, budget) rows of ``method`` that picked among two or
    more configurations, and how many were picked among. Empty when no row picked among two."""
    if "selection_bias" not in table.columns:
        return ""
    t = table[(table["method"] == method) & (table["n_candidates"] >= 2)
              & table["selection_bias"].notna()]
    if t.empty:
        return ""
    bias, n = 100 * t["selection_bias"], t["n_candidates"]

    def span(lo, hi, spec):
        return format(lo, spec) if format(lo, spec) == format(hi, spec) else \
            f"{format(lo, spec)}-{format(hi, spec)}"
    return (f"Picking the best of {span(n.min(), n.max(), 'd')} configurations biases the "
            f"best-within-budget accuracies up by about {span(bias.min(), bias.max(), '.1f')} "
            f"accuracy points (median {bias.median():.1f}; a bootstrap of the choose-then-report "
            "procedure on the same resamples, `selection_bias` in `best_within_budget.csv`), as "
            "estimates of the chosen configuration's own accuracy.")


def best_within_budget_markdown(table: pd.DataFrame) -> str:
    """Best-within-budget as markdown: one table per (scope, weak price), methods x budgets,
    each entry ``accuracy (weak fraction)``."""
    parts = ["Best configuration with cost <= budget; each entry is mean accuracy over seeds "
             "(weak fraction of the spend in brackets; `-`: nothing measured is affordable). "
             "Bands (`accuracy_lo`, `accuracy_hi` in `best_within_budget.csv`) come from the "
             "same resamples as every other band. " + selection_bias_sentence(table)]
    for (model, labeler, wp), t in table.groupby(["model", "weak_labeler", "weak_price"],
                                                 sort=False):
        budgets = sorted(t["budget"].unique())
        parts.append(f"\n### {model}, weak labeller {labeler}, weak price {_fmt_num(wp)}"
                     f" (oracle price {_fmt_num(t['oracle_price'].iloc[0])})\n")
        rows = []
        for method, tm in t.groupby("method", sort=False):
            by_b = tm.set_index("budget")
            rows.append([f"`{method}`"] + [
                f"{_fmt(by_b.at[b, 'accuracy'])} ({_fmt(by_b.at[b, 'weak_fraction'], '.2f')})"
                for b in budgets])
        parts.append(markdown_table(["method"] + [_fmt_num(b) for b in budgets], rows))
    return "\n".join(parts) + "\n"
