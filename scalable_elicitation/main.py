r"""Main job: run a config's whole sweep in-process, then write the answer.

  python -m scalable_elicitation.main --config=configs/cost_sweep.py --workdir=workdir
  python -m scalable_elicitation.main --config=configs/cost_sweep.py:smoke --workdir=/tmp/w \
      --config.train.lr=1e-3

Records go to WORKDIR/runs/RUN_ID/result.json; a killed sweep resumes where it stopped. At the
end it draws WORKDIR/frontier.png, writes the analysis report to WORKDIR/report/ (report.md, the
CSVs and figures) and prints the recommendation.
"""
from __future__ import annotations

import importlib.util
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (records, caches, figures).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the planned runs and their status only.")


def sweep_points(config_path: str, config) -> list[dict]:
    """Grid points from the config file's `sweep(add, config)`, or one point if it has none."""
    path = config_path.split(":", 1)[0]
    if not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"config file {path!r} not found (e.g. configs/cost_sweep.py)")
    spec = importlib.util.spec_from_file_location("_sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    points: list[dict] = []
    if hasattr(module, "sweep"):
        module.sweep(lambda **kw: points.append(kw), config)
    return points


def run_sweep(config, workdir, points, *, dry_run=False, out=print) -> list[dict]:
    """Run (or list) every planned run, then write the figure and report of WORKDIR and print
    the recommendation with `out` (see `plots.finish_sweep`); returns this sweep's records."""
    from tqdm import tqdm

    from scalable_elicitation import runner as runner_lib
    from scalable_elicitation.plots import finish_sweep

    sweep = runner_lib.Sweep(config, workdir)
    specs = sweep.plan(points)
    if dry_run:
        for s in specs:
            cost = float(sweep.prices.cost(s.n_oracle, s.n_weak))
            out(f"{sweep.run_dir(s).name} {config.method} n_weak={s.n_weak} "
                f"n_oracle={s.n_oracle} cost={cost:g} seed={s.seed} {sweep.status(s)}")
        return []
    sweep.prepare(s.seed for s in specs)
    bar = tqdm(specs, desc="runs", unit="run", file=sys.stderr)
    sweep.progress = lambda msg: bar.set_postfix_str(msg, refresh=False)
    recs = []
    for s in bar:
        rec = sweep.run(s)
        recs.append(rec)
        acc = (rec.get("metrics") or {}).get("accuracy")
        bar.write(f"run {rec['run_id']} n_weak={s.n_weak} n_oracle={s.n_oracle} seed={s.seed}: "
                  f"{rec['status']}" + (f" accuracy={acc:.3f}" if acc is not None else "")
                  + (f" ({rec.get('error')})" if rec["status"] != "ok" else ""),
                  file=sys.stderr)
    import jax
    if jax.process_index() == 0:  # one report per sweep, from the records every process shares
        finish_sweep(workdir, out)
    return recs


def main(argv):
    del argv
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required")
    config = _CONFIG.value
    try:
        points = sweep_points(flags.FLAGS["config"].config_filename, config)
        if not points:
            raise ValueError("the config file's sweep(add, config) added no grid point")
        recs = run_sweep(config, _WORKDIR.value, points, dry_run=_DRY_RUN.value)
    except (ValueError, FileNotFoundError) as err:  # bad config or data: say what, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = [r for r in recs if r["status"] == "failed"]
    if failed:
        print(f"{len(failed)} run(s) failed; rerun the same command to retry them",
              file=sys.stderr)
        return 1
    return 0


def parse_flags(argv):
    """absl flag parsing with one clear line for a bad `--config.KEY=VALUE` override (a typo'd
    key on the locked config) instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as err:
        bad = [a for a in argv[1:] if a.startswith("--config.")]
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip() and ln.strip() != ")"]
        msg = (lines[-1] if lines else str(err)).strip("\"'")
        print(f"error: bad flag or config override ({msg}); overrides given: {bad or 'none'}. "
              "Check the key against the config file (python -m scalable_elicitation.main "
              "--config=FILE --workdir=DIR --dry_run lists the grid).", file=sys.stderr)
        sys.exit(2)


def run_main():
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run_main()
