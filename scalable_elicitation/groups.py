"""Many stages at once (SPEC section 13): one compiled step trains a group of runs together.

Each member of a group is one run's stage (its trainable parameters, labels, schedule and
early-stopping state). Their train states are stacked on a leading run axis and one jitted
chunk, `jax.vmap` over runs inside `lax.scan` over steps, advances every member; the frozen
base is shared (closed over, read once per step for all runs). Per-run schedule lengths,
evaluation cadences and data orders stay per run: a chunk runs until the next evaluation of
any member, a member that has finished or stopped early is masked out (its state does not
change) until the group ends. Each member's result equals `stage.run_stage` on it alone (the
same batches, schedule, evaluations and kept state), so a record does not depend on its group.

Not yet wired into the sweep runner (`config.parallel_runs`): see the issue notes.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from scalable_elicitation.batching import BatchSpec, stack_batches, to_global
from scalable_elicitation.stage import (EarlyStopping, StageConfig, StageResult, batch_indices,
                                        predict, stage_schedule, val_metric, visits_through)
from scalable_elicitation.train import Steps


@dataclasses.dataclass
class Member:
    """One run's stage in a group: what `stage.run_stage` takes for it."""
    params: object
    train: object  # Features or Encoded
    targets: np.ndarray
    val: object | None
    val_labels: np.ndarray | None
    cfg: StageConfig
    seed_path: Sequence[int]
    key: jax.Array
    source: str = "oracle"
    weights: np.ndarray | None = None


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _member(tree, g: int):
    return jax.tree.map(lambda x: x[g], tree)


@functools.lru_cache(maxsize=None)
def _group_chunk(steps: Steps, loss_kind: str):
    """jit(states[G], batches[T, G, ...], active[T, G], hp[G]) -> (states, losses[T, G]).
    A slot where no member is active is skipped (`lax.cond`), so a chunk padded to a power of
    two costs only its real steps; an inactive member's state is kept with `where`."""
    step = steps.step_fn(loss_kind)

    def one(state, batch, hp, on):
        new, metrics = step(state, steps.frozen, batch, hp)
        keep = jax.tree.map(lambda a, b: jnp.where(on, a, b), new, state)
        return keep, jnp.where(on, metrics["loss"], jnp.nan)

    def chunk(states, batches, active, hp):
        def body(states, xs):
            batch, on = xs
            return jax.lax.cond(
                on.any(), lambda s: jax.vmap(one)(s, batch, hp, on),
                lambda s: (s, jnp.full(on.shape, jnp.nan, jnp.float32)), states)

        return jax.lax.scan(body, states, (batches, active))

    return jax.jit(chunk, donate_argnums=(0,))


def _chunk_length(n: int, cap: int) -> int:
    """The power of two >= n (at most `cap`): a few compiled chunk lengths serve every stage."""
    return min(cap, 1 << max(0, (n - 1).bit_length()))


def run_stages_grouped(steps: Steps, members: Sequence[Member], *, spec: BatchSpec,
                       chunk_steps: int = 64) -> list[StageResult]:
    """Train every member's stage together; returns one `StageResult` per member, in order.
    All members share the loss kind (a group forms from runs with compatible shapes)."""
    if not members:
        return []
    loss_kinds = {m.cfg.loss for m in members}
    if len(loss_kinds) != 1:
        raise ValueError(f"a group trains one loss kind; got {sorted(loss_kinds)}")
    G, bs = len(members), spec.batch_size
    plans = [stage_schedule(len(m.train), m.val is not None and len(m.val) > 0, m.cfg, bs)
             for m in members]
    hp = {k: jnp.asarray([p.hparams[k] for p in plans], jnp.float32) for k in plans[0].hparams}
    states = _stack([steps.init_state(m.params, m.key) for m in members])
    weights = [np.ones(len(m.train), np.float32) if m.weights is None else m.weights
               for m in members]
    best = [EarlyStopping(m.cfg.min_delta, m.cfg.patience) for m in members]
    step = np.zeros(G, np.int64)
    done = np.zeros(G, bool)
    last_loss = np.full(G, np.nan)
    chunk = _group_chunk(steps, loss_kinds.pop())
    while not done.all():
        # every active member runs the same number of steps: up to the nearest evaluation
        stops = [min(p.total, (s // p.eval_every + 1) * p.eval_every if p.has_val
                     else s + chunk_steps) for p, s in zip(plans, step)]
        n = int(min(stop - s for stop, s, d in zip(stops, step, done) if not d))
        n = min(n, chunk_steps)
        length = _chunk_length(n, chunk_steps)
        per_member = []
        for g, m in enumerate(members):
            if done[g]:
                idx = [batch_indices(len(m.train), 0, bs, m.seed_path)]
            else:
                idx = [batch_indices(len(m.train), int(step[g]) + t, bs, m.seed_path)
                       for t in range(n)]
            per_member.append(stack_batches(m.train, idx, m.targets, weights[g], spec, length))
        batches = {k: np.stack([b[k] for b in per_member], axis=1) for k in per_member[0]}
        active = (np.arange(length)[:, None] < n) & ~done[None, :]
        states, losses = chunk(states, to_global(batches, steps.mesh, leading=2),
                               jnp.asarray(active), hp)
        losses = np.asarray(jax.device_get(losses))[:n]
        for g, m in enumerate(members):
            if done[g]:
                continue
            bad = np.flatnonzero(~np.isfinite(losses[:, g]))
            if bad.size:
                raise FloatingPointError(f"non-finite loss at step {step[g] + bad[0] + 1} of "
                                         f"group member {g} ({m.source} stage)")
            step[g] += n
            last_loss[g] = losses[-1, g]
            p = plans[g]
            if p.has_val and (step[g] % p.eval_every == 0 or step[g] == p.total):
                params = _member(states.params, g)
                scores = predict(steps, params, m.val, spec)
                if best[g].update(val_metric(scores, m.val_labels), int(step[g]), params):
                    done[g] = True
            if step[g] >= p.total:
                done[g] = True
    results = []
    for g, (m, p) in enumerate(zip(members, plans)):
        kept = best[g].params if p.has_val else _member(states.params, g)
        n_train = len(m.train)
        truncated = int(m.train.truncated.sum()) + (int(m.val.truncated.sum()) if p.has_val
                                                      else 0)
        results.append(StageResult(kept, {
            "source": m.source, "n_train": n_train, "n_val": len(m.val) if p.has_val else 0,
            "visits": visits_through(n_train, int(step[g]), bs), "planned_visits": p.visits,
            "steps": int(step[g]), "best_step": best[g].step if p.has_val else int(step[g]),
            "val_metric": float(best[g].metric) if p.has_val else None,
            "truncated": truncated, "final_loss": float(last_loss[g])}))
    return results


def make_groups(n_runs: int, parallel_runs: int) -> list[range]:
    """Consecutive groups of at most `parallel_runs` of `n_runs` runs."""
    if parallel_runs < 1:
        raise ValueError(f"parallel_runs must be >= 1, got {parallel_runs}")
    return [range(i, min(n_runs, i + parallel_runs)) for i in range(0, n_runs, parallel_runs)]

