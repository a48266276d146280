"""Weak labellers: the interface, the non-model labellers, and the on-disk cache (SPEC section 4).

A labeller turns a task (and a seed) into `WeakLabels`: soft `P(y=1)` for every training example
it did not train on, plus the test set, with its accuracy and AUROC against ground truth. The
examples it trained on (`train_ids`) are excluded from the pools (`make_pools(exclude_ids=...)`)
and never labelled: the study's code leaked ~14% in-sample predictions.

A new labeller implements `name`, `config_dict()` and `label(task, seed)`; `label` picks its own
ground-truth examples with `labeler_train_split` and returns `make_weak_labels(...)`, which checks
the no-leak rule and computes the metrics.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import tempfile
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scalable_elicitation.data import Split, Task
from scalable_elicitation.data.processing import first_balanced

LABELS_VERSION = 2  # bump when a labeller's output for a given config changes
_NOISE_SALT = 0x6E6F6973  # keeps the noise stream apart from the data streams at the same seed
_TRAIN_SPLIT_SALT = 0x77747261


@dataclasses.dataclass
class WeakLabels:
    """Soft weak labels of one (task, labeller, seed)."""
    labeler: str  # e.g. "noise(rate=0.2)" or "model(minilm)"
    config: dict
    train_ids: np.ndarray  # ids the labeller trained on: excluded from pools, never labelled
    ids: np.ndarray  # ids it labelled: the training split minus train_ids, plus the test set
    soft: np.ndarray  # float32 P(y=1) per id
    metrics: dict  # pool_accuracy, pool_auroc, test_accuracy, test_auroc (vs ground truth)

    def __post_init__(self):
        self.train_ids = np.asarray(self.train_ids, dtype="<U16")
        self.ids = np.asarray(self.ids, dtype="<U16")
        self.soft = np.asarray(self.soft, dtype=np.float32)
        if len(self.ids) != len(self.soft):
            raise ValueError(f"{len(self.ids)} ids but {len(self.soft)} soft labels")
        self._index = {i: k for k, i in enumerate(self.ids.tolist())}

    def lookup(self, ids) -> np.ndarray:
        """Soft labels of the given ids; KeyError naming the first id that was not labelled."""
        out = np.empty(len(ids), dtype=np.float32)
        for k, i in enumerate(np.asarray(ids).tolist()):
            if i not in self._index:
                raise KeyError(f"id {i!r} has no weak label from {self.labeler} (it was not "
                               "labelled, or the labeller trained on it)")
            out[k] = self.soft[self._index[i]]
        return out

    def attach(self, split: Split) -> Split:
        """`split` with its `weak_label` column set from these labels."""
        return split.with_column("weak_label", self.lookup(split["id"]))


@runtime_checkable
class Labeler(Protocol):
    """What the sweep needs from a weak labeller."""
    name: str

    def config_dict(self) -> dict: ...

    def label(self, task: Task, seed: int) -> WeakLabels: ...


# ---------------------------------------------------------------------------- metrics


def accuracy(soft: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of soft labels hardened at 0.5 (ties count as 1)."""
    if len(labels) == 0:
        return float("nan")
    return float(np.mean((np.asarray(soft) >= 0.5).astype(np.int64) == np.asarray(labels)))


def positive_rate(soft: np.ndarray) -> float:
    """Share of examples called positive (soft label hardened at 0.5, ties count as 1)."""
    soft = np.asarray(soft)
    return float(np.mean(soft >= 0.5)) if len(soft) else float("nan")


