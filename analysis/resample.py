"""Joint resampling of seeds and test examples (docs/design.md#resampling).

Every band, regime confidence, regret bound and ruled-out set the analysis prints comes from the
matrix this module builds: for each cell (runs that differ only in seed) ``n_boot`` resampled mean
accuracies, ``boot[k, b] = A_k + e_test[k, b] + e_seed[k, b]``, where ``A_k`` is the mean over the
cell's seeds. Resample ``b`` is one draw of the whole task, so every comparison between cells
keeps the pairing the design gives it:

* ``e_test``, the finite test set. All runs of a task are scored on one test set, so resample
  ``b`` draws one multiset of test examples per task (with replacement) and recomputes every
  run's accuracy on it from its per-example scores (``scores.parquet``: prediction = score > 0).
  A run without per-example scores (JSONL-only records) gets an independent
  ``Binomial(n_test, accuracy) / n_test`` draw instead, which ignores the pairing and so errs
  wide. ``e_test`` of a cell is the mean over its runs.
* ``e_seed``, the seeds. A seed fixes everything random about a run that is not the test set:
  the weak labeller, the pools and their prefixes, the initialisation and the batch order, in
  every cell it touches; so a seed's runs move together across cells, in either direction
  (on the default grid, per-seed correlations between cells ranged from -0.76 to +0.86).
  Resample ``b`` therefore draws the seeds themselves, once for the whole task: a multiplier
  ``z[s, b] ~ N(0, 1)`` per seed id (a Gaussian multiplier, or wild, bootstrap), and every
  cell's deviation is ``sum_s (a_ks - A_k) z[s, b] / sqrt(n_k (n_k - 1))`` over its own seeds.
  Two cells that ran the same seeds then move with the seeds' own covariance (sample covariance
  / n), whatever its sign, so the resampled difference of any two is what a paired t-test
  would use; cells with different seed sets (some failed, or settle added seeds to some) share
  the draws of the seeds they share. Three choices keep the levels honest with few seeds,
  each measured on the null decision surfaces of :mod:`analysis.calibration` (20 replicates x
  5 budgets, two seeds of the simulation; "ruled out" should happen at <= 10% of budgets):

  - ``t[b] = sqrt(df / chi2_df)`` with ``df = n - 1``, one chi-square draw per resample shared by
    all cells of the task (comonotone across their ``df``): a spread estimated on ``n - 1``
    degrees of freedom is itself uncertain, so each cell and each same-seed difference is
    Student-t, and a quantile at any level (90% bands, one-sided bounds) is at the level it
    claims;
  - the sample correlations are shrunk towards 0 by ``CORRELATION_PRIOR_DF`` pseudo-seeds of
    independence (weight ``(n - 1) / (n - 1 + 0.5)`` on the sample's, an independent normal
    for the rest): with 3-5 seeds a chance correlation near 1 makes a difference look certain,
    and a maximum over many pairs sharing one chi-square draw is lighter-tailed than the real
    one. Without shrinking, something was ruled out at 10-14% of null budgets; with 0.5,
    6-8%. With 20 seeds the weight is 0.97: settled contenders keep nearly all their pairing;
  - each run's own test noise (two runs disagree on some examples) is in both parts: the
    spread of a cell's runs and ``e_test``. Subtracting an estimate of it (on ``n - 1`` df) from
    the seed spread narrowed cells whose seed noise is mostly test noise past their level
    (ruled out at 14% of null budgets with 3 seeds); counted twice, it errs wide by a little.

  The Bayesian bootstrap (Exp(1) weights per seed) was tried first: with 3 seeds its discrete,
  skewed draws ruled something out at 14% of null budgets.

  A cell with fewer than ``MIN_JOINT_SEEDS`` seeds (its other runs failed or were infeasible)
  cannot be resampled on its own seeds: its seed noise is a normal draw, independent of the
  other cells, with the variance pooled over the replicated cells *of its own budget* (seed
  noise differs most between budgets: many weak labels at a small budget scatter most; the
  task's widest budget pool where its budget has none), shrunk with its own spread if it has
  two seeds (``PRIOR_DF``). Independence is right on average and wrong for any one pair (it
  ignores the cell's correlation with the others, either sign): the notes name such cells, and
  tests/test_analysis_settle.py checks the bands of its differences on surfaces with positive
  and with negative seed correlations. A cell with enough seeds keeps its own spread: pooling
  it with others (by budget, or by weak share as before) gave oracle-only cells the spread of
  weak-label cells, or the reverse.
* One seed per task (no cell has two): seed noise cannot be told from real differences. Its
  variance is then estimated from the differences between neighbouring configurations of one
  variant and budget (ordered by oracle labels), ``(A_next - A) / sqrt(2)``, a difference-based
  estimate (Rice 1984) that is the seed noise when all configurations are equal and counts any
  real jump as noise (it errs wide); it is drawn independently per cell, less the test part, and
  the notes say so.

Nothing here imports JAX.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from analysis.records import CELL_KEYS

DEFAULT_N_BOOT = 2000  # resamples everywhere by default (sd of a 90% quantile ~ 1% of its width)
MIN_POOL_DF = 4  # one-seed fallback: differences a pool needs before it is used
PRIOR_DF = 4  # a modelled cell: weight of its budget's pool, in df, against its own spread
# shrinks the seeds' sample correlations towards 0 (module docstring): on the null decision
# surfaces, something was ruled out at 10-14% of budgets with none, 6-8% with 0.5 or 1
CORRELATION_PRIOR_DF = 0.5
MIN_JOINT_SEEDS = 3  # fewer seeds than this: the cell's seed noise is modelled (module docstring)


@dataclasses.dataclass
class CellResamples:
    """Resampled mean accuracies per (task, cell).

    Attributes:
      boot: ``{CELL_KEYS tuple: [n_boot] array}``.
      notes: plain-language lines on how the noise was modelled (for the report).
      test: ``{CELL_KEYS tuple: [n_boot] e_test}``, the test-set part of ``boot`` alone.
      test_run_var: ``{CELL_KEYS tuple: v_test / n}``, the part of that part's variance that is
        the runs' own (it shrinks with more seeds; the rest does not: a larger test set would).
      n_test: ``{task: test examples}`` (None where unknown).
    """

    boot: dict[tuple, np.ndarray]
    notes: list[str]
    test: dict[tuple, np.ndarray] = dataclasses.field(default_factory=dict)
    test_run_var: dict[tuple, float] = dataclasses.field(default_factory=dict)
    n_test: dict[str, int | None] = dataclasses.field(default_factory=dict)


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


def robust_scale(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Half the 15.9-84.1% range along ``axis``: the standard deviation of a normal, and finite
    for the heavy-tailed (Student-t, few df) resamples where a variance need not exist."""
    lo, hi = np.quantile(x, [0.15866, 0.84134], axis=axis)
    return (hi - lo) / 2


