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
* ``e_seed``, the seeds. A seed fixes the weak labeller and the pools of every cell it touches
  (on the default grid the labeller's pool accuracy moved by 0.05 between seeds, in every cell),
  so a cell's seed effect is modelled as ``w_k * L_s + eps_ks``: a labeller effect ``L_s`` shared
  by every cell that ran seed ``s``, loaded by the cell's weak share of training labels
  ``w_k = n_weak / (n_weak + n_oracle)`` (an all-oracle cell does not see the labeller), plus a
  cell's own noise ``eps_ks``. Resample ``b`` draws one ``L_s`` per seed of the task,
  ``N(0, sigma_L^2)``, used by every cell that ran that seed, and one ``eps`` per cell:

      e_seed[k, b] = w_k * t_L[b] * sigma_L * mean_{s in S_k} z[s, b]
                     + t_k[b] * sqrt(v_k / n_k) * eta[k, b],   z, eta ~ N(0, 1).

  Why parametric and not a multiset of seed indices with each cell's own residuals: with 3-5
  seeds, the covariance of two cells' residuals is estimated on 2-4 degrees of freedom, and a
  chance correlation near 1 makes their difference look certain; the factor model estimates the
  shared part from every weak-using cell of the task at once (``L_hat_s``, the least-squares
  fit of the residuals ``a_ks - A_k`` on ``w_k``, less its own noise), so paired comparisons
  keep the labeller's pairing without trusting 3-point correlations. Effects the model does not
  share (e.g. nested pools across budgets) stay in ``eps``, independent across cells, which errs
  wide for comparisons.

  ``v_k`` is the cell's own-noise variance: the variance of its residuals after the labeller
  part (ddof 1), less the runs' own test noise (the run-to-run variance of their test-resample
  deviations, which ``e_test`` already carries: not counted twice), shrunk towards the pooled
  value of cells of the same *kind* only (:func:`cell_kind`: oracle-only, mostly oracle, mostly
  weak, weak-only by training labels; an oracle-only cell never borrows the spread of weak-heavy
  ones), the pool weighing ``PRIOR_DF`` degrees of freedom. A cell with one seed (the others
  failed or were infeasible) takes its kind's pool; where the kind has no replicated cell, the
  largest pool of the task (conservative). Seeds a cell lacks simply do not enter its mean.
* Few seeds: a spread estimated on ``df`` degrees of freedom is itself uncertain, so each part is
  scaled by ``t[b] = sqrt(df / chi2_df)``, one chi-square draw per resample (shared by all cells
  of the task, comonotone across their ``df``): each part is then Student-t with the degrees of
  freedom behind it, so a quantile at any level (90% bands, one-sided 90% bounds, the
  simultaneous quantiles of :mod:`analysis.decisions`) is at the level it claims, not only the
  one a fixed factor was tuned to. ``df`` of ``sigma_L`` is the task's seeds minus 1; of ``v_k``
  its own ``n_k - 1`` plus ``PRIOR_DF``, capped by its pool's.
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
PRIOR_DF = 4  # weight of a kind's pool, in degrees of freedom, against a cell's own spread
KINDS = ("oracle-only", "mostly oracle", "mostly weak", "weak-only")


@dataclasses.dataclass
class CellResamples:
    """Resampled mean accuracies per (task, cell).

    Attributes:
      boot: ``{CELL_KEYS tuple: [n_boot] array}``.
      notes: plain-language lines on how the noise was modelled (for the report).
    """

    boot: dict[tuple, np.ndarray]
    notes: list[str]


def weak_share(n_weak, n_oracle) -> np.ndarray:
    """Share of the training labels that are weak (0 when nothing was bought)."""
    n_weak = np.asarray(n_weak, dtype=float)
    total = n_weak + np.asarray(n_oracle, dtype=float)
    return np.where(total > 0, n_weak / np.maximum(total, 1), 0.0)