def expected_calibration_error(soft: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """ECE of soft labels read as P(y=1): over `n_bins` equal-width bins of P(y=1), the
    size-weighted mean of |share of positives - mean P(y=1)| (SPEC section 11)."""
    soft, labels = np.asarray(soft, np.float64), np.asarray(labels, np.float64)
    if len(soft) == 0:
        return float("nan")
    bins = np.minimum((soft * n_bins).astype(np.int64), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        inside = bins == b
        if inside.any():
            total += inside.sum() * abs(labels[inside].mean() - soft[inside].mean())
    return float(total / len(soft))


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); NaN with a single class."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    n_pos, n_neg = int(np.sum(labels == 1)), int(np.sum(labels == 0))
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# ---------------------------------------------------------------------------- helpers


def labeler_train_split(task: Task, seed: int, n: int) -> Split:
    """A labeller's own ground-truth training examples: n seeded, balanced training examples.

    Their ids go into `WeakLabels.train_ids`, so the pools exclude them.
    """
    if n < 0:
        raise ValueError(f"a labeller's training set size must be >= 0, got {n}")
    rng = np.random.default_rng([seed, _TRAIN_SPLIT_SALT])
    order = rng.permutation(len(task.train))
    labels = task.train["label"][order]
    per_class = [int(np.sum(labels == c)) for c in (0, 1)]
    if n // 2 > min(per_class) or n - n // 2 > max(per_class):
        raise ValueError(f"task {task.name!r} cannot give a labeller {n} balanced training "
                         f"examples: its training split has {per_class} of labels 0/1")
    picked = first_balanced(labels, n - n % 2)
    if n % 2:  # one more example of either class, the next in the permutation
        rest = np.setdiff1d(np.arange(len(order)), picked)
        picked = np.sort(np.r_[picked, rest[0]])
    return task.train.take(order[picked])


def make_weak_labels(labeler: str, config: dict, task: Task, train_ids, pool_soft: np.ndarray,
                     test_soft: np.ndarray) -> WeakLabels:
    """Assembles `WeakLabels` from predictions on the pool and the test set, with metrics.

    `pool_soft` is aligned with `labelled_pool(task, train_ids)`, `test_soft` with `task.test`.
    Raises ValueError if a training id would be labelled (the no-leak rule) or sizes disagree.
    """
    train_ids = np.asarray(train_ids, dtype="<U16")
    pool = labelled_pool(task, train_ids)
    if np.isin(train_ids, task.test["id"]).any():
        raise ValueError(f"labeller {labeler} trained on test examples of task {task.name!r}")
    for what, soft, split in (("pool", pool_soft, pool), ("test", test_soft, task.test)):
        if len(soft) != len(split):
            raise ValueError(f"{labeler}: {len(soft)} {what} predictions for {len(split)} "
                             "examples")
        soft = np.asarray(soft, dtype=np.float64)
        if not np.all((soft >= 0) & (soft <= 1)):
            raise ValueError(f"{labeler}: {what} soft labels must be probabilities in [0, 1]")
    metrics = {"pool_accuracy": accuracy(pool_soft, pool["label"]),
               "pool_auroc": auroc(pool_soft, pool["label"]),
               "pool_positive_rate": positive_rate(pool_soft),
               "pool_ece": expected_calibration_error(pool_soft, pool["label"]),
               "test_ece": expected_calibration_error(test_soft, task.test["label"]),
               "test_accuracy": accuracy(test_soft, task.test["label"]),
               "test_auroc": auroc(test_soft, task.test["label"]),
               "n_pool": len(pool), "n_test": len(task.test), "n_train": len(train_ids)}
    return WeakLabels(labeler, config, train_ids, np.r_[pool["id"], task.test["id"]],
                      np.r_[np.asarray(pool_soft), np.asarray(test_soft)], metrics)


def labelled_pool(task: Task, train_ids) -> Split:
    """The training examples a labeller labels: all but those it trained on."""
    return task.train.take(~np.isin(task.train["id"], np.asarray(train_ids, dtype="<U16")))


# ---------------------------------------------------------------------------- labellers


def _feature_name(only_where) -> str | None:
    if only_where is None:
        return None
    if isinstance(only_where, str):
        re.compile(only_where)  # fail early on a bad pattern
        return f"regex:{only_where}"
    name = getattr(only_where, "__qualname__", None)
    if not callable(only_where) or name is None or "<lambda>" in name or "<locals>" in name:
        raise ValueError("only_where must be a regex string or a named module-level function "
                         "(its name keys the cache), not a lambda or closure")
    return f"{only_where.__module__}.{name}"


def feature_mask(texts: np.ndarray, only_where) -> np.ndarray:
    """Where the feature holds: regex search on the text, or a callable on the text."""
    if only_where is None:
        return np.ones(len(texts), dtype=bool)
    if isinstance(only_where, str):
        pattern = re.compile(only_where)
        return np.array([pattern.search(t) is not None for t in texts], dtype=bool)
    return np.array([bool(only_where(t)) for t in texts], dtype=bool)


@dataclasses.dataclass
class NoiseLabeler:
    """Ground truth with `round(rate * n)` labels flipped, counted separately on pool and test,
    optionally only among examples where `only_where` holds (a regex on the text or a named
    function of it) for salience studies. Hard labels are 0/1; `soft=True` gives the flipped-or-
    not label a confidence of `1 - rate` (P(y=1) is `1 - rate` or `rate`)."""
    rate: float
    only_where: str | Callable[[str], bool] | None = None
    soft: bool = False

    def __post_init__(self):
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"NoiseLabeler rate must be in [0, 1], got {self.rate}")
        self._feature = _feature_name(self.only_where)

    @property
    def name(self) -> str:
        parts = [f"rate={self.rate:g}"]
        if self._feature:
            parts.append(f"where={self._feature}")
        if self.soft:
            parts.append("soft")
        return f"noise({','.join(parts)})"

    def config_dict(self) -> dict:
        return {"kind": "noise", "rate": self.rate, "only_where": self._feature,
                "soft": self.soft}

    def _noisy(self, split: Split, rng: np.random.Generator) -> np.ndarray:
        eligible = np.flatnonzero(feature_mask(split["text"], self.only_where))
        n_flip = int(round(self.rate * len(eligible)))
        flip = rng.permutation(eligible)[:n_flip]
        noisy = split["label"].copy()
        noisy[flip] = 1 - noisy[flip]
        if self.soft:
            return np.where(noisy == 1, 1.0 - self.rate, self.rate).astype(np.float32)
        return noisy.astype(np.float32)

    def label(self, task: Task, seed: int) -> WeakLabels:
        rng = np.random.default_rng([seed, _NOISE_SALT])
        pool = labelled_pool(task, ())
        return make_weak_labels(self.name, self.config_dict(), task, (),
                                self._noisy(pool, rng), self._noisy(task.test, rng))


