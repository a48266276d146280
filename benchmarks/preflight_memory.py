r"""The memory model (`scalable_elicitation/memory.py`) against an accelerator compiler's bytes
per device, for the group loop a sweep would run (issue 28, item 3; docs/preflight.md).

  python benchmarks/preflight_memory.py --target=v5p-8 --length=512 --runs=1,8,32
  python benchmarks/preflight_memory.py --target=v5e-8 --length=512 --runs=1,2,8,32 \
      --config=configs/cost_sweep.py:study --model=meta-llama/Meta-Llama-3-8B

Needs the target's extra (`tpu`: libtpu; `gpu`: the cuda12 plugin, with JAX_PLATFORMS=cpu);
nothing runs and nothing is downloaded. Each row compiles the group loop of `runs` members
(`aot.loop_program`, built by `launch.preflight.plan` as the preflight builds it) for the
target's compile-only devices and prints the compiler's bytes per device beside the
model's (`Plan.model_bytes`). Where the compiler refuses a program for want of memory it
names only the temporaries' bytes; the row then adds the arguments' shards (exact, from
their shardings) and says so. The compile time is the CPU's, not the accelerator's.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import print_table  # noqa: E402

GIB = 1 << 30


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True)
    ap.add_argument("--config", default="configs/cost_sweep.py:study")
    ap.add_argument("--model", default="meta-llama/Meta-Llama-3-8B")
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--runs", default="1,8")
    args = ap.parse_args()

    import importlib.util

    from launch import preflight, targets
    from scalable_elicitation import planning
    from scalable_elicitation.runner import resolve_auto_dtype

    path, _, arg = args.config.partition(":")
    spec = importlib.util.spec_from_file_location("config_module", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        target = targets.get(args.target)
        devices = targets.devices(target)
    except (ValueError, targets.MissingExtra) as err:
        print(f"preflight_memory: {err}", file=sys.stderr)
        return 2
    rows = []
    for members in [int(x) for x in args.runs.split(",")]:
        config = module.get_config(arg or None)
        with config.unlocked():
            config.model = args.model
            config.labeler.kind = "noise"  # the strong model's loop only
            config.max_length, config.length_buckets = args.length, (args.length,)
            config.parallel_runs = members
        config = resolve_auto_dtype(config, platform=target.kind)
        planning.validate(config)
        t0 = time.monotonic()
        plan = preflight.plan(config, None, target, devices)
        loop = [p for p in plan.programs if p.name == "train_loop"][0]
        result = preflight.compile_program(loop, members)
        model = plan.model_bytes(members)
        rows.append({
            "target": target.name, "mesh": ",".join(
                f"{k}{v}" for k, v in plan.strong.mesh.shape.items() if v > 1) or "1",
            "length": args.length, "runs": members,
            "compiled GiB": f"{result.total / GIB:.2f}"
            + (" (refused: temporaries + argument shards)" if result.error else ""),
            "arguments": f"{result.argument / GIB:.2f}",
            "temporaries": f"{result.temp / GIB:.2f}",
            "model GiB": f"{model / GIB:.2f}",
            "model / compiled": f"{model / result.total:.3f}",
            "model: shared + runs x member": f"{plan.estimate.shared / GIB:.2f} + "
            f"{-(-members // plan.spread)} x {plan.estimate.per_member / GIB:.3f}",
            "compile s (CPU)": f"{time.monotonic() - t0:.0f}"})
        print(rows[-1], file=sys.stderr, flush=True)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
