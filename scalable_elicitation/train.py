"""Pure, sharded training and evaluation steps (docs/design.md#stages); the engine that runs
them over a stage, for one run or many, is `groups`.

The step functions are functions of arrays: `step_fn(loss)(state, frozen, batch, hparams)`.
Per-run hyperparameters (peak learning rate, warmup and total steps, loss ramps) are arrays in
`hparams`, never Python constants, so one compiled step serves a whole sweep; shapes come from
a fixed batch size and a few length buckets, so a sweep compiles once per bucket.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import NamedSharding, PartitionSpec as P

from scalable_elicitation.models import ModelBundle
from scalable_elicitation.sharding import activation_sharding, state_shardings


# ---------------------------------------------------------------------------------------------
# State, loss, schedule
@struct.dataclass
class TrainState:
    """What changes during training. Frozen base weights live outside (never donated)."""

    step: jax.Array  # int32 scalar, counts from 0 in each stage
    params: Any  # nnx.State of trainable parameters
    opt_state: Any
    key: jax.Array  # RNG key of the stage; in-step randomness is fold_in(key, step)


def soft_cross_entropy(logits, targets, weights):
    """Cross-entropy against soft targets [B, C], averaged over weighted (real) rows."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    per_example = -(targets * logp).sum(-1)
    return (per_example * weights).sum() / jnp.maximum(weights.sum(), 1e-9)


