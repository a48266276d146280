"""The methods (docs/design.md#methods), one module each; `REGISTRY` maps `config.method` to
its method.

Adding a method: a module with a `Method` subclass (see `methods.base`) and one line below.
"""
from scalable_elicitation.methods.base import (STREAMS, Bought, InfeasibleRun, Method, Shots,
                                               Stage, oracle_stage, weak_stage)
from scalable_elicitation.methods.icl import ICL
from scalable_elicitation.methods.kshot_sft import KShotSFT
from scalable_elicitation.methods.mixture_sft import MixtureSFT
from scalable_elicitation.methods.seq_sft import SeqSFT

REGISTRY: dict[str, Method] = {m.name: m for m in (
    SeqSFT(),
    KShotSFT(),
    ICL(),
    MixtureSFT(),
)}

__all__ = ["REGISTRY", "STREAMS", "Bought", "InfeasibleRun", "Method", "Shots", "Stage", "get",
           "oracle_stage", "weak_stage"]


def get(name: str) -> Method:
    """The method registered as `name`; ValueError naming the registered ones."""
    if name not in REGISTRY:
        raise ValueError(f"config.method: {name!r}; allowed: {tuple(REGISTRY)}")
    return REGISTRY[name]
