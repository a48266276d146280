r"""The small learning-rate sweep that chose the default probe's rate
(docs/decisions.md#probe-learning-rate-001).

Trains the default's probe (early-stopped, as a sweep run trains it) on n oracle labels at each
rate and scores it on *validation* examples: the tail of the oracle pool, which no grid point of
the default buys (it takes at most 256 of about 800). The test set is never read. Prints a table
of mean accuracy over seeds per (rate, n).

  python scripts/probe_lr_sweep.py --workdir=workdir --lrs=0.003,0.01,0.03,0.1 --ns=32,256
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs import cost_sweep  # noqa: E402
from scalable_elicitation import runner as R  # noqa: E402
from scalable_elicitation.metrics import auroc  # noqa: E402
from scalable_elicitation.groups import run_stage  # noqa: E402
from scalable_elicitation.stage import StageConfig, predict, split_validation  # noqa: E402

N_VALIDATION = 400


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="workdir", help="reuses WORKDIR/cache")
    parser.add_argument("--lrs", default="0.003,0.01,0.03,0.1")
    parser.add_argument("--ns", default="32,256")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    config = cost_sweep.get_config()
    sweep = R.Sweep(config, args.workdir)
    learner = sweep.data.learner
    print("| lr | " + " | ".join(f"n={n} acc (auroc)" for n in args.ns.split(",")) + " |")
    print("|---|" + "---|" * len(args.ns.split(",")))
    for lr in (float(x) for x in args.lrs.split(",")):
        cells = []
        for n in (int(x) for x in args.ns.split(",")):
            accs, aucs = [], []
            for seed in range(args.seeds):
                pools, stats = sweep.data.pools(seed), sweep.data.feature_stats()
                oracle = pools.take("oracle", pools.size("oracle"))
                train, val = oracle.take(np.arange(n)), oracle.take(
                    np.arange(len(oracle) - N_VALIDATION, len(oracle)))
                cfg = StageConfig(lr=lr, max_visits=config.train.max_visits,
                                  small_stage_visits=config.train.small_stage_visits)
                tr, va = split_validation(n, cfg, np.random.default_rng([seed, 1, 1]))
                data = stats.apply(learner.data(train["id"], train["text"]))
                y = train["label"].astype(np.float32)
                result = run_stage(learner.steps, learner.steps.fresh_params(jax.random.key(seed)),
                                   data.take(tr), y[tr], data.take(va) if len(va) else None,
                                   y[va] if len(va) else None, cfg, seed_path=[seed, 3, 1],
                                   key=jax.random.key(seed), spec=learner.spec, source="oracle")
                scores = predict(learner.steps, result.params,
                                 stats.apply(learner.data(val["id"], val["text"])), learner.spec)
                accs.append(np.mean((scores > 0) == val["label"]))
                aucs.append(auroc(scores, val["label"]))
            cells.append(f"{np.mean(accs):.3f} ({np.mean(aucs):.3f})")
        print(f"| {lr:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