def cell_kind(n_weak: int, n_oracle: int) -> str:
    """Kind of a cell for pooling seed noise: by its weak share of training labels (seed noise
    grows with it: weak-only runs on a few labels scatter most, oracle-only runs least)."""
    w = float(weak_share(n_weak, n_oracle))
    if w <= 0:
        return KINDS[0]
    if w >= 1:
        return KINDS[3]
    return KINDS[1] if w < 0.5 else KINDS[2]


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
    share: np.ndarray      # [K] weak share of training labels
    kinds: list            # [K] cell_kind
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
    task = _Task(cell_of, seed_of, acc, mean, size, weak_share(n_weak, n_oracle),
                 [cell_kind(w, o) for w, o in zip(n_weak, n_oracle)],
                 list(zip(cells["variant"].tolist(), budgets)),
                 list(zip(n_oracle.tolist(), (-n_weak).tolist())), v_test, e_test)
    return task, list(cells[keys].itertuples(index=False, name=None))


def _labeller_effect(task: _Task) -> tuple[float, int, np.ndarray]:
    """``(sigma_L^2, df, eps)``: the shared labeller effect's variance across seeds, its degrees
    of freedom, and every run's residual after it (centred within its cell).

    ``L_hat_s`` is the least-squares fit of the replicated weak-using cells' residuals on their
    weak share at seed ``s``; its spread across seeds, less the cells' own noise it averages
    (``sum w^2 v_eps / (sum w^2)^2``), estimates ``sigma_L^2``.
    """
    k, s, w = task.cell_of, task.seed_of, task.share[task.cell_of]
    resid = task.acc - task.mean[k]
    use = (task.size[k] >= 2) & (w > 0)
    n_seeds = int(s.max()) + 1 if len(s) else 0
    den = np.bincount(s[use], weights=w[use] ** 2, minlength=n_seeds)
    num = np.bincount(s[use], weights=(w * resid)[use], minlength=n_seeds)
    valid = den > 0
    if valid.sum() < 2:
        return 0.0, 0, resid
    lhat = np.where(valid, num / np.where(valid, den, 1), 0.0)
    lhat[valid] -= lhat[valid].mean()
    fitted = np.where(use, w * lhat[s], 0.0)
    size = np.maximum(task.size, 1)
    fitted -= (np.bincount(k, weights=fitted, minlength=len(size)) / size)[k]
    eps = resid - fitted
    df = int(valid.sum()) - 1
    v_eps = np.bincount(k, weights=eps ** 2, minlength=len(size)) / np.maximum(task.size - 1, 1)
    cells = np.unique(k[use])
    w2 = task.share[cells] ** 2
    noise = float((w2 * v_eps[cells]).sum() / w2.sum() ** 2)
    return max(0.0, float((lhat[valid] ** 2).sum() / df) - noise), df, eps


