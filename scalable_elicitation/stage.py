"""One training stage (SPEC section 6): static-shape batches, validation carve-out, evaluation
cadence, early stopping on AUROC, best-state restore, and an example-visit cap.

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

from scalable_elicitation import labels as labels_lib
from scalable_elicitation.models.sharding import batch_sharding
from scalable_elicitation.train import Steps, warmup_steps


# ---------------------------------------------------------------------------------------------
# Tokens and batches
@dataclasses.dataclass
class Encoded:
    """Token ids per example (already truncated) and which examples were truncated."""

    tokens: list[np.ndarray]
    truncated: np.ndarray  # bool per example

    def take(self, idx) -> "Encoded":
        idx = np.asarray(idx, dtype=np.int64)
        return Encoded([self.tokens[i] for i in idx], self.truncated[idx])

    def __len__(self):
        return len(self.tokens)

    def lengths(self) -> np.ndarray:
        return np.asarray([len(t) for t in self.tokens])

    def batch(self, idx, targets, weights, spec: "BatchSpec") -> dict[str, np.ndarray]:
        return make_batch([self.tokens[i] for i in idx], targets, weights, spec.batch_size,
                          spec.buckets, spec.pad_id)


@dataclasses.dataclass
class Features:
    """Cached pooled features per example, for head-only (linear probe) training."""

    features: np.ndarray  # [N, D]
    truncated: np.ndarray

    def take(self, idx) -> "Features":
        idx = np.asarray(idx, dtype=np.int64)
        return Features(self.features[idx], self.truncated[idx])

    def __len__(self):
        return len(self.features)

    def lengths(self) -> np.ndarray:
        return np.zeros(len(self.features), np.int64)

    def batch(self, idx, targets, weights, spec: "BatchSpec") -> dict[str, np.ndarray]:
        n, bs = len(idx), spec.batch_size
        feats = np.zeros((bs, self.features.shape[1]), np.float32)
        feats[:n] = self.features[np.asarray(idx, dtype=np.int64)]
        target = np.zeros(bs, np.float32)
        weight = np.zeros(bs, np.float32)
        target[:n] = targets
        weight[:n] = weights
        return {"features": feats, "target": target, "weight": weight}


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    batch_size: int
    buckets: tuple[int, ...]
    pad_id: int


def encode(tokenizer, texts: Sequence[str], max_length: int) -> Encoded:
    """Tokenise without special tokens added by templates; keep the start of long texts."""
    ids = tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    tokens, truncated = [], []
    for t in ids:
        truncated.append(len(t) > max_length)
        tokens.append(np.asarray(t[:max_length], dtype=np.int32))
    return Encoded(tokens, np.asarray(truncated, dtype=bool))


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    for b in sorted(buckets):
        if length <= b:
            return b
    raise ValueError(f"sequence of {length} tokens is longer than the largest length bucket "
                     f"{max(buckets)}; raise config.max_length or add a bucket")


def make_batch(tokens: Sequence[np.ndarray], targets, weights, batch_size: int,
               buckets: Sequence[int], pad_id: int) -> dict[str, np.ndarray]:
    """A fixed-size batch: rows beyond the real ones are padding with weight 0."""
    n = len(tokens)
    if n > batch_size:
        raise ValueError(f"{n} examples for a batch of {batch_size}")
    length = bucket_for(max([len(t) for t in tokens] + [1]), buckets)
    ids = np.full((batch_size, length), pad_id, dtype=np.int32)
    mask = np.zeros((batch_size, length), dtype=np.int32)
    for i, t in enumerate(tokens):
        ids[i, :len(t)] = t
        mask[i, :len(t)] = 1
    mask[n:, 0] = 1  # padding rows see one token, so no row is empty
    target = np.zeros(batch_size, np.float32)
    weight = np.zeros(batch_size, np.float32)
    target[:n] = targets
    weight[:n] = weights
    return {"input_ids": ids, "attention_mask": mask, "target": target, "weight": weight}


def to_global(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """Host batch -> global arrays sharded over the data-parallel axes. Every process holds
    the same full host batch (it is a pure function of the step) and contributes the rows its
    devices own, so single- and multi-process runs see identical batches."""
    return {k: jax.make_array_from_callback(v.shape, batch_sharding(mesh, v.ndim),
                                            lambda idx, v=v: v[idx])
            for k, v in batch.items()}


def predict(steps: Steps, params, data, spec: BatchSpec) -> np.ndarray:
    """Scores (logit differences) for every example, in order; batches sorted by length so
    short inputs use short buckets."""
    order = np.argsort(data.lengths(), kind="stable")
    out = np.zeros(len(data), np.float32)
    for start in range(0, len(order), spec.batch_size):
        idx = order[start:start + spec.batch_size]
        batch = data.batch(idx, np.zeros(len(idx)), np.ones(len(idx)), spec)
        scores = steps.scores(params, to_global(batch, steps.mesh))
        out[idx] = np.asarray(jax.device_get(scores))[:len(idx)]
    return out


# ---------------------------------------------------------------------------------------------
# Stage
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
    use_validation: bool = True  # False: API-style schedule, keep the final state
    epochs: float | None = None  # if set, visits = epochs * n_train (API-style, labeller)
    loss: str = "xent"
    logconf_ramp: float = 200.0
    logconf_coef: float = 0.5

    def __post_init__(self):
        if self.max_visits < 1 or self.lr <= 0:
            raise ValueError(f"stage config needs max_visits >= 1 and lr > 0: {self}")


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
    return labels_lib.auroc(scores, hard)


def batch_indices(n_train: int, step: int, batch_size: int, key_seed: Sequence[int]):
    """Example indices of batch `step`: epochs are seeded permutations, concatenated. A pure
    function of its arguments, so resuming at any step replays the same data."""
    per_epoch = math.ceil(n_train / batch_size)
    epoch, within = divmod(step, per_epoch)
    perm = np.random.default_rng([*key_seed, epoch]).permutation(n_train)
    return perm[within * batch_size:(within + 1) * batch_size]


def visits_through(n_train: int, steps: int, batch_size: int) -> int:
    """Example visits made by the first `steps` batches (epoch-final batches may be short)."""
    per_epoch = math.ceil(n_train / batch_size)
    epochs, within = divmod(steps, per_epoch)
    return epochs * n_train + min(within * batch_size, n_train)


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

    `checkpoint`, if given, is a `checkpoint.StageCheckpointer`: state, best params and
    counters are saved at every evaluation and restored on entry.
    """
    n_train = len(train)
    weights = np.ones(n_train, np.float32) if weights is None else weights
    bs = spec.batch_size
    per_epoch = math.ceil(n_train / bs)
    has_val = val is not None and len(val) > 0
    if cfg.epochs is not None:
        visits = int(math.ceil(cfg.epochs * n_train))
    elif has_val:
        visits = cfg.max_visits
    else:
        visits = cfg.small_stage_visits if n_train < cfg.min_labels_for_val else cfg.max_visits
    total = max(1, math.ceil(visits / bs))  # steps; the last epoch's short batch counts one
    warm = warmup_steps(per_epoch)
    hp = {"lr": jnp.float32(cfg.lr), "warmup": jnp.float32(warm), "total": jnp.float32(total),
          "logconf_ramp": jnp.float32(cfg.logconf_ramp),
          "logconf_coef": jnp.float32(cfg.logconf_coef)}
    eval_every = min(cfg.eval_every, per_epoch)
    state = steps.init_state(params, key)
    best = {"metric": -np.inf, "step": 0, "params": None, "bad": 0}
    start = 0
    if checkpoint is not None:
        restored = checkpoint.restore(state)
        if restored is not None:
            state, best, start = restored
    done_early = False
    step = start
    truncated = int(train.truncated.sum()) + (int(val.truncated.sum()) if has_val else 0)
    loss = float("nan")
    while step < total and not done_early:
        idx = batch_indices(n_train, step, bs, seed_path)
        batch = train.batch(idx, targets[idx], weights[idx], spec)
        state, metrics = steps.train_step(state, to_global(batch, steps.mesh), hp, cfg.loss)
        step += 1
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss} at step {step} of the {source} "
                                     "stage; lower the learning rate or check the labels")
        if progress is not None:
            progress(step, total, loss)
        if has_val and (step % eval_every == 0 or step == total):
            scores = predict(steps, state.params, val, spec)
            metric = val_metric(scores, val_labels)
            if metric > best["metric"] + cfg.min_delta or best["params"] is None:
                best = {"metric": metric, "step": step, "bad": 0,
                        "params": jax.tree.map(jnp.copy, state.params)}
            else:
                best["bad"] += 1
                if best["bad"] >= cfg.patience:
                    done_early = True
            if checkpoint is not None:
                checkpoint.save(step, state, best)
    kept = best["params"] if has_val else state.params
    record = {"source": source, "n_train": n_train, "n_val": len(val) if has_val else 0,
              "visits": visits_through(n_train, step, bs),
              "steps": step, "best_step": best["step"] if has_val else step,
              "val_metric": float(best["metric"]) if has_val else None,
              "truncated": truncated, "final_loss": loss}
    return StageResult(kept, record)
