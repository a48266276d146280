"""Aggregate runs over seeds (SPEC section 9), with bootstrap resamples over seeds.

A *cell* is (task, model, variant, weak_labeler, n_weak, n_oracle): everything but the seed. A
*surface* is the table of cells one analysis works on: one (model, weak_labeler) scope, accuracy
averaged over the tasks that share the cell (only cells present for every task are kept, so the
average is matched on the grid). Each surface row carries ``boot``: resampled means over seeds.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd

from analysis.records import CELL_KEYS

SCOPE_KEYS = ("model", "weak_labeler")
SURFACE_KEYS = ("model", "weak_labeler", "variant", "n_weak", "n_oracle")


def dedupe_seeds(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep one run per (cell, seed); the same counts bought in two sweeps are the same run."""
    keys = list(CELL_KEYS) + ["seed"]
    out = frame.drop_duplicates(subset=keys, keep="first")
    return out, len(frame) - len(out)


def aggregate(frame: pd.DataFrame, keys=CELL_KEYS, value: str = "metrics.accuracy") -> pd.DataFrame:
    """Mean, standard deviation (ddof=1; NaN for one seed) and count of ``value`` per cell.

    Returns one row per cell with ``keys`` and ``accuracy``, ``accuracy_std``, ``n_seeds``, plus
    ``weak_label_accuracy`` (mean) where the records carry it.
    """
    missing = [k for k in list(keys) + [value] if k not in frame.columns]
    if missing:
        raise ValueError(f"cannot aggregate: column(s) {missing} missing from the results table")
    g = frame.groupby(list(keys), sort=True, dropna=False)
    out = g[value].agg(accuracy="mean", accuracy_std="std", n_seeds="count").reset_index()
    if "weak_label_accuracy" in frame.columns:
        wla = g["weak_label_accuracy"].mean().reset_index(drop=True)
        out["weak_label_accuracy"] = wla.to_numpy(dtype=float)
    else:
        out["weak_label_accuracy"] = np.nan
    return out


def mean_over_tasks(cells: pd.DataFrame, by=SURFACE_KEYS) -> pd.DataFrame:
    """Average per-task cells over tasks, keeping only grid cells that every task of the scope has.

    ``accuracy_std`` of the average is the mean of the per-task standard deviations (the typical
    seed-to-seed spread); ``n_seeds`` is the smallest per-task count.
    """
    by = list(by)
    rows = []
    for scope, part in cells.groupby(list(SCOPE_KEYS), sort=True):
        tasks = sorted(part["task"].unique())
        g = part.groupby(by, sort=True)
        agg = g.agg(accuracy=("accuracy", "mean"), accuracy_std=("accuracy_std", "mean"),
                    n_seeds=("n_seeds", "min"), n_tasks=("task", "nunique"),
                    weak_label_accuracy=("weak_label_accuracy", "mean")).reset_index()
        dropped = int((agg["n_tasks"] < len(tasks)).sum())
        if dropped and len(tasks) > 1:
            warnings.warn(f"{scope}: {dropped} grid cell(s) missing for some of tasks {tasks}; "
                          "left out of the task average", stacklevel=2)
        agg = agg[agg["n_tasks"] == len(tasks)].copy()
        agg["tasks"] = "+".join(tasks)
        rows.append(agg)
    return pd.concat(rows, ignore_index=True)


def bootstrap_cell_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` means of ``values`` resampled with replacement (seeds are the resampled unit)."""
    values = np.asarray(values, dtype=float)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    return values[idx].mean(axis=1)


@dataclasses.dataclass
class Surface:
    """Cells of one (model, weak_labeler) scope, averaged over matched tasks.

    Attributes:
      cells: one row per (variant, n_weak, n_oracle) with accuracy, accuracy_std, n_seeds, tasks.
      boot: [n_cells, n_boot] bootstrap means over seeds (per task, then averaged over tasks).
      members: which sweep grid points each cell served: variant, n_weak, n_oracle,
        sweep_oracle_price, sweep_weak_price, budget, oracle_fraction (NaN outside a grid).
    """

    cells: pd.DataFrame
    boot: np.ndarray
    members: pd.DataFrame

    @property
    def scope(self) -> tuple[str, str]:
        """The (model, weak_labeler) this surface covers."""
        return tuple(self.cells[list(SCOPE_KEYS)].iloc[0])

    def subset(self, mask) -> "Surface":
        """The cells where ``mask`` holds (members filtered to match)."""
        mask = np.asarray(mask, dtype=bool)
        cells = self.cells[mask].reset_index(drop=True)
        keys = ["variant", "n_weak", "n_oracle"]
        members = self.members.merge(cells[keys], on=keys, how="inner")
        return Surface(cells, self.boot[mask], members)


def _members(frame: pd.DataFrame) -> pd.DataFrame:
    """Sweep grid membership of each run: one row per (cell, sweep prices, budget, fraction)."""
    cols = ["variant", "n_weak", "n_oracle"]
    base = pd.DataFrame({c: frame[c] for c in cols})
    base["sweep_oracle_price"] = frame["prices.oracle"].astype(float)
    base["sweep_weak_price"] = frame["prices.weak"].astype(float)
    budget = frame["budget"] if "budget" in frame.columns else pd.Series(np.nan, index=frame.index)
    base["budget"] = pd.to_numeric(budget, errors="coerce").astype(float)
    fracs = frame["oracle_fractions"] if "oracle_fractions" in frame.columns else \
        pd.Series([None] * len(frame), index=frame.index)
    base["oracle_fraction"] = [list(f) if isinstance(f, (list, tuple)) and len(f) else [np.nan]
                               for f in fracs]
    base = base.explode("oracle_fraction", ignore_index=True)
    base["oracle_fraction"] = base["oracle_fraction"].astype(float)
    return base.drop_duplicates(ignore_index=True)


def build_surfaces(frame: pd.DataFrame, n_boot: int = 200, seed: int = 0) -> list[Surface]:
    """One :class:`Surface` per (model, weak_labeler) scope of the ok runs in ``frame``."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    frame, _ = dedupe_seeds(frame)
    rng = np.random.default_rng(seed)
    per_task = aggregate(frame)
    # Bootstrap each (task, cell) over its seeds, then average over tasks like the point estimate.
    groups = frame.groupby(list(CELL_KEYS), sort=True)["metrics.accuracy"]
    boots = {key: bootstrap_cell_means(v.to_numpy(), n_boot, rng) for key, v in groups}
    surfaces = []
    averaged = mean_over_tasks(per_task)
    for scope, cells in averaged.groupby(list(SCOPE_KEYS), sort=True):
        cells = cells.reset_index(drop=True)
        tasks = cells["tasks"].iloc[0].split("+")
        boot = np.empty((len(cells), n_boot))
        for i, row in enumerate(cells.itertuples(index=False)):
            boot[i] = np.mean([boots[(t, row.model, row.variant, row.weak_labeler, row.n_weak,
                                      row.n_oracle)] for t in tasks], axis=0)
        in_scope = (frame["model"] == scope[0]) & (frame["weak_labeler"] == scope[1])
        members = _members(frame[in_scope]).merge(
            cells[["variant", "n_weak", "n_oracle"]], on=["variant", "n_weak", "n_oracle"])
        surfaces.append(Surface(cells, boot, members))
    return surfaces
