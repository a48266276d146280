"""Labellers without a model: ground truth with flipped labels (`NoiseLabeler`), and the weak
labels a task file carries (`FileLabeler`)."""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np

from scalable_elicitation.data import Split, Task
from scalable_elicitation.labelers.interface import WeakLabels, labelled_pool, make_weak_labels

_NOISE_SALT = 0x6E6F6973  # keeps the noise stream apart from the data streams at the same seed


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
