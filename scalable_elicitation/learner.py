"""A model ready to learn: the loaded weights, compiled steps, and how examples become batches
(token ids, or cached pooled features when only the head trains).

Built once per sweep and shared by every run, so weights are read, steps compiled and
features computed once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import math
import os
import pathlib
import sys
import time

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from scalable_elicitation import paths
from scalable_elicitation.batching import (BatchSpec, Encoded, Features, FeatureStats,
                                           batched_apply, bucket_for, encode)
from scalable_elicitation.models import LoraConfig, load_pretrained
from scalable_elicitation.models import layers as L
from scalable_elicitation.prompts import label_token_ids
from scalable_elicitation.sharding import activation_sharding, data_parallel_size, make_mesh
from scalable_elicitation.train import Steps

FEATURES_VERSION = 2  # bump when cached features change (v2: special tokens kept on truncation)
# k-shot prompts with at most this many shot orders (k!) are featurised as one encoded prefix per
# order plus the inputs' own tokens: a prompt's shots are 2-3x its input's tokens, so encoding
# them once per order instead of once per input made prompted features as cheap as plain ones
PREFIX_ORDERS_MAX = 6
PREFIX_BUCKETS = tuple(64 * 2 ** i for i in range(12))  # padded lengths of an encoded prefix


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    source: str
    trainable: str = "lora"  # lora | full | head (head: a linear probe on cached features)
    dtype: str = "float32"
    lora_rank: int = 8
    lora_alpha: float = 8.0
    lora_dropout: float = 0.0
    max_length: int = 64
    buckets: tuple[int, ...] = (32, 64)
    batch_size: int = 32
    # rows per device per forward and backward pass (0: the whole batch at once); a step sums
    # the gradients of batch_size / (micro_batch x data-parallel devices) passes
    micro_batch: int = 0
    mesh: tuple[tuple[str, int], ...] = (("data", -1),)
    remat: bool = False
    pooling: str | None = None  # None: the family's (decoders: last token; MiniLM: mean)
    attention: str = "einsum"  # einsum | fused (`models.layers.attention`)

    def __post_init__(self):
        if self.max_length > max(self.buckets):
            raise ValueError(f"max_length={self.max_length} exceeds the largest length bucket "
                             f"{max(self.buckets)}; add a bucket >= max_length")


def learner_mesh(cfg: LearnerConfig, devices=None):
    """(mesh, global rows per forward and backward pass) of a learner: `cfg.mesh` over
    `devices` (default all; compile-only devices of a target for launch/preflight.py), after
    checking that the batch and micro-batch divide over its data-parallel devices."""
    mesh = make_mesh(dict(cfg.mesh), devices=devices)
    dp = data_parallel_size(mesh)
    if cfg.batch_size % dp:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by the "
                         f"data-parallel size {dp} of mesh {dict(mesh.shape)}")
    micro = cfg.micro_batch * dp
    if cfg.micro_batch < 0 or (micro and cfg.batch_size % micro):
        raise ValueError(f"micro_batch={cfg.micro_batch} rows per device on {dp} "
                         f"data-parallel devices must divide batch_size={cfg.batch_size} "
                         "(0: the whole batch in one pass)")
    return mesh, micro


class Learner:
    def __init__(self, cfg: LearnerConfig, cache_dir: str | os.PathLike | None = None):
        self.cfg = cfg
        mesh, micro = learner_mesh(cfg)
        lora = (LoraConfig(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
                if cfg.trainable == "lora" else None)
        # full finetuning keeps float32 master weights and computes in `dtype`
        compute = cfg.dtype if cfg.trainable == "full" else None
        self.bundle = load_pretrained(cfg.source, dtype=cfg.dtype, lora=lora,
                                      compute_dtype=compute,
                                      trainable=cfg.trainable, mesh=mesh, remat=cfg.remat,
                                      attention=cfg.attention,
                                      pooling=cfg.pooling)
        tok = self.bundle.tokenizer
        if tok is None:
            raise ValueError(f"model {cfg.source!r} has no tokenizer files")
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if pad is None:
            raise ValueError(f"tokenizer of {cfg.source!r} has neither a pad nor an eos token")
        self.spec = BatchSpec(cfg.batch_size, tuple(sorted(cfg.buckets)), int(pad))
        self.probe = cfg.trainable == "head"
        if self.probe:
            self.steps = Steps.for_probe(self.bundle.config.hidden_size, 2, mesh)
            how = self.bundle.config.pooling
            # pooled over `pool_mask`: the input's own tokens (a k-shot prompt's shots are
            # context for them, not part of the pooled feature; docs/design.md#kshot_sft)
            self._features_fn = replicated_jit(
                self.bundle,
                lambda m, ids, mask, pool_mask: L.pool(m.hidden(ids, mask), pool_mask, how))
        else:
            self.steps = Steps.for_model(self.bundle, micro_batch=micro)
        self._cache: dict[str, np.ndarray] = {}
        self.features_computed = 0  # texts run through the model for features (not cached)
        self._truncated: dict[str, bool] = {}  # per example id, once it was tokenised
        self._icl_memo: dict[tuple, np.ndarray] = {}  # (prompt signature, inputs) -> scores
        self._cache_path = None
        if cache_dir is not None and self.probe:
            name = "".join(c if c.isalnum() else "_" for c in cfg.source)[-60:]
            self._cache_path = (pathlib.Path(cache_dir) / "features" /
                                f"{name}-{cfg.dtype}-len{cfg.max_length}-"
                                f"{self.bundle.config.pooling}-v{FEATURES_VERSION}.npz")
            if self._cache_path.exists():
                with np.load(self._cache_path) as f:
                    self._cache = dict(zip(f["ids"].tolist(), f["features"]))

    @property
    def tokenizer(self):
        return self.bundle.tokenizer

    def data(self, ids, texts):
        """Inputs for these examples: token ids, or cached pooled features for a probe (texts
        whose features and truncation flags are known are not tokenised again)."""
        if self.probe and ids is not None:
            keys = [str(i) for i in ids]
            if all(k in self._cache and k in self._truncated for k in keys):
                return Features(np.stack([self._cache[k] for k in keys]) if keys else
                                np.zeros((0, self.bundle.config.hidden_size), np.float32),
                                np.asarray([self._truncated[k] for k in keys], bool))
        return self.prepare(encode(self.tokenizer, texts, self.cfg.max_length), ids)

    def prepare(self, enc: Encoded, ids=None):
        """Encoded inputs as the steps take them: tokens, or (probe) cached features keyed by
        example id or, for prompts, by a hash of the token ids."""
        if not self.probe:
            return enc
        if ids is None:
            ids = ["t:" + hashlib.blake2b(t.tobytes() + int(s).to_bytes(4, "little"),
                                          digest_size=8).hexdigest()
                   for t, s in zip(enc.tokens, enc.starts)]
        ids = [str(i) for i in ids]
        self._truncated.update(zip(ids, enc.truncated.tolist()))
        missing = [k for k, i in enumerate(ids) if i not in self._cache]
        if missing:
            feats = self._compute(enc.take(missing))
            for k, f in zip(missing, feats):
                self._cache[ids[k]] = f
            self._save_cache()
        return Features(np.stack([self._cache[i] for i in ids]) if ids else
                        np.zeros((0, self.bundle.config.hidden_size), np.float32),
                        enc.truncated)

    def prompted(self, builder, ids, texts):
        """Inputs for these examples behind `builder`'s k-shot prompt (shots in each input's
        own order): token ids for finetuning; cached features for a probe, pooled over the
        input's own tokens. Features depend only on the prompt's tokens, so every run of a seed
        (same shots, same per-input orders) reuses them. On a causal decoder with at most
        `PREFIX_ORDERS_MAX` shot orders, each order's prefix is encoded once and the inputs
        continue it (`_prompted_by_prefix`); else each prompt is encoded whole."""
        if (self.probe and hasattr(self.bundle.model, "encode_prefix")
                and math.factorial(len(builder.shots)) <= PREFIX_ORDERS_MAX):
            return _prompted_by_prefix(self, builder, ids, texts)
        return self.prepare(builder.encode(ids, texts))

    def feature_stats(self, ids, texts) -> FeatureStats:
        """Per-dimension statistics of these (unlabelled) examples' features, for a probe's
        standardisation (docs/design.md#model); the features are cached like any other."""
        if not self.probe:
            raise ValueError("feature statistics are for a linear probe (trainable='head')")
        return FeatureStats.of(self.data(ids, texts).features)

    def _compute(self, enc: Encoded) -> np.ndarray:
        def with_pool_mask(batch, idx):
            pool_mask = batch["attention_mask"].copy()
            for row, start in enumerate(enc.starts[idx]):
                pool_mask[row, :start] = 0
            return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                    "pool_mask": pool_mask}

        self.features_computed += len(enc)
        with feature_progress(self.cfg.source, len(enc)) as progress:
            return batched_apply(
                lambda b: self._features_fn(b["input_ids"], b["attention_mask"], b["pool_mask"]),
                enc, self.spec, self.steps.mesh, prepare=with_pool_mask,
                tail=(self.bundle.config.hidden_size,), progress=progress)

    def _save_cache(self):
        if self._cache_path is None or jax.process_index() != 0:
            return
        buf = io.BytesIO()
        np.savez(buf, ids=np.asarray(list(self._cache), dtype="<U18"),
                 features=np.stack(list(self._cache.values())))
        paths.atomic_write(self._cache_path, buf.getvalue())

    # -- in-context learning ----------------------------------------------------------------
    def icl_scores_many(self, builders, ids, texts) -> list[np.ndarray]:
        """logit("1") - logit("0") at each input's last position after each prompt, for several
        runs' prompts on the same inputs (docs/design.md#many-runs-at-once). Runs with equal prompts
        (`PromptBuilder.signature`: on a grid, every run of a seed with at least k oracle labels
        shows the same k oracle shots) are scored once and their scores kept for later runs: one
        encoded prefix and one pass per distinct prompt and inputs."""
        inputs = hashlib.blake2b("\x00".join(f"{i}\x01{t}" for i, t in zip(ids, texts))
                                 .encode(), digest_size=8).hexdigest()
        keys = [(b.signature(), inputs) for b in builders]
        todo = {}
        for key, builder in zip(keys, builders):
            if key not in self._icl_memo:
                todo.setdefault(key, builder)
        if todo:
            for key, scores in zip(todo, self.icl_scores_uncached(list(todo.values()), texts)):
                self._icl_memo[key] = scores
        return [self._icl_memo[key] for key in keys]

    def icl_scores_uncached(self, builders, texts) -> list[np.ndarray]:
        """Each builder's scores on `texts`: each prefix is encoded once, and the prompts whose
        prefixes pad to the same length are scored together, their KV caches stacked on a run
        axis, one batch of inputs for all."""
        model = self.bundle.model
        if not hasattr(model, "encode_prefix"):
            raise ValueError(f"method icl needs a causal decoder; {self.cfg.source!r} is an "
                             "encoder")
        id0, id1 = label_token_ids(self.tokenizer)
        if not hasattr(self, "_icl_fns"):
            self._icl_fns = icl_functions(self.bundle)
        encode_fn, score_fn = self._icl_fns
        by_length: dict[int, list[int]] = {}
        caches = []
        for r, builder in enumerate(builders):
            p_ids, p_mask = _padded_prefix(builder.prefix(), self.spec.pad_id)
            caches.append(encode_fn(p_ids, p_mask))
            by_length.setdefault(p_ids.shape[1], []).append(r)
        # the input part of a prompt does not depend on the shots
        suffixes = [builders[0].suffix(t)[0] for t in texts]
        enc = Encoded([np.asarray(s, np.int32) for s in suffixes],
                      np.zeros(len(suffixes), bool))
        out: list[np.ndarray | None] = [None] * len(builders)
        for runs in by_length.values():
            stacked = jax.tree.map(lambda *xs: jax.numpy.stack(xs), *[caches[r] for r in runs])

            def label_logit_difference(batch, stacked=stacked):
                logits = score_fn(batch["input_ids"], batch["attention_mask"], stacked)
                return (logits[..., id1] - logits[..., id0]).T  # [batch, runs]

            scores = batched_apply(label_logit_difference, enc, suffix_spec(self.spec, enc),
                                   self.steps.mesh,
                                   prepare=lambda b, idx: {"input_ids": b["input_ids"],
                                                           "attention_mask": b["attention_mask"]},
                                   tail=(len(runs),))
            for j, r in enumerate(runs):
                out[r] = scores[:, j]
        return out


