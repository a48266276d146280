"""A sweep's programs built abstractly and compiled ahead of time (docs/preflight.md): the
model as `jax.ShapeDtypeStruct`s with the shardings a real load gives it (`abstract_bundle`),
on any mesh (real devices, or a target's compile-only ones), and the group loop and inference
steps the sweep runs, so their bytes can be read from the compiler before anything runs.

    lrn = learned(learner_cfg, devices)                # no weights, no data
    prog = loop_program("", lrn, loss="xent", rows=..., val_rows=..., steps=..., members=8,
                        group_sharding="auto")
    compiled = compile_bytes(prog, 8)                  # (bytes per device, or None: too big)

Used by launch/preflight.py (for a target) and by the scheduler on an accelerator
(`runner.Sweep.group_size`: the largest group the compiler says fits).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from scalable_elicitation import groups, memory
from scalable_elicitation.batching import bucket_for
from scalable_elicitation.learner import PREFIX_BUCKETS, icl_functions, learner_mesh
from scalable_elicitation.models import LoraConfig, abstract_bundle
from scalable_elicitation.models import layers as L
from scalable_elicitation.sharding import batch_sharding
from scalable_elicitation.stage import StageConfig, stage_schedule
from scalable_elicitation.train import Steps

GIB = 1 << 30


@dataclasses.dataclass
class Program:
    """One program to compile: `build(members) -> (jitted, abstract args)`; `grouped`
    programs take a group size."""
    name: str
    build: object
    grouped: bool
    model_flops: float  # analytic FLOPs of one step (one member), for the MFU ceiling
    members: int = 1


def _sds(shape, dtype, sharding):
    return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


@dataclasses.dataclass
class Learned:
    """One learner's abstract model and steps on a target's mesh."""
    lcfg: object  # LearnerConfig
    mesh: object
    bundle: object
    steps: object
    params: object  # abstract trainable parameters, with their shardings
    micro: int
    length: int

    @property
    def probe(self) -> bool:
        return self.lcfg.trainable == "head"


def learned(lcfg, devices) -> Learned:
    """`learner.Learner` without weights: the same mesh (`learner_mesh`), model and steps."""


    mesh, micro = learner_mesh(lcfg, devices)
    probe = lcfg.trainable == "head"
    lora = (LoraConfig(lcfg.lora_rank, lcfg.lora_alpha, lcfg.lora_dropout)
            if lcfg.trainable == "lora" else None)
    compute = lcfg.dtype if lcfg.trainable == "full" else None
    bundle = abstract_bundle(lcfg.source, dtype=lcfg.dtype, compute_dtype=compute, lora=lora,
                             trainable=lcfg.trainable, mesh=mesh, remat=lcfg.remat,
                             attention=lcfg.attention, pooling=lcfg.pooling)
    if probe:
        steps = Steps.for_probe(bundle.config.hidden_size, 2, mesh)
        params = jax.eval_shape(steps._init_params, jax.random.key(0))
        params = jax.tree.map(lambda x, s: _sds(x.shape, x.dtype, s), params,
                              steps.params_sharding)
    else:
        steps = Steps.for_model(bundle, micro_batch=micro)
        params = bundle.split()[1]
    length = min([b for b in lcfg.buckets if b >= lcfg.max_length] or [max(lcfg.buckets)])
    return Learned(lcfg, mesh, bundle, steps, params, micro, length)


def inference_program(prefix: str, lrn: Learned) -> Program:
    """A probe's features forward ([B, L] tokens -> [B, D] pooled) or a finetuned model's
    scoring step (`Steps.scores`), on one batch of the longest bucket."""


    bs, length, mesh = lrn.lcfg.batch_size, lrn.length, lrn.mesh
    replicated = NamedSharding(mesh, P())
    tokens = {k: _sds((bs, length), jnp.int32, batch_sharding(mesh, 2))
              for k in ("input_ids", "attention_mask")}
    flops = memory.forward_flops(memory.Arch.of(lrn.bundle.config), bs * length, length)
    if lrn.probe:
        graphdef, state = nnx.split(lrn.bundle.model)
        how = lrn.bundle.config.pooling

        def features(st, ids, mask):
            return L.pool(nnx.merge(graphdef, st).hidden(ids, mask), mask, how)

        fn = jax.jit(features, out_shardings=replicated)
        return Program(f"{prefix}features", lambda _: (fn, (state, tokens["input_ids"],
                                                            tokens["attention_mask"])),
                       False, flops)
    fn = jax.jit(lrn.steps._eval_step, out_shardings=replicated)
    return Program(f"{prefix}eval", lambda _: (fn, (lrn.params, lrn.steps.frozen, tokens)),
                   False, flops)


def loop_program(prefix: str, lrn: Learned, *, loss: str, rows: int, val_rows: int,
                 steps: int, members: int, group_sharding: str) -> Program:
    """The group loop (`groups.group_loop`) of `members` runs, padded as `groups._layout`
    pads a group of the sweep's largest stage (`rows`, `val_rows`, `steps`)."""


    st, mesh, bs, length = lrn.steps, lrn.mesh, lrn.lcfg.batch_size, lrn.length
    arch = memory.Arch.of(lrn.bundle.config)
    hp_keys = list(_hparams())

    def build(G):
        axis = groups.run_mesh_axis(mesh, group_sharding, G)
        Gp = G if axis is None else -(-G // mesh.shape[axis]) * mesh.shape[axis]
        N, M = groups.padded_rows(rows, val_rows, bs)
        T = groups._bucket(max(steps, 1), 64)
        state = jax.eval_shape(st._init_state, lrn.params, jax.random.key(0))
        host = {"metric": ((Gp,), jnp.float32), "best_step": ((Gp,), jnp.int32),
                "bad": ((Gp,), jnp.int32), "has_best": ((Gp,), jnp.bool_),
                "evals": ((Gp,), jnp.int32), "done": ((Gp,), jnp.bool_),
                "losses": ((groups.ITERS_PER_CALL, Gp), jnp.float32), "it": ((), jnp.int32)}
        where = groups._carry_shardings(st, axis, {**host, "state": None, "best": None})

        def stacked(tree, shardings):
            return jax.tree.map(lambda x, s: _sds((Gp, *x.shape), x.dtype, s), tree,
                                shardings)

        carry = {"state": stacked(state, where["state"]),
                 "best": stacked(lrn.params, where["best"]),
                 **{k: _sds(shape, dt, where[k]) for k, (shape, dt) in host.items()}}
        run = NamedSharding(mesh, groups._spec(axis))

        def g(shape, dt):
            return _sds((Gp, *shape), dt, run)

        if lrn.probe:
            data = {"features": g((N, arch.hidden), jnp.float32)}
            val = {"features": g((M, arch.hidden), jnp.float32)}
        else:
            data = {k: g((N, length), jnp.int32) for k in ("input_ids", "attention_mask")}
            val = {k: g((M, length), jnp.int32) for k in ("input_ids", "attention_mask")}
        consts = {"train": data, "target": g((N,), jnp.float32),
                  "weight": g((N,), jnp.float32), "order": g((T, bs), jnp.int32),
                  "real": g((T, bs), jnp.bool_), "val": val, "val_y": g((M,), jnp.float32),
                  "val_on": g((M,), jnp.bool_),
                  **{k: g((), jnp.int32) for k in ("total", "eval_every", "first_eval",
                                                  "patience")},
                  "has_val": g((), jnp.bool_), "min_delta": g((), jnp.float32),
                  "hp": {k: g((), jnp.float32) for k in hp_keys}}
        loop = groups.group_loop(st, loss, M if lrn.probe else bs, axis)
        return loop, (carry, st.frozen, consts, _sds((), jnp.int32, NamedSharding(mesh, P())))

    if lrn.probe:
        flops = 3.0 * 2 * arch.hidden * 2 * bs
    else:
        targets = (lrn.bundle.lora.targets or lrn.bundle.config.lora_targets) \
            if lrn.bundle.lora else ()
        flops = memory.train_flops(arch, lrn.lcfg.trainable, bs * length, length,
                                   lrn.lcfg.lora_rank, targets or memory.PROJECTIONS)
    return Program(f"{prefix}train_loop", build, True, flops, members)


# A prompt prefix's tokens beside its shots' texts, at most (the tokenizer is not known
# without a download): the leading special tokens (Llama: BOS) and each shot's label line
# "\n{label}\n\n" (`prompts.PromptBuilder`), counted one token per character
ICL_LEADING_TOKENS = 2
ICL_LABEL_LINE_TOKENS = 4


def icl_prefix_length(k: int, shot_max_length: int) -> int:
    """The padded length (`learner.PREFIX_BUCKETS`) of the longest prefix an ICL run of k
    shots can have: every shot's text cut at `shot_max_length` tokens."""
    longest = ICL_LEADING_TOKENS + k * (shot_max_length + ICL_LABEL_LINE_TOKENS)
    return bucket_for(longest, PREFIX_BUCKETS)


def icl_programs(prefix: str, lrn: Learned, *, prefix_length: int, runs: int) -> list:
    """In-context scoring as `Learner.icl_scores_uncached` runs it, through the same jits
    (`learner.icl_functions`): `icl_prefix` encodes one [1, P] prompt prefix into its KV
    cache; `icl_scores` scores one batch of inputs of the longest bucket after `runs`
    prefixes of length `prefix_length` stacked on a run axis (the runs of a scheduler's batch
    with distinct prompts: `build(runs)`). The stacked caches are the prefix programs'
    replicated outputs, stacked, as the learner stacks them."""
    encode_fn, score_fn = icl_functions(lrn.bundle)
    mesh, bs, length = lrn.mesh, lrn.lcfg.batch_size, lrn.length
    replicated = NamedSharding(mesh, P())
    weights = encode_fn.args[0]
    # the prefix goes in as the learner passes it, a host array (no sharding of its own)
    p_tokens = (_sds((1, prefix_length), jnp.int32, None),) * 2
    tokens = (_sds((bs, length), jnp.int32, batch_sharding(mesh, 2)),) * 2
    arch = memory.Arch.of(lrn.bundle.config)
    targets = (lrn.bundle.lora.targets or lrn.bundle.config.lora_targets) \
        if lrn.bundle.lora else memory.PROJECTIONS
    rank = lrn.lcfg.lora_rank if lrn.bundle.lora else 0
    unembed = 2.0 * arch.hidden * lrn.bundle.config.vocab_size

    def build_scores(n):
        cache = jax.eval_shape(encode_fn.func, weights, *p_tokens)
        stacked = jax.tree.map(lambda x: _sds((n, *x.shape), x.dtype, replicated), cache)
        return score_fn.func, (weights, *tokens, stacked)

    return [Program(f"{prefix}icl_prefix", lambda _: (encode_fn.func, (weights, *p_tokens)),
                    False, memory.forward_flops(arch, prefix_length, prefix_length, rank,
                                                targets)),
            Program(f"{prefix}icl_scores", build_scores, False,
                    memory.forward_flops(arch, bs * length, prefix_length + length, rank,
                                         targets) + bs * unembed, runs)]


def _hparams() -> dict:
    """The per-run hyperparameters a stage's step takes as arrays (their names)."""
    return stage_schedule(64, 16, StageConfig(lr=1e-3), 32).hparams




@dataclasses.dataclass
class Memory:
    """A compiled program's bytes per device (`memory_analysis`), or the compiler's refusal
    (`error`, with the bytes its message names)."""
    argument: int
    output: int
    temp: int
    alias: int
    error: str | None = None
    compiled: object = None  # the compiled executable (None after a refusal)

    @property
    def total(self) -> int:
        return self.argument + self.output + self.temp - self.alias


def argument_bytes(args) -> int:
    """Bytes of abstract arguments one device holds: each leaf's shard (whole where it has
    no sharding)."""
    def one(x):
        sharding = getattr(x, "sharding", None)
        shape = sharding.shard_shape(x.shape) if sharding is not None else x.shape
        return math.prod(shape) * x.dtype.itemsize  # a PRNG key's dtype has one too
    return int(sum(one(x) for x in jax.tree.leaves(args)))


def compile_memory(prog: Program, members: int) -> Memory:
    """Lower and compile `prog` for `members` runs; an out-of-memory refusal by the compiler
    (RESOURCE_EXHAUSTED) is a result, not an exception."""
    fn, args = prog.build(members)
    try:
        compiled = fn.lower(*args).compile()
    except Exception as err:  # noqa: BLE001 - the compiler's refusal (RESOURCE_EXHAUSTED)
        text = str(err)
        if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
            raise
        # the message names the temporaries' bytes; the arguments are the abstract
        # arguments' shards, known without the compiler
        need = re.search(r"required for [^(]*\(([\d.]+)([GM])\)", text)
        temp = int(float(need.group(1)) * (GIB if need.group(2) == "G" else 1 << 20)) \
            if need else 0
        return Memory(argument_bytes(args), 0, temp, 0, text.splitlines()[0][:300])
    m = compiled.memory_analysis()
    return Memory(int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                  int(m.temp_size_in_bytes), int(m.alias_size_in_bytes), None, compiled)


def largest_fitting(compile_at: Callable[[int], Memory], memory: int, start: int, cap: int,
                    seen: dict | None = None) -> int:
    """The largest group size in [1, cap] whose compiled program fits `memory` bytes per
    device, found by compiling (`compile_at(size)`; results kept in `seen`): from `start`,
    halve until one fits, then a line through two compiled sizes predicts the largest, and
    compiles confirm it (stepping down when the compiler disagrees). 0 when one run does not
    fit."""
    seen = {} if seen is None else seen

    def at(g):
        if g not in seen:
            seen[g] = compile_at(g)
        return seen[g]

    def ok(g):
        r = at(g)
        return r.error is None and r.total <= memory

    g = max(1, min(start, cap))
    while not ok(g):
        if g == 1:
            return 0
        g = max(1, g // 2)
    if cap <= g:
        return g
    other = min(cap, 2 * g)
    a, b = at(g), at(other)
    if b.error is None and other > g:
        per = max((b.total - a.total) / (other - g), 1.0)
        guess = int(min(cap, g + (memory - a.total) // per))
    else:
        guess = g
    best = max(k for k in seen if ok(k))
    guess = max(guess, best)
    bad = cap + 1  # the smallest size known not to fit
    for _ in range(5):  # confirm the line's prediction; after a miss, a line through the edge
        if guess <= best:
            break
        if ok(guess):  # the line's prediction fits: the line says one more does not
            best = guess
            if bad > cap or guess >= bad - 1:
                break
            guess = bad - 1
            continue
        bad = guess
        low, high = at(best), at(bad)
        per = (high.total - low.total) / (bad - best) if high.error is None else 0
        guess = int(best + (memory - low.total) // per) if per > 0 else best + (bad - best) // 2
        guess = min(guess, bad - 1)
    return best
