"""The one pipeline every loader runs: shuffle, format, drop empty and duplicate texts, balance.

Loaders differ only in how they read raw rows (a pyarrow table) and in their `FormatFn`; the
held-out rules of docs/design.md#splits are in `build_splits`:
- a task with a labelled held-out split: the test set is up to `n_test` balanced examples of that
  split, processed at seed 0;
- a task without one (SciQ, MMLU, the tweets, a file without a `split` column): the whole pool is
  processed at seed 0, its first `n_test` balanced examples are held out, and the training split
  is built from the remaining rows.
Either way the test set depends on the task only, never on the run's seed. Training texts that
also occur in the test set are dropped (ids must be unique across a task).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from scalable_elicitation.data.split import Split, text_ids

TEST_SEED = 0  # the test set depends on the task only

# format_fn(row, coin, pick) -> (text, label) or None to drop the row. `coin` (bool, P=1/2) says
# whether a multiple-choice task shows its correct answer; `pick` (uniform in [0, 1)) picks the
# wrong answer otherwise. Both are drawn per row from the split's seeded generator.
FormatFn = Callable[[Mapping[str, Any], bool, float], "tuple[str, int] | None"]


def shuffle_order(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded row order plus one coin and one pick per position."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    coins = rng.random(n) < 0.5
    picks = rng.random(n)
    return order, coins, picks


def balanced_indices(labels: np.ndarray) -> np.ndarray:
    """Indices (in order) keeping the first m examples of each class, m the minority count.

    The input order is already a seeded shuffle, so keeping the first m of the majority class is
    a uniform undersample.
    """
    labels = np.asarray(labels)
    m = min(int(np.sum(labels == 0)), int(np.sum(labels == 1)))
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in (0, 1):
        members = labels == c
        rank[members] = np.arange(int(members.sum()))
    return np.flatnonzero(rank < m)


def first_balanced(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices (in order) of the first n // 2 examples of each class (fewer if a class runs out)."""
    labels = np.asarray(labels)
    keep = np.zeros(len(labels), dtype=bool)
    for c in (0, 1):
        keep[np.flatnonzero(labels == c)[: n // 2]] = True
    return np.flatnonzero(keep)


def process_rows(table: pa.Table, format_fn: FormatFn, seed: int, *,
                 extra_columns: tuple[str, ...] = (), max_rows: int | None = None,
                 ) -> tuple[Split, np.ndarray, dict]:
    """Shuffles, formats, drops empty and duplicate texts and balances one split.

    Returns the split, the source row of each kept example, and counts of what was dropped.
    `extra_columns` (e.g. `weak_label`) are carried over from the raw rows unchanged.
    `max_rows` caps how many shuffled raw rows are read (for very large hub splits).
    """
    order, coins, picks = shuffle_order(table.num_rows, seed)
    if max_rows is not None:
        order, coins, picks = order[:max_rows], coins[:max_rows], picks[:max_rows]
    rows = table.take(pa.array(order, type=pa.int64())).to_pylist()
    texts, labels, source_rows = [], [], []
    seen: set[str] = set()
    stats = {"raw": len(rows), "unformattable": 0, "empty": 0, "duplicate": 0}
    for k, row in enumerate(rows):
        out = format_fn(row, bool(coins[k]), float(picks[k]))
        if out is None:
            stats["unformattable"] += 1
            continue
        text, label = out
        text = text.strip() if isinstance(text, str) else ""
        if not text:
            stats["empty"] += 1
            continue
        if text in seen:
            stats["duplicate"] += 1
            continue
        seen.add(text)
        texts.append(text)
        labels.append(int(label))
        source_rows.append(int(order[k]))
    source_rows = np.asarray(source_rows, dtype=np.int64)
    extras = {c: np.asarray(table.column(c).to_numpy(zero_copy_only=False))[source_rows]
              for c in extra_columns}
    split = Split.from_texts(texts, np.asarray(labels, dtype=np.int64), **extras)
    return split, source_rows, stats


def _finish_train(split: Split, test_ids: np.ndarray, stats: dict, max_train: int | None
                  ) -> tuple[Split, dict]:
    overlap = np.isin(split["id"], test_ids)
    split = split.take(~overlap)
    stats = {**stats, "in_test": int(overlap.sum())}
    split = split.take(balanced_indices(split["label"]))
    if max_train is not None and len(split) > max_train:
        split = split.take(first_balanced(split["label"], max_train))
    stats["kept"] = len(split)
    return split, stats


def build_splits(format_fn: FormatFn, *, seed: int, n_test: int,
                 train_table: pa.Table | None = None, test_table: pa.Table | None = None,
                 pool_table: pa.Table | None = None, extra_columns: tuple[str, ...] = (),
                 max_train: int | None = None) -> tuple[Split, Split, dict]:
    """Train and test splits under the held-out rules (see the module docstring).

    Pass either `train_table` and `test_table` (a labelled held-out split) or `pool_table` (hold
    out `n_test` balanced examples at seed 0). Returns (train, test, info).
    """
    if n_test < 0:
        raise ValueError(f"n_test must be >= 0, got {n_test}")
    if max_train is not None and max_train < 2:
        raise ValueError(f"max_train must be >= 2 or None, got {max_train}")
    if (pool_table is None) == (train_table is None or test_table is None):
        raise ValueError("build_splits needs either pool_table or both train_table and test_table")
    # Raw rows read per training split: enough for max_train after balancing in typical cases.
    max_rows = None if max_train is None else 4 * max_train
    if pool_table is not None:
        pool, pool_rows, pool_stats = process_rows(
            pool_table, format_fn, TEST_SEED, extra_columns=extra_columns)
        balanced = balanced_indices(pool["label"])
        pool, pool_rows = pool.take(balanced), pool_rows[balanced]
        held = first_balanced(pool["label"], n_test)
        test = pool.take(held)
        remaining = np.setdiff1d(np.arange(pool_table.num_rows), pool_rows[held])
        train_table = pool_table.take(pa.array(remaining, type=pa.int64()))
        test_stats = {**pool_stats, "kept": len(test)}
        holdout = "pooled"
    else:
        test, _, test_stats = process_rows(test_table, format_fn, TEST_SEED,
                                           extra_columns=extra_columns)
        test = test.take(first_balanced(test["label"], n_test))
        test_stats["kept"] = len(test)
        holdout = "split"
    train, _, train_stats = process_rows(train_table, format_fn, seed,
                                         extra_columns=extra_columns, max_rows=max_rows)
    train, train_stats = _finish_train(train, test["id"], train_stats, max_train)
    info = {"holdout": holdout, "n_train": len(train), "n_test": len(test),
            "n_test_requested": n_test, "train_stats": train_stats, "test_stats": test_stats}
    return train, test, info


def label_balance(split: Split) -> float:
    """Fraction of label 1."""
    return float(np.mean(split["label"])) if len(split) else float("nan")


def check_binary_labels(labels: np.ndarray) -> None:
    """Raises ValueError unless every label is 0 or 1."""
    bad = ~np.isin(labels, (0, 1))
    if bad.any():
        raise ValueError(f"labels must be 0 or 1; found {sorted(set(labels[bad].tolist()))[:5]}")


__all__ = ["FormatFn", "TEST_SEED", "balanced_indices", "build_splits", "first_balanced",
           "label_balance", "process_rows", "shuffle_order", "text_ids"]
