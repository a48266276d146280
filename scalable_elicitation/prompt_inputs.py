"""A seed's k-shot prompts and the statistics that standardise a probe's prompted features
(docs/design.md#model, #kshot_sft), shared by every run of the seed.

A k-shot run's shots are the first k labels of its seed's shot-source pool (a prefix that every
run of the seed buying at least k such labels also buys, and a uniform random sample of the
pool, which is in random order), and each input's shot order is drawn from (seed, input id).
So every run of a seed sees the same prompt for the same input: its prompted features are
computed once and cached by the learner like plain ones, and the statistics below once per seed.
"""
from __future__ import annotations

import numpy as np

from scalable_elicitation.batching import FeatureStats
from scalable_elicitation.data import Split
from scalable_elicitation.learner import Learner
from scalable_elicitation.prompts import PromptBuilder, make_shots

# unlabelled training texts whose prompted features standardise a probe, per seed
PROMPT_STATS_SIZE = 256


def make_builder(learner: Learner, shots, config, seed: int) -> PromptBuilder:
    """The prompt builder of a run's shots (`methods.Shots`): shots rendered with the label
    they show, each input's shot order from (seed, input id)."""
    return PromptBuilder(learner.tokenizer,
                         make_shots(shots.split["id"], shots.split["text"], shots.shown),
                         shot_max_length=config.shot_max_length,
                         input_max_length=config.max_length, seed=seed)


def stats_sample(weak_pool: Split, shot_ids, size: int | None = None) -> Split:
    """The texts whose prompted features standardise a seed's probe: the first `size` of the
    seed's weak pool that are not shots. The pool is in random order, so they are a uniform
    random sample of the unlabelled training texts (no label is read), and they are the texts
    the seed's runs with the most weak labels train on anyway: the statistics cost no features
    of their own there (a separate sample cost `size` prompted texts per seed). `size`:
    `PROMPT_STATS_SIZE` by default."""
    size = PROMPT_STATS_SIZE if size is None else size
    if size < 2:
        raise ValueError(f"PROMPT_STATS_SIZE: {size}; feature statistics need at least 2 texts")
    shot_ids = np.asarray([str(i) for i in shot_ids], dtype=object)
    rest = weak_pool.take(np.flatnonzero(~np.isin(weak_pool["id"].astype(object), shot_ids)))
    if len(rest) < 2:
        raise ValueError(f"the weak pool holds {len(rest)} texts besides the shots; prompted "
                         "feature statistics need at least 2")
    return rest.take(np.arange(min(size, len(rest))))


class SeedPrompts:
    """Prompted-feature statistics per (learner, prompt signature), computed once per seed
    instead of once per run (`PromptBuilder.signature`: equal signatures, equal prompts)."""

    def __init__(self):
        self._stats: dict[tuple, FeatureStats] = {}

    def stats(self, learner: Learner, builder: PromptBuilder, sample: Split) -> FeatureStats:
        """Per-dimension statistics of `sample`'s prompted features: the prompt changes the
        features, so a probe on them is standardised with their own statistics."""
        key = (learner.cfg, builder.signature(), tuple(str(i) for i in sample["id"]))
        if key not in self._stats:
            self._stats[key] = FeatureStats.of(
                learner.prompted(builder, sample["id"], sample["text"]).features)
        return self._stats[key]