def _uniforms(n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot] uniforms kept off 0 and 1, for chi-square quantiles."""
    return np.clip(rng.random(n_boot), 1e-9, 1 - 1e-9)


def _t_scale(u: np.ndarray, df: float) -> np.ndarray:
    """[n_boot] ``sqrt(df / chi2_df)`` at the uniforms ``u``: times a normal draw it is a Student-t
    draw with ``df`` degrees of freedom (a spread estimated on ``df`` is itself uncertain)."""
    if not np.isfinite(df) or df >= 1e6:
        return np.ones_like(u)
    from scipy.stats import chi2
    return np.sqrt(df / chi2.ppf(u, max(float(df), 1.0)))


@dataclasses.dataclass
class _Task:
    """One task's runs and cells, as arrays (see :func:`_task_arrays`)."""

    cell_of: np.ndarray    # [runs] cell index
    seed_of: np.ndarray    # [runs] seed index within the task
    acc: np.ndarray        # [runs]
    mean: np.ndarray       # [K] mean over the cell's seeds
    size: np.ndarray       # [K] seeds of the cell
    groups: list           # [K] (variant, budget): the one-seed fallback's neighbourhoods
    order: list            # [K] (n_oracle, -n_weak): neighbour order within a group
    v_test: np.ndarray     # [K] runs' own test-noise variance (NaN for one seed)
    e_test: np.ndarray     # [K, B]


