"""The weak-labeller interface (docs/design.md#weak-labels).

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
from typing import Protocol, runtime_checkable

import numpy as np

from scalable_elicitation.data import Split, Task
from scalable_elicitation.data.processing import first_balanced
from scalable_elicitation.metrics import accuracy, auroc, expected_calibration_error, positive_rate

TRAIN_SPLIT_SALT = 0x77747261  # a labeller's own training examples: their own random stream


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


@runtime_checkable
class Labeler(Protocol):
    """What the sweep needs from a weak labeller."""
    name: str

    def config_dict(self) -> dict: ...

    def label(self, task: Task, seed: int) -> WeakLabels: ...


def labeler_train_split(task: Task, seed: int, n: int) -> Split:
    """A labeller's own ground-truth training examples: n seeded, balanced training examples.

    Their ids go into `WeakLabels.train_ids`, so the pools exclude them.
    """
    if n < 0:
        raise ValueError(f"a labeller's training set size must be >= 0, got {n}")
    rng = np.random.default_rng([seed, TRAIN_SPLIT_SALT])
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
