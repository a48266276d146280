r"""The linear probe's train step, one run and a vmapped group of runs
(docs/design.md#many-runs-at-once).

  python benchmarks/probe_step.py [--groups=1,8,32] [--steps=2000] [--dim=576]

Times `Steps.for_probe`'s real step (soft cross-entropy, Adam, the warm-up/decay schedule) in a
jitted `fori_loop` of `--steps` iterations, each gathering every member's batch of 32 rows from
its own feature table on the device, as `groups.run_stages_grouped` does, for two ways of
writing the head's logits:

  per-class  one [B, D] x [D] matrix-vector product per class (what `Steps.for_probe` uses)
  dot        one [B, D] x [D, 2] matrix product (`x @ kernel`), identical maths

Prints, per (head, group size): microseconds per loop iteration and per member-step, example
visits/s, wall seconds of the timed call, compiles. Runs unchanged on CPU, GPU and TPU.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import print_table, step_hparams  # noqa: E402

from scalable_elicitation.sharding import make_mesh  # noqa: E402
from scalable_elicitation.train import Steps  # noqa: E402

BATCH, ROWS = 32, 2048


def dot_head(dim: int, mesh) -> Steps:
    """`Steps.for_probe` with its logits written as one matrix product."""
    base = Steps.for_probe(dim, 2, mesh)

    def logits_fn(params, frozen, batch, dropout_key=None):
        return batch["features"] @ params["head"]["kernel"] + params["head"]["bias"]

    return Steps(logits_fn=logits_fn, params=jax.eval_shape(base.fresh_params,
                                                              jax.random.key(0)),
                 frozen={}, mesh=mesh, init_params=base.fresh_params)


def time_group(steps: Steps, group: int, n_steps: int, dim: int) -> dict:
    rng = np.random.default_rng(0)
    table = jnp.asarray(rng.normal(size=(group, ROWS, dim)).astype(np.float32))
    target = jnp.asarray(rng.random((group, ROWS)).astype(np.float32))
    order = jnp.asarray(rng.integers(0, ROWS, size=(group, n_steps, BATCH)).astype(np.int32))
    keys = jax.random.split(jax.random.key(0), group)
    states = jax.vmap(lambda k: steps.init_state(steps.fresh_params(k), k))(keys)
    hp = step_hparams(lr=1e-2, warmup=10.0, total=n_steps, logconf_ramp=0.0, logconf_coef=0.0)
    step = jax.vmap(steps.step_fn("xent"), in_axes=(0, None, 0, None))
    before = steps.compiles["train"]

    @jax.jit
    def run(states):
        def body(i, st):
            idx = order[:, i]
            batch = {"features": jax.vmap(lambda t, j: t[j])(table, idx),
                     "target": jax.vmap(lambda t, j: t[j])(target, idx),
                     "weight": jnp.ones((group, BATCH), jnp.float32)}
            return step(st, {}, batch, hp)[0]
        return jax.lax.fori_loop(0, n_steps, body, states)

    jax.block_until_ready(run(states))  # compile
    t0 = time.perf_counter()
    jax.block_until_ready(run(states))
    wall = time.perf_counter() - t0
    return {"iter us": f"{wall / n_steps * 1e6:.1f}",
            "member-step us": f"{wall / n_steps / group * 1e6:.1f}",
            "visits/s": f"{group * n_steps * BATCH / wall:,.0f}", "wall s": f"{wall:.2f}",
            "compiles": steps.compiles["train"] - before}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", default="1,8,32")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--dim", type=int, default=576)
    args = p.parse_args(argv)
    mesh = make_mesh({"data": 1})
    heads = {"per-class": Steps.for_probe(args.dim, 2, mesh), "dot": dot_head(args.dim, mesh)}
    rows = []
    for g in (int(x) for x in args.groups.split(",")):
        for name, steps in heads.items():
            rows.append({"device": jax.devices()[0].device_kind, "head": name, "group": g,
                         **time_group(steps, g, args.steps, args.dim)})
            print(f"{name} group {g}: {rows[-1]['member-step us']} us", file=sys.stderr,
                  flush=True)
    print_table(rows)


if __name__ == "__main__":
    from common import host_memory_as_entry_points
    host_memory_as_entry_points()
    main()