def _task_arrays(rows: pd.DataFrame, n_boot: int, rng: np.random.Generator,
                 counts: dict[str, int]) -> tuple[_Task, list[tuple]]:
    """The arrays of one task and its cells' keys; test-set resamples drawn here."""
    rows = rows.reset_index(drop=True)
    keys = list(CELL_KEYS)
    cell_of = rows.groupby(keys, sort=True, dropna=False).ngroup().to_numpy()
    _, first = np.unique(cell_of, return_index=True)
    cells = rows.iloc[first].reset_index(drop=True)
    n_cells = len(cells)
    seeds = rows["seed"].to_numpy() if "seed" in rows.columns else np.arange(len(rows))
    seed_of = np.unique(seeds.astype(str), return_inverse=True)[1]
    acc = rows["metrics.accuracy"].to_numpy(dtype=float)
    d = _test_deviations(rows, n_boot, rng, counts)
    size = np.bincount(cell_of, minlength=n_cells)
    mean = np.bincount(cell_of, weights=acc, minlength=n_cells) / size
    e_test = np.zeros((n_cells, n_boot))
    np.add.at(e_test, cell_of, d)
    e_test /= size[:, None]
    v_test = np.full(n_cells, np.nan)
    for k in np.flatnonzero(size >= 2):
        v_test[k] = d[cell_of == k].var(axis=0, ddof=1).mean()
    budgets = cells["budget"].tolist() if "budget" in cells.columns else [None] * n_cells
    budgets = [None if b is None or (isinstance(b, float) and math.isnan(b)) else float(b)
               for b in budgets]
    n_weak, n_oracle = cells["n_weak"].to_numpy(), cells["n_oracle"].to_numpy()
    task = _Task(cell_of, seed_of, acc, mean, size,
                 list(zip(cells["variant"].tolist(), budgets)),
                 list(zip(n_oracle.tolist(), (-n_weak).tolist())), v_test, e_test)
    return task, list(cells[keys].itertuples(index=False, name=None))


def _comonotone_t(u: np.ndarray, df: np.ndarray) -> np.ndarray:
    """[K, n_boot] :func:`_t_scale` of each cell's ``df`` at the shared uniforms ``u``."""
    out = np.empty((len(df), len(u)))
    for value in np.unique(df):
        out[df == value] = _t_scale(u, float(value))
    return out


def _budget_pools(task: _Task, var: np.ndarray):
    """``{budget: (variance, df)}`` pooled over a budget's cells with two or more seeds, and
    the widest of them (for a budget with none)."""
    pools = {}
    for budget in {g[1] for g in task.groups}:
        members = [k for k in np.flatnonzero(task.size >= 2) if task.groups[k][1] == budget]
        if members:
            df = int((task.size[members] - 1).sum())
            pools[budget] = (float(((task.size[members] - 1) * var[members]).sum() / df), df)
    widest = max(pools.values()) if pools else (0.0, 1)
    return pools, widest