@dataclasses.dataclass
class FileLabeler:
    """The `weak_label` column of a user's task file (e.g. real crowd labels)."""
    name: str = "file"

    def config_dict(self) -> dict:
        return {"kind": "file"}

    def label(self, task: Task, seed: int) -> WeakLabels:
        for split_name, split in (("train", task.train), ("test", task.test)):
            if "weak_label" not in split:
                raise ValueError(f"FileLabeler needs a 'weak_label' column; the {split_name} "
                                 f"split of task {task.name!r} has {list(split.columns)} (give "
                                 "the task file a weak_label column in [0, 1])")
        return make_weak_labels(self.name, self.config_dict(), task, (),
                                task.train["weak_label"], task.test["weak_label"])


@dataclasses.dataclass
class ModelLabeler:
    """A small model finetuned on `n_train` ground-truth training examples (excluded from the
    pools it then labels), whose soft P(y=1) is the weak label (SPEC section 4; the study used
    Qwen1.5-0.5B, the embedded default MiniLM). `epochs` passes at batch `batch_size`;
    `trainable="head"` trains a linear probe on cached pooled features."""
    source: str = "minilm"
    n_train: int = 64
    trainable: str = "head"
    lr: float = 1e-2
    epochs: float = 3.0
    batch_size: int = 32
    max_length: int = 64
    dtype: str = "float32"
    cache_dir: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        if self.n_train < 2:
            raise ValueError(f"ModelLabeler n_train must be >= 2, got {self.n_train}")

    @property
    def name(self) -> str:
        return f"model({self.source},n={self.n_train},{self.trainable})"

    def config_dict(self) -> dict:
        return {"kind": "model", "source": self.source, "n_train": self.n_train,
                "trainable": self.trainable, "lr": self.lr, "epochs": self.epochs,
                "batch_size": self.batch_size, "max_length": self.max_length,
                "dtype": self.dtype}

    def label(self, task: Task, seed: int) -> WeakLabels:
        import jax

        from scalable_elicitation.learner import Learner, LearnerConfig
        from scalable_elicitation.stage import StageConfig, predict, run_stage

        learner = Learner(LearnerConfig(
            self.source, trainable=self.trainable, dtype=self.dtype,
            max_length=self.max_length, buckets=(self.max_length,),
            batch_size=self.batch_size), cache_dir=self.cache_dir)
        train = labeler_train_split(task, seed, self.n_train)
        # a probe sees features standardised with its task's unlabelled training texts
        stats = (learner.feature_stats(task.train["id"], task.train["text"])
                 if learner.probe else None)

        def inputs(split):
            data = learner.data(split["id"], split["text"])
            return stats.apply(data) if stats is not None else data

        data = inputs(train)
        key = jax.random.key(seed)
        init_key, train_key = jax.random.split(jax.random.fold_in(key, _TRAIN_SPLIT_SALT))
        result = run_stage(
            learner.steps, learner.steps.fresh_params(init_key), data,
            train["label"].astype(np.float32), None, None,
            StageConfig(lr=self.lr, epochs=self.epochs, use_validation=False),
            seed_path=[seed, _TRAIN_SPLIT_SALT], key=train_key, spec=learner.spec,
            source="labeler")
        pool = labelled_pool(task, train["id"])

        def soft(split):
            scores = predict(learner.steps, result.params, inputs(split), learner.spec)
            return (1.0 / (1.0 + np.exp(-scores.astype(np.float64)))).astype(np.float32)

        return make_weak_labels(self.name, self.config_dict(), task, train["id"], soft(pool),
                                soft(task.test))


