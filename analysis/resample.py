"""Joint resampling of seeds and test examples (SPEC section 9).

Every band, frontier frequency and regime confidence the analysis prints comes from the matrix
this module builds: for each cell (runs that differ only in seed) ``n_boot`` resampled mean
accuracies, ``boot[k, b] = A_k + e_test[k, b] + e_seed[k, b]`` where ``A_k`` is the mean over the
cell's seeds and

* ``e_test`` is the test set's own sampling noise. All runs of a task are scored on one test set,
  so resample ``b`` draws one set of test-example indices per task (with replacement) and
  recomputes every run's accuracy on it from its per-example scores (``scores.parquet``:
  prediction = score > 0). Keeping the draw common to all runs keeps the correlation between
  configurations, which is what makes paired comparisons sharp. A run without per-example scores
  (JSONL-only records) gets an independent ``Binomial(n_test, accuracy) / n_test`` draw instead,
  which ignores the pairing and so errs wide. ``e_test`` of a cell is the mean over its runs.
* ``e_seed`` is seed-to-seed variation: the mean of ``S_k`` draws (with replacement) from a pool
  of seed residuals ``(a_ks - A_k) * sqrt(S_k / (S_k - 1))`` (unbiased for the variance, which a
  plain resample of 3 seeds understates by a third). The pool is shared by the cells of one
  (task, variant, budget), or, when that has fewer than ``MIN_POOL_DF`` degrees of freedom, of
  one (task, budget), (task, variant) or task, so a cell with one seed borrows its seed noise.
  A cell with seeds of its own is scaled to its own spread shrunk towards the pool's (the pool
  weighing ``PRIOR_DF`` degrees of freedom): seed noise differs between fractions (weak-only
  runs on a few labels scatter more), and a plain pool would understate it where it is large.
  Where no cell of a task has two seeds, seed noise cannot be told from real differences; the
  pool is then made of differences between neighbouring configurations of one variant and
  budget (ordered by oracle labels), ``(A_next - A) / sqrt(2)`` with both signs, a
  difference-based variance estimate (Rice 1984): under "all configurations equal" it is
  exactly the seed noise, and a smooth trend over the fractions adds little, but any real jump
  between neighbours counts as noise, so it errs wide. Seed residuals
  measured on one test set already hold the runs' own test noise, which ``e_test`` adds again;
  the pool is shrunk by ``sqrt(1 - v_test / v_pool)`` (``v_test`` from the same resamples) so
  that it is not counted twice, and widened by ``t_df(0.95) / z(0.95)`` for the degrees of
  freedom ``df`` behind it, since a spread estimated from a few seeds is itself uncertain.

Nothing here imports JAX.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np
import pandas as pd

from analysis.records import CELL_KEYS

MIN_POOL_DF = 4  # seed-residual degrees of freedom a pool needs before it is used
PRIOR_DF = 4  # weight of the pool, in degrees of freedom, against a cell's own seed spread


@dataclasses.dataclass
class CellResamples:
    """Resampled mean accuracies per (task, cell).

    Attributes:
      boot: ``{CELL_KEYS tuple: [n_boot] array}``.
      notes: plain-language lines on how the noise was modelled (for the report).
    """

    boot: dict[tuple, np.ndarray]
    notes: list[str]


def _read_parquet(path: str) -> tuple[np.ndarray, np.ndarray] | None:
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path, columns=["id", "label", "score"])
    except (OSError, ValueError, KeyError):
        return None
    ids = np.asarray(table.column("id").to_pylist()).astype(str)
    label = np.asarray(table.column("label").to_numpy()).astype(int)
    score = np.asarray(table.column("score").to_numpy(), dtype=float)
    return ids, (score > 0) == (label == 1)


def correctness(ref: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """``(ids, correct)`` of a run's test examples from a ``scores.parquet`` path or in-memory
    arrays (see :class:`~analysis.records.Records`); None when there are none or unreadable."""
    if ref is None or (isinstance(ref, float) and math.isnan(ref)):
        return None
    if isinstance(ref, tuple):
        return ref
    return _read_parquet(str(ref))


def _example_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n, n_boot] multiplicities of a with-replacement resample of ``n`` examples."""
    idx = rng.integers(0, n, (n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).T.astype(np.float32)


def _test_deviations(rows: pd.DataFrame, n_boot: int, rng: np.random.Generator,
                     counts: dict[str, int]) -> np.ndarray:
    """[n_runs, n_boot] resampled accuracy minus full-test-set accuracy, per run of one task."""
    acc = rows["metrics.accuracy"].to_numpy(dtype=float)
    refs = rows["example_scores"].tolist() if "example_scores" in rows.columns else \
        [None] * len(rows)
    d = np.zeros((len(rows), n_boot))
    # Read run by run, keeping the ids only while they differ from the first run's (one test
    # set per task is the rule), so a large sweep holds one bit-sized row per run.
    have, correct, ids_of, ids0, same = [], [], [], None, True
    for i, ref in enumerate(refs):
        got = correctness(ref)
        if got is None or not len(got[0]):
            continue
        ids, ok = got
        if ids0 is None:
            ids0 = ids
        if same and not np.array_equal(ids, ids0):
            same = False
        have.append(i)
        correct.append(ok)
        ids_of.append(None if same else ids)
    if have:
        if same:
            x = np.stack(correct).astype(np.float32)                          # [r, N]
            w = _example_weights(len(ids0), n_boot, rng)                       # [N, B]
            d[have] = (x @ w) / len(ids0) - x.mean(1, keepdims=True)
        else:  # test sets differ (e.g. n_test): resample the union, each run on its own ids
            ids_of = [ids0 if i is None else i for i in ids_of]
            union = np.unique(np.concatenate(ids_of))
            x = np.zeros((len(have), len(union)), np.float32)
            m = np.zeros_like(x)
            for j, (ids, ok) in enumerate(zip(ids_of, correct)):
                pos = np.searchsorted(union, ids)
                x[j, pos], m[j, pos] = ok, 1.0
            w = _example_weights(len(union), n_boot, rng)
            num, den = x @ w, m @ w
            full = x.sum(1) / m.sum(1)
            d[have] = np.where(den > 0, num / np.maximum(den, 1), full[:, None]) - full[:, None]
        counts["examples"] += len(have)
    n_test = rows["n_test"].to_numpy() if "n_test" in rows.columns else [None] * len(rows)
    for i in sorted(set(range(len(rows))) - set(have)):
        n = n_test[i]
        if n is None or not np.isfinite(float(n)) or int(n) < 1:
            counts["none"] += 1
            continue
        n = int(n)
        p = min(max(acc[i], 0.0), 1.0)
        d[i] = rng.binomial(n, p, n_boot) / n - p
        counts["binomial"] += 1
    return d


@functools.lru_cache(maxsize=256)
def _small_sample_factor(df: int) -> float:
    """``t_df(0.95) / z(0.95)``: widens seed noise estimated from ``df`` degrees of freedom the
    way a t interval widens a z interval (1.18 at 6, 1.06 at 16, 1.01 at 48)."""
    from scipy.stats import norm, t
    return float(t.ppf(0.95, df) / norm.ppf(0.95))


def _levels(variant: str, budget) -> list[tuple]:
    """Pooling groups of a cell within its task, narrowest first."""
    return [("variant-budget", variant, budget), ("budget", budget), ("variant", variant),
            ("task",)]


def _task_resamples(rows: pd.DataFrame, n_boot: int, rng: np.random.Generator,
                    counts: dict[str, int]) -> dict[tuple, np.ndarray]:
    """Resampled cell means of one task (see the module docstring)."""
    rows = rows.reset_index(drop=True)
    keys = list(CELL_KEYS)
    cell_of = rows.groupby(keys, sort=True, dropna=False).ngroup().to_numpy()
    _, first = np.unique(cell_of, return_index=True)
    cells = rows.iloc[first].reset_index(drop=True)
    n_cells = len(cells)
    acc = rows["metrics.accuracy"].to_numpy(dtype=float)
    d = _test_deviations(rows, n_boot, rng, counts)
    size = np.bincount(cell_of, minlength=n_cells)
    mean = np.bincount(cell_of, weights=acc, minlength=n_cells) / size
    e_test = np.zeros((n_cells, n_boot))
    np.add.at(e_test, cell_of, d)
    e_test /= size[:, None]
    budgets = cells["budget"].tolist() if "budget" in cells.columns else [None] * n_cells
    budgets = [None if b is None or (isinstance(b, float) and math.isnan(b)) else float(b)
               for b in budgets]
    variants = cells["variant"].tolist()
    n_weak, n_oracle = cells["n_weak"].to_numpy(), cells["n_oracle"].to_numpy()
    cell_keys = list(cells[keys].itertuples(index=False, name=None))
    levels = [_levels(v, b) for v, b in zip(variants, budgets)]

    # Seed residuals and each replicated cell's own test-noise variance.
    scale = np.sqrt(size / np.maximum(size - 1, 1))
    resid = (acc - mean[cell_of]) * scale[cell_of]
    v_test = np.full(n_cells, np.nan)
    own_var = np.full(n_cells, np.nan)
    for k in np.flatnonzero(size >= 2):
        v_test[k] = d[cell_of == k].var(axis=0, ddof=1).mean()
        own_var[k] = acc[cell_of == k].var(ddof=1)
    replicated = size >= 2

    def replicate_pool(members: np.ndarray):
        df = int((size[members] - 1).sum())
        if df < 1:
            return None
        rows_in = np.isin(cell_of, members)
        return df, resid[rows_in], float(np.nanmean(v_test[members]))

    def neighbour_pool(members: np.ndarray):
        groups: dict[tuple, list[int]] = {}
        for k in members:
            groups.setdefault((variants[k], budgets[k]), []).append(k)
        res, vt = [], []
        for ks in groups.values():
            ks = sorted(ks, key=lambda c: (n_oracle[c], -n_weak[c]))
            for a, b in zip(ks[:-1], ks[1:]):
                res.append((mean[b] - mean[a]) / math.sqrt(2))
                vt.append(float(np.var(e_test[b] - e_test[a])) / 2)
        if not res:
            return None
        res = np.asarray(res)
        return len(res), np.concatenate([res, -res]), float(np.mean(vt))

    any_replicated = bool(replicated.any())
    pools: dict[tuple, Any] = {}
    out = {}
    for k in range(n_cells):
        chosen = None
        for j, level in enumerate(levels[k]):
            if level not in pools:
                members = np.asarray([c for c in range(n_cells) if level in levels[c]])
                if any_replicated:
                    pools[level] = replicate_pool(members[replicated[members]])
                else:
                    pools[level] = neighbour_pool(members)
            pool = pools[level]
            if pool is not None and (pool[0] >= MIN_POOL_DF or j == len(levels[k]) - 1):
                chosen = pool
                break
        if chosen is None:
            e_seed = np.zeros(n_boot)
            counts["no_seed_noise"] += 1
        else:
            df, res, vt = chosen
            v_pool = float(np.mean(res ** 2))
            v_cell, df_cell = v_pool, df
            if size[k] >= 2:  # its own spread, shrunk towards the pool's
                own = int(size[k]) - 1
                v_cell = (own * own_var[k] + PRIOR_DF * v_pool) / (own + PRIOR_DF)
                df_cell = min(df, own + PRIOR_DF)
            scale = math.sqrt(max(0.0, v_cell - vt) / v_pool) if v_pool > 0 else 0.0
            draws = res[rng.integers(0, len(res), (n_boot, int(size[k])))]
            e_seed = scale * _small_sample_factor(df_cell) * draws.mean(axis=1)
        if not any_replicated:
            counts["unreplicated"] += 1
        out[cell_keys[k]] = mean[k] + e_test[k] + e_seed
    return out


def resample_cells(frame: pd.DataFrame, n_boot: int = 200, seed: int = 0) -> CellResamples:
    """Resampled mean accuracy of every (task, cell) of ``frame`` (ok runs, one per cell and
    seed); see the module docstring for the noise model."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    counts = {"examples": 0, "binomial": 0, "none": 0, "unreplicated": 0, "no_seed_noise": 0}
    boot: dict[tuple, np.ndarray] = {}
    for _, rows in frame.groupby("task", sort=True):
        boot.update(_task_resamples(rows, n_boot, rng, counts))
    n = len(frame)
    notes = [f"Test-set noise: per-example scores resampled for {counts['examples']} of {n} runs"
             + (f"; a binomial model from n_test for {counts['binomial']}"
                if counts["binomial"] else "")
             + (f"; none for {counts['none']} (no scores and no n_test)" if counts["none"] else "")
             + "."]
    if counts["unreplicated"]:
        notes.append(f"{counts['unreplicated']} cell(s) belong to tasks where no configuration has "
                     "two seeds: their seed noise is estimated from the differences between "
                     "neighbouring configurations, which makes every comparison there "
                     "conservative. Run more seeds to sharpen them.")
    if counts["no_seed_noise"]:
        notes.append(f"{counts['no_seed_noise']} cell(s) have no seed-noise estimate at all.")
    return CellResamples(boot, notes)