def _own_variances(task: _Task, eps: np.ndarray,
                   counts: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(v, df)`` per cell: own-noise variance (less the runs' test noise) shrunk towards the
    pooled value of its kind, and the degrees of freedom behind it (module docstring)."""
    n = len(task.size)
    own_df = np.maximum(task.size - 1, 0)
    raw = np.bincount(task.cell_of, weights=eps ** 2, minlength=n) / np.maximum(own_df, 1)
    own = np.where(own_df > 0, np.maximum(0.0, raw - np.nan_to_num(task.v_test)), np.nan)
    pools = {}
    for kind in KINDS:
        members = [c for c in range(n) if task.kinds[c] == kind and own_df[c] > 0]
        if members:
            df = int(own_df[members].sum())
            pools[kind] = (float((own_df[members] * own[members]).sum() / df), df)
    widest = max(pools.values()) if pools else (0.0, 1)
    v, df = np.zeros(n), np.ones(n)
    for c in range(n):
        pool_v, pool_df = pools.get(task.kinds[c], widest)
        if own_df[c] > 0:
            v[c] = (own_df[c] * own[c] + PRIOR_DF * pool_v) / (own_df[c] + PRIOR_DF)
            df[c] = min(pool_df, own_df[c] + PRIOR_DF)
        else:
            v[c], df[c] = pool_v, pool_df
            counts["borrowed"] += 1
            counts["other_kind"] += task.kinds[c] not in pools
    return v, df


def _comonotone_t(u: np.ndarray, df: np.ndarray) -> np.ndarray:
    """[K, n_boot] :func:`_t_scale` of each cell's ``df`` at the shared uniforms ``u``."""
    out = np.empty((len(df), len(u)))
    for value in np.unique(df):
        out[df == value] = _t_scale(u, float(value))
    return out


def _paired_seed_noise(task: _Task, n_boot: int, rng: np.random.Generator,
                       counts: dict[str, int], notes: list[str], name: str) -> np.ndarray:
    """[K, n_boot] ``e_seed`` of a task with replicated cells (module docstring)."""
    var_l, df_l, eps = _labeller_effect(task)
    v, df = _own_variances(task, eps, counts)
    n_cells, n_seeds = len(task.size), int(task.seed_of.max()) + 1
    present = np.zeros((n_cells, n_seeds))
    present[task.cell_of, task.seed_of] = 1.0
    present /= np.maximum(present.sum(1, keepdims=True), 1)
    z = rng.standard_normal((n_seeds, n_boot))
    shared = (task.share * math.sqrt(var_l))[:, None] * (present @ z)
    shared *= _t_scale(_uniforms(n_boot, rng), df_l)[None, :] if df_l else 0.0
    own = np.sqrt(v / np.maximum(task.size, 1))[:, None] * rng.standard_normal((n_cells, n_boot))
    own *= _comonotone_t(_uniforms(n_boot, rng), df)
    notes.append(f"{name}: {n_seeds} seeds; labeller effect shared by the cells of a seed, sd "
                 f"{math.sqrt(var_l):.3f} at weak share 1 ({df_l} df); own seed noise sd "
                 + ", ".join(f"{kind} {math.sqrt(np.mean(v[[c == kind for c in task.kinds]])):.3f}"
                             for kind in KINDS if kind in task.kinds) + ".")
    return shared + own


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
                    counts: dict[str, int], notes: list[str]) -> dict[tuple, np.ndarray]:
    """Resampled cell means of one task (see the module docstring)."""
    task, keys = _task_arrays(rows, n_boot, rng, counts)
    if (task.size >= 2).any():
        e_seed = _paired_seed_noise(task, n_boot, rng, counts, notes, str(keys[0][0]))
    else:
        e_seed = _neighbour_seed_noise(task, n_boot, rng, counts)
    boot = (task.mean[:, None] + task.e_test + e_seed).astype(np.float32)
    return dict(zip(keys, boot))


def resample_cells(frame: pd.DataFrame, n_boot: int = DEFAULT_N_BOOT,
                   seed: int = 0) -> CellResamples:
    """Resampled mean accuracy of every (task, cell) of ``frame`` (ok runs, one per cell and
    seed); see the module docstring for the noise model."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    counts = {"examples": 0, "binomial": 0, "none": 0, "unreplicated": 0, "no_seed_noise": 0,
              "borrowed": 0, "other_kind": 0}
    boot: dict[tuple, np.ndarray] = {}
    task_notes: list[str] = []
    for _, rows in frame.groupby("task", sort=True):
        boot.update(_task_resamples(rows, n_boot, rng, counts, task_notes))
    return CellResamples(boot, _notes(counts, len(frame), task_notes))


def _notes(counts: dict[str, int], n_runs: int, task_notes: list[str]) -> list[str]:
    """The plain-language notes of :func:`resample_cells`."""
    notes = [f"Test-set noise: per-example scores resampled for {counts['examples']} of {n_runs} "
             "runs (one draw of test examples per task, shared by its runs)"
             + (f"; a binomial model from n_test for {counts['binomial']}"
                if counts["binomial"] else "")
             + (f"; none for {counts['none']} (no scores and no n_test)" if counts["none"] else "")
             + "."]
    if task_notes:
        notes.append("Seed noise (seeds drawn jointly for every cell of a task; spreads Student-t "
                     "for the seeds behind them): " + " ".join(task_notes))
    if counts["borrowed"]:
        notes.append(f"{counts['borrowed']} cell(s) have one seed: their own seed noise is their "
                     "kind's pooled value" + (f" ({counts['other_kind']} with no replicated cell "
                                              "of their kind took the task's widest pool)"
                                              if counts["other_kind"] else "") + ".")
    if counts["unreplicated"]:
        notes.append(f"{counts['unreplicated']} cell(s) belong to tasks where no configuration has "
                     "two seeds: their seed noise is estimated from the differences between "
                     "neighbouring configurations and drawn independently per cell, which makes "
                     "every comparison there conservative. Run more seeds to sharpen them.")
    if counts["no_seed_noise"]:
        notes.append(f"{counts['no_seed_noise']} cell(s) have no seed-noise estimate at all.")
    return notes
