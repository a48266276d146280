r"""The group engine on a transformer (docs/design.md#many-runs-at-once): groups of G LoRA runs
trained together through `groups.run_stages_grouped`, with no member evaluating until its last
step, or with one member evaluating at every step, on each placement asked for.

  python benchmarks/group_engine.py                  # Llama-3-8B's shape: an accelerator
  python benchmarks/group_engine.py --layers=2 --hidden=128 --ffn=256 --heads=4 \
      --kv_heads=2 --vocab=512 --length=32 --batch=8 --steps=8 --groups=1,2,4   # CPU

Each member trains a stage of `--steps` steps of `--batch` random sequences of `--length`
tokens (micro-batches of `--micro` rows, remat with `--remat`) and holds `--val` validation
rows. The engine scores only the members due (`StageResult.evaluations` counts the passes), so
one member evaluating every step should cost about one member's validation pass per step, not
the whole group's. Placement (`config.group_sharding`): `rows` splits each run's batch over the
data axis, `runs` puts whole runs on devices, `auto` chooses (`grouping.placement`); on one
device they are the same. Each (placement, G) pair runs once untimed first (the compile).

Prints per row: placement, runs, who evaluates, ms per step of the group, tokens/s of all
runs, validation passes made, model FLOP utilisation (2x forward, evaluation not counted) and
the loop's compiles. Runs unchanged on CPU, GPU and TPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import chip_peak, forward_flops, print_table  # noqa: E402
from lora_8b import arch  # noqa: E402

from scalable_elicitation.batching import BatchSpec, Encoded  # noqa: E402
from scalable_elicitation.groups import Member, run_stages_grouped  # noqa: E402
from scalable_elicitation.models import ModelBundle, build_model  # noqa: E402
from scalable_elicitation.sharding import make_mesh  # noqa: E402
from scalable_elicitation.stage import StageConfig  # noqa: E402
from scalable_elicitation.train import Steps  # noqa: E402


def members(steps: Steps, args, cfg, G: int, every_step: bool) -> list[Member]:
    """G members whose stages last `--steps` steps (one epoch) and evaluate at their last step
    only, or (member 0, with `every_step`) at every step too."""
    rng = np.random.default_rng(0)
    n_train, L = args.batch * args.steps, args.length

    def tokens(n):
        return Encoded([rng.integers(3, cfg.vocab_size, L) for _ in range(n)],
                       np.zeros(n, bool))

    out = []
    for g in range(G):
        cfg_g = StageConfig(lr=1e-4, max_visits=n_train, patience=10**6,
                            eval_every=1 if every_step and g == 0 else args.steps)
        out.append(Member(steps.fresh_params(jax.random.key(g)), tokens(n_train),
                          rng.integers(0, 2, n_train).astype(np.float32), tokens(args.val),
                          rng.integers(0, 2, args.val).astype(np.float32), cfg_g,
                          seed_path=[g], key=jax.random.key(100 + g)))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in (("layers", 32), ("hidden", 4096), ("ffn", 14336), ("heads", 32),
                          ("kv_heads", 8), ("vocab", 128256), ("length", 64), ("batch", 32),
                          ("steps", 8), ("val", 64), ("micro", 0)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--groups", default="1,2,4")
    p.add_argument("--placements", default="auto")
    p.add_argument("--remat", default=False, action=argparse.BooleanOptionalAction)
    p.add_argument("--attention", default="einsum", choices=("einsum", "fused"))
    p.add_argument("--dtype", default="bfloat16", help="frozen base weights")
    args = p.parse_args(argv)
    cfg = dataclasses.replace(arch(args), attention=args.attention)
    mesh = make_mesh({"data": -1})
    model, lora, mesh, build_args = build_model(cfg, dtype=args.dtype, trainable="lora",
                                                mesh=mesh, remat=args.remat)
    bundle = ModelBundle(model, None, cfg, "llama-shape", "lora", lora, mesh,
                         build_args=build_args)
    steps = Steps.for_model(bundle, micro_batch=args.micro)
    n_base = sum(int(x.size) for x in jax.tree.leaves(steps.frozen))
    nonembed = n_base - 2 * cfg.vocab_size * cfg.hidden_size
    kind, peak = chip_peak()
    spec = BatchSpec(args.batch, (args.length,), 0)
    print(f"{kind} x{jax.device_count()}: {cfg.num_layers} layers x {cfg.hidden_size}, "
          f"{n_base / 1e9:.2f}B frozen ({args.dtype}), {args.steps} steps of {args.batch} x "
          f"{args.length}, {args.val} validation rows", file=sys.stderr, flush=True)
    table = []
    for placement in args.placements.split(","):
        for G in (int(g) for g in args.groups.split(",")):
            run_stages_grouped(steps, members(steps, args, cfg, G, False), spec=spec,
                               group_sharding=placement)  # the compile
            for every_step in (False, True):
                group = members(steps, args, cfg, G, every_step)
                before = steps.compiles["train"]
                t0 = time.perf_counter()
                results = run_stages_grouped(steps, group, spec=spec, group_sharding=placement)
                seconds = time.perf_counter() - t0
                tokens = G * args.steps * args.batch * args.length
                flops = 2 * forward_flops(cfg, nonembed, tokens, args.length)
                table.append({
                    "device": kind, "placement": placement, "runs": G,
                    "evaluating": "one member every step" if every_step else "last step only",
                    "ms/step": f"{seconds / args.steps * 1e3:,.1f}",
                    "tokens/s": f"{tokens / seconds:,.0f}",
                    "validation passes": sum(r.evaluations for r in results),
                    "MFU": f"{flops / seconds / peak:.1%}" if peak else "n/a",
                    "new compiles": steps.compiles["train"] - before})
                print(table[-1], file=sys.stderr, flush=True)
    print_table(table)


if __name__ == "__main__":
    from common import host_memory_as_entry_points
    host_memory_as_entry_points()
    main()
