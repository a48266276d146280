"""In-context learning (docs/design.md#icl): no training; the causal LM scores
`logit("1") - logit("0")` after a prompt of up to k bought labels, oracle first."""
from __future__ import annotations

import numpy as np

from scalable_elicitation.data import concat_splits
from scalable_elicitation.methods.base import Bought, InfeasibleRun, Method, Shots
from scalable_elicitation.methods.kshot_sft import shot_variant_name


class ICL(Method):
    name = "icl"
    keys = ("k", "shot_source", "shot_max_length")
    in_context = True

    @staticmethod
    def shot_mix(k: int, n_oracle: int, n_weak: int) -> tuple[int, int]:
        """(oracle, weak) shots of a run that bought these labels: every one up to k, oracle
        first (launch/preflight.py counts a sweep's distinct prompts with it)."""
        n_o = min(k, n_oracle)
        return n_o, min(k - n_o, n_weak)

    def take_shots(self, config, weak, bought):
        """Every bought label up to k is a shot, oracle first; nothing is left to train on."""
        n_o, n_w = self.shot_mix(config.k, len(bought.oracle), len(bought.weak))
        if n_o + n_w == 0:
            raise InfeasibleRun("icl needs at least one bought label for its prompt")
        picked = concat_splits([bought.oracle.take(np.arange(n_o)),
                                bought.weak.take(np.arange(n_w))])
        return Bought(bought.weak.take(np.arange(0)), bought.oracle.take(np.arange(0)),
                      Shots.of(picked, ["oracle"] * n_o + ["weak"] * n_w, weak))

    def stages(self, config, weak, bought, seed):
        return []

    def variant_name(self, options):
        return shot_variant_name(self.name, options)
