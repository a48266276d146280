"""What defines a training stage (docs/design.md#stages): its config, the validation carve-out,
the schedule (visits, steps, warmup, evaluation cadence), the batch order and the record. The
one engine that trains stages, alone or many at once, is `groups` (`groups.run_stage`).

The data order of a stage is a pure function of (stage key, step), so a resumed stage replays
exactly the batches an uninterrupted one would have seen.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from scalable_elicitation.batching import BatchSpec, Features, batched_apply
from scalable_elicitation.train import Steps, warmup_steps

PROBE_EVAL_ROWS = 1024  # cached features scored per call (a 1024 x D matmul; few compiles)


def predict(steps: Steps, params, data, spec: BatchSpec) -> np.ndarray:
    """Scores (logit differences) for every example, in order; batches sorted by length so
    short inputs use short buckets. Cached features go in batches of up to about 1,024 rows
    (a power of two, rounded up to a multiple of the batch size), not a training batch at a
    time."""
    if isinstance(data, Features):
        rows = min(PROBE_EVAL_ROWS, 1 << max(0, (max(len(data), 1) - 1).bit_length()))
        bs = spec.batch_size  # a multiple of it divides over the mesh as the batch does
        spec = dataclasses.replace(spec, batch_size=max(bs, -(-rows // bs) * bs))
    return batched_apply(lambda batch: steps.scores(params, batch), data, spec, steps.mesh)


@dataclasses.dataclass(frozen=True)
class StageConfig:
    lr: float
    max_visits: int = 30000  # example visits per stage (study: 30,000)
    small_stage_visits: int = 30000  # fixed visits for stages with < 10 labels (no carve-out)
    eval_every: int = 50
    patience: int = 4
    min_delta: float = 0.01
    min_labels_for_val: int = 10
    val_fraction: float = 0.2
    # No evaluation before a fresh stage validated on fewer than `min_labels_for_val` labels
    # has made this many example visits (its last step aside), so early stopping cannot end
    # it, or keep its state, on a handful of validation labels that happen to agree with a
    # barely trained model (docs/decisions.md). A stage that `continues` from a previous one
    # evaluates from its first step instead (learning rate 0 there: the state it entered with
    # is a candidate). 0: the study's rule.
    min_eval_visits: int = 0
    continues: bool = False  # starts from the previous stage's kept state
    # The stage has no validation labels of its own and is validated on the previous stage's
    # carve-out, from its first step (whose learning rate is 0), so the state it entered with
    # stays a candidate and is kept unless training on the new labels beats it there.
    borrowed_val: bool = False
    use_validation: bool = True  # False: API-style schedule, keep the final state
    epochs: float | None = None  # if set, visits = epochs * n_train (API-style, labeller)
    loss: str = "xent"
    logconf_ramp: float = 200.0
    logconf_coef: float = 0.5

    def __post_init__(self):
        if self.max_visits < 1 or self.lr <= 0:
            raise ValueError(f"stage config needs max_visits >= 1 and lr > 0: {self}")
        if self.min_eval_visits < 0:
            raise ValueError(f"stage config needs min_eval_visits >= 0: {self}")


def split_validation(n: int, cfg: StageConfig, rng: np.random.Generator):
    """(train idx, val idx) of a stage's n labels: max(2, floor(0.2 n)) carved out when the
    stage has at least 10 labels, else none."""
    if not cfg.use_validation or n < cfg.min_labels_for_val:
        return np.arange(n), np.arange(0)
    n_val = max(2, int(math.floor(cfg.val_fraction * n)))
    perm = rng.permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def batch_order(n_train: int, total: int, batch_size: int, key_seed: Sequence[int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """(indices [total, B], real [total, B]) of a stage's `total` batches: epochs are
    permutations of the training examples drawn in turn from one generator seeded with the
    stage's key, each cut into batches (an epoch's last batch may be short: its missing rows
    are not `real`). A pure function of its arguments, so a resumed stage replays the batches
    an uninterrupted one saw, and a group member (`groups`) sees the same batches alone."""
    per_epoch = math.ceil(n_train / batch_size)
    epochs = math.ceil(total / per_epoch)
    rows = np.random.default_rng(list(key_seed)).permuted(
        np.tile(np.arange(n_train), (epochs, 1)), axis=1)
    perms = np.full((epochs, per_epoch * batch_size), -1, np.int64)
    perms[:, :n_train] = rows
    perms = perms.reshape(epochs * per_epoch, batch_size)[:total]
    return np.maximum(perms, 0).astype(np.int32), perms >= 0


def visits_through(n_train: int, steps: int, batch_size: int) -> int:
    """Example visits made by the first `steps` batches (epoch-final batches may be short)."""
    per_epoch = math.ceil(n_train / batch_size)
    epochs, within = divmod(steps, per_epoch)
    return epochs * n_train + min(within * batch_size, n_train)


def steps_for_visits(n_train: int, visits: int, batch_size: int) -> int:
    """The fewest steps whose batches make at least `visits` example visits (docs/design.md#stages):
    a step visits min(batch_size, n_train) examples, so 3,000 visits of 16 labels take 188 steps
    (not ceil(3000 / 32) = 94), and epoch-final short batches count as one step each."""
    if n_train < 1 or visits < 1:
        return 1
    per_epoch = math.ceil(n_train / batch_size)
    epochs, rest = divmod(visits, n_train)
    return max(1, epochs * per_epoch + math.ceil(rest / batch_size))


@dataclasses.dataclass(frozen=True)
class StageSchedule:
    """How long a stage trains and when it evaluates (docs/design.md#stages), as the engine
    (`groups`) and the sweep's shapes read it."""
    has_val: bool
    visits: int  # example visits the stage is configured for
    total: int  # steps that make them
    eval_every: int  # min(eval_every, steps_per_epoch)
    hparams: dict  # per-run values the compiled step takes as arrays
    # no evaluation before this step but the last one's: evaluations fall on the multiples of
    # eval_every from first_eval on (`groups.group_loop`'s `due`)
    first_eval: int = 1


def stage_schedule(n_train: int, n_val: int, cfg: StageConfig, batch_size: int
                   ) -> StageSchedule:
    """The schedule of a stage of `n_train` training labels: visits from the epochs (API-style,
    labeller), the visit cap (with validation of its own) or the small-stage count (fewer than
    `min_labels_for_val` labels, validated on the previous stage's carve-out or not at all);
    steps that make them; warmup max(2, min(40, steps_per_epoch)); evaluation every
    min(eval_every, steps_per_epoch); a fresh stage validated on fewer than
    `min_labels_for_val` labels (`n_val`, 0 without validation) evaluates first once
    `min_eval_visits` visits are made."""
    has_val = n_val > 0
    per_epoch = math.ceil(n_train / batch_size)
    if cfg.epochs is not None:
        visits = int(math.ceil(cfg.epochs * n_train))
    elif has_val and not cfg.borrowed_val:
        visits = cfg.max_visits
    else:
        visits = cfg.small_stage_visits if n_train < cfg.min_labels_for_val else cfg.max_visits
    total = steps_for_visits(n_train, visits, batch_size)
    first_eval = 1
    if (has_val and n_val < cfg.min_labels_for_val and not (cfg.borrowed_val or cfg.continues)
            and cfg.min_eval_visits > 0):
        first_eval = min(total, steps_for_visits(n_train, cfg.min_eval_visits, batch_size))
    hparams = {"lr": cfg.lr, "warmup": float(warmup_steps(per_epoch)), "total": float(total),
               "logconf_ramp": cfg.logconf_ramp, "logconf_coef": cfg.logconf_coef}
    return StageSchedule(has_val, visits, total, min(cfg.eval_every, per_epoch), hparams,
                         first_eval)


def stage_record(source: str, n_train: int, n_val: int, plan: StageSchedule, cfg: StageConfig,
                 *, steps: int, best_step: int, val_metric: float, truncated: int,
                 final_loss: float, batch_size: int) -> dict:
    """A stage's record (docs/design.md#results-record), from the engine: `n_val`
    counts the stage's own carve-out only (bought labels); a validation set borrowed from the
    previous stage is `val_borrowed` rows, so the ledger identity `n_weak + n_oracle ==
    sum(n_train + n_val) + n_shots` holds."""
    own = n_val if plan.has_val and not cfg.borrowed_val else 0
    return {"source": source, "n_train": n_train, "n_val": own,
            "val_borrowed": n_val if plan.has_val and cfg.borrowed_val else 0,
            "visits": visits_through(n_train, steps, batch_size), "planned_visits": plan.visits,
            "steps": steps, "best_step": best_step if plan.has_val else steps,
            "val_metric": float(val_metric) if plan.has_val else None,
            "truncated": truncated, "final_loss": final_loss}


@dataclasses.dataclass
class StageResult:
    params: object
    record: dict
    evaluations: int = 0  # validation passes the engine made (not in the record)
