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

CHUNK_STEPS = 64  # train steps per on-device chunk (one compiled `lax.scan`); >= eval cadence 50


# ---------------------------------------------------------------------------------------------
# Tokens and batches
@dataclasses.dataclass
class Encoded:
    """Token ids per example (already truncated), which examples were truncated, and where each
    example's own tokens start (after a k-shot prompt's shots; 0 for plain inputs)."""

    tokens: list[np.ndarray]
    truncated: np.ndarray  # bool per example
    starts: np.ndarray | None = None  # int per example; None: all 0

    def __post_init__(self):
        if self.starts is None:
            self.starts = np.zeros(len(self.tokens), np.int64)
        self.starts = np.asarray(self.starts, np.int64)

    def take(self, idx) -> "Encoded":
        idx = np.asarray(idx, dtype=np.int64)
        return Encoded([self.tokens[i] for i in idx], self.truncated[idx], self.starts[idx])

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
class FeatureStats:
    """Per-dimension mean and scale of pooled features over a task's unlabelled training texts
    (SPEC section 5): the probe sees `(features - mean) / scale`. No labels are used."""

    mean: np.ndarray  # [D]
    scale: np.ndarray  # [D]

    @classmethod
    def of(cls, features: np.ndarray, eps: float = 1e-6) -> "FeatureStats":
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"feature statistics need at least 2 examples of [N, D] features, "
                             f"got shape {features.shape}")
        return cls(features.mean(0).astype(np.float32),
                   np.maximum(features.std(0), eps).astype(np.float32))

    def apply(self, data: "Features") -> "Features":
        """`data` standardised with these statistics."""
        return Features(((data.features - self.mean) / self.scale).astype(np.float32),
                        data.truncated)


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    batch_size: int
    buckets: tuple[int, ...]
    pad_id: int


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The token ids the tokenizer adds before and after a text (BOS for the Llama family,
    [CLS] and [SEP] for BERT; none for SmolLM2's GGUF tokenizer). Plain inputs and k-shot/ICL
    prompts both get exactly these (SPEC section 6)."""
    plain = list(tokenizer("a b", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a b", add_special_tokens=True)["input_ids"])
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return full[:i], full[i + len(plain):]
    raise ValueError(f"cannot locate the text's tokens {plain} inside {full}: the tokenizer's "
                     "special tokens are not a plain prefix/suffix")


def encode(tokenizer, texts: Sequence[str], max_length: int) -> Encoded:
    """Tokenise with the model's special tokens; a long text keeps its start (the special tokens
    always survive, and `max_length` counts them)."""
    before, after = special_tokens(tokenizer)
    keep = max_length - len(before) - len(after)
    if keep < 1:
        raise ValueError(f"max_length={max_length} leaves no room for text beside the "
                         f"{len(before) + len(after)} special tokens")
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    tokens, truncated = [], []
    for t in ids:
        truncated.append(len(t) > keep)
        tokens.append(np.asarray(before + list(t[:keep]) + after, dtype=np.int32))
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


def to_global(batch: dict[str, np.ndarray], mesh, leading: int = 0) -> dict[str, jax.Array]:
    """Host batch -> global arrays sharded over the data-parallel axes (after `leading`
    unsharded axes, e.g. the steps of a chunk). Every process holds the same full host batch
    (it is a pure function of the step) and contributes the rows its devices own, so single-
    and multi-process runs see identical batches."""
    return {k: jax.make_array_from_callback(
                v.shape, batch_sharding(mesh, v.ndim - leading, leading=leading),
                lambda idx, v=v: v[idx])
            for k, v in batch.items()}


def stack_batches(data, step_indices, targets, weights, spec: BatchSpec,
                  chunk_steps: int) -> dict[str, np.ndarray]:
    """The batches of consecutive steps stacked to [chunk_steps, B, ...] for one on-device
    chunk. Token batches share the chunk's largest length bucket (padding is masked, so a
    row's logits do not depend on it); slots past the real steps repeat the first batch with
    weight 0 and are skipped by the step."""
    if isinstance(data, Encoded):
        longest = max((len(data.tokens[i]) for idx in step_indices for i in idx), default=1)
        spec = dataclasses.replace(spec, buckets=(bucket_for(longest, spec.buckets),))
    batches = [data.batch(idx, targets[idx], weights[idx], spec) for idx in step_indices]
    filler = {k: v for k, v in batches[0].items()}
    filler["weight"] = np.zeros_like(filler["weight"])
    batches += [filler] * (chunk_steps - len(batches))
    return {k: np.stack([b[k] for b in batches]) for k in batches[0]}


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
    total = steps_for_visits(n_train, visits, bs)
    warm = warmup_steps(per_epoch)
    hp = {"lr": jnp.float32(cfg.lr), "warmup": jnp.float32(warm), "total": jnp.float32(total),
          "logconf_ramp": jnp.float32(cfg.logconf_ramp),
          "logconf_coef": jnp.float32(cfg.logconf_coef)}
    eval_every = min(cfg.eval_every, per_epoch)
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
    truncated = int(train.truncated.sum()) + (int(val.truncated.sum()) if has_val else 0)
    loss = float("nan")
    while step < total and not done_early:
        # train on the device up to the next evaluation (or a chunk, without validation)
        stop = min(total, (step // eval_every + 1) * eval_every if has_val
                   else step + CHUNK_STEPS)
        while step < stop:
            n = min(CHUNK_STEPS, stop - step)
            idx = [batch_indices(n_train, step + t, bs, seed_path) for t in range(n)]
            batches = stack_batches(train, idx, targets, weights, spec, CHUNK_STEPS)
            state, losses = steps.train_chunk(state, to_global(batches, steps.mesh, leading=1),
                                              np.arange(CHUNK_STEPS) < n, hp, cfg.loss)
            losses = np.asarray(jax.device_get(losses))[:n]
            bad = np.flatnonzero(~np.isfinite(losses))
            if bad.size:
                raise FloatingPointError(
                    f"non-finite loss {losses[bad[0]]} at step {step + bad[0] + 1} of the "
                    f"{source} stage; lower the learning rate or check the labels")
            step += n
            loss = float(losses[-1])
            if progress is not None:
                progress(step, total, loss)
        if has_val:  # step is a multiple of eval_every, or the last step
            scores = predict(steps, state.params, val, spec)
            done_early = best.update(val_metric(scores, val_labels), step, state.params)
            if checkpoint is not None:
                checkpoint.save(step, state, best.as_dict())
    kept = best.params if has_val else state.params
    record = {"source": source, "n_train": n_train, "n_val": len(val) if has_val else 0,
              "visits": visits_through(n_train, step, bs), "planned_visits": visits,
              "steps": step, "best_step": best.step if has_val else step,
              "val_metric": float(best.metric) if has_val else None,
              "truncated": truncated, "final_loss": loss}
    return StageResult(kept, record)
