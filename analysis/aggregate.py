"""Aggregate runs over seeds (docs/design.md#cells), with joint resamples of seeds and test
examples.

A *cell* is (task, model, variant, weak_labeler, n_weak, n_oracle): everything but the seed (the
variant carries every other config value that defines a run, see :mod:`analysis.records`). A
*surface* is the table of cells one analysis works on: one (model, weak_labeler) scope, accuracy
averaged over the tasks that share the cell (only cells present for every task are kept, so the
average is matched on the grid). Each surface row carries ``boot``: resampled means from
:mod:`analysis.resample`, averaged over tasks resample by resample (seeds and test examples
are drawn jointly within each task).
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd

from analysis import pricing
from analysis.records import CELL_KEYS
from analysis.resample import DEFAULT_N_BOOT, resample_cells

SCOPE_KEYS = ("model", "weak_labeler")
SURFACE_KEYS = ("model", "weak_labeler", "variant", "n_weak", "n_oracle")
MEMBER_COLUMNS = ["variant", "n_weak", "n_oracle", "sweep_oracle_price", "sweep_weak_price",
                  "budget", "oracle_fraction"]
UNMEASURED_COLUMNS = MEMBER_COLUMNS + ["status"]


def dedupe_seeds(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep one run per (cell, seed). The cell's variant carries every config value that defines
    a run, so what is dropped is the same run recorded twice (e.g. the same counts bought by
    sweeps at two prices), never a run that differs."""
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


@dataclasses.dataclass
class Surface:
    """Cells of one (model, weak_labeler) scope, averaged over matched tasks.

    Attributes:
      cells: one row per (variant, n_weak, n_oracle) with accuracy, accuracy_std, n_seeds, tasks.
      boot: [n_cells, n_boot] resampled means, seeds and test examples drawn jointly for every
        cell of a task (per task, then averaged over tasks); float32.
      members: which sweep grid points each cell served: variant, n_weak, n_oracle,
        sweep_oracle_price, sweep_weak_price, budget, oracle_fraction (NaN outside a grid).
      unmeasured: grid points of this scope with no ok run: variant, n_weak, n_oracle (what the
        point would have bought), sweep prices, budget, oracle_fraction, status (``infeasible``
        or ``failed``).
      notes: how the noise was modelled, in words.
      test_dev: [n_cells, n_boot] the test-set part of ``boot`` alone (float32; None when not
        built from records).
      test_run_var: [n_cells] the part of ``test_dev``'s variance that more seeds would shrink
        (the runs' own test noise over the seeds; the rest only a larger test set shrinks).
      n_test: test examples per task (median over the surface's tasks; None when unknown).
    """

    cells: pd.DataFrame
    boot: np.ndarray
    members: pd.DataFrame
    unmeasured: pd.DataFrame = dataclasses.field(default_factory=lambda: pd.DataFrame(
        columns=UNMEASURED_COLUMNS))
    notes: list[str] = dataclasses.field(default_factory=list)
    test_dev: np.ndarray | None = None
    test_run_var: np.ndarray | None = None
    n_test: int | None = None

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
        return Surface(cells, self.boot[mask], members, self.unmeasured, self.notes,
                       None if self.test_dev is None else self.test_dev[mask],
                       None if self.test_run_var is None else self.test_run_var[mask],
                       self.n_test)


def _grid_points(row) -> list[tuple[float, float]]:
    """The (budget, oracle fraction) grid points a run serves: ``grid_points`` when the record
    has them, else its ``budget`` with each of its ``oracle_fractions``; ``[(nan, nan)]``
    outside a grid."""
    points = row.get("grid_points")
    if isinstance(points, (list, tuple)) and len(points):
        return [(float(b), float(f)) for b, f in points]
    budget = pd.to_numeric(pd.Series([row.get("budget")]), errors="coerce").iloc[0]
    fracs = row.get("oracle_fractions")
    if not isinstance(fracs, (list, tuple)) or not len(fracs):
        fracs = [np.nan]
    return [(float(budget), float(f)) for f in fracs]