# ---------------------------------------------------------------------------- cache


def weak_labels_key(labeler: Labeler, task: Task, seed: int) -> str:
    """Cache key of (task name + options, labeller config, seed)."""
    payload = json.dumps({"task": task.key, "labeler": labeler.name,
                          "config": labeler.config_dict(), "seed": seed,
                          "version": LABELS_VERSION}, sort_keys=True, default=str)
    return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()


def weak_labels_paths(cache_dir, key: str) -> tuple[pathlib.Path, pathlib.Path]:
    """(parquet, metadata json) paths of a cache entry."""
    folder = pathlib.Path(cache_dir) / "weak_labels"
    return folder / f"{key}.parquet", folder / f"{key}.json"


def _atomic_write(path: pathlib.Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_weak_labels(weak: WeakLabels, parquet_path: pathlib.Path, json_path: pathlib.Path,
                     meta: dict) -> None:
    """Writes the columnar file, then the metadata (its presence marks a complete entry)."""
    parquet_path.parent.mkdir(parents=True, exist_ok=True)
    is_train = np.r_[np.zeros(len(weak.ids), bool), np.ones(len(weak.train_ids), bool)]
    table = pa.table({"id": np.r_[weak.ids, weak.train_ids].astype(str),
                      "soft": np.r_[weak.soft, np.full(len(weak.train_ids), np.nan, np.float32)],
                      "labeler_train": is_train})
    _atomic_write(parquet_path, lambda tmp: pq.write_table(table, tmp))
    text = json.dumps({**meta, "labeler": weak.labeler, "config": weak.config,
                       "metrics": weak.metrics}, indent=1, sort_keys=True, default=str)
    _atomic_write(json_path, lambda tmp: pathlib.Path(tmp).write_text(text))


def load_weak_labels(parquet_path, json_path) -> WeakLabels:
    """Reads a cache entry written by `save_weak_labels`."""
    meta = json.loads(pathlib.Path(json_path).read_text())
    table = pq.read_table(parquet_path)
    ids = np.asarray(table.column("id").to_pylist(), dtype="<U16")
    is_train = table.column("labeler_train").to_numpy(zero_copy_only=False)
    soft = table.column("soft").to_numpy(zero_copy_only=False).astype(np.float32)
    return WeakLabels(meta["labeler"], meta["config"], ids[is_train], ids[~is_train],
                      soft[~is_train], meta["metrics"])


def cached_weak_labels(labeler: Labeler, task: Task, seed: int, cache_dir) -> WeakLabels:
    """`labeler.label(task, seed)`, computed once per (task, labeller config, seed) and cached
    as `cache_dir/weak_labels/KEY.parquet` plus `KEY.json` (config, task, seed, metrics)."""
    key = weak_labels_key(labeler, task, seed)
    parquet_path, json_path = weak_labels_paths(cache_dir, key)
    if json_path.exists() and parquet_path.exists():
        return load_weak_labels(parquet_path, json_path)
    weak = labeler.label(task, seed)
    meta = {"key": key, "task": task.name, "task_key": task.key, "task_options": task.options,
            "seed": seed, "version": LABELS_VERSION}
    save_weak_labels(weak, parquet_path, json_path, meta)
    return weak


def cached_metadata(cache_dir, task: Task | None = None) -> list[dict]:
    """Metadata of every cached weak-label entry (of `task`, if given)."""
    folder = pathlib.Path(cache_dir) / "weak_labels"
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        meta = json.loads(path.read_text())
        if task is None or meta.get("task_key") == task.key:
            out.append(meta)
    return out
