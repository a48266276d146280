"""Mixture SFT (docs/design.md#mixture_sft, beyond the study): one stage on the shuffled union
of both sources, with a per-source loss weight (`mixture.weak_weight`, `mixture.oracle_weight`)."""
from __future__ import annotations

import numpy as np

from scalable_elicitation.data import concat_splits
from scalable_elicitation.methods.base import STREAMS, Method, Stage, oracle_stage, weak_stage


class MixtureSFT(Method):
    name = "mixture_sft"
    keys = ("mixture",)

    def stages(self, config, weak, bought, seed):
        weights = {"weak": config.mixture.weak_weight, "oracle": config.mixture.oracle_weight}
        parts = [weak_stage(bought.weak, weak), oracle_stage(bought.oracle)]
        parts = [p for p in parts if len(p.split)]
        if not parts:
            return []
        union = concat_splits([p.split.with_column("source", np.asarray([p.source] * len(p.split)))
                               for p in parts])
        targets = np.concatenate([p.targets for p in parts])
        w = np.concatenate([np.full(len(p.split), weights[p.source], np.float32) for p in parts])
        order = np.random.default_rng([seed, STREAMS["data"], 99]).permutation(len(union))
        return [Stage("mixture", union.take(order), targets[order].astype(np.float32), w[order])]