def _members(frame: pd.DataFrame) -> pd.DataFrame:
    """Sweep grid membership of each run: one row per (cell, sweep prices, budget, fraction);
    a run that serves several grid points (``grid_points``) counts at each."""
    rows = []
    for rec in frame.to_dict("records"):
        for budget, fraction in _grid_points(rec):
            rows.append((rec["variant"], int(rec["n_weak"]), int(rec["n_oracle"]),
                         float(rec["prices.oracle"]), float(rec["prices.weak"]), budget,
                         fraction))
    return pd.DataFrame(rows, columns=MEMBER_COLUMNS).drop_duplicates(ignore_index=True)


def _unmeasured(excluded: pd.DataFrame | None, scope: tuple[str, str],
                measured: pd.DataFrame) -> pd.DataFrame:
    """Grid points of ``scope`` that only infeasible or failed runs reached (none ok there)."""
    if excluded is None or excluded.empty or "planned.weak" not in excluded.columns:
        return pd.DataFrame(columns=UNMEASURED_COLUMNS)
    ex = excluded[(excluded["model"] == scope[0]) & (excluded["weak_labeler"] == scope[1])]
    rows = []
    for rec in ex.to_dict("records"):
        try:
            po, pw = float(rec["prices.oracle"]), float(rec["prices.weak"])
        except (TypeError, ValueError):
            continue
        for budget, fraction in _grid_points(rec):
            if np.isnan(budget):
                continue
            w, o = rec.get("planned.weak"), rec.get("planned.oracle")
            if w is None or o is None or pd.isna(w) or pd.isna(o):
                if np.isnan(fraction):
                    continue
                w, o = pricing.grid_counts(budget, fraction, po, pw)
            rows.append((rec["variant"], int(w), int(o), po, pw, budget, fraction,
                         rec["status"]))
    out = pd.DataFrame(rows, columns=UNMEASURED_COLUMNS).drop_duplicates(ignore_index=True)
    if out.empty:
        return out
    # a point some seed did measure is not unmeasured
    done = measured[["variant", "sweep_oracle_price", "sweep_weak_price", "budget",
                     "oracle_fraction"]].drop_duplicates()
    keys = ["variant", "sweep_oracle_price", "sweep_weak_price", "budget", "oracle_fraction"]
    out = out.merge(done.assign(_done=True), on=keys, how="left")
    return out[out["_done"].isna()].drop(columns="_done").reset_index(drop=True)


def build_surfaces(frame: pd.DataFrame, n_boot: int = DEFAULT_N_BOOT, seed: int = 0,
                   excluded: pd.DataFrame | None = None) -> list[Surface]:
    """One :class:`Surface` per (model, weak_labeler) scope of the ok runs in ``frame``.

    ``excluded`` (:attr:`Records.excluded`) marks the grid points no ok run reached, so the
    regime table can say which categories were never compared.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    every_run = frame  # grid membership counts duplicates too (a run shared by two sweeps)
    frame, _ = dedupe_seeds(frame)
    per_task = aggregate(frame)
    resampled = resample_cells(frame, n_boot, seed)
    surfaces = []
    averaged = mean_over_tasks(per_task)
    for scope, cells in averaged.groupby(list(SCOPE_KEYS), sort=True):
        cells = cells.reset_index(drop=True)
        tasks = cells["tasks"].iloc[0].split("+")
        boot = np.empty((len(cells), n_boot), dtype=np.float32)
        test_dev = np.empty((len(cells), n_boot), dtype=np.float32)
        test_run_var = np.empty(len(cells))
        for i, row in enumerate(cells.itertuples(index=False)):
            keys = [(t, row.model, row.variant, row.weak_labeler, row.n_weak, row.n_oracle)
                    for t in tasks]
            boot[i] = np.mean([resampled.boot[k] for k in keys], axis=0)
            test_dev[i] = np.mean([resampled.test[k] for k in keys], axis=0)
            test_run_var[i] = np.mean([resampled.test_run_var[k] for k in keys]) / len(keys)
        sizes = [resampled.n_test.get(t) for t in tasks]
        sizes = [n for n in sizes if n]
        in_scope = (every_run["model"] == scope[0]) & (every_run["weak_labeler"] == scope[1])
        served = _members(every_run[in_scope])
        members = served.merge(cells[["variant", "n_weak", "n_oracle"]],
                               on=["variant", "n_weak", "n_oracle"])
        unmeasured = _unmeasured(excluded, scope, served)
        surfaces.append(Surface(cells, boot, members, unmeasured, resampled.notes, test_dev,
                                test_run_var, int(np.median(sizes)) if sizes else None))
    return surfaces
