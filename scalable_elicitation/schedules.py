"""A stage's schedule (docs/design.md#stages): the default (validation carve-out, early
stopping, the visit cap, the sweep's batch size) or, with `schedule: api`, the fine-tuning APIs'
rule (no validation, batch size and epochs from the stage's size)."""
from __future__ import annotations

import dataclasses
import math

from scalable_elicitation.batching import BatchSpec
from scalable_elicitation.sharding import data_parallel_size
from scalable_elicitation.stage import StageConfig

def api_batch_size(n: int) -> int:
    """API-style batch size (docs/design.md#api-style-schedule): 1 if n < 1024, 2 if
    n < 4096, else 8."""
    return 1 if n < 1024 else 2 if n < 4096 else 8


def api_epochs(n: int, bs: int) -> float:
    """API-style epochs: ceil(100 / (n // bs)) if n < 30, 3 if n < 4096, 2 if n < 16384,
    else 1."""
    if n < 30:
        return float(math.ceil(100 / max(1, n // bs)))
    return 3.0 if n < 4096 else 2.0 if n < 16384 else 1.0


def stage_config(config, source: str, n: int) -> StageConfig:
    """The stage config of a stage of `n` labels from `source` (the loss option applies to the
    weak stage only). Whether a small stage borrows the previous stage's validation set
    (`train.small_stage_val`) is decided by the run, which knows its previous stage
    (`borrows_validation`)."""
    api = config.schedule == "api"
    t = config.train
    return StageConfig(
        lr=t.lr, max_visits=t.max_visits, small_stage_visits=t.small_stage_visits,
        eval_every=t.eval_every, patience=t.patience, min_delta=t.min_delta,
        min_eval_visits=t.get("min_eval_visits", 0), use_validation=not api,
        epochs=api_epochs(n, api_batch_size(n)) if api else None,
        loss=config.loss if source == "weak" else "xent")


def borrows_validation(config, cfg: StageConfig, n_val: int, previous_val: int) -> bool:
    """Whether a stage with `n_val` validation labels of its own is validated on the previous
    stage's `previous_val` instead: only a stage too small for a carve-out, after a stage that
    had one, under the default schedule and `train.small_stage_val = "previous"`."""
    return (config.train.get("small_stage_val", "none") == "previous" and cfg.use_validation
            and cfg.epochs is None and n_val == 0 and previous_val > 0)


def batch_spec(config, spec: BatchSpec, mesh, n_train: int | None) -> BatchSpec:
    """The batch spec of a stage of `n_train` labels: the learner's, or the API rule's batch
    size (None: inference, always the learner's)."""
    if config.schedule != "api" or n_train is None:
        return spec
    bs = api_batch_size(n_train)
    dp = data_parallel_size(mesh)
    if bs % dp and dp > 1:
        raise ValueError(f"schedule=api uses batch size {bs} for {n_train} labels, which "
                         f"the data-parallel size {dp} does not divide; use a mesh with "
                         "config.mesh.data=1")
    return dataclasses.replace(spec, batch_size=bs)
