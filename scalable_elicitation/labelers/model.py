"""A weak labeller that is a small model finetuned on a few ground-truth examples."""
from __future__ import annotations

import dataclasses

import numpy as np

from scalable_elicitation.data import Task
from scalable_elicitation.labelers.interface import (TRAIN_SPLIT_SALT, WeakLabels,
                                                     labeler_train_split, labelled_pool,
                                                     make_weak_labels)


@dataclasses.dataclass
class ModelLabeler:
    """A small model finetuned on `n_train` ground-truth training examples (excluded from the
    pools it then labels), whose soft P(y=1) is the weak label (docs/design.md#weak-labels; the
    study used Qwen1.5-0.5B, the embedded default MiniLM). `epochs` passes at batch `batch_size`;
    `trainable="head"` trains a linear probe on cached pooled features."""
    source: str = "minilm"
    n_train: int = 64
    trainable: str = "head"
    lr: float = 1e-2
    epochs: float = 3.0
    batch_size: int = 32
    max_length: int = 64
    dtype: str = "float32"
    # rows per device per pass (`LearnerConfig.micro_batch`): how a step runs, not what it
    # computes, so not in `config_dict` (the labeller's identity)
    micro_batch: int = dataclasses.field(default=0, compare=False)
    cache_dir: str | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        if self.n_train < 2:
            raise ValueError(f"ModelLabeler n_train must be >= 2, got {self.n_train}")
        if self.micro_batch < 0 or (self.micro_batch and self.batch_size % self.micro_batch):
            raise ValueError(f"labeler.micro_batch={self.micro_batch} must be >= 0 and divide "
                             f"labeler.batch_size={self.batch_size} (0: the whole batch)")

    @property
    def name(self) -> str:
        return f"model({self.source},n={self.n_train},{self.trainable})"

    def config_dict(self) -> dict:
        return {"kind": "model", "source": self.source, "n_train": self.n_train,
                "trainable": self.trainable, "lr": self.lr, "epochs": self.epochs,
                "batch_size": self.batch_size, "max_length": self.max_length,
                "dtype": self.dtype}

    def label(self, task: Task, seed: int) -> WeakLabels:
        # imported here, not at the top: planning reads a labeller's identity (`config_dict`)
        # and must not load JAX; the learner sits below this module, so this is no cycle
        import jax

        from scalable_elicitation.groups import run_stage
        from scalable_elicitation.learner import Learner, LearnerConfig
        from scalable_elicitation.stage import StageConfig, predict

        learner = Learner(LearnerConfig(
            self.source, trainable=self.trainable, dtype=self.dtype,
            max_length=self.max_length, buckets=(self.max_length,),
            batch_size=self.batch_size, micro_batch=self.micro_batch), cache_dir=self.cache_dir)
        train = labeler_train_split(task, seed, self.n_train)
        # a probe sees features standardised with its task's unlabelled training texts
        stats = (learner.feature_stats(task.train["id"], task.train["text"])
                 if learner.probe else None)

        def inputs(split):
            data = learner.data(split["id"], split["text"])
            return stats.apply(data) if stats is not None else data

        data = inputs(train)
        key = jax.random.key(seed)
        init_key, train_key = jax.random.split(jax.random.fold_in(key, TRAIN_SPLIT_SALT))
        result = run_stage(
            learner.steps, learner.steps.fresh_params(init_key), data,
            train["label"].astype(np.float32), None, None,
            StageConfig(lr=self.lr, epochs=self.epochs, use_validation=False),
            seed_path=[seed, TRAIN_SPLIT_SALT], key=train_key, spec=learner.spec,
            source="labeler")
        pool = labelled_pool(task, train["id"])

        def soft(split):
            scores = predict(learner.steps, result.params, inputs(split), learner.spec)
            return (1.0 / (1.0 + np.exp(-scores.astype(np.float64)))).astype(np.float32)

        return make_weak_labels(self.name, self.config_dict(), task, train["id"], soft(pool),
                                soft(task.test))
