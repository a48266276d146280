"""What a method is (docs/design.md#methods, #code-style): its shots, its stage plan, the config
keys that identify its runs and its variant name, together in one module per method. The runner asks
the method; it never branches on a method's name.

A method sees what its grid point bought (`Bought`: nested prefixes of the seed's weak and
oracle pools) and the run's weak labels, and answers with plain data (`Shots`, `Stage`), so it
needs neither JAX nor the model: a new method is one module and one line in `REGISTRY`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from scalable_elicitation.data import Split
from scalable_elicitation.labelers import WeakLabels

# named RNG streams of a run: which examples, the initial head, the batch order, the selection
STREAMS = {"data": 1, "init": 2, "train": 3, "selection": 4}


class InfeasibleRun(ValueError):
    """A run that cannot be made with what its grid point bought (e.g. fewer labels than
    shots); recorded as `infeasible` with this message."""


@dataclasses.dataclass(frozen=True)
class Shots:
    """A run's fixed prompt shots: bought labels shown before every input, never trained on."""
    split: Split  # the shots' examples (id, text, label)
    sources: tuple[str, ...]  # "weak" or "oracle" per shot: which label was bought
    shown: np.ndarray  # the label each shows: the soft weak label, or ground truth (oracle)

    @classmethod
    def of(cls, split: Split, sources, weak: WeakLabels) -> "Shots":
        """Shots showing the weak label for weak shots and ground truth for oracle ones."""
        sources = tuple(sources)
        shown = np.array([weak.lookup([i])[0] if s == "weak" else float(y)
                          for i, s, y in zip(split["id"], sources, split["label"])])
        return cls(split, sources, shown)

    @property
    def ids(self) -> list[str]:
        return [str(i) for i in self.split["id"]]


@dataclasses.dataclass(frozen=True)
class Bought:
    """The labels a run bought: weak and oracle examples to train on, and shots (if any)."""
    weak: Split
    oracle: Split
    shots: Shots | None = None


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage of a run: its source (weak, oracle or mixture), examples, soft
    targets and per-example loss weights."""
    source: str
    split: Split
    targets: np.ndarray  # float32 P(y=1)
    weights: np.ndarray  # float32


def weak_stage(split: Split, weak: WeakLabels) -> Stage:
    """A stage on weak labels: the soft weak label of each example, weight 1."""
    return Stage("weak", split, weak.lookup(split["id"]).astype(np.float32),
                 np.ones(len(split), np.float32))


def oracle_stage(split: Split) -> Stage:
    """A stage on oracle labels: ground truth, weight 1."""
    return Stage("oracle", split, split["label"].astype(np.float32),
                 np.ones(len(split), np.float32))


class Method:
    """A method's defaults: no shots, sequential weak-then-oracle stages (an empty stage is
    skipped), no keys beyond the common ones (`method`, `loss`, `oracle_selection`,
    `schedule`), and the plain name as its variant."""

    name: str = ""
    keys: tuple[str, ...] = ()  # config keys (beyond the common ones) that identify its runs
    in_context: bool = False  # True: scored by the language model after the shots, no stages

    def identity(self, config) -> dict[str, Any]:
        """The config values of `keys` (nested blocks as plain dicts): part of the run id."""
        return {k: dict(config[k]) if hasattr(config[k], "items") else config[k]
                for k in self.keys}

    def take_shots(self, config, weak: WeakLabels, bought: Bought) -> Bought:
        """`bought` with this method's shots taken out of it (raise `InfeasibleRun` when the
        grid point bought too few)."""
        return bought

    def stages(self, config, weak: WeakLabels, bought: Bought, seed: int) -> list[Stage]:
        """The run's training stages, in order."""
        plan = []
        if len(bought.weak):
            plan.append(weak_stage(bought.weak, weak))
        if len(bought.oracle):
            plan.append(oracle_stage(bought.oracle))
        return plan

    def variant_name(self, options: dict[str, Any]) -> str:
        """The method's part of a variant name (docs/design.md#cells), from a run's options."""
        return self.name