def logconf_targets(logits, y, weights, stage_step, ramp_steps=200.0, max_coef=0.5):
    """Burns et al.'s log-confidence targets (docs/design.md#logconf).

    `p0` is the model's probability of class 0; padding rows (weight 0) are excluded from the
    batch quantile. Threshold t = quantile(p0, mean(y)); hard self-label h = onehot(0 if p0 >= t
    else 1); coefficient c = max_coef * min(1, stage_step / ramp_steps); target
    (1 - c) [1 - y, y] + c stop_gradient(h).
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    p0 = probs[:, 0]
    real = weights > 0
    n_real = jnp.maximum(real.sum(), 1)
    prior = jnp.where(real, y, 0.0).sum() / n_real
    # quantile over real rows only: push padding rows to +inf so they sort last
    sorted_p0 = jnp.sort(jnp.where(real, p0, jnp.inf))
    pos = prior * (n_real - 1)
    lo = jnp.floor(pos).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, n_real - 1)
    frac = pos - lo
    t = sorted_p0[lo] * (1 - frac) + sorted_p0[hi] * frac  # linear interpolation (numpy default)
    h1 = jnp.where(p0 >= t, 0.0, 1.0)
    hard = jnp.stack([1.0 - h1, h1], axis=-1)
    coef = max_coef * jnp.minimum(1.0, stage_step / ramp_steps)
    soft = jnp.stack([1.0 - y, y], axis=-1)
    return (1.0 - coef) * soft + coef * jax.lax.stop_gradient(hard)


def learning_rate(step, peak, warmup, total):
    """Linear warmup from 0 to `peak`, then cosine to 0 at `total` (all arrays)."""
    step = step.astype(jnp.float32)
    warm = peak * step / jnp.maximum(warmup, 1.0)
    progress = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
    cos = peak * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return jnp.where(step < warmup, warm, cos)


def warmup_steps(steps_per_epoch: int) -> int:
    """The warmup steps of a stage: max(2, min(40, steps_per_epoch)) (docs/design.md#stages)."""
    return max(2, min(40, steps_per_epoch))


def _targets(loss_kind, logits, batch, stage_step, hp):
    """A batch's soft targets [B, 2]: the labels, or `logconf_targets` (which need the
    logits of the whole batch)."""
    y = batch["target"]
    if loss_kind == "logconf":
        return logconf_targets(logits, y, batch["weight"], stage_step, hp["logconf_ramp"],
                               hp["logconf_coef"])
    return jnp.stack([1.0 - y, y], axis=-1)


def _key_name(entry) -> str:
    """The plain name of one pytree path entry: DictKey('bias') -> 'bias', GetAttrKey('value')
    -> 'value' (str() of an entry gives "['bias']", which no name test matches)."""
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def decay_mask(params):
    """Weight decay on matrices only: not on norms and biases (docs/design.md#stages). Decided
    by the parameter's name, since stacked layers make a bias 2-D ([layers, dim])."""
    def one(path, v):
        names = [_key_name(p) for p in path if _key_name(p) != "value"]
        leaf = names[-1] if names else ""
        return not ("bias" in leaf or any("norm" in n for n in names))
    return jax.tree_util.tree_map_with_path(one, params)


def make_optimizer(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01, clip=1.0):
    """AdamW without its learning rate: the step scales updates by the scheduled rate, so the
    schedule can be per-run arrays."""
    return optax.chain(
        optax.clip_by_global_norm(clip),
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.add_decayed_weights(weight_decay, mask=decay_mask),
    )


# ---------------------------------------------------------------------------------------------
# Compiled steps for one model
class Steps:
    """The jitted train/eval steps of one model on one mesh, shared by every run of a sweep.

    Built by `Steps.for_model(bundle)` (finetuning through the transformer) or
    `Steps.for_probe(...)` (a linear head on cached pooled features). `compiles` counts
    traces of each step: one per shape bucket.
    """

    def __init__(self, *, logits_fn, params, frozen, mesh, init_params, optimizer=None,
                 micro_batch: int = 0):
        self.mesh = mesh
        # rows per forward and backward pass of a train step (0: the whole batch at once);
        # the gradients of a batch's micro-batches are summed (`_accumulated`)
        self.micro_batch = int(micro_batch)
        self._logits_fn = logits_fn
        self._init_params = init_params
        self.tx = optimizer or make_optimizer()
        self.params_sharding = state_shardings(params, mesh)
        self.frozen_sharding = state_shardings(frozen, mesh)
        self.frozen = frozen
        self.compiles = {"train": 0, "eval": 0}
        replicated = NamedSharding(mesh, P())
        abstract = jax.eval_shape(self._init_state, params, jax.random.key(0))
        self.state_sharding = TrainState(
            step=replicated, params=self.params_sharding,
            opt_state=_match_opt_sharding(abstract.opt_state, self.params_sharding, replicated),
            key=replicated)
        self._eval = None
        self._init = None

    @classmethod
    def for_model(cls, bundle: ModelBundle, optimizer=None, micro_batch: int = 0) -> "Steps":
        graphdef, params, frozen = bundle.split()

        def logits_fn(params, frozen, batch, dropout_key=None):
            model = nnx.merge(graphdef, params, frozen)
            return model(batch["input_ids"], batch["attention_mask"], dropout_key=dropout_key)

        return cls(logits_fn=logits_fn, params=params, frozen=frozen, mesh=bundle.mesh,
                   init_params=bundle.init_trainable, optimizer=optimizer,
                   micro_batch=micro_batch)

    @classmethod
    def for_probe(cls, hidden: int, num_labels: int, mesh, optimizer=None) -> "Steps":
        """Head-only training on cached features: batches carry `features` [B, D].

        The features arrive standardised per dimension with statistics of the task's unlabelled
        training texts (`batching.FeatureStats`, docs/design.md#model). A frozen base cannot move
        the decision threshold, so the probe has a bias; the finetuned head has none. (Standardising
        each example's vector instead leaves a component shared by all examples that acts as a
        hidden bias, and early-stopped probes then predict one class for every input.)
        """
        from scalable_elicitation.models.layers import HEAD_INIT_SCALE, HEAD_INIT_STD
        sharding = NamedSharding(mesh, P())

        # drawn by a computation placed on the mesh, not put there from one process's memory
        # (a multi-process `device_put` is a collective that checks every process's values)
        draw = jax.jit(lambda key: (jax.random.normal(key, (hidden, num_labels), jnp.float32),
                                    jnp.zeros((num_labels,), jnp.float32)),
                       out_shardings=sharding)

        def init_params(key):
            w, bias = draw(key)
            # scaled op by op, outside the compiled draw, where XLA would fold the two
            # constants into one and round the weights differently
            return {"head": {"kernel": w * HEAD_INIT_STD * HEAD_INIT_SCALE, "bias": bias}}

        def logits_fn(params, frozen, batch, dropout_key=None):
            x = batch["features"].astype(jnp.float32)  # [B, D], standardised per dimension
            kernel = params["head"]["kernel"]
            # one matrix-vector product per class: the same logits as `x @ kernel`, but
            # XLA:CPU runs a [B, D] x [D, 2] dot, and its batched form in a group of runs,
            # 1.4-2.5x slower per step (benchmarks/probe_step.py)
            return (jnp.stack([x @ kernel[:, c] for c in range(kernel.shape[1])], axis=-1)
                    + params["head"]["bias"])

        params = jax.eval_shape(init_params, jax.random.key(0))
        return cls(logits_fn=logits_fn, params=params, frozen={}, mesh=mesh,
                   init_params=init_params, optimizer=optimizer)

    # -- state ----------------------------------------------------------------------------
    def _init_state(self, params, key):
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params), key=key)

    def init_state(self, params, key) -> TrainState:
        """A fresh optimizer and step counter around `params` (each stage starts so)."""
        if self._init is None:  # one compile for the sweep, not one per stage
            self._init = jax.jit(self._init_state, out_shardings=self.state_sharding)
        return self._init(params, key)

    def fresh_params(self, key):
        """Newly initialised trainable parameters (head, LoRA) for a run."""
        return self._init_params(key)

    # -- forward ----------------------------------------------------------------------------
    def logits(self, params, frozen, batch, dropout_key=None):
        """Class logits [B, 2] of a batch (traceable; not jitted by itself); activations'
        rows split over the mesh's batch axes (`sharding.constrain_rows`)."""
        with activation_sharding(self.mesh):
            return self._logits_fn(params, frozen, batch, dropout_key)

    def _train_step(self, loss_kind, state: TrainState, frozen, batch, hp):
        self.compiles["train"] += 1  # runs at trace time only
        key = jax.random.fold_in(state.key, state.step)
        stage_step = state.step.astype(jnp.float32)
        rows = batch["weight"].shape[0]
        if self.micro_batch and self.micro_batch < rows:
            loss, grads = self._accumulated(loss_kind, state.params, frozen, batch, hp,
                                            stage_step, key)
        else:
            def loss_fn(params):
                logits = self.logits(params, frozen, batch, dropout_key=key)
                targets = _targets(loss_kind, logits, batch, stage_step, hp)
                return soft_cross_entropy(logits, targets, batch["weight"])

            loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        lr = learning_rate(state.step, hp["lr"], hp["warmup"], hp["total"])
        params = jax.tree.map(lambda p, u: p - (lr * u).astype(p.dtype), state.params, updates)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new, {"loss": loss, "lr": lr, "grad_norm": optax.global_norm(grads)}

    def _accumulated(self, loss_kind, params, frozen, batch, hp, stage_step, key):
        """(loss, grads) of the whole batch's weighted mean loss, taken `micro_batch` rows at a
        time (rows strided, `split`) with the gradients summed in float32
        (docs/design.md#stages): each micro-batch adds its rows' weighted loss over the whole
        batch's weight, so the sum is the whole-batch mean. `logconf`'s self-labels need the
        whole batch's quantile, so its targets come from a forward pass over every
        micro-batch first (no gradient). A micro-batch with no real rows (a short batch's
        padding) is computed like any other (its loss and gradients are zero): the step
        always runs under the group loop's `jax.vmap`, where a `lax.cond` that skipped it
        became a select whose operands, the frozen base among them, were copied once per
        member (a 0.5B model's blocks per member on TPU; docs/preflight.md)."""
        micro = self.micro_batch
        n = batch["weight"].shape[0] // micro

        # micro-batch j takes rows j, n + j, 2n + j, ...: a batch split over the data-parallel
        # devices in contiguous blocks then gives each micro-batch rows on every device
        def split(v):
            return jnp.swapaxes(v.reshape(micro, n, *v.shape[1:]), 0, 1)

        chunks = jax.tree.map(split, batch)
        keys = jax.random.split(key, n)
        if loss_kind == "logconf":
            logits = jax.lax.map(lambda a: self.logits(params, frozen, a[0], dropout_key=a[1]),
                                 (chunks, keys))
            logits = jnp.swapaxes(logits, 0, 1).reshape(n * micro, -1)  # rows in batch order
            targets = _targets(loss_kind, logits, batch, stage_step, hp)
        else:
            targets = _targets(loss_kind, None, batch, stage_step, hp)
        targets = split(targets)
        total = jnp.maximum(batch["weight"].sum(), 1e-9)

        def add(acc, x):
            mb, tg, k = x

            def loss_fn(p):
                logits = self.logits(p, frozen, mb, dropout_key=k)
                logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
                return (-(tg * logp).sum(-1) * mb["weight"]).sum() / total

            loss, grads = jax.value_and_grad(loss_fn)(params)
            return (acc[0] + loss,
                    jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc[1], grads)), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        (loss, grads), _ = jax.lax.scan(add, (jnp.zeros((), jnp.float32), zeros),
                                        (chunks, targets, keys))
        return loss, jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)

    def step_fn(self, loss_kind: str = "xent"):
        """The pure one-run train step `(state, frozen, batch, hp) -> (state, metrics)`, for
        callers that compose it (a group of runs under `jax.vmap`, `groups.py`)."""
        return functools.partial(self._train_step, loss_kind)

    def _eval_step(self, params, frozen, batch):
        self.compiles["eval"] += 1
        logits = self.logits(params, frozen, batch)
        return logits[:, 1] - logits[:, 0]  # score: logit difference

    def scores(self, params, batch):
        if self._eval is None:  # replicated output: every process can read all scores
            self._eval = jax.jit(self._eval_step, out_shardings=NamedSharding(self.mesh, P()))
        return self._eval(params, self.frozen, batch)


def _match_opt_sharding(opt_state, params_sharding, replicated):
    """Optimizer-state leaves shaped like the params get the params' shardings."""
    flat_params = jax.tree.leaves(params_sharding)

    def match(sub):
        leaves = jax.tree.leaves(sub)
        if len(leaves) == len(flat_params):
            return jax.tree.unflatten(jax.tree.structure(sub), flat_params)
        return jax.tree.map(lambda _: replicated, sub)

    def walk(node):
        # optax states are (named) tuples of sub-states; ScaleByAdamState has mu/nu like params
        if hasattr(node, "_fields") and hasattr(node, "mu"):
            return node._replace(mu=match(node.mu), nu=match(node.nu),
                                 count=replicated)
        if isinstance(node, tuple) and not hasattr(node, "_fields"):
            return tuple(walk(n) for n in node)
        return jax.tree.map(lambda _: replicated, node)

    return walk(opt_state)