def suffix_spec(spec: BatchSpec, enc: Encoded) -> BatchSpec:
    """`spec` for inputs scored after a cached prompt prefix, with one more bucket (rounded
    up to a multiple of 8) when an input's own tokens pass its largest: its text is cut to
    max_length tokens, then the newline and the tokenizer's trailing tokens follow, one or
    more past a largest bucket of max_length (which failed every run in the batch)."""
    longest = max((len(t) for t in enc.tokens), default=0)
    if longest <= max(spec.buckets):
        return spec
    return dataclasses.replace(spec, buckets=(*sorted(spec.buckets), -(-longest // 8) * 8))


def _prompted_by_prefix(learner: "Learner", builder, ids, texts) -> Features:
    """Probe features of prompts as (prefix per shot order) + (input's own tokens), cached
    under `prompt_key` (a namespace of its own: the numbers differ from a whole prompt's
    by rounding, and a record must not depend on which path filled the cache)."""
    orders = [tuple(int(j) for j in builder.order(i)) for i in ids]
    prefixes = {o: builder.prefix(o) for o in set(orders)}
    suffixes = [builder.suffix(t) for t in texts]
    keys = [prompt_key(prefixes[o], s) for o, (s, _) in zip(orders, suffixes)]
    learner._truncated.update(zip(keys, (cut for _, cut in suffixes)))
    missing = [n for n, k in enumerate(keys) if k not in learner._cache]
    if missing:
        with feature_progress(learner.cfg.source, len(missing)) as progress:
            for order in sorted({orders[n] for n in missing}):
                rows = [n for n in missing if orders[n] == order]
                enc = Encoded([np.asarray(suffixes[n][0], np.int32) for n in rows],
                              np.zeros(len(rows), bool))
                for n, f in zip(rows, _features_after(learner, prefixes[order], enc, progress)):
                    learner._cache[keys[n]] = f
        learner._save_cache()
    return Features(np.stack([learner._cache[k] for k in keys]) if keys else
                    np.zeros((0, learner.bundle.config.hidden_size), np.float32),
                    np.asarray([cut for _, cut in suffixes], bool))


def _features_after(learner: "Learner", prefix, enc: Encoded, progress=None) -> np.ndarray:
    """[N, D] features of `enc`'s rows, each continuing `prefix` (encoded once, its keys
    and values broadcast to every row), pooled over the rows' own tokens."""
    if not hasattr(learner, "_prefix_fns"):
        how = learner.bundle.config.pooling
        learner._prefix_fns = (
            replicated_jit(learner.bundle, lambda m, i, k: m.encode_prefix(i, k)),
            replicated_jit(learner.bundle, lambda m, i, k, pre: L.pool(
                m.hidden(i, k, prefix=pre), k, how)))
    encode_fn, feature_fn = learner._prefix_fns
    learner.features_computed += len(enc)
    p_ids, p_mask = _padded_prefix(prefix, learner.spec.pad_id)
    cache = encode_fn(p_ids, p_mask)
    return batched_apply(
        lambda b: feature_fn(b["input_ids"], b["attention_mask"], cache), enc,
        suffix_spec(learner.spec, enc),
        learner.steps.mesh, prepare=lambda b, idx: {"input_ids": b["input_ids"],
                                                 "attention_mask": b["attention_mask"]},
        tail=(learner.bundle.config.hidden_size,), progress=progress)


def prompt_key(prefix, suffix) -> str:
    """The feature-cache key of a prompt featurised as an encoded prefix plus the input's own
    tokens: a hash of both token lists (18 characters, like the other keys)."""
    digest = hashlib.blake2b(np.asarray(prefix, np.int32).tobytes() + b"|"
                             + np.asarray(suffix, np.int32).tobytes(), digest_size=8)
    return "p:" + digest.hexdigest()


def _padded_prefix(prefix, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """A prefix's [1, P] token ids and mask, padded to a `PREFIX_BUCKETS` length (one compiled
    shape per bucket; padding is masked out of every attention)."""
    plen = bucket_for(len(prefix), PREFIX_BUCKETS)
    p_ids = np.full((1, plen), pad_id, np.int32)
    p_mask = np.zeros((1, plen), np.int32)
    p_ids[0, :len(prefix)] = prefix
    p_mask[0, :len(prefix)] = 1
    return p_ids, p_mask


FEATURE_PROGRESS_MIN = 256  # texts: fewer are featurised without a progress bar


@contextlib.contextmanager
def feature_progress(source: str, n_texts: int):
    """A progress bar on stderr while `n_texts` texts are featurised (texts, tokens/s, time
    left), with a plain line before and after it for logs, where a bar's redraws are lost:
    feature extraction is most of the default's minutes, and used to run unannounced. Yields
    the `batched_apply` progress callback (None for a few texts, or on processes other than
    the first)."""
    if n_texts < FEATURE_PROGRESS_MIN or jax.process_index() != 0:
        yield None
        return
    from tqdm import tqdm
    print(f"features: {n_texts} texts through {source}", file=sys.stderr, flush=True)
    t0, tokens = time.monotonic(), [0]
    bar = tqdm(total=n_texts, desc="features", unit="text", file=sys.stderr, leave=False)

    def update(examples: int, batch_tokens: int) -> None:
        tokens[0] += batch_tokens
        bar.update(examples)
        bar.set_postfix_str(f"{tokens[0] / max(time.monotonic() - t0, 1e-9):,.0f} tokens/s",
                            refresh=False)

    try:
        yield update
    finally:
        bar.close()
        took = time.monotonic() - t0
        print(f"features: {bar.n} texts, {tokens[0]:,} tokens in {took:.0f} s "
              f"({tokens[0] / max(took, 1e-9):,.0f} tokens/s)", file=sys.stderr, flush=True)


def replicated_jit(bundle, fn):
    """jit `fn(model, *args)` over the bundle's current weights with a replicated output, so
    every process (multi-host) can read the whole result. The weights go in as they are
    sharded (nothing is copied); returns `functools.partial(jitted, weights)`, whose `.func`
    and `.args` let `aot` compile the same jit ahead of time."""
    graphdef, state = nnx.split(bundle.model)
    jitted = jax.jit(lambda st, *args: fn(nnx.merge(graphdef, st), *args),
                     out_shardings=NamedSharding(bundle.mesh, P()))
    return functools.partial(jitted, state)


def icl_functions(bundle):
    """In-context scoring's two jitted functions (`Learner.icl_scores_uncached`; compiled
    ahead of time by `aot.icl_programs`): `encode(ids, mask)`, a [1, P] prompt prefix's
    (KV cache, mask); and `score(ids, mask, stacked)`, the next-token logits [runs, B, V] at
    each of B inputs' last token after each of several prefixes stacked on a run axis.

    Traced as `Steps` traces a step (`sharding.activation_sharding`): on a mesh that shards
    the weights (fsdp), the inputs' rows stay split over the devices and each layer's
    weights are gathered, where XLA's own choice split every contraction and all-reduced
    every row's activations (8B, 17 prompts on v5p-8: 72.7 GiB of all-reduces a batch, then
    14.3 GiB of all-gathers; docs/preflight.md); and the attention is chosen for the mesh's
    platform. A data-parallel mesh (the CPU default) computes as before."""
    def split_rows(fn):
        def traced(*args):
            with activation_sharding(bundle.mesh):
                return fn(*args)
        return traced

    return (replicated_jit(bundle, split_rows(lambda m, i, k: m.encode_prefix(i, k))),
            replicated_jit(bundle, split_rows(lambda m, i, k, pre: jax.vmap(
                lambda p: m.last_lm_logits(i, k, prefix=p))(pre))))