def _joint_seed_noise(task: _Task, n_boot: int, rng: np.random.Generator,
                      counts: dict[str, int], notes: list[str], name: str) -> np.ndarray:
    """[K, n_boot] ``e_seed`` of a task with replicated cells: seeds drawn jointly (a Gaussian
    multiplier per seed id), the model only for cells with too few seeds (module docstring)."""
    n_cells, n_seeds = len(task.size), int(task.seed_of.max()) + 1
    dev = np.zeros((n_cells, n_seeds))
    dev[task.cell_of, task.seed_of] = task.acc - task.mean[task.cell_of]
    n = task.size.astype(float)
    var = np.where(n >= 2, (dev ** 2).sum(1) / np.maximum(n - 1, 1), np.nan)  # [K] s^2
    z = rng.standard_normal((n_seeds, n_boot))                                  # [S, B]
    u = _uniforms(n_boot, rng)
    joint = n >= MIN_JOINT_SEEDS
    pools, widest = _budget_pools(task, var)
    v, df = np.zeros(n_cells), np.ones(n_cells)
    for k in range(n_cells):
        pool_v, pool_df = pools.get(task.groups[k][1], widest)
        counts["other_budget"] += task.groups[k][1] not in pools and not joint[k]
        own_df = n[k] - 1
        if joint[k]:
            v[k], df[k] = var[k], own_df
        elif own_df > 0:
            v[k] = (own_df * var[k] + PRIOR_DF * pool_v) / (own_df + PRIOR_DF)
            df[k] = min(pool_df, own_df + PRIOR_DF)
        else:
            v[k], df[k] = pool_v, pool_df
    # the seeds' own pattern, standardised per cell (sum of squares n - 1): [K, B] of unit
    # variance, carrying the sample correlations of cells that share seeds
    sd = np.sqrt(np.where(var > 0, var, np.inf))
    paired = np.where(joint[:, None], (dev / sd[:, None]) @ z, 0.0) / \
        np.sqrt(np.maximum(n - 1, 1))[:, None]
    # weight of the sample correlations: CORRELATION_PRIOR_DF pseudo-seeds of independence
    lam = np.where(joint, (n - 1) / (n - 1 + CORRELATION_PRIOR_DF), 0.0)
    own = rng.standard_normal((n_cells, n_boot))
    out = (np.sqrt(v / n)[:, None] * (np.sqrt(lam)[:, None] * paired
                                      + np.sqrt(1 - lam)[:, None] * own)
           * _comonotone_t(u, df))
    few = np.flatnonzero(~joint)
    counts["modelled"] += len(few)
    counts["joint"] += int(joint.sum())
    median = int(np.median(n[joint])) if joint.any() else 0
    notes.append(f"{name}: {n_seeds} seed ids; {int(joint.sum())} of {n_cells} configurations "
                 f"resampled on their own seeds (median {median} seeds)"
                 + (f", {len(few)} with fewer than {MIN_JOINT_SEEDS} seeds modelled"
                    if len(few) else "") + ".")
    return out


def _neighbour_pool(task: _Task, members: list[int]):
    """``(variance, df)`` from differences between neighbouring configurations of one variant
    and budget, less their test part; None without a pair."""
    groups: dict[tuple, list[int]] = {}
    for k in members:
        groups.setdefault(task.groups[k], []).append(k)
    res, vt = [], []
    for ks in groups.values():
        ks = sorted(ks, key=lambda c: task.order[c])
        for a, b in zip(ks[:-1], ks[1:]):
            res.append((task.mean[b] - task.mean[a]) / math.sqrt(2))
            vt.append(float(np.var(task.e_test[b] - task.e_test[a])) / 2)
    if not res:
        return None
    return max(0.0, float(np.mean(np.square(res))) - float(np.mean(vt))), len(res)


def _neighbour_seed_noise(task: _Task, n_boot: int, rng: np.random.Generator,
                          counts: dict[str, int]) -> np.ndarray:
    """[K, n_boot] ``e_seed`` of a task where no cell has two seeds: neighbour differences,
    pooled over (variant, budget), else budget, variant or the task, independent per cell."""
    n_cells = len(task.size)
    v, df = np.zeros(n_cells), np.full(n_cells, np.inf)
    pools: dict[tuple, Any] = {}
    for k in range(n_cells):
        variant, budget = task.groups[k]
        levels = [("vb", variant, budget), ("b", budget), ("v", variant), ("task",)]
        for j, level in enumerate(levels):
            if level not in pools:
                members = [c for c in range(n_cells) if level in (
                    ("vb",) + task.groups[c], ("b", task.groups[c][1]),
                    ("v", task.groups[c][0]), ("task",))]
                pools[level] = _neighbour_pool(task, members)
            pool = pools[level]
            if pool is not None and (pool[1] >= MIN_POOL_DF or j == len(levels) - 1):
                v[k], df[k] = pool
                break
        else:
            counts["no_seed_noise"] += 1
        counts["unreplicated"] += 1
    draws = rng.standard_normal((n_cells, n_boot)) * np.sqrt(v / task.size)[:, None]
    return draws * _comonotone_t(_uniforms(n_boot, rng), df)


