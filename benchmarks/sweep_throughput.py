r"""Runs of a sweep one at a time against together (docs/design.md#many-runs-at-once), side by
side.

  python benchmarks/sweep_throughput.py [--setups=probe,tiny_lora,smollm2_lora]
      [--cache_from=WORKDIR] [--parallel=1,0] [--group_sharding=rows|runs]

For each setup, the same planned runs are swept once per `parallel_runs` value (1: one at a
time, each stage a group of one; 0: the default group size), all on `groups.run_stages_grouped`,
each in a
fresh runs folder with the setup's caches (task, weak labels, features) built beforehand and
not timed. Setups:

  probe         the embedded default's grid (SmolLM2 probe on cached features, 75 runs);
                --cache_from=WORKDIR reuses the feature cache of a main job run there
                (else the features are computed first, ~10 minutes on 2 CPU cores)
  tiny_lora     LoRA on tiny:llama (random weights), the smoke task, 3 seeds
  smollm2_lora  LoRA on SmolLM2-135M, a 4-run grid with 64-visit stages (slow on CPU)

Prints one row per (setup, parallel_runs): runs, wall seconds, runs/s, the speed-up over one
at a time, training example visits/s, training tokens/s (visits x the examples' mean tokens,
token setups only), MFU where the chip's peak is known (LoRA: 2x forward FLOPs), and compiles
of the train step (a group's loop counts once per compiled shape). Runs unchanged on CPU, GPU
and TPU. The first row of a process also compiles helpers that later rows reuse (about 1 s
for the probe, 6 s for tiny_lora): repeat values in both orders (--parallel=0,1,0,1) to
compare fairly. `--group_sharding=runs` spreads whole runs of a group over all local devices
(`config.group_sharding`, every setup on a mesh of all devices); on one device it is `rows`.
"""
from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the repo's packages
sys.path.insert(0, str(ROOT / "benchmarks"))


def setup_config(name: str):
    from configs import cost_sweep
    if name == "probe":
        return cost_sweep.get_config()
    c = cost_sweep.get_config("smoke")
    c.mesh.data = 1
    if name == "tiny_lora":
        c.seeds = 3
        c.budgets = (2, 8, 16)
        c.train.max_visits = 256
        return c
    if name == "smollm2_lora":
        c.model = "smollm2"
        c.task_options.max_train = 200
        c.n_test = 64
        c.max_length = 48
        c.length_buckets = (48,)
        c.train.lr = 5e-4
        c.train.max_visits = 64
        c.train.small_stage_visits = 16
        c.train.eval_every = 50
        c.budgets = (8,)
        c.fractions = ("0.5", "1")
        c.seeds = 2
        return c
    raise ValueError(f"unknown setup {name!r}; allowed: probe, tiny_lora, smollm2_lora")


def warm(sweep, specs) -> None:
    """Build everything the runs share and a sweep caches (task, weak labels, probe features
    of the training and test texts), so only the runs are timed."""
    sweep.prepare(s.seed for s in specs)
    learner = sweep.data.learner
    stats = sweep.data.feature_stats(learner)
    if learner.probe:
        sweep.data.test_inputs(learner, stats)


def mean_tokens(sweep, specs) -> float | None:
    if sweep.data.learner.probe:
        return None
    from scalable_elicitation.batching import encode
    train = sweep.data.task().train
    enc = encode(sweep.data.learner.tokenizer, list(train["text"][:256]),
                 sweep.config.max_length)
    return float(enc.lengths().mean())


def run(name: str, parallel: int, cache_from: str | None, workroot: pathlib.Path,
        group_sharding: str = "rows") -> dict:
    import jax
    from common import chip_peak, forward_flops
    from scalable_elicitation import experiment, runner

    config = setup_config(name)
    config.parallel_runs = parallel
    config.group_sharding = group_sharding
    if group_sharding == "runs":
        config.mesh.data = -1  # whole runs over every local device
    workdir = workroot / name
    if cache_from and name == "probe" and not (workdir / "cache").exists():
        shutil.copytree(pathlib.Path(cache_from) / "cache", workdir / "cache")
    sweep = runner.Sweep(config, workdir)
    specs = sweep.plan(experiment.sweep_points(str(ROOT / "configs" / "cost_sweep.py"), config))
    warm(sweep, specs)
    shutil.rmtree(workdir / "runs", ignore_errors=True)  # fresh runs, shared caches
    steps = sweep.data.learner.steps
    before = steps.compiles["train"]
    t0 = time.perf_counter()
    done = experiment.run_experiment(sweep, specs, prepare=False, out=lambda m: None,
                                     show_progress=False)
    wall = time.perf_counter() - t0
    failed = [r for r in done.records if r["status"] == "failed"]
    if failed:
        raise RuntimeError(f"{len(failed)} {name} run(s) failed: {failed[0].get('error')}")
    visits = sum(st["visits"] for r in done.records for st in r.get("stages") or [])
    tokens = mean_tokens(sweep, specs)
    kind, peak = chip_peak()
    mfu = "n/a"
    if tokens is not None and peak:
        cfg = sweep.data.learner.bundle.config
        params = sum(x.size for x in jax.tree.leaves(sweep.data.learner.steps.frozen))
        flops = 2 * forward_flops(cfg, params - cfg.vocab_size * cfg.hidden_size,
                                  int(visits * tokens), config.max_length)
        mfu = f"{flops / wall / peak:.1%}"
    return {"device": f"{kind} x{len(jax.devices())}" if len(jax.devices()) > 1 else kind,
            "setup": name, "placement": group_sharding,
            "parallel_runs": f"{parallel} ({sweep.group_size(specs)})" if parallel == 0
            else str(parallel),
            "runs": len(done.records), "wall s": f"{wall:.1f}",
            "runs/s": f"{len(done.records) / wall:.2f}", "_wall": wall,
            "visits/s": f"{visits / wall:,.0f}",
            "train tok/s": f"{visits * tokens / wall:,.0f}" if tokens else "n/a (features)",
            "MFU": mfu, "compiles": steps.compiles["train"] - before}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setups", default="probe,tiny_lora")
    parser.add_argument("--parallel", default="1,0")
    parser.add_argument("--cache_from", default=None,
                        help="a workdir whose cache/ (features) the probe setup reuses")
    parser.add_argument("--workdir", default=None, help="where to keep caches between calls")
    parser.add_argument("--group_sharding", default="rows", choices=("auto", "rows", "runs"),
                        help="runs: a group's runs spread over all local devices")
    args = parser.parse_args(argv)
    from common import print_table
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(args.workdir or tmp)
        for name in args.setups.split(","):
            base = None
            for p in (int(x) for x in args.parallel.split(",")):
                row = run(name, p, args.cache_from, root, args.group_sharding)
                base = base or row["_wall"]
                row["speed-up"] = f"{base / row.pop('_wall'):.1f}x"
                rows.append(row)
                print(f"{name} parallel_runs={p}: {row['wall s']} s", file=sys.stderr,
                      flush=True)
    print_table(rows)


if __name__ == "__main__":
    from common import host_memory_as_entry_points
    host_memory_as_entry_points()
    main()
