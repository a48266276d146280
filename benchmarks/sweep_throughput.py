r"""Wall time of a 20-run sweep on the smoke config, with and without compile reuse.

  python benchmarks/sweep_throughput.py [--runs=20] [--modes=reuse,clear_caches,fresh_sweep]

Modes:
  reuse         one `Sweep` for every run: the jitted steps take per-run hyperparameters as
                arrays, so runs share one compiled train step and one eval step per shape
  clear_caches  one `Sweep`, but `jax.clear_caches()` before each run: every run recompiles
  fresh_sweep   a new `Sweep` per run (task, weak labels, model and steps rebuilt): what a
                one-job-per-run scheduler pays, minus the Python and JAX start-up

Prints a table (mode, runs, wall s, s/run, compiles). Each mode writes to its own temporary
sweep folder; checkpointing is off (it is I/O, not compilation) unless --checkpoint.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the repo's packages


def smoke_config(checkpoint: bool, seeds: int):
    from configs import cost_sweep
    c = cost_sweep.get_config("smoke")
    c.seeds = seeds
    if "checkpoint" in c:
        c.checkpoint = checkpoint
    return c


def plan(config, n_runs):
    from scalable_elicitation import runner as runner_lib
    from scalable_elicitation.main import sweep_points
    with tempfile.TemporaryDirectory() as tmp:
        specs = runner_lib.Sweep(config, tmp).plan(
            sweep_points(str(ROOT / "configs" / "cost_sweep.py"), config))
    if len(specs) < n_runs:
        raise ValueError(f"the grid has {len(specs)} runs, fewer than --runs={n_runs}")
    return specs[:n_runs]


def run_mode(mode, config, specs, workdir):
    import jax

    from scalable_elicitation import runner as runner_lib
    compiles = 0
    t0 = time.perf_counter()
    sweep = runner_lib.Sweep(config, workdir) if mode != "fresh_sweep" else None
    for spec in specs:
        if mode == "fresh_sweep":
            if sweep is not None:
                compiles += sum(sweep.learner.steps.compiles.values())
            jax.clear_caches()
            sweep = runner_lib.Sweep(config, workdir)
        elif mode == "clear_caches":
            jax.clear_caches()
        rec = sweep.run(spec)
        if rec["status"] != "ok":
            raise RuntimeError(f"run {rec['run_id']} {rec['status']}: {rec.get('error')}")
    compiles += sum(sweep.learner.steps.compiles.values())
    return time.perf_counter() - t0, compiles


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--modes", default="reuse,clear_caches,fresh_sweep")
    parser.add_argument("--checkpoint", action="store_true")
    args = parser.parse_args()
    config = smoke_config(args.checkpoint, seeds=-(-args.runs // 6))  # 6 runs per seed
    specs = plan(config, args.runs)
    rows = []
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory() as workdir:
            wall, compiles = run_mode(mode, config, specs, workdir)
        rows.append((mode, len(specs), wall, wall / len(specs), compiles))
        print(f"{mode}: {wall:.1f} s", file=sys.stderr, flush=True)
    import jax
    print(f"smoke config, {jax.device_count()} {jax.devices()[0].platform} device(s), "
          f"checkpoint={'on' if args.checkpoint else 'off'}")
    print(f"{'mode':<14}{'runs':>6}{'wall s':>10}{'s/run':>9}{'compiles':>10}")
    for mode, n, wall, per, compiles in rows:
        print(f"{mode:<14}{n:>6}{wall:>10.1f}{per:>9.2f}{compiles:>10}")


if __name__ == "__main__":
    main()