def _task_resamples(rows: pd.DataFrame, n_boot: int, rng: np.random.Generator,
                    counts: dict[str, int], notes: list[str], out: CellResamples) -> None:
    """Resampled cell means of one task into ``out`` (see the module docstring)."""
    task, keys = _task_arrays(rows, n_boot, rng, counts)
    if (task.size >= 2).any():
        e_seed = _joint_seed_noise(task, n_boot, rng, counts, notes, str(keys[0][0]))
    else:
        e_seed = _neighbour_seed_noise(task, n_boot, rng, counts)
    boot = (task.mean[:, None] + task.e_test + e_seed).astype(np.float32)
    out.boot.update(zip(keys, boot))
    out.test.update(zip(keys, task.e_test.astype(np.float32)))
    out.test_run_var.update(zip(keys, np.nan_to_num(task.v_test) / task.size))
    n_test = pd.to_numeric(rows["n_test"], errors="coerce").dropna() \
        if "n_test" in rows.columns else pd.Series(dtype=float)
    out.n_test[str(keys[0][0])] = int(n_test.median()) if len(n_test) else None


def resample_cells(frame: pd.DataFrame, n_boot: int = DEFAULT_N_BOOT,
                   seed: int = 0) -> CellResamples:
    """Resampled mean accuracy of every (task, cell) of ``frame`` (ok runs, one per cell and
    seed); see the module docstring for the noise model."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    counts = {"examples": 0, "binomial": 0, "none": 0, "unreplicated": 0, "no_seed_noise": 0,
              "joint": 0, "modelled": 0, "other_budget": 0}
    out = CellResamples({}, [])
    task_notes: list[str] = []
    for _, rows in frame.groupby("task", sort=True):
        _task_resamples(rows, n_boot, rng, counts, task_notes, out)
    out.notes = _notes(counts, len(frame), task_notes)
    return out


def _notes(counts: dict[str, int], n_runs: int, task_notes: list[str]) -> list[str]:
    """The plain-language notes of :func:`resample_cells`."""
    notes = [f"Test-set noise: per-example scores resampled for {counts['examples']} of {n_runs} "
             "runs (one draw of test examples per task, shared by its runs)"
             + (f"; a binomial model from n_test for {counts['binomial']}"
                if counts["binomial"] else "")
             + (f"; none for {counts['none']} (no scores and no n_test)" if counts["none"] else "")
             + "."]
    if task_notes:
        notes.append("Seed noise (seed ids drawn jointly for every configuration of a task, "
                     "a Gaussian multiplier per seed; spreads Student-t for the seeds behind "
                     "them): " + " ".join(task_notes))
    if counts["modelled"]:
        notes.append(f"{counts['modelled']} configuration(s) have fewer than {MIN_JOINT_SEEDS} "
                     "seeds: their seed noise is drawn from the spread pooled over their budget's "
                     "replicated configurations, independently of the others (their comparisons "
                     "ignore the seeds' pairing)" + (f"; {counts['other_budget']} took the "
                                                    "task's widest budget pool, theirs having "
                                                    "none" if counts["other_budget"] else "")
                     + ".")
    if counts["unreplicated"]:
        notes.append(f"{counts['unreplicated']} cell(s) belong to tasks where no configuration has "
                     "two seeds: their seed noise is estimated from the differences between "
                     "neighbouring configurations and drawn independently per cell, which makes "
                     "every comparison there conservative. Run more seeds to sharpen them.")
    if counts["no_seed_noise"]:
        notes.append(f"{counts['no_seed_noise']} cell(s) have no seed-noise estimate at all.")
    return notes
