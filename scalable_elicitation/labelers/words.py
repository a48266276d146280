"""A weak labeller weak by capacity: a bag-of-words logistic regression on a few hundred
ground-truth examples (`labeler.kind = "words"`), the study's kind of weak model (small, trained
on plenty of ground truth) at CPU cost (docs/decisions.md#a-labeller-weak-by-capacity-capacity).

Each text becomes the presence of its lower-cased words and word pairs, hashed into `buckets`
dimensions (CRC-32: the same on every machine); the fit is `weak_fit`'s L2 logistic regression
with C chosen by 5-fold CV on the labeller's own ground-truth examples (excluded from the pools).
No JAX, no model weights.
"""
from __future__ import annotations

import dataclasses
import re
import zlib

import numpy as np

from scalable_elicitation.data import Task
from scalable_elicitation.labelers.interface import (TRAIN_SPLIT_SALT, WeakLabels,
                                                     labeler_train_split, labelled_pool,
                                                     make_weak_labels)

_WORD = re.compile(r"[a-z0-9']+")


def bag_of_words(texts, buckets: int) -> np.ndarray:
    """[N, buckets] float32: 1 where a hashed word or word pair of the text falls."""
    out = np.zeros((len(texts), buckets), np.float32)
    for row, text in enumerate(texts):
        words = _WORD.findall(str(text).lower())
        for gram in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
            out[row, zlib.crc32(gram.encode()) % buckets] = 1.0
    return out


@dataclasses.dataclass
class WordsLabeler:
    """Hashed bag-of-words L2 logistic regression on `n_train` ground-truth examples."""
    n_train: int = 400
    buckets: int = 1024

    def __post_init__(self):
        if self.n_train < 10:
            raise ValueError(f"WordsLabeler n_train must be >= 10 (5-fold CV), got "
                             f"{self.n_train}")
        if self.buckets < 2:
            raise ValueError(f"WordsLabeler buckets must be >= 2, got {self.buckets}")

    @property
    def name(self) -> str:
        return f"words(n={self.n_train},buckets={self.buckets})"

    def config_dict(self) -> dict:
        return {"kind": "words", "n_train": self.n_train, "buckets": self.buckets}

    def label(self, task: Task, seed: int) -> WeakLabels:
        from scalable_elicitation import weak_fit
        train = labeler_train_split(task, seed, self.n_train)
        fit = weak_fit.cross_validated_fit(
            bag_of_words(train["text"], self.buckets), train["label"].astype(np.float64),
            np.ones(len(train)), rng=np.random.default_rng([seed, TRAIN_SPLIT_SALT]))
        pool = labelled_pool(task, train["id"])

        def soft(split):
            z = bag_of_words(split["text"], self.buckets).astype(np.float64) @ fit.w + fit.b
            return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

        return make_weak_labels(self.name, self.config_dict(), task, train["id"], soft(pool),
                                soft(task.test))
