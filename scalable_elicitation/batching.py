"""Examples to device batches: token ids and truncation, cached probe features
and their standardisation, fixed-shape padded batches in length buckets, global arrays over the
mesh, and `batched_apply`, the one loop every inference pass (scores, features, in-context
logits) runs through.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np

from scalable_elicitation.sharding import batch_sharding


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
    (docs/design.md#model): the probe sees `(features - mean) / scale`. No labels are used."""

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
    prompts both get exactly these (docs/design.md#model)."""
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


def batched_apply(fn: Callable[[dict[str, jax.Array]], jax.Array], data, spec: BatchSpec, mesh,
                  *, prepare: Callable | None = None, tail: tuple[int, ...] = (),
                  dtype=np.float32, progress: Callable[[int, int], None] | None = None
                  ) -> np.ndarray:
    """`fn` over every example of `data` (an `Encoded` or `Features`), one fixed-shape global
    batch at a time, batches sorted by length so short inputs use short buckets; returns the
    real rows of each result in the examples' order, as a [N, *tail] array. `prepare(batch,
    idx)`, if given, turns the host batch into what `fn` takes (extra masks, fewer keys).
    `progress(examples, tokens)`, if given, sees each finished batch's real examples and
    tokens."""
    lengths = data.lengths()
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(data), *tail), dtype)
    for start in range(0, len(order), spec.batch_size):
        idx = order[start:start + spec.batch_size]
        batch = data.batch(idx, np.zeros(len(idx)), np.ones(len(idx)), spec)
        if prepare is not None:
            batch = prepare(batch, idx)
        result = fn(to_global(batch, mesh))
        out[idx] = np.asarray(jax.device_get(result), dtype)[:len(idx)]
        if progress is not None:
            progress(len(idx), int(lengths[idx].sum()))
    return out
