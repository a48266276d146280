"""What the runs of a sweep share, built lazily and kept (docs/design.md#data-and-pools): the
task (one training split and one test set, whatever the seed), per seed the weak labels and
pools, per learner config the learner (loaded weights, compiled steps), a probe's feature
statistics and plain test inputs, and per seed the statistics of its prompted features.

    data = SharedData(planner)                 # a `planning.Planner`: config, caches, labeller
    data.pools(seed).take("weak", 80)
"""
from __future__ import annotations

from typing import Any

import jax

from scalable_elicitation.batching import FeatureStats
from scalable_elicitation.data import load_task, make_pools
from scalable_elicitation.labelers import cached_weak_labels
from scalable_elicitation.learner import Learner, LearnerConfig
from scalable_elicitation.prompt_inputs import SeedPrompts


def learner_config(config, platform: str | None = None) -> LearnerConfig:
    """The learner a (run's) config asks for: model, trainable scope, lengths, batch, mesh,
    attention (`auto`: fused on GPUs and TPUs, our einsum path on CPU, where it is the
    reference the fused one is checked against). `platform`: the backend it will run on
    (default JAX's; launch/preflight.py names its target's)."""
    c = config
    attention = c.get("attention", "einsum")
    if attention == "auto":
        attention = "einsum" if (platform or jax.default_backend()) == "cpu" else "fused"
    return LearnerConfig(
        c.model, trainable=c.trainable, dtype=c.dtype, lora_rank=c.lora.rank,
        lora_alpha=c.lora.alpha, lora_dropout=c.lora.dropout, max_length=c.max_length,
        buckets=tuple(c.length_buckets), batch_size=c.train.batch_size,
        micro_batch=c.train.get("micro_batch", 0),
        mesh=tuple(c.mesh.items()), remat=c.remat, pooling=c.pooling or None,
        attention=attention)


class SharedData:
    """The per-task, per-seed and per-learner caches of one sweep. `learners`: a learner cache
    to share (by `LearnerConfig`), e.g. between sweeps of one process, so a model loads and its
    steps compile once."""

    def __init__(self, planner, learners: dict | None = None):
        self.config = planner.config
        self.cache_dir = planner.cache_dir
        self.task_options = planner.task_options
        self.labeler = planner.labeler
        self._task = None
        self._weak: dict[int, Any] = {}
        self._pools: dict[int, Any] = {}
        self._stats: dict[LearnerConfig, FeatureStats] = {}
        self._learners: dict[LearnerConfig, Learner] = {} if learners is None else learners
        self._tests: dict[LearnerConfig, Any] = {}
        self.prompts = SeedPrompts()  # a seed's prompted-feature statistics, once per seed

    def task(self):
        """The task's splits: one balanced training split, like the test set fixed by the task
        (`config.split_seed`), never by a run's seed. A run's seed draws its pools, the
        labeller's examples, the initialisation and the batch order from it, so every seed
        reuses the same texts' features."""
        if self._task is None:
            self._task = load_task(self.config.task, seed=self.config.get("split_seed", 0),
                                   n_test=self.config.n_test, cache_dir=self.cache_dir,
                                   **self.task_options)
        return self._task

    def weak_labels(self, seed: int):
        """The seed's weak labels (cached on disk per task split, labeller and seed)."""
        if seed not in self._weak:
            self._weak[seed] = cached_weak_labels(self.labeler, self.task(), seed,
                                                  self.cache_dir)
        return self._weak[seed]

    def pools(self, seed: int):
        """The seed's disjoint weak and oracle pools, without the labeller's own examples."""
        if seed not in self._pools:
            weak = self.weak_labels(seed)
            self._pools[seed] = make_pools(self.task().train, seed=seed,
                                           exclude_ids=weak.train_ids,
                                           oracle_share=self.config.oracle_share)
        return self._pools[seed]

    def learner_for(self, config) -> Learner:
        """The learner of a run's config, shared by every run that asks for the same one."""
        cfg = learner_config(config)
        if cfg not in self._learners:
            self._learners[cfg] = Learner(cfg, cache_dir=self.cache_dir)
        return self._learners[cfg]

    @property
    def learner(self) -> Learner:
        """The learner of the sweep's own config."""
        return self.learner_for(self.config)

    def feature_stats(self, learner: Learner | None = None) -> FeatureStats | None:
        """A probe's per-dimension feature statistics over the task's unlabelled training
        texts (docs/design.md#model); None when the model is finetuned."""
        learner = self.learner if learner is None else learner
        if not learner.probe:
            return None
        if learner.cfg not in self._stats:
            train = self.task().train
            self._stats[learner.cfg] = learner.feature_stats(train["id"], train["text"])
        return self._stats[learner.cfg]

    def test_inputs(self, learner: Learner, stats):
        """The test inputs without a prompt, standardised for a probe: the same for every run
        of the learner, so built once."""
        if learner.cfg not in self._tests:
            test = self.task().test
            data = learner.data(test["id"], test["text"])
            self._tests[learner.cfg] = stats.apply(data) if stats is not None else data
        return self._tests[learner.cfg]
