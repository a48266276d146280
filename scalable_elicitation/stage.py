"""One training stage (SPEC section 6): validation carve-out, evaluation cadence, early stopping
on AUROC, best-state restore, and an example-visit cap; batches come from `batching`.

The data order of a stage is a pure function of (stage key, step), so a resumed stage replays
exactly the batches an uninterrupted one would have seen.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scalable_elicitation.batching import (BatchSpec, Features, batched_apply, stack_batches,
                                           to_global)
from scalable_elicitation.metrics import auroc
from scalable_elicitation.train import Steps, warmup_steps

CHUNK_STEPS = 64  # train steps per on-device chunk (one compiled `lax.scan`); >= eval cadence 50


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
    # barely trained model (README, "Small stages"). A stage
    # that `continues` from a previous one evaluates from its first step instead (learning rate
    # 0 there: the state it entered with is a candidate). 0: the study's rule for both.
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


def val_metric(scores: np.ndarray, soft_labels: np.ndarray) -> float:
    """AUROC against labels hardened at 0.5, or accuracy when they hold one class."""
    hard = (np.asarray(soft_labels) > 0.5).astype(int)
    if hard.min() == hard.max():
        return float(np.mean((scores > 0).astype(int) == hard))
    return auroc(scores, hard)


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
    """The fewest steps whose batches make at least `visits` example visits (SPEC section 6): a
    step visits min(batch_size, n_train) examples, so 3,000 visits of 16 labels take 188 steps
    (not ceil(3000 / 32) = 94), and epoch-final short batches count as one step each."""
    if n_train < 1 or visits < 1:
        return 1
    per_epoch = math.ceil(n_train / batch_size)
    epochs, rest = divmod(visits, n_train)
    return max(1, epochs * per_epoch + math.ceil(rest / batch_size))


@dataclasses.dataclass
class EarlyStopping:
    """SPEC section 6: an evaluation improves when its metric is at least the best so far plus
    `min_delta` (>=); training stops after `patience` evaluations without one; the kept state is
    the best evaluation (the highest metric seen, ties to the earliest), which need not be an
    improvement by `min_delta`. As a dict (`as_dict`/`from_dict`) it is what checkpoints save."""

    min_delta: float
    patience: int
    metric: float = -np.inf  # highest metric seen
    step: int = 0  # step of the best evaluation
    bad: int = 0  # evaluations since the last improvement
    params: object = None  # parameters of the best evaluation

    def update(self, metric: float, step: int, params) -> bool:
        """Record one evaluation; True when training should stop."""
        first = self.params is None
        improved = first or metric >= self.metric + self.min_delta - 1e-12
        if first or metric > self.metric:
            self.metric, self.step = float(metric), int(step)
            self.params = jax.tree.map(jnp.copy, params)
        self.bad = 0 if improved else self.bad + 1
        return self.bad >= self.patience

    def as_dict(self) -> dict:
        return {"metric": self.metric, "step": self.step, "bad": self.bad, "params": self.params}

    def load(self, best: dict) -> None:
        self.metric, self.step = best["metric"], best["step"]
        self.bad, self.params = best["bad"], best["params"]


@dataclasses.dataclass(frozen=True)
class StageSchedule:
    """How long a stage trains and when it evaluates (SPEC section 6), shared by `run_stage`
    and a group of stages (`groups.run_stages_grouped`)."""
    has_val: bool
    visits: int  # example visits the stage is configured for
    total: int  # steps that make them
    eval_every: int  # min(eval_every, steps_per_epoch)
    hparams: dict  # per-run values the compiled step takes as arrays
    first_eval: int = 1  # no evaluation before this step (but the last step's)

    def next_evaluation(self, step: int) -> int:
        """The step of the first evaluation after `step`: the next multiple of `eval_every`
        at or after `first_eval`, or the last step. The group loop's `due` is the same rule."""
        nxt = (step // self.eval_every + 1) * self.eval_every
        if nxt < self.first_eval:
            nxt = -(-self.first_eval // self.eval_every) * self.eval_every
        return min(self.total, nxt)


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
    """A stage's record (SPEC section 11), the same from `run_stage` and a group: `n_val`
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


def run_stage(steps: Steps, params, train, targets: np.ndarray,
              val, val_labels: np.ndarray | None, cfg: StageConfig, *,
              seed_path: Sequence[int], key, spec: BatchSpec, source: str,
              weights: np.ndarray | None = None, progress: Callable | None = None,
              checkpoint=None) -> StageResult:
    """Train one stage from `params` with a fresh optimizer and schedule; return the kept
    parameters (best evaluation, or final without validation) and the stage's record.

    `progress(step, total, loss)`, if given, sees every step's loss (after its on-device chunk).
    `checkpoint`, if given, is a `checkpoint.StageCheckpointer`: state, best params and
    counters are saved at evaluations (at most once per its interval) and restored on entry.
    """
    n_train = len(train)
    weights = np.ones(n_train, np.float32) if weights is None else weights
    bs = spec.batch_size
    has_val = val is not None and len(val) > 0
    plan = stage_schedule(n_train, len(val) if has_val else 0, cfg, bs)
    total = plan.total
    hp = {k: jnp.float32(v) for k, v in plan.hparams.items()}
    state = steps.init_state(params, key)
    best = EarlyStopping(cfg.min_delta, cfg.patience)
    start = 0
    if checkpoint is not None:
        restored = checkpoint.restore(state)
        if restored is not None:
            state, saved, start = restored
            best.load(saved)
    done_early = False
    step = start
    truncated = int(train.truncated.sum()) + (
        int(val.truncated.sum()) if has_val and not cfg.borrowed_val else 0)
    loss = float("nan")
    order, real = batch_order(n_train, total, bs, seed_path)
    while step < total and not done_early:
        # train on the device up to the next evaluation (or a chunk, without validation)
        stop = plan.next_evaluation(step) if has_val else min(total, step + CHUNK_STEPS)
        while step < stop:
            n = min(CHUNK_STEPS, stop - step)
            idx = [order[t][real[t]] for t in range(step, step + n)]
            batches = stack_batches(train, idx, targets, weights, spec, CHUNK_STEPS)
            state, losses = steps.train_chunk(state, to_global(batches, steps.mesh, leading=1),
                                              np.arange(CHUNK_STEPS) < n, hp, cfg.loss)
            losses = np.asarray(jax.device_get(losses))[:n]
            bad = np.flatnonzero(~np.isfinite(losses))
            if bad.size:
                raise FloatingPointError(
                    f"non-finite loss {losses[bad[0]]} at step {step + bad[0] + 1} of the "
                    f"{source} stage; lower the learning rate or check the labels")
            if progress is not None:  # every step's loss, once its chunk has run
                for t, value in enumerate(losses):
                    progress(step + t + 1, total, float(value))
            step += n
            loss = float(losses[-1])
        if has_val:  # an evaluation step (`plan.next_evaluation`), or the last step
            scores = predict(steps, state.params, val, spec)
            done_early = best.update(val_metric(scores, val_labels), step, state.params)
            if checkpoint is not None:
                checkpoint.save(step, state, best.as_dict())
    kept = best.params if has_val else state.params
    record = stage_record(source, n_train, len(val) if has_val else 0, plan, cfg, steps=step,
                          best_step=best.step, val_metric=best.metric, truncated=truncated,
                          final_loss=loss, batch_size=bs)
    return StageResult(kept, record)
