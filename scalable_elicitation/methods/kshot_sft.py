"""Few-shot-prompted SFT (docs/design.md#kshot_sft): sequential SFT where every train and test input
is prefixed with the same k bought shots of `shot_source`; the shots are not also trained on."""
from __future__ import annotations

import dataclasses

import numpy as np

from scalable_elicitation.methods.base import InfeasibleRun, Method, Shots


def shot_variant_name(name: str, options: dict) -> str:
    """`NAME(k=K,SOURCE)`: a shot method's variant (weak shots by default)."""
    k = options.get("k")
    if k is None:
        return name
    k = int(k) if isinstance(k, float) and k.is_integer() else k
    return f"{name}(k={k},{options.get('shot_source') or 'weak'})"


class KShotSFT(Method):
    name = "kshot_sft"
    keys = ("k", "shot_source", "shot_max_length")

    def take_shots(self, config, weak, bought):
        """The first k bought labels of `shot_source`; the rest are trained on."""
        k, source = config.k, config.shot_source
        split = bought.weak if source == "weak" else bought.oracle
        if len(split) < k:
            raise InfeasibleRun(f"kshot_sft needs k={k} {source} shots but the grid point "
                                f"bought {len(split)} {source} labels")
        shots = Shots.of(split.take(np.arange(k)), [source] * k, weak)
        rest = split.take(np.arange(k, len(split)))
        return dataclasses.replace(bought, shots=shots, **{source: rest})

    def variant_name(self, options):
        return shot_variant_name(self.name, options)
