r"""Stages of a sweep trained one at a time against together in groups
(docs/design.md#many-runs-at-once).

The stages are those of the default grid (weak price 1/10, budgets 8-256, fractions 0-1, three
seeds: every non-empty weak and oracle stage), as linear probes on synthetic standardised
features of the default's width (576), so only training is timed (feature extraction is cached
in a sweep). Prints one row per mode: stages, wall seconds, stages/s, example visits/s, the
speed-up over one at a time, and compiles. Runs unchanged on CPU, GPU and TPU.

  python benchmarks/group_stages.py --group_sizes=1,8,32
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from scalable_elicitation import budget as budget_lib  # noqa: E402
from scalable_elicitation.batching import BatchSpec, Features, FeatureStats  # noqa: E402
from scalable_elicitation.groups import Member, run_stage, run_stages_grouped  # noqa: E402
from scalable_elicitation.sharding import make_mesh  # noqa: E402
from scalable_elicitation.stage import StageConfig  # noqa: E402
from scalable_elicitation.train import Steps  # noqa: E402

BUDGETS = (8, 32, 64, 128, 256)
FRACTIONS = ("0", "0.2", "0.5", "0.8", "1")


def stage_sizes(seeds: int) -> list[int]:
    prices = budget_lib.Prices.of("1", "0.1")
    sizes = []
    for b in BUDGETS:
        for f in FRACTIONS:
            p = budget_lib.labels_for(b, f, prices)
            if p.n_weak > 2418:  # infeasible in the default's weak pool
                continue
            sizes += [n for n in (p.n_weak, p.n_oracle) if n > 0]
    return sizes * seeds


def members(sizes, dim, rng):
    x = rng.normal(size=(max(sizes) + 50, dim)).astype(np.float32)
    y = (x[:, :4].sum(1) + rng.normal(size=len(x)) > 0).astype(np.float32)
    data = FeatureStats.of(x).apply(Features(x, np.zeros(len(x), bool)))
    cfg = StageConfig(lr=0.01, max_visits=30000, small_stage_visits=3000)
    out = []
    for i, n in enumerate(sizes):
        idx = rng.permutation(len(x))[:n]
        if n >= 10:
            n_val = max(2, n // 5)
            tr, va = idx[n_val:], idx[:n_val]
            out.append(Member(None, data.take(tr), y[tr], data.take(va), y[va], cfg,
                              seed_path=[i], key=jax.random.key(i)))
        else:
            out.append(Member(None, data.take(idx), y[idx], None, None, cfg, seed_path=[i],
                              key=jax.random.key(i)))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group_sizes", default="1,8,32")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--dim", type=int, default=576)
    args = parser.parse_args(argv)
    sizes = stage_sizes(args.seeds)
    spec = BatchSpec(32, (1,), 0)
    steps = Steps.for_probe(args.dim, 2, make_mesh({"data": 1}))
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; "
          f"{len(sizes)} stages of the default grid ({min(sizes)}-{max(sizes)} labels)")
    print("| mode | stages | wall s | stages/s | visits/s | speed-up | compiles |")
    print("|---|---|---|---|---|---|---|")
    base = None
    for g in (int(x) for x in args.group_sizes.split(",")):
        ms = members(sizes, args.dim, np.random.default_rng(0))
        for k, m in enumerate(ms):
            m.params = steps.fresh_params(jax.random.key(k))
        before = dict(steps.compiles)
        t0 = time.perf_counter()
        if g == 1:
            results = [run_stage(steps, m.params, m.train, m.targets, m.val, m.val_labels,
                                 m.cfg, seed_path=m.seed_path, key=m.key, spec=spec,
                                 source=m.source) for m in ms]
        else:
            # groups form from stages of similar length (similar evaluation cadence)
            order = np.argsort([len(m.train) for m in ms], kind="stable")
            results = []
            for start in range(0, len(ms), g):
                group = order[start:start + g]
                results += run_stages_grouped(steps, [ms[i] for i in group], spec=spec)
        jax.block_until_ready(jax.tree.leaves(results[-1].params))
        wall = time.perf_counter() - t0
        visits = sum(r.record["visits"] for r in results)
        base = base or wall
        compiles = steps.compiles["train"] - before["train"]
        mode = "one at a time" if g == 1 else f"groups of {g}"
        print(f"| {mode} | {len(ms)} | {wall:.1f} | {len(ms) / wall:.2f} | {visits / wall:,.0f} "
              f"| {base / wall:.1f}x | {compiles} |")


if __name__ == "__main__":
    from common import host_memory_as_entry_points
    host_memory_as_entry_points()
    main()
